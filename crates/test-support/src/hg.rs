//! Fixtures for Mercurial: repositories made with the `hg` CLI (fixed users and dates),
//! `hg serve` on 127.0.0.1, and the change records polld should print for them,
//! computed from `hg log` and `hg status` rather than from polld's own code.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{free_port, toml_str};

/// The user of every changeset these fixtures make: not ASCII, on purpose.
pub const HG_USER: &str = "Zoë Ångström <zoe@example.org>";

/// Every changeset gets its own second.
static HG_CLOCK: AtomicI64 = AtomicI64::new(1_750_000_000);

/// An `hg` command that reads no user or system hgrc.
pub fn hg_command(dir: &Path) -> Command {
    let mut cmd = Command::new("hg");
    cmd.current_dir(dir)
        .env("HGRCPATH", "/dev/null")
        .env("HGPLAIN", "1")
        .env("HGENCODING", "utf-8")
        .stdin(Stdio::null());
    cmd
}

/// A `[[poller]]` table for an hg poller: `extra` is appended verbatim (more keys).
pub fn hg_poller(name: &str, repo: &str, extra: &str) -> String {
    format!(
        "[[poller]]\nname = {}\ntype = \"hg\"\nrepo = {}\n{extra}\n",
        toml_str(name),
        toml_str(repo)
    )
}

/// A repository with a working directory.
#[derive(Debug, Clone)]
pub struct HgRepo {
    pub path: PathBuf,
}

impl HgRepo {
    pub fn init(path: &Path) -> HgRepo {
        std::fs::create_dir_all(path).unwrap();
        let repo = HgRepo {
            path: path.to_path_buf(),
        };
        repo.hg(&["init"]);
        repo
    }

    /// Runs hg in the repository, panicking on failure; stdout, trailing newline cut.
    pub fn hg(&self, args: &[&str]) -> String {
        let out = hg_command(&self.path).args(args).output().expect("run hg");
        assert!(
            out.status.success(),
            "hg {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// `hg commit -A` with [`HG_USER`], the next date (in a UTC+1 zone, so that a
    /// record that applied the offset would be caught) and `message`; the new node.
    pub fn commit_all(&self, message: &str) -> String {
        let date = format!("{} -3600", HG_CLOCK.fetch_add(1, Ordering::SeqCst));
        self.hg(&[
            "commit", "-A", "-q", "-u", HG_USER, "-d", &date, "-m", message,
        ]);
        self.node(".")
    }

    /// Writes `file` (parents created) and commits.
    pub fn commit_file(&self, file: &str, content: &str, message: &str) -> String {
        let path = self.path.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        self.commit_all(message)
    }

    /// A commit touching a file named after the message.
    pub fn commit(&self, message: &str) -> String {
        let file = format!("{}.txt", message.replace([' ', '/'], "-"));
        self.commit_file(&file, message, message)
    }

    /// `hg rm file` and commit.
    pub fn commit_remove(&self, file: &str, message: &str) -> String {
        self.hg(&["rm", "-q", "--", file]);
        self.commit_all(message)
    }

    /// Marks the working directory's next commit as on branch `name`.
    pub fn branch(&self, name: &str) {
        self.hg(&["branch", "-q", "-f", "--", name]);
    }

    pub fn update(&self, rev: &str) {
        self.hg(&["update", "-q", "-C", "-r", rev]);
    }

    /// Merges `rev` into the working directory's parent and commits `message`.
    pub fn merge(&self, rev: &str, message: &str) -> String {
        self.hg(&["merge", "-q", "-r", rev]);
        self.commit_all(message)
    }

    /// Closes the working directory's branch with a commit.
    pub fn close_branch(&self, message: &str) -> String {
        let date = format!("{} -3600", HG_CLOCK.fetch_add(1, Ordering::SeqCst));
        self.hg(&[
            "commit",
            "-q",
            "--close-branch",
            "-u",
            HG_USER,
            "-d",
            &date,
            "-m",
            message,
        ]);
        self.node(".")
    }

    /// Sets bookmark `name` to `rev` (created or moved).
    pub fn bookmark(&self, name: &str, rev: &str) {
        self.hg(&["bookmark", "-f", "-r", rev, "--", name]);
    }

    /// `hg strip` of `rev` and its descendants.
    pub fn strip(&self, rev: &str) {
        self.hg(&["--config", "extensions.strip=", "strip", "-q", "-r", rev]);
    }

    pub fn node(&self, rev: &str) -> String {
        self.hg(&["log", "-r", rev, "-T", "{node}"])
    }

    /// `hg log -r revset` nodes, in revision order.
    pub fn nodes(&self, revset: &str) -> Vec<String> {
        self.hg(&["log", "-r", revset, "-T", "{node}\n"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The record polld should print for `node` reported on `branch`.
    pub fn expected(&self, poller: &str, repository: &str, branch: &str, node: &str) -> Value {
        let fields = self.hg(&["log", "-r", node, "-T", "{author}\\0{date|hgdate}\\0{desc}"]);
        let fields: Vec<&str> = fields.split('\0').collect();
        let when: i64 = fields[1].split(' ').next().unwrap().parse().unwrap();
        let mut files: Vec<String> = self
            .hg(&["status", "--change", node, "-amr", "-n"])
            .lines()
            .map(str::to_owned)
            .collect();
        files.sort();
        json!({
            "id": format!("{poller}:{branch}:{node}"),
            "poller": poller,
            "vcs": "hg",
            "repository": repository,
            "branch": branch,
            "revision": node,
            "author": fields[0],
            "committer": null,
            "comments": fields[2].trim_end(),
            "files": files,
            "when_timestamp": when,
            "project": "",
            "category": null,
            "codebase": "",
            "revlink": null,
            "properties": {},
        })
    }

    pub fn expected_many(
        &self,
        poller: &str,
        repository: &str,
        branch: &str,
        nodes: &[String],
    ) -> Vec<Value> {
        nodes
            .iter()
            .map(|n| self.expected(poller, repository, branch, n))
            .collect()
    }
}

/// A scratch repository of `n` linear changesets made by `hg debugbuilddag` (half a
/// second for 500, where a commit loop takes minutes): changeset `r` adds file `nf<r>`,
/// is dated `r` seconds after the epoch, by user `debugbuilddag`.
pub fn build_dag(path: &Path, n: usize) -> HgRepo {
    let repo = HgRepo::init(path);
    repo.hg(&["debugbuilddag", "-n", &format!("+{n}")]);
    repo
}

/// `hg serve` on 127.0.0.1 with an access log; not daemonised, killed on drop.
pub struct HgServe {
    child: Child,
    pub port: u16,
    pub access_log: PathBuf,
}

impl HgServe {
    pub fn start(repo: &Path, access_log: &Path) -> HgServe {
        for _ in 0..5 {
            let port = free_port();
            let mut child = hg_command(repo)
                .args(["serve", "-a", "127.0.0.1", "-p", &port.to_string(), "-A"])
                .arg(access_log)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("hg serve starts");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return HgServe {
                        child,
                        port,
                        access_log: access_log.to_path_buf(),
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken meanwhile: try another
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("hg serve did not start");
    }

    /// `http://127.0.0.1:PORT/`, with `userinfo@` when given.
    pub fn url(&self, userinfo: Option<&str>) -> String {
        match userinfo {
            Some(u) => format!("http://{u}@127.0.0.1:{}/", self.port),
            None => format!("http://127.0.0.1:{}/", self.port),
        }
    }

    /// The request lines served so far (`GET /?cmd=branchmap HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split('"').nth(1).map(str::to_owned))
            .collect()
    }
}

impl Drop for HgServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
