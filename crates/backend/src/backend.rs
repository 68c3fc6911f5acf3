//! The seam between the core and a version-control system.
//!
//! A backend turns its own config keys into a [`Poller`]; a poller, given the cursor it
//! returned last time, lists the remote's state and reports what is new. Backends know
//! nothing of scheduling, storage or delivery; the core knows nothing of any VCS.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::filter::PathFilter;
use crate::model::{Cursor, NewChange};

/// The checks every backend's `repo` passes before it is parsed (the core makes them
/// before any backend sees the key; backends make them again for callers that build
/// pollers directly): not empty, not something a VCS client would read as an option
/// (`-...`), no control characters (which would break a command line, an rc file or a
/// log line).
pub fn check_repo(repo: &str) -> Result<(), String> {
    if repo.trim().is_empty() {
        return Err("repo must not be empty".into());
    }
    if repo.starts_with('-') {
        return Err(
            "repo must not start with `-`: it would be read as a command-line option".into(),
        );
    }
    if repo.chars().any(char::is_control) {
        return Err("repo must not contain control characters".into());
    }
    Ok(())
}

/// A config value that is one string or a list of strings: `branches = "*"` means the
/// same as `branches = ["*"]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringList(pub Vec<String>);

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;

        impl<'de> serde::de::Visitor<'de> for ListVisitor {
            type Value = StringList;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: serde::de::Error>(self, one: &str) -> Result<StringList, E> {
                Ok(StringList(vec![one.to_owned()]))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<StringList, A::Error> {
                let mut all = Vec::new();
                while let Some(one) = seq.next_element::<String>()? {
                    all.push(one);
                }
                Ok(StringList(all))
            }
        }

        deserializer.deserialize_any(ListVisitor)
    }
}

/// What a poller learnt from one poll.
#[derive(Debug, Clone, PartialEq)]
pub enum PollOutcome {
    /// The remote is exactly where the cursor says: nothing to store, nothing to send.
    Unchanged,
    /// The remote moved. `changes` are oldest first; storing `cursor` and queueing
    /// `changes` happen in one transaction, so either both happen or neither does.
    Advanced {
        cursor: Cursor,
        changes: Vec<NewChange>,
    },
    /// The remote moved further than one poll reports (more than
    /// [`crate::limits::MAX_CHANGES_PER_POLL`] new changes): `changes` are the oldest,
    /// `cursor` is just past them, and the core polls again at once for the rest. So a
    /// poll's memory does not grow with a push of a million commits.
    Partial {
        cursor: Cursor,
        changes: Vec<NewChange>,
    },
}

/// Why a poll failed. The cursor does not move; the scheduler backs off and retries.
#[derive(Debug)]
pub struct PollError(Box<dyn std::error::Error + Send + Sync>);

impl PollError {
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        PollError(error.into())
    }

    /// `error` on one line with `repo`'s credentials scrubbed: how a backend reports a
    /// failure.
    pub fn scrubbed(error: &dyn std::error::Error, repo: &str) -> Self {
        PollError::new(crate::redact::scrub(&one_line(error), repo))
    }
}

/// `error` and its causes on one line, a cause already in the text not said twice: a
/// failure streak is logged once, so that line must say everything.
pub fn one_line(error: &dyn std::error::Error) -> String {
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

impl fmt::Display for PollError {
    /// The whole cause chain on one line: a failure streak is logged once, so that line
    /// must say everything.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl std::error::Error for PollError {}

/// What every poller gets from the core besides its own keys.
#[derive(Debug, Clone)]
pub struct PollerContext {
    /// The poller's unique name.
    pub name: String,
    /// The `repo` string exactly as configured (may carry credentials: never log it).
    pub repo: String,
    /// The config file's directory: relative paths in the config are relative to it.
    pub config_dir: PathBuf,
    /// A directory this poller owns for local copies (`<state_dir>/mirrors/<name>`).
    /// It is not created in advance.
    pub mirror_dir: PathBuf,
    /// A directory for files that must not outlive the process (a password handed to a
    /// client in a file): owner-only, emptied when polld starts, so nothing secret
    /// survives a crash. It is not created in advance.
    pub secrets_dir: PathBuf,
    /// The deadline for each remote operation of a poll (listing, fetch or pull, log),
    /// from its start to its end, not per read: the poller's `timeout` key.
    pub timeout: Duration,
    /// A PEM bundle to trust for TLS in addition to the system's certificates (the
    /// poller's `ca_file` key, resolved against the config's directory; the core has
    /// checked that it holds certificates).
    pub ca_file: Option<PathBuf>,
    /// The poller's `paths` and `ignore_paths`. Read files into
    /// [`crate::limits::Files::filtered`] with it, so the core can judge a commit by
    /// all its files even when the change keeps only the first ones; the core decides.
    pub paths: Arc<PathFilter>,
}

impl PollerContext {
    /// How long a remote operation may take when the config does not say.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

    /// The context the core gives a poller named `name` on `repo` with the state in
    /// `state_dir` and no `timeout` or `ca_file` configured. For tools and tests that
    /// build pollers directly; set other fields with `..PollerContext::new(...)`.
    pub fn new(
        name: impl Into<String>,
        repo: impl Into<String>,
        config_dir: impl Into<PathBuf>,
        state_dir: &Path,
    ) -> PollerContext {
        let name = name.into();
        PollerContext {
            repo: repo.into(),
            config_dir: config_dir.into(),
            mirror_dir: state_dir.join("mirrors").join(&name),
            secrets_dir: state_dir.join("secrets").join(&name),
            timeout: PollerContext::DEFAULT_TIMEOUT,
            ca_file: None,
            paths: Arc::default(),
            name,
        }
    }
}

/// One configured poller, ready to poll.
#[async_trait]
pub trait Poller: Send + Sync + 'static {
    /// Lists the remote and diffs it against `cursor` (`None` on the first poll, which
    /// must record the remote's state and report no changes).
    async fn poll(&self, cursor: Option<&Cursor>) -> Result<PollOutcome, PollError>;

    /// One short line for `polld check`, e.g. `branches main, release/*`.
    fn describe(&self) -> String;
}

/// Why a backend refused a poller's keys. The core turns it into
/// `file:line:col: poller `name`: message`, at the key it names (or at `type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The key the problem is about, e.g. `"repo"`; `None` points at the poller's `type`.
    pub key: Option<&'static str>,
    pub message: String,
}

impl Refusal {
    /// A problem with one key's value.
    pub fn at(key: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            key: Some(key),
            message: message.into(),
        }
    }
}

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Refusal { key: None, message }
    }
}

impl From<&str> for Refusal {
    fn from(message: &str) -> Self {
        Refusal::from(message.to_owned())
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A version-control system that polld can watch.
pub trait Backend: Send + Sync + 'static {
    /// The poller's `type` key, e.g. `"git"`; also the change record's `vcs` field.
    const TYPE: &'static str;
    /// This backend's own poller keys. Use `#[serde(deny_unknown_fields)]`: together with
    /// the core's keys they are all a `[[poller]]` table may hold.
    type Config: DeserializeOwned;

    /// Checks what serde cannot and builds the poller. The core adds the file, line and
    /// column of the key the [`Refusal`] names (a plain `String` converts: at `type`).
    ///
    /// Keep it cheap and free of I/O: `polld check` and every reload build each poller
    /// to validate it. Open connections and clients on the first poll instead.
    fn build(
        &self,
        context: PollerContext,
        config: Self::Config,
    ) -> Result<Arc<dyn Poller>, Refusal>;
}
