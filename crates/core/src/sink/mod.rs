//! Where changes go once they are safely queued.
//!
//! A sink receives changes in outbox order and says how many it acknowledged. The
//! delivery loop deletes exactly those from the outbox, so a change leaves the store only
//! after its sink has it. HTTP sinks plug in here as further [`SinkConfig`] variants.

mod buildbot;
mod http;
mod jsonl;
mod stdout;
mod webhook;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::SinkConfig;
use crate::model::Change;

pub use buildbot::BuildbotSink;
pub use jsonl::JsonlSink;
pub use stdout::StdoutSink;
pub use webhook::{SIGNATURE_HEADER, WebhookSink, signature};

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

/// Opens the configured sink. Sinks connect lazily: a sink that is down at start is a
/// delivery failure to retry, not a startup error. The error is for a config that
/// [`validate`] would have refused.
pub fn open(config: &SinkConfig) -> Result<Arc<dyn Sink>, String> {
    Ok(match config {
        SinkConfig::Stdout => Arc::new(StdoutSink::new()),
        SinkConfig::Jsonl { path } => Arc::new(JsonlSink::new(path.clone())),
        SinkConfig::Buildbot(config) => Arc::new(BuildbotSink::new(config.clone())?),
        SinkConfig::Webhook(config) => Arc::new(WebhookSink::new(config.clone())?),
    })
}

/// Checks what serde cannot (URLs, header names, timeouts) at config load time. The
/// error names the key it is about, so the config error can point at it.
pub(crate) fn validate(config: &SinkConfig) -> Result<(), (&'static str, String)> {
    let check_url = |url: &str| match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(()),
        Ok(parsed) => Err((
            "url",
            format!("url must be http or https, not {}", parsed.scheme()),
        )),
        Err(error) => Err((
            "url",
            format!(
                "invalid url {:?}: {error}",
                crate::redact::strip_userinfo(url)
            ),
        )),
    };
    let check_timeout = |timeout: &Option<crate::config::HumanDuration>| match timeout {
        Some(timeout) if timeout.0.is_zero() => {
            Err(("timeout", "timeout must be greater than zero".to_owned()))
        }
        _ => Ok(()),
    };
    match config {
        SinkConfig::Stdout => Ok(()),
        SinkConfig::Jsonl { path } => match std::fs::metadata(path) {
            // A FIFO would block every write (and cannot be cut back after a torn
            // line), `/dev/null` would acknowledge changes it throws away, a directory
            // cannot be appended to: only a regular file (or none yet) is a jsonl file.
            Ok(meta) if !meta.is_file() => Err((
                "path",
                format!(
                    "path {} is not a regular file: the jsonl sink appends to a file it can fsync and cut back",
                    path.display()
                ),
            )),
            _ => Ok(()),
        },
        SinkConfig::Buildbot(config) => {
            if config.password_env.is_some() && config.username.is_none() {
                return Err(("password_env", "password_env needs a username".into()));
            }
            check_timeout(&config.timeout)?;
            check_url(&config.url)
        }
        SinkConfig::Webhook(config) => {
            check_timeout(&config.timeout)?;
            check_url(&config.url)?;
            webhook::header_map(config)
                .map(|_| ())
                .map_err(|message| ("headers", message))
        }
    }
}

/// One change as one line of JSON, newline included.
pub(crate) fn json_line(change: &Change) -> Result<Vec<u8>, SinkError> {
    let mut line = serde_json::to_vec(change)
        .map_err(|e| SinkError::Refused(format!("cannot encode change: {e}")))?;
    line.push(b'\n');
    Ok(line)
}
