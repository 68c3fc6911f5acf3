//! Balancing: replicas sharing one database split the pollers evenly, hand them over
//! on a clean stop, and take a dead replica's within two leases.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use polld_store_postgres::{Fencing, PostgresStore};
use support::{PgServer, pollers, replica, round};

const LEASE: Duration = Duration::from_secs(2);

/// Runs rounds until what each replica holds is the same two rounds running (at most
/// `max` rounds); returns the final holdings and how many rounds it took.
async fn settle(
    replicas: &[&PostgresStore],
    pollers: &[String],
    max: usize,
) -> (Vec<BTreeSet<String>>, usize) {
    let mut last = round(replicas, pollers, LEASE).await;
    for n in 2..=max {
        let held = round(replicas, pollers, LEASE).await;
        if held == last {
            return (held, n);
        }
        last = held;
    }
    panic!("no stable split after {max} rounds: {:?}", sizes(&last));
}

fn sizes(held: &[BTreeSet<String>]) -> Vec<usize> {
    held.iter().map(BTreeSet::len).collect()
}

/// Every poller held by exactly one replica, each within ±20% of an even share.
fn assert_balanced(held: &[BTreeSet<String>], pollers: &[String]) {
    let mut all = BTreeSet::new();
    for set in held {
        for poller in set {
            assert!(all.insert(poller.clone()), "{poller} held twice");
        }
    }
    assert_eq!(
        all.len(),
        pollers.len(),
        "every poller held: {:?}",
        sizes(held)
    );
    let even = pollers.len() as f64 / held.len() as f64;
    for set in held {
        let n = set.len() as f64;
        assert!(
            (n - even).abs() <= even * 0.2,
            "not within ±20% of {even}: {:?}",
            sizes(held)
        );
    }
}

/// `holders()` agrees with what each replica was told it holds.
async fn assert_holders_agree(store: &PostgresStore, ids: &[&str], held: &[BTreeSet<String>]) {
    let holders = store.holders().await.expect("holders");
    for (id, set) in ids.iter().zip(held) {
        for poller in set {
            assert_eq!(
                holders.get(poller).map(String::as_str),
                Some(*id),
                "{poller}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_split_sixty_pollers_evenly() {
    let server = PgServer::start();
    let pollers = pollers(60);
    let a = replica(&server.url(), "a", Fencing::On).await;
    let b = replica(&server.url(), "b", Fencing::On).await;
    let (held, rounds) = settle(&[&a, &b], &pollers, 6).await;
    assert_balanced(&held, &pollers);
    assert_eq!(sizes(&held), [30, 30]);
    assert_holders_agree(&a, &["a", "b"], &held).await;
    eprintln!("two replicas: settled in {rounds} rounds");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_then_four_replicas_split_evenly_and_a_released_ones_pollers_go_to_the_others() {
    let server = PgServer::start();
    let pollers = pollers(60);
    let ids = ["a", "b", "c", "d"];
    let mut stores = Vec::new();
    for id in ids {
        stores.push(replica(&server.url(), id, Fencing::On).await);
    }
    let [a, b, c, d] = [&stores[0], &stores[1], &stores[2], &stores[3]];

    let (held, rounds) = settle(&[a, b, c], &pollers, 8).await;
    assert_balanced(&held, &pollers);
    assert_eq!(sizes(&held), [20, 20, 20]);
    assert_holders_agree(a, &ids[..3], &held).await;
    eprintln!("three replicas: settled in {rounds} rounds");

    // A fourth replica takes its share.
    let (held, rounds) = settle(&[a, b, c, d], &pollers, 8).await;
    assert_balanced(&held, &pollers);
    assert_eq!(sizes(&held), [15, 15, 15, 15]);
    eprintln!("a fourth replica: settled in {rounds} rounds");

    // d stops cleanly: its pollers go to the others at their next round.
    d.release_all().await.unwrap();
    let started = Instant::now();
    let held = round(&[a, b, c], &pollers, LEASE).await;
    assert_balanced(&held, &pollers);
    assert_eq!(sizes(&held), [20, 20, 20], "one round after the release");
    eprintln!(
        "a released replica's pollers taken in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_replicas_pollers_are_taken_within_two_leases() {
    const LEASE: Duration = Duration::from_secs(1);
    let server = PgServer::start();
    let pollers = pollers(60);
    let a = replica(&server.url(), "a", Fencing::On).await;
    let b = replica(&server.url(), "b", Fencing::On).await;
    let c = replica(&server.url(), "c", Fencing::On).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held = round(&[&a, &b, &c], &pollers, LEASE).await;
    }
    assert_eq!(sizes(&held), [20, 20, 20]);

    // c dies (no release, no more renewals); a and b balance every third of a lease.
    let died = Instant::now();
    drop(c);
    loop {
        let held = round(&[&a, &b], &pollers, LEASE).await;
        if held[0].len() + held[1].len() == pollers.len() {
            assert_balanced(&held, &pollers);
            break;
        }
        assert!(
            died.elapsed() < 2 * LEASE,
            "c's pollers not taken within two leases: {:?}",
            sizes(&held)
        );
        tokio::time::sleep(LEASE / 3).await;
    }
    eprintln!("a dead replica's pollers taken in {:?}", died.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_pollers_are_let_go_and_new_ones_taken() {
    let server = PgServer::start();
    let a = replica(&server.url(), "a", Fencing::On).await;
    let all = pollers(10);
    assert_eq!(a.balance(&all, LEASE).await.unwrap().len(), 10);
    let fewer: Vec<String> = all[..4].iter().cloned().chain(["new".to_owned()]).collect();
    let held = a.balance(&fewer, LEASE).await.unwrap();
    assert_eq!(held, fewer.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(a.holders().await.unwrap().len(), 5);
}
