//! End-to-end: push notifications through `polld run`, with every interval one hour, so
//! a change that arrives came from the notification.
//!
//! - Forge webhooks (`POST /hooks/{forge}`): each forge's published example payload,
//!   rewritten only in its repository URLs to point at a local test repository and
//!   signed as that forge signs (`polld_test_support::forge`). A valid push reaches a
//!   real Buildbot master; pings and other events answer 204; wrong or missing
//!   signatures, malformed and oversize bodies get the contract's codes and poll
//!   nothing.
//! - A burst of 100 deliveries while a poll is held in flight: one running poll plus
//!   one rerun.
//! - `polld notify` run by a real git `post-receive`, svn `post-commit` and hg
//!   `changegroup` hook, and its exit codes.
//! - Behind Apache as a reverse proxy, under a path prefix; forwarding headers trusted
//!   for nothing.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use polld_test_support::apache::{Apache, ApacheConfig};
use polld_test_support::buildbot::BuildbotMaster;
use polld_test_support::forge::{self, Signed, payload, payload_for};
use polld_test_support::hg::{HgRepo, hg_command, hg_poller};
use polld_test_support::svn::{SvnRepo, svn_poller};
use polld_test_support::tcp::Tcp;
use polld_test_support::*;
use serde_json::{Value, json};

const TOKEN: &str = "t0ps3cret-token";
const WAIT: Duration = Duration::from_secs(30);

fn metric(port: u16, line_prefix: &str) -> f64 {
    let (_, metrics) = http::control(port, "GET", "/metrics", None);
    metrics
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn polls(port: u16, poller: &str) -> f64 {
    metric(
        port,
        &format!("polld_polls_total{{poller=\"{poller}\",result=\"ok\"}}"),
    )
}

fn hook_requests(port: u16, forge: &str, result: &str) -> f64 {
    metric(
        port,
        &format!("polld_hook_requests_total{{forge=\"{forge}\",result=\"{result}\"}}"),
    )
}

/// Announces a body one byte over 25 MiB and reads the answer, which comes before any
/// of the body is read (sending it would race the server's close).
fn oversize_status(port: u16, path: &str) -> u16 {
    let size = 25 * 1024 * 1024 + 1;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n\
         Content-Type: application/json\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// A daemon config: control endpoint on `port` with a bearer token, one-hour intervals,
/// `hooks` and `sink` verbatim, then the pollers.
fn hourly_config(port: u16, hooks: &str, sink: &str, pollers: &str) -> String {
    format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\ntoken_env = \"POLLD_TOKEN\"\n\n\
         {hooks}\n[defaults]\ninterval = \"1h\"\njitter = \"0s\"\n\n{sink}\n{pollers}"
    )
}

/// One forge row: its endpoint, the poller its push must reach, and how the forge
/// signs a push, a non-push event, and which headers carry its signature.
struct Row {
    forge: &'static str,
    poller: &'static str,
    secret: &'static str,
    pair: RemotePair,
    push: fn(url: &str, secret: &str) -> Signed,
    other: fn(secret: &str) -> Signed,
    signature_headers: &'static [&'static str],
}

impl Row {
    fn path(&self) -> String {
        format!("/hooks/{}", self.forge)
    }

    /// The remote as the payload names it: a `file://` URL; each payload's own URL
    /// forms (with or without `.git`) then differ only as `/notify` ignores.
    fn url(&self) -> String {
        file_url(&self.pair.remote.path.with_extension(""))
    }
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            forge: "github",
            poller: "github-app",
            secret: "github secret",
            pair: RemotePair::with_initial_commit(),
            push: |url, secret| {
                forge::github(
                    "push",
                    payload_for(
                        "github-push.json",
                        &[("https://github.com/Codertocat/Hello-World", url)],
                    ),
                    secret,
                )
            },
            other: |secret| forge::github("ping", payload("github-ping.json"), secret),
            signature_headers: &["X-Hub-Signature-256"],
        },
        Row {
            forge: "gitlab",
            poller: "gitlab-app",
            secret: "gitlab token",
            pair: RemotePair::with_initial_commit(),
            push: |url, token| {
                forge::gitlab(
                    "Push Hook",
                    payload_for(
                        "gitlab-push.json",
                        &[("http://example.com/mike/diaspora", url)],
                    ),
                    token,
                )
            },
            // GitLab has no ping (its "Test" button sends a push): another event.
            other: |token| {
                forge::gitlab(
                    "Note Hook",
                    br#"{"object_kind":"note","event_type":"note"}"#.to_vec(),
                    token,
                )
            },
            signature_headers: &["X-Gitlab-Token"],
        },
        Row {
            forge: "gitea",
            poller: "gitea-app",
            secret: "gitea secret",
            pair: RemotePair::with_initial_commit(),
            push: |url, secret| {
                forge::forgejo(
                    "push",
                    payload_for(
                        "gitea-push.json",
                        &[("https://try.gitea.io/kostekIV/test", url)],
                    ),
                    secret,
                )
            },
            // Gitea has no ping either (its "Test delivery" sends a push).
            other: |secret| {
                forge::gitea(
                    "issues",
                    br#"{"action":"opened","number":1}"#.to_vec(),
                    secret,
                )
            },
            signature_headers: &[
                "X-Gitea-Signature",
                "X-Forgejo-Signature",
                "X-Gogs-Signature",
                "X-Hub-Signature-256",
            ],
        },
        Row {
            forge: "bitbucket",
            poller: "bitbucket-cloud-app",
            secret: "bitbucket secret",
            pair: RemotePair::with_initial_commit(),
            push: |url, secret| {
                forge::bitbucket(
                    "repo:push",
                    payload_for(
                        "bitbucket-cloud-push.json",
                        &[(
                            "\"https://bitbucket.org/nfalco79/test-repos\"",
                            &format!("\"{url}\""),
                        )],
                    ),
                    secret,
                )
            },
            other: |secret| {
                forge::bitbucket(
                    "repo:commit_comment_created",
                    br#"{"comment":{"id":1}}"#.to_vec(),
                    secret,
                )
            },
            signature_headers: &["X-Hub-Signature"],
        },
        Row {
            forge: "bitbucket",
            poller: "bitbucket-dc-app",
            secret: "bitbucket secret",
            pair: RemotePair::with_initial_commit(),
            push: |url, secret| {
                forge::bitbucket(
                    "repo:refs_changed",
                    payload_for(
                        "bitbucket-dc-refs-changed.json",
                        &[(
                            "http://localhost:7990/bitbucket/scm/amuniz/test-repos.git",
                            &format!("{url}.git"),
                        )],
                    ),
                    secret,
                )
            },
            // Data Center's "Test connection" ping comes unsigned.
            other: |_| {
                Signed::new(payload("bitbucket-dc-ping.json"))
                    .header("X-Event-Key", "diagnostics:ping")
                    .header("X-Request-Id", "d872ad25-24fe-4278-a73a-2a10ed6b653d")
            },
            signature_headers: &["X-Hub-Signature"],
        },
    ]
}

#[test]
fn every_forges_push_reaches_the_master_and_bad_deliveries_poll_nothing() {
    let master = BuildbotMaster::start();
    let rows = rows();
    let port = free_port();
    let hooks = "[hooks]\ngithub_secret_env = \"GITHUB_HOOK_SECRET\"\n\
                 gitlab_token_env = \"GITLAB_HOOK_TOKEN\"\n\
                 gitea_secret_env = \"GITEA_HOOK_SECRET\"\n\
                 bitbucket_secret_file = \"bitbucket.secret\"\n";
    let pollers: String = rows
        .iter()
        .map(|row| git_poller(row.poller, &row.pair.repo(), ""))
        .collect();
    let polld = Polld::with_config(&hourly_config(port, hooks, &master.sink_config(), &pollers));
    std::fs::write(polld.path("bitbucket.secret"), "bitbucket secret\n").unwrap();
    let mut daemon = polld.spawn_run(&[
        ("POLLD_TOKEN", TOKEN),
        ("GITHUB_HOOK_SECRET", "github secret"),
        ("GITLAB_HOOK_TOKEN", "gitlab token"),
        ("GITEA_HOOK_SECRET", "gitea secret"),
    ]);
    daemon.wait_for(WAIT, "every poller's first poll", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
            && rows.iter().all(|row| polls(port, row.poller) >= 1.0)
    });

    // Every repository moves; nothing polls it for an hour unless told.
    let pushed: Vec<String> = rows
        .iter()
        .map(|row| {
            let sha = row
                .pair
                .work
                .commit("a.txt", "a\n", &format!("pushed to {}", row.poller));
            row.pair.work.push(&["main"]);
            sha
        })
        .collect();

    // Deliveries that must poll nothing, for every row.
    for row in &rows {
        let genuine = (row.push)(&row.url(), row.secret);
        let forged = (row.push)(&row.url(), "not the secret");
        let status = forged.post(port, &row.path()).status;
        assert_eq!(status, 401, "{}: wrong signature", row.poller);
        let mut unsigned = genuine.clone();
        for header in row.signature_headers {
            unsigned = unsigned.without(header);
        }
        let answer = unsigned.post(port, &row.path());
        assert_eq!(
            answer.status, 401,
            "{}: no signature: {answer:?}",
            row.poller
        );
        // GitLab's token signs no body, so only the others can catch a tampered one.
        if row.forge != "gitlab" {
            let tampered = genuine.clone().tampered().post(port, &row.path());
            assert_eq!(
                tampered.status, 401,
                "{}: tampered: {tampered:?}",
                row.poller
            );
        }
        let malformed = resign(
            row,
            Signed {
                body: b"{\"ref\":".to_vec(),
                ..genuine
            },
        );
        let answer = malformed.post(port, &row.path());
        assert_eq!(answer.status, 400, "{}: malformed: {answer:?}", row.poller);
        assert_eq!(oversize_status(port, &row.path()), 413, "{}", row.poller);
        let other = (row.other)(row.secret).post(port, &row.path());
        assert_eq!(other.status, 204, "{}: not a push: {other:?}", row.poller);
    }
    std::thread::sleep(Duration::from_secs(2));
    for row in &rows {
        assert_eq!(polls(port, row.poller), 1.0, "{} polled", row.poller);
    }
    assert_eq!(master.change_count(), 0, "{:?}", master.changes());

    // The genuine pushes: 202 naming the poller, which polls at once.
    for row in &rows {
        let answer = (row.push)(&row.url(), row.secret).post(port, &row.path());
        assert_eq!(answer.status, 202, "{}: {answer:?}", row.poller);
        let polled: Value = serde_json::from_str(&answer.body).unwrap();
        assert_eq!(polled, json!({"polled": [row.poller]}), "{}", row.poller);
    }
    wait_until(WAIT, "every pushed change at the master", || {
        master.change_count() >= rows.len() as u64
    });
    let mut at_master: Vec<String> = master
        .changes()
        .iter()
        .map(|change| change["revision"].as_str().unwrap().to_owned())
        .collect();
    at_master.sort();
    let mut want = pushed.clone();
    want.sort();
    assert_eq!(at_master, want, "each pushed commit once at the master");

    for (forge, result, count) in [
        ("github", "push", 1.0),
        ("github", "ping", 1.0),
        ("github", "bad_signature", 2.0),
        ("github", "missing_signature", 1.0),
        ("github", "malformed", 1.0),
        ("github", "too_large", 1.0),
        ("gitlab", "push", 1.0),
        ("gitlab", "ignored", 1.0),
        ("bitbucket", "push", 2.0),
        ("bitbucket", "ping", 1.0),
    ] {
        assert_eq!(
            hook_requests(port, forge, result),
            count,
            "polld_hook_requests_total{{forge={forge},result={result}}}"
        );
    }
}

/// `signed` with its signature made again over its (changed) body, as `row`'s forge
/// would sign it.
fn resign(row: &Row, signed: Signed) -> Signed {
    let headers: Vec<(String, String)> = signed
        .headers
        .iter()
        .filter(|(name, _)| {
            !row.signature_headers
                .iter()
                .any(|header| header.eq_ignore_ascii_case(name))
        })
        .cloned()
        .collect();
    let mut fresh = Signed {
        headers,
        body: signed.body,
    };
    let hex = forge::hmac_hex(row.secret, &fresh.body);
    for header in row.signature_headers {
        let value = match *header {
            "X-Gitlab-Token" => row.secret.to_owned(),
            "X-Hub-Signature-256" | "X-Hub-Signature" => format!("sha256={hex}"),
            _ => hex.clone(),
        };
        fresh = fresh.header(header, value);
    }
    fresh
}

#[test]
fn a_burst_of_100_deliveries_makes_one_running_poll_and_one_rerun() {
    let pair = RemotePair::with_initial_commit();
    let git_daemon = GitDaemon::start(&pair.dir.path().join("remote"));
    let proxy = Tcp::holding_proxy(git_daemon.port);
    proxy.release();
    let url = format!("git://127.0.0.1:{}/app.git", proxy.port);
    let port = free_port();
    let polld = Polld::with_config(&hourly_config(
        port,
        "[hooks]\ngithub_secret_env = \"GITHUB_HOOK_SECRET\"\n",
        "[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n",
        &git_poller("app", &url, ""),
    ));
    let secret = "github secret";
    let mut daemon = polld.spawn_run(&[("POLLD_TOKEN", TOKEN), ("GITHUB_HOOK_SECRET", secret)]);
    daemon.wait_for(WAIT, "the first poll", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() && polls(port, "app") >= 1.0
    });

    // Hooks need no bearer token, but the other POSTs still do; forges `[hooks]` does
    // not configure have no endpoint.
    assert_eq!(http::control(port, "POST", "/poll", None).0, 401);
    let gitlab = http::request(port, "POST", "/hooks/gitlab", &[], b"{}").unwrap();
    assert_eq!(gitlab.status, 404, "{gitlab:?}");

    // From now on a poll hangs at the proxy until released.
    proxy.hold();
    let held = proxy.connections();
    let sha = pair
        .work
        .commit("a.txt", "a\n", "pushed once, announced 100 times");
    pair.work.push(&["main"]);
    let delivery = forge::github(
        "push",
        payload_for(
            "github-push.json",
            &[("https://github.com/Codertocat/Hello-World.git", &url)],
        ),
        secret,
    );
    assert_eq!(delivery.post(port, "/hooks/github").status, 202);
    wait_until(WAIT, "the poll the first delivery started", || {
        proxy.connections() > held
    });
    let senders: Vec<_> = (0..10)
        .map(|_| {
            let delivery = delivery.clone();
            std::thread::spawn(move || {
                (0..10)
                    .map(|_| delivery.post(port, "/hooks/github").status)
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = senders
        .into_iter()
        .flat_map(|sender| sender.join().unwrap())
        .collect();
    assert_eq!(statuses.len(), 100);
    assert!(statuses.iter().all(|&status| status == 202), "{statuses:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        proxy.connections(),
        held + 1,
        "a delivery started a second poll while one was in flight"
    );

    proxy.release();
    wait_until(WAIT, "the held poll and its one rerun", || {
        polls(port, "app") >= 3.0
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        polls(port, "app"),
        3.0,
        "101 deliveries: the first poll, the held one and one rerun"
    );
    let (records, _) = read_jsonl(&polld.path("changes.jsonl"));
    let revisions: Vec<&str> = records
        .iter()
        .map(|record: &Value| record["revision"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(revisions, [sha.as_str()]);
    assert_eq!(hook_requests(port, "github", "push"), 101.0);
}

/// Writes an executable hook script: `body` after a shebang.
fn write_hook(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn server_hooks_run_polld_notify_and_the_change_arrives_at_once() {
    let git = RemotePair::with_initial_commit();
    let svn = SvnRepo::new();
    svn.put(&[("README", "svn\n")], "Initial svn revision");
    let hg_dir = tempfile::tempdir().unwrap();
    let hg_remote = HgRepo::init(&hg_dir.path().join("remote"));
    hg_remote.commit("initial");
    let hg_work = hg_dir.path().join("work");
    let cloned = hg_command(hg_dir.path())
        .arg("clone")
        .arg("-q")
        .arg(&hg_remote.path)
        .arg(&hg_work)
        .status()
        .unwrap();
    assert!(cloned.success());
    let hg_work = HgRepo { path: hg_work };

    let port = free_port();
    let pollers = format!(
        "{}{}{}",
        git_poller("git-app", &git.repo(), ""),
        svn_poller("svn-app", &svn.url(), ""),
        hg_poller("hg-app", &hg_remote.path.display().to_string(), "")
    );
    let mut polld = Polld::with_config(&hourly_config(
        port,
        "",
        "[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n",
        &pollers,
    ));
    polld.env.push(("POLLD_TOKEN".to_owned(), TOKEN.to_owned()));
    let mut daemon = polld.spawn_run(&[]);
    daemon.wait_for(WAIT, "every poller's first poll", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
            && ["git-app", "svn-app", "hg-app"]
                .iter()
                .all(|poller| polls(port, poller) >= 1.0)
    });

    // Each hook as a server admin would write it. svn runs hooks with an empty
    // environment, so each reads the daemon's token from a file, as the README shows.
    let token_file = polld.path("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let notify = |url: &str| {
        format!(
            "POLLD_TOKEN=$(cat {token}) exec {polld} notify --config {config} {url}\n",
            token = token_file.display(),
            polld = polld_bin().display(),
            config = polld.config.display(),
        )
    };
    write_hook(
        &git.remote.path.join("hooks/post-receive"),
        &notify(&git.repo()),
    );
    write_hook(&svn.path.join("hooks/post-commit"), &notify(&svn.url()));
    let hg_hook = hg_dir.path().join("changegroup.sh");
    write_hook(&hg_hook, &notify(&hg_remote.path.display().to_string()));
    std::fs::write(
        hg_remote.path.join(".hg/hgrc"),
        format!("[hooks]\nchangegroup.polld = {}\n", hg_hook.display()),
    )
    .unwrap();

    let git_sha = git.work.commit("a.txt", "a\n", "git, told by post-receive");
    git.work.push(&["main"]);
    let svn_rev = svn.put(&[("a.txt", "a\n")], "svn, told by post-commit");
    let hg_node = hg_work.commit("hg, told by changegroup");
    hg_work.hg(&["push", "-q"]);

    wait_until(WAIT, "the three changes", || {
        read_jsonl(&polld.path("changes.jsonl")).0.len() >= 3
    });
    let (records, _) = read_jsonl(&polld.path("changes.jsonl"));
    let mut got: Vec<(String, String)> = records
        .iter()
        .map(|record: &Value| {
            (
                record["poller"].as_str().unwrap().to_owned(),
                record["revision"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("git-app".to_owned(), git_sha),
            ("hg-app".to_owned(), hg_node),
            ("svn-app".to_owned(), svn_rev.to_string()),
        ]
    );

    // Exit codes: 0 when a poller matched (with another URL that matches none), 1 when
    // none matched, 2 for bad usage or a token the daemon refuses.
    polld
        .run(&["notify", &git.repo(), "https://example.org/nobody.git"])
        .expect_code(0);
    let unmatched = polld.run(&["notify", "https://example.org/nobody.git"]);
    unmatched.expect_code(1);
    assert!(
        unmatched.stderr.contains("no poller watches"),
        "{}",
        unmatched.describe()
    );
    polld.run(&["notify"]).expect_code(2);
    let mut wrong_token = polld.command();
    wrong_token
        .env("POLLD_TOKEN", "not the token")
        .args(["notify", &git.repo()]);
    run_bounded(wrong_token).expect_code(2);

    // The daemon gone: 1, saying it cannot be reached.
    daemon.signal(libc::SIGTERM);
    daemon.wait_exit(WAIT);
    let unreachable = polld.run(&["notify", &git.repo()]);
    unreachable.expect_code(1);
    assert!(
        unreachable.stderr.contains("cannot reach the daemon"),
        "{}",
        unreachable.describe()
    );
    // A config without `listen` names no daemon: 2.
    let no_listen = Polld::new(&git_poller("git-app", &git.repo(), ""));
    no_listen.run(&["notify", &git.repo()]).expect_code(2);
}

#[test]
fn hooks_work_behind_a_reverse_proxy_under_a_path_prefix() {
    let pair = RemotePair::with_initial_commit();
    let port = free_port();
    let polld = Polld::with_config(&hourly_config(
        port,
        "[hooks]\ngithub_secret_env = \"GITHUB_HOOK_SECRET\"\n",
        "[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n",
        &git_poller("app", &pair.repo(), ""),
    ));
    let secret = "github secret";
    let mut daemon = polld.spawn_run(&[("POLLD_TOKEN", TOKEN), ("GITHUB_HOOK_SECRET", secret)]);
    daemon.wait_for(WAIT, "the first poll", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() && polls(port, "app") >= 1.0
    });
    // Apache publishes only the hooks, under a prefix, as the README's example does.
    let apache = Apache::start(ApacheConfig {
        modules: &["proxy", "proxy_http"],
        body: format!(
            "ProxyPass \"/ci/polld/hooks/\" \"http://127.0.0.1:{port}/hooks/\"\n\
             LimitRequestBody 26214400\n"
        ),
        tls: None,
        h2: false,
        readable: &[],
        htpasswd: None,
    });

    let sha = pair.work.commit("a.txt", "a\n", "pushed behind a proxy");
    pair.work.push(&["main"]);
    let delivery = forge::github(
        "push",
        payload_for(
            "github-push.json",
            &[(
                "https://github.com/Codertocat/Hello-World.git",
                &pair.repo(),
            )],
        ),
        secret,
    );
    // Forwarding headers claiming a local, https client buy a forgery nothing.
    let forged = forge::github("push", delivery.body.clone(), "not the secret")
        .header("X-Forwarded-For", "127.0.0.1")
        .header("X-Forwarded-Proto", "https")
        .header("X-Real-IP", "127.0.0.1");
    let answer = forged.post(apache.port, "/ci/polld/hooks/github");
    assert_eq!(answer.status, 401, "{answer:?}");
    let answer = delivery.post(apache.port, "/ci/polld/hooks/github");
    assert_eq!(answer.status, 202, "{answer:?}");
    wait_until(WAIT, "the change pushed behind the proxy", || {
        read_jsonl(&polld.path("changes.jsonl")).0.len() == 1
    });
    let (records, _) = read_jsonl(&polld.path("changes.jsonl"));
    assert_eq!(records[0]["revision"], sha.as_str());
    // The control endpoints are not published.
    let poll = http::request(apache.port, "POST", "/ci/polld/poll", &[], b"").unwrap();
    assert_eq!(poll.status, 404, "{poll:?}");
}
