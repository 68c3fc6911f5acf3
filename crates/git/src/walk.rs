//! From moved refs to change records.
//!
//! Each moved ref is walked along first parents from its new tip, hiding everything
//! reachable from the poller's known heads and from the tips already processed in the
//! same poll. So a merge is one change, and a commit that lands on two watched branches
//! at once is reported once, under the first of them in [`Moves::report_order`].
//!
//! A ref whose previous head is lost, and every ref of a poller that knows no head at
//! all, report their tip only: with nothing to stop the walk, a whole history would be
//! reported as new.

use std::collections::HashSet;
use std::sync::Arc;

use git2::{Commit, Delta, Oid, Repository, Sort};
use polld_backend::NewChange;
use polld_backend::filter::PathFilter;
use polld_backend::limits::{self, Files, MAX_CHANGES_PER_POLL, MAX_FIELD_BYTES};

use crate::LogContext;
use crate::cursor::RefMap;
use crate::error::GitError;
use crate::mirror::Mirror;
use crate::watch::{HEADS, TAGS};

/// What one poll compares.
pub(crate) struct Moves<'a> {
    /// The cursor: refs as they were at the last poll.
    pub(crate) old: &'a RefMap,
    /// The watched refs as the remote advertises them now.
    pub(crate) new: &'a RefMap,
    /// The full name of the remote HEAD's branch.
    pub(crate) remote_head: Option<&'a str>,
}

impl Moves<'_> {
    /// Refs that appeared or point somewhere else, in the order their changes are
    /// reported: branches before tags; within each, refs the poller already knew before
    /// new ones, the remote HEAD's branch first, then by name. Known refs go first so
    /// that a commit pushed to `main` and to a new branch together is reported on
    /// `main`.
    pub(crate) fn report_order(&self) -> Vec<&String> {
        let mut moved: Vec<&String> = self
            .new
            .iter()
            .filter(|(name, oid)| self.old.get(*name) != Some(*oid))
            .map(|(name, _)| name)
            .collect();
        moved.sort_by_key(|name| {
            (
                name.starts_with(TAGS),
                !self.old.contains_key(*name),
                Some(name.as_str()) != self.remote_head,
                name.as_str(),
            )
        });
        moved
    }
}

/// What a walk found.
pub(crate) struct Walked {
    /// Oldest first within each ref, refs in [`Moves::report_order`].
    pub(crate) changes: Vec<NewChange>,
    /// Set when [`MAX_CHANGES_PER_POLL`] was reached before every ref was walked.
    pub(crate) stopped: Option<Stopped>,
}

/// Where a walk stopped: the cursor must say so, so the next poll goes on from there.
pub(crate) struct Stopped {
    /// The ref being walked, and its last commit that was reported (`None`: none was).
    pub(crate) at: (String, Option<Oid>),
    /// The refs not walked at all.
    pub(crate) not_walked: Vec<String>,
}

/// The changes for every moved ref, oldest first within each ref, at most
/// [`MAX_CHANGES_PER_POLL`] of them.
///
/// Every object named in `moves.new` must already be in the mirror.
pub(crate) fn changes(
    mirror: &Mirror,
    moves: &Moves<'_>,
    build_pushes_with_no_commits: bool,
    paths: &Arc<PathFilter>,
    log: &LogContext<'_>,
) -> Result<Walked, GitError> {
    let repo = mirror.repo();
    // Heads of deleted branches count too: their commits were reported already.
    let mut known: Vec<Oid> = Vec::new();
    for oid in moves.old.values() {
        if !known.contains(oid) && mirror.has_commit(*oid) {
            known.push(*oid);
        }
    }
    // With no known head to stop at (the cursor is empty: a tags-only or `release/*`
    // poller before its first match, every watched branch deleted; or the mirror lost
    // every head the poller knew), a ref's whole ancestry would look new. Reporting
    // thousands of old commits is worse than reporting one: each ref reports its tip.
    let nothing_known = known.is_empty();
    // A ref that reports its tip only says nothing of the tip's ancestry, so in the same
    // poll another such ref still reports its own tip unless the poller knew it before.
    let known_before = known.clone();
    if nothing_known && !moves.old.is_empty() {
        tracing::warn!(
            poller = log.poller,
            repo = log.repo,
            "none of the previous heads is in the mirror; reporting only the new tips"
        );
    }
    let mut reported: HashSet<Oid> = HashSet::new();
    let mut changes = Vec::new();
    let order = moves.report_order();

    for (position, &name) in order.iter().enumerate() {
        let Some(&tip) = moves.new.get(name) else {
            continue;
        };
        let branch = branch_name(name);
        let history_error = |e: git2::Error| GitError::history(name, &e);
        if !mirror.has_commit(tip) {
            tracing::warn!(
                poller = log.poller,
                repo = log.repo,
                branch,
                object = %tip,
                "the ref does not point to a commit; skipped"
            );
            continue;
        }

        let lost_old_tip = moves
            .old
            .get(name)
            .filter(|old_tip| !mirror.has_commit(**old_tip));
        if let Some(old_tip) = lost_old_tip {
            // A force push after the mirror lost the old head: its history cannot be
            // told apart from the rewritten one.
            tracing::warn!(
                poller = log.poller,
                repo = log.repo,
                branch,
                old = %old_tip,
                new = %tip,
                "the previous head is not in the mirror; reporting only the new tip"
            );
        }
        let tip_only = nothing_known || lost_old_tip.is_some();
        let new_commits = if tip_only {
            if reported.contains(&tip)
                || is_reachable(repo, tip, &known_before).map_err(history_error)?
            {
                Vec::new()
            } else {
                vec![tip]
            }
        } else {
            first_parent_walk(repo, tip, &known).map_err(history_error)?
        };

        let fresh: Vec<Oid> = new_commits
            .into_iter()
            .filter(|oid| reported.insert(*oid))
            .collect();
        let mut to_report = fresh.clone();
        if fresh.is_empty() && build_pushes_with_no_commits {
            to_report.push(tip);
        }
        let room = MAX_CHANGES_PER_POLL - changes.len();
        if to_report.len() > room {
            // Oldest first: report what fits and stop at the last of it.
            for &oid in &to_report[..room] {
                changes.push(new_change(repo, oid, branch, paths).map_err(history_error)?);
            }
            let last = room.checked_sub(1).map(|i| to_report[i]);
            return Ok(Walked {
                changes,
                stopped: Some(Stopped {
                    at: (name.clone(), last),
                    not_walked: order[position + 1..].iter().map(|n| (*n).clone()).collect(),
                }),
            });
        }
        for oid in to_report {
            changes.push(new_change(repo, oid, branch, paths).map_err(history_error)?);
        }
        known.push(tip);
    }
    Ok(Walked {
        changes,
        stopped: None,
    })
}

/// `git rev-list --first-parent --topo-order --reverse tip ^hidden...`
fn first_parent_walk(repo: &Repository, tip: Oid, hidden: &[Oid]) -> Result<Vec<Oid>, git2::Error> {
    let mut walk = repo.revwalk()?;
    walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)?;
    walk.simplify_first_parent()?;
    walk.push(tip)?;
    for oid in hidden {
        walk.hide(*oid)?;
    }
    walk.collect()
}

/// Whether `commit` is one of `heads` or an ancestor of one (a walk from it that hides
/// `heads` yields nothing).
fn is_reachable(repo: &Repository, commit: Oid, heads: &[Oid]) -> Result<bool, git2::Error> {
    if heads.contains(&commit) {
        return Ok(true);
    }
    let mut walk = repo.revwalk()?;
    walk.push(commit)?;
    for head in heads {
        walk.hide(*head)?;
    }
    Ok(walk.next().transpose()?.is_none())
}

/// The contract's branch spelling: `main` for a branch, `refs/tags/v1` for a tag.
fn branch_name(full_name: &str) -> &str {
    full_name.strip_prefix(HEADS).unwrap_or(full_name)
}

/// One commit as a change, cut to polld's limits as it is read. Names, messages and
/// paths that are not UTF-8 (git stores bytes, and ignores the commit's `encoding`
/// header for paths) are converted lossily, invalid sequences becoming U+FFFD: the
/// record is JSON and must be text.
fn new_change(
    repo: &Repository,
    oid: Oid,
    branch: &str,
    paths: &Arc<PathFilter>,
) -> Result<NewChange, git2::Error> {
    let commit = repo.find_commit(oid)?;
    let message = commit.message_bytes();
    let (files, files_total) = changed_files(repo, &commit, paths)?.into_parts();
    Ok(NewChange {
        branch: Some(branch.to_owned()),
        revision: oid.to_string(),
        author: person(&commit.author()),
        committer: Some(person(&commit.committer())),
        comments: limits::cut_message(message, message.len()),
        files,
        files_total,
        when_timestamp: commit.committer().when().seconds(),
        project: None,
    })
}

fn person(signature: &git2::Signature<'_>) -> String {
    let name = &signature.name_bytes()[..signature.name_bytes().len().min(MAX_FIELD_BYTES)];
    let email = &signature.email_bytes()[..signature.email_bytes().len().min(MAX_FIELD_BYTES)];
    limits::cut_field(format!(
        "{} <{}>",
        String::from_utf8_lossy(name),
        String::from_utf8_lossy(email)
    ))
}

/// Paths changed against the first parent (a merge shows what it brought to the
/// branch; a root commit shows everything). A deleted file is listed by its old path.
fn changed_files(
    repo: &Repository,
    commit: &Commit<'_>,
    paths: &Arc<PathFilter>,
) -> Result<Files, git2::Error> {
    let parent_tree = match commit.parent_count() {
        0 => None,
        _ => Some(commit.parent(0)?.tree()?),
    };
    let diff = repo.diff_tree_to_tree(parent_tree.as_ref(), Some(&commit.tree()?), None)?;
    let mut files = Files::filtered(paths);
    for delta in diff.deltas() {
        if files.is_full() {
            files.count();
            continue;
        }
        let file = match delta.status() {
            Delta::Deleted => delta.old_file(),
            _ => delta.new_file(),
        };
        if let Some(path) = file.path_bytes() {
            files.push(String::from_utf8_lossy(path).into_owned());
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_known_refs_first_head_branch_first_tags_last() {
        let a = Oid::from_str("1111111111111111111111111111111111111111").unwrap();
        let b = Oid::from_str("2222222222222222222222222222222222222222").unwrap();
        let old = RefMap::from([
            ("refs/heads/main".to_owned(), a),
            ("refs/heads/dev".to_owned(), a),
            ("refs/heads/same".to_owned(), a),
            ("refs/tags/v1".to_owned(), a),
        ]);
        let new = RefMap::from([
            ("refs/heads/main".to_owned(), b),
            ("refs/heads/dev".to_owned(), b),
            ("refs/heads/same".to_owned(), a),
            ("refs/heads/aaa-new".to_owned(), b),
            ("refs/tags/v1".to_owned(), b),
            ("refs/tags/a0".to_owned(), b),
        ]);
        let moves = Moves {
            old: &old,
            new: &new,
            remote_head: Some("refs/heads/main"),
        };
        assert_eq!(
            moves.report_order(),
            [
                "refs/heads/main",
                "refs/heads/dev",
                "refs/heads/aaa-new",
                "refs/tags/v1",
                "refs/tags/a0"
            ]
        );
    }
}
