//! Reaching remotes: `file://`, failures, credentials and what build() refuses. (The
//! history cases run over every transport in `history.rs`.)

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn polls_a_file_url() {
    let fx = Fixture::new();
    let url = format!("file://{}", fx.remote.path.display());
    let poller = build(fx.context(&url), json!({})).unwrap();
    let mut cursor = first_poll(&poller).await;
    let one = fx.remote.commit_message("one");
    assert_eq!(revisions(&advance(&poller, &mut cursor).await), [&one]);
}

#[tokio::test]
async fn a_dead_remote_is_an_error() {
    let fx = Fixture::new();
    let url = format!("git://127.0.0.1:{}/x", closed_port());
    let poller = build(fx.context(&url), json!({})).unwrap();
    let error = poller.poll(None).await.unwrap_err().to_string();
    assert!(error.contains("cannot list the remote's refs"), "{error}");
    assert!(!fx.mirror_dir().exists());

    let url = format!("ssh://git@127.0.0.1:{}/x.git", closed_port());
    let poller = build(fx.context(&url), json!({"ssh_key_file": "id_ed25519"})).unwrap();
    let error = poller.poll(None).await.unwrap_err().to_string();
    assert!(error.contains("cannot list the remote's refs"), "{error}");

    let poller = build(fx.context("no/such/repo"), json!({})).unwrap();
    let error = poller.poll(None).await.unwrap_err().to_string();
    assert!(error.contains("no/such/repo"), "{error}");
    assert!(error.contains("does not exist"), "{error}");
}

#[tokio::test]
async fn credentials_in_the_url_never_reach_an_error() {
    let fx = Fixture::new();
    let secret = "s3cretpw";

    let url = format!("http://ada:{secret}@127.0.0.1:{}/x.git", closed_port());
    let poller = build(fx.context(&url), json!({})).unwrap();
    let error = poller.poll(None).await.unwrap_err().to_string();
    assert!(!error.contains(secret), "{error}");

    // A server that rejects every attempt: the poll must give up, not loop.
    let url = format!(
        "http://ada:{secret}@127.0.0.1:{}/x.git",
        unauthorized_server()
    );
    let poller = build(fx.context(&url), json!({})).unwrap();
    let error = poller.poll(None).await.unwrap_err().to_string();
    assert!(!error.contains(secret), "{error}");
    assert!(error.contains("authentication failed"), "{error}");
}

#[tokio::test]
async fn a_missing_password_variable_is_named() {
    let fx = Fixture::new();
    let url = format!("https://127.0.0.1:{}/x.git", closed_port());
    let poller = build(
        fx.context(&url),
        json!({"username": "ada", "password_env": "POLLD_GIT_TEST_UNSET_PASSWORD"}),
    )
    .unwrap();
    let error = poller.poll(None).await.unwrap_err().to_string();
    assert!(error.contains("POLLD_GIT_TEST_UNSET_PASSWORD"), "{error}");
}

#[test]
fn build_refuses_what_git_would_misread_or_run() {
    let fx = Fixture::new();
    let refused =
        |repo: &str, config: serde_json::Value| match build(fx.context(repo), config.clone()) {
            Ok(_) => panic!("{repo} with {config} was accepted"),
            Err(message) => message,
        };
    assert!(refused("-oProxyCommand=x", json!({})).contains("start with `-`"));
    assert!(refused("ext::sh -c x", json!({})).contains("ext::"));
    assert!(refused("remote", json!({"branches": ["[oops"]})).contains("[oops"));
    assert!(refused("remote", json!({"tags": ["{a"]})).contains("{a"));
    assert!(refused("remote", json!({"brnaches": ["main"]})).contains("brnaches"));
    assert!(refused("remote", json!({"tags": 3})).contains("tag-name globs"));
    assert!(refused("remote", json!({"branches": 3})).contains("a string or a list"));
    assert!(refused("remote", json!({"ssh_key_file": "id"})).contains("ssh"));
    assert!(refused("https://h/x", json!({"password_env": "P"})).contains("username"));
    assert!(refused("https://h/x", json!({"ssh_key_file": "id"})).contains("ssh repos"));
    let secret = refused("ftp://ada:s3cret@h/x", json!({}));
    assert!(!secret.contains("s3cret"), "{secret}");

    for ok in ["git@host:app.git", "ssh://git@host/app.git"] {
        assert!(build(fx.context(ok), json!({"ssh_key_file": "keys/id"})).is_ok());
    }
    assert!(
        build(
            fx.context("https://h/x"),
            json!({"username": "u", "password_env": "P"})
        )
        .is_ok()
    );
}
