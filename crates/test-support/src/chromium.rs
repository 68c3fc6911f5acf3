//! Debian's `chromium`, headless, for testing the status page in a real browser: the DOM
//! after the page's scripts ran (`--dump-dom`), and screenshots.
//!
//! Each run gets its own throwaway profile, so runs neither share state nor lock each
//! other out. `--no-sandbox` because the tests may run as root, where chromium's sandbox
//! refuses to start. `--virtual-time-budget` lets the page's timers and its fetch of
//! `/status` run before the DOM is dumped or the screenshot taken.

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use crate::{Outcome, run_bounded};

/// Virtual milliseconds the page gets to run its scripts (fetches included).
const VIRTUAL_TIME_MS: u32 = 3000;

/// The browser: `$POLLD_CHROMIUM`, else `chromium` on `$PATH` (`scripts/test.sh` installs it).
fn command(profile: &Path) -> Command {
    let binary = std::env::var("POLLD_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let mut cmd = Command::new(binary);
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"));
    cmd
}

fn run(args: &[&str]) -> Outcome {
    let profile = TempDir::new().unwrap();
    let mut cmd = command(profile.path());
    cmd.args(args);
    let out = run_bounded(cmd);
    assert_eq!(
        out.code,
        Some(0),
        "chromium failed (is it installed? scripts/test.sh installs Debian's `chromium`)\n{}",
        out.describe()
    );
    out
}

/// The page's DOM, serialized, once its scripts have run.
pub fn dump_dom(url: &str) -> String {
    run(&["--dump-dom", url]).stdout
}

/// A PNG of the page at `width`×`height` CSS pixels, written to `file`.
pub fn screenshot(url: &str, file: &Path, (width, height): (u32, u32)) {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let _ = std::fs::remove_file(file);
    let out = run(&[
        &format!("--screenshot={}", file.display()),
        &format!("--window-size={width},{height}"),
        url,
    ]);
    let png = std::fs::read(file).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {}: {e}\n{}",
            file.display(),
            out.describe()
        )
    });
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        file.display()
    );
}
