//! What is reported: `paths`, `ignore_paths`, `skip_markers` and `ignore_authors`,
//! decided here for every backend from a change's files, message and author.
//!
//! A filtered commit is not queued, and the cursor moves past it as past any other: the
//! backend reported it, the engine drops it before the transaction that moves the
//! cursor. Path globs are applied by the backend's [`Files`](polld_backend::limits::Files)
//! as it reads each file too, so the verdict holds past the 10,000-file cut.

use std::fmt;
use std::sync::Arc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use polld_backend::NewChange;
use polld_backend::filter::{self, PathFilter};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// The markers `skip_markers = true` (the default) means: what nearly every CI honours.
pub const DEFAULT_SKIP_MARKERS: [&str; 2] = ["[skip ci]", "[ci skip]"];

/// `skip_markers`: `true` (the default markers), `false` (none), or one's own (a list,
/// or one string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipMarkers {
    Default(bool),
    Own(Vec<String>),
}

impl<'de> Deserialize<'de> for SkipMarkers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MarkersVisitor;

        impl<'de> Visitor<'de> for MarkersVisitor {
            type Value = SkipMarkers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false, or your own markers (a string or a list)")
            }

            fn visit_bool<E: de::Error>(self, on: bool) -> Result<SkipMarkers, E> {
                Ok(SkipMarkers::Default(on))
            }

            fn visit_str<E: de::Error>(self, marker: &str) -> Result<SkipMarkers, E> {
                Ok(SkipMarkers::Own(vec![marker.to_owned()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SkipMarkers, A::Error> {
                let mut markers = Vec::new();
                while let Some(marker) = seq.next_element::<String>()? {
                    markers.push(marker);
                }
                Ok(SkipMarkers::Own(markers))
            }
        }

        deserializer.deserialize_any(MarkersVisitor)
    }
}

impl Default for SkipMarkers {
    fn default() -> Self {
        SkipMarkers::Default(true)
    }
}

/// The four keys as written, in `[defaults]` or a `[[poller]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterKeys {
    pub paths: Option<Vec<String>>,
    pub ignore_paths: Option<Vec<String>>,
    pub skip_markers: Option<SkipMarkers>,
    pub ignore_authors: Option<Vec<String>>,
}

impl FilterKeys {
    /// Each key of the poller's, else the defaults'.
    pub fn or(self, defaults: &FilterKeys) -> FilterKeys {
        FilterKeys {
            paths: self.paths.or_else(|| defaults.paths.clone()),
            ignore_paths: self.ignore_paths.or_else(|| defaults.ignore_paths.clone()),
            skip_markers: self.skip_markers.or_else(|| defaults.skip_markers.clone()),
            ignore_authors: self
                .ignore_authors
                .or_else(|| defaults.ignore_authors.clone()),
        }
    }
}

/// Why a change was not reported: the `reason` label of
/// `polld_changes_filtered_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Paths,
    SkipMarker,
    Author,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Paths => "paths",
            Reason::SkipMarker => "skip_marker",
            Reason::Author => "author",
        }
    }
}

/// One poller's filters, compiled. Two are equal when they were written the same, which
/// is what a reload compares.
#[derive(Debug, Clone)]
pub struct Filters {
    keys: FilterKeys,
    paths: Arc<PathFilter>,
    /// Lowercased: markers match case-insensitively.
    markers: Vec<String>,
    authors: Option<GlobSet>,
}

impl PartialEq for Filters {
    fn eq(&self, other: &Filters) -> bool {
        self.keys == other.keys
    }
}

impl Default for Filters {
    fn default() -> Self {
        Filters::new(FilterKeys::default()).expect("no globs, nothing to refuse")
    }
}

/// A key whose value cannot be compiled, and why (the message names the key).
#[derive(Debug)]
pub struct FilterError {
    pub key: &'static str,
    pub message: String,
}

impl Filters {
    pub fn new(keys: FilterKeys) -> Result<Filters, FilterError> {
        let paths = PathFilter::new(
            keys.paths.as_deref().unwrap_or_default(),
            keys.ignore_paths.as_deref().unwrap_or_default(),
        )
        .map_err(|message| FilterError {
            key: if message.starts_with("ignore_paths") {
                "ignore_paths"
            } else {
                "paths"
            },
            message,
        })?;
        let markers = match keys.skip_markers.clone().unwrap_or_default() {
            SkipMarkers::Default(true) => DEFAULT_SKIP_MARKERS.map(str::to_owned).to_vec(),
            SkipMarkers::Default(false) => Vec::new(),
            SkipMarkers::Own(own) => {
                if own.iter().any(|marker| marker.trim().is_empty()) {
                    return Err(FilterError {
                        key: "skip_markers",
                        message: "skip_markers: an empty marker would skip every commit".to_owned(),
                    });
                }
                own
            }
        };
        let markers = markers.iter().map(|m| m.to_lowercase()).collect();
        let authors = author_globs(keys.ignore_authors.as_deref().unwrap_or_default()).map_err(
            |message| FilterError {
                key: "ignore_authors",
                message,
            },
        )?;
        Ok(Filters {
            keys,
            paths: Arc::new(paths),
            markers,
            authors,
        })
    }

    /// The path filter, for the backend to read files with.
    pub fn paths(&self) -> &Arc<PathFilter> {
        &self.paths
    }

    /// Why `change` is not reported, if it is not. Its files are those the backend
    /// kept, which include a wanted one whenever there is one.
    pub fn rejects(&self, change: &NewChange) -> Option<Reason> {
        if !self
            .paths
            .wants_commit(change.files.iter().map(String::as_str))
        {
            return Some(Reason::Paths);
        }
        if !self.markers.is_empty() {
            let message = change.comments.to_lowercase();
            if self.markers.iter().any(|marker| message.contains(marker)) {
                return Some(Reason::SkipMarker);
            }
        }
        if self
            .authors
            .as_ref()
            .is_some_and(|globs| globs.is_match(&change.author))
        {
            return Some(Reason::Author);
        }
        None
    }

    /// Path globs that can never match a file, with why: `polld check` warns of them.
    pub fn hopeless_globs(&self) -> Vec<(String, &'static str)> {
        let keys = [&self.keys.paths, &self.keys.ignore_paths];
        keys.into_iter()
            .flatten()
            .flatten()
            .filter_map(|glob| filter::never_matches(glob).map(|why| (glob.clone(), why)))
            .collect()
    }
}

impl fmt::Display for Filters {
    /// One line for `polld check`, e.g. `paths src/**; skip markers [skip ci], [ci skip]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(paths) = self.keys.paths.as_ref().filter(|p| !p.is_empty()) {
            parts.push(format!("paths {}", paths.join(", ")));
        }
        if let Some(ignore) = self.keys.ignore_paths.as_ref().filter(|p| !p.is_empty()) {
            parts.push(format!("ignore_paths {}", ignore.join(", ")));
        }
        if self.markers.is_empty() {
            parts.push("no skip markers".to_owned());
        } else {
            parts.push(format!("skip markers {}", self.markers.join(", ")));
        }
        if let Some(authors) = self.keys.ignore_authors.as_ref().filter(|a| !a.is_empty()) {
            parts.push(format!("ignore_authors {}", authors.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Author globs match `Name <email>` (svn: the username) with `*` and `?` only, case
/// insensitively: brackets and braces are literal, so `*[bot]*` matches
/// `dependabot[bot] <…>` as people who write it mean.
fn author_globs(globs: &[String]) -> Result<Option<GlobSet>, String> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for glob in globs {
        let literal: String = glob
            .chars()
            .map(|c| match c {
                '[' | ']' | '{' | '}' => format!("[{c}]"),
                c => c.to_string(),
            })
            .collect();
        let compiled = GlobBuilder::new(&literal)
            .literal_separator(false)
            .backslash_escape(false)
            .case_insensitive(true)
            .build()
            .map_err(|error| format!("ignore_authors glob {glob:?}: {error}"))?;
        set.add(compiled);
    }
    set.build()
        .map(Some)
        .map_err(|error| format!("ignore_authors: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(files: &[&str], comments: &str, author: &str) -> NewChange {
        NewChange {
            branch: Some("main".into()),
            revision: "1".into(),
            author: author.into(),
            committer: None,
            comments: comments.into(),
            files: files.iter().map(|f| f.to_string()).collect(),
            files_total: None,
            when_timestamp: 0,
            project: None,
        }
    }

    fn filters(toml_text: &str) -> Filters {
        Filters::new(toml::from_str(toml_text).unwrap()).unwrap()
    }

    const DEV: &str = "Dev <dev@example.org>";

    #[test]
    fn markers_match_anywhere_in_any_case_and_can_be_turned_off() {
        let default = Filters::default();
        for message in [
            "Fix it [skip ci]",
            "Fix it\n\nBody line [CI SKIP] here",
            "[Skip CI] docs",
        ] {
            assert_eq!(
                default.rejects(&change(&["a"], message, DEV)),
                Some(Reason::SkipMarker),
                "{message:?}"
            );
        }
        assert_eq!(default.rejects(&change(&["a"], "skip ci", DEV)), None);
        let off = filters("skip_markers = false");
        assert_eq!(off.rejects(&change(&["a"], "x [skip ci]", DEV)), None);
        let own = filters("skip_markers = [\"***NO_CI***\"]");
        assert_eq!(
            own.rejects(&change(&["a"], "x ***no_ci***", DEV)),
            Some(Reason::SkipMarker)
        );
        assert_eq!(own.rejects(&change(&["a"], "x [skip ci]", DEV)), None);
        assert!(Filters::new(toml::from_str("skip_markers = [\" \"]").unwrap()).is_err());
        let one = filters("skip_markers = \"[no build]\"");
        assert_eq!(
            one.rejects(&change(&["a"], "x [No Build]", DEV)),
            Some(Reason::SkipMarker)
        );
        let wrong = toml::from_str::<FilterKeys>("skip_markers = 3").unwrap_err();
        assert!(
            wrong
                .to_string()
                .contains("true, false, or your own markers"),
            "{wrong}"
        );
    }

    #[test]
    fn author_globs_take_brackets_literally() {
        let bots = filters("ignore_authors = [\"*[bot]*\", \"*<ci@example.org>\"]");
        let bot = "dependabot[bot] <49699333+dependabot[bot]@users.noreply.github.com>";
        assert_eq!(
            bots.rejects(&change(&["a"], "bump", bot)),
            Some(Reason::Author)
        );
        assert_eq!(
            bots.rejects(&change(&["a"], "x", "CI <CI@example.org>")),
            Some(Reason::Author)
        );
        assert_eq!(
            bots.rejects(&change(&["a"], "x", "bob <b@example.org>")),
            None
        );
        assert_eq!(bots.rejects(&change(&["a"], "x", "t <bot@x>")), None);
    }

    #[test]
    fn paths_decide_first_and_defaults_fill_in() {
        let defaults: FilterKeys = toml::from_str("ignore_paths = [\"docs/**\"]").unwrap();
        let own: FilterKeys = toml::from_str("paths = [\"service-a/**\"]").unwrap();
        let both = Filters::new(own.or(&defaults)).unwrap();
        assert_eq!(
            both.rejects(&change(&["service-b/x.go"], "[skip ci]", DEV)),
            Some(Reason::Paths)
        );
        assert_eq!(both.rejects(&change(&["service-a/x.go"], "x", DEV)), None);
        assert_eq!(
            both.to_string(),
            "paths service-a/**; ignore_paths docs/**; skip markers [skip ci], [ci skip]"
        );
        let hopeless = filters("paths = [\"/src/**\", \"src/\", \"ok/**\"]");
        assert_eq!(hopeless.hopeless_globs().len(), 2);
    }
}
