//! What `/metrics` shows: Prometheus families, all prefixed `polld_` and labelled by
//! `poller` where they are per poller.
//!
//! Polls update their counters as they happen; the queue gauges (pending, dead letters)
//! are read from the store when scraped, so they are exact even across restarts.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PollerLabel {
    poller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PollLabels {
    poller: String,
    /// `ok` or `error`.
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FilteredLabels {
    poller: String,
    /// `paths`, `skip_marker` or `author`.
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabel {
    /// `poll`, `delivery`, or one of the daemon's own tasks.
    task: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    forge: &'static str,
    /// `push`, `no_poller`, `ping`, `ignored`, or why it was refused.
    result: &'static str,
}

type HistogramFamily = Family<PollerLabel, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    polls: Family<PollLabels, Counter>,
    poll_duration: HistogramFamily,
    changes: Family<PollerLabel, Counter>,
    filtered: Family<FilteredLabels, Counter>,
    last_success: Family<PollerLabel, Gauge>,
    failure_streak: Family<PollerLabel, Gauge>,
    longest_wait: Family<PollerLabel, Gauge<f64, AtomicU64>>,
    pending: Family<PollerLabel, Gauge>,
    dead_letters: Family<PollerLabel, Gauge>,
    panics: Family<TaskLabel, Counter>,
    hook_requests: Family<HookLabels, Counter>,
    leases_held: Gauge,
    lease_takeovers: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("polld");
        let polls = Family::<PollLabels, Counter>::default();
        let poll_duration: HistogramFamily = Family::new_with_constructor(|| {
            // 1 ms to ~33 s: a no-change poll is milliseconds, a big fetch seconds.
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let changes = Family::<PollerLabel, Counter>::default();
        let filtered = Family::<FilteredLabels, Counter>::default();
        let last_success = Family::<PollerLabel, Gauge>::default();
        let failure_streak = Family::<PollerLabel, Gauge>::default();
        let longest_wait = Family::<PollerLabel, Gauge<f64, AtomicU64>>::default();
        let pending = Family::<PollerLabel, Gauge>::default();
        let dead_letters = Family::<PollerLabel, Gauge>::default();
        let panics = Family::<TaskLabel, Counter>::default();
        registry.register("polls", "Polls finished, by result", polls.clone());
        registry.register(
            "poll_duration_seconds",
            "How long polls take",
            poll_duration.clone(),
        );
        registry.register(
            "changes",
            "Changes found and queued for delivery",
            changes.clone(),
        );
        registry.register(
            "changes_filtered",
            "Commits found but not reported (paths, skip_markers, ignore_authors), by reason",
            filtered.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last successful poll",
            last_success.clone(),
        );
        registry.register(
            "consecutive_failures",
            "Failed polls in a row (non-zero: the poller is backing off)",
            failure_streak.clone(),
        );
        // So an alert can say "no success for 3 intervals" per poller, whatever its
        // interval: the config is not otherwise visible to Prometheus.
        registry.register(
            "poll_interval_seconds",
            "Longest wait between two polls of a healthy poller: its interval plus jitter",
            longest_wait.clone(),
        );
        registry.register(
            "deliveries_pending",
            "Changes waiting for the sink",
            pending.clone(),
        );
        registry.register(
            "dead_letters",
            "Changes the sink refused (see `polld redeliver`)",
            dead_letters.clone(),
        );
        registry.register(
            "panics",
            "Tasks that panicked and were recovered or restarted, by task",
            panics.clone(),
        );
        let hook_requests = Family::<HookLabels, Counter>::default();
        registry.register(
            "hook_requests",
            "Requests to /hooks/{forge}, by forge and result",
            hook_requests.clone(),
        );
        let leases_held = Gauge::default();
        let lease_takeovers = Counter::default();
        registry.register(
            "leases_held",
            "Pollers this replica holds a lease on (replicas sharing a store only)",
            leases_held.clone(),
        );
        registry.register(
            "lease_takeovers",
            "Pollers this replica took from another replica (one that stopped, died or had more than its share)",
            lease_takeovers.clone(),
        );
        Metrics {
            leases_held,
            lease_takeovers,
            registry,
            hook_requests,
            polls,
            poll_duration,
            changes,
            filtered,
            last_success,
            failure_streak,
            longest_wait,
            pending,
            dead_letters,
            panics,
        }
    }

    /// Records one finished poll.
    pub fn poll_finished(&self, poller: &str, seconds: f64, ok: bool, now_unix: i64) {
        let label = PollerLabel {
            poller: poller.to_owned(),
        };
        self.poll_duration.get_or_create(&label).observe(seconds);
        let result = if ok {
            self.last_success.get_or_create(&label).set(now_unix);
            self.failure_streak.get_or_create(&label).set(0);
            "ok"
        } else {
            self.failure_streak.get_or_create(&label).inc();
            "error"
        };
        self.polls
            .get_or_create(&PollLabels {
                poller: poller.to_owned(),
                result,
            })
            .inc();
    }

    /// Counts changes a poll queued.
    pub fn changes_queued(&self, poller: &str, count: usize) {
        let label = PollerLabel {
            poller: poller.to_owned(),
        };
        self.changes.get_or_create(&label).inc_by(count as u64);
    }

    /// Counts a commit a filter kept from being reported.
    pub fn filtered(&self, poller: &str, reason: &'static str) {
        self.filtered
            .get_or_create(&FilteredLabels {
                poller: poller.to_owned(),
                reason,
            })
            .inc();
    }

    /// How many pollers this replica holds.
    pub fn leases_held(&self, count: usize) {
        self.leases_held
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Counts pollers taken over from other replicas.
    pub fn lease_takeovers(&self, count: usize) {
        self.lease_takeovers.inc_by(count as u64);
    }

    /// Counts a panic caught in `task` (a poll, a delivery, a daemon task).
    pub fn panicked(&self, task: &'static str) {
        self.panics.get_or_create(&TaskLabel { task }).inc();
    }

    /// Counts one forge webhook request.
    pub fn hook_request(&self, forge: &'static str, result: &'static str) {
        self.hook_requests
            .get_or_create(&HookLabels { forge, result })
            .inc();
    }

    /// Sets the gauges read when scraped: each poller's longest wait between polls, and
    /// its queue, (pending, dead letters) from `counts` (absent: zero). Pollers a reload
    /// removed disappear.
    pub fn set_scraped(&self, pollers: &[(&str, Duration)], counts: &HashMap<String, (u64, u64)>) {
        self.longest_wait.clear();
        self.pending.clear();
        self.dead_letters.clear();
        for (poller, longest_wait) in pollers {
            let (pending, dead) = counts.get(*poller).copied().unwrap_or_default();
            let label = PollerLabel {
                poller: (*poller).to_owned(),
            };
            self.longest_wait
                .get_or_create(&label)
                .set(longest_wait.as_secs_f64());
            self.pending.get_or_create(&label).set(pending as i64);
            self.dead_letters.get_or_create(&label).set(dead as i64);
        }
    }

    /// Forgets a poller that a reload removed.
    pub fn forget(&self, poller: &str) {
        let label = PollerLabel {
            poller: poller.to_owned(),
        };
        self.changes.remove(&label);
        for family in [
            &self.last_success,
            &self.failure_streak,
            &self.pending,
            &self.dead_letters,
        ] {
            family.remove(&label);
        }
        self.poll_duration.remove(&label);
        self.longest_wait.remove(&label);
        for reason in ["paths", "skip_marker", "author"] {
            self.filtered.remove(&FilteredLabels {
                poller: poller.to_owned(),
                reason,
            });
        }
        for result in ["ok", "error"] {
            self.polls.remove(&PollLabels {
                poller: poller.to_owned(),
                result,
            });
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels_follow_the_contract() {
        let metrics = Metrics::new();
        metrics.poll_finished("app", 0.002, true, 1_700_000_000);
        metrics.changes_queued("app", 3);
        metrics.poll_finished("app", 0.5, false, 1_700_000_001);
        metrics.set_scraped(
            &[("app", Duration::from_secs(90))],
            &HashMap::from([("app".to_owned(), (2, 1))]),
        );
        metrics.panicked("poll");
        let text = metrics.encode();
        for expected in [
            "polld_polls_total{poller=\"app\",result=\"ok\"} 1",
            "polld_polls_total{poller=\"app\",result=\"error\"} 1",
            "polld_changes_total{poller=\"app\"} 3",
            "polld_poll_duration_seconds_count{poller=\"app\"} 2",
            "polld_last_success_timestamp_seconds{poller=\"app\"} 1700000000",
            "polld_consecutive_failures{poller=\"app\"} 1",
            "polld_deliveries_pending{poller=\"app\"} 2",
            "polld_dead_letters{poller=\"app\"} 1",
            "polld_poll_interval_seconds{poller=\"app\"} 90.0",
            "polld_panics_total{task=\"poll\"} 1",
        ] {
            assert!(text.contains(expected), "missing {expected} in:\n{text}");
        }
        metrics.forget("app");
        assert!(!metrics.encode().contains("poller=\"app\""));
    }
}
