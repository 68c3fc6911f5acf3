//! End-to-end: forge webhooks (`POST /hooks/{forge}`) through `polld run`.
//!
//! A real GitHub push payload (`crates/hooks/tests/payloads/`), rewritten only in its
//! clone URL to point at a local test repository and signed as GitHub signs, makes the
//! daemon poll at once although its interval is one hour; the change reaches a jsonl
//! sink. A delivery with a wrong signature polls nothing.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use polld_test_support::http::{Answer, request};
use polld_test_support::*;
use serde_json::Value;
use sha2::Sha256;

const TOKEN: &str = "t0ps3cret-token";
const SECRET: &str = "It's a Secret to Everybody";
const PAYLOAD_CLONE_URL: &str = "https://github.com/Codertocat/Hello-World.git";

fn hmac_hex(secret: &str, bytes: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(bytes);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// GitHub's published example payload `name`, its clone URL replaced by `clone_url`.
fn github_payload(name: &str, clone_url: &str) -> Vec<u8> {
    let path = workspace_root()
        .join("crates/hooks/tests/payloads")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    text.replace(PAYLOAD_CLONE_URL, clone_url).into_bytes()
}

/// POSTs `body` to `/hooks/github` as GitHub does, signed with `secret`.
fn deliver(port: u16, event: &str, body: &[u8], secret: &str) -> Answer {
    let signature = format!("sha256={}", hmac_hex(secret, body));
    request(
        port,
        "POST",
        "/hooks/github",
        &[
            ("Content-Type", "application/json"),
            ("User-Agent", "GitHub-Hookshot/044aadd"),
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
            ("X-Hub-Signature-256", &signature),
        ],
        body,
    )
    .unwrap()
}

/// Announces a body one byte over 25 MiB and reads the answer, which comes before any
/// of the body is read (sending it would race the server's close).
fn oversize_status(port: u16) -> u16 {
    let size = 25 * 1024 * 1024 + 1;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let head = format!(
        "POST /hooks/github HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {size}\r\n\
         X-GitHub-Event: push\r\nConnection: close\r\n\r\n"
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

fn metric(port: u16, line_prefix: &str) -> f64 {
    let (_, metrics) = http::control(port, "GET", "/metrics", None);
    metrics
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn polls(port: u16) -> f64 {
    metric(port, "polld_polls_total{poller=\"app\",result=\"ok\"}")
}

#[test]
fn a_signed_github_push_polls_at_once_and_a_forged_one_polls_nothing() {
    let pair = RemotePair::with_initial_commit();
    let port = free_port();
    let config = format!(
        "[daemon]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:{port}\"\ntoken_env = \"POLLD_TOKEN\"\n\n\
         [hooks]\ngithub_secret_env = \"GITHUB_HOOK_SECRET\"\n\n\
         [defaults]\ninterval = \"1h\"\n\n[sink]\ntype = \"jsonl\"\npath = \"changes.jsonl\"\n\n{}",
        git_poller("app", &pair.repo(), "")
    );
    let polld = Polld::with_config(&config);
    let mut daemon = polld.spawn_run(&[("POLLD_TOKEN", TOKEN), ("GITHUB_HOOK_SECRET", SECRET)]);
    daemon.wait_for(Duration::from_secs(20), "the first poll", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok() && polls(port) >= 1.0
    });
    let revisions = || -> Vec<String> {
        read_jsonl(&polld.path("changes.jsonl"))
            .0
            .iter()
            .map(|r: &Value| r["revision"].as_str().unwrap_or_default().to_owned())
            .collect()
    };

    // The repository moves; nothing polls it for an hour unless told.
    let sha = pair
        .work
        .commit("a.txt", "a\n", "pushed, and the forge says so");
    pair.work.push(&["main"]);
    let body = github_payload("github-push.json", &file_url(&pair.remote.path));

    // A forged delivery (the payload signed with another secret): 401, nothing polled.
    let before = polls(port);
    let forged = deliver(port, "push", &body, "not the secret");
    assert_eq!(forged.status, 401, "{forged:?}");
    // No signature at all: 401 as well, and no bearer token is what is asked for.
    let unsigned = request(
        port,
        "POST",
        "/hooks/github",
        &[("X-GitHub-Event", "push")],
        &body,
    )
    .unwrap();
    assert_eq!(unsigned.status, 401, "{unsigned:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(polls(port), before, "a forged delivery polled");
    assert!(
        revisions().is_empty(),
        "a forged delivery reported {:?}",
        revisions()
    );

    // The genuine delivery: 202 naming the poller, which polls at once; no bearer token.
    let genuine = deliver(port, "push", &body, SECRET);
    assert_eq!(genuine.status, 202, "{genuine:?}");
    let answer: Value = serde_json::from_str(&genuine.body).unwrap();
    assert_eq!(answer, serde_json::json!({"polled": ["app"]}));
    wait_until(Duration::from_secs(10), "the pushed change", || {
        revisions() == [sha.clone()]
    });

    // A ping is verified and polls nothing: 204.
    let ping = github_payload("github-ping.json", &file_url(&pair.remote.path));
    assert_eq!(deliver(port, "ping", &ping, SECRET).status, 204);
    // Malformed JSON, signed: 400; a body over 25 MiB: 413, before anything is verified.
    assert_eq!(deliver(port, "push", b"{\"ref\":", SECRET).status, 400);
    assert_eq!(oversize_status(port), 413);
    // Forges `[hooks]` does not configure have no endpoint.
    let gitlab = request(port, "POST", "/hooks/gitlab", &[], b"{}").unwrap();
    assert_eq!(gitlab.status, 404, "{gitlab:?}");
    // The other POSTs still need the bearer token.
    assert_eq!(http::control(port, "POST", "/poll", None).0, 401);

    for (result, count) in [
        ("bad_signature", 1.0),
        ("missing_signature", 1.0),
        ("push", 1.0),
        ("ping", 1.0),
        ("malformed", 1.0),
        ("too_large", 1.0),
    ] {
        assert_eq!(
            metric(
                port,
                &format!("polld_hook_requests_total{{forge=\"github\",result=\"{result}\"}}")
            ),
            count,
            "{result}"
        );
    }
}
