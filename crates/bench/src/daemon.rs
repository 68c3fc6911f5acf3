//! The scale run: the real `polld run` with N git pollers against the git daemon,
//! measured from outside (/proc, the git daemon's request log, /metrics, the sink).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use polld_backend::Cursor;

use crate::fixture::{Repos, RequestCounter};
use crate::util::{Rng, copy_tree_many, free_port, git, stdout_of};

/// What the daemon run needs from the rest of the benchmark.
pub struct DaemonPlan<'a> {
    pub polld: &'a Path,
    pub root: &'a Path,
    pub repos: &'a Repos,
    pub remote: &'a DaemonRemote<'a>,
    /// The cursor every repository's poller has (they are identical copies).
    pub cursor: &'a Cursor,
    /// A mirror made by a first poll, copied to every poller (state as after a restart).
    pub mirror: &'a Path,
    pub seconds: u64,
    pub interval: Duration,
    pub concurrency: usize,
    pub commits: usize,
    pub seed: u64,
}

/// Where the daemon's pollers poll, and how the server's log shows one listing.
pub struct DaemonRemote<'a> {
    /// For the report: `git://`, `https://`.
    pub label: &'static str,
    /// A repository's `repo`, by its name under the fixture's base.
    pub url: Box<dyn Fn(&str) -> String + 'a>,
    /// More keys for every poller (`ca_file = "…"`).
    pub poller_keys: String,
    /// The server's request log, and what marks one listing's line in it.
    pub log: PathBuf,
    pub marker: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct DaemonResult {
    pub transport: &'static str,
    pub pollers: usize,
    pub interval: Duration,
    pub seconds: u64,
    /// Polls (git daemon requests) in each second since polld started.
    pub per_second: Vec<usize>,
    /// When every poller had polled once (seconds since start).
    pub launch_done_at: Option<f64>,
    /// Start of the steady window (a whole second since start).
    pub steady_start: Option<u64>,
    pub steady_seconds: u64,
    pub steady_polls: usize,
    pub polls_per_sec_mean: f64,
    pub polls_per_sec_max: usize,
    pub polls_per_sec_min: usize,
    pub cpu_pct_steady: f64,
    pub cpu_pct_whole: f64,
    /// polld's CPU in the steady window divided by the polls in it.
    pub cpu_ms_per_poll_steady: f64,
    pub rss_max_kib: u64,
    pub hwm_kib: u64,
    /// polld's open sockets (its outbound connections, plus the control endpoint's
    /// listener): the most, and at the end of the measured window.
    pub sockets_max: usize,
    pub sockets_last: usize,
    pub metrics_ok: u64,
    pub metrics_error: u64,
    /// `poll failed` lines in polld's log, and the first few warning lines.
    pub failed_poll_lines: usize,
    pub log_excerpt: Vec<String>,
    pub stopped_cleanly: bool,
    pub latency: Latency,
    /// What an operator's look costs with every poller loaded: `GET /`, `/status` and
    /// `/metrics`, measured after the steady window.
    pub views: Vec<ViewCost>,
}

/// One control-endpoint read, repeated [`VIEW_REQUESTS`] times one after another.
#[derive(Debug, Clone, Default)]
pub struct ViewCost {
    pub path: &'static str,
    pub bytes: usize,
    /// Wall time per request, sorted.
    pub millis: Vec<f64>,
}

const VIEW_REQUESTS: usize = 20;

#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub commits: usize,
    /// Seconds from `update-ref` to the change's line in the sink, per arrived commit.
    pub seconds: Vec<f64>,
    pub missing: Vec<String>,
}

impl Latency {
    pub fn mean(&self) -> f64 {
        self.seconds.iter().sum::<f64>() / self.seconds.len().max(1) as f64
    }
    pub fn max(&self) -> f64 {
        self.seconds.iter().copied().fold(0.0, f64::max)
    }
}

/// State as after a restart: every poller's cursor current, every mirror filled (a
/// copy of `mirror`).
pub(crate) fn seed_state(
    state: &Path,
    names: &[String],
    cursor: &Cursor,
    mirror: &Path,
) -> Result<()> {
    {
        let store = polld_store_sqlite::Database::open(state)?;
        for name in names {
            store.commit_poll(name, "git", cursor, &[])?;
        }
    }
    let mirrors: Vec<PathBuf> = names
        .iter()
        .map(|name| state.join("mirrors").join(name))
        .collect();
    copy_tree_many(mirror, &mirrors)
}

/// polld's process, killed on drop.
pub(crate) struct Polld(pub(crate) Child);

impl Polld {
    /// `polld --config <config> run` in the config's directory, warnings and errors
    /// logged to `log`.
    pub(crate) fn run(polld: &Path, config: &Path, log: &Path) -> Result<Polld> {
        Polld::run_with(polld, config, log, &[], None)
    }

    /// [`Polld::run`] with more environment variables (a token, a hook secret), and
    /// pinned to one CPU when `cpu` is given (from its first instruction, so every
    /// thread it starts is pinned too).
    pub(crate) fn run_with(
        polld: &Path,
        config: &Path,
        log: &Path,
        env: &[(&str, &str)],
        cpu: Option<usize>,
    ) -> Result<Polld> {
        let mut command = Command::new(polld);
        command
            .arg("--config")
            .arg(config)
            .arg("run")
            .current_dir(config.parent().unwrap_or(Path::new(".")))
            .env("POLLD_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log)?);
        if let Some(cpu) = cpu {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure only makes one system call (async-signal-safe), on a
            // cpu set of its own.
            unsafe {
                command.pre_exec(move || crate::util::pin_to_cpu(0, cpu));
            }
        }
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}", polld.display()))?;
        Ok(Polld(child))
    }
}

impl Drop for Polld {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime of `pid`, in seconds.
pub(crate) fn proc_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// (VmRSS, VmHWM) of `pid` in KiB.
pub(crate) fn proc_rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// How many of `pid`'s file descriptors are sockets.
fn open_sockets(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// A plain HTTP/1.1 GET on 127.0.0.1: (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no HTTP status line")?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

fn view_cost(port: u16, path: &'static str) -> Result<ViewCost> {
    let mut cost = ViewCost {
        path,
        ..ViewCost::default()
    };
    for _ in 0..VIEW_REQUESTS {
        let started = Instant::now();
        let (status, body) = http_get(port, path).with_context(|| format!("GET {path}"))?;
        cost.millis.push(crate::util::ms(started.elapsed()));
        if status != 200 {
            bail!("GET {path} answered {status}");
        }
        cost.bytes = body.len();
    }
    cost.millis.sort_by(f64::total_cmp);
    Ok(cost)
}

/// Sums `polld_polls_total` by result: (ok, error).
pub(crate) fn poll_totals(metrics: &str) -> (u64, u64) {
    let (mut ok, mut error) = (0, 0);
    for line in metrics.lines() {
        if !line.starts_with("polld_polls_total{") {
            continue;
        }
        let value: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64);
        if line.contains("result=\"ok\"") {
            ok += value;
        } else if line.contains("result=\"error\"") {
            error += value;
        }
    }
    (ok, error)
}

/// Makes a new commit on `main` of the bare repository `repo` (whose head is `parent`)
/// and moves the branch; returns the commit.
fn make_commit(repo: &Path, tree: &str, parent: &str, what: &str) -> Result<String> {
    let commit =
        stdout_of(
            git()
                .arg("-C")
                .arg(repo)
                .args(["commit-tree", tree, "-p", parent, "-m", what]),
        )?;
    stdout_of(
        git()
            .arg("-C")
            .arg(repo)
            .args(["update-ref", "refs/heads/main", &commit, parent]),
    )?;
    Ok(commit)
}

/// Reads the lines appended to the sink since the last call.
pub(crate) struct SinkReader {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl SinkReader {
    pub(crate) fn new(path: PathBuf) -> SinkReader {
        SinkReader {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    /// The revisions of the changes appended since the last call.
    pub(crate) fn revisions(&mut self) -> Vec<String> {
        let Ok(mut file) = File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = String::new();
        let Ok(read) = file.read_to_string(&mut buf) else {
            return Vec::new();
        };
        self.offset += read as u64;
        self.partial.push_str(&buf);
        let Some(end) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let complete: String = self.partial.drain(..=end).collect();
        complete
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|v| v.get("revision")?.as_str().map(str::to_owned))
            .collect()
    }
}

pub fn run(plan: &DaemonPlan<'_>) -> Result<DaemonResult> {
    let n = plan.repos.names.len();
    let dir = plan.root.join("daemon");
    let state = dir.join("state");
    std::fs::create_dir_all(&dir)?;
    let names: Vec<String> = plan
        .repos
        .names
        .iter()
        .map(|r| r.trim_end_matches(".git").to_owned())
        .collect();

    eprintln!("polld-bench: seeding the daemon's state ({n} cursors and mirrors)");
    seed_state(&state, &names, plan.cursor, plan.mirror)?;

    let port = free_port()?;
    let mut config = format!(
        "[daemon]\nstate_dir = \"state\"\nmax_concurrent_polls = {}\nlisten = \"127.0.0.1:{port}\"\n\n\
         [defaults]\ninterval = \"{}\"\n\n[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n",
        plan.concurrency,
        humantime::format_duration(plan.interval)
    );
    for (name, repo) in names.iter().zip(&plan.repos.names) {
        config.push_str(&format!(
            "\n[[poller]]\nname = \"{name}\"\ntype = \"git\"\nrepo = \"{}\"\nbranches = [\"main\"]\n{}",
            (plan.remote.url)(repo),
            plan.remote.poller_keys
        ));
    }
    let config_path = dir.join("pollers.toml");
    std::fs::write(&config_path, config)?;
    let log_path = dir.join("polld.log");

    let mut requests = RequestCounter::at_end(&plan.remote.log, plan.remote.marker)?;
    let mut sink = SinkReader::new(dir.join("changes.jsonl"));
    eprintln!(
        "polld-bench: running `polld run` with {n} pollers every {} for {} s",
        humantime::format_duration(plan.interval),
        plan.seconds
    );
    let started = Instant::now();
    let mut polld = Polld::run(plan.polld, &config_path, &log_path)?;
    let pid = polld.0.id();

    let mut result = DaemonResult {
        transport: plan.remote.label,
        pollers: n,
        interval: plan.interval,
        seconds: plan.seconds,
        ..DaemonResult::default()
    };
    let expected_rate = n as f64 / plan.interval.as_secs_f64();
    let end = Duration::from_secs(plan.seconds);
    let mut rng = Rng::new(plan.seed);
    let mut cumulative = 0usize;
    let mut steady_cpu: Option<f64> = None;
    let mut cpu_at_end: Option<f64> = None;
    let mut last_second = 0u64;
    // (due, repo index, label), then (revision -> (commit instant, repo)).
    let mut planned: Vec<(Duration, usize)> = Vec::new();
    let mut made: HashMap<String, Instant> = HashMap::new();
    let mut last_commit_at = Duration::ZERO;
    let mut commit_error: Option<anyhow::Error> = None;

    let schedule = |from: Duration, rng: &mut Rng| -> Vec<(Duration, usize)> {
        let from = from.as_secs_f64();
        let latest = plan.seconds as f64 - plan.interval.as_secs_f64() - 1.0;
        let to = if latest > from + 1.0 {
            latest
        } else {
            (plan.seconds as f64 - 0.5).max(from + 0.5)
        };
        let mut repos: Vec<usize> = Vec::new();
        while repos.len() < plan.commits.min(n) {
            let r = rng.below(n);
            if !repos.contains(&r) {
                repos.push(r);
            }
        }
        let mut plan: Vec<(Duration, usize)> = repos
            .into_iter()
            .map(|r| (Duration::from_secs_f64(from + rng.unit() * (to - from)), r))
            .collect();
        plan.sort_by_key(|p| std::cmp::Reverse(p.0));
        plan
    };
    let mut scheduled = false;

    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = started.elapsed();
        if let Ok(Some(status)) = polld.0.try_wait() {
            bail!(
                "polld exited early ({status}); its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        let measuring = now < end;
        let fresh = requests.new_requests();
        if measuring {
            let second = now.as_secs() as usize;
            if result.per_second.len() <= second {
                result.per_second.resize(second + 1, 0);
            }
            result.per_second[second] += fresh;
            cumulative += fresh;
            if result.launch_done_at.is_none() && cumulative >= n {
                result.launch_done_at = Some(now.as_secs_f64());
            }
        }
        // Once a second: resident memory, and the steady-state check on the second
        // that just ended.
        if now.as_secs() > last_second && measuring {
            last_second = now.as_secs();
            if let Some((rss, _)) = proc_rss(pid) {
                result.rss_max_kib = result.rss_max_kib.max(rss);
            }
            result.sockets_last = open_sockets(pid);
            result.sockets_max = result.sockets_max.max(result.sockets_last);
            let ended = last_second as usize - 1;
            if result.steady_start.is_none()
                && result.launch_done_at.is_some()
                && (result.per_second[ended] as f64)
                    <= (2.0 * expected_rate).max(expected_rate + 3.0)
            {
                result.steady_start = Some(last_second);
                steady_cpu = proc_cpu(pid);
            }
        }
        if !scheduled && (result.steady_start.is_some() || !measuring) {
            planned = schedule(now, &mut rng);
            scheduled = true;
        }
        while planned.last().is_some_and(|(due, _)| *due <= now) {
            let (_, r) = planned.pop().expect("checked");
            match make_commit(
                &plan.repos.path(r),
                &plan.repos.tree,
                &plan.repos.commit,
                &format!("bench change in {}", plan.repos.names[r]),
            ) {
                Ok(commit) => {
                    made.insert(commit, Instant::now());
                    last_commit_at = started.elapsed();
                }
                Err(e) => commit_error = Some(e),
            }
        }
        for revision in sink.revisions() {
            if let Some(at) = made.get(&revision) {
                result.latency.seconds.push(at.elapsed().as_secs_f64());
                made.remove(&revision);
            }
        }
        if measuring {
            continue;
        }
        if cpu_at_end.is_none() {
            cpu_at_end = proc_cpu(pid);
        }
        let all_made = scheduled && planned.is_empty();
        let waited_enough = now > last_commit_at + plan.interval + Duration::from_secs(30);
        if all_made && (made.is_empty() || waited_enough) {
            break;
        }
    }
    if let Some(e) = commit_error {
        return Err(e.context("making a commit for the latency measurement"));
    }
    result.latency.commits = plan.commits.min(n);
    result.latency.missing = made.keys().cloned().collect();

    let whole = end.as_secs_f64();
    let cpu_end = cpu_at_end.context("cannot read polld's CPU time")?;
    result.cpu_pct_whole = 100.0 * cpu_end / whole;
    if let (Some(start), Some(cpu_start)) = (result.steady_start, steady_cpu)
        && start < plan.seconds
    {
        result.steady_seconds = plan.seconds - start;
        let window = &result.per_second[start as usize..plan.seconds as usize];
        result.steady_polls = window.iter().sum();
        result.polls_per_sec_mean = result.steady_polls as f64 / window.len() as f64;
        result.polls_per_sec_max = window.iter().copied().max().unwrap_or(0);
        result.polls_per_sec_min = window.iter().copied().min().unwrap_or(0);
        let cpu = cpu_end - cpu_start;
        result.cpu_pct_steady = 100.0 * cpu / result.steady_seconds as f64;
        result.cpu_ms_per_poll_steady = 1000.0 * cpu / result.steady_polls.max(1) as f64;
    }
    if let Some((_, hwm)) = proc_rss(pid) {
        result.hwm_kib = hwm;
    }
    let (status, metrics) = http_get(port, "/metrics").context("scraping /metrics")?;
    if status != 200 {
        bail!("GET /metrics answered {status}");
    }
    (result.metrics_ok, result.metrics_error) = poll_totals(&metrics);
    for path in ["/", "/status", "/metrics"] {
        result.views.push(view_cost(port, path)?);
    }

    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    result.stopped_cleanly = loop {
        match polld.0.try_wait() {
            Ok(Some(status)) => break status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => break false,
        }
    };
    drop(polld);
    for line in BufReader::new(File::open(&log_path)?).lines() {
        let line = line?;
        if line.contains("poll failed") {
            result.failed_poll_lines += 1;
        }
        if result.log_excerpt.len() < 5 && (line.contains("WARN") || line.contains("ERROR")) {
            result.log_excerpt.push(line);
        }
    }
    Ok(result)
}
