//! The store seam's conformance suite (the one the SQLite store passes) on a real
//! PostgreSQL, each check on a fresh database.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use polld_core::store::Store;
use polld_store_postgres::{Fencing, PostgresStore};
use support::{PgServer, replica};

#[tokio::test(flavor = "multi_thread")]
async fn conforms_without_fencing() {
    let server = PgServer::start();
    let databases = AtomicUsize::new(0);
    polld_core::store::conformance::run_all(|| {
        let n = databases.fetch_add(1, Ordering::SeqCst);
        let url = server.create_database(&format!("fresh_{n}"));
        async move { Arc::new(replica(&url, "solo", Fencing::Off).await) as Arc<dyn Store> }
    })
    .await;
}

/// Fencing changes nothing for a replica that holds its pollers' leases.
#[tokio::test(flavor = "multi_thread")]
async fn conforms_with_fencing_while_holding_the_leases() {
    let server = PgServer::start();
    let databases = AtomicUsize::new(0);
    polld_core::store::conformance::run_all(|| {
        let n = databases.fetch_add(1, Ordering::SeqCst);
        let url = server.create_database(&format!("fresh_{n}"));
        async move {
            let store: PostgresStore = replica(&url, "one", Fencing::On).await;
            let pollers = ["app", "a", "b"].map(String::from);
            let held = store
                .balance(&pollers, Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!(held.len(), 3, "a lone replica holds every poller");
            Arc::new(store) as Arc<dyn Store>
        }
    })
    .await;
}
