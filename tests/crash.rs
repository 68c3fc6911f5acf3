//! `polld run`: surviving kill -9 without losing a change, and stopping cleanly on
//! SIGTERM / SIGINT.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use polld_test_support::*;
use serde_json::Value;

const COMMITS: usize = 200;

#[test]
fn kill_9_loses_no_change() {
    let mut rng = Rng::from_time();
    eprintln!("crash test seed: {}", rng.seed());

    // A remote with main and dev, and one clone per branch so the committer never has
    // to switch branches.
    let pair = RemotePair::with_initial_commit();
    let base = pair.work.head();
    pair.work.branch("dev");
    pair.work.push(&["dev"]);
    let main_clone = pair.work.clone();
    let dev_clone = GitRepo::clone_from(&pair.remote, &pair.dir.path().join("work-dev"));
    dev_clone.checkout("dev");

    let repo = pair.repo();
    let polld = Polld::new(&format!(
        "[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n\n{}",
        git_poller(
            "app",
            &repo,
            "branches = [\"main\", \"dev\"]\ninterval = \"1s\"\njitter = \"0s\"\n"
        )
    ));
    let jsonl = polld.path("changes.jsonl");
    // Record the heads first, so every commit from here on must be emitted.
    polld.once(&[]).expect_code(0);

    // The committer: COMMITS commits alternating between main and dev, each pushed.
    let done = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let committer = {
        let done = done.clone();
        let made = made.clone();
        let (m, d) = (main_clone.clone(), dev_clone.clone());
        std::thread::spawn(move || {
            for i in 0..COMMITS {
                let (clone, branch) = if i % 2 == 0 {
                    (&m, "main")
                } else {
                    (&d, "dev")
                };
                clone.commit(
                    &format!("{branch}/{i}.txt"),
                    &format!("{i}\n"),
                    &format!("{branch} commit {i}"),
                );
                clone.push(&[branch]);
                made.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
            done.store(true, Ordering::SeqCst);
        })
    };

    let kills = rng.range(3, 6);
    let mut daemon = polld.spawn_run(&[]);
    let mut killed_at = Vec::new();
    for k in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.range(300, 1500)));
        if rng.range(0, 2) == 0 {
            // Half the kills land right after the sink grew: mid-delivery, before the
            // outbox is acknowledged, where at-least-once is earned.
            let len = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            let before = len(&jsonl);
            let until = Instant::now() + Duration::from_millis(1500);
            while len(&jsonl) == before && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(
            daemon.is_running(),
            "polld run exited on its own before kill {k}\n{}",
            daemon.stderr()
        );
        daemon.kill9();
        killed_at.push(made.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(rng.range(0, 300)));
        daemon = polld.spawn_run(&[]);
    }
    eprintln!(
        "killed polld {kills} times, after {killed_at:?} of {COMMITS} commits had been pushed"
    );
    committer.join().expect("committer thread");
    assert!(done.load(Ordering::SeqCst));

    // What must have been emitted, per branch, oldest first.
    let main_shas = main_clone.first_parent_range(&base, "main");
    let dev_shas = dev_clone.first_parent_range(&base, "dev");
    assert_eq!(main_shas.len() + dev_shas.len(), COMMITS);
    let mut expected: HashMap<String, Value> = HashMap::new();
    let mut order: HashMap<&str, Vec<String>> = HashMap::new();
    for (clone, branch, shas) in [
        (&main_clone, "main", &main_shas),
        (&dev_clone, "dev", &dev_shas),
    ] {
        for rec in clone.expected_many("app", &repo, branch, shas) {
            order
                .entry(branch)
                .or_default()
                .push(rec["id"].as_str().unwrap().to_string());
            expected.insert(rec["id"].as_str().unwrap().to_string(), rec);
        }
    }

    // Wait until the last daemon has caught up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (records, _) = read_jsonl(&jsonl);
        let seen: HashSet<&str> = records.iter().filter_map(|r| r["id"].as_str()).collect();
        if expected.keys().all(|id| seen.contains(id.as_str())) {
            break;
        }
        if Instant::now() >= deadline || !daemon.is_running() {
            let missing = expected
                .keys()
                .filter(|id| !seen.contains(id.as_str()))
                .count();
            panic!(
                "polld did not catch up ({} running): {missing} of {COMMITS} commits missing from {}\nlast run's stderr:\n{}",
                if daemon.is_running() {
                    "still"
                } else {
                    "no longer"
                },
                jsonl.display(),
                daemon.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(20));

    let (records, bad) = read_jsonl(&jsonl);
    let mut first_seen: Vec<&Value> = Vec::new();
    let mut ids = HashSet::new();
    for r in &records {
        let id = r["id"].as_str().expect("record has an id");
        if ids.insert(id) {
            first_seen.push(r);
        }
    }
    let duplicates = records.len() - first_seen.len();
    eprintln!(
        "{} records, {} unique, {duplicates} duplicates, {} unparsable lines",
        records.len(),
        first_seen.len(),
        bad.len()
    );

    assert!(
        bad.is_empty(),
        "the jsonl holds lines that are not JSON records (torn writes?): {bad:?}"
    );
    let unexpected: Vec<&str> = first_seen
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .filter(|id| !expected.contains_key(*id))
        .collect();
    assert!(
        unexpected.is_empty(),
        "records for no pushed commit: {unexpected:?}"
    );
    // Every record, duplicates included, is exactly the change it stands for.
    for r in &records {
        let want = &expected[r["id"].as_str().unwrap()];
        assert_changes(std::slice::from_ref(r), std::slice::from_ref(want));
    }
    // In commit order per branch.
    for (branch, ids) in &order {
        let got: Vec<&str> = first_seen
            .iter()
            .filter(|r| r["branch"] == *branch)
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(got, want, "records of {branch} are not in commit order");
    }

    let status = status.unwrap_or_else(|| panic!("polld run did not stop on SIGTERM"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}"
    );
}

/// Starts `polld run` on a repo with one pending change and waits until it delivered it,
/// so the daemon is fully up; returns the pieces.
fn running_daemon(jsonl_sink: bool) -> (RemotePair, Polld, RunningPolld) {
    let pair = RemotePair::with_initial_commit();
    let sink = if jsonl_sink {
        "[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n\n"
    } else {
        ""
    };
    let polld = Polld::new(&format!(
        "{sink}{}",
        git_poller("app", &pair.repo(), "interval = \"1s\"\n")
    ));
    polld.once(&[]).expect_code(0);
    let sha = pair.work.commit("a", "a\n", "A");
    pair.work.push(&["main"]);
    let mut daemon = polld.spawn_run(&[]);
    let jsonl = polld.path("changes.jsonl");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = if jsonl_sink {
            std::fs::read_to_string(&jsonl).unwrap_or_default()
        } else {
            daemon.stdout()
        };
        if text.contains(&sha) {
            break;
        }
        assert!(
            daemon.is_running(),
            "polld run exited early\n{}",
            daemon.stderr()
        );
        assert!(
            Instant::now() < deadline,
            "polld run did not deliver the change\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    if !jsonl_sink {
        // stdout carries change records and nothing else.
        let stdout = daemon.stdout();
        for line in stdout.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("run's stdout line is not JSON ({e}): {line}"));
            assert!(v.is_object());
        }
    }
    (pair, polld, daemon)
}

#[track_caller]
fn assert_clean_exit(daemon: &mut RunningPolld, sig: &str) {
    let status = daemon
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("polld run did not stop within 15 s of {sig}"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after {sig}: {status:?}\nstderr:\n{}",
        daemon.stderr()
    );
}

#[test]
fn sigterm_stops_run_cleanly() {
    let (_pair, _polld, mut daemon) = running_daemon(true);
    daemon.signal(libc::SIGTERM);
    assert_clean_exit(&mut daemon, "SIGTERM");
}

#[test]
fn sigint_stops_run_cleanly() {
    let (_pair, _polld, mut daemon) = running_daemon(false);
    daemon.signal(libc::SIGINT);
    assert_clean_exit(&mut daemon, "SIGINT");
}

#[test]
fn sigterm_during_a_poll_stops_cleanly_and_keeps_the_cursor_consistent() {
    // Many commits so the poll that finds them takes a moment; the signal lands while
    // it may be in flight. Whatever was abandoned is found again by the next `once`.
    let pair = RemotePair::with_initial_commit();
    let polld = Polld::new(&format!(
        "[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n\n{}",
        git_poller("app", &pair.repo(), "interval = \"1s\"\n")
    ));
    polld.once(&[]).expect_code(0);
    let shas = pair.work.fast_import_commits("main", 500);
    pair.work.push(&["main"]);
    let mut daemon = polld.spawn_run(&[]);
    // Its first log line says it is up; the poll that finds 500 commits starts now.
    daemon.wait_for(Duration::from_secs(15), "the first log line", || {
        !daemon_stderr_empty(&polld)
    });
    daemon.signal(libc::SIGTERM);
    assert_clean_exit(&mut daemon, "SIGTERM");

    polld.once(&[]).expect_code(0);
    let (records, bad) = read_jsonl(&polld.path("changes.jsonl"));
    assert!(bad.is_empty(), "{bad:?}");
    let mut seen = HashSet::new();
    let firsts: Vec<&str> = records
        .iter()
        .map(|r| r["revision"].as_str().unwrap())
        .filter(|r| seen.insert(*r))
        .collect();
    let want: Vec<&str> = shas.iter().map(String::as_str).collect();
    assert_eq!(firsts, want, "every commit, in order, after run + once");
}

fn daemon_stderr_empty(polld: &Polld) -> bool {
    std::fs::read_dir(polld.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".stderr"))
        .all(|e| e.metadata().map(|m| m.len() == 0).unwrap_or(true))
}

#[test]
fn kill_9_mid_write_leaves_no_torn_jsonl_line() {
    // Large records make a big batch, written in several pieces: kill -9 polld as soon as
    // the file starts growing, several times. Each restart redelivers the batch (it was
    // never acknowledged); the file must only ever hold whole lines.
    let pair = RemotePair::with_initial_commit();
    let polld = Polld::new(&format!(
        "[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n\n{}",
        git_poller("app", &pair.repo(), "interval = \"1s\"\n")
    ));
    polld.once(&[]).expect_code(0);
    let shas = pair.work.fast_import_commits_padded("main", 40, 256 * 1024);
    pair.work.push(&["main"]);
    let jsonl = polld.path("changes.jsonl");
    let len = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);

    let mut torn_after = None;
    for attempt in 0..6 {
        let before = len(&jsonl);
        let mut daemon = polld.spawn_run(&[]);
        let until = Instant::now() + Duration::from_secs(20);
        while len(&jsonl) == before && Instant::now() < until && daemon.is_running() {
            std::thread::sleep(Duration::from_micros(200));
        }
        daemon.kill9();
        let bytes = std::fs::read(&jsonl).unwrap_or_default();
        let torn = !bytes.is_empty() && !bytes.ends_with(b"\n");
        if torn || !read_jsonl(&jsonl).1.is_empty() {
            torn_after.get_or_insert((attempt, bytes.len()));
        }
    }
    // A last, undisturbed run completes the delivery.
    let mut daemon = polld.spawn_run(&[]);
    daemon.wait_for(Duration::from_secs(60), "every record", || {
        let (records, _) = read_jsonl(&jsonl);
        let seen: HashSet<&str> = records
            .iter()
            .filter_map(|r| r["revision"].as_str())
            .collect();
        shas.iter().all(|s| seen.contains(s.as_str()))
    });
    daemon.signal(libc::SIGTERM);
    assert_clean_exit(&mut daemon, "SIGTERM");

    let (records, bad) = read_jsonl(&jsonl);
    eprintln!(
        "{} records ({} commits), {} unparsable lines; torn after a kill: {torn_after:?}",
        records.len(),
        shas.len(),
        bad.len()
    );
    let bad_brief: Vec<String> = bad
        .iter()
        .map(|l| {
            format!(
                "{} bytes: {}…{}",
                l.len(),
                &l[..l.len().min(80)],
                &l[l.len().saturating_sub(40)..]
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "the jsonl holds {} torn lines after kill -9 (first tear after attempt/size {torn_after:?}):\n{}",
        bad.len(),
        bad_brief.join("\n")
    );
}
