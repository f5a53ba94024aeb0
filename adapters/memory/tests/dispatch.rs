//! The outbox dispatcher over the memory store: a committed row is published once with its
//! `outbox_id` and a verifiable `_sig`; a failing bus schedules retries with backoff; the row is
//! dead after the attempt bound and never claimed again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use caracal_core::dispatch::{stream_signature, Dispatcher, MAX_ATTEMPTS};
use caracal_core::ids::OutboxId;
use caracal_core::model::OutboxMessage;
use caracal_core::ports::store::{OutboxQueue, Store, ZoneScope};
use caracal_core::ports::{BusError, Clock, Delivery, EventBus, MessageAuthenticator};
use caracal_core::time::Timestamp;
use caracal_memory::{FixedClock, MemoryBus, MemoryStore};

/// HMAC stand-in: deterministic and keyed, enough to check the canonical string is signed.
struct TestMac;

impl MessageAuthenticator for TestMac {
    fn sign_hex(&self, message: &[u8]) -> String {
        caracal_core::digest::sha256_hex(&[b"key:".as_slice(), message].concat())
    }
    fn verify_hex(&self, message: &[u8], tag_hex: &str) -> bool {
        self.sign_hex(message) == tag_hex
    }
}

/// A bus that fails while `down` is set, else forwards to an in-memory bus.
struct FlakyBus {
    down: AtomicBool,
    inner: MemoryBus,
}

#[async_trait]
impl EventBus for FlakyBus {
    async fn publish(&self, stream: &str, fields: &[(String, String)]) -> Result<String, BusError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BusError::Unavailable("redis is down".into()));
        }
        self.inner.publish(stream, fields).await
    }
    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
        self.inner.ensure_group(stream, group).await
    }
    async fn read_group(
        &self,
        s: &str,
        g: &str,
        c: &str,
        n: usize,
        b: u64,
    ) -> Result<Vec<Delivery>, BusError> {
        self.inner.read_group(s, g, c, n, b).await
    }
    async fn claim_idle(
        &self,
        s: &str,
        g: &str,
        c: &str,
        idle: u64,
        n: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        self.inner.claim_idle(s, g, c, idle, n).await
    }
    async fn read_own_pending(
        &self,
        s: &str,
        g: &str,
        c: &str,
        after: &str,
        n: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        self.inner.read_own_pending(s, g, c, after, n).await
    }
    async fn pending(
        &self,
        s: &str,
        g: &str,
        start: &str,
        end: &str,
        n: usize,
        c: Option<&str>,
    ) -> Result<Vec<caracal_core::ports::events::PendingEntry>, BusError> {
        self.inner.pending(s, g, start, end, n, c).await
    }
    async fn pending_count(&self, s: &str, g: &str) -> Result<u64, BusError> {
        self.inner.pending_count(s, g).await
    }
    async fn stream_len(&self, s: &str) -> Result<u64, BusError> {
        self.inner.stream_len(s).await
    }
    async fn range(
        &self,
        s: &str,
        start: &str,
        end: &str,
        n: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        self.inner.range(s, start, end, n).await
    }
    async fn delete(&self, s: &str, ids: &[String]) -> Result<u64, BusError> {
        self.inner.delete(s, ids).await
    }
    async fn ack(&self, s: &str, g: &str, ids: &[String]) -> Result<(), BusError> {
        self.inner.ack(s, g, ids).await
    }
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

async fn enqueue(store: &MemoryStore, clock: &FixedClock, id: &str) {
    let mut fields = BTreeMap::new();
    fields.insert("zone_id".to_owned(), "z1".to_owned());
    let message = OutboxMessage {
        id: OutboxId::parse(id).expect("id"),
        stream: "caracal.policy.invalidate".into(),
        fields,
        attempts: 0,
        available_at: Some(clock.now()),
        locked_until: None,
        last_error: None,
        dispatched_at: None,
        request_id: Some("req-1".into()),
        created_at: clock.now(),
    };
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.enqueue_outbox(&message).await.expect("enqueue");
    uow.commit().await.expect("commit");
}

#[tokio::test]
async fn publishes_signed_once_then_retries_then_gives_up() {
    let store = MemoryStore::new();
    let clock = Arc::new(FixedClock::new(Timestamp::from_unix_micros(
        1_700_000_000_000_000,
    )));
    let bus = Arc::new(FlakyBus {
        down: AtomicBool::new(false),
        inner: MemoryBus::new(),
    });
    let dispatcher = Dispatcher {
        queue: Arc::new(store.clone()),
        bus: bus.clone(),
        signer: Some(Arc::new(TestMac)),
        clock: clock.clone(),
    };

    enqueue(&store, &clock, "m1").await;
    let report = dispatcher.pass().await.expect("pass");
    assert_eq!(report.published, 1);
    bus.inner
        .ensure_group("caracal.policy.invalidate", "sts")
        .await
        .expect("group");
    let got = bus
        .inner
        .read_group("caracal.policy.invalidate", "sts", "c", 10, 0)
        .await
        .expect("read");
    assert_eq!(got.len(), 1, "published exactly once");
    let fields = &got[0].fields;
    assert!(fields.contains(&("outbox_id".to_owned(), "m1".to_owned())));
    let sig = fields
        .iter()
        .find(|(k, _)| k == "_sig")
        .map(|(_, v)| v.clone())
        .expect("_sig");
    assert_eq!(
        sig,
        stream_signature(&TestMac, "caracal.policy.invalidate", fields),
        "signature verifies"
    );
    assert_eq!(
        dispatcher.pass().await.expect("pass").published,
        0,
        "a dispatched row is never sent again"
    );

    bus.down.store(true, Ordering::SeqCst);
    enqueue(&store, &clock, "m2").await;
    let report = dispatcher.pass().await.expect("pass");
    assert_eq!((report.published, report.retried), (0, 1));
    assert_eq!(
        dispatcher.pass().await.expect("pass").retried,
        0,
        "not due again before its backoff"
    );
    assert_eq!(store.outbox_counts().await.expect("counts"), (1, 0));

    // Keep failing until the bound: each retry is due after at most 78 s.
    for _ in 1..MAX_ATTEMPTS {
        clock.advance_millis(80_000);
        dispatcher.pass().await.expect("pass");
    }
    assert_eq!(
        store.outbox_counts().await.expect("counts"),
        (0, 1),
        "dead after {MAX_ATTEMPTS} attempts"
    );
    bus.down.store(false, Ordering::SeqCst);
    clock.advance_millis(10_000_000);
    assert_eq!(
        dispatcher.pass().await.expect("pass").published,
        0,
        "a dead row is never claimed"
    );
}
