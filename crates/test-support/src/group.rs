//! A test server in a process group of its own, with a lifeline.
//!
//! Servers that a whole test binary shares live in statics, which Rust never drops: a
//! `Drop` alone would leave them running after the tests, and a killed test binary
//! (a CI timeout) would leak every server it started. So each server runs under a small
//! `sh` that reads a pipe whose write end only this process holds. When the pipe
//! closes — the [`ProcessGroup`] dropped, or the test process ending in any way, even
//! by `SIGKILL` — the shell sends the server `SIGTERM` (Apache reaps its own workers
//! on it) and, once it has exited, kills whatever is left of the group. A server that
//! ignores `SIGTERM` is killed by [`ProcessGroup::stop`] after 10 s.
//!
//! The shell also exits as soon as the server does, so a server that dies at start
//! (a port taken in the meantime) is seen by [`ProcessGroup::has_exited`].

use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// `sh -c` script: `$@` is the server's command line. The lifeline moves to fd 3
/// (a background job's stdin would be `/dev/null`); a watcher in the background
/// sends the server `SIGTERM` once it closes, while the shell waits for the server.
/// The shell reaps what it started (some inits never reap orphans), then kills
/// whatever is left in the group, itself included.
const SUPERVISOR: &str = r#"
exec 3<&0 0</dev/null
"$@" 3<&- &
server=$!
( read -r line <&3 || :; kill -15 "$server" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$server"
kill "$watcher" 2>/dev/null
wait "$watcher"
kill -9 0
"#;

/// A server process (and everything it starts) in its own process group.
pub struct ProcessGroup {
    shell: Child,
    lifeline: Option<ChildStdin>,
}

impl ProcessGroup {
    /// Starts `program args...` with the environment and working directory set on
    /// `command`, stdout and stderr appended to `log`.
    pub fn spawn(command: &Command, log: &std::path::Path) -> ProcessGroup {
        let mut shell = Command::new("sh");
        shell
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("polld-test-server")
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => shell.env(key, value),
                None => shell.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            shell.current_dir(dir);
        }
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        shell
            .stdin(Stdio::piped())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .process_group(0);
        let mut shell = shell
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        // The write end is close-on-exec (std makes every pipe so): no other child
        // inherits it, so only this process keeps the server alive.
        let lifeline = shell.stdin.take();
        ProcessGroup { shell, lifeline }
    }

    /// Whether the server has exited (it died, or was stopped).
    pub fn has_exited(&mut self) -> bool {
        !matches!(self.shell.try_wait(), Ok(None))
    }

    /// Stops the server and everything in its group, and waits for the shell.
    pub fn stop(&mut self) {
        self.lifeline.take();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.has_exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // The shell is still there (not reaped), so its group id is still its own.
        // SAFETY: killpg(2) on the group our own unreaped child leads.
        unsafe {
            libc::killpg(self.shell.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.shell.wait();
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until something listens on each of `ports` on 127.0.0.1: `true`, or `false`
/// when the server exited first (a port taken in the meantime: the caller may retry on
/// others); panics naming `what` after 15 s.
pub fn wait_listening(group: &mut ProcessGroup, ports: &[u16], what: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if ports
            .iter()
            .all(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok())
        {
            return true;
        }
        if group.has_exited() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {ports:?} within 15 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_is_stopped_on_drop_and_its_exit_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut server = Command::new("git");
        server.args(["daemon", "--listen=127.0.0.1", &format!("--port={port}")]);
        let mut group = ProcessGroup::spawn(&server, &log);
        assert!(wait_listening(&mut group, &[port], "git daemon"));
        drop(group);
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

        let mut short = ProcessGroup::spawn(&Command::new("true"), &log);
        assert!(!wait_listening(&mut short, &[port], "true"));
    }
}
