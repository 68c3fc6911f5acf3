//! Real git repositories, made with the `git` CLI, for driving the backend directly.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use polld_core::{Backend, Cursor, NewChange, PollOutcome, Poller, PollerContext};
use polld_git::{GitBackend, GitConfig};
use serde_json::Value;
use tempfile::TempDir;

/// Every commit gets its own, later, timestamp: libgit2's walk (like git's) uses dates
/// to decide when it may stop.
static CLOCK: AtomicI64 = AtomicI64::new(1_700_000_000);

pub fn tick() -> i64 {
    CLOCK.fetch_add(60, Ordering::Relaxed)
}

pub const AUTHOR: &str = "A U Thor <author@example.com>";
pub const COMMITTER: &str = "C O Mitter <committer@example.com>";

/// A `git` command isolated from the machine's and the user's git config.
pub fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "A U Thor")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "C O Mitter")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
        ]);
    cmd
}

pub fn run(mut cmd: Command) -> String {
    let out = cmd.output().expect("git runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// A working repository used as the remote.
pub struct Repo {
    pub path: PathBuf,
}

impl Repo {
    pub fn init(path: &Path) -> Repo {
        std::fs::create_dir_all(path).unwrap();
        let repo = Repo {
            path: path.to_owned(),
        };
        repo.git(&["init", "-q"]);
        repo
    }

    pub fn git(&self, args: &[&str]) -> String {
        let mut cmd = git_command(&self.path);
        cmd.args(args);
        run(cmd)
    }

    /// `git` with a fresh commit date.
    pub fn git_dated(&self, args: &[impl AsRef<OsStr>]) -> String {
        let date = format!("@{} +0000", tick());
        let mut cmd = git_command(&self.path);
        cmd.env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .args(args);
        run(cmd)
    }

    /// Writes `file` and commits it with `message`; returns the new commit's sha.
    pub fn commit_file(&self, file: &str, content: &str, message: &str) -> String {
        let path = self.path.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(path, content).unwrap();
        self.git(&["add", "--", file]);
        self.git_dated(&["commit", "-q", "-m", message]);
        self.rev("HEAD")
    }

    /// A commit touching a file named after the message.
    pub fn commit(&self, message: &str) -> String {
        let file = format!("{}.txt", message.replace([' ', '/'], "-"));
        self.commit_file(&file, message, message)
    }

    pub fn rev(&self, rev: &str) -> String {
        self.git(&["rev-parse", rev])
    }

    pub fn checkout(&self, args: &[&str]) {
        let mut all = vec!["checkout", "-q"];
        all.extend_from_slice(args);
        self.git(&all);
    }
}

/// A tempdir with a remote repository (one commit on `main`) and a poller context.
pub struct Fixture {
    pub tmp: TempDir,
    pub remote: Repo,
}

impl Fixture {
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let remote = Repo::init(&tmp.path().join("remote"));
        remote.commit("initial");
        Fixture { tmp, remote }
    }

    pub fn mirror_dir(&self) -> PathBuf {
        self.tmp.path().join("state/mirrors/p")
    }

    pub fn context(&self, repo: &str) -> PollerContext {
        PollerContext {
            name: "p".to_owned(),
            repo: repo.to_owned(),
            config_dir: self.tmp.path().to_owned(),
            mirror_dir: self.mirror_dir(),
        }
    }

    /// A poller on the remote, named by a path relative to the config directory.
    pub fn poller(&self, config: Value) -> Arc<dyn Poller> {
        build(self.context("remote"), config).expect("poller builds")
    }
}

pub fn build(context: PollerContext, config: Value) -> Result<Arc<dyn Poller>, String> {
    let config: GitConfig = serde_json::from_value(config).map_err(|e| e.to_string())?;
    GitBackend::new()
        .build(context, config)
        .map_err(|refusal| refusal.message)
}

/// Polls, expects the remote to have moved, stores the new cursor, returns the changes.
pub async fn advance(poller: &Arc<dyn Poller>, cursor: &mut Option<Cursor>) -> Vec<NewChange> {
    match poller.poll(cursor.as_ref()).await.expect("poll succeeds") {
        PollOutcome::Advanced {
            cursor: next,
            changes,
        } => {
            *cursor = Some(next);
            changes
        }
        PollOutcome::Unchanged => panic!("expected the remote to have moved"),
    }
}

/// The first poll: records the heads and reports nothing.
pub async fn first_poll(poller: &Arc<dyn Poller>) -> Option<Cursor> {
    let mut cursor = None;
    let changes = advance(poller, &mut cursor).await;
    assert!(changes.is_empty(), "the first poll reports nothing");
    cursor
}

pub fn revisions(changes: &[NewChange]) -> Vec<&str> {
    changes.iter().map(|c| c.revision.as_str()).collect()
}

pub fn branches(changes: &[NewChange]) -> Vec<&str> {
    changes
        .iter()
        .map(|c| c.branch.as_deref().unwrap_or("<none>"))
        .collect()
}

/// The cursor's `refs` object.
pub fn cursor_refs(cursor: &Option<Cursor>) -> serde_json::Map<String, Value> {
    cursor.as_ref().expect("a cursor").0["refs"]
        .as_object()
        .expect("refs is an object")
        .clone()
}

/// A port on 127.0.0.1 that nothing listens on.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `git daemon` serving `base` on loopback; killed on drop.
pub struct Daemon {
    child: Child,
    pub port: u16,
}

impl Daemon {
    pub fn start(base: &Path) -> Daemon {
        let exec_path = run({
            let mut cmd = Command::new("git");
            cmd.arg("--exec-path");
            cmd
        });
        let port = closed_port();
        // The daemon binary itself, not `git daemon`: `git` would run it as a child
        // that killing `git` leaves behind.
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .arg("--export-all")
            .arg(format!("--base-path={}", base.display()))
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg("--reuseaddr")
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        let daemon = Daemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "git daemon did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
