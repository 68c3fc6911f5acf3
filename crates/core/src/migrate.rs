//! `polld migrate-store`: the SQLite state in `state_dir` (cursors, queued changes, dead
//! letters) copied into the database `[store] url_env` names, which must be empty.
//!
//! Only the store seam is used, so any store can be the source or the target: each
//! poller's cursor goes in with its queued and dead-lettered changes in one
//! `commit_poll` (in their old order), and the dead ones are dead-lettered again, so a
//! `redeliver` puts them back at their places. Poll outcomes (`last_poll`, …) are not
//! copied: the first poll writes them again.

use std::collections::BTreeSet;

use polld_backend::Cursor;

use crate::config::Config;
use crate::plugins::Plugins;
use crate::store::{Access, Store, StoreError};

/// What was copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    pub cursors: usize,
    pub queued: usize,
    pub dead_letters: usize,
}

/// Copies the state directory's store into the configured one. The source is opened
/// exclusively (no `polld run` may use it meanwhile), the target unfenced.
pub async fn migrate_store(config: &Config, plugins: &Plugins) -> Result<Migrated, StoreError> {
    if config.store.url_env.is_none() {
        return Err(StoreError::new(
            "[store] url_env names no database to migrate the state directory's store into",
        ));
    }
    let source = plugins
        .stores
        .open(&config.daemon.state_dir, Access::Exclusive)
        .await?;
    let target = crate::daemon::open_configured_store(config, plugins, Access::Shared).await?;
    if !target.cursors().await?.is_empty()
        || !target.pending_pollers().await?.is_empty()
        || !target.dead_letters().await?.is_empty()
    {
        return Err(StoreError::new(
            "the target store is not empty: migrate-store only fills an empty one",
        ));
    }
    copy(source.as_ref(), target.as_ref(), config).await
}

async fn copy(
    source: &dyn Store,
    target: &dyn Store,
    config: &Config,
) -> Result<Migrated, StoreError> {
    let cursors = source.cursors().await?;
    let dead = source.dead_letters().await?;
    let queued_pollers = source.pending_pollers().await?;
    let pollers: BTreeSet<&str> = cursors
        .keys()
        .map(String::as_str)
        .chain(queued_pollers.iter().map(String::as_str))
        .chain(dead.iter().map(|letter| letter.change.poller.as_str()))
        .collect();
    let mut migrated = Migrated::default();
    for poller in pollers {
        // Queued and dead changes in their old order; the dead ones say why.
        let mut changes: Vec<(i64, _, Option<&str>)> = source
            .peek(poller, usize::MAX)
            .await?
            .into_iter()
            .map(|queued| (queued.seq, queued.change, None))
            .collect();
        changes.extend(
            dead.iter()
                .filter(|letter| letter.change.poller == poller)
                .map(|letter| {
                    (
                        letter.seq,
                        letter.change.clone(),
                        Some(letter.error.as_str()),
                    )
                }),
        );
        changes.sort_by_key(|(seq, _, _)| *seq);
        let stored = cursors.get(poller);
        // A cursor from before polld recorded its writer: the configured type wrote it.
        let vcs = stored
            .and_then(|cursor| cursor.vcs.clone())
            .or_else(|| {
                config
                    .pollers
                    .iter()
                    .find(|p| p.name == poller)
                    .map(|p| p.vcs.to_owned())
            })
            .unwrap_or_default();
        let cursor = stored.map_or(Cursor(serde_json::Value::Null), |c| c.cursor.clone());
        let records: Vec<_> = changes
            .iter()
            .map(|(_, change, _)| change.clone())
            .collect();
        target.commit_poll(poller, &vcs, &cursor, &records).await?;
        migrated.cursors += usize::from(stored.is_some());
        let placed = target.peek(poller, usize::MAX).await?;
        for ((_, _, error), queued) in changes.iter().zip(&placed) {
            match error {
                Some(error) => {
                    target.dead_letter(queued.seq, error).await?;
                    migrated.dead_letters += 1;
                }
                None => migrated.queued += 1,
            }
        }
    }
    Ok(migrated)
}
