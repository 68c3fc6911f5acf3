//! Which of the remote's refs a poller watches.
//!
//! Globs match short names (`main`, `release/1.0`, `v1.2`) because that is how users
//! think of branches and tags; the result is keyed by full ref names so that a branch
//! and a tag with the same short name never collide.

use std::collections::BTreeMap;
use std::fmt;

use git2::Oid;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

pub(crate) const HEADS: &str = "refs/heads/";
pub(crate) const TAGS: &str = "refs/tags/";

/// The `tags` key: `false` (default), `true` (every tag), or globs on tag names (one
/// string or a list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TagSelection {
    #[default]
    None,
    All,
    Matching(Vec<String>),
}

impl<'de> Deserialize<'de> for TagSelection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TagsVisitor;

        impl<'de> Visitor<'de> for TagsVisitor {
            type Value = TagSelection;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or tag-name globs (a string or a list)")
            }

            fn visit_bool<E: de::Error>(self, all: bool) -> Result<TagSelection, E> {
                Ok(if all {
                    TagSelection::All
                } else {
                    TagSelection::None
                })
            }

            fn visit_str<E: de::Error>(self, glob: &str) -> Result<TagSelection, E> {
                Ok(TagSelection::Matching(vec![glob.to_owned()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TagSelection, A::Error> {
                let mut globs = Vec::new();
                while let Some(glob) = seq.next_element::<String>()? {
                    globs.push(glob);
                }
                Ok(TagSelection::Matching(globs))
            }
        }

        deserializer.deserialize_any(TagsVisitor)
    }
}

/// A set of short-name globs, or everything.
#[derive(Debug, Clone)]
enum NameFilter {
    All,
    Globs(GlobSet),
}

impl NameFilter {
    /// `"*"` alone means everything; otherwise the globs are compiled so that a typo
    /// fails `polld check` instead of silently watching nothing. `*` matches across
    /// `/` (globset's default), so `release/*` also covers `release/1.0/hotfix`.
    fn new(what: &str, globs: &[String]) -> Result<NameFilter, String> {
        if globs.iter().any(|g| g == "*") {
            return Ok(NameFilter::All);
        }
        let mut set = GlobSetBuilder::new();
        for glob in globs {
            let compiled = Glob::new(glob).map_err(|e| format!("{what} glob {glob:?}: {e}"))?;
            set.add(compiled);
        }
        set.build()
            .map(NameFilter::Globs)
            .map_err(|e| format!("{what} globs: {e}"))
    }

    fn matches(&self, short_name: &str) -> bool {
        match self {
            NameFilter::All => true,
            NameFilter::Globs(set) => set.is_match(short_name),
        }
    }
}

/// The compiled `branches`, `tags` and `refs` keys.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    /// `None`: the branch the remote's HEAD points at.
    branches: Option<NameFilter>,
    tags: Option<NameFilter>,
    /// Globs on full ref names, in any namespace (`refs/pull/*/head`).
    refs: Option<GlobSet>,
    summary: String,
    /// What to ask a protocol-v2 server for (see [`Watch::ref_prefixes`]).
    prefixes: Vec<String>,
}

impl Watch {
    pub(crate) fn new(
        branches: Option<&[String]>,
        tags: &TagSelection,
        refs: &[String],
    ) -> Result<Watch, String> {
        let branch_filter = branches
            .map(|globs| NameFilter::new("branches", globs))
            .transpose()?;
        let tag_filter = match tags {
            TagSelection::None => None,
            TagSelection::All => Some(NameFilter::All),
            TagSelection::Matching(globs) if globs.is_empty() => None,
            TagSelection::Matching(globs) => Some(NameFilter::new("tags", globs)?),
        };
        let ref_filter = match refs {
            [] => None,
            globs => match NameFilter::new("refs", globs)? {
                NameFilter::Globs(set) => Some(set),
                NameFilter::All => return Err(
                    "refs = [\"*\"] names no ref: refs globs match full names (refs/pull/*/head)"
                        .into(),
                ),
            },
        };
        if let Some(glob) = refs.iter().find(|glob| !glob.starts_with("refs/")) {
            return Err(format!(
                "refs glob {glob:?}: refs globs match full ref names, which start with refs/"
            ));
        }
        if matches!(branches, Some([])) && tag_filter.is_none() && ref_filter.is_none() {
            return Err(
                "branches = [] and no tags or refs: this poller would watch nothing".into(),
            );
        }

        let mut summary = match branches {
            None => "branch: remote HEAD".to_owned(),
            Some([]) => "no branches".to_owned(),
            Some(globs) => format!("branches {}", globs.join(", ")),
        };
        match tags {
            TagSelection::None => {}
            TagSelection::All => summary.push_str("; tags: all"),
            TagSelection::Matching(globs) if globs.is_empty() => {}
            TagSelection::Matching(globs) => {
                summary.push_str(&format!("; tags {}", globs.join(", ")));
            }
        }
        if !refs.is_empty() {
            summary.push_str(&format!("; refs {}", refs.join(", ")));
        }
        let mut prefixes: Vec<String> = refs
            .iter()
            .map(|glob| literal_prefix(glob).to_owned())
            .collect();
        if let Some(globs) = branches {
            prefixes.extend(
                globs
                    .iter()
                    .map(|glob| format!("{HEADS}{}", literal_prefix(glob))),
            );
        }
        match tags {
            TagSelection::None => {}
            TagSelection::All => prefixes.push(TAGS.to_owned()),
            TagSelection::Matching(globs) => {
                prefixes.extend(
                    globs
                        .iter()
                        .map(|glob| format!("{TAGS}{}", literal_prefix(glob))),
                );
            }
        }
        prefixes.sort();
        prefixes.dedup();
        Ok(Watch {
            branches: branch_filter,
            tags: tag_filter,
            refs: ref_filter,
            summary,
            prefixes,
        })
    }

    /// Ref-name prefixes that cover every watched ref (HEAD is always asked for too):
    /// a protocol-v2 server then sends only these, whatever else the repository holds.
    /// They may cover more than is watched (`main` also covers `main2`); [`Watch::select`]
    /// has the last word.
    pub(crate) fn ref_prefixes(&self) -> &[String] {
        &self.prefixes
    }

    /// One line for `polld check`.
    pub(crate) fn summary(&self) -> &str {
        &self.summary
    }

    /// The watched subset of the advertised refs (`remote_head`: the full name of the
    /// branch the remote's HEAD points at).
    pub(crate) fn select(
        &self,
        advertised: &BTreeMap<String, Oid>,
        remote_head: Option<&str>,
    ) -> BTreeMap<String, Oid> {
        advertised
            .iter()
            .filter(|(name, _)| self.watches(name, remote_head))
            .map(|(name, oid)| (name.clone(), *oid))
            .collect()
    }

    fn watches(&self, name: &str, remote_head: Option<&str>) -> bool {
        if self.refs.as_ref().is_some_and(|refs| refs.is_match(name)) {
            return true;
        }
        if let Some(short) = name.strip_prefix(HEADS) {
            match &self.branches {
                None => remote_head == Some(name),
                Some(filter) => filter.matches(short),
            }
        } else if let Some(short) = name.strip_prefix(TAGS) {
            self.tags
                .as_ref()
                .is_some_and(|filter| filter.matches(short))
        } else {
            false
        }
    }
}

/// The part of a glob before its first special character: `release/*` → `release/`.
fn literal_prefix(glob: &str) -> &str {
    &glob[..glob.find(['*', '?', '[', '{', '\\']).unwrap_or(glob.len())]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advertised(names: &[&str]) -> BTreeMap<String, Oid> {
        names
            .iter()
            .map(|n| (n.to_string(), Oid::ZERO_SHA1))
            .collect()
    }

    fn selected(watch: &Watch, head: Option<&str>) -> Vec<String> {
        let refs = advertised(&[
            "refs/heads/main",
            "refs/heads/release/1.0",
            "refs/heads/feature/x",
            "refs/tags/v1",
            "refs/tags/nightly",
        ]);
        watch.select(&refs, head).into_keys().collect()
    }

    #[test]
    fn selects_by_short_name() {
        let globs = ["main".to_owned(), "release/*".to_owned()];
        let watch = Watch::new(
            Some(&globs),
            &TagSelection::Matching(vec!["v*".into()]),
            &[],
        )
        .unwrap();
        assert_eq!(
            selected(&watch, None),
            ["refs/heads/main", "refs/heads/release/1.0", "refs/tags/v1"]
        );
        assert_eq!(watch.summary(), "branches main, release/*; tags v*");

        let head = Watch::new(None, &TagSelection::None, &[]).unwrap();
        assert_eq!(
            selected(&head, Some("refs/heads/feature/x")),
            ["refs/heads/feature/x"]
        );
        assert!(selected(&head, None).is_empty());
        assert_eq!(head.summary(), "branch: remote HEAD");

        let all = Watch::new(Some(&["*".to_owned()]), &TagSelection::All, &[]).unwrap();
        assert_eq!(selected(&all, None).len(), 5);
    }

    #[test]
    fn asks_a_v2_server_only_for_what_it_watches() {
        let globs = ["main".to_owned(), "release/*".to_owned(), "*x".to_owned()];
        let watch = Watch::new(
            Some(&globs),
            &TagSelection::Matching(vec!["v1.?".into()]),
            &[],
        )
        .unwrap();
        assert_eq!(
            watch.ref_prefixes(),
            [
                "refs/heads/",
                "refs/heads/main",
                "refs/heads/release/",
                "refs/tags/v1."
            ]
        );
        let head = Watch::new(None, &TagSelection::All, &[]).unwrap();
        assert_eq!(head.ref_prefixes(), ["refs/tags/"]);
    }

    #[test]
    fn refs_globs_watch_full_names_in_any_namespace() {
        let refs = ["refs/pull/*/head".to_owned(), "refs/changes/*".to_owned()];
        let watch = Watch::new(Some(&["main".to_owned()]), &TagSelection::None, &refs).unwrap();
        let advertised = advertised(&[
            "refs/heads/main",
            "refs/heads/dev",
            "refs/pull/1/head",
            "refs/pull/1/merge",
            "refs/changes/34/1234/1",
            "refs/merge-requests/1/head",
        ]);
        assert_eq!(
            watch
                .select(&advertised, None)
                .into_keys()
                .collect::<Vec<_>>(),
            [
                "refs/changes/34/1234/1",
                "refs/heads/main",
                "refs/pull/1/head"
            ]
        );
        assert_eq!(
            watch.ref_prefixes(),
            ["refs/changes/", "refs/heads/main", "refs/pull/"]
        );
        assert_eq!(
            watch.summary(),
            "branches main; refs refs/pull/*/head, refs/changes/*"
        );
    }

    #[test]
    fn rejects_bad_globs_and_empty_watches() {
        assert!(Watch::new(Some(&["[".to_owned()]), &TagSelection::None, &[]).is_err());
        assert!(Watch::new(None, &TagSelection::Matching(vec!["a{".into()]), &[]).is_err());
        assert!(Watch::new(Some(&[]), &TagSelection::None, &[]).is_err());
        assert!(Watch::new(None, &TagSelection::None, &["pull/*/head".to_owned()]).is_err());
        assert!(Watch::new(None, &TagSelection::None, &["*".to_owned()]).is_err());
        assert!(Watch::new(Some(&[]), &TagSelection::None, &["refs/pull/*".to_owned()]).is_ok());
    }
}
