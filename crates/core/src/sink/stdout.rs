//! The default sink: one JSON object per line on standard output.

use async_trait::async_trait;
use tokio::io::{AsyncWriteExt, Stdout};
use tokio::sync::Mutex;

use super::{Sink, SinkError, SinkFailure, json_line};
use crate::model::Change;

/// Writes and flushes each change on its own, so a reader piped to polld sees every
/// change as soon as it is queued, and a change counts as delivered once flushed.
pub struct StdoutSink {
    out: Mutex<Stdout>,
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
