//! Harness for polld's end-to-end tests: real git repositories driven by the `git` CLI,
//! a `git daemon` for the network path, and the `polld` binary run as a user would.
//!
//! Everything lives in temp dirs; every wait has a deadline.

// A harness is test code: a failed setup step is a failed test, said by a panic.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

pub mod apache;
pub mod buildbot;
pub mod chromium;
pub mod cloudevents;
pub mod forge;
pub mod group;
pub mod hg;
pub mod http;
pub mod httpd;
pub mod poll;
pub mod postgres;
pub mod proxy;
pub mod scratch;
pub mod ssh;
pub mod svn;
pub mod tcp;
pub mod tls;
pub mod transport;

/// Every file below `dir` (for failure messages, and searches).
pub fn list_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// Every file below `dir` whose bytes contain `needle`: for proving a secret was stored nowhere.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    list_files(dir)
        .into_iter()
        .filter(|path| {
            std::fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// How long one `polld once/check/status` may take before the test gives up on it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------

/// The `polld` binary cargo built for the end-to-end tests.
///
/// The tests are targets of the `polld` package, so cargo builds the binary before it
/// runs them, into the same profile directory as the test executables:
/// `<target>/<profile>/deps/<test>` runs, `<target>/<profile>/polld` is the binary.
pub fn polld_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test runs from <target>/<profile>/deps");
        let bin = profile_dir.join("polld");
        assert!(
            bin.exists(),
            "no polld binary at {} (run the end-to-end tests with `cargo test -p polld`)",
            bin.display()
        );
        bin
    })
    .clone()
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/test-support is two levels below the workspace root")
        .to_path_buf()
}

// ---------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------

/// A port on 127.0.0.1 that nothing listens on (bound and released).
pub fn closed_port() -> u16 {
    free_port()
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; panics naming `what`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TOML basic string holding `s`.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A path as a `file://` URL (temp paths need no percent-encoding).
pub fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// A tiny deterministic-enough PRNG (xorshift) so tests need no extra crate.
pub struct Rng(u64);

impl Rng {
    pub fn from_time() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            ^ (std::process::id() as u64).rotate_left(32);
        Rng(seed | 1)
    }
    pub fn seed(&self) -> u64 {
        self.0
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}

// ---------------------------------------------------------------------------------------
// git
// ---------------------------------------------------------------------------------------

pub const AUTHOR_NAME: &str = "Ada Lovelace";
pub const AUTHOR_EMAIL: &str = "ada@example.org";
pub const COMMITTER_NAME: &str = "Charles Babbage";
pub const COMMITTER_EMAIL: &str = "charles@example.org";
/// Author dates are this far behind committer dates, so that a record using the author
/// time instead of the committer time is caught.
pub const AUTHOR_LAG: i64 = 86_400;
/// The author and committer as a change record shows them.
pub const AUTHOR: &str = "Ada Lovelace <ada@example.org>";
pub const COMMITTER: &str = "Charles Babbage <charles@example.org>";

/// Committer time of the next commit: every commit in the process gets its own second.
static CLOCK: AtomicI64 = AtomicI64::new(1_700_000_000);

/// The next second of the tests' clock (for commits written by hand).
pub fn tick() -> i64 {
    CLOCK.fetch_add(1, Ordering::SeqCst)
}

/// Reserves `n` consecutive seconds and returns the first.
fn tick_n(n: i64) -> i64 {
    CLOCK.fetch_add(n, Ordering::SeqCst)
}

/// A `git` command with a fixed identity and no user/system config.
pub fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", AUTHOR_NAME)
        .env("GIT_AUTHOR_EMAIL", AUTHOR_EMAIL)
        .env("GIT_COMMITTER_NAME", COMMITTER_NAME)
        .env("GIT_COMMITTER_EMAIL", COMMITTER_EMAIL)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_OBJECT_DIRECTORY")
        .env_remove("GIT_ALTERNATE_OBJECT_DIRECTORIES")
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
            "-c",
            "core.quotePath=false",
            "-c",
            "gc.auto=0",
            "-c",
            "advice.detachedHead=false",
        ]);
    cmd
}

fn run_checked(mut cmd: Command, stdin: Option<&[u8]>) -> Output {
    let desc = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        // Write from a thread so a large input cannot deadlock against a full stdout.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let out = child.wait_with_output().expect("wait for git");
    assert!(
        out.status.success(),
        "{desc} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One git repository (bare or with a work tree) at a path.
#[derive(Debug, Clone)]
pub struct GitRepo {
    pub path: PathBuf,
}

impl GitRepo {
    /// `git init` (work tree) at `path`.
    pub fn init(path: &Path) -> GitRepo {
        std::fs::create_dir_all(path).unwrap();
        let repo = GitRepo {
            path: path.to_path_buf(),
        };
        repo.git(&["init", "-q"]);
        repo
    }

    /// `git init --bare` at `path`.
    pub fn init_bare(path: &Path) -> GitRepo {
        std::fs::create_dir_all(path).unwrap();
        let repo = GitRepo {
            path: path.to_path_buf(),
        };
        repo.git(&["init", "-q", "--bare"]);
        repo
    }

    /// `git clone` of `from` into `path`.
    pub fn clone_from(from: &GitRepo, path: &Path) -> GitRepo {
        let parent = path.parent().unwrap();
        std::fs::create_dir_all(parent).unwrap();
        let mut cmd = git_command(parent);
        cmd.args(["clone", "-q"]).arg(&from.path).arg(path);
        run_checked(cmd, None);
        GitRepo {
            path: path.to_path_buf(),
        }
    }

    /// Runs git with `args`, panicking on failure; returns stdout (lossy, trimmed).
    pub fn git(&self, args: &[&str]) -> String {
        let out = self.git_out(args.iter().map(OsStr::new), None);
        String::from_utf8_lossy(&out).trim().to_string()
    }

    /// Runs git with arbitrary (possibly non-UTF-8) args and optional stdin; raw stdout.
    pub fn git_out<I, S>(&self, args: I, stdin: Option<&[u8]>) -> Vec<u8>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = git_command(&self.path);
        cmd.args(args);
        run_checked(cmd, stdin).stdout
    }

    /// Runs git with the clock set to the next tick (commits, merges, tags made by hand).
    pub fn git_dated<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let args: Vec<&OsStr> = args.iter().map(AsRef::as_ref).collect();
        self.git_at(&args)
    }

    /// A commit touching a file named after `message`.
    pub fn commit_message(&self, message: &str) -> String {
        let file = format!("{}.txt", message.replace([' ', '/'], "-"));
        self.commit(&file, message, message)
    }

    /// Runs git with the clock set to the next tick (for commits, merges, tags).
    fn git_at(&self, args: &[&OsStr]) -> String {
        let t = tick();
        let mut cmd = git_command(&self.path);
        cmd.env("GIT_AUTHOR_DATE", format!("@{} +0000", t - AUTHOR_LAG))
            .env("GIT_COMMITTER_DATE", format!("@{t} +0200"))
            .args(args);
        String::from_utf8_lossy(&run_checked(cmd, None).stdout)
            .trim()
            .to_string()
    }

    /// Writes `file` (relative, parents created) with `content`, stages everything and
    /// commits with `msg` verbatim. Returns the new commit's sha.
    pub fn commit(&self, file: &str, content: &str, msg: &str) -> String {
        self.commit_path(OsStr::new(file), content.as_bytes(), msg)
    }

    /// Like [`GitRepo::commit`] for a file name that may not be UTF-8.
    pub fn commit_path(&self, file: &OsStr, content: &[u8], msg: &str) -> String {
        let full = self.path.join(file);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, content).unwrap();
        self.git(&["add", "-A"]);
        self.commit_staged(msg)
    }

    /// Commits what is in the work tree with a message given as raw bytes, stored as
    /// they are (`git commit` would "fix" non-UTF-8 bytes as Latin-1; this writes the
    /// commit object itself).
    pub fn commit_raw_message(&self, file: &str, content: &str, msg: &[u8]) -> String {
        let full = self.path.join(file);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, content).unwrap();
        self.git(&["add", "-A"]);
        let tree = self.git(&["write-tree"]);
        let parent = self.head();
        let t = tick();
        let mut object = format!(
            "tree {tree}\nparent {parent}\nauthor {AUTHOR_NAME} <{AUTHOR_EMAIL}> {} +0000\ncommitter {COMMITTER_NAME} <{COMMITTER_EMAIL}> {t} +0000\n\n",
            t - AUTHOR_LAG
        )
        .into_bytes();
        object.extend_from_slice(msg);
        let sha = String::from_utf8(self.git_out(
            ["hash-object", "-t", "commit", "-w", "--stdin"],
            Some(&object),
        ))
        .unwrap()
        .trim()
        .to_string();
        self.git(&["update-ref", "HEAD", &sha]);
        self.reset_hard("HEAD");
        sha
    }

    /// Writes several files in one commit.
    pub fn commit_files(&self, files: &[(&str, &str)], msg: &str) -> String {
        for (file, content) in files {
            let full = self.path.join(file);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, content).unwrap();
        }
        self.git(&["add", "-A"]);
        self.commit_staged(msg)
    }

    /// Removes `file` and commits.
    pub fn commit_remove(&self, file: &str, msg: &str) -> String {
        self.git(&["rm", "-q", "--", file]);
        self.commit_staged(msg)
    }

    /// Commits what is staged (allowing an empty tree change and an empty message).
    pub fn commit_staged(&self, msg: &str) -> String {
        self.git_at(&[
            OsStr::new("commit"),
            OsStr::new("-q"),
            OsStr::new("--allow-empty"),
            OsStr::new("--allow-empty-message"),
            OsStr::new("--cleanup=verbatim"),
            OsStr::new("-m"),
            OsStr::new(msg),
        ]);
        self.head()
    }

    /// A commit that changes no file.
    pub fn commit_empty(&self, msg: &str) -> String {
        self.commit_staged(msg)
    }

    /// Creates branch `name` at HEAD (no checkout).
    pub fn branch(&self, name: &str) {
        self.git(&["branch", name]);
    }

    /// Creates branch `name` at `rev` (no checkout).
    pub fn branch_at(&self, name: &str, rev: &str) {
        self.git(&["branch", "-f", name, rev]);
    }

    pub fn checkout(&self, name: &str) {
        self.git(&["checkout", "-q", name]);
    }

    /// `git checkout -b name`.
    pub fn checkout_new(&self, name: &str) {
        self.git(&["checkout", "-q", "-b", name]);
    }

    /// `git checkout --orphan name` with an empty index and work tree.
    pub fn checkout_orphan(&self, name: &str) {
        self.git(&["checkout", "-q", "--orphan", name]);
        self.git(&["rm", "-rfq", "--ignore-unmatch", "."]);
    }

    /// `git merge --no-ff other -m msg`; returns the merge commit's sha.
    pub fn merge_no_ff(&self, other: &str, msg: &str) -> String {
        self.git_at(&[
            OsStr::new("merge"),
            OsStr::new("-q"),
            OsStr::new("--no-ff"),
            OsStr::new("--no-edit"),
            OsStr::new("-m"),
            OsStr::new(msg),
            OsStr::new(other),
        ]);
        self.head()
    }

    /// Lightweight tag at `rev`.
    pub fn tag(&self, name: &str, rev: &str) {
        self.git(&["tag", name, rev]);
    }

    /// Annotated tag at `rev`.
    pub fn tag_annotated(&self, name: &str, rev: &str, msg: &str) {
        self.git_at(&[
            OsStr::new("tag"),
            OsStr::new("-a"),
            OsStr::new(name),
            OsStr::new("-m"),
            OsStr::new(msg),
            OsStr::new(rev),
        ]);
    }

    /// `git reset --hard rev`.
    pub fn reset_hard(&self, rev: &str) {
        self.git(&["reset", "-q", "--hard", rev]);
    }

    /// `git push -q origin <refspecs...>`.
    pub fn push(&self, refspecs: &[&str]) {
        let mut args = vec!["push", "-q", "origin"];
        args.extend_from_slice(refspecs);
        self.git(&args);
    }

    /// `git push -q --force origin <refspecs...>`.
    pub fn push_force(&self, refspecs: &[&str]) {
        let mut args = vec!["push", "-q", "--force", "origin"];
        args.extend_from_slice(refspecs);
        self.git(&args);
    }

    /// Deletes `branch` on origin.
    pub fn push_delete(&self, branch: &str) {
        self.git(&["push", "-q", "origin", "--delete", branch]);
    }

    pub fn head(&self) -> String {
        self.rev_parse("HEAD")
    }

    /// Full sha of `rev` (peeled to a commit).
    pub fn rev_parse(&self, rev: &str) -> String {
        self.git(&["rev-parse", "--verify", "-q", &format!("{rev}^{{commit}}")])
    }

    /// `git rev-list <args>`, as a list of shas (in git's order: newest first unless
    /// `--reverse` is given).
    pub fn rev_list(&self, args: &[&str]) -> Vec<String> {
        let mut full = vec!["rev-list"];
        full.extend_from_slice(args);
        self.git(&full)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// First-parent commits in `from..to`, oldest first (what polld must emit).
    pub fn first_parent_range(&self, from: &str, to: &str) -> Vec<String> {
        self.rev_list(&["--reverse", "--first-parent", &format!("{from}..{to}")])
    }

    /// Makes `n` commits on `branch` (which must exist, or be created from nothing) with
    /// `git fast-import`: one file per commit, `bulk/<i>.txt`. Returns the new shas,
    /// oldest first. A work tree checked out on `branch` is reset to the new tip.
    pub fn fast_import_commits(&self, branch: &str, n: usize) -> Vec<String> {
        self.fast_import_commits_padded(branch, n, 0)
    }

    /// [`GitRepo::fast_import_commits`] with `pad` extra bytes of message body per commit
    /// (for large change records).
    pub fn fast_import_commits_padded(&self, branch: &str, n: usize, pad: usize) -> Vec<String> {
        let refname = format!("refs/heads/{branch}");
        let old = self
            .git_out(
                ["rev-parse", "--verify", "-q", refname.as_str()].iter(),
                None,
            )
            .clone();
        let old = String::from_utf8_lossy(&old).trim().to_string();
        let t0 = tick_n(n as i64);
        let mut stream = Vec::with_capacity(n * 200);
        for i in 0..n {
            let t = t0 + i as i64;
            let mut msg = format!("bulk commit {i}\n\nnumber {i} of {n}\n");
            if pad > 0 {
                msg.push('\n');
                msg.extend(std::iter::repeat_n('x', pad));
                msg.push('\n');
            }
            let content = format!("{i}\n");
            writeln!(stream, "commit {refname}").unwrap();
            writeln!(stream, "mark :{}", i + 1).unwrap();
            writeln!(
                stream,
                "author {AUTHOR_NAME} <{AUTHOR_EMAIL}> {} +0000",
                t - AUTHOR_LAG
            )
            .unwrap();
            writeln!(
                stream,
                "committer {COMMITTER_NAME} <{COMMITTER_EMAIL}> {t} +0000"
            )
            .unwrap();
            writeln!(stream, "data {}", msg.len()).unwrap();
            stream.extend_from_slice(msg.as_bytes());
            if i == 0 && !old.is_empty() {
                writeln!(stream, "from {old}").unwrap();
            }
            writeln!(stream, "M 100644 inline bulk/{i}.txt").unwrap();
            writeln!(stream, "data {}", content.len()).unwrap();
            stream.extend_from_slice(content.as_bytes());
            stream.push(b'\n');
        }
        self.git_out(["fast-import", "--quiet", "--force"], Some(&stream));
        let current = self.git(&["rev-parse", "--abbrev-ref", "HEAD"]);
        if current == branch && !self.is_bare() {
            self.reset_hard("HEAD");
        }
        let range = if old.is_empty() {
            branch.to_string()
        } else {
            format!("{old}..{branch}")
        };
        let shas = self.rev_list(&["--reverse", &range]);
        assert_eq!(shas.len(), n, "fast-import made {} commits", shas.len());
        shas
    }

    pub fn is_bare(&self) -> bool {
        self.git(&["rev-parse", "--is-bare-repository"]) == "true"
    }

    /// Makes every unreachable object disappear (for "the old head is gone").
    pub fn gc_prune_now(&self) {
        self.git(&["reflog", "expire", "--expire=now", "--all"]);
        self.git(&["gc", "-q", "--prune=now"]);
    }

    /// The change record polld must emit for `sha` on `branch` by poller `poller`
    /// watching `repository`, with the poller-level fields at their defaults
    /// (project "", category null, codebase "", revlink null, properties {}).
    pub fn expected(&self, poller: &str, repository: &str, branch: &str, sha: &str) -> Value {
        self.expected_many(poller, repository, branch, &[sha.to_string()])
            .pop()
            .unwrap()
    }

    /// [`GitRepo::expected`] for many commits at once (cheap for thousands).
    pub fn expected_many(
        &self,
        poller: &str,
        repository: &str,
        branch: &str,
        shas: &[String],
    ) -> Vec<Value> {
        if shas.is_empty() {
            return Vec::new();
        }
        let input = shas.join("\n") + "\n";
        let raw = self.git_out(
            [
                "log",
                "--no-walk=unsorted",
                "--stdin",
                "-z",
                "--format=%H%x1f%P%x1f%an <%ae>%x1f%cn <%ce>%x1f%ct%x1f%B",
            ],
            Some(input.as_bytes()),
        );
        let mut meta: HashMap<String, (Vec<String>, String, String, i64, String)> = HashMap::new();
        for rec in raw.split(|&b| b == 0).filter(|r| !r.is_empty()) {
            let text = String::from_utf8_lossy(rec);
            let mut parts = text.splitn(6, '\x1f');
            let sha = parts.next().unwrap().trim().to_string();
            let parents: Vec<String> = parts
                .next()
                .unwrap()
                .split_whitespace()
                .map(str::to_string)
                .collect();
            let author = parts.next().unwrap().to_string();
            let committer = parts.next().unwrap().to_string();
            let when: i64 = parts.next().unwrap().parse().unwrap();
            let body = parts.next().unwrap_or("").trim_end().to_string();
            meta.insert(sha, (parents, author, committer, when, body));
        }
        // Files of non-merge commits in one `diff-tree --stdin` run; merges one by one.
        let simple: Vec<&String> = shas.iter().filter(|s| meta[*s].0.len() <= 1).collect();
        let mut files_of: HashMap<String, Vec<String>> = HashMap::new();
        if !simple.is_empty() {
            let input = simple
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
                + "\n";
            let raw = self.git_out(
                [
                    "diff-tree",
                    "--stdin",
                    "--always",
                    "--root",
                    "-r",
                    "-z",
                    "--name-only",
                    "--no-renames",
                ],
                Some(input.as_bytes()),
            );
            let mut next = 0;
            let mut current: Option<String> = None;
            for token in raw.split(|&b| b == 0).filter(|t| !t.is_empty()) {
                if next < simple.len() && token == simple[next].as_bytes() {
                    current = Some(simple[next].clone());
                    files_of.insert(simple[next].clone(), Vec::new());
                    next += 1;
                    continue;
                }
                let sha = current
                    .as_ref()
                    .expect("diff-tree output starts with a sha");
                files_of
                    .get_mut(sha)
                    .unwrap()
                    .push(String::from_utf8_lossy(token).into_owned());
            }
            assert_eq!(next, simple.len(), "diff-tree --stdin skipped commits");
        }
        shas.iter()
            .map(|sha| {
                let (parents, author, committer, when, body) = meta
                    .get(sha)
                    .unwrap_or_else(|| panic!("git log did not describe {sha}"))
                    .clone();
                let files = match files_of.get(sha) {
                    Some(files) => files.clone(),
                    None => self.files_vs_first_parent(sha, parents.first().map(String::as_str)),
                };
                json!({
                    "id": format!("{poller}:{branch}:{sha}"),
                    "poller": poller,
                    "vcs": "git",
                    "repository": repository,
                    "branch": branch,
                    "revision": sha,
                    "author": author,
                    "committer": committer,
                    "comments": body,
                    "files": files,
                    "when_timestamp": when,
                    "project": "",
                    "category": null,
                    "codebase": "",
                    "revlink": null,
                    "properties": {},
                })
            })
            .collect()
    }

    /// Paths changed by `sha` against its first parent (or all paths of a root commit),
    /// decoded lossily.
    pub fn files_vs_first_parent(&self, sha: &str, parent: Option<&str>) -> Vec<String> {
        let raw = match parent {
            Some(p) => self.git_out(
                [
                    "diff-tree",
                    "-r",
                    "-z",
                    "--name-only",
                    "--no-renames",
                    p,
                    sha,
                ],
                None,
            ),
            None => self.git_out(
                [
                    "diff-tree",
                    "-r",
                    "-z",
                    "--name-only",
                    "--no-renames",
                    "--root",
                    "--no-commit-id",
                    sha,
                ],
                None,
            ),
        };
        raw.split(|&b| b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }
}

/// A bare "remote" and a working clone that pushes to it, in one temp dir.
pub struct RemotePair {
    pub dir: TempDir,
    pub remote: GitRepo,
    pub work: GitRepo,
}

impl RemotePair {
    /// An empty bare remote `<tmp>/remote/app.git` and a clone `<tmp>/work`.
    pub fn new() -> RemotePair {
        let dir = tempfile::Builder::new()
            .prefix("polld-e2e-git")
            .tempdir()
            .unwrap();
        let remote = GitRepo::init_bare(&dir.path().join("remote").join("app.git"));
        let work = GitRepo::clone_from(&remote, &dir.path().join("work"));
        RemotePair { dir, remote, work }
    }

    /// [`RemotePair::new`] with one commit on `main`, pushed.
    pub fn with_initial_commit() -> RemotePair {
        let pair = RemotePair::new();
        pair.work.commit("README", "hello\n", "Initial commit");
        pair.work.push(&["main"]);
        pair
    }

    /// The remote's path as a string, for `repo = ...`.
    pub fn repo(&self) -> String {
        self.remote.path.display().to_string()
    }
}

impl Default for RemotePair {
    fn default() -> Self {
        Self::new()
    }
}

/// Compares records field by field (with `files` compared as sorted lists: the contract
/// fixes their content, not their order), printing both sides on a mismatch.
#[track_caller]
pub fn assert_changes(actual: &[Value], expected: &[Value]) {
    let norm = |v: &Value| {
        let mut v = v.clone();
        if let Some(files) = v.get_mut("files").and_then(Value::as_array_mut) {
            files.sort_by_key(|f| f.to_string());
        }
        v
    };
    let a: Vec<Value> = actual.iter().map(norm).collect();
    let e: Vec<Value> = expected.iter().map(norm).collect();
    if a == e {
        return;
    }
    let brief = |vs: &[Value]| -> String {
        vs.iter()
            .map(|v| {
                format!(
                    "  {} {} {:?}",
                    v["branch"],
                    v["revision"].as_str().unwrap_or("?"),
                    v["comments"].as_str().unwrap_or("?")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut msg = format!(
        "change records differ\nexpected {} (branch revision comments):\n{}\nactual {}:\n{}\n",
        e.len(),
        brief(&e),
        a.len(),
        brief(&a)
    );
    for (i, (x, y)) in a.iter().zip(e.iter()).enumerate() {
        if x != y {
            msg.push_str(&format!(
                "first differing record #{i}\nexpected: {}\nactual:   {}\n",
                serde_json::to_string_pretty(y).unwrap(),
                serde_json::to_string_pretty(x).unwrap()
            ));
            if let (Some(xo), Some(yo)) = (x.as_object(), y.as_object()) {
                for (k, yv) in yo {
                    if xo.get(k) != Some(yv) {
                        msg.push_str(&format!(
                            "  field {k}: expected {yv}, actual {}\n",
                            xo.get(k).map_or("<missing>".into(), |v| v.to_string())
                        ));
                    }
                }
                for k in xo.keys() {
                    if !yo.contains_key(k) {
                        msg.push_str(&format!("  unexpected field {k}\n"));
                    }
                }
            }
            break;
        }
    }
    panic!("{msg}");
}

// ---------------------------------------------------------------------------------------
// git daemon
// ---------------------------------------------------------------------------------------

/// `git daemon` serving `base` on a free 127.0.0.1 port; killed on drop.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
}

impl GitDaemon {
    pub fn start(base: &Path) -> GitDaemon {
        for _ in 0..5 {
            let port = free_port();
            let mut cmd = git_command(base);
            cmd.args([
                "daemon",
                "--export-all",
                "--reuseaddr",
                "--informative-errors",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // `git daemon` runs `git-daemon` as a child: kill them as one group.
            .process_group(0);
            let mut daemon = GitDaemon {
                child: cmd.spawn().expect("spawn git daemon"),
                port,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return daemon;
                }
                if let Ok(Some(_)) = daemon.child.try_wait() {
                    break; // port taken in the meantime: try another
                }
                if Instant::now() >= deadline {
                    panic!("git daemon did not listen on {port}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("could not start git daemon");
    }

    /// `git://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("git://127.0.0.1:{}/{}", self.port, path)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this child leads.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// git over smart HTTP
// ---------------------------------------------------------------------------------------

/// A minimal HTTP/1.1 server on a free 127.0.0.1 port running `git http-backend` as a
/// CGI for every request, optionally requiring HTTP basic auth. Stopped on drop.
pub struct GitHttpServer {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// `METHOD target -> status` for every request served.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl GitHttpServer {
    /// Serves the repositories under `root`; with `auth = Some((user, password))`,
    /// requests without those credentials get 401.
    pub fn start(root: &Path, auth: Option<(&str, &str)>) -> GitHttpServer {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let expected_auth =
            auth.map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
        let root = root.to_path_buf();
        let thread = {
            let stop = stop.clone();
            let log = log.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let root = root.clone();
                            let log = log.clone();
                            let expected_auth = expected_auth.clone();
                            std::thread::spawn(move || {
                                let _ = serve_cgi(stream, &root, expected_auth.as_deref(), &log);
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        GitHttpServer {
            port,
            stop,
            thread: Some(thread),
            log,
        }
    }

    /// `http://[userinfo@]127.0.0.1:PORT/<path>`.
    pub fn url(&self, userinfo: Option<&str>, path: &str) -> String {
        match userinfo {
            Some(u) => format!("http://{u}@127.0.0.1:{}/{path}", self.port),
            None => format!("http://127.0.0.1:{}/{path}", self.port),
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One request on `stream`, answered by `git http-backend`; the connection is closed.
fn serve_cgi(
    stream: TcpStream,
    root: &Path,
    expected_auth: Option<&str>,
    log: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    use std::io::BufRead;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers: HashMap<String, String> = HashMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size =
                usize::from_str_radix(size_line.trim().split(';').next().unwrap(), 16).unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(len) = headers.get("content-length") {
        let mut buf = vec![0; len.parse().unwrap_or(0)];
        reader.read_exact(&mut buf)?;
        body = buf;
    }
    let mut stream = stream;
    let authorized = match expected_auth {
        None => true,
        Some(want) => headers.get("authorization").map(String::as_str) == Some(want),
    };
    if !authorized {
        log.lock()
            .unwrap()
            .push(format!("{method} {target} -> 401"));
        stream.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut cmd = git_command(root);
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", body.len().to_string())
        .env(
            "CONTENT_TYPE",
            headers.get("content-type").cloned().unwrap_or_default(),
        );
    if let Some(v) = headers.get("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", v);
    }
    if let Some(v) = headers.get("git-protocol") {
        cmd.env("GIT_PROTOCOL", v);
    }
    if expected_auth.is_some() {
        cmd.env("REMOTE_USER", "tester");
    }
    let out = run_checked(cmd, Some(&body));
    let raw = out.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
        .unwrap_or((raw.len(), 0));
    let head = String::from_utf8_lossy(&raw[..split.0]).into_owned();
    let content = &raw[(split.0 + split.1).min(raw.len())..];
    let mut status = "200 OK".to_string();
    let mut response = Vec::new();
    let mut header_lines = String::new();
    for line in head.lines() {
        if let Some(s) = line.strip_prefix("Status:") {
            status = s.trim().to_string();
        } else if !line.trim().is_empty() {
            header_lines.push_str(line.trim_end());
            header_lines.push_str("\r\n");
        }
    }
    log.lock()
        .unwrap()
        .push(format!("{method} {target} -> {status}"));
    write!(
        response,
        "HTTP/1.1 {status}\r\n{header_lines}Content-Length: {}\r\nConnection: close\r\n\r\n",
        content.len()
    )?;
    response.extend_from_slice(content);
    stream.write_all(&response)?;
    stream.flush()
}

// ---------------------------------------------------------------------------------------
// polld
// ---------------------------------------------------------------------------------------

/// What one run of the binary did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub command: String,
}

impl Outcome {
    /// Every stdout line parsed as a JSON object; panics if any line is anything else
    /// (stdout must carry change records and nothing else).
    #[track_caller]
    pub fn records(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| {
                let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!(
                        "stdout line is not JSON ({e}): {line:?}\n{}",
                        self.describe()
                    )
                });
                assert!(v.is_object(), "stdout line is not an object: {line}");
                v
            })
            .collect()
    }

    /// Asserts exit code `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit code {code}\n{}",
            self.describe()
        );
        self
    }

    pub fn describe(&self) -> String {
        format!(
            "command: {}\nexit: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

static RUN_SEQ: AtomicU64 = AtomicU64::new(0);

/// A config file and state dir in a temp dir, and the binary run against them.
pub struct Polld {
    pub dir: TempDir,
    pub config: PathBuf,
    /// Extra environment for every command.
    pub env: Vec<(String, String)>,
}

/// The `[daemon]` and `[defaults]` preamble used by [`Polld::new`]: state in `state/`,
/// ten-minute intervals (so `run` polls at launch only unless a test says otherwise).
pub const PREAMBLE: &str = "[daemon]\nstate_dir = \"state\"\n\n[defaults]\ninterval = \"10m\"\njitter = \"0s\"\nat_launch = true\n\n";

impl Polld {
    /// A config of [`PREAMBLE`] followed by `body` (sinks and `[[poller]]` tables).
    pub fn new(body: &str) -> Polld {
        Polld::with_config(&format!("{PREAMBLE}{body}"))
    }

    /// A config file with exactly `text`.
    pub fn with_config(text: &str) -> Polld {
        let dir = tempfile::Builder::new()
            .prefix("polld-e2e-run")
            .tempdir()
            .unwrap();
        let config = dir.path().join("pollers.toml");
        std::fs::write(&config, text).unwrap();
        Polld {
            dir,
            config,
            env: Vec::new(),
        }
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `polld --config <file>` with cwd = the temp dir and `POLLD_LOG=info`.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(polld_bin());
        cmd.current_dir(self.dir.path())
            .env("POLLD_LOG", "info")
            .env_remove("POLLD_CONFIG")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            .arg("--config")
            .arg(&self.config);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `polld --config F <args...>` to completion (bounded by [`COMMAND_TIMEOUT`]).
    pub fn run(&self, args: &[&str]) -> Outcome {
        let mut cmd = self.command();
        cmd.args(args);
        run_bounded(cmd)
    }

    /// `polld once [names...]`.
    pub fn once(&self, names: &[&str]) -> Outcome {
        let mut args = vec!["once"];
        args.extend_from_slice(names);
        self.run(&args)
    }

    /// `polld once` that must exit 0; returns its records.
    #[track_caller]
    pub fn once_ok(&self) -> Vec<Value> {
        let out = self.once(&[]);
        out.expect_code(0);
        out.records()
    }

    /// `polld status --json`, parsed.
    #[track_caller]
    pub fn status_json(&self) -> Value {
        let out = self.run(&["status", "--json"]);
        out.expect_code(0);
        serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("status --json is not JSON ({e})\n{}", out.describe()))
    }

    /// One poller's entry in `status --json`.
    #[track_caller]
    pub fn status_of(&self, name: &str) -> Value {
        let status = self.status_json();
        status["pollers"]
            .as_array()
            .unwrap_or_else(|| panic!("status has no pollers array: {status}"))
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("status has no poller {name}: {status}"))
            .clone()
    }

    /// Starts `polld --config F run` with stdout and stderr going to files in the temp
    /// dir; `env` is added to the environment. Killed on drop.
    pub fn spawn_run(&self, env: &[(&str, &str)]) -> RunningPolld {
        let seq = RUN_SEQ.fetch_add(1, Ordering::SeqCst);
        let stdout_path = self.dir.path().join(format!("run-{seq}.stdout"));
        let stderr_path = self.dir.path().join(format!("run-{seq}.stderr"));
        let mut cmd = self.command();
        cmd.arg("run");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        let child = cmd.spawn().expect("spawn polld run");
        RunningPolld {
            child,
            stdout_path,
            stderr_path,
            exited: None,
        }
    }
}

/// Runs `cmd` capturing output, killing it after [`COMMAND_TIMEOUT`].
pub fn run_bounded(mut cmd: Command) -> Outcome {
    let command = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command}: {e}"));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_t = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
            panic!("{command} did not finish within {COMMAND_TIMEOUT:?}\nstderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = String::from_utf8_lossy(&out_t.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap()).into_owned();
    Outcome {
        code: status.code(),
        stdout,
        stderr,
        command,
    }
}

/// A `polld run` child process.
pub struct RunningPolld {
    pub child: Child,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl RunningPolld {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `sig` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        if self.exited.is_none() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(self.pid(), sig);
            }
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if self.exited.is_none() {
            self.exited = Some(self.child.wait().unwrap());
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().unwrap();
        }
        self.exited.is_none()
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.exited
    }

    /// Polls `cond` until it holds, failing (with this daemon's stderr) after `timeout`
    /// or as soon as the daemon has exited.
    #[track_caller]
    pub fn wait_for(&mut self, timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if cond() {
                return;
            }
            if !self.is_running() {
                panic!(
                    "polld run exited ({:?}) while waiting for {what}\nstderr:\n{}",
                    self.exited,
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\npolld run's stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }
}

impl Drop for RunningPolld {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A JSON-lines file: the parsed objects, and any lines that did not parse.
pub fn read_jsonl(path: &Path) -> (Vec<Value>, Vec<String>) {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for line in text.split('\n') {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => good.push(v),
            _ => bad.push(line.to_string()),
        }
    }
    (good, bad)
}

/// A `[[poller]]` table for a git poller: `extra` is appended verbatim (more keys).
pub fn git_poller(name: &str, repo: &str, extra: &str) -> String {
    format!(
        "[[poller]]\nname = {}\ntype = \"git\"\nrepo = {}\n{extra}\n",
        toml_str(name),
        toml_str(repo)
    )
}

/// Writes an executable script (a stand-in for a tool, put first on `$PATH`).
pub fn write_exe(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `$PATH` with `dir` first.
pub fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// The first `name` on `$PATH`.
pub fn which(name: &str) -> PathBuf {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not on PATH"))
}

#[cfg(test)]
mod self_tests {
    //! The harness checked against git alone (no polld needed).
    use super::*;

    #[test]
    fn expected_records_match_git() {
        let pair = RemotePair::with_initial_commit();
        let w = &pair.work;
        let a = w.commit("dir/a b.txt", "a\n", "A\n\nbody  \n\n");
        w.checkout_new("f");
        let f = w.commit("f.txt", "f\n", "F");
        w.checkout("main");
        let m = w.merge_no_ff("f", "Merge f");
        let e = w.commit_empty("");
        let bulk = w.fast_import_commits("main", 50);
        w.push(&["main"]);
        let repo = pair.repo();
        let many = w.expected_many("app", &repo, "main", &[a.clone(), m.clone(), e.clone()]);
        assert_eq!(many[0]["files"], json!(["dir/a b.txt"]));
        assert_eq!(many[0]["comments"], "A\n\nbody");
        assert_eq!(many[0]["id"], format!("app:main:{a}"));
        assert_eq!(many[1]["files"], json!(["f.txt"]));
        assert_eq!(many[2]["files"], json!([]));
        assert_eq!(many[2]["comments"], "");
        let t_a = many[0]["when_timestamp"].as_i64().unwrap();
        let t_m = many[1]["when_timestamp"].as_i64().unwrap();
        assert!(t_m > t_a);
        assert_eq!(
            many[0]["committer"],
            format!("{COMMITTER_NAME} <{COMMITTER_EMAIL}>")
        );
        // One-by-one and bulk agree.
        assert_eq!(w.expected("app", &repo, "main", &a), many[0]);
        let bulk_rec = w.expected_many("app", &repo, "main", &bulk);
        assert_eq!(bulk_rec.len(), 50);
        assert_eq!(bulk_rec[7]["files"], json!(["bulk/7.txt"]));
        assert_eq!(bulk_rec[7]["comments"], "bulk commit 7\n\nnumber 7 of 50");
        assert_eq!(w.first_parent_range(&a, "main").len(), 52);
        assert!(!w.first_parent_range(&a, "main").contains(&f));
        assert_eq!(w.rev_parse("main"), pair.remote.rev_parse("main"));
    }

    #[test]
    fn base64_encodes() {
        assert_eq!(base64(b"alice:s3cr3tpw"), "YWxpY2U6czNjcjN0cHc=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }

    #[test]
    fn git_http_server_serves_with_auth() {
        let pair = RemotePair::with_initial_commit();
        let server = GitHttpServer::start(&pair.dir.path().join("remote"), Some(("alice", "pw")));
        let out = pair
            .work
            .git(&["ls-remote", &server.url(Some("alice:pw"), "app.git")]);
        assert!(out.contains(&pair.work.head()), "{out}");
        let clone = pair.dir.path().join("http-clone");
        let mut cmd = git_command(pair.dir.path());
        cmd.args(["clone", "-q", &server.url(Some("alice:pw"), "app.git")])
            .arg(&clone);
        run_checked(cmd, None);
        assert_eq!(GitRepo { path: clone }.head(), pair.work.head());
        let mut cmd = git_command(pair.dir.path());
        cmd.args(["ls-remote", &server.url(None, "app.git")]);
        assert!(
            !cmd.output().unwrap().status.success(),
            "no credentials, no access"
        );
    }

    #[test]
    fn git_daemon_serves() {
        let pair = RemotePair::with_initial_commit();
        let daemon = GitDaemon::start(&pair.dir.path().join("remote"));
        let out = pair.work.git(&["ls-remote", &daemon.url("app.git")]);
        assert!(out.contains(&pair.work.head()), "{out}");
    }
}
