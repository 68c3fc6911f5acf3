//! Everything running together: `polld run` (with its [`Control`] handle for the HTTP
//! endpoint and signals) and `polld once`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PollerConfig, diff};
use crate::delivery::{Delivery, QueuedSignal};
use crate::engine::{ActivePoller, Engine};
use crate::leases::{Holding, LeaseKeeper, keep_leases};
use crate::metrics::Metrics;
use crate::plugins::Plugins;
use crate::repo_key::{host_of, repo_key};
use crate::scheduler::{PollTarget, Polled, Scheduled, Scheduler, SchedulerHandle};
use crate::sink::Sink;
use crate::store::{Access, Store, StoreError, StoredStatus, UPKEEP_EVERY};
use crate::supervise::{Health, TaskHealth, panic_message, supervise};

/// How often poll outcomes are saved for `polld status`: batched, so that a poll that
/// finds nothing writes nothing to disk by itself.
const STATUS_SAVE_EVERY: Duration = Duration::from_secs(10);
/// How long delivery may go on after shutdown to hand over what is queued.
const FINAL_DELIVERY: Duration = Duration::from_secs(5);

/// Why `run` or `once` could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open the sink: {0}")]
    Sink(String),
    #[error("poller `{poller}`: {message}")]
    Poller { poller: String, message: String },
}

/// A running daemon, as the control endpoint and the signal handlers see it.
pub struct Control {
    config: Mutex<Arc<Config>>,
    plugins: Plugins,
    scheduler: SchedulerHandle,
    engine: Arc<Engine>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    /// The pollers this replica holds (every one, unless replicas share the store).
    holding: Arc<Holding>,
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

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// `Ok` while the daemon runs whole (for `/healthz`); otherwise why not: it is
    /// stopping, or one of its tasks is gone for good.
    pub fn health(&self) -> Result<(), String> {
        if !self.running.load(Ordering::SeqCst) {
            return Err("stopping".to_owned());
        }
        if let Some(trouble) = self.holding.trouble() {
            return Err(trouble);
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
        self.notify_any(&[repo])
    }

    /// Polls every poller watching any of `repos` (a forge's push names one repository
    /// by several URLs), each once; returns their names in config order.
    pub fn notify_any(&self, repos: &[impl AsRef<str>]) -> Vec<String> {
        let config = self.config();
        let dir = config.dir();
        let wanted: HashSet<_> = repos.iter().map(|r| repo_key(r.as_ref(), &dir)).collect();
        let matching: Vec<String> = config
            .pollers
            .iter()
            .filter(|p| wanted.contains(&repo_key(&p.repo, &dir)))
            .map(|p| p.name.clone())
            .collect();
        let elsewhere: Vec<String> = matching
            .iter()
            .filter(|name| !self.holding.holds(name))
            .cloned()
            .collect();
        for name in &matching {
            if self.holding.holds(name) {
                self.scheduler.force(name);
            }
        }
        if !elsewhere.is_empty() {
            // Held by other replicas: ask them through the store.
            let store = Arc::clone(&self.store);
            tokio::spawn(async move {
                if let Err(error) = store.request_polls(&elsewhere).await {
                    tracing::warn!(%error, pollers = ?elsewhere, "cannot ask the replicas holding these pollers to poll; their regular polls will");
                }
            });
        }
        matching
    }

    /// Counts one request to `/hooks/{forge}` by how it ended.
    pub fn hook_request(&self, forge: &'static str, result: &'static str) {
        self.metrics.hook_request(forge, result);
    }

    /// Switches to `new`: unchanged pollers keep their schedule, cursor and poller
    /// object; changed ones are built again and restart (as at launch) with their
    /// cursor; removed ones stop (their cursor stays in the store); new ones are built
    /// and start as at launch. A poller whose type changed starts with no cursor, since
    /// the new backend cannot read the old one (see `Engine::cursor`).
    pub async fn reload(&self, new: Config) -> Result<ReloadSummary, DaemonError> {
        let old = self.config();
        let changes = diff(&old, &new);
        // Build everything first: a poller that cannot be built refuses the whole
        // reload, and the running config stays.
        let started = start_pollers(
            &self.plugins,
            changes.added.iter().chain(&changes.changed).copied(),
        )?;
        let summary = ReloadSummary {
            added: changes.added.iter().map(|p| p.name.clone()).collect(),
            restarted: changes.changed.iter().map(|p| p.name.clone()).collect(),
            removed: changes.removed.iter().map(|n| (*n).to_owned()).collect(),
            unchanged: changes.unchanged.len(),
            needs_restart: [
                ("[daemon]", changes.daemon_changed),
                ("[sink]", changes.sink_changed),
                ("[hooks]", changes.hooks_changed),
                ("[store]", changes.store_changed),
            ]
            .into_iter()
            .filter_map(|(section, changed)| changed.then_some(section))
            .collect(),
        };
        for name in &changes.removed {
            self.metrics.forget(name);
        }
        self.engine.update(started, &changes.removed);
        let restart: HashSet<String> = summary.restarted.iter().cloned().collect();
        self.scheduler.reload(scheduled(&new), restart);
        // Keep what needs a restart as it is, so status and notify describe what runs.
        let mut new = new;
        new.daemon = old.daemon.clone();
        new.sink = old.sink.clone();
        new.hooks = old.hooks.clone();
        new.store = old.store.clone();
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(new);
        Ok(summary)
    }

    /// Each configured poller with what the store knows of it, poll outcomes saved first
    /// so the answer is current.
    pub async fn status(&self) -> Result<Vec<StoredStatus>, StoreError> {
        self.engine.save_poll_records().await;
        let config = self.config();
        let names: Vec<String> = config.pollers.iter().map(|p| p.name.clone()).collect();
        let mut statuses = self.store.status(&names).await?;
        with_replicas(self.store.as_ref(), &names, &mut statuses).await?;
        Ok(statuses)
    }

    /// The Prometheus exposition, with the queue gauges read fresh from the store.
    pub async fn metrics_text(&self) -> String {
        match self.store.queue_counts().await {
            Ok(counts) => {
                let config = self.config();
                let pollers: Vec<(&str, Duration)> = config
                    .pollers
                    .iter()
                    .map(|p| (p.name.as_str(), p.timing.interval + p.timing.jitter))
                    .collect();
                self.metrics.set_scraped(&pollers, &counts);
            }
            Err(error) => tracing::warn!(%error, "cannot read queue sizes for /metrics"),
        }
        self.metrics.encode()
    }
}

/// Polls on schedule and delivers until `shutdown` is cancelled. `started` receives the
/// [`Control`] handle once everything runs.
pub async fn run(
    config: Config,
    plugins: Plugins,
    shutdown: CancellationToken,
    started: impl FnOnce(Arc<Control>),
) -> Result<(), DaemonError> {
    let store = open_store(&config, &plugins, Access::Replica).await?;
    let queued = Arc::new(QueuedSignal::default());
    let metrics = Arc::new(Metrics::new());
    // A shared store gives this replica its pollers in the first lease round; until
    // then it holds none. A store of its own: every poller, at once.
    let holding = Arc::new(Holding::default());
    if config.store.url_env.is_some() {
        holding.hold_nothing();
    }
    let engine = Arc::new(
        Engine::new(
            Arc::clone(&store),
            start_pollers(&plugins, &config.pollers)?,
            Arc::clone(&metrics),
            Arc::clone(&queued),
        )
        .await?
        .with_holding(Arc::clone(&holding)),
    );

    let health = Arc::new(Health::default());
    let stop_delivery = CancellationToken::new();
    let delivery = Delivery::new(
        Arc::clone(&store),
        open_sink(&config, &plugins)?,
        Arc::clone(&metrics),
    )
    .with_holding(Arc::clone(&holding));
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

    let upkeep = tokio::spawn({
        let (store, stop) = (Arc::clone(&store), shutdown.clone());
        supervise(
            "upkeep",
            Arc::clone(&health),
            Arc::clone(&metrics),
            move || upkeep_periodically(Arc::clone(&store), stop.clone()),
        )
    });

    let scheduler = Scheduler::new(
        scheduled(&config),
        config.daemon.max_concurrent_polls,
        config.daemon.max_polls_per_host,
    );
    let grace = config.daemon.shutdown_grace;
    let lease = config.store.lease;
    let control = Arc::new(Control {
        plugins,
        scheduler: scheduler.handle(),
        engine: Arc::clone(&engine),
        store: Arc::clone(&store),
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        holding: Arc::clone(&holding),
        running: AtomicBool::new(true),
        config: Mutex::new(Arc::new(config)),
    });
    let keeper = LeaseKeeper {
        store,
        holding,
        engine: Arc::clone(&engine),
        queued: Arc::clone(&queued),
        scheduler: control.scheduler.clone(),
        metrics: Arc::clone(&metrics),
        lease,
        pollers: {
            let control = Arc::downgrade(&control);
            Arc::new(move || {
                control.upgrade().map_or_else(Vec::new, |control| {
                    control
                        .config()
                        .pollers
                        .iter()
                        .map(|p| p.name.clone())
                        .collect()
                })
            })
        },
    };
    // Poll requests other replicas relay (a shared store only).
    let requests = control.store.poll_requests().map(|mut requests| {
        let control = Arc::downgrade(&control);
        tokio::spawn(async move {
            while let Some(poller) = requests.recv().await {
                let Some(control) = control.upgrade() else {
                    return;
                };
                if control.holding.holds(&poller) {
                    control.scheduler.force(&poller);
                }
            }
        })
    });
    let leases = tokio::spawn({
        let stop = shutdown.clone();
        supervise(
            "leases",
            Arc::clone(&health),
            Arc::clone(&metrics),
            move || keep_leases(keeper.clone(), stop.clone()),
        )
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
    let _ = upkeep.await;
    let _ = leases.await;
    if let Some(requests) = requests {
        requests.abort();
    }
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
pub async fn once(
    config: &Config,
    plugins: &Plugins,
    names: &[String],
) -> Result<OnceReport, DaemonError> {
    let store = open_store(config, plugins, Access::Exclusive).await?;
    let chosen: Vec<PollerConfig> = config
        .pollers
        .iter()
        .filter(|p| names.is_empty() || names.contains(&p.name))
        .cloned()
        .collect();
    let engine = Arc::new(
        Engine::new(
            Arc::clone(&store),
            start_pollers(plugins, &chosen)?,
            Arc::new(Metrics::new()),
            Arc::new(QueuedSignal::default()),
        )
        .await?,
    );
    let permits = Arc::new(Semaphore::new(config.daemon.max_concurrent_polls));
    let mut hosts: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let mut polls = JoinSet::new();
    for poller in &chosen {
        let (engine, permits, name) = (
            Arc::clone(&engine),
            Arc::clone(&permits),
            poller.name.clone(),
        );
        // As in `run`: the host's permit first, so a slow host holds only its share.
        let host = host_of(&poller.repo).map(|host| {
            Arc::clone(
                hosts
                    .entry(host)
                    .or_insert_with(|| Arc::new(Semaphore::new(config.daemon.max_polls_per_host))),
            )
        });
        polls.spawn(async move {
            let _host = match host {
                Some(host) => host.acquire_owned().await.ok(),
                None => None,
            };
            let _permit = permits.acquire_owned().await;
            // A poll that reports part of a big push polls again for the rest.
            let result = loop {
                match engine.poll(&name).await {
                    Ok(Polled::More) => continue,
                    other => break other,
                }
            };
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

    let delivery = Delivery::new(store, open_sink(config, plugins)?, Arc::new(Metrics::new()));
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
            host: host_of(&p.repo),
        })
        .collect()
}

/// Builds the pollers of `configs` with their backends.
fn start_pollers<'a>(
    plugins: &Plugins,
    configs: impl IntoIterator<Item = &'a PollerConfig>,
) -> Result<Vec<ActivePoller>, DaemonError> {
    configs
        .into_iter()
        .map(|config| start_poller(plugins, config))
        .collect()
}

fn start_poller(plugins: &Plugins, config: &PollerConfig) -> Result<ActivePoller, DaemonError> {
    let poller = plugins
        .backends
        .build(config)
        .map_err(|message| DaemonError::Poller {
            poller: config.name.clone(),
            message,
        })?;
    Ok(ActivePoller {
        config: config.clone(),
        poller,
    })
}

fn open_sink(config: &Config, plugins: &Plugins) -> Result<Arc<dyn Sink>, DaemonError> {
    plugins.sinks.open(&config.sink).map_err(DaemonError::Sink)
}

/// Makes the state directory owner-only, opens the store for this process, and clears
/// what a crash left in its secrets directory.
async fn open_store(
    config: &Config,
    plugins: &Plugins,
    access: Access,
) -> Result<Arc<dyn Store>, DaemonError> {
    let state_dir = &config.daemon.state_dir;
    crate::private::prepare_state_dir(state_dir).map_err(|source| DaemonError::StateDir {
        path: state_dir.display().to_string(),
        source,
    })?;
    let store = open_configured_store(config, plugins, access).await?;
    crate::private::clear_secrets(state_dir).map_err(|source| DaemonError::StateDir {
        path: state_dir.display().to_string(),
        source,
    })?;
    Ok(store)
}

/// The store `[store]` names: the database in `url_env`'s variable, shared with the
/// other replicas (this process named after its host and pid), else SQLite in the
/// state directory (`Access::Replica` then means `Exclusive`).
pub async fn open_configured_store(
    config: &Config,
    plugins: &Plugins,
    access: Access,
) -> Result<Arc<dyn Store>, StoreError> {
    let Some(variable) = &config.store.url_env else {
        return plugins.stores.open(&config.daemon.state_dir, access).await;
    };
    let url = std::env::var(variable).map_err(|_| {
        StoreError::new(format!(
            "[store] url_env names {variable}, which is not set: it holds the database URL"
        ))
    })?;
    plugins.stores.open_url(&url, &replica_name(), access).await
}

/// This process among the replicas: the host's name and the process id (a restarted
/// replica is a new one; the old one's leases expire).
fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "polld".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Fills in which replica holds each poller (`status`'s `"replica"`).
pub async fn with_replicas(
    store: &dyn Store,
    names: &[String],
    statuses: &mut [StoredStatus],
) -> Result<(), StoreError> {
    let holders = store.holders().await?;
    for (name, status) in names.iter().zip(statuses.iter_mut()) {
        status.replica = holders.get(name).cloned();
    }
    Ok(())
}

/// Saves poll outcomes at most every [`STATUS_SAVE_EVERY`], and only when there are
/// some: an idle daemon is never woken by it.
/// Runs the store's upkeep every [`UPKEEP_EVERY`] (the first one an interval after
/// start, so a daemon restarted in a loop does no extra work).
async fn upkeep_periodically(store: Arc<dyn Store>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(UPKEEP_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
        let started = std::time::Instant::now();
        match store.upkeep().await {
            Ok(()) => tracing::debug!(
                elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "store upkeep done"
            ),
            Err(error) => tracing::warn!(%error, "store upkeep failed; trying again later"),
        }
    }
}

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
