//! The backend driven directly (no binary): outcomes and cursors against real
//! repositories, credentials carried in the URL, and a server that never answers.

// Tests may unwrap: a panic is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use polld_backend::{Backend, Cursor, PollOutcome, Poller, PollerContext};
use polld_svn::{SvnBackend, SvnConfig};
use serde_json::json;
use tempfile::TempDir;

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A repository under a temp dir, written to with `svnmucc` over file://.
struct Repo {
    dir: TempDir,
    path: PathBuf,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        run(Command::new("svnadmin").arg("create").arg(&path));
        Repo { dir, path }
    }

    fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    /// `svnmucc` actions as one revision by `ada`.
    fn mucc(&self, actions: &[&str], msg: &str) {
        let config = self.dir.path().join("client-config");
        run(Command::new("svnmucc")
            .arg("--config-dir")
            .arg(&config)
            .args(["--non-interactive", "--username", "ada", "-m", msg, "-U"])
            .arg(self.url())
            .args(actions));
    }

    fn put(&self, path: &str, content: &str, msg: &str) {
        let file = self.dir.path().join("content");
        std::fs::write(&file, content).unwrap();
        self.mucc(&["put", file.to_str().unwrap(), path], msg);
    }
}

/// What each svn run is given in these tests.
const TIMEOUT: Duration = Duration::from_secs(120);

/// A poller on `repo` whose svn runs are given `timeout` each.
fn poller(repo: &str, config: SvnConfig, timeout: Duration, state: &Path) -> Arc<dyn Poller> {
    SvnBackend::new()
        .build(
            PollerContext {
                timeout,
                ..PollerContext::new("p", repo, state, state)
            },
            config,
        )
        .unwrap_or_else(|e| panic!("build: {e}"))
}

fn advanced(outcome: PollOutcome) -> (Cursor, Vec<polld_backend::NewChange>) {
    match outcome {
        PollOutcome::Advanced { cursor, changes } => (cursor, changes),
        other => panic!("expected the poll to advance to the end, got {other:?}"),
    }
}

#[tokio::test]
async fn outcomes_and_cursor_over_file_urls() {
    let repo = Repo::new();
    repo.mucc(&["mkdir", "trunk", "mkdir", "branches"], "Layout");
    let state = tempfile::tempdir().unwrap();
    let config = SvnConfig {
        split: polld_svn::Split::Branches,
        ..SvnConfig::default()
    };
    let p = poller(&repo.url(), config, TIMEOUT, state.path());

    let (cursor, changes) = advanced(p.poll(None).await.unwrap());
    assert_eq!(cursor.0, json!({"revision": 1}));
    assert!(changes.is_empty(), "the first poll reports nothing");
    assert!(
        state.path().join("mirrors/p/svn-config").is_dir(),
        "svn's private config dir"
    );
    assert_eq!(p.poll(Some(&cursor)).await.unwrap(), PollOutcome::Unchanged);

    repo.put("trunk/a.c", "a\n", "Add a.c\n\n");
    repo.mucc(&["cp", "2", "trunk", "branches/b"], "Branch b");
    repo.put("branches/b/a.c", "b\n", "");
    let (cursor, changes) = advanced(p.poll(Some(&cursor)).await.unwrap());
    assert_eq!(cursor.0, json!({"revision": 4}));
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0].revision, "2");
    assert_eq!(changes[0].branch, None);
    assert_eq!(changes[0].files, ["a.c"]);
    assert_eq!(changes[0].comments, "Add a.c");
    assert_eq!(changes[0].author, "ada");
    assert_eq!(changes[0].committer, None);
    assert_eq!(changes[0].project, None);
    assert_eq!(changes[1].revision, "4");
    assert_eq!(changes[1].branch.as_deref(), Some("branches/b"));
    assert_eq!(changes[1].comments, "");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - changes[1].when_timestamp).abs() < 600, "{changes:?}");

    // A cursor from elsewhere is an error, not a guess.
    let foreign = Cursor(json!({"refs": {}}));
    let error = p.poll(Some(&foreign)).await.unwrap_err().to_string();
    assert!(error.contains("not an svn cursor"), "{error}");
    // A missing repository: svn's own words.
    let gone = poller(
        &format!("{}-gone", repo.url()),
        SvnConfig::default(),
        TIMEOUT,
        state.path(),
    );
    let error = gone.poll(None).await.unwrap_err().to_string();
    assert!(
        error.contains("`svn info` failed") && error.contains("E180001"),
        "{error}"
    );
}

/// `svnserve` in the foreground on a free port, requiring `alice`/`password`.
struct Svnserve(Child, u16);

impl Svnserve {
    fn start(root: &Path, repo: &Path, password: &str) -> Svnserve {
        std::fs::write(
            repo.join("conf/svnserve.conf"),
            "[general]\nanon-access = none\nauth-access = write\npassword-db = passwd\n",
        )
        .unwrap();
        std::fs::write(
            repo.join("conf/passwd"),
            format!("[users]\nalice = {password}\n"),
        )
        .unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("svnserve")
            .args([
                "-d",
                "--foreground",
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
            ])
            .arg(port.to_string())
            .arg("-r")
            .arg(root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "svnserve did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Svnserve(child, port)
    }
}

impl Drop for Svnserve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn credentials_in_the_url_work_and_never_show() {
    let repo = Repo::new();
    repo.put("a", "a\n", "One");
    let server = Svnserve::start(repo.dir.path(), &repo.path, "s3cr3t-pässword");
    let state = tempfile::tempdir().unwrap();

    let good = format!(
        "svn://alice:s3cr3t-p%C3%A4ssword@127.0.0.1:{}/repo",
        server.1
    );
    let p = poller(&good, SvnConfig::default(), TIMEOUT, state.path());
    let (cursor, _) = advanced(p.poll(None).await.unwrap());
    assert_eq!(cursor.0, json!({"revision": 1}));

    let bad = format!("svn://alice:n0t-it@127.0.0.1:{}/repo", server.1);
    let p = poller(&bad, SvnConfig::default(), TIMEOUT, state.path());
    let error = p.poll(None).await.unwrap_err().to_string();
    assert!(error.contains("Password incorrect"), "{error}");
    assert!(!error.contains("n0t-it"), "{error}");
    assert!(!error.contains("alice:"), "{error}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts connections and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(1) {
            held.push(stream);
            std::thread::sleep(Duration::from_secs(5));
        }
    });
    let state = tempfile::tempdir().unwrap();
    let p = poller(
        &format!("svn://127.0.0.1:{port}/repo"),
        SvnConfig::default(),
        Duration::from_secs(1),
        state.path(),
    );
    let started = Instant::now();
    let error = p.poll(None).await.unwrap_err().to_string();
    let took = started.elapsed();
    assert!(error.contains("did not finish within 1s"), "{error}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    drop(holder);
}

#[tokio::test]
async fn a_long_history_is_read_a_thousand_changes_a_poll() {
    let repo = polld_test_support::svn::SvnRepo::new();
    let state = tempfile::tempdir().unwrap();
    let p = poller(&repo.url(), SvnConfig::default(), TIMEOUT, state.path());
    let mut cursor = polld_test_support::poll::first_poll(&p).await;
    let revisions = repo.bulk("bulk", 2_100);

    let mut reported = Vec::new();
    let mut polls = Vec::new();
    loop {
        let (changes, partial) = polld_test_support::poll::advance_some(&p, &mut cursor).await;
        polls.push(changes.len());
        reported.extend(changes.iter().map(|c| c.revision.parse::<u64>().unwrap()));
        if !partial {
            break;
        }
        // The cursor is the last revision reported: the next poll goes on after it.
        let last = reported.last().copied().unwrap();
        assert_eq!(cursor.as_ref().unwrap().0, json!({ "revision": last }));
    }
    assert_eq!(polls, [1_000, 1_000, 100]);
    assert_eq!(reported, revisions, "every revision once, in order");
}

#[tokio::test]
async fn huge_messages_are_cut_or_left_unread_never_held_whole() {
    let repo = polld_test_support::svn::SvnRepo::new();
    let state = tempfile::tempdir().unwrap();
    let p = poller(&repo.url(), SvnConfig::default(), TIMEOUT, state.path());
    let mut cursor = polld_test_support::poll::first_poll(&p).await;
    // 5 MB is read and cut; 40 MB is more than one `svn log` run may print, so that
    // revision is read without its message.
    let messages = [
        "small".to_owned(),
        "m".repeat(5_000_000),
        "h".repeat(40_000_000),
        "after".to_owned(),
    ];
    repo.bulk_messages("big", &messages);

    let changes = polld_test_support::poll::advance(&p, &mut cursor).await;
    let comments: Vec<&str> = changes.iter().map(|c| c.comments.as_str()).collect();
    assert_eq!(comments.len(), 4);
    assert_eq!(comments[0], "small");
    assert!(comments[1].ends_with("[polld: message cut at 65536 of 5000000 bytes]"));
    assert_eq!(
        comments[1].len(),
        65_536 + "\n\n[polld: message cut at 65536 of 5000000 bytes]".len()
    );
    assert_eq!(
        comments[2],
        "[polld: message not read: this revision's log is larger than 32 MiB]"
    );
    assert_eq!(changes[2].files, ["big/3.txt"]);
    assert_eq!(comments[3], "after");
}
