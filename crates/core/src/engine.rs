//! One poll, from asking the backend to having its result safely stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::Notify;
use tracing::Instrument;

use polld_backend::{Cursor, NewChange, PollOutcome, Poller, redact};

use crate::config::PollerConfig;
use crate::delivery::QueuedSignal;
use crate::leases::Holding;
use crate::metrics::Metrics;
use crate::model::Change;
use crate::scheduler::{PollTarget, Polled};
use crate::store::{PollRecord, Store, StoreError, StoredCursor, unix_now};
use crate::supervise::catch_panic;

/// A whole poll (listing, fetch, walk) is given at most this many of its `timeout`s.
const POLL_DEADLINES: u32 = 3;

/// A poller as it runs: its config and the poller its backend built from it.
pub struct ActivePoller {
    pub config: PollerConfig,
    pub poller: Arc<dyn Poller>,
}

/// Runs polls and stores what they find. Cursors are cached in memory (the store is
/// written only when a poll finds something), and poll outcomes are kept for
/// [`Engine::take_poll_records`] so they can be saved in batches.
pub struct Engine {
    store: Arc<dyn Store>,
    /// Changed by reloads; a poll in flight keeps the poller it started with.
    pollers: RwLock<HashMap<String, Arc<ActivePoller>>>,
    cursors: Mutex<HashMap<String, StoredCursor>>,
    records: Mutex<HashMap<String, PollRecord>>,
    /// Woken when `records` gains its first entry since the last save.
    unsaved: Notify,
    metrics: Arc<Metrics>,
    /// Told whenever changes are queued.
    queued: Arc<QueuedSignal>,
    /// The pollers this process may poll (every one, unless replicas share the store).
    holding: Arc<Holding>,
}

impl Engine {
    pub async fn new(
        store: Arc<dyn Store>,
        pollers: Vec<ActivePoller>,
        metrics: Arc<Metrics>,
        queued: Arc<QueuedSignal>,
    ) -> Result<Self, StoreError> {
        let cursors = store.cursors().await?;
        let engine = Engine {
            store,
            pollers: RwLock::new(HashMap::new()),
            cursors: Mutex::new(cursors),
            records: Mutex::new(HashMap::new()),
            unsaved: Notify::new(),
            metrics,
            queued,
            holding: Arc::default(),
        };
        engine.update(pollers, &[]);
        Ok(engine)
    }

    /// Polls only the pollers `holding` says this replica holds.
    pub fn with_holding(mut self, holding: Arc<Holding>) -> Self {
        self.holding = holding;
        self
    }

    /// Reads `pollers`' cursors from the store again: another replica may have moved
    /// them while this one did not hold them. On an error nothing changes, and the
    /// caller must not poll them (a poll from a stale cursor would report again what
    /// the other replica reported; from none, it would skip what happened since).
    pub async fn reload_cursors(&self, pollers: &[String]) -> Result<(), StoreError> {
        let mut fresh = self.store.cursors().await?;
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        for poller in pollers {
            match fresh.remove(poller) {
                Some(cursor) => cursors.insert(poller.clone(), cursor),
                None => cursors.remove(poller),
            };
        }
        Ok(())
    }

    /// A reload: `started` pollers (added or changed) replace any of the same name,
    /// `removed` ones go. The rest keep running as they are. Cursors stay: they belong
    /// to names.
    pub fn update(&self, started: Vec<ActivePoller>, removed: &[&str]) {
        let mut pollers = self.pollers.write().unwrap_or_else(|p| p.into_inner());
        for name in removed {
            pollers.remove(*name);
        }
        for poller in started {
            pollers.insert(poller.config.name.clone(), Arc::new(poller));
        }
    }

    fn poller(&self, name: &str) -> Option<Arc<ActivePoller>> {
        self.pollers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Polls one poller and, if it found anything, moves its cursor and queues the
    /// changes in one transaction.
    pub async fn poll(&self, name: &str) -> Result<Polled, String> {
        if !self.holding.holds(name) {
            // Another replica holds it: its turn, not ours.
            return Ok(Polled::Done);
        }
        let poller = self
            .poller(name)
            .ok_or_else(|| format!("no poller named `{name}`"))?;
        let span =
            tracing::info_span!("poll", poller = %name, repo = %poller.config.display_repo());
        let started = Instant::now();
        let result = self.poll_and_store(&poller).instrument(span).await;
        self.metrics.poll_finished(
            name,
            started.elapsed().as_secs_f64(),
            result.is_ok(),
            unix_now(),
        );
        let record = PollRecord {
            poller: name.to_owned(),
            at: unix_now(),
            error: result.as_ref().err().cloned(),
        };
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if records.is_empty() {
            // notify_one keeps a permit if the saver is busy: no wake-up is lost.
            self.unsaved.notify_one();
        }
        records.insert(name.to_owned(), record);
        drop(records);
        result
    }

    async fn poll_and_store(&self, active: &ActivePoller) -> Result<Polled, String> {
        let poller = &active.config;
        let started = Instant::now();
        let cursor = self.cursor(poller);
        // Each remote operation has its deadline in the backend; this bounds the whole
        // poll, should a backend miss one.
        let backstop = poller.timeout.saturating_mul(POLL_DEADLINES);
        let polled =
            tokio::time::timeout(backstop, catch_panic(active.poller.poll(cursor.as_ref())));
        let outcome = match polled.await {
            Ok(Ok(polled)) => polled.map_err(|e| redact::scrub(&e.to_string(), &poller.repo))?,
            Ok(Err(panic)) => {
                self.metrics.panicked("poll");
                tracing::error!(error = %panic, "the poll panicked; it counts as a failed poll");
                return Err(format!("the poll {panic}"));
            }
            Err(_) => {
                return Err(format!(
                    "the poll did not finish within {} ({POLL_DEADLINES} times its timeout)",
                    humantime::format_duration(backstop)
                ));
            }
        };
        let (cursor, changes, more) = match outcome {
            PollOutcome::Unchanged => {
                tracing::debug!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "no change"
                );
                return Ok(Polled::Done);
            }
            PollOutcome::Advanced { cursor, changes } => (cursor, changes, false),
            PollOutcome::Partial { cursor, changes } => (cursor, changes, true),
        };
        // Filtered commits are dropped here, before the transaction that moves the
        // cursor past them with the rest.
        let changes: Vec<Change> = changes
            .into_iter()
            .filter(|found| match poller.filters.rejects(found) {
                Some(reason) => {
                    tracing::debug!(
                        revision = found.revision,
                        branch = found.branch.as_deref().unwrap_or(""),
                        reason = reason.as_str(),
                        "filtered: not reported"
                    );
                    self.metrics.filtered(&poller.name, reason.as_str());
                    false
                }
                None => true,
            })
            .map(|c| make_change(poller, c))
            .collect();
        let count = changes.len();
        let first_poll = self.cursor(poller).is_none();
        self.store
            .commit_poll(&poller.name, poller.vcs, &cursor, &changes)
            .await
            .map_err(|e| format!("storing the poll's result: {e}"))?;
        let vcs = Some(poller.vcs.to_owned());
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(poller.name.clone(), StoredCursor { vcs, cursor });
        if count > 0 {
            self.queued.queued(&poller.name);
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if first_poll {
            tracing::info!(
                elapsed_ms,
                "first poll: recorded where the remote is; later commits will be reported"
            );
        } else if more {
            tracing::info!(
                changes = count,
                elapsed_ms,
                "remote moved; polling again at once for the rest"
            );
        } else {
            tracing::info!(changes = count, elapsed_ms, "remote moved");
        }
        self.metrics.changes_queued(&poller.name, count);
        Ok(if more { Polled::More } else { Polled::Done })
    }

    /// The poller's cursor, unless another backend wrote it: a poller whose `type`
    /// changed starts afresh, also when a poll of its old type stored a cursor after
    /// the change.
    fn cursor(&self, poller: &PollerConfig) -> Option<Cursor> {
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&poller.name)
            .and_then(|stored| stored.readable_by(poller.vcs))
            .cloned()
    }

    /// Resolves when there are poll outcomes to save (at once if there already are).
    pub async fn unsaved(&self) {
        self.unsaved.notified().await;
    }

    /// The poll outcomes since the last call, for saving in one transaction.
    pub fn take_poll_records(&self) -> Vec<PollRecord> {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        records.drain().map(|(_, record)| record).collect()
    }

    /// Saves the outstanding poll outcomes (for `polld status`).
    pub async fn save_poll_records(&self) {
        let records = self.take_poll_records();
        if records.is_empty() {
            return;
        }
        if let Err(error) = self.store.record_polls(&records).await {
            tracing::warn!(%error, "cannot save poll status");
        }
    }
}

#[async_trait]
impl PollTarget for Engine {
    async fn poll(&self, poller: &str) -> Result<Polled, String> {
        Engine::poll(self, poller).await
    }
}

/// Completes what a backend found with what the poller's config says, within
/// [`crate::limits`].
fn make_change(poller: &PollerConfig, found: NewChange) -> Change {
    let files_total = found.files_total;
    let project = found.project.unwrap_or_else(|| poller.project.clone());
    let branch = found.branch.as_deref().unwrap_or("");
    let id = if project.is_empty() {
        format!("{}:{}:{}", poller.name, branch, found.revision)
    } else {
        format!("{}:{}:{}:{}", poller.name, project, branch, found.revision)
    };
    let revlink = poller.revlink.as_ref().map(|template| {
        template
            .replace("{revision}", &found.revision)
            .replace("{branch}", branch)
    });
    let mut change = Change {
        id,
        poller: poller.name.clone(),
        vcs: poller.vcs.to_owned(),
        repository: poller.display_repo(),
        branch: found.branch,
        revision: found.revision,
        author: found.author,
        committer: found.committer,
        comments: found.comments,
        files: found.files,
        when_timestamp: found.when_timestamp,
        project,
        category: poller.category.clone(),
        codebase: poller.codebase.clone(),
        revlink,
        properties: poller.properties.clone(),
    };
    crate::limits::bound(&mut change, files_total);
    change
}
