//! Where changes go once they are safely queued.
//!
//! A sink receives changes in outbox order and says how many it acknowledged. The
//! delivery loop deletes exactly those from the outbox, so a change leaves the store only
//! after its sink has it. HTTP sinks plug in here as further [`SinkConfig`] variants.

mod jsonl;
mod stdout;

use async_trait::async_trait;

use crate::config::SinkConfig;
use crate::model::Change;

pub use jsonl::JsonlSink;
pub use stdout::StdoutSink;

/// A destination for change records.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Delivers `changes` in order. `Ok` acknowledges them all; a failure says how many
    /// of the first ones were acknowledged before it and why the next one was not.
    async fn deliver(&mut self, changes: &[Change]) -> Result<(), SinkFailure>;
}

/// A delivery that stopped part-way.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkFailure {
    /// How many changes, from the start of the batch, were acknowledged.
    pub acknowledged: usize,
    pub error: SinkError,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SinkError {
    /// The sink may take it later (down, timed out, overloaded): retry, in order.
    #[error("{0}")]
    Unavailable(String),
    /// The sink will never take this change: dead-letter it so it blocks nothing.
    #[error("{0}")]
    Refused(String),
}

/// Opens the configured sink. Sinks connect lazily: a sink that is down at start is a
/// delivery failure to retry, not a startup error.
pub fn open(config: &SinkConfig) -> Box<dyn Sink> {
    match config {
        SinkConfig::Stdout => Box::new(StdoutSink::new()),
        SinkConfig::Jsonl { path } => Box::new(JsonlSink::new(path.clone())),
    }
}

/// One change as one line of JSON, newline included.
pub(crate) fn json_line(change: &Change) -> Result<Vec<u8>, SinkError> {
    let mut line = serde_json::to_vec(change)
        .map_err(|e| SinkError::Refused(format!("cannot encode change: {e}")))?;
    line.push(b'\n');
    Ok(line)
}
