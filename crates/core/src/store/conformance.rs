//! The tests every [`Store`] must pass: the seam's guarantees, checked through the
//! trait only. A store crate runs them from one test:
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn conforms() {
//!     polld_core::store::conformance::run_all(|| async { Arc::new(open_a_fresh_empty_store()) as _ }).await;
//! }
//! ```
//!
//! Each check gets a fresh, empty store from `fresh` and panics naming what broke.

use std::future::Future;
use std::sync::Arc;

use polld_backend::Cursor;
use serde_json::json;

use super::{PollRecord, Store};
use crate::model::Change;

/// Runs every check, each on a fresh store.
pub async fn run_all<F, Fut>(fresh: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    cursor_and_changes_move_together(fresh().await).await;
    a_reader_never_sees_a_cursor_without_its_changes(fresh().await).await;
    changes_leave_in_order_per_poller_and_only_when_acknowledged(fresh().await).await;
    dead_letters_block_nothing_and_go_back_to_their_place(fresh().await).await;
    status_says_what_the_store_knows(fresh().await).await;
    cursors_remember_which_backend_wrote_them(fresh().await).await;
}

/// A change of `poller` at `revision`, as the engine would queue it.
pub fn change(poller: &str, revision: &str) -> Change {
    Change {
        id: format!("{poller}:main:{revision}"),
        poller: poller.into(),
        vcs: "git".into(),
        repository: "/r".into(),
        branch: Some("main".into()),
        revision: revision.into(),
        author: "A <a@x>".into(),
        committer: None,
        comments: "short".into(),
        files: vec!["f".into()],
        when_timestamp: 0,
        project: String::new(),
        category: None,
        codebase: String::new(),
        revlink: None,
        properties: Default::default(),
    }
}

fn revisions(queued: &[super::Queued]) -> Vec<&str> {
    queued.iter().map(|q| q.change.revision.as_str()).collect()
}

pub async fn cursor_and_changes_move_together(store: Arc<dyn Store>) {
    let cursor = Cursor(json!({"refs": {"refs/heads/main": "b"}}));
    store
        .commit_poll(
            "app",
            "git",
            &cursor,
            &[change("app", "a"), change("app", "b")],
        )
        .await
        .expect("commit_poll");
    let cursors = store.cursors().await.expect("cursors");
    assert_eq!(
        cursors["app"].readable_by("git"),
        Some(&cursor),
        "the cursor moved"
    );
    let queued = store.peek("app", 10).await.expect("peek");
    assert_eq!(
        revisions(&queued),
        ["a", "b"],
        "the changes are queued, oldest first"
    );
    assert_eq!(
        queued[0].change,
        change("app", "a"),
        "a change comes back as it went in"
    );
    // A poll that found nothing new moves the cursor alone.
    let later = Cursor(json!({"refs": {"refs/heads/main": "c"}}));
    store
        .commit_poll("app", "git", &later, &[])
        .await
        .expect("commit_poll");
    assert_eq!(store.cursors().await.expect("cursors")["app"].cursor, later);
    assert_eq!(store.peek("app", 10).await.expect("peek").len(), 2);
}

pub async fn a_reader_never_sees_a_cursor_without_its_changes(store: Arc<dyn Store>) {
    const COMMITS: i64 = 50;
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for n in 1..=COMMITS {
                let change = change("app", &n.to_string());
                store
                    .commit_poll("app", "git", &Cursor(json!({ "n": n })), &[change])
                    .await
                    .expect("commit_poll");
            }
        })
    };
    loop {
        let finished = writer.is_finished();
        // The cursor first: whatever it says must already be in the outbox.
        let n = store
            .cursors()
            .await
            .expect("cursors")
            .get("app")
            .and_then(|c| c.cursor.0["n"].as_i64())
            .unwrap_or(0);
        let queued = store.peek("app", COMMITS as usize).await.expect("peek");
        assert!(
            queued.len() as i64 >= n,
            "the cursor says {n} polls were stored but only {} changes are queued",
            queued.len()
        );
        if finished {
            assert_eq!(n, COMMITS);
            break;
        }
        tokio::task::yield_now().await;
    }
    writer.await.expect("the writer finished");
}

pub async fn changes_leave_in_order_per_poller_and_only_when_acknowledged(store: Arc<dyn Store>) {
    let cursor = Cursor(json!({}));
    for (poller, revision) in [
        ("a", "a1"),
        ("b", "b1"),
        ("a", "a2"),
        ("b", "b2"),
        ("a", "a3"),
    ] {
        store
            .commit_poll(poller, "git", &cursor, &[change(poller, revision)])
            .await
            .expect("commit_poll");
    }
    let mut pending = store.pending_pollers().await.expect("pending_pollers");
    pending.sort();
    assert_eq!(pending, ["a", "b"]);
    let a = store.peek("a", 10).await.expect("peek");
    assert_eq!(
        revisions(&a),
        ["a1", "a2", "a3"],
        "one poller's changes, in order"
    );
    assert_eq!(
        revisions(&store.peek("a", 2).await.expect("peek")),
        ["a1", "a2"]
    );
    store.acknowledge(&[a[0].seq]).await.expect("acknowledge");
    assert_eq!(
        revisions(&store.peek("a", 10).await.expect("peek")),
        ["a2", "a3"]
    );
    assert_eq!(
        store.peek("b", 10).await.expect("peek").len(),
        2,
        "b untouched"
    );
    let b: Vec<i64> = store
        .peek("b", 10)
        .await
        .expect("peek")
        .iter()
        .map(|q| q.seq)
        .collect();
    store.acknowledge(&b).await.expect("acknowledge");
    assert_eq!(
        store.pending_pollers().await.expect("pending_pollers"),
        ["a"]
    );
    let counts = store.queue_counts().await.expect("queue_counts");
    assert_eq!(counts.get("a"), Some(&(2, 0)));
    assert_eq!(counts.get("b"), None);
}

pub async fn dead_letters_block_nothing_and_go_back_to_their_place(store: Arc<dyn Store>) {
    let cursor = Cursor(json!({}));
    let changes = [change("app", "a"), change("app", "b"), change("app", "c")];
    store
        .commit_poll("app", "git", &cursor, &changes)
        .await
        .expect("commit_poll");
    let queued = store.peek("app", 10).await.expect("peek");
    store
        .dead_letter(queued[0].seq, "HTTP 400")
        .await
        .expect("dead_letter");
    assert_eq!(
        revisions(&store.peek("app", 10).await.expect("peek")),
        ["b", "c"]
    );
    let letters = store.dead_letters().await.expect("dead_letters");
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (
            letters[0].seq,
            letters[0].change.revision.as_str(),
            letters[0].error.as_str()
        ),
        (queued[0].seq, "a", "HTTP 400")
    );
    let status = store.status(&["app".to_owned()]).await.expect("status");
    assert_eq!((status[0].pending, status[0].dead_letters), (2, 1));
    assert_eq!(
        status[0].last_delivery_error.as_deref(),
        Some("refused: HTTP 400")
    );
    assert_eq!(
        store.queue_counts().await.expect("queue_counts")["app"],
        (2, 1)
    );
    assert_eq!(store.redeliver(Some("other")).await.expect("redeliver"), 0);
    assert_eq!(store.redeliver(Some("app")).await.expect("redeliver"), 1);
    assert_eq!(
        revisions(&store.peek("app", 10).await.expect("peek")),
        ["a", "b", "c"],
        "a redelivered change takes its old place"
    );
    let status = store.status(&["app".to_owned()]).await.expect("status");
    assert_eq!(status[0].dead_letters, 0);
    assert!(store.dead_letters().await.expect("dead_letters").is_empty());
}

pub async fn status_says_what_the_store_knows(store: Arc<dyn Store>) {
    let names = ["app".to_owned(), "never".to_owned()];
    let ok = PollRecord {
        poller: "app".into(),
        at: 10,
        error: None,
    };
    let failed = PollRecord {
        poller: "app".into(),
        at: 20,
        error: Some("refused".into()),
    };
    store.record_polls(&[ok]).await.expect("record_polls");
    store.record_polls(&[failed]).await.expect("record_polls");
    store
        .commit_poll(
            "app",
            "git",
            &Cursor(json!({"r": 1})),
            &[change("app", "a")],
        )
        .await
        .expect("commit_poll");
    let seq = store.peek("app", 1).await.expect("peek")[0].seq;
    store
        .record_attempt(seq, "HTTP 503")
        .await
        .expect("record_attempt");
    let status = store.status(&names).await.expect("status");
    assert_eq!(status.len(), 2, "one entry per name asked, in order");
    let app = &status[0];
    assert_eq!((app.last_poll, app.last_success), (Some(20), Some(10)));
    assert_eq!(app.last_error.as_deref(), Some("refused"));
    assert_eq!(app.cursor, Some(Cursor(json!({"r": 1}))));
    assert_eq!(app.pending, 1);
    assert_eq!(app.last_delivery_error.as_deref(), Some("HTTP 503"));
    assert_eq!(status[1], super::StoredStatus::default());
}

pub async fn cursors_remember_which_backend_wrote_them(store: Arc<dyn Store>) {
    store
        .commit_poll("app", "git", &Cursor(json!({"refs": {}})), &[])
        .await
        .expect("commit_poll");
    let stored = &store.cursors().await.expect("cursors")["app"];
    assert!(stored.readable_by("git").is_some());
    assert_eq!(
        stored.readable_by("hg"),
        None,
        "another backend cannot read it"
    );
}
