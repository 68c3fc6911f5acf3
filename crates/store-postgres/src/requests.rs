//! Poll requests between replicas: `/notify`, `polld notify` and forge hooks reach a
//! poller whichever replica holds it. The replica that received the request announces
//! the pollers with PostgreSQL's `NOTIFY`; every replica `LISTEN`s on one connection of
//! its own and polls those it holds.
//!
//! A request announced while a replica's listening connection is down is missed by it:
//! the regular poll is the safety net, as for a forge's lost delivery.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::{PostgresError, PostgresStore};

/// The channel poll requests travel on; the payload is the poller's name.
const CHANNEL: &str = "polld_poll";

/// How long the listener waits before reconnecting after its connection failed.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Requests buffered for the daemon; more are dropped (the poll is coalesced anyway).
const BUFFERED: usize = 1024;

impl PostgresStore {
    /// Asks whichever replica holds each of `pollers` to poll it now.
    pub async fn request_polls(&self, pollers: &[String]) -> Result<(), PostgresError> {
        let client = self.client().await?;
        for poller in pollers {
            client
                .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, poller])
                .await?;
        }
        Ok(())
    }

    /// The poll requests every replica announces (this one's included), as poller
    /// names, from a connection that reconnects by itself until the receiver is dropped.
    pub fn poll_requests(&self) -> mpsc::Receiver<String> {
        let (sender, receiver) = mpsc::channel(BUFFERED);
        let config = self.config.clone();
        tokio::spawn(async move {
            while !sender.is_closed() {
                if let Err(error) = listen(&config, &sender).await {
                    tracing::warn!(%error, "listening for poll requests failed; reconnecting");
                }
                tokio::time::sleep(RECONNECT_AFTER).await;
            }
        });
        receiver
    }
}

/// Listens on one connection until it fails or the receiver is gone.
async fn listen(
    config: &tokio_postgres::Config,
    sender: &mpsc::Sender<String>,
) -> Result<(), PostgresError> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let forward = async {
        while let Some(message) = messages.next().await {
            match message? {
                AsyncMessage::Notification(note) if note.channel() == CHANNEL => {
                    // A full buffer means polls are already requested: drop it.
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        sender.try_send(note.payload().to_owned())
                    {
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
        Ok::<(), PostgresError>(())
    };
    let statement = format!("LISTEN {CHANNEL}");
    let subscribe = client.batch_execute(&statement);
    tokio::pin!(forward);
    tokio::select! {
        result = &mut forward => return result,
        subscribed = subscribe => subscribed?,
    }
    forward.await
}
