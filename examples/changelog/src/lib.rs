//! A polld backend for an append-only changelog file: each line `<revision> <message>`
//! is one change, reported once, oldest first.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use polld_backend::{
    Backend, Cursor, NewChange, PollError, PollOutcome, Poller, PollerContext, Refusal,
};
use serde::{Deserialize, Serialize};

/// `type = "changelog"`: `repo` is the file's path.
pub struct Changelog;

/// This backend's own keys. The core has already taken `name`, `type`, `repo`, the
/// timing keys, `project`, `category`, `codebase`, `revlink` and `properties`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangelogConfig {
    /// The branch every change is reported on.
    branch: String,
}

impl Backend for Changelog {
    const TYPE: &'static str = "changelog";
    type Config = ChangelogConfig;

    fn build(
        &self,
        context: PollerContext,
        config: ChangelogConfig,
    ) -> Result<Arc<dyn Poller>, Refusal> {
        if config.branch.trim().is_empty() {
            // Reported as `pollers.toml:LINE:COL: poller `NAME`: ...` at the key.
            return Err(Refusal::at("branch", "branch must not be empty"));
        }
        Ok(Arc::new(ChangelogPoller {
            path: context.config_dir.join(&context.repo),
            branch: config.branch,
        }))
    }
}

struct ChangelogPoller {
    path: PathBuf,
    branch: String,
}

/// The cursor: how many lines of the file were seen.
#[derive(Serialize, Deserialize)]
struct Seen {
    lines: usize,
}

#[async_trait]
impl Poller for ChangelogPoller {
    async fn poll(&self, cursor: Option<&Cursor>) -> Result<PollOutcome, PollError> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(PollError::new)?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let seen = match cursor {
            // The first poll records where the file is and reports nothing.
            None => lines.len(),
            Some(cursor) => cursor.to_state::<Seen>().map_err(PollError::new)?.lines,
        };
        if cursor.is_some() && seen == lines.len() {
            return Ok(PollOutcome::Unchanged);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let changes = lines
            .iter()
            .skip(seen)
            .map(|line| {
                let (revision, message) = line.split_once(' ').unwrap_or((line, ""));
                NewChange {
                    branch: Some(self.branch.clone()),
                    revision: revision.to_owned(),
                    author: "changelog".to_owned(),
                    committer: None,
                    comments: message.trim().to_owned(),
                    files: Vec::new(),
                    files_total: None,
                    when_timestamp: i64::try_from(now).unwrap_or(i64::MAX),
                    project: None,
                }
            })
            .collect();
        let cursor = Cursor::from_state(&Seen { lines: lines.len() }).map_err(PollError::new)?;
        Ok(PollOutcome::Advanced { cursor, changes })
    }

    fn describe(&self) -> String {
        format!("lines of {} on branch {}", self.path.display(), self.branch)
    }
}
