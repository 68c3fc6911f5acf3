//! The poller's private bare mirror: the objects the history walk needs.
//!
//! Only refs that moved are fetched, each to the same name (`+refs/heads/X:refs/heads/X`),
//! with tag auto-following and pruning off, so a fetch brings exactly the history of
//! the watched refs and nothing the user did not ask for. The mirror is a cache: if it
//! is lost or corrupt it is rebuilt, and the cursor (not the mirror's refs) remains the
//! record of what was already reported.

use std::path::{Path, PathBuf};

use git2::{AutotagOption, FetchOptions, FetchPrune, Oid, Repository};

use crate::LogContext;
use crate::cursor::RefMap;
use crate::error::GitError;
use crate::location::Location;
use crate::remote::{Credentials, proxy_options};
use crate::watch::{HEADS, TAGS};

pub(crate) struct Mirror {
    repo: Repository,
    path: PathBuf,
}

impl Mirror {
    /// Opens the mirror if it exists; `None` if it was never created.
    pub(crate) fn open_existing(
        path: &Path,
        log: &LogContext<'_>,
    ) -> Result<Option<Mirror>, GitError> {
        if !path.exists() {
            return Ok(None);
        }
        Self::open_or_init(path, log).map(Some)
    }

    /// Opens the mirror, creating it if missing and re-creating it (with a warning) if
    /// it cannot be opened: a half-written or damaged cache must not wedge the poller.
    pub(crate) fn open_or_init(path: &Path, log: &LogContext<'_>) -> Result<Mirror, GitError> {
        let init = |path: &Path| {
            Repository::init_bare(path)
                .map(|repo| Mirror {
                    repo,
                    path: path.to_owned(),
                })
                .map_err(|e| GitError::mirror(path, e))
        };
        if !path.exists() || is_empty_dir(path) {
            return init(path);
        }
        match Repository::open_bare(path) {
            Ok(repo) => Ok(Mirror {
                repo,
                path: path.to_owned(),
            }),
            Err(error) => {
                tracing::warn!(
                    poller = log.poller,
                    repo = log.repo,
                    mirror = %path.display(),
                    error = error.message(),
                    "the mirror cannot be opened; removing and re-creating it"
                );
                std::fs::remove_dir_all(path).map_err(|e| GitError::mirror(path, e))?;
                init(path)
            }
        }
    }

    pub(crate) fn repo(&self) -> &Repository {
        &self.repo
    }

    /// Whether `oid` is a commit present in the mirror (a known head the walk can hide).
    pub(crate) fn has_commit(&self, oid: Oid) -> bool {
        self.repo.find_commit(oid).is_ok()
    }

    /// Whether `oid` is present in the mirror at all (a tag may peel to a tree).
    pub(crate) fn has_object(&self, oid: Oid) -> bool {
        self.repo.odb().is_ok_and(|odb| odb.exists(oid))
    }

    /// Fetches `names` (full ref names) from the remote into the same names here.
    pub(crate) fn fetch(
        &self,
        location: &Location,
        credentials: &Credentials,
        names: &[&String],
    ) -> Result<(), GitError> {
        if names.is_empty() {
            return Ok(());
        }
        let fetch_error = |e: git2::Error| GitError::Fetch {
            refs: names.len(),
            message: e.message().to_owned(),
        };
        let refspecs: Vec<String> = names.iter().map(|n| format!("+{n}:{n}")).collect();
        let mut remote = self
            .repo
            .remote_anonymous(&location.url)
            .map_err(fetch_error)?;
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(credentials.callbacks())
            .proxy_options(proxy_options())
            .download_tags(AutotagOption::None)
            .prune(FetchPrune::Off)
            .update_fetchhead(false);
        remote
            .fetch(&refspecs, Some(&mut options), None)
            .map_err(fetch_error)
    }

    /// Deletes branch and tag refs the poller no longer watches (deleted on the remote
    /// or dropped from the config), so the mirror's refs mirror the cursor.
    pub(crate) fn retain_refs(&self, keep: &RefMap) -> Result<(), GitError> {
        let mirror_error = |e: git2::Error| GitError::mirror(&self.path, e);
        let mut stale = Vec::new();
        for reference in self.repo.references().map_err(mirror_error)? {
            let reference = reference.map_err(mirror_error)?;
            let name = String::from_utf8_lossy(reference.name_bytes()).into_owned();
            let ours = name.starts_with(HEADS) || name.starts_with(TAGS);
            if ours && !keep.contains_key(&name) {
                stale.push(reference);
            }
        }
        for mut reference in stale {
            reference.delete().map_err(mirror_error)?;
        }
        Ok(())
    }
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none())
}
