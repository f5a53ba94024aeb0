//! The HTTP/1.1 server: accepts connections, terminates TLS when `TLS_CERT_FILE`/`TLS_KEY_FILE`
//! are set, serves each connection with hyper (keep-alive, 16 KiB of headers) under the
//! deadlines of [`crate::deadline`] (`READ_HEADER_TIMEOUT`, `READ_TIMEOUT`, `WRITE_TIMEOUT`,
//! `STREAM_IDLE_TIMEOUT`, `IDLE_TIMEOUT`), and shuts down gracefully: no new connections, each
//! open one finishes its request in flight, and whatever is still running after 10 s is dropped.
//!
//! With TLS on, the port speaks nothing else: a client that sends plain HTTP gets one plain-text
//! `400` telling it to use `https://` and the connection is closed; anything else that is not a
//! TLS handshake is closed at once. The TLS handshake, like a first request head, must be done
//! within `READ_HEADER_TIMEOUT` (or `READ_TIMEOUT` if smaller) of the connection being accepted,
//! the bound Go's net/http derives from the same settings; the first head's time starts when
//! the handshake is over.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::deadline::{Deadline, TimedIo};
use crate::Gateway;

/// B13: request heads larger than this are refused (431).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How long requests in flight may run after shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);
/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The answer to plain HTTP on the TLS port.
const PLAIN_HTTP_REFUSED: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain; charset=utf-8\r\n\
connection: close\r\n\
content-length: 58\r\n\
\r\n\
this port serves HTTPS only: use an https:// URL instead.\n";

/// Accepts and serves connections until `shutdown` turns true.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let tls = gateway.config.tls.as_ref().map(|tls| tls.acceptor());
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
        let gateway = Arc::clone(&gateway);
        let shutdown = shutdown.clone();
        match &tls {
            None => connections.spawn(connection(gateway, stream, peer, shutdown)),
            // The handshake runs in the connection's task, so a slow one never holds up accept.
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let limit = gateway.config.limits().head();
                    if let Some(stream) = handshake(&acceptor, stream, peer, limit).await {
                        connection(gateway, stream, peer, shutdown).await;
                    }
                })
            }
        };
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

/// The TLS handshake of one connection, within `limit`; `None` when it failed, timed out, or
/// the client spoke something else.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    limit: Duration,
) -> Option<TlsStream<TcpStream>> {
    let handshake = async {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(1) => {}
            _ => return None,
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            // A request line starts with an upper-case method; anything else gets no answer.
            if first[0].is_ascii_uppercase() {
                refuse_plain_http(stream).await;
            }
            tracing::debug!(%peer, "not a TLS handshake on the TLS port; closed");
            return None;
        }
        match acceptor.accept(stream).await {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
        }
    };
    match tokio::time::timeout(limit, handshake).await {
        Ok(stream) => stream,
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Answers plain HTTP on the TLS port, then closes. What the client already sent is read first,
/// so that closing does not reset the connection before the answer is read.
async fn refuse_plain_http(mut stream: TcpStream) {
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_HEADER_BYTES {
        match stream.try_read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let _ = stream.write_all(PLAIN_HTTP_REFUSED).await;
    let _ = stream.shutdown().await;
}

/// Serves one connection (plain or TLS) until it ends, its deadline passes, or shutdown.
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
