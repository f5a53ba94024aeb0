//! Rows the Coordinator owns besides Sessions and Delegation edges (`crate::authority`):
//! idempotency receipts (`spec/coordinator-gateway.md` A7), agent services and invocations
//! (A9), and the filter a Session listing takes (A6.6).

use serde_json::{Map, Value};

use crate::authority::Lifecycle;
use crate::ids::ZoneId;
use crate::time::Timestamp;

/// Filters of `GET …/agents` (A6.6). `None` = no filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Exact status (`active`, `suspended`, `terminated`, `expired`).
    pub status: Option<String>,
    /// Task or service.
    pub lifecycle: Option<Lifecycle>,
    /// Exact application id.
    pub application_id: Option<String>,
    /// Sessions whose labels contain this one.
    pub label: Option<String>,
}

/// A stored response to an idempotent creation (A7). The key itself is never stored: only
/// its HMAC (`key_hash`).
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyReceipt {
    /// `<operation>:<zone>:<application>`, e.g. `session.start.v2:z1:app1`. Receipts of one
    /// scope are counted against the per-scope cap.
    pub scope: String,
    /// Hex HMAC-SHA256 of the key; unique within the scope.
    pub key_hash: String,
    /// Zone (row-level security).
    pub zone_id: ZoneId,
    /// Hex SHA-256 of the normalized request; a replay with another hash is a conflict.
    pub request_hash: String,
    /// The created object's id (Session, edge or invocation), checked live on replay.
    pub object_id: String,
    /// The stored response status.
    pub status: u16,
    /// The stored response body, replayed verbatim.
    pub body: Value,
    /// The receipt is ignored (and purged) from this instant.
    pub expires_at: Timestamp,
    /// Insert instant.
    pub created_at: Timestamp,
}

/// A registered agent service endpoint (A9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentService {
    /// UUIDv7.
    pub id: String,
    /// Zone.
    pub zone_id: ZoneId,
    /// Owning application.
    pub application_id: String,
    /// Where the service listens; unique per `(zone, application)`.
    pub endpoint_url: String,
    /// Protocol versions it speaks.
    pub protocol_versions: Vec<String>,
    /// Framework name, if declared.
    pub framework_name: Option<String>,
    /// Framework version, if declared.
    pub framework_version: Option<String>,
    /// Declared capabilities.
    pub capabilities: Vec<String>,
    /// `starting`, `healthy`, `degraded` or `unhealthy`.
    pub health: String,
    /// Caller metadata (merged by heartbeats).
    pub metadata: Map<String, Value>,
    /// Last heartbeat that named it.
    pub last_heartbeat_at: Option<Timestamp>,
    /// Insert instant.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

/// One invocation of an agent service (A9).
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    /// UUIDv7.
    pub id: String,
    /// Zone.
    pub zone_id: ZoneId,
    /// The invoked service.
    pub service_id: String,
    /// Invoking Session, if named.
    pub source_session_id: Option<String>,
    /// Target Session, if named.
    pub target_session_id: Option<String>,
    /// The application that invoked (source Session's, else the service's).
    pub invoking_application_id: String,
    /// Method name.
    pub method: String,
    /// Parameters (never echoed in responses).
    pub params: Value,
    /// Caller metadata.
    pub metadata: Map<String, Value>,
    /// `pending`, `running`, `cancel_requested`, `canceled`, `succeeded`, `failed`,
    /// `timed_out` or `dead`.
    pub status: String,
    /// Starts so far.
    pub attempts: i32,
    /// Starts allowed.
    pub max_attempts: i32,
    /// Backoff between attempts, in milliseconds.
    pub backoff_ms: i64,
    /// Per-attempt timeout, in milliseconds.
    pub timeout_ms: i64,
    /// Deadline of the running attempt.
    pub deadline_at: Option<Timestamp>,
    /// Why it failed (`{"reason":"deadline_exceeded"}`, or the caller's error).
    pub error_json: Option<Value>,
    /// Cancellation reason.
    pub cancel_reason: Option<String>,
    /// Insert instant.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
    /// When it reached a terminal status.
    pub completed_at: Option<Timestamp>,
}
