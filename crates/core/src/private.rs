//! Keeping the state directory owner-only.
//!
//! The state directory holds mirrors of private repositories and the changes waiting
//! for delivery: everything polld, libgit2 and the `svn`/`hg` children create in it is
//! owner-only (directories 0700, files 0600 or stricter), whatever the umask polld was
//! started with. Rather than chasing every file each library creates, the daemon runs
//! with umask 077 ([`restrict_umask`]); the few files polld writes for the user outside
//! the state directory (the jsonl sink's) get the user's own umask back
//! ([`user_file_mode`]). A state directory that already existed with a wider mode (as
//! systemd's `StateDirectory=` makes them, 0755) is narrowed at start ([`tighten`]).

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// The umask polld was started with; `u32::MAX` until [`restrict_umask`] ran.
static USER_UMASK: AtomicU32 = AtomicU32::new(u32::MAX);

/// Sets the process umask to 077, remembering the one it replaces. Call it before any
/// thread or file is created.
pub fn restrict_umask() {
    // SAFETY: umask(2) cannot fail; it only swaps the process's file mode mask.
    let previous = unsafe { libc::umask(0o077) };
    USER_UMASK.store(previous, Ordering::SeqCst);
}

/// The mode for a file polld creates on the user's behalf outside the state directory:
/// `0666` under the umask polld was started with.
pub fn user_file_mode() -> u32 {
    match USER_UMASK.load(Ordering::SeqCst) {
        u32::MAX => 0o666 & !current_umask(),
        umask => 0o666 & !umask,
    }
}

fn current_umask() -> u32 {
    // SAFETY: as above; the mask is read by setting it and setting it back.
    unsafe {
        let mask = libc::umask(0o077);
        libc::umask(mask);
        mask
    }
}

/// Creates `state_dir` (0700) if it is missing, and narrows it if it is wider (a state
/// directory polld cannot narrow, owned by another user, is only warned about).
pub fn prepare_state_dir(state_dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(state_dir)?;
    if let Err(error) = tighten(state_dir) {
        tracing::warn!(state_dir = %state_dir.display(), %error, "cannot restrict the state directory to its owner");
    }
    Ok(())
}

/// Removes what a crash left in the state directory's `secrets` directory (a password
/// handed to a client in a file). Call it only while holding the store exclusively:
/// another polld's files are in use.
pub fn clear_secrets(state_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(state_dir.join(crate::config::SECRETS_DIR)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Narrows `state_dir` and what polld keeps directly in it (the store, the lock, the
/// mirrors directory and each mirror's root) to their owner. Files deeper down, made by
/// an older polld with a wider umask, are then out of anyone else's reach.
fn tighten(state_dir: &Path) -> std::io::Result<()> {
    narrow(state_dir)?;
    for entry in std::fs::read_dir(state_dir)? {
        let path = entry?.path();
        narrow(&path)?;
        if path.file_name().is_some_and(|name| name == "mirrors") && path.is_dir() {
            for mirror in std::fs::read_dir(&path)? {
                narrow(&mirror?.path())?;
            }
        }
    }
    Ok(())
}

/// Removes group and other permissions from one file or directory (not following a
/// symlink: its own mode means nothing).
fn narrow(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() || meta.mode() & 0o077 == 0 {
        return Ok(());
    }
    let private = meta.mode() & 0o7700;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(private))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn a_wide_state_dir_is_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mirror = state.join("mirrors").join("app");
        std::fs::create_dir_all(mirror.join("objects")).unwrap();
        std::fs::write(state.join("state.db"), "").unwrap();
        for path in [
            &state,
            &state.join("mirrors"),
            &mirror,
            &mirror.join("objects"),
        ] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(
            state.join("state.db"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        tighten(&state).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("state.db")), 0o600);
        assert_eq!(mode(&state.join("mirrors")), 0o700);
        assert_eq!(mode(&mirror), 0o700);
    }
}
