//! Fixtures for Subversion: repositories with a working copy, revisions with fixed
//! dates, bulk history loaded from a dumpfile, and `svnserve` and Apache with
//! mod_dav_svn on 127.0.0.1.
//!
//! Every command runs with a private `--config-dir` and `LC_ALL=C.UTF-8` (so non-ASCII
//! paths work in the working copy), and every wait has a deadline.

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::apache::{Apache, ApacheConfig};
use crate::tls::ServerCert;
use crate::{free_port, run_checked};

/// The author of every fixture revision.
pub const SVN_AUTHOR: &str = "ada";

/// `svn:date` of the next revision: every revision in the process gets its own second.
static SVN_CLOCK: AtomicI64 = AtomicI64::new(1_650_000_000);

/// Reserves `n` consecutive seconds and returns the first.
fn svn_ticks(n: i64) -> i64 {
    SVN_CLOCK.fetch_add(n, Ordering::SeqCst)
}

/// Unix seconds as svn writes `svn:date`: `2022-04-15T05:20:00.000000Z`.
pub fn svn_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A path as a `file://` URL, percent-encoding everything but unreserved bytes and `/`.
pub fn svn_file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for &b in path.to_str().expect("UTF-8 temp path").as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// An `svn`, `svnadmin` or `svnmucc` command with the fixtures' environment.
pub fn svn_tool(tool: &str, config_dir: &Path) -> Command {
    let mut cmd = Command::new(tool);
    cmd.env("LC_ALL", "C.UTF-8").env_remove("SVN_EDITOR");
    if matches!(tool, "svn" | "svnmucc") {
        cmd.arg("--config-dir")
            .arg(config_dir)
            .args(["--non-interactive", "--no-auth-cache"]);
    }
    cmd
}

/// One repository (`<temp>/<name>`), its working copy (`<temp>/wc`), and what the
/// fixture knows about each revision it made.
pub struct SvnRepo {
    pub dir: TempDir,
    /// The repository directory (serve its parent with [`Svnserve`]).
    pub path: PathBuf,
    /// A checkout of the repository root.
    pub wc: PathBuf,
    config_dir: PathBuf,
    /// revision → (date in Unix seconds, log message as given).
    revisions: Mutex<HashMap<u64, (i64, String)>>,
}

impl SvnRepo {
    /// An empty repository named `repo`, checked out.
    pub fn new() -> SvnRepo {
        SvnRepo::named("repo")
    }

    /// An empty repository with this directory name (may hold spaces, non-ASCII).
    pub fn named(name: &str) -> SvnRepo {
        let dir = tempfile::Builder::new()
            .prefix("polld-svn")
            .tempdir()
            .unwrap();
        let path = dir.path().join(name);
        let wc = dir.path().join("wc");
        let config_dir = dir.path().join("client-config");
        let repo = SvnRepo {
            path,
            wc,
            config_dir,
            dir,
            revisions: Mutex::new(HashMap::new()),
        };
        let mut cmd = repo.tool("svnadmin");
        cmd.arg("create").arg(&repo.path);
        run_checked(cmd, None);
        // Lets the fixture set svn:date after each commit.
        let hook = repo.path.join("hooks").join("pre-revprop-change");
        std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let mut cmd = repo.tool("svn");
        cmd.args(["checkout", "-q", "--"])
            .arg(repo.url())
            .arg(&repo.wc);
        run_checked(cmd, None);
        repo
    }

    /// `trunk/README`, `branches/`, `tags/` in revision 1 (or the next one).
    pub fn with_standard_layout() -> SvnRepo {
        let repo = SvnRepo::new();
        repo.put(&[("trunk/README", "readme\n")], "Standard layout");
        repo.mkdirs(&["branches", "tags"], "Branches and tags");
        repo
    }

    /// The repository's `file://` URL (percent-encoded).
    pub fn url(&self) -> String {
        svn_file_url(&self.path)
    }

    /// `file://…/repo/<path>`.
    pub fn url_of(&self, path: &str) -> String {
        format!(
            "{}/{}",
            self.url(),
            svn_file_url(Path::new(path)).trim_start_matches("file://")
        )
    }

    fn tool(&self, tool: &str) -> Command {
        svn_tool(tool, &self.config_dir)
    }

    /// Runs `svn <args>` in the working copy; stdout, trimmed.
    pub fn svn(&self, args: &[&str]) -> String {
        let mut cmd = self.tool("svn");
        cmd.current_dir(&self.wc).args(args);
        String::from_utf8_lossy(&run_checked(cmd, None).stdout)
            .trim()
            .to_owned()
    }

    /// Writes `files` (parents created), adds what is new and commits with `msg`.
    pub fn put(&self, files: &[(&str, &str)], msg: &str) -> u64 {
        for (file, content) in files {
            let full = self.wc.join(file);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, content).unwrap();
        }
        self.svn(&["add", "-q", "--force", "--parents", "--", "."]);
        self.commit(msg)
    }

    /// Creates directories (with parents) in one revision.
    pub fn mkdirs(&self, dirs: &[&str], msg: &str) -> u64 {
        let mut args = vec!["mkdir", "-q", "--parents", "--"];
        args.extend_from_slice(dirs);
        self.svn(&args);
        self.commit(msg)
    }

    /// `svn rm` of working-copy paths, committed.
    pub fn remove(&self, paths: &[&str], msg: &str) -> u64 {
        let mut args = vec!["rm", "-q", "--"];
        args.extend_from_slice(paths);
        self.svn(&args);
        self.commit(msg)
    }

    /// A server-side copy (`svn copy ^/from ^/to`), e.g. creating a branch or a tag.
    pub fn copy(&self, from: &str, to: &str, msg: &str) -> u64 {
        let rev = self.commit_with(
            &[
                "copy",
                "-q",
                "-m",
                msg,
                "--",
                &self.url_of(from),
                &self.url_of(to),
            ],
            msg,
        );
        self.svn(&["update", "-q"]);
        rev
    }

    /// A server-side delete (`svn rm ^/path`), e.g. deleting a branch.
    pub fn delete(&self, path: &str, msg: &str) -> u64 {
        let rev = self.commit_with(&["rm", "-q", "-m", msg, "--", &self.url_of(path)], msg);
        self.svn(&["update", "-q"]);
        rev
    }

    /// Commits the working copy with `msg` verbatim (may be empty).
    pub fn commit(&self, msg: &str) -> u64 {
        self.commit_with(&["commit", "-m", msg], msg)
    }

    /// Runs a committing `svn` command as [`SVN_AUTHOR`], then sets the new revision's
    /// `svn:date` to the next tick. Returns the revision.
    fn commit_with(&self, args: &[&str], msg: &str) -> u64 {
        let mut all = vec!["--username", SVN_AUTHOR];
        all.extend_from_slice(args);
        self.svn(&all);
        let rev = self.youngest();
        let when = svn_ticks(1);
        let mut cmd = self.tool("svn");
        cmd.args([
            "propset",
            "-q",
            "--revprop",
            "-r",
            &rev.to_string(),
            "svn:date",
            &svn_date(when),
            "--",
        ])
        .arg(self.url());
        run_checked(cmd, None);
        self.revisions
            .lock()
            .unwrap()
            .insert(rev, (when, msg.to_owned()));
        rev
    }

    /// The youngest revision.
    pub fn youngest(&self) -> u64 {
        let mut cmd = self.tool("svnlook");
        cmd.arg("youngest").arg(&self.path);
        String::from_utf8_lossy(&run_checked(cmd, None).stdout)
            .trim()
            .parse()
            .expect("svnlook youngest prints a number")
    }

    /// `n` revisions, each adding `<dir>/<i>.txt` (i = 1..=n; the first also adds `dir`),
    /// loaded at once from a dumpfile. Returns their revisions, oldest first.
    pub fn bulk(&self, dir: &str, n: usize) -> Vec<u64> {
        let messages: Vec<String> = (1..=n)
            .map(|i| format!("bulk {i} of {n}\n\nnumber {i}"))
            .collect();
        self.bulk_messages(dir, &messages)
    }

    /// As [`SvnRepo::bulk`], one revision per message, with these messages.
    pub fn bulk_messages(&self, dir: &str, messages: &[String]) -> Vec<u64> {
        let n = messages.len();
        let first_date = svn_ticks(n as i64);
        let base = self.youngest();
        let mut dump = b"SVN-fs-dump-format-version: 2\n\n".to_vec();
        for (i, msg) in (1..=n).zip(messages) {
            let msg = msg.clone();
            let when = first_date + i as i64 - 1;
            let props = svn_props(&[
                ("svn:author", SVN_AUTHOR),
                ("svn:date", &svn_date(when)),
                ("svn:log", &msg),
            ]);
            write!(
                dump,
                "Revision-number: {i}\nProp-content-length: {len}\nContent-length: {len}\n\n{props}\n",
                len = props.len()
            )
            .unwrap();
            if i == 1 {
                write!(dump, "Node-path: {dir}\nNode-kind: dir\nNode-action: add\nProp-content-length: 10\nContent-length: 10\n\nPROPS-END\n\n\n").unwrap();
            }
            let text = format!("{i}\n");
            write!(
                dump,
                "Node-path: {dir}/{i}.txt\nNode-kind: file\nNode-action: add\nProp-content-length: 10\nText-content-length: {tl}\nContent-length: {cl}\n\nPROPS-END\n{text}\n\n",
                tl = text.len(),
                cl = 10 + text.len()
            )
            .unwrap();
            self.revisions
                .lock()
                .unwrap()
                .insert(base + i as u64, (when, msg));
        }
        let mut cmd = self.tool("svnadmin");
        cmd.args(["load", "-q", "--ignore-uuid"]).arg(&self.path);
        run_checked(cmd, Some(&dump));
        assert_eq!(
            self.youngest(),
            base + n as u64,
            "the dump loaded every revision"
        );
        self.svn(&["update", "-q"]);
        (base + 1..=base + n as u64).collect()
    }

    /// Allows only `user` with `password` over svnserve (`anon-access = none`).
    pub fn require_auth(&self, user: &str, password: &str) {
        let conf = self.path.join("conf");
        std::fs::write(
            conf.join("svnserve.conf"),
            "[general]\nanon-access = none\nauth-access = write\npassword-db = passwd\nrealm = polld-test\n",
        )
        .unwrap();
        std::fs::write(
            conf.join("passwd"),
            format!("[users]\n{user} = {password}\n"),
        )
        .unwrap();
    }

    /// The change record polld should emit for `rev` (poller defaults: project "",
    /// category null, codebase "", no revlink, no properties), unless `project` is set.
    pub fn expected(
        &self,
        poller: &str,
        repository: &str,
        project: Option<&str>,
        branch: Option<&str>,
        rev: u64,
        files: &[&str],
    ) -> Value {
        let (when, msg) = self
            .revisions
            .lock()
            .unwrap()
            .get(&rev)
            .cloned()
            .unwrap_or_else(|| panic!("the fixture made no revision {rev}"));
        let branch_part = branch.unwrap_or("");
        let id = match project {
            Some(p) => format!("{poller}:{p}:{branch_part}:{rev}"),
            None => format!("{poller}:{branch_part}:{rev}"),
        };
        json!({
            "id": id,
            "poller": poller,
            "vcs": "svn",
            "repository": repository,
            "branch": branch,
            "revision": rev.to_string(),
            "author": SVN_AUTHOR,
            "committer": null,
            "comments": msg.trim_end(),
            "files": files,
            "when_timestamp": when,
            "project": project.unwrap_or(""),
            "category": null,
            "codebase": "",
            "revlink": null,
            "properties": {},
        })
    }
}

impl Default for SvnRepo {
    fn default() -> Self {
        SvnRepo::new()
    }
}

/// A dumpfile property block (`K`/`V` pairs, then `PROPS-END`).
fn svn_props(props: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in props {
        out.push_str(&format!("K {}\n{k}\nV {}\n{v}\n", k.len(), v.len()));
    }
    out.push_str("PROPS-END\n");
    out
}

/// A `[[poller]]` table for an svn poller: `extra` is appended verbatim (more keys).
pub fn svn_poller(name: &str, repo: &str, extra: &str) -> String {
    format!(
        "[[poller]]\nname = {}\ntype = \"svn\"\nrepo = {}\n{extra}\n",
        crate::toml_str(name),
        crate::toml_str(repo)
    )
}

/// `svnserve` serving `root` (a directory of repositories) on a free 127.0.0.1 port,
/// in the foreground so it can be killed; killed on drop. Connections are threads of
/// the one process (`--threads`), so killing it ends every connection too. Every
/// command it serves is logged (see [`Svnserve::log`]).
pub struct Svnserve {
    child: Option<Child>,
    pub port: u16,
    root: PathBuf,
}

impl Svnserve {
    pub fn start(root: &Path) -> Svnserve {
        for _ in 0..5 {
            if let Some(server) = Svnserve::start_on(root, free_port()) {
                return server;
            }
        }
        panic!("could not start svnserve");
    }

    /// `None` when the port was taken meanwhile.
    fn start_on(root: &Path, port: u16) -> Option<Svnserve> {
        let pid_file = root.join(format!("svnserve-{port}.pid"));
        let mut child = Command::new("svnserve")
            .args([
                "-d",
                "--foreground",
                "--threads",
                "--listen-host",
                "127.0.0.1",
                "--listen-port",
            ])
            .arg(port.to_string())
            .arg("-r")
            .arg(root)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg("--log-file")
            .arg(root.join(format!("svnserve-{port}.log")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn svnserve");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Svnserve {
                    child: Some(child),
                    port,
                    root: root.to_path_buf(),
                });
            }
            if let Ok(Some(_)) = child.try_wait() {
                return None;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("svnserve did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (and so every connection to it) and starts it again on the
    /// same port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(mut server) = Svnserve::start_on(&self.root, self.port) {
                self.child = server.child.take();
                return;
            }
            assert!(
                Instant::now() < deadline,
                "svnserve did not restart on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The commands served so far, one line each (`<pid> <date> <host> <user> <repo>
    /// <command> ...`: `open 2 cap=(...) /trunk polld/0.1.0 -`, `get-latest-rev`,
    /// `stat /trunk r4`, `log ...`). The client of an `open` tells polld's
    /// in-process check (`polld/`) from an `svn` process (`SVN/`).
    pub fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.root.join(format!("svnserve-{}.log", self.port)))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// `svn://127.0.0.1:PORT/<path>` (`path` already URL-safe).
    pub fn url(&self, path: &str) -> String {
        format!("svn://127.0.0.1:{}/{}", self.port, path)
    }

    /// Stops serving (SIGKILL, reaped): the port refuses connections afterwards.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Svnserve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Apache with mod_dav_svn serving every repository under `root` at
/// `http(s)://127.0.0.1:PORT/svn/<name>`, optionally behind HTTP Basic auth, over TLS
/// with HTTP/2 when started with [`SvnHttpServer::start_https`]. See [`Apache`] for
/// where its files live and how it stops.
///
/// FSFS gives new revision files the permissions of the old ones, so commits made
/// after the start stay readable by Apache's unprivileged workers.
pub struct SvnHttpServer {
    apache: Apache,
    pub port: u16,
}

impl SvnHttpServer {
    /// Serves `root` (a directory of repositories, the `SVNParentPath`) over http; with
    /// `auth = Some((user, password))` every request needs those credentials.
    pub fn start(root: &Path, auth: Option<(&str, &str)>) -> SvnHttpServer {
        SvnHttpServer::serve(root, auth, None)
    }

    /// The same over https with `cert`, offering HTTP/2 next to HTTP/1.1.
    pub fn start_https(
        root: &Path,
        auth: Option<(&str, &str)>,
        cert: &ServerCert,
    ) -> SvnHttpServer {
        SvnHttpServer::serve(root, auth, Some(cert))
    }

    fn serve(root: &Path, auth: Option<(&str, &str)>, tls: Option<&ServerCert>) -> SvnHttpServer {
        let access = match auth {
            Some(_) => {
                "  AuthType Basic\n  AuthName \"polld-test\"\n  AuthUserFile \"{root}/htpasswd\"\n  Require valid-user\n"
            }
            None => "  Require all granted\n",
        };
        let apache = Apache::start(ApacheConfig {
            modules: &["auth_basic", "authn_file", "authz_user", "dav", "dav_svn"],
            body: format!(
                "<Location /svn>\n  DAV svn\n  SVNParentPath \"{}\"\n{access}</Location>\n",
                root.display()
            ),
            tls,
            h2: tls.is_some(),
            readable: &[root],
            htpasswd: auth,
        });
        SvnHttpServer {
            port: apache.port,
            apache,
        }
    }

    /// `http(s)://127.0.0.1:PORT/svn/<path>` (`path` already URL-safe).
    pub fn url(&self, path: &str) -> String {
        self.apache.url(&format!("svn/{path}"))
    }

    /// What Apache logged (failed logins, mod_dav_svn errors), for failure messages.
    pub fn log(&self) -> String {
        self.apache.log()
    }

    /// The requests served so far: `METHOD PATH STATUS PROTOCOL USER-AGENT` each.
    pub fn requests(&self) -> Vec<String> {
        self.apache.requests()
    }
}

#[cfg(test)]
mod self_tests {
    //! The fixtures checked against svn alone (no polld needed).
    use super::*;

    #[test]
    fn dates_are_formatted_like_svn() {
        assert_eq!(svn_date(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(svn_date(1_795_527_928), "2026-11-24T13:45:28.000000Z");
        assert_eq!(svn_date(951_782_400), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn revisions_bulk_and_svnserve() {
        let repo = SvnRepo::with_standard_layout();
        assert_eq!(repo.youngest(), 2);
        let r = repo.put(&[("trunk/dé x/ü.txt", "u\n")], "Unicode");
        assert_eq!(r, 3);
        let bulk = repo.bulk("trunk/bulk", 5);
        assert_eq!(bulk, [4, 5, 6, 7, 8]);
        assert!(repo.wc.join("trunk/bulk/5.txt").exists());
        let log = repo.svn(&["log", "--xml", "-v", "-r", "6", "--", &repo.url()]);
        assert!(log.contains("<msg>bulk 3 of 5\n\nnumber 3</msg>"), "{log}");
        assert!(
            log.contains(&svn_date(
                repo.expected("p", "r", None, None, 6, &[])["when_timestamp"]
                    .as_i64()
                    .unwrap()
            )),
            "{log}"
        );
        assert!(
            log.contains(&format!("<author>{SVN_AUTHOR}</author>")),
            "{log}"
        );
        let b = repo.copy("trunk", "branches/b", "Branch b");
        assert_eq!(b, 9);
        assert!(repo.wc.join("branches/b/README").exists());

        let server = Svnserve::start(repo.dir.path());
        let url = server.url("repo");
        let info = repo.svn(&["info", "--show-item", "revision", "--", &url]);
        assert_eq!(info, "9");
    }

    #[test]
    fn apache_serves_over_http_with_and_without_auth_and_stops_on_drop() {
        let repo = SvnRepo::with_standard_layout();
        let server = SvnHttpServer::start(repo.dir.path(), None);
        let url = server.url("repo/trunk");
        let info = repo.svn(&["info", "--show-item", "last-changed-revision", "--", &url]);
        assert_eq!(info, "1", "{}", server.log());
        // A commit made through file:// after the server started is readable too.
        repo.put(&[("trunk/a", "a\n")], "After start");
        let log = repo.svn(&["log", "-q", "-r", "HEAD", "--", &url]);
        assert!(log.contains("r3 | ada"), "{log}\n{}", server.log());
        let port = server.port;
        drop(server);
        assert!(
            TcpStream::connect(("127.0.0.1", port)).is_err(),
            "apache still listens after drop"
        );

        let server = SvnHttpServer::start(repo.dir.path(), Some(("alice", "pw-9c1e")));
        let url = server.url("repo");
        let mut anonymous = svn_tool("svn", &repo.config_dir);
        anonymous.args(["info", "--", &url]).stdin(Stdio::null());
        let out = anonymous.output().unwrap();
        assert!(!out.status.success(), "no credentials must be refused");
        let mut cmd = svn_tool("svn", &repo.config_dir);
        cmd.args(["info", "--show-item", "revision", "--username", "alice"])
            .args(["--password-from-stdin", "--", &url]);
        let out = run_checked(cmd, Some(b"pw-9c1e"));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    }
}
