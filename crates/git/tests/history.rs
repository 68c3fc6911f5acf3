//! What a poll reports as the remote's history changes, over every transport: each
//! case below runs against a local path, `git daemon`, Apache's `git http-backend`
//! over http and https (`ca_file`), and sshd, all real and on 127.0.0.1, shared by the
//! whole binary. A failure names the case and the transport:
//! `over_https::tags_are_peeled_to_commits_and_selected_by_glob`. Run one transport
//! with `cargo test -p polld-git --test history over_ssh::`.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::SystemTime;

use common::*;
use polld_backend::PollOutcome;
use serde_json::json;

/// Instantiates each case (an `async fn(Transport)` below) as a test in module
/// `$module`, over `Transport::$transport`.
///
/// On a worker thread, as in the daemon: the cases run `git` synchronously between
/// polls, and on a single-threaded runtime that would stall the HTTP/2 connection's task,
/// so a connection Apache closed meanwhile (after its 2 s keep-alive) would look alive
/// to the next poll and fail it, which never happens to the daemon.
macro_rules! over {
    ($module:ident, $transport:ident; $($case:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
                async fn $case() {
                    super::$case(super::Transport::$transport).await
                }
            )*
        }
    };
}

/// Every case, over every transport.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        over!(over_local, Local; $($case),*);
        over!(over_git_daemon, GitDaemon; $($case),*);
        over!(over_http, Http; $($case),*);
        over!(over_https, Https; $($case),*);
        over!(over_ssh, Ssh; $($case),*);
    };
}

cases!(
    first_poll_records_heads_and_reports_nothing,
    linear_commits_are_reported_oldest_first_with_every_field,
    an_unchanged_remote_touches_nothing,
    commits_shared_by_two_branches_are_reported_once,
    a_no_ff_merge_is_one_change_diffed_against_its_first_parent,
    a_new_branch_reports_only_its_own_commits,
    a_deleted_branch_is_dropped_without_a_change,
    a_force_push_reports_only_the_rewritten_commits,
    a_force_push_after_the_mirror_was_lost_reports_only_the_new_tip,
    a_new_branch_after_everything_known_was_lost_reports_only_its_tip,
    an_empty_remote_then_its_first_commit,
    a_lost_mirror_is_refetched_for_a_fast_forward,
    a_corrupt_mirror_is_rebuilt,
    tags_are_peeled_to_commits_and_selected_by_glob,
    branch_globs_select_short_names,
    the_default_follows_the_remote_head,
    pushes_without_commits_can_be_reported,
    odd_names_and_messages_are_converted_lossily,
    an_empty_message_is_an_empty_comment,
    a_huge_push_is_reported_a_thousand_changes_a_poll_oldest_first,
);

async fn first_poll_records_heads_and_reports_nothing(transport: Transport) {
    let fx = Fixture::over(transport);
    let poller = fx.poller(json!({}));
    let cursor = first_poll(&poller).await;
    assert_eq!(
        cursor.as_ref().unwrap().0,
        json!({"refs": {"refs/heads/main": fx.remote.rev_parse("main")}})
    );
    assert!(
        fx.mirror_dir().join("HEAD").exists(),
        "the first poll fills the mirror"
    );
    assert_eq!(poller.describe(), "branch: remote HEAD");
}

async fn linear_commits_are_reported_oldest_first_with_every_field(transport: Transport) {
    let fx = Fixture::over(transport);
    let poller = fx.poller(json!({}));
    let mut cursor = first_poll(&poller).await;

    let one = fx.remote.commit("src/a.rs", "a", "First\n\nBody line.\n\n");
    let two = fx.remote.commit("src/b.rs", "b", "Second");
    fx.remote.git(&["rm", "-q", "src/a.rs"]);
    fx.remote.git_dated(&["commit", "-q", "-m", "Delete a"]);
    let three = fx.remote.rev_parse("HEAD");

    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&one, &two, &three]);
    let first = &changes[0];
    assert_eq!(first.branch.as_deref(), Some("main"));
    assert_eq!(first.author, AUTHOR);
    assert_eq!(first.committer.as_deref(), Some(COMMITTER));
    assert_eq!(first.comments, "First\n\nBody line.");
    assert_eq!(first.files, ["src/a.rs"]);
    assert_eq!(first.project, None);
    let committed = fx.remote.git(&["log", "-1", "--format=%ct", &one]);
    assert_eq!(first.when_timestamp.to_string(), committed);
    assert_eq!(
        changes[2].files,
        ["src/a.rs"],
        "a deletion lists the old path"
    );
    assert_eq!(cursor_refs(&cursor)["refs/heads/main"], json!(three));
}

async fn an_unchanged_remote_touches_nothing(transport: Transport) {
    let fx = Fixture::over(transport);
    let poller = fx.poller(json!({}));
    let cursor = first_poll(&poller).await;

    let snapshot = || -> BTreeSet<(String, SystemTime)> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![fx.mirror_dir()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let meta = entry.metadata().unwrap();
                seen.insert((entry.path().display().to_string(), meta.modified().unwrap()));
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        seen
    };
    let before = snapshot();
    assert_eq!(
        poller.poll(cursor.as_ref()).await.unwrap(),
        PollOutcome::Unchanged
    );
    assert_eq!(snapshot(), before, "the mirror is not touched");

    std::fs::remove_dir_all(fx.mirror_dir()).unwrap();
    assert_eq!(
        poller.poll(cursor.as_ref()).await.unwrap(),
        PollOutcome::Unchanged
    );
    assert!(
        !fx.mirror_dir().exists(),
        "no mirror is created for an idle remote"
    );
}

async fn commits_shared_by_two_branches_are_reported_once(transport: Transport) {
    let fx = Fixture::over(transport);
    fx.remote.git(&["branch", "dev"]);
    let poller = fx.poller(json!({"branches": ["main", "dev"]}));
    let mut cursor = first_poll(&poller).await;

    // dev advances; then main fast-forwards to it and both go out in one poll.
    fx.remote.git(&["checkout", "-q", "dev"]);
    let d1 = fx.remote.commit_message("d1");
    let d2 = fx.remote.commit_message("d2");
    fx.remote.git(&["checkout", "-q", "main"]);
    fx.remote.git(&["merge", "-q", "--ff-only", "dev"]);
    let m1 = fx.remote.commit_message("m1");
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&d1, &d2, &m1]);
    assert_eq!(branches(&changes), ["main", "main", "main"]);

    // dev catches up with main: nothing new.
    fx.remote.git(&["branch", "-f", "dev", "main"]);
    let changes = advance(&poller, &mut cursor).await;
    assert!(changes.is_empty(), "{changes:?}");

    // A commit already reported on main is not reported again on dev.
    fx.remote.git(&["checkout", "-q", "dev"]);
    let d3 = fx.remote.commit_message("d3");
    fx.remote.git(&["checkout", "-q", "main"]);
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&d3]);
    assert_eq!(branches(&changes), ["dev"]);
}

async fn a_no_ff_merge_is_one_change_diffed_against_its_first_parent(transport: Transport) {
    let fx = Fixture::over(transport);
    let poller = fx.poller(json!({}));
    let mut cursor = first_poll(&poller).await;

    fx.remote.git(&["checkout", "-q", "-b", "feature"]);
    fx.remote.commit("feature/one.txt", "1", "feature one");
    fx.remote.commit("feature/two.txt", "2", "feature two");
    fx.remote.git(&["checkout", "-q", "main"]);
    let on_main = fx.remote.commit("main.txt", "m", "on main");
    fx.remote
        .git_dated(&["merge", "-q", "--no-ff", "-m", "Merge feature", "feature"]);
    let merge = fx.remote.rev_parse("HEAD");

    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&on_main, &merge]);
    assert_eq!(changes[1].comments, "Merge feature");
    assert_eq!(changes[1].files, ["feature/one.txt", "feature/two.txt"]);
}

async fn a_new_branch_reports_only_its_own_commits(transport: Transport) {
    let fx = Fixture::over(transport);
    let base = fx.remote.commit_message("base");
    let poller = fx.poller(json!({"branches": ["*"]}));
    let mut cursor = first_poll(&poller).await;

    fx.remote.git(&["checkout", "-q", "-b", "topic/new", &base]);
    let t1 = fx.remote.commit_message("t1");
    let t2 = fx.remote.commit_message("t2");
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&t1, &t2]);
    assert_eq!(branches(&changes), ["topic/new", "topic/new"]);
    assert_eq!(cursor_refs(&cursor)["refs/heads/topic/new"], json!(t2));
}

async fn a_deleted_branch_is_dropped_without_a_change(transport: Transport) {
    let fx = Fixture::over(transport);
    fx.remote.git(&["checkout", "-q", "-b", "gone"]);
    fx.remote.commit_message("doomed");
    fx.remote.git(&["checkout", "-q", "main"]);
    let poller = fx.poller(json!({"branches": ["*"]}));
    let mut cursor = first_poll(&poller).await;
    let mirror_refs = || {
        let out = git_command(&fx.mirror_dir())
            .args(["for-each-ref", "--format=%(refname)"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    };
    assert_eq!(mirror_refs(), "refs/heads/gone\nrefs/heads/main");

    fx.remote.git(&["branch", "-q", "-D", "gone"]);
    let changes = advance(&poller, &mut cursor).await;
    assert!(changes.is_empty());
    assert_eq!(
        cursor.as_ref().unwrap().0,
        json!({"refs": {"refs/heads/main": fx.remote.rev_parse("main")}})
    );
    assert_eq!(
        mirror_refs(),
        "refs/heads/main",
        "the mirror forgets it too"
    );

    // Later commits are reported as usual.
    let after = fx.remote.commit_message("after");
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&after]);
}

async fn a_force_push_reports_only_the_rewritten_commits(transport: Transport) {
    let fx = Fixture::over(transport);
    let base = fx.remote.commit_message("base");
    fx.remote.commit_message("old one");
    fx.remote.commit_message("old two");
    let poller = fx.poller(json!({}));
    let mut cursor = first_poll(&poller).await;

    fx.remote.git(&["reset", "-q", "--hard", &base]);
    let new1 = fx.remote.commit_message("new one");
    let new2 = fx.remote.commit_message("new two");
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&new1, &new2]);
}

async fn a_force_push_after_the_mirror_was_lost_reports_only_the_new_tip(transport: Transport) {
    let fx = Fixture::over(transport);
    let base = fx.remote.commit_message("base");
    fx.remote.commit_message("old one");
    let poller = fx.poller(json!({}));
    let mut cursor = first_poll(&poller).await;

    std::fs::remove_dir_all(fx.mirror_dir()).unwrap();
    fx.remote.git(&["reset", "-q", "--hard", &base]);
    fx.remote.commit_message("new one");
    let new2 = fx.remote.commit_message("new two");
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&new2]);
}

async fn a_new_branch_after_everything_known_was_lost_reports_only_its_tip(transport: Transport) {
    let fx = Fixture::over(transport);
    fx.remote.commit_message("old");
    let poller = fx.poller(json!({"branches": ["*"]}));
    let mut cursor = first_poll(&poller).await;

    // main is replaced by an unrelated branch and the mirror is lost.
    std::fs::remove_dir_all(fx.mirror_dir()).unwrap();
    fx.remote
        .git(&["checkout", "-q", "-q", "--orphan", "fresh"]);
    fx.remote.commit_message("fresh one");
    let tip = fx.remote.commit_message("fresh two");
    fx.remote.git(&["branch", "-q", "-D", "main"]);
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&tip]);
}

async fn an_empty_remote_then_its_first_commit(transport: Transport) {
    let fx = Fixture::over(transport);
    let empty = GitRepo::init(&fx.tmp.path().join("empty"));
    let poller = fx.poller_of(&empty.path, json!({}));
    let mut cursor = first_poll(&poller).await;
    assert_eq!(cursor.as_ref().unwrap().0, json!({"refs": {}}));

    // Nothing was known, so nothing bounds the first branch's history: only its tip
    // is reported (never a flood), then every commit after it.
    empty.commit_message("one");
    let two = empty.commit_message("two");
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&two]);
    let three = empty.commit_message("three");
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&three]);
}

async fn a_lost_mirror_is_refetched_for_a_fast_forward(transport: Transport) {
    let fx = Fixture::over(transport);
    let poller = fx.poller(json!({}));
    let mut cursor = first_poll(&poller).await;

    std::fs::remove_dir_all(fx.mirror_dir()).unwrap();
    let one = fx.remote.commit_message("one");
    let two = fx.remote.commit_message("two");
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&one, &two]);
}

async fn a_corrupt_mirror_is_rebuilt(transport: Transport) {
    let fx = Fixture::over(transport);
    let poller = fx.poller(json!({}));
    let mut cursor = first_poll(&poller).await;

    std::fs::remove_dir_all(fx.mirror_dir()).unwrap();
    std::fs::create_dir_all(fx.mirror_dir()).unwrap();
    std::fs::write(fx.mirror_dir().join("HEAD"), "garbage").unwrap();
    let one = fx.remote.commit_message("one");
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&one]);
}

async fn tags_are_peeled_to_commits_and_selected_by_glob(transport: Transport) {
    let fx = Fixture::over(transport);
    let main_tip = fx.remote.rev_parse("main");
    let poller = fx.poller(json!({"tags": true}));
    assert_eq!(poller.describe(), "branch: remote HEAD; tags: all");
    let v_poller = fx.poller(json!({"tags": ["v*"]}));
    let mut cursor = first_poll(&poller).await;
    let mut v_cursor = first_poll(&v_poller).await;

    // Tags on commits no watched branch has: an annotated and a lightweight one.
    fx.remote.git(&["checkout", "-q", "-b", "side"]);
    let s1 = fx.remote.commit_message("s1");
    fx.remote
        .git_dated(&["tag", "-a", "-m", "release 1", "v1", &s1]);
    let s2 = fx.remote.commit_message("s2");
    fx.remote.git(&["tag", "light", &s2]);
    // And a tag on a tree, which is no commit at all.
    fx.remote
        .git(&["tag", "tree", &format!("{main_tip}^{{tree}}")]);
    fx.remote.git(&["checkout", "-q", "main"]);

    // Tags are walked by name: `light` brings both side commits, `v1` nothing new.
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&s1, &s2]);
    assert_eq!(branches(&changes), ["refs/tags/light", "refs/tags/light"]);
    let refs = cursor_refs(&cursor);
    assert_eq!(refs["refs/tags/v1"], json!(s1), "annotated tags are peeled");
    assert_ne!(
        fx.remote.git(&["rev-parse", "v1"]),
        s1,
        "v1 is an annotated tag object"
    );
    assert!(
        refs.contains_key("refs/tags/tree"),
        "remembered, though skipped"
    );

    let changes = advance(&v_poller, &mut v_cursor).await;
    assert_eq!(revisions(&changes), [&s1]);
    assert_eq!(
        cursor_refs(&v_cursor).keys().collect::<Vec<_>>(),
        ["refs/heads/main", "refs/tags/v1"]
    );

    // A tag on a commit already reported is not reported again...
    fx.remote.git(&["tag", "v2", &s1]);
    assert!(advance(&v_poller, &mut v_cursor).await.is_empty());
    // ...unless pushes without commits are wanted.
    let pushes = fx.poller(json!({"tags": ["v*"], "build_pushes_with_no_commits": true}));
    let mut p_cursor = first_poll(&pushes).await;
    fx.remote.git(&["tag", "v3", &s1]);
    let changes = advance(&pushes, &mut p_cursor).await;
    assert_eq!(revisions(&changes), [&s1]);
    assert_eq!(branches(&changes), ["refs/tags/v3"]);
}

async fn branch_globs_select_short_names(transport: Transport) {
    let fx = Fixture::over(transport);
    for branch in ["release/1.0", "release/2.0", "feature/x", "releases"] {
        fx.remote.git(&["branch", branch]);
    }
    let release = fx.poller(json!({"branches": ["release/*"]}));
    let cursor = first_poll(&release).await;
    assert_eq!(
        cursor_refs(&cursor).keys().collect::<Vec<_>>(),
        ["refs/heads/release/1.0", "refs/heads/release/2.0"]
    );
    assert_eq!(release.describe(), "branches release/*");

    let all = fx.poller(json!({"branches": ["*"]}));
    assert_eq!(cursor_refs(&first_poll(&all).await).len(), 5);
}

async fn the_default_follows_the_remote_head(transport: Transport) {
    let fx = Fixture::over(transport);
    fx.remote.git(&["branch", "other"]);
    let poller = fx.poller(json!({}));
    let mut cursor = first_poll(&poller).await;

    // Commits on other branches are ignored.
    fx.remote.git(&["checkout", "-q", "other"]);
    let o1 = fx.remote.commit_message("o1");
    fx.remote.git(&["checkout", "-q", "main"]);
    assert_eq!(
        poller.poll(cursor.as_ref()).await.unwrap(),
        PollOutcome::Unchanged
    );

    // The remote's HEAD now names `other`: it is watched instead of main, and only its
    // commits that main did not have are reported.
    fx.remote.git(&["symbolic-ref", "HEAD", "refs/heads/other"]);
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&o1]);
    assert_eq!(branches(&changes), ["other"]);
    assert_eq!(
        cursor_refs(&cursor).keys().collect::<Vec<_>>(),
        ["refs/heads/other"]
    );
}

async fn pushes_without_commits_can_be_reported(transport: Transport) {
    let fx = Fixture::over(transport);
    let first = fx.remote.rev_parse("main");
    let second = fx.remote.commit_message("second");
    let quiet = fx.poller(json!({"branches": ["*"]}));
    let loud = fx.poller(json!({"branches": ["*"], "build_pushes_with_no_commits": true}));
    let mut quiet_cursor = first_poll(&quiet).await;
    let mut loud_cursor = first_poll(&loud).await;

    // A new branch at a known commit, and main moved back.
    fx.remote.git(&["branch", "copy", &second]);
    fx.remote.git(&["reset", "-q", "--hard", &first]);

    assert!(advance(&quiet, &mut quiet_cursor).await.is_empty());
    let changes = advance(&loud, &mut loud_cursor).await;
    assert_eq!(revisions(&changes), [&first, &second]);
    assert_eq!(branches(&changes), ["main", "copy"]);
    assert_eq!(quiet_cursor, loud_cursor);
}

async fn odd_names_and_messages_are_converted_lossily(transport: Transport) {
    use std::os::unix::ffi::OsStrExt;

    let fx = Fixture::over(transport);
    let poller = fx.poller(json!({}));
    let mut cursor = first_poll(&poller).await;

    let dir = &fx.remote.path;
    std::fs::write(dir.join("with space.txt"), "x").unwrap();
    std::fs::write(dir.join("quo\"te's.txt"), "x").unwrap();
    std::fs::write(dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")), "x").unwrap();
    fx.remote.git(&["add", "-A"]);
    // `git commit` would re-encode a non-UTF-8 name and message as Latin-1: write the
    // commit object by hand to get raw bytes, as other tools can.
    let tree = fx.remote.git(&["write-tree"]);
    let parent = fx.remote.rev_parse("HEAD");
    let when = tick();
    let mut raw = format!("tree {tree}\nparent {parent}\n").into_bytes();
    raw.extend_from_slice(b"author Ren\xe9 <author@example.com> ");
    raw.extend_from_slice(format!("{when} +0000\n").as_bytes());
    raw.extend_from_slice(format!("committer {COMMITTER} {when} +0000\n\n").as_bytes());
    raw.extend_from_slice(b"R\xe9sum\xe9 \xff\n\nbody\n");
    std::fs::write(dir.join("raw-commit"), &raw).unwrap();
    let commit = fx
        .remote
        .git(&["hash-object", "-t", "commit", "-w", "raw-commit"]);
    fx.remote.git(&["update-ref", "refs/heads/main", &commit]);

    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(changes.len(), 1);
    let change = &changes[0];
    assert_eq!(
        change.files,
        ["caf\u{fffd}.txt", "quo\"te's.txt", "with space.txt"]
    );
    assert_eq!(change.author, "Ren\u{fffd} <author@example.com>");
    assert_eq!(change.comments, "R\u{fffd}sum\u{fffd} \u{fffd}\n\nbody");
}

async fn an_empty_message_is_an_empty_comment(transport: Transport) {
    let fx = Fixture::over(transport);
    let poller = fx.poller(json!({}));
    let mut cursor = first_poll(&poller).await;
    fx.remote.git_dated(&[
        "commit",
        "-q",
        "--allow-empty",
        "--allow-empty-message",
        "-m",
        "",
    ]);
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].comments, "");
    assert!(changes[0].files.is_empty());
}

async fn a_huge_push_is_reported_a_thousand_changes_a_poll_oldest_first(transport: Transport) {
    let fx = Fixture::over(transport);
    let poller = fx.poller(json!({}));
    let mut cursor = first_poll(&poller).await;
    let shas = fx.remote.fast_import_commits("main", 2_500);

    let mut reported = Vec::new();
    let mut polls = Vec::new();
    loop {
        let (changes, partial) = advance_some(&poller, &mut cursor).await;
        polls.push(changes.len());
        reported.extend(changes.into_iter().map(|c| c.revision));
        if !partial {
            break;
        }
        // The cursor stopped at the last commit reported: the next poll goes on there.
        assert_eq!(
            cursor_refs(&cursor)["refs/heads/main"],
            json!(reported.last().unwrap())
        );
    }
    assert_eq!(polls, [1_000, 1_000, 500]);
    assert_eq!(reported, shas, "every commit once, in order");
}
