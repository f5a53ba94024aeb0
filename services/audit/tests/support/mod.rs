//! The Audit service over the memory bus and a memory ledger that can be made to fail: frames
//! as the STS and Gateway publish them, signed with the spec's key (32 bytes of 0x11), and
//! the stream state a test asserts on.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use caracal_audit::{AuditConfig, AuditPorts, AuditState, Ingestor};
use caracal_core::audit::{Anchor, IncomingEvent, StoredEvent};
use caracal_core::contract::events::GatedBus;
use caracal_core::ports::audit::{
    AppendOutcome, AuditLedger, IngestAlert, LedgerError, ListQuery, RetentionReport,
    RetentionSetting, SearchQuery,
};
use caracal_core::ports::events::{Delivery, EventBus};
use caracal_core::ports::{Clock, MessageAuthenticator};
use caracal_crypto::HmacSha256;
use caracal_memory::{MemoryBus, MemoryLedger, SystemClock};

pub const EVENTS: &str = "caracal.audit.events";
pub const DLQ: &str = "caracal.audit.events.dlq";
pub const GROUP: &str = "audit-ingestor";

/// The spec's key: 32 bytes of 0x11.
pub fn spec_mac() -> Arc<dyn MessageAuthenticator> {
    Arc::new(HmacSha256::from_bytes(&[0x11; 32]))
}

/// A memory ledger whose appends, alerts and pings can be made to fail, and that counts its
/// append calls.
pub struct TestLedger {
    pub inner: MemoryLedger,
    /// Appends fail with this transient error while set.
    pub transient: Mutex<Option<String>>,
    /// Appends holding an event with this id fail permanently.
    pub poison: Mutex<Option<String>>,
    /// Alerts cannot be recorded while set.
    pub alerts_down: AtomicBool,
    /// Pings fail while set.
    pub ping_down: AtomicBool,
    /// Append calls so far.
    pub appends: AtomicUsize,
}

impl TestLedger {
    pub fn new(clock: Arc<dyn Clock>) -> TestLedger {
        TestLedger {
            inner: MemoryLedger::new(clock),
            transient: Mutex::new(None),
            poison: Mutex::new(None),
            alerts_down: AtomicBool::new(false),
            ping_down: AtomicBool::new(false),
            appends: AtomicUsize::new(0),
        }
    }

    pub fn fail_transiently(&self, error: Option<&str>) {
        *self.transient.lock().expect("lock") = error.map(str::to_owned);
    }

    pub fn poison(&self, id: &str) {
        *self.poison.lock().expect("lock") = Some(id.to_owned());
    }
}

#[async_trait]
impl AuditLedger for TestLedger {
    async fn append(
        &self,
        events: &[IncomingEvent],
        mac: Option<&dyn MessageAuthenticator>,
    ) -> Result<Vec<AppendOutcome>, LedgerError> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        if let Some(error) = self.transient.lock().expect("lock").clone() {
            return Err(LedgerError::Transient(error));
        }
        let poison = self.poison.lock().expect("lock").clone();
        if let Some(poison) = poison {
            if events.iter().any(|e| e.event.id == poison) {
                return Err(LedgerError::Permanent(
                    "22P05 unsupported Unicode escape sequence".into(),
                ));
            }
        }
        self.inner.append(events, mac).await
    }
    async fn record_alert(&self, alert: &IngestAlert) -> Result<(), LedgerError> {
        if self.alerts_down.load(Ordering::SeqCst) {
            return Err(LedgerError::Transient("connection reset".into()));
        }
        self.inner.record_alert(alert).await
    }
    async fn search(&self, query: &SearchQuery) -> Result<Vec<StoredEvent>, LedgerError> {
        self.inner.search(query).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<StoredEvent>, LedgerError> {
        self.inner.list(query).await
    }
    async fn by_request(&self, zone: &str, request: &str) -> Result<Vec<StoredEvent>, LedgerError> {
        self.inner.by_request(zone, request).await
    }
    async fn zones(&self) -> Result<Vec<String>, LedgerError> {
        self.inner.zones().await
    }
    async fn chain_page(
        &self,
        zone: &str,
        after: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, LedgerError> {
        self.inner.chain_page(zone, after, limit).await
    }
    async fn anchors(&self, zone: &str) -> Result<Vec<Anchor>, LedgerError> {
        self.inner.anchors(zone).await
    }
    async fn apply_retention(&self, now: i64, days: u32) -> Result<RetentionReport, LedgerError> {
        self.inner.apply_retention(now, days).await
    }
    async fn retention_setting(&self) -> Result<Option<RetentionSetting>, LedgerError> {
        self.inner.retention_setting().await
    }
    async fn set_retention_setting(&self, setting: &RetentionSetting) -> Result<(), LedgerError> {
        self.inner.set_retention_setting(setting).await
    }
    async fn ping(&self) -> Result<(), LedgerError> {
        if self.ping_down.load(Ordering::SeqCst) {
            return Err(LedgerError::Transient("connection refused".into()));
        }
        self.inner.ping().await
    }
}

/// A service over the test ledger and bus.
pub struct World {
    pub ledger: Arc<TestLedger>,
    pub bus: Arc<GatedBus>,
    pub mac: Arc<dyn MessageAuthenticator>,
    pub state: AuditState,
}

impl World {
    /// With the spec key, `claim_idle` 0 (every pending entry is reclaimable at once, so a
    /// reaper pass is one more delivery of each) and `config` adjusted by `tune`.
    pub async fn new(tune: impl FnOnce(&mut AuditConfig)) -> World {
        World::with_clock(Arc::new(SystemClock), tune).await
    }

    pub async fn with_clock(clock: Arc<dyn Clock>, tune: impl FnOnce(&mut AuditConfig)) -> World {
        World::on_bus(Arc::new(MemoryBus::new()), clock, tune).await
    }

    /// Over `bus` (the memory bus, or Redis).
    pub async fn on_bus(
        bus: Arc<dyn EventBus>,
        clock: Arc<dyn Clock>,
        tune: impl FnOnce(&mut AuditConfig),
    ) -> World {
        let ledger = Arc::new(TestLedger::new(Arc::clone(&clock)));
        let bus = Arc::new(GatedBus::for_streams_ending_with(bus, ".dlq"));
        let mac = spec_mac();
        let mut config = AuditConfig::defaults();
        config.claim_idle = std::time::Duration::ZERO;
        tune(&mut config);
        let state = AuditState::new(
            AuditPorts {
                ledger: Arc::clone(&ledger) as Arc<dyn AuditLedger>,
                bus: Arc::clone(&bus) as Arc<dyn EventBus>,
                clock,
                mac: Some(Arc::clone(&mac)),
            },
            config,
        );
        let world = World {
            ledger,
            bus,
            mac,
            state,
        };
        world.ingestor().ensure_group().await.expect("ensure group");
        world
    }

    pub fn ingestor(&self) -> Ingestor {
        self.state.ingestor()
    }

    /// Publishes `fields` on the audit stream as a producer would.
    pub async fn publish(&self, fields: Vec<(String, String)>) -> String {
        let stream = &self.state.config.streams.events;
        self.bus.publish(stream, &fields).await.expect("publish")
    }

    /// Publishes a signed frame for `data`.
    pub async fn publish_event(&self, id: &str, data: &str) -> String {
        self.publish(self.frame(id, data)).await
    }

    /// `{id, data, sig}` with a valid signature.
    pub fn frame(&self, id: &str, data: &str) -> Vec<(String, String)> {
        vec![
            ("id".into(), id.into()),
            ("data".into(), data.into()),
            ("sig".into(), self.mac.sign_hex(data.as_bytes())),
        ]
    }

    /// One read of new entries, processed.
    pub async fn ingest(&self) -> caracal_audit::Tally {
        self.ingestor()
            .read_once(std::time::Duration::ZERO)
            .await
            .expect("read")
    }

    /// One reaper pass.
    pub async fn reap(&self) -> caracal_audit::Tally {
        self.ingestor().reap_once().await.expect("reap")
    }

    pub async fn pending_count(&self) -> u64 {
        let streams = &self.state.config.streams;
        self.bus
            .pending_count(&streams.events, &streams.group)
            .await
            .expect("pending")
    }

    /// Every DLQ entry's fields.
    pub async fn dead_letters(&self) -> Vec<Delivery> {
        let dlq = &self.state.config.streams.dlq;
        self.bus.range(dlq, "-", "+", 1000).await.expect("range")
    }

    /// Every stored row of `zone`, in chain order.
    pub async fn rows(&self, zone: &str) -> Vec<StoredEvent> {
        self.ledger
            .inner
            .chain_page(zone, 0, 1000)
            .await
            .expect("chain page")
    }
}

/// The value of `name` in `fields`.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// An event JSON for `id` in `zone`, at `occurred_at`, with `decision` and `request_id`.
pub fn event(id: &str, zone: &str, occurred_at: &str, decision: &str, request_id: &str) -> String {
    serde_json::json!({
        "id": id,
        "zone_id": zone,
        "event_type": "token_exchange",
        "request_id": request_id,
        "decision": decision,
        "evaluation_status": "complete",
        "determining_policies_json": [],
        "diagnostics_json": [],
        "occurred_at": occurred_at,
    })
    .to_string()
}

/// RFC 3339 for now minus `minutes`.
pub fn minutes_ago(minutes: i64) -> String {
    (chrono::Utc::now() - chrono::Duration::minutes(minutes))
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
