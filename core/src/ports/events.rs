//! The event bus: Redis Streams in production, an in-process bus in memory mode, with the same
//! semantics that matter (order per stream, consumer groups, at-least-once, explicit ack).

use async_trait::async_trait;
use thiserror::Error;

use crate::audit::dlq::{AUDIT_STREAM, DLQ_STREAM};

/// Whether a publish to `stream` may trim it. Every stream is capped (`MAXLEN ~ 100000`, as
/// the upstream producers do) so a stalled consumer group cannot grow Redis without bound —
/// except audit evidence and its dead letters (`spec/audit-streams-storage.md §3.2, §6.2`):
/// trimming those would silently drop evidence not yet ingested, or not yet replayed.
pub fn trims_on_publish(stream: &str) -> bool {
    stream != AUDIT_STREAM && stream != DLQ_STREAM
}

/// A bus failure.
#[derive(Debug, Clone, Error)]
pub enum BusError {
    /// The bus cannot be reached.
    #[error("event bus unavailable: {0}")]
    Unavailable(String),
}

/// One delivered stream entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Stream entry id (`<ms>-<seq>`).
    pub entry_id: String,
    /// Entry fields in stream order.
    pub fields: Vec<(String, String)>,
}

/// One entry of a consumer group's pending list: delivered, not yet acknowledged (an extended
/// `XPENDING` row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    /// Stream entry id.
    pub entry_id: String,
    /// The consumer it was last delivered to.
    pub consumer: String,
    /// Milliseconds since that delivery.
    pub idle_ms: u64,
    /// How many times it was delivered (the first read counts 1; each claim or re-read of
    /// the consumer's own pending entries adds 1).
    pub deliveries: u64,
}

/// Publish and consume.
#[async_trait]
pub trait EventBus: Send + Sync {
    /// Appends an entry; returns its entry id.
    async fn publish(&self, stream: &str, fields: &[(String, String)]) -> Result<String, BusError>;
    /// Appends `entries` in order. Answers how many were appended, counting from the first,
    /// and the error that stopped the rest (`None` when all were). An adapter that can send
    /// the batch in one round trip does, all or nothing. Entries without fields are refused
    /// like [`Self::publish`] refuses them.
    async fn publish_batch(
        &self,
        stream: &str,
        entries: &[Vec<(String, String)>],
    ) -> (usize, Option<BusError>) {
        for (index, fields) in entries.iter().enumerate() {
            if let Err(e) = self.publish(stream, fields).await {
                return (index, Some(e));
            }
        }
        (entries.len(), None)
    }
    /// Creates the consumer group at the start of the stream if it does not exist.
    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError>;
    /// Reads up to `count` entries never delivered to `group`, waiting up to `block_ms`.
    /// Delivered entries stay pending for the consumer until acknowledged.
    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Delivery>, BusError>;
    /// Takes over up to `count` entries of `group` that were delivered to some consumer more
    /// than `min_idle_ms` ago and never acknowledged, for `consumer` (Redis `XAUTOCLAIM …
    /// 0-0 COUNT n`; entries deleted from the stream meanwhile are dropped from the pending
    /// list and not returned). Each claimed entry counts as delivered again now, to
    /// `consumer`. Oldest pending first.
    async fn claim_idle(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError>;
    /// Re-reads `consumer`'s own pending entries of `group` whose ids are greater than
    /// `after_id` (`"0"` for all), up to `count`, oldest first (Redis `XREADGROUP … STREAMS
    /// <stream> <after_id>`): what a consumer restarting under the same name left
    /// unacknowledged. Never waits, and never returns entries not yet delivered. Each returned
    /// entry counts as delivered again now (its idle time restarts, its delivery count grows),
    /// except one deleted from the stream meanwhile: that comes back with no fields, unchanged.
    async fn read_own_pending(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        after_id: &str,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError>;
    /// Up to `count` pending entries of `group` with ids from `start` to `end` inclusive
    /// (`"-"` and `"+"` for the ends of the stream), of `consumer` only when one is given,
    /// oldest first (extended `XPENDING`). Fails when the group does not exist.
    async fn pending(
        &self,
        stream: &str,
        group: &str,
        start: &str,
        end: &str,
        count: usize,
        consumer: Option<&str>,
    ) -> Result<Vec<PendingEntry>, BusError>;
    /// How many entries `group` has delivered and not acknowledged (the `XPENDING` summary).
    /// Fails when the group does not exist.
    async fn pending_count(&self, stream: &str, group: &str) -> Result<u64, BusError>;
    /// How many entries `stream` holds; 0 when it does not exist (`XLEN`).
    async fn stream_len(&self, stream: &str) -> Result<u64, BusError>;
    /// Up to `count` entries with ids from `start` to `end` inclusive (`"-"` and `"+"` for the
    /// ends), oldest first, with their fields (`XRANGE … COUNT`). Reading delivers nothing to
    /// any group; a stream that does not exist is empty.
    async fn range(
        &self,
        stream: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError>;
    /// Deletes entries from `stream` and answers how many of them it held (`XDEL`). Pending
    /// lists keep a deleted id until it is acknowledged or a claim drops it.
    async fn delete(&self, stream: &str, entry_ids: &[String]) -> Result<u64, BusError>;
    /// Acknowledges entries so they are never redelivered.
    async fn ack(&self, stream: &str, group: &str, entry_ids: &[String]) -> Result<(), BusError>;
    /// Checks the bus answers (for `/ready`).
    async fn ping(&self) -> Result<(), BusError>;
}
