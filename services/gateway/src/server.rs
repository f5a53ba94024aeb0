//! The HTTP/1.1 server: accepts connections, serves each with hyper (keep-alive, 16 KiB of
//! headers) under the deadlines of [`crate::deadline`] (`READ_HEADER_TIMEOUT`, `READ_TIMEOUT`,
//! `WRITE_TIMEOUT`, `STREAM_IDLE_TIMEOUT`, `IDLE_TIMEOUT`), and shuts down gracefully: no new
//! connections, each open one finishes its request in flight, and whatever is still running
//! after 10 s is dropped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::deadline::{Deadline, TimedIo};
use crate::Gateway;

/// B13: request heads larger than this are refused (431).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long requests in flight may run after shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

/// Accepts and serves connections until `shutdown` turns true.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let mut connections = JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
            // Reap finished connections so the set does not grow with the process's age.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            Arc::clone(&gateway),
            stream,
            peer,
            shutdown.clone(),
        ));
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "gateway connections still open after the drain period; closing them"
        );
        connections.shutdown().await;
    }
    Ok(())
}

/// Serves one connection until it ends, its deadline passes, or shutdown.
async fn connection<T>(
    gateway: Arc<Gateway>,
    io: T,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let deadline = Deadline::new(gateway.config.limits());
    let watched = Arc::clone(&deadline);
    let service = service_fn(move |request| {
        watched.request_started();
        let gateway = Arc::clone(&gateway);
        let deadline = Arc::clone(&watched);
        async move { Ok::<_, Infallible>(deadline.answer(gateway.handle(request, peer).await)) }
    });
    let mut builder = http1::Builder::new();
    builder
        .keep_alive(true)
        .max_header_size(MAX_HEADER_BYTES)
        // The deadlines replace hyper's head timer, which would count idle time as head time.
        .header_read_timeout(None);
    let io = TokioIo::new(TimedIo::new(io, Arc::clone(&deadline)));
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let timer = tokio::time::sleep_until(deadline.expires());
    tokio::pin!(timer);
    let mut draining = false;
    loop {
        tokio::select! {
            // hyper first: whatever it did in this poll (a first byte, a parsed head, a chunk)
            // has moved the deadline before the timer is looked at.
            biased;
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            () = std::future::poll_fn(|cx| deadline.poll_expired(timer.as_mut(), cx)) => {
                tracing::debug!(%peer, phase = deadline.phase(), "deadline passed; connection closed");
                return;
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
