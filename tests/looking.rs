//! End-to-end: what others look at — the `cloudevents` sink (checked by the official
//! CloudEvents Python SDK), the Prometheus alerting rules (checked by `promtool`) and
//! the Grafana dashboard (every metric it queries exists in a running polld).

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use polld_test_support::cloudevents::CloudEventsReceiver;
use polld_test_support::*;
use serde_json::Value;

/// A config with a cloudevents sink (`extra` appended to `[sink]`) and one git poller.
fn cloudevents_config(url: &str, extra: &str, repo: &str, poller_extra: &str) -> String {
    format!(
        "[sink]\ntype = \"cloudevents\"\nurl = {}\n{extra}\n\n{}",
        toml_str(url),
        git_poller("app", repo, poller_extra)
    )
}

/// Asserts the SDK parsed `event` as the contract's event for the change `expected`.
#[track_caller]
fn assert_event(event: &Value, expected: &Value) {
    assert!(event.get("error").is_none(), "the SDK refused it: {event}");
    assert_eq!(event["specversion"], "1.0", "{event}");
    assert_eq!(event["id"], expected["id"], "{event}");
    assert_eq!(event["source"], expected["repository"], "{event}");
    assert_eq!(event["type"], "dev.polld.change.v1", "{event}");
    assert_eq!(event["subject"], expected["branch"], "{event}");
    assert_eq!(event["time_unix"], expected["when_timestamp"], "{event}");
    assert!(
        event["time"].as_str().unwrap().starts_with("20"),
        "RFC 3339: {event}"
    );
    assert_eq!(event["datacontenttype"], "application/json", "{event}");
    assert_changes(
        std::slice::from_ref(&event["data"]),
        std::slice::from_ref(expected),
    );
}

#[test]
fn cloudevents_sink_posts_binary_mode_events_the_sdk_parses() {
    let pair = RemotePair::with_initial_commit();
    let receiver = CloudEventsReceiver::start(pair.dir.path(), &[], 200);
    let repo = pair.repo();
    let polld = Polld::new(&cloudevents_config(
        &receiver.url(),
        "headers = { X-Team = \"core\" }\ntimeout = \"10s\"",
        &repo,
        "branches = [\"main\", \"fix/*\"]\n",
    ));
    polld.once(&[]).expect_code(0);
    assert!(receiver.received().is_empty());

    let base = pair.work.head();
    pair.work.commit("a.txt", "a\n", "First — ü\n\nbody\n");
    pair.work.commit("b.txt", "b\n", "Second");
    // A branch name the binding must percent-encode (non-ASCII and `%`).
    pair.work.checkout_new("fix/ü-100%");
    let on_fix = pair.work.commit("c.txt", "c\n", "On a fix branch");
    pair.work.push(&["main", "fix/ü-100%"]);
    polld.once(&[]).expect_code(0);

    let mut expected = pair.work.expected_many(
        "app",
        &repo,
        "main",
        &pair.work.first_parent_range(&base, "main"),
    );
    expected.push(pair.work.expected("app", &repo, "fix/ü-100%", &on_fix));
    let events = receiver.received();
    assert_eq!(events.len(), 3, "one POST per change: {events:#?}");
    for event in &events {
        assert_eq!(event["path"], "/events");
        let change = expected
            .iter()
            .find(|c| c["id"] == event["id"])
            .unwrap_or_else(|| panic!("an event for no change: {event}"));
        assert_event(event, change);
    }

    // Keys the sink does not know, and headers that are the event's, are config errors.
    for (extra, says) in [
        ("secret_env = \"X\"", "secret_env"),
        ("headers = { ce-type = \"x\" }", "ce-type"),
        (
            "headers = { Content-Type = \"text/plain\" }",
            "Content-Type",
        ),
    ] {
        polld.write_config(&format!(
            "{PREAMBLE}{}",
            cloudevents_config(&receiver.url(), extra, &repo, "")
        ));
        let bad = polld.run(&["check"]);
        bad.expect_code(2);
        assert!(
            bad.stderr.contains("pollers.toml:") && bad.stderr.contains(says),
            "{extra}: {}",
            bad.stderr
        );
    }
}

#[test]
fn cloudevents_sink_retries_503_and_the_event_is_accepted_once() {
    let pair = RemotePair::with_initial_commit();
    let receiver = CloudEventsReceiver::start(pair.dir.path(), &[503], 200);
    let repo = pair.repo();
    let polld = Polld::new(&cloudevents_config(
        &receiver.url(),
        "",
        &repo,
        "interval = \"1s\"\njitter = \"0s\"\n",
    ));
    polld.once(&[]).expect_code(0);
    let sha = pair.work.commit("a.txt", "a\n", "A");
    pair.work.push(&["main"]);

    let mut daemon = polld.spawn_run(&[]);
    daemon.wait_for(
        Duration::from_secs(40),
        "the event accepted after a 503",
        || receiver.received().iter().any(|r| r["status"] == 200),
    );
    daemon.wait_for(Duration::from_secs(10), "nothing pending", || {
        polld.status_of("app")["pending"] == 0
    });
    daemon.signal(libc::SIGTERM);
    assert_eq!(
        daemon
            .wait_exit(Duration::from_secs(20))
            .and_then(|s| s.code()),
        Some(0)
    );

    let got = receiver.received();
    let statuses: Vec<&Value> = got.iter().map(|r| &r["status"]).collect();
    assert_eq!(statuses, [503, 200], "requests: {got:#?}");
    let expected = pair.work.expected("app", &repo, "main", &sha);
    for event in &got {
        assert_event(event, &expected);
    }
}

/// A receiver behind a private CA: refused until `ca_file` names the CA, then delivered.
#[test]
fn cloudevents_over_https_trusts_its_ca_file() {
    let tls_dir = tempfile::tempdir().unwrap();
    let ca = tls::TestCa::new(tls_dir.path(), "events");
    let receiver = CloudEventsReceiver::start_https(tls_dir.path(), &ca.server_cert("events"));
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let polld = Polld::new(&cloudevents_config(&receiver.url(), "", &repo, ""));
    polld.once(&[]).expect_code(0);
    let sha = pair.work.commit("a.txt", "a\n", "over TLS");
    pair.work.push(&["main"]);
    let refused = polld.once(&[]);
    refused.expect_code(1);
    assert!(
        refused.stderr.contains("certificate") || refused.stderr.contains("UnknownIssuer"),
        "{}",
        refused.stderr
    );
    assert!(receiver.received().is_empty());

    std::fs::copy(&ca.cert, polld.path("ca.pem")).unwrap();
    polld.write_config(&format!(
        "{PREAMBLE}{}",
        cloudevents_config(&receiver.url(), "ca_file = \"ca.pem\"", &repo, "")
    ));
    polld.once(&[]).expect_code(0);
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_event(&got[0], &pair.work.expected("app", &repo, "main", &sha));
}

/// `promtool` on `deploy/prometheus`: the rules load, and their unit tests pass.
#[test]
fn prometheus_rules_pass_promtool_check_and_unit_tests() {
    let dir = workspace_root().join("deploy").join("prometheus");
    for args in [
        ["check", "rules", "polld-rules.yml"],
        ["test", "rules", "polld-rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs (Debian's prometheus package; scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every `polld_*` name in the dashboard's queries and the rules' expressions is one a
/// running polld serves on `/metrics`, after one poll; every dashboard query parses.
#[test]
fn dashboard_and_rules_query_only_metrics_polld_serves() {
    let deploy = workspace_root().join("deploy");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy.join("grafana/polld-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is valid JSON");
    let mut queries = Vec::new();
    collect_strings_under(&dashboard, "expr", &mut queries);
    assert!(
        queries.len() >= 8,
        "the dashboard has its queries: {queries:?}"
    );
    // Template variables' queries (`label_values(polld_polls_total, job)`), checked
    // for names only: the data source variable's query is just "prometheus".
    let mut variables = Vec::new();
    collect_strings_under(&dashboard["templating"], "query", &mut variables);
    let rules = std::fs::read_to_string(deploy.join("prometheus/polld-rules.yml")).unwrap();
    // Each rule's `expr:` is kept on one line, so it can be read without a YAML parser.
    let rule_exprs: Vec<String> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(str::to_owned)
        .collect();
    assert!(rule_exprs.len() >= 5, "{rule_exprs:?}");

    let pair = RemotePair::with_initial_commit();
    let port = free_port();
    let polld = Polld::with_config(&format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\n\n\
         [defaults]\ninterval = \"1h\"\n\n[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n\n{}",
        git_poller("app", &pair.repo(), "")
    ));
    let mut daemon = polld.spawn_run(&[]);
    let started = Instant::now();
    let mut metrics = String::new();
    daemon.wait_for(Duration::from_secs(30), "a first poll on /metrics", || {
        if TcpStream::connect(("127.0.0.1", port)).is_err() {
            return false;
        }
        metrics = http::control(port, "GET", "/metrics", None).1;
        metrics.contains("polld_polls_total{")
    });
    eprintln!("scraped after {:.1} s", started.elapsed().as_secs_f64());
    let served: BTreeSet<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    assert!(
        served.contains("polld_poll_duration_seconds_bucket"),
        "{served:?}"
    );

    let check = |what: &str, exprs: &[String], must_name_one: bool| {
        for expr in exprs {
            let names = metric_names(expr);
            assert!(
                !must_name_one || !names.is_empty() || expr.contains("up{"),
                "{what}: no metric in {expr}"
            );
            for name in names {
                assert!(
                    served.contains(&name),
                    "{what} queries {name}, which polld does not serve ({expr});\nserved: {served:?}"
                );
            }
        }
    };
    check("the dashboard", &queries, true);
    check("the dashboard's variables", &variables, false);
    check("the rules", &rule_exprs, true);

    // And each dashboard query is valid PromQL: promtool parses it as a recording
    // rule, with Grafana's variables replaced by what Grafana would put there.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, query) in queries.iter().enumerate() {
        let promql = query
            .replace("$__rate_interval", "1m")
            .replace("$job", "polld")
            .replace("$poller", ".*");
        rules += &format!(
            "      - record: dashboard_query_{n}\n        expr: {}\n",
            serde_json::to_string(&promql).unwrap()
        );
    }
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules", "dashboard.yml"])
        .current_dir(dir.path())
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Strings found under `key` anywhere in `value`.
fn collect_strings_under(value: &Value, key: &str, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if k == key => found.push(s.clone()),
                    _ => collect_strings_under(v, key, found),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| collect_strings_under(v, key, found)),
        _ => {}
    }
}

/// The `polld_*` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("polld_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(expr.len(), |n| start + n);
        if boundary {
            names.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn metric_names_are_read_from_promql() {
    let names = metric_names(
        "histogram_quantile(0.9, sum by (le) (rate(polld_poll_duration_seconds_bucket{job=\"polld\"}[5m]))) / polld_x",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["polld_poll_duration_seconds_bucket", "polld_x"]
    );
}
