//! A small run of the benchmark: correctness only (every poll succeeded, the tables are
//! printed, every latency commit arrived), never speed.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use clap::Parser;
use polld_bench::Options;

#[test]
fn a_small_run_is_correct() {
    let options = Options::parse_from([
        "polld-bench",
        "--repos",
        "20",
        "--rounds",
        "5",
        "--big-refs",
        "--big-refs-count",
        "2000",
        "--transports",
        "--transport-seconds",
        "0",
        "--once-pollers",
        "5",
        "--daemon-transport",
        "https",
        "--daemon-seconds",
        "5",
        "--interval",
        "2s",
        "--commits",
        "3",
        "--seed",
        "7",
    ]);
    let report = polld_bench::run(&options).expect("the benchmark runs");
    let markdown = report.markdown();
    println!("{markdown}");
    assert_eq!(report.problems(), Vec::<String>::new());

    assert_eq!(report.polld.polls, 100);
    assert_eq!(report.polld.ok, 100);
    assert_eq!(report.buildbot.ok, 20);
    assert_eq!(report.ls_remote.ok, 20);
    let refs = report.refs.as_ref().expect("--big-refs was measured");
    assert!(refs.small.polls > 0 && refs.small.failed == 0);
    assert!(refs.big.polls > 0 && refs.big.failed == 0);
    let transports: Vec<&str> = report.transports.iter().map(|t| t.transport).collect();
    assert_eq!(
        transports,
        ["git://", "http://", "https:// (local CA)", "ssh://"]
    );
    let once = report.once.as_ref().expect("`polld once` was measured");
    assert_eq!(once.pollers, 5);

    let daemon = report.daemon.as_ref().expect("the daemon ran");
    assert!(daemon.metrics_ok >= 20, "every poller polled at least once");
    assert_eq!(daemon.metrics_error, 0);
    assert_eq!(daemon.failed_poll_lines, 0);
    assert_eq!(daemon.latency.commits, 3);
    assert_eq!(
        daemon.latency.seconds.len(),
        3,
        "every commit reached the sink"
    );
    assert!(daemon.stopped_cleanly);

    for heading in [
        "### No-change poll, client side",
        "| polld (in-process `GitBackend`) |",
        "| (a) buildbot-sequence",
        "| (b) git ls-remote",
        "### Many refs",
        "### Per transport",
        "### `polld once` over 5 git:// pollers",
        "### The daemon: `polld run`, 20 https:// pollers every 2s, 5 s",
        "| commits → change in the jsonl sink: arrived | 3 of 3 |",
        "### Targets",
    ] {
        assert!(
            markdown.contains(heading),
            "missing {heading:?} in:\n{markdown}"
        );
    }
}

#[test]
fn a_small_hooks_run_is_correct() {
    let options = Options::parse_from([
        "polld-bench",
        "--hooks",
        "--hook-pushes",
        "3",
        "--hook-seconds",
        "1",
    ]);
    let report = polld_bench::hooks(&options).expect("the hooks benchmark runs");
    println!("{}", report.markdown());
    assert_eq!(report.problems(), Vec::<String>::new());
    let transports: Vec<&str> = report.pushes.iter().map(|row| row.transport).collect();
    assert_eq!(transports, ["git://", "http://", "svn://"]);
    for row in &report.pushes {
        assert_eq!(row.latency_ms.len(), 3, "{}", row.transport);
    }
    assert_eq!(report.verify.len(), 3);
    assert!(report.endpoint.iter().all(|row| row.answered > 0));
}

#[test]
fn a_small_replicas_run_is_correct() {
    let options = Options::parse_from([
        "polld-bench",
        "--replicas",
        "--store-ops",
        "20",
        "--idle-seconds",
        "4",
        "--takeover-runs",
        "2",
        "--replica-pollers",
        "30",
        "--replica-seconds",
        "3",
        "--interval",
        "5s",
        "--seed",
        "7",
    ]);
    let report = polld_bench::replicas(&options).expect("the replicas benchmark runs");
    let markdown = report.markdown();
    println!("{markdown}");
    assert_eq!(report.problems(), Vec::<String>::new());
    let stores: Vec<&str> = report.store_ops.iter().map(|row| row.store).collect();
    assert_eq!(stores.len(), 3, "{stores:?}");
    assert!(report.store_ops.iter().all(|row| row.commit_ms.len() == 20));
    let idle = report.idle.as_ref().expect("the no-change run ran");
    assert!(idle.polls_ok >= 100, "every poller polled: {idle:?}");
    assert_eq!(idle.poll_rows(), 0);
    let takeover = report.takeover.as_ref().expect("the takeover ran");
    assert_eq!(takeover.seconds.len(), 2);
    let scale = report.scale.as_ref().expect("the scale run ran");
    assert_eq!(scale.replicas.len(), 3);
    assert_eq!(scale.replicas.iter().map(|r| r.held).sum::<usize>(), 30);
    for heading in [
        "### Store operations per change",
        "### No-change polls on PostgreSQL",
        "### Takeover after `kill -9`",
        "### 30 git pollers over 3 replicas",
    ] {
        assert!(
            markdown.contains(heading),
            "missing {heading:?} in:\n{markdown}"
        );
    }
}
