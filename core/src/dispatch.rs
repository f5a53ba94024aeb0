//! The outbox dispatcher's rules (`spec/api.md §4`): claim due rows, publish each with its
//! `outbox_id` and the stream signature, then mark it dispatched, or schedule a retry with
//! capped exponential backoff, or mark it dead after the attempt bound. The polling loop itself
//! lives in the service shell; this is one pass.

use std::sync::Arc;

use crate::digest::sha256_hex;
use crate::error::StoreError;
use crate::model::OutboxMessage;
use crate::ports::{Clock, EventBus, MessageAuthenticator, OutboxQueue};

/// Rows claimed per pass.
pub const BATCH: u32 = 32;
/// How long a claim is held before another dispatcher may take the row.
pub const LOCK_MS: i64 = 30_000;
/// Attempts after which a row is dead.
pub const MAX_ATTEMPTS: i32 = 100;

/// The canonical text `_sig` covers: `"<stream>\n"` then `"<key>=<value>\n"` per field
/// except `_sig`, keys sorted.
fn signed_text(stream: &str, fields: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = fields.iter().filter(|(k, _)| k != "_sig").collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut canonical = format!("{stream}\n");
    for (k, v) in sorted {
        canonical.push_str(k);
        canonical.push('=');
        canonical.push_str(v);
        canonical.push('\n');
    }
    canonical
}

/// `_sig` over a stream entry: hex HMAC-SHA256 of its canonical text. Consumers recompute it
/// to reject forged entries.
pub fn stream_signature(
    mac: &dyn MessageAuthenticator,
    stream: &str,
    fields: &[(String, String)],
) -> String {
    mac.sign_hex(signed_text(stream, fields).as_bytes())
}

/// Whether an entry's `_sig` field is authentic (constant-time); `false` when it has none.
pub fn verify_stream_signature(
    mac: &dyn MessageAuthenticator,
    stream: &str,
    fields: &[(String, String)],
) -> bool {
    let Some((_, sig)) = fields.iter().find(|(k, _)| k == "_sig") else {
        return false;
    };
    mac.verify_hex(signed_text(stream, fields).as_bytes(), sig)
}

/// Seconds until the next attempt: `floor(b + j·0.3b)` with `b = min(60, 2^min(attempts, 6))`
/// and `j ∈ [0, 1)`.
pub fn retry_delay_secs(attempts: i32, jitter: f64) -> i64 {
    let base = f64::from(2_i32.pow(attempts.clamp(0, 6) as u32)).min(60.0);
    (base + jitter.clamp(0.0, 0.999_999) * 0.3 * base).floor() as i64
}

/// Jitter in `[0, 1)` derived from the row and attempt, so retries of many rows spread out
/// without the domain needing a random source.
fn jitter_of(message: &OutboxMessage) -> f64 {
    let digest = sha256_hex(format!("{}:{}", message.id, message.attempts).as_bytes());
    let prefix = u32::from_str_radix(&digest[..8], 16).unwrap_or(0);
    f64::from(prefix) / (f64::from(u32::MAX) + 1.0)
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    /// Rows published.
    pub published: usize,
    /// Rows scheduled for retry.
    pub retried: usize,
    /// Rows marked dead.
    pub dead: usize,
}

/// One dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    /// Where rows come from.
    pub queue: Arc<dyn OutboxQueue>,
    /// Where they go.
    pub bus: Arc<dyn EventBus>,
    /// `STREAMS_HMAC_KEY`, when configured.
    pub signer: Option<Arc<dyn MessageAuthenticator>>,
    /// Now.
    pub clock: Arc<dyn Clock>,
}

impl Dispatcher {
    /// The entry fields for a row: `outbox_id`, its fields, and `_sig` when signing.
    pub fn entry_fields(&self, message: &OutboxMessage) -> Vec<(String, String)> {
        let mut fields: Vec<(String, String)> = Vec::with_capacity(message.fields.len() + 2);
        fields.push(("outbox_id".to_owned(), message.id.to_string()));
        fields.extend(message.fields.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(mac) = &self.signer {
            let sig = stream_signature(mac.as_ref(), &message.stream, &fields);
            fields.push(("_sig".to_owned(), sig));
        }
        fields
    }

    /// Claims and publishes one batch.
    pub async fn pass(&self) -> Result<PassReport, StoreError> {
        let now = self.clock.now();
        let claimed = self
            .queue
            .claim_due(now, now.plus_millis(LOCK_MS), BATCH)
            .await?;
        let mut report = PassReport::default();
        let mut published = Vec::with_capacity(claimed.len());
        for message in claimed {
            let fields = self.entry_fields(&message);
            match self.bus.publish(&message.stream, &fields).await {
                Ok(_) => {
                    published.push(message.id.clone());
                    report.published += 1;
                }
                Err(err) => {
                    let retry_at = (message.attempts < MAX_ATTEMPTS).then(|| {
                        let delay = retry_delay_secs(message.attempts, jitter_of(&message));
                        self.clock.now().plus_millis(delay * 1000)
                    });
                    if retry_at.is_some() {
                        report.retried += 1;
                    } else {
                        report.dead += 1;
                    }
                    self.queue
                        .mark_failed(&message.id, &err.to_string(), retry_at)
                        .await?;
                }
            }
        }
        // One acknowledgement for the batch. Should it fail, the rows' claim lock lapses and
        // they are published again: at least once, never lost.
        self.queue
            .mark_all_dispatched(&published, self.clock.now())
            .await?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered_upwards() {
        assert_eq!(retry_delay_secs(0, 0.0), 1);
        assert_eq!(retry_delay_secs(1, 0.0), 2);
        assert_eq!(retry_delay_secs(6, 0.0), 60);
        assert_eq!(retry_delay_secs(50, 0.0), 60);
        assert_eq!(retry_delay_secs(50, 0.99), 77);
    }
}
