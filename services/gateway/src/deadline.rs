//! Connection deadlines (B12, B13): how long a connection may sit idle, take to send a request,
//! and take to receive its answer. Past the deadline of its current phase a connection is
//! closed.
//!
//! | Phase | Starts | Ends | Deadline |
//! | --- | --- | --- | --- |
//! | head | the connection is served (first request), or the first byte after idling | hyper has parsed the head | start + `READ_HEADER_TIMEOUT` (or `READ_TIMEOUT` if smaller) |
//! | request | the head is parsed | the answer is ready | start + `READ_TIMEOUT` |
//! | response | the answer is ready, its length known | its body is over | + `WRITE_TIMEOUT` |
//! | stream | the answer is `text/event-stream` or of unknown length | its body is over | + `STREAM_IDLE_TIMEOUT`, renewed by every chunk |
//! | flush | the body is over | the last bytes are flushed | as the response or stream |
//! | idle | the last bytes are flushed | the next request's first byte | + `IDLE_TIMEOUT` |
//!
//! "start" is the first byte of the request, so the request phase covers the rest of the head,
//! the body and the handler up to its answer: the budget B13 sizes as more than
//! `STS_TIMEOUT + UPSTREAM_TIMEOUT`. A request's time is measured from its first byte, as Go's
//! net/http does, so an idle keep-alive connection is held for `IDLE_TIMEOUT`, not
//! `READ_HEADER_TIMEOUT`.
//!
//! Why not hyper's own timer: hyper 1's `header_read_timeout` starts when the connection begins
//! to wait for a head, so it cannot tell an idle connection from a slow head, and hyper has no
//! body, handler or write timeouts. Why not a deadline inside the I/O: hyper only polls its
//! transport when it wants bytes, so a deadline there cannot fire while the handler waits or
//! while the upstream trickles a body, and a read error ends a connection mid-answer.
//!
//! How: the phase lives in one [`Deadline`] per connection (atomics, all written from the
//! connection's own task, so plain loads and stores). It learns of the first byte and of the
//! final flush through [`TimedIo`], of the head through the service (which calls
//! [`Deadline::request_started`] and [`Deadline::answer`]), and of each chunk and the body's end
//! through [`TimedBody`]. The connection task polls hyper and then [`Deadline::poll_expired`]
//! with a single timer pinned in that task: no allocation and no task per request, and a few
//! clock reads. The timer is moved only when the deadline it sees after a poll has moved:
//! later is a compare-and-swap in tokio's timer, earlier (a proxied request waiting on the STS
//! after an idle wait) one re-registration; a request answered within a single poll moves it
//! not at all. hyper's own head timer, replaced by this, boxed and registered a timer per
//! request. Closing means dropping the hyper connection: its socket, the request's future (the
//! evidence then records the request as abandoned, like a client that left) and any relayed
//! upstream body.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::reply::{Body, BodyError, Reply};

/// The server-side limits of B12 and B13.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `READ_HEADER_TIMEOUT`: a request head, from its first byte.
    pub read_header: Duration,
    /// `READ_TIMEOUT`: a request, from its first byte until its answer is ready.
    pub read: Duration,
    /// `IDLE_TIMEOUT`: between an answer and the next request's first byte.
    pub idle: Duration,
    /// `WRITE_TIMEOUT`: an answer of known length, from when it is ready.
    pub write: Duration,
    /// `STREAM_IDLE_TIMEOUT`: each chunk of a streamed answer.
    pub stream_idle: Duration,
}

impl Limits {
    /// The head's share: a head cannot take longer than its whole request may.
    pub fn head(&self) -> Duration {
        self.read_header.min(self.read)
    }
}

/// Phases, as in the table above.
const HEAD: u8 = 0;
const REQUEST: u8 = 1;
const RESPONSE: u8 = 2;
const STREAM: u8 = 3;
const FLUSH: u8 = 4;
const IDLE: u8 = 5;

/// One connection's phase and deadline. Times are nanoseconds since the connection was served.
pub struct Deadline {
    limits: Limits,
    origin: Instant,
    phase: AtomicU8,
    /// The current request's first byte.
    request_start: AtomicU64,
    /// When the current phase runs out.
    expires: AtomicU64,
}

impl Deadline {
    /// A connection served now, whose first request head is due within the head limit.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            origin: Instant::now(),
            phase: AtomicU8::new(HEAD),
            request_start: AtomicU64::new(0),
            expires: AtomicU64::new(nanos(limits.head())),
        })
    }

    fn offset(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.origin))
    }

    fn enter(&self, phase: u8, expires: u64) {
        self.phase.store(phase, Ordering::Relaxed);
        self.expires.store(expires, Ordering::Relaxed);
    }

    /// When the current phase runs out.
    pub fn expires(&self) -> Instant {
        self.origin + Duration::from_nanos(self.expires.load(Ordering::Relaxed))
    }

    /// The current phase, for logs.
    pub fn phase(&self) -> &'static str {
        match self.phase.load(Ordering::Relaxed) {
            HEAD => "request head (READ_HEADER_TIMEOUT)",
            REQUEST => "request (READ_TIMEOUT)",
            RESPONSE | FLUSH => "response (WRITE_TIMEOUT)",
            STREAM => "stream (STREAM_IDLE_TIMEOUT)",
            _ => "idle (IDLE_TIMEOUT)",
        }
    }

    /// Bytes arrived: the first byte after idling starts a request.
    fn bytes_read(&self) {
        if self.phase.load(Ordering::Relaxed) == IDLE {
            let now = self.offset(Instant::now());
            self.request_start.store(now, Ordering::Relaxed);
            self.enter(HEAD, now.saturating_add(nanos(self.limits.head())));
        }
    }

    /// Everything written so far has been flushed: after an answer, the connection idles.
    fn flushed(&self) {
        if self.phase.load(Ordering::Relaxed) == FLUSH {
            let now = self.offset(Instant::now());
            self.enter(IDLE, now.saturating_add(nanos(self.limits.idle)));
        }
    }

    /// hyper parsed a request head and called the service.
    pub fn request_started(&self) {
        let start = match self.phase.load(Ordering::Relaxed) {
            HEAD => self.request_start.load(Ordering::Relaxed),
            // A pipelined head parsed from bytes read with the previous request: its clock
            // starts now.
            _ => {
                let now = self.offset(Instant::now());
                self.request_start.store(now, Ordering::Relaxed);
                now
            }
        };
        self.enter(REQUEST, start.saturating_add(nanos(self.limits.read)));
    }

    /// The service answered: from now on the answer's write deadline applies.
    pub fn answer(self: Arc<Self>, response: Reply) -> Response<TimedBody> {
        let streaming = is_stream(response.headers(), response.body());
        let now = self.offset(Instant::now());
        if streaming {
            self.enter(STREAM, now.saturating_add(nanos(self.limits.stream_idle)));
        } else {
            self.enter(RESPONSE, now.saturating_add(nanos(self.limits.write)));
        }
        response.map(|body| TimedBody {
            body,
            deadline: self,
            streaming,
        })
    }

    /// A chunk of a stream went to hyper: the stream has another `STREAM_IDLE_TIMEOUT`.
    fn chunk(&self) {
        if self.phase.load(Ordering::Relaxed) == STREAM {
            let now = self.offset(Instant::now());
            self.expires.store(
                now.saturating_add(nanos(self.limits.stream_idle)),
                Ordering::Relaxed,
            );
        }
    }

    /// hyper is done with the answer's body (ended, or the connection is going away).
    fn body_done(&self) {
        if matches!(self.phase.load(Ordering::Relaxed), RESPONSE | STREAM) {
            self.phase.store(FLUSH, Ordering::Relaxed);
        }
    }

    /// Ready once the current deadline has passed. `timer` is the connection's one timer; it is
    /// moved only when the deadline moved since the last poll.
    pub fn poll_expired(&self, mut timer: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<()> {
        let expires = self.expires();
        if timer.deadline() != expires {
            timer.as_mut().reset(expires);
        }
        // tokio timers never fire early, and the timer was just set to the current deadline.
        timer.poll(cx)
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// B12: an answer is streamed when it is `text/event-stream` or its length is unknown (no
/// `Content-Length` and a body that cannot tell its size).
fn is_stream(headers: &HeaderMap, body: &Body) -> bool {
    let event_stream = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"));
    event_stream
        || (!body.is_end_stream()
            && body.size_hint().exact().is_none()
            && !headers.contains_key(CONTENT_LENGTH))
}

/// The connection's transport, reporting the first byte of each request and each completed
/// flush to its [`Deadline`] (one relaxed load per call otherwise). Reads and writes pass
/// through untouched.
pub struct TimedIo<T> {
    inner: T,
    deadline: Arc<Deadline>,
}

impl<T> TimedIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, deadline: Arc<Deadline>) -> Self {
        Self { inner, deadline }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.deadline.bytes_read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(polled, Poll::Ready(Ok(()))) {
            this.deadline.flushed();
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// An answer's body, renewing a stream's deadline per chunk and ending the answer's phase when
/// hyper lets go of it (hyper drops a body once it has ended).
pub struct TimedBody {
    body: Body,
    deadline: Arc<Deadline>,
    streaming: bool,
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if this.streaming {
            if let Poll::Ready(Some(Ok(frame))) = &polled {
                if frame.is_data() {
                    this.deadline.chunk();
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        self.deadline.body_done();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply;

    fn limits() -> Limits {
        Limits {
            read_header: Duration::from_secs(5),
            read: Duration::from_secs(45),
            idle: Duration::from_secs(120),
            write: Duration::from_secs(60),
            stream_idle: Duration::from_secs(30),
        }
    }

    fn left(deadline: &Deadline) -> Duration {
        deadline.expires().saturating_duration_since(Instant::now())
    }

    fn near(actual: Duration, expected: Duration) -> bool {
        actual <= expected && actual + Duration::from_secs(1) > expected
    }

    #[tokio::test]
    async fn phases_follow_a_keep_alive_exchange() {
        let deadline = Deadline::new(limits());
        // A fresh connection owes its first head at once.
        assert!(near(left(&deadline), Duration::from_secs(5)));
        deadline.request_started();
        assert!(near(left(&deadline), Duration::from_secs(45)));
        let response = Arc::clone(&deadline).answer(reply::plain(200, "ok"));
        assert_eq!(deadline.phase(), "response (WRITE_TIMEOUT)");
        assert!(near(left(&deadline), Duration::from_secs(60)));
        drop(response);
        deadline.flushed();
        assert_eq!(deadline.phase(), "idle (IDLE_TIMEOUT)");
        assert!(near(left(&deadline), Duration::from_secs(120)));
        // Flushes and reads mid-phase change nothing; the next request's first byte does.
        deadline.flushed();
        assert!(near(left(&deadline), Duration::from_secs(120)));
        deadline.bytes_read();
        assert_eq!(deadline.phase(), "request head (READ_HEADER_TIMEOUT)");
        assert!(near(left(&deadline), Duration::from_secs(5)));
        deadline.bytes_read();
        assert!(near(left(&deadline), Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn the_head_never_outlasts_the_request() {
        let deadline = Deadline::new(Limits {
            read_header: Duration::from_secs(50),
            ..limits()
        });
        assert!(near(left(&deadline), Duration::from_secs(45)));
    }

    #[tokio::test]
    async fn streams_are_told_apart_and_renewed_per_chunk() {
        let deadline = Deadline::new(limits());
        deadline.request_started();
        let mut sse = reply::plain(200, "data: 1\n\n");
        sse.headers_mut().insert(
            CONTENT_TYPE,
            http::HeaderValue::from_static("Text/Event-Stream; charset=utf-8"),
        );
        let mut response = Arc::clone(&deadline).answer(sse);
        assert_eq!(deadline.phase(), "stream (STREAM_IDLE_TIMEOUT)");
        assert!(near(left(&deadline), Duration::from_secs(30)));
        let frame = std::future::poll_fn(|cx| Pin::new(response.body_mut()).poll_frame(cx)).await;
        assert!(frame.is_some_and(|f| f.is_ok_and(|f| f.is_data())));
        assert!(near(left(&deadline), Duration::from_secs(30)));
        drop(response);
        assert_eq!(deadline.phase(), "response (WRITE_TIMEOUT)");

        // Unknown length, no Content-Length: a stream. Known length: not.
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BodyError>>(1);
        let unknown = http_body_util::StreamBody::new(futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        ));
        let unknown: Body = http_body_util::BodyExt::boxed_unsync(unknown);
        assert!(is_stream(&HeaderMap::new(), &unknown));
        let mut with_length = HeaderMap::new();
        with_length.insert(CONTENT_LENGTH, http::HeaderValue::from_static("10"));
        assert!(!is_stream(&with_length, &unknown));
        assert!(!is_stream(&HeaderMap::new(), &reply::full("known")));
        assert!(!is_stream(&HeaderMap::new(), &reply::empty()));
    }

    #[tokio::test]
    async fn a_pipelined_head_starts_its_own_clock() {
        let deadline = Deadline::new(limits());
        deadline.request_started();
        let response = Arc::clone(&deadline).answer(reply::status_only(204));
        drop(response);
        // The next head was already buffered: hyper parses it without reading.
        deadline.request_started();
        assert_eq!(deadline.phase(), "request (READ_TIMEOUT)");
        assert!(near(left(&deadline), Duration::from_secs(45)));
    }
}
