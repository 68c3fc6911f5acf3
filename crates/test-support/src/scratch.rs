//! Directories for servers that a whole test binary shares.
//!
//! Such a server lives in a static, never dropped, so a `TempDir` it held would never
//! be removed. These directories are removed when the test binary exits normally
//! (libtest ends with `exit`, which runs `atexit` handlers, pass or fail); the servers
//! themselves stop when the binary's lifeline closes (see [`crate::group`]).

use std::path::PathBuf;
use std::sync::{Mutex, Once};

static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A new directory under the temp dir, named `prefix…`, removed at exit.
pub fn binary_dir(prefix: &str) -> PathBuf {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registers a plain function with no arguments; atexit(3) cannot
        // otherwise fail in a way that matters here (the directories would stay).
        unsafe {
            libc::atexit(remove_dirs);
        }
    });
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap()
        .keep();
    DIRS.lock().unwrap().push(dir.clone());
    dir
}

extern "C" fn remove_dirs() {
    // `try_lock`: a thread that held the lock while the process exits must not
    // deadlock the exit.
    if let Ok(dirs) = DIRS.try_lock() {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
