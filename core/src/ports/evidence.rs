//! Audit evidence producers (`spec/sts.md §13`, `spec/audit-streams-storage.md §3.3–4`): the
//! STS and the Gateway describe every decision as an [`AuditEvent`] and hand it to an
//! [`AuditSink`], which signs it, publishes it to `caracal.audit.events` and spools it to a
//! local replay file while the stream is unreachable, so no decision goes unrecorded.

use serde::Serialize;
use serde_json::{Map, Value};

/// One decision as the Audit service ingests it (the JSON in the stream entry's `data`).
/// Field order and presence follow upstream's Go struct: optional strings are omitted when
/// empty, the two arrays serialise as `null` when absent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    /// UUIDv7.
    pub id: String,
    /// Zone (key of the hash chain).
    pub zone_id: String,
    /// `token_exchange`, `step_up_issued`, `jti_collision`, …
    pub event_type: String,
    /// The request that caused the decision.
    pub request_id: String,
    /// `allow`, `deny`, `pending`, `consumed`, `approved`, `rejected`.
    pub decision: String,
    /// Active policy set version, when a policy ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_set_version_id: Option<String>,
    /// Its manifest SHA-256, when a policy ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_sha: Option<String>,
    /// `complete` for policy decisions; the deny reason for pre-policy denies.
    pub evaluation_status: String,
    /// `[{"policy":…}]` verbatim from the decision; `null` for pre-policy denies.
    pub determining_policies_json: Option<Vec<Value>>,
    /// Diagnostics verbatim from the decision; `null` for pre-policy denies.
    pub diagnostics_json: Option<Vec<Value>>,
    /// Context (`application_id`, `resource`, `requested_scopes`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_json: Option<Map<String, Value>>,
    /// RFC 3339 with nanoseconds, UTC.
    pub occurred_at: String,
}

/// What a sink reports for readiness and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkHealth {
    /// Events handed to `emit` since start: what the Audit service must eventually hold
    /// (the fault tests compare the two).
    pub emitted: u64,
    /// Events lost because neither the stream nor the replay spool accepted them. Any drop
    /// fails readiness (`audit_evidence_lost`).
    pub dropped: u64,
    /// Events waiting in replay files.
    pub replay_pending: u64,
    /// Replay files on disk.
    pub replay_files: u64,
    /// Their total size in bytes.
    pub replay_bytes: u64,
    /// Age of the oldest replay file in seconds, 0 without files (the Helm alert fires past
    /// 300 s: evidence that old has not reached the Audit service).
    pub replay_oldest_age_seconds: u64,
    /// Events replayed from files so far.
    pub replayed: u64,
    /// Failed publish attempts.
    pub sink_errors: u64,
    /// Events delivered to the stream from the in-memory buffer (those delivered from replay
    /// files count in `replayed`).
    pub persisted: u64,
    /// Events waiting in the in-memory buffer now (0 for a sink without one).
    pub queue_depth: u64,
    /// The in-memory buffer's size in events (0 for a sink without one); past it `emit`
    /// spools at once.
    pub queue_capacity: u64,
    /// Whether the replay directory is usable (`audit_replay_unavailable` otherwise). A sink
    /// configured without a replay directory (memory mode) reports `true`: there is nothing to
    /// be unavailable, and its failed publications show up in `dropped` instead.
    pub replay_available: bool,
}

/// Where producers hand their evidence. `emit` never blocks the request path and never fails:
/// delivery problems are the sink's to absorb (buffer, spool, replay) and to report through
/// [`SinkHealth`].
pub trait AuditSink: Send + Sync {
    /// Queues one event for signing and publication.
    fn emit(&self, event: AuditEvent);
    /// Current counters.
    fn health(&self) -> SinkHealth;
}
