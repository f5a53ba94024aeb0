//! The stream figures behind `/ready` and the gauges (`spec/audit-streams-storage.md §6.6`):
//! read every 30 s, 0 until the first read. "Lag" is the pending count (entries delivered and
//! not acknowledged), not the undelivered backlog; "PEL oldest" is the idle time of the first
//! pending entry; the DLQ's size is its length and its age that of its first id.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use caracal_core::audit::dlq::stream_id_millis;
use caracal_core::ports::events::{BusError, EventBus};
use caracal_core::ports::Clock;
use tokio::sync::watch;

use crate::config::StreamNames;
use crate::ingest::{pause, ConsumerHealth};
use crate::metrics::AuditMetrics;

/// Reads the figures once into `metrics`.
pub async fn poll_stream_stats(
    bus: &dyn EventBus,
    streams: &StreamNames,
    clock: &dyn Clock,
    metrics: &AuditMetrics,
) -> Result<(), BusError> {
    let lag = bus.pending_count(&streams.events, &streams.group).await?;
    let oldest_pending = bus
        .pending(&streams.events, &streams.group, "-", "+", 1, None)
        .await?
        .first()
        .map_or(0, |p| p.idle_ms / 1000);
    let dlq_size = bus.stream_len(&streams.dlq).await?;
    let now_ms = clock.now().unix_micros() / 1000;
    let dlq_oldest = bus
        .range(&streams.dlq, "-", "+", 1)
        .await?
        .first()
        .and_then(|d| stream_id_millis(&d.entry_id))
        .map_or(0, |ms| {
            u64::try_from((now_ms - ms).max(0) / 1000).unwrap_or(0)
        });
    metrics.consumer_lag.set(lag);
    metrics.pel_oldest_secs.set(oldest_pending);
    metrics.dlq_size.set(dlq_size);
    metrics.dlq_oldest_age_secs.set(dlq_oldest);
    metrics.polled.store(true, Ordering::Relaxed);
    Ok(())
}

/// Reads the figures once the consumer is up (it creates the group they are read from), then
/// every `every` until `shutdown`; a failed read keeps the previous figures.
pub async fn run_stats(
    bus: Arc<dyn EventBus>,
    streams: StreamNames,
    clock: Arc<dyn Clock>,
    metrics: Arc<AuditMetrics>,
    consumer: Arc<ConsumerHealth>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    while !consumer.healthy() {
        if pause(Duration::from_secs(1), &mut shutdown).await {
            return;
        }
    }
    loop {
        if let Err(e) = poll_stream_stats(bus.as_ref(), &streams, clock.as_ref(), &metrics).await {
            tracing::warn!(error = %e, "reading the audit stream figures failed");
        }
        if pause(every, &mut shutdown).await {
            return;
        }
    }
}
