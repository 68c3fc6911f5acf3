//! polld's default store: one SQLite file in the state directory.
//!
//! `<state_dir>/state.db` (WAL mode, `synchronous = FULL`) holds every cursor, the
//! outbox, the dead letters and the poll status, so that moving a cursor and queueing
//! the changes it found is a single transaction: after a crash, either both happened or
//! neither did. A queued change is deleted only once the sink acknowledged it, which
//! makes delivery at-least-once and in order per poller.
//!
//! SQLite blocks: [`SqliteStore`] runs each operation on tokio's blocking threads. One
//! process at a time may poll and deliver from a state directory ([`StateLock`]).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use polld_backend::Cursor;
use polld_core::model::Change;
use polld_core::store::{
    Access, DeadLetter, PollRecord, Queued, Store, StoreError, StoreType, StoredCursor,
    StoredStatus, unix_now,
};
use rusqlite::{Connection, params};

/// The schema this build writes. Each later version adds one step to [`MIGRATIONS`].
const SCHEMA_VERSION: i64 = 2;

/// `MIGRATIONS[n]` takes a store from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE cursors (
        poller     TEXT PRIMARY KEY,
        cursor     TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE outbox (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        poller     TEXT NOT NULL,
        change     TEXT NOT NULL,
        queued_at  INTEGER NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX outbox_poller ON outbox (poller);
    CREATE TABLE dead_letters (
        seq        INTEGER PRIMARY KEY,
        poller     TEXT NOT NULL,
        change     TEXT NOT NULL,
        queued_at  INTEGER NOT NULL,
        failed_at  INTEGER NOT NULL,
        error      TEXT NOT NULL
    );
    CREATE TABLE poll_status (
        poller       TEXT PRIMARY KEY,
        last_poll    INTEGER,
        last_success INTEGER,
        last_error   TEXT
    );
",
    "
    -- The backend type that wrote each cursor: another backend cannot read it (the
    -- poller's type changed), so it is then ignored. NULL: written before version 2.
    ALTER TABLE cursors ADD COLUMN vcs TEXT;
",
];

/// What can go wrong with the SQLite file.
#[derive(Debug, thiserror::Error)]
pub enum SqliteError {
    #[error("cannot create state directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state database {path}: {source}{}", os.as_ref().map(|e| format!(" ({e})")).unwrap_or_default())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
        /// The operating system's reason, when SQLite's is only "disk I/O error".
        os: Option<std::io::Error>,
    },
    #[error(
        "state database {path} has schema version {found}, newer than this polld understands ({SCHEMA_VERSION}); upgrade polld"
    )]
    TooNew { path: PathBuf, found: i64 },
    #[error(
        "state directory {path} is in use by another polld (`run` or `once`); two at once would poll and deliver everything twice"
    )]
    Locked { path: PathBuf },
    #[error("cannot lock state directory {path}: {source}")]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database: {sql}: {source}")]
    Io {
        sql: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state database task failed: {0}")]
    Task(String),
    #[error("state database holds a record that is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// A handle on the state database. Clones share one connection; every method blocks.
#[derive(Clone)]
pub struct Database {
    connection: Arc<Mutex<Connection>>,
}

impl Database {
    /// Opens (creating if needed) `<state_dir>/state.db`. A file that is not a polld
    /// store, or is corrupt, is an error: state is never silently reset.
    pub fn open(state_dir: &Path) -> Result<Self, SqliteError> {
        create_private_dir(state_dir)?;
        let path = state_dir.join("state.db");
        let mut connection = Connection::open(&path).map_err(|source| SqliteError::Open {
            path: path.clone(),
            source,
            os: None,
        })?;
        restrict_to_owner(&path);
        // The WAL is truncated back to JOURNAL_SIZE_LIMIT after each checkpoint instead of
        // staying as large as its largest burst.
        let setup = connection
            .busy_timeout(std::time::Duration::from_secs(10))
            .and_then(|()| reclaim_space_incrementally(&connection))
            .and_then(|()| {
                connection.execute_batch(&format!(
                    "PRAGMA journal_mode = WAL;
                     PRAGMA synchronous = FULL;
                     PRAGMA foreign_keys = ON;
                     PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT};"
                ))
            });
        if let Err(source) = setup {
            return Err(SqliteError::Open {
                path,
                source,
                os: os_error(&connection),
            });
        }
        if let Err(error) = migrate(&mut connection, &path) {
            return Err(match error {
                SqliteError::Open {
                    path,
                    source,
                    os: None,
                } => SqliteError::Open {
                    path,
                    source,
                    os: os_error(&connection),
                },
                other => other,
            });
        }
        Ok(Database {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Gives back the space of deleted rows (delivered changes) once at least a quarter
    /// of the file is free, and truncates the WAL. A store never shrinks by itself:
    /// without this, the outbox of one long outage would keep `state.db` at its size
    /// for good.
    pub fn upkeep(&self) -> Result<(), SqliteError> {
        let connection = self.lock();
        let pages: i64 = connection.query_row("PRAGMA page_count", [], |row| row.get(0))?;
        let free: i64 = connection.query_row("PRAGMA freelist_count", [], |row| row.get(0))?;
        if free > 0 && free * 4 >= pages {
            // SQLite frees one page per step of this pragma: step it to the end.
            let mut statement = connection.prepare("PRAGMA incremental_vacuum")?;
            let mut steps = statement.query([])?;
            while steps.next()?.is_some() {}
            tracing::info!(
                freed_pages = free,
                pages,
                "state database: gave back the space of delivered changes"
            );
        }
        connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions
        // roll back on drop), so a poisoned lock is still safe to use.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every poller's cursor, by poller name.
    pub fn cursors(&self) -> Result<HashMap<String, StoredCursor>, SqliteError> {
        let connection = self.lock();
        let mut statement = connection.prepare("SELECT poller, vcs, cursor FROM cursors")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, Option<String>>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut cursors = HashMap::new();
        for row in rows {
            let (poller, vcs, cursor) = row?;
            let cursor = serde_json::from_str(&cursor)?;
            cursors.insert(poller, StoredCursor { vcs, cursor });
        }
        Ok(cursors)
    }

    /// Moves `poller`'s cursor (written by backend `vcs`) and queues `changes` (oldest
    /// first), atomically.
    pub fn commit_poll(
        &self,
        poller: &str,
        vcs: &str,
        cursor: &Cursor,
        changes: &[Change],
    ) -> Result<(), SqliteError> {
        let mut connection = self.lock();
        let result = Self::write_poll(&mut connection, poller, vcs, cursor, changes);
        result.map_err(|error| with_os_error(&connection, error))
    }

    fn write_poll(
        connection: &mut Connection,
        poller: &str,
        vcs: &str,
        cursor: &Cursor,
        changes: &[Change],
    ) -> Result<(), SqliteError> {
        let transaction = connection.transaction()?;
        let now = unix_now();
        transaction.execute(
            "INSERT INTO cursors (poller, vcs, cursor, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (poller) DO UPDATE SET
                 vcs = excluded.vcs, cursor = excluded.cursor, updated_at = excluded.updated_at",
            params![poller, vcs, serde_json::to_string(cursor)?, now],
        )?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO outbox (poller, change, queued_at) VALUES (?1, ?2, ?3)",
            )?;
            for change in changes {
                insert.execute(params![poller, serde_json::to_string(change)?, now])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// (pending, dead letters) per poller that has any.
    pub fn queue_counts(&self) -> Result<HashMap<String, (u64, u64)>, SqliteError> {
        let connection = self.lock();
        let mut counts: HashMap<String, (u64, u64)> = HashMap::new();
        for (table, dead) in [("outbox", false), ("dead_letters", true)] {
            let mut statement = connection.prepare_cached(&format!(
                "SELECT poller, COUNT(*) FROM {table} GROUP BY poller"
            ))?;
            let rows = statement.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })?;
            for row in rows {
                let (poller, count) = row?;
                let entry = counts.entry(poller).or_default();
                if dead {
                    entry.1 = count as u64;
                } else {
                    entry.0 = count as u64;
                }
            }
        }
        Ok(counts)
    }

    /// The pollers that have changes waiting for the sink.
    pub fn pending_pollers(&self) -> Result<Vec<String>, SqliteError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached("SELECT DISTINCT poller FROM outbox")?;
        let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Up to `limit` of `poller`'s queued changes, oldest first.
    pub fn peek(&self, poller: &str, limit: usize) -> Result<Vec<Queued>, SqliteError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT seq, change FROM outbox WHERE poller = ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = statement.query_map(params![poller, limit as i64], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut queued = Vec::new();
        for row in rows {
            let (seq, change) = row?;
            queued.push(Queued {
                seq,
                change: serde_json::from_str(&change)?,
            });
        }
        Ok(queued)
    }

    /// Every dead letter, by place.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, SqliteError> {
        let connection = self.lock();
        let mut statement = connection
            .prepare_cached("SELECT seq, change, error FROM dead_letters ORDER BY seq")?;
        let rows = statement.query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut letters = Vec::new();
        for row in rows {
            let (seq, change, error) = row?;
            letters.push(DeadLetter {
                seq,
                change: serde_json::from_str(&change)?,
                error,
            });
        }
        Ok(letters)
    }

    /// Removes changes the sink acknowledged.
    pub fn acknowledge(&self, seqs: &[i64]) -> Result<(), SqliteError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        {
            let mut delete = transaction.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
            for seq in seqs {
                delete.execute([seq])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// Notes a failed delivery attempt of one queued change, for `polld status`.
    pub fn record_attempt(&self, seq: i64, error: &str) -> Result<(), SqliteError> {
        self.lock().execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
            params![seq, error],
        )?;
        Ok(())
    }

    /// Moves a change the sink refused out of the outbox, so it blocks nothing.
    pub fn dead_letter(&self, seq: i64, error: &str) -> Result<(), SqliteError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        transaction.execute(
            "INSERT INTO dead_letters (seq, poller, change, queued_at, failed_at, error)
             SELECT seq, poller, change, queued_at, ?2, ?3 FROM outbox WHERE seq = ?1",
            params![seq, unix_now(), error],
        )?;
        transaction.execute("DELETE FROM outbox WHERE seq = ?1", [seq])?;
        transaction.commit()?;
        Ok(())
    }

    /// Puts dead letters (of one poller, or all) back in the outbox at their original
    /// positions. Returns how many.
    pub fn redeliver(&self, poller: Option<&str>) -> Result<usize, SqliteError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        let filter = "(?1 IS NULL OR poller = ?1)";
        transaction.execute(
            &format!(
                "INSERT INTO outbox (seq, poller, change, queued_at)
                 SELECT seq, poller, change, queued_at FROM dead_letters WHERE {filter}"
            ),
            [poller],
        )?;
        let moved = transaction.execute(
            &format!("DELETE FROM dead_letters WHERE {filter}"),
            [poller],
        )?;
        transaction.commit()?;
        Ok(moved)
    }

    /// Saves the latest poll outcomes, all in one transaction.
    pub fn record_polls(&self, records: &[PollRecord]) -> Result<(), SqliteError> {
        let mut connection = self.lock();
        let transaction = connection.transaction()?;
        {
            let mut upsert = transaction.prepare_cached(
                "INSERT INTO poll_status (poller, last_poll, last_success, last_error)
                 VALUES (?1, ?2, CASE WHEN ?3 IS NULL THEN ?2 END, ?3)
                 ON CONFLICT (poller) DO UPDATE SET
                     last_poll = excluded.last_poll,
                     last_success = COALESCE(excluded.last_success, poll_status.last_success),
                     last_error = excluded.last_error",
            )?;
            for record in records {
                upsert.execute(params![record.poller, record.at, record.error])?;
            }
        }
        transaction.commit()?;
        Ok(())
    }

    /// What the store knows of each named poller, in the order given.
    ///
    /// Six scans of whole tables, not six queries per poller: the status page asks every
    /// 5 s, and with 10,000 pollers per-poller queries held the connection (and with it
    /// every poll's commit) for over half a second.
    pub fn status(&self, pollers: &[String]) -> Result<Vec<StoredStatus>, SqliteError> {
        let connection = self.lock();
        let mut cursors =
            first_per_poller(&connection, "SELECT poller, cursor FROM cursors", |row| {
                row.get::<_, String>(1)
            })?;
        let mut polls = first_per_poller(
            &connection,
            "SELECT poller, last_poll, last_success, last_error FROM poll_status",
            |row| Ok((row.get(1)?, row.get(2)?, row.get(3)?)),
        )?;
        let pending = first_per_poller(
            &connection,
            "SELECT poller, COUNT(*) FROM outbox GROUP BY poller",
            |row| row.get::<_, i64>(1),
        )?;
        let dead_letters = first_per_poller(
            &connection,
            "SELECT poller, COUNT(*) FROM dead_letters GROUP BY poller",
            |row| row.get::<_, i64>(1),
        )?;
        // The oldest waiting change's failure (what blocks delivery now), else the
        // newest refusal.
        let mut blocking = first_per_poller(
            &connection,
            "SELECT poller, last_error FROM outbox WHERE last_error IS NOT NULL ORDER BY seq",
            |row| row.get::<_, String>(1),
        )?;
        let mut refused = first_per_poller(
            &connection,
            "SELECT poller, 'refused: ' || error FROM dead_letters ORDER BY failed_at DESC, seq DESC",
            |row| row.get::<_, String>(1),
        )?;
        drop(connection);
        let mut statuses = Vec::with_capacity(pollers.len());
        for poller in pollers {
            let (last_poll, last_success, last_error) =
                polls.remove(poller).unwrap_or((None, None, None));
            statuses.push(StoredStatus {
                cursor: cursors
                    .remove(poller)
                    .map(|c| serde_json::from_str(&c))
                    .transpose()?,
                last_poll,
                last_success,
                last_error,
                pending: pending.get(poller).copied().unwrap_or(0) as u64,
                dead_letters: dead_letters.get(poller).copied().unwrap_or(0) as u64,
                last_delivery_error: blocking.remove(poller).or_else(|| refused.remove(poller)),
                replica: None,
            });
        }
        Ok(statuses)
    }
}

/// Runs `sql`, whose first column is a poller's name, and keeps what `read` makes of the
/// first row of each poller.
fn first_per_poller<T>(
    connection: &Connection,
    sql: &str,
    read: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<HashMap<String, T>, SqliteError> {
    let mut statement = connection.prepare_cached(sql)?;
    let mut rows = statement.query([])?;
    let mut found = HashMap::new();
    while let Some(row) = rows.next()? {
        let poller: String = row.get(0)?;
        if let Entry::Vacant(slot) = found.entry(poller) {
            slot.insert(read(row)?);
        }
    }
    Ok(found)
}

/// Exclusive use of a state directory, held while it lives. Only one process may poll
/// and deliver from a store at a time; `status` and `redeliver` need no lock.
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the lock on `<state_dir>/lock`, or fails at once if another process has it.
    /// The operating system releases it when the process dies, `kill -9` included.
    pub fn acquire(state_dir: &Path) -> Result<Self, SqliteError> {
        create_private_dir(state_dir)?;
        let path = state_dir.join("lock");
        let lock_error = |source| SqliteError::Lock {
            path: state_dir.to_path_buf(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(lock_error)?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(SqliteError::Locked {
                path: state_dir.to_path_buf(),
            }),
            Err(std::fs::TryLockError::Error(error)) => Err(lock_error(error)),
        }
    }
}

/// The most bytes the WAL keeps between checkpoints.
const JOURNAL_SIZE_LIMIT: u64 = 4 * 1024 * 1024;

/// Makes free pages reclaimable by `PRAGMA incremental_vacuum` ([`Database::upkeep`]).
/// A new database takes the setting before its first table and before it turns to WAL
/// mode (SQLite ignores it after either); one created by polld 0.1
/// (without it) is rewritten once with `VACUUM`, which a state database of cursors and
/// a queue does in milliseconds.
fn reclaim_space_incrementally(connection: &Connection) -> rusqlite::Result<()> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = connection.query_row("PRAGMA auto_vacuum", [], |row| row.get(0))?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    connection.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
    let tables: i64 = connection.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
        [],
        |row| row.get(0),
    )?;
    if tables > 0 {
        connection.execute_batch("VACUUM;")?;
    }
    Ok(())
}

fn migrate(connection: &mut Connection, path: &Path) -> Result<(), SqliteError> {
    let open_error = |source| SqliteError::Open {
        path: path.to_path_buf(),
        source,
        os: None,
    };
    let found: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(open_error)?;
    if found > SCHEMA_VERSION {
        return Err(SqliteError::TooNew {
            path: path.to_path_buf(),
            found,
        });
    }
    for (version, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let transaction = connection.transaction().map_err(open_error)?;
        transaction.execute_batch(step).map_err(open_error)?;
        transaction
            .pragma_update(None, "user_version", version as i64 + 1)
            .map_err(open_error)?;
        transaction.commit().map_err(open_error)?;
    }
    Ok(())
}

/// Adds the operating system's reason to SQLite's I/O errors: "disk I/O error" alone
/// does not say that the disk is full or read-only.
fn with_os_error(connection: &Connection, error: SqliteError) -> SqliteError {
    let SqliteError::Sql(sql) = &error else {
        return error;
    };
    let is_io = matches!(
        sql.sqlite_error_code(),
        Some(
            rusqlite::ErrorCode::SystemIoFailure
                | rusqlite::ErrorCode::DiskFull
                | rusqlite::ErrorCode::CannotOpen
        )
    );
    match os_error(connection) {
        Some(source) if is_io => SqliteError::Io {
            source,
            sql: sql.to_string(),
        },
        _ => error,
    }
}

/// The errno of the connection's last failed system call, if any.
fn os_error(connection: &Connection) -> Option<std::io::Error> {
    // SAFETY: the handle belongs to `connection`, which is borrowed for the call.
    let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(connection.handle()) };
    (errno != 0).then(|| std::io::Error::from_raw_os_error(errno))
}

/// The state dir holds mirrors of private repositories: only its owner may read it.
fn create_private_dir(dir: &Path) -> Result<(), SqliteError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .map_err(|source| SqliteError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })
}

fn restrict_to_owner(file: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(error) = std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %file.display(), %error, "cannot restrict the state database to its owner");
        }
    }
}

/// The SQLite store as polld uses it: the [`Database`] behind the async [`Store`] trait,
/// and, for `run` and `once`, the lock that keeps a second polld away.
#[derive(Clone)]
pub struct SqliteStore {
    database: Database,
    _lock: Option<Arc<StateLock>>,
}

impl SqliteStore {
    /// Opens `<state_dir>/state.db`; with [`Access::Exclusive`], first takes the state
    /// directory's lock (failing at once if another polld has it).
    pub fn open(state_dir: &Path, access: Access) -> Result<SqliteStore, SqliteError> {
        let lock = match access {
            Access::Exclusive | Access::Replica => Some(Arc::new(StateLock::acquire(state_dir)?)),
            Access::Shared => None,
        };
        Ok(SqliteStore {
            database: Database::open(state_dir)?,
            _lock: lock,
        })
    }

    /// Runs `work` on the database from a blocking thread.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, SqliteError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let database = self.database.clone();
        match tokio::task::spawn_blocking(move || work(&database)).await {
            Ok(result) => result.map_err(StoreError::new),
            Err(join) => Err(StoreError::new(SqliteError::Task(join.to_string()))),
        }
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn cursors(&self) -> Result<HashMap<String, StoredCursor>, StoreError> {
        self.run(Database::cursors).await
    }

    async fn commit_poll(
        &self,
        poller: &str,
        vcs: &str,
        cursor: &Cursor,
        changes: &[Change],
    ) -> Result<(), StoreError> {
        let (poller, vcs, cursor, changes) = (
            poller.to_owned(),
            vcs.to_owned(),
            cursor.clone(),
            changes.to_vec(),
        );
        self.run(move |db| db.commit_poll(&poller, &vcs, &cursor, &changes))
            .await
    }

    async fn pending_pollers(&self) -> Result<Vec<String>, StoreError> {
        self.run(Database::pending_pollers).await
    }

    async fn peek(&self, poller: &str, limit: usize) -> Result<Vec<Queued>, StoreError> {
        let poller = poller.to_owned();
        self.run(move |db| db.peek(&poller, limit)).await
    }

    async fn acknowledge(&self, seqs: &[i64]) -> Result<(), StoreError> {
        let seqs = seqs.to_vec();
        self.run(move |db| db.acknowledge(&seqs)).await
    }

    async fn record_attempt(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.run(move |db| db.record_attempt(seq, &error)).await
    }

    async fn dead_letter(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        let error = error.to_owned();
        self.run(move |db| db.dead_letter(seq, &error)).await
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.run(|db| db.dead_letters()).await
    }

    async fn redeliver(&self, poller: Option<&str>) -> Result<usize, StoreError> {
        let poller = poller.map(str::to_owned);
        self.run(move |db| db.redeliver(poller.as_deref())).await
    }

    async fn record_polls(&self, records: &[PollRecord]) -> Result<(), StoreError> {
        let records = records.to_vec();
        self.run(move |db| db.record_polls(&records)).await
    }

    async fn status(&self, pollers: &[String]) -> Result<Vec<StoredStatus>, StoreError> {
        let pollers = pollers.to_vec();
        self.run(move |db| db.status(&pollers)).await
    }

    async fn queue_counts(&self) -> Result<HashMap<String, (u64, u64)>, StoreError> {
        self.run(Database::queue_counts).await
    }

    async fn upkeep(&self) -> Result<(), StoreError> {
        self.run(Database::upkeep).await
    }
}

/// The SQLite store type; register it with `stores.register("sqlite", Sqlite)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sqlite;

#[async_trait]
impl StoreType for Sqlite {
    async fn open(&self, state_dir: &Path, access: Access) -> Result<Arc<dyn Store>, StoreError> {
        let state_dir = state_dir.to_path_buf();
        match tokio::task::spawn_blocking(move || SqliteStore::open(&state_dir, access)).await {
            Ok(Ok(store)) => Ok(Arc::new(store)),
            Ok(Err(error)) => Err(StoreError::new(error)),
            Err(join) => Err(StoreError::new(SqliteError::Task(join.to_string()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn conforms() {
        let dirs = Mutex::new(Vec::new());
        polld_core::store::conformance::run_all(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(dir.path(), Access::Exclusive).unwrap();
            dirs.lock().unwrap().push(dir);
            async move { Arc::new(store) as Arc<dyn Store> }
        })
        .await;
    }

    #[tokio::test]
    async fn what_is_stored_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cursor = Cursor(serde_json::json!({"refs": {}}));
        let change = polld_core::store::conformance::change("app", "a");
        let store = SqliteStore::open(dir.path(), Access::Exclusive).unwrap();
        store
            .commit_poll("app", "git", &cursor, &[change])
            .await
            .unwrap();
        drop(store);
        let store = SqliteStore::open(dir.path(), Access::Shared).unwrap();
        assert_eq!(store.cursors().await.unwrap()["app"].cursor, cursor);
        assert_eq!(store.peek("app", 10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn upkeep_gives_back_the_space_of_a_delivered_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let size = || {
            let file = |name: &str| std::fs::metadata(dir.path().join(name)).map_or(0, |m| m.len());
            file("state.db") + file("state.db-wal")
        };
        let cursor = Cursor(serde_json::json!({"refs": {}}));
        let store = SqliteStore::open(dir.path(), Access::Exclusive).unwrap();
        store.upkeep().await.unwrap();
        let empty = size();
        // An outage's backlog: 5,000 changes with 4 KiB messages, then all delivered.
        let mut change = polld_core::store::conformance::change("app", "a");
        change.comments = "x".repeat(4096);
        let changes = vec![change; 5_000];
        store
            .commit_poll("app", "git", &cursor, &changes)
            .await
            .unwrap();
        let seqs: Vec<i64> = store
            .peek("app", 10_000)
            .await
            .unwrap()
            .iter()
            .map(|q| q.seq)
            .collect();
        store.acknowledge(&seqs).await.unwrap();
        let backlog = size();
        assert!(backlog > empty + 20_000_000, "{empty} -> {backlog}");
        store.upkeep().await.unwrap();
        let after = size();
        assert!(after < empty + 1_000_000, "{empty} -> {backlog} -> {after}");
        // A 0.1 store (no incremental vacuum) is converted when opened.
        drop(store);
        let old = tempfile::tempdir().unwrap();
        {
            let connection = Connection::open(old.path().join("state.db")).unwrap();
            connection
                .execute_batch(&format!("{} PRAGMA user_version = 1;", MIGRATIONS[0]))
                .unwrap();
        }
        let reopened = Database::open(old.path()).unwrap();
        let mode: i64 = reopened
            .lock()
            .query_row("PRAGMA auto_vacuum", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, 2);
    }

    #[test]
    fn a_corrupt_database_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("state.db"),
            b"this is not sqlite, not at all, no",
        )
        .unwrap();
        let error = Database::open(dir.path())
            .err()
            .expect("corrupt store must not open");
        assert!(error.to_string().contains("state.db"), "{error}");
    }

    #[test]
    fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = SqliteStore::open(dir.path(), Access::Exclusive).unwrap();
        assert!(matches!(
            SqliteStore::open(dir.path(), Access::Exclusive),
            Err(SqliteError::Locked { .. })
        ));
        SqliteStore::open(dir.path(), Access::Shared).unwrap();
        drop(held);
        SqliteStore::open(dir.path(), Access::Exclusive).unwrap();
    }
}
