//! End-to-end: several `polld run` replicas sharing one real PostgreSQL
//! (`[store] url_env`), one-hour intervals: the pollers spread evenly; `/notify` and
//! `polld notify` reach a poller whichever replica holds it; a replica killed with
//! `kill -9` loses its pollers to the others within two leases, which poll them at
//! once; the database going away and coming back loses nothing; a new replica takes
//! its share. Every change arrives, none is invented. And the run: three
//! replicas, 60 pollers on 20 repositories with commits streaming in, a real Buildbot
//! master: `kill -9`, SIGSTOP past the lease and SIGCONT, a PostgreSQL restart, a
//! fourth replica; balanced within ±20 % after each, every commit in order per poller.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::TcpStream;
use std::time::{Duration, Instant};

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
         [defaults]\ninterval = \"1h\"\njitter = \"0s\"\n\n{sink}\n{pollers}"
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

/// Commits to every repository; the new revisions.
fn commit_all(repos: &[RemotePair], round: &str) -> Vec<String> {
    repos
        .iter()
        .map(|pair| {
            let sha = pair.work.commit(&format!("{round}.txt"), "x\n", round);
            pair.work.push(&["main"]);
            sha
        })
        .collect()
}

/// `POST /notify` for every repository, to the replica on `port`.
fn notify_all(port: u16, repos: &[RemotePair]) {
    for pair in repos {
        let path = format!("/notify?repo={}", pair.repo());
        let (code, body) = http::control(port, "POST", &path, None);
        assert_eq!(code, 202, "{body}");
    }
}

fn arrived(receiver: &WebhookReceiver, shas: &[String]) -> bool {
    let delivered = revisions(receiver);
    shas.iter().all(|sha| delivered.contains(sha))
}

#[test]
fn replicas_share_the_pollers_and_take_over_from_a_killed_one() {
    let mut database = PgServer::start();
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
    // Each replica polled what it took (the first poll records where each remote is).
    std::thread::sleep(Duration::from_secs(2));

    // Intervals are an hour: a change arrives when somebody says so. Told through one
    // replica, which holds half the pollers: the other half are polled by the other.
    let mut pushed = commit_all(&repos, "first");
    notify_all(a.port, &repos);
    wait_until(WAIT, "the changes told through one replica", || {
        arrived(&receiver, &pushed)
    });

    // kill -9 one replica: the other takes its pollers within two leases and polls them
    // at once.
    let a_name = format!("-{}", a.run.pid());
    let a_held = holders(b.port)
        .values()
        .filter(|replica| replica.ends_with(&a_name))
        .count();
    assert_eq!(a_held, POLLERS / 2, "replicas are named host-pid");
    a.run.kill9();
    let second = commit_all(&repos, "second");
    wait_until(WAIT, "b to hold every poller", || {
        spread(&holders(b.port)) == [POLLERS]
    });
    let metrics = http::control(b.port, "GET", "/metrics", None).1;
    let value = |name: &str| -> usize {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(value("polld_leases_held "), POLLERS, "{metrics}");
    // The three of the killed replica at least (more if b took some from a as both
    // started).
    assert!(
        value("polld_lease_takeovers_total ") >= POLLERS / 2,
        "{metrics}"
    );
    // Its own pollers learn of the change when told; those it took were polled when
    // taken.
    notify_all(b.port, &repos);
    wait_until(WAIT, "the changes made while a replica died", || {
        arrived(&receiver, &second)
    });
    pushed.extend(second);

    // The database goes away: /healthz says why; when it is back, nothing made
    // meanwhile is lost.
    database.stop();
    wait_until(WAIT, "/healthz to say the leases cannot be renewed", || {
        let (code, body) = http::control(b.port, "GET", "/healthz", None);
        code == 503 && body.contains("cannot renew leases")
    });
    let third = commit_all(&repos, "third");
    database.start_again();
    wait_until(WAIT, "/healthz to recover", || {
        http::control(b.port, "GET", "/healthz", None).0 == 200
    });
    notify_all(b.port, &repos);
    wait_until(WAIT, "the changes made while the database was down", || {
        arrived(&receiver, &third)
    });
    pushed.extend(third);

    // A new replica takes its share from the survivor; `polld notify` through it
    // reaches every poller.
    let c = start_replica(&database.url(), &sink, &pollers);
    wait_until(WAIT, "an even split again", || {
        TcpStream::connect(("127.0.0.1", c.port)).is_ok() && spread(&holders(b.port)) == [3, 3]
    });
    std::thread::sleep(Duration::from_secs(2));
    let fourth = commit_all(&repos, "fourth");
    let urls: Vec<String> = repos.iter().map(RemotePair::repo).collect();
    let mut notify = vec!["notify"];
    notify.extend(urls.iter().map(String::as_str));
    c.polld.run(&notify).expect_code(0);
    wait_until(WAIT, "the changes told through the new replica", || {
        arrived(&receiver, &fourth)
    });
    pushed.extend(fourth);

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
}

#[test]
fn migrate_store_copies_cursors_queued_changes_and_dead_letters() {
    let database = PgServer::start();
    let pair = RemotePair::with_initial_commit();
    // The sink refuses the first change (a dead letter) and is down for the rest.
    let refusing = WebhookReceiver::start(&[400], 503);
    let config = |sink_url: &str, store: &str| {
        format!(
            "[daemon]\nstate_dir = \"state\"\n\n{store}\n[sink]\ntype = \"webhook\"\nurl = \"{sink_url}\"\n\n{}",
            git_poller("app", &pair.repo(), "")
        )
    };
    let mut polld = Polld::with_config(&config(&refusing.url(), ""));
    polld.once(&[]).expect_code(0);
    let shas: Vec<String> = (0..3)
        .map(|i| {
            pair.work
                .commit(&format!("{i}.txt"), "x\n", &format!("change {i}"))
        })
        .collect();
    pair.work.push(&["main"]);
    polld.once(&[]).expect_code(1);
    let before = polld.status_of("app");
    assert_eq!(
        (before["pending"].as_u64(), before["dead_letters"].as_u64()),
        (Some(2), Some(1))
    );

    // Into PostgreSQL: the same state, seen through the database.
    let accepting = WebhookReceiver::start(&[], 200);
    let shared = "[store]\nurl_env = \"POLLD_DATABASE_URL\"\n";
    polld.write_config(&config(&accepting.url(), shared));
    polld
        .env
        .push(("POLLD_DATABASE_URL".to_owned(), database.url()));
    let out = polld.run(&["migrate-store"]);
    out.expect_code(0);
    assert!(
        out.stdout
            .contains("copied 1 cursor(s), 2 queued change(s) and 1 dead letter(s)"),
        "{}",
        out.describe()
    );
    let after = polld.status_of("app");
    assert_eq!(after["cursor"], before["cursor"]);
    assert_eq!(
        (after["pending"].as_u64(), after["dead_letters"].as_u64()),
        (Some(2), Some(1))
    );
    // Only into an empty store.
    let again = polld.run(&["migrate-store"]);
    again.expect_code(1);
    assert!(again.stderr.contains("not empty"), "{}", again.describe());

    // A replica delivers what was queued, and the dead letter after `redeliver`, in order.
    let mut replica = polld.spawn_run(&[]);
    wait_until(WAIT, "the queued changes", || {
        accepting.received().len() == 2
    });
    polld.run(&["redeliver"]).expect_code(0);
    replica.wait_for(WAIT, "the redelivered change", || {
        accepting.received().len() == 3
    });
    let delivered: Vec<String> = revisions(&accepting);
    assert_eq!(delivered[..2], shas[1..]);
    assert_eq!(delivered[2], shas[0]);
}

/// Each replica's share of `pollers` is within ±20 % of an even split among `replicas`.
fn balanced(holders: &BTreeMap<String, String>, pollers: usize, replicas: usize) -> bool {
    let counts = spread(holders);
    let even = pollers as f64 / replicas as f64;
    holders.len() == pollers
        && counts.len() == replicas
        && counts
            .iter()
            .all(|&n| (n as f64 - even).abs() <= 0.2 * even)
}

#[test]
fn three_replicas_through_kill_pause_database_restart_and_a_fourth() {
    const REPOS: usize = 20;
    const PER_REPO: usize = 3;
    const TOTAL: usize = REPOS * PER_REPO;
    let mut database = PgServer::start();
    let master = polld_test_support::buildbot::BuildbotMaster::start_without_builds();
    let repos: std::sync::Arc<Vec<RemotePair>> = std::sync::Arc::new(
        (0..REPOS)
            .map(|_| RemotePair::with_initial_commit())
            .collect(),
    );
    // Three pollers per repository, told apart at the master by their project.
    let pollers: String = (0..TOTAL)
        .map(|i| {
            let name = format!("p{i}");
            git_poller(
                &name,
                &repos[i / PER_REPO].repo(),
                &format!("project = \"{name}\""),
            )
        })
        .collect();
    let sink = master.sink_config();
    let start = |database: &PgServer| {
        let port = free_port();
        let polld = Polld::with_config(&format!(
            "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\n\n\
             [store]\nurl_env = \"POLLD_DATABASE_URL\"\nlease = \"2s\"\n\n\
             [defaults]\ninterval = \"1s\"\njitter = \"0s\"\n\n{sink}\n{pollers}"
        ));
        let run = polld.spawn_run(&[("POLLD_DATABASE_URL", &database.url())]);
        Replica { polld, port, run }
    };
    let mut r1 = start(&database);
    let r2 = start(&database);
    let r3 = start(&database);
    wait_until(
        WAIT,
        "three replicas balanced and every first poll done",
        || {
            balanced(&holders(r3.port), TOTAL, 3) && {
                let (_, body) = http::control(r3.port, "GET", "/status", None);
                let status: Value = serde_json::from_str(&body).unwrap_or_default();
                status["pollers"]
                    .as_array()
                    .is_some_and(|p| p.iter().all(|p| !p["cursor"].is_null()))
            }
        },
    );

    // Commits stream into the repositories through everything that follows.
    let streaming = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let streamer = {
        let (repos, streaming) = (repos.clone(), streaming.clone());
        std::thread::spawn(move || {
            let mut pushed: Vec<Vec<String>> = vec![Vec::new(); REPOS];
            let mut n = 0;
            while streaming.load(std::sync::atomic::Ordering::SeqCst) {
                let r = n % REPOS;
                let sha =
                    repos[r]
                        .work
                        .commit("stream.txt", &format!("{n}\n"), &format!("commit {n}"));
                repos[r].work.push(&["main"]);
                pushed[r].push(sha);
                n += 1;
                std::thread::sleep(Duration::from_millis(150));
            }
            pushed
        })
    };
    let begun = Instant::now();
    let after = |what: &str, check: &dyn Fn() -> bool| {
        wait_until(WAIT, what, check);
        eprintln!("{:5.1} s: {what}", begun.elapsed().as_secs_f64());
    };

    std::thread::sleep(Duration::from_secs(3));
    r1.run.kill9();
    after("two replicas balanced after a kill -9", &|| {
        balanced(&holders(r3.port), TOTAL, 2)
    });
    r2.run.signal(libc::SIGSTOP);
    after(
        "one replica holding everything while the other is stopped",
        &|| balanced(&holders(r3.port), TOTAL, 1),
    );
    std::thread::sleep(Duration::from_secs(2));
    r2.run.signal(libc::SIGCONT);
    after(
        "two replicas balanced after the stopped one came back",
        &|| balanced(&holders(r3.port), TOTAL, 2),
    );
    database.stop();
    std::thread::sleep(Duration::from_secs(3));
    database.start_again();
    after(
        "two replicas balanced after the database restarted",
        &|| balanced(&holders(r3.port), TOTAL, 2),
    );
    let r4 = start(&database);
    after("three replicas balanced with a fourth one added", &|| {
        TcpStream::connect(("127.0.0.1", r4.port)).is_ok() && balanced(&holders(r3.port), TOTAL, 3)
    });
    std::thread::sleep(Duration::from_secs(3));
    streaming.store(false, std::sync::atomic::Ordering::SeqCst);
    let pushed = streamer.join().unwrap();
    let commits: usize = pushed.iter().map(Vec::len).sum();

    // Every commit arrives for each of its pollers, in order; repeats only by takeovers.
    // No wait_until: when some do not arrive, the assertions below say which, with
    // what the replicas know of that poller.
    let by_poller = || {
        let mut seen: HashMap<String, Vec<String>> = HashMap::new();
        for change in master.changes() {
            seen.entry(change["project"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(change["revision"].as_str().unwrap_or_default().to_owned());
        }
        seen
    };
    let arrived = |seen: &HashMap<String, Vec<String>>| {
        (0..TOTAL).all(|i| {
            let got = seen.get(&format!("p{i}"));
            pushed[i / PER_REPO]
                .iter()
                .all(|sha| got.is_some_and(|got| got.contains(sha)))
        })
    };
    let stream_stopped = Instant::now();
    let mut seen = by_poller();
    while !arrived(&seen) && stream_stopped.elapsed() < Duration::from_secs(180) {
        std::thread::sleep(Duration::from_millis(500));
        seen = by_poller();
    }
    eprintln!(
        "{} changes for {} commits at the master {:.1} s after the stream stopped",
        seen.values().map(Vec::len).sum::<usize>(),
        commits * PER_REPO,
        stream_stopped.elapsed().as_secs_f64()
    );
    let statuses: Vec<Value> = [&r2, &r3, &r4]
        .iter()
        .map(|r| {
            serde_json::from_str(&http::control(r.port, "GET", "/status", None).1)
                .unwrap_or_default()
        })
        .collect();
    let known = |name: &str| -> Vec<&Value> {
        statuses
            .iter()
            .filter_map(|s| s["pollers"].as_array())
            .flatten()
            .filter(|p| p["name"] == name)
            .collect()
    };
    for i in 0..TOTAL {
        let name = format!("p{i}");
        let got = seen.remove(&name).unwrap_or_default();
        let mut first_seen: Vec<String> = Vec::new();
        for sha in &got {
            if !first_seen.contains(sha) {
                first_seen.push(sha.clone());
            }
        }
        assert_eq!(
            first_seen,
            pushed[i / PER_REPO],
            "{name}: every commit once, in order (duplicates aside); the replicas say {:#?}",
            known(&name)
        );
        assert!(
            got.len() - first_seen.len() <= 4,
            "{name}: at most one repeat per takeover: {got:?}"
        );
    }
    assert!(seen.is_empty(), "changes of no poller: {seen:?}");
}
