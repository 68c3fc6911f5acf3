//! The ssh transport against a real `sshd` on loopback: key authentication from
//! `ssh_key_file`, and host keys checked against `~/.ssh/known_hosts`.
//!
//! Alone in its test binary because it points `HOME` (where libssh2 finds
//! `known_hosts`) at a tempdir for the whole process. sshd must run as root, as the
//! test command does; openssh-server is installed by `scripts/test.sh`.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use polld_core::PollOutcome;
use serde_json::json;

/// An sshd on 127.0.0.1 accepting one client key; killed on drop.
struct Sshd {
    child: Child,
    port: u16,
    host_key_line: String,
}

impl Sshd {
    fn start(dir: &Path, authorized_key: &Path) -> Sshd {
        let host_key = dir.join("host_key");
        keygen(&host_key);
        let port = closed_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nPermitRootLogin prohibit-password\nPidFile none\n",
                host_key.display(),
                authorized_key.display(),
            ),
        )
        .unwrap();
        // Privilege separation needs this directory; a fresh machine may lack it.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd starts (is openssh-server installed? run scripts/test.sh as root)");
        let public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let key: Vec<&str> = public.split_whitespace().take(2).collect();
        let sshd = Sshd {
            child,
            port,
            host_key_line: format!("[127.0.0.1]:{port} {}\n", key.join(" ")),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        sshd
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
}

#[tokio::test]
async fn ssh_with_a_key_file_and_host_key_checking() {
    let fx = Fixture::new();
    let home = fx.tmp.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    // SAFETY: the only test in this binary, and set before libssh2 reads it.
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
    assert!(error.contains("hostkey"), "{error}");

    std::fs::write(home.join(".ssh/known_hosts"), &sshd.host_key_line).unwrap();
    let mut cursor = first_poll(&poller).await;
    let one = fx.remote.commit("one");
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
