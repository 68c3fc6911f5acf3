//! Real `sshd`s on 127.0.0.1, for the ssh transports.
//!
//! An sshd runs commands through the login's shell, so `git-upload-pack '<path>'`
//! serves any repository by its absolute path. bash run by sshd reads `~/.bashrc`
//! unless it is a nested shell: the config's `SetEnv SHLVL=1` makes it one, so the
//! tests' user's rc files (which can take seconds, or print where the protocol
//! goes) stay out of every session, as a git host's restricted shell keeps them out. Whether it speaks git's protocol v2
//! depends on the server, not on git: the client asks with `env GIT_PROTOCOL=…`, which
//! sshd refuses unless its config says `AcceptEnv GIT_PROTOCOL` (upstream's and
//! Debian's defaults do not), and upload-pack then speaks v0. Tests need both kinds:
//! [`GitProtocol`].
//!
//! Host keys and client keys are made with `ssh-keygen`; [`home_with_known_hosts`] and
//! [`Sshd::host_key_line`] make the `known_hosts` files a client checks against.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::free_port;
use crate::group::{ProcessGroup, wait_listening};

/// Whether an sshd lets a client ask for git's protocol v2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitProtocol {
    /// `AcceptEnv GIT_PROTOCOL`, as git hosts configure it: v2 when asked.
    V2,
    /// No `AcceptEnv` for it (the default): the request is refused, v0 it is.
    V0,
}

/// An sshd on 127.0.0.1 accepting the keys of one `authorized_keys` file; stopped on
/// drop (or when the test binary exits), with every process of its group.
pub struct Sshd {
    _group: ProcessGroup,
    pub port: u16,
    /// The `known_hosts` line for this server, newline included.
    pub host_key_line: String,
    log: PathBuf,
}

impl Sshd {
    /// An sshd with the default `AcceptEnv` (protocol v0), its files in `dir`.
    pub fn start(dir: &Path, authorized_keys: &Path) -> Sshd {
        Sshd::start_with(dir, authorized_keys, GitProtocol::V0)
    }

    /// An sshd of the given kind, its files (`sshd-v2_config`, host key, log) in `dir`;
    /// the two kinds can share a directory.
    pub fn start_with(dir: &Path, authorized_keys: &Path, protocol: GitProtocol) -> Sshd {
        let stem = match protocol {
            GitProtocol::V2 => "sshd-v2",
            GitProtocol::V0 => "sshd-v0",
        };
        let host_key = dir.join(format!("{stem}_host_key"));
        if !host_key.exists() {
            keygen(&host_key);
        }
        let accept_env = match protocol {
            GitProtocol::V2 => "AcceptEnv LANG LC_* GIT_PROTOCOL\n",
            GitProtocol::V0 => "",
        };
        // Privilege separation needs this directory; a fresh machine may lack it.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let log = dir.join(format!("{stem}.log"));
        for _ in 0..5 {
            let port = free_port();
            let config = dir.join(format!("{stem}_config"));
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                     StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     UsePAM no\nPermitRootLogin prohibit-password\nPidFile none\n\
                     MaxStartups 64\nLogLevel VERBOSE\nSetEnv SHLVL=1\n{accept_env}",
                    host_key.display(),
                    authorized_keys.display(),
                ),
            )
            .unwrap();
            let mut sshd = Command::new("/usr/sbin/sshd");
            sshd.args(["-D", "-e", "-f"]).arg(&config);
            let mut group = ProcessGroup::spawn(&sshd, &log);
            if wait_listening(&mut group, &[port], "sshd") {
                let public = std::fs::read_to_string(host_key.with_extension("pub")).unwrap();
                return Sshd {
                    _group: group,
                    port,
                    host_key_line: known_hosts_entry(port, &public),
                    log,
                };
            }
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                said.contains("Address already in use"),
                "sshd exited at start (is openssh-server installed? run scripts/test.sh as root):\n{said}"
            );
        }
        panic!("could not start sshd: ports kept being taken");
    }

    /// A `known_hosts` line that gives this server another key (`public_key`, an
    /// `ssh-keygen` `.pub` file): what a client sees after the server's key changed.
    pub fn known_hosts_line_with(&self, public_key: &Path) -> String {
        known_hosts_entry(self.port, &std::fs::read_to_string(public_key).unwrap())
    }

    /// `ssh://<login>@127.0.0.1:PORT<repo>`, `repo` an absolute path.
    pub fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            login(),
            self.port,
            repo.display()
        )
    }

    /// What sshd logged (logins, refused environment requests), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `[127.0.0.1]:PORT <type> <key>` from a `.pub` file's text.
fn known_hosts_entry(port: u16, public: &str) -> String {
    let key: Vec<&str> = public.split_whitespace().take(2).collect();
    format!("[127.0.0.1]:{port} {}\n", key.join(" "))
}

/// The user the servers let in: the one the tests run as (root in CI, which sshd
/// needs anyway), whose keys are in the `authorized_keys` file given to sshd.
pub fn login() -> String {
    match std::env::var("USER") {
        Ok(user) if !user.is_empty() => user,
        // SAFETY: geteuid(2) cannot fail.
        _ if unsafe { libc::geteuid() } == 0 => "root".to_owned(),
        _ => {
            let out = Command::new("id").arg("-un").output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        }
    }
}

/// A home directory under `dir` whose `.ssh/known_hosts` holds `lines` (each a
/// `known_hosts` line): what `HOME` points at for a client that reads
/// `~/.ssh/known_hosts`.
pub fn home_with_known_hosts(dir: &Path, lines: &[String]) -> PathBuf {
    let home = dir.join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(home.join(".ssh/known_hosts"), lines.concat()).unwrap();
    home
}

/// `ssh-keygen` of an ed25519 key pair at `path` (and `path.pub`), no passphrase.
pub fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "polld-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
}

/// Two sshds, one of each [`GitProtocol`], accepting one client key, with a home whose
/// `known_hosts` lists both: shared by every test of a binary.
pub struct SshServers {
    pub v2: Sshd,
    pub v0: Sshd,
    /// The private key both accept (`ssh_key_file`).
    pub client_key: PathBuf,
    /// A home directory whose `.ssh/known_hosts` knows both servers.
    pub home: PathBuf,
    /// The `known_hosts` file in `home`.
    pub known_hosts: PathBuf,
}

impl SshServers {
    /// The servers of this test binary, started on first use.
    pub fn shared() -> &'static SshServers {
        static SHARED: OnceLock<SshServers> = OnceLock::new();
        SHARED.get_or_init(|| SshServers::start(&crate::scratch::binary_dir("polld-sshd")))
    }

    /// Servers of their own, with every file in `dir`.
    pub fn start(dir: &Path) -> SshServers {
        let client_key = dir.join("client_key");
        keygen(&client_key);
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        let v2 = Sshd::start_with(dir, &authorized, GitProtocol::V2);
        let v0 = Sshd::start_with(dir, &authorized, GitProtocol::V0);
        let home =
            home_with_known_hosts(dir, &[v2.host_key_line.clone(), v0.host_key_line.clone()]);
        SshServers {
            known_hosts: home.join(".ssh/known_hosts"),
            v2,
            v0,
            client_key,
            home,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GitRepo, git_command};

    /// `git ls-remote` with OpenSSH (a real git client) against both servers, and what
    /// protocol each spoke.
    #[test]
    fn both_servers_serve_git_and_only_one_accepts_v2() {
        let dir = tempfile::tempdir().unwrap();
        let repo = GitRepo::init(&dir.path().join("repo"));
        let head = repo.commit_message("one");
        let servers = SshServers::shared();
        let ssh = format!(
            "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
            servers.client_key.display(),
            servers.known_hosts.display()
        );
        for (sshd, v2) in [(&servers.v2, true), (&servers.v0, false)] {
            let mut cmd = git_command(dir.path());
            cmd.env("GIT_SSH_COMMAND", &ssh)
                .env("GIT_TRACE_PACKET", "1")
                .args(["ls-remote", &sshd.url(&repo.path), "HEAD"]);
            let out = cmd.output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&head),
                "{stderr}\n{}",
                sshd.log()
            );
            assert_eq!(
                stderr.contains("< version 2"),
                v2,
                "protocol v2 expected: {v2}\n{stderr}"
            );
        }
    }
}
