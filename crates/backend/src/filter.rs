//! The `paths` and `ignore_paths` keys: which files make a commit worth reporting.
//!
//! The core builds one [`PathFilter`] per poller from its config and decides with it
//! (with the message and author filters, which need nothing from a backend). It lives in
//! this crate because a commit's files can outnumber what a change keeps
//! ([`crate::limits::MAX_FILES`]): [`crate::limits::Files`], which every backend reads
//! files into, asks the filter about each file as it is read and makes sure a wanted
//! file is among those kept, so the core's verdict on the kept files is the verdict on
//! all of them.

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// Compiled `paths` and `ignore_paths`: a commit is wanted when one of its files
/// matches `paths` (every file does when `paths` is empty) and not `ignore_paths`.
#[derive(Debug, Clone, Default)]
pub struct PathFilter {
    paths: Option<GlobSet>,
    ignore: Option<GlobSet>,
}

impl PathFilter {
    /// Compiles the globs: `*` and `?` stay within one path segment, `**` spans
    /// segments, `[abc]` and `{a,b}` as usual. An error names the glob.
    pub fn new(paths: &[String], ignore_paths: &[String]) -> Result<PathFilter, String> {
        Ok(PathFilter {
            paths: compile("paths", paths)?,
            ignore: compile("ignore_paths", ignore_paths)?,
        })
    }

    /// Whether this filter lets every commit through.
    pub fn is_noop(&self) -> bool {
        self.paths.is_none() && self.ignore.is_none()
    }

    /// Whether `file` (relative to the branch root) makes its commit worth reporting.
    pub fn wants(&self, file: &str) -> bool {
        self.paths.as_ref().is_none_or(|set| set.is_match(file))
            && !self.ignore.as_ref().is_some_and(|set| set.is_match(file))
    }

    /// Whether a commit touching `files` is reported. A commit that touches no file (an
    /// empty commit, an svn property change on the root) is reported unless `paths` is
    /// set: `ignore_paths` alone has nothing to ignore in it, while `paths` asks for a
    /// file that matches.
    pub fn wants_commit<'a>(&self, files: impl IntoIterator<Item = &'a str>) -> bool {
        let mut files = files.into_iter().peekable();
        if self.is_noop() || (files.peek().is_none() && self.paths.is_none()) {
            return true;
        }
        files.any(|file| self.wants(file))
    }
}

fn compile(key: &str, globs: &[String]) -> Result<Option<GlobSet>, String> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for glob in globs {
        set.add(path_glob(glob).map_err(|error| format!("{key} glob {glob:?}: {error}"))?);
    }
    set.build()
        .map(Some)
        .map_err(|error| format!("{key}: {error}"))
}

fn path_glob(glob: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

/// Why a path glob can never match a file of a change, for `polld check` to warn
/// about: files are relative (`src/main.rs`), so a glob starting with `/` or `./` or
/// ending with `/` matches nothing.
pub fn never_matches(glob: &str) -> Option<&'static str> {
    if glob.starts_with('/') {
        Some("files are relative to the repository (or branch) root: drop the leading /")
    } else if glob.starts_with("./") {
        Some("files are named without ./")
    } else if glob.ends_with('/') {
        Some("a glob ending in / matches no file: add ** (dir/**)")
    } else if glob.is_empty() {
        Some("an empty glob matches no file")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(paths: &[&str], ignore: &[&str]) -> PathFilter {
        let owned = |globs: &[&str]| globs.iter().map(|g| g.to_string()).collect::<Vec<_>>();
        PathFilter::new(&owned(paths), &owned(ignore)).unwrap()
    }

    #[test]
    fn star_stays_in_a_segment_and_double_star_spans() {
        let src = filter(&["src/*.rs"], &[]);
        assert!(src.wants("src/main.rs"));
        assert!(!src.wants("src/deep/main.rs"));
        let deep = filter(&["service-a/**", "Cargo.*"], &[]);
        assert!(deep.wants("service-a/x/y/z.go"));
        assert!(deep.wants("Cargo.toml"));
        assert!(!deep.wants("service-b/main.go"));
        assert!(!deep.wants("sub/Cargo.toml"));
    }

    #[test]
    fn a_commit_is_wanted_unless_every_matching_file_is_ignored() {
        let docs = filter(&[], &["docs/**", "*.md"]);
        assert!(!docs.wants_commit(["docs/a.md", "README.md"]));
        assert!(docs.wants_commit(["docs/a.md", "src/lib.rs"]));
        assert!(
            docs.wants_commit([]),
            "an empty commit has nothing to ignore"
        );
        let both = filter(&["src/**"], &["src/generated/**"]);
        assert!(!both.wants_commit(["src/generated/a.rs", "docs/x"]));
        assert!(both.wants_commit(["src/generated/a.rs", "src/b.rs"]));
        assert!(!both.wants_commit([]), "paths asks for a matching file");
        assert!(PathFilter::default().wants_commit([]));
    }

    #[test]
    fn bad_and_hopeless_globs_are_named() {
        let error = PathFilter::new(&["src/[".to_owned()], &[]).unwrap_err();
        assert!(error.contains("paths glob \"src/[\""), "{error}");
        assert!(never_matches("/src/**").is_some());
        assert!(never_matches("./src/**").is_some());
        assert!(never_matches("src/").is_some());
        assert!(never_matches("src/**").is_none());
    }
}
