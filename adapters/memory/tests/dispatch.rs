//! The outbox dispatcher over the memory store: a committed row is published once with its
//! `outbox_id` and a verifiable `_sig`; a failing bus schedules retries with backoff; the row is
//! dead after the attempt bound and never claimed again.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use caracal_core::contract::events::GatedBus;
use caracal_core::dispatch::{stream_signature, Dispatcher, MAX_ATTEMPTS};
use caracal_core::ids::OutboxId;
use caracal_core::model::OutboxMessage;
use caracal_core::ports::store::{OutboxQueue, Store, ZoneScope};
use caracal_core::ports::{Clock, MessageAuthenticator};
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
    let bus = Arc::new(GatedBus::new(Arc::new(MemoryBus::new())));
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
