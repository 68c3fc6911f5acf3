//! Hostile remotes and months of uptime: remotes that trickle, that never stop talking or
//! that hang behind ssh; a daemon killed in the middle of a pull; mirrors left with stale
//! locks or a pack per fetch; thousands of heads, huge messages and idle connections.
//!
//! Each test runs the real binary against a remote or a fake server started here, and
//! bounds everything it waits for: a daemon that hangs is killed (with its children) and
//! the test fails saying so, with polld's stderr.
//!
//! The contract's "Deadlines and fairness" (0.2): `timeout` bounds each remote operation
//! of a poll from start to end, however slowly the bytes keep coming; `max_polls_per_host`
//! keeps one host from holding every poll slot; a poll past its deadline leaves no child
//! process behind; `polld once` ends within the longest deadline it needs.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use polld_test_support::hg::{HgRepo, HgServe, hg_command, hg_poller};
use polld_test_support::ssh::{Sshd, keygen};
use polld_test_support::svn::svn_poller;
use polld_test_support::*;

/// Words an error about a missed deadline may use.
const DEADLINE_WORDS: &[&str] = &[
    "deadline",
    "timeout",
    "timed out",
    "did not finish",
    "within",
];

// ---------------------------------------------------------------------------------------
// Deadlines
// ---------------------------------------------------------------------------------------

#[test]
fn a_trickling_git_daemon_fails_the_poll_at_its_deadline() {
    let trickler = FakeGitServer::trickling();
    let polld = Polld::with_config(&config(
        "",
        &git_poller(
            "slow",
            &format!("git://127.0.0.1:{}/r.git", trickler.port),
            "timeout = \"3s\"",
        ),
    ));
    let run = run_watched(
        polld.command().arg("once"),
        Duration::from_secs(40),
        RSS_GUARD_MIB,
    );
    run.expect_exit(1);
    assert!(
        trickler.connections() >= 1,
        "polld connected to the trickling server\n{}",
        run.describe()
    );
    assert!(
        run.took < Duration::from_secs(15),
        "a poll with timeout = 3s against a server sending a byte a second must fail \
         within 15 s, not after {:.1} s\n{}",
        run.took.as_secs_f64(),
        run.describe()
    );
    let status = polld.status_of("slow");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(
        !error.is_empty(),
        "status shows the failed poll's error: {status}"
    );
    assert_any_word(error, DEADLINE_WORDS, "the error says the deadline passed");
    assert!(
        status["cursor"].is_null(),
        "a failed first poll records no cursor: {status}"
    );
}

#[test]
fn an_endless_ref_listing_is_cut_off_with_bounded_memory() {
    let _heavy = heavy();
    let server = FakeGitServer::endless_refs();
    let polld = Polld::with_config(&config(
        "",
        &git_poller(
            "flood",
            &format!("git://127.0.0.1:{}/r.git", server.port),
            "timeout = \"60s\"\nbranches = \"*\"",
        ),
    ));
    // A listing that grows without end would take the machine's memory: stop polld at
    // 512 MiB (the assertion below then fails, saying so).
    let run = run_watched(polld.command().arg("once"), Duration::from_secs(45), 512);
    let rss_mib = run.rss_kib / 1024;
    eprintln!(
        "endless listing: exit {:?} after {:.1} s, polld max RSS {rss_mib} MiB, {} MiB of refs sent",
        run.out.code,
        run.took.as_secs_f64(),
        server.bytes_sent() >> 20
    );
    run.expect_exit(1);
    assert!(
        server.connections() >= 1,
        "polld connected to the server\n{}",
        run.describe()
    );
    assert!(
        run.took < Duration::from_secs(30),
        "an endless listing must be cut off well before the 60 s deadline (within 30 s), \
         not after {:.1} s\n{}",
        run.took.as_secs_f64(),
        run.describe()
    );
    assert!(
        rss_mib < 256,
        "polld's memory stays bounded while a server lists refs without end: max RSS \
         {rss_mib} MiB (limit 256 MiB)\n{}",
        run.describe()
    );
    let status = polld.status_of("flood");
    let error = status["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(!error.is_empty(), "status shows the error: {status}");
    assert_any_word(
        &format!("{error}\n{}", run.out.stderr),
        &[
            "too large",
            "too big",
            "too many",
            "more than",
            "exceed",
            "limit",
        ],
        "the error says the listing was too large",
    );
}

#[test]
fn a_good_poller_keeps_its_interval_while_forty_pollers_of_a_trickling_host_time_out() {
    let trickler = FakeGitServer::trickling();
    let good = RemotePair::with_initial_commit();
    let port = free_port();
    let mut pollers = git_poller("good", &good.repo(), "interval = \"2s\"");
    for i in 0..40 {
        pollers.push_str(&git_poller(
            &format!("slow{i:02}"),
            &format!("git://127.0.0.1:{}/r{i:02}.git", trickler.port),
            "interval = \"1h\"\ntimeout = \"4s\"",
        ));
    }
    let polld = Polld::with_config(&config(
        &format!("listen = \"127.0.0.1:{port}\"\nmax_concurrent_polls = 32"),
        &format!("[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n\n{pollers}"),
    ));
    let mut daemon = polld.spawn_run(&[]);
    daemon.wait_for(Duration::from_secs(20), "the control endpoint", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let started = Instant::now();
    let window = Duration::from_secs(20);
    let mut good_ok = 0.0;
    while started.elapsed() < window {
        assert!(daemon.is_running(), "polld run exited\n{}", daemon.stderr());
        if let Some(n) = metric(port, "polld_polls_total{poller=\"good\",result=\"ok\"}") {
            good_ok = n;
            if good_ok >= 6.0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let slow_connections = trickler.connections();
    assert!(
        good_ok >= 6.0,
        "a poller with interval 2s completed {good_ok} polls in {:.0} s while 40 pollers of \
         one trickling host hung (at least 6 expected: the host may hold only its share of \
         the 32 slots, and each of its polls ends at its 4 s deadline); the trickling host \
         saw {slow_connections} connections\npolld run's stderr (tail):\n{}",
        started.elapsed().as_secs_f64(),
        tail(&daemon.stderr(), 30)
    );
    assert!(
        slow_connections <= 40 * 4,
        "failed polls back off: {slow_connections} connections"
    );
}

#[test]
fn polld_once_ends_within_the_longest_deadline() {
    let trickler = FakeGitServer::trickling();
    let good = RemotePair::with_initial_commit();
    let mut pollers = git_poller("good", &good.repo(), "");
    for i in 0..5 {
        pollers.push_str(&git_poller(
            &format!("slow{i}"),
            &format!("git://127.0.0.1:{}/r{i}.git", trickler.port),
            "timeout = \"2s\"",
        ));
    }
    let polld = Polld::with_config(&config("", &pollers));
    let run = run_watched(
        polld.command().arg("once"),
        Duration::from_secs(40),
        RSS_GUARD_MIB,
    );
    run.expect_exit(1);
    assert!(
        run.took < Duration::from_secs(20),
        "`polld once` with five 2 s deadlines ends within 20 s, not {:.1} s\n{}",
        run.took.as_secs_f64(),
        run.describe()
    );
    assert!(trickler.connections() >= 5, "{}", run.describe());
    let good_status = polld.status_of("good");
    assert!(
        good_status["last_error"].is_null() && !good_status["cursor"].is_null(),
        "the good poller polled: {good_status}"
    );
}

#[test]
fn an_svn_ssh_poll_past_its_deadline_leaves_no_process_behind() {
    let dir = tempfile::Builder::new()
        .prefix("polld-hostile-ssh")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let client_key = d.join("client_key");
    keygen(&client_key);
    let public = std::fs::read_to_string(client_key.with_extension("pub")).unwrap();
    // Every session holds the connection open and never answers (svn waits for
    // svnserve's greeting forever); the command ends when the client hangs up, so the
    // server side leaves nothing behind either.
    let authorized = d.join("authorized_keys");
    std::fs::write(
        &authorized,
        format!(
            "command=\"cat >/dev/null\",no-pty,no-port-forwarding {}",
            public.trim()
        ),
    )
    .unwrap();
    let sshd = Sshd::start(d, &authorized);
    std::fs::write(d.join("known_hosts"), &sshd.host_key_line).unwrap();
    // ssh reads ~/.ssh/config from the passwd entry's home, not $HOME: an `ssh` first on
    // PATH (which polld passes on to svn) points it at this test's config instead.
    let ssh_config = d.join("ssh_config");
    std::fs::write(
        &ssh_config,
        format!(
            "Host hostile-svn\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n  \
             IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  BatchMode yes\n",
            sshd.port,
            client_key.display(),
            d.join("known_hosts").display()
        ),
    )
    .unwrap();
    let bin = d.join("bin");
    write_exe(
        &bin.join("ssh"),
        &format!(
            "#!/bin/sh\nexec '{}' -F '{}' \"$@\"\n",
            which("ssh").display(),
            ssh_config.display()
        ),
    );
    // The ssh path works (keys, host key): a session opens and ends at EOF.
    let check = Command::new(bin.join("ssh"))
        .args(["-n", "hostile-svn", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "ssh to the test's sshd works: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mut polld = Polld::with_config(&config(
        "",
        &svn_poller("tunnel", "svn+ssh://hostile-svn/repo", "timeout = \"3s\""),
    ));
    polld.env.push(("PATH".into(), path_with(&bin)));
    let run = run_watched(
        polld.command().arg("once"),
        Duration::from_secs(40),
        RSS_GUARD_MIB,
    );
    // Whatever polld started carries one of these in its command line or environment.
    let markers = [
        ssh_config.display().to_string(),
        bin.display().to_string(),
        polld.dir.path().display().to_string(),
    ];
    let mut left = Vec::new();
    let gone = wait_while(Duration::from_secs(3), || {
        left = marked_processes(&markers);
        !left.is_empty()
    });
    for line in &left {
        if let Some(pid) = line.split(':').next().and_then(|p| p.parse::<i32>().ok()) {
            // SAFETY: kill(2) of a process this test's polld started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    run.expect_exit(1);
    assert!(
        run.took < Duration::from_secs(20),
        "an svn+ssh poll with timeout = 3s against a server that never answers fails \
         within 20 s, not {:.1} s\n{}",
        run.took.as_secs_f64(),
        run.describe()
    );
    assert!(
        gone,
        "processes started by polld outlived `polld once`:\n{}\n{}",
        left.join("\n"),
        run.describe()
    );
    let status = polld.status_of("tunnel");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert_any_word(error, DEADLINE_WORDS, "the error says the deadline passed");
}

// ---------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------

#[test]
fn children_get_no_secrets_from_the_daemon_environment() {
    let dir = tempfile::Builder::new()
        .prefix("polld-hostile-env")
        .tempdir()
        .unwrap();
    let bin = dir.path().join("bin");
    let seen = dir.path().join("svn-environment");
    write_exe(
        &bin.join("svn"),
        &format!(
            "#!/bin/sh\nenv > '{}'\necho 'svn: E170013: this is a fake svn' >&2\nexit 1\n",
            seen.display()
        ),
    );
    let mut polld = Polld::with_config(&config(
        "token_env = \"POLLD_TOKEN\"",
        &svn_poller("s", "svn://127.0.0.1:1/repo", ""),
    ));
    polld.env.extend([
        ("PATH".to_owned(), path_with(&bin)),
        ("POLLD_TOKEN".to_owned(), "tok-SECRET-1".to_owned()),
        ("MY_HOOK_SECRET".to_owned(), "SECRET-2".to_owned()),
    ]);
    let out = polld.once(&[]);
    out.expect_code(1);
    let env = std::fs::read_to_string(&seen).unwrap_or_else(|e| {
        panic!(
            "the fake svn ran and wrote {seen:?}: {e}\n{}",
            out.describe()
        )
    });
    assert!(env.contains("PATH="), "{env}");
    for secret in ["tok-SECRET-1", "SECRET-2"] {
        assert!(
            !env.contains(secret),
            "svn was given the daemon's {secret}:\n{env}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Killed in the middle of a pull
// ---------------------------------------------------------------------------------------

#[test]
fn an_interrupted_hg_pull_does_not_wedge_the_poller() {
    let _heavy = heavy();
    let hg = HgPending::linear(PULLED_CHANGESETS);
    let serve = HgServe::start(&hg.remote, &hg.dir.path().join("access.log"));
    let slow = Throttle::start(serve.port);
    let polld = Polld::new(&hg_poller("hg", &slow.url(), ""));
    let first = polld.once(&[]);
    first.expect_code(0);
    assert!(first.records().is_empty(), "{}", first.describe());

    hg.publish();
    let expected = hg.new_nodes();
    let journal = polld.path("state/mirrors/hg/repo/.hg/store/journal");
    let mut daemon = polld.spawn_run(&[]);
    kill_during_pull(&mut daemon, &journal);
    assert!(
        journal.exists(),
        "the pull was interrupted with its transaction open ({journal:?} is left)"
    );

    let run = run_watched(
        polld.command().arg("once"),
        Duration::from_secs(60),
        RSS_GUARD_MIB,
    );
    run.expect_exit(0);
    let revisions: Vec<String> = run
        .out
        .records()
        .iter()
        .map(|r| r["revision"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        revisions == expected,
        "after a pull killed half-way, the next poll delivers the {} new changesets \
         (got {})\n{}",
        expected.len(),
        revisions.len(),
        run.describe()
    );
}

#[test]
fn no_password_is_left_on_disk_after_a_kill_during_an_hg_pull() {
    let _heavy = heavy();
    let secret = format!(
        "hostile-hg-pw-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let hg = HgPending::linear(PULLED_CHANGESETS);
    let serve = HgServe::start(&hg.remote, &hg.dir.path().join("access.log"));
    let slow = Throttle::start(serve.port);
    let mut polld = Polld::new(&hg_poller(
        "hg",
        &slow.url(),
        "username = \"ada\"\npassword_env = \"HGPW\"",
    ));
    // polld's temp dir, where its temporary files go: searched below with the rest.
    let tmp = polld.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    polld.env.extend([
        ("HGPW".to_owned(), secret.clone()),
        ("TMPDIR".to_owned(), tmp.display().to_string()),
    ]);
    polld.once(&[]).expect_code(0);

    hg.publish();
    let journal = polld.path("state/mirrors/hg/repo/.hg/store/journal");
    let mut daemon = polld.spawn_run(&[]);
    kill_during_pull(&mut daemon, &journal);
    let after_kill = files_containing(polld.dir.path(), secret.as_bytes());
    eprintln!("right after the kill, the password is in {after_kill:?}");

    // The next start cleans up what the killed one left.
    let again = polld.once(&[]);
    let mut holding = files_containing(polld.dir.path(), secret.as_bytes());
    holding.extend(files_in_tmp_containing(secret.as_bytes()));
    holding.sort();
    holding.dedup();
    assert!(
        holding.is_empty(),
        "after polld was killed during an authenticated pull and started again, the \
         password is still on disk in {holding:?}\nthe second run:\n{}",
        again.describe()
    );
}

// ---------------------------------------------------------------------------------------
// Mirrors over months
// ---------------------------------------------------------------------------------------

#[test]
fn a_stale_lock_in_the_git_mirror_is_cleared() {
    let pair = RemotePair::with_initial_commit();
    let polld = Polld::new(&git_poller("app", &pair.repo(), ""));
    assert!(polld.once_ok().is_empty());
    let mirror = polld.path("state/mirrors/app");
    assert!(
        mirror.join("HEAD").is_file(),
        "the first poll made the mirror at {mirror:?}: {:?}",
        list_files(&polld.path("state"))
    );
    // What a process killed in the middle of a fetch leaves, an hour ago.
    let old = SystemTime::now() - Duration::from_secs(3600);
    let head = pair.remote.rev_parse("main");
    for (lock, content) in [
        ("refs/heads/main.lock", format!("{head}\n")),
        ("packed-refs.lock", String::new()),
        ("config.lock", String::new()),
    ] {
        let path = mirror.join(lock);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(old).unwrap();
    }
    let sha = pair.work.commit("after.txt", "after\n", "after the crash");
    pair.work.push(&["main"]);
    let out = polld.once(&[]);
    out.expect_code(0);
    let records = out.records();
    assert!(
        records.len() == 1 && records[0]["revision"] == sha.as_str(),
        "the commit made after the crash is delivered\n{}",
        out.describe()
    );
}

#[test]
fn git_mirrors_are_repacked() {
    let pair = RemotePair::with_initial_commit();
    let polld = Polld::new(&git_poller("app", &pair.repo(), ""));
    assert!(polld.once_ok().is_empty());
    let started = Instant::now();
    for i in 0..60 {
        let sha = pair.remote.fast_import_commits("main", 1).pop().unwrap();
        let out = polld.once(&[]);
        out.expect_code(0);
        let records = out.records();
        assert!(
            records.len() == 1 && records[0]["revision"] == sha.as_str(),
            "round {i}\n{}",
            out.describe()
        );
    }
    let packs: Vec<PathBuf> = std::fs::read_dir(polld.path("state/mirrors/app/objects/pack"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pack"))
        .collect();
    eprintln!(
        "60 fetches in {:.1} s left {} packs",
        started.elapsed().as_secs_f64(),
        packs.len()
    );
    assert!(
        packs.len() <= 40,
        "after 60 fetches the mirror has {} packs: polld repacks its mirrors (at most 40)",
        packs.len()
    );
}

// ---------------------------------------------------------------------------------------
// Size
// ---------------------------------------------------------------------------------------

#[test]
fn three_thousand_hg_heads_on_a_branch() {
    let _heavy = heavy();
    // The root, then 3,000 children of it: 3,000 heads of `default`.
    let mut dag = String::from("+1:root");
    for _ in 0..3000 {
        dag.push_str(" *root");
    }
    let hg = HgPending::with_dag(&dag);
    let polld = Polld::new(&hg_poller("heads", &hg.remote.display().to_string(), ""));
    let first = polld.once(&[]);
    first.expect_code(0);
    assert!(first.records().is_empty(), "{}", first.describe());

    hg.publish();
    let expected = hg.new_nodes();
    assert_eq!(expected.len(), 3000);
    let run = run_watched(
        polld.command().arg("once"),
        Duration::from_secs(60),
        RSS_GUARD_MIB,
    );
    eprintln!("3,000 heads: once took {:.1} s", run.took.as_secs_f64());
    run.expect_exit(0);
    let records = run.out.records();
    let mut got: Vec<&str> = records
        .iter()
        .map(|r| r["revision"].as_str().unwrap_or_default())
        .collect();
    got.sort_unstable();
    let mut want: Vec<&str> = expected.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert!(
        got == want,
        "3,000 new heads are 3,000 changes (got {})\n{}",
        records.len(),
        run.describe()
    );
    assert!(records.iter().all(|r| r["branch"] == "default"));
}

/// Commits of 20 MB messages. Ten, not a hundred: reading each one costs polld (a debug
/// build, libgit2 hashing every object it reads) one to two seconds, so a hundred would
/// take minutes; ten already hold 200 MB of messages, far past the RSS bound.
const HUGE_MESSAGES: usize = 10;
const HUGE_MESSAGE_BYTES: usize = 20 * 1024 * 1024;

#[test]
fn a_push_of_huge_messages_keeps_rss_bounded() {
    let _heavy = heavy();
    let pair = RemotePair::with_initial_commit();
    let polld = Polld::new(&git_poller("big", &pair.repo(), ""));
    assert!(polld.once_ok().is_empty());
    let t0 = Instant::now();
    let shas = import_huge_messages(&pair.remote, HUGE_MESSAGES, HUGE_MESSAGE_BYTES);
    let made = t0.elapsed();
    // Stop polld at 1.5 GiB: by then the assertion below has failed anyway.
    let run = run_watched(polld.command().arg("once"), Duration::from_secs(90), 1536);
    let rss_mib = run.rss_kib / 1024;
    eprintln!(
        "{HUGE_MESSAGES} messages of {} MiB: made in {:.1} s; once took {:.1} s, max RSS {rss_mib} MiB",
        HUGE_MESSAGE_BYTES >> 20,
        made.as_secs_f64(),
        run.took.as_secs_f64()
    );
    run.expect_exit(0);
    assert!(
        rss_mib < 256,
        "{HUGE_MESSAGES} commits of 20 MB messages: polld's max RSS {rss_mib} MiB (limit 256 MiB)\n{}",
        run.describe()
    );
    let records = run.out.records();
    let revisions: Vec<&str> = records
        .iter()
        .map(|r| r["revision"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(revisions, shas, "every commit, oldest first");
    for record in &records {
        let comments = record["comments"].as_str().unwrap_or_default();
        assert!(
            comments.len() < 70_000
                && comments.contains("[polld: message cut at 65536 of ")
                && comments.ends_with("bytes]"),
            "a 20 MB message is cut and says so: {} bytes ending {:?}",
            comments.len(),
            &comments[comments.len().saturating_sub(80)..]
        );
    }
}

// ---------------------------------------------------------------------------------------
// The control endpoint
// ---------------------------------------------------------------------------------------

#[test]
fn idle_and_half_sent_connections_do_not_block_the_endpoint_or_shutdown() {
    raise_fd_limit(4096);
    let pair = RemotePair::with_initial_commit();
    let port = free_port();
    let polld = Polld::with_config(&config(
        &format!("listen = \"127.0.0.1:{port}\""),
        &git_poller("app", &pair.repo(), ""),
    ));
    let mut daemon = polld.spawn_run(&[]);
    daemon.wait_for(Duration::from_secs(20), "the control endpoint", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let mut idle = Vec::new();
    for i in 0..1000 {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => idle.push(stream),
            Err(e) => panic!("idle connection {i}: {e}\n{}", daemon.stderr()),
        }
    }
    let mut half = TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();

    let t0 = Instant::now();
    let answer = in_thread(Duration::from_secs(20), move || {
        http::request(port, "GET", "/healthz", &[], b"")
    });
    let took = t0.elapsed();
    match answer {
        Some(Ok(answer)) => assert_eq!(
            answer.status, 200,
            "GET /healthz with 1,000 idle connections open: {answer:?}"
        ),
        Some(Err(e)) => panic!(
            "GET /healthz with 1,000 idle connections open got no answer after {:.1} s: \
             {e}\n{}",
            took.as_secs_f64(),
            tail(&daemon.stderr(), 30)
        ),
        None => panic!(
            "GET /healthz with 1,000 idle connections open: no answer within 20 s\n{}",
            tail(&daemon.stderr(), 30)
        ),
    }

    let t1 = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(10));
    let stopped = t1.elapsed();
    let still_open = idle.len() + 1;
    drop(idle);
    drop(half);
    let status = status.unwrap_or_else(|| {
        panic!(
            "SIGTERM with {still_open} idle or half-sent connections open: polld still runs \
             after 10 s\n{}",
            tail(&daemon.stderr(), 30)
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit 0 on SIGTERM (after {:.1} s)\n{}",
        stopped.as_secs_f64(),
        daemon.stderr()
    );
}

// ---------------------------------------------------------------------------------------
// Fake servers
// ---------------------------------------------------------------------------------------

/// A `git://` server on 127.0.0.1 that answers every connection with `serve`; stopped
/// (and its connections closed) on drop.
struct FakeGitServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

type Serve = fn(TcpStream, &AtomicBool, &AtomicUsize);

impl FakeGitServer {
    /// Reads the request, then sends a protocol-v2 capability advertisement one byte a
    /// second, without end (`version 2`, then `agent=` lines): every read gets a byte in
    /// time, so only a deadline on the whole operation ends it.
    fn trickling() -> FakeGitServer {
        FakeGitServer::start(trickle)
    }

    /// Answers the v2 capability advertisement properly (`version 2`, `ls-refs`), then
    /// answers `ls-refs` with valid, distinct branch lines as fast as it can, never
    /// sending the flush that ends the list.
    fn endless_refs() -> FakeGitServer {
        FakeGitServer::start(endless_refs)
    }

    fn start(serve: Serve) -> FakeGitServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, b, s) = (accepted.clone(), sent.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        let (b, s) = (b.clone(), s.clone());
                        std::thread::spawn(move || {
                            let _ = stream.set_nonblocking(false);
                            serve(stream, &s, &b);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeGitServer {
            port,
            accepted,
            sent,
            stop,
        }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn bytes_sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for FakeGitServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pkt(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", data.len() + 4).into_bytes();
    out.extend_from_slice(data);
    out
}

/// One pkt-line as the server reads it.
enum Pkt {
    Data,
    /// `0000`.
    Flush,
    /// `0001`, `0002`.
    Special,
}

/// The next pkt-line, or `None` when the client hung up or sent garbage.
fn read_pkt(stream: &mut TcpStream) -> Option<Pkt> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).ok()?;
    let length = usize::from_str_radix(std::str::from_utf8(&length).ok()?, 16).ok()?;
    match length {
        0 => Some(Pkt::Flush),
        1..=3 => Some(Pkt::Special),
        _ => {
            let mut data = vec![0; length - 4];
            stream.read_exact(&mut data).ok()?;
            Some(Pkt::Data)
        }
    }
}

fn trickle(mut stream: TcpStream, stop: &AtomicBool, sent: &AtomicUsize) {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = read_pkt(&mut stream);
    let start = b"000eversion 2\n";
    let agent = pkt(b"agent=git/2.47.0\n");
    for i in 0.. {
        let byte = if i < start.len() {
            start[i]
        } else {
            agent[(i - start.len()) % agent.len()]
        };
        if stream.write_all(&[byte]).is_err() {
            return;
        }
        sent.fetch_add(1, Ordering::SeqCst);
        for _ in 0..10 {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn endless_refs(mut stream: TcpStream, stop: &AtomicBool, sent: &AtomicUsize) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // git-upload-pack /r.git\0host=...\0\0version=2\0
    if read_pkt(&mut stream).is_none() {
        return;
    }
    let mut advertisement = Vec::new();
    for line in [
        &b"version 2\n"[..],
        b"agent=git/2.47.0\n",
        b"ls-refs=unborn\n",
        b"fetch=shallow wait-for-done\n",
        b"server-option\n",
        b"object-format=sha1\n",
    ] {
        advertisement.extend(pkt(line));
    }
    advertisement.extend_from_slice(b"0000");
    if stream.write_all(&advertisement).is_err() {
        return;
    }
    // command=ls-refs, a delimiter, the arguments, a flush.
    loop {
        match read_pkt(&mut stream) {
            None => return,
            Some(Pkt::Flush) => break,
            Some(Pkt::Data | Pkt::Special) => {}
        }
    }
    let mut n: u64 = 1;
    let mut chunk = Vec::with_capacity(1 << 20);
    while !stop.load(Ordering::SeqCst) {
        chunk.clear();
        for _ in 0..10_000 {
            let line = format!("{n:040x} refs/heads/b{n}\n");
            chunk.extend(pkt(line.as_bytes()));
            n += 1;
        }
        if stream.write_all(&chunk).is_err() {
            return;
        }
        sent.fetch_add(chunk.len(), Ordering::SeqCst);
    }
}

/// A TCP proxy to `127.0.0.1:upstream` that passes requests at full speed and answers
/// slowly (2 KiB every 100 ms): a pull through it takes seconds, long enough to be
/// interrupted. Stops accepting on drop.
struct Throttle {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Throttle {
    fn start(upstream: u16) -> Throttle {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                        std::thread::spawn(move || copy(client, server, None));
                        let stop = s.clone();
                        std::thread::spawn(move || copy(s2, c2, Some(stop)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Throttle { port, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until EOF; throttled (and stoppable) when `stop` is given.
fn copy(mut from: TcpStream, mut to: TcpStream, stop: Option<Arc<AtomicBool>>) {
    let mut buf = vec![0u8; if stop.is_some() { 2048 } else { 65536 }];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if let Some(stop) = &stop {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

// ---------------------------------------------------------------------------------------
// Mercurial fixtures
// ---------------------------------------------------------------------------------------

/// How many changesets the interrupted pulls bring (through [`Throttle`]: seconds).
const PULLED_CHANGESETS: usize = 2000;

/// A full repository made by `hg debugbuilddag`, and the remote polld watches: at first
/// its revision 0 only; [`HgPending::publish`] pulls the rest into it.
struct HgPending {
    dir: tempfile::TempDir,
    full: HgRepo,
    remote: PathBuf,
}

impl HgPending {
    /// `n` linear changesets after the root.
    fn linear(n: usize) -> HgPending {
        HgPending::with_dag(&format!("+{}", n + 1))
    }

    fn with_dag(dag: &str) -> HgPending {
        let dir = tempfile::Builder::new()
            .prefix("polld-hostile-hg")
            .tempdir()
            .unwrap();
        let full = HgRepo::init(&dir.path().join("full"));
        full.hg(&["debugbuilddag", dag]);
        let remote = dir.path().join("remote");
        hg_ok(
            dir.path(),
            &[
                "clone",
                "-U",
                "-q",
                "-r",
                "0",
                &full.path.display().to_string(),
                &remote.display().to_string(),
            ],
        );
        HgPending { dir, full, remote }
    }

    /// Everything of the full repository arrives on the remote.
    fn publish(&self) {
        hg_ok(
            &self.remote,
            &["pull", "-q", &self.full.path.display().to_string()],
        );
    }

    /// The remote's changesets after revision 0, in revision order.
    fn new_nodes(&self) -> Vec<String> {
        hg_ok(&self.remote, &["log", "-r", "1:", "-T", "{node}\\n"])
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn hg_ok(dir: &Path, args: &[&str]) -> String {
    let out = hg_command(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "hg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `daemon` runs `hg pull` with the mirror's transaction open (its journal
/// exists), then kills the daemon and every process it started, as an OOM kill or a
/// `systemctl kill -s KILL` of the service does.
fn kill_during_pull(daemon: &mut RunningPolld, journal: &Path) {
    let pid = daemon.pid();
    daemon.wait_for(
        Duration::from_secs(30),
        "`hg pull` into the mirror with its transaction open",
        || {
            journal.exists()
                && descendants(pid)
                    .iter()
                    .any(|&p| cmdline(p).split(' ').any(|a| a == "pull"))
        },
    );
    let orphans = kill_tree(pid);
    daemon.kill9();
    // The killed `hg` is reaped by init, not by this test: until then it still looks
    // alive to the next `hg`, which would wait for the lock it held.
    wait_while(Duration::from_secs(10), || {
        orphans
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
    });
}

// ---------------------------------------------------------------------------------------
// git fixtures
// ---------------------------------------------------------------------------------------

/// `count` commits on `main` of `repo`, each with a message of `size` bytes, written
/// straight into `git fast-import` (fast compression, one pack); their shas, oldest first.
fn import_huge_messages(repo: &GitRepo, count: usize, size: usize) -> Vec<String> {
    let old = repo.rev_parse("main");
    let mut child = git_command(&repo.path)
        .args([
            "-c",
            "core.compression=1",
            "-c",
            "fastimport.unpackLimit=0",
            "fast-import",
            "--quiet",
            "--force",
            "--depth=0",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let body = "0123456789abcde\n".repeat(size / 16);
    {
        let mut stdin = std::io::BufWriter::with_capacity(1 << 20, child.stdin.take().unwrap());
        for i in 0..count {
            let first_line = format!("huge message {i}\n");
            let t = tick();
            write!(
                stdin,
                "commit refs/heads/main\nauthor {AUTHOR} {} +0000\ncommitter {COMMITTER} {t} +0000\ndata {}\n",
                t - AUTHOR_LAG,
                first_line.len() + body.len()
            )
            .unwrap();
            stdin.write_all(first_line.as_bytes()).unwrap();
            stdin.write_all(body.as_bytes()).unwrap();
            if i == 0 {
                writeln!(stdin, "from {old}").unwrap();
            }
            writeln!(stdin, "M 100644 inline huge/{i}.txt\ndata 2\n{}\n", i % 10).unwrap();
        }
        stdin.flush().unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "git fast-import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    repo.rev_list(&["--reverse", &format!("{old}..main")])
}

// ---------------------------------------------------------------------------------------
// Running polld with a watch on it
// ---------------------------------------------------------------------------------------

/// What `run_watched` saw.
struct Watched {
    out: Outcome,
    /// Peak RSS of polld itself (its `VmHWM`; 0 if it ended before the first sample).
    rss_kib: u64,
    took: Duration,
    /// Why the test stopped it, if it did.
    stopped: Option<String>,
}

impl Watched {
    fn describe(&self) -> String {
        format!(
            "{}\ntook {:.1} s; polld max RSS {} MiB{}",
            self.out.describe(),
            self.took.as_secs_f64(),
            self.rss_kib / 1024,
            self.stopped
                .as_deref()
                .map(|s| format!("\nSTOPPED BY THE TEST: {s}"))
                .unwrap_or_default()
        )
    }

    #[track_caller]
    fn expect_exit(&self, code: i32) {
        let refused = self.out.code == Some(2) && self.out.stderr.contains("unknown field");
        assert!(
            self.stopped.is_none() && self.out.code == Some(code),
            "expected polld to exit {code} by itself{}\n{}",
            if refused {
                " (it refused the config: a key this test relies on is not implemented)"
            } else {
                ""
            },
            self.describe()
        );
    }
}

/// More RSS than any test here should see, short of the ones that measure it: stop a
/// runaway polld before it takes the machine.
const RSS_GUARD_MIB: u64 = 2048;

/// Runs `cmd` (a polld command) to its end, killing it and everything it started when
/// it runs past `limit` or its RSS passes `rss_cap_mib`.
///
/// Its peak RSS is the last `VmHWM` read from `/proc` while it ran, sampled every 10 ms.
/// Not `wait4`'s `ru_maxrss`: for a child started with vfork (as `posix_spawn` does)
/// that includes the high-water RSS of this test process.
fn run_watched(cmd: &mut Command, limit: Duration, rss_cap_mib: u64) -> Watched {
    let command = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn polld");
    let pid = child.id() as i32;
    let (out_buf, out_t) = collect(child.stdout.take().unwrap());
    let (err_buf, err_t) = collect(child.stderr.take().unwrap());
    let mut stopped = None;
    let mut peak_kib = 0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        let memory = memory_kib(pid);
        if let Some((_, hwm)) = memory {
            peak_kib = peak_kib.max(hwm);
        }
        if stopped.is_none() {
            if started.elapsed() >= limit {
                stopped = Some(format!("still running after {limit:?}; killed"));
            } else if let Some((rss, _)) = memory
                && rss > rss_cap_mib * 1024
            {
                stopped = Some(format!(
                    "its RSS reached {} MiB (cap {rss_cap_mib} MiB); killed",
                    rss / 1024
                ));
            }
            if stopped.is_some() {
                kill_tree(pid);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = started.elapsed();
    // A grandchild that kept a pipe open must not hang the test: wait a little, then
    // take what was read.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(out_t.is_finished() && err_t.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let text =
        |buf: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&buf.lock().unwrap()).into_owned();
    Watched {
        out: Outcome {
            code: status.code(),
            stdout: text(&out_buf),
            stderr: text(&err_buf),
            command,
        },
        rss_kib: peak_kib,
        took,
        stopped,
    }
}

/// Reads `pipe` to its end in a thread, into a buffer readable at any time.
fn collect(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    let t = std::thread::spawn(move || {
        let mut chunk = [0u8; 65536];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => b.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
    (buf, t)
}

/// Runs `f` in a thread; its result, or `None` if it takes longer than `limit` (the
/// thread is left to finish on its own).
fn in_thread<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Every live process below `root`.
fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for pid in pids() {
        if let Some(parent) = parent_of(pid) {
            children.entry(parent).or_default().push(pid);
        }
    }
    let mut found = Vec::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            found.push(child);
            stack.push(child);
        }
    }
    found
}

/// SIGKILL to `root` and every process below it; the pids below it.
fn kill_tree(root: i32) -> Vec<i32> {
    let below = descendants(root);
    for &pid in std::iter::once(&root).chain(&below) {
        // SAFETY: kill(2) of our child and of the processes it started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    below
}

fn cmdline(pid: i32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
        .replace('\0', " ")
}

/// `pid: cmdline` of every process (but this one) whose command line or environment
/// holds one of `markers`.
fn marked_processes(markers: &[String]) -> Vec<String> {
    let me = std::process::id() as i32;
    pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let line = cmdline(pid);
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let environ = String::from_utf8_lossy(&environ);
            markers
                .iter()
                .any(|m| line.contains(m.as_str()) || environ.contains(m.as_str()))
                .then(|| format!("{pid}: {line}"))
        })
        .collect()
}

/// The current and the peak RSS (`VmRSS`, `VmHWM`) of a running process.
fn memory_kib(pid: i32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Waits while `cond` holds, up to `limit`; whether it stopped holding.
fn wait_while(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn raise_fd_limit(want: u64) {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

/// The tests that load both cores for long (big repositories, floods) run one at a
/// time, so that the timing bounds of the others keep their meaning.
fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A config: state in `state/`, ten-minute intervals, `daemon` keys added to `[daemon]`,
/// then `body` (a sink, pollers).
fn config(daemon: &str, body: &str) -> String {
    format!(
        "[daemon]\nstate_dir = \"state\"\n{daemon}\n\n[defaults]\ninterval = \"10m\"\njitter = \"0s\"\n\
         at_launch = true\n\n{body}"
    )
}

/// The value of the first `/metrics` line starting with `prefix`.
fn metric(port: u16, prefix: &str) -> Option<f64> {
    let answer = http::request(port, "GET", "/metrics", &[], b"").ok()?;
    answer
        .body
        .lines()
        .find(|l| l.starts_with(prefix))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

#[track_caller]
fn assert_any_word(text: &str, words: &[&str], what: &str) {
    let lower = text.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(w)),
        "{what}: expected one of {words:?} in:\n{text}"
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Files in the system temp dir (three levels deep, each under 4 MiB) holding `needle`.
fn files_in_tmp_containing(needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(PathBuf::from("/tmp"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() && depth < 3 {
                stack.push((path, depth + 1));
            } else if meta.is_file()
                && meta.len() < 4 << 20
                && std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                found.push(path);
            }
        }
    }
    found
}
