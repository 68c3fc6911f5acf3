//! polld's benchmark: what a git poll that finds nothing costs in polld, next to the git
//! command sequence Buildbot's GitPoller runs per poll and a plain `git ls-remote`; the
//! cost of a repository with very many refs; and the real daemon at scale (CPU, memory,
//! how polls spread over time, commit-to-sink latency); and, with `--hooks`, push
//! notifications: push → change in a Buildbot master, and the webhook endpoint's cost;
//! and, with `--replicas`, replicas sharing one PostgreSQL: store operations, takeover
//! after `kill -9`, and 10,000 pollers over 3 replicas.
//!
//! Everything runs on 127.0.0.1 against a fixture the benchmark builds itself (N bare
//! repositories served by `git daemon`). `polld-bench --help` lists the knobs; the
//! README shows the command and a result.

mod daemon;
mod fixture;
mod hooks;
mod inproc;
mod once;
mod pgstat;
mod procs;
mod replicas;
mod report;
mod soak;
mod transports;
mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;

pub use crate::daemon::{DaemonResult, Latency, ViewCost};
pub use crate::hooks::{EndpointRow, HooksReport, PushRow, VerifyRow};
pub use crate::inproc::PollStats;
pub use crate::once::OnceResult;
pub use crate::pgstat::{Delta, Writes};
pub use crate::replicas::{
    IdleRun, ReplicasReport, ScaleReplica, ScaleRun, StoreOpsRow, TakeoverRun,
};
pub use crate::report::{RefsResult, Report};
pub use crate::soak::{Sample, SoakReport};
pub use crate::transports::TransportRow;

/// Benchmarks polld's git polling against Buildbot's GitPoller command sequence and
/// `git ls-remote`, on a fixture of N repositories served by a local `git daemon`.
#[derive(Parser, Debug, Clone)]
#[command(name = "polld-bench", version)]
pub struct Options {
    /// How many bare repositories to create and poll
    #[arg(long, default_value_t = 1000)]
    pub repos: usize,
    /// Polls at once (polld's max_concurrent_polls; also used for the git processes)
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// No-change polls of each repository by polld [default: enough for ~3000 polls]
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Repositories polled with Buildbot's command sequence (a sample when N is larger)
    #[arg(long, default_value_t = 200)]
    pub buildbot_sample: usize,
    /// Repositories polled with `git ls-remote` (a sample when N is larger)
    #[arg(long, default_value_t = 1000)]
    pub ls_remote_sample: usize,
    /// Also compare a repository with --big-refs-count refs to one with 10 refs
    #[arg(long)]
    pub big_refs: bool,
    /// Refs in the big repository (refs/heads/main plus refs/changes/*)
    #[arg(long, default_value_t = 100_000)]
    pub big_refs_count: usize,
    /// Also compare the transports (git://, http://, https://, ssh://) on a warm
    /// connection, against real servers (Apache, sshd), each with 10 and --big-refs-count refs
    #[arg(long)]
    pub transports: bool,
    /// Seconds each transport row polls polld for (at least 100 polls of 10 refs, 5 of
    /// many refs)
    #[arg(long, default_value_t = 4)]
    pub transport_seconds: u64,
    /// `polld once` over this many git:// pollers vs as many `git ls-remote`s; 0 skips it
    #[arg(long, default_value_t = 200)]
    pub once_pollers: usize,
    /// Run the real daemon (`polld run`) for this many seconds; 0 skips it
    #[arg(long, default_value_t = 0)]
    pub daemon_seconds: u64,
    /// What the daemon's pollers poll: `git://` (git daemon) or `https://` (Apache's git
    /// http-backend with a local CA)
    #[arg(long, value_enum, default_value_t = DaemonTransport::Git)]
    pub daemon_transport: DaemonTransport,
    /// The daemon's poll interval
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Commits made at random times during the daemon run, to measure latency
    #[arg(long, default_value_t = 10)]
    pub commits: usize,
    /// The polld binary [default: built with cargo next to this binary]
    #[arg(long)]
    pub polld: Option<PathBuf>,
    /// Build the fixture here and keep it [default: a temporary directory, removed]
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Seed for picking repositories and commit times [default: the clock]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run only the soak benchmark, for this many minutes: commits streamed into
    /// --soak-repos repositories through `polld run` (0: the benchmarks above instead)
    #[arg(long, default_value_t = 0)]
    pub soak_minutes: u64,
    /// Repositories of the soak run
    #[arg(long, default_value_t = 50)]
    pub soak_repos: usize,
    /// Commits streamed in over the soak run, evenly spaced, each to a random repository
    #[arg(long, default_value_t = 10_000)]
    pub soak_commits: usize,
    /// The soak run's poll interval
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub soak_interval: Duration,
    /// How often the soak run samples the daemon
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub soak_sample: Duration,
    /// Run only the push-notification benchmark: --hook-pushes pushes per transport
    /// (git:// and http:// announced by a signed GitHub webhook, svn:// by a post-commit
    /// hook running `polld notify`), each timed from the push to the change in a real
    /// Buildbot master; then hook verification in-process and through `polld run`'s
    /// endpoint, pinned to one core
    #[arg(long)]
    pub hooks: bool,
    /// Pushes per transport in --hooks, one at a time
    #[arg(long, default_value_t = 200)]
    pub hook_pushes: usize,
    /// Seconds of each load on the hook endpoint in --hooks
    #[arg(long, default_value_t = 10)]
    pub hook_seconds: u64,
    /// Run only the replicas benchmark (issue 17), against a throwaway PostgreSQL:
    /// store operations per change on SQLite and PostgreSQL and what a replica's
    /// no-change polls write; the takeover time after `kill -9` of one of two replicas;
    /// --replica-pollers git pollers every --interval over 3 replicas (CPU, memory,
    /// balance, database load)
    #[arg(long)]
    pub replicas: bool,
    /// Git pollers of the --replicas scale run (3 replicas, lease 15s); 0 skips it
    #[arg(long, default_value_t = 10_000)]
    pub replica_pollers: usize,
    /// Seconds the --replicas scale run is measured for, once its launch has settled;
    /// 0 skips it
    #[arg(long, default_value_t = 120)]
    pub replica_seconds: u64,
    /// `kill -9` rounds of the --replicas takeover (2 replicas, 20 pollers, lease 2s);
    /// 0 skips it
    #[arg(long, default_value_t = 10)]
    pub takeover_runs: usize,
    /// Changes committed and delivered per store in --replicas (after 20 untimed); 0
    /// skips the store operations
    #[arg(long, default_value_t = 1000)]
    pub store_ops: usize,
    /// Seconds of the --replicas no-change run (one replica, 100 pollers every 2s);
    /// 0 skips it
    #[arg(long, default_value_t = 20)]
    pub idle_seconds: u64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonTransport {
    Git,
    Https,
}

impl Options {
    /// polld's rounds over the repositories: at least one, ~3000 polls in all.
    pub fn polld_rounds(&self) -> usize {
        self.rounds
            .unwrap_or_else(|| 3000usize.div_ceil(self.repos.max(1)))
            .max(1)
    }
}

fn progress(what: &str) {
    eprintln!("polld-bench: {what}");
}

/// Runs the soak benchmark (`--soak-minutes`) and returns its results.
pub fn soak(options: &Options) -> Result<SoakReport> {
    let (_temp, root) = work_dir(options)?;
    let polld = locate_polld(options)?;
    soak::run(options, &polld, &root)
}

/// Runs the push-notification benchmark (`--hooks`) and returns its results.
pub fn hooks(options: &Options) -> Result<HooksReport> {
    let (_temp, root) = work_dir(options)?;
    let polld = locate_polld(options)?;
    hooks::run(options, &polld, &root)
}

/// Runs the replicas benchmark (`--replicas`) and returns its results.
pub fn replicas(options: &Options) -> Result<ReplicasReport> {
    let (_temp, root) = work_dir(options)?;
    let polld = locate_polld(options)?;
    replicas::run(options, &polld, &root)
}

/// `--work-dir`, which must be empty, else a temporary directory (removed on drop).
fn work_dir(options: &Options) -> Result<(Option<tempfile::TempDir>, PathBuf)> {
    match &options.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            if std::fs::read_dir(dir)?.next().is_some() {
                bail!("--work-dir {} is not empty", dir.display());
            }
            Ok((None, dir.canonicalize()?))
        }
        None => {
            let temp = tempfile::Builder::new().prefix("polld-bench-").tempdir()?;
            let root = temp.path().to_owned();
            Ok((Some(temp), root))
        }
    }
}

/// Runs the whole benchmark and returns its results (see [`Report::markdown`]).
pub fn run(options: &Options) -> Result<Report> {
    if options.repos == 0 {
        bail!("--repos must be at least 1");
    }
    let (_temp, root) = work_dir(options)?;
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let n = options.repos;
    let mut report = Report {
        options: options.clone(),
        cores: std::thread::available_parallelism().map_or(0, |c| c.get()),
        git_version: util::stdout_of(util::git().arg("--version"))?,
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        seed,
        ..Report::default()
    };

    let t = Instant::now();
    progress(&format!(
        "creating {n} bare repositories in {}",
        root.display()
    ));
    let repos = fixture::create_repos(&root, n)?;
    let gitd = fixture::GitDaemon::start(&repos.base, &root.join("git-daemon.log"))?;
    report.fixture_seconds = t.elapsed().as_secs_f64();

    // 1. polld, in-process.
    let inproc = inproc::InProcess::new()?;
    let state = root.join("state-inproc");
    let pollers = repos
        .names
        .iter()
        .map(|r| inproc.poller(r.trim_end_matches(".git"), &gitd.url(r), &state))
        .collect::<Result<Vec<_>>>()?;
    // Every repository is a copy of one template, so the first poll of one gives the
    // cursor of all; each measured poll still checks that it found nothing.
    let cursor = inproc.first_poll(&pollers[0])?;
    let warm = &pollers[..n.min(64)];
    inproc.measure_concurrent(warm, &cursor, 1, options.concurrency);
    report.polld_rounds = options.polld_rounds();
    progress(&format!(
        "polld: {} no-change polls, {} at once",
        n * report.polld_rounds,
        options.concurrency
    ));
    report.polld =
        inproc.measure_concurrent(&pollers, &cursor, report.polld_rounds, options.concurrency);
    report.polld_rss_kib = util::self_usage().max_rss_kib;

    // 2a. Buildbot's command sequence.
    let sample = util::sample_indices(n, options.buildbot_sample.max(1));
    let bb_repos: Vec<procs::BuildbotRepo> = sample
        .iter()
        .map(|&i| procs::BuildbotRepo {
            url: gitd.url(&repos.names[i]),
            workdir: root
                .join("buildbot")
                .join(repos.names[i].trim_end_matches(".git")),
            known: repos.commit.clone(),
            env: Vec::new(),
        })
        .collect();
    progress(&format!(
        "buildbot-sequence: {} repositories (first poll, then a measured no-change poll)",
        bb_repos.len()
    ));
    let first = procs::measure(&bb_repos, 1, options.concurrency, procs::buildbot_poll);
    if first.failed > 0 {
        bail!(
            "Buildbot's sequence failed on its first poll: {:?}",
            first.errors
        );
    }
    report.buildbot = procs::measure(&bb_repos, 1, options.concurrency, procs::buildbot_poll);
    report.buildbot_repos = bb_repos.len();

    // 2b. git ls-remote.
    let sample = util::sample_indices(n, options.ls_remote_sample.max(1));
    let urls: Vec<String> = sample.iter().map(|&i| gitd.url(&repos.names[i])).collect();
    progress(&format!("git ls-remote: {} repositories", urls.len()));
    let ls = |url: &String| procs::ls_remote_poll(url, &[], &repos.commit);
    procs::measure(&urls[..urls.len().min(32)], 1, options.concurrency, ls);
    report.ls_remote = procs::measure(&urls, 1, options.concurrency, ls);
    report.ls_remote_repos = urls.len();

    // 3. Many refs, on every transport.
    if options.big_refs || options.transports {
        let (small, big) = many_refs_repos(options, &repos)?;
        if options.big_refs {
            report.refs = Some(measure_refs(
                options.big_refs_count,
                &small,
                &big,
                &gitd,
                &inproc,
                &state,
            )?);
        }
        if options.transports {
            let fleet: Vec<PathBuf> = (0..n.min(64)).map(|i| repos.path(i)).collect();
            let served = transports::RefsRepos {
                small: &small,
                big: &big,
                commit: &repos.commit,
                fleet: &fleet,
                concurrency: options.concurrency,
                concurrent_polls: if options.transport_seconds == 0 {
                    0
                } else {
                    3000
                },
            };
            report.transports = transports::measure(
                &root,
                &served,
                &gitd,
                &inproc,
                Duration::from_secs(options.transport_seconds),
            )?;
        }
    }

    // 4. `polld once`, and 5. the daemon.
    let mirror = state
        .join("mirrors")
        .join(repos.names[0].trim_end_matches(".git"));
    if options.once_pollers > 0 {
        report.once = Some(once::run(&once::OncePlan {
            polld: &locate_polld(options)?,
            root: &root,
            repos: &repos,
            gitd: &gitd,
            cursor: &cursor,
            mirror: &mirror,
            pollers: options.once_pollers,
            concurrency: options.concurrency,
        })?);
    }
    if options.daemon_seconds > 0 {
        let polld = locate_polld(options)?;
        // Apache, when the daemon polls over https; stopped when dropped.
        let mut httpd = None;
        let remote = match options.daemon_transport {
            DaemonTransport::Git => daemon::DaemonRemote {
                label: "git://",
                url: Box::new(|name| gitd.url(name)),
                poller_keys: String::new(),
                log: gitd.log.clone(),
                marker: fixture::GIT_DAEMON_REQUEST,
            },
            DaemonTransport::Https => {
                let dir = root.join("httpd");
                std::fs::create_dir_all(&dir)?;
                progress("starting Apache (git http-backend over https)");
                let server = httpd.insert(polld_test_support::httpd::GitHttpd::start(&dir));
                // The base's URL exposes every repository under it to Apache's workers.
                let base = server.url(
                    polld_test_support::httpd::Port::Https,
                    polld_test_support::httpd::Route::Anonymous,
                    &repos.base,
                );
                daemon::DaemonRemote {
                    label: "https://",
                    url: Box::new(move |name| format!("{base}/{name}")),
                    poller_keys: format!("ca_file = \"{}\"\n", server.ca_file.display()),
                    log: server.access_log(),
                    // Every listing is one POST (discovery is cached).
                    marker: "\tPOST\t",
                }
            }
        };
        report.daemon = Some(daemon::run(&daemon::DaemonPlan {
            polld: &polld,
            root: &root,
            repos: &repos,
            remote: &remote,
            cursor: &cursor,
            mirror: &mirror,
            seconds: options.daemon_seconds,
            interval: options.interval,
            concurrency: options.concurrency,
            commits: options.commits,
            seed,
        })?);
        drop(httpd);
    }
    drop(pollers);
    drop(gitd);
    Ok(report)
}

/// A copy of the fixture's template with 10 refs and one with `--big-refs-count`.
fn many_refs_repos(options: &Options, repos: &fixture::Repos) -> Result<(PathBuf, PathBuf)> {
    progress(&format!(
        "creating a repository with {} refs and one with 10",
        options.big_refs_count
    ));
    let big_name = format!("refs{}.git", options.big_refs_count);
    Ok((
        fixture::create_many_refs_repo(repos, "refs10.git", 10)?,
        fixture::create_many_refs_repo(repos, &big_name, options.big_refs_count)?,
    ))
}

fn measure_refs(
    big_refs: usize,
    small: &Path,
    big: &Path,
    gitd: &fixture::GitDaemon,
    inproc: &inproc::InProcess,
    state: &Path,
) -> Result<RefsResult> {
    let name = |path: &Path| path.file_name().map(|n| n.to_string_lossy().into_owned());
    let small = inproc.poller("refs10", &gitd.url(&name(small).unwrap_or_default()), state)?;
    let big = inproc.poller("refsbig", &gitd.url(&name(big).unwrap_or_default()), state)?;
    let small_cursor = inproc.first_poll(&small)?;
    let big_cursor = inproc.first_poll(&big)?;
    progress("polling both, one poll at a time");
    inproc.measure_sequential(&small, &small_cursor, 10, 10, Duration::ZERO);
    inproc.measure_sequential(&big, &big_cursor, 2, 2, Duration::ZERO);
    Ok(RefsResult {
        small_refs: 10,
        big_refs,
        small: inproc.measure_sequential(&small, &small_cursor, 50, 2000, Duration::from_secs(3)),
        big: inproc.measure_sequential(&big, &big_cursor, 5, 500, Duration::from_secs(8)),
    })
}

/// `--polld`, else `polld` built by cargo into the target directory this binary runs
/// from (same profile), else an existing `polld` there.
fn locate_polld(options: &Options) -> Result<PathBuf> {
    if let Some(path) = &options.polld {
        // Absolute: `polld once` runs in its config's directory.
        return path
            .canonicalize()
            .with_context(|| format!("--polld {}", path.display()));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("no directory for this binary")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("no profile directory")?;
    }
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let target = dir.parent().context("no target directory")?;
    let binary = dir.join("polld");
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    if manifest.exists() {
        progress(&format!("building polld ({profile}) with cargo"));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "polld",
                "--bin",
                "polld",
                "--profile",
            ])
            .arg(if profile == "debug" { "dev" } else { &profile })
            .arg("--manifest-path")
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", target)
            .status();
        match status {
            Ok(s) if s.success() => {}
            other => progress(&format!("cargo build -p polld failed ({other:?})")),
        }
    }
    if !binary.exists() {
        bail!(
            "no polld binary at {}: build it (`cargo build --release -p polld`) or pass --polld",
            binary.display()
        );
    }
    Ok(binary)
}
