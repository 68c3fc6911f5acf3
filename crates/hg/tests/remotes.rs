//! The transports: `hg serve` over http with the cheap check, file://, and failures.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use polld_backend::{PollOutcome, PollerContext};
use serde_json::json;

fn mtimes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        all.push((
            dir.clone(),
            std::fs::metadata(&dir).unwrap().modified().unwrap(),
        ));
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                all.push((path.clone(), entry.metadata().unwrap().modified().unwrap()));
            }
        }
    }
    all.sort();
    all
}

#[tokio::test]
async fn http_checks_heads_without_pulling_and_pulls_only_on_change() {
    let fx = Fixture::new();
    fx.remote.hg(&["bookmark", "@"]);
    let serve = HgServe::start(&fx.remote.path, &fx.tmp.path().join("access.log"));
    let poller = build(fx.context(&serve.url(None)), json!({"bookmarks": ["@"]})).unwrap();
    let mut cursor = first_poll(&poller).await;
    let pulled = serve.requests();
    assert!(
        pulled.iter().any(|r| r.contains("cmd=getbundle")),
        "{pulled:?}"
    );

    // Nothing moved: two GETs and nothing else; the mirror untouched.
    let before = mtimes(&fx.mirror_dir());
    let started = Instant::now();
    assert_eq!(
        poller.poll(cursor.as_ref()).await.unwrap(),
        PollOutcome::Unchanged
    );
    let elapsed = started.elapsed();
    let requests = serve.requests()[pulled.len()..].to_vec();
    assert_eq!(
        requests,
        [
            "GET /?cmd=branchmap HTTP/1.1",
            "GET /?cmd=listkeys&namespace=bookmarks HTTP/1.1"
        ]
    );
    assert_eq!(mtimes(&fx.mirror_dir()), before, "no disk write");
    eprintln!("no-change poll over http: {elapsed:?}");

    let one = fx.remote.commit("over http");
    let changes = advance(&poller, &mut cursor).await;
    assert_eq!(revisions(&changes), [&one]);
    assert_eq!(
        changes[0].branch.as_deref(),
        Some("default"),
        "reported once, for the branch"
    );
    assert!(
        serve
            .requests()
            .iter()
            .filter(|r| r.contains("cmd=getbundle"))
            .count()
            >= 2
    );
}

#[tokio::test]
async fn a_local_no_change_poll_is_one_hg_process_and_writes_nothing() {
    let fx = Fixture::new();
    let poller = fx.poller(json!({}));
    let cursor = first_poll(&poller).await;
    let before = mtimes(&fx.mirror_dir());
    let started = Instant::now();
    assert_eq!(
        poller.poll(cursor.as_ref()).await.unwrap(),
        PollOutcome::Unchanged
    );
    eprintln!("no-change poll of a local path: {:?}", started.elapsed());
    assert_eq!(mtimes(&fx.mirror_dir()), before);
}

#[tokio::test]
async fn file_urls_work() {
    let fx = Fixture::new();
    let url = format!("file://{}", fx.remote.path.display());
    let poller = build(fx.context(&url), json!({})).unwrap();
    let mut cursor = first_poll(&poller).await;
    let one = fx.remote.commit("over file");
    assert_eq!(revisions(&advance(&poller, &mut cursor).await), [&one]);
}

#[tokio::test]
async fn a_dead_remote_fails_the_poll_with_a_scrubbed_message() {
    let fx = Fixture::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let repo = format!("http://ada:s3cret@127.0.0.1:{port}/repo");
    let poller = build(fx.context(&repo), json!({})).unwrap();
    let error = poller.poll(None).await.unwrap_err().to_string();
    assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
    assert!(
        !error.contains("s3cret") && !error.contains("ada"),
        "{error}"
    );

    let missing = build(fx.context("no/such/repo"), json!({})).unwrap();
    let error = missing.poll(None).await.unwrap_err().to_string();
    assert!(
        error.contains("polld-heads") && error.contains("not found"),
        "{error}"
    );

    // A path the server has no repository at.
    let serve = HgServe::start(&fx.remote.path, &fx.tmp.path().join("a.log"));
    let wrong_path = build(fx.context(&format!("{}nosuch", serve.url(None))), json!({})).unwrap();
    let error = wrong_path.poll(None).await.unwrap_err().to_string();
    assert!(error.contains("404"), "{error}");
}

#[tokio::test]
async fn a_remote_that_never_answers_times_out() {
    let fx = Fixture::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    for repo in [
        format!("http://127.0.0.1:{port}/r"),
        format!("ssh://127.0.0.1:{port}/r"),
    ] {
        let context = PollerContext {
            timeout: Duration::from_millis(1500),
            ..fx.context(&repo)
        };
        let poller = build(context, json!({})).unwrap();
        let started = Instant::now();
        let error = poller.poll(None).await.unwrap_err().to_string();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{repo}: {error}"
        );
        assert!(
            error.contains("timed out") || error.contains("did not finish"),
            "{repo}: {error}"
        );
    }
    drop(listener);
}

#[tokio::test]
async fn build_refuses_what_hg_could_misread() {
    let fx = Fixture::new();
    for (repo, config, needle) in [
        ("-Rfoo", json!({}), "`-`"),
        ("ssh://-oProxyCommand=touch%20pwned/x", json!({}), "'-'"),
        ("bundle:///x", json!({}), "not supported"),
        ("remote", json!({"username": "ada"}), "http"),
        (
            "remote",
            json!({"branches": [], "bookmarks": []}),
            "nothing",
        ),
        ("http://h/r", json!({"password_env": "X"}), "username"),
    ] {
        let error = build(fx.context(repo), config).err().unwrap();
        assert!(error.contains(needle), "{repo}: {error}");
    }
    let error = build(fx.context("remote"), json!({"tags": true}))
        .err()
        .unwrap();
    assert!(error.contains("unknown field"), "{error}");
}
