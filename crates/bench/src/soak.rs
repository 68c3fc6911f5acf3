//! The soak run (`--soak-minutes M`): the real `polld run` watching a few repositories
//! into which commits stream for a long time, to see what months of uptime do to it.
//! Sampled from outside every `--soak-sample`: polld's RSS, the mirrors' pack counts and
//! sizes, `state.db`'s size, and polld's CPU per poll, compared between the first and
//! the last sixth of the run. At the end every commit must have reached the sink
//! exactly once.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::daemon::{Polld, SinkReader, http_get, poll_totals, proc_cpu, proc_rss};
use crate::fixture::{self, GitDaemon};
use crate::util::{Rng, fast_import, free_port, git, stdout_of};
use crate::{Options, progress};

/// One look at the daemon and its state.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Since the commits started.
    pub minute: f64,
    pub rss_kib: u64,
    /// polld's CPU seconds so far, and its successful and failed polls so far.
    pub cpu_seconds: f64,
    pub polls_ok: u64,
    pub polls_failed: u64,
    pub commits_made: usize,
    pub changes_delivered: usize,
    /// Packs in the fullest mirror, and in all of them.
    pub packs_max: usize,
    pub packs_total: usize,
    pub mirrors_bytes: u64,
    /// `state.db` with its WAL.
    pub store_bytes: u64,
}

#[derive(Debug, Clone, Default)]
pub struct SoakReport {
    pub repos: usize,
    pub commits: usize,
    pub minutes: u64,
    pub interval: Duration,
    pub profile: &'static str,
    pub cores: usize,
    pub samples: Vec<Sample>,
    /// polld's CPU per poll in the first and the last sixth of the run, in ms.
    pub cpu_ms_per_poll_start: f64,
    pub cpu_ms_per_poll_end: f64,
    pub rss_hwm_kib: u64,
    /// Commits never delivered, and deliveries of a commit seen before.
    pub missing: usize,
    pub duplicates: usize,
    pub stopped_cleanly: bool,
    pub failed_poll_lines: Vec<String>,
}

impl SoakReport {
    pub fn cpu_ratio(&self) -> f64 {
        self.cpu_ms_per_poll_end / self.cpu_ms_per_poll_start.max(1e-9)
    }

    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.missing > 0 || self.duplicates > 0 {
            problems.push(format!(
                "{} commits never reached the sink, {} reached it twice",
                self.missing, self.duplicates
            ));
        }
        if let Some(last) = self.samples.last()
            && last.polls_failed > 0
        {
            problems.push(format!(
                "{} polls failed: {:?}",
                last.polls_failed, self.failed_poll_lines
            ));
        }
        if !self.stopped_cleanly {
            problems.push("polld did not exit 0 within 30 s of SIGTERM".into());
        }
        problems
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        let _ = writeln!(
            s,
            "## Soak: {} commits into {} repositories over {} minutes, polled every {} \
             ({} build, {} cores)\n",
            self.commits,
            self.repos,
            self.minutes,
            humantime::format_duration(self.interval),
            self.profile,
            self.cores
        );
        let _ = writeln!(
            s,
            "| minute | commits | delivered | polls | RSS MiB | packs (max / all mirrors) | mirrors MiB | state.db KiB |"
        );
        let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
        for sample in &self.samples {
            let _ = writeln!(
                s,
                "| {:.0} | {} | {} | {} | {:.1} | {} / {} | {:.1} | {} |",
                sample.minute,
                sample.commits_made,
                sample.changes_delivered,
                sample.polls_ok + sample.polls_failed,
                sample.rss_kib as f64 / 1024.0,
                sample.packs_max,
                sample.packs_total,
                mib(sample.mirrors_bytes),
                sample.store_bytes / 1024
            );
        }
        let _ = writeln!(
            s,
            "\n| measure | value | target |\n|---|---:|---:|\n\
             | CPU per poll, first vs last sixth | {:.2} vs {:.2} ms: **{:.2}×** | ≤ 1.2× |\n\
             | RSS high-water mark | {:.1} MiB | < 256 MiB |\n\
             | commits missing / delivered twice | {} / {} | 0 / 0 |\n\
             | exit on SIGTERM | {} | 0 |",
            self.cpu_ms_per_poll_start,
            self.cpu_ms_per_poll_end,
            self.cpu_ratio(),
            self.rss_hwm_kib as f64 / 1024.0,
            self.missing,
            self.duplicates,
            if self.stopped_cleanly { "0" } else { "not 0" },
        );
        s
    }
}

/// `.pack` files in a mirror, and the bytes of the whole mirror.
fn mirror_usage(mirror: &Path) -> (usize, u64) {
    let packs = std::fs::read_dir(mirror.join("objects/pack")).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .count()
    });
    (packs, tree_bytes(mirror))
}

fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => tree_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Appends one commit (changing one of 20 files) to `main` of the bare `repo`, with
/// `git fast-import`, as a push would.
fn push_commit(repo: &Path, number: usize) -> Result<()> {
    let when = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let message = format!("soak commit {number}\n\nA change streamed in by polld-bench.\n");
    let content = format!("{number}\n").repeat(1 + number % 50);
    let stream = format!(
        "commit refs/heads/main\ncommitter Soak <soak@example.org> {when} +0000\n\
         data {}\n{message}\nfrom refs/heads/main^0\nM 100644 inline file{}.txt\ndata {}\n{content}\n",
        message.len(),
        number % 20,
        content.len()
    );
    fast_import(repo, &stream)
}

pub fn run(options: &Options, polld: &Path, root: &Path) -> Result<SoakReport> {
    let n = options.soak_repos.max(1);
    let minutes = options.soak_minutes;
    let commits = options.soak_commits;
    let interval = options.soak_interval;
    progress(&format!("soak: creating {n} repositories"));
    let repos = fixture::create_repos(root, n)?;
    let gitd = GitDaemon::start(&repos.base, &root.join("git-daemon.log"))?;
    let dir = root.join("soak");
    std::fs::create_dir_all(&dir)?;
    let names: Vec<String> = repos
        .names
        .iter()
        .map(|r| r.trim_end_matches(".git").to_owned())
        .collect();
    let port = free_port()?;
    let mut config = format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\n\n\
         [defaults]\ninterval = \"{}\"\n\n[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n",
        humantime::format_duration(interval)
    );
    for (name, repo) in names.iter().zip(&repos.names) {
        config.push_str(&format!(
            "\n[[poller]]\nname = \"{name}\"\ntype = \"git\"\nrepo = \"{}\"\nbranches = \"main\"\n",
            gitd.url(repo)
        ));
    }
    let config_path = dir.join("pollers.toml");
    std::fs::write(&config_path, config)?;
    let log_path = dir.join("polld.log");
    let state = dir.join("state");
    let mut polld_process = Polld::run(polld, &config_path, &log_path)?;
    let pid = polld_process.0.id();
    let metrics = || -> Result<(u64, u64)> {
        let (status, body) = http_get(port, "/metrics")?;
        if status != 200 {
            bail!("GET /metrics answered {status}");
        }
        Ok(poll_totals(&body))
    };
    // Every poller's first poll (which records the remote and reports nothing) first.
    let deadline = Instant::now() + Duration::from_secs(120);
    while metrics().map_or(0, |(ok, _)| ok) < n as u64 {
        if Instant::now() > deadline {
            bail!("the pollers' first polls did not finish within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    progress(&format!(
        "soak: streaming {commits} commits into {n} repositories over {minutes} minutes"
    ));
    let made = Arc::new(AtomicUsize::new(0));
    // Set when the soak ends early, so the writer stops too.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (made, stop) = (Arc::clone(&made), Arc::clone(&stop));
        let paths: Vec<PathBuf> = (0..n).map(|i| repos.path(i)).collect();
        let spacing = Duration::from_secs(minutes * 60).div_f64(commits.max(1) as f64);
        let mut rng = Rng::new(options.seed.unwrap_or(1));
        std::thread::spawn(move || -> Result<()> {
            let started = Instant::now();
            for number in 0..commits {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let due = spacing.mul_f64(number as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
                push_commit(&paths[rng.below(paths.len())], number)?;
                made.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };

    let mut sink = SinkReader::new(dir.join("changes.jsonl"));
    let mut delivered: HashSet<String> = HashSet::new();
    let mut duplicates = 0;
    let mut take_deliveries = |delivered: &mut HashSet<String>| {
        for revision in sink.revisions() {
            if !delivered.insert(revision) {
                duplicates += 1;
            }
        }
    };
    let started = Instant::now();
    let mut samples = Vec::new();
    let mirrors: Vec<PathBuf> = names
        .iter()
        .map(|m| state.join("mirrors").join(m))
        .collect();
    let mut take_sample = |delivered: usize| -> Result<()> {
        let (polls_ok, polls_failed) = metrics()?;
        let usage: Vec<(usize, u64)> = mirrors.iter().map(|m| mirror_usage(m)).collect();
        let file = |name: &str| std::fs::metadata(state.join(name)).map_or(0, |m| m.len());
        let sample = Sample {
            minute: started.elapsed().as_secs_f64() / 60.0,
            rss_kib: proc_rss(pid).map_or(0, |(rss, _)| rss),
            cpu_seconds: proc_cpu(pid).unwrap_or(0.0),
            polls_ok,
            polls_failed,
            commits_made: made.load(Ordering::Relaxed),
            changes_delivered: delivered,
            packs_max: usage.iter().map(|u| u.0).max().unwrap_or(0),
            packs_total: usage.iter().map(|u| u.0).sum(),
            mirrors_bytes: usage.iter().map(|u| u.1).sum(),
            store_bytes: file("state.db") + file("state.db-wal"),
        };
        progress(&format!(
            "soak: minute {:.1}: {} commits, {} delivered, RSS {} KiB, {} packs at most",
            sample.minute, sample.commits_made, delivered, sample.rss_kib, sample.packs_max
        ));
        samples.push(sample);
        Ok(())
    };
    let mut next_sample = Duration::ZERO;
    while !writer.is_finished() {
        if let Ok(Some(status)) = polld_process.0.try_wait() {
            stop.store(true, Ordering::Relaxed);
            bail!("polld exited during the soak ({status})");
        }
        take_deliveries(&mut delivered);
        if started.elapsed() >= next_sample {
            take_sample(delivered.len())?;
            next_sample += options.soak_sample;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    match writer.join() {
        Ok(result) => result.context("streaming commits")?,
        Err(_) => bail!("the commit writer panicked"),
    }
    // The last commits need a poll and a delivery.
    let made_count = made.load(Ordering::Relaxed);
    let deadline = Instant::now() + interval * 3 + Duration::from_secs(30);
    while delivered.len() < made_count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        take_deliveries(&mut delivered);
    }
    take_sample(delivered.len())?;
    let mut expected: HashSet<String> = HashSet::new();
    for i in 0..n {
        let listed = stdout_of(git().arg("-C").arg(repos.path(i)).args([
            "rev-list",
            "main",
            &format!("^{}", repos.commit),
        ]))?;
        expected.extend(listed.lines().map(str::to_owned));
    }
    let missing = expected.difference(&delivered).count();

    let rss_hwm_kib = proc_rss(pid).map_or(0, |(_, hwm)| hwm);
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    let stopped_cleanly = loop {
        match polld_process.0.try_wait() {
            Ok(Some(status)) => break status.success(),
            Ok(None) if Instant::now() < stop_deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => break false,
        }
    };
    drop(polld_process);
    drop(gitd);
    let failed_poll_lines = std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("poll failed"))
        .take(5)
        .map(str::to_owned)
        .collect();

    let (start, end) = cpu_windows(&samples);
    Ok(SoakReport {
        repos: n,
        commits: made_count,
        minutes,
        interval,
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cores: std::thread::available_parallelism().map_or(0, |c| c.get()),
        samples,
        cpu_ms_per_poll_start: start,
        cpu_ms_per_poll_end: end,
        rss_hwm_kib,
        missing,
        duplicates,
        stopped_cleanly,
        failed_poll_lines,
    })
}

/// polld's CPU per poll (ms) between the samples of the first sixth of the run, and
/// between those of the last sixth.
fn cpu_windows(samples: &[Sample]) -> (f64, f64) {
    let per_poll = |from: &Sample, to: &Sample| {
        let polls =
            (to.polls_ok + to.polls_failed).saturating_sub(from.polls_ok + from.polls_failed);
        1000.0 * (to.cpu_seconds - from.cpu_seconds) / polls.max(1) as f64
    };
    let Some(last) = samples.last() else {
        return (0.0, 0.0);
    };
    let sixth = last.minute / 6.0;
    let first_end = samples.iter().find(|s| s.minute >= sixth).unwrap_or(last);
    let last_start = samples
        .iter()
        .rev()
        .find(|s| s.minute <= last.minute - sixth)
        .unwrap_or(&samples[0]);
    (per_poll(&samples[0], first_end), per_poll(last_start, last))
}
