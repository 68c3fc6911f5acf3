//! A file sink: one JSON object per line, appended and fsynced per batch.

use std::path::PathBuf;

use async_trait::async_trait;
use tokio::fs::{File, OpenOptions};
use tokio::io::AsyncWriteExt;

use super::{Sink, SinkError, SinkFailure, json_line};
use crate::model::Change;

/// Appends a whole batch, then fsyncs once: a batch is acknowledged only when it is on
/// disk. A failed write is cut back off the file, so a reader never sees half a line.
pub struct JsonlSink {
    path: PathBuf,
    file: Option<File>,
}

impl JsonlSink {
    pub fn new(path: PathBuf) -> Self {
        JsonlSink { path, file: None }
    }

    async fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let file = OpenOptions::new().create(true).append(true).open(&self.path).await?;
                self.file.insert(file)
            }
        };
        let length_before = file.metadata().await?.len();
        let written = async {
            file.write_all(bytes).await?;
            file.flush().await?;
            file.sync_data().await
        };
        if let Err(error) = written.await {
            // Best effort: if even truncating fails the file is unusable; reopen next time.
            if file.set_len(length_before).await.is_err() {
                self.file = None;
            }
            return Err(error);
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for JsonlSink {
    async fn deliver(&mut self, changes: &[Change]) -> Result<(), SinkFailure> {
        let mut batch = Vec::new();
        for (acknowledged, change) in changes.iter().enumerate() {
            match json_line(change) {
                Ok(line) => batch.extend_from_slice(&line),
                Err(error) => {
                    self.flush_prefix(&batch, acknowledged).await?;
                    return Err(SinkFailure { acknowledged, error });
                }
            }
        }
        self.flush_prefix(&batch, changes.len()).await
    }
}

impl JsonlSink {
    /// Writes the lines of the first `count` changes, or reports none acknowledged.
    async fn flush_prefix(&mut self, batch: &[u8], count: usize) -> Result<(), SinkFailure> {
        if count == 0 {
            return Ok(());
        }
        self.append(batch).await.map_err(|e| SinkFailure {
            acknowledged: 0,
            error: SinkError::Unavailable(format!("cannot append to {}: {e}", self.path.display())),
        })
    }
}
