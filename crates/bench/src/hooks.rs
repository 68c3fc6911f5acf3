//! `--hooks` (issue 15): what push notifications are worth, measured end to end.
//!
//! A poll interval trades the CI's reaction time against load on the servers; a push
//! notification is meant to remove that trade. So the first measure is the one a
//! developer sees: from the moment `git push` (or `svn commit`) returns until the change
//! is in the Buildbot master's REST API, with everything real in between — `git daemon`,
//! Apache's `git http-backend` and `svnserve` serving the repositories, a signed GitHub
//! push delivery to `POST /hooks/github` for git, an svn `post-commit` hook running
//! `polld notify` for svn, `polld run` (release binary) polling and delivering to a
//! Buildbot 4.3 master through its change hook.
//!
//! The second is what the endpoint costs, since anybody who can reach it can make polld
//! hash a body: HMAC verification of a 25 KiB push in-process, then `polld run` pinned to
//! one core answering signed deliveries for an unwatched repository (`404`, verified and
//! parsed) and deliveries with a wrong signature (`401`) from clients on the other core.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use polld_hooks::{Delivery, Forge, Secret};
use polld_test_support::buildbot::{BuildbotMaster, get};
use polld_test_support::forge::{Signed, github, payload, payload_for};
use polld_test_support::http::request;
use polld_test_support::httpd::{GitHttpd, Port, Route};
use polld_test_support::svn::{Svnserve, svn_poller, svn_tool};
use polld_test_support::{git_poller, toml_str};
use serde_json::Value;

use crate::daemon::{Polld, http_get, proc_cpu};
use crate::fixture::GitDaemon;
use crate::util::{free_port, git, ms, pin_to_cpu, run_ok, self_usage, stdout_of};
use crate::{Options, progress};

/// The webhook secret and control token the daemons get (through these variables).
const SECRET: &str = "polld-bench-hook-secret";
const SECRET_ENV: &str = "POLLD_BENCH_GITHUB_SECRET";
const TOKEN: &str = "polld-bench-token";
const TOKEN_ENV: &str = "POLLD_BENCH_TOKEN";
/// The published example's clone URL, rewritten to the served repository's.
const PUBLISHED_CLONE_URL: &str = "https://github.com/Codertocat/Hello-World.git";
/// The size of the delivery the verification rows sign and verify.
const PAYLOAD_BYTES: usize = 25 * 1024;
/// The pause between two reads of the master's newest change.
const API_PAUSE: Duration = Duration::from_millis(5);
/// How long a push may take to reach the master before it counts as missing.
const ARRIVAL_DEADLINE: Duration = Duration::from_secs(15);
/// How long each in-process verification row runs.
const VERIFY_SECONDS: f64 = 2.0;
/// Keep-alive connections of the endpoint load, and the cores of daemon and load.
const CONNECTIONS: usize = 4;
const DAEMON_CPU: usize = 0;
const LOAD_CPU: usize = 1;

/// Everything `--hooks` measured.
#[derive(Debug, Clone, Default)]
pub struct HooksReport {
    pub profile: &'static str,
    pub cores: usize,
    /// `/proc/loadavg` before and after: the machine may be shared.
    pub load_before: String,
    pub load_after: String,
    pub pushes: Vec<PushRow>,
    /// How long one read of the master's newest change took (the detection resolution
    /// is this plus [`API_PAUSE`]).
    pub api_get_ms: Vec<f64>,
    /// Changes in the master that no push of the benchmark made.
    pub other_changes: usize,
    pub verify: Vec<VerifyRow>,
    pub endpoint: Vec<EndpointRow>,
    /// Whether the endpoint's daemon and its load ran on separate cores.
    pub pinned: bool,
}

/// One transport's pushes.
#[derive(Debug, Clone, Default)]
pub struct PushRow {
    pub transport: &'static str,
    pub notified_by: &'static str,
    pub pushes: usize,
    /// From the push command's return to the change in the master's API, in ms, per
    /// push that arrived.
    pub latency_ms: Vec<f64>,
    /// The push command itself (for svn including the `post-commit` hook, which runs
    /// before `svn commit` returns), in ms.
    pub command_ms: Vec<f64>,
    /// The webhook POST's round trip (git), in ms.
    pub webhook_ms: Vec<f64>,
    /// polld's mean poll of this poller while the pushes ran (from `/metrics`), in ms.
    pub mean_poll_ms: f64,
    pub polls: f64,
    /// The pushed revisions, in order.
    pub revisions: Vec<String>,
    /// Pushes the master never showed within [`ARRIVAL_DEADLINE`], and pushes it
    /// stored more than once (from its whole change list at the end).
    pub missing: Vec<String>,
    pub duplicates: Vec<String>,
    /// Webhook answers other than `202` naming the poller; failed `polld notify` runs.
    pub notify_errors: Vec<String>,
}

/// One in-process verification loop.
#[derive(Debug, Clone, Default)]
pub struct VerifyRow {
    pub what: &'static str,
    pub calls: u64,
    pub seconds: f64,
}

/// One load on the endpoint.
#[derive(Debug, Clone, Default)]
pub struct EndpointRow {
    pub what: &'static str,
    pub expected: u16,
    /// Answers with the expected status.
    pub answered: u64,
    /// Anything else: other statuses, connection errors (the first few).
    pub unexpected: u64,
    pub unexpected_examples: Vec<String>,
    pub seconds: f64,
    /// The daemon's CPU seconds (utime + stime) over the load.
    pub cpu_seconds: f64,
    /// The load generator's (this process's) CPU seconds over the load.
    pub client_cpu_seconds: f64,
    /// How busy the daemon's core was over the load, whoever ran on it (`/proc/stat`):
    /// on a shared machine, other work there leaves polld less than the whole core.
    pub daemon_core_busy_pct: f64,
}

impl EndpointRow {
    pub fn per_second(&self) -> f64 {
        self.answered as f64 / self.seconds.max(1e-9)
    }
    pub fn cpu_pct(&self) -> f64 {
        100.0 * self.cpu_seconds / self.seconds.max(1e-9)
    }
    pub fn client_cpu_pct(&self) -> f64 {
        100.0 * self.client_cpu_seconds / self.seconds.max(1e-9)
    }
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

impl HooksReport {
    /// Everything that makes the run incorrect (never a matter of speed).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for row in &self.pushes {
            let mut report = |list: &[String], what: String| {
                if !list.is_empty() {
                    problems.push(format!(
                        "{}: {} {what}: {list:?}",
                        row.transport,
                        list.len()
                    ));
                }
            };
            report(
                &row.missing,
                format!("of {} pushes never reached the master", row.pushes),
            );
            report(
                &row.duplicates,
                "pushes reached the master more than once".to_owned(),
            );
            report(&row.notify_errors, "notifications failed".to_owned());
        }
        for row in &self.endpoint {
            if row.unexpected > 0 || row.answered == 0 {
                problems.push(format!(
                    "endpoint, {}: {} answered {}, {} otherwise: {:?}",
                    row.what, row.answered, row.expected, row.unexpected, row.unexpected_examples
                ));
            }
        }
        problems
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let pushes = self.pushes.first().map_or(0, |row| row.pushes);
        let _ = writeln!(
            s,
            "## Push notifications: push → change in the Buildbot master ({pushes} pushes per \
             transport, {} build, {} cores)\n",
            self.profile, self.cores
        );
        let _ = writeln!(
            s,
            "| transport | polld hears of it by | arrived once | p50 ms | p99 ms | max ms | p99 < 1 s | \
             polls: count, mean ms | notification step, p50 ms |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---|---:|---:|");
        for row in &self.pushes {
            let once = row.latency_ms.len().saturating_sub(row.duplicates.len());
            let step = if row.webhook_ms.is_empty() {
                format!(
                    "{:.1} (`svn commit` with its hook)",
                    quantile(&row.command_ms, 0.5)
                )
            } else {
                format!("{:.1} (webhook POST → 202)", quantile(&row.webhook_ms, 0.5))
            };
            let _ = writeln!(
                s,
                "| {} | {} | {once} / {} | {:.1} | {:.1} | {:.1} | {} | {:.0}, {:.1} | {step} |",
                row.transport,
                row.notified_by,
                row.pushes,
                quantile(&row.latency_ms, 0.5),
                quantile(&row.latency_ms, 0.99),
                quantile(&row.latency_ms, 1.0),
                if quantile(&row.latency_ms, 0.99) < 1000.0 && row.missing.is_empty() {
                    "met"
                } else {
                    "**not met**"
                },
                row.polls,
                row.mean_poll_ms,
            );
        }
        let _ = writeln!(
            s,
            "\nLatency runs from the moment the push command returned (for git, before the \
             forge's webhook POST, so it includes the webhook) until a read of the master's \
             newest change (`GET /api/v2/changes?order=-changeid&limit=1`) shows the \
             revision. Pushes go one at a time; the master is read again {} ms after each \
             read returns, and a read took p50 {:.1} / p99 {:.1} ms, so a change is seen \
             between one read and two reads plus the pause after the master stored it: \
             {:.0}–{:.0} ms at the p50 read time (the detection resolution, included in \
             every figure). `svn commit` \
             returns only after its `post-commit` hook (`polld notify`) has run, so for svn \
             the notification happens before the clock starts: its command time is shown. \
             Each push's change was then counted in the master's whole change list: \
             arrived once = stored exactly once. Changes no push made: {}.",
            API_PAUSE.as_millis(),
            quantile(&self.api_get_ms, 0.5),
            quantile(&self.api_get_ms, 0.99),
            quantile(&self.api_get_ms, 0.5),
            2.0 * quantile(&self.api_get_ms, 0.5) + ms(API_PAUSE),
            self.other_changes,
        );

        let _ = writeln!(
            s,
            "\n### Hook verification, in-process (`polld_hooks::verify`, one thread)\n"
        );
        let _ = writeln!(s, "| what | body | per second | µs per call |");
        let _ = writeln!(s, "|---|---:|---:|---:|");
        for row in &self.verify {
            let _ = writeln!(
                s,
                "| {} | {PAYLOAD_BYTES} B | {:.0} | {:.1} |",
                row.what,
                row.calls as f64 / row.seconds.max(1e-9),
                1e6 * row.seconds / row.calls.max(1) as f64,
            );
        }

        let _ = writeln!(
            s,
            "\n### Through the endpoint: `polld run` {} answering {CONNECTIONS} keep-alive \
             connections\n",
            if self.pinned {
                "pinned to core 0, the clients on core 1,"
            } else {
                "(**not pinned**: fewer than 2 cores)"
            }
        );
        let _ = writeln!(
            s,
            "| request ({PAYLOAD_BYTES} B body) | answer | answered | seconds | requests/s | polld CPU, of its core's busy time | polld CPU µs per request | clients' CPU |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for row in &self.endpoint {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.1} | {:.0} | {:.0} % of {:.0} % busy | {:.0} | {:.0} % |",
                row.what,
                row.expected,
                row.answered,
                row.seconds,
                row.per_second(),
                row.cpu_pct(),
                row.daemon_core_busy_pct,
                1e6 * row.cpu_seconds / row.answered.max(1) as f64,
                row.client_cpu_pct(),
            );
        }
        let _ = writeln!(
            s,
            "\npolld's CPU is its utime + stime from `/proc/<pid>/stat` over the load; the \
             clients' is this process's (`getrusage`), whose threads are the clients. The \
             kernel's loopback work is charged to whichever side runs it, mostly the \
             sender. Load average before / after: {} / {}.",
            self.load_before, self.load_after
        );
        s
    }
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

pub fn run(options: &Options, polld: &Path, root: &Path) -> Result<HooksReport> {
    let mut report = HooksReport {
        profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cores: std::thread::available_parallelism().map_or(0, |c| c.get()),
        load_before: load_average(),
        ..HooksReport::default()
    };
    let dir = root.join("hooks");
    std::fs::create_dir_all(&dir)?;

    progress("hooks: verifying a 25 KiB delivery in-process");
    report.verify = verify_in_process()?;

    let git_base = dir.join("git");
    let git_repo = Remote::create(&git_base.join("app.git"), &dir.join("git-work"))?;
    let gitd = GitDaemon::start(&git_base, &dir.join("git-daemon.log"))?;
    let git_url = gitd.url("app.git");
    pushes_and_endpoint(options, polld, &dir, &git_repo, &git_url, &mut report)?;
    drop(gitd);
    report.load_after = load_average();
    Ok(report)
}

/// Part 1 (pushes) and part 2b (the endpoint), which share the git:// repository.
fn pushes_and_endpoint(
    options: &Options,
    polld: &Path,
    dir: &Path,
    git_repo: &Remote,
    git_url: &str,
    report: &mut HooksReport,
) -> Result<()> {
    progress("hooks: starting a Buildbot master, Apache (git http-backend) and svnserve");
    let master = BuildbotMaster::start();
    let httpd_dir = dir.join("httpd");
    std::fs::create_dir_all(&httpd_dir)?;
    let httpd = GitHttpd::start(&httpd_dir);
    let http_repo = Remote::create(&dir.join("http").join("app.git"), &dir.join("http-work"))?;
    let http_url = httpd.url(Port::Http, Route::Anonymous, &http_repo.bare);
    let svn = SvnServed::create(&dir.join("svn"), &dir.join("notify.log"))?;

    let port = free_port()?;
    let config = format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\ntoken_env = \"{TOKEN_ENV}\"\n\n\
         [defaults]\ninterval = \"1h\"\n\n[hooks]\ngithub_secret_env = \"{SECRET_ENV}\"\n\n{}{}{}{}",
        master.sink_config(),
        git_poller("git", git_url, "branches = [\"main\"]"),
        git_poller("http", &http_url, "branches = [\"main\"]"),
        svn_poller("svn", &svn.url, ""),
    );
    let daemon_dir = dir.join("daemon");
    std::fs::create_dir_all(&daemon_dir)?;
    let config_path = daemon_dir.join("pollers.toml");
    std::fs::write(&config_path, config)?;
    svn.install_hook(polld, &config_path)?;
    let env = [(SECRET_ENV, SECRET), (TOKEN_ENV, TOKEN)];
    let log = daemon_dir.join("polld.log");
    let daemon = Polld::run_with(polld, &config_path, &log, &env, None)?;
    wait_first_polls(port, 3, &log)?;

    let transports = [
        (
            "git://",
            "GitHub webhook",
            "git",
            Pusher::Git(git_repo, webhook(git_url)),
        ),
        (
            "http://",
            "GitHub webhook",
            "http",
            Pusher::Git(&http_repo, webhook(&http_url)),
        ),
        (
            "svn://",
            "post-commit: `polld notify`",
            "svn",
            Pusher::Svn(&svn),
        ),
    ];
    for (transport, notified_by, poller, pusher) in transports {
        progress(&format!(
            "hooks: {} pushes over {transport}, one at a time",
            options.hook_pushes
        ));
        let before = metrics(port)?;
        let mut row = PushRow {
            transport,
            notified_by,
            pushes: options.hook_pushes,
            ..PushRow::default()
        };
        for k in 0..options.hook_pushes {
            let message = format!("polld-bench push {k} over {transport}");
            let (revision, returned) = pusher.push(port, poller, &message, &mut row)?;
            match wait_for_change(&master, &revision, &mut report.api_get_ms)? {
                Some(seen) => row.latency_ms.push(ms(seen - returned)),
                None => row.missing.push(revision.clone()),
            }
            row.revisions.push(revision);
        }
        let after = metrics(port)?;
        let label = [("poller", poller)];
        let polls = metric(&after, "polld_poll_duration_seconds_count", &label)
            - metric(&before, "polld_poll_duration_seconds_count", &label);
        let seconds = metric(&after, "polld_poll_duration_seconds_sum", &label)
            - metric(&before, "polld_poll_duration_seconds_sum", &label);
        row.polls = polls;
        row.mean_poll_ms = 1000.0 * seconds / polls.max(1.0);
        if let Pusher::Svn(svn) = pusher {
            row.notify_errors
                .extend(svn.failed_notifications(row.pushes));
        }
        report.pushes.push(row);
    }
    // A change stored twice would come after the first: give it a moment.
    std::thread::sleep(Duration::from_secs(2));
    report.other_changes = count_changes(&master, &mut report.pushes);
    drop(daemon);
    drop(master);
    drop(httpd);

    progress("hooks: loading the endpoint (polld pinned to one core)");
    report.endpoint = endpoint(options, polld, dir, git_url, &mut report.pinned)?;
    Ok(())
}

/// A bare repository and a work tree that pushes to it (by path: the served side is
/// what polld reads, not how the push travels).
struct Remote {
    bare: PathBuf,
    work: PathBuf,
}

impl Remote {
    fn create(bare: &Path, work: &Path) -> Result<Remote> {
        let repo = Remote {
            bare: bare.to_owned(),
            work: work.to_owned(),
        };
        run_ok(git().args(["init", "-q", "--bare", "-b", "main"]).arg(bare))?;
        run_ok(git().args(["init", "-q", "-b", "main"]).arg(work))?;
        run_ok(repo.git().args(["remote", "add", "origin"]).arg(bare))?;
        std::fs::write(work.join("pushed.txt"), "initial\n")?;
        run_ok(repo.git().args(["add", "pushed.txt"]))?;
        run_ok(repo.git().args(["commit", "-q", "-m", "initial"]))?;
        run_ok(
            repo.git()
                .args(["push", "-q", "origin", "HEAD:refs/heads/main"]),
        )?;
        Ok(repo)
    }

    fn git(&self) -> Command {
        let mut cmd = git();
        cmd.arg("-C").arg(&self.work);
        cmd
    }
}

/// An svn repository served by `svnserve` (anonymous write), and a working copy of it.
struct SvnServed {
    _server: Svnserve,
    repo: PathBuf,
    wc: PathBuf,
    config_dir: PathBuf,
    url: String,
    notify_log: PathBuf,
}

impl SvnServed {
    /// `<dir>/repo` with one revision, served; its hook will log to `notify_log`.
    fn create(dir: &Path, notify_log: &Path) -> Result<SvnServed> {
        std::fs::create_dir_all(dir)?;
        let repo = dir.join("repo");
        let config_dir = dir.join("client-config");
        let wc = dir.join("wc");
        run_ok(svn_tool("svnadmin", &config_dir).arg("create").arg(&repo))?;
        std::fs::write(
            repo.join("conf").join("svnserve.conf"),
            "[general]\nanon-access = write\nauth-access = write\n",
        )?;
        let server = Svnserve::start(dir);
        let url = server.url("repo");
        run_ok(
            svn_tool("svn", &config_dir)
                .args(["checkout", "-q", &url])
                .arg(&wc),
        )?;
        std::fs::write(wc.join("pushed.txt"), "initial\n")?;
        run_ok(
            svn_tool("svn", &config_dir)
                .current_dir(&wc)
                .args(["add", "-q", "pushed.txt"]),
        )?;
        run_ok(
            svn_tool("svn", &config_dir)
                .current_dir(&wc)
                .args(["commit", "-q", "-m", "initial"]),
        )?;
        Ok(SvnServed {
            _server: server,
            repo,
            wc,
            config_dir,
            url,
            notify_log: notify_log.to_owned(),
        })
    }

    /// A real `hooks/post-commit`: svnserve runs it (with an empty environment) after
    /// each commit, before `svn commit` returns, and it tells the daemon.
    fn install_hook(&self, polld: &Path, config: &Path) -> Result<()> {
        let quote = |text: &str| -> Result<String> {
            if text.contains('\'') {
                bail!("cannot quote {text:?} for the post-commit hook");
            }
            Ok(format!("'{text}'"))
        };
        let script = format!(
            "#!/bin/sh\n# Installed by polld-bench --hooks: the commit itself tells polld.\n\
             {TOKEN_ENV}={} exec {} --config {} notify {} >>{} 2>&1\n",
            quote(TOKEN)?,
            quote(&polld.display().to_string())?,
            quote(&config.display().to_string())?,
            quote(&self.url)?,
            quote(&self.notify_log.display().to_string())?,
        );
        let hook = self.repo.join("hooks").join("post-commit");
        std::fs::write(&hook, script)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// Commits a change to the working copy; the new revision.
    fn commit(&self, k: usize, message: &str) -> Result<String> {
        std::fs::write(self.wc.join("pushed.txt"), format!("push {k}\n"))?;
        let out = stdout_of(
            svn_tool("svn", &self.config_dir)
                .current_dir(&self.wc)
                .args(["commit", "-m", message]),
        )?;
        out.lines()
            .find_map(|line| line.trim().strip_prefix("Committed revision "))
            .map(|rev| rev.trim_end_matches('.').to_owned())
            .with_context(|| format!("svn commit printed no revision: {out}"))
    }

    /// How many of the last `pushes` hook runs did not say they were polling.
    fn failed_notifications(&self, pushes: usize) -> Vec<String> {
        let log = std::fs::read_to_string(&self.notify_log).unwrap_or_default();
        let polling = log
            .lines()
            .filter(|line| line.starts_with("polld notify: polling"))
            .count();
        let other: Vec<String> = log
            .lines()
            .filter(|line| !line.starts_with("polld notify: polling"))
            .take(3)
            .map(str::to_owned)
            .collect();
        if polling >= pushes && other.is_empty() {
            Vec::new()
        } else {
            vec![format!(
                "{polling} of {pushes} hook runs polled; other output: {other:?}"
            )]
        }
    }
}

/// How each transport pushes.
enum Pusher<'a> {
    /// A `git push` by path, then the forge's signed delivery.
    Git(&'a Remote, Signed),
    /// An `svn commit` over svn://, whose post-commit hook notifies.
    Svn(&'a SvnServed),
}

impl Pusher<'_> {
    /// Makes one push and its notification; records their timings in `row`. Returns
    /// the pushed revision and when the push command returned (the clock's start).
    fn push(
        &self,
        port: u16,
        poller: &str,
        message: &str,
        row: &mut PushRow,
    ) -> Result<(String, Instant)> {
        let k = row.command_ms.len();
        match self {
            Pusher::Git(repo, delivery) => {
                std::fs::write(repo.work.join("pushed.txt"), format!("push {k}\n"))?;
                run_ok(repo.git().args(["commit", "-q", "-a", "-m", message]))?;
                let revision = stdout_of(repo.git().args(["rev-parse", "HEAD"]))?;
                let started = Instant::now();
                run_ok(
                    repo.git()
                        .args(["push", "-q", "origin", "HEAD:refs/heads/main"]),
                )?;
                let returned = Instant::now();
                row.command_ms.push(ms(returned - started));
                let answer = post(port, delivery);
                row.webhook_ms.push(ms(returned.elapsed()));
                match answer {
                    Ok((202, body)) if body.contains(&format!("\"{poller}\"")) => {}
                    Ok((status, body)) => row
                        .notify_errors
                        .push(format!("push {k}: {status} {}", body.trim())),
                    Err(error) => row.notify_errors.push(format!("push {k}: {error:#}")),
                }
                Ok((revision, returned))
            }
            Pusher::Svn(svn) => {
                let started = Instant::now();
                let revision = svn.commit(k, message)?;
                let returned = Instant::now();
                row.command_ms.push(ms(returned - started));
                Ok((revision, returned))
            }
        }
    }
}

/// GitHub's push delivery naming `url` as the repository's clone URL, signed.
fn webhook(url: &str) -> Signed {
    github(
        "push",
        payload_for("github-push.json", &[(PUBLISHED_CLONE_URL, url)]),
        SECRET,
    )
}

/// POSTs `delivery` to `/hooks/github`: (status, body).
fn post(port: u16, delivery: &Signed) -> Result<(u16, String)> {
    let headers: Vec<(&str, &str)> = delivery
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    let answer = request(port, "POST", "/hooks/github", &headers, &delivery.body)
        .map_err(anyhow::Error::msg)?;
    Ok((answer.status, answer.body))
}

/// polld's `/metrics` text.
fn metrics(port: u16) -> Result<String> {
    let (status, body) = http_get(port, "/metrics")?;
    if status != 200 {
        bail!("GET /metrics answered {status}");
    }
    Ok(body)
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn metric(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (label_text, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once("} ")?,
                None => ("", rest.strip_prefix(' ')?),
            };
            labels
                .iter()
                .all(|(key, value)| label_text.contains(&format!("{key}=\"{value}\"")))
                .then(|| value.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Waits until polld's pollers have made `pollers` successful polls (the first polls,
/// which report nothing).
fn wait_first_polls(port: u16, pollers: usize, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = metrics(port)
            && metric(&text, "polld_polls_total", &[("result", "ok")]) >= pollers as f64
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "polld's first polls did not finish within 60 s; its log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads the master's newest change every [`API_PAUSE`] until it is `revision`: when
/// the read that showed it returned, or `None` after [`ARRIVAL_DEADLINE`]. Records how
/// long each read took.
fn wait_for_change(
    master: &BuildbotMaster,
    revision: &str,
    reads_ms: &mut Vec<f64>,
) -> Result<Option<Instant>> {
    let url = master.api("changes?order=-changeid&limit=1&field=changeid&field=revision");
    let deadline = Instant::now() + ARRIVAL_DEADLINE;
    loop {
        let asked = Instant::now();
        let body = get(&url).map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
        let seen = Instant::now();
        reads_ms.push(ms(seen - asked));
        let newest: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET {url} answered no JSON: {body}"))?;
        if newest["changes"][0]["revision"].as_str() == Some(revision) {
            return Ok(Some(seen));
        }
        if seen > deadline {
            return Ok(None);
        }
        std::thread::sleep(API_PAUSE);
    }
}

/// Counts each pushed revision in the master's whole change list: a revision stored
/// more than once is a duplicate, one never stored is missing. Returns how many stored
/// changes no push made.
fn count_changes(master: &BuildbotMaster, rows: &mut [PushRow]) -> usize {
    let mut stored: HashMap<String, usize> = HashMap::new();
    for change in master.changes() {
        let revision = change["revision"].as_str().unwrap_or_default().to_owned();
        *stored.entry(revision).or_default() += 1;
    }
    let mut ours = 0;
    for row in rows {
        for revision in &row.revisions {
            let count = stored.get(revision).copied().unwrap_or(0);
            ours += count;
            if count == 0 && !row.missing.contains(revision) {
                row.missing.push(revision.clone());
            }
            if count > 1 {
                row.duplicates.push(format!("{revision} ×{count}"));
            }
        }
    }
    stored.values().sum::<usize>() - ours
}

/// The published GitHub push example, padded to [`PAYLOAD_BYTES`] with a long first
/// commit message (a big push is mostly commit messages and file lists).
fn padded_payload() -> Result<Vec<u8>> {
    let text = String::from_utf8(payload("github-push.json"))?;
    let message = "\"message\": \"Initial commit";
    let at = text
        .find(message)
        .context("no commit message in github-push.json")?
        + message.len();
    let missing = PAYLOAD_BYTES
        .checked_sub(text.len())
        .context("github-push.json is over 25 KiB already")?;
    let filler: String = "\\nA long commit message, as a squashed merge carries."
        .chars()
        .cycle()
        .take(missing)
        .collect();
    // Never end inside an escape: a lone backslash before the closing quote.
    let filler = match filler.strip_suffix('\\') {
        Some(cut) => format!("{cut}."),
        None => filler,
    };
    let padded = format!("{}{filler}{}", &text[..at], &text[at..]);
    serde_json::from_str::<Value>(&padded).context("the padded payload is not JSON")?;
    Ok(padded.into_bytes())
}

/// Part 2a: `verify` (HMAC-SHA256 of the body, constant-time compare), then
/// `delivery()` (parsing the JSON for its URLs), on one thread, as the endpoint runs
/// them for each request; and a wrong signature, which stops after the HMAC.
fn verify_in_process() -> Result<Vec<VerifyRow>> {
    let body = padded_payload()?;
    let good = github("push", body.clone(), SECRET);
    let wrong = github("push", body, "not-the-secret");
    let secret = Secret::new(SECRET)?;
    let signed = |delivery: &Signed| {
        polld_hooks::verify(
            Forge::GitHub,
            &secret,
            |name| delivery.lookup(name),
            &delivery.body,
        )
        .map(|verified| verified.event().len())
    };
    let parsed = |delivery: &Signed| {
        polld_hooks::verify(
            Forge::GitHub,
            &secret,
            |name| delivery.lookup(name),
            &delivery.body,
        )
        .and_then(|verified| verified.delivery())
    };
    let verify_only = time_calls("`verify`", || signed(&good).is_ok())?;
    let with_delivery = time_calls(
        "`verify` + `delivery()`",
        || matches!(parsed(&good), Ok(Delivery::Push { urls }) if !urls.is_empty()),
    )?;
    let refused = time_calls("`verify`, wrong signature (→ 401)", || {
        signed(&wrong).is_err_and(|error| error.status() == 401)
    })?;
    Ok(vec![verify_only, with_delivery, refused])
}

/// Calls `call` for [`VERIFY_SECONDS`], each call checked.
fn time_calls(what: &'static str, mut call: impl FnMut() -> bool) -> Result<VerifyRow> {
    for _ in 0..100 {
        if !std::hint::black_box(call()) {
            bail!("{what}: not the expected answer");
        }
    }
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed().as_secs_f64() < VERIFY_SECONDS {
        for _ in 0..64 {
            if !std::hint::black_box(call()) {
                bail!("{what}: not the expected answer");
            }
        }
        calls += 64;
    }
    Ok(VerifyRow {
        what,
        calls,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Part 2b: `polld run` on core [`DAEMON_CPU`] (one git poller, so the config is a real
/// one; it polls at launch, then not for an hour), loaded from core [`LOAD_CPU`].
fn endpoint(
    options: &Options,
    polld: &Path,
    dir: &Path,
    git_url: &str,
    pinned: &mut bool,
) -> Result<Vec<EndpointRow>> {
    let endpoint_dir = dir.join("endpoint");
    std::fs::create_dir_all(&endpoint_dir)?;
    let port = free_port()?;
    let config = format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\n\n\
         [defaults]\ninterval = \"1h\"\n\n[hooks]\ngithub_secret_env = \"{SECRET_ENV}\"\n\n\
         [sink]\ntype = \"jsonl\"\npath = {}\n\n{}",
        toml_str("changes.jsonl"),
        git_poller("app", git_url, "branches = [\"main\"]"),
    );
    let config_path = endpoint_dir.join("pollers.toml");
    std::fs::write(&config_path, config)?;
    let log = endpoint_dir.join("polld.log");
    *pinned = std::thread::available_parallelism().is_ok_and(|n| n.get() > LOAD_CPU);
    let daemon = Polld::run_with(
        polld,
        &config_path,
        &log,
        &[(SECRET_ENV, SECRET)],
        pinned.then_some(DAEMON_CPU),
    )?;
    let pid = daemon.0.id();
    wait_first_polls(port, 1, &log)?;

    let body = padded_payload()?;
    let loads = [
        (
            "signed push naming no watched repository",
            github("push", body.clone(), SECRET),
            404,
        ),
        (
            "wrong signature",
            github("push", body, "not-the-secret"),
            401,
        ),
    ];
    let seconds = Duration::from_secs(options.hook_seconds.max(1));
    let mut rows = Vec::new();
    for (what, delivery, expected) in loads {
        let request = http_request(port, &delivery);
        let cpu_before = proc_cpu(pid).context("cannot read polld's CPU time")?;
        let client_before = self_usage().cpu;
        let core_before = core_ticks(DAEMON_CPU);
        let started = Instant::now();
        let deadline = started + seconds;
        let tallies = std::thread::scope(|scope| {
            let clients: Vec<_> = (0..CONNECTIONS)
                .map(|_| {
                    let request = &request;
                    let pin = *pinned;
                    scope.spawn(move || client(port, request, expected, deadline, pin))
                })
                .collect();
            clients
                .into_iter()
                .map(|client| {
                    client
                        .join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a client panicked")))
                })
                .collect::<Vec<_>>()
        });
        let elapsed = started.elapsed().as_secs_f64();
        let cpu_after = proc_cpu(pid).context("cannot read polld's CPU time")?;
        let mut row = EndpointRow {
            what,
            expected,
            seconds: elapsed,
            cpu_seconds: cpu_after - cpu_before,
            client_cpu_seconds: (self_usage().cpu - client_before).as_secs_f64(),
            daemon_core_busy_pct: match (core_before, core_ticks(DAEMON_CPU)) {
                (Some((busy0, all0)), Some((busy1, all1))) if all1 > all0 => {
                    100.0 * (busy1 - busy0) as f64 / (all1 - all0) as f64
                }
                _ => 0.0,
            },
            ..EndpointRow::default()
        };
        for tally in tallies {
            let tally = tally?;
            row.answered += tally.answered;
            row.unexpected += tally.unexpected;
            for example in tally.examples {
                if row.unexpected_examples.len() < 3 {
                    row.unexpected_examples.push(example);
                }
            }
        }
        rows.push(row);
    }
    drop(daemon);
    Ok(rows)
}

/// (busy, all) clock ticks of core `cpu` since boot, from `/proc/stat`; idle and
/// iowait are not busy.
fn core_ticks(cpu: usize) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat
        .lines()
        .find(|line| line.split_whitespace().next() == Some(&format!("cpu{cpu}")))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let all: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((all - idle, all))
}

/// One request as bytes, sent with one write: headers, then the body.
fn http_request(port: u16, delivery: &Signed) -> Vec<u8> {
    let mut head = format!(
        "POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n",
        delivery.body.len()
    );
    for (name, value) in &delivery.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&delivery.body);
    bytes
}

#[derive(Default)]
struct Tally {
    answered: u64,
    unexpected: u64,
    examples: Vec<String>,
}

/// One client: `request` over a kept-alive connection (a new one after an error or a
/// `Connection: close`) until `deadline`, on core [`LOAD_CPU`] when `pin`.
fn client(port: u16, request: &[u8], expected: u16, deadline: Instant, pin: bool) -> Result<Tally> {
    if pin {
        pin_to_cpu(0, LOAD_CPU).context("pinning a client thread")?;
    }
    let mut tally = Tally::default();
    let mut connection: Option<BufReader<TcpStream>> = None;
    while Instant::now() < deadline {
        let answer = match &mut connection {
            Some(open) => exchange(open, request),
            None => TcpStream::connect(("127.0.0.1", port)).and_then(|stream| {
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                exchange(connection.insert(BufReader::new(stream)), request)
            }),
        };
        match answer {
            Ok((status, keep_alive)) => {
                if status == expected {
                    tally.answered += 1;
                } else {
                    tally.unexpected += 1;
                    tally.examples.push(format!("status {status}"));
                }
                if !keep_alive {
                    connection = None;
                }
            }
            Err(error) => {
                tally.unexpected += 1;
                tally.examples.push(error.to_string());
                connection = None;
            }
        }
        tally.examples.truncate(3);
    }
    Ok(tally)
}

/// Sends `request`, reads the answer: (status, whether the connection stays open).
fn exchange(connection: &mut BufReader<TcpStream>, request: &[u8]) -> std::io::Result<(u16, bool)> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    connection.get_mut().write_all(request)?;
    let mut line = String::new();
    if connection.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("no HTTP status line"))?;
    let (mut length, mut keep_alive) = (0usize, true);
    loop {
        line.clear();
        if connection.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().map_err(|_| invalid("bad Content-Length"))?;
            } else if name.eq_ignore_ascii_case("connection") {
                keep_alive = !value.eq_ignore_ascii_case("close");
            }
        }
    }
    let mut body = vec![0; length];
    connection.read_exact(&mut body)?;
    Ok((status, keep_alive))
}
