//! polld's sinks, one module each: where changes go once they are safely queued.
//!
//! | type | module | acknowledged when |
//! |---|---|---|
//! | `stdout` | [`stdout`] | the line is written and flushed |
//! | `jsonl` | [`jsonl`] | the batch is written and fsynced |
//! | `buildbot` | [`buildbot`] | Buildbot's base change hook answers 2xx |
//! | `webhook` | [`webhook`] | the receiver answers 2xx |
//! | `cloudevents` | [`cloudevents`] | the receiver answers 2xx |
//!
//! Each module holds its sink type (registered in the binary, one line each), its
//! config struct, and the sink itself. A new sink is one more module here (or a crate
//! of its own) and one registration line: see the README's "Writing a sink".

pub mod buildbot;
pub mod cloudevents;
mod http;
pub mod jsonl;
pub mod stdout;
pub mod webhook;

use polld_core::Change;
use polld_core::sink::SinkError;

pub use buildbot::Buildbot;
pub use cloudevents::CloudEvents;
pub use jsonl::Jsonl;
pub use stdout::Stdout;
pub use webhook::Webhook;

/// One change as one line of JSON, newline included.
pub(crate) fn json_line(change: &Change) -> Result<Vec<u8>, SinkError> {
    let mut line = serde_json::to_vec(change)
        .map_err(|e| SinkError::Refused(format!("cannot encode change: {e}")))?;
    line.push(b'\n');
    Ok(line)
}
