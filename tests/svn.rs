//! End-to-end: `polld once` against real Subversion repositories, over `file://`
//! (local paths too), `svn://` (svnserve), `http://` and `https://` (Apache with
//! mod_dav_svn, its certificate from a CA only `ca_file` names), asserting whole change
//! records.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use polld_test_support::svn::*;
use polld_test_support::tls::TestCa;
use polld_test_support::*;
use serde_json::{Value, json};
use std::time::Duration;

#[track_caller]
fn first_poll(polld: &Polld) {
    let records = polld.once_ok();
    assert!(
        records.is_empty(),
        "the first poll must only record the revision, got {records:?}"
    );
}

fn cursor(polld: &Polld, name: &str) -> Value {
    polld.status_of(name)["cursor"].clone()
}

#[test]
fn first_poll_records_the_revision_and_emits_nothing() {
    let repo = SvnRepo::with_standard_layout();
    let polld = Polld::new(&svn_poller("app", &repo.url(), ""));
    first_poll(&polld);
    assert_eq!(cursor(&polld, "app"), json!({"revision": 2}));
    let status = polld.status_of("app");
    assert_eq!(status["type"], "svn", "{status}");
    assert!(status["last_error"].is_null(), "{status}");
    // Nothing new: nothing emitted, the cursor stays.
    assert!(polld.once_ok().is_empty());
    assert_eq!(cursor(&polld, "app"), json!({"revision": 2}));
}

#[test]
fn standard_layout_reports_trunk_and_branch_changes() {
    let repo = SvnRepo::with_standard_layout();
    repo.copy("trunk", "branches/1.5.x", "Branch 1.5.x");
    let url = repo.url();
    let polld = Polld::new(&svn_poller("app", &url, "split = \"branches\"\n"));
    first_poll(&polld);
    assert_eq!(cursor(&polld, "app"), json!({"revision": 3}));

    let r4 = repo.put(
        &[("trunk/src/a.c", "a\n"), ("trunk/src/b.c", "b\n")],
        "Trunk work\n\nWith a body.\n",
    );
    let r5 = repo.put(&[("branches/1.5.x/README", "fixed\n")], "Fix on 1.5.x");
    // A tag, and a commit into the tag: tags are not branches.
    repo.copy("trunk", "tags/v1.0", "Tag v1.0");
    repo.put(&[("tags/v1.0/README", "oops\n")], "Commit into a tag");
    // One revision on two branches: one change each, in svn's path order.
    let r8 = repo.put(
        &[("trunk/x.txt", "x\n"), ("branches/1.5.x/y.txt", "y\n")],
        "Both branches",
    );

    let expected = [
        repo.expected("app", &url, None, None, r4, &["src", "src/a.c", "src/b.c"]),
        repo.expected("app", &url, None, Some("branches/1.5.x"), r5, &["README"]),
        repo.expected("app", &url, None, Some("branches/1.5.x"), r8, &["y.txt"]),
        repo.expected("app", &url, None, None, r8, &["x.txt"]),
    ];
    assert_changes(&polld.once_ok(), &expected);
    assert_eq!(expected[0]["comments"], "Trunk work\n\nWith a body.");
    assert_eq!(expected[0]["id"], format!("app::{r4}"));
    assert_eq!(expected[1]["id"], format!("app:branches/1.5.x:{r5}"));
    assert_eq!(cursor(&polld, "app"), json!({"revision": r8}));
    assert!(polld.once_ok().is_empty());
}

#[test]
fn creating_or_deleting_a_branch_is_not_a_change_deleting_a_file_is() {
    let repo = SvnRepo::with_standard_layout();
    repo.copy("trunk", "branches/1.5.x", "Branch 1.5.x");
    let url = repo.url();
    let polld = Polld::new(&svn_poller("app", &url, "split = \"branches\"\n"));
    first_poll(&polld);

    let created = repo.copy("trunk", "branches/2.0", "Branch 2.0");
    assert!(polld.once_ok().is_empty(), "a branch created by a copy");
    assert_eq!(cursor(&polld, "app"), json!({"revision": created}));

    let deleted = repo.delete("branches/2.0", "Drop 2.0");
    assert!(polld.once_ok().is_empty(), "a deleted branch root");
    assert_eq!(cursor(&polld, "app"), json!({"revision": deleted}));

    let removed = repo.remove(&["branches/1.5.x/README"], "No readme on 1.5.x");
    assert_changes(
        &polld.once_ok(),
        &[repo.expected(
            "app",
            &url,
            None,
            Some("branches/1.5.x"),
            removed,
            &["README"],
        )],
    );
}

#[test]
fn three_hundred_revisions_between_two_polls_are_all_reported_oldest_first() {
    let repo = SvnRepo::with_standard_layout();
    let server = Svnserve::start(repo.dir.path());
    let url = server.url("repo");
    let polld = Polld::new(&svn_poller("app", &url, "split = \"branches\"\n"));
    first_poll(&polld);

    let revisions = repo.bulk("trunk/bulk", 300);
    let expected: Vec<Value> = revisions
        .iter()
        .enumerate()
        .map(|(i, &rev)| {
            let file = format!("bulk/{}.txt", i + 1);
            if i == 0 {
                repo.expected("app", &url, None, None, rev, &["bulk", &file])
            } else {
                repo.expected("app", &url, None, None, rev, &[&file])
            }
        })
        .collect();
    let records = polld.once_ok();
    assert_eq!(records.len(), 300);
    assert_changes(&records, &expected);
    assert_eq!(records[41]["comments"], "bulk 42 of 300\n\nnumber 42");
    assert_eq!(cursor(&polld, "app"), json!({"revision": revisions[299]}));
    assert!(polld.once_ok().is_empty());
}

#[test]
fn a_url_below_the_root_sees_only_its_own_paths() {
    let repo = SvnRepo::new();
    repo.put(
        &[("project/trunk/README", "r\n"), ("other/README", "o\n")],
        "Two projects",
    );
    let url = repo.url_of("project/trunk");
    let polld = Polld::new(&svn_poller("app", &url, "project = \"web\"\n"));
    first_poll(&polld);

    let mixed = repo.put(
        &[("project/trunk/src/a.c", "a\n"), ("other/x", "x\n")],
        "Touch both",
    );
    repo.put(&[("other/y", "y\n")], "Only the other project");
    repo.put(
        &[("project/trunkish/z", "z\n")],
        "A sibling sharing the prefix",
    );
    let deeper = repo.put(&[("project/trunk/src/a.c", "a2\n")], "Edit a.c");

    let mut expected = vec![
        repo.expected("app", &url, None, None, mixed, &["src", "src/a.c"]),
        repo.expected("app", &url, None, None, deeper, &["src/a.c"]),
    ];
    // No project from `split = "trunk"`: the configured one applies.
    for record in &mut expected {
        record["project"] = json!("web");
        record["id"] = json!(format!("app:web::{}", record["revision"].as_str().unwrap()));
    }
    assert_changes(&polld.once_ok(), &expected);
    assert_eq!(cursor(&polld, "app"), json!({"revision": deeper}));
}

#[test]
fn split_projects_places_changes_in_projects() {
    let repo = SvnRepo::new();
    repo.put(
        &[("app/trunk/README", "a\n"), ("lib/trunk/README", "l\n")],
        "Two projects",
    );
    repo.mkdirs(&["app/branches", "app/tags"], "app branches and tags");
    let url = repo.url();
    let polld = Polld::new(&svn_poller(
        "mono",
        &url,
        "split = \"projects\"\nproject = \"ignored\"\n",
    ));
    first_poll(&polld);

    let a = repo.put(&[("app/trunk/a.c", "a\n")], "app trunk");
    repo.copy("app/trunk", "app/branches/b1", "app branch b1");
    repo.copy("app/trunk", "app/tags/v1", "app tag v1");
    let both = repo.put(
        &[("app/branches/b1/c.c", "c\n"), ("lib/trunk/b.c", "b\n")],
        "app b1 and lib trunk",
    );
    repo.put(&[("README", "top\n")], "Outside every project layout");

    assert_changes(
        &polld.once_ok(),
        &[
            repo.expected("mono", &url, Some("app"), None, a, &["a.c"]),
            repo.expected(
                "mono",
                &url,
                Some("app"),
                Some("branches/b1"),
                both,
                &["c.c"],
            ),
            repo.expected("mono", &url, Some("lib"), None, both, &["b.c"]),
        ],
    );
}

#[test]
fn split_regex_with_project_and_branch_groups() {
    // A layout the presets do not know: trunk/<project>/..., branches/<b>/<project>/...
    let repo = SvnRepo::new();
    repo.put(&[("trunk/app/README", "a\n")], "Layout");
    repo.mkdirs(&["branches"], "Branches");
    let url = repo.url();
    let regex = r"(?:trunk|branches/(?P<branch>[^/]+))/(?P<project>[^/]+)/(?P<path>.+)";
    let body = svn_poller(
        "rx",
        &url,
        &format!("split = {{ regex = {} }}\n", toml_str(regex)),
    ) + &svn_poller(
        "plain",
        &url,
        "split = { regex = 'trunk/(?P<path>.+)' }\nproject = \"cfg\"\n",
    );
    let polld = Polld::new(&body);
    first_poll(&polld);

    let t = repo.put(&[("trunk/app/src/x.c", "x\n")], "app on trunk");
    repo.copy("trunk", "branches/rel", "Branch rel");
    let b = repo.put(&[("branches/rel/lib/y.c", "y\n")], "lib on rel");
    repo.put(&[("notes.txt", "n\n")], "Matches nothing");

    let mut plain = repo.expected(
        "plain",
        &url,
        Some("cfg"),
        None,
        t,
        &["app/src", "app/src/x.c"],
    );
    plain["id"] = json!(format!("plain:cfg::{t}"));
    let mut records = polld.once_ok();
    records.sort_by_key(|r| r["poller"].as_str().unwrap() == "rx");
    assert_changes(
        &records,
        &[
            plain,
            repo.expected("rx", &url, Some("app"), None, t, &["src", "src/x.c"]),
            repo.expected("rx", &url, Some("lib"), Some("rel"), b, &["y.c"]),
        ],
    );
}

#[test]
fn non_ascii_and_space_paths_over_file_and_svn() {
    // The repository's own path has them too: the URL handed to svn must survive the
    // C locale.
    let repo = SvnRepo::named("répo x");
    repo.put(&[("trunk/README", "r\n")], "Layout");
    let server = Svnserve::start(repo.dir.path());
    let local = repo.path.to_str().unwrap().to_owned();
    let over_svn = server.url("répo x");
    let body = svn_poller("local", &local, "") + &svn_poller("net", &over_svn, "");
    let polld = Polld::new(&body);
    first_poll(&polld);

    let rev = repo.put(
        &[("trunk/dir é/ü b.txt", "u\n"), ("trunk/日本 語.md", "j\n")],
        "Ünïcödé ✓ and spaces",
    );
    let files = ["trunk/dir é", "trunk/dir é/ü b.txt", "trunk/日本 語.md"];
    let mut records = polld.once_ok();
    records.sort_by_key(|r| r["poller"].as_str().unwrap().to_owned());
    assert_changes(
        &records,
        &[
            repo.expected("local", &local, None, None, rev, &files),
            repo.expected("net", &over_svn, None, None, rev, &files),
        ],
    );
    assert_eq!(records[0]["comments"], "Ünïcödé ✓ and spaces");
}

#[test]
fn an_empty_log_message_is_an_empty_comment() {
    let repo = SvnRepo::with_standard_layout();
    let url = repo.url();
    let polld = Polld::new(&svn_poller("app", &url, ""));
    first_poll(&polld);
    let empty = repo.put(&[("trunk/a", "a\n")], "");
    let padded = repo.put(&[("trunk/b", "b\n")], "Trailing whitespace  \n\n\t\n");
    let records = polld.once_ok();
    assert_changes(
        &records,
        &[
            repo.expected("app", &url, None, None, empty, &["trunk/a"]),
            repo.expected("app", &url, None, None, padded, &["trunk/b"]),
        ],
    );
    assert_eq!(records[0]["comments"], "");
    assert_eq!(records[1]["comments"], "Trailing whitespace");
}

#[test]
fn a_wrong_password_fails_clearly_and_no_password_is_stored_or_shown() {
    const GOOD: &str = "correct-horse-7f3a91";
    const BAD: &str = "wrong-battery-c2d8e4";
    let repo = SvnRepo::with_standard_layout();
    repo.require_auth("alice", GOOD);
    let server = Svnserve::start(repo.dir.path());
    let url = server.url("repo");
    let mut polld = Polld::new(&svn_poller(
        "app",
        &url,
        "username = \"alice\"\npassword_env = \"POLLD_TEST_SVN_PASSWORD\"\n",
    ));
    let mut outputs = String::new();

    polld.env = vec![("POLLD_TEST_SVN_PASSWORD".into(), GOOD.into())];
    first_poll(&polld);
    assert_eq!(cursor(&polld, "app"), json!({"revision": 2}));

    let rev = repo.put(&[("trunk/a", "a\n")], "Behind a password");
    polld.env = vec![("POLLD_TEST_SVN_PASSWORD".into(), BAD.into())];
    let out = polld.once(&[]);
    out.expect_code(1);
    assert!(out.records().is_empty(), "{}", out.describe());
    assert!(
        out.stderr.contains("Password incorrect") && out.stderr.contains("app"),
        "svn's reason and the poller's name are logged:\n{}",
        out.describe()
    );
    outputs.push_str(&out.stdout);
    outputs.push_str(&out.stderr);
    let status = polld.status_of("app");
    assert_eq!(status["cursor"], json!({"revision": 2}), "{status}");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("Password incorrect"), "{status}");
    outputs.push_str(&status.to_string());

    // An unset variable is named in the error.
    polld.env = vec![];
    let out = polld.once(&[]);
    out.expect_code(1);
    assert!(
        out.stderr.contains("POLLD_TEST_SVN_PASSWORD"),
        "{}",
        out.describe()
    );
    outputs.push_str(&out.stderr);

    // The right password again: the change was not lost.
    polld.env = vec![("POLLD_TEST_SVN_PASSWORD".into(), GOOD.into())];
    let out = polld.once(&[]);
    out.expect_code(0);
    assert_changes(
        &out.records(),
        &[repo.expected("app", &url, None, None, rev, &["trunk/a"])],
    );
    outputs.push_str(&out.stdout);
    outputs.push_str(&out.stderr);
    let debug = {
        let mut cmd = polld.command();
        cmd.env("POLLD_LOG", "debug").arg("once");
        run_bounded(cmd)
    };
    outputs.push_str(&debug.stdout);
    outputs.push_str(&debug.stderr);
    let status = polld.run(&["status"]);
    outputs.push_str(&status.stdout);

    for secret in [GOOD, BAD] {
        assert!(
            !outputs.contains(secret),
            "a password was shown:\n{outputs}"
        );
        let files = files_containing(polld.dir.path(), secret.as_bytes());
        assert!(files.is_empty(), "a password was stored in {files:?}");
    }
}

#[test]
fn http_through_mod_dav_svn_reports_commits_below_the_url() {
    let repo = SvnRepo::with_standard_layout();
    let server = SvnHttpServer::start(repo.dir.path(), None);
    let url = server.url("repo/trunk");
    let polld = Polld::new(&svn_poller("app", &url, ""));
    first_poll(&polld);
    // trunk's last change, as over file://: r2 made only branches/ and tags/.
    assert_eq!(cursor(&polld, "app"), json!({"revision": 1}));
    assert!(polld.status_of("app")["last_error"].is_null());

    // Commits through a file:// working copy of the served repository.
    let r3 = repo.put(
        &[("trunk/src/a.c", "a\n"), ("trunk/b.txt", "b\n")],
        "Over http\n\nWith a body.\n",
    );
    repo.put(&[("branches/x.txt", "x\n")], "Outside the URL");
    let r5 = repo.remove(&["trunk/README"], "No readme");
    let r6 = repo.put(&[("trunk/src/a.c", "a2\n")], "Edit a.c");

    let expected = [
        repo.expected("app", &url, None, None, r3, &["b.txt", "src", "src/a.c"]),
        repo.expected("app", &url, None, None, r5, &["README"]),
        repo.expected("app", &url, None, None, r6, &["src/a.c"]),
    ];
    let out = polld.once(&[]);
    out.expect_code(0);
    assert_changes(&out.records(), &expected);
    assert_eq!(expected[0]["comments"], "Over http\n\nWith a body.");
    assert_eq!(expected[0]["repository"], url);
    assert_eq!(cursor(&polld, "app"), json!({"revision": r6}));

    // Nothing new: exit 0, nothing emitted, the cursor stays.
    let out = polld.once(&[]);
    out.expect_code(0);
    assert!(out.stdout.is_empty(), "{}", out.describe());
    assert_eq!(cursor(&polld, "app"), json!({"revision": r6}));
    assert!(polld.status_of("app")["last_error"].is_null());
}

#[test]
fn http_basic_auth_delivers_and_a_wrong_password_fails_without_showing_it() {
    const GOOD: &str = "apache-staple-5e0b72";
    const BAD: &str = "apache-wrong-91d4c3";
    let repo = SvnRepo::with_standard_layout();
    let server = SvnHttpServer::start(repo.dir.path(), Some(("alice", GOOD)));
    let url = server.url("repo");
    let mut polld = Polld::new(&svn_poller(
        "app",
        &url,
        "split = \"branches\"\nusername = \"alice\"\npassword_env = \"POLLD_TEST_SVN_PASSWORD\"\n",
    ));
    let mut outputs = String::new();

    polld.env = vec![("POLLD_TEST_SVN_PASSWORD".into(), GOOD.into())];
    first_poll(&polld);
    assert_eq!(cursor(&polld, "app"), json!({"revision": 2}));
    let r3 = repo.put(&[("trunk/a", "a\n")], "Behind basic auth");
    let out = polld.once(&[]);
    out.expect_code(0);
    assert_changes(
        &out.records(),
        &[repo.expected("app", &url, None, None, r3, &["a"])],
    );
    outputs.push_str(&out.stdout);
    outputs.push_str(&out.stderr);

    let r4 = repo.put(&[("trunk/b", "b\n")], "Not seen with a wrong password");
    polld.env = vec![("POLLD_TEST_SVN_PASSWORD".into(), BAD.into())];
    let out = polld.once(&[]);
    out.expect_code(1);
    assert!(out.records().is_empty(), "{}", out.describe());
    assert!(
        out.stderr.contains("Authentication failed") && out.stderr.contains("app"),
        "svn's reason and the poller's name are logged:\n{}",
        out.describe()
    );
    outputs.push_str(&out.stdout);
    outputs.push_str(&out.stderr);
    let status = polld.status_of("app");
    assert_eq!(status["cursor"], json!({"revision": r3}), "{status}");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("Authentication failed"), "{status}");
    outputs.push_str(&status.to_string());
    assert!(
        server.log().contains("user alice: authentication failure"),
        "Apache saw the wrong password:\n{}",
        server.log()
    );

    // The right password again: the change was not lost.
    polld.env = vec![("POLLD_TEST_SVN_PASSWORD".into(), GOOD.into())];
    let debug = {
        let mut cmd = polld.command();
        cmd.env("POLLD_LOG", "debug").arg("once");
        run_bounded(cmd)
    };
    debug.expect_code(0);
    assert_changes(
        &debug.records(),
        &[repo.expected("app", &url, None, None, r4, &["b"])],
    );
    outputs.push_str(&debug.stdout);
    outputs.push_str(&debug.stderr);
    let status = polld.run(&["status"]);
    outputs.push_str(&status.stdout);
    outputs.push_str(&polld.status_json().to_string());

    for secret in [GOOD, BAD] {
        assert!(
            !outputs.contains(secret),
            "a password was shown:\n{outputs}"
        );
        let files = files_containing(polld.dir.path(), secret.as_bytes());
        assert!(files.is_empty(), "a password was stored in {files:?}");
    }
}

#[test]
fn https_with_ca_file_delivers_and_without_it_the_certificate_is_refused() {
    let repo = SvnRepo::with_standard_layout();
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "svn-e2e");
    let server = SvnHttpServer::start_https(repo.dir.path(), None, &ca.server_cert("server"));
    // svn matches the host against the certificate's DNS names only: `localhost`.
    let url = server.url("repo/trunk").replace("127.0.0.1", "localhost");
    let ca_file = format!("ca_file = {}\n", toml_str(ca.cert.to_str().unwrap()));
    let polld =
        Polld::new(&(svn_poller("trusted", &url, &ca_file) + &svn_poller("untrusted", &url, "")));

    let out = polld.once(&[]);
    out.expect_code(1);
    assert!(out.records().is_empty(), "{}", out.describe());
    assert_eq!(cursor(&polld, "trusted"), json!({"revision": 1}));
    let status = polld.status_of("untrusted");
    assert!(status["cursor"].is_null(), "{status}");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("certificate verification failed: issuer is not trusted"),
        "{status}"
    );

    let r3 = repo.put(&[("trunk/a.c", "a\n")], "Over https");
    let out = polld.once(&[]);
    out.expect_code(1);
    assert_changes(
        &out.records(),
        &[repo.expected("trusted", &url, None, None, r3, &["a.c"])],
    );
    assert_eq!(cursor(&polld, "trusted"), json!({"revision": r3}));
    // The check was polld's own (its user agent), the log svn's; both trusted ca_file.
    wait_until(Duration::from_secs(10), "Apache's access log", || {
        let requests = server.requests();
        let by = |method: &str, client: &str| {
            requests
                .iter()
                .any(|r| r.starts_with(method) && r.contains(" 200 ") && r.contains(client))
        };
        by("OPTIONS", " polld/") && by("REPORT", " SVN/")
    });
}

#[test]
fn a_server_that_stops_answering_fails_only_its_own_poller() {
    let remote = SvnRepo::with_standard_layout();
    let mut server = Svnserve::start(remote.dir.path());
    let dead_url = server.url("repo");
    let local = SvnRepo::with_standard_layout();
    let local_url = local.url();
    let polld =
        Polld::new(&(svn_poller("dead", &dead_url, "") + &svn_poller("alive", &local_url, "")));
    first_poll(&polld);

    server.kill();
    remote.put(
        &[("trunk/lost", "l\n")],
        "Not seen while the server is down",
    );
    let rev = local.put(&[("trunk/a", "a\n")], "Seen");
    let started = std::time::Instant::now();
    let out = polld.once(&[]);
    out.expect_code(1);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{}",
        out.describe()
    );
    assert_changes(
        &out.records(),
        &[local.expected("alive", &local_url, None, None, rev, &["trunk/a"])],
    );
    assert!(
        out.stderr.contains("dead") && out.stderr.contains("svn info"),
        "the failure is logged with the poller's name and svn's reason:\n{}",
        out.describe()
    );
    let status = polld.status_of("dead");
    assert_eq!(status["cursor"], json!({"revision": 2}), "{status}");
    assert!(!status["last_error"].is_null(), "{status}");
    assert!(polld.status_of("alive")["last_error"].is_null());
}

#[test]
fn check_describes_and_validates_svn_pollers() {
    let body = svn_poller("ok", "/srv/svn/repo", "split = \"branches\"\n");
    let polld = Polld::new(&body);
    let out = polld.run(&["check"]);
    out.expect_code(0);
    assert!(out.stdout.contains("split branches"), "{}", out.describe());

    for (extra, message) in [
        ("split = { regex = \"(?P<branch>x)\" }\n", "`path`"),
        ("split = { regex = \"(?P<path>\" }\n", "does not compile"),
        ("split = \"branch\"\n", "trunk"),
        ("branches = [\"x\"]\n", "branches"),
    ] {
        let polld = Polld::new(&svn_poller("bad", "/srv/svn/repo", extra));
        let out = polld.run(&["check"]);
        out.expect_code(2);
        assert!(out.stderr.contains(message), "{extra}: {}", out.describe());
    }
    let polld = Polld::new(&svn_poller(
        "bad",
        "svn+ssh://-oProxyCommand=touch%20x/repo",
        "",
    ));
    let out = polld.run(&["check"]);
    out.expect_code(2);
    assert!(out.stderr.contains("'-'"), "{}", out.describe());
}
