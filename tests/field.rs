//! Field tests: the behaviour CONTRACT.md's "0.2 — additions" sharpens ("Correct in the
//! field"), each pinned by one scenario that a real deployment ran into.
//!
//! What the suite proves, through the real `polld` binary against real git, svn and hg
//! repositories on 127.0.0.1:
//!
//! - **No history floods**: a watched ref that appears while the poller knows no head at
//!   all (a `release/*` or tags-only poller before its first match, every watched branch
//!   deleted, an hg bookmark-only poller) reports its tip only, not 5,000 commits of
//!   ancestry; and `branches = "*"` (a string) means every branch.
//! - **Delivery lanes**: a poller whose changes the sink keeps refusing (5xx) or answers
//!   too slowly never holds up another poller's changes.
//! - **Acknowledged means sent**: a change the sink acknowledged is not sent again because
//!   the outbox could not be settled.
//! - **Config errors are config errors**: a jsonl `path` that is not a regular file is
//!   refused by `polld check` at its `file:line:col`; and no value `check` accepts (huge
//!   intervals, jitters, grace periods, timeouts, concurrency) panics `run`, `once` or a
//!   reload.
//! - **Reloads while a poll is in flight**: removing and re-adding a poller never polls
//!   it twice at once; changing its `type` leaves no cursor the new backend cannot read;
//!   a forced rerun pending when the poller restarts still happens.
//! - **Owner-only state**: everything under `state_dir` is 0700/0600 whatever the umask
//!   or the state dir's own mode.
//!
//! Every wait has a deadline and prints the daemon's stderr when it runs out. Each test
//! has its own temp dirs, ports and servers, so the tests run in parallel.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use polld_test_support::buildbot::WebhookReceiver;
use polld_test_support::hg::{HgRepo, build_dag, hg_poller};
use polld_test_support::svn::{SvnRepo, svn_poller};
use polld_test_support::tcp::Tcp;
use polld_test_support::*;
use serde_json::Value;

/// How long the daemon may take to come up, or to do one quick thing it was asked to.
const WAIT: Duration = Duration::from_secs(20);

/// Commits in the "big" repositories: a flood of their history is unmistakable.
const HISTORY: usize = 5_000;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// One request to the control endpoint (no token: these daemons listen on loopback
/// without `token_env`); (status, body), or why there was no answer.
fn try_http(port: u16, method: &str, path: &str) -> Result<(u16, String), String> {
    polld_test_support::http::request(port, method, path, &[], b"").map(|a| (a.status, a.body))
}

#[track_caller]
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    polld_test_support::http::control(port, method, path, None)
}

/// A config with a control endpoint on `port`, one-hour intervals, `sink` and `pollers`.
fn daemon_config(port: u16, daemon_extra: &str, sink: &str, pollers: &str) -> String {
    format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\n{daemon_extra}\n\
         [defaults]\ninterval = \"1h\"\njitter = \"0s\"\nat_launch = true\n\n{sink}\n{pollers}"
    )
}

const JSONL_SINK: &str = "[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n";

fn webhook_sink(url: &str, extra: &str) -> String {
    format!(
        "[sink]\ntype = \"webhook\"\nurl = {}\n{extra}",
        toml_str(url)
    )
}

/// `polld run`, once its control endpoint on `port` accepts connections.
fn start(polld: &Polld, port: u16) -> RunningPolld {
    let mut daemon = polld.spawn_run(&[]);
    daemon.wait_for(WAIT, "the control endpoint", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    daemon
}

/// A metric's value from `/metrics`, if the line is there.
fn metric(port: u16, line_prefix: &str) -> Option<f64> {
    let (_, metrics) = try_http(port, "GET", "/metrics").ok()?;
    metrics
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn polls_ok(port: u16, poller: &str) -> f64 {
    metric(
        port,
        &format!("polld_polls_total{{poller=\"{poller}\",result=\"ok\"}}"),
    )
    .unwrap_or(0.0)
}

/// Waits until every named poller has finished a good poll.
fn wait_first_polls(daemon: &mut RunningPolld, port: u16, names: &[&str]) {
    daemon.wait_for(WAIT, &format!("the first polls of {names:?}"), || {
        names.iter().all(|n| polls_ok(port, n) >= 1.0)
    });
}

/// The last `n` lines of a log, for failure messages.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `probe` every 100 ms until it returns `Ok`, failing after `timeout` (or as soon
/// as the daemon exits) with the last state `probe` described and the daemon's stderr.
#[track_caller]
fn wait_state<T>(
    daemon: &mut RunningPolld,
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe() {
            Ok(value) => return value,
            Err(state) => state,
        };
        if !daemon.is_running() {
            panic!(
                "polld run exited while waiting for {what}\nlast seen: {last}\nstderr:\n{}",
                tail(&daemon.stderr(), 80)
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\nlast seen: {last}\npolld run's stderr (tail):\n{}",
                tail(&daemon.stderr(), 80)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One poller's entry in `GET /status`.
fn status_of(port: u16, name: &str) -> Result<Value, String> {
    let (code, body) = try_http(port, "GET", "/status")?;
    if code != 200 {
        return Err(format!("GET /status: {code} {body}"));
    }
    let status: Value =
        serde_json::from_str(&body).map_err(|e| format!("/status is not JSON ({e}): {body}"))?;
    status["pollers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
        .ok_or_else(|| format!("/status has no poller {name}: {status}"))
}

/// A remote with an initial commit and then [`HISTORY`] more on `main` (written straight
/// into the bare remote: the tests move its refs there, as a push would).
fn big_remote() -> RemotePair {
    let pair = RemotePair::with_initial_commit();
    pair.remote.fast_import_commits("main", HISTORY);
    pair
}

/// "branch revision comments" of the first and last few records, for failure messages.
fn brief(records: &[Value]) -> String {
    let line = |r: &Value| {
        format!(
            "  {} {} {:?}",
            r["branch"],
            r["revision"].as_str().unwrap_or("?"),
            r["comments"].as_str().unwrap_or("?")
        )
    };
    if records.len() <= 6 {
        return records.iter().map(line).collect::<Vec<_>>().join("\n");
    }
    let mut out: Vec<String> = records[..3].iter().map(line).collect();
    out.push(format!("  ... {} more ...", records.len() - 6));
    out.extend(records[records.len() - 3..].iter().map(line));
    out.join("\n")
}

/// Asserts `records` are exactly `expected`, saying first how many there were (a flood
/// of thousands is summarised, not printed).
#[track_caller]
fn assert_exactly(records: &[Value], expected: &[Value], what: &str) {
    assert!(
        records.len() == expected.len(),
        "{what}: expected {} change(s), got {}:\n{}\nexpected:\n{}",
        expected.len(),
        records.len(),
        brief(records),
        brief(expected)
    );
    assert_changes(records, expected);
}

/// Runs `polld <args>` with umask 022, whatever the test process's umask.
fn run_with_umask_022(polld: &Polld, args: &[&str]) -> Outcome {
    let mut cmd = polld.command();
    cmd.args(args);
    // SAFETY: umask(2) is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    run_bounded(cmd)
}

// ---------------------------------------------------------------------------------------
// Test servers
// ---------------------------------------------------------------------------------------

/// One POST a [`Receiver`] got, and the status it answered.
#[derive(Debug, Clone)]
struct Hit {
    poller: String,
    id: String,
    revision: String,
    status: u16,
}

/// A webhook receiver that decides each answer from the JSON body: `decide` returns the
/// status and how long to wait before answering. Each request is answered on its own
/// thread, so a slow answer delays no other request. Stopped on drop.
struct Receiver {
    port: u16,
    server: Arc<tiny_http::Server>,
    stop: Arc<AtomicBool>,
    hits: Arc<Mutex<Vec<Hit>>>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    fn start(decide: impl Fn(&Value) -> (u16, Duration) + Send + Sync + 'static) -> Receiver {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1:0"));
        let port = server.server_addr().to_ip().expect("an IP address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let decide = Arc::new(decide);
        let thread = {
            let (server, stop, hits) = (server.clone(), stop.clone(), hits.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let mut request = match server.recv_timeout(Duration::from_millis(100)) {
                        Ok(Some(request)) => request,
                        Ok(None) => continue,
                        Err(_) => break,
                    };
                    let (decide, hits) = (decide.clone(), hits.clone());
                    std::thread::spawn(move || {
                        let mut body = Vec::new();
                        let _ = request.as_reader().read_to_end(&mut body);
                        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let (status, delay) = decide(&json);
                        let field = |k: &str| json[k].as_str().unwrap_or("").to_owned();
                        hits.lock().unwrap().push(Hit {
                            poller: field("poller"),
                            id: field("id"),
                            revision: field("revision"),
                            status,
                        });
                        std::thread::sleep(delay);
                        let _ = request.respond(
                            tiny_http::Response::from_string(format!("answer {status}"))
                                .with_status_code(status),
                        );
                    });
                }
            })
        };
        Receiver {
            port,
            server,
            stop,
            hits,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// "poller: status status ..." per poller, for failure messages.
    fn summary(&self) -> String {
        let mut by_poller: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for hit in self.hits() {
            by_poller
                .entry(hit.poller.clone())
                .or_default()
                .push(format!("{}@{:.8}", hit.status, hit.revision));
        }
        format!("{by_poller:?}")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `chattr +i` on files for as long as it lives; `chattr -i` on drop, so the temp dirs
/// can be deleted whatever happened. (Root ignores permission bits; not even root may
/// write an immutable file.)
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(paths: &[PathBuf]) -> Immutable {
        let mut guard = Immutable(Vec::new());
        for path in paths {
            let out = Command::new("chattr").arg("+i").arg(path).output().unwrap();
            assert!(
                out.status.success(),
                "chattr +i {path:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            guard.0.push(path.clone());
        }
        guard
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = Command::new("chattr").arg("-i").arg(path).output();
        }
    }
}

// ---------------------------------------------------------------------------------------
// No history floods
// ---------------------------------------------------------------------------------------

#[test]
fn release_glob_first_branch_reports_its_tip_only() {
    let pair = big_remote();
    let repo = pair.repo();
    let polld = Polld::new(&git_poller("app", &repo, "branches = [\"release/*\"]\n"));
    assert!(polld.once_ok().is_empty(), "the first poll reports nothing");

    let tip = pair.remote.rev_parse("main");
    pair.remote.branch_at("release/1", &tip);
    let records = polld.once_ok();
    assert_exactly(
        &records,
        &[pair.remote.expected("app", &repo, "release/1", &tip)],
        "the first release/* branch of a poller that knew no head reports its tip only",
    );
}

#[test]
fn tags_only_poller_reports_each_new_tags_commit_once() {
    let pair = big_remote();
    let repo = pair.repo();
    let r = &pair.remote;
    let polld = Polld::new(&git_poller("app", &repo, "branches = []\ntags = true\n"));
    assert!(polld.once_ok().is_empty(), "the first poll reports nothing");

    let tip = r.rev_parse("main");
    r.tag("v1.0", &tip);
    assert_exactly(
        &polld.once_ok(),
        &[r.expected("app", &repo, "refs/tags/v1.0", &tip)],
        "the first tag of a tags-only poller reports its commit only",
    );

    // v1.0 is a known head now, so the next tag is an ordinary new ref: it reports what
    // no known head reaches (CONTRACT 0.2: "Otherwise a new ref reports only commits no
    // known head reaches (as before)"): the three commits after v1.0, ending at v1.1's.
    let three = r.fast_import_commits("main", 3);
    let v11 = three[2].clone();
    r.tag("v1.1", &v11);
    assert_exactly(
        &polld.once_ok(),
        &r.expected_many("app", &repo, "refs/tags/v1.1", &three),
        "a tag after a known tag reports the commits no known head reaches",
    );

    r.tag("v1.1-final", &v11);
    assert_exactly(
        &polld.once_ok(),
        &[],
        "a second tag on a commit already reported reports nothing",
    );
}

#[test]
fn all_branches_deleted_then_a_new_one_reports_its_tip_only() {
    let pair = big_remote();
    let repo = pair.repo();
    let r = &pair.remote;
    r.branch_at("feature/1", "main~100");
    let polld = Polld::new(&git_poller("app", &repo, "branches = [\"feature/*\"]\n"));
    assert!(polld.once_ok().is_empty(), "the first poll reports nothing");

    r.git(&["branch", "-D", "feature/1"]);
    assert_exactly(&polld.once_ok(), &[], "deleting the only branch");

    let tip = r.rev_parse("main");
    r.branch_at("feature/2", &tip);
    assert_exactly(
        &polld.once_ok(),
        &[r.expected("app", &repo, "feature/2", &tip)],
        "a branch appearing after every watched branch was deleted reports its tip only",
    );
}

#[test]
fn hg_bookmark_only_poller_reports_the_bookmarks_head_only() {
    let dir = tempfile::Builder::new()
        .prefix("polld-field-hg")
        .tempdir()
        .unwrap();
    let dag = build_dag(&dir.path().join("dag"), HISTORY);
    // A repository made by pulling (as tests/hg.rs does), not the debugbuilddag scratch.
    let repo = HgRepo::init(&dir.path().join("remote"));
    repo.hg(&["pull", "-q", &dag.path.display().to_string()]);
    let repository = repo.path.display().to_string();
    let polld = Polld::new(&hg_poller(
        "app",
        &repository,
        "branches = []\nbookmarks = [\"@\"]\n",
    ));
    assert!(polld.once_ok().is_empty(), "the first poll reports nothing");

    let tip = repo.node("tip");
    repo.bookmark("@", &tip);
    let records = polld.once_ok();
    let expected = repo.expected("app", &repository, "@", &tip);
    assert!(
        records.len() == 1,
        "a bookmark appearing for a bookmark-only poller that knew no head reports its head only; got {} changes:\n{}",
        records.len(),
        brief(&records)
    );
    assert_eq!(records[0], expected);
}

#[test]
fn branches_star_string_means_every_branch() {
    let pair = RemotePair::with_initial_commit();
    let w = &pair.work;
    let base = w.head();
    let polld = Polld::new(&git_poller("app", &pair.repo(), "branches = \"*\"\n"));
    polld.run(&["check"]).expect_code(0);
    assert!(polld.once_ok().is_empty(), "the first poll reports nothing");

    let m = w.commit("m", "m\n", "M on main");
    w.checkout_new("other");
    w.reset_hard(&base);
    let o = w.commit("o", "o\n", "O on other");
    w.push(&["main", "other"]);
    let mut records = polld.once_ok();
    records.sort_by(|a, b| a["branch"].to_string().cmp(&b["branch"].to_string()));
    let repo = pair.repo();
    assert_exactly(
        &records,
        &[
            w.expected("app", &repo, "main", &m),
            w.expected("app", &repo, "other", &o),
        ],
        "branches = \"*\" watches every branch",
    );
}

// ---------------------------------------------------------------------------------------
// Delivery lanes
// ---------------------------------------------------------------------------------------

/// Four pollers a, b, c, d on their own repositories, delivering to `receiver` through
/// a webhook sink (plus `sink_extra`). `a` gets a commit and is polled until the
/// receiver has seen it; then b, c and d get theirs. Returns the daemon, b/c/d's shas,
/// and the remotes, which must outlive the daemon's polls.
fn lanes_scenario(
    receiver: &Receiver,
    sink_extra: &str,
) -> (Polld, RunningPolld, Vec<(String, String)>, Vec<RemotePair>) {
    let names = ["a", "b", "c", "d"];
    let pairs: Vec<RemotePair> = names
        .iter()
        .map(|_| RemotePair::with_initial_commit())
        .collect();
    let pollers: String = names
        .iter()
        .zip(&pairs)
        .map(|(n, p)| git_poller(n, &p.repo(), ""))
        .collect();
    let port = free_port();
    let polld = Polld::with_config(&daemon_config(
        port,
        "",
        &webhook_sink(&receiver.url(), sink_extra),
        &pollers,
    ));
    let mut daemon = start(&polld, port);
    wait_first_polls(&mut daemon, port, &names);

    pairs[0].work.commit("a.txt", "a\n", "a's change");
    pairs[0].work.push(&["main"]);
    assert_eq!(http(port, "POST", "/poll/a").0, 202);
    wait_state(&mut daemon, WAIT, "the receiver to see a's change", || {
        if receiver.hits().iter().any(|h| h.poller == "a") {
            Ok(())
        } else {
            Err(receiver.summary())
        }
    });

    let mut others = Vec::new();
    for (name, pair) in names.iter().zip(&pairs).skip(1) {
        let sha = pair
            .work
            .commit(&format!("{name}.txt"), "x\n", &format!("{name}'s change"));
        pair.work.push(&["main"]);
        others.push((name.to_string(), sha));
    }
    assert_eq!(http(port, "POST", "/poll").0, 202);
    (polld, daemon, others, pairs)
}

/// Whether the receiver answered 200 to each of `changes` (poller, sha).
fn all_acknowledged(receiver: &Receiver, changes: &[(String, String)]) -> bool {
    let hits = receiver.hits();
    changes.iter().all(|(poller, sha)| {
        hits.iter()
            .any(|h| &h.poller == poller && &h.revision == sha && h.status == 200)
    })
}

#[test]
fn a_failing_poller_does_not_hold_up_the_others() {
    let receiver = Receiver::start(|change| {
        let status = if change["poller"] == "a" { 500 } else { 200 };
        (status, Duration::ZERO)
    });
    let (_polld, mut daemon, others, _remotes) = lanes_scenario(&receiver, "");
    wait_state(
        &mut daemon,
        Duration::from_secs(20),
        "b's, c's and d's changes acknowledged while a's keep failing (and a retried at least twice)",
        || {
            let a_posts = receiver.hits().iter().filter(|h| h.poller == "a").count();
            if all_acknowledged(&receiver, &others) && a_posts >= 3 {
                Ok(())
            } else {
                Err(format!(
                    "receiver saw (status@revision per poller): {}",
                    receiver.summary()
                ))
            }
        },
    );
    assert!(
        receiver
            .hits()
            .iter()
            .all(|h| h.poller != "a" || h.status == 500),
        "a's changes only ever got 500: {}",
        receiver.summary()
    );
}

#[test]
fn a_slow_receiver_for_one_poller_does_not_hold_up_the_others() {
    let receiver = Receiver::start(|change| {
        if change["poller"] == "a" {
            (200, Duration::from_secs(10))
        } else {
            (200, Duration::ZERO)
        }
    });
    let (_polld, mut daemon, others, _remotes) = lanes_scenario(&receiver, "timeout = \"2s\"\n");
    wait_state(
        &mut daemon,
        Duration::from_secs(20),
        "b's, c's and d's changes while a's receiver takes 10 s per answer (sink timeout 2 s)",
        || {
            if all_acknowledged(&receiver, &others) {
                Ok(())
            } else {
                Err(format!(
                    "receiver saw (status@revision per poller): {}",
                    receiver.summary()
                ))
            }
        },
    );
}

// ---------------------------------------------------------------------------------------
// Acknowledged means sent
// ---------------------------------------------------------------------------------------

#[test]
fn sink_acknowledged_but_unsettled_is_not_resent() {
    let answer = Arc::new(AtomicU16::new(503));
    let receiver = {
        let answer = answer.clone();
        Receiver::start(move |_| (answer.load(Ordering::SeqCst), Duration::ZERO))
    };
    let pair = RemotePair::with_initial_commit();
    let port = free_port();
    let polld = Polld::with_config(&daemon_config(
        port,
        "",
        &webhook_sink(&receiver.url(), ""),
        &git_poller("app", &pair.repo(), ""),
    ));
    let mut daemon = start(&polld, port);
    wait_first_polls(&mut daemon, port, &["app"]);

    let sha = pair.work.commit("a.txt", "a\n", "acknowledged once");
    pair.work.push(&["main"]);
    let id = format!("app:main:{sha}");
    assert_eq!(http(port, "POST", "/poll/app").0, 202);
    wait_state(&mut daemon, WAIT, "a 503 for the change", || {
        if receiver
            .hits()
            .iter()
            .any(|h| h.id == id && h.status == 503)
        {
            Ok(())
        } else {
            Err(receiver.summary())
        }
    });

    // The state can no longer be written: the outbox cannot be settled. Only the
    // database and its WAL are made immutable: the -shm file is mmapped, and an
    // immutable mapping would kill polld with SIGBUS on its next write (a test of the
    // kernel, not of polld).
    let state = polld.path("state");
    let files: Vec<PathBuf> = ["state.db", "state.db-wal"]
        .iter()
        .map(|f| state.join(f))
        .filter(|p| p.exists())
        .collect();
    let guard = Immutable::set(&files);
    answer.store(200, Ordering::SeqCst);

    let posts_of = |receiver: &Receiver| -> Vec<u16> {
        receiver
            .hits()
            .iter()
            .filter(|h| h.id == id)
            .map(|h| h.status)
            .collect()
    };
    wait_state(
        &mut daemon,
        WAIT,
        "the change to be sent again now that the receiver answers 200",
        || {
            let statuses = posts_of(&receiver);
            if statuses.contains(&200) {
                Ok(())
            } else {
                Err(format!("POSTs of {id}: {statuses:?}"))
            }
        },
    );
    let window = Instant::now() + Duration::from_secs(60);
    while Instant::now() < window {
        let statuses = posts_of(&receiver);
        let first_ok = statuses.iter().position(|&s| s == 200).unwrap();
        assert!(
            statuses.len() == first_ok + 1,
            "the receiver acknowledged {id} ({statuses:?} so far), yet polld sent it again because it could not settle its outbox\npolld run's stderr (tail):\n{}",
            tail(&daemon.stderr(), 40)
        );
        assert!(
            daemon.is_running(),
            "polld run exited while its state was read-only\nstderr:\n{}",
            tail(&daemon.stderr(), 80)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(guard);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        daemon.is_running(),
        "polld run exited once its state was writable again\nstderr:\n{}",
        tail(&daemon.stderr(), 80)
    );
}

// ---------------------------------------------------------------------------------------
// Config errors are config errors
// ---------------------------------------------------------------------------------------

#[test]
fn jsonl_path_that_is_not_a_regular_file_is_a_config_error() {
    let pair = RemotePair::with_initial_commit();
    let mut failures = Vec::new();
    for (what, path) in [
        ("a FIFO", "changes.fifo"),
        ("/dev/null", "/dev/null"),
        ("a directory", "changes.d"),
    ] {
        let text = format!(
            "{PREAMBLE}[sink]\ntype = \"jsonl\"\npath = {}\n\n{}",
            toml_str(path),
            git_poller("app", &pair.repo(), "")
        );
        let line = text
            .lines()
            .position(|l| l.starts_with("path = "))
            .expect("the config has a path line")
            + 1;
        let polld = Polld::with_config(&text);
        match what {
            "a FIFO" => {
                let out = Command::new("mkfifo")
                    .arg(polld.path(path))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "mkfifo: {out:?}");
            }
            "a directory" => std::fs::create_dir(polld.path(path)).unwrap(),
            _ => {}
        }
        let out = polld.run(&["check"]);
        let position = format!("pollers.toml:{line}:");
        if out.code != Some(2) || !out.stderr.contains(&position) {
            failures.push(format!(
                "jsonl path = {what}: expected exit 2 and `{position}COL:` (the path line) on stderr\n{}",
                out.describe()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Whether `text` holds `pollers.toml:LINE:COL:`.
fn has_position(text: &str) -> bool {
    text.match_indices("pollers.toml:").any(|(at, m)| {
        let rest = &text[at + m.len()..];
        let mut parts = rest.splitn(3, ':');
        let (line, col) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        parts.next().is_some()
            && !line.is_empty()
            && line.bytes().all(|b| b.is_ascii_digit())
            && !col.is_empty()
            && col.bytes().all(|b| b.is_ascii_digit())
    })
}

/// One extreme value: the config text around it, given the listen port.
struct Extreme {
    name: &'static str,
    daemon: &'static str,
    sink: bool,
    poller: &'static str,
}

const EXTREMES: [Extreme; 7] = [
    Extreme {
        name: "interval = \"100y\"",
        daemon: "",
        sink: false,
        poller: "interval = \"100y\"\n",
    },
    Extreme {
        name: "interval = 9000000000000",
        daemon: "",
        sink: false,
        poller: "interval = 9000000000000\n",
    },
    Extreme {
        name: "jitter = \"50y\", interval = \"100y\"",
        daemon: "",
        sink: false,
        poller: "interval = \"100y\"\njitter = \"50y\"\n",
    },
    Extreme {
        name: "[daemon] max_concurrent_polls = 9000000000000000000",
        daemon: "max_concurrent_polls = 9000000000000000000\n",
        sink: false,
        poller: "",
    },
    Extreme {
        name: "[daemon] shutdown_grace = \"100y\"",
        daemon: "shutdown_grace = \"100y\"\n",
        sink: false,
        poller: "",
    },
    Extreme {
        name: "webhook sink timeout = \"100y\"",
        daemon: "",
        sink: true,
        poller: "",
    },
    Extreme {
        name: "interval = 9223372036854775807",
        daemon: "",
        sink: false,
        poller: "interval = 9223372036854775807\n",
    },
];

fn extreme_config(x: Option<&Extreme>, port: u16, repo: &str, hook: &str) -> String {
    let sink = match x {
        Some(x) if x.sink => webhook_sink(hook, "timeout = \"100y\"\n"),
        _ => webhook_sink(hook, ""),
    };
    daemon_config(
        port,
        x.map_or("", |x| x.daemon),
        &sink,
        &git_poller("app", repo, x.map_or("", |x| x.poller)),
    )
}

/// The panic message in a log (the line after "panicked at"), else its last lines.
fn why(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    match lines.iter().position(|l| l.contains("panicked at")) {
        Some(i) => format!(
            "panic: {} {}",
            lines[i].trim(),
            lines.get(i + 1).map_or("", |l| l.trim())
        ),
        None => tail(stderr, 5),
    }
}

/// `check`; if it accepts the value, `run` (up 3 s, /healthz, SIGTERM) and then `once`
/// delivering one new commit through the sink: what happened, or every way it failed.
fn extreme_at_start(x: &Extreme, hook: &str) -> Result<String, String> {
    let pair = RemotePair::with_initial_commit();
    let port = free_port();
    let polld = Polld::with_config(&extreme_config(Some(x), port, &pair.repo(), hook));
    let check = polld.run(&["check"]);
    match check.code {
        Some(2) if has_position(&check.stderr) => {
            return Ok(format!(
                "check refuses: {}",
                check.stderr.lines().next().unwrap_or("")
            ));
        }
        Some(2) => {
            return Err(format!(
                "check exits 2 without pollers.toml:LINE:COL:\n{}",
                check.describe()
            ));
        }
        Some(0) => {}
        _ => return Err(format!("check neither 0 nor 2\n{}", check.describe())),
    }
    let mut problems = Vec::new();
    let mut daemon = polld.spawn_run(&[]);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) && daemon.is_running() {
        std::thread::sleep(Duration::from_millis(50));
    }
    if daemon.is_running() {
        match try_http(port, "GET", "/healthz") {
            Ok((200, _)) => {}
            other => problems.push(format!("run up 3 s but /healthz answers {other:?}")),
        }
        daemon.signal(libc::SIGTERM);
        match daemon.wait_exit(Duration::from_secs(20)) {
            Some(status) if status.code() == Some(0) => {}
            Some(status) => problems.push(format!(
                "SIGTERM: run exited {status} ({})",
                why(&daemon.stderr())
            )),
            None => problems.push("SIGTERM: run still running after 20 s".to_owned()),
        }
    } else {
        problems.push(format!(
            "run exited ({:?}) within 3 s ({})",
            daemon.wait_exit(Duration::ZERO).and_then(|s| s.code()),
            why(&daemon.stderr())
        ));
    }
    pair.work.commit("x.txt", "x\n", "for once");
    pair.work.push(&["main"]);
    let once = polld.once(&[]);
    let once_note = match once.code {
        Some(code @ (0 | 1)) => format!("once exit {code}"),
        code => {
            problems.push(format!(
                "once exits {code:?} (101 = panic) ({})",
                why(&once.stderr)
            ));
            format!("once exit {code:?}")
        }
    };
    if problems.is_empty() {
        Ok(format!(
            "check accepts; run up 3 s, /healthz 200, SIGTERM exit 0; {once_note}"
        ))
    } else {
        Err(format!(
            "check accepts, but: {}; {once_note}",
            problems.join("; ")
        ))
    }
}

/// A sane `run`, then the config rewritten with the extreme value and SIGHUP: the
/// daemon must still run and answer /healthz.
fn extreme_on_reload(x: &Extreme, hook: &str) -> Result<String, String> {
    let pair = RemotePair::with_initial_commit();
    let repo = &pair.repo();
    let port = free_port();
    let polld = Polld::with_config(&extreme_config(None, port, repo, hook));
    let mut daemon = polld.spawn_run(&[]);
    // Its first poll done, it is surely past installing its SIGHUP handler (a SIGHUP
    // before that would end it by default, which is not what this test is about).
    let deadline = Instant::now() + WAIT;
    while polls_ok(port, "app") < 1.0 {
        if Instant::now() >= deadline || !daemon.is_running() {
            return Err(format!(
                "the sane daemon did not come up and poll\n{}",
                tail(&daemon.stderr(), 15)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let reloads = |d: &RunningPolld| {
        let stderr = d.stderr();
        stderr.matches("config reloaded").count() + stderr.matches("reload refused").count()
    };
    let before = reloads(&daemon);
    polld.write_config(&extreme_config(Some(x), port, repo, hook));
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(&daemon) == before && daemon.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    if !daemon.is_running() {
        return Err(format!(
            "SIGHUP: run exited ({:?}) ({})",
            daemon.wait_exit(Duration::ZERO).and_then(|s| s.code()),
            why(&daemon.stderr())
        ));
    }
    let outcome = if daemon.stderr().contains("reload refused") {
        "reload refused"
    } else if reloads(&daemon) > before {
        "reloaded"
    } else {
        "no reload logged within 10 s"
    };
    match try_http(port, "GET", "/healthz") {
        Ok((200, _)) => Ok(format!("SIGHUP: {outcome}; still running, /healthz 200")),
        other => Err(format!(
            "SIGHUP ({outcome}): still running but /healthz answers {other:?}\n{}",
            tail(&daemon.stderr(), 15)
        )),
    }
}

#[test]
fn extreme_config_values_never_panic() {
    let hook = WebhookReceiver::start(&[], 200);
    let _ = polld_bin();
    type Row = (&'static str, Result<String, String>, Result<String, String>);
    let results: Vec<Row> = std::thread::scope(|scope| {
        let rows: Vec<_> = EXTREMES
            .iter()
            .map(|x| {
                let hook = hook.url();
                scope.spawn(move || {
                    (
                        x.name,
                        extreme_at_start(x, &hook),
                        extreme_on_reload(x, &hook),
                    )
                })
            })
            .collect();
        rows.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let mut table = String::new();
    let mut failed = 0;
    for (name, at_start, on_reload) in &results {
        for (when, result) in [("start ", at_start), ("reload", on_reload)] {
            let (mark, text) = match result {
                Ok(text) => ("ok  ", text),
                Err(text) => {
                    failed += 1;
                    ("FAIL", text)
                }
            };
            table.push_str(&format!("{mark} {name} [{when}]: {text}\n"));
        }
    }
    eprintln!("{table}");
    assert!(
        failed == 0,
        "{failed} extreme value check(s) failed:\n{table}"
    );
}

// ---------------------------------------------------------------------------------------
// Reloads while a poll is in flight
// ---------------------------------------------------------------------------------------

#[test]
fn removing_and_readding_a_poller_while_its_poll_hangs_never_polls_twice() {
    let silent = Tcp::silent();
    let other = RemotePair::with_initial_commit();
    let port = free_port();
    let p = git_poller("p", &format!("git://127.0.0.1:{}/r.git", silent.port), "");
    let keep = git_poller("other", &other.repo(), "");
    let with_p = daemon_config(port, "", JSONL_SINK, &format!("{keep}{p}"));
    let without_p = daemon_config(port, "", JSONL_SINK, &keep);
    let polld = Polld::with_config(&with_p);
    let mut daemon = start(&polld, port);
    daemon.wait_for(WAIT, "p's first poll to connect", || {
        silent.connections() >= 1
    });

    polld.write_config(&without_p);
    let (code, body) = http(port, "POST", "/reload");
    assert_eq!(code, 200, "reload without p: {body}");
    std::thread::sleep(Duration::from_secs(1));
    polld.write_config(&with_p);
    let (code, body) = http(port, "POST", "/reload");
    assert_eq!(code, 200, "reload with p again: {body}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        silent.connections(),
        1,
        "p was removed and added back while its first poll hung: it must not poll again \
         while that poll is in flight\npolld run's stderr (tail):\n{}",
        tail(&daemon.stderr(), 40)
    );
    assert!(daemon.is_running());
}

#[test]
fn changing_type_while_a_poll_is_in_flight_leaves_a_cursor_the_new_backend_reads() {
    let pair = RemotePair::with_initial_commit();
    let git_daemon = GitDaemon::start(&pair.dir.path().join("remote"));
    let proxy = Tcp::holding_proxy(git_daemon.port);
    let svn = SvnRepo::new();
    svn.put(&[("README", "svn\n")], "Initial svn revision");
    let port = free_port();
    let as_git = git_poller("p", &format!("git://127.0.0.1:{}/app.git", proxy.port), "");
    let polld = Polld::with_config(&daemon_config(port, "", JSONL_SINK, &as_git));
    let mut daemon = start(&polld, port);
    daemon.wait_for(WAIT, "the git poll to be held at the proxy", || {
        proxy.connections() >= 1
    });

    polld.write_config(&daemon_config(
        port,
        "",
        JSONL_SINK,
        &svn_poller("p", &svn.url(), ""),
    ));
    let (code, body) = http(port, "POST", "/reload");
    assert_eq!(code, 200, "reload to type svn: {body}");
    proxy.release();

    // The git poll finishes; then p, now svn, must poll without tripping on a git cursor.
    let mut last_force = Instant::now() - Duration::from_secs(10);
    wait_state(
        &mut daemon,
        WAIT,
        "p, now svn, to poll successfully with an svn cursor",
        || {
            if last_force.elapsed() >= Duration::from_secs(3) {
                last_force = Instant::now();
                let _ = try_http(port, "POST", "/poll/p");
            }
            let status = status_of(port, "p")?;
            let svn_cursor = status["cursor"].get("revision").is_some();
            if status["last_error"].is_null() && svn_cursor && status["last_poll"].is_number() {
                Ok(())
            } else {
                Err(format!("status of p: {status}"))
            }
        },
    );

    let rev = svn
        .put(&[("after.txt", "after\n")], "after the switch to svn")
        .to_string();
    assert_eq!(http(port, "POST", "/poll/p").0, 202);
    let jsonl = polld.path("changes.jsonl");
    wait_state(&mut daemon, WAIT, "the svn change in the sink", || {
        let (records, _) = read_jsonl(&jsonl);
        if records
            .iter()
            .any(|r| r["vcs"] == "svn" && r["revision"] == rev.as_str())
        {
            Ok(())
        } else {
            Err(format!(
                "records: {records:?}; status of p: {:?}",
                status_of(port, "p")
            ))
        }
    });
}

#[test]
fn a_forced_rerun_survives_a_restart_of_the_poller() {
    let pair = RemotePair::with_initial_commit();
    let git_daemon = GitDaemon::start(&pair.dir.path().join("remote"));
    let proxy = Tcp::holding_proxy(git_daemon.port);
    let port = free_port();
    let repo = format!("git://127.0.0.1:{}/app.git", proxy.port);
    // A poller whose branches match nothing: each of its polls is one listing, one
    // connection (no fetch), so the proxy counts polls. A day-long interval keeps any
    // regular poll out of the way.
    let before = git_poller("p", &repo, "branches = [\"nosuch\"]\ninterval = \"24h\"\n");
    let after = git_poller(
        "p",
        &repo,
        "branches = [\"nosuch\"]\ninterval = \"24h\"\ncategory = \"x\"\nat_launch = false\n",
    );
    let polld = Polld::with_config(&daemon_config(port, "", JSONL_SINK, &before));
    let mut daemon = start(&polld, port);
    daemon.wait_for(WAIT, "the first poll to be held at the proxy", || {
        proxy.connections() >= 1
    });
    assert_eq!(http(port, "POST", "/poll/p").0, 202, "the forced rerun");
    polld.write_config(&daemon_config(port, "", JSONL_SINK, &after));
    let (code, body) = http(port, "POST", "/reload");
    assert_eq!(code, 200, "reload: {body}");
    assert!(body.contains("\"p\""), "p restarts: {body}");
    proxy.release();
    daemon.wait_for(
        Duration::from_secs(10),
        "the rerun forced during the held poll (a second connection)",
        || proxy.connections() >= 2,
    );
}

// ---------------------------------------------------------------------------------------
// Owner-only state
// ---------------------------------------------------------------------------------------

#[test]
fn state_dir_is_owner_only_whatever_existed_before() {
    let pair = RemotePair::with_initial_commit();
    let polld = Polld::new(&git_poller("app", &pair.repo(), ""));
    let state = polld.path("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();

    run_with_umask_022(&polld, &["once"]).expect_code(0);
    pair.work.commit("a.txt", "a\n", "fetched into the mirror");
    pair.work.push(&["main"]);
    let second = run_with_umask_022(&polld, &["once"]);
    second.expect_code(0);
    assert_eq!(second.records().len(), 1, "{}", second.describe());

    let mut offenders = Vec::new();
    let mut checked = 0;
    let mut stack = vec![state.clone()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            continue;
        }
        checked += 1;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            offenders.push(format!("{:o} {}", mode, path.display()));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    assert!(
        polld.path("state/mirrors/app").is_dir(),
        "the mirror exists"
    );
    assert!(
        offenders.is_empty(),
        "{} of {checked} paths under the state dir are open to group or others:\n{}",
        offenders.len(),
        offenders.join("\n")
    );
}
