//! `split`: how a changed path, relative to the polled URL, becomes a project, a branch
//! and a file (Buildbot's `split_file`, with its presets).
//!
//! One rule holds in every mode: a branch root itself (`trunk`, `branches/B`, the polled
//! directory, or a regex match with an empty `path`) is never a file. So creating a
//! branch by copy, deleting a branch, or changing only the branch root's properties
//! emits no change, while every change to a file or directory below it does.

use std::fmt;

use regex::Regex;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// The `split` key as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Split {
    /// Every path is on trunk (branch `null`), the file is the path.
    #[default]
    Trunk,
    /// `trunk/X` → (null, `X`); `branches/B/X` → (`branches/B`, `X`); all else ignored.
    Branches,
    /// `P/trunk/X` → project `P`, (null, `X`); `P/branches/B/X` → project `P`,
    /// (`branches/B`, `X`); all else ignored.
    Projects,
    /// Matched against the whole relative path; named groups `path` (required),
    /// `branch` and `project` (optional; absent or empty = none). No match: ignored.
    Regex(String),
}

/// Where one changed path belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    pub(crate) project: Option<String>,
    pub(crate) branch: Option<String>,
    pub(crate) file: String,
}

/// A [`Split`] ready to use: its regex compiled and checked.
#[derive(Debug, Clone)]
pub(crate) enum Splitter {
    Trunk,
    Branches,
    Projects,
    Regex(Regex),
}

impl Splitter {
    pub(crate) fn new(split: &Split) -> Result<Splitter, String> {
        Ok(match split {
            Split::Trunk => Splitter::Trunk,
            Split::Branches => Splitter::Branches,
            Split::Projects => Splitter::Projects,
            Split::Regex(pattern) => {
                // Anchored, so the pattern has to account for the whole path.
                let regex = Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|e| format!("split regex {pattern:?} does not compile: {e}"))?;
                if !regex.capture_names().flatten().any(|name| name == "path") {
                    return Err(format!(
                        "split regex {pattern:?} has no named group `path` (?P<path>...)"
                    ));
                }
                Splitter::Regex(regex)
            }
        })
    }

    /// One line for `polld check`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Splitter::Trunk => "split trunk".into(),
            Splitter::Branches => "split branches".into(),
            Splitter::Projects => "split projects".into(),
            Splitter::Regex(regex) => {
                let anchored = regex.as_str();
                let pattern = anchored
                    .strip_prefix("^(?:")
                    .and_then(|p| p.strip_suffix(")$"))
                    .unwrap_or(anchored);
                format!("split regex {pattern}")
            }
        }
    }

    /// Where `path` (relative to the polled URL, no leading `/`) belongs; `None` when
    /// it is ignored.
    pub(crate) fn place(&self, path: &str) -> Option<Placement> {
        match self {
            Splitter::Trunk => (!path.is_empty()).then(|| Placement {
                project: None,
                branch: None,
                file: path.to_owned(),
            }),
            Splitter::Branches => standard_layout(path, None),
            Splitter::Projects => {
                let (project, rest) = path.split_once('/')?;
                if project.is_empty() {
                    return None;
                }
                standard_layout(rest, Some(project))
            }
            Splitter::Regex(regex) => {
                let captures = regex.captures(path)?;
                let group = |name: &str| {
                    captures
                        .name(name)
                        .map(|m| m.as_str())
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                };
                Some(Placement {
                    file: group("path")?,
                    branch: group("branch"),
                    project: group("project"),
                })
            }
        }
    }
}

/// `trunk/X` and `branches/B/X`, below an optional project directory.
fn standard_layout(path: &str, project: Option<&str>) -> Option<Placement> {
    let (branch, file) = if let Some(file) = path.strip_prefix("trunk/") {
        (None, file)
    } else {
        let rest = path.strip_prefix("branches/")?;
        let (name, file) = rest.split_once('/')?;
        if name.is_empty() {
            return None;
        }
        (Some(format!("branches/{name}")), file)
    };
    if file.is_empty() {
        return None;
    }
    Some(Placement {
        project: project.map(str::to_owned),
        branch,
        file: file.to_owned(),
    })
}

impl<'de> Deserialize<'de> for Split {
    /// `"trunk"`, `"branches"`, `"projects"`, or `{ regex = "..." }`; hand-written so
    /// that a typo gets a message naming the choices instead of serde's
    /// "did not match any variant".
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Split, D::Error> {
        deserializer.deserialize_any(SplitVisitor)
    }
}

struct SplitVisitor;

const PRESETS: &[&str] = &["trunk", "branches", "projects"];

impl<'de> Visitor<'de> for SplitVisitor {
    type Value = Split;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#""trunk", "branches", "projects" or { regex = "..." }"#)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Split, E> {
        match value {
            "trunk" => Ok(Split::Trunk),
            "branches" => Ok(Split::Branches),
            "projects" => Ok(Split::Projects),
            other => Err(E::unknown_variant(other, PRESETS)),
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Split, A::Error> {
        let mut regex = None;
        while let Some(key) = map.next_key::<String>()? {
            if key != "regex" {
                return Err(de::Error::unknown_field(&key, &["regex"]));
            }
            if regex.is_some() {
                return Err(de::Error::duplicate_field("regex"));
            }
            regex = Some(map.next_value::<String>()?);
        }
        regex
            .map(Split::Regex)
            .ok_or_else(|| de::Error::missing_field("regex"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Placed = Option<(Option<String>, Option<String>, String)>;

    fn place(split: &Split, path: &str) -> Placed {
        let placed = Splitter::new(split).unwrap().place(path)?;
        Some((placed.project, placed.branch, placed.file))
    }

    fn at(branch: Option<&str>, file: &str) -> Placed {
        Some((None, branch.map(str::to_owned), file.to_owned()))
    }

    fn in_project(project: &str, branch: Option<&str>, file: &str) -> Placed {
        Some((
            Some(project.to_owned()),
            branch.map(str::to_owned),
            file.to_owned(),
        ))
    }

    #[test]
    fn trunk_keeps_every_path() {
        assert_eq!(place(&Split::Trunk, "src/a b.c"), at(None, "src/a b.c"));
        assert_eq!(
            place(&Split::Trunk, "branches/x/y"),
            at(None, "branches/x/y")
        );
        assert_eq!(place(&Split::Trunk, ""), None);
    }

    #[test]
    fn branches_preset() {
        let s = Split::Branches;
        assert_eq!(place(&s, "trunk/src/a.c"), at(None, "src/a.c"));
        assert_eq!(place(&s, "trunk/dir"), at(None, "dir"));
        assert_eq!(
            place(&s, "branches/1.5.x/a.c"),
            at(Some("branches/1.5.x"), "a.c")
        );
        assert_eq!(place(&s, "trunk"), None);
        assert_eq!(place(&s, "trunk/"), None);
        assert_eq!(place(&s, "branches"), None);
        assert_eq!(place(&s, "branches/1.5.x"), None);
        assert_eq!(place(&s, "branches//a"), None);
        assert_eq!(place(&s, "tags/v1/a.c"), None);
        assert_eq!(place(&s, "README"), None);
        assert_eq!(place(&s, "trunkish/a"), None);
    }

    #[test]
    fn projects_preset() {
        let s = Split::Projects;
        assert_eq!(place(&s, "app/trunk/a.c"), in_project("app", None, "a.c"));
        assert_eq!(
            place(&s, "app/branches/b/x/y"),
            in_project("app", Some("branches/b"), "x/y")
        );
        assert_eq!(place(&s, "app/trunk"), None);
        assert_eq!(place(&s, "app/tags/v1/a"), None);
        assert_eq!(place(&s, "trunk/a.c"), None);
        assert_eq!(place(&s, "app"), None);
    }

    #[test]
    fn regex_groups() {
        let s = Split::Regex(
            r"(?P<project>[^/]+)/(?:trunk|(?P<branch>branches/[^/]+))/(?P<path>.*)".into(),
        );
        assert_eq!(
            place(&s, "lib/branches/b1/src/x.c"),
            in_project("lib", Some("branches/b1"), "src/x.c")
        );
        assert_eq!(place(&s, "lib/trunk/x.c"), in_project("lib", None, "x.c"));
        assert_eq!(place(&s, "lib/trunk/"), None, "empty path: the branch root");
        assert_eq!(place(&s, "lib/tags/v1/x.c"), None);
        // Anchored at both ends.
        let s = Split::Regex(r"src/(?P<path>[a-z]+)".into());
        assert_eq!(place(&s, "src/abc"), at(None, "abc"));
        assert_eq!(place(&s, "src/abc/x"), None);
        assert_eq!(place(&s, "x/src/abc"), None);
        // An alternation is anchored as a whole.
        let s = Split::Regex(r"a/(?P<path>.+)|b/(?P<branch>x)".into());
        assert_eq!(place(&s, "zz/a/q"), None);
    }

    #[test]
    fn regex_is_validated() {
        let missing = Splitter::new(&Split::Regex("(?P<branch>.*)".into())).unwrap_err();
        assert!(missing.contains("`path`"), "{missing}");
        let broken = Splitter::new(&Split::Regex("(?P<path>".into())).unwrap_err();
        assert!(broken.contains("does not compile"), "{broken}");
        let ok = Splitter::new(&Split::Regex("(?P<path>.*)".into())).unwrap();
        assert_eq!(ok.describe(), "split regex (?P<path>.*)");
    }

    #[test]
    fn deserializes_presets_and_regex() {
        #[derive(Deserialize)]
        struct T {
            split: Split,
        }
        let parse = |s: &str| serde_json::from_str::<T>(s).map(|t| t.split);
        assert_eq!(parse(r#"{"split":"branches"}"#).unwrap(), Split::Branches);
        assert_eq!(
            parse(r#"{"split":{"regex":"(?P<path>.*)"}}"#).unwrap(),
            Split::Regex("(?P<path>.*)".into())
        );
        let typo = parse(r#"{"split":"branch"}"#).unwrap_err().to_string();
        assert!(
            typo.contains("trunk") && typo.contains("projects"),
            "{typo}"
        );
        assert!(parse(r#"{"split":{"regexp":"x"}}"#).is_err());
        assert!(parse(r#"{"split":{}}"#).is_err());
        assert!(parse(r#"{"split":3}"#).is_err());
    }
}
