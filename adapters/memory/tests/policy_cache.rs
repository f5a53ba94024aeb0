//! The STS's zone policy cache over the memory store: what it installs for each state of a
//! zone's policy set, and what it keeps when the store fails (`spec/sts.md §10.1`, §11).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use caracal_core::attribution::Attribution;
use caracal_core::error::{ErrorKind, StoreError};
use caracal_core::ids::{PolicyId, PolicySetId, PolicySetVersionId, PolicyVersionId, ZoneId};
use caracal_core::manage::policy_sets::manifest_sha256;
use caracal_core::model::{Policy, PolicySet, PolicySetVersion, PolicyVersion, Zone};
use caracal_core::policy::{DecisionInput, PolicyCache};
use caracal_core::ports::store::{Store, UnitOfWork, ZoneScope};
use caracal_core::time::Timestamp;
use caracal_memory::{FixedClock, MemoryStore};
use serde_json::json;

/// The memory store with an outage switch.
struct Flaky {
    inner: MemoryStore,
    down: AtomicBool,
}

#[async_trait]
impl Store for Flaky {
    async fn begin(&self, scope: &ZoneScope) -> Result<Box<dyn UnitOfWork>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("connection refused".into()));
        }
        self.inner.begin(scope).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

const GRANTS: &str = "# caracal:data-document\npackage caracal.authz\nimport rego.v1\n\
    app_ids := {\"app\": \"app-1\"}\n\
    grants := {\"resource://r\": {\"application\": \"app\", \"roles\": {}}}\n";

fn at() -> Timestamp {
    Timestamp::from_unix_micros(1_780_000_000_000_000)
}

fn bootstrap(zone: &ZoneId) -> DecisionInput {
    serde_json::from_value(json!({
        "principal": {"type": "Application", "id": "app-1", "zone_id": zone},
        "resource": {"type": "Resource", "id": "res", "identifier": "resource://r", "scopes": []},
        "action": {"id": "TokenExchange"},
        "context": {"actor_claims": {}, "challenge_resolved": false,
                    "requested_scopes": ["agent:lifecycle"]}
    }))
    .expect("input")
}

struct Seeder<'a> {
    store: &'a MemoryStore,
    zone: ZoneId,
    n: usize,
}

impl Seeder<'_> {
    fn id(&mut self, kind: &str) -> String {
        self.n += 1;
        format!("{}-{kind}-{}", self.zone, self.n)
    }

    async fn zone(&self) {
        let mut uow = self.store.begin(&ZoneScope::All).await.expect("begin");
        uow.save_zone(&Zone {
            id: self.zone.clone(),
            slug: self.zone.to_string(),
            name: "Cache zone".into(),
            dcr_enabled: false,
            operator_coauthor_badge: false,
            operator_governed: false,
            attr: Attribution::created("admin:test", false, at()),
            archived_at: None,
        })
        .await
        .expect("zone");
        uow.commit().await.expect("commit");
    }

    /// Stores one policy version per document, a set version naming them (with `digest`, or
    /// the right one), and makes it the zone's active version.
    async fn activate(&mut self, documents: &[&str], digest: Option<&str>) -> String {
        let mut uow = self.store.begin(&ZoneScope::All).await.expect("begin");
        let mut manifest = Vec::new();
        for content in documents {
            let policy = Policy {
                id: PolicyId::parse(&self.id("pol")).expect("id"),
                zone_id: self.zone.clone(),
                name: self.id("name"),
                description: None,
                attr: Attribution::created("admin:test", false, at()),
                archived_at: None,
            };
            uow.save_policy(&policy).await.expect("policy");
            let version = PolicyVersion {
                id: PolicyVersionId::parse(&self.id("pv")).expect("id"),
                policy_id: policy.id.clone(),
                zone_id: self.zone.clone(),
                version: 1,
                content: (*content).to_owned(),
                content_sha256: caracal_core::digest::sha256_hex(content.as_bytes()),
                schema_version: "2026-05-20".into(),
                created_by: "admin:test".into(),
                created_via_operator: false,
                created_at: at(),
                archived_at: None,
            };
            uow.save_policy_version(&version).await.expect("version");
            manifest.push(version.id);
        }
        let set = PolicySet {
            id: PolicySetId::parse(&self.id("ps")).expect("id"),
            zone_id: self.zone.clone(),
            name: self.id("set"),
            description: None,
            active_version_id: None,
            attr: Attribution::created("admin:test", false, at()),
            archived_at: None,
        };
        let version = PolicySetVersion {
            id: PolicySetVersionId::parse(&self.id("psv")).expect("id"),
            policy_set_id: set.id.clone(),
            zone_id: self.zone.clone(),
            version: 1,
            manifest_sha256: digest
                .map(str::to_owned)
                .unwrap_or_else(|| manifest_sha256(&manifest)),
            manifest,
            schema_version: "2026-05-20".into(),
            created_by: "admin:test".into(),
            created_via_operator: false,
            created_at: at(),
        };
        uow.insert_policy_set_version(&version)
            .await
            .expect("set version");
        for mut other in uow.list_active_policy_sets(&self.zone).await.expect("sets") {
            other.active_version_id = None;
            uow.save_policy_set(&other).await.expect("deactivate");
        }
        let mut active = set;
        active.active_version_id = Some(version.id.clone());
        uow.save_policy_set(&active).await.expect("activate");
        uow.commit().await.expect("commit");
        version.id.to_string()
    }
}

#[tokio::test]
async fn loads_verifies_and_survives_outages() {
    let memory = MemoryStore::new();
    let store = Arc::new(Flaky {
        inner: memory.clone(),
        down: AtomicBool::new(false),
    });
    let clock = Arc::new(FixedClock::new(at()));
    let cache = PolicyCache::new(store.clone(), clock.clone());
    let zone = ZoneId::parse("zone-cache").expect("zone");
    let mut seed = Seeder {
        store: &memory,
        zone: zone.clone(),
        n: 0,
    };
    seed.zone().await;

    // Never loaded: not loaded.
    assert_eq!(
        cache.status(&zone).to_json(),
        json!({"zone_id": "zone-cache", "loaded": false})
    );

    // No active set: the deny-all, reported as loaded.
    let loaded = cache.bundle(&zone).await.expect("deny-all");
    assert!(loaded.bundle.is_deny_all());
    assert_eq!(
        loaded
            .bundle
            .decide(&bootstrap(&zone))
            .expect("decision")
            .deny_reason(),
        Some("no_active_policy_set")
    );
    assert_eq!(
        cache.status(&zone).to_json(),
        json!({"zone_id": "zone-cache", "loaded": true, "manifest_sha256": "no_active_policy_set",
               "loaded_at": "2026-05-28T20:26:40Z"})
    );

    // An active version compiles once; an unchanged reload keeps it as it is.
    let version = seed.activate(&[GRANTS], None).await;
    let loaded = cache.reload(&zone).await.expect("loads");
    assert_eq!(
        loaded.policy_set_version_id.as_deref(),
        Some(version.as_str())
    );
    assert_eq!(
        loaded
            .bundle
            .decide(&bootstrap(&zone))
            .expect("decision")
            .policy_name(),
        Some("caracal-bootstrap")
    );
    clock.advance_millis(5_000);
    let again = cache.reload(&zone).await.expect("reloads");
    assert!(Arc::ptr_eq(&loaded, &again));
    let status = cache.status(&zone).to_json();
    assert_eq!(status["policy_set_version_id"], version);
    assert_eq!(status["manifest_sha256"], loaded.manifest_sha256);
    assert_eq!(status["age_seconds"], 5);
    assert_eq!(cache.known_zones(), vec![zone.clone()]);

    // A store outage keeps the cached bundle; a zone never loaded fails.
    store.down.store(true, Ordering::SeqCst);
    assert!(cache.reload(&zone).await.is_err());
    let kept = cache.bundle(&zone).await.expect("keeps the cached bundle");
    assert!(Arc::ptr_eq(&loaded, &kept));
    let other = ZoneId::parse("zone-unseen").expect("zone");
    let err = cache.bundle(&other).await.expect_err("never loaded");
    assert_eq!(
        (err.kind, err.code),
        (ErrorKind::Unavailable, "policy_eval_failed")
    );
    store.down.store(false, Ordering::SeqCst);

    // A manifest whose digest does not match is never compiled; the cached bundle stays.
    seed.activate(&[GRANTS], Some(&"0".repeat(64))).await;
    let err = cache.reload(&zone).await.expect_err("digest mismatch");
    assert_eq!(err.code, "policy_eval_failed");
    assert!(Arc::ptr_eq(
        &loaded,
        &cache.bundle(&zone).await.expect("still cached")
    ));

    // Documents that do not compile together install the deny-all; the load fails, later
    // decisions deny.
    let conflicting =
        "# caracal:data-document\npackage caracal.authz\napp_ids := {\"app\": \"app-2\"}\n";
    seed.activate(&[GRANTS, conflicting], None).await;
    assert!(cache.reload(&zone).await.is_err());
    let fallback = cache.bundle(&zone).await.expect("deny-all installed");
    assert!(fallback.bundle.is_deny_all());
    assert_eq!(fallback.manifest_sha256, "no_active_policy_set");

    // A repaired version loads again; invalidation forgets the zone.
    let repaired = seed.activate(&[GRANTS], None).await;
    let loaded = cache.reload(&zone).await.expect("repaired");
    assert_eq!(
        loaded.policy_set_version_id.as_deref(),
        Some(repaired.as_str())
    );
    cache.invalidate(&zone);
    assert!(cache.known_zones().is_empty());
    assert!(!cache.status(&zone).loaded);
    let reloaded = cache.bundle(&zone).await.expect("loads on next use");
    assert!(!reloaded.bundle.is_deny_all());
}
