//! The git backend driven directly, as the core would: a remote repository made with
//! the `git` CLI (from `polld-test-support`) and a poller built on it.
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use polld_backend::{Backend, Cursor, Poller, PollerContext};
use polld_git::{GitBackend, GitConfig};
use serde_json::Value;
use tempfile::TempDir;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use polld_test_support::poll::{advance, advance_some, branches, first_poll, revisions};
#[allow(unused_imports)]
pub use polld_test_support::ssh::{Sshd, keygen};
#[allow(unused_imports)]
pub use polld_test_support::transport::Transport;
#[allow(unused_imports)]
pub use polld_test_support::{
    AUTHOR, COMMITTER, GitDaemon, GitRepo, closed_port, git_command, tick,
};

/// A tempdir with a remote repository (one commit on `main`) reached over one
/// transport, and a poller context.
pub struct Fixture {
    pub tmp: TempDir,
    pub remote: GitRepo,
    pub transport: Transport,
}

impl Fixture {
    /// The remote as a local path.
    pub fn new() -> Fixture {
        Fixture::over(Transport::Local)
    }

    /// The remote reached over `transport`.
    pub fn over(transport: Transport) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let remote = GitRepo::init(&tmp.path().join("remote"));
        remote.commit_message("initial");
        Fixture {
            tmp,
            remote,
            transport,
        }
    }

    pub fn mirror_dir(&self) -> PathBuf {
        self.tmp.path().join("state/mirrors/p")
    }

    pub fn context(&self, repo: &str) -> PollerContext {
        PollerContext {
            timeout: Duration::from_secs(60),
            ..PollerContext::new("p", repo, self.tmp.path(), &self.tmp.path().join("state"))
        }
    }

    /// A poller on the remote over the fixture's transport (a local remote is named by
    /// a path relative to the config directory), with `config`'s keys.
    pub fn poller(&self, config: Value) -> Arc<dyn Poller> {
        self.poller_of(&self.remote.path, config)
    }

    /// A poller on the repository at `repo` (under `tmp`), as [`Fixture::poller`].
    pub fn poller_of(&self, repo: &Path, mut config: Value) -> Arc<dyn Poller> {
        let reach = self.transport.reach(repo);
        let url = match self.transport {
            Transport::Local => repo
                .strip_prefix(self.tmp.path())
                .unwrap()
                .display()
                .to_string(),
            _ => reach.url,
        };
        for (key, file) in [
            ("ssh_key_file", reach.ssh_key_file),
            ("known_hosts_file", reach.known_hosts_file),
        ] {
            if let Some(file) = file {
                config[key] = Value::from(file.display().to_string());
            }
        }
        let context = PollerContext {
            ca_file: reach.ca_file,
            ..self.context(&url)
        };
        build(context, config).expect("poller builds")
    }
}

pub fn build(context: PollerContext, config: Value) -> Result<Arc<dyn Poller>, String> {
    let config: GitConfig = serde_json::from_value(config).map_err(|e| e.to_string())?;
    GitBackend::new()
        .build(context, config)
        .map_err(|refusal| refusal.message)
}

/// The cursor's `refs` object.
pub fn cursor_refs(cursor: &Option<Cursor>) -> serde_json::Map<String, Value> {
    cursor.as_ref().expect("a cursor").0["refs"]
        .as_object()
        .expect("refs is an object")
        .clone()
}

/// An HTTP server on loopback that answers every request with `401`, forever.
pub fn unauthorized_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 8192];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        let _ = stream.write_all(
                            b"HTTP/1.1 401 Unauthorized\r\n\
                              WWW-Authenticate: Basic realm=\"polld\"\r\n\
                              Content-Length: 0\r\n\r\n",
                        );
                    }
                }
            });
        }
    });
    port
}
