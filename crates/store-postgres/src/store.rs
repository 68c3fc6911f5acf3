//! The store seam on PostgreSQL: each [`Store`] method as SQL, with the SQLite store's
//! semantics (see `polld_core::store` for what each must guarantee).
//!
//! Every method is one transaction, or one statement; those that move a poller's state
//! are fenced first when [`Fencing::On`] (`leases::fence`).

use std::collections::HashMap;

use async_trait::async_trait;
use polld_backend::Cursor;
use polld_core::model::Change;
use polld_core::store::{
    DeadLetter, PollRecord, Queued, Store, StoreError, StoredCursor, StoredStatus, unix_now,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, Transaction};

use crate::error::{PostgresError, storable};
use crate::{Fencing, PostgresStore, leases};

impl PostgresStore {
    /// Fences `pollers` in `transaction` when fencing is on.
    async fn fenced(
        &self,
        transaction: &Transaction<'_>,
        pollers: &[String],
    ) -> Result<(), PostgresError> {
        match self.fencing {
            Fencing::On => leases::fence(transaction, &self.replica, pollers).await,
            Fencing::Off => Ok(()),
        }
    }

    /// Fences the pollers whose queued changes `seqs` are (none, if all are gone).
    async fn fenced_seqs(
        &self,
        transaction: &Transaction<'_>,
        seqs: &[i64],
    ) -> Result<(), PostgresError> {
        if self.fencing == Fencing::Off {
            return Ok(());
        }
        let pollers: Vec<String> = transaction
            .query(
                "SELECT DISTINCT poller FROM outbox WHERE seq = ANY($1) ORDER BY poller",
                &[&seqs],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        self.fenced(transaction, &pollers).await
    }

    async fn read_cursors(&self) -> Result<HashMap<String, StoredCursor>, PostgresError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT poller, vcs, cursor FROM cursors", &[])
            .await?;
        let mut cursors = HashMap::with_capacity(rows.len());
        for row in rows {
            let cursor = serde_json::from_str(row.get(2))?;
            cursors.insert(
                row.get(0),
                StoredCursor {
                    vcs: row.get(1),
                    cursor,
                },
            );
        }
        Ok(cursors)
    }

    async fn write_poll(
        &self,
        poller: &str,
        vcs: &str,
        cursor: &Cursor,
        changes: &[Change],
    ) -> Result<(), PostgresError> {
        let records: Vec<String> = changes
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()?;
        let cursor = serde_json::to_string(cursor)?;
        let now = unix_now();
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        self.fenced(&transaction, &[poller.to_owned()]).await?;
        transaction
            .execute(
                "INSERT INTO cursors (poller, vcs, cursor, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (poller) DO UPDATE SET
                     vcs = excluded.vcs, cursor = excluded.cursor, updated_at = excluded.updated_at",
                &[&poller, &vcs, &cursor, &now],
            )
            .await?;
        if !records.is_empty() {
            // Numbers drawn after the cursor row is locked (by the upsert above): another
            // commit of this poller waits for this one, so its numbers come after these.
            // Sorted, so the oldest change gets the lowest whatever order they were drawn in.
            let count = i32::try_from(records.len()).unwrap_or(i32::MAX);
            let mut seqs: Vec<i64> = transaction
                .query(
                    "SELECT nextval('outbox_seq') FROM generate_series(1, $1::int)",
                    &[&count],
                )
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect();
            seqs.sort_unstable();
            transaction
                .execute(
                    "INSERT INTO outbox (seq, poller, change, queued_at)
                     SELECT seq, $1, change, $4 FROM unnest($2::bigint[], $3::text[]) AS t (seq, change)",
                    &[&poller, &seqs, &records, &now],
                )
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn read_pending_pollers(&self) -> Result<Vec<String>, PostgresError> {
        let client = self.client().await?;
        let rows = client
            .query("SELECT DISTINCT poller FROM outbox", &[])
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    async fn read_queue(&self, poller: &str, limit: usize) -> Result<Vec<Queued>, PostgresError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client
            .query(
                "SELECT seq, change FROM outbox WHERE poller = $1 ORDER BY seq LIMIT $2",
                &[&poller, &limit],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(Queued {
                    seq: row.get(0),
                    change: serde_json::from_str(row.get(1))?,
                })
            })
            .collect()
    }

    async fn read_dead_letters(&self) -> Result<Vec<DeadLetter>, PostgresError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT seq, change, error FROM dead_letters ORDER BY seq",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadLetter {
                    seq: row.get(0),
                    change: serde_json::from_str(row.get(1))?,
                    error: row.get(2),
                })
            })
            .collect()
    }

    async fn delete_acknowledged(&self, seqs: &[i64]) -> Result<(), PostgresError> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.fenced_outbox_write(seqs, "DELETE FROM outbox WHERE seq = ANY($1)", &[&seqs])
            .await
    }

    async fn note_attempt(&self, seq: i64, error: &str) -> Result<(), PostgresError> {
        self.fenced_outbox_write(
            &[seq],
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE seq = $1",
            &[&seq, &storable(error)],
        )
        .await
    }

    async fn move_to_dead_letters(&self, seq: i64, error: &str) -> Result<(), PostgresError> {
        self.fenced_outbox_write(
            &[seq],
            "WITH moved AS (
                 DELETE FROM outbox WHERE seq = $1 RETURNING seq, poller, change, queued_at)
             INSERT INTO dead_letters (seq, poller, change, queued_at, failed_at, error)
             SELECT seq, poller, change, queued_at, $2, $3 FROM moved",
            &[&seq, &unix_now(), &storable(error)],
        )
        .await
    }

    /// Runs `statement` on the outbox rows `seqs` in one transaction that first checks
    /// this replica's leases on their pollers (when fenced): a settle never lands for a
    /// poller another replica holds.
    async fn fenced_outbox_write(
        &self,
        seqs: &[i64],
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(), PostgresError> {
        let mut client = self.client().await?;
        let transaction = client.transaction().await?;
        self.fenced_seqs(&transaction, seqs).await?;
        transaction.execute(statement, params).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Not fenced: `polld redeliver` runs from any process, and only puts changes back
    /// in the queue, which the poller's holder then delivers.
    async fn move_back_to_outbox(&self, poller: Option<&str>) -> Result<usize, PostgresError> {
        let client = self.client().await?;
        let moved = client
            .execute(
                "WITH moved AS (
                     DELETE FROM dead_letters WHERE ($1::text IS NULL OR poller = $1)
                     RETURNING seq, poller, change, queued_at)
                 INSERT INTO outbox (seq, poller, change, queued_at)
                 SELECT seq, poller, change, queued_at FROM moved",
                &[&poller],
            )
            .await?;
        Ok(usize::try_from(moved).unwrap_or(usize::MAX))
    }

    /// One statement for the whole batch: the records are first folded per poller, in
    /// order, as applying them one by one would leave them.
    async fn save_polls(&self, records: &[PollRecord]) -> Result<(), PostgresError> {
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut pollers: Vec<&str> = Vec::new();
        let mut last_poll: Vec<i64> = Vec::new();
        let mut last_success: Vec<Option<i64>> = Vec::new();
        let mut last_error: Vec<Option<String>> = Vec::new();
        for record in records {
            let i = *index.entry(&record.poller).or_insert_with(|| {
                pollers.push(&record.poller);
                last_poll.push(record.at);
                last_success.push(None);
                last_error.push(None);
                pollers.len() - 1
            });
            last_poll[i] = record.at;
            last_error[i] = record.error.as_deref().map(|e| storable(e).into_owned());
            if record.error.is_none() {
                last_success[i] = Some(record.at);
            }
        }
        if pollers.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO poll_status (poller, last_poll, last_success, last_error)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[])
                 ON CONFLICT (poller) DO UPDATE SET
                     last_poll = excluded.last_poll,
                     last_success = COALESCE(excluded.last_success, poll_status.last_success),
                     last_error = excluded.last_error",
                &[&pollers, &last_poll, &last_success, &last_error],
            )
            .await?;
        Ok(())
    }

    /// Six queries for any number of pollers, in one snapshot so the numbers agree.
    async fn read_status(&self, pollers: &[String]) -> Result<Vec<StoredStatus>, PostgresError> {
        let mut client = self.client().await?;
        let transaction = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let mut statuses: HashMap<&str, StoredStatus> = pollers
            .iter()
            .map(|p| (p.as_str(), StoredStatus::default()))
            .collect();
        for row in transaction
            .query(
                "SELECT poller, cursor FROM cursors WHERE poller = ANY($1)",
                &[&pollers],
            )
            .await?
        {
            if let Some(status) = statuses.get_mut(row.get::<_, &str>(0)) {
                status.cursor = Some(serde_json::from_str(row.get(1))?);
            }
        }
        for row in transaction
            .query(
                "SELECT poller, last_poll, last_success, last_error FROM poll_status
                 WHERE poller = ANY($1)",
                &[&pollers],
            )
            .await?
        {
            if let Some(status) = statuses.get_mut(row.get::<_, &str>(0)) {
                status.last_poll = row.get(1);
                status.last_success = row.get(2);
                status.last_error = row.get(3);
            }
        }
        for (table, dead) in [("outbox", false), ("dead_letters", true)] {
            for row in transaction
                .query(
                    &format!(
                        "SELECT poller, count(*) FROM {table} WHERE poller = ANY($1) GROUP BY poller"
                    ),
                    &[&pollers],
                )
                .await?
            {
                if let Some(status) = statuses.get_mut(row.get::<_, &str>(0)) {
                    let count = u64::try_from(row.get::<_, i64>(1)).unwrap_or(0);
                    if dead {
                        status.dead_letters = count;
                    } else {
                        status.pending = count;
                    }
                }
            }
        }
        // The newest refusal first, then the oldest waiting change's failure over it:
        // what blocks delivery now says more than what was refused before.
        for sql in [
            "SELECT DISTINCT ON (poller) poller, 'refused: ' || error FROM dead_letters
             WHERE poller = ANY($1) ORDER BY poller, failed_at DESC, seq DESC",
            "SELECT DISTINCT ON (poller) poller, last_error FROM outbox
             WHERE poller = ANY($1) AND last_error IS NOT NULL ORDER BY poller, seq",
        ] {
            for row in transaction.query(sql, &[&pollers]).await? {
                if let Some(status) = statuses.get_mut(row.get::<_, &str>(0)) {
                    status.last_delivery_error = row.get(1);
                }
            }
        }
        transaction.commit().await?;
        Ok(pollers
            .iter()
            .map(|p| statuses.get(p.as_str()).cloned().unwrap_or_default())
            .collect())
    }

    async fn count_queues(&self) -> Result<HashMap<String, (u64, u64)>, PostgresError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT poller, sum(pending)::bigint, sum(dead)::bigint FROM (
                     SELECT poller, 1 AS pending, 0 AS dead FROM outbox
                     UNION ALL
                     SELECT poller, 0, 1 FROM dead_letters) AS queued
                 GROUP BY poller",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let count = |i| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
                (row.get(0), (count(1), count(2)))
            })
            .collect())
    }

    /// Space is autovacuum's job. What upkeep removes is what nothing else would: the
    /// rows of replicas gone for a day (each deploy may bring new replica ids) and of
    /// leases expired for a day (pollers removed while their holder was down).
    async fn tidy(&self) -> Result<(), PostgresError> {
        let client = self.client().await?;
        let replicas = client
            .execute(
                "DELETE FROM replicas WHERE seen_until < clock_timestamp() - interval '1 day'",
                &[],
            )
            .await?;
        let leases = client
            .execute(
                "DELETE FROM leases WHERE expires_at < clock_timestamp() - interval '1 day'",
                &[],
            )
            .await?;
        if replicas + leases > 0 {
            tracing::info!(
                replicas,
                leases,
                "store database: forgot long-gone replicas and leases"
            );
        }
        Ok(())
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn cursors(&self) -> Result<HashMap<String, StoredCursor>, StoreError> {
        Ok(self.read_cursors().await?)
    }

    async fn balance(
        &self,
        pollers: &[String],
        lease: std::time::Duration,
    ) -> Result<Option<std::collections::BTreeSet<String>>, StoreError> {
        PostgresStore::balance(self, pollers, lease).await.map(Some)
    }

    async fn release_all(&self) -> Result<(), StoreError> {
        PostgresStore::release_all(self).await
    }

    async fn holders(&self) -> Result<HashMap<String, String>, StoreError> {
        PostgresStore::holders(self).await
    }

    async fn request_polls(&self, pollers: &[String]) -> Result<(), StoreError> {
        Ok(PostgresStore::request_polls(self, pollers).await?)
    }

    fn poll_requests(&self) -> Option<tokio::sync::mpsc::Receiver<String>> {
        Some(PostgresStore::poll_requests(self))
    }

    async fn commit_poll(
        &self,
        poller: &str,
        vcs: &str,
        cursor: &Cursor,
        changes: &[Change],
    ) -> Result<(), StoreError> {
        Ok(self.write_poll(poller, vcs, cursor, changes).await?)
    }

    async fn pending_pollers(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.read_pending_pollers().await?)
    }

    async fn peek(&self, poller: &str, limit: usize) -> Result<Vec<Queued>, StoreError> {
        Ok(self.read_queue(poller, limit).await?)
    }

    async fn acknowledge(&self, seqs: &[i64]) -> Result<(), StoreError> {
        Ok(self.delete_acknowledged(seqs).await?)
    }

    async fn record_attempt(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        Ok(self.note_attempt(seq, error).await?)
    }

    async fn dead_letter(&self, seq: i64, error: &str) -> Result<(), StoreError> {
        Ok(self.move_to_dead_letters(seq, error).await?)
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        Ok(self.read_dead_letters().await?)
    }

    async fn redeliver(&self, poller: Option<&str>) -> Result<usize, StoreError> {
        Ok(self.move_back_to_outbox(poller).await?)
    }

    async fn record_polls(&self, records: &[PollRecord]) -> Result<(), StoreError> {
        Ok(self.save_polls(records).await?)
    }

    async fn status(&self, pollers: &[String]) -> Result<Vec<StoredStatus>, StoreError> {
        Ok(self.read_status(pollers).await?)
    }

    async fn queue_counts(&self) -> Result<HashMap<String, (u64, u64)>, StoreError> {
        Ok(self.count_queues().await?)
    }

    async fn upkeep(&self) -> Result<(), StoreError> {
        Ok(self.tidy().await?)
    }
}
