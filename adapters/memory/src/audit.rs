//! [`AuditLedger`] in memory: the same chain, deduplication, month partitions and retention
//! anchors as the Postgres ledger, for `caracal dev` and tests. Nothing survives the process.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use caracal_core::audit::{Anchor, ChainHead, IncomingEvent, StoredEvent};
use caracal_core::ports::audit::{
    AppendOutcome, AuditLedger, IngestAlert, LedgerError, ListQuery, RetentionReport,
    RetentionSetting, SearchQuery,
};
use caracal_core::ports::{Clock, MessageAuthenticator};
use chrono::{DateTime, Datelike, TimeZone, Utc};

/// The memory ledger.
pub struct MemoryLedger {
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Rows in ingest order.
    rows: Vec<StoredEvent>,
    /// (id, occurred_at) → index in `rows`.
    keys: HashMap<(String, i64), usize>,
    /// Head of each zone's chain (survives retention: the chain never restarts).
    heads: HashMap<String, ChainHead>,
    anchors: Vec<Anchor>,
    alerts: Vec<IngestAlert>,
    retention: Option<RetentionSetting>,
    /// Month partitions that exist, as `year * 12 + month0`. Rows of other months sit in the
    /// default partition, which retention never drops.
    partitions: BTreeSet<i64>,
}

impl MemoryLedger {
    /// An empty ledger with partitions for the current month and the next three, as the
    /// migration creates them.
    pub fn new(clock: Arc<dyn Clock>) -> MemoryLedger {
        let now = clock.now().unix_micros();
        let mut inner = Inner::default();
        let first = month_index(now);
        inner.partitions.extend(first..=first + 3);
        MemoryLedger {
            clock,
            inner: Mutex::new(inner),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Security alerts recorded so far (tests and diagnostics).
    pub fn alerts(&self) -> Vec<IngestAlert> {
        self.lock().alerts.clone()
    }

    /// Number of stored rows.
    pub fn len(&self) -> usize {
        self.lock().rows.len()
    }

    /// Rewrites stored rows behind the ledger's back. The ledger itself never changes a row;
    /// this exists so tests can play the attacker the chain verifier must catch.
    pub fn rewrite_rows_unchecked(&self, edit: impl FnOnce(&mut Vec<StoredEvent>)) {
        edit(&mut self.lock().rows);
    }

    /// Whether no row is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn month_index(micros: i64) -> i64 {
    let at = DateTime::<Utc>::from_timestamp_micros(micros).unwrap_or_default();
    i64::from(at.year()) * 12 + i64::from(at.month0())
}

/// First instant of a month index, in Unix microseconds.
fn month_start(index: i64) -> i64 {
    let year = index.div_euclid(12) as i32;
    let month = index.rem_euclid(12) as u32 + 1;
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .map(|t| t.timestamp_micros())
        .unwrap_or(i64::MAX)
}

fn metadata(row: &StoredEvent) -> Option<serde_json::Value> {
    row.event
        .metadata_json
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
}

fn metadata_str(meta: &Option<serde_json::Value>, key: &str) -> Option<String> {
    meta.as_ref()?.get(key)?.as_str().map(str::to_string)
}

/// `agent_labels` holds `label`: an array of strings containing it, or an object with the key
/// `label` or a `key:value` pair equal to it.
fn has_label(meta: &Option<serde_json::Value>, label: &str) -> bool {
    match meta.as_ref().and_then(|m| m.get("agent_labels")) {
        Some(serde_json::Value::Array(items)) => items.iter().any(|i| i.as_str() == Some(label)),
        Some(serde_json::Value::Object(map)) => map.iter().any(|(k, v)| {
            k == label
                || v.as_str()
                    .map(|v| format!("{k}:{v}") == label)
                    .unwrap_or(false)
        }),
        _ => false,
    }
}

#[async_trait]
impl AuditLedger for MemoryLedger {
    async fn append(
        &self,
        events: &[IncomingEvent],
        mac: Option<&dyn MessageAuthenticator>,
    ) -> Result<Vec<AppendOutcome>, LedgerError> {
        let ingested_at = self.clock.now().unix_micros();
        let mut inner = self.lock();
        let mut outcomes = Vec::with_capacity(events.len());
        for incoming in events {
            let key = (incoming.event.id.clone(), incoming.event.occurred_at_micros);
            if let Some(&index) = inner.keys.get(&key) {
                outcomes.push(AppendOutcome::already_stored(
                    &inner.rows[index].content_sha256,
                    &incoming.content_sha256,
                ));
                continue;
            }
            let link = inner
                .heads
                .entry(incoming.event.zone_id.clone())
                .or_default()
                .link(&incoming.content_sha256, mac);
            let index = inner.rows.len();
            inner.rows.push(StoredEvent {
                event: incoming.event.clone(),
                ingested_at_micros: ingested_at,
                content_sha256: link.content_sha256,
                prev_content_sha256: link.prev_content_sha256,
                chain_hmac: link.chain_hmac,
                chain_seq: link.seq,
                ingest_signature: incoming.sig.clone(),
            });
            inner.keys.insert(key, index);
            outcomes.push(AppendOutcome::Inserted {
                chain_seq: link.seq,
            });
        }
        Ok(outcomes)
    }

    async fn record_alert(&self, alert: &IngestAlert) -> Result<(), LedgerError> {
        self.lock().alerts.push(alert.clone());
        Ok(())
    }

    async fn search(&self, query: &SearchQuery) -> Result<Vec<StoredEvent>, LedgerError> {
        let inner = self.lock();
        let mut rows: Vec<StoredEvent> = inner
            .rows
            .iter()
            .filter(|r| {
                r.event.zone_id == query.zone_id
                    && r.chain_seq > query.after_seq
                    && r.event.occurred_at_micros >= query.since_micros
                    && r.event.occurred_at_micros < query.until_micros
                    && query
                        .decision
                        .as_ref()
                        .is_none_or(|d| *d == r.event.decision)
                    && query
                        .request_id
                        .as_ref()
                        .is_none_or(|id| *id == r.event.request_id)
            })
            .cloned()
            .collect();
        rows.sort_by_key(|r| r.chain_seq);
        rows.truncate(query.limit as usize);
        Ok(rows)
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<StoredEvent>, LedgerError> {
        let inner = self.lock();
        let mut rows: Vec<StoredEvent> = inner
            .rows
            .iter()
            .filter(|r| {
                let e = &r.event;
                if e.zone_id != query.zone_id
                    || query.since_micros.is_some_and(|s| e.occurred_at_micros < s)
                    || query
                        .until_micros
                        .is_some_and(|u| e.occurred_at_micros >= u)
                    || query
                        .request_id
                        .as_ref()
                        .is_some_and(|x| *x != e.request_id)
                    || query.decision.as_ref().is_some_and(|x| *x != e.decision)
                    || (!query.event_types.is_empty() && !query.event_types.contains(&e.event_type))
                {
                    return false;
                }
                if let Some((at, id)) = &query.before {
                    if (e.occurred_at_micros, e.id.as_str()) >= (*at, id.as_str()) {
                        return false;
                    }
                }
                let needs_meta = query.application_id.is_some()
                    || query.agent_session_id.is_some()
                    || query.authority_record_id.is_some()
                    || query.label.is_some();
                if !needs_meta {
                    return true;
                }
                let meta = metadata(r);
                let matches = |key: &str, want: &Option<String>| {
                    want.as_ref()
                        .is_none_or(|w| metadata_str(&meta, key).as_deref() == Some(w))
                };
                matches("application_id", &query.application_id)
                    && matches("agent_session_id", &query.agent_session_id)
                    && matches("session_id", &query.authority_record_id)
                    && query.label.as_ref().is_none_or(|l| has_label(&meta, l))
            })
            .cloned()
            .collect();
        rows.sort_by(|a, b| {
            (b.event.occurred_at_micros, &b.event.id)
                .cmp(&(a.event.occurred_at_micros, &a.event.id))
        });
        rows.truncate(query.limit as usize);
        Ok(rows)
    }

    async fn by_request(
        &self,
        zone_id: &str,
        request_id: &str,
    ) -> Result<Vec<StoredEvent>, LedgerError> {
        let inner = self.lock();
        let mut rows: Vec<StoredEvent> = inner
            .rows
            .iter()
            .filter(|r| r.event.zone_id == zone_id && r.event.request_id == request_id)
            .cloned()
            .collect();
        rows.sort_by_key(|r| (r.event.occurred_at_micros, r.chain_seq));
        Ok(rows)
    }

    async fn zones(&self) -> Result<Vec<String>, LedgerError> {
        let inner = self.lock();
        let zones: BTreeSet<String> = inner
            .rows
            .iter()
            .map(|r| r.event.zone_id.clone())
            .chain(inner.anchors.iter().map(|a| a.zone_id.clone()))
            .collect();
        Ok(zones.into_iter().collect())
    }

    async fn chain_page(
        &self,
        zone_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, LedgerError> {
        let inner = self.lock();
        let mut rows: Vec<StoredEvent> = inner
            .rows
            .iter()
            .filter(|r| r.event.zone_id == zone_id && r.chain_seq > after_seq)
            .cloned()
            .collect();
        rows.sort_by_key(|r| r.chain_seq);
        rows.truncate(limit as usize);
        Ok(rows)
    }

    async fn anchors(&self, zone_id: &str) -> Result<Vec<Anchor>, LedgerError> {
        let inner = self.lock();
        let mut anchors: Vec<Anchor> = inner
            .anchors
            .iter()
            .filter(|a| a.zone_id == zone_id)
            .cloned()
            .collect();
        anchors.sort_by_key(|a| a.seq);
        Ok(anchors)
    }

    async fn apply_retention(
        &self,
        now_micros: i64,
        retention_days: u32,
    ) -> Result<RetentionReport, LedgerError> {
        let mut inner = self.lock();
        let mut report = RetentionReport::default();
        let first = month_index(now_micros);
        for month in first..=first + 3 {
            if inner.partitions.insert(month) {
                report.created += 1;
            }
        }
        let cutoff = now_micros.saturating_sub(i64::from(retention_days) * 86_400_000_000);
        let expired: Vec<i64> = inner
            .partitions
            .iter()
            .copied()
            .filter(|&m| month_start(m + 1) <= cutoff)
            .collect();
        for month in expired {
            inner.partitions.remove(&month);
            report.dropped += 1;
            let (start, end) = (month_start(month), month_start(month + 1));
            let in_month = |r: &StoredEvent| {
                r.event.occurred_at_micros >= start && r.event.occurred_at_micros < end
            };
            let dropped: std::collections::HashSet<(String, i64)> = inner
                .rows
                .iter()
                .filter(|r| in_month(r))
                .map(|r| (r.event.zone_id.clone(), r.chain_seq))
                .collect();
            if dropped.is_empty() {
                continue;
            }
            let anchors: Vec<Anchor> = inner
                .rows
                .iter()
                .filter(|r| in_month(r))
                .filter(|r| !dropped.contains(&(r.event.zone_id.clone(), r.chain_seq + 1)))
                .map(|r| Anchor {
                    zone_id: r.event.zone_id.clone(),
                    seq: r.chain_seq,
                    content_sha256: r.content_sha256.clone(),
                })
                .collect();
            report.anchors += anchors.len() as u64;
            report.rows_dropped += dropped.len() as u64;
            inner.anchors.extend(anchors);
            inner.rows.retain(|r| !in_month(r));
            let keys = inner
                .rows
                .iter()
                .enumerate()
                .map(|(i, r)| ((r.event.id.clone(), r.event.occurred_at_micros), i))
                .collect();
            inner.keys = keys;
        }
        Ok(report)
    }

    async fn retention_setting(&self) -> Result<Option<RetentionSetting>, LedgerError> {
        Ok(self.lock().retention.clone())
    }

    async fn set_retention_setting(&self, setting: &RetentionSetting) -> Result<(), LedgerError> {
        if setting.retention_days == 0 {
            return Err(LedgerError::Permanent(
                "retention_days must be at least 1".into(),
            ));
        }
        self.lock().retention = Some(setting.clone());
        Ok(())
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        Ok(())
    }
}
