//! Leases: which replica polls and delivers each poller, and fencing, which makes a
//! lost lease stop a replica's writes.
//!
//! A lease is a row of `leases` (poller, holder, expires_at) with the database's clock:
//! replicas' clocks never need to agree. Each replica calls [`PostgresStore::balance`]
//! well inside its lease (a third of it is a good period); one call, one transaction,
//! renews what it holds, counts the live replicas, takes free pollers up to its fair
//! share or lets go of its surplus, and says what it now holds. Balancing is serialized
//! across replicas by an advisory lock, so each call sees the others' last decisions and
//! the split settles in a few rounds instead of oscillating.
//!
//! **Fencing** ([`fence`]): every write that moves a poller's state (`commit_poll`,
//! `acknowledge`, `dead_letter`, `record_attempt`) first takes a share lock on this
//! replica's unexpired lease row for that poller, in the same transaction. Taking a
//! lease over updates that row, so it waits until such a write has committed, and the
//! new holder then reads its cursor after it. A replica whose lease expired (paused,
//! partitioned, or simply late) finds no such row and writes nothing.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use polld_core::store::{LeaseLost, StoreError};
use tokio_postgres::Transaction;

use crate::PostgresStore;
use crate::error::PostgresError;

/// The advisory lock key balancing runs under (`polld` and 2 in ASCII).
const BALANCE_LOCK: i64 = 0x706f_6c6c_6400_0002;

/// How long a balance waits for a lock (the advisory lock, or its own lease rows held
/// by its own writes in flight) before giving up for this round: a replica that
/// stopped inside a transaction must not stall every other replica's balancing.
const BALANCE_LOCK_TIMEOUT: &str = "5s";

impl PostgresStore {
    /// One round of balancing, in one transaction: renews this replica's leases (and its
    /// heartbeat in `replicas`), drops leases on pollers no longer in `pollers`, works out
    /// its fair share of `pollers` among the live replicas ([`fair_share`]), takes free
    /// or expired pollers up to it or releases its surplus above it (for a replica that
    /// has less to take), and returns the pollers it now holds, each for `lease` from
    /// the database's now.
    ///
    /// Call it every `lease / 3` or so, with the same `pollers` on every replica: a
    /// replica that misses its renewals for `lease` loses its pollers to the others.
    /// Treat a held poller as lost `lease` after the call *started* (a conservative
    /// local deadline), or at once when this fails.
    pub async fn balance(
        &self,
        pollers: &[String],
        lease: Duration,
    ) -> Result<BTreeSet<String>, StoreError> {
        Ok(self.balance_round(pollers, lease).await?)
    }

    async fn balance_round(
        &self,
        pollers: &[String],
        lease: Duration,
    ) -> Result<BTreeSet<String>, PostgresError> {
        let wanted: BTreeSet<&str> = pollers.iter().map(String::as_str).collect();
        let wanted: Vec<&str> = wanted.into_iter().collect();
        let lease = lease.as_secs_f64();
        let me = self.replica();
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        transaction
            .batch_execute(&format!(
                "SET LOCAL lock_timeout = '{BALANCE_LOCK_TIMEOUT}'"
            ))
            .await?;
        transaction
            .execute("SELECT pg_advisory_xact_lock($1)", &[&BALANCE_LOCK])
            .await?;
        transaction
            .execute(
                "INSERT INTO replicas (replica, seen_until)
                 VALUES ($1, clock_timestamp() + $2 * interval '1 second')
                 ON CONFLICT (replica) DO UPDATE SET seen_until = excluded.seen_until",
                &[&me, &lease],
            )
            .await?;
        // This replica's rows, locked in poller order: the order fencing takes its share
        // locks in, so the two may wait for each other but never deadlock.
        transaction
            .execute(
                "SELECT poller FROM leases WHERE holder = $1 ORDER BY poller FOR UPDATE",
                &[&me],
            )
            .await?;
        transaction
            .execute(
                "DELETE FROM leases WHERE holder = $1 AND NOT (poller = ANY($2))",
                &[&me, &wanted],
            )
            .await?;
        // Renewed even if expired: nobody took it meanwhile (the row would say so), so
        // nobody else polled or delivered it.
        transaction
            .execute(
                "UPDATE leases SET expires_at = clock_timestamp() + $2 * interval '1 second'
                 WHERE holder = $1",
                &[&me, &lease],
            )
            .await?;
        let live: Vec<String> = transaction
            .query(
                "SELECT replica FROM replicas WHERE seen_until > clock_timestamp()
                 UNION
                 SELECT holder FROM leases WHERE expires_at > clock_timestamp()",
                &[],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let share = i64::try_from(fair_share(wanted.len(), &live, me)).unwrap_or(i64::MAX);
        let mine: i64 = transaction
            .query_one("SELECT count(*) FROM leases WHERE holder = $1", &[&me])
            .await?
            .get(0);
        if mine > share {
            let released = transaction
                .execute(
                    "DELETE FROM leases WHERE poller IN (
                         SELECT poller FROM leases WHERE holder = $1
                         ORDER BY poller DESC LIMIT $2)",
                    &[&me, &(mine - share)],
                )
                .await?;
            tracing::debug!(replica = me, released, share, "leases: surplus released");
        } else if mine < share {
            self.take(&transaction, &wanted, share - mine, lease)
                .await?;
        }
        let held = transaction
            .query("SELECT poller FROM leases WHERE holder = $1", &[&me])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        transaction.commit().await?;
        Ok(held)
    }

    /// Takes up to `count` of `wanted` that are free (no lease row) or expired, in
    /// poller order. An expired row that a write in flight still holds (its replica
    /// stopped inside the transaction) is skipped, not waited for: the next round
    /// takes it.
    async fn take(
        &self,
        transaction: &Transaction<'_>,
        wanted: &[&str],
        count: i64,
        lease: f64,
    ) -> Result<(), PostgresError> {
        let me = self.replica();
        let mut candidates: Vec<String> = transaction
            .query(
                "SELECT poller FROM leases
                 WHERE poller = ANY($1) AND expires_at <= clock_timestamp()
                 FOR UPDATE SKIP LOCKED",
                &[&wanted],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        candidates.extend(
            transaction
                .query(
                    "SELECT p FROM unnest($1::text[]) AS p
                     WHERE NOT EXISTS (SELECT 1 FROM leases WHERE poller = p)",
                    &[&wanted],
                )
                .await?
                .iter()
                .map(|row| row.get::<_, String>(0)),
        );
        candidates.sort();
        candidates.truncate(usize::try_from(count).unwrap_or(0));
        if candidates.is_empty() {
            return Ok(());
        }
        let taken = transaction
            .query(
                "WITH previous AS (SELECT poller, holder FROM leases WHERE poller = ANY($2))
                 INSERT INTO leases (poller, holder, expires_at)
                 SELECT p, $1, clock_timestamp() + $3 * interval '1 second'
                 FROM unnest($2::text[]) AS p
                 ON CONFLICT (poller) DO UPDATE
                     SET holder = excluded.holder, expires_at = excluded.expires_at
                     WHERE leases.expires_at <= clock_timestamp()
                 RETURNING poller, (SELECT holder FROM previous WHERE previous.poller = leases.poller)",
                &[&me, &candidates, &lease],
            )
            .await?;
        for row in &taken {
            let poller: &str = row.get(0);
            if let Some(from) = row.get::<_, Option<&str>>(1)
                && from != me
            {
                tracing::info!(poller, from, replica = me, "lease taken over");
            }
        }
        Ok(())
    }

    /// Lets go of every lease and leaves the live replicas, for a clean stop: the others
    /// take this replica's pollers at their next balance instead of after `lease`.
    pub async fn release_all(&self) -> Result<(), StoreError> {
        let me = self.replica();
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(PostgresError::from)?;
        for sql in [
            "DELETE FROM leases WHERE holder = $1",
            "DELETE FROM replicas WHERE replica = $1",
        ] {
            transaction
                .execute(sql, &[&me])
                .await
                .map_err(PostgresError::from)?;
        }
        transaction.commit().await.map_err(PostgresError::from)?;
        Ok(())
    }

    /// The replica holding each poller that has an unexpired lease, for `status`.
    pub async fn holders(&self) -> Result<HashMap<String, String>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT poller, holder FROM leases WHERE expires_at > clock_timestamp()",
                &[],
            )
            .await
            .map_err(PostgresError::from)?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }
}

/// How many of `pollers` pollers replica `me` should hold when `live` replicas share
/// them: an even split, the remainder going one each to the first replicas by id, so
/// every replica works out the same split and the sum is exactly `pollers`. A replica
/// that does not see itself among `live` counts itself in.
pub fn fair_share(pollers: usize, live: &[String], me: &str) -> usize {
    let mut live: BTreeSet<&str> = live.iter().map(String::as_str).collect();
    live.insert(me);
    let rank = live.iter().position(|r| *r == me).unwrap_or(0);
    let (each, remainder) = (pollers / live.len(), pollers % live.len());
    each + usize::from(rank < remainder)
}

/// Fencing: fails with [`PostgresError::LeaseLost`], before anything is written, unless
/// `replica` holds an unexpired lease on every one of `pollers`; otherwise share-locks
/// those lease rows until `transaction` ends, so no other replica can take them over
/// before this transaction's writes are committed and visible.
pub(crate) async fn fence(
    transaction: &Transaction<'_>,
    replica: &str,
    pollers: &[String],
) -> Result<(), PostgresError> {
    let held: BTreeSet<String> = transaction
        .query(
            "SELECT poller FROM leases
             WHERE poller = ANY($1) AND holder = $2 AND expires_at > clock_timestamp()
             ORDER BY poller FOR SHARE",
            &[&pollers, &replica],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    match pollers.iter().find(|poller| !held.contains(*poller)) {
        Some(lost) => Err(LeaseLost {
            poller: lost.clone(),
        }
        .into()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn fair_shares_add_up_and_differ_by_one_at_most() {
        let live = names(&["a", "b", "c"]);
        assert_eq!(
            ["a", "b", "c"].map(|me| fair_share(60, &live, me)),
            [20, 20, 20]
        );
        assert_eq!(
            ["a", "b", "c"].map(|me| fair_share(10, &live, me)),
            [4, 3, 3]
        );
        assert_eq!(fair_share(10, &[], "a"), 10, "alone: everything");
        assert_eq!(
            fair_share(10, &names(&["b"]), "a"),
            5,
            "a replica counts itself"
        );
        assert_eq!(fair_share(0, &live, "a"), 0);
    }
}
