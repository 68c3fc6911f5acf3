//! One git poller: list, compare with the cursor, and only then fetch and walk.
//!
//! The network work is async (`remote.rs`); the mirror's work (libgit2 on the disk)
//! runs on blocking threads, holding the mirror's lock until it is done, even if the
//! poll that started it was abandoned at its deadline.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use git2::Oid;
use polld_backend::filter::PathFilter;
use polld_backend::{Cursor, PollError, PollOutcome, Poller};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::LogContext;
use crate::cursor::{self, RefMap};
use crate::error::GitError;
use crate::mirror::{MAX_PACKS, Mirror};
use crate::remote::{Advertisement, AuthConfig, Credentials};
use crate::shared::SharedRemote;
use crate::walk::{self, Moves, Walked};
use crate::watch::Watch;

pub(crate) struct GitPoller {
    inner: Arc<Inner>,
}

pub(crate) struct Settings {
    /// This poller's remote, whose client and listing it shares with other pollers.
    pub(crate) remote: Arc<SharedRemote>,
    pub(crate) name: String,
    /// As configured: may hold credentials, so it is used only to scrub messages.
    pub(crate) repo: String,
    pub(crate) watch: Watch,
    pub(crate) build_pushes_with_no_commits: bool,
    pub(crate) auth: AuthConfig,
    /// The login an http(s) URL names, taken out of it.
    pub(crate) url_username: Option<String>,
    pub(crate) url_password: Option<String>,
    pub(crate) mirror_dir: PathBuf,
    /// The deadline of each remote operation (the listing, the fetch).
    pub(crate) timeout: Duration,
    /// `paths` and `ignore_paths`, checked on every file a change is read with.
    pub(crate) paths: Arc<PathFilter>,
}

struct Inner {
    settings: Settings,
    /// The repo as it may be logged.
    shown_repo: String,
    /// Serialises use of the mirror: by polls (should the core ever overlap two polls
    /// of one poller, or a poll abandoned at its deadline still run) and by compaction.
    mirror_lock: Arc<Mutex<()>>,
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
                mirror_lock: Arc::default(),
                compaction_due: AtomicBool::new(false),
            }),
        }
    }
}

#[async_trait]
impl Poller for GitPoller {
    async fn poll(&self, cursor: Option<&Cursor>) -> Result<PollOutcome, PollError> {
        let inner = &self.inner;
        let repo = &inner.settings.repo;
        let credentials = Credentials::resolve(
            &inner.settings.auth,
            inner.settings.url_username.as_deref(),
            inner.settings.url_password.as_deref(),
        )
        .map_err(|e| e.into_poll_error(repo))?;
        let outcome = inner.poll(Instant::now(), cursor, &credentials).await;
        if inner.compaction_due.swap(false, Ordering::SeqCst) {
            // Off the poll's path: the result goes out now, a later poll that needs the
            // mirror waits for the compaction.
            tokio::spawn(Arc::clone(inner).compact());
        }
        outcome.map_err(|e| {
            let error = e.into_poll_error(repo);
            match credentials.password() {
                Some(password) => {
                    PollError::new(polld_backend::redact::hide(&error.to_string(), password))
                }
                None => error,
            }
        })
    }

    fn describe(&self) -> String {
        self.inner.settings.watch.summary().to_owned()
    }
}

impl Inner {
    async fn compact(self: Arc<Self>) {
        let guard = Arc::clone(&self.mirror_lock).lock_owned().await;
        let started = Instant::now();
        let inner = Arc::clone(&self);
        let compacted = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            Mirror::open_existing(&inner.settings.mirror_dir, &inner.log())
                .and_then(|mirror| mirror.map_or(Ok(()), |m| m.compact()))
        })
        .await
        .unwrap_or_else(|e| Err(GitError::Task(e.to_string())));
        match compacted {
            Ok(()) => tracing::debug!(
                poller = self.settings.name,
                repo = self.shown_repo,
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
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

    async fn poll(
        self: &Arc<Self>,
        asked: Instant,
        cursor: Option<&Cursor>,
        credentials: &Credentials,
    ) -> Result<PollOutcome, GitError> {
        let settings = &self.settings;
        if let Some(mirrors) = settings.mirror_dir.parent() {
            crate::pin_pack_limits(mirrors);
        }
        let old = cursor.map(cursor::decode).transpose()?;
        let log = self.log();
        let log = &log;
        let listing = settings
            .remote
            .listing(asked, |remote, prefixes| async move {
                remote.list(prefixes, credentials, log).await
            });
        let advertised = tokio::time::timeout(settings.timeout, listing)
            .await
            .map_err(|_| GitError::ListRefs(DEADLINE.into()))??;
        let watched = settings
            .watch
            .select(&advertised.refs, advertised.head.as_deref());
        if old.as_ref() == Some(&watched) {
            return Ok(PollOutcome::Unchanged);
        }

        let guard = Arc::clone(&self.mirror_lock).lock_owned().await;
        let Some(old) = old else {
            self.first_poll(guard, &watched, &advertised, credentials)
                .await?;
            return Ok(PollOutcome::Advanced {
                cursor: cursor::encode(&watched)?,
                changes: Vec::new(),
            });
        };
        let walked = self
            .report(guard, old.clone(), &watched, &advertised, credentials)
            .await?;
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
    async fn first_poll(
        self: &Arc<Self>,
        guard: OwnedMutexGuard<()>,
        watched: &RefMap,
        advertised: &Advertisement,
        credentials: &Credentials,
    ) -> Result<(), GitError> {
        if watched.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = watched.keys().cloned().collect();
        let (guard, haves) = self.prepare(guard, names.clone()).await?;
        self.fetch(&names, &haves.known, advertised, credentials)
            .await?;
        let inner = Arc::clone(self);
        let (watched, tips) = (watched.clone(), tips_of(&names, advertised));
        self.blocking(guard, move || {
            let mirror = Mirror::open_or_init(&inner.settings.mirror_dir, &inner.log())?;
            mirror.point_refs(&tips)?;
            mirror.retain_refs(&watched)
        })
        .await
    }

    async fn report(
        self: &Arc<Self>,
        guard: OwnedMutexGuard<()>,
        old: RefMap,
        new: &RefMap,
        advertised: &Advertisement,
        credentials: &Credentials,
    ) -> Result<Walked, GitError> {
        let head = advertised.head.clone();
        let moved: Vec<String> = Moves {
            old: &old,
            new,
            remote_head: head.as_deref(),
        }
        .report_order()
        .into_iter()
        .cloned()
        .collect();
        let inner = Arc::clone(self);
        let new = new.clone();
        if moved.is_empty() {
            // Only deletions: nothing to fetch or walk, just forget the refs.
            return self
                .blocking(guard, move || {
                    if let Some(mirror) =
                        Mirror::open_existing(&inner.settings.mirror_dir, &inner.log())?
                    {
                        mirror.retain_refs(&new)?;
                    }
                    Ok(Walked {
                        changes: Vec::new(),
                        stopped: None,
                    })
                })
                .await;
        }
        // Unchanged refs whose commits the mirror lost (it was wiped) are fetched again
        // so that they still bound the walk of the refs that moved.
        let missing: Vec<String> = new
            .keys()
            .filter(|name| !moved.contains(name))
            .cloned()
            .collect();
        let (guard, prepared) = self
            .prepare_report(guard, moved.clone(), missing, &new)
            .await?;
        // The fetch is an operation of its own, with a deadline of its own.
        self.fetch(&prepared.to_fetch, &prepared.known, advertised, credentials)
            .await?;
        let tips = tips_of(&prepared.to_fetch, advertised);
        let build_pushes = self.settings.build_pushes_with_no_commits;
        let walked = self
            .blocking(guard, move || {
                let log = inner.log();
                let mirror = Mirror::open_or_init(&inner.settings.mirror_dir, &log)?;
                mirror.point_refs(&tips)?;
                if mirror.pack_count() > MAX_PACKS {
                    inner.compaction_due.store(true, Ordering::SeqCst);
                }
                for name in &moved {
                    if let Some(&oid) = new.get(name)
                        && !mirror.has_object(oid)
                    {
                        return Err(GitError::Raced {
                            name: name.clone(),
                            oid: oid.to_string(),
                        });
                    }
                }
                let moves = Moves {
                    old: &old,
                    new: &new,
                    remote_head: head.as_deref(),
                };
                let walked =
                    walk::changes(&mirror, &moves, build_pushes, &inner.settings.paths, &log)?;
                mirror.retain_refs(&new)?;
                Ok(walked)
            })
            .await?;
        tracing::debug!(
            poller = self.settings.name,
            repo = self.shown_repo,
            changes = walked.changes.len(),
            "remote moved"
        );
        Ok(walked)
    }

    /// Opens (or makes) the mirror: the ids it has, for the fetch's `have` lines.
    async fn prepare(
        self: &Arc<Self>,
        guard: OwnedMutexGuard<()>,
        to_fetch: Vec<String>,
    ) -> Result<(OwnedMutexGuard<()>, Prepared), GitError> {
        let inner = Arc::clone(self);
        self.blocking_keep(guard, move || {
            let mirror = Mirror::open_or_init(&inner.settings.mirror_dir, &inner.log())?;
            Ok(Prepared {
                known: mirror.ref_targets()?,
                to_fetch,
            })
        })
        .await
    }

    /// As [`Inner::prepare`], and which refs to fetch: the moved ones, and the
    /// `unchanged` ones whose objects the mirror lacks.
    async fn prepare_report(
        self: &Arc<Self>,
        guard: OwnedMutexGuard<()>,
        moved: Vec<String>,
        unchanged: Vec<String>,
        new: &RefMap,
    ) -> Result<(OwnedMutexGuard<()>, Prepared), GitError> {
        let inner = Arc::clone(self);
        let new = new.clone();
        self.blocking_keep(guard, move || {
            let mirror = Mirror::open_or_init(&inner.settings.mirror_dir, &inner.log())?;
            let mut to_fetch = moved;
            to_fetch.extend(
                unchanged
                    .into_iter()
                    .filter(|name| new.get(name).is_some_and(|oid| !mirror.has_object(*oid))),
            );
            Ok(Prepared {
                known: mirror.ref_targets()?,
                to_fetch,
            })
        })
        .await
    }

    /// Fetches `names` into the mirror within the poller's `timeout`.
    async fn fetch(
        &self,
        names: &[String],
        known: &[Oid],
        advertised: &Advertisement,
        credentials: &Credentials,
    ) -> Result<(), GitError> {
        let refs = tips_of(names, advertised);
        let fetch =
            self.settings
                .remote
                .remote
                .fetch(&self.settings.mirror_dir, &refs, known, credentials);
        tokio::time::timeout(self.settings.timeout, fetch)
            .await
            .map_err(|_| GitError::Fetch {
                refs: refs.len(),
                message: format!(
                    "{DEADLINE} (the first fetch of a large repository may need a longer one)"
                ),
            })?
    }

    /// Runs `work` on a blocking thread that holds the mirror's lock until it is done.
    async fn blocking<T: Send + 'static>(
        &self,
        guard: OwnedMutexGuard<()>,
        work: impl FnOnce() -> Result<T, GitError> + Send + 'static,
    ) -> Result<T, GitError> {
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            work()
        })
        .await
        .unwrap_or_else(|e| Err(GitError::Task(e.to_string())))
    }

    /// As [`Inner::blocking`], handing the lock back for the next step.
    async fn blocking_keep<T: Send + 'static>(
        &self,
        guard: OwnedMutexGuard<()>,
        work: impl FnOnce() -> Result<T, GitError> + Send + 'static,
    ) -> Result<(OwnedMutexGuard<()>, T), GitError> {
        tokio::task::spawn_blocking(move || work().map(|value| (guard, value)))
            .await
            .unwrap_or_else(|e| Err(GitError::Task(e.to_string())))
    }
}

/// What the mirror has before a fetch, and what to fetch.
struct Prepared {
    known: Vec<Oid>,
    to_fetch: Vec<String>,
}

/// `names` with the ids the remote advertised for them (an annotated tag's own id).
fn tips_of(names: &[String], advertised: &Advertisement) -> Vec<(String, Oid)> {
    names
        .iter()
        .filter_map(|name| {
            let oid = advertised
                .tips
                .get(name)
                .or_else(|| advertised.refs.get(name))?;
            Some((name.clone(), *oid))
        })
        .collect()
}

const DEADLINE: &str = "it did not finish within the poller's `timeout`";
