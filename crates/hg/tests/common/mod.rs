//! The hg backend driven directly, as the core would: a remote repository made with
//! the `hg` CLI and `hg serve` (from `polld-test-support`) and a poller built on it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use polld_backend::{Backend, Poller, PollerContext};
use polld_hg::{HgBackend, HgConfig};
use serde_json::Value;
use tempfile::TempDir;

// Each test binary uses some of these.
#[allow(unused_imports)]
pub use polld_test_support::hg::{HG_USER, HgRepo, HgServe, hg_command};
#[allow(unused_imports)]
pub use polld_test_support::poll::{advance, first_poll, revisions};

/// A tempdir with a remote repository (one commit on default) and a poller context.
pub struct Fixture {
    pub tmp: TempDir,
    pub remote: HgRepo,
}

impl Fixture {
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let remote = HgRepo::init(&tmp.path().join("remote"));
        remote.commit("initial");
        Fixture { tmp, remote }
    }

    pub fn mirror_dir(&self) -> PathBuf {
        self.tmp.path().join("state/mirrors/p")
    }

    pub fn context(&self, repo: &str) -> PollerContext {
        PollerContext {
            timeout: Duration::from_secs(60),
            ..PollerContext::new("p", repo, self.tmp.path(), &self.tmp.path().join("state"))
        }
    }

    /// A poller on the remote, named by a path relative to the config directory.
    pub fn poller(&self, config: Value) -> Arc<dyn Poller> {
        build(self.context("remote"), config).expect("poller builds")
    }
}

pub fn build(context: PollerContext, config: Value) -> Result<Arc<dyn Poller>, String> {
    let config: HgConfig = serde_json::from_value(config).map_err(|e| e.to_string())?;
    HgBackend::new()
        .build(context, config)
        .map_err(|refusal| refusal.message)
}
