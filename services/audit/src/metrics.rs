//! The Audit service's counters and gauges (`spec/audit-streams-storage.md §6.7`), unlabelled,
//! as Prometheus text and as `/metrics.json`. Only the series of what this service does are
//! exposed: ingestion, dead letters, retention and the stream figures; the export, tamper sweep
//! and lease series belong to features not built here.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::{Map, Value};

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value set from the last observation.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every series. Relaxed atomics: each is independent.
#[derive(Debug, Default)]
pub struct AuditMetrics {
    /// Events stored.
    pub inserts: Counter,
    /// Entries whose `data` was missing or not a usable event.
    pub parse_errors: Counter,
    /// Entries dead-lettered.
    pub dlq: Counter,
    /// Entries the reaper reclaimed.
    pub retries: Counter,
    /// Entries whose producer signature did not verify.
    pub hmac_failures: Counter,
    /// Replays of a stored event with different content.
    pub tamper_replay: Counter,
    /// Month partitions retention created.
    pub retention_created: Counter,
    /// Month partitions retention dropped.
    pub retention_dropped: Counter,
    /// Entries delivered to the group and not acknowledged (the `XPENDING` count).
    pub consumer_lag: Gauge,
    /// Idle time of the oldest pending entry, seconds.
    pub pel_oldest_secs: Gauge,
    /// Entries in the DLQ.
    pub dlq_size: Gauge,
    /// Age of the oldest DLQ entry, seconds.
    pub dlq_oldest_age_secs: Gauge,
    /// Whether the stream figures were read at least once (they read 0 before).
    pub polled: AtomicBool,
}

enum Kind {
    Counter,
    Gauge,
}

impl AuditMetrics {
    /// `(Prometheus name, JSON key, help, kind, value)` for every series, in render order.
    fn series(&self) -> [(&'static str, &'static str, &'static str, Kind, u64); 12] {
        [
            (
                "caracal_audit_inserts_total",
                "inserts_total",
                "Audit events stored.",
                Kind::Counter,
                self.inserts.get(),
            ),
            (
                "caracal_audit_parse_errors_total",
                "parse_errors_total",
                "Entries without a usable event.",
                Kind::Counter,
                self.parse_errors.get(),
            ),
            (
                "caracal_audit_dlq_total",
                "dlq_total",
                "Entries dead-lettered.",
                Kind::Counter,
                self.dlq.get(),
            ),
            (
                "caracal_audit_retries_total",
                "retries_total",
                "Pending entries reclaimed for another delivery.",
                Kind::Counter,
                self.retries.get(),
            ),
            (
                "caracal_audit_hmac_failures_total",
                "hmac_failures_total",
                "Entries whose producer signature failed verification.",
                Kind::Counter,
                self.hmac_failures.get(),
            ),
            (
                "caracal_audit_tamper_replay_total",
                "tamper_replay_total",
                "Replays of a stored event with different content.",
                Kind::Counter,
                self.tamper_replay.get(),
            ),
            (
                "caracal_audit_retention_created_total",
                "retention_created_total",
                "Month partitions created by retention.",
                Kind::Counter,
                self.retention_created.get(),
            ),
            (
                "caracal_audit_retention_dropped_total",
                "retention_dropped_total",
                "Month partitions dropped by retention.",
                Kind::Counter,
                self.retention_dropped.get(),
            ),
            (
                "caracal_audit_consumer_lag",
                "consumer_lag",
                "Entries delivered to the ingest group and not acknowledged.",
                Kind::Gauge,
                self.consumer_lag.get(),
            ),
            (
                "caracal_audit_consumer_pel_oldest_seconds",
                "consumer_pel_oldest_secs",
                "Idle time of the oldest pending entry.",
                Kind::Gauge,
                self.pel_oldest_secs.get(),
            ),
            (
                "caracal_audit_dlq_size",
                "dlq_size",
                "Entries in the dead-letter stream.",
                Kind::Gauge,
                self.dlq_size.get(),
            ),
            (
                "caracal_audit_dlq_oldest_age_seconds",
                "dlq_oldest_age_secs",
                "Age of the oldest dead letter.",
                Kind::Gauge,
                self.dlq_oldest_age_secs.get(),
            ),
        ]
    }

    /// Prometheus text exposition.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for (name, _, help, kind, value) in self.series() {
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }

    /// The `/metrics.json` object.
    pub fn render_json(&self) -> Value {
        let map: Map<String, Value> = self
            .series()
            .into_iter()
            .map(|(_, key, _, _, value)| (key.to_owned(), Value::from(value)))
            .collect();
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_renderings_carry_every_series() {
        let metrics = AuditMetrics::default();
        metrics.inserts.add(3);
        metrics.dlq_size.set(2);
        let text = metrics.render_text();
        assert!(text.contains(
            "# TYPE caracal_audit_inserts_total counter\ncaracal_audit_inserts_total 3\n"
        ));
        assert!(text.contains("# TYPE caracal_audit_dlq_size gauge\ncaracal_audit_dlq_size 2\n"));
        let json = metrics.render_json();
        assert_eq!(json["inserts_total"], 3);
        assert_eq!(json["dlq_size"], 2);
        assert_eq!(json["consumer_pel_oldest_secs"], 0);
        assert_eq!(json.as_object().map(Map::len), Some(12));
    }
}
