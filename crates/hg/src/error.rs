//! Why an hg poll failed.
//!
//! hg's own message (its stderr, trimmed and bounded) is kept because it is what a user
//! can act on ("abort: repository ... not found", "abort: HTTP Error 401"). polld never
//! hands hg a URL with credentials in it, but every message is still scrubbed
//! ([`PollError::scrubbed`]) before it leaves this crate.

use std::time::Duration;

use polld_backend::PollError;
use polld_backend::process::ProcessError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HgError {
    #[error("cannot run `hg {command}` (is Mercurial installed and on PATH?): {source}")]
    Spawn {
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`hg {command}` failed ({status}): {stderr}")]
    Failed {
        command: &'static str,
        status: String,
        stderr: String,
    },
    #[error("`hg {command}`: {source}")]
    Run {
        command: &'static str,
        source: ProcessError,
    },
    #[error(
        "`hg {command}` did not finish within {after:?} (the poller's `timeout`); it was killed"
    )]
    Timeout {
        command: &'static str,
        after: Duration,
    },
    #[error("`hg {command}` printed something polld cannot read: {detail}")]
    Output {
        command: &'static str,
        detail: String,
    },
    /// The http check's client could not be built (an unreadable `ca_file`).
    #[error("{0}")]
    HttpSetup(String),
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    #[error("GET {url}: the server answered {status}, not a Mercurial wire-protocol reply")]
    NotMercurial { url: String, status: String },
    #[error("the remote's {what} answer is malformed: {detail}")]
    Protocol { what: &'static str, detail: String },
    #[error("environment variable {0} (password_env) is not set or not valid UTF-8")]
    MissingPassword(String),
    #[error(
        "the http credentials contain a line break or leading/trailing whitespace, \
         which an hgrc cannot carry"
    )]
    UnusableCredentials,
    #[error("mirror {path}: {source}")]
    Mirror {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the mirror path {0} contains ':', which HGRCPATH cannot carry")]
    MirrorPath(String),
    #[error("the stored cursor is not an hg cursor: {0}")]
    BadCursor(#[source] serde_json::Error),
    #[error("the stored cursor has an invalid changeset hash {node:?} for {name}")]
    BadCursorNode { name: String, node: String },
}

impl HgError {
    pub(crate) fn mirror(path: &std::path::Path, source: std::io::Error) -> HgError {
        HgError::Mirror {
            path: path.display().to_string(),
            source,
        }
    }

    /// The error as the core reports it, with `repo`'s credentials scrubbed.
    pub(crate) fn into_poll_error(self, repo: &str) -> PollError {
        PollError::scrubbed(&self, repo)
    }
}
