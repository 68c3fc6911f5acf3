//! The daemon user's git config cannot change what a poll does.
//!
//! Alone in its test binary because it points `HOME` at a tempdir for the whole
//! process before libgit2 first reads it.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn user_git_config_is_ignored_and_passwords_come_from_the_environment() {
    let home = tempfile::tempdir().unwrap();
    let fx = Fixture::new();
    let remote_url = format!("file://{}", fx.remote.path.display());
    // Would send every fetch of this remote to a repository that does not exist.
    std::fs::write(
        home.path().join(".gitconfig"),
        format!(
            "[url \"file:///nonexistent/\"]\n\tinsteadOf = {remote_url}\n[fetch]\n\tprune = true\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(home.path().join(".config/git")).unwrap();
    std::fs::copy(
        home.path().join(".gitconfig"),
        home.path().join(".config/git/config"),
    )
    .unwrap();
    // SAFETY: the only test in this binary, and set before anything reads them.
    unsafe {
        std::env::set_var("HOME", home.path());
        std::env::set_var("XDG_CONFIG_HOME", home.path().join(".config"));
        std::env::set_var("POLLD_GIT_TEST_PASSWORD", "hunter2-pw");
    }

    let poller = build(fx.context(&remote_url), json!({})).unwrap();
    let mut cursor = first_poll(&poller).await;
    let one = fx.remote.commit_message("one");
    assert_eq!(revisions(&advance(&poller, &mut cursor).await), [&one]);

    // The password is read at poll time and offered once; a server that keeps saying
    // 401 fails the poll without looping and without echoing it.
    let url = format!("http://127.0.0.1:{}/x.git", unauthorized_server());
    let poller = build(
        fx.context(&url),
        json!({"username": "ada", "password_env": "POLLD_GIT_TEST_PASSWORD"}),
    )
    .unwrap();
    let error = poller.poll(None).await.unwrap_err().to_string();
    assert!(error.contains("authentication failed"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
}
