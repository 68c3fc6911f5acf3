//! The command line: config errors, `check`, config discovery, usage errors, a dead
//! remote next to a good one, `status --json`, the jsonl sink, log format.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use polld_test_support::*;
use serde_json::{Value, json};

/// 1-based line of the `nth` (0-based) line of `text` containing `needle`.
fn line_of(text: &str, needle: &str, nth: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth)
        .unwrap_or_else(|| panic!("no line {nth} with {needle:?} in:\n{text}"))
        .0
        + 1
}

/// Asserts a config error: exit 2, nothing on stdout, and stderr holding
/// `<config>:<line>:<col>:` for one of `lines`.
#[track_caller]
fn assert_config_error(polld: &Polld, out: &Outcome, lines: &[usize], what: &str) {
    assert_eq!(
        out.code,
        Some(2),
        "{what}: expected exit 2\n{}",
        out.describe()
    );
    assert!(
        out.stdout.trim().is_empty(),
        "{what}: nothing on stdout\n{}",
        out.describe()
    );
    let path = polld.config.display().to_string();
    let found = lines.iter().any(|line| {
        let prefix = format!("{path}:{line}:");
        out.stderr.match_indices(&prefix).any(|(i, _)| {
            let rest = &out.stderr[i + prefix.len()..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            digits > 0 && rest[digits..].starts_with(':')
        })
    });
    assert!(
        found,
        "{what}: stderr should name `{path}:LINE:COL:` with LINE in {lines:?}\n{}",
        out.describe()
    );
}

/// A config whose poller points at an existing (empty) directory, so only the intended
/// mistake is wrong.
fn repo_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn config_errors_name_file_line_and_column() {
    let repo = repo_dir();
    let r = toml_str(&repo.path().display().to_string());
    let poller = |extra: &str| {
        format!(
            "[daemon]\nstate_dir = \"state\"\n\n[[poller]]\nname = \"app\"\ntype = \"git\"\nrepo = {r}\n{extra}"
        )
    };
    // (what, config text, needle locating the expected line(s), nth occurrence)
    type Case<'a> = (&'a str, String, Vec<(&'a str, usize)>);
    let cases: Vec<Case> = vec![
        (
            "malformed TOML",
            "[daemon]\nstate_dir = \"state\"\n\n[[poller]\nname = \"app\"\n".to_string(),
            vec![("[[poller]", 0)],
        ),
        (
            "unterminated string",
            poller("category = \"push\n"),
            vec![("category", 0)],
        ),
        (
            "unknown top-level key",
            format!("# polld\nverbose = true\n{}", poller("")),
            vec![("verbose", 0)],
        ),
        (
            "unknown table",
            format!("{}\n[deamon]\nlisten = \"127.0.0.1:1\"\n", poller("")),
            vec![("[deamon]", 0), ("listen", 0)],
        ),
        (
            "unknown key in [daemon]",
            format!(
                "[daemon]\nstate_dir = \"state\"\nmax_concurent_polls = 4\n\n[[poller]]\nname = \"app\"\ntype = \"git\"\nrepo = {r}\n"
            ),
            vec![("max_concurent_polls", 0)],
        ),
        (
            "unknown key in [defaults]",
            format!("[defaults]\nintervall = \"1m\"\n{}", poller("")),
            vec![("intervall", 0)],
        ),
        (
            "unknown common key in a poller",
            poller("intervall = \"1m\"\n"),
            vec![("intervall", 0)],
        ),
        (
            "unknown git key in a poller",
            poller("branchez = [\"main\"]\n"),
            vec![("branchez", 0)],
        ),
        (
            "unknown key in [sink]",
            format!("{}\n[sink]\ntype = \"jsonl\"\npath = \"c.jsonl\"\nfsync = false\n", poller("")),
            vec![("fsync", 0), ("[sink]", 0)],
        ),
        (
            "duplicate poller name",
            format!(
                "{}\n[[poller]]\nname = \"app\"\ntype = \"git\"\nrepo = {r}\n",
                poller("")
            ),
            vec![("name = \"app\"", 1), ("[[poller]]", 1)],
        ),
        (
            "jitter >= interval in a poller",
            poller("interval = \"10s\"\njitter = \"10s\"\n"),
            vec![("jitter", 0), ("interval", 0), ("[[poller]]", 0)],
        ),
        (
            "jitter >= interval via [defaults]",
            format!("[defaults]\ninterval = \"1m\"\njitter = \"2m\"\n{}", poller("")),
            vec![
                ("jitter", 0),
                ("interval", 0),
                ("[defaults]", 0),
                ("[[poller]]", 0),
            ],
        ),
        (
            "repo starting with -",
            "[daemon]\nstate_dir = \"state\"\n\n[[poller]]\nname = \"app\"\ntype = \"git\"\nrepo = \"--upload-pack=touch pwned\"\n".to_string(),
            vec![("repo =", 0)],
        ),
        (
            "unknown poller type",
            format!("[daemon]\nstate_dir = \"state\"\n\n[[poller]]\nname = \"app\"\ntype = \"cvs\"\nrepo = {r}\n"),
            vec![("type = \"cvs\"", 0)],
        ),
        (
            "invalid poller name",
            format!("[daemon]\nstate_dir = \"state\"\n\n[[poller]]\nname = \"a/b\"\ntype = \"git\"\nrepo = {r}\n"),
            vec![("name = \"a/b\"", 0)],
        ),
        (
            "poller name starting with a dot",
            format!("[daemon]\nstate_dir = \"state\"\n\n[[poller]]\nname = \".app\"\ntype = \"git\"\nrepo = {r}\n"),
            vec![("name = \".app\"", 0)],
        ),
        (
            "bad duration",
            poller("interval = \"ten minutes\"\n"),
            vec![("interval", 0)],
        ),
        (
            "wrong value type",
            format!(
                "[daemon]\nstate_dir = \"state\"\nmax_concurrent_polls = \"many\"\n\n[[poller]]\nname = \"app\"\ntype = \"git\"\nrepo = {r}\n"
            ),
            vec![("max_concurrent_polls", 0)],
        ),
        (
            "poller without repo",
            "[daemon]\nstate_dir = \"state\"\n\n[[poller]]\nname = \"app\"\ntype = \"git\"\n".to_string(),
            vec![("[[poller]]", 0), ("name", 0), ("type", 0)],
        ),
    ];

    let mut failures = Vec::new();
    for (what, text, needles) in &cases {
        let polld = Polld::with_config(text);
        let lines: Vec<usize> = needles
            .iter()
            .map(|(needle, nth)| line_of(text, needle, *nth))
            .collect();
        let out = polld.run(&["check"]);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_config_error(&polld, &out, &lines, what)
        }));
        if let Err(e) = result {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "?".into());
            failures.push(format!("--- {what} ---\nconfig:\n{text}\n{msg}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} config error cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn invalid_config_is_refused_by_once_and_run_too() {
    let repo = repo_dir();
    let text = format!(
        "[daemon]\nstate_dir = \"state\"\n\n[[poller]]\nname = \"app\"\ntype = \"git\"\nrepo = {}\nbranchez = [\"main\"]\n",
        toml_str(&repo.path().display().to_string())
    );
    let polld = Polld::with_config(&text);
    let line = line_of(&text, "branchez", 0);
    assert_config_error(&polld, &polld.once(&[]), &[line], "once");
    assert_config_error(&polld, &polld.run(&["run"]), &[line], "run");
    assert_config_error(&polld, &polld.run(&["status"]), &[line], "status");
}

#[test]
fn missing_config_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope").join("pollers.toml");
    let mut cmd = Command::new(polld_bin());
    cmd.current_dir(dir.path())
        .env_remove("POLLD_CONFIG")
        .arg("--config")
        .arg(&missing)
        .arg("check");
    let out = run_bounded(cmd);
    out.expect_code(2);
    assert!(
        out.stderr.contains(&missing.display().to_string()),
        "stderr names the file\n{}",
        out.describe()
    );

    // The default ./pollers.toml, absent: also exit 2, naming it.
    let mut cmd = Command::new(polld_bin());
    cmd.current_dir(dir.path())
        .env_remove("POLLD_CONFIG")
        .arg("once");
    let out = run_bounded(cmd);
    out.expect_code(2);
    assert!(
        out.stderr.contains("pollers.toml"),
        "stderr names the file\n{}",
        out.describe()
    );
}

/// Two pollers on real local repos.
fn good_config() -> (RemotePair, RemotePair, Polld) {
    let a = RemotePair::with_initial_commit();
    let b = RemotePair::with_initial_commit();
    let polld = Polld::new(
        &(git_poller("alpha", &a.repo(), "")
            + &git_poller("beta", &b.repo(), "branches = [\"*\"]\n")),
    );
    (a, b, polld)
}

#[test]
fn check_prints_one_line_per_poller() {
    let (_a, _b, polld) = good_config();
    let out = polld.run(&["check"]);
    out.expect_code(0);
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 2, "one line per poller\n{}", out.describe());
    assert!(
        lines.iter().any(|l| l.contains("alpha")),
        "{}",
        out.describe()
    );
    assert!(
        lines.iter().any(|l| l.contains("beta")),
        "{}",
        out.describe()
    );
    // check does not poll: no cursor was written.
    let status = polld.status_of("alpha");
    assert!(status["cursor"].is_null(), "{status}");
}

#[test]
fn config_discovery_polld_config_env_and_default_file() {
    let (_a, _b, polld) = good_config();
    let elsewhere = tempfile::tempdir().unwrap();

    // $POLLD_CONFIG from another directory.
    let mut cmd = Command::new(polld_bin());
    cmd.current_dir(elsewhere.path())
        .env("POLLD_CONFIG", &polld.config)
        .arg("check");
    let out = run_bounded(cmd);
    out.expect_code(0);
    assert!(out.stdout.contains("alpha"), "{}", out.describe());

    // ./pollers.toml when neither is given.
    let mut cmd = Command::new(polld_bin());
    cmd.current_dir(polld.dir.path())
        .env_remove("POLLD_CONFIG")
        .arg("check");
    let out = run_bounded(cmd);
    out.expect_code(0);
    assert!(out.stdout.contains("beta"), "{}", out.describe());

    // -c beats $POLLD_CONFIG.
    let mut cmd = Command::new(polld_bin());
    cmd.current_dir(elsewhere.path())
        .env("POLLD_CONFIG", elsewhere.path().join("missing.toml"))
        .arg("-c")
        .arg(&polld.config)
        .arg("check");
    let out = run_bounded(cmd);
    out.expect_code(0);
    assert!(out.stdout.contains("alpha"), "{}", out.describe());

    // Relative paths in the file are relative to the file, not the cwd: the state dir
    // lands next to the config.
    let mut cmd = Command::new(polld_bin());
    cmd.current_dir(elsewhere.path())
        .env("POLLD_CONFIG", &polld.config)
        .env("POLLD_LOG", "warn")
        .arg("once");
    let out = run_bounded(cmd);
    out.expect_code(0);
    assert!(
        polld.path("state").is_dir(),
        "state_dir resolved against the config's directory"
    );
    assert!(
        !elsewhere.path().join("state").exists(),
        "state_dir must not be resolved against the cwd"
    );
}

#[test]
fn usage_errors_exit_2() {
    let (_a, _b, polld) = good_config();
    let out = polld.once(&["alpha", "nosuch"]);
    out.expect_code(2);
    assert!(
        out.stderr.contains("nosuch"),
        "stderr names the unknown poller\n{}",
        out.describe()
    );
    assert!(out.stdout.trim().is_empty(), "{}", out.describe());
    // Nothing was polled: alpha has no cursor.
    assert!(polld.status_of("alpha")["cursor"].is_null());

    polld.run(&["frobnicate"]).expect_code(2);
    polld.run(&["--log-format", "yaml", "check"]).expect_code(2);
    polld.run(&["status", "--bogus"]).expect_code(2);
}

#[test]
fn dead_remote_does_not_stop_the_others() {
    let good = RemotePair::with_initial_commit();
    let closed_port = free_port();
    let bad_url = format!("git://127.0.0.1:{closed_port}/app.git");
    let missing = good.dir.path().join("no-such-repo.git");
    let polld = Polld::new(
        &(git_poller("good", &good.repo(), "")
            + &git_poller("bad", &bad_url, "")
            + &git_poller("gone", &missing.display().to_string(), "")),
    );

    let first = polld.once(&[]);
    first.expect_code(1);
    assert!(first.records().is_empty(), "{}", first.describe());

    let a = good.work.commit("a", "a\n", "A");
    let b = good.work.commit("b", "b\n", "B");
    good.work.push(&["main"]);
    let out = polld.once(&[]);
    out.expect_code(1);
    assert_changes(
        &out.records(),
        &good
            .work
            .expected_many("good", &good.repo(), "main", &[a, b]),
    );
    assert!(
        out.stderr.contains("bad"),
        "stderr names the failing poller `bad`\n{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("gone"),
        "stderr names the failing poller `gone`\n{}",
        out.describe()
    );

    let status = polld.status_json();
    let pollers = status["pollers"].as_array().expect("pollers array");
    assert_eq!(pollers.len(), 3, "{status}");
    for name in ["bad", "gone"] {
        let p = polld.status_of(name);
        assert!(
            p["last_error"].as_str().is_some_and(|e| !e.is_empty()),
            "{name}: last_error set: {p}"
        );
        assert!(
            p["cursor"].is_null(),
            "{name}: cursor unchanged (null): {p}"
        );
    }
    let p = polld.status_of("good");
    assert!(p["last_error"].is_null(), "good: no error: {p}");
    assert!(p["cursor"].to_string().contains(&good.work.head()), "{p}");

    // Polling only the good one succeeds.
    let out = polld.once(&["good"]);
    out.expect_code(0);
    assert!(out.records().is_empty());
}

#[test]
fn credentials_in_a_repo_url_never_show() {
    let closed_port = free_port();
    let url = format!("http://alice:s3cr3tpw@127.0.0.1:{closed_port}/app.git");
    let polld = Polld::new(&git_poller("creds", &url, ""));
    let out = polld.once(&[]);
    out.expect_code(1);
    let status = polld.run(&["status", "--json"]);
    status.expect_code(0);
    let text_status = polld.run(&["status"]);
    text_status.expect_code(0);
    let check = polld.run(&["check"]);
    check.expect_code(0);
    for (what, o) in [
        ("once", &out),
        ("status --json", &status),
        ("status", &text_status),
        ("check", &check),
    ] {
        assert!(
            !o.stdout.contains("s3cr3tpw") && !o.stderr.contains("s3cr3tpw"),
            "{what} leaks the password\n{}",
            o.describe()
        );
    }
    let v: Value = serde_json::from_str(status.stdout.trim()).unwrap();
    let p = &v["pollers"][0];
    assert!(p["last_error"].is_string(), "{p}");
    assert_eq!(
        p["repo"],
        json!(format!("http://127.0.0.1:{closed_port}/app.git")),
        "status shows the repo without userinfo"
    );
    // Nothing stored holds it either.
    let leaks = files_containing(&polld.path("state"), b"s3cr3tpw");
    assert!(
        leaks.is_empty(),
        "stored files hold the password: {leaks:?}"
    );
}

#[test]
fn status_json_shape() {
    let (a, _b, polld) = good_config();
    let status = polld.status_json();
    let pollers = status["pollers"].as_array().expect("pollers array");
    assert_eq!(pollers.len(), 2, "{status}");
    for p in pollers {
        for key in [
            "name",
            "type",
            "repo",
            "cursor",
            "last_poll",
            "last_error",
            "pending",
            "dead_letters",
        ] {
            assert!(p.get(key).is_some(), "status entry lacks {key}: {p}");
        }
        assert_eq!(p["type"], "git", "{p}");
        assert!(p["cursor"].is_null(), "never polled: {p}");
        assert!(p["last_poll"].is_null(), "never polled: {p}");
    }
    let alpha = polld.status_of("alpha");
    assert_eq!(alpha["repo"], json!(a.repo()));

    assert!(polld.once_ok().is_empty());
    a.work.commit("x", "x\n", "X");
    a.work.push(&["main"]);
    assert_eq!(polld.once_ok().len(), 1);
    for name in ["alpha", "beta"] {
        let p = polld.status_of(name);
        assert!(!p["cursor"].is_null(), "{p}");
        assert!(!p["last_poll"].is_null(), "{p}");
        assert!(p["last_error"].is_null(), "{p}");
        assert_eq!(p["pending"], json!(0), "delivered: nothing pending: {p}");
        assert_eq!(p["dead_letters"], json!(0), "{p}");
    }
    // Plain `status` works too.
    let out = polld.run(&["status"]);
    out.expect_code(0);
    assert!(out.stdout.contains("alpha") && out.stdout.contains("beta"));
}

#[test]
fn jsonl_sink_appends_only_new_records() {
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let polld = Polld::new(&format!(
        "[sink]\ntype = \"jsonl\"\npath = \"out/changes.jsonl\"\n\n{}",
        git_poller("app", &repo, "")
    ));
    std::fs::create_dir_all(polld.path("out")).unwrap();
    let jsonl = polld.path("out/changes.jsonl");

    polld.once(&[]).expect_code(0);
    let (records, bad) = read_jsonl(&jsonl);
    assert!(records.is_empty() && bad.is_empty());

    let w = &pair.work;
    let a = w.commit("a", "a\n", "A");
    let b = w.commit("b", "b\n", "B");
    w.push(&["main"]);
    let out = polld.once(&[]);
    out.expect_code(0);
    assert!(
        out.stdout.trim().is_empty(),
        "with the jsonl sink, no records on stdout\n{}",
        out.describe()
    );
    let first_bytes = std::fs::read(&jsonl).unwrap();
    let (records, bad) = read_jsonl(&jsonl);
    assert!(bad.is_empty(), "unparsable lines: {bad:?}");
    let mut expected = w.expected_many("app", &repo, "main", &[a, b]);
    assert_changes(&records, &expected);
    assert!(first_bytes.ends_with(b"\n"), "each record ends its line");
    assert_eq!(
        first_bytes.iter().filter(|&&c| c == b'\n').count(),
        2,
        "one record per line"
    );

    // Nothing new: nothing appended.
    polld.once(&[]).expect_code(0);
    assert_eq!(std::fs::read(&jsonl).unwrap(), first_bytes);

    let c = w.commit("c", "c\n", "C");
    w.push(&["main"]);
    polld.once(&[]).expect_code(0);
    let all = std::fs::read(&jsonl).unwrap();
    assert!(all.starts_with(&first_bytes), "appended, not rewritten");
    let (records, bad) = read_jsonl(&jsonl);
    assert!(bad.is_empty(), "unparsable lines: {bad:?}");
    expected.push(w.expected("app", &repo, "main", &c));
    assert_changes(&records, &expected);
}

#[test]
fn log_format_json_writes_json_lines_to_stderr() {
    let (a, _b, polld) = good_config();
    polld.once(&[]).expect_code(0);
    a.work.commit("x", "x\n", "X");
    a.work.push(&["main"]);
    let mut cmd = polld.command();
    cmd.env("POLLD_LOG", "debug")
        .args(["--log-format", "json", "once"]);
    let out = run_bounded(cmd);
    out.expect_code(0);
    assert_eq!(out.records().len(), 1, "stdout still carries the record");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(
        !lines.is_empty(),
        "debug logs were written\n{}",
        out.describe()
    );
    for line in lines {
        let v: Result<Value, _> = serde_json::from_str(line);
        assert!(
            v.is_ok_and(|v| v.is_object()),
            "stderr line is not a JSON object: {line}"
        );
    }
}

#[test]
fn once_with_the_sink_down_exits_1_and_keeps_the_changes_queued() {
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let polld = Polld::new(&format!(
        "[sink]\ntype = \"jsonl\"\npath = \"out/changes.jsonl\"\n\n{}",
        git_poller("app", &repo, "")
    ));
    polld.once(&[]).expect_code(0);
    let jsonl = polld.path("out/changes.jsonl");

    let w = &pair.work;
    let a = w.commit("a", "a\n", "A");
    let b = w.commit("b", "b\n", "B");
    w.push(&["main"]);
    // The sink cannot write: its directory does not exist. (A path that is itself a
    // directory is refused as a config error.)
    let out = polld.once(&[]);
    out.expect_code(1);
    let status = polld.status_of("app");
    assert_eq!(status["pending"], json!(2), "both changes queued: {status}");
    assert!(
        status["cursor"].to_string().contains(&b),
        "the cursor moved with the queueing: {status}"
    );

    // The sink is back: the next `once` delivers the queued changes, in order, once.
    std::fs::create_dir(polld.path("out")).unwrap();
    polld.once(&[]).expect_code(0);
    let (records, bad) = read_jsonl(&jsonl);
    assert!(bad.is_empty(), "{bad:?}");
    assert_changes(&records, &w.expected_many("app", &repo, "main", &[a, b]));
    assert_eq!(polld.status_of("app")["pending"], json!(0));
    polld.once(&[]).expect_code(0);
    assert_eq!(read_jsonl(&jsonl).0.len(), 2, "nothing delivered twice");
}

#[test]
fn defaults_state_dir_and_integer_durations() {
    let pair = RemotePair::with_initial_commit();
    // No [daemon]: state goes to .polld next to the config. Durations as integers.
    let polld = Polld::with_config(&format!(
        "[defaults]\ninterval = 600\njitter = 0\n\n{}{}",
        git_poller("app", &pair.repo(), "interval = 90\njitter = \"30s\"\n"),
        git_poller("other", &pair.repo(), "interval = \"1h 30m\"\n")
    ));
    let out = polld.run(&["check"]);
    out.expect_code(0);
    polld.once(&[]).expect_code(0);
    assert!(
        polld.path(".polld").is_dir(),
        "the default state_dir is .polld beside the config"
    );
}

#[test]
fn text_logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let (_a, _b, polld) = good_config();
    let mut cmd = polld.command();
    cmd.env("POLLD_LOG", "debug").arg("once");
    let out = run_bounded(cmd);
    out.expect_code(0);
    assert!(!out.stderr.trim().is_empty(), "debug logs were written");
    assert!(
        !out.stderr.contains('\u{1b}'),
        "ANSI escape codes in logs written to a pipe\n{}",
        out.describe()
    );
}

#[test]
fn state_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let (_a, _b, polld) = good_config();
    polld.once(&[]).expect_code(0);
    let mode = |path: &str| {
        std::fs::metadata(polld.path(path))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        mode("state"),
        0o700,
        "the state dir (mirrors included) is its owner's only"
    );
    assert_eq!(
        mode("state/state.db"),
        0o600,
        "state.db is readable by its owner only"
    );
    assert!(
        polld.path("state/mirrors/alpha").is_dir(),
        "mirrors live inside the private state dir"
    );
}

/// `polld completions SHELL` and `polld man` describe the command line itself: they
/// need no config, and what they print is what the shells and `man` accept.
#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(polld_bin());
        cmd.current_dir(dir.path())
            .env_remove("POLLD_CONFIG")
            .args(args);
        run_bounded(cmd)
    };
    let bash = run(&["completions", "bash"]);
    bash.expect_code(0);
    // bash itself loads the script and registers the completion.
    let script = dir.path().join("polld.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    let registered = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p polld", script.display()))
        .output()
        .unwrap();
    assert!(
        registered.status.success()
            && String::from_utf8_lossy(&registered.stdout).contains("polld"),
        "{registered:?}"
    );
    for subcommand in ["run", "check", "once", "status", "notify", "migrate-store"] {
        assert!(bash.stdout.contains(subcommand), "bash lacks {subcommand}");
    }
    let zsh = run(&["completions", "zsh"]);
    zsh.expect_code(0);
    assert!(
        zsh.stdout.starts_with("#compdef polld"),
        "{}",
        zsh.describe()
    );
    let fish = run(&["completions", "fish"]);
    fish.expect_code(0);
    assert!(
        fish.stdout.contains("complete -c polld"),
        "{}",
        fish.describe()
    );
    run(&["completions", "tcsh"]).expect_code(2);

    let man = run(&["man"]);
    man.expect_code(0);
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH polld"),
        "{}",
        man.describe()
    );
    for section in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH SUBCOMMANDS",
        "migrate\\-store",
    ] {
        assert!(
            man.stdout.contains(section),
            "man page lacks {section}:\n{}",
            man.stdout
        );
    }
}
