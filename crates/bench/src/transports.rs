//! Per transport: what a poll that finds nothing costs polld on a warm connection, next
//! to one `git ls-remote` process and Buildbot's per-poll git sequence, on a repository
//! with 10 refs and one with 100,000 — each transport a real server on 127.0.0.1: `git
//! daemon`, Apache with `git http-backend` over http and over https (a CA made here),
//! and OpenSSH's sshd running `git-upload-pack` (the test suite's servers).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use polld_test_support::httpd::{GitHttpd, Port, Route};
use polld_test_support::ssh::SshServers;

use crate::fixture::GitDaemon;
use crate::inproc::{Access, InProcess, PollStats};
use crate::procs::{self, BuildbotRepo};
use crate::progress;

/// One transport's row.
#[derive(Debug, Clone, Default)]
pub struct TransportRow {
    pub transport: &'static str,
    /// polld over many repositories of the transport's server, `concurrency` at once
    /// (as the daemon polls).
    pub polld_concurrent: PollStats,
    pub fleet_repos: usize,
    pub polld_small: PollStats,
    pub polld_big: PollStats,
    pub ls_remote_small: PollStats,
    pub ls_remote_big: PollStats,
    pub buildbot_small: PollStats,
}

impl TransportRow {
    /// 100,000 refs over 10, polld's CPU per poll.
    pub fn refs_ratio(&self) -> f64 {
        self.polld_big.cpu_ms_per_poll() / self.polld_small.cpu_ms_per_poll().max(1e-9)
    }
}

/// The repositories every transport serves.
pub struct RefsRepos<'a> {
    pub small: &'a Path,
    pub big: &'a Path,
    /// The commit `main` points at in both, and in every one of `fleet`.
    pub commit: &'a str,
    /// Repositories polled concurrently.
    pub fleet: &'a [PathBuf],
    pub concurrency: usize,
    /// No-change polls of the fleet, in all.
    pub concurrent_polls: usize,
}

/// One transport: how polld and git reach the two repositories.
struct Served {
    name: &'static str,
    small: String,
    big: String,
    fleet: Vec<String>,
    ca_file: Option<PathBuf>,
    ssh: Option<(PathBuf, PathBuf)>,
}

impl Served {
    fn new(
        name: &'static str,
        repos: &RefsRepos<'_>,
        url: impl Fn(&Path) -> String,
        ca_file: Option<PathBuf>,
        ssh: Option<(PathBuf, PathBuf)>,
    ) -> Served {
        Served {
            name,
            small: url(repos.small),
            big: url(repos.big),
            fleet: repos.fleet.iter().map(|path| url(path)).collect(),
            ca_file,
            ssh,
        }
    }

    fn access(&self, url: &str) -> Access {
        Access {
            url: url.to_owned(),
            ca_file: self.ca_file.clone(),
            ssh_key_file: self.ssh.as_ref().map(|(key, _)| key.clone()),
            known_hosts_file: self.ssh.as_ref().map(|(_, known)| known.clone()),
        }
    }

    /// What git needs in its environment for the same files.
    fn git_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        if let Some(ca) = &self.ca_file {
            env.push(("GIT_SSL_CAINFO".to_owned(), ca.display().to_string()));
        }
        if let Some((key, known)) = &self.ssh {
            env.push((
                "GIT_SSH_COMMAND".to_owned(),
                format!(
                    "ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} \
                     -o StrictHostKeyChecking=yes -o BatchMode=yes",
                    key.display(),
                    known.display()
                ),
            ));
        }
        env
    }
}

/// Measures every transport; the servers run under `root` and stop at the end.
pub fn measure(
    root: &Path,
    repos: &RefsRepos<'_>,
    gitd: &GitDaemon,
    inproc: &InProcess,
    budget: Duration,
) -> Result<Vec<TransportRow>> {
    progress("starting Apache (git http-backend, http and https) and sshd");
    let httpd = GitHttpd::start(&create(root.join("httpd"))?);
    let sshd = SshServers::start(&create(root.join("sshd"))?);
    let git_url = |path: &Path| {
        gitd.url(
            &path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )
    };
    let http_url = |port, path: &Path| httpd.url(port, Route::Anonymous, path);
    let ssh_url = |path: &Path| sshd.v2.url(path);
    let served = [
        Served::new("git://", repos, git_url, None, None),
        Served::new("http://", repos, |p| http_url(Port::Http, p), None, None),
        Served::new(
            "https:// (local CA)",
            repos,
            |p| http_url(Port::Https, p),
            Some(httpd.ca_file.clone()),
            None,
        ),
        Served::new(
            "ssh://",
            repos,
            ssh_url,
            None,
            Some((sshd.client_key.clone(), sshd.known_hosts.clone())),
        ),
    ];
    served
        .iter()
        .enumerate()
        .map(|(i, served)| measure_one(root, i, served, repos, inproc, budget))
        .collect()
}

fn create(dir: PathBuf) -> Result<PathBuf> {
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn measure_one(
    root: &Path,
    index: usize,
    served: &Served,
    repos: &RefsRepos<'_>,
    inproc: &InProcess,
    budget: Duration,
) -> Result<TransportRow> {
    progress(&format!("{}: polld, git ls-remote, Buildbot", served.name));
    let state = root.join(format!("state-transport{index}"));
    let small = inproc.poller_with(
        &format!("t{index}small"),
        &served.access(&served.small),
        &state,
    )?;
    let big = inproc.poller_with(&format!("t{index}big"), &served.access(&served.big), &state)?;
    let small_cursor = inproc.first_poll(&small)?;
    let big_cursor = inproc.first_poll(&big)?;
    // Warm: the connection (TLS session, ssh session) is open, as in the daemon.
    inproc.measure_sequential(&small, &small_cursor, 20, 20, Duration::ZERO);
    inproc.measure_sequential(&big, &big_cursor, 2, 2, Duration::ZERO);
    let polld_small = inproc.measure_sequential(&small, &small_cursor, 100, 20_000, budget);

    let fleet = served
        .fleet
        .iter()
        .enumerate()
        .map(|(k, url)| inproc.poller_with(&format!("t{index}f{k}"), &served.access(url), &state))
        .collect::<Result<Vec<_>>>()?;
    let cursor = inproc.first_poll(&fleet[0])?;
    inproc.measure_concurrent(&fleet, &cursor, 1, repos.concurrency);
    let rounds = repos.concurrent_polls.div_ceil(fleet.len().max(1)).max(1);
    let polld_concurrent = inproc.measure_concurrent(&fleet, &cursor, rounds, repos.concurrency);
    let polld_big = inproc.measure_sequential(&big, &big_cursor, 5, 1000, budget);

    let env = served.git_env();
    let ls = |url: &String| procs::ls_remote_poll(url, &env, repos.commit);
    let ls_remote_small = procs::measure(std::slice::from_ref(&served.small), 20, 1, ls);
    let ls_remote_big = procs::measure(std::slice::from_ref(&served.big), 3, 1, ls);

    let buildbot = BuildbotRepo {
        url: served.small.clone(),
        workdir: root.join(format!("buildbot-transport{index}")),
        known: repos.commit.to_owned(),
        env: env.clone(),
    };
    let once = std::slice::from_ref(&buildbot);
    procs::measure(once, 1, 1, procs::buildbot_poll);
    let buildbot_small = procs::measure(once, 10, 1, procs::buildbot_poll);
    Ok(TransportRow {
        transport: served.name,
        polld_concurrent,
        fleet_repos: fleet.len(),
        polld_small,
        polld_big,
        ls_remote_small,
        ls_remote_big,
        buildbot_small,
    })
}
