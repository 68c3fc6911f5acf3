//! One git poller: list, compare with the cursor, and only then fetch and walk.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use polld_backend::{Cursor, PollError, PollOutcome, Poller};

use crate::LogContext;
use crate::cursor::{self, RefMap};
use crate::error::GitError;
use crate::location::Location;
use crate::mirror::Mirror;
use crate::remote::{self, AuthConfig, Credentials};
use crate::shared;
use crate::walk::{self, Moves};
use crate::watch::Watch;

pub(crate) struct GitPoller {
    inner: Arc<Inner>,
}

pub(crate) struct Settings {
    /// This poller's remote, whose listing it shares with other pollers of it.
    pub(crate) remote: Arc<shared::Remote>,
    pub(crate) name: String,
    /// As configured: may hold credentials, so it is used only to scrub messages.
    pub(crate) repo: String,
    pub(crate) location: Location,
    pub(crate) watch: Watch,
    pub(crate) build_pushes_with_no_commits: bool,
    pub(crate) auth: AuthConfig,
    pub(crate) mirror_dir: PathBuf,
}

struct Inner {
    settings: Settings,
    /// The repo as it may be logged.
    shown_repo: String,
    /// Serialises use of the mirror should the core ever overlap two polls of one poller.
    mirror_lock: Mutex<()>,
}

impl GitPoller {
    pub(crate) fn new(settings: Settings) -> GitPoller {
        let shown_repo = polld_backend::redact::strip_userinfo(&settings.repo);
        GitPoller {
            inner: Arc::new(Inner {
                settings,
                shown_repo,
                mirror_lock: Mutex::new(()),
            }),
        }
    }
}

#[async_trait]
impl Poller for GitPoller {
    async fn poll(&self, cursor: Option<&Cursor>) -> Result<PollOutcome, PollError> {
        let asked = std::time::Instant::now();
        let inner = Arc::clone(&self.inner);
        let cursor = cursor.cloned();
        // libgit2 blocks on the network and the disk: keep it off the async workers.
        let outcome = tokio::task::spawn_blocking(move || inner.poll(asked, cursor.as_ref()))
            .await
            .unwrap_or_else(|e| Err(GitError::Task(e.to_string())));
        outcome.map_err(|e| e.into_poll_error(&self.inner.settings.repo))
    }

    fn describe(&self) -> String {
        self.inner.settings.watch.summary().to_owned()
    }
}

impl Inner {
    fn log(&self) -> LogContext<'_> {
        LogContext {
            poller: &self.settings.name,
            repo: &self.shown_repo,
        }
    }

    fn poll(
        &self,
        asked: std::time::Instant,
        cursor: Option<&Cursor>,
    ) -> Result<PollOutcome, GitError> {
        let settings = &self.settings;
        let old = cursor.map(cursor::decode).transpose()?;
        let credentials = Credentials::resolve(&settings.auth, &settings.location)?;
        let advertised = settings.remote.listing(asked, |prefixes| {
            remote::list(&settings.location, &credentials, prefixes, &self.log())
        })?;
        let watched = settings
            .watch
            .select(&advertised.refs, advertised.head.as_deref());
        if old.as_ref() == Some(&watched) {
            return Ok(PollOutcome::Unchanged);
        }

        let _mirror_guard = self
            .mirror_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let changes = match &old {
            None => {
                self.first_poll(&watched, &credentials)?;
                Vec::new()
            }
            Some(old) => {
                let moves = Moves {
                    old,
                    new: &watched,
                    remote_head: advertised.head.as_deref(),
                };
                self.report(&moves, &credentials)?
            }
        };
        Ok(PollOutcome::Advanced {
            cursor: cursor::encode(&watched)?,
            changes,
        })
    }

    /// The first poll reports nothing, but fetches the watched refs now: later polls
    /// then fetch only increments, and a force push before the second poll can still
    /// be told apart from new work because the old head is in the mirror.
    fn first_poll(&self, watched: &RefMap, credentials: &Credentials) -> Result<(), GitError> {
        if watched.is_empty() {
            return Ok(());
        }
        let mirror = Mirror::open_or_init(&self.settings.mirror_dir, &self.log())?;
        let names: Vec<&String> = watched.keys().collect();
        mirror.fetch(&self.settings.location, credentials, &names)?;
        mirror.retain_refs(watched)
    }

    fn report(
        &self,
        moves: &Moves<'_>,
        credentials: &Credentials,
    ) -> Result<Vec<polld_backend::NewChange>, GitError> {
        let settings = &self.settings;
        let moved = moves.report_order();
        if moved.is_empty() {
            // Only deletions: nothing to fetch or walk, just forget the refs.
            if let Some(mirror) = Mirror::open_existing(&settings.mirror_dir, &self.log())? {
                mirror.retain_refs(moves.new)?;
            }
            return Ok(Vec::new());
        }

        let mirror = Mirror::open_or_init(&settings.mirror_dir, &self.log())?;
        // Unchanged refs whose commits the mirror lost (it was wiped) are fetched again
        // so that they still bound the walk of the refs that moved.
        let mut to_fetch = moved.clone();
        to_fetch.extend(
            moves
                .new
                .iter()
                .filter(|(name, oid)| !moved.contains(name) && !mirror.has_object(**oid))
                .map(|(name, _)| name),
        );
        mirror.fetch(&settings.location, credentials, &to_fetch)?;
        for (name, &oid) in moved.iter().filter_map(|n| Some((*n, moves.new.get(*n)?))) {
            if !mirror.has_object(oid) {
                return Err(GitError::Raced {
                    name: name.clone(),
                    oid: oid.to_string(),
                });
            }
        }

        let changes = walk::changes(
            &mirror,
            moves,
            settings.build_pushes_with_no_commits,
            &self.log(),
        )?;
        mirror.retain_refs(moves.new)?;
        tracing::debug!(
            poller = settings.name,
            repo = self.shown_repo,
            refs = moved.len(),
            changes = changes.len(),
            "remote moved"
        );
        Ok(changes)
    }
}
