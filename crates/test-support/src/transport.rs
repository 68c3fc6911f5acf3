//! The ways polld reaches a git remote, each backed by a real server on 127.0.0.1
//! that the whole test binary shares, so that one test of git semantics can run over
//! every transport: a local path, `git://` (`git daemon`), `http://` and `https://`
//! (Apache with `git http-backend`, see [`crate::httpd`]) and `ssh://` (OpenSSH's
//! sshd, see [`crate::ssh`]). Every server serves any repository by its absolute path.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::group::{ProcessGroup, wait_listening};
use crate::httpd::{GitHttpd, Port, Route};
use crate::ssh::SshServers;
use crate::{free_port, git_command};

/// A transport, by the scheme of its URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The repository's path.
    Local,
    /// `git://`, protocol v2.
    GitDaemon,
    /// Smart HTTP, protocol v2 when asked.
    Http,
    /// Smart HTTP over TLS with a certificate only the test CA (`ca_file`) vouches for.
    Https,
    /// `ssh://` to an sshd that accepts `GIT_PROTOCOL` (v2), with a key file and a
    /// `known_hosts` file that knows the server.
    Ssh,
}

/// What a poller needs to reach one repository over one transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// The poller's `repo`.
    pub url: String,
    /// The poller's `ca_file` (https).
    pub ca_file: Option<PathBuf>,
    /// The poller's `ssh_key_file` (ssh).
    pub ssh_key_file: Option<PathBuf>,
    /// The poller's `known_hosts_file` (ssh): it knows the server's host key. (Polling
    /// with `~/.ssh/known_hosts` instead needs `HOME` at [`SshServers::home`].)
    pub known_hosts_file: Option<PathBuf>,
}

impl Transport {
    pub const ALL: [Transport; 5] = [
        Transport::Local,
        Transport::GitDaemon,
        Transport::Http,
        Transport::Https,
        Transport::Ssh,
    ];

    /// The repository at `repo` (an absolute path) over this transport, starting the
    /// binary's shared server for it on first use.
    pub fn reach(self, repo: &Path) -> Reach {
        assert!(repo.is_absolute(), "{} is not absolute", repo.display());
        let url = |url: String| Reach {
            url,
            ca_file: None,
            ssh_key_file: None,
            known_hosts_file: None,
        };
        match self {
            Transport::Local => url(repo.display().to_string()),
            Transport::GitDaemon => url(format!(
                "git://127.0.0.1:{}{}",
                AnyPathGitDaemon::shared().port,
                repo.display()
            )),
            Transport::Http => url(GitHttpd::shared().url(Port::Http, Route::Anonymous, repo)),
            Transport::Https => {
                let httpd = GitHttpd::shared();
                Reach {
                    ca_file: Some(httpd.ca_file.clone()),
                    ..url(httpd.url(Port::Https, Route::Anonymous, repo))
                }
            }
            Transport::Ssh => {
                let servers = SshServers::shared();
                Reach {
                    ssh_key_file: Some(servers.client_key.clone()),
                    known_hosts_file: Some(servers.known_hosts.clone()),
                    ..url(servers.v2.url(repo))
                }
            }
        }
    }
}

/// `git daemon` serving every repository on the machine by its absolute path
/// (`git://127.0.0.1:PORT/tmp/…/repo`): no `--base-path`, no directory list.
pub struct AnyPathGitDaemon {
    _group: ProcessGroup,
    pub port: u16,
}

impl AnyPathGitDaemon {
    /// The daemon every test of this binary shares, started on first use.
    pub fn shared() -> &'static AnyPathGitDaemon {
        static SHARED: OnceLock<AnyPathGitDaemon> = OnceLock::new();
        SHARED.get_or_init(|| {
            let log = crate::scratch::binary_dir("polld-git-daemon").join("daemon.log");
            for _ in 0..5 {
                let port = free_port();
                let mut daemon = git_command(Path::new("/"));
                daemon
                    .args([
                        "daemon",
                        "--export-all",
                        "--reuseaddr",
                        "--informative-errors",
                        "--listen=127.0.0.1",
                    ])
                    .arg(format!("--port={port}"));
                let mut group = ProcessGroup::spawn(&daemon, &log);
                if wait_listening(&mut group, &[port], "git daemon") {
                    return AnyPathGitDaemon {
                        _group: group,
                        port,
                    };
                }
            }
            panic!(
                "could not start git daemon:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GitRepo;

    /// Each transport's URL serves the repository to `git ls-remote`.
    #[test]
    fn every_transport_reaches_a_repository() {
        let dir = tempfile::tempdir().unwrap();
        let repo = GitRepo::init(&dir.path().join("repo"));
        let head = repo.commit_message("one");
        for transport in Transport::ALL {
            let reach = transport.reach(&repo.path);
            let mut cmd = git_command(dir.path());
            if let Some(ca) = &reach.ca_file {
                // The environment may name a CA bundle for git (it wins over -c).
                cmd.env("GIT_SSL_CAINFO", ca);
            }
            if let (Some(key), Some(known_hosts)) = (&reach.ssh_key_file, &reach.known_hosts_file) {
                cmd.env(
                    "GIT_SSH_COMMAND",
                    format!(
                        "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o BatchMode=yes",
                        key.display(),
                        known_hosts.display()
                    ),
                );
            }
            let out = cmd
                .args(["ls-remote", &reach.url, "HEAD"])
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&head),
                "{transport:?} {}: {}",
                reach.url,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
