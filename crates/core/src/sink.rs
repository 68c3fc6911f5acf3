//! Where changes go once they are safely queued.
//!
//! A sink type ([`SinkType`], one per `[sink] type`) turns the `[sink]` table's keys
//! into a [`Sink`]. The delivery loop hands the sink changes in outbox order and deletes
//! from the outbox exactly what it acknowledged, so a change leaves the store only after
//! its sink has it. Sink types live outside the core (`polld-sinks`, or a crate of your
//! own) and are registered in the binary, one line each, like backends.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use polld_backend::Refusal;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::model::Change;

/// A destination for change records.
///
/// The delivery loop may call [`Sink::deliver`] again before an earlier call returned
/// (up to [`Sink::max_in_flight`] at once), never with two batches of the same poller
/// at once: each poller's changes arrive in order.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Delivers `changes` in order. `Ok` acknowledges them all; a failure says how many
    /// of the first ones were acknowledged before it and why the next one was not.
    async fn deliver(&self, changes: &[Change]) -> Result<(), SinkFailure>;

    /// The most changes one [`Sink::deliver`] call should get. The outbox is settled
    /// after each call, so a sink that acknowledges change by change (one HTTP request
    /// each) says 1: a crash then re-sends at most the change in flight. Sinks that
    /// write a batch at once (a file, a pipe) keep the default.
    fn max_batch(&self) -> usize {
        256
    }

    /// How many [`Sink::deliver`] calls may run at once (for different pollers). One
    /// for a sink that writes one stream; more for a receiver that serves requests in
    /// parallel, so that a slow answer for one poller's change does not hold up another.
    fn max_in_flight(&self) -> usize {
        1
    }
}

/// A delivery that stopped part-way.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkFailure {
    /// How many changes, from the start of the batch, were acknowledged.
    pub acknowledged: usize,
    pub error: SinkError,
}

/// Why a change was not acknowledged: the three answers the delivery loop acts on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SinkError {
    /// The sink cannot take anything now (connection refused, no such host, a full
    /// disk): every poller's changes wait, with one backoff, logged once.
    #[error("{0}")]
    Unreachable(String),
    /// This change was not taken now (the receiver answered 5xx or 429, or did not
    /// answer in time): its poller's changes wait and retry with backoff, in order;
    /// other pollers' go on.
    #[error("{0}")]
    Retry(String),
    /// The sink will never take this change: dead-letter it so it blocks nothing.
    #[error("{0}")]
    Refused(String),
}

/// What every sink gets from the core besides its own keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkContext {
    /// The config file's directory: relative paths in `[sink]` are relative to it.
    pub config_dir: PathBuf,
}

/// A kind of sink polld can deliver to, named by `[sink] type`.
pub trait SinkType: Send + Sync + 'static {
    /// The `[sink] type` value, e.g. `"webhook"`.
    const TYPE: &'static str;
    /// This sink's own keys (everything in `[sink]` but `type`). Use
    /// `#[serde(deny_unknown_fields)]`.
    type Config: DeserializeOwned;

    /// Checks what serde cannot (URLs, header names, paths) when the config is loaded,
    /// so that `polld check` refuses it with the key's line and column. Cheap: no
    /// network, no client.
    fn check(&self, context: &SinkContext, config: &Self::Config) -> Result<(), Refusal>;

    /// Opens the sink for delivery. Sinks connect lazily: a receiver that is down is a
    /// delivery failure to retry, not an error here.
    fn open(&self, context: &SinkContext, config: Self::Config) -> Result<Arc<dyn Sink>, String>;
}

/// A sink type with its config type erased, so the registry can hold any of them.
trait ErasedSinkType: Send + Sync {
    fn check(
        &self,
        context: &SinkContext,
        keys: toml::de::ValueDeserializer<'_>,
    ) -> Result<(), KeysError>;
    fn open(&self, context: &SinkContext, keys: &toml::Table) -> Result<Arc<dyn Sink>, String>;
}

/// Why a table of keys was refused: serde's complaint (with the span of the offending
/// key or value), or the plugin's own check.
#[derive(Debug)]
pub(crate) enum KeysError {
    Keys(toml::de::Error),
    Invalid(Refusal),
}

impl<S: SinkType> ErasedSinkType for S {
    fn check(
        &self,
        context: &SinkContext,
        keys: toml::de::ValueDeserializer<'_>,
    ) -> Result<(), KeysError> {
        let config = S::Config::deserialize(keys).map_err(KeysError::Keys)?;
        SinkType::check(self, context, &config).map_err(KeysError::Invalid)
    }

    fn open(&self, context: &SinkContext, keys: &toml::Table) -> Result<Arc<dyn Sink>, String> {
        let config = S::Config::deserialize(toml::Value::Table(keys.clone()))
            .map_err(|e| format!("[sink]: {e}"))?;
        SinkType::open(self, context, config)
    }
}

/// The sink types this binary knows, by `type` name. The binary fills it, one line each.
#[derive(Default, Clone)]
pub struct SinkRegistry {
    types: BTreeMap<&'static str, Arc<dyn ErasedSinkType>>,
}

impl fmt::Debug for SinkRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.types.keys()).finish()
    }
}

impl SinkRegistry {
    /// Adds a sink type under its [`SinkType::TYPE`].
    pub fn register<S: SinkType>(&mut self, sink: S) -> &mut Self {
        self.types.insert(S::TYPE, Arc::new(sink));
        self
    }

    /// The registered type names, sorted: for error messages.
    pub fn types(&self) -> Vec<&'static str> {
        self.types.keys().copied().collect()
    }

    pub(crate) fn check(
        &self,
        type_name: &str,
        context: &SinkContext,
        keys: toml::de::ValueDeserializer<'_>,
    ) -> Option<Result<(), KeysError>> {
        Some(self.types.get(type_name)?.check(context, keys))
    }

    /// Opens the sink a loaded config names.
    pub fn open(&self, config: &crate::config::SinkConfig) -> Result<Arc<dyn Sink>, String> {
        let sink = self
            .types
            .get(config.type_name.as_str())
            .ok_or_else(|| format!("no sink type `{}` in this binary", config.type_name))?;
        sink.open(&config.context, &config.keys)
    }
}
