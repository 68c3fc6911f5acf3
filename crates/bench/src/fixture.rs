//! The benchmark's own fixture: N bare repositories (copies of one template with one
//! commit), optionally a repository with very many refs, all served by `git daemon`.

use std::fs::File;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{copy_tree_many, fast_import, free_port, git, run_ok, stdout_of};

/// The repositories, all identical copies of one template.
pub struct Repos {
    /// `git daemon`'s base path: every repository is `<base>/<name>`.
    pub base: PathBuf,
    pub names: Vec<String>,
    /// The one commit on `refs/heads/main` of every repository.
    pub commit: String,
    /// Its tree (for making further commits).
    pub tree: String,
    /// The template they were copied from (outside `base`).
    pub template: PathBuf,
}

impl Repos {
    pub fn path(&self, i: usize) -> PathBuf {
        self.base.join(&self.names[i])
    }
}

/// Creates `<root>/template.git` (one commit on `main`, no hooks, objects in one pack)
/// and copies it to `<root>/repos/r00000.git` ... in parallel.
pub fn create_repos(root: &Path, count: usize) -> Result<Repos> {
    let template = root.join("template.git");
    run_ok(
        git()
            .args([
                "init",
                "--quiet",
                "--bare",
                "--template=",
                "--initial-branch=main",
            ])
            .arg(&template),
    )?;
    let import = "blob\nmark :1\ndata 28\npolld benchmark repository.\n\n\
                  commit refs/heads/main\nmark :2\n\
                  author Bench <bench@example.org> 1764000000 +0000\n\
                  committer Bench <bench@example.org> 1764000000 +0000\n\
                  data 8\ninitial\nM 100644 :1 README\n\n";
    fast_import(&template, import)?;
    let commit = stdout_of(
        git()
            .arg("-C")
            .arg(&template)
            .args(["rev-parse", "refs/heads/main"]),
    )?;
    let tree = stdout_of(
        git()
            .arg("-C")
            .arg(&template)
            .args(["rev-parse", "refs/heads/main^{tree}"]),
    )?;

    let base = root.join("repos");
    std::fs::create_dir_all(&base)?;
    let width = count.saturating_sub(1).to_string().len().max(5);
    let names: Vec<String> = (0..count).map(|i| format!("r{i:0width$}.git")).collect();
    let targets: Vec<PathBuf> = names.iter().map(|n| base.join(n)).collect();
    copy_tree_many(&template, &targets)?;
    Ok(Repos {
        base,
        names,
        commit,
        tree,
        template,
    })
}

/// Adds a copy of the template named `name` under the base path, with `extra` more
/// refs `refs/changes/NN/N/1` (all at the template's commit) written directly as
/// packed-refs: `refs` total counts `refs/heads/main` too.
pub fn create_many_refs_repo(repos: &Repos, name: &str, refs: usize) -> Result<PathBuf> {
    let path = repos.base.join(name);
    copy_tree_many(&repos.template, std::slice::from_ref(&path))?;
    let mut names: Vec<String> = (1..refs)
        .map(|n| format!("refs/changes/{:02}/{n}/1", n % 100))
        .collect();
    // Also packed (a loose ref, if fast-import wrote one, wins with the same value).
    names.push("refs/heads/main".to_owned());
    names.sort_unstable();
    let mut packed = String::with_capacity(names.len() * 72 + 64);
    packed.push_str("# pack-refs with: peeled fully-peeled sorted \n");
    for n in &names {
        packed.push_str(&repos.commit);
        packed.push(' ');
        packed.push_str(n);
        packed.push('\n');
    }
    std::fs::write(path.join("packed-refs"), packed)?;
    let listed = run_ok(
        git()
            .arg("-C")
            .arg(&path)
            .args(["for-each-ref", "--format=x"]),
    )?;
    let count = listed.stdout.iter().filter(|&&b| b == b'\n').count();
    if count != refs {
        bail!("{} has {count} refs, not {refs}", path.display());
    }
    Ok(path)
}

/// How many loopback addresses `git daemon` listens on. It listens with a backlog of 5,
/// so 32 clients connecting at once to one socket overflow it: dropped SYNs are
/// retried after 1 s, 3 s, ... and measure the kernel, not the poller. Repositories are
/// spread over 127.0.0.1 ... 127.0.0.32 (all loopback on Linux) instead.
const LISTEN_ADDRESSES: u32 = 32;

/// `git daemon` serving the base path on 127.0.0.x, logging every request (`--verbose`)
/// to a file; killed on drop.
pub struct GitDaemon {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl GitDaemon {
    pub fn start(base: &Path, log: &Path) -> Result<GitDaemon> {
        let exec_path = stdout_of(git().arg("--exec-path"))?;
        let binary = Path::new(&exec_path).join("git-daemon");
        for _ in 0..5 {
            let port = free_port()?;
            let mut cmd = Command::new(&binary);
            // The same environment as `util::git`: no user config in the served side either.
            for (k, v) in git().get_envs() {
                match v {
                    Some(v) => cmd.env(k, v),
                    None => cmd.env_remove(k),
                };
            }
            cmd.args([
                "--export-all",
                "--reuseaddr",
                "--verbose",
                "--max-connections=1024",
            ])
            .args((1..=LISTEN_ADDRESSES).map(|a| format!("--listen=127.0.0.{a}")))
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log)?);
            let mut child = cmd
                .spawn()
                .with_context(|| format!("spawning {}", binary.display()))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let all_listening = (1..=LISTEN_ADDRESSES)
                    .all(|a| TcpStream::connect((format!("127.0.0.{a}"), port)).is_ok());
                if all_listening {
                    return Ok(GitDaemon {
                        child,
                        port,
                        log: log.to_owned(),
                    });
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken in the meantime: try another
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("git daemon did not listen on port {port}");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        bail!("could not start git daemon")
    }

    /// `git://127.0.0.X:PORT/<name>`, X fixed by the name (see [`LISTEN_ADDRESSES`]).
    pub fn url(&self, name: &str) -> String {
        let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        format!(
            "git://127.0.0.{}:{}/{name}",
            1 + hash % LISTEN_ADDRESSES,
            self.port
        )
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Counts the requests `git daemon --verbose` logged after a starting offset.
/// What marks one listing in `git daemon --verbose`'s log.
pub const GIT_DAEMON_REQUEST: &str = "Request upload-pack";

/// Counts a server's requests as its log grows.
pub struct RequestCounter {
    file: File,
    marker: &'static [u8],
    partial: Vec<u8>,
}

impl RequestCounter {
    /// Starts counting, at the log's current end, the lines that contain `marker`.
    pub fn at_end(log: &Path, marker: &'static str) -> Result<RequestCounter> {
        use std::io::{Seek, SeekFrom};
        let mut file = File::open(log)?;
        file.seek(SeekFrom::End(0))?;
        Ok(RequestCounter {
            file,
            marker: marker.as_bytes(),
            partial: Vec::new(),
        })
    }

    /// Requests (lines with the marker) logged since the last call.
    pub fn new_requests(&mut self) -> usize {
        use std::io::Read;
        let mut buf = Vec::new();
        if self.file.read_to_end(&mut buf).is_err() {
            return 0;
        }
        self.partial.extend_from_slice(&buf);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return 0;
        };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        complete
            .split(|&b| b == b'\n')
            .filter(|line| line.windows(self.marker.len()).any(|w| w == self.marker))
            .count()
    }
}
