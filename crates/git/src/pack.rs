//! A pack arriving from the network, written into the mirror as it comes.
//!
//! The network side is async; libgit2's pack writer (which indexes the pack and moves
//! it into `objects/pack`) blocks. The bytes cross over a small bounded channel to a
//! blocking thread, so a pack of any size streams through a few hundred KiB of memory
//! and a slow disk slows the download rather than filling memory. The pack is committed
//! only when the caller says it is complete: a fetch that fails or passes its deadline
//! half-way leaves nothing in the mirror.

use std::io::Write;
use std::path::{Path, PathBuf};

use git2::Repository;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::GitError;
use crate::wire::PackSink;

/// Chunks in flight between the network and the disk.
const CHANNEL_CHUNKS: usize = 16;

enum Piece {
    Data(Vec<u8>),
    /// The pack is complete: index it and keep it.
    Commit,
}

pub(crate) struct PackWriter {
    sender: mpsc::Sender<Piece>,
    writer: JoinHandle<Result<(), GitError>>,
    bytes: usize,
}

impl PackWriter {
    /// Starts a writer into the mirror at `mirror`.
    pub(crate) fn start(mirror: &Path) -> PackWriter {
        let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS);
        let mirror = mirror.to_path_buf();
        let writer = tokio::task::spawn_blocking(move || write(&mirror, receiver));
        PackWriter {
            sender,
            writer,
            bytes: 0,
        }
    }

    /// Indexes and keeps the pack; returns its size in bytes.
    pub(crate) async fn commit(self) -> Result<usize, GitError> {
        let sent = self.sender.send(Piece::Commit).await;
        drop(self.sender);
        let written = self
            .writer
            .await
            .unwrap_or_else(|e| Err(GitError::Task(e.to_string())));
        written?;
        if sent.is_err() {
            return Err(GitError::Task("the pack writer stopped early".into()));
        }
        Ok(self.bytes)
    }
}

impl PackSink for PackWriter {
    async fn write(&mut self, data: &[u8]) -> Result<(), String> {
        self.bytes += data.len();
        self.sender
            .send(Piece::Data(data.to_vec()))
            .await
            .map_err(|_| "the mirror stopped taking the pack".to_owned())
    }
}

/// The blocking side: libgit2's pack writer fed from `receiver`.
fn write(mirror: &PathBuf, mut receiver: mpsc::Receiver<Piece>) -> Result<(), GitError> {
    let error = |e: git2::Error| GitError::mirror(mirror, e);
    let repo = Repository::open_bare(mirror).map_err(error)?;
    let odb = repo.odb().map_err(error)?;
    let mut packwriter = odb.packwriter().map_err(error)?;
    while let Some(piece) = receiver.blocking_recv() {
        match piece {
            Piece::Data(data) => packwriter
                .write_all(&data)
                .map_err(|e| GitError::mirror(mirror, e))?,
            Piece::Commit => {
                packwriter.commit().map_err(error)?;
                return Ok(());
            }
        }
    }
    // The fetch gave up: dropping the writer discards what it had.
    Ok(())
}
