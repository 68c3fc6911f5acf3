//! The delivery loop against a real SQLite store: lanes per poller, an unreachable
//! sink, refusals, a panicking sink, and `drain`. The sink is scripted (a test double of
//! polld's own `Sink` trait); the end-to-end tests use real receivers.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use polld_backend::Cursor;
use polld_core::delivery::{Delivery, QueuedSignal};
use polld_core::metrics::Metrics;
use polld_core::model::Change;
use polld_core::sink::{Sink, SinkError, SinkFailure};
use polld_core::store::conformance::change as sample_change;
use polld_core::store::{Access, Store, StoredStatus};
use polld_store_sqlite::SqliteStore;
use tokio_util::sync::CancellationToken;

type Answer = dyn Fn(&Change) -> Result<(), SinkError> + Send + Sync;

/// Answers each change as `answer` says, one change per call, and records what it
/// acknowledged.
struct ScriptedSink {
    answer: Mutex<Box<Answer>>,
    taken: Mutex<Vec<String>>,
}

impl ScriptedSink {
    fn new(answer: impl Fn(&Change) -> Result<(), SinkError> + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(ScriptedSink {
            answer: Mutex::new(Box::new(answer)),
            taken: Mutex::new(Vec::new()),
        })
    }

    fn answer(&self, answer: impl Fn(&Change) -> Result<(), SinkError> + Send + Sync + 'static) {
        *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = Box::new(answer);
    }

    fn taken(&self) -> Vec<String> {
        self.taken.lock().unwrap().clone()
    }
}

#[async_trait]
impl Sink for ScriptedSink {
    async fn deliver(&self, changes: &[Change]) -> Result<(), SinkFailure> {
        for (acknowledged, change) in changes.iter().enumerate() {
            // A panicking answer poisons the lock: the test goes on with it.
            let answer = (self.answer.lock().unwrap_or_else(|p| p.into_inner()))(change);
            if let Err(error) = answer {
                return Err(SinkFailure {
                    acknowledged,
                    error,
                });
            }
            self.taken.lock().unwrap().push(change.id.clone());
        }
        Ok(())
    }

    fn max_batch(&self) -> usize {
        1
    }

    fn max_in_flight(&self) -> usize {
        2
    }
}

fn fresh_store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(dir.path(), Access::Exclusive).unwrap())
}

async fn queue(store: &Arc<dyn Store>, poller: &str, revisions: &[&str]) {
    let changes: Vec<Change> = revisions.iter().map(|r| sample_change(poller, r)).collect();
    store
        .commit_poll(poller, "git", &Cursor(serde_json::json!({})), &changes)
        .await
        .unwrap();
}

async fn status(store: &Arc<dyn Store>, poller: &str) -> StoredStatus {
    store.status(&[poller.to_owned()]).await.unwrap().remove(0)
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn start(
    store: &Arc<dyn Store>,
    sink: &Arc<ScriptedSink>,
) -> (Arc<QueuedSignal>, CancellationToken) {
    let delivery = Delivery::new(store.clone(), sink.clone(), Arc::new(Metrics::new()));
    let (queued, stop) = (Arc::new(QueuedSignal::default()), CancellationToken::new());
    tokio::spawn(delivery.run(Arc::clone(&queued), stop.clone()));
    (queued, stop)
}

#[tokio::test(start_paused = true)]
async fn a_poller_whose_changes_fail_does_not_hold_up_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(&dir);
    queue(&store, "a", &["a1", "a2"]).await;
    queue(&store, "b", &["b1"]).await;
    let sink = ScriptedSink::new(|change| match change.poller.as_str() {
        "a" => Err(SinkError::Retry("HTTP 500".into())),
        _ => Ok(()),
    });
    let (queued, stop) = start(&store, &sink);
    until("b's change", || sink.taken() == ["b:main:b1"]).await;
    queue(&store, "b", &["b2"]).await;
    queued.queued("b");
    until("b's second change", || sink.taken().len() == 2).await;
    assert_eq!(status(&store, "a").await.pending, 2);

    sink.answer(|_| Ok(()));
    until("a's changes, in order", || sink.taken().len() == 4).await;
    assert_eq!(
        sink.taken(),
        ["b:main:b1", "b:main:b2", "a:main:a1", "a:main:a2"]
    );
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_sink_holds_every_lane_and_a_refusal_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(&dir);
    queue(&store, "a", &["a1", "bad", "a2"]).await;
    queue(&store, "b", &["b1"]).await;
    let sink = ScriptedSink::new(|_| Err(SinkError::Unreachable("connection refused".into())));
    let (_queued, stop) = start(&store, &sink);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(sink.taken().is_empty());
    sink.answer(|change| match change.revision.as_str() {
        "bad" => Err(SinkError::Refused("HTTP 400".into())),
        _ => Ok(()),
    });
    until("everything but the refused change", || {
        sink.taken().len() == 3
    })
    .await;
    let a: Vec<String> = sink
        .taken()
        .into_iter()
        .filter(|id| id.starts_with("a:"))
        .collect();
    assert_eq!(a, ["a:main:a1", "a:main:a2"]);
    assert_eq!(status(&store, "a").await.dead_letters, 1);
    stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_panicking_sink_is_one_lane_failing() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(&dir);
    queue(&store, "a", &["a1"]).await;
    queue(&store, "b", &["b1"]).await;
    let sink = ScriptedSink::new(|change| {
        assert_ne!(change.poller, "a", "a sink bug");
        Ok(())
    });
    let (_queued, stop) = start(&store, &sink);
    until("b's change", || sink.taken() == ["b:main:b1"]).await;
    let panicked = |noted: &Option<String>| {
        noted
            .as_deref()
            .is_some_and(|e| e.contains("the sink panicked: assertion"))
    };
    let mut noted = None;
    for _ in 0..2000 {
        noted = status(&store, "a").await.last_delivery_error;
        if panicked(&noted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        panicked(&noted),
        "a's failure is noted for `status`: {noted:?}"
    );
    sink.answer(|_| Ok(()));
    until("a's change after its backoff", || sink.taken().len() == 2).await;
    stop.cancel();
}

#[tokio::test]
async fn drain_leaves_a_failing_lane_for_later_and_delivers_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = fresh_store(&dir);
    queue(&store, "a", &["a1", "a2"]).await;
    queue(&store, "b", &["b1", "b2"]).await;
    let sink = ScriptedSink::new(|change| match change.poller.as_str() {
        "a" => Err(SinkError::Retry("HTTP 503".into())),
        _ => Ok(()),
    });
    let delivery = Delivery::new(store.clone(), sink.clone(), Arc::new(Metrics::new()));
    let error = delivery.drain().await.unwrap_err().to_string();
    assert!(error.contains("poller a: HTTP 503"), "{error}");
    assert_eq!(sink.taken(), ["b:main:b1", "b:main:b2"]);
    assert_eq!(status(&store, "a").await.pending, 2);
}
