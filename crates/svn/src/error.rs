//! Why an svn poll failed.
//!
//! svn's own stderr is kept (trimmed and bounded) because it is what a user can act on
//! (`E170001: Authentication error from server: Password incorrect`); but svn echoes
//! URLs, so every message goes through [`SvnError::into_poll_error`], which scrubs the
//! configured repo's credentials and the password before the text leaves this crate.

use std::time::Duration;

use polld_core::PollError;
use polld_core::redact;

/// At most this much of svn's stderr goes into an error: enough for svn's error chain,
/// not enough for a misbehaving server to flood the log and the status output.
const MAX_STDERR: usize = 2000;

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
    #[error("the stored cursor is not an svn cursor: {0}")]
    BadCursor(#[source] serde_json::Error),
}

impl SvnError {
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
            stderr: bounded_stderr(stderr),
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
        PollError::new(scrub(&self.to_string(), repo, password))
    }
}

/// [`redact::scrub`], and the password itself wherever it still appears.
pub(crate) fn scrub(text: &str, repo: &str, password: Option<&str>) -> String {
    let scrubbed = redact::scrub(text, repo);
    match password {
        Some(password) if !password.is_empty() => scrubbed.replace(password, "***"),
        _ => scrubbed,
    }
}

/// svn's stderr on one line: lines trimmed and joined with `; `, cut at
/// [`MAX_STDERR`] bytes (on a character boundary).
fn bounded_stderr(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut joined = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if joined.is_empty() {
        return "no message on stderr".to_owned();
    }
    if joined.len() > MAX_STDERR {
        let mut cut = MAX_STDERR;
        while !joined.is_char_boundary(cut) {
            cut -= 1;
        }
        joined.truncate(cut);
        joined.push_str(" [...]");
    }
    joined
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_one_bounded_line() {
        assert_eq!(
            bounded_stderr(
                b"svn: E170013: Unable to connect\nsvn: E170001: Password incorrect\n\n"
            ),
            "svn: E170013: Unable to connect; svn: E170001: Password incorrect"
        );
        assert_eq!(bounded_stderr(b"  \n"), "no message on stderr");
        let long = "é".repeat(3000);
        let cut = bounded_stderr(long.as_bytes());
        assert!(
            cut.len() <= MAX_STDERR + 6 && cut.ends_with(" [...]"),
            "{cut}"
        );
    }

    #[test]
    fn scrubs_userinfo_and_password() {
        let repo = "svn://ada:s3cret@svn.example/repo";
        assert_eq!(
            scrub("cannot reach svn://ada:s3cret@svn.example/repo", repo, None),
            "cannot reach svn://svn.example/repo"
        );
        assert_eq!(
            scrub("password hunter2 rejected", "/srv/r", Some("hunter2")),
            "password *** rejected"
        );
        assert_eq!(scrub("fine", "/srv/r", Some("")), "fine");
    }
}
