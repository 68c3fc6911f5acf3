//! Everything running together: `polld run` (with its [`Control`] handle for the HTTP
//! endpoint and signals) and `polld once`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::{Delivery, QueuedSignal};
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::repo_key::repo_key;
use crate::scheduler::{PollTarget, Scheduled, Scheduler, SchedulerHandle};
use crate::sink;
use crate::store::{StateLock, Store, StoreError};
use crate::supervise::{Health, TaskHealth, panic_message, supervise};

/// How often poll outcomes are saved for `polld status`: batched, so that a poll that
/// finds nothing writes nothing to disk by itself.
const STATUS_SAVE_EVERY: Duration = Duration::from_secs(10);
/// How long delivery may go on after shutdown to hand over what is queued.
const FINAL_DELIVERY: Duration = Duration::from_secs(5);

/// Why `run` or `once` could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open the sink: {0}")]
    Sink(String),
}

/// A running daemon, as the control endpoint and the signal handlers see it.
pub struct Control {
    config: Mutex<Arc<Config>>,
    scheduler: SchedulerHandle,
    engine: Arc<Engine>,
    store: Store,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    running: AtomicBool,
}

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub restarted: Vec<String>,
    pub unchanged: usize,
    /// Settings that changed but only take effect after a restart.
    pub needs_restart: Vec<&'static str>,
}

impl Control {
    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// `Ok` while the daemon runs whole (for `/healthz`); otherwise why not: it is
    /// stopping, or one of its tasks is gone for good.
    pub fn health(&self) -> Result<(), String> {
        if !self.running.load(Ordering::SeqCst) {
            return Err("stopping".to_owned());
        }
        self.health.check()
    }

    /// The daemon's own tasks: panics caught, and any that stopped.
    pub fn tasks(&self) -> std::collections::BTreeMap<&'static str, TaskHealth> {
        self.health.tasks()
    }

    /// Polls `poller` now, coalesced with a poll in flight. False if there is none.
    pub fn poll(&self, poller: &str) -> bool {
        self.scheduler.force(poller)
    }

    pub fn poll_all(&self) {
        self.scheduler.force_all();
    }

    /// Polls every poller watching `repo` (however spelled); returns their names.
    pub fn notify(&self, repo: &str) -> Vec<String> {
        let config = self.config();
        let dir = config.dir();
        let wanted = repo_key(repo, &dir);
        let matching: Vec<String> = config
            .pollers
            .iter()
            .filter(|p| repo_key(&p.repo, &dir) == wanted)
            .map(|p| p.name.clone())
            .collect();
        for name in &matching {
            self.scheduler.force(name);
        }
        matching
    }

    /// Switches to `new`: unchanged pollers keep their schedule and cursor, changed ones
    /// restart (as at launch) with their cursor, removed ones stop (their cursor stays in
    /// the store), new ones start as at launch. A poller whose type changed starts with
    /// no cursor, since the new backend cannot read the old one (see `Engine::cursor`).
    pub async fn reload(&self, new: Config) -> ReloadSummary {
        let old = self.config();
        let mut summary = ReloadSummary::default();
        if new.daemon != old.daemon {
            summary.needs_restart.push("[daemon]");
        }
        if new.sink != old.sink {
            summary.needs_restart.push("[sink]");
        }
        let mut restart = HashSet::new();
        for poller in &new.pollers {
            match old.pollers.iter().find(|p| p.name == poller.name) {
                None => summary.added.push(poller.name.clone()),
                Some(before) if before.fingerprint == poller.fingerprint => summary.unchanged += 1,
                Some(_) => {
                    restart.insert(poller.name.clone());
                    summary.restarted.push(poller.name.clone());
                }
            }
        }
        for poller in &old.pollers {
            if !new.pollers.iter().any(|p| p.name == poller.name) {
                summary.removed.push(poller.name.clone());
                self.metrics.forget(&poller.name);
            }
        }
        self.engine.set_pollers(new.pollers.clone());
        self.scheduler.reload(scheduled(&new), restart);
        // Keep what needs a restart as it is, so status and notify describe what runs.
        let mut new = new;
        new.daemon = old.daemon.clone();
        new.sink = old.sink.clone();
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        summary
    }

    /// Each configured poller with what the store knows of it, poll outcomes saved first
    /// so the answer is current.
    pub async fn status(&self) -> Result<Vec<crate::store::StoredStatus>, StoreError> {
        self.engine.save_poll_records().await;
        let config = self.config();
        let names: Vec<String> = config.pollers.iter().map(|p| p.name.clone()).collect();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            store.status(&names)
        })
        .await
        .unwrap_or_else(|join| Err(StoreError::Task(join.to_string())))
    }

    /// The Prometheus exposition, with the queue gauges read fresh from the store.
    pub async fn metrics_text(&self) -> String {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.queue_counts()).await {
            Ok(Ok(counts)) => {
                let config = self.config();
                let names: Vec<&str> = config.pollers.iter().map(|p| p.name.as_str()).collect();
                self.metrics.set_queues(&names, &counts);
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot read queue sizes for /metrics"),
            Err(error) => tracing::warn!(%error, "cannot read queue sizes for /metrics"),
        }
        self.metrics.encode()
    }
}

/// Polls on schedule and delivers until `shutdown` is cancelled. `started` receives the
/// [`Control`] handle once everything runs.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    started: impl FnOnce(Arc<Control>),
) -> Result<(), DaemonError> {
    let (_lock, store) = open_store(&config).await?;
    let queued = Arc::new(QueuedSignal::default());
    let metrics = Arc::new(Metrics::new());
    let engine = Arc::new(Engine::new(
        store.clone(),
        config.pollers.clone(),
        Arc::clone(&metrics),
        Arc::clone(&queued),
    )?);

    let health = Arc::new(Health::default());
    let stop_delivery = CancellationToken::new();
    let delivery = Delivery::new(store.clone(), open_sink(&config)?, Arc::clone(&metrics));
    let delivering = tokio::spawn({
        let (delivery, queued, stop) =
            (delivery.clone(), Arc::clone(&queued), stop_delivery.clone());
        supervise(
            "delivery",
            Arc::clone(&health),
            Arc::clone(&metrics),
            move || delivery.clone().run(Arc::clone(&queued), stop.clone()),
        )
    });
    let status_saver = tokio::spawn({
        let (engine, stop) = (Arc::clone(&engine), shutdown.clone());
        supervise(
            "status",
            Arc::clone(&health),
            Arc::clone(&metrics),
            move || save_status_periodically(Arc::clone(&engine), stop.clone()),
        )
    });

    let scheduler = Scheduler::new(scheduled(&config), config.daemon.max_concurrent_polls);
    let grace = config.daemon.shutdown_grace;
    let control = Arc::new(Control {
        scheduler: scheduler.handle(),
        engine: Arc::clone(&engine),
        store,
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        running: AtomicBool::new(true),
        config: Mutex::new(Arc::new(config)),
    });
    tracing::info!(pollers = control.config().pollers.len(), "polld running");
    started(Arc::clone(&control));
    let target: Arc<dyn PollTarget> = engine.clone();
    // The scheduler holds every poller's place: it is not restarted. If it dies, the
    // daemon stays up saying so on /healthz (503) until it is stopped.
    if let Err(join) = tokio::spawn(scheduler.run(target, shutdown.clone(), grace)).await {
        let message = if join.is_panic() {
            panic_message(join.into_panic().as_ref())
        } else {
            join.to_string()
        };
        metrics.panicked("scheduler");
        tracing::error!(error = %message, "the scheduler stopped; no poller polls until polld is restarted");
        health.stopped("scheduler", message);
        shutdown.cancelled().await;
    }
    control.running.store(false, Ordering::SeqCst);

    let _ = status_saver.await;
    engine.save_poll_records().await;
    // Give the sink a last chance to take what the final polls queued.
    stop_delivery.cancel();
    let last_delivery = async {
        let _ = delivering.await;
        delivery.drain().await
    };
    match tokio::time::timeout(FINAL_DELIVERY, last_delivery).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => tracing::warn!(%error, "changes stay queued for the next start"),
        Err(_) => {
            tracing::warn!("the sink is slow; undelivered changes stay queued for the next start")
        }
    }
    tracing::info!("polld stopped");
    Ok(())
}

/// The outcome of `polld once`.
#[derive(Debug, Default)]
pub struct OnceReport {
    /// (poller, cause) for each poll that failed.
    pub failed: Vec<(String, String)>,
    pub delivered: usize,
    /// Why delivery stopped short, if it did: the rest stays queued.
    pub delivery_error: Option<String>,
}

/// Polls the given pollers (all when empty) once each, concurrently within
/// `max_concurrent_polls`, then delivers everything queued.
pub async fn once(config: &Config, names: &[String]) -> Result<OnceReport, DaemonError> {
    let (_lock, store) = open_store(config).await?;
    let engine = Arc::new(Engine::new(
        store.clone(),
        config.pollers.clone(),
        Arc::new(Metrics::new()),
        Arc::new(QueuedSignal::default()),
    )?);
    let permits = Arc::new(Semaphore::new(config.daemon.max_concurrent_polls));
    let mut polls = JoinSet::new();
    for poller in &config.pollers {
        if !names.is_empty() && !names.contains(&poller.name) {
            continue;
        }
        let (engine, permits, name) = (
            Arc::clone(&engine),
            Arc::clone(&permits),
            poller.name.clone(),
        );
        polls.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = engine.poll(&name).await;
            (name, result)
        });
    }
    let mut report = OnceReport::default();
    while let Some(joined) = polls.join_next().await {
        match joined {
            Ok((_, Ok(_))) => {}
            Ok((name, Err(cause))) => {
                tracing::error!(poller = %name, error = %cause, "poll failed");
                report.failed.push((name, cause));
            }
            Err(panic) => report.failed.push(("?".into(), panic.to_string())),
        }
    }
    report.failed.sort();
    engine.save_poll_records().await;

    let delivery = Delivery::new(store, open_sink(config)?, Arc::new(Metrics::new()));
    match delivery.drain().await {
        Ok(delivered) => report.delivered = delivered,
        Err(error) => report.delivery_error = Some(error.to_string()),
    }
    Ok(report)
}

/// The pollers as the scheduler sees them. The phase is hashed from the repository, not
/// the poller's name, so pollers of one repository poll together and a backend can
/// answer them all with one listing of the remote.
fn scheduled(config: &Config) -> Vec<Scheduled> {
    let dir = config.dir();
    config
        .pollers
        .iter()
        .map(|p| Scheduled {
            name: p.name.clone(),
            timing: p.timing,
            repo: p.display_repo(),
            offset: crate::scheduler::spread(&repo_key(&p.repo, &dir), p.timing.interval),
        })
        .collect()
}

fn open_sink(config: &Config) -> Result<Arc<dyn sink::Sink>, DaemonError> {
    sink::open(&config.sink).map_err(DaemonError::Sink)
}

/// Locks the state directory for this process and opens its store.
async fn open_store(config: &Config) -> Result<(StateLock, Store), StoreError> {
    let state_dir = config.daemon.state_dir.clone();
    tokio::task::spawn_blocking(move || {
        Ok((StateLock::acquire(&state_dir)?, Store::open(&state_dir)?))
    })
    .await
    .unwrap_or_else(|join| Err(StoreError::Task(join.to_string())))
}

/// Saves poll outcomes at most every [`STATUS_SAVE_EVERY`], and only when there are
/// some: an idle daemon is never woken by it.
async fn save_status_periodically(engine: Arc<Engine>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = engine.unsaved() => {}
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(STATUS_SAVE_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
        engine.save_poll_records().await;
    }
}
