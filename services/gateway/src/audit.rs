//! The `gateway_resource_request` evidence (B14): one event per request that got past the STS,
//! written when its outcome is known (for a relayed response: when the body ends).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use caracal_core::gateway::evidence::{resource_request, result_class, ResourceRequest};
use caracal_core::ports::{AuditSink, Clock, IdGenerator};
use caracal_core::sts::evidence::rfc3339_nanos;
use serde_json::{Map, Value};

use crate::metrics::Metrics;

/// What the event needs from the Gateway.
#[derive(Clone)]
pub struct Recorder {
    /// Where evidence goes.
    pub sink: Arc<dyn AuditSink>,
    /// UUIDv7 event ids.
    pub ids: Arc<dyn IdGenerator>,
    /// `occurred_at`.
    pub clock: Arc<dyn Clock>,
    /// Counters (interrupted responses).
    pub metrics: Arc<Metrics>,
}

/// One request's pending event: the metadata known so far and when the request started.
pub struct Completion {
    recorder: Recorder,
    zone_id: String,
    request_id: String,
    metadata: Map<String, Value>,
    started: Instant,
    upstream_status: Option<u16>,
    /// The event went out (or was handed to the relay, which then owns it).
    emitted: bool,
}

/// The caller went away before the upstream's answer was relayed: the request's future was
/// dropped (the connection closed) with its event still pending. Upstream answers such a request
/// `499 internal_error` "client cancelled" (B5 row 18); nobody is left to read that, so it is
/// the evidence that records it.
impl Drop for Completion {
    fn drop(&mut self) {
        if !self.emitted {
            self.recorder
                .metrics
                .upstream_errors
                .fetch_add(1, Ordering::Relaxed);
            self.write(
                CLIENT_CLOSED,
                "upstream_error",
                0,
                false,
                Some("transport_error"),
            );
        }
    }
}

/// The status a request the client abandoned is recorded with (nginx's and upstream's 499).
pub const CLIENT_CLOSED: u16 = 499;

impl Completion {
    /// Starts the event of a request past the STS, with the members B14 always records
    /// (`gateway_status`, `latency_ms`, `response_bytes` are added at the end).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        recorder: Recorder,
        zone_id: &str,
        request_id: &str,
        application_id: &str,
        resource: &str,
        subject_fingerprint: &str,
        method: &str,
        started: Instant,
    ) -> Self {
        let mut metadata = Map::new();
        metadata.insert("application_id".into(), application_id.into());
        metadata.insert("resource".into(), resource.into());
        metadata.insert("subject_fingerprint".into(), subject_fingerprint.into());
        metadata.insert("method".into(), method.into());
        Self {
            recorder,
            zone_id: zone_id.to_owned(),
            request_id: request_id.to_owned(),
            metadata,
            started,
            upstream_status: None,
            emitted: false,
        }
    }

    /// Records an optional member when it is non-empty.
    pub fn note(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.metadata.insert(key.to_owned(), value.into());
        }
    }

    /// Records the upstream's status (the response is then relayed).
    pub fn upstream_status(&mut self, status: u16) {
        self.upstream_status = Some(status);
        self.metadata
            .insert("upstream_status".into(), status.into());
        self.metadata
            .insert("result_class".into(), result_class(status).into());
    }

    /// The request ended before a response was relayed: `build_failed` or `upstream_error`
    /// with the Gateway's own status.
    pub fn failed(self, evaluation_status: &str, gateway_status: u16, error_kind: &str) {
        self.emit(
            evaluation_status,
            gateway_status,
            0,
            false,
            Some(error_kind),
        );
    }

    /// The relayed body ended: fully, cut by a revocation, or with an error.
    pub fn relayed(self, bytes: u64, interrupted: bool, error_kind: Option<&str>) {
        let status = self.upstream_status.unwrap_or(0);
        let evaluation = if status >= 400 {
            "upstream_rejected"
        } else {
            "executed"
        };
        if interrupted {
            self.recorder
                .metrics
                .revocation_interrupted
                .fetch_add(1, Ordering::Relaxed);
        }
        self.emit(evaluation, status, bytes, interrupted, error_kind);
    }

    fn emit(
        mut self,
        evaluation_status: &str,
        gateway_status: u16,
        bytes: u64,
        interrupted: bool,
        error_kind: Option<&str>,
    ) {
        self.write(
            gateway_status,
            evaluation_status,
            bytes,
            interrupted,
            error_kind,
        );
    }

    /// Writes the event once; a second call (the drop after an emit) does nothing.
    fn write(
        &mut self,
        gateway_status: u16,
        evaluation_status: &str,
        bytes: u64,
        interrupted: bool,
        error_kind: Option<&str>,
    ) {
        if self.emitted {
            return;
        }
        self.emitted = true;
        let latency = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.metadata
            .insert("gateway_status".into(), gateway_status.into());
        self.metadata.insert("latency_ms".into(), latency.into());
        self.metadata.insert("response_bytes".into(), bytes.into());
        if interrupted {
            self.metadata
                .insert("revocation_interrupted".into(), true.into());
        }
        if let Some(kind) = error_kind {
            self.metadata.insert("error_kind".into(), kind.into());
        }
        let event = resource_request(ResourceRequest {
            id: self.recorder.ids.new_id(),
            zone_id: std::mem::take(&mut self.zone_id),
            request_id: std::mem::take(&mut self.request_id),
            evaluation_status: evaluation_status.to_owned(),
            occurred_at: rfc3339_nanos(self.recorder.clock.now()),
            metadata: std::mem::take(&mut self.metadata),
        });
        self.recorder.sink.emit(event);
    }
}
