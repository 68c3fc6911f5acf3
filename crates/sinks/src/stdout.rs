//! The default sink: one JSON object per line on standard output.

use std::sync::Arc;

use async_trait::async_trait;
use polld_backend::Refusal;
use polld_core::Change;
use polld_core::sink::{Sink, SinkContext, SinkError, SinkFailure, SinkType};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::json_line;

/// `type = "stdout"`, the default sink.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stdout;

/// `type = "stdout"` has no keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {}

impl SinkType for Stdout {
    const TYPE: &'static str = "stdout";
    type Config = StdoutConfig;

    fn check(&self, _: &SinkContext, _: &StdoutConfig) -> Result<(), Refusal> {
        Ok(())
    }

    fn open(&self, _: &SinkContext, _: StdoutConfig) -> Result<Arc<dyn Sink>, String> {
        Ok(Arc::new(StdoutSink::new()))
    }
}

/// Writes and flushes each change on its own, so a reader piped to polld sees every
/// change as soon as it is queued, and a change counts as delivered once flushed.
pub struct StdoutSink {
    out: Mutex<tokio::io::Stdout>,
}

impl StdoutSink {
    pub fn new() -> Self {
        StdoutSink {
            out: Mutex::new(tokio::io::stdout()),
        }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Sink for StdoutSink {
    async fn deliver(&self, changes: &[Change]) -> Result<(), SinkFailure> {
        let mut out = self.out.lock().await;
        for (acknowledged, change) in changes.iter().enumerate() {
            let fail = |error| SinkFailure {
                acknowledged,
                error,
            };
            let line = json_line(change).map_err(fail)?;
            let written = async {
                out.write_all(&line).await?;
                out.flush().await
            };
            written.await.map_err(|e| {
                fail(SinkError::Unreachable(format!(
                    "cannot write to standard output: {e}"
                )))
            })?;
        }
        Ok(())
    }
}
