//! End-to-end: operating `polld run` through its control endpoint and signals.
//!
//! Every test runs a real daemon on a free loopback port against real git repositories
//! and talks to it over HTTP the way curl or Prometheus would.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use polld_test_support::*;
use serde_json::Value;

const TOKEN: &str = "t0ps3cret-token";

fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    polld_test_support::http::control(port, method, path, token)
}

/// A daemon with a control endpoint, one-hour intervals and a jsonl sink.
struct Setup {
    polld: Polld,
    port: u16,
    daemon: RunningPolld,
}

fn start(pollers: &str, daemon_extra: &str) -> Setup {
    let port = free_port();
    let polld = Polld::with_config(&config_text(port, daemon_extra, pollers));
    let mut daemon = polld.spawn_run(&[("POLLD_TOKEN", TOKEN)]);
    daemon.wait_for(Duration::from_secs(20), "the control endpoint", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Setup {
        polld,
        port,
        daemon,
    }
}

fn config_text(port: u16, daemon_extra: &str, pollers: &str) -> String {
    format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\ntoken_env = \"POLLD_TOKEN\"\n{daemon_extra}\n\
         [defaults]\ninterval = \"1h\"\n\n[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n\n{pollers}"
    )
}

impl Setup {
    fn post(&self, path: &str) -> (u16, String) {
        http(self.port, "POST", path, Some(TOKEN))
    }

    fn revisions(&self) -> Vec<String> {
        let (records, _) = read_jsonl(&self.polld.path("changes.jsonl"));
        records
            .iter()
            .map(|r| r["revision"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Waits until the first poll of every poller has recorded its heads.
    fn wait_first_polls(&mut self, names: &[&str]) {
        let port = self.port;
        self.daemon
            .wait_for(Duration::from_secs(20), "the first polls", || {
                let (_, metrics) = http(port, "GET", "/metrics", None);
                names.iter().all(|n| {
                    metrics.contains(&format!(
                        "polld_polls_total{{poller=\"{n}\",result=\"ok\"}}"
                    ))
                })
            });
    }

    fn metric(&self, line_prefix: &str) -> Option<f64> {
        let (_, metrics) = http(self.port, "GET", "/metrics", None);
        metrics
            .lines()
            .find(|l| l.starts_with(line_prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

#[test]
fn health_metrics_and_status_answer() {
    let pair = RemotePair::with_initial_commit();
    let mut s = start(&git_poller("app", &pair.repo(), ""), "");
    s.wait_first_polls(&["app"]);
    assert_eq!(http(s.port, "GET", "/healthz", None), (200, "ok\n".into()));

    let polls = |s: &Setup| {
        s.metric("polld_polls_total{poller=\"app\",result=\"ok\"}")
            .unwrap_or(0.0)
    };
    let before = polls(&s);
    let sha = pair.work.commit("a.txt", "a\n", "one");
    pair.work.push(&["main"]);
    assert_eq!(s.post("/poll/app").0, 202);
    wait_until(Duration::from_secs(10), "the poll to count", || {
        polls(&s) > before
    });
    wait_until(Duration::from_secs(10), "the change", || {
        s.revisions() == [sha.clone()]
    });
    assert_eq!(s.metric("polld_changes_total{poller=\"app\"}"), Some(1.0));
    assert_eq!(
        s.metric("polld_deliveries_pending{poller=\"app\"}"),
        Some(0.0)
    );
    assert!(
        s.metric("polld_last_success_timestamp_seconds{poller=\"app\"}")
            .unwrap_or(0.0)
            > 1e9
    );
    assert!(
        s.metric("polld_poll_duration_seconds_count{poller=\"app\"}")
            .unwrap_or(0.0)
            >= 2.0
    );

    let (code, body) = http(s.port, "GET", "/status", None);
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    let app = &status["pollers"][0];
    assert_eq!(app["name"], "app");
    assert_eq!(app["type"], "git");
    assert_eq!(app["cursor"]["refs"]["refs/heads/main"], sha.as_str());
    for key in ["repo", "last_poll", "last_error", "pending", "dead_letters"] {
        assert!(app.get(key).is_some(), "status lacks {key}: {app}");
    }
}

#[test]
fn a_poke_finds_a_commit_at_once_despite_an_hour_long_interval() {
    let pair = RemotePair::with_initial_commit();
    let mut s = start(&git_poller("app", &pair.repo(), ""), "");
    s.wait_first_polls(&["app"]);
    let sha = pair.work.commit("a.txt", "a\n", "poke me");
    pair.work.push(&["main"]);
    let poked = Instant::now();
    assert_eq!(s.post("/poll/app").0, 202);
    // The issue asks for "within 1 s"; the bound is looser so a loaded CI machine does
    // not flake, and the latency is printed.
    wait_until(Duration::from_secs(5), "the poked change", || {
        s.revisions() == [sha.clone()]
    });
    eprintln!("poke to change in the sink: {:?}", poked.elapsed());

    let (code, body) = s.post("/poll/nosuch");
    assert_eq!(code, 404);
    assert!(body.contains("nosuch"), "{body}");
    assert_eq!(s.post("/poll").0, 202);
}

#[test]
fn notify_matches_the_repo_however_it_is_spelled() {
    let app = RemotePair::with_initial_commit();
    let lib = RemotePair::with_initial_commit();
    let pollers = format!(
        "{}{}{}",
        git_poller("app", &app.repo(), ""),
        git_poller("app-release", &app.repo(), "branches = [\"release\"]\n"),
        git_poller("lib", &lib.repo(), "")
    );
    let mut s = start(&pollers, "");
    s.wait_first_polls(&["app", "app-release", "lib"]);
    let polls = |s: &Setup, n: &str| {
        s.metric(&format!(
            "polld_polls_total{{poller=\"{n}\",result=\"ok\"}}"
        ))
        .unwrap_or(0.0)
    };
    let lib_polls = polls(&s, "lib");

    // The pollers say `/tmp/.../app.git`; the hook says `file:///tmp/.../app/`.
    let spelled = format!("file://{}/", app.repo().trim_end_matches(".git"));
    let (code, body) = s.post(&format!("/notify?repo={spelled}"));
    assert_eq!(code, 202, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["polling"], serde_json::json!(["app", "app-release"]));
    wait_until(Duration::from_secs(10), "both app pollers to poll", || {
        polls(&s, "app") >= 2.0 && polls(&s, "app-release") >= 2.0
    });
    assert_eq!(polls(&s, "lib"), lib_polls, "lib was not poked");

    assert_eq!(
        s.post("/notify?repo=https://elsewhere.example/x.git").0,
        404
    );
    assert_eq!(s.post("/notify").0, 400);
}

#[test]
fn posts_need_the_token() {
    let pair = RemotePair::with_initial_commit();
    let s = start(&git_poller("app", &pair.repo(), ""), "");
    for path in ["/poll", "/poll/app", "/notify?repo=x", "/reload"] {
        assert_eq!(
            http(s.port, "POST", path, None).0,
            401,
            "{path} without a token"
        );
        assert_eq!(
            http(s.port, "POST", path, Some("wrong")).0,
            401,
            "{path} with a wrong token"
        );
    }
    assert_eq!(http(s.port, "POST", "/poll", Some(TOKEN)).0, 202);
    // GETs are open: probes and scrapers carry no token.
    assert_eq!(http(s.port, "GET", "/healthz", None).0, 200);
    let long = format!("/notify?repo={}", "x".repeat(5000));
    assert_eq!(http(s.port, "POST", &long, Some(TOKEN)).0, 414);
}

#[test]
fn a_missing_token_variable_stops_polld_at_start() {
    let port = free_port();
    let polld = Polld::with_config(&config_text(port, "", ""));
    let out = polld.run(&["run"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("POLLD_TOKEN"), "{}", out.describe());
}

#[test]
fn sighup_adds_removes_and_changes_pollers_without_losing_or_repeating_a_change() {
    let one = RemotePair::with_initial_commit();
    let two = RemotePair::with_initial_commit();
    let three = RemotePair::with_initial_commit();
    let before = format!(
        "{}{}",
        git_poller("one", &one.repo(), "interval = \"1s\"\n"),
        git_poller("two", &two.repo(), "interval = \"1s\"\n")
    );
    let mut s = start(&before, "");
    s.wait_first_polls(&["one", "two"]);

    let one_a = one.work.commit("a", "a\n", "one a");
    one.work.push(&["main"]);
    let two_a = two.work.commit("a", "a\n", "two a");
    two.work.push(&["main"]);
    wait_until(
        Duration::from_secs(10),
        "the changes before the reload",
        || s.revisions().len() == 2,
    );

    // Commits made before the reload that only the reloaded daemon can find.
    let one_b = one.work.commit("b", "b\n", "one b");
    one.work.push(&["main"]);
    // `one` unchanged, `two` removed, `three` added, and `one` gains a sibling poller.
    let after = format!(
        "{}{}{}",
        git_poller("one", &one.repo(), "interval = \"1s\"\n"),
        git_poller("three", &three.repo(), "interval = \"1s\"\n"),
        git_poller("one-slow", &one.repo(), "interval = \"2s\"\n")
    );
    s.polld.write_config(&config_text(s.port, "", &after));
    s.daemon.signal(libc::SIGHUP);
    s.wait_first_polls(&["three", "one-slow"]);
    let one_c = one.work.commit("c", "c\n", "one c");
    one.work.push(&["main"]);
    let three_a = three.work.commit("a", "a\n", "three a");
    three.work.push(&["main"]);
    let _two_b = two.work.commit("b", "b\n", "two b: nobody watches two now");
    two.work.push(&["main"]);

    wait_until(
        Duration::from_secs(15),
        "the changes after the reload",
        || {
            let (records, _) = read_jsonl(&s.polld.path("changes.jsonl"));
            records
                .iter()
                .any(|r| r["id"] == format!("one-slow:main:{one_c}"))
                && records
                    .iter()
                    .any(|r| r["id"] == format!("three:main:{three_a}"))
                && records
                    .iter()
                    .any(|r| r["id"] == format!("one:main:{one_c}"))
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let (records, torn) = read_jsonl(&s.polld.path("changes.jsonl"));
    assert!(torn.is_empty());
    let mut ids: Vec<String> = records
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected = vec![
        format!("one:main:{one_a}"),
        format!("one:main:{one_b}"),
        format!("one:main:{one_c}"),
        format!("two:main:{two_a}"),
        format!("three:main:{three_a}"),
        // A new poller's first poll records heads: it reports only what came after.
        format!("one-slow:main:{one_c}"),
    ];
    expected.sort();
    assert_eq!(ids, expected, "each change exactly once");
    assert!(
        s.daemon.stderr().contains("config reloaded"),
        "{}",
        s.daemon.stderr()
    );
}

#[test]
fn an_invalid_reload_keeps_the_running_config() {
    let pair = RemotePair::with_initial_commit();
    let good = git_poller("app", &pair.repo(), "interval = \"1s\"\n");
    let mut s = start(&good, "");
    s.wait_first_polls(&["app"]);
    s.polld
        .write_config(&config_text(s.port, "", &format!("{good}bogus_key = 1\n")));
    let (code, body) = s.post("/reload");
    assert_eq!(code, 400);
    assert!(
        body.contains("pollers.toml:") && body.contains("bogus_key"),
        "{body}"
    );
    s.daemon.signal(libc::SIGHUP);

    let sha = pair.work.commit("a", "a\n", "after the bad reloads");
    pair.work.push(&["main"]);
    wait_until(
        Duration::from_secs(10),
        "the old config to keep polling",
        || s.revisions() == [sha.clone()],
    );
    assert!(
        s.daemon.stderr().contains("reload refused"),
        "{}",
        s.daemon.stderr()
    );
    assert!(s.daemon.is_running());
}

#[test]
fn sigterm_during_a_hung_poll_exits_cleanly_within_the_grace_period() {
    // A "remote" that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "git://127.0.0.1:{}/hang.git",
        silent.local_addr().unwrap().port()
    );
    let held = std::thread::spawn(move || {
        let mut open = Vec::new();
        for stream in silent.incoming().take(4).flatten() {
            open.push(stream);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let mut s = start(&git_poller("hung", &url, ""), "shutdown_grace = \"2s\"\n");
    std::thread::sleep(Duration::from_millis(500));
    let stopping = Instant::now();
    s.daemon.signal(libc::SIGTERM);
    let status = s
        .daemon
        .wait_exit(Duration::from_secs(15))
        .expect("polld exits");
    assert_eq!(status.code(), Some(0), "{}", s.daemon.stderr());
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} with a 2 s grace period"
    );
    assert!(
        s.daemon.stderr().contains("abandoning"),
        "{}",
        s.daemon.stderr()
    );
    drop(held);
}
