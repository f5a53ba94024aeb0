//! The management aggregates as stored. Rules that create and change them live in
//! `crate::manage`; these are the values the repositories persist.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::attribution::Attribution;
use crate::ids::*;
use crate::time::Timestamp;

/// A zone: the tenancy boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// Identifier.
    pub id: ZoneId,
    /// Display name (duplicates allowed).
    pub name: String,
    /// Unique slug `^[a-z0-9-]+$`.
    pub slug: String,
    /// Whether dynamic client registration is on.
    pub dcr_enabled: bool,
    /// Whether operator co-authorship is badged.
    pub operator_coauthor_badge: bool,
    /// Whether the AI operator may govern this zone.
    pub operator_governed: bool,
    /// Creation and change attribution.
    pub attr: Attribution,
    /// Soft-delete instant.
    pub archived_at: Option<Timestamp>,
}

/// How an application came to exist (`spec/api.md §3.2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMethod {
    /// Admin-created; its secret is held in custody and can be revealed.
    Managed,
    /// Self-registered and short-lived; its secret is shown once.
    Dcr,
}

impl RegistrationMethod {
    /// The wire and storage spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Managed => "managed",
            Self::Dcr => "dcr",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "managed" => Some(Self::Managed),
            "dcr" => Some(Self::Dcr),
            _ => None,
        }
    }
}

/// An application: a client identity that authenticates to the STS with a client secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Application {
    /// Identifier.
    pub id: ApplicationId,
    /// Owning zone.
    pub zone_id: ZoneId,
    /// Name, unique case-insensitively among active managed applications of the zone.
    pub name: String,
    /// Managed or DCR.
    pub registration_method: RegistrationMethod,
    /// Trait labels.
    pub traits: Vec<String>,
    /// `argon2id$<salt>$<hash>` of the client secret, the form the STS verifies.
    pub client_secret_hash: Option<String>,
    /// Expiry (DCR only).
    pub expires_at: Option<Timestamp>,
    /// Creation and change attribution.
    pub attr: Attribution,
    /// Soft-delete instant.
    pub archived_at: Option<Timestamp>,
}

/// A provider: where the sealed upstream credential and its placement live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// Identifier.
    pub id: ProviderId,
    /// Owning zone.
    pub zone_id: ZoneId,
    /// Display name.
    pub name: String,
    /// `provider://…` identifier, unique among active providers of the zone.
    pub identifier: String,
    /// Kind (`api_key`, `bearer_token`, …).
    pub kind: String,
    /// Public configuration only; secrets are sealed elsewhere.
    pub config_json: Map<String, Value>,
    /// Sorted names of the sealed secret keys.
    pub secret_config_keys: Vec<String>,
    /// When a connectivity check last failed (OAuth kinds created unchecked).
    pub connectivity_failed_at: Option<Timestamp>,
    /// Creation and change attribution.
    pub attr: Attribution,
    /// Soft-delete instant.
    pub archived_at: Option<Timestamp>,
}

/// One `METHOD path → scope` operation of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Upper-cased HTTP method.
    pub method: String,
    /// Absolute path.
    pub path: String,
    /// Scope that authorizes it (one of the resource's scopes).
    pub scope: String,
}

/// A protected resource routed by the Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Identifier.
    pub id: ResourceId,
    /// Owning zone.
    pub zone_id: ZoneId,
    /// Display name.
    pub name: String,
    /// The audience string (`resource://…`, `https://…`, `urn:…`), unique among active rows.
    pub identifier: String,
    /// Upstream base URL.
    pub upstream_url: Option<String>,
    /// Declared scopes.
    pub scopes: Vec<String>,
    /// Provider whose credential the Gateway injects.
    pub credential_provider_id: Option<String>,
    /// Operation map.
    pub operations: Vec<Operation>,
    /// `enforced` or `transport_uniform`.
    pub operation_enforcement: String,
    /// Creation and change attribution.
    pub attr: Attribution,
    /// Soft-delete instant.
    pub archived_at: Option<Timestamp>,
}

/// A policy (a named series of immutable data-document versions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Identifier.
    pub id: PolicyId,
    /// Owning zone.
    pub zone_id: ZoneId,
    /// Name, unique among active policies of the zone.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Creation and change attribution.
    pub attr: Attribution,
    /// Soft-delete instant.
    pub archived_at: Option<Timestamp>,
}

/// One immutable policy version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    /// Identifier.
    pub id: PolicyVersionId,
    /// The policy it belongs to.
    pub policy_id: PolicyId,
    /// Owning zone (denormalised for isolation).
    pub zone_id: ZoneId,
    /// 1, 2, … per policy.
    pub version: i32,
    /// Exact content as submitted.
    pub content: String,
    /// Lowercase hex SHA-256 of the exact UTF-8 content.
    pub content_sha256: String,
    /// Contract schema version.
    pub schema_version: String,
    /// Creator.
    pub created_by: String,
    /// Operator co-authorship.
    pub created_via_operator: bool,
    /// Creation instant.
    pub created_at: Timestamp,
    /// Archive instant (set when the policy is deleted).
    pub archived_at: Option<Timestamp>,
}

/// A policy set: the unit a zone activates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySet {
    /// Identifier.
    pub id: PolicySetId,
    /// Owning zone.
    pub zone_id: ZoneId,
    /// Name, unique among active sets of the zone.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// The version this set has active, when it is the zone's active set.
    pub active_version_id: Option<PolicySetVersionId>,
    /// Creation and change attribution.
    pub attr: Attribution,
    /// Soft-delete instant.
    pub archived_at: Option<Timestamp>,
}

/// One immutable policy-set version: an ordered manifest of policy versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySetVersion {
    /// Identifier.
    pub id: PolicySetVersionId,
    /// The set it belongs to.
    pub policy_set_id: PolicySetId,
    /// Owning zone.
    pub zone_id: ZoneId,
    /// 1, 2, … per set.
    pub version: i32,
    /// Policy versions, in manifest order.
    pub manifest: Vec<PolicyVersionId>,
    /// Hex SHA-256 of the compact manifest JSON.
    pub manifest_sha256: String,
    /// Contract schema version.
    pub schema_version: String,
    /// Creator.
    pub created_by: String,
    /// Operator co-authorship.
    pub created_via_operator: bool,
    /// Creation instant.
    pub created_at: Timestamp,
}

/// A grant: an application and user may use these scopes on a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Identifier.
    pub id: GrantId,
    /// Owning zone.
    pub zone_id: ZoneId,
    /// Grantee application.
    pub application_id: ApplicationId,
    /// Grantee subject.
    pub user_id: String,
    /// Resource row.
    pub resource_id: ResourceId,
    /// Granted scopes (a subset of the resource's).
    pub scopes: Vec<String>,
    /// `active` or `revoked`.
    pub status: String,
    /// Creation and change attribution.
    pub attr: Attribution,
}

/// A subject issuer (`spec/api.md §3.10`): an external identity system whose `id_token`s the
/// zone accepts for federated users (`spec/sts.md §9`). Trust is by exact `issuer` match, keys
/// come from `jwks_url`, and tokens must name `audience`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectIssuer {
    /// Identifier.
    pub id: SubjectIssuerId,
    /// Owning zone.
    pub zone_id: ZoneId,
    /// The `iss` value, verbatim; unique among the zone's active issuers and never changed.
    pub issuer: String,
    /// HTTPS URL of the issuer's key set.
    pub jwks_url: String,
    /// The audience its tokens must carry.
    pub audience: String,
    /// Creation and change attribution.
    pub attr: Attribution,
    /// Soft-delete instant: an archived issuer is trusted no longer.
    pub archived_at: Option<Timestamp>,
}

/// Reach of an admin token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope {
    /// Every zone and the zone-less routes.
    Global,
    /// One zone only.
    Zone,
}

/// What an admin token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Reads only.
    Read,
    /// Reads and writes.
    Write,
    /// Reads and approval decisions.
    Approve,
}

/// An admin bearer token as stored: never the plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminToken {
    /// Identifier.
    pub id: AdminTokenId,
    /// Display name.
    pub name: String,
    /// Lowercase hex SHA-256 of the plaintext: the lookup key.
    pub token_sha256: String,
    /// Argon2id hash of the plaintext, verified after the lookup.
    pub token_hash: String,
    /// Reach.
    pub scope: TokenScope,
    /// The zone, iff scope is `Zone`.
    pub zone_id: Option<ZoneId>,
    /// Capability.
    pub capability: Capability,
    /// Creator (`env-bootstrap` for the seeded token).
    pub created_by: String,
    /// Creation instant.
    pub created_at: Timestamp,
    /// Last successful use (debounced).
    pub last_used_at: Option<Timestamp>,
    /// Revocation instant.
    pub revoked_at: Option<Timestamp>,
}

/// One hash-chained admin audit record (`spec/api.md §7`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAuditRecord {
    /// Identifier.
    pub id: String,
    /// Request id of the audited call.
    pub request_id: String,
    /// Admin token id of the actor, if authenticated.
    pub actor_id: Option<String>,
    /// Actor display name.
    pub actor_name: Option<String>,
    /// `global` or `zone`.
    pub actor_scope: Option<String>,
    /// `"<METHOD> <path>"`.
    pub action: String,
    /// HTTP method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Zone of the path (or the created zone); `None` = the global chain.
    pub zone_id: Option<String>,
    /// Innermost collection of the path.
    pub entity_type: Option<String>,
    /// Innermost id of the path (or the created id).
    pub entity_id: Option<String>,
    /// Response status.
    pub status_code: i32,
    /// Change summary (`rls_mode`, `change_kind`, `changed_fields`, …), never values.
    pub payload_json: Value,
    /// When it happened.
    pub occurred_at: Timestamp,
    /// Hex SHA-256 of this record's canonical content.
    pub content_sha256: String,
    /// The previous record's content hash in this chain.
    pub prev_content_sha256: Option<String>,
    /// Position in this zone's chain, from 1.
    pub chain_seq: i64,
    /// HMAC over content and previous hash, when `AUDIT_HMAC_KEY` is set.
    pub chain_hmac: Option<String>,
}

/// A transactional-outbox row (`spec/api.md §4`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Identifier (also sent as the `outbox_id` field so consumers can deduplicate).
    pub id: OutboxId,
    /// Target stream.
    pub stream: String,
    /// Message fields (nulls already dropped).
    pub fields: BTreeMap<String, String>,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// Not before this instant; `None` = dead (never again).
    pub available_at: Option<Timestamp>,
    /// Claimed by a dispatcher until this instant.
    pub locked_until: Option<Timestamp>,
    /// Last delivery error.
    pub last_error: Option<String>,
    /// Delivery instant.
    pub dispatched_at: Option<Timestamp>,
    /// Request that caused it.
    pub request_id: Option<String>,
    /// Enqueue instant.
    pub created_at: Timestamp,
}

impl OutboxMessage {
    /// Delivery state as activation-status reports it.
    pub fn state(&self) -> &'static str {
        if self.dispatched_at.is_some() {
            "dispatched"
        } else if self.available_at.is_none() {
            "dead"
        } else {
            "pending"
        }
    }
}

/// A sealed secret in the builtin secret store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// Location, e.g. `zones/<z>/providers/<p>/secretConfig`; also the envelope's AAD.
    pub reference: String,
    /// Zone (second segment of the reference).
    pub zone_id: ZoneId,
    /// The envelope bytes.
    pub envelope: Vec<u8>,
    /// 1, 2, … per reference.
    pub version: i32,
}
