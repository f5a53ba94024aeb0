//! Management use cases: what the API service's `/v1` routes do. Each public method is one use
//! case; handlers parse, call one of these, and map the result.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::ids::{OutboxId, ZoneId};
use crate::model::{Capability, OutboxMessage, TokenScope, Zone};
use crate::ports::store::{Store, UnitOfWork, ZoneScope};
use crate::ports::{
    Clock, IdGenerator, MessageAuthenticator, PasswordHasher, SecretGenerator, SecretSealer,
};

pub mod admin_audit;
pub mod admin_tokens;
pub mod applications;
pub mod approvals;
pub mod auth;
pub mod grants;
pub mod policies;
pub mod policy_sets;
pub mod providers;
pub mod resources;
pub mod subject_issuers;
pub mod zones;

/// Tunables of the management plane.
#[derive(Debug, Clone)]
pub struct ManagementConfig {
    /// The Control plugin's resource identifier (`CONTROL_AUDIENCE`).
    pub control_audience: String,
    /// `API_MAX_RESOURCES_PER_ZONE`.
    pub max_resources_per_zone: u64,
}

impl Default for ManagementConfig {
    fn default() -> Self {
        Self {
            control_audience: "caracal-control".into(),
            max_resources_per_zone: 100_000,
        }
    }
}

/// Everything the use cases reach the world through.
#[derive(Clone)]
pub struct Management {
    /// Repositories and transactions.
    pub store: Arc<dyn Store>,
    /// Now.
    pub clock: Arc<dyn Clock>,
    /// New ids.
    pub ids: Arc<dyn IdGenerator>,
    /// Envelope encryption for secrets at rest.
    pub sealer: Arc<dyn SecretSealer>,
    /// Argon2id for client secrets and admin tokens.
    pub hasher: Arc<dyn PasswordHasher>,
    /// Random client secrets.
    pub secrets: Arc<dyn SecretGenerator>,
    /// `AUDIT_HMAC_KEY`: signs audit events and admin-audit chain links when configured.
    pub audit_mac: Option<Arc<dyn MessageAuthenticator>>,
    /// Tunables.
    pub config: ManagementConfig,
    /// Verified admin tokens, so steady-state requests skip Argon2.
    pub(crate) token_cache: Arc<auth::TokenCache>,
}

impl Management {
    /// Wires the use cases.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdGenerator>,
        sealer: Arc<dyn SecretSealer>,
        hasher: Arc<dyn PasswordHasher>,
        secrets: Arc<dyn SecretGenerator>,
        audit_mac: Option<Arc<dyn MessageAuthenticator>>,
        config: ManagementConfig,
    ) -> Self {
        Self {
            store,
            clock,
            ids,
            sealer,
            hasher,
            secrets,
            audit_mac,
            config,
            token_cache: Arc::new(auth::TokenCache::default()),
        }
    }
}

/// An authenticated admin caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The admin token's id.
    pub token_id: String,
    /// The admin token's name.
    pub name: String,
    /// Global or one zone.
    pub scope: TokenScope,
    /// The zone of a zone-scoped token.
    pub zone_id: Option<ZoneId>,
    /// Read, write or approve.
    pub capability: Capability,
    /// Who created the token (`env-bootstrap` for the seeded one).
    pub created_by: String,
}

impl Actor {
    /// The attribution string written to `created_by`/`updated_by`.
    pub fn attribution(&self) -> String {
        format!("admin:{}", self.token_id)
    }

    /// Only the bootstrap token may touch the reserved `caracal.sys` namespace.
    pub fn is_bootstrap(&self) -> bool {
        self.created_by == "env-bootstrap"
    }

    /// Whether the token reaches every zone.
    pub fn is_global(&self) -> bool {
        self.scope == TokenScope::Global
    }

    /// The row-level-security scope of this caller's units of work.
    pub fn store_scope(&self) -> ZoneScope {
        match (&self.scope, &self.zone_id) {
            (TokenScope::Zone, Some(zone)) => ZoneScope::Zone(zone.clone()),
            _ => ZoneScope::All,
        }
    }
}

/// One request's caller and correlation id.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The authenticated actor.
    pub actor: Actor,
    /// The request id (echoed, and stamped on outbox rows and audit).
    pub request_id: String,
    /// Operator co-authorship (`x-caracal-created-via: operator`).
    pub via_operator: bool,
}

impl Caller {
    /// The attribution for rows this caller writes.
    pub fn attribution(&self) -> String {
        self.actor.attribution()
    }
}

/// The reserved-namespace refusal (`spec/api.md §2`).
pub(crate) fn reserved_namespace() -> Error {
    Error::conflict(
        "reserved_namespace",
        "the 'caracal.sys' namespace is reserved for Caracal internal systems",
    )
}

impl Management {
    /// Starts a unit of work confined to what the caller may see.
    pub(crate) async fn begin(&self, caller: &Caller) -> Result<Box<dyn UnitOfWork>> {
        Ok(self.store.begin(&caller.actor.store_scope()).await?)
    }

    /// The zone, or `404 zone_not_found` when it is missing or archived.
    pub(crate) async fn live_zone(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        zone: &ZoneId,
    ) -> Result<Zone> {
        match uow.get_zone(zone).await? {
            Some(z) if z.archived_at.is_none() => Ok(z),
            _ => Err(Error::not_found("zone_not_found")),
        }
    }

    /// An outbox row for `stream`, stamped with the caller's request id.
    pub(crate) fn outbox(
        &self,
        caller: &Caller,
        stream: &str,
        fields: BTreeMap<String, String>,
    ) -> Result<OutboxMessage> {
        let now = self.clock.now();
        Ok(OutboxMessage {
            id: OutboxId::parse(&self.ids.new_id())?,
            stream: stream.to_owned(),
            fields,
            attempts: 0,
            available_at: Some(now),
            locked_until: None,
            last_error: None,
            dispatched_at: None,
            request_id: Some(caller.request_id.clone()),
            created_at: now,
        })
    }
}

/// How often a use case that generates a unique value is re-run after losing a race.
const GENERATED_VALUE_RETRIES: usize = 8;

/// Runs a use case that generates a unique value (slug, identifier, version number). Two
/// concurrent writers can compute the same value; the store's unique index turns the loser's
/// write into a conflict, and the use case is re-run with a fresh read instead of failing.
pub(crate) async fn retry_lost_race<T, F, Fut>(
    mut attempt: F,
    lost_race: impl Fn(&Error) -> bool,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(err) if tries < GENERATED_VALUE_RETRIES && lost_race(&err) => tries += 1,
            other => return other,
        }
    }
}

/// An optional body string, trimmed; blank counts as absent (upstream treats `""` like a missing
/// name or identifier).
pub(crate) fn non_blank(value: Option<&str>) -> Option<String> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// Trims and bounds a required name.
pub(crate) fn bounded_name(value: &str, max: usize, code: &'static str) -> Result<String> {
    let name = value.trim();
    if name.is_empty() || name.chars().count() > max {
        return Err(Error::invalid(
            code,
            format!("name must be 1 to {max} characters"),
        ));
    }
    Ok(name.to_owned())
}
