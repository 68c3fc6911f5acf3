//! Moving queued changes from the outbox to the sink.
//!
//! Changes leave in outbox order. Only what the sink acknowledged is deleted; a sink that
//! is unavailable is retried with backoff, in order, dropping nothing; a change the sink
//! refuses goes to the dead letters so it blocks nothing behind it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff;
use crate::model::Change;
use crate::sink::{Sink, SinkError, SinkFailure};
use crate::store::{Queued, Store, StoreError};

const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(300);
/// How often an idle delivery loop looks at the outbox anyway.
const IDLE_RECHECK: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("delivery to the sink failed: {0}")]
    Sink(String),
}

/// What one attempt to deliver one batch achieved (an unavailable sink is an `Err`).
enum Attempt {
    /// The outbox is empty.
    Empty,
    /// `delivered` changes were acknowledged; then the sink may have refused one, which
    /// is now a dead letter.
    Progress {
        delivered: usize,
        refused: Option<String>,
    },
}

pub struct Delivery {
    store: Store,
    sink: Box<dyn Sink>,
}

impl Delivery {
    pub fn new(store: Store, sink: Box<dyn Sink>) -> Self {
        Delivery { store, sink }
    }

    /// Delivers until `shutdown`, waking on `queued`, retrying an unavailable sink with
    /// backoff forever. Each unavailability streak is logged once.
    pub async fn run(mut self, queued: Arc<Notify>, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            match self.attempt().await {
                Ok(Attempt::Progress { .. }) => {
                    if failures > 0 {
                        tracing::info!(failures, "sink is taking changes again");
                        failures = 0;
                    }
                    continue;
                }
                Ok(Attempt::Empty) => {
                    // Changes queued by this process wake us at once; the timer finds
                    // those another process put back (`polld redeliver`).
                    tokio::select! {
                        () = queued.notified() => continue,
                        () = tokio::time::sleep(IDLE_RECHECK) => continue,
                        () = shutdown.cancelled() => return,
                    }
                }
                Err(DeliveryError::Sink(error)) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(%error, "delivery failed; changes stay queued and are retried in order");
                    }
                }
                Err(DeliveryError::Store(error)) => {
                    failures += 1;
                    tracing::error!(%error, "cannot read the outbox");
                }
            }
            let wait = backoff::uniform(Duration::ZERO, RETRY_BASE)
                + backoff::exponential(failures, RETRY_BASE, RETRY_CAP);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Delivers everything queued, once through: stops at the first unavailability.
    /// Returns how many changes were delivered; changes the sink refused are
    /// dead-lettered and reported as an error once the rest went through.
    pub async fn drain(&mut self) -> Result<usize, DeliveryError> {
        let mut total = 0;
        let mut refusals = Vec::new();
        while let Attempt::Progress { delivered, refused } = self.attempt().await? {
            total += delivered;
            refusals.extend(refused);
        }
        match refusals.first() {
            None => Ok(total),
            Some(first) => Err(DeliveryError::Sink(format!(
                "{} change(s) refused and dead-lettered; first: {first}",
                refusals.len()
            ))),
        }
    }

    async fn peek(&self, limit: usize) -> Result<Vec<Queued>, DeliveryError> {
        let store = self.store.clone();
        Ok(blocking(move || store.peek(limit)).await?)
    }

    /// Hands the oldest batch to the sink and settles the outbox with its answer.
    /// An unavailable sink is an `Err`; a refused change is dead-lettered (`Failed`).
    async fn attempt(&mut self) -> Result<Attempt, DeliveryError> {
        let batch = self.peek(self.sink.max_batch().max(1)).await?;
        if batch.is_empty() {
            return Ok(Attempt::Empty);
        }
        let changes: Vec<Change> = batch.iter().map(|q| q.change.clone()).collect();
        let result = self.sink.deliver(&changes).await;
        let acknowledged = match &result {
            Ok(()) => batch.len(),
            Err(failure) => failure.acknowledged.min(batch.len()),
        };
        let seqs: Vec<i64> = batch[..acknowledged].iter().map(|q| q.seq).collect();
        let store = self.store.clone();
        blocking(move || store.acknowledge(&seqs)).await?;
        let delivered = Attempt::Progress {
            delivered: acknowledged,
            refused: None,
        };
        let Err(SinkFailure { error, .. }) = result else {
            return Ok(delivered);
        };
        let Some(failed) = batch.get(acknowledged) else {
            return Ok(delivered);
        };
        let (seq, poller) = (failed.seq, failed.change.poller.clone());
        let store = self.store.clone();
        match error {
            SinkError::Refused(reason) => {
                tracing::error!(%poller, revision = %failed.change.revision, %reason, "sink refused a change; moved to the dead letters (see `polld redeliver`)");
                let message = reason.clone();
                blocking(move || store.dead_letter(seq, &message)).await?;
                Ok(Attempt::Progress {
                    delivered: acknowledged,
                    refused: Some(reason),
                })
            }
            SinkError::Unavailable(reason) => {
                let message = reason.clone();
                blocking(move || store.record_attempt(seq, &message)).await?;
                Err(DeliveryError::Sink(reason))
            }
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => Err(StoreError::Task(join.to_string())),
    }
}
