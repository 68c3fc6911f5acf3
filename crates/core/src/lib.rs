//! polld's core: everything that is not specific to one version-control system.

pub mod backend;
pub mod model;
pub mod redact;

pub use backend::{Backend, PollError, PollOutcome, Poller, PollerContext, Registry};
pub use model::{Change, Cursor, NewChange};
