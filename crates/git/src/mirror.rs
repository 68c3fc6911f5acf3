//! The poller's private bare mirror: the objects the history walk needs.
//!
//! Only refs that moved are fetched (see `remote.rs`), each kept under the same name,
//! so a fetch brings exactly the history of the watched refs and nothing the user did
//! not ask for. The mirror is a cache: if it
//! is lost or corrupt it is rebuilt, and the cursor (not the mirror's refs) remains the
//! record of what was already reported.
//!
//! It heals itself: lock files a killed fetch left behind are removed when it is
//! opened (only this process uses it: the state directory is locked), and once it
//! holds more than [`MAX_PACKS`] packs (libgit2 adds one per fetch and never repacks)
//! the small ones are merged into one ([`Mirror::compact`]), so months of fetches do not
//! slow every walk down.

use std::path::{Path, PathBuf};

use git2::{Oid, Repository};

use crate::LogContext;
use crate::cursor::RefMap;
use crate::error::GitError;

/// Past this many packs, the mirror is compacted.
pub(crate) const MAX_PACKS: usize = 32;

pub(crate) struct Mirror {
    repo: Repository,
    path: PathBuf,
}

impl Mirror {
    /// Opens the mirror if it exists; `None` if it was never created.
    pub(crate) fn open_existing(
        path: &Path,
        log: &LogContext<'_>,
    ) -> Result<Option<Mirror>, GitError> {
        if !path.exists() {
            return Ok(None);
        }
        Self::open_or_init(path, log).map(Some)
    }

    /// Opens the mirror, creating it if missing and re-creating it (with a warning) if
    /// it cannot be opened: a half-written or damaged cache must not wedge the poller.
    pub(crate) fn open_or_init(path: &Path, log: &LogContext<'_>) -> Result<Mirror, GitError> {
        let init = |path: &Path| {
            Repository::init_bare(path)
                .map(|repo| Mirror {
                    repo,
                    path: path.to_owned(),
                })
                .map_err(|e| GitError::mirror(path, e))
        };
        if !path.exists() || is_empty_dir(path) {
            return init(path);
        }
        remove_stale_locks(path, log);
        match Repository::open_bare(path) {
            Ok(repo) => Ok(Mirror {
                repo,
                path: path.to_owned(),
            }),
            Err(error) => {
                tracing::warn!(
                    poller = log.poller,
                    repo = log.repo,
                    mirror = %path.display(),
                    error = error.message(),
                    "the mirror cannot be opened; removing and re-creating it"
                );
                std::fs::remove_dir_all(path).map_err(|e| GitError::mirror(path, e))?;
                init(path)
            }
        }
    }

    pub(crate) fn repo(&self) -> &Repository {
        &self.repo
    }

    /// Whether `oid` is a commit present in the mirror (a known head the walk can hide).
    pub(crate) fn has_commit(&self, oid: Oid) -> bool {
        self.repo.find_commit(oid).is_ok()
    }

    /// Whether `oid` is present in the mirror at all (a tag may peel to a tree).
    pub(crate) fn has_object(&self, oid: Oid) -> bool {
        self.repo.odb().is_ok_and(|odb| odb.exists(oid))
    }

    /// Points each of `refs` (full names) at its id, now that a fetch brought it.
    pub(crate) fn point_refs(&self, refs: &[(String, Oid)]) -> Result<(), GitError> {
        for (name, oid) in refs {
            self.repo
                .reference(name, *oid, true, "polld: fetched")
                .map_err(|e| GitError::mirror(&self.path, e))?;
        }
        Ok(())
    }

    /// The ids the mirror's refs point at: what it has, for a fetch.
    pub(crate) fn ref_targets(&self) -> Result<Vec<Oid>, GitError> {
        let mirror_error = |e: git2::Error| GitError::mirror(&self.path, e);
        let mut targets = Vec::new();
        for reference in self.repo.references().map_err(mirror_error)? {
            let reference = reference.map_err(mirror_error)?;
            let name = reference.name_bytes();
            // Every ref in the mirror is one polld pointed (branches, tags, `refs`).
            let ours = name.starts_with(b"refs/");
            if let Some(oid) = reference.target().filter(|_| ours)
                && !targets.contains(&oid)
            {
                targets.push(oid);
            }
        }
        Ok(targets)
    }

    /// Deletes the refs the poller no longer watches (deleted on the remote
    /// or dropped from the config), so the mirror's refs mirror the cursor.
    pub(crate) fn retain_refs(&self, keep: &RefMap) -> Result<(), GitError> {
        let mirror_error = |e: git2::Error| GitError::mirror(&self.path, e);
        let mut stale = Vec::new();
        for reference in self.repo.references().map_err(mirror_error)? {
            let reference = reference.map_err(mirror_error)?;
            let name = String::from_utf8_lossy(reference.name_bytes()).into_owned();
            let ours = name.starts_with("refs/");
            if ours && !keep.contains_key(&name) {
                stale.push(reference);
            }
        }
        for mut reference in stale {
            reference.delete().map_err(mirror_error)?;
        }
        Ok(())
    }
}

impl Mirror {
    /// How many packs the mirror holds.
    pub(crate) fn pack_count(&self) -> usize {
        packs(&self.path).len()
    }

    /// Merges the small packs into one, geometrically (as `git repack --geometric=2`):
    /// the packs that remain, sorted by size, each hold at least twice the objects of
    /// the next smaller one. So each compaction rewrites mostly the recent small packs,
    /// a large pack is rewritten only once as much again has arrived after it, and
    /// months of fetches cost `O(n log n)` in all, not a rewrite of the whole history
    /// every 32 fetches. (libgit2 has no repack; its pack builder writes the new pack
    /// from the object ids the merged packs' indexes list.)
    pub(crate) fn compact(&self) -> Result<(), GitError> {
        let mirror_error = |e: git2::Error| GitError::mirror(&self.path, e);
        let mut listed = Vec::new();
        for pack in packs(&self.path) {
            let index = pack.with_extension("idx");
            let ids = index_ids(&index).map_err(|e| GitError::mirror(&index, e))?;
            listed.push((pack, ids));
        }
        listed.sort_by_key(|(_, ids)| ids.len());
        let packs = listed;
        let sizes: Vec<usize> = packs.iter().map(|(_, ids)| ids.len()).collect();
        let merge = geometric_rollup(&sizes);
        if merge < 2 {
            return Ok(());
        }
        let mut builder = self.repo.packbuilder().map_err(mirror_error)?;
        for (_, ids) in &packs[..merge] {
            for id in ids {
                builder.insert_object(*id, None).map_err(mirror_error)?;
            }
        }
        builder
            .write(&self.path.join("objects/pack"), 0)
            .map_err(mirror_error)?;
        for (pack, _) in &packs[..merge] {
            for extension in ["pack", "idx", "rev", "keep"] {
                let file = pack.with_extension(extension);
                match std::fs::remove_file(&file) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(GitError::mirror(&file, e));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// How many of the smallest packs (`sizes` ascending, in objects) to merge so that
/// the rest, with the merged one, grow by a factor of at least 2 (git's
/// `split_pack_geometry`): from the top, the largest run that already progresses stays;
/// below it everything is merged, and then each next pack too while it is smaller
/// than twice what is being merged.
fn geometric_rollup(sizes: &[usize]) -> usize {
    const FACTOR: usize = 2;
    let mut top = sizes.len().saturating_sub(1);
    while top > 0 && sizes[top] >= FACTOR * sizes[top - 1] {
        top -= 1;
    }
    if top == 0 {
        return 0;
    }
    // `top` breaks the progression: it and everything below it are merged.
    let mut split = top + 1;
    let mut merged: usize = sizes[..split].iter().sum();
    while split < sizes.len() && sizes[split] < FACTOR * merged {
        merged += sizes[split];
        split += 1;
    }
    split
}

/// The mirror's pack files.
fn packs(mirror: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(mirror.join("objects/pack"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "pack"))
        .collect()
}

/// The object ids a pack index (version 2) lists.
fn index_ids(index: &Path) -> std::io::Result<Vec<Oid>> {
    let bytes = std::fs::read(index)?;
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a version 2 pack index",
        )
    };
    if bytes.get(..8) != Some(b"\xfftOc\0\0\0\x02".as_slice()) {
        return Err(bad());
    }
    // After the header, 256 fan-out counts; the last is the number of objects.
    let count_at = 8 + 255 * 4;
    let count = bytes
        .get(count_at..count_at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(bad)?;
    let ids = bytes
        .get(8 + 256 * 4..8 + 256 * 4 + count * 20)
        .ok_or_else(bad)?;
    ids.chunks(20)
        .map(|id| Oid::from_bytes(id).map_err(|_| bad()))
        .collect()
}

/// Removes the lock files a fetch killed mid-way leaves (`refs/heads/x.lock`,
/// `packed-refs.lock`, `config.lock`, ...): libgit2 refuses to update what they lock.
/// Only this process uses the mirror, so any lock in it is stale.
fn remove_stale_locks(path: &Path, log: &LogContext<'_>) {
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let file = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && (dir == path || file.starts_with(path.join("refs"))) {
                if file.file_name().is_some_and(|n| n != "objects") {
                    stack.push(file);
                }
            } else if file.extension().is_some_and(|e| e == "lock") {
                match std::fs::remove_file(&file) {
                    Ok(()) => tracing::warn!(
                        poller = log.poller,
                        repo = log.repo,
                        lock = %file.display(),
                        "removed a lock file an interrupted fetch left in the mirror"
                    ),
                    Err(error) => tracing::warn!(
                        poller = log.poller,
                        repo = log.repo,
                        lock = %file.display(),
                        %error,
                        "cannot remove a stale lock file in the mirror"
                    ),
                }
            }
        }
    }
}

fn is_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_none())
}

#[cfg(test)]
mod tests {
    use super::geometric_rollup;

    #[test]
    fn rolls_up_only_what_breaks_the_progression() {
        // A proper progression: nothing to do.
        assert_eq!(geometric_rollup(&[1, 2, 4, 8]), 0);
        assert_eq!(geometric_rollup(&[5]), 0);
        // 32 one-object packs under a big one: the small ones merge, the big one stays.
        let mut sizes = vec![1; 32];
        sizes.push(10_000);
        assert_eq!(geometric_rollup(&sizes), 32);
        // Once the small ones weigh half the big one, it is merged too.
        let mut sizes = vec![100; 33];
        sizes.push(6_000);
        assert_eq!(geometric_rollup(&sizes), 34);
    }
}
