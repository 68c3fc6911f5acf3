//! The accept loop under the control endpoint: HTTP/1.1 connections, each bounded in
//! time and all of them in number, so that clients which connect and say nothing, send
//! half a request, or keep idle connections open can neither pile up, nor lock out a
//! health check, nor hold up shutdown.
//!
//! `axum::serve` would accept every connection and wait for each without a deadline;
//! this loop is the same few lines of hyper with the bounds added:
//!
//! - a connection must send a request's headers within [`HEADER_READ_TIMEOUT`] of
//!   opening, and of finishing its previous request (so the same bound is the idle
//!   timeout of a kept-alive connection);
//! - headers are read into at most [`MAX_HEADER_BYTES`];
//! - at most [`MAX_CONNECTIONS`] connections are open at once. A connection beyond that
//!   closes the oldest one that has no request in flight (idle, or still sending its
//!   headers), so a flood of silent connections costs each of them its place, not a
//!   health check its answer; when every connection is busy, the new one is closed;
//! - at shutdown the listener closes at once, idle connections are closed, and a
//!   request in flight gets [`SHUTDOWN_WAIT`] to be answered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long a client has to send a request's headers, on a new connection or an idle
/// kept-alive one.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most connections open at once.
pub const MAX_CONNECTIONS: usize = 512;
/// The most bytes a request line and headers may take.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How long a request in flight at shutdown has to be answered.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// One open connection, as the accept loop sees it.
struct Open {
    id: u64,
    /// Requests being answered on it (0 or 1: HTTP/1.1 without pipelining).
    in_flight: Arc<AtomicUsize>,
    close: CancellationToken,
}

/// The open connections, oldest first.
#[derive(Default)]
struct OpenConnections(Mutex<VecDeque<Open>>);

impl OpenConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Open>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks the oldest connection without a request in flight to close. `false` when
    /// every open connection is answering a request.
    fn close_oldest_idle(&self) -> bool {
        let open = self.lock();
        match open
            .iter()
            .find(|c| c.in_flight.load(Ordering::SeqCst) == 0 && !c.close.is_cancelled())
        {
            Some(oldest) => {
                oldest.close.cancel();
                true
            }
            None => false,
        }
    }

    fn remove(&self, id: u64) {
        self.lock().retain(|c| c.id != id);
    }
}

/// Counts a request as in flight for as long as it is being answered.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `app` on `listener` until `shutdown`, then closes every connection (see the
/// module comment) and returns.
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let open = Arc::new(OpenConnections::default());
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
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
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) if open.close_oldest_idle() => {
                // The closed connection's task gives its slot back at once.
                match tokio::time::timeout(
                    Duration::from_secs(1),
                    Arc::clone(&slots).acquire_owned(),
                )
                .await
                {
                    Ok(Ok(slot)) => slot,
                    _ => continue,
                }
            }
            Err(_) => {
                tracing::debug!(
                    limit = MAX_CONNECTIONS,
                    "control endpoint: every connection is busy; closing a new one"
                );
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let id = next_id;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let close = shutdown.child_token();
        open.lock().push_back(Open {
            id,
            in_flight: Arc::clone(&in_flight),
            close: close.clone(),
        });
        let app = app.clone();
        let answering = Arc::clone(&in_flight);
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let answering = InFlight::new(&answering);
            let app = app.clone();
            async move {
                let response = app.oneshot(request.map(axum::body::Body::new)).await;
                drop(answering);
                response
            }
        });
        let open = Arc::clone(&open);
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                // Closed for room or for shutdown: at once when no request is in flight
                // (dropping the connection closes it), else after its answer.
                () = close.cancelled() => {
                    if in_flight.load(Ordering::SeqCst) > 0 {
                        connection.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(SHUTDOWN_WAIT, connection).await;
                    }
                }
            }
            open.remove(id);
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
