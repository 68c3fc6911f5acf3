//! polld's core: everything that is not specific to one version-control system.
//!
//! Read it in this order: [`model`] (what flows), [`backend`] (the VCS seam), [`config`]
//! (the TOML file), [`store`] (cursors and outbox), [`scheduler`] (when to poll),
//! [`engine`] (one poll, start to stored), [`sink`] and [`delivery`] (out to the master),
//! [`daemon`] (all of it running together).

pub mod backend;
pub mod backoff;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod engine;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod private;
pub mod redact;
pub mod repo_key;
pub mod scheduler;
pub mod sink;
pub mod store;
pub mod supervise;

pub use backend::{
    Backend, PollError, PollOutcome, Poller, PollerContext, Refusal, Registry, StringList,
};
pub use model::{Change, Cursor, NewChange};
