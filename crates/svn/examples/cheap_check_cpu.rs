//! Client CPU of an svn poll that finds nothing, before and after the in-process cheap
//! check: `svn info` processes (what every such poll ran before) against the poller's
//! own check on a kept svnserve connection and a pooled HTTP client.
//!
//! ```sh
//! cargo run --release -p polld-svn --example cheap_check_cpu [-- POLLS]
//! ```
//!
//! Servers are svnserve and Apache with mod_dav_svn on 127.0.0.1 (`polld-test-support`).
//! CPU is this process's plus its children's (getrusage), so the `svn` processes count.

// A measurement tool: a failed step is a failed run, said by a panic.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use polld_backend::process::Command;
use polld_backend::{Backend, PollOutcome, PollerContext};
use polld_svn::{SvnBackend, SvnConfig};
use polld_test_support::svn::{SvnHttpServer, SvnRepo, Svnserve};

/// User plus system CPU of this process and its waited-for children.
fn cpu() -> Duration {
    let mut total = Duration::ZERO;
    for who in [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN] {
        // SAFETY: getrusage(2) fills the struct it is given.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(who, &mut usage);
            usage
        };
        for time in [usage.ru_utime, usage.ru_stime] {
            total += Duration::from_secs(time.tv_sec as u64)
                + Duration::from_micros(time.tv_usec as u64);
        }
    }
    total
}

/// (CPU, wall) per call of `f`, after `n / 10` calls to warm up.
async fn measure<F, Fut>(n: u32, mut f: F) -> (f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        f().await;
    }
    let (cpu0, wall0) = (cpu(), Instant::now());
    for _ in 0..n {
        f().await;
    }
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(n);
    (per(cpu() - cpu0), per(wall0.elapsed()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let polls: u32 = std::env::args()
        .nth(1)
        .map_or(1000, |n| n.parse().expect("POLLS is a number"));
    let repo = SvnRepo::with_standard_layout();
    let svnserve = Svnserve::start(repo.dir.path());
    let apache = SvnHttpServer::start(repo.dir.path(), None);
    let state = tempfile::tempdir().unwrap();
    let config_dir = state.path().join("svn-config");

    println!("| transport | how | CPU ms/poll | wall ms/poll |");
    println!("|---|---|---:|---:|");
    for (name, url) in [
        ("svn://", svnserve.url("repo/trunk")),
        ("http://", apache.url("repo/trunk")),
    ] {
        // Before: one `svn info` process per poll, run as polld ran it.
        let (cpu_ms, wall_ms) = measure(polls / 10, || async {
            let out = Command::new("svn")
                .args(["info", "--xml", "--non-interactive", "--no-auth-cache"])
                .arg("--config-dir")
                .arg(&config_dir)
                .arg("--")
                .arg(format!("{url}@"))
                .env("LC_ALL", "C.UTF-8")
                .timeout(Duration::from_secs(30))
                .max_stdout(1 << 20)
                .output()
                .await
                .unwrap();
            assert!(out.status.success());
        })
        .await;
        println!("| {name} | `svn info` process | {cpu_ms:.3} | {wall_ms:.3} |");

        // After: the poller's own no-change poll.
        let poller = SvnBackend::new()
            .build(
                PollerContext::new("bench", url.as_str(), state.path(), state.path()),
                SvnConfig::default(),
            )
            .unwrap();
        let cursor = match poller.poll(None).await.unwrap() {
            PollOutcome::Advanced { cursor, .. } => cursor,
            other => panic!("first poll: {other:?}"),
        };
        let (cpu_ms, wall_ms) = measure(polls, || async {
            let outcome = poller.poll(Some(&cursor)).await.unwrap();
            assert_eq!(outcome, PollOutcome::Unchanged);
        })
        .await;
        println!("| {name} | in-process poll | {cpu_ms:.3} | {wall_ms:.3} |");
    }
}
