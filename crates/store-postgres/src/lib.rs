//! polld's shared store: every cursor, the outbox, the dead letters, the poll status and
//! the poller leases in one PostgreSQL database, so that several `polld run` replicas
//! can share the pollers (contract: "Many replicas, one PostgreSQL").
//!
//! - [`PostgresStore`] implements the store seam ([`polld_core::store::Store`]) with the
//!   SQLite store's semantics, and passes the same conformance suite.
//! - Leases ([`PostgresStore::balance`], in `leases.rs`) give each poller to one replica
//!   and spread them evenly; with [`Fencing::On`] every write that moves a poller's state
//!   checks in its own transaction that this replica still holds that poller.
//! - The schema is versioned and migrated at connect (`schema.rs`).
//!
//! The driver is `tokio-postgres` behind a `deadpool-postgres` pool: async, so a store
//! call holds no thread while it waits for the database. No TLS yet: a URL asking for it
//! (`sslmode=require`) fails to connect rather than silently going unencrypted.
//!
//! The URL may carry a password: it is never logged, and errors name the database by
//! [`shown_url`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use polld_core::store::{Access, Store, StoreError, StoreType};
use tokio_postgres::NoTls;

mod error;
mod leases;
mod requests;
mod schema;
mod store;

pub use error::{PostgresError, shown_url};
pub use leases::fair_share;
pub use schema::SCHEMA_VERSION;

/// Connections per replica: delivery lanes, polls committing and `status` at once. A
/// replica past it waits for a free connection (up to [`POOL_WAIT`]).
const POOL_SIZE: usize = 16;

/// How long a store call waits for a pooled connection, or for a new one to open,
/// before failing (then the caller retries, as after any store error).
const POOL_WAIT: Duration = Duration::from_secs(10);

/// Set on every connection: the server ends a session that sits inside a transaction
/// this long (a replica stopped or partitioned mid-write), releasing its locks. A store
/// transaction takes milliseconds; its locks must not stall the other replicas.
const IDLE_IN_TRANSACTION_TIMEOUT: &str = "5s";

/// Whether writes check this replica's lease on the poller they touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fencing {
    /// `commit_poll`, `acknowledge`, `dead_letter` and `record_attempt` fail with
    /// [`PostgresError::LeaseLost`], writing nothing, unless this replica holds an
    /// unexpired lease on the poller ([`PostgresStore::balance`] takes them). For
    /// replicas sharing the pollers.
    On,
    /// No lease checks: one process owns every poller (a single `polld run`,
    /// `polld migrate-store`, `status`, `redeliver`, tests of the seam alone).
    Off,
}

/// The kind of store the binary registers (`plugins.stores.register("postgres",
/// Postgres)`): chosen when `[store] url_env` names a `postgres://` or `postgresql://`
/// URL. `polld run` opens it as a replica, fenced by leases; `status` and `redeliver`
/// unfenced; `polld once` refuses it, since it would poll pollers replicas hold.
pub struct Postgres;

#[async_trait::async_trait]
impl StoreType for Postgres {
    async fn open(&self, _: &Path, _: Access) -> Result<Arc<dyn Store>, StoreError> {
        Err(StoreError::new(
            "the PostgreSQL store is opened by its URL ([store] url_env)",
        ))
    }

    async fn open_url(
        &self,
        url: &str,
        replica: &str,
        access: Access,
    ) -> Result<Option<Arc<dyn Store>>, StoreError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Ok(None);
        }
        let fencing = match access {
            Access::Replica => Fencing::On,
            Access::Shared => Fencing::Off,
            Access::Exclusive => {
                return Err(StoreError::new(
                    "polld once cannot share a database with running replicas (it would poll pollers they hold): use POST /poll/{name} on a replica",
                ));
            }
        };
        let store = PostgresStore::connect(url, replica, fencing).await?;
        Ok(Some(Arc::new(store)))
    }
}

/// The PostgreSQL store of one replica. Clones share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    replica: String,
    fencing: Fencing,
    /// For the one connection outside the pool that listens for poll requests.
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("replica", &self.replica)
            .field("fencing", &self.fencing)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`) as
    /// replica `replica` (unique among the replicas: a host name, a pod name) and brings
    /// its schema to [`SCHEMA_VERSION`]. Fails if the database is unreachable, refuses
    /// the login, or has a newer schema.
    pub async fn connect(
        url: &str,
        replica: &str,
        fencing: Fencing,
    ) -> Result<PostgresStore, PostgresError> {
        let config = connection_config(url, replica)?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                // A broken connection shows on its next query, which fails that store
                // call; a reconnect follows. Checking each one on checkout would cost a
                // round trip per call.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|error| PostgresError::Connect {
                url: shown_url(url),
                reason: error.to_string(),
            })?;
        let store = PostgresStore {
            pool,
            replica: replica.to_owned(),
            fencing,
            config,
        };
        let mut client = store.pool.get().await.map_err(|error| {
            let reason = polld_backend::one_line(&error);
            PostgresError::Connect {
                url: shown_url(url),
                reason: polld_backend::redact::scrub(&reason, url),
            }
        })?;
        schema::migrate(&mut client, url).await?;
        Ok(store)
    }

    /// This replica's id, as lease rows name their holder.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn fencing(&self) -> Fencing {
        self.fencing
    }

    /// A pooled connection.
    async fn client(&self) -> Result<Object, PostgresError> {
        Ok(self.pool.get().await?)
    }
}

/// The driver's settings from `url`, with polld's own where the URL says nothing.
fn connection_config(url: &str, replica: &str) -> Result<tokio_postgres::Config, PostgresError> {
    // The driver also reads `key=value` strings, but those cannot be shown without
    // their password: only URLs, which can.
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(PostgresError::NotAUrl);
    }
    let mut config: tokio_postgres::Config = url.parse().map_err(|error| PostgresError::Url {
        url: shown_url(url),
        reason: polld_backend::redact::scrub(&polld_backend::one_line(&error), url),
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(POOL_WAIT);
    }
    if config.get_application_name().is_none() {
        // Shown in pg_stat_activity: which replica a session belongs to.
        config.application_name(format!("polld {replica}"));
    }
    let idle = format!("-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT}");
    let options = match config.get_options() {
        Some(theirs) => format!("{theirs} {idle}"),
        None => idle,
    };
    config.options(options);
    Ok(config)
}
