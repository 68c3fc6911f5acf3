//! Keeping the daemon alive through panics.
//!
//! A panic in one poll or one delivery attempt must not take the daemon, or even its
//! task, down with it: [`catch_panic`] turns it into that poll's or that change's error,
//! which is then logged, counted, shown by `status` and retried with backoff like any
//! other. The daemon's own long-running tasks (delivery, saving status) run under
//! [`supervise`], which restarts one that panicked; one that keeps panicking is given
//! up on, and [`Health`] then makes `/healthz` answer 503 naming it.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;

use crate::backoff;
use crate::metrics::Metrics;

/// A task that panics this many times in a row (each within [`CALM`] of the last) is
/// given up on.
const MAX_RESTARTS: u32 = 5;
/// A task that ran this long without panicking starts its count afresh.
const CALM: Duration = Duration::from_secs(600);

/// Runs `future`, turning a panic inside it into an error that says so.
pub async fn catch_panic<T>(future: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| panic_message(payload.as_ref()))
}

/// The text a panic was raised with.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned());
    format!("panicked: {text}")
}

/// The state of the daemon's own tasks, for `/healthz` and `/status`.
#[derive(Debug, Default)]
pub struct Health {
    tasks: Mutex<BTreeMap<&'static str, TaskHealth>>,
}

/// One daemon task as [`Health`] knows it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TaskHealth {
    /// Panics caught since start.
    pub panics: u32,
    /// The last panic's message.
    pub last_panic: Option<String>,
    /// Set when the task was given up on: it no longer runs.
    pub stopped: Option<String>,
}

impl Health {
    /// A report per task, by name.
    pub fn tasks(&self) -> BTreeMap<&'static str, TaskHealth> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `Err` naming the tasks that are gone for good.
    pub fn check(&self) -> Result<(), String> {
        let stopped: Vec<String> = self
            .tasks()
            .into_iter()
            .filter_map(|(name, task)| Some(format!("{name}: {}", task.stopped?)))
            .collect();
        if stopped.is_empty() {
            Ok(())
        } else {
            Err(stopped.join("; "))
        }
    }

    fn update(&self, task: &'static str, change: impl FnOnce(&mut TaskHealth)) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        change(tasks.entry(task).or_default());
    }

    /// Notes that `task` ended for good (it panicked, or returned when it should not).
    pub fn stopped(&self, task: &'static str, why: String) {
        self.update(task, |state| state.stopped = Some(why));
    }
}

/// Runs the task `make` builds until it returns, building and running it again after
/// each panic (with backoff); after [`MAX_RESTARTS`] panics in a row it stays down and
/// [`Health`] says so.
pub async fn supervise<F, Fut>(
    task: &'static str,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    make: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut streak = 0u32;
    loop {
        let started = tokio::time::Instant::now();
        let Err(join) = tokio::spawn(make()).await else {
            return;
        };
        if !join.is_panic() {
            return;
        }
        let message = panic_message(join.into_panic().as_ref());
        metrics.panicked(task);
        health.update(task, |state| {
            state.panics += 1;
            state.last_panic = Some(message.clone());
        });
        streak = if started.elapsed() >= CALM {
            1
        } else {
            streak + 1
        };
        if streak > MAX_RESTARTS {
            tracing::error!(task, error = %message, "a daemon task keeps panicking; it stays stopped (see /healthz)");
            health.stopped(task, format!("{message} ({streak} times in a row)"));
            return;
        }
        let wait = backoff::exponential(streak, Duration::from_secs(1), Duration::from_secs(60));
        tracing::error!(task, error = %message, restart_in = %humantime::format_duration(wait), "a daemon task panicked; restarting it");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_panic_becomes_an_error() {
        let caught = catch_panic(async { panic!("boom {}", 7) }).await;
        assert_eq!(caught.unwrap_err(), "panicked: boom 7");
        assert_eq!(catch_panic(async { 3 }).await, Ok(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_restarted_then_given_up_on() {
        let health = Arc::new(Health::default());
        let metrics = Arc::new(Metrics::new());
        let runs = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&runs);
        supervise(
            "delivery",
            Arc::clone(&health),
            Arc::clone(&metrics),
            move || {
                let counter = Arc::clone(&counter);
                async move {
                    if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                        panic!("flaky");
                    }
                }
            },
        )
        .await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "restarted twice, then ran to its end"
        );
        assert_eq!(health.tasks()["delivery"].panics, 2);
        assert!(health.check().is_ok());

        supervise(
            "saver",
            Arc::clone(&health),
            Arc::clone(&metrics),
            || async { panic!("always") },
        )
        .await;
        let error = health.check().unwrap_err();
        assert!(error.starts_with("saver: panicked: always"), "{error}");
        assert!(
            metrics
                .encode()
                .contains("polld_panics_total{task=\"saver\"} 6")
        );
    }
}
