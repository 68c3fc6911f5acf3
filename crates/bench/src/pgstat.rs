//! What a PostgreSQL database saw, from its statistics views, and what the server's
//! processes spent, from /proc: for `--replicas`.
//!
//! The cumulative statistics lag: a backend flushes its counters at most once a second,
//! and when it goes idle right after a flush, only about ten seconds later (or at its
//! next transaction, or when it exits). Counts taken while clients are connected are
//! therefore exact only to within that lag at each end; counts taken once every
//! client's session has ended ([`wait_sessions_gone`]) are exact.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use polld_test_support::postgres::PgServer;

/// One database's cumulative counters (`pg_stat_database`) and its tables' row writes
/// (`pg_stat_user_tables`), read together.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub xact_commit: i64,
    pub xact_rollback: i64,
    pub tup_inserted: i64,
    pub tup_updated: i64,
    pub tup_deleted: i64,
    /// Per table: (inserted, updated, deleted) rows.
    pub tables: BTreeMap<String, Writes>,
}

/// Rows a table had inserted, updated and deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Writes {
    pub inserted: i64,
    pub updated: i64,
    pub deleted: i64,
}

impl Writes {
    pub fn total(&self) -> i64 {
        self.inserted + self.updated + self.deleted
    }

    fn minus(&self, before: &Writes) -> Writes {
        Writes {
            inserted: self.inserted - before.inserted,
            updated: self.updated - before.updated,
            deleted: self.deleted - before.deleted,
        }
    }
}

/// The difference of two snapshots of one database.
#[derive(Debug, Clone, Default)]
pub struct Delta {
    pub xact_commit: i64,
    pub xact_rollback: i64,
    /// Rows written in the whole database (`tup_inserted + tup_updated + tup_deleted`).
    pub rows_written: i64,
    pub tables: BTreeMap<String, Writes>,
}

impl Delta {
    /// Rows written to `table`.
    pub fn table(&self, table: &str) -> Writes {
        self.tables.get(table).copied().unwrap_or_default()
    }
}

impl Snapshot {
    /// Reads `database`'s counters. Its tables' counters are read first, from a session
    /// in the database itself (its own transaction is counted there once it ends); the
    /// database's counters then from the `postgres` database, so the reading adds
    /// nothing to them. Read the two ends of a measurement with [`Snapshot::take`] and
    /// [`Snapshot::take_after`], which put the reading session before and after.
    pub fn take(pg: &PgServer, database: &str) -> Result<Snapshot> {
        let tables = table_writes(pg, database)?;
        let mut snapshot = database_counters(pg, database)?;
        snapshot.tables = tables;
        Ok(snapshot)
    }

    /// [`Snapshot::take`] for the end of a measurement: the database's counters first,
    /// so the session that reads the tables' counters is not counted in them.
    pub fn take_after(pg: &PgServer, database: &str) -> Result<Snapshot> {
        let mut snapshot = database_counters(pg, database)?;
        snapshot.tables = table_writes(pg, database)?;
        Ok(snapshot)
    }

    pub fn since(&self, before: &Snapshot) -> Delta {
        let tables = self
            .tables
            .iter()
            .map(|(name, after)| {
                let before = before.tables.get(name).copied().unwrap_or_default();
                (name.clone(), after.minus(&before))
            })
            .collect();
        Delta {
            xact_commit: self.xact_commit - before.xact_commit,
            xact_rollback: self.xact_rollback - before.xact_rollback,
            rows_written: (self.tup_inserted + self.tup_updated + self.tup_deleted)
                - (before.tup_inserted + before.tup_updated + before.tup_deleted),
            tables,
        }
    }
}

/// `psql`'s tuples-only output split into rows of fields.
fn rows(output: &str) -> Vec<Vec<&str>> {
    output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.split('|').collect())
        .collect()
}

fn number(field: Option<&&str>, what: &str) -> Result<i64> {
    field
        .with_context(|| format!("no {what} in psql's output"))?
        .trim()
        .parse()
        .with_context(|| format!("{what} is not a number"))
}

fn database_counters(pg: &PgServer, database: &str) -> Result<Snapshot> {
    let out = pg.psql(
        "postgres",
        &format!(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted \
             FROM pg_stat_database WHERE datname = '{database}'"
        ),
    );
    let rows = rows(&out);
    let Some(row) = rows.first() else {
        bail!("no pg_stat_database row for {database}");
    };
    Ok(Snapshot {
        xact_commit: number(row.first(), "xact_commit")?,
        xact_rollback: number(row.get(1), "xact_rollback")?,
        tup_inserted: number(row.get(2), "tup_inserted")?,
        tup_updated: number(row.get(3), "tup_updated")?,
        tup_deleted: number(row.get(4), "tup_deleted")?,
        tables: BTreeMap::new(),
    })
}

fn table_writes(pg: &PgServer, database: &str) -> Result<BTreeMap<String, Writes>> {
    let out = pg.psql(
        database,
        "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables",
    );
    rows(&out)
        .iter()
        .map(|row| {
            Ok((
                row.first().map_or("", |name| name.trim()).to_owned(),
                Writes {
                    inserted: number(row.get(1), "n_tup_ins")?,
                    updated: number(row.get(2), "n_tup_upd")?,
                    deleted: number(row.get(3), "n_tup_del")?,
                },
            ))
        })
        .collect()
}

/// Waits until no polld session (application name `polld …`) is connected to
/// `database`: their counters are then all flushed (a backend flushes as it exits).
pub fn wait_sessions_gone(pg: &PgServer, database: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = pg.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = '{database}' AND application_name LIKE 'polld %'"
            ),
        );
        if out.trim() == "0" {
            // A backend leaves pg_stat_activity a moment before its last flush.
            std::thread::sleep(Duration::from_millis(300));
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("polld's sessions to {database} did not end within 20 s ({out} left)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Fields of /proc/PID/stat after the command name (state is field 0).
fn stat_fields(pid: i64) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn ticks(fields: &[String], index: usize) -> f64 {
    fields
        .get(index)
        .and_then(|f| f.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// CPU seconds the server has spent: the postmaster's own and its reaped children's
/// (utime, stime, cutime, cstime), plus every live child's (backends, the WAL writer,
/// the checkpointer, autovacuum).
pub fn server_cpu(pg: &PgServer) -> Option<f64> {
    let pid_file = std::fs::read_to_string(pg.dir().join("data").join("postmaster.pid")).ok()?;
    let postmaster: i64 = pid_file.lines().next()?.trim().parse().ok()?;
    let own = stat_fields(postmaster)?;
    let mut total = ticks(&own, 11) + ticks(&own, 12) + ticks(&own, 13) + ticks(&own, 14);
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i64>().ok())
        else {
            continue;
        };
        let Some(fields) = stat_fields(pid) else {
            continue;
        };
        if fields.get(1).and_then(|p| p.parse::<i64>().ok()) == Some(postmaster) {
            total += ticks(&fields, 11) + ticks(&fields, 12);
        }
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(total / if hz > 0 { hz as f64 } else { 100.0 })
}

/// (busy, total) jiffies of the whole machine, from /proc/stat's `cpu` line.
pub fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = values.iter().take(8).sum();
    // idle + iowait
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}
