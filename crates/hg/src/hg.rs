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
//! - polld's one child-process runner (`polld_backend::process`): a scrubbed
//!   environment, a deadline, its process group killed when the deadline passes and
//!   when the poll is dropped (so an `ssh` child dies with its `hg`), bounded output.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use polld_backend::process::{Command, ProcessError, stderr_excerpt};
use tokio::io::AsyncWriteExt as _;

use crate::error::HgError;

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
    /// Where the rc files that carry a password live while a command runs: the state
    /// directory's secrets directory, emptied when polld starts, so a crash (`kill -9`
    /// during a pull) leaves none behind for long.
    pub(crate) secrets_dir: PathBuf,
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
        // The runner passes none of the daemon's environment but the basics, so no
        // `HG*` variable of the user's reaches hg either.
        let output = Command::new("hg")
            .env("HGRCPATH", rc_path)
            .env("HGRCSKIPREPO", "1")
            .env("HGPLAIN", "1")
            .env("HGENCODING", "utf-8")
            .env("HGENCODINGMODE", "replace")
            .current_dir(&self.workdir)
            .args(&args)
            .timeout(timeout)
            .output()
            .await
            .map_err(|error| match error {
                ProcessError::Spawn { source, .. } => HgError::Spawn { command, source },
                ProcessError::Timeout { .. } => HgError::Timeout {
                    command,
                    after: timeout,
                },
                source => HgError::Run { command, source },
            })?;
        drop(secret_file);
        if !output.status.success() {
            return Err(HgError::Failed {
                command,
                status: output.status.to_string(),
                stderr: stderr_excerpt(&output.stderr),
            });
        }
        Ok(output.stdout)
    }

    async fn secret_rc_file(&self, extra: &str) -> Result<tempfile::NamedTempFile, HgError> {
        let io = |source| HgError::mirror(Path::new("(private rc with credentials)"), source);
        let mut builder = tokio::fs::DirBuilder::new();
        builder.recursive(true).mode(0o700);
        builder.create(&self.secrets_dir).await.map_err(io)?;
        // Created 0600, deleted on drop.
        let file = tempfile::Builder::new()
            .prefix("hg-auth-")
            .tempfile_in(&self.secrets_dir)
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
