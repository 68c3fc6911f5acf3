//! From one `svn log` entry to the changes it reports.
//!
//! Only changed paths under the polled URL count (svn lists every path of a revision,
//! also those elsewhere in the repository); they are made relative to the polled URL,
//! placed by `split`, and grouped into one change per (project, branch), in the order
//! in which svn listed the paths.

use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::HashSet;
use std::sync::Arc;

use polld_backend::NewChange;
use polld_backend::filter::PathFilter;
use polld_backend::limits::{Files, cut_field, cut_message};

use crate::error::SvnError;
use crate::log::LogEntry;
use crate::split::Splitter;

/// What a change's fields are made of besides the entry itself.
pub(crate) struct Context<'a> {
    /// The polled URL's path in the repository (`""` or `/project/trunk`).
    pub(crate) prefix: &'a str,
    pub(crate) splitter: &'a Splitter,
    /// `paths` and `ignore_paths`, on each file relative to its branch.
    pub(crate) paths: &'a Arc<PathFilter>,
}

/// The files of one revision on one (project, branch): the first ones kept, all
/// counted (`limits::Files`).
struct Group {
    project: Option<String>,
    branch: Option<String>,
    files: Files,
    /// The kept files, to list each once.
    seen: HashSet<String>,
}

/// The changes `entry` reports: none when no path of it lands anywhere.
pub(crate) fn from_entry(
    entry: LogEntry,
    context: &Context<'_>,
) -> Result<Vec<NewChange>, SvnError> {
    // In first-seen order; a revision touches few branches, so a list will do.
    let mut groups: Vec<Group> = Vec::new();
    for path in &entry.paths {
        let Some(relative) = relative_path(path, context.prefix) else {
            continue;
        };
        let Some(placed) = context.splitter.place(relative) else {
            continue;
        };
        let index = match groups
            .iter()
            .position(|g| g.project == placed.project && g.branch == placed.branch)
        {
            Some(index) => index,
            None => {
                groups.push(Group {
                    project: placed.project,
                    branch: placed.branch,
                    files: Files::filtered(context.paths),
                    seen: HashSet::new(),
                });
                groups.len() - 1
            }
        };
        let group = &mut groups[index];
        if group.files.is_full() {
            group.files.count();
        } else if group.seen.insert(placed.file.clone()) {
            group.files.push(placed.file);
        }
    }
    if groups.is_empty() {
        return Ok(Vec::new());
    }

    let when_timestamp = timestamp(&entry)?;
    let revision = entry.revision.to_string();
    let author = entry
        .author
        .filter(|a| !a.is_empty())
        .map_or_else(|| "unknown".to_owned(), cut_field);
    let message = entry.message.unwrap_or_default();
    let comments = cut_message(message.as_bytes(), message.len());
    Ok(groups
        .into_iter()
        .map(|group| {
            let (files, files_total) = group.files.into_parts();
            NewChange {
                branch: group.branch.map(cut_field),
                revision: revision.clone(),
                author: author.clone(),
                committer: None,
                comments: comments.clone(),
                files,
                files_total,
                when_timestamp,
                project: group.project.map(cut_field),
            }
        })
        .collect())
}

/// `path` relative to `prefix` (both repository-absolute, decoded); `None` when it is
/// not at or below it. The polled directory itself is `""`.
fn relative_path<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        return Some("");
    }
    let relative = rest.strip_prefix('/')?;
    Some(relative.trim_end_matches('/'))
}

/// The revision's `svn:date` in Unix seconds. A revision whose date the server hides
/// (partial read access to revision properties) gets the time it was polled.
fn timestamp(entry: &LogEntry) -> Result<i64, SvnError> {
    let time = match entry.date.as_deref().map(str::trim) {
        None | Some("") => {
            tracing::debug!(revision = entry.revision, "revision has no date; using now");
            SystemTime::now()
        }
        Some(date) => humantime::parse_rfc3339(date).map_err(|e| {
            SvnError::xml(
                "log",
                format!(
                    "revision {} has an unreadable date {date:?}: {e}",
                    entry.revision
                ),
            )
        })?,
    };
    Ok(match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split::Split;

    fn entry(paths: &[&str]) -> LogEntry {
        LogEntry {
            revision: 42,
            author: Some("ada".into()),
            date: Some("2026-11-24T13:45:28.087832Z".into()),
            message: Some("Fix it\n\n  ".into()),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    fn changes(split: Split, prefix: &str, paths: &[&str]) -> Vec<NewChange> {
        let splitter = Splitter::new(&split).unwrap();
        from_entry(
            entry(paths),
            &Context {
                prefix,
                splitter: &splitter,
                paths: &Arc::default(),
            },
        )
        .unwrap()
    }

    #[test]
    fn one_change_per_branch_in_log_order() {
        let got = changes(
            Split::Branches,
            "",
            &[
                "/branches/1.5.x/b.c",
                "/trunk/a.c",
                "/branches/1.5.x/dir",
                "/tags/v1/x",
                "/trunk",
            ],
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].branch.as_deref(), Some("branches/1.5.x"));
        assert_eq!(got[0].files, ["b.c", "dir"]);
        assert_eq!(got[1].branch, None);
        assert_eq!(got[1].files, ["a.c"]);
        assert_eq!(got[1].revision, "42");
        assert_eq!(got[1].author, "ada");
        assert_eq!(got[1].committer, None);
        assert_eq!(got[1].comments, "Fix it");
        assert_eq!(got[1].when_timestamp, 1_795_527_928);
        assert_eq!(got[1].project, None);
    }

    #[test]
    fn only_paths_below_the_polled_url_count() {
        let got = changes(
            Split::Trunk,
            "/proj/trunk",
            &[
                "/proj/trunk",
                "/proj/trunk/src/a.c",
                "/proj/trunkx/b",
                "/other/c",
            ],
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].files, ["src/a.c"]);
        assert!(changes(Split::Trunk, "/proj/trunk", &["/other/c", "/proj/trunk"]).is_empty());
    }

    #[test]
    fn missing_fields_have_defaults() {
        let splitter = Splitter::new(&Split::Trunk).unwrap();
        let context = Context {
            prefix: "",
            splitter: &splitter,
            paths: &Arc::default(),
        };
        let bare = LogEntry {
            revision: 3,
            paths: vec!["/a".into()],
            ..LogEntry::default()
        };
        let got = from_entry(bare, &context).unwrap();
        assert_eq!(got[0].author, "unknown");
        assert_eq!(got[0].comments, "");
        let bad_date = LogEntry {
            date: Some("yesterday".into()),
            ..entry(&["/a"])
        };
        assert!(from_entry(bad_date, &context).is_err());
    }

    #[test]
    fn big_revisions_are_cut_and_counted() {
        let paths: Vec<String> = (0..polld_backend::limits::MAX_FILES + 3)
            .map(|i| format!("/trunk/f{i}"))
            .collect();
        let splitter = Splitter::new(&Split::Branches).unwrap();
        let context = Context {
            prefix: "",
            splitter: &splitter,
            paths: &Arc::default(),
        };
        let big = LogEntry {
            message: Some("m".repeat(1_000_000)),
            paths,
            ..entry(&[])
        };
        let got = from_entry(big, &context).unwrap();
        assert_eq!(got[0].files.len(), polld_backend::limits::MAX_FILES);
        assert_eq!(
            got[0].files_total,
            Some(polld_backend::limits::MAX_FILES + 3)
        );
        assert!(got[0].comments.ends_with("of 1000000 bytes]"));
    }
}
