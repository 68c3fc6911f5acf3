//! What the store's tests share: a real PostgreSQL per test (from polld-test-support)
//! and stores connected to it.

#![allow(dead_code)] // each test binary uses its own part

use std::collections::BTreeSet;
use std::time::Duration;

use polld_store_postgres::{Fencing, PostgresStore};

pub use polld_test_support::postgres::PgServer;

/// A replica's store on `url`.
pub async fn replica(url: &str, id: &str, fencing: Fencing) -> PostgresStore {
    PostgresStore::connect(url, id, fencing)
        .await
        .unwrap_or_else(|e| panic!("connect {id}: {e}"))
}

/// `poller-00` .. `poller-{n-1}`.
pub fn pollers(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("poller-{i:02}")).collect()
}

/// One balance round of every replica, in order; what each holds after its call.
pub async fn round(
    replicas: &[&PostgresStore],
    pollers: &[String],
    lease: Duration,
) -> Vec<BTreeSet<String>> {
    let mut held = Vec::new();
    for replica in replicas {
        held.push(replica.balance(pollers, lease).await.expect("balance"));
    }
    held
}
