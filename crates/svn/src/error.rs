//! Why an svn poll failed.
//!
//! svn's own stderr is kept (trimmed and bounded) because it is what a user can act on
//! (`E170001: Authentication error from server: Password incorrect`); but svn echoes
//! URLs, so every message goes through [`SvnError::into_poll_error`], which scrubs the
//! configured repo's credentials and the password before the text leaves this crate.

use std::time::Duration;

use polld_backend::process::{ProcessError, stderr_excerpt};
use polld_backend::{PollError, one_line, redact};

#[derive(Debug, thiserror::Error)]
pub(crate) enum SvnError {
    #[error("environment variable {0} (password_env) is not set or not valid UTF-8")]
    MissingPassword(String),
    #[error("cannot create svn's private config directory {path}: {source}")]
    ConfigDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot run `svn {command}` (is Subversion's svn client installed?): {source}")]
    Spawn {
        command: &'static str,
        source: std::io::Error,
    },
    #[error("`svn {command}`: {source}")]
    Run {
        command: &'static str,
        source: ProcessError,
    },
    #[error("`svn {command}` failed ({status}): {stderr}")]
    Failed {
        command: &'static str,
        status: String,
        stderr: String,
    },
    #[error("`svn {command}` did not finish within {}s: the repository stopped answering", .timeout.as_secs())]
    Timeout {
        command: &'static str,
        timeout: Duration,
    },
    #[error("`svn {command}` printed XML polld cannot read: {message}")]
    Xml {
        command: &'static str,
        message: String,
    },
    #[error("`svn info` says the URL {url} is not inside the repository root {root}")]
    NotUnderRoot { url: String, root: String },
    #[error(
        "`svn log` returned revision {got} out of order (expected a revision in {from}..={to} after {after})"
    )]
    LogOrder {
        got: u64,
        from: u64,
        to: u64,
        after: u64,
    },
    /// The server refused the credentials (the cheap check's; `svn` reports its own
    /// as [`SvnError::Failed`]).
    #[error("Authentication failed over {via}: {message}")]
    Authentication { via: &'static str, message: String },
    #[error(
        "the server asks for a login over {via} and none is configured \
         (set username and password_env)"
    )]
    LoginNeeded { via: &'static str },
    #[error("the {via} check did not finish within {}s: the repository stopped answering", .timeout.as_secs())]
    CheckTimeout {
        via: &'static str,
        timeout: Duration,
    },
    #[error("ca_file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("cannot set up the HTTP client of the cheap check: {0}")]
    HttpClient(String),
    #[error("the stored cursor is not an svn cursor: {0}")]
    BadCursor(#[source] serde_json::Error),
}

impl SvnError {
    /// Why an `svn` run did not finish.
    pub(crate) fn run(command: &'static str, timeout: Duration, error: ProcessError) -> SvnError {
        match error {
            ProcessError::Spawn { source, .. } => SvnError::Spawn { command, source },
            ProcessError::Timeout { .. } => SvnError::Timeout { command, timeout },
            source => SvnError::Run { command, source },
        }
    }

    /// A failed svn run, with the useful part of its stderr.
    pub(crate) fn failed(
        command: &'static str,
        status: std::process::ExitStatus,
        stderr: &[u8],
    ) -> SvnError {
        let status = match status.code() {
            Some(code) => format!("exit code {code}"),
            None => "killed by a signal".to_owned(),
        };
        SvnError::Failed {
            command,
            status,
            stderr: stderr_excerpt(stderr),
        }
    }

    pub(crate) fn xml(command: &'static str, message: impl std::fmt::Display) -> SvnError {
        SvnError::Xml {
            command,
            message: message.to_string(),
        }
    }

    /// The error as the core reports it: `repo`'s userinfo and the password scrubbed.
    pub(crate) fn into_poll_error(self, repo: &str, password: Option<&str>) -> PollError {
        let message = redact::scrub(&one_line(&self), repo);
        PollError::new(match password {
            Some(password) => redact::hide(&message, password),
            None => message,
        })
    }
}
