//! Scenario tests: `polld once` with the stdout sink against real git repositories,
//! asserting the exact change records.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use polld_test_support::*;
use serde_json::{Value, json};

/// A remote with one commit on main, and a polld with one git poller `app` on it (plus
/// `extra` keys), whose first poll has run (and emitted nothing).
fn setup(extra: &str) -> (RemotePair, Polld) {
    let pair = RemotePair::with_initial_commit();
    let polld = Polld::new(&git_poller("app", &pair.repo(), extra));
    first_poll(&polld);
    (pair, polld)
}

#[track_caller]
fn first_poll(polld: &Polld) {
    let records = polld.once_ok();
    assert!(
        records.is_empty(),
        "the first poll must only record heads, got {records:?}"
    );
}

/// Records grouped by branch (stable: each branch keeps its order), branches sorted.
fn by_branch(records: &[Value]) -> Vec<Value> {
    let mut v = records.to_vec();
    v.sort_by(|a, b| a["branch"].to_string().cmp(&b["branch"].to_string()));
    v
}

fn cursor_text(polld: &Polld, name: &str) -> String {
    polld.status_of(name)["cursor"].to_string()
}

#[test]
fn first_poll_records_heads_and_emits_nothing() {
    let pair = RemotePair::with_initial_commit();
    pair.work.commit("a.txt", "a\n", "second");
    pair.work.commit("b.txt", "b\n", "third");
    pair.work.push(&["main"]);
    let polld = Polld::new(&git_poller("app", &pair.repo(), ""));

    first_poll(&polld);
    let status = polld.status_of("app");
    assert!(
        !status["cursor"].is_null(),
        "cursor recorded after the first poll: {status}"
    );
    assert!(status["last_error"].is_null(), "{status}");
    assert!(
        status["cursor"].to_string().contains(&pair.work.head()),
        "the cursor names main's head {}: {status}",
        pair.work.head()
    );

    // Nothing moved: nothing emitted.
    assert!(polld.once_ok().is_empty());
}

#[test]
fn new_commits_are_emitted_once_oldest_first() {
    let (pair, polld) = setup("");
    let w = &pair.work;
    let c1 = w.commit("src/lib.rs", "pub fn a() {}\n", "Add lib\n\nWith a body.\n");
    let c2 = w.commit_files(
        &[
            ("src/lib.rs", "pub fn b() {}\n"),
            ("docs/guide.md", "# guide\n"),
        ],
        "Two files",
    );
    let c3 = w.commit_remove("README", "Remove the readme");
    w.push(&["main"]);

    let repo = pair.repo();
    let expected = w.expected_many("app", &repo, "main", &[c1, c2.clone(), c3.clone()]);
    assert_changes(&polld.once_ok(), &expected);
    // Spot-check the harness itself against the contract's wording.
    assert_eq!(expected[1]["files"], json!(["docs/guide.md", "src/lib.rs"]));
    assert_eq!(expected[2]["files"], json!(["README"]));
    assert_eq!(expected[0]["comments"], "Add lib\n\nWith a body.");
    assert_eq!(
        expected[0]["author"],
        format!("{AUTHOR_NAME} <{AUTHOR_EMAIL}>")
    );
    assert_eq!(
        expected[0]["committer"],
        format!("{COMMITTER_NAME} <{COMMITTER_EMAIL}>")
    );

    // Emitted once: the next poll has nothing.
    assert!(polld.once_ok().is_empty());

    // And the poll after that emits only what is new again.
    let c4 = w.commit("x", "x\n", "Fourth");
    w.push(&["main"]);
    assert_changes(&polld.once_ok(), &[w.expected("app", &repo, "main", &c4)]);
}

#[test]
fn poller_fields_are_copied_into_records() {
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let body = git_poller(
        "app",
        &repo,
        r#"category = "push"
codebase = "cb"
revlink = "https://git.example/app/commit/{revision}"
properties = { team = "core", tier = "1" }
"#,
    ) + &git_poller("web", &repo, "project = \"webproj\"\n");
    let polld = Polld::new(&body);
    first_poll(&polld);

    let sha = pair.work.commit("f.txt", "f\n", "Change f");
    pair.work.push(&["main"]);
    let records = polld.once_ok();
    assert_eq!(records.len(), 2, "one change per poller: {records:?}");

    let app: Vec<Value> = records
        .iter()
        .filter(|r| r["poller"] == "app")
        .cloned()
        .collect();
    let mut expected = pair.work.expected("app", &repo, "main", &sha);
    expected["category"] = json!("push");
    expected["codebase"] = json!("cb");
    expected["revlink"] = json!(format!("https://git.example/app/commit/{sha}"));
    expected["properties"] = json!({"team": "core", "tier": "1"});
    assert_changes(&app, &[expected]);

    let web: Vec<Value> = records
        .iter()
        .filter(|r| r["poller"] == "web")
        .cloned()
        .collect();
    assert_eq!(web.len(), 1, "{records:?}");
    let mut expected = pair.work.expected("web", &repo, "main", &sha);
    expected["project"] = json!("webproj");
    // The id's format with a project is the binary's choice; it must be a non-empty
    // string, distinct from the other poller's.
    let id = web[0]["id"].as_str().expect("id is a string");
    assert!(!id.is_empty());
    assert_ne!(id, app[0]["id"].as_str().unwrap());
    expected["id"] = web[0]["id"].clone();
    assert_changes(&web, &[expected]);
}

#[test]
fn merge_no_ff_is_one_change_diffed_against_first_parent() {
    let (pair, polld) = setup("");
    let w = &pair.work;
    let base = w.head();
    w.checkout_new("feature");
    let f1 = w.commit("feature/a.txt", "a\n", "feature a");
    let f2 = w.commit("feature/b.txt", "b\n", "feature b");
    w.checkout("main");
    let d = w.commit("main.txt", "main\n", "work on main");
    let m = w.merge_no_ff("feature", "Merge branch 'feature'");
    w.push(&["main"]);

    assert_eq!(
        w.first_parent_range(&base, "main"),
        vec![d.clone(), m.clone()]
    );
    let repo = pair.repo();
    let expected = w.expected_many("app", &repo, "main", &[d, m]);
    assert_eq!(
        expected[1]["files"],
        json!(["feature/a.txt", "feature/b.txt"]),
        "harness: the merge's files are those vs its first parent"
    );
    let records = polld.once_ok();
    assert_changes(&records, &expected);
    for r in &records {
        assert_ne!(
            r["revision"],
            json!(f1),
            "merged branch's own commit emitted"
        );
        assert_ne!(
            r["revision"],
            json!(f2),
            "merged branch's own commit emitted"
        );
    }
}

#[test]
fn commits_shared_by_two_branches_are_emitted_once() {
    let pair = RemotePair::with_initial_commit();
    let w = &pair.work;
    w.branch("dev");
    w.push(&["dev"]);
    let polld = Polld::new(&git_poller("app", &pair.repo(), "branches = [\"*\"]\n"));
    first_poll(&polld);

    let b = w.commit("b", "b\n", "B on main");
    let c = w.commit("c", "c\n", "C on main");
    w.checkout("dev");
    w.reset_hard("main");
    let d = w.commit("d", "d\n", "D on dev only");
    w.push(&["main", "dev"]);

    let records = polld.once_ok();
    let revs: Vec<&str> = records
        .iter()
        .map(|r| r["revision"].as_str().unwrap())
        .collect();
    let mut sorted = revs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        revs.len(),
        "a commit was emitted twice: {records:#?}"
    );
    assert_eq!(revs.len(), 3, "B, C and D each once: {records:#?}");
    // D is only on dev.
    let d_rec = records
        .iter()
        .find(|r| r["revision"] == d.as_str())
        .unwrap();
    assert_changes(
        std::slice::from_ref(d_rec),
        &[w.expected("app", &pair.repo(), "dev", &d)],
    );
    // B and C on whichever branch reported them, in order, B before C, both before D
    // when on dev.
    let pos = |s: &str| revs.iter().position(|r| *r == s).unwrap();
    assert!(pos(&b) < pos(&c), "oldest first: {revs:?}");
    for sha in [&b, &c] {
        let rec = records
            .iter()
            .find(|r| r["revision"] == sha.as_str())
            .unwrap();
        let branch = rec["branch"].as_str().unwrap();
        assert!(branch == "main" || branch == "dev", "{rec}");
        if branch == "dev" {
            assert!(pos(sha) < pos(&d), "oldest first on dev: {revs:?}");
        }
        assert_changes(
            std::slice::from_ref(rec),
            &[w.expected("app", &pair.repo(), branch, sha)],
        );
    }

    // Nothing is emitted again, and a branch created at a known commit emits nothing.
    assert!(polld.once_ok().is_empty());
    w.branch_at("copy", &c);
    w.push(&["copy"]);
    assert!(
        polld.once_ok().is_empty(),
        "a new branch at a known commit emits nothing (build_pushes_with_no_commits is off)"
    );
    // Its new commits are emitted.
    w.checkout("copy");
    let e = w.commit("e", "e\n", "E on copy");
    w.push(&["copy"]);
    assert_changes(
        &polld.once_ok(),
        &[w.expected("app", &pair.repo(), "copy", &e)],
    );
}

#[test]
fn new_branch_emits_only_its_new_commits() {
    let pair = RemotePair::with_initial_commit();
    let w = &pair.work;
    w.commit("a", "a\n", "A");
    w.push(&["main"]);
    let polld = Polld::new(&git_poller("app", &pair.repo(), "branches = [\"*\"]\n"));
    first_poll(&polld);

    w.checkout_new("topic");
    let c = w.commit("c", "c\n", "C on topic");
    let d = w.commit("d", "d\n", "D on topic");
    w.push(&["topic"]);
    assert_changes(
        &polld.once_ok(),
        &w.expected_many("app", &pair.repo(), "topic", &[c, d]),
    );
}

#[test]
fn deleted_branch_emits_nothing_and_is_dropped() {
    let pair = RemotePair::with_initial_commit();
    let w = &pair.work;
    w.checkout_new("topic");
    let t = w.commit("t", "t\n", "T on topic");
    w.push(&["topic"]);
    w.checkout("main");
    let polld = Polld::new(&git_poller("app", &pair.repo(), "branches = [\"*\"]\n"));
    first_poll(&polld);
    assert!(cursor_text(&polld, "app").contains("topic"));

    w.push_delete("topic");
    assert!(polld.once_ok().is_empty(), "a deleted branch emits nothing");
    let cursor = cursor_text(&polld, "app");
    assert!(
        !cursor.contains("topic") && !cursor.contains(&t),
        "the deleted branch is dropped from the cursor: {cursor}"
    );

    // The poller goes on working.
    let m = w.commit("m", "m\n", "M on main");
    w.push(&["main"]);
    assert_changes(
        &polld.once_ok(),
        &[w.expected("app", &pair.repo(), "main", &m)],
    );
}

#[test]
fn force_push_emits_only_the_new_commits() {
    let (pair, polld) = setup("");
    let w = &pair.work;
    let a = w.head();
    w.commit("b", "b\n", "B");
    w.commit("c", "c\n", "C");
    w.push(&["main"]);
    assert_eq!(polld.once_ok().len(), 2);

    w.reset_hard(&a);
    let d = w.commit("d", "d\n", "D after rewrite");
    let e = w.commit("e", "e\n", "E after rewrite");
    w.push_force(&["main"]);
    assert_changes(
        &polld.once_ok(),
        &w.expected_many("app", &pair.repo(), "main", &[d, e]),
    );
    assert!(polld.once_ok().is_empty());
}

/// Replaces main on the remote with an unrelated three-commit history; returns its shas.
fn rewrite_main_unrelated(pair: &RemotePair) -> Vec<String> {
    let w = &pair.work;
    w.checkout_orphan("rewritten");
    let r1 = w.commit("r1", "1\n", "R1");
    let r2 = w.commit("r2", "2\n", "R2");
    let r3 = w.commit("r3", "3\n", "R3");
    w.push_force(&["rewritten:main"]);
    vec![r1, r2, r3]
}

#[test]
fn force_push_to_an_unrelated_history_emits_its_commits() {
    let (pair, polld) = setup("");
    let w = &pair.work;
    w.commit("b", "b\n", "B");
    w.push(&["main"]);
    assert_eq!(polld.once_ok().len(), 1);

    // polld still has the old head: every commit of the new history is new.
    let new = rewrite_main_unrelated(&pair);
    pair.remote.gc_prune_now();
    assert_changes(
        &polld.once_ok(),
        &w.expected_many("app", &pair.repo(), "main", &new),
    );
}

#[test]
fn force_push_with_the_old_head_gone_emits_only_the_new_tip() {
    let (pair, polld) = setup("");
    let w = &pair.work;
    w.commit("b", "b\n", "B");
    w.push(&["main"]);
    assert_eq!(polld.once_ok().len(), 1);

    // The old head disappears everywhere: from the remote (gc) and from polld's caches
    // (every directory in the state dir; the cursor itself is kept).
    let new = rewrite_main_unrelated(&pair);
    pair.remote.gc_prune_now();
    for entry in std::fs::read_dir(polld.path("state")).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            std::fs::remove_dir_all(entry.path()).unwrap();
        }
    }
    assert!(
        !polld.status_of("app")["cursor"].is_null(),
        "the cursor is kept"
    );
    assert_changes(
        &polld.once_ok(),
        &[w.expected("app", &pair.repo(), "main", new.last().unwrap())],
    );
    // And the poller goes on normally from there.
    let c = w.commit("c", "c\n", "C");
    w.push_force(&["rewritten:main"]);
    assert_changes(
        &polld.once_ok(),
        &[w.expected("app", &pair.repo(), "main", &c)],
    );
}

#[test]
fn tags_lightweight_and_annotated() {
    let pair = RemotePair::with_initial_commit();
    let w = &pair.work;
    let base = w.head();
    w.tag("v0", &base);
    w.push(&["--tags"]);
    let polld = Polld::new(&git_poller("app", &pair.repo(), "tags = true\n"));
    first_poll(&polld);

    // Two independent commits, reachable only from their tags.
    w.checkout_new("side1");
    let x = w.commit("x", "x\n", "X, tagged v1");
    w.tag("v1", &x);
    w.checkout("main");
    w.checkout_new("side2");
    let y = w.commit("y", "y\n", "Y, tagged v2 (annotated)");
    w.tag_annotated("v2", &y, "release 2");
    w.checkout("main");
    // A tag on a commit already known emits nothing.
    w.tag("v3", &base);
    w.push(&["refs/tags/v1", "refs/tags/v2", "refs/tags/v3"]);

    let repo = pair.repo();
    let expected = vec![
        w.expected("app", &repo, "refs/tags/v1", &x),
        w.expected("app", &repo, "refs/tags/v2", &y),
    ];
    assert_changes(&by_branch(&polld.once_ok()), &expected);
    assert!(polld.once_ok().is_empty());

    // Commits on main are still watched alongside the tags.
    let m = w.commit("m", "m\n", "M on main");
    w.push(&["main"]);
    assert_changes(&polld.once_ok(), &[w.expected("app", &repo, "main", &m)]);
}

#[test]
fn tag_globs_select_tags() {
    let pair = RemotePair::with_initial_commit();
    let w = &pair.work;
    let polld = Polld::new(&git_poller("app", &pair.repo(), "tags = [\"v*\"]\n"));
    first_poll(&polld);

    w.checkout_new("s1");
    let z = w.commit("z", "z\n", "Z, tagged nightly");
    w.tag("nightly", &z);
    w.checkout("main");
    w.checkout_new("s2");
    let v = w.commit("v", "v\n", "V, tagged v5");
    w.tag("v5", &v);
    w.checkout("main");
    w.push(&["--tags"]);
    assert_changes(
        &polld.once_ok(),
        &[w.expected("app", &pair.repo(), "refs/tags/v5", &v)],
    );
}

#[test]
fn tags_off_by_default() {
    let (pair, polld) = setup("");
    let w = &pair.work;
    w.checkout_new("s");
    let x = w.commit("x", "x\n", "X, tagged");
    w.tag("v1", &x);
    w.push(&["--tags"]);
    assert!(
        polld.once_ok().is_empty(),
        "tags are not watched by default"
    );
}

#[test]
fn branch_globs_select_branches() {
    let pair = RemotePair::with_initial_commit();
    let w = &pair.work;
    let base = w.head();
    w.branch("release/1");
    w.push(&["release/1"]);
    let polld = Polld::new(&git_poller(
        "app",
        &pair.repo(),
        "branches = [\"main\", \"release/*\"]\n",
    ));
    first_poll(&polld);

    let m1 = w.commit("m1", "m\n", "M1 on main");
    w.checkout("release/1");
    let r1 = w.commit("r1", "r\n", "R1 on release/1");
    w.checkout_new("release/2");
    w.reset_hard(&base);
    let r2 = w.commit("r2", "r\n", "R2 on release/2");
    w.checkout_new("feature/x");
    w.reset_hard(&base);
    w.commit("f1", "f\n", "F1 on feature/x");
    w.push(&["main", "release/1", "release/2", "feature/x"]);

    let repo = pair.repo();
    let expected = vec![
        w.expected("app", &repo, "main", &m1),
        w.expected("app", &repo, "release/1", &r1),
        w.expected("app", &repo, "release/2", &r2),
    ];
    assert_changes(&by_branch(&polld.once_ok()), &expected);
}

#[test]
fn star_watches_every_branch() {
    let pair = RemotePair::with_initial_commit();
    let w = &pair.work;
    let base = w.head();
    let polld = Polld::new(&git_poller("app", &pair.repo(), "branches = [\"*\"]\n"));
    first_poll(&polld);

    let m1 = w.commit("m1", "m\n", "M1 on main");
    w.checkout_new("feature/x");
    w.reset_hard(&base);
    let f1 = w.commit("f1", "f\n", "F1 on feature/x");
    w.checkout_new("other");
    w.reset_hard(&base);
    let o1 = w.commit("o1", "o\n", "O1 on other");
    w.push(&["main", "feature/x", "other"]);

    let repo = pair.repo();
    let expected = vec![
        w.expected("app", &repo, "feature/x", &f1),
        w.expected("app", &repo, "main", &m1),
        w.expected("app", &repo, "other", &o1),
    ];
    assert_changes(&by_branch(&polld.once_ok()), &expected);
}

#[test]
fn default_branch_is_the_remote_head() {
    let pair = RemotePair::with_initial_commit();
    let w = &pair.work;
    w.branch("trunk");
    w.push(&["trunk"]);
    pair.remote
        .git(&["symbolic-ref", "HEAD", "refs/heads/trunk"]);
    let polld = Polld::new(&git_poller("app", &pair.repo(), ""));
    first_poll(&polld);

    w.commit("m", "m\n", "M on main (not watched)");
    w.checkout("trunk");
    let t = w.commit("t", "t\n", "T on trunk");
    w.push(&["main", "trunk"]);
    assert_changes(
        &polld.once_ok(),
        &[w.expected("app", &pair.repo(), "trunk", &t)],
    );
}

#[test]
fn build_pushes_with_no_commits_emits_the_new_tip() {
    let pair = RemotePair::with_initial_commit();
    let w = &pair.work;
    let a = w.head();
    let b = w.commit("b", "b\n", "B");
    w.push(&["main"]);
    let polld = Polld::new(&git_poller(
        "app",
        &pair.repo(),
        "branches = [\"*\"]\nbuild_pushes_with_no_commits = true\n",
    ));
    first_poll(&polld);
    let repo = pair.repo();

    // A branch appears at a known commit: one change for its tip.
    w.branch_at("copy", &b);
    w.push(&["copy"]);
    assert_changes(&polld.once_ok(), &[w.expected("app", &repo, "copy", &b)]);
    assert!(polld.once_ok().is_empty());

    // A branch moves back to a known commit: one change for its new tip.
    w.reset_hard(&a);
    w.push_force(&["main"]);
    assert_changes(&polld.once_ok(), &[w.expected("app", &repo, "main", &a)]);
    assert!(polld.once_ok().is_empty());

    // New commits are still emitted as usual (each once, not the tip twice).
    let c = w.commit("c", "c\n", "C");
    let d = w.commit("d", "d\n", "D");
    w.push(&["main"]);
    assert_changes(
        &polld.once_ok(),
        &w.expected_many("app", &repo, "main", &[c, d]),
    );
}

#[test]
fn build_pushes_with_no_commits_applies_to_tags() {
    let pair = RemotePair::with_initial_commit();
    let w = &pair.work;
    let a = w.head();
    let polld = Polld::new(&git_poller(
        "app",
        &pair.repo(),
        "tags = true\nbuild_pushes_with_no_commits = true\n",
    ));
    first_poll(&polld);
    w.tag_annotated("v1", &a, "first release");
    w.push(&["--tags"]);
    assert_changes(
        &polld.once_ok(),
        &[w.expected("app", &pair.repo(), "refs/tags/v1", &a)],
    );
}

#[test]
fn odd_file_names() {
    let (pair, polld) = setup("");
    let w = &pair.work;
    for (name, content) in [
        ("with space.txt", "1"),
        ("quote\"d.txt", "2"),
        ("single'quote.txt", "3"),
        ("back\\slash.txt", "4"),
        ("dir with space/inner file.txt", "5"),
        ("über.txt", "6"),
    ] {
        let full = w.path.join(name);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, content).unwrap();
    }
    let sha = w.commit_path(OsStr::from_bytes(b"caf\xe9.txt"), b"7", "Odd names");
    w.push(&["main"]);

    let expected = w.expected("app", &pair.repo(), "main", &sha);
    let mut files: Vec<String> = expected["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    files.sort();
    let mut want: Vec<String> = [
        "back\\slash.txt",
        "caf\u{FFFD}.txt",
        "dir with space/inner file.txt",
        "quote\"d.txt",
        "single'quote.txt",
        "with space.txt",
        "über.txt",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.sort();
    assert_eq!(files, want, "harness: the expected file list");
    assert_changes(&polld.once_ok(), &[expected]);
}

#[test]
fn empty_and_untrimmed_messages() {
    let (pair, polld) = setup("");
    let w = &pair.work;
    let empty = w.commit("a", "a\n", "");
    let padded = w.commit(
        "b",
        "b\n",
        "  Subject with leading spaces\n\n# not a comment\nBody line.   \n\n \t\n\n",
    );
    let no_change = w.commit_empty("Empty commit: no files");
    w.push(&["main"]);

    let expected = w.expected_many("app", &pair.repo(), "main", &[empty, padded, no_change]);
    assert_eq!(expected[0]["comments"], "");
    assert_eq!(
        expected[1]["comments"],
        "  Subject with leading spaces\n\n# not a comment\nBody line."
    );
    assert_eq!(expected[2]["files"], json!([]));
    assert_changes(&polld.once_ok(), &expected);
}

#[test]
fn two_thousand_commits_between_polls() {
    let (pair, polld) = setup("");
    let w = &pair.work;
    let shas = w.fast_import_commits("main", 2000);
    w.push(&["main"]);
    let records = polld.once_ok();
    assert_eq!(records.len(), 2000, "every commit is emitted");
    let expected = w.expected_many("app", &pair.repo(), "main", &shas);
    assert_changes(&records, &expected);
    assert!(polld.once_ok().is_empty());
}

#[test]
fn git_protocol_via_git_daemon() {
    let pair = RemotePair::with_initial_commit();
    let daemon = GitDaemon::start(&pair.dir.path().join("remote"));
    let url = daemon.url("app.git");
    let polld = Polld::new(&git_poller("net", &url, ""));
    first_poll(&polld);

    let w = &pair.work;
    let a = w.commit("a", "a\n", "A over git://");
    let b = w.commit("b", "b\n", "B over git://");
    w.push(&["main"]);
    assert_changes(
        &polld.once_ok(),
        &w.expected_many("net", &url, "main", &[a, b]),
    );
    assert!(polld.once_ok().is_empty());
    let status = polld.status_of("net");
    assert_eq!(status["repo"], json!(url), "{status}");
}

#[test]
fn file_url() {
    let pair = RemotePair::with_initial_commit();
    let url = polld_test_support::file_url(&pair.remote.path);
    let polld = Polld::new(&git_poller("app", &url, ""));
    first_poll(&polld);

    let w = &pair.work;
    let a = w.commit("a", "a\n", "A over file://");
    w.push(&["main"]);
    assert_changes(&polld.once_ok(), &[w.expected("app", &url, "main", &a)]);
}

#[test]
fn once_polls_only_the_named_pollers() {
    let pair = RemotePair::with_initial_commit();
    let repo = pair.repo();
    let polld = Polld::new(&(git_poller("one", &repo, "") + &git_poller("two", &repo, "")));
    first_poll(&polld);

    let a = pair.work.commit("a", "a\n", "A");
    pair.work.push(&["main"]);
    let out = polld.once(&["two"]);
    out.expect_code(0);
    assert_changes(
        &out.records(),
        &[pair.work.expected("two", &repo, "main", &a)],
    );
    // `one` was not polled: its change is still to come.
    let out = polld.once(&["one", "two"]);
    out.expect_code(0);
    assert_changes(
        &out.records(),
        &[pair.work.expected("one", &repo, "main", &a)],
    );
}

#[test]
fn smart_http_with_credentials_in_the_url_works_and_strips_them() {
    let pair = RemotePair::with_initial_commit();
    let server = GitHttpServer::start(&pair.dir.path().join("remote"), Some(("alice", "s3cr3tpw")));
    let url = server.url(Some("alice:s3cr3tpw"), "app.git");
    let shown = server.url(None, "app.git");
    let polld = Polld::new(&git_poller("web", &url, ""));
    let first = polld.once(&[]);
    first.expect_code(0);
    assert!(first.records().is_empty());

    let w = &pair.work;
    let a = w.commit("a", "a\n", "A over http");
    let b = w.commit("b", "b\n", "B over http");
    w.push(&["main"]);
    let out = polld.once(&[]);
    out.expect_code(0);
    // `repository` is the configured repo without its userinfo.
    assert_changes(
        &out.records(),
        &w.expected_many("web", &shown, "main", &[a, b]),
    );
    assert!(
        server.requests().iter().any(|r| !r.ends_with("401")),
        "the server was reached with the credentials: {:?}",
        server.requests()
    );

    let status = polld.run(&["status", "--json"]);
    status.expect_code(0);
    for (what, o) in [("first once", &first), ("once", &out), ("status", &status)] {
        assert!(
            !o.stdout.contains("s3cr3tpw") && !o.stderr.contains("s3cr3tpw"),
            "{what} leaks the password\n{}",
            o.describe()
        );
    }
    let v: Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(v["pollers"][0]["repo"], json!(shown));
    let leaks = files_containing(&polld.path("state"), b"s3cr3tpw");
    assert!(
        leaks.is_empty(),
        "stored files hold the password: {leaks:?}"
    );
}

#[test]
fn non_utf8_commit_message_is_decoded_lossily() {
    let (pair, polld) = setup("");
    let w = &pair.work;
    let sha = w.commit_raw_message("a", "a\n", b"caf\xe9 au lait\n\nbody \xff end\n");
    w.push(&["main"]);
    let expected = w.expected("app", &pair.repo(), "main", &sha);
    assert_eq!(
        expected["comments"],
        "caf\u{FFFD} au lait\n\nbody \u{FFFD} end"
    );
    assert_changes(&polld.once_ok(), &[expected]);
}

#[test]
fn relative_repo_path_is_relative_to_the_config_file() {
    let pair = RemotePair::with_initial_commit();
    // The config lives in <pair>/conf/pollers.toml and names the remote relatively.
    let conf_dir = pair.dir.path().join("conf");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let rel = "../remote/app.git";
    let mut polld = Polld::new(&git_poller("app", rel, ""));
    polld.config = conf_dir.join("pollers.toml");
    polld.write_config(&format!("{PREAMBLE}{}", git_poller("app", rel, "")));
    // polld runs with cwd = its own temp dir, where ../remote does not exist.
    first_poll(&polld);
    let a = pair.work.commit("a", "a\n", "A");
    pair.work.push(&["main"]);
    assert_changes(
        &polld.once_ok(),
        &[pair.work.expected("app", rel, "main", &a)],
    );
    assert!(
        conf_dir.join("state").is_dir(),
        "state_dir is relative to the config file"
    );
}

#[test]
fn first_push_into_an_empty_repository_reports_its_tip_only() {
    // The first poll sees no branch at all: the cursor is "no heads". With no known
    // head to stop at, the first push reports its tip, never the history it brings
    // (which, pushed into a new server, may be years of commits).
    let pair = RemotePair::new();
    let polld = Polld::new(&git_poller("app", &pair.repo(), "branches = [\"main\"]\n"));
    first_poll(&polld);
    let w = &pair.work;
    w.commit("a", "a\n", "A");
    let b = w.commit("b", "b\n", "B");
    w.push(&["main"]);
    assert_changes(
        &polld.once_ok(),
        &[w.expected("app", &pair.repo(), "main", &b)],
    );
    let c = w.commit("c", "c\n", "C");
    w.push(&["main"]);
    assert_changes(
        &polld.once_ok(),
        &[w.expected("app", &pair.repo(), "main", &c)],
    );
}
