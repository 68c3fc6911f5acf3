//! polld's git pollers driven in-process: the client cost of a poll that finds nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use polld_backend::{Backend, Cursor, PollOutcome, Poller, PollerContext};
use polld_git::{GitBackend, GitConfig};
use tokio::runtime::Runtime;

use crate::util::self_usage;

/// What a batch of polls cost.
#[derive(Debug, Clone, Default)]
pub struct PollStats {
    pub polls: usize,
    pub ok: usize,
    /// The first few failures, for the report.
    pub errors: Vec<String>,
    pub failed: usize,
    /// CPU spent by the measured side over the batch (see each measurement).
    pub cpu: Duration,
    /// Elapsed time of the whole batch.
    pub wall: Duration,
    /// Sum and maximum of single-poll durations.
    pub latency_sum: Duration,
    pub latency_max: Duration,
}

impl PollStats {
    pub fn cpu_ms_per_poll(&self) -> f64 {
        crate::util::ms(self.cpu) / self.polls.max(1) as f64
    }
    /// Elapsed time divided by polls: the amortised cost at the batch's concurrency.
    pub fn wall_ms_per_poll(&self) -> f64 {
        crate::util::ms(self.wall) / self.polls.max(1) as f64
    }
    pub fn latency_ms_mean(&self) -> f64 {
        crate::util::ms(self.latency_sum) / self.polls.max(1) as f64
    }

    pub fn record(&mut self, took: Duration, result: Result<(), String>) {
        self.polls += 1;
        self.latency_sum += took;
        self.latency_max = self.latency_max.max(took);
        match result {
            Ok(()) => self.ok += 1,
            Err(e) => {
                self.failed += 1;
                if self.errors.len() < 5 {
                    self.errors.push(e);
                }
            }
        }
    }

    pub fn merge(&mut self, other: PollStats) {
        self.polls += other.polls;
        self.ok += other.ok;
        self.failed += other.failed;
        self.latency_sum += other.latency_sum;
        self.latency_max = self.latency_max.max(other.latency_max);
        for e in other.errors {
            if self.errors.len() < 5 {
                self.errors.push(e);
            }
        }
    }
}

/// How a poller reaches a repository: its URL and the files a config would name for it.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub url: String,
    /// `ca_file`: the CA that vouches for an https server.
    pub ca_file: Option<PathBuf>,
    /// `ssh_key_file` and `known_hosts_file` of an ssh poller.
    pub ssh_key_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
}

impl Access {
    /// A URL that needs no files.
    pub fn url(url: &str) -> Access {
        Access {
            url: url.to_owned(),
            ..Access::default()
        }
    }
}

/// A tokio runtime like polld's (multi-threaded, one worker per core) and the backend.
pub struct InProcess {
    pub runtime: Runtime,
    backend: GitBackend,
}

impl InProcess {
    pub fn new() -> Result<InProcess> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        Ok(InProcess {
            runtime,
            backend: GitBackend::new(),
        })
    }

    /// A git poller watching `main` of `url`, built as polld builds it from a config
    /// (`Backend::build`), its mirror under `<state_dir>/mirrors/<name>`.
    pub fn poller(&self, name: &str, url: &str, state_dir: &Path) -> Result<Arc<dyn Poller>> {
        self.poller_with(name, &Access::url(url), state_dir)
    }

    /// [`InProcess::poller`] with the TLS and ssh files `access` names.
    pub fn poller_with(
        &self,
        name: &str,
        access: &Access,
        state_dir: &Path,
    ) -> Result<Arc<dyn Poller>> {
        let mut context = PollerContext::new(name, &access.url, state_dir, state_dir);
        context.ca_file.clone_from(&access.ca_file);
        let config = GitConfig {
            branches: Some(polld_backend::StringList(vec!["main".to_owned()])),
            ssh_key_file: access.ssh_key_file.clone(),
            known_hosts_file: access.known_hosts_file.clone(),
            ..GitConfig::default()
        };
        Backend::build(&self.backend, context, config).map_err(|e| anyhow!("{name}: {e}"))
    }

    /// The first poll: records where the remote is (and fills the mirror); its cursor.
    pub fn first_poll(&self, poller: &Arc<dyn Poller>) -> Result<Cursor> {
        match self.runtime.block_on(poller.poll(None)) {
            Ok(PollOutcome::Advanced { cursor, changes }) if changes.is_empty() => Ok(cursor),
            Ok(other) => bail!("unexpected first poll outcome: {other:?}"),
            Err(e) => bail!("first poll failed: {e}"),
        }
    }

    /// `rounds` no-change polls of every poller, at most `concurrency` at once (as
    /// polld's `max_concurrent_polls`). CPU is this process's (RUSAGE_SELF) over the
    /// batch: libgit2, the runtime, everything.
    pub fn measure_concurrent(
        &self,
        pollers: &[Arc<dyn Poller>],
        cursor: &Cursor,
        rounds: usize,
        concurrency: usize,
    ) -> PollStats {
        let total = pollers.len() * rounds;
        let next = Arc::new(AtomicUsize::new(0));
        let pollers: Arc<Vec<Arc<dyn Poller>>> = Arc::new(pollers.to_vec());
        let cursor = Arc::new(cursor.clone());
        let before = self_usage();
        let started = Instant::now();
        let mut stats = self.runtime.block_on(async {
            let mut workers = tokio::task::JoinSet::new();
            for _ in 0..concurrency.max(1) {
                let (next, pollers, cursor) =
                    (Arc::clone(&next), Arc::clone(&pollers), Arc::clone(&cursor));
                workers.spawn(async move {
                    let mut stats = PollStats::default();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= total {
                            return stats;
                        }
                        let poller = &pollers[k % pollers.len()];
                        let t = Instant::now();
                        let result = no_change(poller.poll(Some(&cursor)).await);
                        stats.record(t.elapsed(), result);
                    }
                });
            }
            let mut stats = PollStats::default();
            while let Some(worker) = workers.join_next().await {
                stats.merge(worker.expect("poll worker panicked"));
            }
            stats
        });
        stats.wall = started.elapsed();
        stats.cpu = self_usage().cpu.saturating_sub(before.cpu);
        stats
    }

    /// No-change polls of one poller, one at a time, until `budget` is spent (at least
    /// `min_polls`, at most `max_polls`).
    pub fn measure_sequential(
        &self,
        poller: &Arc<dyn Poller>,
        cursor: &Cursor,
        min_polls: usize,
        max_polls: usize,
        budget: Duration,
    ) -> PollStats {
        let before = self_usage();
        let started = Instant::now();
        let mut stats = self.runtime.block_on(async {
            let mut stats = PollStats::default();
            while stats.polls < max_polls && (stats.polls < min_polls || started.elapsed() < budget)
            {
                let t = Instant::now();
                let result = no_change(poller.poll(Some(cursor)).await);
                stats.record(t.elapsed(), result);
            }
            stats
        });
        stats.wall = started.elapsed();
        stats.cpu = self_usage().cpu.saturating_sub(before.cpu);
        stats
    }
}

fn no_change(result: Result<PollOutcome, polld_backend::PollError>) -> Result<(), String> {
    match result {
        Ok(PollOutcome::Unchanged) => Ok(()),
        Ok(PollOutcome::Advanced { changes, .. } | PollOutcome::Partial { changes, .. }) => {
            Err(format!(
                "expected no change, the poll advanced ({} changes)",
                changes.len()
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}
