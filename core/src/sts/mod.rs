//! The Security Token Service's domain (`spec/sts.md`): the token-exchange request, client
//! authentication, the exchange classes and their per-resource pipeline, mandate claims, zone
//! signing keys, and the evidence every decision leaves.

pub mod approvals;
pub mod client_auth;
pub mod directive;
pub mod evidence;
pub mod exchange;
mod federation;
pub mod form;
pub mod gateway_sig;
mod kept;
pub mod keys;
pub mod references;
pub mod revocation;

use std::sync::Arc;

use crate::authority::AuthorityRecord;
use crate::expiry_cache::ExpiryCache;
use crate::ids::{ApplicationId, ZoneId};
use crate::model::{Application, Provider, Resource, SealedSecret};
use crate::policy::PolicyCache;
use crate::ports::{
    AuditSink, AuthorityVersions, Clock, Es256, ExpiringKeys, IdGenerator, MessageAuthenticator,
    PasswordHasher, RateLimiter, SecretSealer, Store,
};

use self::client_auth::{FailureGate, SecretVerifier};
use self::gateway_sig::GatewayVerifier;
use self::keys::ZoneKeys;
use self::references::DelegationRows;

/// How long a looked-up application or resource row is trusted without asking the store
/// again: long enough that steady-state mints skip the read, short enough that an archive,
/// a secret rotation or a scope change lands within seconds on every replica.
pub const ROW_CACHE_MS: i64 = 5_000;
/// Bound on cached rows of each kind.
const ROW_CACHE_MAX: usize = 16_384;

/// The STS's settings (`spec/sts.md §16`).
#[derive(Debug, Clone)]
pub struct StsConfig {
    /// `ISSUER_URL`, verbatim: every mandate's `iss` and the `aud` of session and gateway
    /// mandates.
    pub issuer: String,
    /// `CONTROL_AUDIENCE` (default `caracal-control`).
    pub control_audience: String,
    /// `STS_MINT_RATE_LIMIT_PER_MIN` (default 1000).
    pub mint_limit_per_min: u64,
}

/// The ports the STS reaches the world through.
#[derive(Clone)]
pub struct StsPorts {
    /// Storage.
    pub store: Arc<dyn Store>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// UUIDv7 ids (`sid`, `jti`, event ids).
    pub ids: Arc<dyn IdGenerator>,
    /// Argon2id (bounded concurrency).
    pub hasher: Arc<dyn PasswordHasher>,
    /// Envelope sealer (signing keys, provider secrets).
    pub sealer: Arc<dyn SecretSealer>,
    /// ES256.
    pub es256: Arc<dyn Es256>,
    /// Fixed-window counters (mint limit, authentication failures).
    pub limiter: Arc<dyn RateLimiter>,
    /// Single-use keys (`jti`, Gateway nonces, authentication blocks).
    pub expiring: Arc<dyn ExpiringKeys>,
    /// Audit evidence.
    pub audit: Arc<dyn AuditSink>,
    /// `GATEWAY_STS_HMAC_KEY`, when configured.
    pub gateway_mac: Option<Arc<dyn MessageAuthenticator>>,
    /// Per-zone authority versions (shared with the Coordinator, which advances them).
    pub versions: Arc<dyn AuthorityVersions>,
}

/// Rows the STS keeps between requests on the strength of the zone's authority version
/// (`ports::versions`): the rows behind a granted delegation, and authority records. An entry
/// is used only while the zone's version is still the one read before the rows were loaded,
/// for at most [`ROW_CACHE_MS`], and only to allow: a check that fails on kept rows is
/// decided again on fresh ones. Shared by the HTTP workers, since a mint and the Gateway's
/// exchange of its mandate land on any of them.
#[derive(Debug)]
pub(crate) struct KeptRows {
    /// By (zone, edge id, target Session id): the version and the rows.
    delegations: ExpiryCache<(ZoneId, String, String), (u64, Arc<DelegationRows>)>,
    /// By (zone, record id): the version and the record.
    records: ExpiryCache<(ZoneId, String), (u64, AuthorityRecord)>,
}

impl KeptRows {
    fn new() -> Self {
        Self {
            delegations: ExpiryCache::new(ROW_CACHE_MAX),
            records: ExpiryCache::new(ROW_CACHE_MAX),
        }
    }
}

/// The STS use cases over their ports and caches.
pub struct Sts {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdGenerator>,
    sealer: Arc<dyn SecretSealer>,
    es256: Arc<dyn Es256>,
    limiter: Arc<dyn RateLimiter>,
    expiring: Arc<dyn ExpiringKeys>,
    audit: Arc<dyn AuditSink>,
    secrets: SecretVerifier,
    /// Application rows by (zone, id), trusted for [`ROW_CACHE_MS`].
    apps: ExpiryCache<(ZoneId, ApplicationId), Application>,
    /// Resource rows by (zone, identifier or id), trusted for [`ROW_CACHE_MS`].
    resources: ExpiryCache<(ZoneId, String), Resource>,
    /// Credential providers by (zone, id), trusted for [`ROW_CACHE_MS`].
    providers: ExpiryCache<(ZoneId, String), Provider>,
    /// Sealed provider secrets by reference, trusted for [`ROW_CACHE_MS`]; opened per use, so
    /// plaintext never outlives the request.
    sealed: ExpiryCache<String, SealedSecret>,
    versions: Arc<dyn AuthorityVersions>,
    kept: Arc<KeptRows>,
    failures: FailureGate,
    gateway: GatewayVerifier,
    /// Zone signing keys and their caches.
    pub keys: Arc<ZoneKeys>,
    /// Active policy per zone.
    pub policies: Arc<PolicyCache>,
    config: StsConfig,
    /// Federated users (§9): the issuer key-set fetcher and its cache.
    federation: federation::Federation,
}

impl Sts {
    /// The same STS over another store, for one HTTP worker thread: the signing keys and the
    /// policy cache are shared (their invalidation consumers act on every worker at once), and
    /// so are the version-checked rows (`KeptRows`); the row, verified-secret and issuer-key
    /// caches, which are trusted for a bounded time and never invalidated, are the worker's
    /// own.
    pub fn with_store(&self, store: Arc<dyn Store>) -> Self {
        Self {
            store,
            clock: Arc::clone(&self.clock),
            ids: Arc::clone(&self.ids),
            sealer: Arc::clone(&self.sealer),
            es256: Arc::clone(&self.es256),
            limiter: Arc::clone(&self.limiter),
            expiring: Arc::clone(&self.expiring),
            audit: Arc::clone(&self.audit),
            secrets: self.secrets.fresh(),
            apps: ExpiryCache::new(ROW_CACHE_MAX),
            resources: ExpiryCache::new(ROW_CACHE_MAX),
            providers: ExpiryCache::new(ROW_CACHE_MAX),
            sealed: ExpiryCache::new(ROW_CACHE_MAX),
            versions: Arc::clone(&self.versions),
            kept: Arc::clone(&self.kept),
            failures: self.failures.clone(),
            gateway: self.gateway.clone(),
            keys: Arc::clone(&self.keys),
            policies: Arc::clone(&self.policies),
            config: self.config.clone(),
            federation: self.federation.fresh(),
        }
    }

    /// Wires the STS.
    pub fn new(
        ports: StsPorts,
        keys: Arc<ZoneKeys>,
        policies: Arc<PolicyCache>,
        config: StsConfig,
    ) -> Self {
        Self {
            secrets: SecretVerifier::new(ports.hasher.clone()),
            apps: ExpiryCache::new(ROW_CACHE_MAX),
            resources: ExpiryCache::new(ROW_CACHE_MAX),
            providers: ExpiryCache::new(ROW_CACHE_MAX),
            sealed: ExpiryCache::new(ROW_CACHE_MAX),
            versions: ports.versions,
            kept: Arc::new(KeptRows::new()),
            failures: FailureGate::new(ports.limiter.clone(), ports.expiring.clone()),
            gateway: GatewayVerifier::new(ports.gateway_mac.clone(), ports.expiring.clone()),
            store: ports.store,
            clock: ports.clock,
            ids: ports.ids,
            sealer: ports.sealer,
            es256: ports.es256,
            limiter: ports.limiter,
            expiring: ports.expiring,
            audit: ports.audit,
            keys,
            policies,
            config,
            federation: federation::Federation::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &StsConfig {
        &self.config
    }

    /// The Gateway envelope verifier (the internal policy routes use it too).
    pub fn gateway_verifier(&self) -> &GatewayVerifier {
        &self.gateway
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}
