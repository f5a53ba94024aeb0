//! The audit ledger: the append-only, hash-chained store of evidence
//! (`spec/audit-streams-storage.md §6.3–6.5`), and the reads the Audit service and the API
//! serve from it.
//!
//! Contract (the suite in `crate::contract::audit` holds every adapter to it):
//! - [`AuditLedger::append`] stores a batch atomically, in order. Each event is linked onto its
//!   zone's chain (`chain_seq` dense from 1, `prev_content_sha256` = the previous row's hash,
//!   `chain_hmac` under the given key) — concurrent appends to one zone never fork or reuse a
//!   `chain_seq`. An event whose (`id`, `occurred_at`) is already stored is not stored again:
//!   `Duplicate` when the stored content hash is the same, `Tampered` when it differs; neither
//!   moves the chain. On error nothing of the batch is stored.
//! - Nothing here updates or deletes a stored event. Only [`AuditLedger::apply_retention`]
//!   removes rows, whole months at a time, recording an [`Anchor`] for every removed row whose
//!   successor survives, in the same transaction.

use async_trait::async_trait;
use thiserror::Error;

use crate::audit::{Anchor, IncomingEvent, StoredEvent};
use crate::ports::MessageAuthenticator;

/// A ledger failure, split the way the ingestor retries (`§6.2`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LedgerError {
    /// Worth retrying: connection lost, serialization failure, deadlock, shutdown, too many
    /// connections, timeouts.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help (constraint, data or permission errors).
    #[error("{0}")]
    Permanent(String),
}

/// What happened to one appended event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored at this position of its zone's chain.
    Inserted {
        /// Its `chain_seq`.
        chain_seq: i64,
    },
    /// The same event was already stored.
    Duplicate,
    /// A different event with the same (`id`, `occurred_at`) is stored.
    Tampered {
        /// The stored row's content hash.
        stored_sha256: String,
    },
}

impl AppendOutcome {
    /// The outcome for an event whose (`id`, `occurred_at`) is already stored with
    /// `stored_sha256`: the same content is a harmless redelivery, other content is tampering.
    pub fn already_stored(stored_sha256: &str, incoming_sha256: &str) -> AppendOutcome {
        if stored_sha256 == incoming_sha256 {
            AppendOutcome::Duplicate
        } else {
            AppendOutcome::Tampered {
                stored_sha256: stored_sha256.to_string(),
            }
        }
    }
}

/// A security signal the ingestor records (`audit_ingest_alerts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestAlert {
    /// Event id concerned.
    pub event_id: String,
    /// Its zone.
    pub zone_id: String,
    /// `content_mismatch_on_replay`, …
    pub kind: String,
    /// Human-readable detail.
    pub detail: String,
    /// When it was seen (Unix microseconds).
    pub observed_at_micros: i64,
}

/// `GET /api/audit/search` (`§6.6`): `since ≤ occurred_at < until`, optional exact
/// `decision` and `request_id`, `chain_seq > after_seq`, ascending by `chain_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// Zone (required).
    pub zone_id: String,
    /// Inclusive lower bound (Unix microseconds).
    pub since_micros: i64,
    /// Exclusive upper bound (Unix microseconds).
    pub until_micros: i64,
    /// Exact decision.
    pub decision: Option<String>,
    /// Exact request id.
    pub request_id: Option<String>,
    /// Keyset cursor: rows with a larger `chain_seq` only.
    pub after_seq: i64,
    /// Page size, 1..=1000.
    pub limit: u32,
}

/// The API's zone audit list (`spec/api.md §3.13`), newest first by (`occurred_at`, `id`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQuery {
    /// Zone.
    pub zone_id: String,
    /// Inclusive lower bound on `occurred_at` (Unix microseconds).
    pub since_micros: Option<i64>,
    /// Exclusive upper bound on `occurred_at`.
    pub until_micros: Option<i64>,
    /// Exact request id.
    pub request_id: Option<String>,
    /// Exact decision.
    pub decision: Option<String>,
    /// Any of these event types (empty = all).
    pub event_types: Vec<String>,
    /// `metadata_json.application_id`.
    pub application_id: Option<String>,
    /// `metadata_json.agent_session_id`.
    pub agent_session_id: Option<String>,
    /// `metadata_json.session_id` (the authority record).
    pub authority_record_id: Option<String>,
    /// A label in `metadata_json.agent_labels` (an array of strings, or an object whose
    /// `key:value` or key matches).
    pub label: Option<String>,
    /// Keyset cursor: rows strictly before (`occurred_at`, `id`) in the descending order.
    pub before: Option<(i64, String)>,
    /// Page size.
    pub limit: u32,
}

/// What one retention pass did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RetentionReport {
    /// Month partitions created.
    pub created: u64,
    /// Month partitions dropped.
    pub dropped: u64,
    /// Rows they held.
    pub rows_dropped: u64,
    /// Anchors recorded.
    pub anchors: u64,
}

/// The retention setting the API manages (`GET/PUT /v1/audit-retention`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSetting {
    /// Days kept (≥ 1).
    pub retention_days: u32,
    /// Who set it.
    pub updated_by: Option<String>,
    /// When (Unix microseconds).
    pub updated_at_micros: i64,
}

/// The ledger port.
#[async_trait]
pub trait AuditLedger: Send + Sync {
    /// Stores `events` in order, atomically (see the module contract); one outcome per event.
    async fn append(
        &self,
        events: &[IncomingEvent],
        mac: Option<&dyn MessageAuthenticator>,
    ) -> Result<Vec<AppendOutcome>, LedgerError>;

    /// Records a security signal.
    async fn record_alert(&self, alert: &IngestAlert) -> Result<(), LedgerError>;

    /// The Audit service's search.
    async fn search(&self, query: &SearchQuery) -> Result<Vec<StoredEvent>, LedgerError>;

    /// The API's zone list.
    async fn list(&self, query: &ListQuery) -> Result<Vec<StoredEvent>, LedgerError>;

    /// Every event of `request_id` in `zone_id`, oldest first (`occurred_at`, then `chain_seq`).
    async fn by_request(
        &self,
        zone_id: &str,
        request_id: &str,
    ) -> Result<Vec<StoredEvent>, LedgerError>;

    /// Zones that have stored events or anchors, sorted.
    async fn zones(&self) -> Result<Vec<String>, LedgerError>;

    /// Up to `limit` rows of `zone_id` with `chain_seq > after_seq`, ascending by `chain_seq`.
    async fn chain_page(
        &self,
        zone_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, LedgerError>;

    /// The anchors retention recorded for `zone_id`, ascending by `seq`.
    async fn anchors(&self, zone_id: &str) -> Result<Vec<Anchor>, LedgerError>;

    /// Makes sure month partitions exist from the month of `now_micros` through the next three,
    /// then drops each month that ends at or before `now − retention_days`, recording anchors.
    async fn apply_retention(
        &self,
        now_micros: i64,
        retention_days: u32,
    ) -> Result<RetentionReport, LedgerError>;

    /// The API-managed retention setting, when one was stored.
    async fn retention_setting(&self) -> Result<Option<RetentionSetting>, LedgerError>;

    /// Stores the retention setting.
    async fn set_retention_setting(&self, setting: &RetentionSetting) -> Result<(), LedgerError>;

    /// Checks the ledger answers (for `/ready`).
    async fn ping(&self) -> Result<(), LedgerError>;
}
