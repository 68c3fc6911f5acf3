//! What a poll reports as a local remote's history changes: real hg repositories.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use polld_backend::PollOutcome;
use serde_json::json;

#[tokio::test]
async fn first_poll_records_every_head_and_a_second_poll_is_unchanged() {
    let fx = Fixture::new();
    let tip = fx.remote.node(".");
    fx.remote.hg(&["bookmark", "@"]);
    let poller = fx.poller(json!({"bookmarks": ["@", "missing"]}));
    let cursor = first_poll(&poller).await;
    assert_eq!(
        cursor.as_ref().unwrap().0,
        json!({"branches": {"default": [tip]}, "bookmarks": {"@": tip}})
    );
    assert!(
        fx.mirror_dir().join("repo/.hg").is_dir(),
        "the first poll fills the mirror"
    );
    assert_eq!(poller.describe(), "branches default; bookmarks @, missing");
    assert_eq!(
        poller.poll(cursor.as_ref()).await.unwrap(),
        PollOutcome::Unchanged
    );
}

#[tokio::test]
async fn linear_changesets_are_reported_oldest_first_with_every_field() {
    let fx = Fixture::new();
    let poller = fx.poller(json!({}));
    let mut cursor = first_poll(&poller).await;

    let one = fx
        .remote
        .commit_file("src/ä b.rs", "a", "First\n\nBody line.\n\n");
    fx.remote.hg(&["rm", "-q", "initial.txt"]);
    std::fs::write(fx.remote.path.join("src/ä b.rs"), "changed").unwrap();
    let two = fx.remote.commit_all("Second");

    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&one, &two]);
    let first = &changes[0];
    assert_eq!(first.branch.as_deref(), Some("default"));
    assert_eq!(first.author, HG_USER);
    assert_eq!(first.committer, None);
    assert_eq!(first.comments, "First\n\nBody line.");
    assert_eq!(first.files, ["src/ä b.rs"]);
    assert_eq!(first.project, None);
    let date = fx.remote.hg(&["log", "-r", &one, "-T", "{date|hgdate}"]);
    assert_eq!(
        first.when_timestamp.to_string(),
        date.split(' ').next().unwrap()
    );
    assert_eq!(
        changes[1].files,
        ["initial.txt", "src/ä b.rs"],
        "removed and modified"
    );
    assert_eq!(cursor.unwrap().0["branches"]["default"], json!([two]));
}

#[tokio::test]
async fn a_deleted_mirror_and_a_stripped_head_report_only_the_new_head() {
    let fx = Fixture::new();
    let poller = fx.poller(json!({}));
    let base = fx.remote.node(".");
    fx.remote.commit("doomed");
    let mut cursor = first_poll(&poller).await;

    // The mirror is lost and the head it knew is stripped: nothing bounds the walk.
    std::fs::remove_dir_all(fx.mirror_dir()).unwrap();
    fx.remote
        .hg(&["--config", "extensions.strip=", "strip", "-q", "-r", "."]);
    fx.remote.hg(&["update", "-q", &base]);
    fx.remote.commit("replacement one");
    let two = fx.remote.commit("replacement two");
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&two], "never the whole history");
    assert_eq!(
        poller.poll(cursor.as_ref()).await.unwrap(),
        PollOutcome::Unchanged
    );
}

#[tokio::test]
async fn bookmarks_only_and_a_branch_that_appears_later() {
    let fx = Fixture::new();
    let poller = fx.poller(json!({"branches": ["stable"], "bookmarks": ["feature"]}));
    let mut cursor = first_poll(&poller).await;
    assert_eq!(
        cursor.as_ref().unwrap().0,
        json!({"branches": {}, "bookmarks": {}})
    );

    fx.remote.hg(&["bookmark", "feature"]);
    fx.remote.commit("f1");
    fx.remote.hg(&["branch", "-q", "stable"]);
    let s1 = fx.remote.commit("s1");
    let changes = advance(&poller, &mut cursor).await;
    // With an empty cursor (nothing was watched yet) a new name reports its head only,
    // never its history. The active bookmark moved along to s1, which `stable`
    // reported first: it is reported once.
    let reported: Vec<_> = changes
        .iter()
        .map(|c| (c.branch.clone().unwrap(), c.revision.clone()))
        .collect();
    assert_eq!(reported, [("stable".to_owned(), s1.clone())]);
}
