//! The in-process cheap check against real servers on 127.0.0.1: svnserve (anonymous,
//! with a password, restarted under a kept connection) and Apache with mod_dav_svn
//! over http (anonymous, Basic auth) and https (a private CA's certificate, trusted
//! through `ca_file`, or not; an expired one).
//!
//! The servers' own logs say what was asked: svnserve logs each command and the client
//! that opened the connection, Apache each request with its user agent. So "a poll
//! that finds nothing is one request, no process" is checked, not assumed.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use polld_backend::{Backend, PollOutcome, Poller, PollerContext};
use polld_svn::{SvnBackend, SvnConfig};
use polld_test_support::poll::{advance, first_poll, revisions};
use polld_test_support::svn::{SvnHttpServer, SvnRepo, Svnserve};
use polld_test_support::tls::TestCa;
use serde_json::json;

fn poller(
    repo: &str,
    keys: serde_json::Value,
    state: &Path,
    ca_file: Option<PathBuf>,
) -> Arc<dyn Poller> {
    let config: SvnConfig = serde_json::from_value(keys).unwrap();
    SvnBackend::new()
        .build(
            PollerContext {
                timeout: Duration::from_secs(30),
                ca_file,
                ..PollerContext::new("p", repo, state, state)
            },
            config,
        )
        .unwrap_or_else(|e| panic!("build: {e}"))
}

/// The commands in svnserve log lines (`open`, `get-latest-rev`, `stat`, `log`), each
/// `open` with its client: `open polld` or `open SVN`.
fn commands(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            // <pid> <date> <host> <user> <repo> <command> <args...>
            let command = *fields.get(5)?;
            if command == "ERR" && fields.get(4) == Some(&"-") {
                // A connection closed before it opened a repository: the harness
                // checking that the server listens.
                return None;
            }
            if command == "open" {
                let client = fields
                    .iter()
                    .find(|f| f.starts_with("polld/") || f.starts_with("SVN/"))?;
                Some(format!("open {}", &client[..client.find('/').unwrap_or(0)]))
            } else {
                Some(command.to_owned())
            }
        })
        .collect()
}

/// The requests Apache logged after the first `seen`, once `expected` of them are
/// there and a moment has passed without more: Apache writes a request's line after
/// the answer has gone out.
fn new_requests(server: &SvnHttpServer, seen: usize, expected: usize) -> Vec<String> {
    polld_test_support::wait_until(Duration::from_secs(10), "Apache's access log", || {
        server.requests().len() >= seen + expected
    });
    std::thread::sleep(Duration::from_millis(200));
    requests(&server.requests()[seen..])
}

/// How many requests Apache has logged, once its log has stopped growing (the lines of
/// requests already answered may still be on their way).
fn settled(server: &SvnHttpServer) -> usize {
    let mut count = server.requests().len();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = server.requests().len();
        if now == count {
            return count;
        }
        count = now;
    }
}

/// Apache access log lines as `METHOD client`, the client `polld` or `SVN`.
fn requests(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|line| {
            let method = line.split(' ').next().unwrap_or_default();
            let client = if line.contains(" polld/") {
                "polld"
            } else if line.contains(" SVN/") {
                "SVN"
            } else {
                "?"
            };
            format!("{method} {client}")
        })
        .collect()
}

#[tokio::test]
async fn svn_protocol_answers_from_one_kept_connection_and_reconnects() {
    let repo = SvnRepo::with_standard_layout();
    let mut server = Svnserve::start(repo.dir.path());
    let state = tempfile::tempdir().unwrap();
    let p = poller(&server.url("repo/trunk"), json!({}), state.path(), None);
    let mut cursor = first_poll(&p).await;
    assert_eq!(cursor.as_ref().unwrap().0, json!({"revision": 1}));
    assert_eq!(
        commands(&server.log()),
        ["open polld", "get-latest-rev", "stat"]
    );

    // Nothing moved: one command on the kept connection, no process.
    let seen = server.log().len();
    assert_eq!(
        p.poll(cursor.as_ref()).await.unwrap(),
        PollOutcome::Unchanged
    );
    assert_eq!(commands(&server.log()[seen..]), ["get-latest-rev"]);

    // A branch copy moves the youngest revision but not trunk's.
    repo.copy("trunk", "branches/b", "Branch b");
    let seen = server.log().len();
    assert_eq!(
        p.poll(cursor.as_ref()).await.unwrap(),
        PollOutcome::Unchanged
    );
    assert_eq!(commands(&server.log()[seen..]), ["get-latest-rev", "stat"]);

    // A commit to trunk: the log is still svn's.
    let r = repo.put(&[("trunk/a.c", "a\n")], "On trunk");
    let changes = advance(&p, &mut cursor).await;
    assert_eq!(revisions(&changes), [r.to_string()]);
    assert!(
        commands(&server.log()).contains(&"open SVN".to_owned()),
        "{:?}",
        server.log()
    );

    // The server restarted: the kept connection is dead, and one new one is opened.
    // Same repository (UUID), same youngest revision: no `stat` needed.
    server.restart();
    let seen = server.log().len();
    assert_eq!(
        p.poll(cursor.as_ref()).await.unwrap(),
        PollOutcome::Unchanged
    );
    assert_eq!(
        commands(&server.log()[seen..]),
        ["open polld", "get-latest-rev"]
    );
}

#[tokio::test]
async fn svn_protocol_logs_in_with_cram_md5_and_refuses_a_wrong_password_once() {
    const GOOD: &str = "cram-good-4b1d";
    const BAD: &str = "cram-bad-77e0";
    let repo = SvnRepo::with_standard_layout();
    repo.require_auth("alice", GOOD);
    let server = Svnserve::start(repo.dir.path());
    let state = tempfile::tempdir().unwrap();
    // Credentials in the URL: the same login as `username` and `password_env`, without
    // setting environment variables while other tests run.
    let with = |password: &str| {
        server
            .url("repo")
            .replace("svn://", &format!("svn://alice:{password}@"))
    };
    let p = poller(&with(GOOD), json!({}), state.path(), None);
    let mut cursor = first_poll(&p).await;
    assert_eq!(cursor.as_ref().unwrap().0, json!({"revision": 2}));
    let r = repo.put(&[("trunk/a", "a\n")], "Behind a password");
    assert_eq!(revisions(&advance(&p, &mut cursor).await), [r.to_string()]);
    assert_eq!(
        commands(&server.log())
            .iter()
            .filter(|c| *c == "open polld")
            .count(),
        1,
        "one connection, kept: {:?}",
        server.log()
    );

    // A new poller (a reload) with the wrong password: refused, said so, not retried.
    let p = poller(&with(BAD), json!({}), state.path(), None);
    let seen = server.log().len();
    let error = p.poll(cursor.as_ref()).await.unwrap_err().to_string();
    assert!(
        error.contains("Authentication failed") && error.contains("Password incorrect"),
        "{error}"
    );
    assert!(!error.contains(BAD) && !error.contains(GOOD), "{error}");
    assert!(
        !commands(&server.log()[seen..]).contains(&"open SVN".to_owned()),
        "no svn process offered the password again: {:?}",
        server.log()
    );
}

#[tokio::test]
async fn http_no_change_is_one_options_request_and_basic_auth_is_sent_once() {
    const GOOD: &str = "dav-good-0a93";
    let repo = SvnRepo::with_standard_layout();
    let server = SvnHttpServer::start(repo.dir.path(), Some(("alice", GOOD)));
    let state = tempfile::tempdir().unwrap();
    let url = server.url("repo/trunk");
    let with = |password: &str| url.replace("http://", &format!("http://alice:{password}@"));
    let p = poller(&with(GOOD), json!({}), state.path(), None);
    let mut cursor = first_poll(&p).await;
    assert_eq!(cursor.as_ref().unwrap().0, json!({"revision": 1}));
    assert_eq!(
        new_requests(&server, 0, 2),
        ["OPTIONS polld", "PROPFIND polld"],
        "credentials sent with the first request"
    );

    let seen = settled(&server);
    assert_eq!(
        p.poll(cursor.as_ref()).await.unwrap(),
        PollOutcome::Unchanged
    );
    assert_eq!(new_requests(&server, seen, 1), ["OPTIONS polld"]);

    repo.copy("trunk", "branches/b", "Branch b");
    let seen = settled(&server);
    assert_eq!(
        p.poll(cursor.as_ref()).await.unwrap(),
        PollOutcome::Unchanged
    );
    assert_eq!(
        new_requests(&server, seen, 2),
        ["OPTIONS polld", "PROPFIND polld"]
    );

    let r = repo.put(&[("trunk/a.c", "a\n")], "Over http");
    let changes = advance(&p, &mut cursor).await;
    assert_eq!(revisions(&changes), [r.to_string()]);
    assert_eq!(changes[0].files, ["a.c"]);

    // A wrong password: one refused request, the error says so and not the password.
    let wrong = poller(&with("dav-wrong-5c21"), json!({}), state.path(), None);
    let seen = settled(&server);
    let error = wrong.poll(cursor.as_ref()).await.unwrap_err().to_string();
    assert!(error.contains("Authentication failed"), "{error}");
    assert!(!error.contains("dav-wrong-5c21"), "{error}");
    assert_eq!(new_requests(&server, seen, 1), ["OPTIONS polld"]);
    let refused = &server.requests()[seen..];
    assert!(refused[0].contains(" 401 "), "{refused:?}");

    // No login configured where one is needed: said so, no svn process.
    let anonymous = poller(&url, json!({}), state.path(), None);
    let error = anonymous.poll(None).await.unwrap_err().to_string();
    assert!(error.contains("asks for a login"), "{error}");
}

#[tokio::test]
async fn https_trusts_ca_file_only_and_refuses_an_expired_certificate() {
    let repo = SvnRepo::with_standard_layout();
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new(certs.path(), "svn");
    let good = SvnHttpServer::start_https(repo.dir.path(), None, &ca.server_cert("good"));
    // svn (serf) matches the host against the certificate's DNS names only, not its IP
    // address: `localhost` is one of them.
    let url = good.url("repo/trunk").replace("127.0.0.1", "localhost");
    assert!(url.starts_with("https://"), "{url}");
    let state = tempfile::tempdir().unwrap();

    let p = poller(&url, json!({}), state.path(), Some(ca.cert.clone()));
    let mut cursor = first_poll(&p).await;
    assert_eq!(cursor.as_ref().unwrap().0, json!({"revision": 1}));
    let log = new_requests(&good, 0, 2);
    assert_eq!(log, ["OPTIONS polld", "PROPFIND polld"]);
    let log = good.requests();
    assert!(
        log.iter().all(|l| l.contains(" HTTP/2.0 polld/")),
        "HTTP/2 through ca_file: {log:?}"
    );
    // svn log over https trusts ca_file too.
    let r = repo.put(&[("trunk/a", "a\n")], "Over https");
    assert_eq!(revisions(&advance(&p, &mut cursor).await), [r.to_string()]);
    polld_test_support::wait_until(Duration::from_secs(10), "svn's requests logged", || {
        good.requests().iter().any(|l| l.contains(" SVN/"))
    });

    // Without ca_file, neither the check nor svn trusts the server.
    let untrusted = poller(&url, json!({}), state.path(), None);
    let error = untrusted.poll(None).await.unwrap_err().to_string();
    assert!(
        error.contains("certificate verification failed: issuer is not trusted"),
        "{error}"
    );

    // An expired certificate is refused even from the trusted CA.
    let expired = SvnHttpServer::start_https(repo.dir.path(), None, &ca.expired_server_cert("old"));
    let expired_url = expired.url("repo/trunk").replace("127.0.0.1", "localhost");
    let p = poller(&expired_url, json!({}), state.path(), Some(ca.cert.clone()));
    let error = p.poll(None).await.unwrap_err().to_string();
    assert!(error.contains("certificate has expired"), "{error}");
}

#[tokio::test]
async fn a_server_speaking_something_else_is_left_to_svn_for_an_hour() {
    // Answers every connection with an HTTP status line and hangs up.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = std::io::Write::write_all(&mut stream, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        }
    });
    let state = tempfile::tempdir().unwrap();
    let p = poller(
        &format!("svn://127.0.0.1:{port}/repo"),
        json!({}),
        state.path(),
        None,
    );
    let count = || connections.load(std::sync::atomic::Ordering::SeqCst);

    // The check gives up on the first bytes; svn says what it thinks of them.
    let error = p.poll(None).await.unwrap_err().to_string();
    assert!(error.contains("`svn info` failed"), "{error}");
    assert_eq!(count(), 2, "polld's connection, then svn's");
    // For the next hour only svn connects.
    let error = p.poll(None).await.unwrap_err().to_string();
    assert!(error.contains("`svn info` failed"), "{error}");
    assert_eq!(count(), 3);
}
