//! The Gateway's counters (B15): what `/metrics` (Prometheus text, `caracal_gateway_<stem>`,
//! `_total` on counters) and `/metrics.json` (the same stems as keys) report. Only series this
//! implementation can back with a real measurement are listed; upstream's pending-replay and
//! propagation series are not. The database pool gauges (`caracal_db_pool_*`) are reported
//! when the store pools connections.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use caracal_core::ports::{PoolUsage, SinkHealth};
use serde_json::{Map, Value};

/// The audit buffer's size: `caracal_gateway_audit_queue_capacity`, `audit_queue_cap` in JSON.
const AUDIT_QUEUE_CAPACITY: &str = "audit_queue_capacity";

/// The denial stems of B15 (`denials_<stem>`), listed even while zero.
pub const DENIAL_STEMS: [&str; 9] = [
    "missing_auth",
    "bad_bearer",
    "expiring",
    "bad_routing",
    "path_traversal",
    "signature",
    "jti_replay",
    "revoked",
    "revocation_stale",
];

/// Counters shared by every request and background task of one Gateway.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Proxied requests.
    pub requests: AtomicU64,
    /// Requests relayed to an upstream that answered.
    pub allowed: AtomicU64,
    /// Requests the Gateway answered with an error of its own.
    pub denied: AtomicU64,
    /// Failed STS exchanges (transport, STS error, invalid answer).
    pub sts_exchange_errors: AtomicU64,
    /// Sum and count of STS exchange latencies (ms).
    pub sts_latency_ms_sum: AtomicU64,
    /// Exchanges timed.
    pub sts_latency_count: AtomicU64,
    /// Upstream failures after a successful exchange (host guard, build, transport, copy).
    pub upstream_errors: AtomicU64,
    /// Revocation stream messages applied.
    pub revocation_messages: AtomicU64,
    /// Revocation stream messages dropped for a bad `_sig`.
    pub revocation_invalid_signatures: AtomicU64,
    /// Revocation messages without a usable field, moved to the dead-letter stream.
    pub revocation_dead_letters: AtomicU64,
    /// Snapshot loads that succeeded (periodic and manual).
    pub revocation_reloads: AtomicU64,
    /// Snapshot loads that failed.
    pub revocation_reload_errors: AtomicU64,
    /// Responses cut short by a revocation.
    pub revocation_interrupted: AtomicU64,
    /// `denials_<stem>`.
    denials: Mutex<BTreeMap<&'static str, u64>>,
}

/// Point-in-time values the counters do not hold.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    /// Circuit open now.
    pub sts_circuit_open: bool,
    /// Times the circuit opened.
    pub sts_circuit_opened: u64,
    /// Requests refused while it was open.
    pub sts_circuit_fast_fail: u64,
    /// Revocation entries held.
    pub revocations_active: u64,
    /// Age of the last snapshot in seconds (`None` before the first).
    pub snapshot_age_seconds: Option<u64>,
    /// Whether it is fresh.
    pub snapshot_fresh: bool,
    /// The audit sink.
    pub audit: SinkHealth,
    /// The store's connection pool, when it has one (`caracal_db_pool_*`).
    pub db_pool: Option<PoolUsage>,
}

/// A sample's value: a count, or a ratio (the pool's use).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Count(u64),
    Ratio(f64),
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::Count(n) => write!(f, "{n}"),
            Num::Ratio(r) => write!(f, "{r}"),
        }
    }
}

impl From<Num> for Value {
    fn from(n: Num) -> Value {
        match n {
            Num::Count(n) => Value::from(n),
            Num::Ratio(r) => Value::from(r),
        }
    }
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// Counts one refusal of steps 0–12 under `denials_<stem>`.
    pub fn denial(&self, stem: &'static str) {
        let mut denials = self
            .denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *denials.entry(stem).or_insert(0) += 1;
    }

    /// Increments `counter`.
    pub fn inc(&self, counter: &AtomicU64) {
        add(counter);
    }

    /// Records one STS exchange latency.
    pub fn sts_latency(&self, millis: u64) {
        self.sts_latency_ms_sum.fetch_add(millis, Ordering::Relaxed);
        add(&self.sts_latency_count);
    }

    /// Every series as `(stem, is_counter, value)`, in the order they are listed.
    fn samples(&self, g: &Gauges) -> Vec<(String, bool, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = vec![
            ("requests".to_owned(), true, get(&self.requests)),
            ("requests_allowed".to_owned(), true, get(&self.allowed)),
            ("requests_denied".to_owned(), true, get(&self.denied)),
        ];
        let denials = self
            .denials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for stem in DENIAL_STEMS {
            out.push((
                format!("denials_{stem}"),
                true,
                denials.get(stem).copied().unwrap_or(0),
            ));
        }
        for (stem, value) in &denials {
            if !DENIAL_STEMS.contains(stem) {
                out.push((format!("denials_{stem}"), true, *value));
            }
        }
        let count = get(&self.sts_latency_count);
        let mean = get(&self.sts_latency_ms_sum)
            .checked_div(count)
            .unwrap_or(0);
        out.extend([
            (
                "sts_exchange_errors".to_owned(),
                true,
                get(&self.sts_exchange_errors),
            ),
            ("sts_exchange_latency_ms".to_owned(), false, mean),
            (
                "sts_circuit_open".to_owned(),
                false,
                u64::from(g.sts_circuit_open),
            ),
            ("sts_circuit_opened".to_owned(), true, g.sts_circuit_opened),
            (
                "sts_circuit_fast_fail".to_owned(),
                true,
                g.sts_circuit_fast_fail,
            ),
            (
                "upstream_errors".to_owned(),
                true,
                get(&self.upstream_errors),
            ),
            ("audit_replay_files".to_owned(), false, g.audit.replay_files),
            ("audit_replay_bytes".to_owned(), false, g.audit.replay_bytes),
            (
                "audit_replay_oldest_age_seconds".to_owned(),
                false,
                g.audit.replay_oldest_age_seconds,
            ),
            ("audit_emitted".to_owned(), true, g.audit.emitted),
            ("audit_dropped".to_owned(), true, g.audit.dropped),
            ("audit_sink_errors".to_owned(), true, g.audit.sink_errors),
            ("audit_drained".to_owned(), true, g.audit.replayed),
            ("audit_persisted".to_owned(), true, g.audit.persisted),
            ("audit_queue_depth".to_owned(), false, g.audit.queue_depth),
            (
                AUDIT_QUEUE_CAPACITY.to_owned(),
                false,
                g.audit.queue_capacity,
            ),
            ("revocations_active".to_owned(), false, g.revocations_active),
            (
                "revocation_snapshot_age_seconds".to_owned(),
                false,
                g.snapshot_age_seconds.unwrap_or(0),
            ),
            (
                "revocation_snapshot_fresh".to_owned(),
                false,
                u64::from(g.snapshot_fresh),
            ),
            (
                "revocation_messages".to_owned(),
                true,
                get(&self.revocation_messages),
            ),
            (
                "revocation_invalid_signatures".to_owned(),
                true,
                get(&self.revocation_invalid_signatures),
            ),
            (
                "revocation_dead_letters".to_owned(),
                true,
                get(&self.revocation_dead_letters),
            ),
            (
                "revocation_reloads".to_owned(),
                true,
                get(&self.revocation_reloads),
            ),
            (
                "revocation_reload_errors".to_owned(),
                true,
                get(&self.revocation_reload_errors),
            ),
            (
                "revocation_interrupted".to_owned(),
                true,
                get(&self.revocation_interrupted),
            ),
        ]);
        out
    }

    /// The pool gauges (B15: `caracal_db_pool_*`, not under the Gateway's prefix), when the
    /// store pools connections.
    fn pool_samples(g: &Gauges) -> Vec<(&'static str, Num)> {
        match g.db_pool {
            None => Vec::new(),
            Some(pool) => vec![
                ("db_pool_in_use_ratio", Num::Ratio(pool.in_use_ratio())),
                ("db_pool_max_conns", Num::Count(pool.max)),
                ("db_pool_acquired_conns", Num::Count(pool.acquired)),
            ],
        }
    }

    /// Prometheus text exposition.
    pub fn prometheus(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        for (stem, counter, value) in self.samples(gauges) {
            let (name, kind) = if counter {
                (format!("caracal_gateway_{stem}_total"), "counter")
            } else {
                (format!("caracal_gateway_{stem}"), "gauge")
            };
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
        for (stem, value) in Self::pool_samples(gauges) {
            let _ = writeln!(out, "# TYPE caracal_{stem} gauge");
            let _ = writeln!(out, "caracal_{stem} {value}");
        }
        out
    }

    /// `/metrics.json`: the stems as keys.
    pub fn json(&self, gauges: &Gauges) -> Value {
        let mut map = Map::new();
        for (stem, _, value) in self.samples(gauges) {
            // B15: the one key that is not its stem.
            let key = if stem == AUDIT_QUEUE_CAPACITY {
                "audit_queue_cap".to_owned()
            } else {
                stem
            };
            map.insert(key, Value::from(value));
        }
        for (stem, value) in Self::pool_samples(gauges) {
            map.insert(stem.to_owned(), Value::from(value));
        }
        Value::Object(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            sts_circuit_open: true,
            sts_circuit_opened: 2,
            sts_circuit_fast_fail: 5,
            revocations_active: 3,
            snapshot_age_seconds: Some(12),
            snapshot_fresh: true,
            audit: SinkHealth {
                persisted: 40,
                queue_depth: 7,
                queue_capacity: 10_000,
                ..SinkHealth::default()
            },
            db_pool: Some(PoolUsage {
                max: 20,
                acquired: 5,
            }),
        }
    }

    #[test]
    fn renders_counters_and_gauges() {
        let m = Metrics::default();
        m.inc(&m.requests);
        m.denial("signature");
        m.denial("signature");
        let text = m.prometheus(&gauges());
        assert!(
            text.contains("caracal_gateway_requests_total 1\n"),
            "{text}"
        );
        assert!(text.contains("caracal_gateway_denials_signature_total 2\n"));
        assert!(text.contains("caracal_gateway_denials_jti_replay_total 0\n"));
        assert!(text.contains("caracal_gateway_sts_circuit_open 1\n"));
        assert!(text.contains("caracal_gateway_revocation_snapshot_age_seconds 12\n"));
        assert!(
            text.contains(
                "# TYPE caracal_db_pool_in_use_ratio gauge\ncaracal_db_pool_in_use_ratio 0.25\n"
            ),
            "{text}"
        );
        assert!(text.contains("caracal_db_pool_max_conns 20\n"));
        assert!(text.contains(
            "# TYPE caracal_gateway_audit_persisted_total counter\ncaracal_gateway_audit_persisted_total 40\n"
        ));
        assert!(text.contains(
            "# TYPE caracal_gateway_audit_queue_depth gauge\ncaracal_gateway_audit_queue_depth 7\n"
        ));
        assert!(text.contains("caracal_gateway_audit_queue_capacity 10000\n"));
        assert!(text.contains("caracal_db_pool_acquired_conns 5\n"));
        let json = m.json(&gauges());
        assert_eq!(json["denials_signature"], 2);
        assert_eq!(json["sts_circuit_fast_fail"], 5);
        assert_eq!(json["db_pool_in_use_ratio"], 0.25);
        assert_eq!(json["audit_persisted"], 40);
        assert_eq!(json["audit_queue_depth"], 7);
        assert_eq!(json["audit_queue_cap"], 10_000);
        assert!(json.get("audit_queue_capacity").is_none());
        assert_eq!(json["db_pool_max_conns"], 20);
        assert_eq!(json["db_pool_acquired_conns"], 5);
        // A store without a pool (memory, `caracal dev`) has no pool series at all.
        let poolless = Gauges {
            db_pool: None,
            ..gauges()
        };
        assert!(!m.prometheus(&poolless).contains("db_pool"));
        assert!(m.json(&poolless).get("db_pool_max_conns").is_none());
    }
}
