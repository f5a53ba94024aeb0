//! Keeping the revocation anchors current (B6): a store snapshot at start (start-up fails if it
//! cannot be read) and every 30 s, a prune every 30 min, and the `caracal.sessions.revoke`
//! stream between snapshots. Only these background tasks read the store; the proxy path reads
//! the in-memory sets.

use std::sync::Arc;
use std::time::Duration;

use caracal_core::dispatch::{stream_signature, verify_stream_signature};
use caracal_core::gateway::anchors::{anchors_of_message, Anchors, Snapshot, KEEP_MILLIS};
use caracal_core::ports::{Clock, Delivery, EventBus, MessageAuthenticator, Store, ZoneScope};
use caracal_core::time::Timestamp;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// The stream revocations arrive on.
pub const REVOKE_STREAM: &str = "caracal.sessions.revoke";
/// Where messages no Gateway can use are moved.
pub const DEAD_LETTER_STREAM: &str = "caracal.sessions.revoke.dead";
/// How often the snapshot is reloaded.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(30);
/// How often old entries are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(30 * 60);
/// Entries per read.
const READ_COUNT: usize = 50;
/// Longest block of one read.
const READ_BLOCK_MS: u64 = 1_000;
/// How often entries left pending by a dead consumer are claimed (B6), and how long they must
/// have been idle.
pub const CLAIM_EVERY: Duration = Duration::from_secs(30);
/// Entries per claim.
const CLAIM_COUNT: usize = 25;

fn now_ms(clock: &dyn Clock) -> i64 {
    clock.now().unix_micros() / 1_000
}

/// What the revocation tasks share.
#[derive(Clone)]
pub struct Revocations {
    /// The sets.
    pub anchors: Arc<Anchors>,
    /// Where snapshots come from.
    pub store: Arc<dyn Store>,
    /// The stream.
    pub bus: Arc<dyn EventBus>,
    /// `STREAMS_HMAC_KEY`: entries must carry a valid `_sig` when set.
    pub streams_mac: Option<Arc<dyn MessageAuthenticator>>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Revocations {
    /// Loads a snapshot of the last 24 h and replaces the sets with it (keeping what the stream
    /// added meanwhile). Returns the number of entries held.
    pub async fn reload(&self) -> Result<usize, String> {
        let started = now_ms(self.clock.as_ref());
        let since = Timestamp::from_unix_micros(started.saturating_sub(KEEP_MILLIS) * 1_000);
        let loaded = async {
            let mut uow = self
                .store
                .begin(&ZoneScope::All)
                .await
                .map_err(|e| e.to_string())?;
            uow.revoked_anchors(since).await.map_err(|e| e.to_string())
        }
        .await;
        match loaded {
            Ok(revoked) => {
                self.anchors.replace(
                    Snapshot {
                        records: revoked.records,
                        sessions: revoked.sessions,
                        edges: revoked.edges,
                    },
                    started,
                    now_ms(self.clock.as_ref()),
                );
                self.metrics.inc(&self.metrics.revocation_reloads);
                Ok(self.anchors.len())
            }
            Err(e) => {
                self.metrics.inc(&self.metrics.revocation_reload_errors);
                Err(e)
            }
        }
    }

    /// Applies one delivered message; `true` when it named at least one anchor.
    fn apply(&self, delivery: &Delivery) -> bool {
        let anchors = anchors_of_message(&delivery.fields);
        let now = now_ms(self.clock.as_ref());
        for (kind, id) in &anchors {
            self.anchors.revoke(*kind, id, now);
        }
        !anchors.is_empty()
    }

    /// Whether an entry carries a valid `_sig` (required when a streams key is configured).
    fn authentic(&self, delivery: &Delivery) -> bool {
        self.streams_mac
            .as_deref()
            .is_none_or(|mac| verify_stream_signature(mac, REVOKE_STREAM, &delivery.fields))
    }

    /// Moves an unusable message to the dead-letter stream (signed like every stream entry),
    /// so it is visible to operators without being retried forever.
    async fn dead_letter(&self, delivery: &Delivery) {
        let values = serde_json::Value::Object(
            delivery
                .fields
                .iter()
                .filter(|(k, _)| k != "_sig")
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect(),
        );
        let mut fields = vec![
            ("original_id".to_owned(), delivery.entry_id.clone()),
            ("error".to_owned(), "no usable revocation field".to_owned()),
            ("values".to_owned(), values.to_string()),
        ];
        if let Some(mac) = self.streams_mac.as_deref() {
            let sig = stream_signature(mac, DEAD_LETTER_STREAM, &fields);
            fields.push(("_sig".to_owned(), sig));
        }
        if let Err(e) = self.bus.publish(DEAD_LETTER_STREAM, &fields).await {
            tracing::warn!(entry = %delivery.entry_id, error = %e, "revocation dead letter not written");
        }
        self.metrics.inc(&self.metrics.revocation_dead_letters);
    }
}

/// Reloads the snapshot every [`SNAPSHOT_EVERY`] until shutdown; a failed load leaves the old
/// sets in place, and past 70 s the proxy fails closed on its own.
pub async fn run_snapshots(revocations: Revocations, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SNAPSHOT_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(e) = revocations.reload().await {
            tracing::warn!(error = %e, "revocation snapshot reload failed");
        }
    }
}

/// Drops entries older than 24 h every [`PRUNE_EVERY`] until shutdown.
pub async fn run_prune(revocations: Revocations, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        revocations
            .anchors
            .prune(now_ms(revocations.clock.as_ref()));
    }
}

/// Consumes `caracal.sessions.revoke` with the per-host group `group` as `consumer` until
/// shutdown. At start and every [`CLAIM_EVERY`], entries idle that long in the group (left by a
/// consumer that died) are claimed and processed like read ones. Forged entries are acknowledged
/// and dropped; entries naming no anchor go to the dead-letter stream; bus errors back off for a
/// second.
pub async fn run_stream(
    revocations: Revocations,
    group: String,
    consumer: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let bus = Arc::clone(&revocations.bus);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match bus.ensure_group(REVOKE_STREAM, &group).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(stream = REVOKE_STREAM, error = %e, "cannot create consumer group");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
    let claim_idle_ms = u64::try_from(CLAIM_EVERY.as_millis()).unwrap_or(u64::MAX);
    let mut next_claim = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= next_claim {
            next_claim = tokio::time::Instant::now() + CLAIM_EVERY;
            let claim =
                bus.claim_idle(REVOKE_STREAM, &group, &consumer, claim_idle_ms, CLAIM_COUNT);
            let claimed = tokio::select! {
                r = claim => r,
                _ = shutdown.changed() => return,
            };
            match claimed {
                Ok(deliveries) => process(&revocations, &group, &deliveries).await,
                Err(e) => {
                    tracing::warn!(stream = REVOKE_STREAM, error = %e, "revocation claim failed");
                }
            }
        }
        let read = tokio::select! {
            r = bus.read_group(REVOKE_STREAM, &group, &consumer, READ_COUNT, READ_BLOCK_MS) => r,
            _ = shutdown.changed() => return,
        };
        let deliveries = match read {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(stream = REVOKE_STREAM, error = %e, "revocation read failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        process(&revocations, &group, &deliveries).await;
    }
}

/// Verifies, applies (or dead-letters) and acknowledges delivered entries.
async fn process(revocations: &Revocations, group: &str, deliveries: &[Delivery]) {
    let mut done = Vec::with_capacity(deliveries.len());
    for d in deliveries {
        if !revocations.authentic(d) {
            tracing::warn!(stream = REVOKE_STREAM, entry = %d.entry_id, "dropping unsigned or forged entry");
            revocations
                .metrics
                .inc(&revocations.metrics.revocation_invalid_signatures);
        } else if revocations.apply(d) {
            revocations
                .metrics
                .inc(&revocations.metrics.revocation_messages);
        } else {
            revocations.dead_letter(d).await;
        }
        done.push(d.entry_id.clone());
    }
    if !done.is_empty() {
        if let Err(e) = revocations.bus.ack(REVOKE_STREAM, group, &done).await {
            tracing::warn!(stream = REVOKE_STREAM, error = %e, "revocation ack failed");
        }
    }
}
