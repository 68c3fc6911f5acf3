//! End-to-end: `polld once` against real Mercurial repositories.
//!
//! Each scenario asserts the exact change records, computed from `hg log`/`hg status`
//! by the fixtures in `support/hg.rs`.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use polld_test_support::hg::*;
use polld_test_support::*;
use serde_json::{Value, json};

/// A remote with one changeset on default (in a temp dir the caller keeps).
fn remote() -> (tempfile::TempDir, HgRepo) {
    let dir = tempfile::Builder::new()
        .prefix("polld-e2e-hg")
        .tempdir()
        .unwrap();
    let repo = HgRepo::init(&dir.path().join("remote"));
    repo.commit_file("README", "hello\n", "Initial");
    (dir, repo)
}

/// A polld with one hg poller `app` on `repo` (plus `extra` keys) whose first poll
/// has run and emitted nothing.
fn setup(repo: &HgRepo, extra: &str) -> (Polld, String) {
    let repository = repo.path.display().to_string();
    let polld = Polld::new(&hg_poller("app", &repository, extra));
    first_poll(&polld);
    (polld, repository)
}

#[track_caller]
fn first_poll(polld: &Polld) {
    let records = polld.once_ok();
    assert!(
        records.is_empty(),
        "the first poll only records heads: {records:?}"
    );
}

fn cursor(polld: &Polld, name: &str) -> Value {
    polld.status_of(name)["cursor"].clone()
}

#[test]
fn linear_changesets_on_default_with_non_ascii_authors_and_paths() {
    let (_dir, repo) = remote();
    let (polld, repository) = setup(&repo, "");
    assert_eq!(
        cursor(&polld, "app"),
        json!({"branches": {"default": [repo.node(".")]}, "bookmarks": {}})
    );

    let a = repo.commit_file(
        "src/größe.rs",
        "fn a() {}\n",
        "Add größe\n\nWith a body.  \n\n",
    );
    std::fs::write(repo.path.join("src/größe.rs"), "fn b() {}\n").unwrap();
    std::fs::write(repo.path.join("guide.md"), "# g\n").unwrap();
    let b = repo.commit_all("Two files");
    let c = repo.commit_remove("README", "Remove the readme");

    let expected = repo.expected_many("app", &repository, "default", &[a, b, c.clone()]);
    assert_eq!(polld.once_ok(), expected);
    assert_eq!(expected[0]["author"], HG_USER);
    assert_eq!(expected[0]["comments"], "Add größe\n\nWith a body.");
    assert_eq!(expected[0]["files"], json!(["src/größe.rs"]));
    assert_eq!(expected[1]["files"], json!(["guide.md", "src/größe.rs"]));
    assert_eq!(expected[2]["files"], json!(["README"]));
    assert!(polld.once_ok().is_empty(), "reported once");
    assert_eq!(cursor(&polld, "app")["branches"]["default"], json!([c]));
}

#[test]
fn a_named_branch_reports_its_own_changesets_and_a_merge_from_it_once() {
    let (_dir, repo) = remote();
    let (polld, repository) = setup(&repo, "branches = [\"default\", \"stable\"]\n");
    let base = repo.node(".");

    repo.branch("stable");
    let s1 = repo.commit("stable one");
    let s2 = repo.commit("stable two");
    repo.update(&base);
    let d1 = repo.commit("default one");
    let merge = repo.merge("stable", "Merge stable");

    let mut expected = repo.expected_many("app", &repository, "default", &[d1, merge]);
    expected.extend(repo.expected_many("app", &repository, "stable", &[s1, s2]));
    assert_eq!(polld.once_ok(), expected);

    // Watching only default: stable's changesets are not reported, the merge is.
    let (_dir2, repo2) = remote();
    let (polld2, repository2) = setup(&repo2, "");
    let base2 = repo2.node(".");
    repo2.branch("stable");
    repo2.commit("stable only");
    repo2.update(&base2);
    let merge2 = repo2.merge("stable", "Merge stable");
    assert_eq!(
        polld2.once_ok(),
        [repo2.expected("app", &repository2, "default", &merge2)]
    );
}

#[test]
fn a_bookmark_that_moves() {
    let (_dir, repo) = remote();
    repo.bookmark("@", ".");
    let (polld, repository) = setup(&repo, "branches = []\nbookmarks = [\"@\"]\n");
    let base = repo.node(".");
    assert_eq!(
        cursor(&polld, "app"),
        json!({"branches": {}, "bookmarks": {"@": base}})
    );

    // Commits made on another branch, then the bookmark moved there.
    repo.branch("feature");
    let f1 = repo.commit("feature one");
    let f2 = repo.commit("feature two");
    repo.bookmark("@", &f2);
    assert_eq!(
        polld.once_ok(),
        repo.expected_many("app", &repository, "@", &[f1.clone(), f2])
    );

    // Moved back to a changeset already seen: nothing to report, a warning.
    repo.bookmark("@", &f1);
    let out = polld.once(&[]);
    out.expect_code(0);
    assert!(out.records().is_empty(), "{}", out.describe());
    assert!(out.stderr.contains("moved backwards"), "{}", out.describe());
    assert_eq!(cursor(&polld, "app")["bookmarks"]["@"], json!(f1));
}

#[test]
fn a_branch_with_two_heads_then_a_merge_of_them() {
    let (_dir, repo) = remote();
    let (polld, repository) = setup(&repo, "");
    let base = repo.node(".");

    let h1 = repo.commit("head one");
    repo.update(&base);
    let h2 = repo.commit("head two");
    assert_eq!(
        polld.once_ok(),
        repo.expected_many("app", &repository, "default", &[h1.clone(), h2.clone()])
    );
    let mut heads = vec![h1.clone(), h2.clone()];
    heads.sort();
    assert_eq!(cursor(&polld, "app")["branches"]["default"], json!(heads));

    // One head moves while the other stays: only the new changeset.
    repo.update(&h1);
    let h1b = repo.commit("head one again");
    assert_eq!(
        polld.once_ok(),
        [repo.expected("app", &repository, "default", &h1b)]
    );

    let merge = repo.merge(&h2, "Merge the heads");
    assert_eq!(
        polld.once_ok(),
        [repo.expected("app", &repository, "default", &merge)]
    );
    assert_eq!(cursor(&polld, "app")["branches"]["default"], json!([merge]));
}

#[test]
fn five_hundred_changesets_between_polls() {
    let dir = tempfile::tempdir().unwrap();
    let dag = build_dag(&dir.path().join("dag"), 501);
    let repo = HgRepo::init(&dir.path().join("remote"));
    repo.hg(&["pull", "-q", "-r", "0", &dag.path.display().to_string()]);
    let (polld, repository) = setup(&repo, "");

    repo.hg(&["pull", "-q", &dag.path.display().to_string()]);
    let started = Instant::now();
    let records = polld.once_ok();
    eprintln!("500 changesets in {:?}", started.elapsed());
    assert_eq!(records.len(), 500);
    let nodes = repo.nodes("1:500");
    let revisions: Vec<&str> = records
        .iter()
        .map(|r| r["revision"].as_str().unwrap())
        .collect();
    assert_eq!(revisions, nodes, "oldest first");
    assert_eq!(
        records[0],
        repo.expected("app", &repository, "default", &nodes[0])
    );
    assert_eq!(
        records[499],
        repo.expected("app", &repository, "default", &nodes[499])
    );
    assert_eq!(records[499]["files"], json!(["nf500"]));
    assert_eq!(records[499]["when_timestamp"], 500);
}

#[test]
fn a_closed_branch_reports_its_closing_changeset_and_keeps_its_head() {
    let (_dir, repo) = remote();
    let base = repo.node(".");
    repo.branch("stable");
    repo.commit("stable one");
    repo.update(&base);
    let (polld, repository) = setup(&repo, "branches = [\"stable\"]\n");

    repo.update("stable");
    let close = repo.close_branch("Close stable");
    assert_eq!(
        polld.once_ok(),
        [repo.expected("app", &repository, "stable", &close)]
    );
    assert_eq!(cursor(&polld, "app")["branches"]["stable"], json!([close]));
    assert!(polld.once_ok().is_empty());

    // Reopened by a commit on top of the closing one.
    let reopen = repo.commit("Reopen stable");
    assert_eq!(
        polld.once_ok(),
        [repo.expected("app", &repository, "stable", &reopen)]
    );
}

#[test]
fn a_stripped_head_reports_only_the_new_changesets_with_a_warning() {
    let (_dir, repo) = remote();
    let base = repo.node(".");
    repo.commit("doomed");
    let (polld, repository) = setup(&repo, "");

    repo.strip(".");
    repo.update(&base);
    let r1 = repo.commit("rewritten one");
    let r2 = repo.commit("rewritten two");
    let out = polld.once(&[]);
    out.expect_code(0);
    assert_eq!(
        out.records(),
        repo.expected_many("app", &repository, "default", &[r1, r2.clone()])
    );
    assert!(
        out.stderr.contains("stripped or rewritten"),
        "{}",
        out.describe()
    );
    assert_eq!(cursor(&polld, "app")["branches"]["default"], json!([r2]));

    // Stripped with nothing new: the cursor follows, nothing is reported.
    repo.strip(&r2);
    assert!(polld.once_ok().is_empty());
    assert_eq!(
        cursor(&polld, "app")["branches"]["default"],
        json!([repo.node(".")])
    );
}

#[test]
fn a_dead_remote_fails_its_poll_and_leaves_the_others_alone() {
    let (_dir, repo) = remote();
    let (_dir2, other) = remote();
    let body = hg_poller("dead", &repo.path.display().to_string(), "")
        + &hg_poller("alive", &other.path.display().to_string(), "");
    let polld = Polld::new(&body);
    first_poll(&polld);
    let before = cursor(&polld, "dead");

    let moved = repo.path.with_file_name("moved-away");
    std::fs::rename(&repo.path, &moved).unwrap();
    let change = other.commit("still polled");
    let out = polld.once(&[]);
    out.expect_code(1);
    assert_eq!(
        out.records(),
        [other.expected(
            "alive",
            &other.path.display().to_string(),
            "default",
            &change
        )]
    );
    assert!(out.stderr.contains("not found"), "{}", out.describe());
    let status = polld.status_of("dead");
    assert_eq!(
        status["cursor"], before,
        "a failed poll never moves the cursor"
    );
    assert!(
        status["last_error"].as_str().unwrap().contains("not found"),
        "{status}"
    );
}

#[test]
fn http_via_hg_serve_checks_heads_without_pulling() {
    let (dir, repo) = remote();
    repo.bookmark("@", ".");
    let serve = HgServe::start(&repo.path, &dir.path().join("access.log"));
    let url = serve.url(Some("ada:s3cret-pw"));
    let shown = serve.url(None);
    let polld = Polld::new(&hg_poller("web", &url, "bookmarks = [\"@\"]\n"));
    first_poll(&polld);
    let a = repo.commit("over http");
    repo.bookmark("@", &a);
    assert_eq!(
        polld.once_ok(),
        [repo.expected("web", &shown, "default", &a)],
        "reported once, for the branch (the bookmark reached it second)"
    );

    // Nothing moved: the two wire-protocol GETs and nothing else.
    let served = serve.requests().len();
    let started = Instant::now();
    assert!(polld.once_ok().is_empty());
    eprintln!("no-change `polld once` over http: {:?}", started.elapsed());
    assert_eq!(
        serve.requests()[served..],
        [
            "GET /?cmd=branchmap HTTP/1.1",
            "GET /?cmd=listkeys&namespace=bookmarks HTTP/1.1"
        ]
    );
    assert!(
        serve.requests()[..served]
            .iter()
            .any(|r| r.contains("cmd=getbundle"))
    );

    // The password in the URL is stored nowhere and shown nowhere.
    assert_eq!(
        files_containing(polld.dir.path(), b"s3cret-pw"),
        std::slice::from_ref(&polld.config)
    );
    assert!(!polld.status_json().to_string().contains("s3cret-pw"));
}

#[test]
fn check_describes_and_refuses() {
    let polld = Polld::new(&hg_poller(
        "app",
        "repo",
        "branches = [\"default\", \"stable\"]\nbookmarks = [\"@\"]\n",
    ));
    let out = polld.run(&["check"]);
    out.expect_code(0);
    assert!(
        out.stdout.contains("branches default, stable; bookmarks @"),
        "{}",
        out.describe()
    );

    let bad = Polld::new(&hg_poller("app", "ssh://-oProxyCommand=x/r", ""));
    let out = bad.run(&["check"]);
    out.expect_code(2);
    assert!(out.stderr.contains("'-'"), "{}", out.describe());
}
