//! Sharing the pollers between replicas: which pollers this process may poll and
//! deliver ([`Holding`]), kept current by renewing leases in a shared store
//! ([`keep_leases`]).
//!
//! A store one process owns (SQLite) holds every poller, and none of this runs. With a
//! shared store (`[store] url_env`), every third of `lease` this replica renews its
//! leases and takes or hands over pollers (`Store::balance`); the engine polls and the
//! delivery sends only what it holds. The store fences every write with the lease, so a
//! replica that is paused past its lease can never move a cursor or settle a change:
//! this side only keeps a replica from doing work it could not commit.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::delivery::QueuedSignal;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::scheduler::SchedulerHandle;
use crate::store::Store;

/// The pollers this process may poll and deliver.
#[derive(Debug, Default)]
pub struct Holding {
    /// `None`: every poller (a store one process owns).
    held: Mutex<Option<BTreeSet<String>>>,
    /// When the leases behind `held` run out unless renewed: `lease` after the round
    /// that renewed them *started*. Past it nothing is held, even before the next round
    /// says so (a replica stopped by SIGSTOP wakes up holding nothing).
    valid_until: Mutex<Option<std::time::Instant>>,
    /// Why this replica cannot renew its leases right now (the database is
    /// unreachable), for `/healthz`.
    trouble: Mutex<Option<String>>,
}

impl Holding {
    pub fn holds(&self, poller: &str) -> bool {
        let valid = self
            .valid_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|until| std::time::Instant::now() < until);
        valid
            && self
                .lock()
                .as_ref()
                .is_none_or(|held| held.contains(poller))
    }

    /// Holds no poller until the first lease round says which (a replica starting).
    pub fn hold_nothing(&self) {
        *self.lock() = Some(BTreeSet::new());
    }

    /// How many pollers this replica holds; `None` when it holds every one.
    pub fn count(&self) -> Option<usize> {
        self.lock().as_ref().map(BTreeSet::len)
    }

    /// Why the leases cannot be renewed, if they cannot.
    pub fn trouble(&self) -> Option<String> {
        self.trouble
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces what is held; returns the pollers gained.
    fn set(&self, held: BTreeSet<String>) -> Vec<String> {
        let mut current = self.lock();
        let gained = match current.as_ref() {
            Some(before) => held.difference(before).cloned().collect(),
            None => held.iter().cloned().collect(),
        };
        *current = Some(held);
        gained
    }

    /// Whether the leases held ran out before they were renewed.
    fn lapsed(&self) -> bool {
        self.valid_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| std::time::Instant::now() >= until)
    }

    fn valid_until(&self, until: std::time::Instant) {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(until);
    }

    /// Stops holding `pollers` (until a later round gives them again).
    fn forget(&self, pollers: &[String]) {
        if let Some(held) = self.lock().as_mut() {
            for poller in pollers {
                held.remove(poller);
            }
        }
    }

    fn set_trouble(&self, trouble: Option<String>) {
        *self.trouble.lock().unwrap_or_else(|p| p.into_inner()) = trouble;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<BTreeSet<String>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the lease loop works with.
#[derive(Clone)]
pub struct LeaseKeeper {
    pub store: Arc<dyn Store>,
    pub holding: Arc<Holding>,
    pub engine: Arc<Engine>,
    pub queued: Arc<QueuedSignal>,
    /// To poll a poller at once when it is taken: the replica it came from may have
    /// missed changes, and its schedule here may be an interval away.
    pub scheduler: SchedulerHandle,
    pub metrics: Arc<Metrics>,
    pub lease: Duration,
    /// The configured pollers' names, read again every round (a reload changes them).
    pub pollers: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
}

/// Renews this replica's leases every third of `lease` until `shutdown`, then hands
/// them over at once. A store that is not shared answers the first round with `None`:
/// the loop ends there, holding everything.
///
/// When a round fails (the database is unreachable), what was held stays held until
/// `lease` after the last round that succeeded *started* (the leases cannot have
/// outlived that), then nothing is held until the database answers again.
pub async fn keep_leases(keeper: LeaseKeeper, shutdown: CancellationToken) {
    let renew_every = keeper.lease / 3;
    let mut last_renewed: Option<Instant> = None;
    let mut first_round = true;
    loop {
        let started = Instant::now();
        let names = (keeper.pollers)();
        match keeper.store.balance(&names, keeper.lease).await {
            Ok(None) => return,
            Ok(Some(held)) => {
                let count = held.len();
                // Leases that ran out since the last round may have been another
                // replica's meanwhile: every poller held now counts as taken again.
                if keeper.holding.lapsed() {
                    keeper.holding.hold_nothing();
                }
                let gained = keeper.holding.set(held);
                keeper
                    .holding
                    .valid_until(started.into_std() + keeper.lease);
                keeper.holding.set_trouble(None);
                last_renewed = Some(started);
                keeper.metrics.leases_held(count);
                if !gained.is_empty() {
                    take(&keeper, &gained, !first_round).await;
                }
                first_round = false;
            }
            Err(error) => {
                let expired = last_renewed.is_none_or(|at| at.elapsed() >= keeper.lease);
                if expired && keeper.holding.count() != Some(0) {
                    keeper.holding.set(BTreeSet::new());
                    keeper.metrics.leases_held(0);
                    tracing::warn!(%error, "cannot renew the leases: polling and delivering nothing until the store answers");
                } else {
                    tracing::warn!(%error, "cannot renew the leases; retrying");
                }
                keeper
                    .holding
                    .set_trouble(Some(format!("cannot renew leases: {error}")));
            }
        }
        tokio::select! {
            () = tokio::time::sleep_until(started + renew_every) => {}
            () = shutdown.cancelled() => break,
        }
    }
    keeper.holding.set(BTreeSet::new());
    match keeper.store.release_all().await {
        Ok(()) => tracing::info!("handed every poller over to the other replicas"),
        Err(error) => {
            tracing::warn!(%error, "cannot hand the pollers over; they move when the leases expire")
        }
    }
}

/// Starts polling and delivering pollers just taken (`takeover`: from another replica,
/// not at this one's start). Another replica may have moved their cursors since this
/// one last read them: until they are read again, they are not held.
async fn take(keeper: &LeaseKeeper, gained: &[String], takeover: bool) {
    if let Err(error) = keeper.engine.reload_cursors(gained).await {
        tracing::warn!(%error, "cannot read the cursors of the pollers taken; trying again next round");
        keeper.holding.forget(gained);
        return;
    }
    if takeover {
        keeper.metrics.lease_takeovers(gained.len());
        tracing::info!(pollers = ?gained, "took over pollers");
    }
    for poller in gained {
        keeper.queued.queued(poller);
        keeper.scheduler.force(poller);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holding_everything_until_told_otherwise() {
        let holding = Holding::default();
        assert!(holding.holds("a"));
        assert_eq!(holding.count(), None);
        let gained = holding.set(BTreeSet::from(["a".to_owned(), "b".to_owned()]));
        assert_eq!(gained, ["a", "b"]);
        assert!(!holding.holds("c"));
        let gained = holding.set(BTreeSet::from(["b".to_owned(), "c".to_owned()]));
        assert_eq!(gained, ["c"]);
        assert!(!holding.holds("a"));
        assert_eq!(holding.count(), Some(2));
    }

    #[test]
    fn nothing_is_held_once_the_leases_ran_out() {
        let holding = Holding::default();
        holding.set(BTreeSet::from(["a".to_owned()]));
        holding.valid_until(std::time::Instant::now() + Duration::from_secs(60));
        assert!(holding.holds("a") && !holding.lapsed());
        holding.valid_until(std::time::Instant::now() - Duration::from_millis(1));
        assert!(
            !holding.holds("a"),
            "a paused replica wakes up holding nothing"
        );
        assert!(holding.lapsed());
    }
}
