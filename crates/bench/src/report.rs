//! The results, and the Markdown tables printed at the end.

use std::fmt::Write as _;

use crate::Options;
use crate::daemon::DaemonResult;
use crate::inproc::PollStats;
use crate::once::OnceResult;
use crate::transports::TransportRow;

/// The many-refs comparison: the same no-change poll of `main`.
#[derive(Debug, Clone, Default)]
pub struct RefsResult {
    pub small_refs: usize,
    pub big_refs: usize,
    pub small: PollStats,
    pub big: PollStats,
}

impl RefsResult {
    pub fn cpu_ratio(&self) -> f64 {
        self.big.cpu_ms_per_poll() / self.small.cpu_ms_per_poll().max(1e-9)
    }
    pub fn wall_ratio(&self) -> f64 {
        self.big.latency_ms_mean() / self.small.latency_ms_mean().max(1e-9)
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub options: Options,
    pub cores: usize,
    pub git_version: String,
    pub profile: &'static str,
    pub seed: u64,
    pub fixture_seconds: f64,
    pub polld: PollStats,
    pub polld_rounds: usize,
    pub polld_rss_kib: u64,
    pub buildbot: PollStats,
    pub buildbot_repos: usize,
    pub ls_remote: PollStats,
    pub ls_remote_repos: usize,
    pub refs: Option<RefsResult>,
    pub transports: Vec<TransportRow>,
    pub once: Option<OnceResult>,
    pub daemon: Option<DaemonResult>,
}

impl Default for Report {
    fn default() -> Self {
        use clap::Parser;
        Report {
            options: Options::parse_from(["polld-bench"]),
            cores: 0,
            git_version: String::new(),
            profile: "",
            seed: 0,
            fixture_seconds: 0.0,
            polld: PollStats::default(),
            polld_rounds: 0,
            polld_rss_kib: 0,
            buildbot: PollStats::default(),
            buildbot_repos: 0,
            ls_remote: PollStats::default(),
            ls_remote_repos: 0,
            refs: None,
            transports: Vec::new(),
            once: None,
            daemon: None,
        }
    }
}

/// Milliseconds with about three significant digits.
fn ms(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.3}")
    } else if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

fn ratio(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1}×")
    } else {
        format!("{v:.0}×")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

impl Report {
    /// Everything that makes the run incorrect (never a matter of speed).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |what: &str, stats: &PollStats| {
            if stats.failed > 0 || stats.polls == 0 {
                problems.push(format!(
                    "{what}: {} of {} polls failed: {:?}",
                    stats.failed, stats.polls, stats.errors
                ));
            }
        };
        check("polld", &self.polld);
        check("buildbot-sequence", &self.buildbot);
        check("git ls-remote", &self.ls_remote);
        if let Some(refs) = &self.refs {
            check("polld, 10 refs", &refs.small);
            check("polld, many refs", &refs.big);
        }
        for row in &self.transports {
            check(
                &format!("polld over {}, 10 refs", row.transport),
                &row.polld_small,
            );
            check(
                &format!("polld over {}, many refs", row.transport),
                &row.polld_big,
            );
            check(
                &format!("git ls-remote over {}", row.transport),
                &row.ls_remote_small,
            );
            check(
                &format!("Buildbot's sequence over {}", row.transport),
                &row.buildbot_small,
            );
        }
        if let Some(d) = &self.daemon {
            if d.metrics_ok == 0 {
                problems.push("daemon: /metrics counted no successful poll".into());
            }
            if d.metrics_error > 0 || d.failed_poll_lines > 0 {
                problems.push(format!(
                    "daemon: {} polls failed ({} `poll failed` log lines): {:?}",
                    d.metrics_error, d.failed_poll_lines, d.log_excerpt
                ));
            }
            if !d.latency.missing.is_empty() {
                problems.push(format!(
                    "daemon: {} of {} commits never reached the sink: {:?}",
                    d.latency.missing.len(),
                    d.latency.commits,
                    d.latency.missing
                ));
            }
            if !d.stopped_cleanly {
                problems.push("daemon: polld did not exit 0 after SIGTERM".into());
            }
        }
        problems
    }

    pub fn markdown(&self) -> String {
        let o = &self.options;
        let mut s = String::new();
        let _ = writeln!(s, "## polld benchmark\n");
        let _ = writeln!(
            s,
            "`polld-bench --repos {}{}{}{}` ({} build) on {} cores (`available_parallelism`), {}; \
             N = {} bare repositories served by `git daemon` on 127.0.0.x (created in {:.1} s); \
             every measured poll finds nothing (the cursor is current).\n",
            o.repos,
            if o.big_refs {
                format!(" --big-refs --big-refs-count {}", o.big_refs_count)
            } else {
                String::new()
            },
            if o.transports { " --transports" } else { "" },
            if o.daemon_seconds > 0 {
                format!(
                    " --daemon-seconds {} --interval {}{}",
                    o.daemon_seconds,
                    humantime::format_duration(o.interval),
                    if o.daemon_transport == crate::DaemonTransport::Https {
                        " --daemon-transport https"
                    } else {
                        ""
                    }
                )
            } else {
                String::new()
            },
            self.profile,
            self.cores,
            self.git_version,
            o.repos,
            self.fixture_seconds
        );

        let _ = writeln!(s, "### No-change poll, client side\n");
        let _ = writeln!(
            s,
            "| poller | repos polled | polls | failed | CPU ms/poll | wall ms/poll | latency ms (mean / max) | CPU vs polld | wall vs polld |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let p = &self.polld;
        let row = |s: &mut String, name: &str, repos: usize, stats: &PollStats| {
            let _ = writeln!(
                s,
                "| {name} | {repos} | {} | {} | {} | {} | {} / {} | {} | {} |",
                stats.polls,
                stats.failed,
                ms(stats.cpu_ms_per_poll()),
                ms(stats.wall_ms_per_poll()),
                ms(stats.latency_ms_mean()),
                ms(crate::util::ms(stats.latency_max)),
                ratio(stats.cpu_ms_per_poll() / p.cpu_ms_per_poll().max(1e-9)),
                ratio(stats.wall_ms_per_poll() / p.wall_ms_per_poll().max(1e-9)),
            );
        };
        row(&mut s, "polld (in-process `GitBackend`)", o.repos, p);
        row(
            &mut s,
            "(a) buildbot-sequence (6 git commands)",
            self.buildbot_repos,
            &self.buildbot,
        );
        row(
            &mut s,
            "(b) git ls-remote (1 process)",
            self.ls_remote_repos,
            &self.ls_remote,
        );
        let _ = writeln!(
            s,
            "\n- {} polls at once for every row. *CPU* is user+system: polld's from `getrusage(RUSAGE_SELF)` \
             (the whole process: libgit2, tokio, everything), (a) and (b) from `RUSAGE_CHILDREN` (the git \
             processes and their children only — Buildbot's own Python, ~15 ms per poll by BUILDBOT-NOTES, \
             is not counted, so (a)'s ratio is a lower bound). The server side (`git daemon`, `git upload-pack`) \
             is not counted for anyone.\n\
             - *wall ms/poll* = elapsed time of the batch / polls (throughput at that concurrency); \
             *latency* = one poll from start to answer.\n\
             - polld: {} round(s) over all {} repositories; (a) and (b) poll {} evenly spaced repositories \
             each once (after one unmeasured first poll/warm-up){}; ratios are per poll.\n\
             - polld peak RSS (`ru_maxrss` of the benchmark process after its polls): {}.\n",
            o.concurrency,
            self.polld_rounds,
            o.repos,
            if self.buildbot_repos == self.ls_remote_repos {
                format!("{}", self.buildbot_repos)
            } else {
                format!("{} / {}", self.buildbot_repos, self.ls_remote_repos)
            },
            if self.buildbot_repos < o.repos || self.ls_remote_repos < o.repos {
                " — a sample of N"
            } else {
                ""
            },
            mib(self.polld_rss_kib),
        );

        if let Some(r) = &self.refs {
            let _ = writeln!(s, "### Many refs: polld watching `refs/heads/main`\n");
            let _ = writeln!(
                s,
                "| repository | refs | polls | failed | CPU ms/poll | wall ms/poll |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
            for (name, refs, st) in [
                ("small", r.small_refs, &r.small),
                ("big (`refs/changes/*`)", r.big_refs, &r.big),
            ] {
                let _ = writeln!(
                    s,
                    "| {name} | {refs} | {} | {} | {} | {} |",
                    st.polls,
                    st.failed,
                    ms(st.cpu_ms_per_poll()),
                    ms(st.latency_ms_mean())
                );
            }
            let _ = writeln!(
                s,
                "| **big / small** | | | | **{}** | **{}** |\n\n- one poll at a time, in-process.\n",
                ratio(r.cpu_ratio()),
                ratio(r.wall_ratio())
            );
        }

        self.transports_markdown(&mut s);
        if let Some(once) = &self.once {
            let _ = writeln!(
                s,
                "### `polld once` over {n} git:// pollers vs {n} `git ls-remote`s\n\n\
                 | run | CPU ms | wall ms |\n|---|---:|---:|\n\
                 | `polld once`, {n} pollers (start-up included) | {} | {} |\n\
                 | `polld once`, 1 poller (≈ start-up) | {} | {} |\n\
                 | {n} `git ls-remote` processes, one after another | {} | {} |\n\
                 | **ls-remote / polld** | **{}** | |\n\n\
                 - whole processes (`RUSAGE_CHILDREN`), state as after a restart (nothing to fetch); \
                 polld's mean over 5 runs after one unmeasured run.\n",
                ms(crate::util::ms(once.polld_cpu)),
                ms(crate::util::ms(once.polld_wall)),
                ms(crate::util::ms(once.single_cpu)),
                ms(crate::util::ms(once.single_wall)),
                ms(crate::util::ms(once.ls_remote_cpu)),
                ms(crate::util::ms(once.ls_remote_wall)),
                ratio(once.ratio()),
                n = once.pollers,
            );
        }

        if let Some(d) = &self.daemon {
            let interval = humantime::format_duration(d.interval);
            let _ = writeln!(
                s,
                "### The daemon: `polld run`, {} {} pollers every {interval}, {} s\n",
                d.pollers, d.transport, d.seconds
            );
            let _ = writeln!(s, "| measure | value |\n|---|---:|");
            let launch = d
                .launch_done_at
                .map_or("never".to_owned(), |t| format!("{t:.1} s"));
            let _ = writeln!(
                s,
                "| launch burst (every poller polled once, `at_launch`) | done after {launch} |"
            );
            match d.steady_start {
                Some(start) if d.steady_seconds > 0 => {
                    let expected = d.pollers as f64 / d.interval.as_secs_f64();
                    let _ = writeln!(
                        s,
                        "| steady window (launch burst excluded) | {start} s – {} s ({} s) |",
                        d.seconds, d.steady_seconds
                    );
                    let _ = writeln!(
                        s,
                        "| CPU, steady, % of one core | **{:.2} %** |",
                        d.cpu_pct_steady
                    );
                    let _ = writeln!(
                        s,
                        "| CPU per poll, steady (scheduler, engine, metrics included) | {} ms |",
                        ms(d.cpu_ms_per_poll_steady)
                    );
                    let _ = writeln!(
                        s,
                        "| polls/s, steady: mean / max / min (N / interval = {expected:.1}) | {:.1} / {} / {} |",
                        d.polls_per_sec_mean, d.polls_per_sec_max, d.polls_per_sec_min
                    );
                    let _ = writeln!(
                        s,
                        "| busiest second / mean | **{:.2}** |",
                        d.polls_per_sec_max as f64 / d.polls_per_sec_mean.max(1e-9)
                    );
                }
                _ => {
                    let _ = writeln!(
                        s,
                        "| steady window | none: the launch burst lasted the whole run (run longer) |"
                    );
                }
            }
            let _ = writeln!(
                s,
                "| CPU, whole run incl. launch burst, % of one core | {:.2} % |",
                d.cpu_pct_whole
            );
            let _ = writeln!(
                s,
                "| RSS: max sampled VmRSS / peak VmHWM | {} / **{}** |",
                mib(d.rss_max_kib),
                mib(d.hwm_kib)
            );
            let _ = writeln!(
                s,
                "| sockets open (outbound connections + the control listener): max / at the end | {} / {} |",
                d.sockets_max, d.sockets_last
            );
            let _ = writeln!(
                s,
                "| polls (from `/metrics`): ok / error | {} / {} |",
                d.metrics_ok, d.metrics_error
            );
            for view in &d.views {
                let _ = writeln!(
                    s,
                    "| `GET {}` ({} KiB): p50 / max of {} | {} / {} ms |",
                    view.path,
                    view.bytes / 1024,
                    view.millis.len(),
                    ms(view
                        .millis
                        .get(view.millis.len() / 2)
                        .copied()
                        .unwrap_or_default()),
                    ms(view.millis.last().copied().unwrap_or_default())
                );
            }
            let l = &d.latency;
            let _ = writeln!(
                s,
                "| commits → change in the jsonl sink: arrived | {} of {} |",
                l.seconds.len(),
                l.commits
            );
            if !l.seconds.is_empty() {
                let iv = d.interval.as_secs_f64();
                let _ = writeln!(
                    s,
                    "| latency mean / max (interval {interval}) | {:.2} s / {:.2} s ({:.2} / {:.2} intervals) |",
                    l.mean(),
                    l.max(),
                    l.mean() / iv,
                    l.max() / iv
                );
            }
            let _ = writeln!(
                s,
                "\n- polld's CPU from `/proc/<pid>/stat` (utime+stime), RSS from `/proc/<pid>/status`; \
                 polls per second counted from the server's request log (`git daemon --verbose`; \
                 Apache's access log, one `POST` per listing). The daemon starts \
                 from seeded state (every cursor current, every mirror filled, as after a restart); \
                 `at_launch` polls every poller once at start, then each poller keeps a grid offset \
                 hashed from its name. The steady window starts at the first second after the launch \
                 burst with at most 2× the mean rate.\n"
            );
        }

        let _ = writeln!(s, "### Targets\n\n| target | measured | |\n|---|---:|---|");
        let cpu = p.cpu_ms_per_poll();
        let _ = writeln!(
            s,
            "| no-change git poll ≤ 0.5 ms client CPU | {} ms | {} |",
            ms(cpu),
            verdict(cpu <= 0.5)
        );
        let a = self.buildbot.cpu_ms_per_poll() / cpu.max(1e-9);
        let b = self.ls_remote.cpu_ms_per_poll() / cpu.max(1e-9);
        let _ = writeln!(
            s,
            "| ≥ 50× less CPU than (a) | {} | {} |",
            ratio(a),
            verdict(a >= 50.0)
        );
        let _ = writeln!(
            s,
            "| ≥ 5× less CPU than (b) | {} | {} |",
            ratio(b),
            verdict(b >= 5.0)
        );
        if let Some(d) = &self.daemon {
            let at = format!(
                "{} pollers / {}",
                d.pollers,
                humantime::format_duration(d.interval)
            );
            if d.steady_seconds > 0 {
                let peak = d.polls_per_sec_max as f64 / d.polls_per_sec_mean.max(1e-9);
                let limit = if d.transport == "https://" { 5.0 } else { 15.0 };
                let _ = writeln!(
                    s,
                    "| ≤ {limit} % of one core (10,000 {} pollers / 60s; here {at}) | {:.2} % | {} |",
                    d.transport,
                    d.cpu_pct_steady,
                    verdict(d.cpu_pct_steady <= limit)
                );
                let _ = writeln!(
                    s,
                    "| no second with > 3× the mean polls (here {at}) | {:.2}× | {} |",
                    peak,
                    verdict(peak <= 3.0)
                );
            }
            let _ = writeln!(
                s,
                "| RSS < 150 MB (here {at}) | {} | {} |",
                mib(d.hwm_kib),
                verdict((d.hwm_kib as f64) * 1024.0 < 150e6)
            );
        }
        for row in &self.transports {
            let cpu = row.polld_concurrent.cpu_ms_per_poll();
            let limit = if row.transport == "ssh://" { 0.3 } else { 0.15 };
            let _ = writeln!(
                s,
                "| no-change poll over {} ≤ {limit} ms client CPU | {} ms | {} |",
                row.transport,
                ms(cpu),
                verdict(cpu <= limit)
            );
            let _ = writeln!(
                s,
                "| over {}: {} refs ≤ 1.5× 10 refs (CPU) | {} | {} |",
                row.transport,
                self.options.big_refs_count,
                ratio(row.refs_ratio()),
                verdict(row.refs_ratio() <= 1.5)
            );
        }
        if let Some(once) = &self.once {
            let _ = writeln!(
                s,
                "| `polld once` over {n} git:// pollers ≤ 1/5 the CPU of {n} `git ls-remote`s | 1/{:.1} | {} |",
                once.ratio(),
                verdict(once.ratio() >= 5.0),
                n = once.pollers
            );
        }
        if let Some(r) = &self.refs {
            let _ = writeln!(
                s,
                "| {} refs within 2× of 10 refs (CPU / wall) | {} / {} | {} |",
                r.big_refs,
                ratio(r.cpu_ratio()),
                ratio(r.wall_ratio()),
                verdict(r.cpu_ratio() <= 2.0 && r.wall_ratio() <= 2.0)
            );
        }
        s
    }

    fn transports_markdown(&self, s: &mut String) {
        if self.transports.is_empty() {
            return;
        }
        let big = self.options.big_refs_count;
        let _ = writeln!(
            s,
            "### Per transport: a no-change poll of `main`, client CPU ms\n\n\
             | transport | polld, {c} at once | polld, 1 at a time: 10 refs | {big} refs | {big} / 10 | one `git ls-remote` (10 / {big} refs) | Buildbot's sequence | ls-remote / polld | Buildbot / polld |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|",
            c = self.options.concurrency
        );
        for row in &self.transports {
            let polld = row.polld_small.cpu_ms_per_poll().max(1e-9);
            let _ = writeln!(
                s,
                "| {} | **{}** | {} | {} | {} | {} / {} | {} | **{}** | **{}** |",
                row.transport,
                ms(row.polld_concurrent.cpu_ms_per_poll()),
                ms(row.polld_small.cpu_ms_per_poll()),
                ms(row.polld_big.cpu_ms_per_poll()),
                ratio(row.refs_ratio()),
                ms(row.ls_remote_small.cpu_ms_per_poll()),
                ms(row.ls_remote_big.cpu_ms_per_poll()),
                ms(row.buildbot_small.cpu_ms_per_poll()),
                ratio(row.ls_remote_small.cpu_ms_per_poll() / polld),
                ratio(row.buildbot_small.cpu_ms_per_poll() / polld),
            );
        }
        let _ = writeln!(
            s,
            "\n- polld in-process on warm connections (pooled HTTP, TLS sessions, one ssh \
             connection per host), CPU from `RUSAGE_SELF`: {} repositories of the server {} polls \
             at once, as the daemon polls, and one repository one poll at a time (each poll then \
             also pays for waking the runtime's threads); git's processes (and their `ssh`) from \
             `RUSAGE_CHILDREN`, one at a time; ratios against polld one at a time. Servers on 127.0.0.1: `git daemon`, Apache 2.4 with `git \
             http-backend` (HTTP/2 over TLS, a CA made by the benchmark), OpenSSH's sshd with \
             `AcceptEnv GIT_PROTOCOL`; their CPU is not counted. polld's latency, 10 refs: {}.\n",
            self.transports.first().map_or(0, |row| row.fleet_repos),
            self.options.concurrency,
            self.transports
                .iter()
                .map(|row| format!(
                    "{} {} ms",
                    row.transport,
                    ms(row.polld_small.latency_ms_mean())
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
