//! The Gateway service (:8081): the HTTP shell over `caracal_core::gateway`
//! (`spec/coordinator-gateway.md` Part B).
//!
//! A proxied request passes the ordered pipeline of B3 ([`proxy`]): local checks on the raw
//! request, the mandate's signature, single use of its `jti`, the revocation anchors, the STS
//! circuit breaker, the signed STS exchange (which returns a `use=resource` mandate and the
//! private upstream directive), the upstream host guard, the credential, and the forward. The
//! upstream's response is relayed chunk by chunk, re-checking revocation before every chunk.
//! Every rule lives in core; this crate does the I/O.
//!
//! # Why hyper rather than actix-web
//!
//! The other services run on actix-web. The Gateway runs on hyper 1 (HTTP/1.1, through
//! hyper-util's `TokioIo`) because it must stream both directions without buffering and must
//! end a response with the HTTP/1.1 trailer `X-Caracal-Revoked: true` when authority is
//! revoked mid-stream; actix-web has no way to send trailers. hyper and the rest of its stack
//! are already in the build through reqwest.
//!
//! hyper 1.12 writes a response trailer only when (a) the response is chunked (no
//! `Content-Length`), (b) the response's `Trailer` header declares the field, and (c) the
//! request carried `TE: trailers`. The Gateway always declares `Trailer: X-Caracal-Revoked`;
//! a client that wants to see the trailer must send `TE: trailers`. Without it a revoked
//! stream still stops at once and ends with the terminating chunk, just without the trailer;
//! an upstream response with a `Content-Length` that is cut short ends with the connection
//! closed before the announced length, which every client reports as an error.
//!
//! # Connections
//!
//! Over plain HTTP, or HTTPS only when `TLS_CERT_FILE` and `TLS_KEY_FILE` are set ([`tls`]:
//! rustls with the ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`). Every connection runs
//! under one deadline per phase ([`deadline`]): a request head within `READ_HEADER_TIMEOUT` of
//! its first byte, the whole request and its answer's start within `READ_TIMEOUT`, an answer of
//! known length written within `WRITE_TIMEOUT`, a stream's chunks each within
//! `STREAM_IDLE_TIMEOUT`, and at most `IDLE_TIMEOUT` between requests on a keep-alive
//! connection. A connection past its deadline is closed without an answer: the request's future
//! is dropped (after the STS exchange, its evidence records an abandoned request, 499) or the
//! answer is cut short (`response_copy_failed`). Proxied, a body trickled past
//! `UPSTREAM_TIMEOUT` is answered `504` first, since `READ_TIMEOUT` must exceed
//! `STS_TIMEOUT + UPSTREAM_TIMEOUT`.

#![forbid(unsafe_code)]

mod audit;
pub mod config;
mod deadline;
pub mod metrics;
mod proxy;
mod reply;
pub mod revocation;
mod routes;
mod server;
mod sts;
mod tls;
mod upstream;

use std::sync::Arc;

use caracal_core::gateway::anchors::Anchors;
use caracal_core::gateway::circuit::Breaker;
use caracal_core::ports::{
    AuditSink, Clock, Es256, EventBus, ExpiringKeys, IdGenerator, MessageAuthenticator, Store,
    ZoneKeySource,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::GatewayConfig;
pub use metrics::Metrics;
pub use sts::LocalSts;
pub use tls::ServerTls;
pub use upstream::REVOKED_TRAILER;

use crate::revocation::Revocations;

/// The ports a Gateway runs on.
#[derive(Clone)]
pub struct GatewayPorts {
    /// Revocation snapshots (read by a background task only, never on the request path).
    pub store: Arc<dyn Store>,
    /// The revocation stream and `/ready`'s Redis check.
    pub bus: Arc<dyn EventBus>,
    /// The `jti` single-use registry (B5).
    pub expiring: Arc<dyn ExpiringKeys>,
    /// Mandate verification keys (the in-process STS's, or fetched from `STS_URL`).
    pub keys: Arc<dyn ZoneKeySource>,
    /// ES256 verification.
    pub es256: Arc<dyn Es256>,
    /// Audit evidence (B5, B14).
    pub audit: Arc<dyn AuditSink>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// UUIDv7 event ids.
    pub ids: Arc<dyn IdGenerator>,
    /// `GATEWAY_STS_HMAC_KEY`: signs every exchange (the Gateway cannot work without it).
    pub sts_mac: Arc<dyn MessageAuthenticator>,
    /// `STREAMS_HMAC_KEY`: revocation entries must be signed with it when set.
    pub streams_mac: Option<Arc<dyn MessageAuthenticator>>,
    /// An STS in the same process, which takes the signed exchange without the HTTP hop
    /// (`None`: always over HTTP to `STS_URL`).
    pub local_sts: Option<Arc<dyn sts::LocalSts>>,
}

/// One Gateway: its ports, configuration and in-memory state.
pub struct Gateway {
    ports: GatewayPorts,
    config: GatewayConfig,
    anchors: Arc<Anchors>,
    breaker: Breaker,
    metrics: Arc<Metrics>,
    sts: sts::StsClient,
    upstream: reqwest::Client,
}

impl Gateway {
    /// Builds the Gateway and loads the first revocation snapshot; a store that cannot answer
    /// fails start-up (B6), as do a missing `STS_URL` and timeouts that contradict each other
    /// ([`GatewayConfig::validate`], checked again for configurations not read from the
    /// environment).
    pub async fn new(ports: GatewayPorts, config: GatewayConfig) -> Result<Arc<Self>, String> {
        config.validate().map_err(|e| e.to_string())?;
        let sts_url = config.sts_url.as_deref().ok_or_else(|| {
            "STS_URL is required but not set; the Gateway exchanges every mandate at the STS"
                .to_string()
        })?;
        let sts = sts::StsClient::new(
            sts_url,
            config.sts_timeout,
            Arc::clone(&ports.sts_mac),
            ports.local_sts.clone(),
        )?;
        let upstream = upstream::client(&config.host_policy)?;
        let gateway = Arc::new(Self {
            ports,
            config,
            anchors: Arc::new(Anchors::new()),
            breaker: Breaker::new(),
            metrics: Arc::new(Metrics::default()),
            sts,
            upstream,
        });
        let held = gateway
            .revocations()
            .reload()
            .await
            .map_err(|e| format!("cannot load the revocation snapshot: {e}"))?;
        tracing::info!(revocations = held, "revocation snapshot loaded");
        Ok(gateway)
    }

    /// The revocation anchor sets (shared with the background tasks).
    pub fn anchors(&self) -> &Arc<Anchors> {
        &self.anchors
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    fn revocations(&self) -> Revocations {
        Revocations {
            anchors: Arc::clone(&self.anchors),
            store: Arc::clone(&self.ports.store),
            bus: Arc::clone(&self.ports.bus),
            streams_mac: self.ports.streams_mac.clone(),
            clock: Arc::clone(&self.ports.clock),
            metrics: Arc::clone(&self.metrics),
        }
    }

    fn now_ms(&self) -> i64 {
        self.ports.clock.now().unix_micros() / 1_000
    }
}

/// Serves `gateway` on `listener` with its background work (revocation snapshots, prune and
/// stream consumer) until `shutdown` turns true; then stops accepting, lets requests in
/// flight finish (at most 10 s) and returns.
pub async fn run(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let revocations = gateway.revocations();
    let group = format!("gateway-revocation:{}", gateway.config.hostname);
    let consumer = format!("gateway-{}-{}", gateway.config.hostname, std::process::id());
    let workers = [
        tokio::spawn(revocation::run_snapshots(
            revocations.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(revocation::run_prune(revocations.clone(), shutdown.clone())),
        tokio::spawn(revocation::run_stream(
            revocations,
            group,
            consumer,
            shutdown.clone(),
        )),
    ];
    let result = server::serve(gateway, listener, shutdown).await;
    for worker in workers {
        let _ = worker.await;
    }
    result
}
