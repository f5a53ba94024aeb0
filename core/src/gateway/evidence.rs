//! The Gateway's audit events (B5, B14), as [`AuditEvent`]s for the evidence publisher.

use serde_json::{Map, Value};

use crate::digest::sha256_hex;
use crate::ports::AuditEvent;

/// `subject_fp` / `subject_fingerprint`: lowercase hex of the first 8 bytes of
/// SHA-256(bearer).
pub fn subject_fingerprint(bearer: &str) -> String {
    // Two hex digits per byte: the first 8 bytes are the first 16 digits.
    let mut digest = sha256_hex(bearer.as_bytes());
    digest.truncate(16);
    digest
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
    let mut metadata = Map::new();
    metadata.insert("jti".into(), Value::from(replay.jti));
    metadata.insert("resource".into(), Value::from(replay.resource));
    metadata.insert("client_id".into(), Value::from(replay.client_id));
    metadata.insert(
        "subject_fp".into(),
        Value::from(subject_fingerprint(replay.bearer)),
    );
    metadata.insert("request_id".into(), Value::from(replay.request_id));
    AuditEvent {
        id: replay.id.to_owned(),
        zone_id: replay.zone_id.to_owned(),
        event_type: "replay_detected".to_owned(),
        request_id: replay.request_id.to_owned(),
        decision: "deny".to_owned(),
        policy_set_version_id: None,
        manifest_sha: None,
        evaluation_status: "anomaly".to_owned(),
        determining_policies_json: Some(Vec::new()),
        diagnostics_json: Some(Vec::new()),
        metadata_json: Some(metadata),
        occurred_at: replay.occurred_at.to_owned(),
    }
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
    AuditEvent {
        id: request.id,
        zone_id: request.zone_id,
        event_type: "gateway_resource_request".to_owned(),
        request_id: request.request_id,
        decision: "allow".to_owned(),
        policy_set_version_id: None,
        manifest_sha: None,
        evaluation_status: request.evaluation_status,
        determining_policies_json: Some(Vec::new()),
        diagnostics_json: Some(Vec::new()),
        metadata_json: Some(request.metadata),
        occurred_at: request.occurred_at,
    }
}

/// `result_class` of an upstream status: `success` (2xx), `redirect` (3xx), `client_error`
/// (4xx), `server_error` (5xx), else `unknown`.
pub fn result_class(status: u16) -> &'static str {
    match status {
        200..=299 => "success",
        300..=399 => "redirect",
        400..=499 => "client_error",
        500..=599 => "server_error",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fingerprint_is_the_first_eight_digest_bytes() {
        // SHA-256("abc") = ba7816bf8f01cfea…
        assert_eq!(subject_fingerprint("abc"), "ba7816bf8f01cfea");
        assert_eq!(subject_fingerprint(""), "e3b0c44298fc1c14");
        assert_eq!(subject_fingerprint("eyJ.a.b").len(), 16);
    }

    #[test]
    fn replay_event_shape() {
        let event = replay_detected(&Replay {
            id: "0190a0a0-0000-7000-8000-000000000001",
            zone_id: "zone_1",
            request_id: "req-1",
            jti: "jti-1",
            resource: "resource://api",
            client_id: "app_1",
            bearer: "abc",
            occurred_at: "2024-01-01T00:00:00.123456789Z",
        });
        assert_eq!(
            serde_json::to_value(&event).expect("serialises"),
            json!({
                "id": "0190a0a0-0000-7000-8000-000000000001",
                "zone_id": "zone_1",
                "event_type": "replay_detected",
                "request_id": "req-1",
                "decision": "deny",
                "evaluation_status": "anomaly",
                "determining_policies_json": [],
                "diagnostics_json": [],
                "metadata_json": {
                    "jti": "jti-1",
                    "resource": "resource://api",
                    "client_id": "app_1",
                    "subject_fp": "ba7816bf8f01cfea",
                    "request_id": "req-1",
                },
                "occurred_at": "2024-01-01T00:00:00.123456789Z",
            })
        );
        assert_eq!(event.policy_set_version_id, None);
        assert_eq!(event.manifest_sha, None);
    }

    #[test]
    fn resource_request_event_shape() {
        let Value::Object(metadata) = json!({
            "application_id": "app_1",
            "resource": "resource://api",
            "subject_fingerprint": "ba7816bf8f01cfea",
            "method": "GET",
            "gateway_status": 200,
            "latency_ms": 12,
            "response_bytes": 34,
            "upstream_status": 200,
            "result_class": result_class(200),
            "auth_mode": "caracal_jwt",
        }) else {
            panic!("object");
        };
        let event = resource_request(ResourceRequest {
            id: "0190a0a0-0000-7000-8000-000000000002".into(),
            zone_id: "zone_1".into(),
            request_id: "req-2".into(),
            evaluation_status: "executed".into(),
            occurred_at: "2024-01-01T00:00:01.000000001Z".into(),
            metadata: metadata.clone(),
        });
        assert_eq!(
            serde_json::to_value(&event).expect("serialises"),
            json!({
                "id": "0190a0a0-0000-7000-8000-000000000002",
                "zone_id": "zone_1",
                "event_type": "gateway_resource_request",
                "request_id": "req-2",
                "decision": "allow",
                "evaluation_status": "executed",
                "determining_policies_json": [],
                "diagnostics_json": [],
                "metadata_json": Value::Object(metadata),
                "occurred_at": "2024-01-01T00:00:01.000000001Z",
            })
        );
    }

    #[test]
    fn result_classes() {
        assert_eq!(result_class(200), "success");
        assert_eq!(result_class(204), "success");
        assert_eq!(result_class(299), "success");
        assert_eq!(result_class(301), "redirect");
        assert_eq!(result_class(399), "redirect");
        assert_eq!(result_class(400), "client_error");
        assert_eq!(result_class(499), "client_error");
        assert_eq!(result_class(500), "server_error");
        assert_eq!(result_class(599), "server_error");
        assert_eq!(result_class(0), "unknown");
        assert_eq!(result_class(101), "unknown");
        assert_eq!(result_class(199), "unknown");
        assert_eq!(result_class(600), "unknown");
    }
}
