//! The seam between the core and a version-control system.
//!
//! A backend turns its own config keys into a [`Poller`]; a poller, given the cursor it
//! returned last time, lists the remote's state and reports what is new. Backends know
//! nothing of scheduling, storage or delivery; the core knows nothing of any VCS.
//!
//! The README's "Writing a backend" guide, compiled here so it stays true:
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use polld_core::{Backend, Cursor, PollError, PollOutcome, Poller, PollerContext, Refusal};
//!
//! pub struct MyBackend;
//!
//! /// Only this backend's keys: the core has already taken name, type, repo, timing,
//! /// project, category, codebase, revlink and properties.
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! pub struct MyConfig { branches: Option<Vec<String>> }
//!
//! impl Backend for MyBackend {
//!     const TYPE: &'static str = "myvcs";          // the `type` key and the record's `vcs`
//!     type Config = MyConfig;
//!     fn build(&self, context: PollerContext, config: MyConfig) -> Result<Arc<dyn Poller>, Refusal> {
//!         // Validate what serde cannot. Refusal::at("repo", "...") becomes
//!         // `file:line:col: poller `x`: ...` at the repo key; a plain String points at `type`.
//!         Ok(Arc::new(MyPoller { context, config }))
//!     }
//! }
//!
//! struct MyPoller { context: PollerContext, config: MyConfig }
//!
//! #[async_trait]
//! impl Poller for MyPoller {
//!     async fn poll(&self, cursor: Option<&Cursor>) -> Result<PollOutcome, PollError> {
//!         // 1. Ask the remote for its state as cheaply as possible.
//!         // 2. Same as `cursor`? Return PollOutcome::Unchanged (nothing is written).
//!         // 3. First poll (cursor is None)? Return the new cursor and no changes.
//!         // 4. Otherwise return the new cursor and the new changes, oldest first.
//!         let cursor = Cursor::from_state(&"new state").map_err(PollError::new)?;
//!         Ok(PollOutcome::Advanced { cursor, changes: vec![] })
//!     }
//!     fn describe(&self) -> String { "branches default".into() }
//! }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::model::{Cursor, NewChange};

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
}

/// Why a poll failed. The cursor does not move; the scheduler backs off and retries.
#[derive(Debug)]
pub struct PollError(Box<dyn std::error::Error + Send + Sync>);

impl PollError {
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        PollError(error.into())
    }
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
    fn build(
        &self,
        context: PollerContext,
        config: Self::Config,
    ) -> Result<Arc<dyn Poller>, Refusal>;
}

/// A backend with its config type erased, so the registry can hold any of them.
pub(crate) trait ErasedBackend: Send + Sync {
    fn build(
        &self,
        context: PollerContext,
        keys: toml::de::ValueDeserializer<'_>,
    ) -> Result<Arc<dyn Poller>, BuildError>;
}

/// Why a backend refused a poller's keys.
pub(crate) enum BuildError {
    /// Serde's complaint, with the span of the offending key or value.
    Keys(toml::de::Error),
    /// The backend's own validation.
    Invalid(Refusal),
}

impl<B: Backend> ErasedBackend for B {
    fn build(
        &self,
        context: PollerContext,
        keys: toml::de::ValueDeserializer<'_>,
    ) -> Result<Arc<dyn Poller>, BuildError> {
        let config = B::Config::deserialize(keys).map_err(BuildError::Keys)?;
        Backend::build(self, context, config).map_err(BuildError::Invalid)
    }
}

/// The backends this binary knows, by `type` name. The binary fills it, one line each.
#[derive(Default, Clone)]
pub struct Registry {
    backends: BTreeMap<&'static str, Arc<dyn ErasedBackend>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a backend under its [`Backend::TYPE`].
    pub fn register<B: Backend>(&mut self, backend: B) -> &mut Self {
        self.backends.insert(B::TYPE, Arc::new(backend));
        self
    }

    /// The registered type names, sorted: for error messages.
    pub fn types(&self) -> Vec<&'static str> {
        self.backends.keys().copied().collect()
    }

    pub(crate) fn get(&self, type_name: &str) -> Option<(&'static str, &Arc<dyn ErasedBackend>)> {
        self.backends.get_key_value(type_name).map(|(k, v)| (*k, v))
    }
}
