//! The durable state, behind one trait: each poller's cursor, the outbox of changes
//! waiting for the sink, the dead letters the sink refused, and each poller's last poll.
//!
//! What a [`Store`] must guarantee (and [`conformance`] checks, for any store):
//!
//! - **Cursor and outbox move together**: [`Store::commit_poll`] moves a poller's cursor
//!   and queues the changes it found in one transaction. A reader never sees the cursor
//!   without the changes, and after a crash either both happened or neither did.
//! - **A change leaves only when acknowledged**: [`Store::acknowledge`] deletes exactly
//!   what the sink took. Delivery is at-least-once.
//! - **Order per poller**: [`Store::peek`] returns a poller's changes in the order they
//!   were queued; a dead letter put back by [`Store::redeliver`] takes its old place.
//! - **Nothing written when nothing changed**: a poll that finds nothing calls nothing
//!   here; poll outcomes are saved in batches ([`Store::record_polls`]).
//!
//! The SQLite store (`polld-store-sqlite`) is the first implementation; stores are
//! registered in the binary ([`StoreRegistry`]), one line each.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use polld_backend::Cursor;

use crate::model::Change;

/// Why a store operation failed: the store's own error, with its cause chain.
#[derive(Debug)]
pub struct StoreError(Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError(error.into())
    }

    /// The lease this write needed, if that is why it failed.
    pub fn lease_lost(&self) -> Option<&LeaseLost> {
        self.0.downcast_ref()
    }
}

/// Why a store that fences its writes refused one: this replica does not hold (any
/// more) an unexpired lease on `poller`, so another replica may poll and deliver it.
/// Nothing was written. Not a fault of the store: such a poll's result is dropped (the
/// holder polls again), and delivery leaves such a change to the replica holding it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease on poller {poller} lost: not committing")]
pub struct LeaseLost {
    pub poller: String,
}

impl fmt::Display for StoreError {
    /// The whole cause chain on one line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&polld_backend::one_line(self.0.as_ref()))
    }
}

impl std::error::Error for StoreError {}

/// A cursor as stored, with the backend type that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCursor {
    /// `None` for a cursor written before polld recorded it.
    pub vcs: Option<String>,
    pub cursor: Cursor,
}

impl StoredCursor {
    /// The cursor, if a poller of backend `vcs` can read it.
    pub fn readable_by(&self, vcs: &str) -> Option<&Cursor> {
        match &self.vcs {
            Some(writer) if writer != vcs => None,
            _ => Some(&self.cursor),
        }
    }
}

/// A change waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// Position in the outbox: delivery follows it, per poller.
    pub seq: i64,
    pub change: Change,
}

/// A change the sink refused, kept out of the outbox until `redeliver`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Its place in the outbox, kept for when it goes back.
    pub seq: i64,
    pub change: Change,
    /// Why the sink refused it.
    pub error: String,
}

/// What `polld status` shows for one poller, as far as the store knows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredStatus {
    pub cursor: Option<Cursor>,
    pub last_poll: Option<i64>,
    pub last_success: Option<i64>,
    pub last_error: Option<String>,
    pub pending: u64,
    pub dead_letters: u64,
    /// Why this poller's oldest waiting change has not been delivered yet, else why its
    /// latest dead letter was refused (`refused: ...`).
    pub last_delivery_error: Option<String>,
    /// The replica holding this poller, when replicas share the store.
    pub replica: Option<String>,
}

/// The outcome of one poll, saved for `polld status` (in batches, not per poll).
#[derive(Debug, Clone, PartialEq)]
pub struct PollRecord {
    pub poller: String,
    pub at: i64,
    /// `None` for a successful poll.
    pub error: Option<String>,
}

/// The state of every poller. Methods are async so a networked store needs no thread
/// per call; a store that blocks (SQLite) moves its work off the async workers itself.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every poller's cursor, by poller name.
    async fn cursors(&self) -> Result<HashMap<String, StoredCursor>, StoreError>;

    /// Moves `poller`'s cursor (written by backend `vcs`) and queues `changes` (oldest
    /// first), atomically.
    async fn commit_poll(
        &self,
        poller: &str,
        vcs: &str,
        cursor: &Cursor,
        changes: &[Change],
    ) -> Result<(), StoreError>;

    /// The pollers that have changes waiting for the sink.
    async fn pending_pollers(&self) -> Result<Vec<String>, StoreError>;

    /// Up to `limit` of `poller`'s queued changes, oldest first.
    async fn peek(&self, poller: &str, limit: usize) -> Result<Vec<Queued>, StoreError>;

    /// Removes changes the sink acknowledged.
    async fn acknowledge(&self, seqs: &[i64]) -> Result<(), StoreError>;

    /// Notes a failed delivery attempt of one queued change, for `polld status`.
    async fn record_attempt(&self, seq: i64, error: &str) -> Result<(), StoreError>;

    /// Moves a change the sink refused out of the outbox, so it blocks nothing.
    async fn dead_letter(&self, seq: i64, error: &str) -> Result<(), StoreError>;

    /// Every dead letter, oldest place first (for `polld migrate-store`).
    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError>;

    /// Puts dead letters (of one poller, or all) back in the outbox at their original
    /// places. Returns how many.
    async fn redeliver(&self, poller: Option<&str>) -> Result<usize, StoreError>;

    /// Saves the latest poll outcomes, all at once.
    async fn record_polls(&self, records: &[PollRecord]) -> Result<(), StoreError>;

    /// What the store knows of each named poller, in the order given.
    async fn status(&self, pollers: &[String]) -> Result<Vec<StoredStatus>, StoreError>;

    /// (pending, dead letters) per poller that has any.
    async fn queue_counts(&self) -> Result<HashMap<String, (u64, u64)>, StoreError>;

    /// Keeps the store's size in check over months of running: gives back the space of
    /// delivered changes (an outage's backlog) and trims logs. The daemon calls it
    /// every [`UPKEEP_EVERY`], off the polling and delivery paths. A store with nothing
    /// to do keeps this default.
    async fn upkeep(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// For a store several replicas share: renews this replica's leases and takes or
    /// hands over pollers so that each replica holds its fair share of `pollers`, each
    /// lease good for `lease`; returns the pollers this replica holds now. A store one
    /// process owns keeps this default: `None`, every poller is this process's.
    async fn balance(
        &self,
        _pollers: &[String],
        _lease: std::time::Duration,
    ) -> Result<Option<BTreeSet<String>>, StoreError> {
        Ok(None)
    }

    /// Hands every lease this replica holds to the others at once (a clean stop).
    async fn release_all(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Which replica holds each poller (empty for a store one process owns).
    async fn holders(&self) -> Result<HashMap<String, String>, StoreError> {
        Ok(HashMap::new())
    }

    /// Asks whichever replica holds each of `pollers` to poll it now (a store one
    /// process owns: there is no other replica to ask).
    async fn request_polls(&self, _pollers: &[String]) -> Result<(), StoreError> {
        Ok(())
    }

    /// The poll requests replicas announce with [`Store::request_polls`], as poller
    /// names; `None` for a store one process owns.
    fn poll_requests(&self) -> Option<tokio::sync::mpsc::Receiver<String>> {
        None
    }
}

/// How often the daemon calls [`Store::upkeep`].
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// How a command uses the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `run` and `once`: polling and delivering. A store that cannot share its state
    /// between processes (SQLite) lets only one process have it this way at a time.
    Exclusive,
    /// `status`, `redeliver`: reading, and changes another process then acts on.
    Shared,
    /// `run` with a shared database: polling and delivering only the pollers this
    /// replica holds a lease on, every write checked against it.
    Replica,
}

/// A kind of store polld can keep its state in.
#[async_trait]
pub trait StoreType: Send + Sync + 'static {
    /// Opens (creating if needed) the store for the state directory `state_dir`. A store
    /// that is not polld's, or is corrupt, is an error: state is never silently reset.
    async fn open(&self, state_dir: &Path, access: Access) -> Result<Arc<dyn Store>, StoreError>;

    /// Opens the database at `url` (`[store] url_env`) as replica `replica`, if this
    /// kind of store keeps its state there; `None` (the default) when it does not.
    async fn open_url(
        &self,
        _url: &str,
        _replica: &str,
        _access: Access,
    ) -> Result<Option<Arc<dyn Store>>, StoreError> {
        Ok(None)
    }
}

/// The stores this binary knows. The binary registers them, one line each; the first
/// registered is the default, used when the config names none.
#[derive(Default, Clone)]
pub struct StoreRegistry {
    types: BTreeMap<&'static str, Arc<dyn StoreType>>,
    default: Option<&'static str>,
}

impl fmt::Debug for StoreRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.types.keys()).finish()
    }
}

impl StoreRegistry {
    /// Adds a store under `name` (e.g. `"sqlite"`).
    pub fn register(&mut self, name: &'static str, store: impl StoreType) -> &mut Self {
        self.types.insert(name, Arc::new(store));
        self.default.get_or_insert(name);
        self
    }

    /// Opens the default store.
    pub async fn open(
        &self,
        state_dir: &Path,
        access: Access,
    ) -> Result<Arc<dyn Store>, StoreError> {
        let store = self
            .default
            .and_then(|name| self.types.get(name))
            .ok_or_else(|| StoreError::new("this binary has no store registered"))?;
        store.open(state_dir, access).await
    }

    /// Opens the store whose database `url` names, as replica `replica`.
    pub async fn open_url(
        &self,
        url: &str,
        replica: &str,
        access: Access,
    ) -> Result<Arc<dyn Store>, StoreError> {
        for store in self.types.values() {
            if let Some(opened) = store.open_url(url, replica, access).await? {
                return Ok(opened);
            }
        }
        Err(StoreError::new(format!(
            "no store of this binary keeps its state at {}",
            polld_backend::redact::strip_userinfo(url)
        )))
    }
}

/// Seconds since the Unix epoch, the unit of every timestamp polld stores and shows.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

pub mod conformance;
