//! Shared pieces of the publisher tests: events, scratch directories, a bus that fails on
//! demand, and polling with a deadline. Each test binary uses a different subset.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use caracal_core::ports::{AuditEvent, BusError, Delivery, EventBus};
use caracal_evidence::PublisherConfig;

/// A token_exchange allow with the two arrays present and no optional strings.
pub fn event(id: &str) -> AuditEvent {
    AuditEvent {
        id: id.to_string(),
        zone_id: "zone_a".to_string(),
        event_type: "token_exchange".to_string(),
        request_id: format!("req-{id}"),
        decision: "allow".to_string(),
        policy_set_version_id: None,
        manifest_sha: None,
        evaluation_status: "complete".to_string(),
        determining_policies_json: Some(vec![]),
        diagnostics_json: Some(vec![]),
        metadata_json: None,
        occurred_at: "2026-05-21T12:00:00.123456789Z".to_string(),
    }
}

pub fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}-{i:04}")).collect()
}

/// A name no other run shares.
pub fn unique(label: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    format!(
        "{label}-{}-{nanos}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(unique(&format!("caracal-evidence-{label}")));
        fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    /// The replay directory inside (created by the publisher).
    pub fn replay(&self) -> PathBuf {
        self.0.join("replay")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Names in `dir`, sorted.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Test timings: quick flushes and replay checks so the tests finish in well under a second.
pub fn config(replay_dir: Option<PathBuf>, batch: usize) -> PublisherConfig {
    PublisherConfig {
        replay_dir,
        stream: "caracal.audit.events".to_string(),
        capacity: 10_000,
        batch,
        flush_interval: Duration::from_millis(5),
        replay_interval: Duration::from_millis(20),
    }
}

/// Polls `check` every 10 ms for up to 10 s.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A bus that records what it was given and fails on demand: `budget` publications succeed
/// (negative: unlimited), then every publish and ping fails until healed.
pub struct FlakyBus {
    published: Mutex<Vec<Vec<(String, String)>>>,
    budget: AtomicI64,
    publish_delay: Mutex<Option<Duration>>,
}

impl FlakyBus {
    pub fn healthy() -> Arc<FlakyBus> {
        Arc::new(FlakyBus {
            published: Mutex::new(Vec::new()),
            budget: AtomicI64::new(-1),
            publish_delay: Mutex::new(None),
        })
    }

    pub fn failing() -> Arc<FlakyBus> {
        let bus = FlakyBus::healthy();
        bus.fail();
        bus
    }

    pub fn fail(&self) {
        self.budget.store(0, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.budget.store(-1, Ordering::SeqCst);
    }

    /// Lets `n` more publications through, then fails.
    pub fn allow(&self, n: i64) {
        self.budget.store(n, Ordering::SeqCst);
    }

    pub fn slow(&self, delay: Duration) {
        *self.publish_delay.lock().expect("delay") = Some(delay);
    }

    pub fn entries(&self) -> Vec<Vec<(String, String)>> {
        self.published.lock().expect("published").clone()
    }

    pub fn ids(&self) -> Vec<String> {
        self.entries().iter().map(|e| field(e, "id")).collect()
    }

    pub fn count(&self) -> usize {
        self.published.lock().expect("published").len()
    }

    fn take_budget(&self) -> bool {
        self.budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| match b {
                0 => None,
                b if b < 0 => Some(b),
                b => Some(b - 1),
            })
            .is_ok()
    }
}

/// A field of a published entry; empty when absent.
pub fn field(entry: &[(String, String)], name: &str) -> String {
    entry
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_default()
}

#[async_trait]
impl EventBus for FlakyBus {
    async fn publish(
        &self,
        _stream: &str,
        fields: &[(String, String)],
    ) -> Result<String, BusError> {
        let delay = *self.publish_delay.lock().expect("delay");
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if !self.take_budget() {
            return Err(BusError::Unavailable("down on purpose".to_string()));
        }
        let mut published = self.published.lock().expect("published");
        published.push(fields.to_vec());
        Ok(format!("{}-0", published.len()))
    }

    async fn ensure_group(&self, _stream: &str, _group: &str) -> Result<(), BusError> {
        Ok(())
    }

    async fn read_group(
        &self,
        _stream: &str,
        _group: &str,
        _consumer: &str,
        _count: usize,
        _block_ms: u64,
    ) -> Result<Vec<Delivery>, BusError> {
        Ok(Vec::new())
    }

    async fn claim_idle(
        &self,
        _stream: &str,
        _group: &str,
        _consumer: &str,
        _min_idle_ms: u64,
        _count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        Ok(Vec::new())
    }

    // A publish-only fake: nothing is ever read, so nothing is pending and no stream is read.
    async fn read_own_pending(
        &self,
        _stream: &str,
        _group: &str,
        _consumer: &str,
        _after_id: &str,
        _count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        Ok(Vec::new())
    }

    async fn pending(
        &self,
        _stream: &str,
        _group: &str,
        _start: &str,
        _end: &str,
        _count: usize,
        _consumer: Option<&str>,
    ) -> Result<Vec<caracal_core::ports::events::PendingEntry>, BusError> {
        Ok(Vec::new())
    }

    async fn pending_count(&self, _stream: &str, _group: &str) -> Result<u64, BusError> {
        Ok(0)
    }

    async fn stream_len(&self, _stream: &str) -> Result<u64, BusError> {
        Ok(self.count() as u64)
    }

    async fn range(
        &self,
        _stream: &str,
        _start: &str,
        _end: &str,
        _count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        Ok(Vec::new())
    }

    async fn delete(&self, _stream: &str, _ids: &[String]) -> Result<u64, BusError> {
        Ok(0)
    }

    async fn ack(&self, _stream: &str, _group: &str, _ids: &[String]) -> Result<(), BusError> {
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        if self.budget.load(Ordering::SeqCst) == 0 {
            return Err(BusError::Unavailable("down on purpose".to_string()));
        }
        Ok(())
    }
}
