//! Why a git poll failed.
//!
//! libgit2's messages are kept (without its class/code suffix) because they are what
//! a user can act on; but libgit2 echoes URLs, so every message is scrubbed
//! ([`PollError::scrubbed`]) before it leaves this crate.

use polld_backend::PollError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum GitError {
    #[error("environment variable {0} (password_env) is not set or not valid UTF-8")]
    MissingPassword(String),
    #[error("repository path {0} does not exist or is not a directory")]
    NoSuchPath(String),
    #[error("cannot list the remote's refs: {0}")]
    ListRefs(String),
    /// The failure of a listing another poller of the same remote made.
    #[error("{0}")]
    Shared(String),
    #[error("cannot fetch {refs} ref(s) into the mirror: {message}")]
    Fetch { refs: usize, message: String },
    #[error(
        "{name} moved on the remote between listing and fetching ({oid} was not fetched); \
         the next poll will pick it up"
    )]
    Raced { name: String, oid: String },
    #[error("mirror {path}: {message}")]
    Mirror { path: String, message: String },
    #[error("reading history of {name}: {message}")]
    History { name: String, message: String },
    #[error("the stored cursor is not a git cursor: {0}")]
    BadCursor(#[source] serde_json::Error),
    #[error("the stored cursor has an invalid object id {hex:?} for {name}")]
    BadCursorOid { name: String, hex: String },
    #[error("the git task did not finish: {0}")]
    Task(String),
}

impl GitError {
    pub(crate) fn mirror(path: &std::path::Path, error: impl ErrorMessage) -> GitError {
        GitError::Mirror {
            path: path.display().to_string(),
            message: error.message(),
        }
    }

    pub(crate) fn history(name: &str, error: &git2::Error) -> GitError {
        GitError::History {
            name: name.to_owned(),
            message: error.message().to_owned(),
        }
    }

    /// The error as the core reports it, with `repo`'s credentials scrubbed.
    pub(crate) fn into_poll_error(self, repo: &str) -> PollError {
        PollError::scrubbed(&self, repo)
    }
}

/// The useful part of an error's text: libgit2's message without `; class=...`.
pub(crate) trait ErrorMessage {
    fn message(&self) -> String;
}

impl ErrorMessage for &git2::Error {
    fn message(&self) -> String {
        git2::Error::message(self).to_owned()
    }
}

impl ErrorMessage for git2::Error {
    fn message(&self) -> String {
        git2::Error::message(self).to_owned()
    }
}

impl ErrorMessage for std::io::Error {
    fn message(&self) -> String {
        self.to_string()
    }
}
