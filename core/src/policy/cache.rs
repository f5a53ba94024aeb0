//! The STS's per-zone policy cache (`spec/sts.md §10.1`): each zone's active policy set version,
//! loaded from the store, verified against its manifest digest and compiled once, so decisions
//! on a warm cache never touch the store.
//!
//! Failure rules, all fail-closed:
//! - no active policy set → the deny-all (`no_active_policy_set`);
//! - a document that does not parse or a bundle that does not compile → the deny-all is
//!   installed and the load that found it fails (503); later decisions deny;
//! - a store failure, a manifest whose digest does not match or a missing policy version keeps
//!   the bundle already cached; a zone that never loaded fails (503).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::SecondsFormat;
use serde_json::{json, Value};

use crate::error::{Error, ErrorKind};
use crate::ids::ZoneId;
use crate::manage::policy_sets::manifest_sha256;
use crate::policy_document;
use crate::ports::store::{Store, ZoneScope};
use crate::ports::Clock;
use crate::time::Timestamp;

use super::PolicyBundle;

/// The manifest digest reported for the deny-all.
pub const NO_ACTIVE_POLICY_SET: &str = "no_active_policy_set";

/// A zone's compiled bundle and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedBundle {
    /// The compiled bundle (the deny-all when the zone has none).
    pub bundle: PolicyBundle,
    /// The policy set version it was compiled from.
    pub policy_set_version_id: Option<String>,
    /// That version's manifest digest, or `no_active_policy_set`.
    pub manifest_sha256: String,
    /// When it was installed.
    pub loaded_at: Timestamp,
}

/// What `GET /internal/policy/status/{zoneID}` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyStatus {
    /// The zone asked about.
    pub zone_id: String,
    /// Whether a bundle (possibly the deny-all) is installed.
    pub loaded: bool,
    /// The installed version.
    pub policy_set_version_id: Option<String>,
    /// The installed manifest digest.
    pub manifest_sha256: Option<String>,
    /// When it was installed.
    pub loaded_at: Option<Timestamp>,
    /// Whole seconds since then.
    pub age_seconds: Option<i64>,
}

impl PolicyStatus {
    /// The route's body: optional members omitted, `loaded_at` in RFC 3339 UTC seconds and
    /// `age_seconds` omitted when 0.
    pub fn to_json(&self) -> Value {
        let mut body = json!({ "zone_id": self.zone_id, "loaded": self.loaded });
        if let Some(v) = &self.policy_set_version_id {
            body["policy_set_version_id"] = json!(v);
        }
        if let Some(sha) = &self.manifest_sha256 {
            body["manifest_sha256"] = json!(sha);
        }
        if let Some(at) = &self.loaded_at {
            body["loaded_at"] = json!(at.as_datetime().to_rfc3339_opts(SecondsFormat::Secs, true));
        }
        if let Some(age) = self.age_seconds.filter(|a| *a != 0) {
            body["age_seconds"] = json!(age);
        }
        body
    }
}

/// Why a load did not install the zone's active bundle.
enum LoadFailure {
    /// Keep what is cached (store outage, digest mismatch, missing version).
    Transient(String),
    /// The bundle itself is invalid: install the deny-all.
    Invalid(String),
}

fn unavailable(detail: String) -> Error {
    Error::new(ErrorKind::Unavailable, "policy_eval_failed")
        .describe("policy evaluation unavailable")
        .with_detail(detail)
}

/// The zones' bundles.
pub struct PolicyCache {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    zones: RwLock<HashMap<ZoneId, Arc<LoadedBundle>>>,
}

impl PolicyCache {
    /// An empty cache over the store.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            zones: RwLock::new(HashMap::new()),
        }
    }

    fn cached(&self, zone: &ZoneId) -> Option<Arc<LoadedBundle>> {
        // A poisoned lock only means a panic elsewhere mid-insert of a whole `Arc`; the map is
        // still consistent, so keep serving it.
        let zones = self.zones.read().unwrap_or_else(|p| p.into_inner());
        zones.get(zone).cloned()
    }

    fn install(&self, zone: &ZoneId, loaded: LoadedBundle) -> Arc<LoadedBundle> {
        let loaded = Arc::new(loaded);
        let mut zones = self.zones.write().unwrap_or_else(|p| p.into_inner());
        zones.insert(zone.clone(), loaded.clone());
        loaded
    }

    fn deny_all(&self) -> LoadedBundle {
        LoadedBundle {
            bundle: PolicyBundle::deny_all(),
            policy_set_version_id: None,
            manifest_sha256: NO_ACTIVE_POLICY_SET.to_owned(),
            loaded_at: self.clock.now(),
        }
    }

    /// The zone's bundle, loading it on first use.
    pub async fn bundle(&self, zone: &ZoneId) -> Result<Arc<LoadedBundle>, Error> {
        match self.cached(zone) {
            Some(loaded) => Ok(loaded),
            None => self.reload(zone).await,
        }
    }

    /// Loads the zone's active version now (startup, `caracal.policy.invalidate`, the poll).
    /// An unchanged version is kept as it is. On failure the error says why; a store outage
    /// leaves the cached bundle serving, an invalid bundle leaves the deny-all.
    pub async fn reload(&self, zone: &ZoneId) -> Result<Arc<LoadedBundle>, Error> {
        let current = self.cached(zone);
        match self.load(zone, current.as_deref()).await {
            Ok(Some(loaded)) => Ok(self.install(zone, loaded)),
            Ok(None) => current.ok_or_else(|| unavailable("policy cache lost its entry".into())),
            // The cached bundle (if any) stays in place; the caller learns the load failed.
            Err(LoadFailure::Transient(detail)) => Err(unavailable(detail)),
            Err(LoadFailure::Invalid(detail)) => {
                self.install(zone, self.deny_all());
                Err(unavailable(detail))
            }
        }
    }

    /// Drops the zone, so its next decision loads afresh.
    pub fn invalidate(&self, zone: &ZoneId) {
        let mut zones = self.zones.write().unwrap_or_else(|p| p.into_inner());
        zones.remove(zone);
    }

    /// Zones with a bundle installed (what the poll refreshes).
    pub fn known_zones(&self) -> Vec<ZoneId> {
        let zones = self.zones.read().unwrap_or_else(|p| p.into_inner());
        zones.keys().cloned().collect()
    }

    /// What the zone has installed.
    pub fn status(&self, zone: &ZoneId) -> PolicyStatus {
        match self.cached(zone) {
            None => PolicyStatus {
                zone_id: zone.to_string(),
                loaded: false,
                policy_set_version_id: None,
                manifest_sha256: None,
                loaded_at: None,
                age_seconds: None,
            },
            Some(loaded) => PolicyStatus {
                zone_id: zone.to_string(),
                loaded: true,
                policy_set_version_id: loaded.policy_set_version_id.clone(),
                manifest_sha256: Some(loaded.manifest_sha256.clone()),
                loaded_at: Some(loaded.loaded_at),
                age_seconds: Some(
                    (self.clock.now().unix_micros() - loaded.loaded_at.unix_micros()) / 1_000_000,
                ),
            },
        }
    }

    /// Reads and compiles the active version; `Ok(None)` when `current` already is it.
    async fn load(
        &self,
        zone: &ZoneId,
        current: Option<&LoadedBundle>,
    ) -> Result<Option<LoadedBundle>, LoadFailure> {
        let store = |e: crate::error::StoreError| LoadFailure::Transient(e.to_string());
        let mut uow = self
            .store
            .begin(&ZoneScope::Zone(zone.clone()))
            .await
            .map_err(store)?;
        let active = uow
            .list_active_policy_sets(zone)
            .await
            .map_err(store)?
            .into_iter()
            .find_map(|set| set.active_version_id);
        let Some(version_id) = active else {
            if current.is_some_and(|c| c.bundle.is_deny_all()) {
                return Ok(None);
            }
            return Ok(Some(self.deny_all()));
        };
        let version = uow
            .get_policy_set_version(zone, &version_id)
            .await
            .map_err(store)?
            .ok_or_else(|| {
                LoadFailure::Transient(format!("active policy set version {version_id} is missing"))
            })?;
        // The manifest must re-serialise to the digest recorded with it, so a tampered or
        // half-written manifest is never compiled.
        let digest = manifest_sha256(&version.manifest);
        if digest != version.manifest_sha256 {
            return Err(LoadFailure::Transient(format!(
                "policy manifest hash mismatch for zone {zone}"
            )));
        }
        let unchanged = current.is_some_and(|c| {
            c.manifest_sha256 == digest
                && c.policy_set_version_id.as_deref() == Some(version.id.as_str())
        });
        if unchanged {
            return Ok(None);
        }
        let mut documents = Vec::with_capacity(version.manifest.len());
        for id in &version.manifest {
            let policy = uow
                .get_policy_version(zone, id)
                .await
                .map_err(store)?
                .ok_or_else(|| {
                    LoadFailure::Transient(format!(
                        "policy bundle incomplete for zone {zone}: policy version {id} is missing"
                    ))
                })?;
            let document = policy_document::parse(&policy.content).map_err(|e| {
                LoadFailure::Invalid(format!("policy version {id} is invalid: {}", e.code))
            })?;
            documents.push(document);
        }
        let bundle = PolicyBundle::compile(&documents)
            .map_err(|e| LoadFailure::Invalid(format!("compile policy bundle: {e}")))?;
        Ok(Some(LoadedBundle {
            bundle,
            policy_set_version_id: Some(version.id.to_string()),
            manifest_sha256: digest,
            loaded_at: self.clock.now(),
        }))
    }
}
