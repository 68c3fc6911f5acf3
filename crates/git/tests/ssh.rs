//! The ssh transport against a real `sshd` on loopback: key authentication from
//! `ssh_key_file`, and host keys checked against `~/.ssh/known_hosts`.
//!
//! Alone in its test binary because it points `HOME` (where polld finds
//! `known_hosts`) at a tempdir for the whole process. sshd must run as root, as the
//! test command does; openssh-server is installed by `scripts/test.sh`.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use polld_backend::PollOutcome;
use serde_json::json;

#[tokio::test]
async fn ssh_with_a_key_file_and_host_key_checking() {
    let fx = Fixture::new();
    let home = fx.tmp.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    // SAFETY: the only test in this binary, and set before the poller reads it.
    unsafe { std::env::set_var("HOME", &home) };
    let client_key = fx.tmp.path().join("client_key");
    keygen(&client_key);
    let sshd = Sshd::start(fx.tmp.path(), &client_key.with_extension("pub"));
    let user = std::env::var("USER").unwrap_or_else(|_| "root".to_owned());
    let url = format!(
        "ssh://{user}@127.0.0.1:{}{}",
        sshd.port,
        fx.remote.path.display()
    );
    let poller = build(fx.context(&url), json!({"ssh_key_file": "client_key"})).unwrap();

    // An unknown host is refused: polld never trusts a host key on first use.
    let error = poller.poll(None).await.unwrap_err().to_string();
    assert!(error.contains("not in known_hosts"), "{error}");

    std::fs::write(home.join(".ssh/known_hosts"), &sshd.host_key_line).unwrap();
    let mut cursor = first_poll(&poller).await;
    let one = fx.remote.commit_message("one");
    assert_eq!(revisions(&advance(&poller, &mut cursor).await), [&one]);
    assert_eq!(
        poller.poll(cursor.as_ref()).await.unwrap(),
        PollOutcome::Unchanged
    );

    // A key the server does not know fails cleanly, without looping.
    let stranger = fx.tmp.path().join("stranger_key");
    keygen(&stranger);
    let refused = build(fx.context(&url), json!({"ssh_key_file": "stranger_key"})).unwrap();
    let error = refused.poll(None).await.unwrap_err().to_string();
    assert!(error.contains("authentication"), "{error}");
}
