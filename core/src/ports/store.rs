//! Storage ports: one repository trait per aggregate, all reached through a unit of work so
//! that a state change and its outbox row (and its admin-audit row) commit together.
//!
//! Every list is keyset-paginated by `(created_at DESC, id DESC)`; adapters return at most
//! `page.limit` rows strictly after `page.after`. Every `get_*` inside a zone takes the zone id
//! and returns `None` for a row of another zone, so a foreign id is indistinguishable from a
//! missing one.

use async_trait::async_trait;

use crate::approval::ApprovalHold;
use crate::authority::*;
use crate::coordinator::records::*;
use crate::error::StoreError;
use crate::ids::*;
use crate::model::*;
use crate::time::Timestamp;

/// Which zone a unit of work may touch. Postgres binds it to row-level security
/// (`caracal.zone_id`), so a zone-scoped actor cannot read another zone even through a bug in
/// a query (`spec/api.md §5`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneScope {
    /// Global actors and background workers.
    All,
    /// A zone-scoped actor.
    Zone(ZoneId),
}

/// Position after which the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct After {
    /// `created_at` of the last row of the previous page.
    pub created_at: Timestamp,
    /// `id` of the last row of the previous page.
    pub id: String,
}

/// One page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Rows wanted (1..=500).
    pub limit: u32,
    /// Start strictly after this row.
    pub after: Option<After>,
}

/// Which rows a list returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Liveness {
    /// Unarchived rows (the default).
    #[default]
    Active,
    /// Archived rows only.
    Archived,
}

/// Zones.
#[async_trait]
pub trait ZoneRepo {
    /// Inserts or replaces the zone with this id.
    async fn save_zone(&mut self, zone: &Zone) -> Result<(), StoreError>;
    /// The zone, archived or not.
    async fn get_zone(&mut self, id: &ZoneId) -> Result<Option<Zone>, StoreError>;
    /// Unarchived zones whose slug does not start with `caracal-sys-` (reserved zones are
    /// readable by id only).
    async fn list_zones(&mut self, page: &Page) -> Result<Vec<Zone>, StoreError>;
    /// Whether any zone (archived or not) holds this slug.
    async fn zone_slug_exists(&mut self, slug: &str) -> Result<bool, StoreError>;
}

/// Applications.
#[async_trait]
pub trait ApplicationRepo {
    /// Inserts or replaces the application with this id.
    async fn save_application(&mut self, app: &Application) -> Result<(), StoreError>;
    /// The application of this zone, archived or not.
    async fn get_application(
        &mut self,
        zone: &ZoneId,
        id: &ApplicationId,
    ) -> Result<Option<Application>, StoreError>;
    /// Applications of the zone by liveness.
    async fn list_applications(
        &mut self,
        zone: &ZoneId,
        liveness: Liveness,
        page: &Page,
    ) -> Result<Vec<Application>, StoreError>;
    /// The active managed application of the zone with this name, compared case-insensitively.
    async fn find_managed_application_by_name(
        &mut self,
        zone: &ZoneId,
        name: &str,
    ) -> Result<Option<Application>, StoreError>;
    /// The application with this id in whichever zone holds it (within the unit's scope),
    /// archived or not. The STS needs it for the control-key path (no zone in the request)
    /// and to tell a caller which zone its application lives in (`spec/sts.md §3.3`).
    async fn find_application_any_zone(
        &mut self,
        id: &ApplicationId,
    ) -> Result<Option<Application>, StoreError>;
}

/// Providers.
#[async_trait]
pub trait ProviderRepo {
    /// Inserts or replaces the provider with this id.
    async fn save_provider(&mut self, provider: &Provider) -> Result<(), StoreError>;
    /// The provider of this zone, archived or not.
    async fn get_provider(
        &mut self,
        zone: &ZoneId,
        id: &ProviderId,
    ) -> Result<Option<Provider>, StoreError>;
    /// Providers of the zone by liveness.
    async fn list_providers(
        &mut self,
        zone: &ZoneId,
        liveness: Liveness,
        page: &Page,
    ) -> Result<Vec<Provider>, StoreError>;
    /// The active provider of the zone with exactly this identifier.
    async fn find_provider_by_identifier(
        &mut self,
        zone: &ZoneId,
        identifier: &str,
    ) -> Result<Option<Provider>, StoreError>;
}

/// Resources.
#[async_trait]
pub trait ResourceRepo {
    /// Inserts or replaces the resource with this id.
    async fn save_resource(&mut self, resource: &Resource) -> Result<(), StoreError>;
    /// The resource of this zone, archived or not.
    async fn get_resource(
        &mut self,
        zone: &ZoneId,
        id: &ResourceId,
    ) -> Result<Option<Resource>, StoreError>;
    /// Resources of the zone by liveness.
    async fn list_resources(
        &mut self,
        zone: &ZoneId,
        liveness: Liveness,
        page: &Page,
    ) -> Result<Vec<Resource>, StoreError>;
    /// The active resource of the zone with exactly this identifier.
    async fn find_resource_by_identifier(
        &mut self,
        zone: &ZoneId,
        identifier: &str,
    ) -> Result<Option<Resource>, StoreError>;
    /// Number of active resources in the zone (for the per-zone quota).
    async fn count_active_resources(&mut self, zone: &ZoneId) -> Result<u64, StoreError>;
}

/// Policies and their immutable versions.
#[async_trait]
pub trait PolicyRepo {
    /// Inserts or replaces the policy with this id.
    async fn save_policy(&mut self, policy: &Policy) -> Result<(), StoreError>;
    /// The policy of this zone, archived or not.
    async fn get_policy(
        &mut self,
        zone: &ZoneId,
        id: &PolicyId,
    ) -> Result<Option<Policy>, StoreError>;
    /// Active policies of the zone.
    async fn list_policies(
        &mut self,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<Policy>, StoreError>;
    /// The active policy of the zone with exactly this name.
    async fn find_policy_by_name(
        &mut self,
        zone: &ZoneId,
        name: &str,
    ) -> Result<Option<Policy>, StoreError>;
    /// Inserts or replaces a policy version (versions are only replaced to archive them).
    async fn save_policy_version(&mut self, version: &PolicyVersion) -> Result<(), StoreError>;
    /// Every version of the policy, highest version first.
    async fn list_policy_versions(
        &mut self,
        zone: &ZoneId,
        policy: &PolicyId,
    ) -> Result<Vec<PolicyVersion>, StoreError>;
    /// One version by id, within the zone.
    async fn get_policy_version(
        &mut self,
        zone: &ZoneId,
        id: &PolicyVersionId,
    ) -> Result<Option<PolicyVersion>, StoreError>;
}

/// Policy sets, their versions and the zone's single active binding.
#[async_trait]
pub trait PolicySetRepo {
    /// Inserts or replaces the set with this id (including its `active_version_id`).
    async fn save_policy_set(&mut self, set: &PolicySet) -> Result<(), StoreError>;
    /// The set of this zone, archived or not.
    async fn get_policy_set(
        &mut self,
        zone: &ZoneId,
        id: &PolicySetId,
    ) -> Result<Option<PolicySet>, StoreError>;
    /// Active sets of the zone.
    async fn list_policy_sets(
        &mut self,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<PolicySet>, StoreError>;
    /// The active set of the zone with exactly this name.
    async fn find_policy_set_by_name(
        &mut self,
        zone: &ZoneId,
        name: &str,
    ) -> Result<Option<PolicySet>, StoreError>;
    /// Sets of the zone that currently have an active version (at most one by the rules).
    async fn list_active_policy_sets(
        &mut self,
        zone: &ZoneId,
    ) -> Result<Vec<PolicySet>, StoreError>;
    /// Inserts a set version.
    async fn insert_policy_set_version(
        &mut self,
        version: &PolicySetVersion,
    ) -> Result<(), StoreError>;
    /// One set version by id, within the zone.
    async fn get_policy_set_version(
        &mut self,
        zone: &ZoneId,
        id: &PolicySetVersionId,
    ) -> Result<Option<PolicySetVersion>, StoreError>;
    /// Versions of the set, newest first, paginated.
    async fn list_policy_set_versions(
        &mut self,
        zone: &ZoneId,
        set: &PolicySetId,
        page: &Page,
    ) -> Result<Vec<PolicySetVersion>, StoreError>;
    /// Highest version number of the set so far (0 when none).
    async fn max_policy_set_version(
        &mut self,
        zone: &ZoneId,
        set: &PolicySetId,
    ) -> Result<i32, StoreError>;
}

/// Grants.
#[async_trait]
pub trait GrantRepo {
    /// Inserts or replaces the grant with this id.
    async fn save_grant(&mut self, grant: &Grant) -> Result<(), StoreError>;
    /// The grant of this zone.
    async fn get_grant(&mut self, zone: &ZoneId, id: &GrantId)
        -> Result<Option<Grant>, StoreError>;
    /// Grants of the zone, all statuses, paginated.
    async fn list_grants(&mut self, zone: &ZoneId, page: &Page) -> Result<Vec<Grant>, StoreError>;
}

/// Subject issuers (`spec/api.md §3.10`, read by the STS for federation, `spec/sts.md §9`).
#[async_trait]
pub trait SubjectIssuerRepo {
    /// Inserts or replaces the issuer with this id. A second active issuer with the same
    /// `(zone, issuer)` is `StoreError::Conflict("subject_issuers_active_issuer")`.
    async fn save_subject_issuer(&mut self, issuer: &SubjectIssuer) -> Result<(), StoreError>;
    /// The issuer of this zone, archived or not.
    async fn get_subject_issuer(
        &mut self,
        zone: &ZoneId,
        id: &SubjectIssuerId,
    ) -> Result<Option<SubjectIssuer>, StoreError>;
    /// Active issuers of the zone.
    async fn list_subject_issuers(
        &mut self,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<SubjectIssuer>, StoreError>;
    /// The active issuer of the zone whose `issuer` is exactly this string.
    async fn find_subject_issuer(
        &mut self,
        zone: &ZoneId,
        issuer: &str,
    ) -> Result<Option<SubjectIssuer>, StoreError>;
    /// Number of active issuers in the zone (for the per-zone limit).
    async fn count_active_subject_issuers(&mut self, zone: &ZoneId) -> Result<u64, StoreError>;
}

/// Admin tokens.
#[async_trait]
pub trait AdminTokenRepo {
    /// Inserts or replaces the token with this id.
    async fn save_admin_token(&mut self, token: &AdminToken) -> Result<(), StoreError>;
    /// The unrevoked token whose plaintext hashes to this SHA-256 (hex).
    async fn find_admin_token_by_sha256(
        &mut self,
        sha256_hex: &str,
    ) -> Result<Option<AdminToken>, StoreError>;
    /// One token by id, revoked or not.
    async fn get_admin_token(
        &mut self,
        id: &AdminTokenId,
    ) -> Result<Option<AdminToken>, StoreError>;
    /// Every token visible to the unit of work, revoked ones included, paginated.
    async fn list_admin_tokens(&mut self, page: &Page) -> Result<Vec<AdminToken>, StoreError>;
    /// Unrevoked tokens created by `creator`.
    async fn list_admin_tokens_created_by(
        &mut self,
        creator: &str,
    ) -> Result<Vec<AdminToken>, StoreError>;
}

/// The admin audit log: append-only, hash-chained per zone.
#[async_trait]
pub trait AdminAuditRepo {
    /// The newest record of the chain (`None` zone = the global chain). Adapters serialise
    /// appends to one chain so two writers cannot fork it.
    async fn last_admin_audit(
        &mut self,
        zone: Option<&str>,
    ) -> Result<Option<AdminAuditRecord>, StoreError>;
    /// Appends a record.
    async fn append_admin_audit(&mut self, record: &AdminAuditRecord) -> Result<(), StoreError>;
    /// Records of one chain, newest first, paginated.
    async fn list_admin_audit(
        &mut self,
        zone: Option<&str>,
        page: &Page,
    ) -> Result<Vec<AdminAuditRecord>, StoreError>;
}

/// The outbox side a state change writes to.
#[async_trait]
pub trait OutboxRepo {
    /// Enqueues a message; it becomes visible to the dispatcher when the unit of work commits.
    async fn enqueue_outbox(&mut self, message: &OutboxMessage) -> Result<(), StoreError>;
    /// One message by id.
    async fn get_outbox(&mut self, id: &OutboxId) -> Result<Option<OutboxMessage>, StoreError>;
    /// The newest message on `stream` whose fields include every `(key, value)` given.
    async fn find_latest_outbox(
        &mut self,
        stream: &str,
        fields: &[(&str, &str)],
    ) -> Result<Option<OutboxMessage>, StoreError>;
}

/// The builtin secret store (sealed envelopes only; plaintext never reaches a repository).
#[async_trait]
pub trait SecretRepo {
    /// Inserts the envelope at its reference or replaces it, bumping the version.
    async fn put_secret(&mut self, secret: &SealedSecret) -> Result<(), StoreError>;
    /// The envelope at a reference.
    async fn get_secret(&mut self, reference: &str) -> Result<Option<SealedSecret>, StoreError>;
    /// Deletes the envelope at a reference; `false` when there was none.
    async fn delete_secret(&mut self, reference: &str) -> Result<bool, StoreError>;
}

/// Authority records (`spec/sts.md §3.9`).
#[async_trait]
pub trait AuthorityRecordRepo {
    /// Inserts or replaces the record with this id.
    async fn save_authority_record(&mut self, record: &AuthorityRecord) -> Result<(), StoreError>;
    /// The record of this zone.
    async fn get_authority_record(
        &mut self,
        zone: &ZoneId,
        id: &str,
    ) -> Result<Option<AuthorityRecord>, StoreError>;
    /// Records whose `parent_id` is `id` (one level; callers walk the tree).
    async fn list_authority_record_children(
        &mut self,
        zone: &ZoneId,
        id: &str,
    ) -> Result<Vec<AuthorityRecord>, StoreError>;
}

/// What [`AgentGraphRepo::revoked_anchors`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokedAnchors {
    /// Revoked authority record ids.
    pub records: Vec<String>,
    /// Terminated agent Session ids.
    pub sessions: Vec<String>,
    /// Revoked Delegation edge ids.
    pub edges: Vec<String>,
}

/// Governed agent Sessions and Delegation edges (written by the Coordinator, read by the STS).
#[async_trait]
pub trait AgentGraphRepo {
    /// Inserts or replaces the Session with this id.
    async fn save_agent_session(&mut self, session: &AgentSession) -> Result<(), StoreError>;
    /// The Session of this zone.
    async fn get_agent_session(
        &mut self,
        zone: &ZoneId,
        id: &str,
    ) -> Result<Option<AgentSession>, StoreError>;
    /// The Sessions of this zone with these ids, in any order (missing ones are left out, a
    /// repeated id answers once). One read where the adapter can.
    async fn get_agent_sessions(
        &mut self,
        zone: &ZoneId,
        ids: &[&str],
    ) -> Result<Vec<AgentSession>, StoreError> {
        let mut found: Vec<AgentSession> = Vec::with_capacity(ids.len());
        for id in ids {
            if found.iter().any(|s| s.id == *id) {
                continue;
            }
            if let Some(s) = self.get_agent_session(zone, id).await? {
                found.push(s);
            }
        }
        Ok(found)
    }
    /// Inserts or replaces the edge with this id.
    async fn save_delegation_edge(&mut self, edge: &DelegationEdge) -> Result<(), StoreError>;
    /// The edge of this zone.
    async fn get_delegation_edge(
        &mut self,
        zone: &ZoneId,
        id: &str,
    ) -> Result<Option<DelegationEdge>, StoreError>;
    /// The zone's delegation graph epoch (0 when never bumped).
    async fn delegation_graph_epoch(&mut self, zone: &ZoneId) -> Result<i64, StoreError>;
    /// Adds one to the zone's epoch and returns the new value.
    async fn bump_delegation_graph_epoch(&mut self, zone: &ZoneId) -> Result<i64, StoreError>;

    // --- Coordinator reads (spec/coordinator-gateway.md A6.6, A8.4). Listings are ordered
    // `id DESC` (ids are UUIDv7, so newest first) and start strictly below `before`.

    /// Sessions of the zone matching `filter`, any status.
    async fn list_agent_sessions(
        &mut self,
        zone: &ZoneId,
        filter: &SessionFilter,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AgentSession>, StoreError>;
    /// Direct children of a Session (`parent_id = parent`), any status.
    async fn list_child_sessions(
        &mut self,
        zone: &ZoneId,
        parent: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AgentSession>, StoreError>;
    /// Sessions of the zone (of one application when given) that are live at `now` in the
    /// capacity sense of A6.1: status `active` or `suspended`, and (service) suspended or
    /// `heartbeat_deadline_at > now`, (task) `started_at + COALESCE(ttl_seconds, 3600) s > now`.
    async fn count_live_agent_sessions(
        &mut self,
        zone: &ZoneId,
        application_id: Option<&str>,
        now: Timestamp,
    ) -> Result<u64, StoreError>;
    /// The zone's and `application_id`'s [`Self::count_live_agent_sessions`], read from one
    /// snapshot where the adapter can (one statement in Postgres).
    async fn count_live_agent_sessions_split(
        &mut self,
        zone: &ZoneId,
        application_id: &str,
        now: Timestamp,
    ) -> Result<(u64, u64), StoreError> {
        let zone_live = self.count_live_agent_sessions(zone, None, now).await?;
        let app_live = self
            .count_live_agent_sessions(zone, Some(application_id), now)
            .await?;
        Ok((zone_live, app_live))
    }
    /// Edges whose target is `session`, any status.
    async fn list_edges_by_target(
        &mut self,
        zone: &ZoneId,
        session: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DelegationEdge>, StoreError>;
    /// Edges whose source is `session`, any status.
    async fn list_edges_by_source(
        &mut self,
        zone: &ZoneId,
        session: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DelegationEdge>, StoreError>;
    /// Edges whose `parent_edge_id` is `edge`, any status (unpaged: bounded by the graph).
    async fn list_edges_by_parent(
        &mut self,
        zone: &ZoneId,
        edge: &str,
    ) -> Result<Vec<DelegationEdge>, StoreError>;
    /// Edges of the zone with status `active` and `expires_at > now`.
    async fn list_active_edges(
        &mut self,
        zone: &ZoneId,
        now: Timestamp,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DelegationEdge>, StoreError>;
    /// Edges with status `active` whose source or target is one of `sessions` (unpaged).
    async fn active_edges_touching(
        &mut self,
        zone: &ZoneId,
        sessions: &[String],
    ) -> Result<Vec<DelegationEdge>, StoreError>;

    // --- Sweeper reads (A11). These see every zone the unit's scope allows (workers use
    // `ZoneScope::All`), oldest due first.

    /// Task Sessions with status `active` or `suspended` whose
    /// `started_at + COALESCE(ttl_seconds, 3600) s <= now`.
    async fn due_task_sessions(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<AgentSession>, StoreError>;
    /// Service Sessions with status `active` whose `heartbeat_deadline_at <= now`.
    async fn lapsed_service_sessions(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<AgentSession>, StoreError>;
    /// Edges with status `active` whose `expires_at <= now`.
    async fn lapsed_active_edges(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<DelegationEdge>, StoreError>;
    /// Retention: deletes up to `limit` edges with status `revoked`/`expired` that ended
    /// (`COALESCE(revoked_at, expires_at)`) before `cutoff` and that no remaining edge names as
    /// `parent_edge_id`, and up to `limit` Sessions with status `terminated`/`expired`,
    /// `ended_at < cutoff`, that no remaining Session names as `parent_id`. Returns
    /// `(edges_deleted, sessions_deleted)`.
    async fn purge_ended_graph(
        &mut self,
        cutoff: Timestamp,
        limit: u32,
    ) -> Result<(u64, u64), StoreError>;

    // --- Gateway read (B6). Sees every zone the unit's scope allows (the Gateway uses
    // `ZoneScope::All`); the lists are in no particular order.

    /// The B6 revocation snapshot (`spec/coordinator-gateway.md`): ids of authority records
    /// revoked and not expired before `since`, Sessions terminated after `since`, and edges
    /// revoked after `since`, across the unit's scope.
    async fn revoked_anchors(&mut self, since: Timestamp) -> Result<RevokedAnchors, StoreError>;
}

/// Idempotency receipts, agent services and invocations (spec/coordinator-gateway.md A7, A9).
#[async_trait]
pub trait CoordinationRepo {
    /// The receipt of `(scope, key_hash)` if it has not expired at `now`.
    async fn get_idempotency_receipt(
        &mut self,
        scope: &str,
        key_hash: &str,
        now: Timestamp,
    ) -> Result<Option<IdempotencyReceipt>, StoreError>;
    /// Unexpired receipts of a scope at `now`.
    async fn count_idempotency_receipts(
        &mut self,
        scope: &str,
        now: Timestamp,
    ) -> Result<u64, StoreError>;
    /// Stores a receipt, replacing an expired one of the same `(scope, key_hash)`; an unexpired
    /// one is `StoreError::Conflict("idempotency_receipts_key")`.
    async fn insert_idempotency_receipt(
        &mut self,
        receipt: &IdempotencyReceipt,
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// Deletes up to `limit` receipts expired at `now`; returns how many.
    async fn purge_idempotency_receipts(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// Inserts or replaces the service with this id.
    async fn save_agent_service(&mut self, service: &AgentService) -> Result<(), StoreError>;
    /// The service of this zone.
    async fn get_agent_service(
        &mut self,
        zone: &ZoneId,
        id: &str,
    ) -> Result<Option<AgentService>, StoreError>;
    /// The service of `(zone, application, endpoint_url)`.
    async fn find_agent_service(
        &mut self,
        zone: &ZoneId,
        application_id: &str,
        endpoint_url: &str,
    ) -> Result<Option<AgentService>, StoreError>;
    /// Services of the zone, `id DESC`, strictly below `before`.
    async fn list_agent_services(
        &mut self,
        zone: &ZoneId,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AgentService>, StoreError>;

    /// Inserts or replaces the invocation with this id.
    async fn save_invocation(&mut self, invocation: &Invocation) -> Result<(), StoreError>;
    /// The invocation of this zone.
    async fn get_invocation(
        &mut self,
        zone: &ZoneId,
        id: &str,
    ) -> Result<Option<Invocation>, StoreError>;
    /// Invocations of the zone, `id DESC`, strictly below `before`.
    async fn list_invocations(
        &mut self,
        zone: &ZoneId,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Invocation>, StoreError>;
    /// Invocations with status `running` whose `deadline_at <= now`, oldest deadline first,
    /// across the zones the unit's scope allows.
    async fn overdue_invocations(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Invocation>, StoreError>;
}

/// Zone signing keys (`spec/sts.md §5`).
#[async_trait]
pub trait SigningKeyRepo {
    /// Inserts a new key version. A second key with the same `(zone, version)` is
    /// `StoreError::Conflict("zone_signing_keys_version")`.
    async fn insert_signing_key(&mut self, key: &ZoneSigningKey) -> Result<(), StoreError>;
    /// The zone's newest `limit` keys, newest (highest version) first.
    async fn latest_signing_keys(
        &mut self,
        zone: &ZoneId,
        limit: u32,
    ) -> Result<Vec<ZoneSigningKey>, StoreError>;
}

/// Approval holds (`spec/sts.md §8`). The hold id is a capability, so some reads are by id
/// alone (the long-poll carries no zone).
#[async_trait]
pub trait ApprovalRepo {
    /// Inserts or replaces the hold with this id.
    async fn save_approval(&mut self, hold: &ApprovalHold) -> Result<(), StoreError>;
    /// The hold, in whichever zone holds it (within the unit's scope).
    async fn get_approval(&mut self, id: &str) -> Result<Option<ApprovalHold>, StoreError>;
    /// Holds of one request key `(zone, principal, authority record, binding)`, any state,
    /// oldest first.
    async fn find_approvals(
        &mut self,
        zone: &ZoneId,
        principal: &str,
        session_id: &str,
        binding: &str,
    ) -> Result<Vec<ApprovalHold>, StoreError>;
    /// Deletes a hold; `false` when there was none.
    async fn delete_approval(&mut self, id: &str) -> Result<bool, StoreError>;
    /// Holds of the zone, newest first (keyset by `created_at`, `id`).
    async fn list_approvals(
        &mut self,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<ApprovalHold>, StoreError>;
}

/// Named locks held until the unit of work ends, for rules that span rows (one active policy
/// set per zone): two units taking the same name run one after the other.
#[async_trait]
pub trait UnitLocks {
    /// Blocks until this unit holds the lock `name`; released at commit or rollback.
    async fn lock(&mut self, name: &str) -> Result<(), StoreError>;
    /// [`Self::lock`] on `first`, then on `second` (in that order, so units that take the
    /// same two locks one by one never deadlock with it); one round trip where the adapter
    /// can.
    async fn lock_both(&mut self, first: &str, second: &str) -> Result<(), StoreError> {
        self.lock(first).await?;
        self.lock(second).await
    }
    /// Takes the lock `name` if no other unit holds it, without waiting; `false` when another
    /// unit holds it. Released at commit or rollback. (Sweeper passes: two replicas never run
    /// the same pass at once.)
    async fn try_lock(&mut self, name: &str) -> Result<bool, StoreError>;
}

/// One transaction over every repository. Dropping it without `commit` rolls everything back.
#[async_trait]
pub trait UnitOfWork:
    ZoneRepo
    + ApplicationRepo
    + ProviderRepo
    + ResourceRepo
    + PolicyRepo
    + PolicySetRepo
    + GrantRepo
    + SubjectIssuerRepo
    + AdminTokenRepo
    + AdminAuditRepo
    + OutboxRepo
    + SecretRepo
    + AuthorityRecordRepo
    + AgentGraphRepo
    + CoordinationRepo
    + SigningKeyRepo
    + ApprovalRepo
    + UnitLocks
    + Send
{
    /// Makes every write of this unit visible at once.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// The caller's promise that it abandons this unit on the first write that fails, so an
    /// adapter may drop what it spends on keeping the unit usable after a refused write (the
    /// Postgres adapter's savepoint around every write: two round trips each). From here on a
    /// refused write still returns its typed error (a `Conflict` stays a `Conflict`), but the
    /// adapter may fail every later operation and `commit`, writing nothing; the caller must
    /// drop the unit. An adapter may also hold back writes and locks whose answer is only
    /// success or failure and send them with the unit's next operation or its `commit`: they
    /// still take effect in order, before that operation, and a refusal is then returned by
    /// that operation (or `commit`) instead of by the write. A held-back lock is therefore held
    /// from the unit's next operation on: it guards the unit's own reads and writes, not work
    /// the caller does outside the store before then. Adapters whose writes are atomic on
    /// their own may ignore it.
    fn abandon_on_write_error(&mut self) {}
}

/// The storage entry point.
#[async_trait]
pub trait Store: Send + Sync {
    /// Starts a unit of work confined to `scope`.
    async fn begin(&self, scope: &ZoneScope) -> Result<Box<dyn UnitOfWork>, StoreError>;
    /// Starts a unit whose commit may answer before it is durable: a database crash can lose
    /// the last instants of such commits, never part of one, and a later durable commit makes
    /// every earlier one durable too. Only for writes whose loss can make later requests fail
    /// and never succeed (the STS's authority records: a mandate whose record is gone is
    /// refused wherever records are checked). Adapters without the distinction begin a normal
    /// unit.
    async fn begin_relaxed(&self, scope: &ZoneScope) -> Result<Box<dyn UnitOfWork>, StoreError> {
        self.begin(scope).await
    }
    /// Writes a freshly minted authority record in a unit of its own, relaxed like
    /// [`Store::begin_relaxed`]'s, and answers once it is committed. Adapters may commit
    /// concurrent calls together (one transaction for many mints). A record whose id is already
    /// stored is refused with `Conflict` and changes nothing.
    async fn insert_minted_record(&self, record: &AuthorityRecord) -> Result<(), StoreError> {
        let mut uow = self
            .begin_relaxed(&ZoneScope::Zone(record.zone_id.clone()))
            .await?;
        if uow
            .get_authority_record(&record.zone_id, &record.id)
            .await?
            .is_some()
        {
            return Err(StoreError::Conflict("authority_records_pkey".into()));
        }
        uow.save_authority_record(record).await?;
        uow.commit().await
    }
    /// [`Store::begin`] for `zone`, then, in the new unit, the zone's application
    /// `application` and, when `record` is given, its authority record `record`: the two rows
    /// a request's identity check reads first. Adapters may send both reads along with the
    /// opening of the unit rather than one after another; the answer is the same.
    async fn begin_with_caller(
        &self,
        zone: &ZoneId,
        application: &ApplicationId,
        record: Option<&str>,
    ) -> Result<(Box<dyn UnitOfWork>, CallerRows), StoreError> {
        let mut uow = self.begin(&ZoneScope::Zone(zone.clone())).await?;
        let application = uow.get_application(zone, application).await?;
        let record = match record {
            Some(id) => uow.get_authority_record(zone, id).await?,
            None => None,
        };
        Ok((
            uow,
            CallerRows {
                application,
                record,
            },
        ))
    }
    /// Checks the store answers (for `/ready`).
    async fn ping(&self) -> Result<(), StoreError>;
    /// How much of its connection pool the store uses now, for adapters that pool
    /// connections (the `caracal_db_pool_*` gauges); `None` otherwise.
    fn pool_usage(&self) -> Option<PoolUsage> {
        None
    }
}

/// A connection pool's use at one instant ([`Store::pool_usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolUsage {
    /// Connections the pool may hold.
    pub max: u64,
    /// Connections handed out now.
    pub acquired: u64,
}

impl PoolUsage {
    /// `acquired / max` (0 for a pool of no connections).
    pub fn in_use_ratio(&self) -> f64 {
        if self.max == 0 {
            0.0
        } else {
            self.acquired as f64 / self.max as f64
        }
    }
}

/// The rows [`Store::begin_with_caller`] read in the unit it opened.
#[derive(Debug, Clone, Default)]
pub struct CallerRows {
    /// The application, if the zone has it.
    pub application: Option<Application>,
    /// The authority record, if one was asked for and the zone has it.
    pub record: Option<AuthorityRecord>,
}

/// The dispatcher's side of the outbox: claiming due rows outside any request.
#[async_trait]
pub trait OutboxQueue: Send + Sync {
    /// Claims up to `limit` due, unlocked rows (ordered by `available_at`), locking them until
    /// `lock_until` and counting one attempt each. Two dispatchers never claim the same row.
    async fn claim_due(
        &self,
        now: Timestamp,
        lock_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, StoreError>;
    /// Records a delivery.
    async fn mark_dispatched(&self, id: &OutboxId, at: Timestamp) -> Result<(), StoreError>;
    /// Records the delivery of every row in `ids` at `at`; one write where the adapter can
    /// (a dispatcher pass acknowledges its whole batch at once).
    async fn mark_all_dispatched(&self, ids: &[OutboxId], at: Timestamp) -> Result<(), StoreError> {
        for id in ids {
            self.mark_dispatched(id, at).await?;
        }
        Ok(())
    }
    /// Records a failed delivery: retry at `retry_at`, or never again (dead) when `None`.
    async fn mark_failed(
        &self,
        id: &OutboxId,
        error: &str,
        retry_at: Option<Timestamp>,
    ) -> Result<(), StoreError>;
    /// `(pending, dead)` row counts.
    async fn outbox_counts(&self) -> Result<(u64, u64), StoreError>;
}
