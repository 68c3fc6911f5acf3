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

use async_trait::async_trait;

use crate::config::SinkConfig;
use crate::model::Change;

pub use buildbot::BuildbotSink;
pub use jsonl::JsonlSink;
pub use stdout::StdoutSink;
pub use webhook::{SIGNATURE_HEADER, WebhookSink, signature};

/// A destination for change records.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Delivers `changes` in order. `Ok` acknowledges them all; a failure says how many
    /// of the first ones were acknowledged before it and why the next one was not.
    async fn deliver(&mut self, changes: &[Change]) -> Result<(), SinkFailure>;

    /// The most changes one [`Sink::deliver`] call should get. The outbox is settled
    /// after each call, so a sink that acknowledges change by change (one HTTP request
    /// each) says 1: a crash then re-sends at most the change in flight. Sinks that
    /// write a batch at once (a file, a pipe) keep the default.
    fn max_batch(&self) -> usize {
        256
    }
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
/// delivery failure to retry, not a startup error. The error is for a config that
/// [`validate`] would have refused.
pub fn open(config: &SinkConfig) -> Result<Box<dyn Sink>, String> {
    Ok(match config {
        SinkConfig::Stdout => Box::new(StdoutSink::new()),
        SinkConfig::Jsonl { path } => Box::new(JsonlSink::new(path.clone())),
        SinkConfig::Buildbot(config) => Box::new(BuildbotSink::new(config.clone())?),
        SinkConfig::Webhook(config) => Box::new(WebhookSink::new(config.clone())?),
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
        SinkConfig::Stdout | SinkConfig::Jsonl { .. } => Ok(()),
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
