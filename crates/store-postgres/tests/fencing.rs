//! Fencing: a replica that does not hold a poller's lease writes nothing for it.

mod support;

use std::time::Duration;

use polld_backend::Cursor;
use polld_core::store::Store;
use polld_core::store::conformance::change;
use polld_store_postgres::{Fencing, PostgresStore};
use serde_json::json;
use support::{PgServer, replica};

const LEASE: Duration = Duration::from_secs(1);

fn app() -> Vec<String> {
    vec!["app".to_owned()]
}

/// Every fenced write of `store` on poller `app` (whose queued change is `seq`) fails
/// with the lease error.
async fn every_write_is_refused(store: &PostgresStore, seq: i64) {
    let lost = "lease on poller app lost: not committing";
    let cursor = Cursor(json!({"n": 2}));
    let refused = [
        store
            .commit_poll("app", "git", &cursor, &[change("app", "b")])
            .await,
        store.acknowledge(&[seq]).await,
        store.record_attempt(seq, "HTTP 503").await,
        store.dead_letter(seq, "HTTP 400").await,
    ];
    for (what, result) in [
        "commit_poll",
        "acknowledge",
        "record_attempt",
        "dead_letter",
    ]
    .iter()
    .zip(refused)
    {
        let error = result.expect_err(what);
        assert!(error.to_string().contains(lost), "{what}: {error}");
        // Typed, so delivery can leave the change to the holder instead of stopping.
        assert_eq!(
            error.lease_lost().map(|l| l.poller.as_str()),
            Some("app"),
            "{what}"
        );
    }
}

/// The rows as `app`'s first commit left them: cursor 1, change `a` queued and never
/// attempted, no dead letter.
fn rows_untouched(server: &PgServer) {
    let db = polld_test_support::postgres::DATABASE;
    assert_eq!(
        server.psql(db, "SELECT cursor FROM cursors WHERE poller = 'app'"),
        r#"{"n":1}"#
    );
    assert_eq!(
        server.psql(
            db,
            "SELECT change::json->>'revision', attempts, last_error IS NULL FROM outbox ORDER BY seq"
        ),
        "a|0|t"
    );
    assert_eq!(server.psql(db, "SELECT count(*) FROM dead_letters"), "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_whose_lease_expired_writes_nothing() {
    let server = PgServer::start();
    let a = replica(&server.url(), "a", Fencing::On).await;
    assert_eq!(a.balance(&app(), LEASE).await.unwrap().len(), 1);
    a.commit_poll(
        "app",
        "git",
        &Cursor(json!({"n": 1})),
        &[change("app", "a")],
    )
    .await
    .expect("a holds the lease: the commit goes through");
    let seq = a.peek("app", 1).await.unwrap()[0].seq;

    // a pauses past its lease (no renewal).
    tokio::time::sleep(LEASE + Duration::from_millis(200)).await;
    every_write_is_refused(&a, seq).await;
    rows_untouched(&server);

    // Another replica takes the poller over; a, back, still writes nothing.
    let b = replica(&server.url(), "b", Fencing::On).await;
    assert_eq!(b.balance(&app(), LEASE).await.unwrap().len(), 1);
    assert!(
        a.balance(&app(), LEASE).await.unwrap().is_empty(),
        "b's lease is live: a gets nothing back"
    );
    every_write_is_refused(&a, seq).await;
    rows_untouched(&server);
    assert_eq!(
        b.holders().await.unwrap().get("app").map(String::as_str),
        Some("b")
    );
    b.acknowledge(&[seq]).await.expect("b holds it now");
    b.commit_poll("app", "git", &Cursor(json!({"n": 2})), &[])
        .await
        .expect("b holds it now");
    assert!(b.peek("app", 10).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_lease_nothing_is_written_unless_fencing_is_off() {
    let server = PgServer::start();
    let fenced = replica(&server.url(), "a", Fencing::On).await;
    let error = fenced
        .commit_poll(
            "app",
            "git",
            &Cursor(json!({"n": 1})),
            &[change("app", "a")],
        )
        .await
        .expect_err("never balanced: no lease");
    assert!(
        error.to_string().contains("lease on poller app lost"),
        "{error}"
    );
    assert!(fenced.cursors().await.unwrap().is_empty());
    assert!(fenced.pending_pollers().await.unwrap().is_empty());

    // The same database opened without fencing (`migrate-store`, a single polld).
    let unfenced = replica(&server.url(), "solo", Fencing::Off).await;
    unfenced
        .commit_poll(
            "app",
            "git",
            &Cursor(json!({"n": 1})),
            &[change("app", "a")],
        )
        .await
        .unwrap();
    let seq = unfenced.peek("app", 1).await.unwrap()[0].seq;
    unfenced.record_attempt(seq, "HTTP 503").await.unwrap();
    unfenced.acknowledge(&[seq]).await.unwrap();
    assert!(unfenced.pending_pollers().await.unwrap().is_empty());
}

/// A lease released (a clean stop, or surplus handed to a new replica) fences at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_released_lease_fences_at_once() {
    let server = PgServer::start();
    let a = replica(&server.url(), "a", Fencing::On).await;
    a.balance(&app(), Duration::from_secs(60)).await.unwrap();
    a.commit_poll(
        "app",
        "git",
        &Cursor(json!({"n": 1})),
        &[change("app", "a")],
    )
    .await
    .unwrap();
    let seq = a.peek("app", 1).await.unwrap()[0].seq;
    a.release_all().await.unwrap();
    every_write_is_refused(&a, seq).await;
    rows_untouched(&server);
    assert!(a.holders().await.unwrap().is_empty());
}

/// A takeover waits for a write in flight of the old holder, so the new holder reads the
/// cursor that write left: here the old holder's transaction is held open (a share lock
/// on its lease row, as fencing takes it) while its lease expires.
#[tokio::test(flavor = "multi_thread")]
async fn a_takeover_never_overtakes_a_write_in_flight() {
    let server = PgServer::start();
    let a = replica(&server.url(), "a", Fencing::On).await;
    a.balance(&app(), LEASE).await.unwrap();
    // The old holder's write, from psql: fence (share lock), wait past the lease, write.
    let url = server.url();
    let port = server.port().to_string();
    let started = std::time::Instant::now();
    let writer = std::thread::spawn(move || {
        let sql = "BEGIN;
            SELECT poller FROM leases WHERE poller = 'app' AND holder = 'a' FOR SHARE;
            SELECT pg_sleep(1.5);
            INSERT INTO cursors (poller, vcs, cursor, updated_at) VALUES ('app', 'git', '{\"n\":9}', 0);
            COMMIT;";
        let out = std::process::Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args([
                "-p",
                &port,
                "-d",
                polld_test_support::postgres::DATABASE,
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = replica(&server.url(), "b", Fencing::On).await;
    // While the write is in flight b's balance skips the locked row (takes nothing yet);
    // once it committed, b takes the poller, and the cursor it then reads is the one
    // that write left.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !b.balance(&app(), LEASE).await.unwrap().contains("app") {
        assert!(std::time::Instant::now() < deadline, "b never took app");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        b.cursors().await.unwrap()["app"].cursor,
        Cursor(json!({"n": 9})),
        "b took the lease while a's write was in flight"
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    writer.join().unwrap();
}

/// Writes on many pollers while two replicas rebalance them: a write either goes
/// through or fails for its lease, never on a deadlock or a lock timeout.
#[tokio::test(flavor = "multi_thread")]
async fn writes_and_balancing_at_once_only_ever_fail_for_a_lease() {
    let server = PgServer::start();
    let pollers = support::pollers(20);
    let a = std::sync::Arc::new(replica(&server.url(), "a", Fencing::On).await);
    let b = replica(&server.url(), "b", Fencing::On).await;
    a.balance(&pollers, LEASE).await.unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(2);
    let writer = {
        let (a, pollers) = (a.clone(), pollers.clone());
        tokio::spawn(async move {
            let (mut written, mut fenced) = (0, 0);
            let mut n = 0;
            while std::time::Instant::now() < until {
                n += 1;
                for poller in &pollers {
                    let cursor = Cursor(json!({ "n": n }));
                    let result = match a
                        .commit_poll(poller, "git", &cursor, &[change(poller, &n.to_string())])
                        .await
                    {
                        Ok(()) => {
                            let seqs: Vec<i64> = a
                                .peek(poller, 10)
                                .await
                                .unwrap()
                                .iter()
                                .map(|q| q.seq)
                                .collect();
                            a.acknowledge(&seqs).await
                        }
                        Err(error) => Err(error),
                    };
                    match result {
                        Ok(()) => written += 1,
                        Err(error) if error.to_string().contains("lost: not committing") => {
                            fenced += 1
                        }
                        Err(error) => panic!("{poller}: {error}"),
                    }
                }
            }
            (written, fenced)
        })
    };
    while std::time::Instant::now() < until {
        a.balance(&pollers, LEASE).await.unwrap();
        b.balance(&pollers, LEASE).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (written, fenced) = writer.await.unwrap();
    assert!(
        written > 0 && fenced > 0,
        "written {written}, fenced {fenced}"
    );
    eprintln!("written {written}, fenced {fenced}");
}
