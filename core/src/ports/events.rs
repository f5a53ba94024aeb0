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
    /// Acknowledges entries so they are never redelivered.
    async fn ack(&self, stream: &str, group: &str, entry_ids: &[String]) -> Result<(), BusError>;
    /// Checks the bus answers (for `/ready`).
    async fn ping(&self) -> Result<(), BusError>;
}
