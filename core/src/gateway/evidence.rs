//! The Gateway's audit events (B5, B14), as [`AuditEvent`]s for the evidence publisher.

use serde_json::{Map, Value};

use crate::ports::AuditEvent;

/// `subject_fp` / `subject_fingerprint`: lowercase hex of the first 8 bytes of
/// SHA-256(bearer).
pub fn subject_fingerprint(bearer: &str) -> String {
    let _ = bearer;
    todo!("issue #5: fingerprint")
}

/// What a `replay_detected` event records (B5).
#[derive(Debug, Clone, Copy)]
pub struct Replay<'a> {
    /// Event id (UUIDv7).
    pub id: &'a str,
    /// Peeked zone.
    pub zone_id: &'a str,
    /// Gateway request id.
    pub request_id: &'a str,
    /// The replayed `jti`.
    pub jti: &'a str,
    /// `X-Caracal-Resource`.
    pub resource: &'a str,
    /// Peeked `client_id`.
    pub client_id: &'a str,
    /// The bearer (only its fingerprint is recorded).
    pub bearer: &'a str,
    /// RFC 3339 with nanoseconds.
    pub occurred_at: &'a str,
}

/// `replay_detected`: decision `deny`, evaluation status `anomaly`, empty policy and
/// diagnostics arrays, metadata `{jti, resource, client_id, subject_fp, request_id}`.
pub fn replay_detected(replay: &Replay<'_>) -> AuditEvent {
    let _ = replay;
    todo!("issue #5: replay event")
}

/// What a `gateway_resource_request` event records (B14).
#[derive(Debug, Clone, Default)]
pub struct ResourceRequest {
    /// Event id (UUIDv7).
    pub id: String,
    /// Zone.
    pub zone_id: String,
    /// Gateway request id.
    pub request_id: String,
    /// `executed`, `upstream_rejected`, `build_failed` or `upstream_error`.
    pub evaluation_status: String,
    /// RFC 3339 with nanoseconds.
    pub occurred_at: String,
    /// Always present: `application_id, resource, subject_fingerprint, method,
    /// gateway_status, latency_ms, response_bytes`; when known: `trace_id, subject_kind,
    /// upstream_host, auth_mode, provider_id, connection_id, upstream_status, result_class,
    /// revocation_interrupted, error_kind`.
    pub metadata: Map<String, Value>,
}

/// `gateway_resource_request` with decision `allow`.
pub fn resource_request(request: ResourceRequest) -> AuditEvent {
    let _ = request;
    todo!("issue #5: resource event")
}

/// `result_class` of an upstream status: `success` (2xx), `redirect` (3xx), `client_error`
/// (4xx), `server_error` (5xx), else `unknown`.
pub fn result_class(status: u16) -> &'static str {
    let _ = status;
    todo!("issue #5: result class")
}
