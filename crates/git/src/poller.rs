//! One git poller: list, compare with the cursor, and only then fetch and walk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use polld_backend::{Cursor, PollError, PollOutcome, Poller};

use crate::LogContext;
use crate::cursor::{self, RefMap};
use crate::error::GitError;
use crate::location::Location;
use crate::mirror::{MAX_PACKS, Mirror};
use crate::remote::{self, AuthConfig, Credentials};
use crate::shared;
use crate::walk::{self, Moves, Walked};
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
    /// The deadline of each remote operation (the listing, the fetch).
    pub(crate) timeout: Duration,
}

struct Inner {
    settings: Settings,
    /// The repo as it may be logged.
    shown_repo: String,
    /// Serialises use of the mirror: by a poll (should the core ever overlap two polls
    /// of one poller, or a poll abandoned at its deadline still run) and by compaction.
    mirror_lock: Mutex<()>,
    /// Set by a fetch that left the mirror with more than [`MAX_PACKS`] packs.
    compaction_due: AtomicBool,
}

impl GitPoller {
    pub(crate) fn new(settings: Settings) -> GitPoller {
        let shown_repo = polld_backend::redact::strip_userinfo(&settings.repo);
        GitPoller {
            inner: Arc::new(Inner {
                settings,
                shown_repo,
                mirror_lock: Mutex::new(()),
                compaction_due: AtomicBool::new(false),
            }),
        }
    }
}

#[async_trait]
impl Poller for GitPoller {
    async fn poll(&self, cursor: Option<&Cursor>) -> Result<PollOutcome, PollError> {
        let asked = Instant::now();
        let inner = Arc::clone(&self.inner);
        let cursor = cursor.cloned();
        // libgit2 blocks on the network and the disk: keep it off the async workers.
        let outcome = tokio::task::spawn_blocking(move || inner.poll(asked, cursor.as_ref()))
            .await
            .unwrap_or_else(|e| Err(GitError::Task(e.to_string())));
        if self.inner.compaction_due.swap(false, Ordering::SeqCst) {
            // Off the poll's path: the result goes out now, a later poll that needs the
            // mirror waits for the compaction.
            let inner = Arc::clone(&self.inner);
            tokio::task::spawn_blocking(move || inner.compact());
        }
        outcome.map_err(|e| e.into_poll_error(&self.inner.settings.repo))
    }

    fn describe(&self) -> String {
        self.inner.settings.watch.summary().to_owned()
    }
}

impl Inner {
    fn compact(&self) {
        let _mirror_guard = self
            .mirror_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let started = Instant::now();
        let compacted = Mirror::open_existing(&self.settings.mirror_dir, &self.log())
            .and_then(|mirror| mirror.map_or(Ok(()), |m| m.compact()));
        match compacted {
            Ok(()) => tracing::debug!(
                poller = self.settings.name,
                repo = self.shown_repo,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "compacted the mirror's packs"
            ),
            Err(error) => tracing::warn!(
                poller = self.settings.name,
                repo = self.shown_repo,
                error = %polld_backend::redact::scrub(&error.to_string(), &self.settings.repo),
                "cannot compact the mirror's packs; it works as it is"
            ),
        }
    }

    fn log(&self) -> LogContext<'_> {
        LogContext {
            poller: &self.settings.name,
            repo: &self.shown_repo,
        }
    }

    fn poll(&self, asked: Instant, cursor: Option<&Cursor>) -> Result<PollOutcome, GitError> {
        let settings = &self.settings;
        if let Some(mirrors) = settings.mirror_dir.parent() {
            crate::pin_pack_limits(mirrors);
        }
        let old = cursor.map(cursor::decode).transpose()?;
        let credentials = Credentials::resolve(&settings.auth, &settings.location)?;
        let deadline = Instant::now() + settings.timeout;
        let advertised = settings.remote.listing(asked, |prefixes| {
            remote::list(
                &settings.location,
                &credentials,
                prefixes,
                deadline,
                &self.log(),
            )
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
        let Some(old) = &old else {
            self.first_poll(&watched, &credentials)?;
            return Ok(PollOutcome::Advanced {
                cursor: cursor::encode(&watched)?,
                changes: Vec::new(),
            });
        };
        let moves = Moves {
            old,
            new: &watched,
            remote_head: advertised.head.as_deref(),
        };
        let walked = self.report(&moves, &credentials)?;
        let Some(stopped) = walked.stopped else {
            return Ok(PollOutcome::Advanced {
                cursor: cursor::encode(&watched)?,
                changes: walked.changes,
            });
        };
        // More than one poll reports: the cursor says how far this one got, so the
        // next poll (at once) reports the rest.
        let mut cursor = watched.clone();
        let (name, at) = stopped.at;
        for name in stopped
            .not_walked
            .iter()
            .chain(at.is_none().then_some(&name))
        {
            match old.get(name) {
                Some(oid) => cursor.insert(name.clone(), *oid),
                None => cursor.remove(name),
            };
        }
        if let Some(oid) = at {
            cursor.insert(name, oid);
        }
        Ok(PollOutcome::Partial {
            cursor: cursor::encode(&cursor)?,
            changes: walked.changes,
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
        let deadline = Instant::now() + self.settings.timeout;
        mirror.fetch(&self.settings.location, credentials, &names, deadline)?;
        mirror.retain_refs(watched)
    }

    fn report(&self, moves: &Moves<'_>, credentials: &Credentials) -> Result<Walked, GitError> {
        let settings = &self.settings;
        let moved = moves.report_order();
        if moved.is_empty() {
            // Only deletions: nothing to fetch or walk, just forget the refs.
            if let Some(mirror) = Mirror::open_existing(&settings.mirror_dir, &self.log())? {
                mirror.retain_refs(moves.new)?;
            }
            return Ok(Walked {
                changes: Vec::new(),
                stopped: None,
            });
        }
        // The fetch is an operation of its own, with a deadline of its own.
        let deadline = Instant::now() + settings.timeout;

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
        mirror.fetch(&settings.location, credentials, &to_fetch, deadline)?;
        if mirror.pack_count() > MAX_PACKS {
            self.compaction_due.store(true, Ordering::SeqCst);
        }
        for (name, &oid) in moved.iter().filter_map(|n| Some((*n, moves.new.get(*n)?))) {
            if !mirror.has_object(oid) {
                return Err(GitError::Raced {
                    name: name.clone(),
                    oid: oid.to_string(),
                });
            }
        }

        let walked = walk::changes(
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
            changes = walked.changes.len(),
            "remote moved"
        );
        Ok(walked)
    }
}
