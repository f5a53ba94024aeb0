//! The ingest pipeline (`spec/audit-streams-storage.md §6.2`): entries of `caracal.audit.events`
//! become stored evidence, or dead letters, and are acknowledged only once one of those is
//! durable.
//!
//! Every entry goes through [`Ingestor::process`]: [`parse_entry`] (data present, producer
//! signature, event JSON), then one [`AuditLedger::append`] for the whole batch, then
//! [`after_append`] per entry; the rules are core's. What this module adds is the order of the
//! side effects, which is what makes the pipeline lose nothing:
//! - an entry is acknowledged only after the ledger committed it (stored, or already stored
//!   identically), or after its dead letter was published;
//! - a tamper alert is committed before the dead letter, and the dead letter before the ack: a
//!   failure at any step leaves the entry pending, and the reaper delivers it again;
//! - a transient storage failure leaves the entry pending; after `AUDIT_MAX_DELIVERIES`
//!   deliveries (counted by the bus, so only reclaimed entries reach the limit) it is
//!   dead-lettered as replayable.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use caracal_core::audit::dlq::dlq_fields;
use caracal_core::audit::{after_append, parse_entry, Action, IncomingEvent, Rejection};
use caracal_core::ports::audit::{AppendOutcome, AuditLedger, LedgerError};
use caracal_core::ports::events::{BusError, Delivery, EventBus};
use caracal_core::ports::{Clock, MessageAuthenticator};
use tokio::sync::watch;

use crate::config::StreamNames;
use crate::metrics::AuditMetrics;

/// Entries per read, claim and pending-list page (upstream's COUNT 100).
pub const BATCH: usize = 100;

/// How long to wait before retrying after the bus failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Whether the consumer is working: false until the start-up drain finished, and while reads
/// fail. `/health` and `/ready` answer `consumer_unhealthy` while it is false.
#[derive(Debug, Default)]
pub struct ConsumerHealth(AtomicBool);

impl ConsumerHealth {
    /// Whether the consumer is healthy.
    pub fn healthy(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Records the consumer's state.
    pub fn set(&self, healthy: bool) {
        self.0.store(healthy, Ordering::Relaxed);
    }
}

/// What one [`Ingestor::process`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Entries acknowledged (stored, duplicates and dead letters).
    pub acked: usize,
    /// Entries dead-lettered.
    pub dead_lettered: usize,
    /// Entries left pending for another delivery.
    pub pending: usize,
}

/// One replica's consumer of the audit stream.
pub struct Ingestor {
    /// The stream bus.
    pub bus: Arc<dyn EventBus>,
    /// Where evidence is stored.
    pub ledger: Arc<dyn AuditLedger>,
    /// `AUDIT_HMAC_KEY`: verifies producers' `sig` and keys the chain HMAC.
    pub mac: Option<Arc<dyn MessageAuthenticator>>,
    /// Time of dead letters and alerts.
    pub clock: Arc<dyn Clock>,
    /// Counters.
    pub metrics: Arc<AuditMetrics>,
    /// The streams and the group.
    pub streams: StreamNames,
    /// This replica's consumer name.
    pub consumer: String,
    /// Delivery limit for transient failures (0 = none).
    pub max_deliveries: u64,
    /// The reaper's min-idle time.
    pub claim_idle: Duration,
}

impl Ingestor {
    /// Creates the consumer group if it does not exist.
    pub async fn ensure_group(&self) -> Result<(), BusError> {
        self.bus
            .ensure_group(&self.streams.events, &self.streams.group)
            .await
    }

    /// Processes everything this consumer left pending (a previous run under the same name
    /// died before acknowledging), page by page, each entry as a first delivery. Answers how
    /// many entries it went through.
    pub async fn drain_own_pending(&self) -> Result<usize, BusError> {
        let mut cursor = "0".to_owned();
        let mut total = 0;
        loop {
            let page = self
                .bus
                .read_own_pending(
                    &self.streams.events,
                    &self.streams.group,
                    &self.consumer,
                    &cursor,
                    BATCH,
                )
                .await?;
            let Some(last) = page.last() else {
                return Ok(total);
            };
            cursor = last.entry_id.clone();
            total += page.len();
            self.process(first_deliveries(page)).await;
        }
    }

    /// Up to a batch of entries never delivered to the group, waiting up to `block`.
    async fn read_new(&self, block: Duration) -> Result<Vec<Delivery>, BusError> {
        self.bus
            .read_group(
                &self.streams.events,
                &self.streams.group,
                &self.consumer,
                BATCH,
                u64::try_from(block.as_millis()).unwrap_or(u64::MAX),
            )
            .await
    }

    /// One read of new entries (waiting up to `block`), processed as first deliveries.
    pub async fn read_once(&self, block: Duration) -> Result<Tally, BusError> {
        let batch = self.read_new(block).await?;
        Ok(self.process(first_deliveries(batch)).await)
    }

    /// One reaper pass: claims entries idle longer than the claim-idle time (from any
    /// consumer, this one included), a page at a time until none is left, and processes each
    /// with its real delivery count.
    pub async fn reap_once(&self) -> Result<Tally, BusError> {
        let idle_ms = u64::try_from(self.claim_idle.as_millis()).unwrap_or(u64::MAX);
        let mut tally = Tally::default();
        loop {
            let claimed = self
                .bus
                .claim_idle(
                    &self.streams.events,
                    &self.streams.group,
                    &self.consumer,
                    idle_ms,
                    BATCH,
                )
                .await?;
            if claimed.is_empty() {
                return Ok(tally);
            }
            let full_page = claimed.len() >= BATCH;
            self.metrics.retries.add(claimed.len() as u64);
            let counts = self.delivery_counts(&claimed).await?;
            let batch = claimed
                .into_iter()
                .map(|d| {
                    // A claimed entry was delivered at least twice; the pending list knows
                    // exactly how often.
                    let n = counts.get(&d.entry_id).copied().unwrap_or(2);
                    (d, n)
                })
                .collect();
            let done = self.process(batch).await;
            tally.acked += done.acked;
            tally.dead_lettered += done.dead_lettered;
            tally.pending += done.pending;
            // Claimed entries restart their idle time, so the next claim cannot return them:
            // the loop ends even when some stay pending.
            if !full_page {
                return Ok(tally);
            }
        }
    }

    /// The delivery counts of just-claimed entries, from the pending list over their id
    /// range (one query; any entry it did not reach is asked for on its own).
    async fn delivery_counts(
        &self,
        claimed: &[Delivery],
    ) -> Result<HashMap<String, u64>, BusError> {
        let (Some(first), Some(last)) = (claimed.first(), claimed.last()) else {
            return Ok(HashMap::new());
        };
        let (stream, group) = (&self.streams.events, &self.streams.group);
        let mut counts: HashMap<String, u64> = self
            .bus
            .pending(
                stream,
                group,
                &first.entry_id,
                &last.entry_id,
                claimed.len() * 4,
                Some(&self.consumer),
            )
            .await?
            .into_iter()
            .map(|p| (p.entry_id, p.deliveries))
            .collect();
        for delivery in claimed {
            if counts.contains_key(&delivery.entry_id) {
                continue;
            }
            let id = &delivery.entry_id;
            if let Some(p) = self
                .bus
                .pending(stream, group, id, id, 1, None)
                .await?
                .into_iter()
                .next()
            {
                counts.insert(p.entry_id, p.deliveries);
            }
        }
        Ok(counts)
    }

    /// Processes entries, each with its delivery count: parse, store the valid ones in one
    /// append, then per entry acknowledge, leave pending, or dead-letter (alert first) and
    /// acknowledge.
    pub async fn process(&self, batch: Vec<(Delivery, u64)>) -> Tally {
        let mut tally = Tally::default();
        if batch.is_empty() {
            return tally;
        }
        let now_micros = self.clock.now().unix_micros();
        let mut actions: Vec<Option<Action>> = vec![None; batch.len()];
        let mut valid: Vec<IncomingEvent> = Vec::new();
        let mut valid_at: Vec<usize> = Vec::new();
        for (index, (delivery, _)) in batch.iter().enumerate() {
            match parse_entry(&delivery.fields, self.mac.as_deref()) {
                Ok(event) => {
                    valid.push(event);
                    valid_at.push(index);
                }
                Err(rejection) => {
                    match rejection {
                        Rejection::BadSignature => self.metrics.hmac_failures.inc(),
                        Rejection::MissingData | Rejection::Parse(_) => {
                            self.metrics.parse_errors.inc()
                        }
                    }
                    tracing::warn!(
                        entry = %delivery.entry_id,
                        reason = %rejection.reason(),
                        "audit entry refused"
                    );
                    actions[index] = Some(Action::DeadLetter {
                        reason: rejection.reason(),
                        alert: None,
                    });
                }
            }
        }
        let outcomes = self.append(&valid).await;
        for ((event, index), outcome) in valid.iter().zip(valid_at).zip(outcomes) {
            if let Ok(AppendOutcome::Inserted { .. }) = outcome {
                self.metrics.inserts.inc();
            }
            let deliveries = batch[index].1;
            actions[index] = Some(after_append(
                &outcome,
                event,
                deliveries,
                self.max_deliveries,
                now_micros,
            ));
        }
        let mut acks = Vec::new();
        for ((delivery, deliveries), action) in batch.iter().zip(actions) {
            match action {
                Some(Action::Ack) => acks.push(delivery.entry_id.clone()),
                Some(Action::DeadLetter { reason, alert }) => {
                    if self
                        .dead_letter(delivery, &reason, alert.as_ref(), now_micros / 1000)
                        .await
                    {
                        tally.dead_lettered += 1;
                        acks.push(delivery.entry_id.clone());
                    } else {
                        tally.pending += 1;
                    }
                }
                Some(Action::Retry) | None => {
                    tracing::warn!(
                        entry = %delivery.entry_id,
                        deliveries,
                        "audit entry left pending after a transient storage failure"
                    );
                    tally.pending += 1;
                }
            }
        }
        if acks.is_empty() {
            return tally;
        }
        match self
            .bus
            .ack(&self.streams.events, &self.streams.group, &acks)
            .await
        {
            Ok(()) => tally.acked = acks.len(),
            // Stored or dead-lettered but still pending: a later delivery finds a duplicate
            // (or dead-letters the same entry again); nothing is lost.
            Err(e) => {
                tracing::warn!(error = %e, entries = acks.len(), "audit XACK failed");
                tally.pending += acks.len();
            }
        }
        tally
    }

    /// Stores `events` in one append; when that fails for a batch, one at a time, so a single
    /// event the ledger refuses does not take the others with it. A transient failure of one
    /// event stands for the rest (storage is down; calling it once per event would only wait
    /// that many times).
    async fn append(&self, events: &[IncomingEvent]) -> Vec<Result<AppendOutcome, LedgerError>> {
        if events.is_empty() {
            return Vec::new();
        }
        let mac = self.mac.as_deref();
        let batch_error = match self.ledger.append(events, mac).await {
            Ok(outcomes) if outcomes.len() == events.len() => {
                return outcomes.into_iter().map(Ok).collect()
            }
            Ok(outcomes) => miscounted(events.len(), outcomes.len()),
            Err(e) => e,
        };
        if events.len() == 1 {
            return vec![Err(batch_error)];
        }
        tracing::warn!(error = %batch_error, events = events.len(), "audit batch append failed; storing one at a time");
        let mut out = Vec::with_capacity(events.len());
        let mut down: Option<LedgerError> = None;
        for event in events {
            if let Some(error) = &down {
                out.push(Err(error.clone()));
                continue;
            }
            let one = match self.ledger.append(std::slice::from_ref(event), mac).await {
                Ok(mut outcomes) if outcomes.len() == 1 => Ok(outcomes.remove(0)),
                Ok(outcomes) => Err(miscounted(1, outcomes.len())),
                Err(e) => Err(e),
            };
            if let Err(error @ LedgerError::Transient(_)) = &one {
                down = Some(error.clone());
            }
            out.push(one);
        }
        out
    }

    /// Commits `alert` (when given), then publishes the dead letter; `true` once both are
    /// durable and the entry may be acknowledged.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: &str,
        alert: Option<&caracal_core::ports::audit::IngestAlert>,
        now_ms: i64,
    ) -> bool {
        if let Some(alert) = alert {
            self.metrics.tamper_replay.inc();
            tracing::error!(
                event_id = %alert.event_id,
                zone_id = %alert.zone_id,
                detail = %alert.detail,
                "audit event replayed with different content"
            );
            if let Err(e) = self.ledger.record_alert(alert).await {
                tracing::warn!(error = %e, entry = %delivery.entry_id, "recording an audit alert failed; entry left pending");
                return false;
            }
        }
        let fields = dlq_fields(reason, now_ms, &delivery.entry_id, &delivery.fields);
        match self.bus.publish(&self.streams.dlq, &fields).await {
            Ok(_) => {
                self.metrics.dlq.inc();
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, entry = %delivery.entry_id, "audit DLQ XADD failed; entry left pending");
                false
            }
        }
    }
}

/// Entries read by the main loop or the start-up drain: each counts as a first delivery, so
/// only entries the reaper reclaimed can reach the delivery limit (`§6.2`).
fn first_deliveries(batch: Vec<Delivery>) -> Vec<(Delivery, u64)> {
    batch.into_iter().map(|d| (d, 1)).collect()
}

/// A ledger that answered the wrong number of outcomes broke its contract; nothing can be
/// told about what it stored, so every event is retried (deduplication absorbs the repeats).
fn miscounted(asked: usize, answered: usize) -> LedgerError {
    tracing::error!(
        asked,
        answered,
        "audit ledger answered a wrong number of outcomes"
    );
    LedgerError::Transient(format!(
        "ledger answered {answered} outcomes for {asked} events"
    ))
}

/// Runs the consumer until `shutdown`: creates the group, drains this consumer's own pending
/// entries (healthy only afterwards), then reads new entries. Bus failures mark the consumer
/// unhealthy and are retried every second.
pub async fn run_consumer(
    ingestor: Arc<Ingestor>,
    health: Arc<ConsumerHealth>,
    read_block: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    health.set(false);
    loop {
        let started = async {
            ingestor.ensure_group().await?;
            ingestor.drain_own_pending().await
        };
        match started.await {
            Ok(drained) => {
                if drained > 0 {
                    tracing::info!(drained, "audit consumer drained its pending entries");
                }
                break;
            }
            Err(e) => tracing::warn!(error = %e, "audit consumer start-up failed; retrying"),
        }
        if pause(RETRY_AFTER, &mut shutdown).await {
            return;
        }
    }
    health.set(true);
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Only the wait for entries is cancelled by shutdown, never their processing.
        let read = tokio::select! {
            read = ingestor.read_new(read_block) => read,
            _ = shutdown.changed() => return,
        };
        match read {
            Ok(batch) => {
                health.set(true);
                ingestor.process(first_deliveries(batch)).await;
            }
            Err(e) => {
                health.set(false);
                tracing::warn!(error = %e, "audit XREADGROUP failed");
                if pause(RETRY_AFTER, &mut shutdown).await {
                    return;
                }
                // A Redis that came back empty (no persistence) lost the group with the
                // stream: recreate it, or every later read fails with NOGROUP.
                if let Err(e) = ingestor.ensure_group().await {
                    tracing::warn!(error = %e, "recreating the audit consumer group failed");
                }
            }
        }
    }
}

/// Runs the reaper every claim-idle period until `shutdown`.
pub async fn run_reaper(ingestor: Arc<Ingestor>, mut shutdown: watch::Receiver<bool>) {
    // The configuration allows no less than a second; an embedder's zero must not spin.
    let period = ingestor.claim_idle.max(Duration::from_secs(1));
    loop {
        if pause(period, &mut shutdown).await {
            return;
        }
        match ingestor.reap_once().await {
            Ok(tally) if tally != Tally::default() => {
                tracing::info!(?tally, "audit reaper pass");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "audit reaper pass failed"),
        }
    }
}

/// Sleeps `every`; `true` when shutdown came first.
pub(crate) async fn pause(every: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(every) => *shutdown.borrow(),
        _ = shutdown.changed() => true,
    }
}
