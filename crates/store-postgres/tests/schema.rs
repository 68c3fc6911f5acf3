//! Opening a database: migrations once, replicas starting together, a newer schema
//! refused, and the URL's password in no error.

mod support;

use polld_core::store::Store;
use polld_store_postgres::{Fencing, PostgresStore, SCHEMA_VERSION};
use polld_test_support::postgres::DATABASE;
use support::{PgServer, replica};

#[tokio::test(flavor = "multi_thread")]
async fn opening_twice_keeps_the_state_and_migrates_once() {
    let server = PgServer::start();
    let store = replica(&server.url(), "a", Fencing::Off).await;
    let cursor = polld_backend::Cursor(serde_json::json!({"refs": {}}));
    store
        .commit_poll(
            "app",
            "git",
            &cursor,
            &[polld_core::store::conformance::change("app", "a")],
        )
        .await
        .unwrap();
    drop(store);
    let store = replica(&server.url(), "a", Fencing::Off).await;
    assert_eq!(store.cursors().await.unwrap()["app"].cursor, cursor);
    assert_eq!(store.peek("app", 10).await.unwrap().len(), 1);
    assert_eq!(
        server.psql(DATABASE, "SELECT version FROM polld_schema"),
        SCHEMA_VERSION.to_string(),
        "one row, this build's version"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_opening_an_empty_database_together_do_not_race() {
    let server = PgServer::start();
    let url = server.url();
    let opens = (0..8).map(|n| {
        let url = url.clone();
        tokio::spawn(
            async move { PostgresStore::connect(&url, &format!("r{n}"), Fencing::On).await },
        )
    });
    for open in opens {
        open.await.unwrap().expect("every replica opens");
    }
    assert_eq!(
        server.psql(DATABASE, "SELECT version FROM polld_schema"),
        SCHEMA_VERSION.to_string()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_newer_schema_is_refused_not_reset() {
    let server = PgServer::start();
    replica(&server.url(), "a", Fencing::Off).await;
    server.psql(DATABASE, "UPDATE polld_schema SET version = 999");
    let error = PostgresStore::connect(&server.url(), "a", Fencing::Off)
        .await
        .expect_err("a newer schema");
    assert!(error.to_string().contains("schema version 999"), "{error}");
}

#[tokio::test]
async fn no_error_shows_the_password() {
    // Nothing listens on port 1: the connection is refused.
    let url = "postgres://polld:s3cret@127.0.0.1:1/polld?password=s3cret";
    let error = PostgresStore::connect(url, "a", Fencing::Off)
        .await
        .expect_err("nothing listens there")
        .to_string();
    assert!(!error.contains("s3cret"), "{error}");
    assert!(error.contains("127.0.0.1:1/polld"), "{error}");
    let error = PostgresStore::connect("host=db password=s3cret", "a", Fencing::Off)
        .await
        .expect_err("not a URL")
        .to_string();
    assert!(!error.contains("s3cret"), "{error}");
}

/// The server killed (`kill -9`) and started again: what was committed is there, and
/// the same store works again once its broken connections have failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_comes_back_after_the_server_was_killed() {
    let mut server = PgServer::start();
    let store = replica(&server.url(), "a", Fencing::Off).await;
    let cursor = polld_backend::Cursor(serde_json::json!({"n": 1}));
    store.commit_poll("app", "git", &cursor, &[]).await.unwrap();
    server.kill9();
    assert!(store.cursors().await.is_err(), "the database is down");
    server.start_again();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let cursors = loop {
        match store.cursors().await {
            Ok(cursors) => break cursors,
            Err(error) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "still failing: {error}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(cursors["app"].cursor, cursor);
    server.stop();
    assert!(store.cursors().await.is_err(), "stopped");
    server.start_again();
}
