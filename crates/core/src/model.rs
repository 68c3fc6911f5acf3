//! The change record: what every sink receives. (What a backend finds, and its cursor,
//! are `polld_backend`'s `NewChange` and `Cursor`.)

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use polld_backend::{Cursor, NewChange};

/// A change record exactly as the contract defines it: what every sink receives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Stable for the same (poller, project, branch, revision): consumers may de-duplicate on it.
    pub id: String,
    pub poller: String,
    pub vcs: String,
    /// The configured `repo`, with any credentials stripped.
    pub repository: String,
    pub branch: Option<String>,
    pub revision: String,
    pub author: String,
    pub committer: Option<String>,
    pub comments: String,
    pub files: Vec<String>,
    pub when_timestamp: i64,
    pub project: String,
    pub category: Option<String>,
    pub codebase: String,
    pub revlink: Option<String>,
    pub properties: Map<String, Value>,
}
