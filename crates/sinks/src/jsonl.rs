//! A file sink: one JSON object per line, appended and fsynced per batch.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use polld_backend::Refusal;
use polld_core::Change;
use polld_core::sink::{Sink, SinkContext, SinkError, SinkFailure, SinkType};
use serde::Deserialize;
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::json_line;

/// `type = "jsonl"`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Jsonl;

/// `[sink]` keys of `type = "jsonl"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// Relative to the config file's directory.
    pub path: PathBuf,
}

impl SinkType for Jsonl {
    const TYPE: &'static str = "jsonl";
    type Config = JsonlConfig;

    fn check(&self, context: &SinkContext, config: &JsonlConfig) -> Result<(), Refusal> {
        let path = context.config_dir.join(&config.path);
        match std::fs::metadata(&path) {
            // A FIFO would block every write (and cannot be cut back after a torn
            // line), `/dev/null` would acknowledge changes it throws away, a directory
            // cannot be appended to: only a regular file (or none yet) is a jsonl file.
            Ok(meta) if !meta.is_file() => Err(Refusal::at(
                "path",
                format!(
                    "path {} is not a regular file: the jsonl sink appends to a file it can fsync and cut back",
                    path.display()
                ),
            )),
            _ => Ok(()),
        }
    }

    fn open(&self, context: &SinkContext, config: JsonlConfig) -> Result<Arc<dyn Sink>, String> {
        Ok(Arc::new(JsonlSink::new(
            context.config_dir.join(config.path),
        )))
    }
}

/// Appends a whole batch, then fsyncs once: a batch is acknowledged only when it is on
/// disk. A failed write is cut back off the file, and so is a line left half-written by
/// a crash (found when the file is opened), so a reader never sees half a line. The
/// unacknowledged batch is then written again whole.
pub struct JsonlSink {
    path: PathBuf,
    /// Open while appends succeed; one batch is written at a time.
    file: Mutex<Option<File>>,
}

impl JsonlSink {
    pub fn new(path: PathBuf) -> Self {
        JsonlSink {
            path,
            file: Mutex::new(None),
        }
    }

    async fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut open = self.file.lock().await;
        let file = match &mut *open {
            Some(file) => file,
            None => {
                let mut file = open_or_create(&self.path).await?;
                cut_torn_line(&mut file, &self.path).await?;
                open.insert(file)
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
                *open = None;
            }
            return Err(error);
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for JsonlSink {
    async fn deliver(&self, changes: &[Change]) -> Result<(), SinkFailure> {
        let mut batch = Vec::new();
        for (acknowledged, change) in changes.iter().enumerate() {
            match json_line(change) {
                Ok(line) => batch.extend_from_slice(&line),
                Err(error) => {
                    self.flush_prefix(&batch, acknowledged).await?;
                    return Err(SinkFailure {
                        acknowledged,
                        error,
                    });
                }
            }
        }
        self.flush_prefix(&batch, changes.len()).await
    }
}

impl JsonlSink {
    /// Writes the lines of the first `count` changes, or reports none acknowledged.
    async fn flush_prefix(&self, batch: &[u8], count: usize) -> Result<(), SinkFailure> {
        if count == 0 {
            return Ok(());
        }
        self.append(batch).await.map_err(|e| SinkFailure {
            acknowledged: 0,
            error: SinkError::Unreachable(format!("cannot append to {}: {e}", self.path.display())),
        })
    }
}

/// Opens the file for appending, creating it with the user's umask (the daemon's own
/// is 077, for its state directory; this file is the user's).
async fn open_or_create(path: &std::path::Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).append(true);
    match options.clone().create_new(true).open(path).await {
        Ok(file) => {
            let mode = polld_core::private::user_file_mode();
            let permissions = std::os::unix::fs::PermissionsExt::from_mode(mode);
            file.set_permissions(permissions).await?;
            Ok(file)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => options.open(path).await,
        Err(error) => Err(error),
    }
}

/// Cuts the file back to just after its last newline, if a crash left a partial line.
async fn cut_torn_line(file: &mut File, path: &std::path::Path) -> std::io::Result<()> {
    const CHUNK: u64 = 64 * 1024;
    let length = file.metadata().await?.len();
    let mut end = length;
    let mut buffer = vec![0; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buffer[..(end - start) as usize];
        file.seek(std::io::SeekFrom::Start(start)).await?;
        file.read_exact(chunk).await?;
        if let Some(newline) = chunk.iter().rposition(|&b| b == b'\n') {
            end = start + newline as u64 + 1;
            break;
        }
        end = start;
    }
    if end < length {
        tracing::warn!(path = %path.display(), bytes = length - end, "removing a partial last line left by a crash; its changes are written again");
        file.set_len(end).await?;
        file.sync_data().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_torn_last_line_is_cut_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("changes.jsonl");
        let whole = format!("{{\"a\":1}}\n{}\n", "x".repeat(100_000));
        std::fs::write(&path, format!("{whole}{{\"torn\": tr")).unwrap();
        let sink = JsonlSink::new(path.clone());
        sink.append(b"{\"b\":2}\n").await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{whole}{{\"b\":2}}\n")
        );

        std::fs::write(&path, "no newline at all").unwrap();
        let sink = JsonlSink::new(path.clone());
        sink.append(b"{}\n").await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
    }
}
