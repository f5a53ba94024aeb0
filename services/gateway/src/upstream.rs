//! The way to the upstream (B10–B12): an HTTP client that never follows redirects, never uses
//! a proxy and dials only addresses the host policy allows (checked at resolution time, so a
//! second DNS answer cannot switch the address that was judged); the request body limiter;
//! and the response body relay that re-checks revocation before every chunk.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use caracal_core::gateway::anchors::{Anchors, RequestAnchors};
use caracal_core::gateway::host::{ip_allowed, HostPolicy};
use futures_util::Stream;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::{Body as HttpBody, Frame};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use tokio::time::Sleep;

use crate::audit::Completion;
use crate::reply::BodyError;

/// How long a TCP connect (and TLS handshake) to the upstream may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The resolver refused every address of a name (or it had none).
#[derive(Debug, Clone)]
pub struct NotAddressable(pub String);

impl std::fmt::Display for NotAddressable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream not addressable: {}", self.0)
    }
}

impl std::error::Error for NotAddressable {}

/// Resolves names and keeps only the addresses [`ip_allowed`] admits; the client dials
/// nothing else.
#[derive(Debug, Clone)]
struct PolicyResolver {
    policy: Arc<HostPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| NotAddressable(format!("{host}: {e}")))?;
            let allowed: Vec<_> = resolved
                .filter(|addr| ip_allowed(&policy, addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(NotAddressable(format!(
                    "{host} resolves to no allowed address"
                ))) as BodyError);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The upstream client for `policy`.
pub fn client(policy: &HostPolicy) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // A proxy would resolve and dial the upstream itself, out of the resolver's reach.
        .no_proxy()
        .connect_timeout(DIAL_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(90))
        .dns_resolver(Arc::new(PolicyResolver {
            policy: Arc::new(policy.clone()),
        }))
        .build()
        .map_err(|e| format!("the upstream HTTP client cannot be built: {e}"))
}

/// The request body grew past `MAX_REQUEST_BYTES`.
#[derive(Debug, Clone, Copy)]
pub struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body too large")
    }
}

impl std::error::Error for TooLarge {}

/// The inbound body as a stream of chunks, failing with [`TooLarge`] once more than `limit`
/// bytes have passed.
pub struct Limited<B> {
    body: B,
    seen: u64,
    limit: u64,
}

impl<B> Limited<B> {
    /// Wraps `body`.
    pub fn new(body: B, limit: u64) -> Self {
        Self {
            body,
            seen: 0,
            limit,
        }
    }
}

impl<B> Stream for Limited<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let frame = match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            // Request trailers are not forwarded (B10 drops `Trailer`).
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.seen = self.seen.saturating_add(data.len() as u64);
            if self.seen > self.limit {
                return Poll::Ready(Some(Err(Box::new(TooLarge))));
            }
            return Poll::Ready(Some(Ok(data)));
        }
    }
}

/// Whether `error` (or anything it wraps) is a `T`.
pub fn caused_by<T: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if e.is::<T>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// The four anchors of a request, owned so the relay can re-check them after the handler
/// returned.
#[derive(Debug, Clone, Default)]
pub struct OwnedAnchors {
    /// `sid`.
    pub sid: String,
    /// `root_sid`.
    pub root_sid: String,
    /// `agent_session_id`.
    pub agent_session_id: String,
    /// `delegation_edge_id`.
    pub delegation_edge_id: String,
}

impl OwnedAnchors {
    /// As the anchor sets take them.
    pub fn borrowed(&self) -> RequestAnchors<'_> {
        RequestAnchors {
            sid: &self.sid,
            root_sid: &self.root_sid,
            agent_session_id: &self.agent_session_id,
            delegation_edge_id: &self.delegation_edge_id,
        }
    }
}

/// The trailer sent when a revocation cuts a response short.
pub const REVOKED_TRAILER: &str = "x-caracal-revoked";

type ChunkStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// The upstream response body, relayed chunk by chunk (B12). Before each chunk is read the
/// request's anchors are checked; on revocation the upstream is dropped (its connection
/// closed), the body ends and the trailer `X-Caracal-Revoked: true` follows. A wait for the
/// next chunk longer than `STREAM_IDLE_TIMEOUT` aborts the body. The audit event of the
/// request is written when the body ends, however it ends.
pub struct Relay {
    upstream: Option<ChunkStream>,
    anchors: Arc<Anchors>,
    request_anchors: OwnedAnchors,
    idle: Duration,
    idle_deadline: Pin<Box<Sleep>>,
    bytes: u64,
    completion: Option<Completion>,
}

impl Relay {
    /// Relays `response`'s body.
    pub fn new(
        response: reqwest::Response,
        anchors: Arc<Anchors>,
        request_anchors: OwnedAnchors,
        idle: Duration,
        completion: Completion,
    ) -> Self {
        Self {
            upstream: Some(Box::pin(response.bytes_stream())),
            anchors,
            request_anchors,
            idle,
            idle_deadline: Box::pin(tokio::time::sleep(idle)),
            bytes: 0,
            completion: Some(completion),
        }
    }

    fn finish(&mut self, interrupted: bool, error_kind: Option<&'static str>) {
        self.upstream = None;
        if let Some(completion) = self.completion.take() {
            completion.relayed(self.bytes, interrupted, error_kind);
        }
    }
}

impl HttpBody for Relay {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(upstream) = this.upstream.as_mut() else {
            return Poll::Ready(None);
        };
        if this.anchors.is_revoked(&this.request_anchors.borrowed()) {
            this.finish(true, None);
            let mut trailers = HeaderMap::new();
            trailers.insert(
                HeaderName::from_static(REVOKED_TRAILER),
                HeaderValue::from_static("true"),
            );
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match upstream.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.bytes = this.bytes.saturating_add(chunk.len() as u64);
                let next = tokio::time::Instant::now() + this.idle;
                this.idle_deadline.as_mut().reset(next);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(false, Some("response_copy_failed"));
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                this.finish(false, None);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.idle_deadline.as_mut().poll(cx).is_ready() {
                    this.finish(false, Some("response_copy_failed"));
                    return Poll::Ready(Some(Err("upstream stream idle timeout".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.upstream.is_none()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client went away mid-body: the event still records what was relayed.
        if self.completion.is_some() {
            self.finish(false, Some("response_copy_failed"));
        }
    }
}
