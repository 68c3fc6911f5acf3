//! Why an hg poll failed.
//!
//! hg's own message (its stderr, trimmed and bounded) is kept because it is what a user
//! can act on ("abort: repository ... not found", "abort: HTTP Error 401"). polld never
//! hands hg a URL with credentials in it, but every message still goes through
//! [`polld_core::redact::scrub`] before it leaves this crate.

use std::time::Duration;

use polld_core::PollError;
use polld_core::redact;

/// At most this much of a command's stderr goes into an error.
const STDERR_LIMIT: usize = 2000;

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
    #[error("`hg {command}` did not finish within {after:?}; it was killed")]
    Timeout {
        command: &'static str,
        after: Duration,
    },
    #[error("`hg {command}` printed something polld cannot read: {detail}")]
    Output {
        command: &'static str,
        detail: String,
    },
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
        PollError::new(scrub(&full_message(&self), repo))
    }
}

/// The message and its whole source chain on one line.
fn full_message(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// [`redact::scrub`], plus the password of a URL's userinfo wherever else it appears.
pub(crate) fn scrub(text: &str, repo: &str) -> String {
    let scrubbed = redact::scrub(text, repo);
    match url_password(repo) {
        Some(password) if !password.is_empty() => scrubbed.replace(password, "***"),
        _ => scrubbed,
    }
}

fn url_password(repo: &str) -> Option<&str> {
    let rest = &repo[repo.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, password)| password)
}

/// hg's stderr as it goes into an error: lossily decoded, trimmed, its last
/// [`STDERR_LIMIT`] bytes at most (hg prints the `abort:` line last).
pub(crate) fn stderr_text(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.len() <= STDERR_LIMIT {
        return text.replace('\n', " | ");
    }
    let mut start = text.len() - STDERR_LIMIT;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", text[start..].replace('\n', " | "))
}

/// An error's text with its sources, for `reqwest` errors whose useful part (connection
/// refused, timed out) is in the chain.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    full_message(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_credentials_and_bounds_stderr() {
        let repo = "https://ada:s3cret@hg.example/app";
        assert_eq!(
            scrub("abort: https://ada:s3cret@hg.example/app: s3cret", repo),
            "abort: https://hg.example/app: ***"
        );
        assert_eq!(scrub("plain", "/srv/app"), "plain");
        assert_eq!(
            stderr_text(b"  abort: no\nhint: x \n"),
            "abort: no | hint: x"
        );
        let long = "é".repeat(3000);
        let bounded = stderr_text(long.as_bytes());
        assert!(bounded.starts_with("...") && bounded.len() <= STDERR_LIMIT + 3);
    }
}
