//! The process-based peers: the git command sequence Buildbot's GitPoller runs on every
//! poll, and one `git ls-remote` per poll. CPU is the git processes' own
//! (RUSAGE_CHILDREN), i.e. without Buildbot's Python.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};

use crate::inproc::PollStats;
use crate::util::{children_usage, git, stdout_of};

/// One repository as Buildbot's GitPoller sees it: its URL and its work directory.
pub struct BuildbotRepo {
    pub url: String,
    pub workdir: PathBuf,
    /// The head recorded at the previous poll (Buildbot's `lastRev`).
    pub known: String,
    /// Environment for its git processes (`GIT_SSL_CAINFO`, `GIT_SSH_COMMAND`), as
    /// Buildbot sets for a CA or an ssh key.
    pub env: Vec<(String, String)>,
}

/// Buildbot's tracker ref for `url`'s `main`: `refs/buildbot/<urlquote(url, '')>/heads/main`.
fn tracker_ref(url: &str) -> String {
    let mut quoted = String::new();
    for b in url.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            quoted.push(b as char);
        } else {
            quoted.push_str(&format!("%{b:02X}"));
        }
    }
    format!("refs/buildbot/{quoted}/heads/main")
}

/// One GitPoller poll of `main` that finds nothing, as BUILDBOT-NOTES lists it:
/// `git --version`; `git init --bare WORKDIR`; `git ls-remote --refs URL refs/heads/main`;
/// `git fetch --progress URL +refs/heads/main:<tracker> --`; `git rev-parse <tracker>`;
/// `git log --ignore-missing --first-parent --format=%H NEW ^KNOWN --`.
pub fn buildbot_poll(repo: &BuildbotRepo) -> Result<()> {
    let tracker = tracker_ref(&repo.url);
    let dir: &Path = &repo.workdir;
    let git = || {
        let mut cmd = git();
        cmd.envs(repo.env.iter().map(|(k, v)| (k, v)));
        cmd
    };
    stdout_of(git().arg("--version"))?;
    stdout_of(git().args(["init", "--bare"]).arg(dir))?;
    let listed = stdout_of(git().current_dir(dir).args([
        "ls-remote",
        "--refs",
        &repo.url,
        "refs/heads/main",
    ]))?;
    if !listed.starts_with(&repo.known) {
        bail!("ls-remote of {} listed {listed:?}", repo.url);
    }
    stdout_of(git().current_dir(dir).args([
        "fetch",
        "--progress",
        &repo.url,
        &format!("+refs/heads/main:{tracker}"),
        "--",
    ]))?;
    let new = stdout_of(git().current_dir(dir).args(["rev-parse", &tracker]))?;
    let log = stdout_of(git().current_dir(dir).args([
        "log",
        "--ignore-missing",
        "--first-parent",
        "--format=%H",
        &new,
        &format!("^{}", repo.known),
        "--",
    ]))?;
    if !log.is_empty() {
        bail!("git log found new commits in {}: {log}", repo.url);
    }
    Ok(())
}

/// One `git ls-remote URL` (every ref, as polld's listing receives them), with `env`
/// (see [`BuildbotRepo::env`]).
pub fn ls_remote_poll(url: &str, env: &[(String, String)], expect: &str) -> Result<()> {
    let listed = stdout_of(
        git()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["ls-remote", url]),
    )?;
    if !listed.contains(expect) {
        bail!("ls-remote of {url} did not list {expect}: {listed:?}");
    }
    Ok(())
}

/// Runs `poll(item)` `rounds` times for every item on `concurrency` threads; CPU is
/// the children's (RUSAGE_CHILDREN delta), so only processes count.
pub fn measure<T: Sync>(
    items: &[T],
    rounds: usize,
    concurrency: usize,
    poll: impl Fn(&T) -> Result<()> + Sync,
) -> PollStats {
    let total = items.len() * rounds;
    let next = AtomicUsize::new(0);
    let before = children_usage();
    let started = Instant::now();
    let mut stats = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency.clamp(1, total.max(1)))
            .map(|_| {
                scope.spawn(|| {
                    let mut stats = PollStats::default();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        if k >= total {
                            return stats;
                        }
                        let t = Instant::now();
                        let result = poll(&items[k % items.len()]).map_err(|e| format!("{e:#}"));
                        stats.record(t.elapsed(), result);
                    }
                })
            })
            .collect();
        let mut stats = PollStats::default();
        for worker in workers {
            stats.merge(worker.join().expect("poll thread panicked"));
        }
        stats
    });
    stats.wall = started.elapsed();
    stats.cpu = children_usage().cpu.saturating_sub(before.cpu);
    stats
}
