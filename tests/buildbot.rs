//! End-to-end: delivery to a real Buildbot master and to a webhook receiver.
//!
//! Every Buildbot test starts its own master (PyPI buildbot 4.3 in a venv, see
//! support/buildbot.rs) on its own port and drives the `polld` binary against it as a user
//! would. Every wait has a deadline; no assertion is about speed (speeds are printed).

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use polld_test_support::buildbot::*;
use polld_test_support::*;
use serde_json::{Value, json};

/// Polls `cond` every `every` until it holds; fails after `timeout` or as soon as the
/// daemon exited, with its stderr.
#[track_caller]
fn wait_every(
    daemon: &mut RunningPolld,
    every: Duration,
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) {
    daemon.wait_for(timeout, what, || {
        if cond() {
            return true;
        }
        std::thread::sleep(every);
        false
    });
}

/// `status --json` of one poller: (pending, dead letters, last delivery error).
fn delivery_state(polld: &Polld, name: &str) -> (u64, u64, String) {
    let s = polld.status_of(name);
    (
        s["pending"]
            .as_u64()
            .unwrap_or_else(|| panic!("no pending: {s}")),
        s["dead_letters"]
            .as_u64()
            .unwrap_or_else(|| panic!("no dead_letters: {s}")),
        s["last_delivery_error"].as_str().unwrap_or("").to_string(),
    )
}

/// Asserts two sequences of revisions are equal, showing where they first differ.
#[track_caller]
fn assert_revisions(got: &[String], want: &[String], what: &str) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let window = |v: &[String]| v[at.saturating_sub(2)..(at + 3).min(v.len())].to_vec();
    panic!(
        "{what}: {} revisions, expected {}; first difference at #{at}:\n got  {:?}\n want {:?}",
        got.len(),
        want.len(),
        window(got),
        window(want)
    );
}

fn revisions(changes: &[Value]) -> Vec<String> {
    changes
        .iter()
        .map(|c| c["revision"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[track_caller]
fn sigterm_and_expect_clean_exit(daemon: &mut RunningPolld) {
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("polld run did not stop within 20 s of SIGTERM"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}\nstderr:\n{}",
        daemon.stderr()
    );
}

// ---------------------------------------------------------------------------------------
// 1. Every field arrives
// ---------------------------------------------------------------------------------------

/// One VCS's case for [`every_field_arrives`]: a poller table, and a function that makes
/// commits and returns the contract records polld must deliver for them.
struct FieldCase<'a> {
    /// The poller's name in `poller`, for messages.
    name: &'static str,
    /// The `[[poller]]` table, with the poller-level fields under test.
    poller: String,
    /// Makes the commits (after polld recorded the heads); returns the expected records.
    commit: Box<dyn FnOnce() -> Vec<Value> + 'a>,
}

/// Runs `case` against `master` with a fresh polld: records the heads, commits,
/// `polld once`, and compares what the master stored since with the expected records.
/// Returns the master's new changes.
fn every_field_arrives(master: &BuildbotMaster, case: FieldCase) -> Vec<Value> {
    let polld = Polld::new(&format!("{}{}", master.sink_config(), case.poller));
    let before = master.changes().len();
    polld.once(&[]).expect_code(0);
    assert_eq!(
        master.changes().len(),
        before,
        "{}: the first poll emits nothing",
        case.name
    );
    let expected = (case.commit)();
    assert!(!expected.is_empty());
    let out = polld.once(&[]);
    out.expect_code(0);
    assert!(
        out.stdout.is_empty(),
        "with the buildbot sink stdout stays empty\n{}",
        out.describe()
    );
    let stored = master.changes()[before..].to_vec();
    assert_master_changes(&stored, &expected);
    stored
}

/// The poller-level keys every VCS case sets (all but codebase), and what they give.
const POLLER_FIELDS: &str = "project = \"polld-demo\"\ncategory = \"push\"\n\
     revlink = \"https://vcs.example/r/{revision}\"\n\
     properties = { team = \"core\", n = 3, flag = true }\n";
const REVLINK: &str = "https://vcs.example/r/{revision}";

fn with_the_poller_fields(record: Value) -> Value {
    with_poller_fields(
        record,
        "polld-demo",
        Some("push"),
        "",
        Some(REVLINK),
        json!({ "team": "core", "n": 3, "flag": true }),
    )
}

#[test]
fn git_changes_arrive_at_the_master_with_every_field() {
    let master = BuildbotMaster::start();
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let w = &pair.work;

    // Every poller-level field set but codebase (so it is not sent, and the master shows
    // ""), on two branches, one with a slash; a file name with spaces, several files, a
    // deletion, a multi-line non-ASCII message, a commit that changes no file.
    let stored = every_field_arrives(
        &master,
        FieldCase {
            name: "git",
            poller: git_poller(
                "app",
                &repo,
                &format!("branches = [\"main\", \"release/*\"]\n{POLLER_FIELDS}"),
            ),
            commit: Box::new(|| {
                let base = w.head();
                w.checkout_new("release/1.x");
                w.commit("rel.txt", "r\n", "Release fix");
                w.push(&["release/1.x"]);
                w.checkout("main");
                w.commit(
                    "dir/a file with spaces.txt",
                    "a\n",
                    "Fix the parser — ünïcödé\n\nLong body\nwith & = + % ? \"quotes\"\n\n",
                );
                w.commit_files(
                    &[("src/lib.rs", "x\n"), ("docs/b v2.md", "y\n")],
                    "Two files",
                );
                w.commit_remove("README", "Remove the README");
                w.commit_empty("An empty commit");
                w.push(&["main"]);
                let mut records = Vec::new();
                for branch in ["main", "release/1.x"] {
                    let shas = w.first_parent_range(&base, branch);
                    records.extend(
                        w.expected_many("app", &repo, branch, &shas)
                            .into_iter()
                            .map(with_the_poller_fields),
                    );
                }
                assert_eq!(records.len(), 5);
                records
            }),
        },
    );
    assert!(
        stored.iter().all(|c| c["codebase"] == ""),
        "no codebase configured, none stored: {stored:?}"
    );
    assert!(
        stored
            .iter()
            .any(|c| c["files"] == json!(["dir/a file with spaces.txt"])),
        "a file name with spaces arrives as one name: {stored:?}"
    );

    // A configured codebase is sent and stored.
    let stored = every_field_arrives(
        &master,
        FieldCase {
            name: "git with a codebase",
            poller: git_poller("app-cb", &repo, "codebase = \"cb\"\n"),
            commit: Box::new(|| {
                let base = w.head();
                w.commit("cb.txt", "c\n", "For the codebase poller");
                w.push(&["main"]);
                let shas = w.first_parent_range(&base, "main");
                w.expected_many("app-cb", &repo, "main", &shas)
                    .into_iter()
                    .map(|r| with_poller_fields(r, "", None, "cb", None, json!({})))
                    .collect()
            }),
        },
    );
    assert!(stored.iter().all(|c| c["codebase"] == "cb"), "{stored:?}");
}

#[test]
fn svn_changes_arrive_at_the_master_with_every_field() {
    use polld_test_support::svn::*;
    let master = BuildbotMaster::start();
    let repo = SvnRepo::with_standard_layout();
    repo.copy("trunk", "branches/1.5.x", "Branch 1.5.x");
    let url = repo.url();
    let stored = every_field_arrives(
        &master,
        FieldCase {
            name: "svn",
            poller: svn_poller(
                "svn-app",
                &url,
                &format!("split = \"branches\"\n{POLLER_FIELDS}"),
            ),
            commit: Box::new(|| {
                let r1 = repo.put(
                    &[
                        ("trunk/dir/a file with spaces.txt", "a\n"),
                        ("trunk/b.c", "b\n"),
                    ],
                    "Trunk work — ünïcödé\n\nWith a body & = + %.\n",
                );
                let r2 = repo.put(&[("branches/1.5.x/README", "fixed\n")], "Fix on 1.5.x");
                let r3 = repo.remove(&["trunk/b.c"], "Remove b.c");
                [
                    (r1, None, vec!["dir", "dir/a file with spaces.txt", "b.c"]),
                    (r2, Some("branches/1.5.x"), vec!["README"]),
                    (r3, None, vec!["b.c"]),
                ]
                .into_iter()
                .map(|(rev, branch, files)| {
                    with_the_poller_fields(
                        repo.expected("svn-app", &url, None, branch, rev, &files),
                    )
                })
                .collect()
            }),
        },
    );
    // Trunk is branch null and svn has no committer: neither is sent, both stored null.
    assert!(stored.iter().any(|c| c["branch"].is_null()), "{stored:?}");
    assert!(
        stored.iter().all(|c| c["committer"].is_null()),
        "{stored:?}"
    );
}

#[test]
fn hg_changes_arrive_at_the_master_with_every_field() {
    use polld_test_support::hg::*;
    let master = BuildbotMaster::start();
    let dir = tempfile::Builder::new()
        .prefix("polld-e2e-hg")
        .tempdir()
        .unwrap();
    let repo = HgRepo::init(&dir.path().join("remote"));
    repo.commit_file("README", "hello\n", "Initial");
    let repository = repo.path.display().to_string();
    let stored = every_field_arrives(
        &master,
        FieldCase {
            name: "hg",
            poller: hg_poller(
                "hg-app",
                &repository,
                &format!("branches = [\"default\", \"stable\"]\n{POLLER_FIELDS}"),
            ),
            commit: Box::new(|| {
                let a = repo.commit_file(
                    "dir/a file with spaces.txt",
                    "a\n",
                    "Fix the parser — ünïcödé\n\nLong body & = + %.\n",
                );
                let b = repo.commit_remove("README", "Remove the readme");
                repo.branch("stable");
                let s = repo.commit_file("stable.txt", "s\n", "On stable");
                repo.update("default");
                let mut records = repo.expected_many("hg-app", &repository, "default", &[a, b]);
                records.push(repo.expected("hg-app", &repository, "stable", &s));
                records.into_iter().map(with_the_poller_fields).collect()
            }),
        },
    );
    // A non-ASCII author arrives intact; hg has no committer.
    assert!(stored.iter().all(|c| c["author"] == HG_USER), "{stored:?}");
    assert!(
        stored.iter().all(|c| c["committer"].is_null()),
        "{stored:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Master down, then back
// ---------------------------------------------------------------------------------------

#[test]
fn master_down_while_commits_arrive_gets_all_of_them_once_in_order() {
    const N: usize = 20;
    let mut master = BuildbotMaster::start();
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let polld = Polld::new(&format!(
        "{}{}",
        master.sink_config(),
        git_poller("app", &repo, "interval = \"1s\"\njitter = \"0s\"\n")
    ));
    polld.once(&[]).expect_code(0);
    let base = pair.work.head();

    master.stop();
    let down = Instant::now();
    let mut daemon = polld.spawn_run(&[]);
    for i in 0..N {
        pair.work.commit(
            &format!("f{i}.txt"),
            &format!("{i}\n"),
            &format!("commit {i}"),
        );
        pair.work.push(&["main"]);
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_every(
        &mut daemon,
        Duration::from_millis(200),
        Duration::from_secs(30),
        "every commit queued, and status saying why delivery waits",
        || {
            let (pending, _, error) = delivery_state(&polld, "app");
            pending == N as u64 && !error.is_empty()
        },
    );
    assert_eq!(
        delivery_state(&polld, "app").1,
        0,
        "an unreachable master dead-letters nothing"
    );
    // Down a little longer, so that several retries fail and the backoff grows.
    std::thread::sleep(Duration::from_secs(4).saturating_sub(down.elapsed()));
    eprintln!("master down for {:.1} s", down.elapsed().as_secs_f64());

    master.start_again();
    let back = Instant::now();
    wait_every(
        &mut daemon,
        Duration::from_millis(250),
        Duration::from_secs(60),
        "every change delivered once the master is back",
        || delivery_state(&polld, "app").0 == 0,
    );
    eprintln!(
        "all {N} delivered {:.1} s after the master came back",
        back.elapsed().as_secs_f64()
    );
    sigterm_and_expect_clean_exit(&mut daemon);

    let shas = pair.work.first_parent_range(&base, "main");
    assert_eq!(shas.len(), N);
    let changes = master.changes();
    assert_revisions(
        &revisions(&changes),
        &shas,
        "the master has every commit exactly once, in commit order",
    );
    assert_master_changes(
        &changes,
        &pair.work.expected_many("app", &repo, "main", &shas),
    );
}

// ---------------------------------------------------------------------------------------
// 3. kill -9 during a stream
// ---------------------------------------------------------------------------------------

/// The master's sequence of revisions read against at-least-once, in-order delivery:
/// every change is new, or part of a re-send that restarts at an unacknowledged change
/// and runs, in order, up to the newest change sent.
struct Replay {
    /// Each revision at its first arrival.
    first_seen: Vec<String>,
    /// For each re-send: how many changes it repeated (those in flight at a kill).
    resends: Vec<usize>,
    duplicates: usize,
}

fn replay(sequence: &[String]) -> Result<Replay, String> {
    let mut first_seen: Vec<String> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut next = 0; // where in `first_seen` the next arrival is expected
    let mut resends = Vec::new();
    let mut duplicates = 0;
    for (k, rev) in sequence.iter().enumerate() {
        match index.get(rev.as_str()) {
            None => {
                if next != first_seen.len() {
                    return Err(format!(
                        "change #{k} ({rev}) is new, but a re-send stopped short: {} changes \
                         sent earlier were not repeated after the ones before them were",
                        first_seen.len() - next
                    ));
                }
                index.insert(rev, first_seen.len());
                first_seen.push(rev.clone());
                next += 1;
            }
            Some(&i) => {
                duplicates += 1;
                if i > next {
                    return Err(format!(
                        "change #{k} ({rev}) is a duplicate that skips {} changes of its re-send",
                        i - next
                    ));
                }
                if i < next {
                    resends.push(first_seen.len() - i);
                }
                next = i + 1;
            }
        }
    }
    if next != first_seen.len() {
        return Err(format!(
            "the last re-send stopped short by {} changes",
            first_seen.len() - next
        ));
    }
    Ok(Replay {
        first_seen,
        resends,
        duplicates,
    })
}

#[test]
fn replay_model_reads_resends() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let r = replay(&s(&["a", "b", "c", "b", "c", "d", "d", "e"])).unwrap();
    assert_eq!(r.first_seen, s(&["a", "b", "c", "d", "e"]));
    assert_eq!((r.resends, r.duplicates), (vec![2, 1], 3));
    let r = replay(&s(&["a", "b", "c", "b", "b", "c", "d"])).unwrap();
    assert_eq!((r.resends, r.duplicates), (vec![2, 2], 3));
    assert!(replay(&s(&["a", "b", "c", "b", "d"])).is_err());
    assert!(replay(&s(&["a", "b", "c", "a", "c"])).is_err());
    assert!(replay(&s(&["a", "b", "c", "a", "b"])).is_err());
}

#[test]
fn kill_9_during_a_stream_loses_no_change_at_the_master() {
    const COMMITS: usize = 200;
    const KILLS: usize = 10;
    let mut rng = Rng::from_time();
    eprintln!("buildbot kill test seed: {}", rng.seed());

    let master = BuildbotMaster::start();
    let pair = RemotePair::with_initial_commit();
    let base = pair.work.head();
    pair.work.branch("dev");
    pair.work.push(&["dev"]);
    let main_clone = pair.work.clone();
    let dev_clone = GitRepo::clone_from(&pair.remote, &pair.dir.path().join("work-dev"));
    dev_clone.checkout("dev");
    let repo = pair.repo();
    let polld = Polld::new(&format!(
        "{}{}",
        master.sink_config(),
        git_poller(
            "app",
            &repo,
            "branches = [\"main\", \"dev\"]\ninterval = \"1s\"\njitter = \"0s\"\n"
        )
    ));
    polld.once(&[]).expect_code(0);

    let done = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let committer = {
        let (done, made) = (done.clone(), made.clone());
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

    let mut daemon = polld.spawn_run(&[]);
    let mut killed_at = Vec::new();
    let mut mid_delivery = 0;
    for k in 0..KILLS {
        std::thread::sleep(Duration::from_millis(rng.range(200, 1000)));
        if rng.range(0, 2) == 0 {
            // Right after the master stored one more change: mid-delivery, before the
            // outbox is acknowledged.
            let before = master.change_count();
            let until = Instant::now() + Duration::from_millis(1500);
            while master.change_count() == before && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if Instant::now() < until {
                mid_delivery += 1;
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
        "killed polld {KILLS} times ({mid_delivery} right after a change reached the master), \
         after {killed_at:?} of {COMMITS} commits had been pushed"
    );
    committer.join().expect("committer thread");
    assert!(done.load(Ordering::SeqCst));

    let main_shas = main_clone.first_parent_range(&base, "main");
    let dev_shas = dev_clone.first_parent_range(&base, "dev");
    assert_eq!(main_shas.len() + dev_shas.len(), COMMITS);
    let mut expected: HashMap<String, Value> = HashMap::new();
    for (clone, branch, shas) in [
        (&main_clone, "main", &main_shas),
        (&dev_clone, "dev", &dev_shas),
    ] {
        for rec in clone.expected_many("app", &repo, branch, shas) {
            expected.insert(rec["revision"].as_str().unwrap().to_string(), rec);
        }
    }

    wait_every(
        &mut daemon,
        Duration::from_millis(250),
        Duration::from_secs(60),
        "every commit at the master and nothing pending",
        || {
            master.change_count() >= COMMITS as u64 && delivery_state(&polld, "app").0 == 0 && {
                let seen: HashSet<String> = revisions(&master.changes()).into_iter().collect();
                expected.keys().all(|r| seen.contains(r))
            }
        },
    );
    let elapsed = started.elapsed();
    sigterm_and_expect_clean_exit(&mut daemon);

    let changes = master.changes();
    let sequence = revisions(&changes);
    let replayed = replay(&sequence).unwrap_or_else(|why| {
        panic!("the master's changes are not an in-order at-least-once delivery: {why}")
    });
    eprintln!(
        "master: {} changes, {} unique, {} duplicates in {} re-sends of {:?} changes; \
         {:.1} changes/s over {:.1} s (bounded by the committer)",
        changes.len(),
        replayed.first_seen.len(),
        replayed.duplicates,
        replayed.resends.len(),
        replayed.resends,
        replayed.first_seen.len() as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    let unexpected: Vec<&String> = replayed
        .first_seen
        .iter()
        .filter(|r| !expected.contains_key(*r))
        .collect();
    assert!(
        unexpected.is_empty(),
        "changes for no pushed commit: {unexpected:?}"
    );
    assert_eq!(replayed.first_seen.len(), COMMITS, "every commit arrived");
    assert!(
        replayed.resends.len() <= KILLS,
        "{} re-sends for {KILLS} kills: duplicates beyond the changes in flight at a kill",
        replayed.resends.len()
    );
    // Every stored change, duplicates included, is exactly the change it stands for.
    for change in &changes {
        let want = &expected[change["revision"].as_str().unwrap()];
        assert_master_changes(std::slice::from_ref(change), std::slice::from_ref(want));
    }
    // In commit order per branch.
    for (branch, shas) in [("main", &main_shas), ("dev", &dev_shas)] {
        let got: Vec<&String> = replayed
            .first_seen
            .iter()
            .filter(|r| expected[*r]["branch"] == branch)
            .collect();
        let want: Vec<&String> = shas.iter().collect();
        assert_eq!(got, want, "changes of {branch} are not in commit order");
    }
}

#[test]
fn kill_9_mid_batch_resends_only_the_change_in_flight() {
    // 150 changes queued while the master was down, then one `polld run` that is killed
    // once the master took some of them. The sink POSTs one change at a time and the
    // master answered 200 for each it stored, so only the POST in flight at the kill may
    // arrive twice.
    const N: usize = 150;
    let mut master = BuildbotMaster::start();
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let polld = Polld::new(&format!(
        "{}{}",
        master.sink_config(),
        git_poller("app", &repo, "interval = \"1s\"\njitter = \"0s\"\n")
    ));
    polld.once(&[]).expect_code(0);
    master.stop();
    let shas = pair.work.fast_import_commits("main", N);
    pair.work.push(&["main"]);
    polld.once(&[]).expect_code(1);
    master.start_again();

    let mut daemon = polld.spawn_run(&[]);
    wait_every(
        &mut daemon,
        Duration::from_millis(5),
        Duration::from_secs(60),
        "the master taking 40 changes",
        || master.change_count() >= 40,
    );
    daemon.kill9();
    let at_kill = master.change_count();
    let mut daemon = polld.spawn_run(&[]);
    wait_every(
        &mut daemon,
        Duration::from_millis(250),
        Duration::from_secs(60),
        "every change delivered after the restart",
        || delivery_state(&polld, "app").0 == 0,
    );
    sigterm_and_expect_clean_exit(&mut daemon);

    let changes = master.changes();
    let replayed = replay(&revisions(&changes)).unwrap_or_else(|why| {
        panic!("the master's changes are not an in-order at-least-once delivery: {why}")
    });
    assert_revisions(&replayed.first_seen, &shas, "every change, in order");
    eprintln!(
        "killed after the master had {at_kill} of {N} changes; the restart re-sent {} of them",
        replayed.duplicates
    );
    assert!(
        replayed.duplicates <= 1,
        "kill -9 after the master had taken {at_kill} changes (each answered 200): the restart \
         re-sent {} changes the master already had (re-sends: {:?}), where only the one in \
         flight could be unacknowledged; Buildbot does not de-duplicate, so each is a \
         duplicate build",
        replayed.duplicates,
        replayed.resends
    );
}

// ---------------------------------------------------------------------------------------
// 4. A refused change
// ---------------------------------------------------------------------------------------

#[test]
fn a_change_the_master_refuses_is_dead_lettered_and_redelivered() {
    let mut master = BuildbotMaster::start();
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let polld = Polld::new(&format!(
        "{}{}",
        master.sink_config(),
        git_poller("app", &repo, "")
    ));
    polld.once(&[]).expect_code(0);

    let a = pair.work.commit("a.txt", "a\n", "A");
    pair.work.push(&["main"]);
    master.refuse_changes(true);
    let out = polld.once(&[]);
    out.expect_code(1);
    let (pending, dead, error) = delivery_state(&polld, "app");
    assert_eq!(
        (pending, dead),
        (0, 1),
        "the refused change is a dead letter\n{}",
        polld.status_of("app")
    );
    assert!(error.contains("400"), "status names the answer: {error:?}");
    assert!(master.changes().is_empty());
    let text = polld.run(&["status"]);
    text.expect_code(0);
    assert!(
        text.stdout.contains("0 pending, 1 dead letter\n"),
        "status (text) shows the dead letter\n{}",
        text.describe()
    );

    // Later changes still flow; the dead letter stays put.
    master.refuse_changes(false);
    let b = pair.work.commit("b.txt", "b\n", "B");
    let c = pair.work.commit("c.txt", "c\n", "C");
    pair.work.push(&["main"]);
    polld.once(&[]).expect_code(0);
    assert_eq!(revisions(&master.changes()), vec![b.clone(), c.clone()]);
    assert_eq!(delivery_state(&polld, "app").1, 1);

    // Redeliver: re-queued, then sent.
    let out = polld.run(&["redeliver", "--poller", "app"]);
    out.expect_code(0);
    let (pending, dead, _) = delivery_state(&polld, "app");
    assert_eq!((pending, dead), (1, 0), "re-queued\n{}", out.describe());
    polld.once(&[]).expect_code(0);
    let changes = master.changes();
    assert_eq!(revisions(&changes), vec![b, c, a.clone()]);
    assert_master_changes(
        &changes[2..],
        &[pair.work.expected("app", &repo, "main", &a)],
    );
    assert_eq!(delivery_state(&polld, "app").0, 0);
}

#[test]
fn redeliver_while_run_is_running_gets_the_change_delivered() {
    // `polld redeliver` says "`polld run` or `polld once` delivers them": a running
    // daemon must pick the re-queued change up without waiting for a new commit.
    let mut master = BuildbotMaster::start();
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let polld = Polld::new(&format!(
        "{}{}",
        master.sink_config(),
        git_poller("app", &repo, "interval = \"1s\"\njitter = \"0s\"\n")
    ));
    polld.once(&[]).expect_code(0);
    master.refuse_changes(true);
    let mut daemon = polld.spawn_run(&[]);
    let a = pair.work.commit("a.txt", "a\n", "A");
    pair.work.push(&["main"]);
    wait_every(
        &mut daemon,
        Duration::from_millis(200),
        Duration::from_secs(30),
        "the refused change dead-lettered",
        || delivery_state(&polld, "app").1 == 1,
    );
    master.refuse_changes(false);
    let out = polld.run(&["redeliver"]);
    out.expect_code(0);
    assert_eq!(delivery_state(&polld, "app").0, 1, "re-queued");
    let deadline = Instant::now() + Duration::from_secs(15);
    while master.change_count() == 0 && Instant::now() < deadline && daemon.is_running() {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        master.change_count() >= 1,
        "polld run did not deliver the change `polld redeliver` re-queued within 15 s \
         (polls every 1 s; no new commit meanwhile); status: {}\n{}\npolld run's stderr:\n{}",
        polld.status_of("app"),
        out.describe(),
        daemon.stderr()
    );
    sigterm_and_expect_clean_exit(&mut daemon);
    assert_eq!(revisions(&master.changes()), vec![a]);
}

// ---------------------------------------------------------------------------------------
// 5. Webhook
// ---------------------------------------------------------------------------------------

const WEBHOOK_SECRET: &str = "whsec-3b9f1c77-test-only";

/// Checks `X-Polld-Signature: sha256=<hex>` against HMAC-SHA256(secret, body).
fn signature_is_valid(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex) = header.and_then(|h| h.strip_prefix("sha256=")) else {
        return false;
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).unwrap();
    mac.update(body);
    mac.verify_slice(&bytes).is_ok()
}

fn webhook_polld(receiver: &WebhookReceiver, repo: &str, poller_extra: &str) -> Polld {
    let mut polld = Polld::new(&format!(
        "[sink]\ntype = \"webhook\"\nurl = \"{}\"\nsecret_env = \"POLLD_TEST_WEBHOOK_SECRET\"\n\
         headers = {{ X-Team = \"core\", X-Env = \"e2e\" }}\n\n{}",
        receiver.url(),
        git_poller("app", repo, poller_extra)
    ));
    polld
        .env
        .push(("POLLD_TEST_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()));
    polld
}

#[test]
fn webhook_posts_signed_change_records_with_extra_headers() {
    let receiver = WebhookReceiver::start(&[], 200);
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let polld = webhook_polld(&receiver, &repo, "");
    polld.once(&[]).expect_code(0);
    assert!(receiver.received().is_empty());

    let base = pair.work.head();
    pair.work
        .commit("dir/a b.txt", "a\n", "First — ü\n\nbody\n");
    pair.work.commit("c.txt", "c\n", "Second");
    pair.work.push(&["main"]);
    let out = polld.once(&[]);
    out.expect_code(0);

    let shas = pair.work.first_parent_range(&base, "main");
    let expected = pair.work.expected_many("app", &repo, "main", &shas);
    let got = receiver.received();
    assert_eq!(got.len(), 2, "one POST per change: {got:?}");
    for r in &got {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hook"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("x-team"), Some("core"), "{:?}", r.headers);
        assert_eq!(r.header("x-env"), Some("e2e"), "{:?}", r.headers);
        assert!(
            signature_is_valid(
                WEBHOOK_SECRET.as_bytes(),
                &r.body,
                r.header("x-polld-signature")
            ),
            "signature {:?} does not verify against the body {}",
            r.header("x-polld-signature"),
            String::from_utf8_lossy(&r.body)
        );
        assert!(!signature_is_valid(
            b"another secret",
            &r.body,
            r.header("x-polld-signature")
        ));
    }
    let bodies: Vec<Value> = got.iter().map(Received::json).collect();
    assert_changes(&bodies, &expected);
    for out in [&out, &polld.run(&["status", "--json"])] {
        assert!(!out.stdout.contains(WEBHOOK_SECRET) && !out.stderr.contains(WEBHOOK_SECRET));
    }
    assert_eq!(
        files_containing(polld.dir.path(), WEBHOOK_SECRET.as_bytes()),
        Vec::<std::path::PathBuf>::new(),
        "the webhook secret is stored nowhere"
    );
}

/// A receiver behind a private CA: refused until the sink's `ca_file` names the CA, then
/// the change is delivered once (nothing lost while the certificate was refused).
#[test]
fn webhook_over_https_trusts_its_ca_file() {
    let tls = tempfile::tempdir().unwrap();
    let ca = tls::TestCa::new(tls.path(), "receiver");
    let receiver = tls::HttpsReceiver::start(&ca.server_cert("receiver"), tls.path());
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let sink = |extra: &str| {
        format!(
            "[sink]\ntype = \"webhook\"\nurl = \"{}\"\n{extra}\n{}",
            receiver.url(),
            git_poller("app", &repo, "")
        )
    };
    let polld = Polld::new(&sink(""));
    polld.once(&[]).expect_code(0);
    pair.work.commit("a.txt", "a\n", "over TLS");
    pair.work.push(&["main"]);
    let refused = polld.once(&[]);
    refused.expect_code(1);
    assert!(
        refused.stderr.contains("certificate") || refused.stderr.contains("UnknownIssuer"),
        "{}",
        refused.stderr
    );
    assert!(receiver.bodies().is_empty());

    std::fs::copy(&ca.cert, polld.path("ca.pem")).unwrap();
    polld.write_config(&format!("{PREAMBLE}{}", sink("ca_file = \"ca.pem\"")));
    polld.once(&[]).expect_code(0);
    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(bodies[0].contains("over TLS"), "{bodies:?}");

    polld.write_config(&format!("{PREAMBLE}{}", sink("ca_file = \"pollers.toml\"")));
    let bad = polld.run(&["check"]);
    bad.expect_code(2);
    assert!(
        bad.stderr.contains("ca_file") && bad.stderr.contains("no PEM certificate"),
        "{}",
        bad.stderr
    );
}

#[test]
fn webhook_retries_5xx_and_the_change_is_accepted_once() {
    let receiver = WebhookReceiver::start(&[500, 500, 500], 200);
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let polld = webhook_polld(&receiver, &repo, "interval = \"1s\"\njitter = \"0s\"\n");
    polld.once(&[]).expect_code(0);
    let sha = pair.work.commit("a.txt", "a\n", "A");
    pair.work.push(&["main"]);

    let mut daemon = polld.spawn_run(&[]);
    let started = Instant::now();
    wait_every(
        &mut daemon,
        Duration::from_millis(100),
        Duration::from_secs(40),
        "the change accepted after three 500s",
        || receiver.received().iter().any(|r| r.status == 200),
    );
    eprintln!(
        "accepted on the 4th request, {:.1} s after start",
        started.elapsed().as_secs_f64()
    );
    wait_every(
        &mut daemon,
        Duration::from_millis(100),
        Duration::from_secs(10),
        "nothing pending",
        || delivery_state(&polld, "app").0 == 0,
    );
    sigterm_and_expect_clean_exit(&mut daemon);

    let got = receiver.received();
    let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![500, 500, 500, 200], "requests: {got:?}");
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "every retry sends the same body"
    );
    for r in &got {
        assert!(signature_is_valid(
            WEBHOOK_SECRET.as_bytes(),
            &r.body,
            r.header("x-polld-signature")
        ));
    }
    assert_changes(
        &[got[3].json()],
        &[pair.work.expected("app", &repo, "main", &sha)],
    );
}

#[test]
fn webhook_4xx_dead_letters_the_change() {
    let receiver = WebhookReceiver::start(&[], 404);
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let polld = webhook_polld(&receiver, &repo, "");
    polld.once(&[]).expect_code(0);
    pair.work.commit("a.txt", "a\n", "A");
    pair.work.push(&["main"]);
    polld.once(&[]).expect_code(1);
    let (pending, dead, error) = delivery_state(&polld, "app");
    assert_eq!((pending, dead), (0, 1), "{}", polld.status_of("app"));
    assert!(error.contains("404"), "status names the answer: {error:?}");
    assert_eq!(receiver.received().len(), 1);
    // A dead letter is not retried by the next `once`.
    polld.once(&[]).expect_code(0);
    assert_eq!(receiver.received().len(), 1);
}

// ---------------------------------------------------------------------------------------
// 6. Basic auth on the change hook
// ---------------------------------------------------------------------------------------

#[test]
fn buildbot_hook_with_basic_auth_and_the_password_is_kept_secret() {
    const USER: &str = "polld-bot";
    const PASSWORD: &str = "pw-9c41e2-correct-horse";
    const WRONG: &str = "pw-77aa01-wrong-battery";
    const VAR: &str = "POLLD_TEST_BB_PASSWORD";
    let master = BuildbotMaster::start_with_auth(USER, PASSWORD);
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let mut polld = Polld::new(&format!(
        "[sink]\ntype = \"buildbot\"\nurl = \"{}\"\nusername = \"{USER}\"\npassword_env = \"{VAR}\"\n\n{}",
        master.hook_url(),
        git_poller("app", &repo, "")
    ));
    let mut outputs = Vec::new();
    polld.env = vec![(VAR.into(), WRONG.into())];
    outputs.push(polld.once(&[]));
    outputs[0].expect_code(0);

    // Wrong password: 401, a 4xx, so a dead letter.
    let a = pair.work.commit("a.txt", "a\n", "A");
    pair.work.push(&["main"]);
    outputs.push(polld.once(&[]));
    outputs.last().unwrap().expect_code(1);
    let (pending, dead, error) = delivery_state(&polld, "app");
    assert_eq!((pending, dead), (0, 1), "{}", polld.status_of("app"));
    assert!(error.contains("401"), "status names the answer: {error:?}");
    assert!(master.changes().is_empty());

    // The right one: redelivered and delivered, and a new change too.
    polld.env = vec![(VAR.into(), PASSWORD.into())];
    outputs.push(polld.run(&["redeliver"]));
    outputs.last().unwrap().expect_code(0);
    let b = pair.work.commit("b.txt", "b\n", "B");
    pair.work.push(&["main"]);
    outputs.push(polld.once(&[]));
    outputs.last().unwrap().expect_code(0);
    let changes = master.changes();
    assert_eq!(revisions(&changes), vec![a.clone(), b.clone()]);
    assert_master_changes(
        &changes,
        &pair.work.expected_many("app", &repo, "main", &[a, b]),
    );
    outputs.push(polld.run(&["status", "--json"]));
    outputs.push(polld.run(&["status"]));
    outputs.push(polld.run(&["check"]));

    for secret in [PASSWORD, WRONG] {
        for out in &outputs {
            assert!(
                !out.stdout.contains(secret) && !out.stderr.contains(secret),
                "a password in the output\n{}",
                out.describe()
            );
        }
        assert_eq!(
            files_containing(polld.dir.path(), secret.as_bytes()),
            Vec::<std::path::PathBuf>::new(),
            "a password stored in polld's files (of {:?})",
            list_files(polld.dir.path())
        );
    }
}

// ---------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------

#[test]
fn throughput_of_200_queued_changes_to_the_master() {
    // Enough to measure; more only keeps a 2-core CI machine's master busy for minutes.
    const N: usize = 200;
    let mut master = BuildbotMaster::start();
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let polld = Polld::new(&format!(
        "{}{}",
        master.sink_config(),
        git_poller("app", &repo, "")
    ));
    polld.once(&[]).expect_code(0);
    master.stop();
    let shas = pair.work.fast_import_commits("main", N);
    pair.work.push(&["main"]);
    polld.once(&[]).expect_code(1);
    assert_eq!(delivery_state(&polld, "app").0, N as u64);
    master.start_again();

    let started = Instant::now();
    let out = polld.once(&[]);
    let elapsed = started.elapsed();
    out.expect_code(0);
    eprintln!(
        "drained {N} queued changes to the Buildbot master in {:.2} s: {:.0} changes/s",
        elapsed.as_secs_f64(),
        N as f64 / elapsed.as_secs_f64()
    );
    let changes = master.changes();
    assert_revisions(&revisions(&changes), &shas, "each once, in commit order");
    assert_master_changes(
        &changes,
        &pair.work.expected_many("app", &repo, "main", &shas),
    );
}

#[test]
fn throughput_of_500_changes_to_a_webhook_for_comparison() {
    // The same drain to a receiver that does nothing: what polld itself costs.
    const N: usize = 500;
    let receiver = WebhookReceiver::start(&[], 200);
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let polld = webhook_polld(&receiver, &repo, "");
    polld.once(&[]).expect_code(0);
    let shas = pair.work.fast_import_commits("main", N);
    pair.work.push(&["main"]);
    let started = Instant::now();
    polld.once(&[]).expect_code(0);
    let elapsed = started.elapsed();
    eprintln!(
        "polled and delivered {N} changes to a webhook receiver in {:.2} s: {:.0} changes/s",
        elapsed.as_secs_f64(),
        N as f64 / elapsed.as_secs_f64()
    );
    let got: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.json()["revision"].as_str().unwrap().to_string())
        .collect();
    assert_revisions(&got, &shas, "each once, in commit order");
}
