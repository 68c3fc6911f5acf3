//! Real Mercurial repositories, made with the `hg` CLI, for driving the backend directly.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use polld_core::{Backend, Cursor, NewChange, PollOutcome, Poller, PollerContext};
use polld_hg::{HgBackend, HgConfig, Timeouts};
use serde_json::Value;
use tempfile::TempDir;

static CLOCK: AtomicI64 = AtomicI64::new(1_700_000_000);

pub const USER: &str = "Zoë Ångström <zoe@example.org>";

/// An `hg` command that reads no user or system config.
pub fn hg_command(dir: &Path) -> Command {
    let mut cmd = Command::new("hg");
    cmd.current_dir(dir)
        .env("HGRCPATH", "/dev/null")
        .env("HGPLAIN", "1")
        .env("HGENCODING", "utf-8")
        .stdin(Stdio::null());
    cmd
}

pub fn run(mut cmd: Command) -> String {
    let out = cmd.output().expect("hg runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

/// A repository with a working directory, used as the remote.
pub struct Repo {
    pub path: PathBuf,
}

impl Repo {
    pub fn init(path: &Path) -> Repo {
        std::fs::create_dir_all(path).unwrap();
        let repo = Repo {
            path: path.to_owned(),
        };
        repo.hg(&["init"]);
        repo
    }

    pub fn hg(&self, args: &[&str]) -> String {
        let mut cmd = hg_command(&self.path);
        cmd.args(args);
        run(cmd)
    }

    /// `hg commit` (adding and removing files) with a fixed user and a fresh date.
    pub fn commit_all(&self, message: &str) -> String {
        let date = format!("{} 0", CLOCK.fetch_add(60, Ordering::Relaxed));
        self.hg(&["commit", "-A", "-q", "-u", USER, "-d", &date, "-m", message]);
        self.node(".")
    }

    pub fn commit_file(&self, file: &str, content: &str, message: &str) -> String {
        let path = self.path.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        self.commit_all(message)
    }

    pub fn commit(&self, message: &str) -> String {
        let file = format!("{}.txt", message.replace([' ', '/'], "-"));
        self.commit_file(&file, message, message)
    }

    pub fn node(&self, rev: &str) -> String {
        self.hg(&["log", "-r", rev, "-T", "{node}"])
    }
}

/// A tempdir with a remote repository (one commit on default) and a poller context.
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
    build_with(HgBackend::new(), context, config)
}

pub fn build_with(
    backend: HgBackend,
    context: PollerContext,
    config: Value,
) -> Result<Arc<dyn Poller>, String> {
    let config: HgConfig = serde_json::from_value(config).map_err(|e| e.to_string())?;
    backend
        .build(context, config)
        .map_err(|refusal| refusal.message)
}

pub fn short_timeouts() -> HgBackend {
    HgBackend::with_timeouts(Timeouts {
        check: Duration::from_millis(1500),
        pull: Duration::from_millis(1500),
        local: Duration::from_secs(30),
    })
}

/// The first poll: must record a cursor and report nothing.
pub async fn first_poll(poller: &Arc<dyn Poller>) -> Option<Cursor> {
    match poller.poll(None).await.expect("first poll") {
        PollOutcome::Advanced { cursor, changes } => {
            assert!(
                changes.is_empty(),
                "first poll reports nothing: {changes:?}"
            );
            Some(cursor)
        }
        PollOutcome::Unchanged => panic!("the first poll must return a cursor"),
    }
}

/// A poll that must advance; moves `cursor` and returns the changes.
pub async fn advance(poller: &Arc<dyn Poller>, cursor: &mut Option<Cursor>) -> Vec<NewChange> {
    match poller.poll(cursor.as_ref()).await.expect("poll") {
        PollOutcome::Advanced {
            cursor: next,
            changes,
        } => {
            *cursor = Some(next);
            changes
        }
        PollOutcome::Unchanged => panic!("expected the poll to advance"),
    }
}

pub fn revisions(changes: &[NewChange]) -> Vec<&str> {
    changes.iter().map(|c| c.revision.as_str()).collect()
}

/// `hg serve` on 127.0.0.1 (not daemonised; killed on drop) with an access log.
pub struct Serve {
    child: Child,
    pub port: u16,
    pub access_log: PathBuf,
}

impl Serve {
    pub fn start(repo: &Path, access_log: &Path) -> Serve {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut cmd = hg_command(repo);
            cmd.args(["serve", "-a", "127.0.0.1", "-p", &port.to_string(), "-A"])
                .arg(access_log)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child = cmd.spawn().expect("hg serve starts");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Serve {
                        child,
                        port,
                        access_log: access_log.to_owned(),
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break; // port taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("hg serve did not start");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The request lines logged so far (`GET /?cmd=branchmap HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
            .collect()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
