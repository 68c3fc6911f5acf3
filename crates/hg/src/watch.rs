//! Which of the remote's branches and bookmarks a poller watches.
//!
//! Each entry of `branches` and `bookmarks` is a name or a glob (`*`, `?`, `[...]` and
//! `{a,b}` make a glob; `"*"` is every name). The names a poll watches are those of the
//! remote's listing that match; the report order is the config's: branches, then
//! bookmarks, each entry's matches by name.

use std::collections::BTreeSet;

use globset::{Glob, GlobMatcher};

use crate::cursor::State;
use crate::heads::RemoteHeads;
use crate::walk::Name;

/// One entry of `branches` or `bookmarks`.
#[derive(Debug, Clone)]
enum Pattern {
    Exact(String),
    Glob(GlobMatcher),
}

impl Pattern {
    fn new(what: &str, text: &str) -> Result<Pattern, String> {
        if text.trim().is_empty() || text.chars().any(char::is_control) {
            return Err(format!("{what}: {text:?} is not a valid name"));
        }
        if !text.contains(['*', '?', '[', '{']) {
            return Ok(Pattern::Exact(text.to_owned()));
        }
        Glob::new(text)
            .map(|glob| Pattern::Glob(glob.compile_matcher()))
            .map_err(|e| format!("{what} glob {text:?}: {e}"))
    }

    fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(exact) => exact == name,
            Pattern::Glob(glob) => glob.is_match(name),
        }
    }
}

/// The compiled `branches` and `bookmarks` keys.
#[derive(Debug, Clone)]
pub(crate) struct Watch {
    branches: Vec<Pattern>,
    bookmarks: Vec<Pattern>,
    summary: String,
}

impl Watch {
    pub(crate) fn new(branches: &[String], bookmarks: &[String]) -> Result<Watch, String> {
        let compile = |what: &str, list: &[String]| -> Result<Vec<Pattern>, String> {
            let mut seen = BTreeSet::new();
            list.iter()
                .map(|text| {
                    if !seen.insert(text) {
                        return Err(format!("{what}: {text:?} is listed twice"));
                    }
                    Pattern::new(what, text)
                })
                .collect()
        };
        let watch = Watch {
            branches: compile("branches", branches)?,
            bookmarks: compile("bookmarks", bookmarks)?,
            summary: [("branches", branches), ("bookmarks", bookmarks)]
                .iter()
                .filter(|(_, list)| !list.is_empty())
                .map(|(what, list)| format!("{what} {}", list.join(", ")))
                .collect::<Vec<_>>()
                .join("; "),
        };
        if watch.branches.is_empty() && watch.bookmarks.is_empty() {
            return Err("branches = [] and no bookmarks: this poller would watch nothing".into());
        }
        Ok(watch)
    }

    /// Whether the remote's branch heads need listing at all.
    pub(crate) fn lists_branches(&self) -> bool {
        !self.branches.is_empty()
    }

    /// Whether the remote's bookmarks need listing at all.
    pub(crate) fn lists_bookmarks(&self) -> bool {
        !self.bookmarks.is_empty()
    }

    /// One line for `polld check`.
    pub(crate) fn summary(&self) -> &str {
        &self.summary
    }

    /// The watched part of the remote's heads: the next cursor.
    pub(crate) fn select(&self, remote: RemoteHeads) -> State {
        let matches = |patterns: &[Pattern], name: &str| patterns.iter().any(|p| p.matches(name));
        State {
            branches: remote
                .branches
                .into_iter()
                .filter(|(name, _)| matches(&self.branches, name))
                .collect(),
            bookmarks: remote
                .bookmarks
                .into_iter()
                .filter(|(name, _)| matches(&self.bookmarks, name))
                .collect(),
        }
    }

    /// The names of `old` and `new` in report order: the config's entries in turn
    /// (branches, then bookmarks), each entry's matches by name, each name once.
    pub(crate) fn names(&self, old: &State, new: &State) -> Vec<Name> {
        let mut names = Vec::new();
        let branches: BTreeSet<&String> = old.branches.keys().chain(new.branches.keys()).collect();
        for pattern in &self.branches {
            for name in branches.iter().filter(|name| pattern.matches(name)) {
                let name = Name::Branch((*name).clone());
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        let bookmarks: BTreeSet<&String> =
            old.bookmarks.keys().chain(new.bookmarks.keys()).collect();
        for pattern in &self.bookmarks {
            for name in bookmarks.iter().filter(|name| pattern.matches(name)) {
                let name = Name::Bookmark((*name).clone());
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const A: &str = "1111111111111111111111111111111111111111";

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn remote(branches: &[&str], bookmarks: &[&str]) -> RemoteHeads {
        RemoteHeads {
            branches: branches
                .iter()
                .map(|b| (b.to_string(), vec![A.to_owned()]))
                .collect::<BTreeMap<_, _>>(),
            bookmarks: bookmarks
                .iter()
                .map(|b| (b.to_string(), A.to_owned()))
                .collect(),
        }
    }

    #[test]
    fn names_and_globs_select_and_order() {
        let watch = Watch::new(&strings(&["stable", "release/*"]), &strings(&["*"])).unwrap();
        let state = watch.select(remote(
            &["default", "stable", "release/2", "release/1"],
            &["@", "feature"],
        ));
        assert_eq!(
            state.branches.keys().collect::<Vec<_>>(),
            ["release/1", "release/2", "stable"]
        );
        assert_eq!(state.bookmarks.len(), 2);
        let text: Vec<String> = watch
            .names(&State::default(), &state)
            .iter()
            .map(|n| n.text().to_owned())
            .collect();
        assert_eq!(text, ["stable", "release/1", "release/2", "@", "feature"]);
        assert_eq!(watch.summary(), "branches stable, release/*; bookmarks *");
    }

    #[test]
    fn refuses_what_cannot_watch_anything() {
        assert!(Watch::new(&[], &[]).is_err());
        assert!(Watch::new(&strings(&["a", "a"]), &[]).is_err());
        assert!(Watch::new(&strings(&[""]), &[]).is_err());
        assert!(Watch::new(&strings(&["a{"]), &[]).is_err());
        // A branch and a bookmark may share a name.
        assert!(Watch::new(&strings(&["x"]), &strings(&["x"])).is_ok());
    }
}
