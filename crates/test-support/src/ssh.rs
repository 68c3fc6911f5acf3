//! A real `sshd` on 127.0.0.1, for the ssh transports.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::closed_port;

/// An sshd on 127.0.0.1 accepting one client key; killed on drop.
pub struct Sshd {
    child: Child,
    pub port: u16,
    /// The `known_hosts` line for this server.
    pub host_key_line: String,
}

impl Sshd {
    pub fn start(dir: &Path, authorized_key: &Path) -> Sshd {
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

/// `ssh-keygen` of an ed25519 key pair at `path` (and `path.pub`), no passphrase.
pub fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
}
