//! A throwaway PostgreSQL cluster for the tests: `initdb` into a temp dir, `postgres`
//! on 127.0.0.1 on a free port, its own process group, killed and removed on drop.
//!
//! PostgreSQL refuses to run as root, and the tests run as root in CI: the cluster's
//! directory then belongs to the `postgres` OS user and `initdb` and `postgres` run as
//! that user (set on the spawned process, so the child we hold is the postmaster itself,
//! not a `runuser` in front of it that signals would have to go through).
//!
//! The server is the real one, tuned for speed where durability does not matter (see
//! [`SETTINGS`]): a test that kills it with `kill9` still finds every committed row on
//! [`PgServer::start_again`], because the rows are in the OS page cache; only a crash
//! of the machine itself would lose them.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::free_port;

/// The database [`PgServer::url`] names, created at start.
pub const DATABASE: &str = "polld";

/// Server settings, each `-c name=value`, and why:
const SETTINGS: &[(&str, &str)] = &[
    // TCP on loopback only: nothing outside this machine can reach a trust-auth server.
    ("listen_addresses", "127.0.0.1"),
    // Durability against machine crashes, which a throwaway cluster does not survive
    // anyway: without these every commit waits for the disk (many times slower on CI
    // disks). A `kill -9` of the server loses nothing with them off: a commit still
    // writes its WAL to the OS before it returns, only the flush to disk is skipped.
    // (`synchronous_commit = off` would lose the last commits on `kill -9`: they wait
    // in the server's memory for the WAL writer. It stays on.)
    ("fsync", "off"),
    ("full_page_writes", "off"),
    // Several clusters may run at once (one per test binary, tests in parallel): keep
    // each one's shared memory small. 16 MB holds every test's tables.
    ("shared_buffers", "16MB"),
    // Three replicas' pools (16 connections each) plus the fixture's psql.
    ("max_connections", "100"),
    // Compiling queries with LLVM costs more than it saves on test-sized tables, and
    // makes the first slow query's timing erratic.
    ("jit", "off"),
    // One time zone whatever the machine's, so timestamps in failure messages compare.
    ("timezone", "UTC"),
    // Everything to stderr, which goes to `server.log` in the cluster's directory.
    ("logging_collector", "off"),
    ("log_min_messages", "warning"),
];

/// A running (or stopped, between [`PgServer::stop`] and [`PgServer::start_again`])
/// PostgreSQL cluster.
pub struct PgServer {
    dir: TempDir,
    port: u16,
    /// The uid and gid the server runs as when the tests run as root.
    user: Option<(u32, u32)>,
    postmaster: Option<Child>,
}

impl PgServer {
    /// Creates a cluster (trust auth, locale C, UTF8), starts it and creates
    /// [`DATABASE`]. About a second, most of it `initdb`.
    pub fn start() -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("polld-pg")
            .tempdir()
            .unwrap();
        let user = postgres_user();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let mut initdb = Command::new(pg_bin("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            // Trust: the server listens on loopback only and lives for one test.
            .args(["-U", "postgres", "--auth=trust"])
            .args(["--locale=C", "--encoding=UTF8"])
            // initdb's own fsyncs are a good part of its time.
            .arg("--no-sync");
        let out = as_server_user(initdb, user).output().unwrap();
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = PgServer {
            dir,
            port: 0,
            user,
            postmaster: None,
        };
        server.spawn_on_a_free_port();
        server.psql("postgres", &format!("CREATE DATABASE {DATABASE}"));
        server
    }

    /// `postgres://postgres@127.0.0.1:PORT/polld`.
    pub fn url(&self) -> String {
        self.url_of(DATABASE)
    }

    /// The URL of another database of this cluster.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a fresh, empty database and returns its URL: one cluster serves many
    /// checks that each need an empty store (a database is a copy of `template1`, a
    /// few tens of milliseconds).
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url_of(name)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `sql` in `database` with `psql` and returns its unaligned, tuples-only
    /// output (`a|b` per row): for tests that check the rows themselves.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = self.psql_command(database, sql).output().unwrap();
        assert!(
            out.status.success(),
            "psql {sql:?} failed ({}):\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    /// What the server logged (warnings and errors), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A fast shutdown (SIGINT: clients disconnected, a clean checkpoint), waited for.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.postmaster.take() {
            signal(&child, libc::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            kill_cluster(&mut child);
        }
    }

    /// `kill -9` of the server and every backend, as a crashed database host would look
    /// to polld: every connection drops at once. Returns once they are all dead.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.postmaster.take() {
            kill_cluster(&mut child);
        }
    }

    /// Starts the stopped or killed server again on the same port (clients reconnect to
    /// the same URL), after crash recovery if it was killed.
    pub fn start_again(&mut self) {
        assert!(self.postmaster.is_none(), "the server is still running");
        // A killed server's backends may hold the port for a moment after the group
        // is gone: retry the bind for a few seconds.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn(self.port) {
                Ok(()) => return,
                Err(log) if Instant::now() < deadline && log.contains("could not bind") => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(log) => panic!("postgres did not start again on {}:\n{log}", self.port),
            }
        }
    }

    fn spawn_on_a_free_port(&mut self) {
        let mut last = String::new();
        for _ in 0..5 {
            match self.spawn(free_port()) {
                Ok(()) => return,
                // The port was taken between free_port() and the bind: try another.
                Err(log) if log.contains("could not bind") => last = log,
                Err(log) => panic!("postgres did not start:\n{log}"),
            }
        }
        panic!("postgres found no free port:\n{last}");
    }

    /// Starts the postmaster on `port` and waits until it accepts connections; on
    /// failure, the server log.
    fn spawn(&mut self, port: u16) -> Result<(), String> {
        self.port = port;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let start_of_this_run = log.metadata().map_or(0, |m| m.len());
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(self.log_path(), Some(uid), Some(gid)).unwrap();
        }
        let mut cmd = Command::new(pg_bin("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(port.to_string())
            // The socket in the cluster's own directory: the default, /var/run/postgresql,
            // may not exist, and is shared with any other cluster on the machine.
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.dir.path().display()
            ));
        for (name, value) in SETTINGS {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        // Its own group: a Ctrl-C meant for the tests does not reach the server.
        cmd.process_group(0);
        let mut child = as_server_user(cmd, self.user).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = self.log();
                let this_run = log.get(start_of_this_run as usize..).unwrap_or(&log);
                return Err(format!("postgres exited ({status}):\n{this_run}"));
            }
            // "Accepts connections" is what a client needs: a listening socket alone may
            // still answer "the database system is starting up" (crash recovery).
            if let Ok(out) = self.psql_command("postgres", "SELECT 1").output()
                && out.status.success()
            {
                self.postmaster = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                kill_cluster(&mut child);
                return Err(format!("no connection within 30 s:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn psql_command(&self, database: &str, sql: &str) -> Command {
        let mut cmd = Command::new(pg_bin("psql"));
        cmd.args(["-h", "127.0.0.1", "-U", "postgres", "-X", "-A", "-t", "-q"])
            .args(["-v", "ON_ERROR_STOP=1"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(database)
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null());
        cmd
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The cluster's directory (data in `data/`, the log in `server.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Nothing to keep: no clean shutdown needed before the directory goes.
        self.kill9();
    }
}

/// `cmd` to run as the server's user (`None`: as ourselves), with a C locale so that
/// the server's messages and initdb's checks do not depend on the machine's.
fn as_server_user(mut cmd: Command, user: Option<(u32, u32)>) -> Command {
    cmd.env("LC_ALL", "C").env_remove("PGDATA");
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// A PostgreSQL program: from `PATH` if there, else from the newest
/// `/usr/lib/postgresql/VERSION/bin` (where Debian's packages put the server's, off
/// `PATH`).
fn pg_bin(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|candidate| candidate.is_file());
    if let Some(found) = on_path {
        return found;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let program = entry.path().join("bin").join(name);
            program.is_file().then_some((version, program))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, program)| program)
        .unwrap_or_else(|| panic!("no `{name}`: install PostgreSQL (Debian: postgresql)"))
}

/// When running as root: the `postgres` OS user's uid and gid (the server refuses to
/// run as root). `None` otherwise: it runs as the current user.
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3
            && fields[0] == "postgres"
            && let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse())
        {
            return Some((uid, gid));
        }
    }
    panic!("running as root, but there is no `postgres` user in /etc/passwd to run PostgreSQL as");
}

/// Sends `signal` to the postmaster `child`.
fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child, not reaped yet, so its id cannot have been reused.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// SIGKILL to the postmaster `child` and every process it started. A signal to its
/// process group would not do: each backend calls setsid(), and a backend left alive
/// would go on answering its connection until it noticed the postmaster gone. The
/// postmaster is stopped first so that it forks nothing while its children are listed.
fn kill_cluster(child: &mut Child) {
    let postmaster = child.id() as libc::pid_t;
    signal(child, libc::SIGSTOP);
    let children = children_of(postmaster);
    for &pid in &children {
        // SAFETY: kill(2) on the postmaster's children: it is stopped, so none of them
        // has been reaped and its id reused since they were listed.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    signal(child, libc::SIGKILL);
    let _ = child.wait();
    // Orphaned now, they are reaped by init: dead is enough (gone, or a zombie).
    let deadline = Instant::now() + Duration::from_secs(10);
    while children.iter().any(|&pid| is_alive(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The processes whose parent is `parent`, from /proc.
fn children_of(parent: libc::pid_t) -> Vec<libc::pid_t> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| proc_stat(pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}

/// Whether `pid` is still running (not gone, not a zombie).
fn is_alive(pid: libc::pid_t) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X'))
}

/// (state, parent pid) of `pid` from /proc/PID/stat: `pid (comm) state ppid ...`, where
/// comm may hold spaces and parentheses, hence the last `)`.
fn proc_stat(pid: libc::pid_t) -> Option<(char, libc::pid_t)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}
