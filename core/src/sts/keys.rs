//! Per-zone ES256 signing keys (`spec/sts.md §5`): lazy creation on a zone's first mint,
//! rotation, the verification set and the JWKS document.
//!
//! Keys are rows of the store (`SigningKeyRepo`), the private key sealed as a SEC1 PEM under
//! the AAD [`SIGNING_KEY_AAD`]; the row id is the JWT `kid`. The hot path must not reach the
//! store on a warm cache (`ARCHITECTURE.md`), so this process keeps, per zone:
//!
//! - the newest key's decrypted signer, for 15 minutes;
//! - the verification set (newest key, plus the previous one while the newest is under 24 h
//!   old), for 15 minutes or until the previous key drops out, whichever is sooner.
//!
//! Rotation here clears this process's entries; other replicas learn through
//! `caracal.keys.invalidate` ([`ZoneKeys::invalidate`]) or when their entries expire. A token
//! whose `kid` is not in the cached set triggers one re-read, at most once per zone every
//! [`UNKNOWN_KID_REFRESH_MS`], so a rotation elsewhere is picked up at once while a stream of
//! made-up kids cannot turn into a stream of store reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::authority::ZoneSigningKey;
use crate::error::{Error, ErrorKind};
use crate::expiry_cache::ExpiryCache;
use crate::ids::ZoneId;
use crate::mandate::{JwkSet, VerifyingKey, VerifyingKeys};
use crate::ports::{Clock, Es256, Es256Signer, IdGenerator, SecretSealer, Store, ZoneScope};
use crate::time::Timestamp;

/// Associated data every zone signing key is sealed under (upstream's secret-store reference).
pub const SIGNING_KEY_AAD: &str = "caracal/secrets/zoneSigningKey";
/// How long a decrypted signer or a verification set is reused.
pub const CACHE_TTL_MS: i64 = 15 * 60 * 1_000;
/// How long the previous key keeps verifying after a newer key is created. Longer than the
/// largest mandate TTL (1 h), so no mandate outlives the key that can verify it.
pub const PREVIOUS_KEY_GRACE_MS: i64 = 24 * 60 * 60 * 1_000;
/// Minimum spacing of store re-reads caused by an unknown `kid`, per zone.
pub const UNKNOWN_KID_REFRESH_MS: i64 = 5_000;
/// Zones whose keys one process keeps at a time.
const CACHED_ZONES: usize = 4_096;

/// A zone's signing keys over the store, the sealer and the ES256 implementation.
pub struct ZoneKeys {
    store: Arc<dyn Store>,
    sealer: Arc<dyn SecretSealer>,
    es256: Arc<dyn Es256>,
    ids: Arc<dyn IdGenerator>,
    clock: Arc<dyn Clock>,
    signers: ExpiryCache<ZoneId, (String, Arc<dyn Es256Signer>)>,
    verifiers: ExpiryCache<ZoneId, VerifyingKeys>,
    refreshes: RefreshGate,
}

impl ZoneKeys {
    /// Keys over these ports, with empty caches.
    pub fn new(
        store: Arc<dyn Store>,
        sealer: Arc<dyn SecretSealer>,
        es256: Arc<dyn Es256>,
        ids: Arc<dyn IdGenerator>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            sealer,
            es256,
            ids,
            clock,
            signers: ExpiryCache::new(CACHED_ZONES),
            verifiers: ExpiryCache::new(CACHED_ZONES),
            refreshes: RefreshGate::default(),
        }
    }

    /// The zone's newest key as `(kid, signer)`, creating version 1 on the zone's first mint.
    /// A warm call does no store round trip.
    pub async fn signer(&self, zone: &ZoneId) -> Result<(String, Arc<dyn Es256Signer>), Error> {
        let now = self.clock.now();
        if let Some(hit) = self.signers.get(zone, now) {
            return Ok(hit);
        }
        let mut unit = self.store.begin(&ZoneScope::Zone(zone.clone())).await?;
        let mut newest = unit.latest_signing_keys(zone, 1).await?.into_iter().next();
        if newest.is_none() {
            unit.lock(&lock_name(zone)).await?;
            // Re-read under the lock: a mint that raced us may have created the key while we
            // waited, and a second version 1 would fail (or worse, fork the zone's key).
            newest = unit.latest_signing_keys(zone, 1).await?.into_iter().next();
        }
        let (kid, signer) = match newest {
            Some(key) => {
                drop(unit);
                let signer = self.open(&key).map_err(decryption_failed)?;
                (key.id, signer)
            }
            None => {
                let (key, signer) = self.create(zone, 1, now)?;
                unit.insert_signing_key(&key).await?;
                unit.commit().await?;
                // A verification set cached before the first key existed is now wrong.
                self.verifiers.remove(zone);
                (key.id, signer)
            }
        };
        self.signers.put(
            zone.clone(),
            (kid.clone(), Arc::clone(&signer)),
            now.plus_millis(CACHE_TTL_MS),
            now,
        );
        Ok((kid, signer))
    }

    /// The zone's verification set for a token signed with `kid` (newest key first; empty if
    /// the zone has never minted). Served from cache unless `kid` is missing from it, in which
    /// case the store is re-read at most once per zone every [`UNKNOWN_KID_REFRESH_MS`]. Any
    /// key of the set that fails to decrypt fails the whole call: verification must not
    /// silently lose a key.
    pub async fn verification_keys(
        &self,
        zone: &ZoneId,
        kid: &str,
    ) -> Result<VerifyingKeys, Error> {
        let now = self.clock.now();
        if let Some(keys) = self.verifiers.get(zone, now) {
            if keys.contains(kid) || !self.refreshes.try_claim(zone, now) {
                return Ok(keys);
            }
        } else {
            // A load for a miss counts as the zone's refresh, so the unknown kid that caused
            // the miss cannot cause a second read right after it.
            self.refreshes.record(zone, now);
        }
        let (published, until) = self.published(zone, now).await?;
        let mut keys = Vec::with_capacity(published.len());
        for key in &published {
            let signer = self.open(key).map_err(decryption_failed)?;
            keys.push(VerifyingKey::new(
                key.id.clone(),
                signer.public_point().to_vec(),
            ));
        }
        let keys = VerifyingKeys::new(keys);
        self.verifiers.put(zone.clone(), keys.clone(), until, now);
        Ok(keys)
    }

    /// The zone's JWKS document (`{"keys":[…]}`, newest first). Never creates a key: a zone
    /// that has never minted is `404 resource_not_found "zone signing key not found"`. Keys
    /// that fail to decrypt are left out; if none remain, `500 "signing key decryption
    /// failed"`.
    pub async fn jwks(&self, zone: &ZoneId) -> Result<Value, Error> {
        let now = self.clock.now();
        if let Some(keys) = self.verifiers.get(zone, now).filter(|k| !k.is_empty()) {
            return Ok(JwkSet::from_keys(&keys).to_value());
        }
        // Read uncached: the route is public, and caching misses for arbitrary zone ids
        // would let anyone fill the cache.
        let (published, until) = self.published(zone, now).await?;
        if published.is_empty() {
            return Err(
                Error::not_found("resource_not_found").describe("zone signing key not found")
            );
        }
        let mut keys = Vec::with_capacity(published.len());
        let mut failures = Vec::new();
        for key in &published {
            match self.open(key) {
                Ok(signer) => keys.push(VerifyingKey::new(
                    key.id.clone(),
                    signer.public_point().to_vec(),
                )),
                Err(detail) => failures.push(detail),
            }
        }
        if keys.is_empty() {
            return Err(decryption_failed(failures.join("; ")));
        }
        let keys = VerifyingKeys::new(keys);
        if failures.is_empty() {
            // The complete set is exactly what verification would load; keep it.
            self.verifiers.put(zone.clone(), keys.clone(), until, now);
        }
        Ok(JwkSet::from_keys(&keys).to_value())
    }

    /// Creates the zone's next key version under the zone's lock and returns its `kid`. This
    /// process's caches for the zone are cleared; the previous key keeps verifying until 24 h
    /// after the new key's creation.
    pub async fn rotate(&self, zone: &ZoneId) -> Result<String, Error> {
        let now = self.clock.now();
        let mut unit = self.store.begin(&ZoneScope::Zone(zone.clone())).await?;
        // A key for a zone that does not exist (or is archived) would be a row nobody can use;
        // refuse before writing anything.
        if unit
            .get_zone(zone)
            .await?
            .is_none_or(|z| z.archived_at.is_some())
        {
            return Err(Error::not_found("zone_not_found"));
        }
        unit.lock(&lock_name(zone)).await?;
        let version = match unit.latest_signing_keys(zone, 1).await?.first() {
            Some(newest) => newest
                .version
                .checked_add(1)
                .ok_or_else(|| Error::internal(format!("zone {zone}: key version overflow")))?,
            None => 1,
        };
        let (key, _signer) = self.create(zone, version, now)?;
        unit.insert_signing_key(&key).await?;
        unit.commit().await?;
        self.invalidate(zone);
        Ok(key.id)
    }

    /// Forgets everything cached for `zone` (a `caracal.keys.invalidate` message, or a rotation
    /// here).
    pub fn invalidate(&self, zone: &ZoneId) {
        self.signers.remove(zone);
        self.verifiers.remove(zone);
        self.refreshes.forget(zone);
    }

    /// The keys a verifier accepts now (newest first) and until when that answer holds.
    async fn published(
        &self,
        zone: &ZoneId,
        now: Timestamp,
    ) -> Result<(Vec<ZoneSigningKey>, Timestamp), Error> {
        let mut unit = self.store.begin(&ZoneScope::Zone(zone.clone())).await?;
        let mut keys = unit.latest_signing_keys(zone, 2).await?;
        drop(unit);
        let mut until = now.plus_millis(CACHE_TTL_MS);
        if let Some(newest) = keys.first() {
            let previous_ends = newest.created_at.plus_millis(PREVIOUS_KEY_GRACE_MS);
            if now < previous_ends {
                if keys.len() > 1 {
                    until = until.min(previous_ends);
                }
            } else {
                keys.truncate(1);
            }
        }
        Ok((keys, until))
    }

    /// A fresh key of `version`: the sealed row and its loaded signer.
    fn create(
        &self,
        zone: &ZoneId,
        version: i32,
        now: Timestamp,
    ) -> Result<(ZoneSigningKey, Arc<dyn Es256Signer>), Error> {
        let pem = self.es256.generate_pem().map_err(|err| {
            Error::internal(format!("zone {zone}: signing key generation: {err}"))
        })?;
        let signer = self.es256.load_signer(&pem);
        let envelope = self.sealer.seal(SIGNING_KEY_AAD, pem.as_bytes());
        wipe(pem.into_bytes());
        let signer = signer.map_err(|err| {
            Error::internal(format!("zone {zone}: generated key unusable: {err}"))
        })?;
        let envelope = envelope
            .map_err(|err| Error::internal(format!("zone {zone}: signing key sealing: {err}")))?;
        let key = ZoneSigningKey {
            id: self.ids.new_id(),
            zone_id: zone.clone(),
            version,
            envelope,
            created_at: now,
        };
        Ok((key, signer))
    }

    /// Decrypts and loads a stored key; the error is log detail naming the key.
    fn open(&self, key: &ZoneSigningKey) -> Result<Arc<dyn Es256Signer>, String> {
        let plaintext = self
            .sealer
            .open(SIGNING_KEY_AAD, &key.envelope)
            .map_err(|err| format!("zone {} kid {}: {err}", key.zone_id, key.id))?;
        let signer = match std::str::from_utf8(&plaintext) {
            Ok(pem) => self
                .es256
                .load_signer(pem)
                .map_err(|err| format!("zone {} kid {}: {err}", key.zone_id, key.id)),
            Err(_) => Err(format!(
                "zone {} kid {}: plaintext is not a PEM document",
                key.zone_id, key.id
            )),
        };
        wipe(plaintext);
        signer
    }
}

/// The advisory lock serialising key creation for a zone (upstream's name).
fn lock_name(zone: &ZoneId) -> String {
    format!("zone_signing_key:{zone}")
}

/// `500 internal_error "signing key decryption failed"`, what failed kept for the log.
fn decryption_failed(detail: String) -> Error {
    Error::new(ErrorKind::Internal, "internal_error")
        .describe("signing key decryption failed")
        .with_detail(detail)
}

/// Best-effort erasure of a decrypted private key before its buffer is freed. `black_box`
/// keeps the writes from being optimised away as dead stores; copies inside the crypto
/// adapter are its own business.
fn wipe(mut bytes: Vec<u8>) {
    bytes.fill(0);
    std::hint::black_box(&mut bytes);
}

/// When each zone last re-read its keys, to space out refreshes caused by unknown kids.
#[derive(Default)]
struct RefreshGate {
    last: Mutex<HashMap<ZoneId, Timestamp>>,
}

impl RefreshGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ZoneId, Timestamp>> {
        // Every mutation is a single map call, so a poisoned map is still consistent.
        self.last
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes the zone's refresh slot if its last refresh is at least the spacing old. Checking
    /// and recording happen under one lock, so concurrent unknown-kid requests yield one read.
    fn try_claim(&self, zone: &ZoneId, now: Timestamp) -> bool {
        let mut last = self.lock();
        if last
            .get(zone)
            .is_some_and(|at| now < at.plus_millis(UNKNOWN_KID_REFRESH_MS))
        {
            return false;
        }
        Self::insert(&mut last, zone, now);
        true
    }

    /// Notes a refresh that happened for another reason (a cache miss).
    fn record(&self, zone: &ZoneId, now: Timestamp) {
        Self::insert(&mut self.lock(), zone, now);
    }

    fn forget(&self, zone: &ZoneId) {
        self.lock().remove(zone);
    }

    fn insert(last: &mut HashMap<ZoneId, Timestamp>, zone: &ZoneId, now: Timestamp) {
        if last.len() >= CACHED_ZONES {
            // Entries older than the spacing no longer hold anything back.
            last.retain(|_, at| now < at.plus_millis(UNKNOWN_KID_REFRESH_MS));
        }
        last.insert(zone.clone(), now);
    }
}
