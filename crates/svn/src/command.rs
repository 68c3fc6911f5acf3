//! Running the `svn` client: the one way this crate talks to Subversion.
//!
//! Every run is
//!
//! ```text
//! svn <command> --xml --non-interactive --no-auth-cache --config-dir <private dir>
//!     [--config-option servers:global:ssl-authority-files=<ca_file>]
//!     [--username=<user> --password-from-stdin] <options> -- <URL@PEG>
//! ```
//!
//! - started directly (no shell), with every argument separate and the URL after `--`,
//!   so nothing from the config can become an option;
//! - with the password written to svn's stdin, never on its command line (`ps`) and
//!   never in svn's auth cache (`--no-auth-cache`);
//! - with a private `--config-dir` (`<mirror_dir>/svn-config`, which svn fills with its
//!   commented-out defaults on first use), so the daemon user's `~/.subversion`
//!   (stored credentials, `[tunnels]`, `[auth]` and `[global]` server settings) cannot
//!   change what a poll does. The system-wide `/etc/subversion` still applies: svn has
//!   no switch to ignore it, and it is where an administrator puts proxies;
//! - in the `C.UTF-8` locale (`LC_ALL=C.UTF-8`): messages are svn's untranslated
//!   English, which is what a log reader and a search engine need, and file names are
//!   UTF-8. The plain C locale is not enough: svn converts a local repository's own
//!   directory path to the locale's encoding, so `file:///srv/répo` fails to open in
//!   it. (svn's XML is UTF-8 whatever the locale, and the URL is made pure ASCII
//!   beforehand, see `location.rs`, so even a system without `C.UTF-8`, where svn
//!   warns and falls back to C, only fails for such local paths.)
//! - through polld's one child-process runner (`polld_backend::process`): a scrubbed
//!   environment (no daemon secret reaches svn or its `ssh`), its own process group
//!   killed whole (an `svn+ssh` tunnel included) at the deadline (the poller's `timeout`, 120 s by default) or
//!   when the poll is dropped, and bounded output. So a server that accepts and never
//!   answers cannot stall a poller forever. Server certificate failures are never
//!   waved through (`--trust-server-cert-failures` is not used).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use polld_backend::process::Command;

use crate::LogContext;
use crate::error::SvnError;

/// What svn needs to log in; the password is read from the environment at each poll.
#[derive(Clone, Default)]
pub(crate) struct Login {
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Svn {
    pub(crate) config_dir: PathBuf,
    pub(crate) timeout: Duration,
    /// The poller's `ca_file`: trusted as svn's `ssl-authority-files`, which svn adds
    /// to the system's certificates (`ssl-trust-default-ca` stays on).
    pub(crate) ca_file: Option<PathBuf>,
}

impl Svn {
    /// Runs `svn <command>` with the fixed options above, then `options`, then `-- target`;
    /// returns its stdout when it exits 0. An svn that prints more than `max_stdout`
    /// bytes is killed (`ProcessError::TooMuchOutput`).
    pub(crate) async fn run(
        &self,
        command: &'static str,
        options: &[String],
        target: &str,
        max_stdout: usize,
        login: &Login,
        log: &LogContext<'_>,
    ) -> Result<Vec<u8>, SvnError> {
        self.ensure_config_dir().await?;
        let mut cmd = Command::new("svn")
            .arg(command)
            .args([
                "--xml",
                "--non-interactive",
                "--no-auth-cache",
                "--config-dir",
            ])
            .arg(&self.config_dir);
        if let Some(ca_file) = &self.ca_file {
            let mut option = OsString::from("servers:global:ssl-authority-files=");
            option.push(ca_file);
            cmd = cmd.arg("--config-option").arg(option);
        }
        if let Some(username) = &login.username {
            cmd = cmd.arg(format!("--username={username}"));
        }
        if let Some(password) = &login.password {
            // svn reads one line from stdin.
            cmd = cmd
                .arg("--password-from-stdin")
                .stdin(format!("{password}\n"));
        }
        let cmd = cmd
            .args(options)
            .arg("--")
            .arg(target)
            .env("LC_ALL", "C.UTF-8")
            .timeout(self.timeout)
            .max_stdout(max_stdout);

        let started = Instant::now();
        let output = cmd
            .output()
            .await
            .map_err(|error| SvnError::run(command, self.timeout, error))?;
        tracing::debug!(
            poller = log.poller,
            repo = log.repo,
            command,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            stdout_bytes = output.stdout.len(),
            ok = output.status.success(),
            "svn finished"
        );
        if !output.status.success() {
            return Err(SvnError::failed(command, output.status, &output.stderr));
        }
        Ok(output.stdout)
    }

    /// Creates the private config dir (0700) if it is missing; svn fills it itself.
    async fn ensure_config_dir(&self) -> Result<(), SvnError> {
        let mut builder = tokio::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        builder.mode(0o700);
        builder
            .create(&self.config_dir)
            .await
            .map_err(|source| SvnError::ConfigDir {
                path: self.config_dir.display().to_string(),
                source,
            })
    }
}
