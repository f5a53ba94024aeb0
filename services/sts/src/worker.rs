//! Background work of the STS: the invalidation stream consumers (`spec/sts.md §14`) and the
//! policy poll (`§10.1`), so a policy activation or key rotation elsewhere reaches this
//! process's caches without a restart.

use std::sync::Arc;
use std::time::Duration;

use caracal_core::dispatch::verify_stream_signature;
use caracal_core::ids::ZoneId;
use caracal_core::ports::{Delivery, EventBus, MessageAuthenticator};
use caracal_core::sts::Sts;
use tokio::sync::watch;

/// Which cache a stream invalidates.
#[derive(Debug, Clone, Copy)]
pub enum Topic {
    /// `caracal.policy.invalidate` / `opa-engine`: reload the zone's policy.
    Policy,
    /// `caracal.keys.invalidate` / `sts-keys`: drop the zone's key caches.
    Keys,
    /// `caracal.sessions.revoke` / `sts-revocation`: revoke an authority record and its
    /// descendants (`spec/sts.md §14`).
    SessionsRevoke,
}

impl Topic {
    fn stream(self) -> &'static str {
        match self {
            Self::Policy => "caracal.policy.invalidate",
            Self::Keys => "caracal.keys.invalidate",
            Self::SessionsRevoke => "caracal.sessions.revoke",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Self::Policy => "opa-engine",
            Self::Keys => "sts-keys",
            Self::SessionsRevoke => "sts-revocation",
        }
    }
}

fn field<'a>(d: &'a Delivery, name: &str) -> Option<&'a str> {
    d.fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Whether an entry carries a valid `_sig` (required when a streams key is configured).
fn authentic(mac: Option<&dyn MessageAuthenticator>, stream: &str, d: &Delivery) -> bool {
    mac.is_none_or(|mac| verify_stream_signature(mac, stream, &d.fields))
}

/// Consumes one invalidation stream until shutdown. Invalid entries are acknowledged and
/// dropped (a forged entry must not be retried forever); bus errors back off for a second.
pub async fn run_invalidations(
    sts: Arc<Sts>,
    bus: Arc<dyn EventBus>,
    mac: Option<Arc<dyn MessageAuthenticator>>,
    topic: Topic,
    consumer: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let (stream, group) = (topic.stream(), topic.group());
    loop {
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = bus.ensure_group(stream, group).await {
            tracing::warn!(stream, error = %e, "cannot create consumer group");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                _ = shutdown.changed() => return,
            }
        }
        break;
    }
    loop {
        let read = tokio::select! {
            r = bus.read_group(stream, group, &consumer, 10, 1_000) => r,
            _ = shutdown.changed() => return,
        };
        let deliveries = match read {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(stream, error = %e, "invalidation read failed");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        let mut done = Vec::with_capacity(deliveries.len());
        for d in &deliveries {
            if !authentic(mac.as_deref(), stream, d) {
                tracing::warn!(stream, entry = %d.entry_id, "dropping unsigned or forged entry");
            } else if let Some(zone) = field(d, "zone_id").and_then(|z| ZoneId::parse(z).ok()) {
                match topic {
                    Topic::Policy => {
                        if let Err(e) = sts.policies.reload(&zone).await {
                            tracing::warn!(zone = %zone, error = %e, "policy reload failed");
                        }
                    }
                    Topic::Keys => sts.keys.invalidate(&zone),
                    Topic::SessionsRevoke => {
                        // A message with only `agent_session_id` names no record: a no-op.
                        if let Some(record) = field(d, "session_id").filter(|s| !s.is_empty()) {
                            let reason = field(d, "reason");
                            if !revoke_until_done(&sts, &zone, record, reason, &mut shutdown).await
                            {
                                return;
                            }
                        }
                    }
                }
            }
            done.push(d.entry_id.clone());
        }
        if !done.is_empty() {
            if let Err(e) = bus.ack(stream, group, &done).await {
                tracing::warn!(stream, error = %e, "invalidation ack failed");
            }
        }
    }
}

/// Revokes a record, retrying store failures with a capped backoff until it succeeds: a
/// revocation is never acknowledged unapplied (fail closed). `false` when shutdown came first
/// (the entry stays pending and is delivered again).
async fn revoke_until_done(
    sts: &Sts,
    zone: &ZoneId,
    record: &str,
    reason: Option<&str>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let mut delay = Duration::from_millis(100);
    loop {
        match sts.revoke_authority_record(zone, record, reason).await {
            Ok(n) => {
                tracing::info!(zone = %zone, record, revoked = n, "authority record revoked");
                return true;
            }
            Err(e) => {
                tracing::warn!(zone = %zone, record, error = %e, "revocation failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return false,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Reloads every known zone's policy each `every` until shutdown (an unchanged manifest is a
/// no-op), so a missed invalidation heals within one poll.
pub async fn run_policy_poll(sts: Arc<Sts>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
        for zone in sts.policies.known_zones() {
            if let Err(e) = sts.policies.reload(&zone).await {
                tracing::warn!(zone = %zone, error = %e, "policy poll reload failed");
            }
        }
    }
}
