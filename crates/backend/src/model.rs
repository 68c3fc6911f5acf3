//! What a backend hands the core: the commits it found, and the opaque cursor that
//! remembers where a poller stopped.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What a backend reports for one new commit. The core adds everything that comes
/// from the poller's configuration (project, category, revlink, ...) to make the change
/// record the sinks receive.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChange {
    /// Branch name as the contract spells it for this VCS; `None` is svn's trunk.
    pub branch: Option<String>,
    pub revision: String,
    pub author: String,
    pub committer: Option<String>,
    /// Cut to [`crate::limits::MAX_COMMENTS_BYTES`] as it is read (`limits::cut_message`).
    pub comments: String,
    /// At most [`crate::limits::MAX_FILES`] (`limits::Files`).
    pub files: Vec<String>,
    /// How many files the change really touched, when `files` holds fewer.
    pub files_total: Option<usize>,
    pub when_timestamp: i64,
    /// Set by backends that derive the project from the change itself (svn's `split`);
    /// `None` keeps the poller's configured `project`.
    pub project: Option<String>,
}

/// Where a poller stopped: opaque to the core, owned by the backend that wrote it.
///
/// It is stored as JSON so that `polld status` can show it and so that a backend can
/// evolve its format without a schema migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub Value);

impl Cursor {
    /// Wraps a backend's own state type.
    pub fn from_state<T: Serialize>(state: &T) -> Result<Self, serde_json::Error> {
        serde_json::to_value(state).map(Cursor)
    }

    /// Reads the cursor back as the backend's own state type.
    pub fn to_state<T: for<'de> Deserialize<'de>>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.0)
    }
}
