//! `--replicas` (issue 17): what sharing the pollers between `polld run` replicas
//! through one PostgreSQL costs, and how fast a dead replica's pollers move.
//!
//! Everything runs against a real, throwaway PostgreSQL (`polld-test-support`'s
//! `PgServer`: on 127.0.0.1, `fsync = off`), one database per part so that each part's
//! statistics are its own:
//!
//! 1. **Store operations.** In-process through the core's `Store` trait, one at a time:
//!    `commit_poll` of one change, then `peek` + `acknowledge` of it, on SQLite and on
//!    PostgreSQL (unfenced, and fenced as a replica writes), with the transactions and
//!    rows each change cost the database. Then a real replica with 100 git pollers on
//!    unchanged repositories: every row it wrote, by table, against its polls.
//! 2. **Takeover.** Two replicas share 20 pollers with a short lease; one is killed
//!    with SIGKILL and the clock runs until the survivor holds every lease (read from
//!    the `leases` table); a new replica replaces the dead one, the split settles, and
//!    the next round kills the older one.
//! 3. **Scale.** `--replica-pollers` git pollers (10,000) every `--interval` over three
//!    replicas: each replica's CPU, memory, polls and pollers held; the database's
//!    transactions, rows written and CPU.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use polld_backend::Cursor;
use polld_core::Change;
use polld_core::store::{Access, Store};
use polld_store_postgres::{Fencing, PostgresStore};
use polld_test_support::postgres::PgServer;

use crate::daemon::{Polld, http_get, poll_totals, proc_cpu, proc_rss};
use crate::fixture::{self, GIT_DAEMON_REQUEST, GitDaemon, RequestCounter};
use crate::pgstat::{self, Delta, Snapshot};
use crate::util::{Rng, free_port, ms};
use crate::{Options, progress};

/// The variable the replicas read the database URL from.
const URL_ENV: &str = "POLLD_DATABASE_URL";
/// Operations of each store-operation row that are not timed (connections, caches).
const WARMUP_OPS: usize = 20;
/// The no-change run: pollers, their interval, the lease.
const IDLE_POLLERS: usize = 100;
const IDLE_INTERVAL: &str = "2s";
const IDLE_LEASE: Duration = Duration::from_secs(15);
/// The takeover rounds: pollers, lease, poll interval.
const TAKEOVER_POLLERS: usize = 20;
const TAKEOVER_LEASE: Duration = Duration::from_secs(2);
const TAKEOVER_INTERVAL: &str = "10s";
/// How often the takeover clock reads the `leases` table (each read is one `psql`).
const TAKEOVER_PAUSE: Duration = Duration::from_millis(10);
/// The scale run: replicas and lease.
const SCALE_REPLICAS: usize = 3;
const SCALE_LEASE: Duration = Duration::from_secs(15);
/// The tables whose rows a no-change poll must never write.
const POLL_TABLES: [&str; 3] = ["cursors", "outbox", "dead_letters"];

/// Everything `--replicas` measured.
#[derive(Debug, Clone, Default)]
pub struct ReplicasReport {
    pub profile: &'static str,
    pub cores: usize,
    pub postgres_version: String,
    pub load_before: String,
    pub load_after: String,
    pub fixture_seconds: f64,
    pub store_ops: Vec<StoreOpsRow>,
    pub idle: Option<IdleRun>,
    pub takeover: Option<TakeoverRun>,
    pub scale: Option<ScaleRun>,
}

/// One store's timed operations.
#[derive(Debug, Clone, Default)]
pub struct StoreOpsRow {
    pub store: &'static str,
    /// `commit_poll` of one change, in ms, per operation.
    pub commit_ms: Vec<f64>,
    /// `peek` + `acknowledge` of that change, in ms.
    pub deliver_ms: Vec<f64>,
    /// What the database saw over every operation, warm-up included (PostgreSQL only).
    pub database: Option<Delta>,
    /// Changes committed and delivered in all, warm-up included.
    pub changes: usize,
}

/// A replica left alone with unchanged repositories.
#[derive(Debug, Clone, Default)]
pub struct IdleRun {
    pub pollers: usize,
    pub interval: &'static str,
    pub lease: Duration,
    /// From the replica's start until it was killed.
    pub seconds: f64,
    pub polls_ok: u64,
    pub polls_error: u64,
    /// Everything the database saw over the replica's whole life.
    pub database: Delta,
}

impl IdleRun {
    pub fn polls(&self) -> u64 {
        self.polls_ok + self.polls_error
    }
    /// Rows written to `leases` and `replicas`.
    pub fn lease_rows(&self) -> i64 {
        self.database.table("leases").total() + self.database.table("replicas").total()
    }
    /// Rows written to the tables a poll moves (cursors, outbox, dead letters).
    pub fn poll_rows(&self) -> i64 {
        POLL_TABLES
            .iter()
            .map(|t| self.database.table(t).total())
            .sum()
    }
}

/// The takeover rounds.
#[derive(Debug, Clone, Default)]
pub struct TakeoverRun {
    pub pollers: usize,
    pub lease: Duration,
    /// Seconds from SIGKILL until the survivor held every poller, per round.
    pub seconds: Vec<f64>,
    /// Rounds in which the survivor never held every poller (within ten leases).
    pub timeouts: usize,
    /// Seconds from a replacement's start until the two held half each, per round.
    pub rebalance_seconds: Vec<f64>,
}

/// The scale run.
#[derive(Debug, Clone, Default)]
pub struct ScaleRun {
    pub pollers: usize,
    pub interval: Duration,
    pub lease: Duration,
    /// From the replicas' start until the split settled and the launch burst passed.
    pub launch_seconds: f64,
    /// Polls (git daemon requests) during the launch.
    pub launch_polls: usize,
    pub seconds: f64,
    pub replicas: Vec<ScaleReplica>,
    /// Polls (git daemon requests) per second over the window.
    pub per_second: Vec<usize>,
    pub database: Delta,
    pub postgres_cpu_seconds: Option<f64>,
    /// How busy the whole machine was over the window, % of all its cores.
    pub machine_busy_pct: Option<f64>,
    /// Pollers per replica at each check during the window (min and max seen).
    pub held_min: usize,
    pub held_max: usize,
    pub stopped_cleanly: usize,
}

/// One replica of the scale run.
#[derive(Debug, Clone, Default)]
pub struct ScaleReplica {
    pub name: String,
    pub held: usize,
    pub cpu_seconds: f64,
    pub polls_ok: u64,
    pub polls_error: u64,
    pub rss_max_kib: u64,
    pub failed_poll_lines: usize,
}

/// The `q` quantile (0..=1) of `values` by nearest rank; 0 for none.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

impl ReplicasReport {
    /// Everything that breaks the contract or makes the run incorrect.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(idle) = &self.idle {
            if idle.poll_rows() != 0 {
                problems.push(format!(
                    "no-change polls wrote {} rows to cursors/outbox/dead_letters",
                    idle.poll_rows()
                ));
            }
            if idle.polls_error > 0 || idle.polls_ok == 0 {
                problems.push(format!(
                    "no-change run: {} polls ok, {} failed",
                    idle.polls_ok, idle.polls_error
                ));
            }
        }
        if let Some(takeover) = &self.takeover {
            let limit = 2.0 * takeover.lease.as_secs_f64();
            let late: Vec<String> = takeover
                .seconds
                .iter()
                .filter(|&&s| s > limit)
                .map(|s| format!("{s:.2} s"))
                .collect();
            if !late.is_empty() {
                problems.push(format!(
                    "takeover after kill -9 took longer than two leases ({limit:.0} s): {}",
                    late.join(", ")
                ));
            }
            if takeover.timeouts > 0 {
                problems.push(format!(
                    "takeover: in {} rounds the survivor never held every poller",
                    takeover.timeouts
                ));
            }
        }
        if let Some(scale) = &self.scale {
            let fair = scale.pollers as f64 / scale.replicas.len().max(1) as f64;
            for replica in &scale.replicas {
                let off = (replica.held as f64 - fair) / fair.max(1.0);
                if off.abs() > 0.2 {
                    problems.push(format!(
                        "scale: replica {} holds {} pollers, {:+.0} % off its fair share {fair:.0}",
                        replica.name,
                        replica.held,
                        100.0 * off
                    ));
                }
                if replica.polls_error > 0 || replica.failed_poll_lines > 0 {
                    problems.push(format!(
                        "scale: replica {}: {} polls failed ({} `poll failed` log lines)",
                        replica.name, replica.polls_error, replica.failed_poll_lines
                    ));
                }
            }
            if (scale.held_min as f64) < 0.8 * fair || (scale.held_max as f64) > 1.2 * fair {
                problems.push(format!(
                    "scale: pollers per replica ranged {}–{} during the window, fair share {fair:.0}",
                    scale.held_min, scale.held_max
                ));
            }
        }
        problems
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## Replicas sharing one PostgreSQL ({} build, {} cores, PostgreSQL {})\n",
            self.profile, self.cores, self.postgres_version
        );
        let _ = writeln!(
            s,
            "The server is the test suite's throwaway cluster on 127.0.0.1 (`fsync = off`, \
             `full_page_writes = off`, `shared_buffers = 16MB`, synchronous commit on): \
             commits wait for the WAL write, never for a disk flush, so on a real disk \
             each commit costs a flush more. Fixture: {:.1} s. Load average before / \
             after: {} / {}.\n",
            self.fixture_seconds, self.load_before, self.load_after
        );
        self.markdown_store_ops(&mut s);
        self.markdown_idle(&mut s);
        self.markdown_takeover(&mut s);
        self.markdown_scale(&mut s);
        s
    }

    fn markdown_store_ops(&self, s: &mut String) {
        if self.store_ops.is_empty() {
            return;
        }
        let ops = self.store_ops.first().map_or(0, |row| row.commit_ms.len());
        let _ = writeln!(
            s,
            "### Store operations per change (in-process, `Store` trait, one at a time, {ops} timed each)\n"
        );
        let _ = writeln!(
            s,
            "| store | `commit_poll` of 1 change: p50 / mean / p99 ms | `peek` + `acknowledge`: p50 / mean / p99 ms | transactions per change | rows written per change |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for row in &self.store_ops {
            let (xacts, rows) = match &row.database {
                Some(db) => (
                    format!("{:.2}", db.xact_commit as f64 / row.changes.max(1) as f64),
                    format!("{:.2}", db.rows_written as f64 / row.changes.max(1) as f64),
                ),
                None => ("—".to_owned(), "—".to_owned()),
            };
            let _ = writeln!(
                s,
                "| {} | {:.3} / {:.3} / {:.3} | {:.3} / {:.3} / {:.3} | {xacts} | {rows} |",
                row.store,
                quantile(&row.commit_ms, 0.5),
                mean(&row.commit_ms),
                quantile(&row.commit_ms, 0.99),
                quantile(&row.deliver_ms, 0.5),
                mean(&row.deliver_ms),
                quantile(&row.deliver_ms, 0.99),
            );
        }
        let _ = writeln!(
            s,
            "\nA change costs one `commit_poll` (cursor and outbox, one transaction) and, \
             once the sink took it, one `peek` and one `acknowledge`. PostgreSQL's counts \
             are `pg_stat_database` over all {} changes of the row (warm-up and the \
             connect's schema check included), read after the store's sessions ended, so \
             exact. Fenced: as a replica writes, each write first share-locks this \
             replica's lease row of the poller. A poll that finds nothing calls no store \
             operation at all (below).\n",
            self.store_ops.first().map_or(0, |row| row.changes)
        );
    }

    fn markdown_idle(&self, s: &mut String) {
        let Some(idle) = &self.idle else {
            return;
        };
        let _ = writeln!(
            s,
            "### No-change polls on PostgreSQL: one `polld run` replica, {} git pollers every {}, lease {}, {:.1} s\n",
            idle.pollers,
            idle.interval,
            humantime::format_duration(idle.lease),
            idle.seconds
        );
        let db = &idle.database;
        let polls = idle.polls().max(1) as f64;
        let secs = idle.seconds.max(1e-9);
        let leases = db.table("leases");
        let replicas = db.table("replicas");
        let status = db.table("poll_status");
        let _ = writeln!(s, "| measure | total | per second | per poll |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        let mut line = |what: &str, total: f64| {
            let _ = writeln!(
                s,
                "| {what} | {total:.0} | {:.2} | {:.3} |",
                total / secs,
                total / polls
            );
        };
        line("polls (`/metrics`, all no-change)", idle.polls() as f64);
        line(
            "transactions committed (`xact_commit`): the queries per second",
            db.xact_commit as f64,
        );
        line("rows written, whole database", db.rows_written as f64);
        line(
            &format!(
                "… leases: {} inserted (first round), {} renewed, {} deleted",
                leases.inserted, leases.updated, leases.deleted
            ),
            leases.total() as f64,
        );
        line("… replicas (heartbeat)", replicas.total() as f64);
        line(
            "… poll_status (outcomes, saved in batches every 10 s, one row per poller)",
            status.total() as f64,
        );
        line(
            "… cursors, outbox, dead_letters (must be 0)",
            idle.poll_rows() as f64,
        );
        let other: i64 = db
            .tables
            .iter()
            .filter(|(name, _)| {
                !["leases", "replicas", "poll_status"].contains(&name.as_str())
                    && !POLL_TABLES.contains(&name.as_str())
            })
            .map(|(_, w)| w.total())
            .sum();
        line("… other tables", other as f64);
        let _ = writeln!(
            s,
            "\nCounted from the replica's start (cursors already in the database, as after \
             a restart) to its `kill -9` (so no hand-over on stop), read once its sessions \
             had ended: exact. Lease rows (`leases` + `replicas`) are {:.0} % of the rows \
             written; the first round inserts the leases, every later round (each \
             lease/3) renews every held one: {} rounds after the first in {:.1} s, so {} \
             renewals expected, {} seen. The transactions are the lease rounds, the \
             batches of poll outcomes, the delivery's look at the outbox every 5 s and, \
             at start, a read of the cursors and one `peek` per poller taken.\n",
            100.0 * idle.lease_rows() as f64 / (db.rows_written.max(1)) as f64,
            (idle.seconds / (idle.lease.as_secs_f64() / 3.0)) as u64,
            idle.seconds,
            (idle.seconds / (idle.lease.as_secs_f64() / 3.0)) as u64 * idle.pollers as u64,
            leases.updated,
        );
    }

    fn markdown_takeover(&self, s: &mut String) {
        let Some(t) = &self.takeover else {
            return;
        };
        let lease = t.lease.as_secs_f64();
        let _ = writeln!(
            s,
            "### Takeover after `kill -9`: 2 replicas, {} pollers, lease {}, {} rounds\n",
            t.pollers,
            humantime::format_duration(t.lease),
            t.seconds.len() + t.timeouts
        );
        let _ = writeln!(
            s,
            "| lease | rounds | p50 s | p99 s | max s | p50 × lease | p99 × lease | max × lease | within two leases |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        let (p50, p99, max) = (
            quantile(&t.seconds, 0.5),
            quantile(&t.seconds, 0.99),
            quantile(&t.seconds, 1.0),
        );
        let _ = writeln!(
            s,
            "| {} | {} | {p50:.2} | {p99:.2} | {max:.2} | {:.2} | {:.2} | {:.2} | {} |",
            humantime::format_duration(t.lease),
            t.seconds.len(),
            p50 / lease,
            p99 / lease,
            max / lease,
            if max <= 2.0 * lease && t.timeouts == 0 && !t.seconds.is_empty() {
                "met"
            } else {
                "**not met**"
            }
        );
        let each: Vec<String> = t.seconds.iter().map(|v| format!("{v:.2}")).collect();
        let _ = writeln!(
            s,
            "\nFrom SIGKILL to the first read of `leases` in which the survivor holds an \
             unexpired lease on every poller (reads every {} ms plus a `psql` start, \
             ≈ 10–20 ms). Each round kills the older replica at a random moment of its \
             renewal cycle. Rounds, s: {}. A replacement then took p50 {:.2} s (max \
             {:.2} s) until each held half.\n",
            TAKEOVER_PAUSE.as_millis(),
            each.join(", "),
            quantile(&t.rebalance_seconds, 0.5),
            quantile(&t.rebalance_seconds, 1.0),
        );
    }

    fn markdown_scale(&self, s: &mut String) {
        let Some(sc) = &self.scale else {
            return;
        };
        let _ = writeln!(
            s,
            "### {} git pollers over {} replicas: every {}, lease {}, {:.0} s after the launch\n",
            sc.pollers,
            sc.replicas.len(),
            humantime::format_duration(sc.interval),
            humantime::format_duration(sc.lease),
            sc.seconds
        );
        let fair = sc.pollers as f64 / sc.replicas.len().max(1) as f64;
        let secs = sc.seconds.max(1e-9);
        let _ = writeln!(
            s,
            "| replica | pollers held (end) | off fair share | polls/s | CPU % of one core | CPU ms per poll | RSS max MiB |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
        for r in &sc.replicas {
            let polls = (r.polls_ok + r.polls_error) as f64;
            let _ = writeln!(
                s,
                "| {} | {} | {:+.1} % | {:.1} | {:.1} | {:.2} | {:.1} |",
                r.name,
                r.held,
                100.0 * (r.held as f64 - fair) / fair.max(1.0),
                polls / secs,
                100.0 * r.cpu_seconds / secs,
                1000.0 * r.cpu_seconds / polls.max(1.0),
                r.rss_max_kib as f64 / 1024.0,
            );
        }
        let total_polls: usize = sc.per_second.iter().sum();
        let _ = writeln!(
            s,
            "\nPollers per replica over the window (checked every 10 s): {}–{} (fair \
             share {fair:.0}). Polls (the git daemon's requests) per second: mean {:.1}, \
             min {}, max {} (expected {:.1}). Launch: {:.0} s and {} polls until the split \
             settled and the launch burst passed (the first replica up takes every poller \
             and polls each at once; the later ones take theirs from it as it lets go). \
             Replicas stopped cleanly (SIGTERM): {} of {}.\n",
            sc.held_min,
            sc.held_max,
            total_polls as f64 / sc.per_second.len().max(1) as f64,
            sc.per_second.iter().min().copied().unwrap_or(0),
            sc.per_second.iter().max().copied().unwrap_or(0),
            sc.pollers as f64 / sc.interval.as_secs_f64().max(1e-9),
            sc.launch_seconds,
            sc.launch_polls,
            sc.stopped_cleanly,
            sc.replicas.len(),
        );
        let db = &sc.database;
        let _ = writeln!(s, "| database, over the window | total | per second |");
        let _ = writeln!(s, "|---|---:|---:|");
        let _ = writeln!(
            s,
            "| transactions committed (`xact_commit`) | {} | {:.1} |",
            db.xact_commit,
            db.xact_commit as f64 / secs
        );
        let _ = writeln!(
            s,
            "| rows written, whole database | {} | {:.1} |",
            db.rows_written,
            db.rows_written as f64 / secs
        );
        for (table, writes) in &db.tables {
            if writes.total() != 0 {
                let _ = writeln!(
                    s,
                    "| … {table} ({} ins, {} upd, {} del) | {} | {:.1} |",
                    writes.inserted,
                    writes.updated,
                    writes.deleted,
                    writes.total(),
                    writes.total() as f64 / secs
                );
            }
        }
        if let Some(cpu) = sc.postgres_cpu_seconds {
            let _ = writeln!(
                s,
                "| PostgreSQL's CPU (postmaster and every backend), % of one core | {:.1} | |",
                100.0 * cpu / secs
            );
        }
        if let Some(busy) = sc.machine_busy_pct {
            let _ = writeln!(
                s,
                "| the whole machine busy (replicas, PostgreSQL, git daemon, others), % of all cores | {busy:.1} | |"
            );
        }
        let _ = writeln!(
            s,
            "\nThe database's counters are read while the replicas run: each end may miss \
             up to ~10 s of a session's counts (PostgreSQL flushes an idle session's \
             statistics that late), which cancels out in a steady state. Expected lease \
             renewals: {:.0} rows/s (every held lease every lease/3, each replica's in \
             one transaction); poll outcomes are saved every 10 s, one row per poller \
             polled since the last save.\n",
            sc.pollers as f64 / (sc.lease.as_secs_f64() / 3.0)
        );
    }
}

/// The first line of `/proc/sys/kernel/hostname`, as polld names its replicas.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "polld".to_owned())
}

/// One running `polld run` replica (killed on drop).
struct Replica {
    polld: Polld,
    pid: u32,
    /// As its lease rows name it: `<host>-<pid>`.
    name: String,
    port: u16,
    log: PathBuf,
}

impl Replica {
    /// Fails with its log if it has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.polld.0.try_wait() {
            bail!(
                "replica {} exited ({status}); its log:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        Ok(())
    }

    fn kill9(&mut self) {
        let _ = self.polld.0.kill();
        let _ = self.polld.0.wait();
    }

    /// SIGTERM, then waits up to 30 s: whether it exited 0.
    fn stop(&mut self) -> bool {
        // SAFETY: plain kill(2) on our own child's pid, not yet waited for.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.polld.0.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => return false,
            }
        }
    }

    /// (ok, error) polls so far, from `/metrics`.
    fn polls(&self) -> Result<(u64, u64)> {
        let (status, metrics) = http_get(self.port, "/metrics")
            .with_context(|| format!("scraping /metrics of {}", self.name))?;
        if status != 200 {
            bail!("GET /metrics of {} answered {status}", self.name);
        }
        Ok(poll_totals(&metrics))
    }

    fn failed_poll_lines(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("poll failed"))
            .count()
    }
}

/// Starts replicas of one config (the same text but for each one's `listen`), each in
/// a directory of its own.
struct Fleet<'a> {
    polld: &'a Path,
    url: String,
    /// Everything after `[daemon]`'s keys.
    rest: String,
    concurrency: usize,
    dir: PathBuf,
    started: usize,
}

impl Fleet<'_> {
    fn start(&mut self) -> Result<Replica> {
        self.started += 1;
        let dir = self.dir.join(format!("replica-{}", self.started));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let config = format!(
            "[daemon]\nstate_dir = \"state\"\nmax_concurrent_polls = {}\nlisten = \"127.0.0.1:{port}\"\n\n{}",
            self.concurrency, self.rest
        );
        let config_path = dir.join("pollers.toml");
        std::fs::write(&config_path, config)?;
        let log = dir.join("polld.log");
        let polld = Polld::run_with(
            self.polld,
            &config_path,
            &log,
            &[(URL_ENV, self.url.as_str())],
            None,
        )?;
        let pid = polld.0.id();
        Ok(Replica {
            polld,
            pid,
            name: format!("{}-{pid}", hostname()),
            port,
            log,
        })
    }
}

/// The config after `[daemon]`: the store, the poll interval, a jsonl sink and one git
/// poller per `(name, url)`.
fn config_rest(lease: Duration, interval: &str, pollers: &[(String, String)]) -> String {
    let mut rest = format!(
        "[store]\nurl_env = \"{URL_ENV}\"\nlease = \"{}\"\n\n[defaults]\ninterval = \"{interval}\"\n\n\
         [sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n",
        humantime::format_duration(lease)
    );
    for (name, url) in pollers {
        let _ = write!(
            rest,
            "\n[[poller]]\nname = \"{name}\"\ntype = \"git\"\nrepo = \"{url}\"\nbranches = [\"main\"]\n"
        );
    }
    rest
}

/// Unexpired leases per holder.
fn holders(pg: &PgServer, database: &str) -> BTreeMap<String, usize> {
    pg.psql(
        database,
        "SELECT holder, count(*) FROM leases WHERE expires_at > clock_timestamp() GROUP BY holder",
    )
    .lines()
    .filter_map(|line| {
        let (holder, count) = line.split_once('|')?;
        Some((holder.to_owned(), count.trim().parse().ok()?))
    })
    .collect()
}

/// Waits until each of `replicas` holds its fair share of `pollers` (within one) and
/// nobody else holds any; returns how long it took.
fn wait_balanced(
    pg: &PgServer,
    database: &str,
    replicas: &mut [&mut Replica],
    pollers: usize,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let fair = pollers / replicas.len().max(1);
    loop {
        for replica in replicas.iter_mut() {
            replica.check_alive()?;
        }
        let held = holders(pg, database);
        let balanced = held.values().sum::<usize>() == pollers
            && replicas.iter().all(|r| {
                held.get(&r.name)
                    .is_some_and(|n| (fair..=fair + 1).contains(n))
            });
        if balanced {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!(
                "the replicas did not settle on {fair} pollers each within {:?}: {held:?}",
                timeout
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `cursor` as every poller's (state as after a restart), through an unfenced
/// store, 16 at a time; the store's sessions have ended when it returns.
fn seed_cursors(
    runtime: &tokio::runtime::Runtime,
    pg: &PgServer,
    database: &str,
    url: &str,
    names: &[String],
    cursor: &Cursor,
) -> Result<()> {
    runtime.block_on(async {
        let store = PostgresStore::connect(url, "bench-seed", Fencing::Off).await?;
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in names.chunks(names.len().div_ceil(16).max(1)) {
            let (store, chunk, cursor) = (store.clone(), chunk.to_vec(), cursor.clone());
            tasks.spawn(async move {
                for name in &chunk {
                    store.commit_poll(name, "git", &cursor, &[]).await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        anyhow::Ok(())
    })?;
    pgstat::wait_sessions_gone(pg, database)
}

/// A change as the git backend would make it.
fn bench_change(poller: &str, i: usize) -> Change {
    let revision = format!("{i:040x}");
    Change {
        id: format!("{poller}-{revision}"),
        poller: poller.to_owned(),
        vcs: "git".to_owned(),
        repository: "git://127.0.0.1/bench.git".to_owned(),
        branch: Some("main".to_owned()),
        revision,
        author: "Bench <bench@example.org>".to_owned(),
        committer: Some("Bench <bench@example.org>".to_owned()),
        comments: format!("change {i}"),
        files: vec!["README".to_owned(), format!("src/file{i}.rs")],
        when_timestamp: 1_764_000_000 + i as i64,
        project: String::new(),
        category: None,
        codebase: String::new(),
        revlink: None,
        properties: serde_json::Map::new(),
    }
}

/// Commits one change and delivers it, `ops` times after [`WARMUP_OPS`]; the timings.
async fn time_ops(store: &dyn Store, poller: &str, ops: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let (mut commit_ms, mut deliver_ms) = (Vec::new(), Vec::new());
    for i in 0..WARMUP_OPS + ops {
        let change = bench_change(poller, i);
        let cursor = Cursor(serde_json::json!({ "refs/heads/main": change.revision }));
        let t = Instant::now();
        store
            .commit_poll(poller, "git", &cursor, std::slice::from_ref(&change))
            .await?;
        let commit = t.elapsed();
        let t = Instant::now();
        let queued = store.peek(poller, 10).await?;
        let seqs: Vec<i64> = queued.iter().map(|q| q.seq).collect();
        if queued.len() != 1 || queued[0].change.id != change.id {
            bail!("peek after commit_poll of {} found {queued:?}", change.id);
        }
        store.acknowledge(&seqs).await?;
        let deliver = t.elapsed();
        if i >= WARMUP_OPS {
            commit_ms.push(ms(commit));
            deliver_ms.push(ms(deliver));
        }
    }
    if !store.peek(poller, 10).await?.is_empty() {
        bail!("changes left in the outbox after acknowledging them all");
    }
    Ok((commit_ms, deliver_ms))
}

fn store_ops(
    runtime: &tokio::runtime::Runtime,
    pg: &PgServer,
    root: &Path,
    ops: usize,
) -> Result<Vec<StoreOpsRow>> {
    let mut rows = Vec::new();
    progress(&format!("replicas: {ops} store operations on SQLite"));
    let state = root.join("ops-sqlite");
    std::fs::create_dir_all(&state)?;
    let sqlite: Arc<dyn Store> = Arc::new(polld_store_sqlite::SqliteStore::open(
        &state,
        Access::Shared,
    )?);
    let (commit_ms, deliver_ms) = runtime.block_on(time_ops(sqlite.as_ref(), "bench", ops))?;
    rows.push(StoreOpsRow {
        store: "SQLite (WAL, `state.db`)",
        commit_ms,
        deliver_ms,
        database: None,
        changes: WARMUP_OPS + ops,
    });
    drop(sqlite);

    for (label, fencing, database) in [
        ("PostgreSQL, unfenced", Fencing::Off, "ops_unfenced"),
        (
            "PostgreSQL, fenced (as a replica)",
            Fencing::On,
            "ops_fenced",
        ),
    ] {
        progress(&format!("replicas: {ops} store operations, {label}"));
        let url = pg.create_database(database);
        let replica = format!("bench-{database}");
        // The schema, and for a fenced store the lease on the poller, first; then
        // measure from a fresh connection.
        runtime.block_on(async {
            let store = PostgresStore::connect(&url, &replica, fencing).await?;
            if fencing == Fencing::On {
                let held = store
                    .balance(&["bench".to_owned()], Duration::from_secs(3600))
                    .await?;
                if !held.contains("bench") {
                    bail!("the fenced store did not take the poller's lease: {held:?}");
                }
            }
            anyhow::Ok(())
        })?;
        pgstat::wait_sessions_gone(pg, database)?;
        let before = Snapshot::take(pg, database)?;
        let (commit_ms, deliver_ms) = runtime.block_on(async {
            let store = PostgresStore::connect(&url, &replica, fencing).await?;
            time_ops(&store, "bench", ops).await
        })?;
        pgstat::wait_sessions_gone(pg, database)?;
        let after = Snapshot::take_after(pg, database)?;
        rows.push(StoreOpsRow {
            store: label,
            commit_ms,
            deliver_ms,
            database: Some(after.since(&before)),
            changes: WARMUP_OPS + ops,
        });
    }
    Ok(rows)
}

/// The pollers' names and URLs: the first `n` repositories of the fixture.
fn pollers_of(repos: &fixture::Repos, gitd: &GitDaemon, n: usize) -> Vec<(String, String)> {
    repos.names[..n.min(repos.names.len())]
        .iter()
        .map(|r| (r.trim_end_matches(".git").to_owned(), gitd.url(r)))
        .collect()
}

struct Served<'a> {
    runtime: &'a tokio::runtime::Runtime,
    pg: &'a PgServer,
    polld: &'a Path,
    root: &'a Path,
    repos: &'a fixture::Repos,
    gitd: &'a GitDaemon,
    cursor: &'a Cursor,
    concurrency: usize,
}

impl Served<'_> {
    /// A fresh database with every poller's cursor in it, and a fleet for it.
    fn fleet(
        &self,
        database: &str,
        pollers: &[(String, String)],
        lease: Duration,
        interval: &str,
    ) -> Result<Fleet<'_>> {
        let url = self.pg.create_database(database);
        let names: Vec<String> = pollers.iter().map(|(name, _)| name.clone()).collect();
        progress(&format!(
            "replicas: writing {} cursors into {database}",
            names.len()
        ));
        seed_cursors(self.runtime, self.pg, database, &url, &names, self.cursor)?;
        Ok(Fleet {
            polld: self.polld,
            url,
            rest: config_rest(lease, interval, pollers),
            concurrency: self.concurrency,
            dir: self.root.join(database),
            started: 0,
        })
    }

    fn idle(&self, seconds: u64) -> Result<IdleRun> {
        const DATABASE: &str = "idle";
        let pollers = pollers_of(self.repos, self.gitd, IDLE_POLLERS);
        let mut fleet = self.fleet(DATABASE, &pollers, IDLE_LEASE, IDLE_INTERVAL)?;
        let before = Snapshot::take(self.pg, DATABASE)?;
        progress(&format!(
            "replicas: one replica, {} unchanged pollers every {IDLE_INTERVAL}, for {seconds} s",
            pollers.len()
        ));
        let started = Instant::now();
        let mut replica = fleet.start()?;
        let end = Duration::from_secs(seconds);
        while started.elapsed() < end {
            replica.check_alive()?;
            std::thread::sleep(Duration::from_millis(100));
        }
        let (polls_ok, polls_error) = replica.polls()?;
        replica.kill9();
        let elapsed = started.elapsed().as_secs_f64();
        pgstat::wait_sessions_gone(self.pg, DATABASE)?;
        let after = Snapshot::take_after(self.pg, DATABASE)?;
        Ok(IdleRun {
            pollers: pollers.len(),
            interval: IDLE_INTERVAL,
            lease: IDLE_LEASE,
            seconds: elapsed,
            polls_ok,
            polls_error,
            database: after.since(&before),
        })
    }

    fn takeover(&self, rounds: usize, seed: u64) -> Result<TakeoverRun> {
        const DATABASE: &str = "takeover";
        let pollers = pollers_of(self.repos, self.gitd, TAKEOVER_POLLERS);
        let n = pollers.len();
        let mut fleet = self.fleet(DATABASE, &pollers, TAKEOVER_LEASE, TAKEOVER_INTERVAL)?;
        let mut run = TakeoverRun {
            pollers: n,
            lease: TAKEOVER_LEASE,
            ..TakeoverRun::default()
        };
        let settle = 10 * TAKEOVER_LEASE + Duration::from_secs(10);
        let mut older = fleet.start()?;
        let mut newer = fleet.start()?;
        wait_balanced(self.pg, DATABASE, &mut [&mut older, &mut newer], n, settle)?;
        let mut rng = Rng::new(seed);
        for round in 0..rounds {
            progress(&format!(
                "replicas: takeover round {} of {rounds}",
                round + 1
            ));
            // At a random moment of the renewal cycle.
            std::thread::sleep(TAKEOVER_LEASE.mul_f64(rng.unit()));
            older.kill9();
            let killed = Instant::now();
            let deadline = killed + 10 * TAKEOVER_LEASE;
            loop {
                newer.check_alive()?;
                if holders(self.pg, DATABASE).get(&newer.name) == Some(&n) {
                    run.seconds.push(killed.elapsed().as_secs_f64());
                    break;
                }
                if Instant::now() >= deadline {
                    run.timeouts += 1;
                    break;
                }
                std::thread::sleep(TAKEOVER_PAUSE);
            }
            // The survivor is the older one now; a replacement joins.
            older = std::mem::replace(&mut newer, fleet.start()?);
            let took = wait_balanced(self.pg, DATABASE, &mut [&mut older, &mut newer], n, settle)?;
            run.rebalance_seconds.push(took.as_secs_f64());
        }
        drop(older);
        drop(newer);
        Ok(run)
    }

    fn scale(&self, n: usize, interval: Duration, seconds: u64) -> Result<ScaleRun> {
        const DATABASE: &str = "scale";
        let pollers = pollers_of(self.repos, self.gitd, n);
        let n = pollers.len();
        let interval_text = humantime::format_duration(interval).to_string();
        let mut fleet = self.fleet(DATABASE, &pollers, SCALE_LEASE, &interval_text)?;
        let mut requests = RequestCounter::at_end(&self.gitd.log, GIT_DAEMON_REQUEST)?;
        progress(&format!(
            "replicas: {SCALE_REPLICAS} replicas, {n} pollers every {interval_text}: launching"
        ));
        let started = Instant::now();
        let mut replicas: Vec<Replica> = (0..SCALE_REPLICAS)
            .map(|_| fleet.start())
            .collect::<Result<_>>()?;
        let expected_rate = n as f64 / interval.as_secs_f64().max(1e-9);
        let launch_timeout = 3 * interval + Duration::from_secs(120);
        // Settled: the split is fair, and the last 5 seconds polled no faster than
        // 1.5 times the steady rate (the taken pollers' polls at once are done).
        let mut launch_polls = 0usize;
        let mut recent: Vec<usize> = Vec::new();
        let mut balanced = false;
        let mut last_check = Instant::now();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            for replica in &mut replicas {
                replica.check_alive()?;
            }
            let fresh = requests.new_requests();
            launch_polls += fresh;
            recent.push(fresh);
            if !balanced || last_check.elapsed() >= Duration::from_secs(5) {
                last_check = Instant::now();
                let held = holders(self.pg, DATABASE);
                let fair = n / SCALE_REPLICAS;
                balanced = held.values().sum::<usize>() == n
                    && replicas.iter().all(|r| {
                        held.get(&r.name)
                            .is_some_and(|h| (fair..=fair + 1).contains(h))
                    });
            }
            let calm = recent.len() >= 5
                && recent[recent.len() - 5..].iter().sum::<usize>() as f64
                    <= 1.5 * 5.0 * expected_rate + 5.0;
            if balanced && calm && started.elapsed() >= Duration::from_secs(10) {
                break;
            }
            if started.elapsed() > launch_timeout {
                bail!(
                    "the launch did not settle within {launch_timeout:?}: leases {:?}, last polls/s {:?}",
                    holders(self.pg, DATABASE),
                    &recent[recent.len().saturating_sub(5)..]
                );
            }
        }
        let launch_seconds = started.elapsed().as_secs_f64();
        progress(&format!(
            "replicas: launch settled after {launch_seconds:.0} s; measuring {seconds} s"
        ));

        let before = Snapshot::take(self.pg, DATABASE)?;
        let pg_cpu_before = pgstat::server_cpu(self.pg);
        let machine_before = pgstat::machine_jiffies();
        let mut rows: Vec<ScaleReplica> = Vec::new();
        let mut cpu_before = Vec::new();
        for replica in &replicas {
            let (ok, error) = replica.polls()?;
            cpu_before.push(proc_cpu(replica.pid).unwrap_or(0.0));
            rows.push(ScaleReplica {
                name: replica.name.clone(),
                polls_ok: ok,
                polls_error: error,
                ..ScaleReplica::default()
            });
        }
        let window_start = Instant::now();
        requests.new_requests();
        let mut per_second = Vec::new();
        let (mut held_min, mut held_max) = (usize::MAX, 0usize);
        let mut next_check = Duration::ZERO;
        let end = Duration::from_secs(seconds);
        while window_start.elapsed() < end {
            std::thread::sleep(Duration::from_secs(1));
            per_second.push(requests.new_requests());
            for (replica, row) in replicas.iter_mut().zip(&mut rows) {
                replica.check_alive()?;
                if let Some((rss, _)) = proc_rss(replica.pid) {
                    row.rss_max_kib = row.rss_max_kib.max(rss);
                }
            }
            if window_start.elapsed() >= next_check {
                next_check += Duration::from_secs(10);
                let held = holders(self.pg, DATABASE);
                for replica in &replicas {
                    let h = held.get(&replica.name).copied().unwrap_or(0);
                    held_min = held_min.min(h);
                    held_max = held_max.max(h);
                }
            }
        }
        let window = window_start.elapsed().as_secs_f64();
        for ((replica, row), cpu0) in replicas.iter().zip(&mut rows).zip(&cpu_before) {
            let (ok, error) = replica.polls()?;
            row.polls_ok = ok.saturating_sub(row.polls_ok);
            row.polls_error = error.saturating_sub(row.polls_error);
            row.cpu_seconds = proc_cpu(replica.pid).unwrap_or(0.0) - cpu0;
        }
        let machine_after = pgstat::machine_jiffies();
        let pg_cpu_after = pgstat::server_cpu(self.pg);
        let after = Snapshot::take_after(self.pg, DATABASE)?;
        let held = holders(self.pg, DATABASE);
        for row in &mut rows {
            row.held = held.get(&row.name).copied().unwrap_or(0);
        }
        let mut stopped_cleanly = 0;
        for (replica, row) in replicas.iter_mut().zip(&mut rows) {
            if replica.stop() {
                stopped_cleanly += 1;
            }
            row.failed_poll_lines = replica.failed_poll_lines();
        }
        Ok(ScaleRun {
            pollers: n,
            interval,
            lease: SCALE_LEASE,
            launch_seconds,
            launch_polls,
            seconds: window,
            replicas: rows,
            per_second,
            database: after.since(&before),
            postgres_cpu_seconds: pg_cpu_before.zip(pg_cpu_after).map(|(b, a)| a - b),
            machine_busy_pct: machine_before.zip(machine_after).map(|(b, a)| {
                100.0 * (a.0.saturating_sub(b.0)) as f64 / (a.1.saturating_sub(b.1)).max(1) as f64
            }),
            held_min: if held_min == usize::MAX { 0 } else { held_min },
            held_max,
            stopped_cleanly,
        })
    }
}

pub fn run(options: &Options, polld: &Path, root: &Path) -> Result<ReplicasReport> {
    let mut report = ReplicasReport {
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cores: std::thread::available_parallelism().map_or(0, |c| c.get()),
        load_before: load_average(),
        ..ReplicasReport::default()
    };
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    progress("replicas: starting PostgreSQL");
    let pg = PgServer::start();
    report.postgres_version = pg.psql("postgres", "SHOW server_version");

    let inproc = crate::inproc::InProcess::new()?;
    if options.store_ops > 0 {
        report.store_ops = store_ops(&inproc.runtime, &pg, root, options.store_ops)?;
    }

    let count = options
        .replica_pollers
        .max(IDLE_POLLERS)
        .max(TAKEOVER_POLLERS);
    let t = Instant::now();
    progress(&format!(
        "replicas: creating {count} bare repositories in {}",
        root.display()
    ));
    let repos = fixture::create_repos(root, count)?;
    let gitd = GitDaemon::start(&repos.base, &root.join("git-daemon.log"))?;
    report.fixture_seconds = t.elapsed().as_secs_f64();
    // Every repository is a copy of one template: one first poll gives every cursor.
    let first = inproc.poller(
        repos.names[0].trim_end_matches(".git"),
        &gitd.url(&repos.names[0]),
        &root.join("state-inproc"),
    )?;
    let cursor = inproc.first_poll(&first)?;
    let served = Served {
        runtime: &inproc.runtime,
        pg: &pg,
        polld,
        root,
        repos: &repos,
        gitd: &gitd,
        cursor: &cursor,
        concurrency: options.concurrency,
    };
    if options.idle_seconds > 0 {
        report.idle = Some(served.idle(options.idle_seconds)?);
    }
    if options.takeover_runs > 0 {
        report.takeover = Some(served.takeover(options.takeover_runs, seed)?);
    }
    if options.replica_pollers > 0 && options.replica_seconds > 0 {
        report.scale = Some(served.scale(
            options.replica_pollers,
            options.interval,
            options.replica_seconds,
        )?);
    }
    report.load_after = load_average();
    drop(gitd);
    Ok(report)
}
