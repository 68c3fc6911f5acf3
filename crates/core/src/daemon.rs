//! Everything running together: `polld run` and `polld once`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::delivery::Delivery;
use crate::engine::Engine;
use crate::scheduler::{PollTarget, Scheduler, SchedulerHandle};
use crate::sink;
use crate::store::{StateLock, Store, StoreError};

/// How long in-flight polls may take to finish after a shutdown request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often poll outcomes are saved for `polld status`: batched, so that a poll that
/// finds nothing writes nothing to disk by itself.
const STATUS_SAVE_EVERY: Duration = Duration::from_secs(10);
/// How long delivery may go on after shutdown to hand over what is queued.
const FINAL_DELIVERY: Duration = Duration::from_secs(5);

/// Polls on schedule and delivers until `shutdown` is cancelled. `started` receives the
/// scheduler's handle, for forced polls.
pub async fn run(
    config: &Config,
    shutdown: CancellationToken,
    started: impl FnOnce(SchedulerHandle),
) -> Result<(), StoreError> {
    let (_lock, store) = open_store(config).await?;
    let queued = Arc::new(Notify::new());
    let engine = Arc::new(Engine::new(
        store.clone(),
        config.pollers.clone(),
        Arc::clone(&queued),
    )?);

    let stop_delivery = CancellationToken::new();
    let delivery = tokio::spawn(
        Delivery::new(store.clone(), sink::open(&config.sink))
            .run(Arc::clone(&queued), stop_delivery.clone()),
    );
    let status_saver = tokio::spawn(save_status_periodically(
        Arc::clone(&engine),
        shutdown.clone(),
    ));

    let scheduler = Scheduler::new(
        config.pollers.iter().map(|p| (p.name.clone(), p.timing)),
        config.daemon.max_concurrent_polls,
    );
    started(scheduler.handle());
    tracing::info!(pollers = config.pollers.len(), "polld running");
    let target: Arc<dyn PollTarget> = engine.clone();
    scheduler.run(target, shutdown, SHUTDOWN_GRACE).await;

    let _ = status_saver.await;
    engine.save_poll_records().await;
    // Give the sink a last chance to take what the final polls queued.
    let mut last = Delivery::new(store, sink::open(&config.sink));
    stop_delivery.cancel();
    let _ = delivery.await;
    if let Ok(Err(error)) = tokio::time::timeout(FINAL_DELIVERY, last.drain()).await {
        tracing::warn!(%error, "changes stay queued for the next start");
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
pub async fn once(config: &Config, names: &[String]) -> Result<OnceReport, StoreError> {
    let (_lock, store) = open_store(config).await?;
    let engine = Arc::new(Engine::new(
        store.clone(),
        config.pollers.clone(),
        Arc::new(Notify::new()),
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

    let mut delivery = Delivery::new(store, sink::open(&config.sink));
    match delivery.drain().await {
        Ok(delivered) => report.delivered = delivered,
        Err(error) => report.delivery_error = Some(error.to_string()),
    }
    Ok(report)
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

async fn save_status_periodically(engine: Arc<Engine>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(STATUS_SAVE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => engine.save_poll_records().await,
            () = shutdown.cancelled() => return,
        }
    }
}
