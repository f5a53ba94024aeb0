//! The event bus: Redis Streams in production, an in-process bus in memory mode, with the same
//! semantics that matter (order per stream, consumer groups, at-least-once, explicit ack).

use async_trait::async_trait;
use thiserror::Error;

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
    /// Acknowledges entries so they are never redelivered.
    async fn ack(&self, stream: &str, group: &str, entry_ids: &[String]) -> Result<(), BusError>;
    /// Checks the bus answers (for `/ready`).
    async fn ping(&self) -> Result<(), BusError>;
}
