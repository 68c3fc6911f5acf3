//! End-to-end: several `polld run` replicas sharing one real PostgreSQL
//! (`[store] url_env`): the pollers spread evenly, every change arrives, and a replica
//! killed with `kill -9` loses its pollers to the others within two leases.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::time::Duration;

use polld_test_support::buildbot::WebhookReceiver;
use polld_test_support::postgres::PgServer;
use polld_test_support::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const POLLERS: usize = 6;

/// One replica: its own directory (state, config) and control port, the shared config
/// otherwise.
struct Replica {
    polld: Polld,
    port: u16,
    run: RunningPolld,
}

fn start_replica(database: &str, sink: &str, pollers: &str) -> Replica {
    let port = free_port();
    let polld = Polld::with_config(&format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\n\n\
         [store]\nurl_env = \"POLLD_DATABASE_URL\"\nlease = \"2s\"\n\n\
         [defaults]\ninterval = \"1s\"\njitter = \"0s\"\n\n{sink}\n{pollers}"
    ));
    let run = polld.spawn_run(&[("POLLD_DATABASE_URL", database)]);
    Replica { polld, port, run }
}

/// poller → holding replica, as a replica's `/status` shows it.
fn holders(port: u16) -> BTreeMap<String, String> {
    if TcpStream::connect(("127.0.0.1", port)).is_err() {
        return BTreeMap::new();
    }
    let (code, body) = http::control(port, "GET", "/status", None);
    if code != 200 {
        return BTreeMap::new();
    }
    let status: Value = serde_json::from_str(&body).unwrap_or_default();
    status["pollers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_owned(),
                p["replica"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// How many pollers each replica holds.
fn spread(holders: &BTreeMap<String, String>) -> Vec<usize> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for replica in holders.values() {
        *counts.entry(replica).or_default() += 1;
    }
    let mut counts: Vec<usize> = counts.into_values().collect();
    counts.sort();
    counts
}

fn revisions(receiver: &WebhookReceiver) -> Vec<String> {
    receiver
        .received()
        .iter()
        .map(|r| r.json()["revision"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn replicas_share_the_pollers_and_take_over_from_a_killed_one() {
    let database = PgServer::start();
    let receiver = WebhookReceiver::start(&[], 200);
    let sink = format!("[sink]\ntype = \"webhook\"\nurl = \"{}\"\n", receiver.url());
    let repos: Vec<RemotePair> = (0..POLLERS)
        .map(|_| RemotePair::with_initial_commit())
        .collect();
    let pollers: String = repos
        .iter()
        .enumerate()
        .map(|(i, pair)| git_poller(&format!("p{i}"), &pair.repo(), ""))
        .collect();

    let mut a = start_replica(&database.url(), &sink, &pollers);
    let b = start_replica(&database.url(), &sink, &pollers);
    a.run
        .wait_for(WAIT, "an even split between two replicas", || {
            TcpStream::connect(("127.0.0.1", b.port)).is_ok()
                && holders(a.port).len() == POLLERS
                && spread(&holders(a.port)) == [3, 3]
        });

    // Every repository moves: each change arrives once, from whichever replica holds it.
    let mut pushed: Vec<String> = repos
        .iter()
        .map(|pair| {
            let sha = pair.work.commit("a.txt", "a\n", "first round");
            pair.work.push(&["main"]);
            sha
        })
        .collect();
    wait_until(WAIT, "the first round of changes", || {
        pushed.iter().all(|sha| revisions(&receiver).contains(sha))
    });

    // kill -9 one replica: the other takes its pollers within two leases, and the
    // changes made meanwhile arrive.
    let a_name = format!("-{}", a.run.pid());
    let a_held = holders(b.port)
        .values()
        .filter(|replica| replica.ends_with(&a_name))
        .count();
    assert_eq!(a_held, POLLERS / 2, "replicas are named host-pid");
    a.run.kill9();
    let second: Vec<String> = repos
        .iter()
        .map(|pair| {
            let sha = pair.work.commit("b.txt", "b\n", "while a replica is dead");
            pair.work.push(&["main"]);
            sha
        })
        .collect();
    wait_until(WAIT, "b to hold every poller", || {
        spread(&holders(b.port)) == [POLLERS]
    });
    wait_until(WAIT, "the changes made while a replica was dead", || {
        second.iter().all(|sha| revisions(&receiver).contains(sha))
    });
    pushed.extend(second);

    // A third replica takes its share from the survivor.
    let c = start_replica(&database.url(), &sink, &pollers);
    wait_until(WAIT, "an even split again", || {
        TcpStream::connect(("127.0.0.1", c.port)).is_ok() && spread(&holders(b.port)) == [3, 3]
    });
    let third: Vec<String> = repos
        .iter()
        .map(|pair| {
            let sha = pair
                .work
                .commit("c.txt", "c\n", "after the third replica came");
            pair.work.push(&["main"]);
            sha
        })
        .collect();
    wait_until(WAIT, "the third round of changes", || {
        third.iter().all(|sha| revisions(&receiver).contains(sha))
    });
    pushed.extend(third);

    // Nothing lost, nothing invented; a change repeated only by a takeover.
    let delivered = revisions(&receiver);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for sha in &delivered {
        *counts.entry(sha.as_str()).or_default() += 1;
    }
    for sha in &pushed {
        assert!(counts.contains_key(sha.as_str()), "{sha} never arrived");
    }
    assert_eq!(
        counts.len(),
        pushed.len(),
        "changes nobody pushed: {counts:?}"
    );
    let repeated = counts.values().filter(|n| **n > 1).count();
    assert!(
        repeated <= POLLERS,
        "at most the change in flight per poller is repeated on a takeover: {counts:?}"
    );
    drop(a.polld);
}
