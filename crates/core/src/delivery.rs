//! Moving queued changes from the outbox to the sink, one lane per poller.
//!
//! Each poller's changes leave in the order they were queued, and each poller is its
//! own lane: a change one poller cannot deliver (the receiver answers 5xx for it, is
//! slower than the timeout, or refuses it) holds up only that poller's lane, which
//! retries with its own backoff while the other lanes go on. When the sink as a whole
//! cannot be reached (connection refused, a full disk), every lane waits together: one
//! outage, one backoff, logged once.
//!
//! Only what the sink acknowledged leaves the outbox. If the outbox cannot be updated
//! after an acknowledgement (the state disk is full or read-only), delivery stops until
//! it can: sending on would re-send the acknowledged changes on every retry.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff;
use crate::leases::Holding;
use crate::metrics::Metrics;
use crate::model::Change;
use crate::sink::{Sink, SinkError, SinkFailure};
use crate::store::{Queued, Store, StoreError};
use crate::supervise::catch_panic;

const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(300);
/// Retrying to settle the outbox when the state cannot be written: no longer than this.
const SETTLE_RETRY_CAP: Duration = Duration::from_secs(60);
/// How often the outbox is looked at anyway, for changes another process put back
/// (`polld redeliver`).
const RECHECK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("delivery to the sink failed: {0}")]
    Sink(String),
}

/// Tells the delivery loop which pollers have queued changes.
#[derive(Debug, Default)]
pub struct QueuedSignal {
    pollers: Mutex<BTreeSet<String>>,
    notify: Notify,
}

impl QueuedSignal {
    /// `poller` queued changes: its lane has work.
    pub fn queued(&self, poller: &str) {
        let mut pollers = self.pollers.lock().unwrap_or_else(|p| p.into_inner());
        if pollers.insert(poller.to_owned()) {
            self.notify.notify_one();
        }
    }

    fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.pollers.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The delivery side of the daemon: a sink and the outbox it empties.
#[derive(Clone)]
pub struct Delivery {
    store: Arc<dyn Store>,
    sink: Arc<dyn Sink>,
    metrics: Arc<Metrics>,
    /// The pollers whose changes this process sends (every one, unless replicas share
    /// the store).
    holding: Arc<Holding>,
}

impl Delivery {
    pub fn new(store: Arc<dyn Store>, sink: Arc<dyn Sink>, metrics: Arc<Metrics>) -> Self {
        Delivery {
            store,
            sink,
            metrics,
            holding: Arc::default(),
        }
    }

    /// Sends only the changes of the pollers `holding` says this replica holds: the
    /// holder of a poller is the one that delivers it, in order.
    pub fn with_holding(mut self, holding: Arc<Holding>) -> Self {
        self.holding = holding;
        self
    }

    /// Delivers until `shutdown`, waking when `queued` says a lane has work, retrying
    /// failures with backoff forever. Attempts in flight at shutdown are finished.
    pub async fn run(self, queued: Arc<QueuedSignal>, shutdown: CancellationToken) {
        let mut lanes = Lanes::new(self, Mode::Forever);
        lanes.refresh().await;
        let mut next_recheck = Instant::now() + RECHECK;
        loop {
            for poller in queued.take() {
                lanes.open(poller);
            }
            if Instant::now() >= next_recheck {
                lanes.refresh().await;
                next_recheck = Instant::now() + RECHECK;
            }
            lanes.settle_or_dispatch().await;
            let wake = lanes
                .next_wake()
                .map_or(next_recheck, |at| at.min(next_recheck));
            tokio::select! {
                Some(joined) = lanes.in_flight.join_next_with_id() => lanes.finished(joined),
                () = queued.notify.notified() => {}
                () = tokio::time::sleep_until(wake) => {}
                () = shutdown.cancelled() => break,
            }
        }
        while let Some(joined) = lanes.in_flight.join_next_with_id().await {
            lanes.finished(joined);
        }
    }

    /// Delivers everything queued, once through, without waiting for any backoff: a
    /// lane whose change is not taken now is left for later, an unreachable sink stops
    /// it all. Returns how many changes were delivered; what was left or refused (now a
    /// dead letter) is reported as an error once the rest went through.
    pub async fn drain(&self) -> Result<usize, DeliveryError> {
        let mut lanes = Lanes::new(self.clone(), Mode::Once(Vec::new()));
        lanes.refresh().await;
        loop {
            lanes.settle_or_dispatch().await;
            match lanes.in_flight.join_next_with_id().await {
                Some(joined) => lanes.finished(joined),
                None => break,
            }
        }
        let Mode::Once(problems) = lanes.mode else {
            unreachable!("drain runs in Mode::Once")
        };
        if let Some(error) = lanes.store_error {
            return Err(DeliveryError::Store(error));
        }
        match problems.first() {
            None => Ok(lanes.delivered),
            Some(first) => Err(DeliveryError::Sink(format!(
                "{} change(s) not delivered; {} delivered; first: {first}",
                problems.len(),
                lanes.delivered
            ))),
        }
    }
}

/// How failures are handled.
enum Mode {
    /// `polld run`: retry with backoff, forever.
    Forever,
    /// `polld once` and the last delivery at shutdown: a lane that fails is closed and
    /// its problem kept; an unreachable sink closes every lane.
    Once(Vec<String>),
}

/// One poller's place in delivery.
#[derive(Debug, Default)]
struct Lane {
    /// A batch with this lane's changes is being delivered.
    busy: bool,
    /// Failed attempts in a row.
    failures: u32,
    /// Not before this, after a failure.
    retry_at: Option<Instant>,
    /// `Mode::Once` gave up on this lane.
    closed: bool,
}

/// The sink as a whole was unreachable: every lane waits.
#[derive(Debug, Default)]
struct Outage {
    failures: u32,
    retry_at: Option<Instant>,
}

/// A change to the outbox that the sink's answer calls for.
#[derive(Debug)]
enum Settle {
    /// The sink has these (seq, poller): remove them.
    Acknowledged(Vec<(i64, String)>),
    /// The sink will never take this one.
    Refused { seq: i64, reason: String },
}

/// What one attempt did, for the dispatcher.
struct Report {
    /// The lanes of the batch, in batch order.
    lanes: Vec<String>,
    delivered: usize,
    /// The first change the sink did not acknowledge: its poller and why.
    failure: Option<(String, SinkError)>,
    /// Outbox updates that could not be written, and the store's error.
    unsettled: Option<(Vec<Settle>, StoreError)>,
}

/// The dispatcher's state: every lane with work, the attempts in flight, and what
/// stops everything (an outage of the sink, an outbox that cannot be written).
struct Lanes {
    delivery: Delivery,
    mode: Mode,
    lanes: BTreeMap<String, Lane>,
    /// The lane that had the last turn: turns go round, so no lane starves the rest.
    last_turn: Option<String>,
    in_flight: JoinSet<Report>,
    /// The lanes of each attempt in flight.
    in_flight_lanes: HashMap<tokio::task::Id, Vec<String>>,
    outage: Outage,
    /// Acknowledged or refused changes whose outbox rows could not be updated. While
    /// there are any, nothing is sent: sending would repeat them.
    unsettled: Vec<Settle>,
    settle_failures: u32,
    settle_retry_at: Option<Instant>,
    /// The store could not be read or written (for `drain`'s answer).
    store_error: Option<StoreError>,
    delivered: usize,
}

impl Lanes {
    fn new(delivery: Delivery, mode: Mode) -> Self {
        Lanes {
            delivery,
            mode,
            lanes: BTreeMap::new(),
            last_turn: None,
            in_flight: JoinSet::new(),
            in_flight_lanes: HashMap::new(),
            outage: Outage::default(),
            unsettled: Vec::new(),
            settle_failures: 0,
            settle_retry_at: None,
            store_error: None,
            delivered: 0,
        }
    }

    fn open(&mut self, poller: String) {
        self.lanes.entry(poller).or_default();
    }

    /// Opens a lane for every poller with queued changes.
    async fn refresh(&mut self) {
        match self.delivery.store.pending_pollers().await {
            Ok(pollers) => {
                for poller in pollers {
                    self.open(poller);
                }
            }
            Err(error) => self.store_unreadable(error),
        }
    }

    /// Settles what could not be settled, or else starts attempts up to the sink's
    /// capacity (one at a time while the sink is unreachable).
    async fn settle_or_dispatch(&mut self) {
        let now = Instant::now();
        if !self.unsettled.is_empty() {
            if self.settle_retry_at.is_none_or(|at| at <= now) {
                self.settle_again().await;
            }
            return;
        }
        if self.outage.retry_at.is_some_and(|at| at > now) {
            return;
        }
        let capacity = if self.outage.failures > 0 {
            1
        } else {
            self.delivery.sink.max_in_flight().max(1)
        };
        while self.in_flight.len() < capacity {
            let batch = self.next_batch(now).await;
            if batch.is_empty() {
                break;
            }
            let mut lanes: Vec<String> = Vec::new();
            for queued in &batch {
                if lanes.last() != Some(&queued.change.poller) {
                    lanes.push(queued.change.poller.clone());
                }
            }
            for lane in &lanes {
                if let Some(state) = self.lanes.get_mut(lane) {
                    state.busy = true;
                }
            }
            let attempt = attempt(self.delivery.clone(), batch, lanes.clone());
            let id = self.in_flight.spawn(attempt).id();
            self.in_flight_lanes.insert(id, lanes);
        }
    }

    /// Up to the sink's batch size of the oldest changes of the lanes whose turn it is:
    /// lanes not busy, not closed, not backing off, in round-robin order.
    async fn next_batch(&mut self, now: Instant) -> Vec<Queued> {
        let max_batch = self.delivery.sink.max_batch().max(1);
        let start = self.last_turn.clone();
        let ready: Vec<String> = {
            let after = self
                .lanes
                .iter()
                .filter(|(name, _)| start.as_ref().is_none_or(|s| *name > s));
            let before = self
                .lanes
                .iter()
                .filter(|(name, _)| start.as_ref().is_some_and(|s| *name <= s));
            after
                .chain(before)
                .filter(|(name, lane)| {
                    !lane.busy
                        && !lane.closed
                        && lane.retry_at.is_none_or(|at| at <= now)
                        && self.delivery.holding.holds(name)
                })
                .map(|(name, _)| name.clone())
                .collect()
        };
        let mut batch = Vec::new();
        for poller in ready {
            let limit = max_batch - batch.len();
            match self.delivery.store.peek(&poller, limit).await {
                Ok(changes) if changes.is_empty() => {
                    self.lanes.remove(&poller);
                }
                Ok(changes) => {
                    batch.extend(changes);
                    self.last_turn = Some(poller);
                }
                Err(error) => {
                    self.store_unreadable(error);
                    break;
                }
            }
            if batch.len() >= max_batch {
                break;
            }
        }
        batch
    }

    /// Takes in the report of a finished attempt.
    fn finished(&mut self, joined: Result<(tokio::task::Id, Report), tokio::task::JoinError>) {
        let report = match joined {
            Ok((id, report)) => {
                self.in_flight_lanes.remove(&id);
                report
            }
            Err(join) => {
                // Attempts catch their sink's panics and are never aborted, so this is a
                // bug; still, its lanes must not stay busy for ever.
                let lanes = self.in_flight_lanes.remove(&join.id()).unwrap_or_default();
                tracing::error!(error = %join, "a delivery attempt was lost");
                for poller in &lanes {
                    if let Some(lane) = self.lanes.get_mut(poller) {
                        lane.busy = false;
                    }
                }
                if let Some(first) = lanes.first() {
                    self.lane_failed(first, format!("a delivery attempt was lost: {join}"));
                }
                return;
            }
        };
        for poller in &report.lanes {
            if let Some(lane) = self.lanes.get_mut(poller) {
                lane.busy = false;
            }
        }
        self.delivered += report.delivered;
        if let Some((settles, error)) = report.unsettled {
            self.cannot_settle(settles, error);
        }
        let failed_lane = report.failure.as_ref().map(|(poller, _)| poller.clone());
        // Every lane of the batch before the failing change got through.
        for poller in &report.lanes {
            if Some(poller) == failed_lane.as_ref() {
                break;
            }
            self.lane_recovered(poller);
        }
        let reached_the_sink = !matches!(report.failure, Some((_, SinkError::Unreachable(_))));
        if reached_the_sink && self.outage.failures > 0 {
            tracing::info!(
                failures = self.outage.failures,
                "the sink is reachable again; delivery resumes"
            );
            self.outage = Outage::default();
        }
        match report.failure {
            None => {}
            Some((poller, SinkError::Refused(reason))) => {
                tracing::error!(%poller, %reason, "the sink refused a change; moved to the dead letters (see `polld redeliver`)");
                if let Mode::Once(problems) = &mut self.mode {
                    problems.push(format!(
                        "poller {poller}: refused and dead-lettered: {reason}"
                    ));
                }
            }
            Some((poller, SinkError::Retry(reason))) => self.lane_failed(&poller, reason),
            Some((_, SinkError::Unreachable(reason))) => self.sink_unreachable(reason),
        }
    }

    fn lane_recovered(&mut self, poller: &str) {
        if let Some(lane) = self.lanes.get_mut(poller)
            && lane.failures > 0
        {
            tracing::info!(%poller, failures = lane.failures, "the sink takes this poller's changes again");
            lane.failures = 0;
            lane.retry_at = None;
        }
    }

    fn lane_failed(&mut self, poller: &str, reason: String) {
        let lane = self.lanes.entry(poller.to_owned()).or_default();
        if let Mode::Once(problems) = &mut self.mode {
            lane.closed = true;
            problems.push(format!("poller {poller}: {reason}"));
            return;
        }
        lane.failures += 1;
        let wait = retry_delay(lane.failures, RETRY_CAP);
        lane.retry_at = Some(Instant::now() + wait);
        if lane.failures == 1 {
            tracing::warn!(%poller, error = %reason, retry_in = %humantime::format_duration(wait), "delivery of this poller's next change failed; its changes wait and are retried in order, other pollers' go on");
        } else {
            tracing::debug!(%poller, error = %reason, failures = lane.failures, "delivery failed again");
        }
    }

    fn sink_unreachable(&mut self, reason: String) {
        if let Mode::Once(problems) = &mut self.mode {
            for lane in self.lanes.values_mut() {
                lane.closed = true;
            }
            problems.push(reason);
            return;
        }
        self.outage.failures += 1;
        let wait = retry_delay(self.outage.failures, RETRY_CAP);
        self.outage.retry_at = Some(Instant::now() + wait);
        if self.outage.failures == 1 {
            tracing::warn!(error = %reason, "the sink cannot be reached; changes stay queued and are retried in order");
        } else {
            tracing::debug!(error = %reason, failures = self.outage.failures, "the sink is still unreachable");
        }
    }

    fn store_unreadable(&mut self, error: StoreError) {
        self.sink_unreachable(format!("cannot read the outbox: {error}"));
        self.store_error = Some(error);
    }

    fn cannot_settle(&mut self, settles: Vec<Settle>, error: StoreError) {
        if self.unsettled.is_empty() {
            tracing::error!(%error, "the sink took changes but the outbox cannot be updated; delivery stops until the state can be written, so they are not sent again");
        }
        self.unsettled.extend(settles);
        self.settle_failures = self.settle_failures.max(1);
        self.settle_retry_at = Some(Instant::now() + retry_delay(1, SETTLE_RETRY_CAP));
        if matches!(self.mode, Mode::Once(_)) {
            for lane in self.lanes.values_mut() {
                lane.closed = true;
            }
        }
        self.store_error = Some(error);
    }

    /// Tries again to write what the sink's answers called for.
    async fn settle_again(&mut self) {
        let pending = std::mem::take(&mut self.unsettled);
        let (left, result) = settle(self.delivery.store.as_ref(), pending).await;
        match result {
            Ok(()) => {
                tracing::info!("the outbox can be written again; delivery resumes");
                self.settle_failures = 0;
                self.settle_retry_at = None;
                self.store_error = None;
            }
            Err(error) => {
                self.unsettled = left;
                self.settle_failures += 1;
                self.settle_retry_at =
                    Some(Instant::now() + retry_delay(self.settle_failures, SETTLE_RETRY_CAP));
                tracing::debug!(%error, "the outbox still cannot be written");
                self.store_error = Some(error);
            }
        }
    }

    /// When something is due: a lane's retry, the end of an outage's backoff, another
    /// try at settling.
    fn next_wake(&self) -> Option<Instant> {
        if !self.unsettled.is_empty() {
            return self.settle_retry_at;
        }
        if let Some(at) = self.outage.retry_at.filter(|_| self.outage.failures > 0) {
            return Some(at);
        }
        self.lanes
            .values()
            .filter(|lane| !lane.busy && !lane.closed)
            .filter_map(|lane| lane.retry_at)
            .min()
    }
}

/// Hands one batch to the sink and settles the outbox with its answer.
async fn attempt(delivery: Delivery, batch: Vec<Queued>, lanes: Vec<String>) -> Report {
    let changes: Vec<Change> = batch.iter().map(|q| q.change.clone()).collect();
    let result = match catch_panic(delivery.sink.deliver(&changes)).await {
        Ok(result) => result,
        Err(panic) => {
            delivery.metrics.panicked("delivery");
            Err(SinkFailure {
                acknowledged: 0,
                error: SinkError::Retry(format!("the sink {panic}")),
            })
        }
    };
    let acknowledged = match &result {
        Ok(()) => batch.len(),
        Err(failure) => failure.acknowledged.min(batch.len()),
    };
    let mut settles = Vec::new();
    if acknowledged > 0 {
        settles.push(Settle::Acknowledged(
            batch[..acknowledged]
                .iter()
                .map(|q| (q.seq, q.change.poller.clone()))
                .collect(),
        ));
    }
    let failure = match result {
        Ok(()) => None,
        Err(failure) => batch
            .get(acknowledged)
            .map(|queued| (queued, failure.error)),
    };
    if let Some((queued, error)) = &failure {
        match error {
            SinkError::Refused(reason) => settles.push(Settle::Refused {
                seq: queued.seq,
                reason: reason.clone(),
            }),
            SinkError::Retry(reason) | SinkError::Unreachable(reason) => {
                // For `polld status` only: failing to note it changes nothing.
                if let Err(error) = delivery.store.record_attempt(queued.seq, reason).await {
                    tracing::debug!(%error, "cannot note a failed delivery attempt");
                }
            }
        }
    }
    let (left, settled) = settle(delivery.store.as_ref(), settles).await;
    Report {
        lanes,
        delivered: acknowledged,
        failure: failure.map(|(queued, error)| (queued.change.poller.clone(), error)),
        unsettled: settled.err().map(|error| (left, error)),
    }
}

/// Applies `settles` in order; on an error, returns the ones not applied.
async fn settle(store: &dyn Store, settles: Vec<Settle>) -> (Vec<Settle>, Result<(), StoreError>) {
    let mut settles = settles.into_iter();
    while let Some(next) = settles.next() {
        let applied = match &next {
            Settle::Acknowledged(acknowledged) => acknowledge(store, acknowledged).await,
            Settle::Refused { seq, reason } => {
                leave_to_holder(store.dead_letter(*seq, reason).await)
            }
        };
        if let Err(error) = applied {
            let mut left = vec![next];
            left.extend(settles);
            return (left, Err(error));
        }
    }
    (Vec::new(), Ok(()))
}

/// Removes what the sink acknowledged. A replica whose lease on a poller lapsed while
/// the sink took its changes may not settle them: the replica holding the poller now
/// sends them again (the one repeat a takeover allows). Those are left to it, and the
/// acknowledgements of the batch's other pollers still land. Anything else is an
/// outbox that cannot be written, and stops delivery until it can.
async fn acknowledge(store: &dyn Store, acknowledged: &[(i64, String)]) -> Result<(), StoreError> {
    let seqs: Vec<i64> = acknowledged.iter().map(|(seq, _)| *seq).collect();
    match store.acknowledge(&seqs).await {
        Err(error) if error.lease_lost().is_some() => {
            let mut by_poller: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
            for (seq, poller) in acknowledged {
                by_poller.entry(poller).or_default().push(*seq);
            }
            for seqs in by_poller.values() {
                leave_to_holder(store.acknowledge(seqs).await)?;
            }
            Ok(())
        }
        other => other,
    }
}

/// A settle refused for a lost lease is not an error: the change is the holder's now.
fn leave_to_holder(settled: Result<(), StoreError>) -> Result<(), StoreError> {
    match settled {
        Err(error) => match error.lease_lost() {
            Some(lost) => {
                tracing::info!(poller = %lost.poller, "lease lost while the sink took a change; the replica holding the poller now sends it again");
                Ok(())
            }
            None => Err(error),
        },
        Ok(()) => Ok(()),
    }
}

fn retry_delay(failures: u32, cap: Duration) -> Duration {
    backoff::uniform(Duration::ZERO, RETRY_BASE) + backoff::exponential(failures, RETRY_BASE, cap)
}
