//! polld's core: everything that is not specific to one version-control system, one
//! sink or one store. It knows those only through their seams: `polld_backend`'s
//! `Backend`, and [`sink::SinkType`] and [`store::StoreType`] here, filled in by the
//! binary ([`plugins::Plugins`]).
//!
//! Read it in this order: [`model`] (the change record), [`config`] (the TOML file,
//! kept as data), [`store`] (cursors and outbox, behind a trait), [`scheduler`] (when to
//! poll), [`engine`] (one poll, start to stored), [`sink`] and [`delivery`] (out to the
//! master), [`daemon`] (all of it running together).

pub mod backend;
pub mod backoff;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod engine;
pub mod filter;
pub mod leases;
pub mod limits;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod plugins;
pub mod private;
pub mod repo_key;
pub mod scheduler;
pub mod sink;
pub mod store;
pub mod supervise;

pub use model::Change;
pub use plugins::Plugins;
