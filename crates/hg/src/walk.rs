//! From the mirror's new changesets to the changes each watched name reports.
//!
//! The mirror is asked once for `::new_heads - ::known_heads` (every changeset that no
//! head the poller knew can reach); each name then reports the part of that set it can
//! reach itself:
//!
//! - a named branch: only the changesets on that branch (a changeset of another
//!   branch merged into it is not reported; the merge is);
//! - a bookmark: everything it can reach (`only(new, known)`).
//!
//! Names are handled in the config's order (branches, then bookmarks), each oldest
//! first, and a changeset reported for one name is not reported again for another.
//!
//! When no head the poller knew is in the mirror (an empty cursor, or a lost mirror),
//! a name reports its new heads only: never their ancestry.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use polld_backend::NewChange;
use polld_backend::filter::PathFilter;
use polld_backend::limits::{self, Files};

use crate::LogContext;
use crate::cursor::State;
use crate::mirror::Changeset;

/// A watched name and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Name {
    Branch(String),
    Bookmark(String),
}

impl Name {
    pub(crate) fn text(&self) -> &str {
        match self {
            Name::Branch(name) | Name::Bookmark(name) => name,
        }
    }

    /// This name's heads in `state` (`None`: the remote does not have it).
    pub(crate) fn heads<'s>(&self, state: &'s State) -> Option<Vec<&'s str>> {
        match self {
            Name::Branch(name) => state
                .branches
                .get(name)
                .map(|nodes| nodes.iter().map(String::as_str).collect()),
            Name::Bookmark(name) => state.bookmarks.get(name).map(|node| vec![node.as_str()]),
        }
    }
}

/// What the mirror said about the poll.
pub(crate) struct Found<'a> {
    /// `::new - ::known`, oldest first.
    pub(crate) fresh: &'a [Changeset],
    /// The old heads the mirror has.
    pub(crate) known: &'a HashSet<String>,
    /// Old heads that are no ancestor of any new head: stripped or rewritten.
    pub(crate) gone: &'a HashSet<String>,
}

pub(crate) fn changes(
    names: &[Name],
    old: &State,
    new: &State,
    found: &Found<'_>,
    paths: &Arc<PathFilter>,
    log: &LogContext<'_>,
) -> Vec<NewChange> {
    let position: HashMap<&str, usize> = found
        .fresh
        .iter()
        .enumerate()
        .map(|(i, cs)| (cs.node.as_str(), i))
        .collect();
    let mut reported: HashSet<usize> = HashSet::new();
    let mut changes = Vec::new();

    for name in names {
        let Some(new_heads) = name.heads(new) else {
            continue;
        };
        let old_heads = name.heads(old).unwrap_or_default();
        if new_heads == old_heads {
            continue;
        }
        let branch = name.text();
        for head in old_heads.iter().filter(|h| found.gone.contains(**h)) {
            match name {
                Name::Branch(_) => tracing::warn!(
                    poller = log.poller,
                    repo = log.repo,
                    branch,
                    old = head,
                    "a head the poller knew is gone from the remote (stripped or \
                     rewritten); reporting only changesets it had not seen"
                ),
                Name::Bookmark(_) => tracing::warn!(
                    poller = log.poller,
                    repo = log.repo,
                    branch,
                    old = head,
                    "the bookmark moved backwards or sideways (or its changeset was \
                     stripped); reporting only changesets the poller had not seen"
                ),
            }
        }

        // The mirror has none of the heads that would bound the walk: the cursor is
        // empty (a bookmark-only poller before its bookmark exists, every watched name
        // gone), or the mirror was deleted and the remote no longer has them. History
        // cannot be told apart from new work then, and reporting all of it would be
        // worse than missing some: report only the new heads.
        let lost = !old_heads.is_empty() && !old_heads.iter().any(|h| found.known.contains(*h));
        let heads_only = lost || found.known.is_empty();
        if lost || (heads_only && !old.nodes().is_empty()) {
            tracing::warn!(
                poller = log.poller,
                repo = log.repo,
                branch,
                "none of the previous heads is in the mirror; reporting only the new heads"
            );
        }
        let mut picked: Vec<usize> = if heads_only {
            new_heads
                .iter()
                .filter(|h| !old_heads.contains(h))
                .filter_map(|h| position.get(h).copied())
                .collect()
        } else {
            reachable(found.fresh, &position, &new_heads)
        };
        picked.sort_unstable();
        for index in picked {
            let changeset = &found.fresh[index];
            if let Name::Branch(name) = name
                && changeset.branch != *name
            {
                continue;
            }
            if reported.insert(index) {
                changes.push(new_change(changeset, branch, paths));
            }
        }
    }
    changes
}

/// The positions in `fresh` of `heads` and their ancestors inside `fresh` (an ancestor
/// outside it is known, and so are all of its own ancestors).
fn reachable(fresh: &[Changeset], position: &HashMap<&str, usize>, heads: &[&str]) -> Vec<usize> {
    let mut seen: HashSet<usize> = HashSet::new();
    let mut stack: Vec<usize> = heads
        .iter()
        .filter_map(|h| position.get(h).copied())
        .collect();
    while let Some(index) = stack.pop() {
        if seen.insert(index) {
            stack.extend(
                fresh[index]
                    .parents
                    .iter()
                    .filter_map(|p| position.get(p.as_str()).copied()),
            );
        }
    }
    seen.into_iter().collect()
}

fn new_change(changeset: &Changeset, name: &str, paths: &Arc<PathFilter>) -> NewChange {
    let mut files = Files::filtered(paths);
    for file in &changeset.files {
        files.push(file.clone());
    }
    let (files, files_total) = files.into_parts();
    NewChange {
        branch: Some(name.to_owned()),
        revision: changeset.node.clone(),
        author: limits::cut_field(changeset.author.clone()),
        committer: None,
        comments: limits::cut_message(changeset.desc.as_bytes(), changeset.desc.len()),
        files,
        files_total,
        when_timestamp: changeset.when,
        project: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn node(c: char) -> String {
        c.to_string().repeat(40)
    }

    fn cs(c: char, branch: &str, parents: &[char]) -> Changeset {
        Changeset {
            node: node(c),
            branch: branch.to_owned(),
            author: "u".into(),
            when: 0,
            parents: parents.iter().map(|p| node(*p)).collect(),
            files: vec![],
            desc: c.to_string(),
        }
    }

    fn state(branches: &[(&str, &[char])], bookmarks: &[(&str, char)]) -> State {
        State {
            branches: branches
                .iter()
                .map(|(b, heads)| (b.to_string(), heads.iter().map(|h| node(*h)).collect()))
                .collect::<BTreeMap<_, _>>(),
            bookmarks: bookmarks
                .iter()
                .map(|(b, h)| (b.to_string(), node(*h)))
                .collect(),
        }
    }

    fn run(
        names: &[Name],
        old: &State,
        new: &State,
        fresh: &[Changeset],
        known: &[char],
    ) -> Vec<String> {
        let known: HashSet<String> = known.iter().map(|c| node(*c)).collect();
        let gone = HashSet::new();
        let found = Found {
            fresh,
            known: &known,
            gone: &gone,
        };
        let log = LogContext {
            poller: "p",
            repo: "r",
        };
        changes(names, old, new, &found, &Arc::default(), &log)
            .into_iter()
            .map(|c| format!("{}:{}", c.branch.unwrap(), &c.revision[..1]))
            .collect()
    }

    #[test]
    fn a_branch_reports_its_own_changesets_and_the_merge_once() {
        // 1 (known) <- s (stable) <- m (default merge of 2 and s); 2 on default.
        let fresh = [
            cs('2', "default", &['1']),
            cs('s', "stable", &['1']),
            cs('m', "default", &['2', 's']),
        ];
        let names = [
            Name::Branch("default".into()),
            Name::Branch("stable".into()),
            Name::Bookmark("@".into()),
        ];
        let old = state(&[("default", &['1']), ("stable", &['1'])], &[("@", '1')]);
        let new = state(&[("default", &['m']), ("stable", &['s'])], &[("@", 'm')]);
        assert_eq!(
            run(&names, &old, &new, &fresh, &['1']),
            ["default:2", "default:m", "stable:s"]
        );
    }

    #[test]
    fn lost_history_reports_new_heads_only() {
        let fresh = [cs('a', "default", &[]), cs('b', "default", &['a'])];
        let names = [Name::Branch("default".into())];
        let old = state(&[("default", &['z'])], &[]);
        let new = state(&[("default", &['b'])], &[]);
        assert_eq!(run(&names, &old, &new, &fresh, &[]), ["default:b"]);
        // An empty cursor (a name that did not exist yet) reports its heads only too.
        let empty = State::default();
        assert_eq!(run(&names, &empty, &new, &fresh, &[]), ["default:b"]);
    }
}
