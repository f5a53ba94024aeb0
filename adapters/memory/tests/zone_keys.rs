//! Zone signing keys (`spec/sts.md §5`) over the memory store with the real sealer and ES256:
//! lazy creation, one key per racing first mint, JWKS, rotation, undecryptable keys, and the
//! caches that keep the hot path off the store.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use caracal_core::authority::ZoneSigningKey;
use caracal_core::error::{ErrorKind, StoreError};
use caracal_core::ids::ZoneId;
use caracal_core::mandate::{
    encode, verify_mandate, Expectations, MandateClaims, MandateUse, SubType,
};
use caracal_core::ports::{Es256, SecretSealer, Store, UnitOfWork, ZoneScope};
use caracal_core::sts::keys::{
    ZoneKeys, CACHE_TTL_MS, PREVIOUS_KEY_GRACE_MS, SIGNING_KEY_AAD, UNKNOWN_KID_REFRESH_MS,
};
use caracal_core::time::Timestamp;
use caracal_crypto::{EnvelopeSealer, Kek, RingEs256};
use caracal_memory::{FixedClock, MemoryStore, UuidV7Ids};
use serde_json::Value;

const ISSUER: &str = "http://sts:8080";
const START_MICROS: i64 = 1_790_000_000_000_000;

/// A store that counts units of work, to prove warm paths never open one.
struct CountingStore {
    inner: MemoryStore,
    begins: AtomicUsize,
}

#[async_trait]
impl Store for CountingStore {
    async fn begin(&self, scope: &ZoneScope) -> Result<Box<dyn UnitOfWork>, StoreError> {
        self.begins.fetch_add(1, Ordering::SeqCst);
        self.inner.begin(scope).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

impl CountingStore {
    fn begins(&self) -> usize {
        self.begins.load(Ordering::SeqCst)
    }
}

struct World {
    store: Arc<CountingStore>,
    sealer: Arc<EnvelopeSealer>,
    es256: Arc<RingEs256>,
    clock: Arc<FixedClock>,
}

impl World {
    fn new() -> Self {
        Self {
            store: Arc::new(CountingStore {
                inner: MemoryStore::new(),
                begins: AtomicUsize::new(0),
            }),
            sealer: Arc::new(EnvelopeSealer::new(Kek::generate().expect("kek"), [])),
            es256: Arc::new(RingEs256::new()),
            clock: Arc::new(FixedClock::new(Timestamp::from_unix_micros(START_MICROS))),
        }
    }

    /// One process's view: a fresh `ZoneKeys` with its own caches over the shared store.
    fn replica(&self) -> ZoneKeys {
        ZoneKeys::new(
            self.store.clone(),
            self.sealer.clone(),
            self.es256.clone(),
            Arc::new(UuidV7Ids),
            self.clock.clone(),
        )
    }

    async fn stored(&self, zone: &ZoneId) -> Vec<ZoneSigningKey> {
        let mut unit = self
            .store
            .inner
            .begin(&ZoneScope::All)
            .await
            .expect("begin");
        unit.latest_signing_keys(zone, 100).await.expect("read")
    }

    /// A live zone row, which rotation requires.
    async fn live_zone(&self, name: &str) -> ZoneId {
        let id = zone(name);
        let at = Timestamp::from_unix_micros(START_MICROS);
        let row = caracal_core::model::Zone {
            id: id.clone(),
            name: name.into(),
            slug: name.into(),
            dcr_enabled: false,
            operator_coauthor_badge: false,
            operator_governed: false,
            attr: caracal_core::attribution::Attribution {
                created_by: "test".into(),
                created_via_operator: false,
                updated_by: "test".into(),
                updated_via_operator: false,
                created_at: at,
                updated_at: at,
            },
            archived_at: None,
        };
        let mut unit = self
            .store
            .inner
            .begin(&ZoneScope::All)
            .await
            .expect("begin");
        unit.save_zone(&row).await.expect("zone");
        unit.commit().await.expect("commit");
        id
    }

    async fn insert(&self, key: &ZoneSigningKey) {
        let mut unit = self
            .store
            .inner
            .begin(&ZoneScope::All)
            .await
            .expect("begin");
        unit.insert_signing_key(key).await.expect("insert");
        unit.commit().await.expect("commit");
    }

    fn now_unix(&self) -> i64 {
        caracal_core::ports::Clock::now(self.clock.as_ref()).unix_seconds()
    }

    /// Mints a session mandate with the zone's current signer.
    async fn mint(&self, keys: &ZoneKeys, zone: &ZoneId) -> (String, String) {
        let (kid, signer) = keys.signer(zone).await.expect("signer");
        let now = self.now_unix();
        let claims = MandateClaims {
            iss: ISSUER.into(),
            sub: "app-1".into(),
            aud: vec![ISSUER.into()],
            exp: now + 900,
            iat: now,
            jti: "j-1".into(),
            zone_id: zone.to_string(),
            client_id: "app-1".into(),
            scope: "agent:lifecycle".into(),
            sid: "ar-1".into(),
            root_sid: "ar-1".into(),
            use_: MandateUse::Session,
            sub_type: SubType::Application,
            target: vec![],
            agent_session_id: None,
            delegation_edge_id: None,
            source_session_id: None,
            target_session_id: None,
            delegation_path: vec![],
            delegation_chain: vec![],
            hop_count: 0,
            delegation_graph_epoch: 0,
        };
        (
            kid.clone(),
            encode(&kid, &claims, signer.as_ref()).expect("encode"),
        )
    }

    /// Whether `keys` accepts `token` the way the STS checks a subject token.
    async fn accepts(&self, keys: &ZoneKeys, zone: &ZoneId, token: &str) -> bool {
        let kid = caracal_core::mandate::peek_kid(token).expect("kid");
        let set = keys.verification_keys(zone, &kid).await.expect("keys");
        let expect = Expectations::new(ISSUER, zone.as_str(), &[MandateUse::Session]);
        verify_mandate(token, &set, &expect, self.es256.as_ref(), self.now_unix()).is_ok()
    }
}

fn zone(name: &str) -> ZoneId {
    ZoneId::parse(name).expect("zone id")
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .expect("keys array")
        .iter()
        .map(|k| k["kid"].as_str().expect("kid").to_owned())
        .collect()
}

#[tokio::test]
async fn jwks_is_404_until_the_first_mint_creates_version_one() {
    let world = World::new();
    let keys = world.replica();
    let z = zone("z1");

    let err = keys.jwks(&z).await.expect_err("no key yet");
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert_eq!(err.code, "resource_not_found");
    assert_eq!(
        err.description.as_deref(),
        Some("zone signing key not found")
    );
    assert!(
        world.stored(&z).await.is_empty(),
        "JWKS must never create a key"
    );
    assert!(keys
        .verification_keys(&z, "anything")
        .await
        .expect("empty set")
        .is_empty());

    let (kid, token) = world.mint(&keys, &z).await;
    let stored = world.stored(&z).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, kid);
    assert_eq!(stored[0].version, 1);
    assert!(uuid_v7(&kid), "kid {kid} is not a UUIDv7");

    // The stored plaintext is a SEC1 PEM sealed under the contract's AAD.
    let pem = world
        .sealer
        .open(SIGNING_KEY_AAD, &stored[0].envelope)
        .expect("opens");
    assert!(pem.starts_with(b"-----BEGIN EC PRIVATE KEY-----\n"));
    assert!(world
        .sealer
        .open("caracal/secrets/other", &stored[0].envelope)
        .is_err());

    let jwks = keys.jwks(&z).await.expect("jwks");
    assert_eq!(kids(&jwks), [kid.as_str()]);
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    assert!(world.accepts(&keys, &z, &token).await);

    // Other zones stay keyless.
    assert!(keys.jwks(&zone("z2")).await.is_err());
}

fn uuid_v7(text: &str) -> bool {
    text.len() == 36 && text.as_bytes()[14] == b'7'
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_first_mints_create_exactly_one_key() {
    let world = World::new();
    let z = zone("z1");
    let replicas: Vec<Arc<ZoneKeys>> = (0..8).map(|_| Arc::new(world.replica())).collect();
    let tasks: Vec<_> = replicas
        .iter()
        .map(|keys| {
            let keys = Arc::clone(keys);
            let z = z.clone();
            tokio::spawn(async move { keys.signer(&z).await.map(|(kid, _)| kid) })
        })
        .collect();
    let mut kids = Vec::new();
    for task in tasks {
        kids.push(task.await.expect("join").expect("signer"));
    }
    let stored = world.stored(&z).await;
    assert_eq!(stored.len(), 1, "one key for the zone");
    assert!(kids.iter().all(|kid| *kid == stored[0].id));
}

#[tokio::test]
async fn rotation_refuses_a_zone_that_does_not_exist() {
    let world = World::new();
    let keys = world.replica();
    let err = keys.rotate(&zone("ghost")).await.expect_err("no zone");
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(
        world.stored(&zone("ghost")).await.is_empty(),
        "nothing written"
    );
}

#[tokio::test]
async fn rotation_publishes_both_keys_newest_first_for_a_day() {
    let world = World::new();
    let keys = world.replica();
    let z = world.live_zone("z1").await;
    let (old_kid, old_token) = world.mint(&keys, &z).await;

    world.clock.advance_millis(60_000);
    let new_kid = keys.rotate(&z).await.expect("rotate");
    assert_ne!(new_kid, old_kid);
    let stored = world.stored(&z).await;
    assert_eq!(
        stored
            .iter()
            .map(|k| (k.id.as_str(), k.version))
            .collect::<Vec<_>>(),
        [(new_kid.as_str(), 2), (old_kid.as_str(), 1)]
    );

    // This process signs with the new key at once and still accepts the old one.
    let (kid, new_token) = world.mint(&keys, &z).await;
    assert_eq!(kid, new_kid);
    assert_eq!(
        kids(&keys.jwks(&z).await.expect("jwks")),
        [new_kid.as_str(), old_kid.as_str()]
    );
    assert!(world.accepts(&keys, &z, &old_token).await);
    assert!(world.accepts(&keys, &z, &new_token).await);

    // 24 h after the new key's creation the old key leaves the set, even from a warm cache.
    world.clock.advance_millis(PREVIOUS_KEY_GRACE_MS - 1_000);
    assert_eq!(kids(&keys.jwks(&z).await.expect("jwks")).len(), 2);
    world.clock.advance_millis(1_000);
    assert_eq!(
        kids(&keys.jwks(&z).await.expect("jwks")),
        [new_kid.as_str()]
    );
    let set = keys.verification_keys(&z, &old_kid).await.expect("keys");
    assert!(!set.contains(&old_kid));
    assert!(set.contains(&new_kid));
}

#[tokio::test]
async fn a_rotation_elsewhere_is_picked_up_on_the_first_unknown_kid() {
    let world = World::new();
    let here = world.replica();
    let there = world.replica();
    let z = world.live_zone("z1").await;
    let (old_kid, _) = world.mint(&here, &z).await;
    assert!(here
        .verification_keys(&z, &old_kid)
        .await
        .expect("keys")
        .contains(&old_kid));
    world.clock.advance_millis(UNKNOWN_KID_REFRESH_MS);

    let new_kid = there.rotate(&z).await.expect("rotate");
    let (_, token) = world.mint(&there, &z).await;
    // Without any invalidation message, the unknown kid makes `here` re-read once.
    assert!(world.accepts(&here, &z, &token).await);

    // `here` keeps signing with its cached key until told or until the cache expires.
    assert_eq!(here.signer(&z).await.expect("signer").0, old_kid);
    here.invalidate(&z);
    assert_eq!(here.signer(&z).await.expect("signer").0, new_kid);
}

#[tokio::test]
async fn warm_caches_do_not_touch_the_store() {
    let world = World::new();
    let keys = world.replica();
    let z = zone("z1");
    let (kid, token) = world.mint(&keys, &z).await;

    let before = world.store.begins();
    for _ in 0..10 {
        assert_eq!(keys.signer(&z).await.expect("signer").0, kid);
    }
    assert_eq!(world.store.begins(), before, "warm mints read the store");

    assert!(world.accepts(&keys, &z, &token).await);
    let after_first_verify = world.store.begins();
    assert_eq!(
        after_first_verify,
        before + 1,
        "a cold verification set is one read"
    );
    for _ in 0..10 {
        assert!(world.accepts(&keys, &z, &token).await);
    }
    keys.jwks(&z).await.expect("jwks");
    assert_eq!(
        world.store.begins(),
        after_first_verify,
        "warm verification read the store"
    );

    // After 15 minutes the signer and the set are re-read once each.
    world.clock.advance_millis(CACHE_TTL_MS);
    keys.signer(&z).await.expect("signer");
    assert!(world.accepts(&keys, &z, &token).await);
    assert_eq!(world.store.begins(), after_first_verify + 2);
}

#[tokio::test]
async fn unknown_kids_refresh_at_most_once_per_interval() {
    let world = World::new();
    let keys = world.replica();
    let z = zone("z1");
    let (kid, _) = world.mint(&keys, &z).await;
    keys.verification_keys(&z, &kid).await.expect("keys");

    // The first unknown kid after the load that warmed the cache waits for the interval.
    let base = world.store.begins();
    for i in 0..50 {
        keys.verification_keys(&z, &format!("made-up-{i}"))
            .await
            .expect("keys");
    }
    assert_eq!(world.store.begins(), base);

    world.clock.advance_millis(UNKNOWN_KID_REFRESH_MS);
    for i in 0..50 {
        keys.verification_keys(&z, &format!("made-up-{i}"))
            .await
            .expect("keys");
    }
    assert_eq!(world.store.begins(), base + 1);

    // A known kid never refreshes.
    world.clock.advance_millis(UNKNOWN_KID_REFRESH_MS);
    keys.verification_keys(&z, &kid).await.expect("keys");
    assert_eq!(world.store.begins(), base + 1);
}

#[tokio::test]
async fn undecryptable_keys_fail_verification_and_are_skipped_by_jwks() {
    let world = World::new();
    let z = zone("z1");
    let (good_kid, _) = world.mint(&world.replica(), &z).await;

    // Version 2 sealed under another KEK: it cannot be opened here.
    let foreign = EnvelopeSealer::new(Kek::generate().expect("kek"), []);
    let pem = world.es256.generate_pem().expect("pem");
    let bad = ZoneSigningKey {
        id: "0190f5c2-7a4b-7cc3-9a7e-000000000002".into(),
        zone_id: z.clone(),
        version: 2,
        envelope: foreign.seal(SIGNING_KEY_AAD, pem.as_bytes()).expect("seal"),
        created_at: Timestamp::from_unix_micros(START_MICROS),
    };
    world.insert(&bad).await;

    let keys = world.replica();
    assert_eq!(
        kids(&keys.jwks(&z).await.expect("jwks")),
        [good_kid.as_str()]
    );
    let err = keys
        .verification_keys(&z, &good_kid)
        .await
        .expect_err("a broken key fails verification");
    assert_eq!(err.kind, ErrorKind::Internal);
    assert_eq!(
        err.description.as_deref(),
        Some("signing key decryption failed")
    );
    assert!(err.detail.is_some_and(|d| d.contains(&bad.id)));
    let Err(err) = keys.signer(&z).await else {
        panic!("the newest key is broken, yet a signer loaded");
    };
    assert_eq!(
        err.description.as_deref(),
        Some("signing key decryption failed")
    );
}

#[tokio::test]
async fn a_zone_whose_only_key_is_tampered_has_no_usable_jwks() {
    let world = World::new();
    let z = zone("z1");
    let keys = world.replica();
    world.mint(&keys, &z).await;

    let mut key = world.stored(&z).await.remove(0);
    let last = key.envelope.len() - 1;
    key.envelope[last] ^= 0x01;
    key.id = "0190f5c2-7a4b-7cc3-9a7e-000000000003".into();
    key.version = 2;
    world.insert(&key).await;
    // Let version 1 fall out of the set, leaving only the tampered key.
    world.clock.advance_millis(PREVIOUS_KEY_GRACE_MS);

    let keys = world.replica();
    let err = keys.jwks(&z).await.expect_err("nothing decrypts");
    assert_eq!(err.kind, ErrorKind::Internal);
    assert_eq!(err.code, "internal_error");
    assert_eq!(
        err.description.as_deref(),
        Some("signing key decryption failed")
    );
}
