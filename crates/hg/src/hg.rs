//! Running the `hg` client: isolated from the user's configuration, bounded in time.
//!
//! Every command gets
//! - `HGRCPATH` = polld's private rc (see [`Mirror`](crate::mirror::Mirror)), so no
//!   user or system hgrc applies: no extensions but polld's own, no hooks, no pager,
//!   no `[paths]` aliases, no `[auth]` but polld's;
//! - `HGRCSKIPREPO=1`, so no repository's `.hg/hgrc` is read either (a local remote's
//!   hooks and extensions must not run in polld);
//! - `HGPLAIN=1` and `HGENCODING=utf-8`, for output that does not depend on the locale;
//! - its arguments as a vector (no shell), user strings only after `--` or as the
//!   value of an option;
//! - a timeout: the process group is killed when it passes, and when the poll is
//!   dropped (so an `ssh` child dies with its `hg`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

use crate::error::{self, HgError};

/// One hg invocation.
pub(crate) struct Invocation<'a> {
    /// The hg subcommand, for messages (`pull`, `log`, ...).
    pub(crate) command: &'static str,
    pub(crate) args: Vec<OsString>,
    pub(crate) timeout: Duration,
    /// Extra rc text for this invocation only (an `[auth]` section): written to a
    /// private 0600 temp file that is deleted when the command ends.
    pub(crate) secret_rc: Option<&'a str>,
}

/// The private configuration every invocation runs with.
#[derive(Debug, Clone)]
pub(crate) struct Hg {
    /// The rc file (HGRCPATH).
    pub(crate) rc: PathBuf,
    /// Its text, copied into a secret rc so that one file is the whole config.
    pub(crate) rc_text: String,
    /// The working directory: a directory polld owns, so that no repository is found
    /// by walking up from the daemon's own working directory.
    pub(crate) workdir: PathBuf,
}

impl Hg {
    /// Runs hg and returns its stdout; a non-zero exit is an error carrying stderr.
    pub(crate) async fn run(&self, invocation: Invocation<'_>) -> Result<Vec<u8>, HgError> {
        let Invocation {
            command,
            args,
            timeout,
            secret_rc,
        } = invocation;
        let secret_file = match secret_rc {
            Some(extra) => Some(self.secret_rc_file(extra).await?),
            None => None,
        };
        let rc_path: &Path = secret_file.as_ref().map_or(&self.rc, |f| f.path());

        let mut cmd = Command::new("hg");
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("HG") || key_text.starts_with("CHG") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("HGRCPATH", rc_path)
            .env("HGRCSKIPREPO", "1")
            .env("HGPLAIN", "1")
            .env("HGENCODING", "utf-8")
            .env("HGENCODINGMODE", "replace")
            .current_dir(&self.workdir)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|source| HgError::Spawn { command, source })?;
        let group = GroupGuard(child.id());
        let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(result) => result.map_err(|source| HgError::Spawn { command, source })?,
            Err(_) => {
                return Err(HgError::Timeout {
                    command,
                    after: timeout,
                });
            }
        };
        group.disarm();
        drop(secret_file);
        if !output.status.success() {
            return Err(HgError::Failed {
                command,
                status: output.status.to_string(),
                stderr: error::stderr_text(&output.stderr),
            });
        }
        Ok(output.stdout)
    }

    async fn secret_rc_file(&self, extra: &str) -> Result<tempfile::NamedTempFile, HgError> {
        let io = |source| HgError::mirror(Path::new("(private temp rc)"), source);
        // tempfile creates it 0600 in the system temp dir, not in the state dir, and
        // deletes it on drop.
        let file = tempfile::Builder::new()
            .prefix("polld-hg-auth-")
            .tempfile()
            .map_err(io)?;
        let mut writer = tokio::fs::File::from_std(file.reopen().map_err(io)?);
        writer
            .write_all(format!("{}\n{extra}", self.rc_text).as_bytes())
            .await
            .map_err(io)?;
        writer.flush().await.map_err(io)?;
        Ok(file)
    }
}

/// Kills the child's whole process group unless disarmed: on a timeout and when the
/// poll future is dropped mid-command. `kill_on_drop` alone would leave an `ssh`
/// grandchild behind.
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|pid| i32::try_from(pid).ok())
            && pid > 0
        {
            // SAFETY: kill(2) on the process group our own child leads (it was
            // started with process_group(0) and has not been reaped yet).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}
