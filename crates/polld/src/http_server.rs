//! The accept loop under the control endpoint: HTTP/1.1 connections, each bounded in
//! time and in number, so that clients which connect and say nothing, send half a
//! request, or keep idle connections open cannot pile up or hold up shutdown.
//!
//! `axum::serve` would accept every connection and wait for each without a deadline;
//! this loop is the same few lines of hyper with the bounds added:
//!
//! - a connection must send a request's headers within [`HEADER_READ_TIMEOUT`] of
//!   opening, and of finishing its previous request (so the same bound is the idle
//!   timeout of a kept-alive connection);
//! - headers are read into at most [`MAX_HEADER_BYTES`];
//! - at most [`MAX_CONNECTIONS`] connections are served at once; a connection beyond
//!   that is closed as soon as it is accepted, rather than left in the kernel's backlog
//!   where its client would wait without an answer;
//! - at shutdown the listener closes at once, idle connections are closed, and a
//!   request in flight gets [`SHUTDOWN_WAIT`] to be answered.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long a client has to send a request's headers, on a new connection or an idle
/// kept-alive one.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// The most bytes a request line and headers may take.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long a request in flight at shutdown has to be answered.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown`, then closes every connection (see the
/// module comment) and returns.
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Finished connections are reaped as they end, so the set stays as small as
            // the number of open connections however long the daemon runs.
            Some(_) = connections.join_next() => continue,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                // Out of file descriptors, mostly: wait a moment rather than spin.
                tracing::warn!(%error, "control endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(
                limit = MAX_CONNECTIONS,
                "control endpoint at its connection cap; closing a new connection"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(SHUTDOWN_WAIT, connection).await;
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    // Each connection ends within SHUTDOWN_WAIT of the cancellation; this is a backstop.
    let all_closed = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_WAIT * 2, all_closed)
        .await
        .is_err()
    {
        connections.abort_all();
    }
}
