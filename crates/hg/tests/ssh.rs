//! ssh:// without an sshd: a fake `ssh` on PATH records its arguments and runs the
//! remote command locally, as a login shell on the server would. Proves the arguments
//! hg is given and the whole ssh path (check, pull, walk). Its own test binary, because
//! it changes PATH for the process.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use serde_json::json;

#[tokio::test]
async fn ssh_remotes_are_reached_with_batch_mode_and_the_url_parts() {
    let fx = Fixture::new();
    let bin = fx.tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let args_log = fx.tmp.path().join("ssh-args");
    let fake = bin.join("ssh");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" >> '{log}'\nprintf -- '--\\n' >> '{log}'\n\
             for last; do :; done\nexec sh -c \"$last\"\n",
            log = args_log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // SAFETY: this test binary has one test, and sets PATH before starting anything.
    unsafe { std::env::set_var("PATH", path) };

    let url = format!("ssh://ada@fakehost:2222/{}", fx.remote.path.display());
    let poller = build(fx.context(&url), json!({})).unwrap();
    let mut cursor = first_poll(&poller).await;
    let one = fx.remote.commit("over ssh");
    assert_eq!(revisions(&advance(&poller, &mut cursor).await), [&one]);

    let calls = std::fs::read_to_string(&args_log).unwrap();
    let first: Vec<&str> = calls.split("--\n").next().unwrap().lines().collect();
    assert_eq!(&first[..2], ["-o", "BatchMode=yes"], "{calls}");
    assert!(
        first.contains(&"ada@fakehost") && first.contains(&"2222"),
        "{calls}"
    );
    assert!(
        first.last().unwrap().ends_with("serve --stdio"),
        "the remote command comes last: {calls}"
    );
}
