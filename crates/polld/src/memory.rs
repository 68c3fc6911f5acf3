//! Keeping the process's memory at what it uses, over months.
//!
//! Measured in the soak benchmark: polld's live heap stays under 4 MiB (heaptrack), yet
//! glibc's allocator let the resident set creep from 23 to 40 MiB in 30 minutes. glibc
//! gives each thread that allocates its own arena (up to eight per core), and the
//! blocking threads that run libgit2 and SQLite come and go, each leaving freed memory
//! in an arena that is not returned to the system. polld caps the arenas at two and
//! returns free memory every few minutes (`malloc_trim`), which costs a few
//! milliseconds. Other C libraries' allocators need neither; the functions do nothing
//! there.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often free memory is handed back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(300);

/// The first time: soon after start, when the launch burst (every poller's first poll
/// at once) has freed the most.
const FIRST_TRIM: Duration = Duration::from_secs(60);

/// Caps glibc's arenas; call before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called at start-up, before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Hands free memory back to the system after [`FIRST_TRIM`], then every
/// [`TRIM_EVERY`], until `shutdown`.
pub async fn trim_periodically(shutdown: CancellationToken) {
    let mut wait = FIRST_TRIM;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
        wait = TRIM_EVERY;
        // Walks the arenas under their locks: off the async workers.
        let _ = tokio::task::spawn_blocking(trim).await;
    }
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
