//! A polld sink that appends one line per change, `<poller> <revision>`, to a file.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use polld_backend::Refusal;
use polld_core::Change;
use polld_core::sink::{Sink, SinkContext, SinkError, SinkFailure, SinkType};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

/// `[sink] type = "lines"`.
pub struct Lines;

/// This sink's own keys (everything in `[sink]` but `type`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinesConfig {
    /// Relative to the config file's directory.
    path: PathBuf,
}

impl SinkType for Lines {
    const TYPE: &'static str = "lines";
    type Config = LinesConfig;

    fn check(&self, _: &SinkContext, config: &LinesConfig) -> Result<(), Refusal> {
        if config.path.as_os_str().is_empty() {
            return Err(Refusal::at("path", "path must not be empty"));
        }
        Ok(())
    }

    fn open(&self, context: &SinkContext, config: LinesConfig) -> Result<Arc<dyn Sink>, String> {
        Ok(Arc::new(LinesSink {
            path: context.config_dir.join(config.path),
        }))
    }
}

struct LinesSink {
    path: PathBuf,
}

#[async_trait]
impl Sink for LinesSink {
    /// Appends the whole batch and syncs it: then, and only then, it is acknowledged.
    async fn deliver(&self, changes: &[Change]) -> Result<(), SinkFailure> {
        let text: String = changes
            .iter()
            .map(|change| format!("{} {}\n", change.poller, change.revision))
            .collect();
        let written = async {
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await?;
            file.write_all(text.as_bytes()).await?;
            file.sync_data().await
        };
        written.await.map_err(|error| SinkFailure {
            acknowledged: 0,
            // Nothing can be written now: every change waits, retried with backoff.
            error: SinkError::Unreachable(format!("{}: {error}", self.path.display())),
        })
    }
}
