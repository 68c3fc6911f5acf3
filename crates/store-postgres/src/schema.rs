//! The tables, and bringing a database to the schema this build writes.
//!
//! `polld_schema` holds one row: the version. Opening a store applies the missing steps
//! of [`MIGRATIONS`] in one transaction (PostgreSQL's DDL is transactional: a failed
//! step leaves the database as it was) under an advisory lock, so replicas started
//! together wait for each other instead of racing to create the same tables.

use tokio_postgres::Client;

use crate::error::{PostgresError, shown_url};

/// `MIGRATIONS[n]` takes a store from version `n` to `n + 1`.
///
/// Records are JSON in `text` columns, as in the SQLite store: they come back exactly as
/// they went in, and `jsonb` would refuse a `\u0000` that a commit message may hold.
/// Times shown by `status` are Unix seconds (`bigint`); lease times are the database's
/// own clock (`timestamptz`, compared with `clock_timestamp()`), so replicas' clocks
/// never need to agree.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE cursors (
        poller     text PRIMARY KEY,
        -- The backend type that wrote the cursor: another backend cannot read it.
        vcs        text,
        cursor     text NOT NULL,
        updated_at bigint NOT NULL
    );
    -- One sequence for every poller's changes: order per poller is what delivery needs,
    -- and a dead letter keeps its number to go back to its place.
    CREATE SEQUENCE outbox_seq AS bigint;
    CREATE TABLE outbox (
        seq        bigint PRIMARY KEY DEFAULT nextval('outbox_seq'),
        poller     text NOT NULL,
        change     text NOT NULL,
        queued_at  bigint NOT NULL,
        attempts   integer NOT NULL DEFAULT 0,
        last_error text
    );
    ALTER SEQUENCE outbox_seq OWNED BY outbox.seq;
    CREATE INDEX outbox_poller_seq ON outbox (poller, seq);
    CREATE TABLE dead_letters (
        seq        bigint PRIMARY KEY,
        poller     text NOT NULL,
        change     text NOT NULL,
        queued_at  bigint NOT NULL,
        failed_at  bigint NOT NULL,
        error      text NOT NULL
    );
    CREATE INDEX dead_letters_poller ON dead_letters (poller);
    CREATE TABLE poll_status (
        poller       text PRIMARY KEY,
        last_poll    bigint,
        last_success bigint,
        last_error   text
    );
    -- Which replica polls and delivers each poller, until when. No row, or an expired
    -- one: the poller is free.
    CREATE TABLE leases (
        poller     text PRIMARY KEY,
        holder     text NOT NULL,
        expires_at timestamptz NOT NULL
    );
    CREATE INDEX leases_holder ON leases (holder);
    -- Every running replica, renewed with its leases: a replica that holds nothing yet
    -- still counts when the others work out their fair share.
    CREATE TABLE replicas (
        replica    text PRIMARY KEY,
        seen_until timestamptz NOT NULL
    );
"];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The advisory lock key migrations run under (`polld` and 1 in ASCII): any number
/// works, as long as every polld uses the same and nothing else in the database does.
const MIGRATION_LOCK: i64 = 0x706f_6c6c_6400_0001;

/// Brings the database `url` (for messages) to [`SCHEMA_VERSION`]; a database already
/// there is only read. A newer schema is an error: this build would misread it.
pub async fn migrate(client: &mut Client, url: &str) -> Result<(), PostgresError> {
    let migrate_error = |version| {
        move |source| PostgresError::Migrate {
            url: shown_url(url),
            version,
            source,
        }
    };
    let transaction = client
        .transaction()
        .await
        .map_err(migrate_error(SCHEMA_VERSION))?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(migrate_error(SCHEMA_VERSION))?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS polld_schema (
                 -- One row at most: the primary key can only be true.
                 one     boolean PRIMARY KEY DEFAULT true CHECK (one),
                 version integer NOT NULL
             )",
        )
        .await
        .map_err(migrate_error(SCHEMA_VERSION))?;
    let found: i32 = transaction
        .query_opt("SELECT version FROM polld_schema", &[])
        .await
        .map_err(migrate_error(SCHEMA_VERSION))?
        .map_or(0, |row| row.get(0));
    if found > SCHEMA_VERSION {
        return Err(PostgresError::TooNew {
            url: shown_url(url),
            found,
            understood: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        // Nothing to write; the lock goes with the transaction.
        return transaction
            .commit()
            .await
            .map_err(migrate_error(SCHEMA_VERSION));
    }
    for (version, step) in (1..).zip(MIGRATIONS).skip(found as usize) {
        transaction
            .batch_execute(step)
            .await
            .map_err(migrate_error(version))?;
    }
    transaction
        .execute(
            "INSERT INTO polld_schema (version) VALUES ($1)
             ON CONFLICT (one) DO UPDATE SET version = excluded.version",
            &[&SCHEMA_VERSION],
        )
        .await
        .map_err(migrate_error(SCHEMA_VERSION))?;
    transaction
        .commit()
        .await
        .map_err(migrate_error(SCHEMA_VERSION))?;
    tracing::info!(
        url = %shown_url(url),
        from = found,
        to = SCHEMA_VERSION,
        "store database schema migrated"
    );
    Ok(())
}
