//! The whole API a version-control backend of polld is written against, and nothing of
//! the daemon: a backend crate depends on this one alone, so it compiles no store, no
//! HTTP server and no metrics, and cannot reach the scheduler, the store or the sinks.
//!
//! - [`Backend`] and [`Poller`]: build a poller from its config keys; poll, given the
//!   last [`Cursor`], returning a [`PollOutcome`] (new cursor and [`NewChange`]s) or a
//!   [`PollError`]. [`Refusal`] says which config key is wrong.
//! - [`filter`] and [`limits`]: what a change may carry, and which of its files make it
//!   worth reporting (`paths`, `ignore_paths`), checked as files are read.
//! - [`redact`]: keeping credentials in a repo URL out of every message.
//! - [`process`]: the one way a backend runs a VCS client (`svn`, `hg`): own process
//!   group killed on deadline and drop, scrubbed environment, bounded output.
//!
//! The README's "Writing a backend" guide shows a whole backend crate; it is built and
//! run through the binary by the `guide` example and its test.

mod backend;
pub mod filter;
pub mod limits;
mod model;
pub mod process;
pub mod redact;

pub use backend::{
    Backend, PollError, PollOutcome, Poller, PollerContext, Refusal, StringList, check_repo,
    one_line,
};
pub use model::{Cursor, NewChange};
