//! The in-memory store: every repository over plain maps, with units of work that are
//! serialisable (one writer at a time) and atomic (copy-on-write, swapped in on commit).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use caracal_core::approval::ApprovalHold;
use caracal_core::authority::*;
use caracal_core::coordinator::records::*;
use caracal_core::error::StoreError;
use caracal_core::ids::*;
use caracal_core::model::*;
use caracal_core::ports::store::*;
use caracal_core::time::Timestamp;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Everything the store holds. Cloned only when a unit of work first writes.
#[derive(Debug, Clone, Default)]
struct State {
    zones: BTreeMap<String, Zone>,
    applications: BTreeMap<String, Application>,
    providers: BTreeMap<String, Provider>,
    resources: BTreeMap<String, Resource>,
    policies: BTreeMap<String, Policy>,
    policy_versions: BTreeMap<String, PolicyVersion>,
    policy_sets: BTreeMap<String, PolicySet>,
    policy_set_versions: BTreeMap<String, PolicySetVersion>,
    grants: BTreeMap<String, Grant>,
    subject_issuers: BTreeMap<String, SubjectIssuer>,
    admin_tokens: BTreeMap<String, AdminToken>,
    admin_audit: Vec<AdminAuditRecord>,
    outbox: BTreeMap<String, OutboxMessage>,
    secrets: BTreeMap<String, SealedSecret>,
    authority_records: BTreeMap<String, AuthorityRecord>,
    agent_sessions: BTreeMap<String, AgentSession>,
    delegation_edges: BTreeMap<String, DelegationEdge>,
    graph_epochs: BTreeMap<String, i64>,
    signing_keys: BTreeMap<String, ZoneSigningKey>,
    approvals: BTreeMap<String, ApprovalHold>,
    /// Keyed by `(scope, key_hash)`, the Postgres primary key.
    idempotency_receipts: BTreeMap<(String, String), IdempotencyReceipt>,
    agent_services: BTreeMap<String, AgentService>,
    invocations: BTreeMap<String, Invocation>,
}

/// The in-memory store. Cheap to clone; clones share state.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<State>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

/// One unit of work: holds the store lock for its whole life, so units never interleave.
/// Reads go to the committed state until the first write makes a private copy; commit swaps the
/// copy in, and drop without commit simply forgets it.
pub struct MemoryUnitOfWork {
    guard: OwnedMutexGuard<State>,
    draft: Option<State>,
    scope: ZoneScope,
}

impl MemoryUnitOfWork {
    fn read(&self) -> &State {
        self.draft.as_ref().unwrap_or(&self.guard)
    }

    fn write(&mut self) -> &mut State {
        let guard = &self.guard;
        self.draft.get_or_insert_with(|| State::clone(guard))
    }

    /// Row-level isolation, mirroring the Postgres policy: a zone-scoped unit of work sees only
    /// its zone's rows, and zone-less rows only under `ZoneScope::All`.
    fn visible(&self, zone: Option<&ZoneId>) -> bool {
        match (&self.scope, zone) {
            (ZoneScope::All, _) => true,
            (ZoneScope::Zone(scope), Some(zone)) => scope == zone,
            (ZoneScope::Zone(_), None) => false,
        }
    }

    fn check_write(&self, zone: Option<&ZoneId>) -> Result<(), StoreError> {
        if self.visible(zone) {
            Ok(())
        } else {
            // Postgres answers a WITH CHECK violation with an error, not a silent no-op.
            Err(StoreError::Unavailable(
                "row-level security: write outside the unit of work's zone".into(),
            ))
        }
    }
}

/// Keyset page over rows ordered by `(created_at DESC, id DESC)`.
fn page_of<T: Clone>(
    rows: impl Iterator<Item = T>,
    key: impl Fn(&T) -> (Timestamp, String),
    page: &Page,
) -> Vec<T> {
    let mut rows: Vec<T> = rows
        .filter(|row| match &page.after {
            None => true,
            Some(after) => key(row) < (after.created_at, after.id.clone()),
        })
        .collect();
    rows.sort_by_key(|row| std::cmp::Reverse(key(row)));
    rows.truncate(page.limit as usize);
    rows
}

/// Page over rows ordered `id DESC`, starting strictly below `before` (the Coordinator's
/// listings; ids are UUIDv7, so newest first). Byte order, as `COLLATE "C"` compares.
fn id_page<T>(
    rows: impl Iterator<Item = T>,
    id: impl Fn(&T) -> &str,
    before: Option<&str>,
    limit: u32,
) -> Vec<T> {
    let mut rows: Vec<T> = rows
        .filter(|row| before.is_none_or(|before| id(row) < before))
        .collect();
    rows.sort_by(|a, b| id(b).cmp(id(a)));
    rows.truncate(limit as usize);
    rows
}

/// The first `limit` rows in ascending `key` order (the sweeps' "oldest due first").
fn oldest_first<T, K: Ord>(
    rows: impl Iterator<Item = T>,
    key: impl Fn(&T) -> K,
    limit: u32,
) -> Vec<T> {
    let mut rows: Vec<T> = rows.collect();
    rows.sort_by_key(|row| key(row));
    rows.truncate(limit as usize);
    rows
}

/// Default lifetime of a task Session stored without a TTL (A6.1), in seconds.
const TASK_DEFAULT_TTL_SECONDS: i64 = 3_600;

/// When a task Session's lifetime ends: `started_at + COALESCE(ttl_seconds, 3600) s`.
fn task_due_at(session: &AgentSession) -> Timestamp {
    let ttl = session.ttl_seconds.unwrap_or(TASK_DEFAULT_TTL_SECONDS);
    session.started_at.plus_millis(ttl.saturating_mul(1_000))
}

/// Live in the capacity sense of A6.1 (see `AgentGraphRepo::count_live_agent_sessions`).
fn counts_as_live(session: &AgentSession, now: Timestamp) -> bool {
    match (session.status.as_str(), session.lifecycle) {
        ("suspended", Lifecycle::Service) => true,
        ("active", Lifecycle::Service) => session.heartbeat_deadline_at.is_some_and(|d| d > now),
        ("active" | "suspended", Lifecycle::Task) => task_due_at(session) > now,
        _ => false,
    }
}

/// When an ended edge ended: `COALESCE(revoked_at, expires_at)`.
fn edge_ended_at(edge: &DelegationEdge) -> Timestamp {
    edge.revoked_at.unwrap_or(edge.expires_at)
}

fn live(liveness: Liveness, archived_at: &Option<Timestamp>) -> bool {
    match liveness {
        Liveness::Active => archived_at.is_none(),
        Liveness::Archived => archived_at.is_some(),
    }
}

#[async_trait]
impl ZoneRepo for MemoryUnitOfWork {
    async fn save_zone(&mut self, zone: &Zone) -> Result<(), StoreError> {
        let taken = self
            .read()
            .zones
            .values()
            .any(|z| z.slug == zone.slug && z.id != zone.id);
        if taken {
            return Err(StoreError::Conflict("zones_slug_key".into()));
        }
        self.write().zones.insert(zone.id.to_string(), zone.clone());
        Ok(())
    }

    async fn get_zone(&mut self, id: &ZoneId) -> Result<Option<Zone>, StoreError> {
        Ok(self.read().zones.get(id.as_str()).cloned())
    }

    async fn list_zones(&mut self, page: &Page) -> Result<Vec<Zone>, StoreError> {
        let rows = self.read().zones.values().filter(|z| {
            z.archived_at.is_none() && !z.slug.to_ascii_lowercase().starts_with("caracal-sys-")
        });
        Ok(page_of(
            rows.cloned(),
            |z| (z.attr.created_at, z.id.to_string()),
            page,
        ))
    }

    async fn zone_slug_exists(&mut self, slug: &str) -> Result<bool, StoreError> {
        Ok(self.read().zones.values().any(|z| z.slug == slug))
    }
}

#[async_trait]
impl ApplicationRepo for MemoryUnitOfWork {
    async fn save_application(&mut self, app: &Application) -> Result<(), StoreError> {
        self.check_write(Some(&app.zone_id))?;
        // An id owned by a zone this unit cannot see stays untouched, as RLS keeps it in Postgres.
        if let Some(existing) = self.read().applications.get(app.id.as_str()) {
            self.check_write(Some(&existing.zone_id))?;
        }
        let clash = app.archived_at.is_none()
            && app.registration_method == RegistrationMethod::Managed
            && self.read().applications.values().any(|a| {
                a.id != app.id
                    && a.zone_id == app.zone_id
                    && a.archived_at.is_none()
                    && a.registration_method == RegistrationMethod::Managed
                    && a.name.to_lowercase() == app.name.to_lowercase()
            });
        if clash {
            return Err(StoreError::Conflict(
                "applications_active_managed_name".into(),
            ));
        }
        self.write()
            .applications
            .insert(app.id.to_string(), app.clone());
        Ok(())
    }

    async fn get_application(
        &mut self,
        zone: &ZoneId,
        id: &ApplicationId,
    ) -> Result<Option<Application>, StoreError> {
        let found = self.read().applications.get(id.as_str()).cloned();
        Ok(found.filter(|a| &a.zone_id == zone && self.visible(Some(&a.zone_id))))
    }

    async fn find_application_any_zone(
        &mut self,
        id: &ApplicationId,
    ) -> Result<Option<Application>, StoreError> {
        let found = self.read().applications.get(id.as_str()).cloned();
        Ok(found.filter(|a| self.visible(Some(&a.zone_id))))
    }

    async fn list_applications(
        &mut self,
        zone: &ZoneId,
        liveness: Liveness,
        page: &Page,
    ) -> Result<Vec<Application>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .applications
            .values()
            .filter(|a| &a.zone_id == zone && live(liveness, &a.archived_at));
        Ok(page_of(
            rows.cloned(),
            |a| (a.attr.created_at, a.id.to_string()),
            page,
        ))
    }

    async fn find_managed_application_by_name(
        &mut self,
        zone: &ZoneId,
        name: &str,
    ) -> Result<Option<Application>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(None);
        }
        let wanted = name.to_lowercase();
        Ok(self
            .read()
            .applications
            .values()
            .find(|a| {
                &a.zone_id == zone
                    && a.archived_at.is_none()
                    && a.registration_method == RegistrationMethod::Managed
                    && a.name.to_lowercase() == wanted
            })
            .cloned())
    }
}

#[async_trait]
impl ProviderRepo for MemoryUnitOfWork {
    async fn save_provider(&mut self, provider: &Provider) -> Result<(), StoreError> {
        self.check_write(Some(&provider.zone_id))?;
        // An id owned by a zone this unit cannot see stays untouched, as RLS keeps it in Postgres.
        if let Some(existing) = self.read().providers.get(provider.id.as_str()) {
            self.check_write(Some(&existing.zone_id))?;
        }
        let clash = provider.archived_at.is_none()
            && self.read().providers.values().any(|p| {
                p.id != provider.id
                    && p.zone_id == provider.zone_id
                    && p.archived_at.is_none()
                    && p.identifier == provider.identifier
            });
        if clash {
            return Err(StoreError::Conflict("providers_active_identifier".into()));
        }
        self.write()
            .providers
            .insert(provider.id.to_string(), provider.clone());
        Ok(())
    }

    async fn get_provider(
        &mut self,
        zone: &ZoneId,
        id: &ProviderId,
    ) -> Result<Option<Provider>, StoreError> {
        let found = self.read().providers.get(id.as_str()).cloned();
        Ok(found.filter(|p| &p.zone_id == zone && self.visible(Some(&p.zone_id))))
    }

    async fn list_providers(
        &mut self,
        zone: &ZoneId,
        liveness: Liveness,
        page: &Page,
    ) -> Result<Vec<Provider>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .providers
            .values()
            .filter(|p| &p.zone_id == zone && live(liveness, &p.archived_at));
        Ok(page_of(
            rows.cloned(),
            |p| (p.attr.created_at, p.id.to_string()),
            page,
        ))
    }

    async fn find_provider_by_identifier(
        &mut self,
        zone: &ZoneId,
        identifier: &str,
    ) -> Result<Option<Provider>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(None);
        }
        Ok(self
            .read()
            .providers
            .values()
            .find(|p| &p.zone_id == zone && p.archived_at.is_none() && p.identifier == identifier)
            .cloned())
    }
}

#[async_trait]
impl ResourceRepo for MemoryUnitOfWork {
    async fn save_resource(&mut self, resource: &Resource) -> Result<(), StoreError> {
        self.check_write(Some(&resource.zone_id))?;
        // An id owned by a zone this unit cannot see stays untouched, as RLS keeps it in Postgres.
        if let Some(existing) = self.read().resources.get(resource.id.as_str()) {
            self.check_write(Some(&existing.zone_id))?;
        }
        let clash = resource.archived_at.is_none()
            && self.read().resources.values().any(|r| {
                r.id != resource.id
                    && r.zone_id == resource.zone_id
                    && r.archived_at.is_none()
                    && r.identifier == resource.identifier
            });
        if clash {
            return Err(StoreError::Conflict("resources_active_identifier".into()));
        }
        self.write()
            .resources
            .insert(resource.id.to_string(), resource.clone());
        Ok(())
    }

    async fn get_resource(
        &mut self,
        zone: &ZoneId,
        id: &ResourceId,
    ) -> Result<Option<Resource>, StoreError> {
        let found = self.read().resources.get(id.as_str()).cloned();
        Ok(found.filter(|r| &r.zone_id == zone && self.visible(Some(&r.zone_id))))
    }

    async fn list_resources(
        &mut self,
        zone: &ZoneId,
        liveness: Liveness,
        page: &Page,
    ) -> Result<Vec<Resource>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .resources
            .values()
            .filter(|r| &r.zone_id == zone && live(liveness, &r.archived_at));
        Ok(page_of(
            rows.cloned(),
            |r| (r.attr.created_at, r.id.to_string()),
            page,
        ))
    }

    async fn find_resource_by_identifier(
        &mut self,
        zone: &ZoneId,
        identifier: &str,
    ) -> Result<Option<Resource>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(None);
        }
        Ok(self
            .read()
            .resources
            .values()
            .find(|r| &r.zone_id == zone && r.archived_at.is_none() && r.identifier == identifier)
            .cloned())
    }

    async fn count_active_resources(&mut self, zone: &ZoneId) -> Result<u64, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(0);
        }
        Ok(self
            .read()
            .resources
            .values()
            .filter(|r| &r.zone_id == zone && r.archived_at.is_none())
            .count() as u64)
    }
}

#[async_trait]
impl PolicyRepo for MemoryUnitOfWork {
    async fn save_policy(&mut self, policy: &Policy) -> Result<(), StoreError> {
        self.check_write(Some(&policy.zone_id))?;
        // An id owned by a zone this unit cannot see stays untouched, as RLS keeps it in Postgres.
        if let Some(existing) = self.read().policies.get(policy.id.as_str()) {
            self.check_write(Some(&existing.zone_id))?;
        }
        let clash = policy.archived_at.is_none()
            && self.read().policies.values().any(|p| {
                p.id != policy.id
                    && p.zone_id == policy.zone_id
                    && p.archived_at.is_none()
                    && p.name == policy.name
            });
        if clash {
            return Err(StoreError::Conflict("policies_active_name".into()));
        }
        self.write()
            .policies
            .insert(policy.id.to_string(), policy.clone());
        Ok(())
    }

    async fn get_policy(
        &mut self,
        zone: &ZoneId,
        id: &PolicyId,
    ) -> Result<Option<Policy>, StoreError> {
        let found = self.read().policies.get(id.as_str()).cloned();
        Ok(found.filter(|p| &p.zone_id == zone && self.visible(Some(&p.zone_id))))
    }

    async fn list_policies(
        &mut self,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<Policy>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .policies
            .values()
            .filter(|p| &p.zone_id == zone && p.archived_at.is_none());
        Ok(page_of(
            rows.cloned(),
            |p| (p.attr.created_at, p.id.to_string()),
            page,
        ))
    }

    async fn find_policy_by_name(
        &mut self,
        zone: &ZoneId,
        name: &str,
    ) -> Result<Option<Policy>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(None);
        }
        Ok(self
            .read()
            .policies
            .values()
            .find(|p| &p.zone_id == zone && p.archived_at.is_none() && p.name == name)
            .cloned())
    }

    async fn save_policy_version(&mut self, version: &PolicyVersion) -> Result<(), StoreError> {
        self.check_write(Some(&version.zone_id))?;
        // An id owned by a zone this unit cannot see stays untouched, as RLS keeps it in Postgres.
        if let Some(existing) = self.read().policy_versions.get(version.id.as_str()) {
            self.check_write(Some(&existing.zone_id))?;
        }
        let clash = self.read().policy_versions.values().any(|v| {
            v.id != version.id && v.policy_id == version.policy_id && v.version == version.version
        });
        if clash {
            return Err(StoreError::Conflict(
                "policy_versions_policy_version".into(),
            ));
        }
        self.write()
            .policy_versions
            .insert(version.id.to_string(), version.clone());
        Ok(())
    }

    async fn list_policy_versions(
        &mut self,
        zone: &ZoneId,
        policy: &PolicyId,
    ) -> Result<Vec<PolicyVersion>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let mut rows: Vec<PolicyVersion> = self
            .read()
            .policy_versions
            .values()
            .filter(|v| &v.zone_id == zone && &v.policy_id == policy)
            .cloned()
            .collect();
        rows.sort_by_key(|v| std::cmp::Reverse(v.version));
        Ok(rows)
    }

    async fn get_policy_version(
        &mut self,
        zone: &ZoneId,
        id: &PolicyVersionId,
    ) -> Result<Option<PolicyVersion>, StoreError> {
        let found = self.read().policy_versions.get(id.as_str()).cloned();
        Ok(found.filter(|v| &v.zone_id == zone && self.visible(Some(&v.zone_id))))
    }
}

#[async_trait]
impl PolicySetRepo for MemoryUnitOfWork {
    async fn save_policy_set(&mut self, set: &PolicySet) -> Result<(), StoreError> {
        self.check_write(Some(&set.zone_id))?;
        // An id owned by a zone this unit cannot see stays untouched, as RLS keeps it in Postgres.
        if let Some(existing) = self.read().policy_sets.get(set.id.as_str()) {
            self.check_write(Some(&existing.zone_id))?;
        }
        let others = || {
            self.read()
                .policy_sets
                .values()
                .filter(|s| s.id != set.id && s.zone_id == set.zone_id && s.archived_at.is_none())
        };
        if set.archived_at.is_none() && others().any(|s| s.name == set.name) {
            return Err(StoreError::Conflict("policy_sets_active_name".into()));
        }
        if set.archived_at.is_none()
            && set.active_version_id.is_some()
            && others().any(|s| s.active_version_id.is_some())
        {
            return Err(StoreError::Conflict(
                "policy_sets_one_active_per_zone".into(),
            ));
        }
        self.write()
            .policy_sets
            .insert(set.id.to_string(), set.clone());
        Ok(())
    }

    async fn get_policy_set(
        &mut self,
        zone: &ZoneId,
        id: &PolicySetId,
    ) -> Result<Option<PolicySet>, StoreError> {
        let found = self.read().policy_sets.get(id.as_str()).cloned();
        Ok(found.filter(|s| &s.zone_id == zone && self.visible(Some(&s.zone_id))))
    }

    async fn list_policy_sets(
        &mut self,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<PolicySet>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .policy_sets
            .values()
            .filter(|s| &s.zone_id == zone && s.archived_at.is_none());
        Ok(page_of(
            rows.cloned(),
            |s| (s.attr.created_at, s.id.to_string()),
            page,
        ))
    }

    async fn find_policy_set_by_name(
        &mut self,
        zone: &ZoneId,
        name: &str,
    ) -> Result<Option<PolicySet>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(None);
        }
        Ok(self
            .read()
            .policy_sets
            .values()
            .find(|s| &s.zone_id == zone && s.archived_at.is_none() && s.name == name)
            .cloned())
    }

    async fn list_active_policy_sets(
        &mut self,
        zone: &ZoneId,
    ) -> Result<Vec<PolicySet>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        Ok(self
            .read()
            .policy_sets
            .values()
            .filter(|s| {
                &s.zone_id == zone && s.archived_at.is_none() && s.active_version_id.is_some()
            })
            .cloned()
            .collect())
    }

    async fn insert_policy_set_version(
        &mut self,
        version: &PolicySetVersion,
    ) -> Result<(), StoreError> {
        self.check_write(Some(&version.zone_id))?;
        let clash = self.read().policy_set_versions.values().any(|v| {
            v.id == version.id
                || (v.policy_set_id == version.policy_set_id && v.version == version.version)
        });
        if clash {
            return Err(StoreError::Conflict(
                "policy_set_versions_set_version".into(),
            ));
        }
        self.write()
            .policy_set_versions
            .insert(version.id.to_string(), version.clone());
        Ok(())
    }

    async fn get_policy_set_version(
        &mut self,
        zone: &ZoneId,
        id: &PolicySetVersionId,
    ) -> Result<Option<PolicySetVersion>, StoreError> {
        let found = self.read().policy_set_versions.get(id.as_str()).cloned();
        Ok(found.filter(|v| &v.zone_id == zone && self.visible(Some(&v.zone_id))))
    }

    async fn list_policy_set_versions(
        &mut self,
        zone: &ZoneId,
        set: &PolicySetId,
        page: &Page,
    ) -> Result<Vec<PolicySetVersion>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .policy_set_versions
            .values()
            .filter(|v| &v.zone_id == zone && &v.policy_set_id == set);
        Ok(page_of(
            rows.cloned(),
            |v| (v.created_at, v.id.to_string()),
            page,
        ))
    }

    async fn max_policy_set_version(
        &mut self,
        zone: &ZoneId,
        set: &PolicySetId,
    ) -> Result<i32, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(0);
        }
        Ok(self
            .read()
            .policy_set_versions
            .values()
            .filter(|v| &v.zone_id == zone && &v.policy_set_id == set)
            .map(|v| v.version)
            .max()
            .unwrap_or(0))
    }
}

#[async_trait]
impl GrantRepo for MemoryUnitOfWork {
    async fn save_grant(&mut self, grant: &Grant) -> Result<(), StoreError> {
        self.check_write(Some(&grant.zone_id))?;
        // An id owned by a zone this unit cannot see stays untouched, as RLS keeps it in Postgres.
        if let Some(existing) = self.read().grants.get(grant.id.as_str()) {
            self.check_write(Some(&existing.zone_id))?;
        }
        self.write()
            .grants
            .insert(grant.id.to_string(), grant.clone());
        Ok(())
    }

    async fn get_grant(
        &mut self,
        zone: &ZoneId,
        id: &GrantId,
    ) -> Result<Option<Grant>, StoreError> {
        let found = self.read().grants.get(id.as_str()).cloned();
        Ok(found.filter(|g| &g.zone_id == zone && self.visible(Some(&g.zone_id))))
    }

    async fn list_grants(&mut self, zone: &ZoneId, page: &Page) -> Result<Vec<Grant>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self.read().grants.values().filter(|g| &g.zone_id == zone);
        Ok(page_of(
            rows.cloned(),
            |g| (g.attr.created_at, g.id.to_string()),
            page,
        ))
    }
}

#[async_trait]
impl SubjectIssuerRepo for MemoryUnitOfWork {
    async fn save_subject_issuer(&mut self, issuer: &SubjectIssuer) -> Result<(), StoreError> {
        self.check_write(Some(&issuer.zone_id))?;
        // An id owned by a zone this unit cannot see stays untouched, as RLS keeps it in Postgres.
        if let Some(existing) = self.read().subject_issuers.get(issuer.id.as_str()) {
            self.check_write(Some(&existing.zone_id))?;
        }
        let clash = issuer.archived_at.is_none()
            && self.read().subject_issuers.values().any(|i| {
                i.id != issuer.id
                    && i.zone_id == issuer.zone_id
                    && i.archived_at.is_none()
                    && i.issuer == issuer.issuer
            });
        if clash {
            return Err(StoreError::Conflict("subject_issuers_active_issuer".into()));
        }
        self.write()
            .subject_issuers
            .insert(issuer.id.to_string(), issuer.clone());
        Ok(())
    }

    async fn get_subject_issuer(
        &mut self,
        zone: &ZoneId,
        id: &SubjectIssuerId,
    ) -> Result<Option<SubjectIssuer>, StoreError> {
        let found = self.read().subject_issuers.get(id.as_str()).cloned();
        Ok(found.filter(|i| &i.zone_id == zone && self.visible(Some(&i.zone_id))))
    }

    async fn list_subject_issuers(
        &mut self,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<SubjectIssuer>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .subject_issuers
            .values()
            .filter(|i| &i.zone_id == zone && i.archived_at.is_none());
        Ok(page_of(
            rows.cloned(),
            |i| (i.attr.created_at, i.id.to_string()),
            page,
        ))
    }

    async fn find_subject_issuer(
        &mut self,
        zone: &ZoneId,
        issuer: &str,
    ) -> Result<Option<SubjectIssuer>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(None);
        }
        Ok(self
            .read()
            .subject_issuers
            .values()
            .find(|i| &i.zone_id == zone && i.archived_at.is_none() && i.issuer == issuer)
            .cloned())
    }

    async fn count_active_subject_issuers(&mut self, zone: &ZoneId) -> Result<u64, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(0);
        }
        Ok(self
            .read()
            .subject_issuers
            .values()
            .filter(|i| &i.zone_id == zone && i.archived_at.is_none())
            .count() as u64)
    }
}

#[async_trait]
impl AdminTokenRepo for MemoryUnitOfWork {
    async fn save_admin_token(&mut self, token: &AdminToken) -> Result<(), StoreError> {
        self.check_write(token.zone_id.as_ref())?;
        let clash = self
            .read()
            .admin_tokens
            .values()
            .any(|t| t.id != token.id && t.token_sha256 == token.token_sha256);
        if clash {
            return Err(StoreError::Conflict("admin_tokens_token_sha256_key".into()));
        }
        self.write()
            .admin_tokens
            .insert(token.id.to_string(), token.clone());
        Ok(())
    }

    async fn find_admin_token_by_sha256(
        &mut self,
        sha256_hex: &str,
    ) -> Result<Option<AdminToken>, StoreError> {
        let found = self
            .read()
            .admin_tokens
            .values()
            .find(|t| t.token_sha256 == sha256_hex && t.revoked_at.is_none())
            .cloned();
        Ok(found.filter(|t| self.visible(t.zone_id.as_ref())))
    }

    async fn get_admin_token(
        &mut self,
        id: &AdminTokenId,
    ) -> Result<Option<AdminToken>, StoreError> {
        let found = self.read().admin_tokens.get(id.as_str()).cloned();
        Ok(found.filter(|t| self.visible(t.zone_id.as_ref())))
    }

    async fn list_admin_tokens(&mut self, page: &Page) -> Result<Vec<AdminToken>, StoreError> {
        let rows: Vec<AdminToken> = self
            .read()
            .admin_tokens
            .values()
            .filter(|t| self.visible(t.zone_id.as_ref()))
            .cloned()
            .collect();
        Ok(page_of(
            rows.into_iter(),
            |t| (t.created_at, t.id.to_string()),
            page,
        ))
    }

    async fn list_admin_tokens_created_by(
        &mut self,
        creator: &str,
    ) -> Result<Vec<AdminToken>, StoreError> {
        Ok(self
            .read()
            .admin_tokens
            .values()
            .filter(|t| {
                t.created_by == creator
                    && t.revoked_at.is_none()
                    && self.visible(t.zone_id.as_ref())
            })
            .cloned()
            .collect())
    }
}

fn zone_of(zone: Option<&str>) -> Option<ZoneId> {
    zone.and_then(|z| ZoneId::parse(z).ok())
}

#[async_trait]
impl AdminAuditRepo for MemoryUnitOfWork {
    async fn last_admin_audit(
        &mut self,
        zone: Option<&str>,
    ) -> Result<Option<AdminAuditRecord>, StoreError> {
        if !self.visible(zone_of(zone).as_ref()) {
            return Ok(None);
        }
        Ok(self
            .read()
            .admin_audit
            .iter()
            .filter(|r| r.zone_id.as_deref() == zone)
            .max_by_key(|r| r.chain_seq)
            .cloned())
    }

    async fn append_admin_audit(&mut self, record: &AdminAuditRecord) -> Result<(), StoreError> {
        self.check_write(zone_of(record.zone_id.as_deref()).as_ref())?;
        let clash = self.read().admin_audit.iter().any(|r| {
            r.id == record.id || (r.zone_id == record.zone_id && r.chain_seq == record.chain_seq)
        });
        if clash {
            return Err(StoreError::Conflict("admin_audit_events_chain_seq".into()));
        }
        self.write().admin_audit.push(record.clone());
        Ok(())
    }

    async fn list_admin_audit(
        &mut self,
        zone: Option<&str>,
        page: &Page,
    ) -> Result<Vec<AdminAuditRecord>, StoreError> {
        if !self.visible(zone_of(zone).as_ref()) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .admin_audit
            .iter()
            .filter(|r| r.zone_id.as_deref() == zone);
        Ok(page_of(
            rows.cloned(),
            |r| (r.occurred_at, r.id.clone()),
            page,
        ))
    }
}

#[async_trait]
impl OutboxRepo for MemoryUnitOfWork {
    async fn enqueue_outbox(&mut self, message: &OutboxMessage) -> Result<(), StoreError> {
        if self.read().outbox.contains_key(message.id.as_str()) {
            return Err(StoreError::Conflict("event_outbox_pkey".into()));
        }
        self.write()
            .outbox
            .insert(message.id.to_string(), message.clone());
        Ok(())
    }

    async fn get_outbox(&mut self, id: &OutboxId) -> Result<Option<OutboxMessage>, StoreError> {
        Ok(self.read().outbox.get(id.as_str()).cloned())
    }

    async fn find_latest_outbox(
        &mut self,
        stream: &str,
        fields: &[(&str, &str)],
    ) -> Result<Option<OutboxMessage>, StoreError> {
        Ok(self
            .read()
            .outbox
            .values()
            .filter(|m| {
                m.stream == stream
                    && fields
                        .iter()
                        .all(|(k, v)| m.fields.get(*k).map(String::as_str) == Some(*v))
            })
            .max_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)))
            .cloned())
    }
}

#[async_trait]
impl SecretRepo for MemoryUnitOfWork {
    async fn put_secret(&mut self, secret: &SealedSecret) -> Result<(), StoreError> {
        self.check_write(Some(&secret.zone_id))?;
        let version = self
            .read()
            .secrets
            .get(&secret.reference)
            .map(|s| s.version + 1)
            .unwrap_or(1);
        let mut stored = secret.clone();
        stored.version = version;
        self.write()
            .secrets
            .insert(secret.reference.clone(), stored);
        Ok(())
    }

    async fn get_secret(&mut self, reference: &str) -> Result<Option<SealedSecret>, StoreError> {
        let found = self.read().secrets.get(reference).cloned();
        Ok(found.filter(|s| self.visible(Some(&s.zone_id))))
    }

    async fn delete_secret(&mut self, reference: &str) -> Result<bool, StoreError> {
        let visible = match self.read().secrets.get(reference) {
            Some(s) => self.visible(Some(&s.zone_id)),
            None => false,
        };
        if !visible {
            return Ok(false);
        }
        Ok(self.write().secrets.remove(reference).is_some())
    }
}

#[async_trait]
impl AuthorityRecordRepo for MemoryUnitOfWork {
    async fn save_authority_record(&mut self, record: &AuthorityRecord) -> Result<(), StoreError> {
        self.check_write(Some(&record.zone_id))?;
        // An id owned by a zone this unit cannot see stays untouched, as RLS keeps it in Postgres.
        if let Some(existing) = self.read().authority_records.get(&record.id) {
            self.check_write(Some(&existing.zone_id))?;
        }
        self.write()
            .authority_records
            .insert(record.id.clone(), record.clone());
        Ok(())
    }

    async fn get_authority_record(
        &mut self,
        zone: &ZoneId,
        id: &str,
    ) -> Result<Option<AuthorityRecord>, StoreError> {
        let found = self.read().authority_records.get(id).cloned();
        Ok(found.filter(|r| &r.zone_id == zone && self.visible(Some(&r.zone_id))))
    }

    async fn list_authority_record_children(
        &mut self,
        zone: &ZoneId,
        id: &str,
    ) -> Result<Vec<AuthorityRecord>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let mut children: Vec<AuthorityRecord> = self
            .read()
            .authority_records
            .values()
            .filter(|r| &r.zone_id == zone && r.parent_id.as_deref() == Some(id))
            .cloned()
            .collect();
        // Oldest first, as the Postgres adapter orders them, so callers see one order everywhere.
        children.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(children)
    }
}

#[async_trait]
impl AgentGraphRepo for MemoryUnitOfWork {
    async fn save_agent_session(&mut self, session: &AgentSession) -> Result<(), StoreError> {
        self.check_write(Some(&session.zone_id))?;
        // An id owned by a zone this unit cannot see stays untouched, as RLS keeps it in Postgres.
        if let Some(existing) = self.read().agent_sessions.get(&session.id) {
            self.check_write(Some(&existing.zone_id))?;
        }
        self.write()
            .agent_sessions
            .insert(session.id.clone(), session.clone());
        Ok(())
    }

    async fn get_agent_session(
        &mut self,
        zone: &ZoneId,
        id: &str,
    ) -> Result<Option<AgentSession>, StoreError> {
        let found = self.read().agent_sessions.get(id).cloned();
        Ok(found.filter(|s| &s.zone_id == zone && self.visible(Some(&s.zone_id))))
    }

    async fn save_delegation_edge(&mut self, edge: &DelegationEdge) -> Result<(), StoreError> {
        self.check_write(Some(&edge.zone_id))?;
        // An id owned by a zone this unit cannot see stays untouched, as RLS keeps it in Postgres.
        if let Some(existing) = self.read().delegation_edges.get(&edge.id) {
            self.check_write(Some(&existing.zone_id))?;
        }
        self.write()
            .delegation_edges
            .insert(edge.id.clone(), edge.clone());
        Ok(())
    }

    async fn get_delegation_edge(
        &mut self,
        zone: &ZoneId,
        id: &str,
    ) -> Result<Option<DelegationEdge>, StoreError> {
        let found = self.read().delegation_edges.get(id).cloned();
        Ok(found.filter(|e| &e.zone_id == zone && self.visible(Some(&e.zone_id))))
    }

    async fn delegation_graph_epoch(&mut self, zone: &ZoneId) -> Result<i64, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(0);
        }
        Ok(self
            .read()
            .graph_epochs
            .get(zone.as_str())
            .copied()
            .unwrap_or(0))
    }

    async fn bump_delegation_graph_epoch(&mut self, zone: &ZoneId) -> Result<i64, StoreError> {
        self.check_write(Some(zone))?;
        let epoch = self
            .write()
            .graph_epochs
            .entry(zone.to_string())
            .or_insert(0);
        *epoch += 1;
        Ok(*epoch)
    }

    async fn list_agent_sessions(
        &mut self,
        zone: &ZoneId,
        filter: &SessionFilter,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AgentSession>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self.read().agent_sessions.values().filter(|s| {
            &s.zone_id == zone
                && filter
                    .status
                    .as_ref()
                    .is_none_or(|status| &s.status == status)
                && filter
                    .lifecycle
                    .is_none_or(|lifecycle| s.lifecycle == lifecycle)
                && filter
                    .application_id
                    .as_ref()
                    .is_none_or(|app| &s.application_id == app)
                && filter
                    .label
                    .as_ref()
                    .is_none_or(|label| s.labels.contains(label))
        });
        Ok(id_page(rows.cloned(), |s| s.id.as_str(), before, limit))
    }

    async fn list_child_sessions(
        &mut self,
        zone: &ZoneId,
        parent: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AgentSession>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .agent_sessions
            .values()
            .filter(|s| &s.zone_id == zone && s.parent_id.as_deref() == Some(parent));
        Ok(id_page(rows.cloned(), |s| s.id.as_str(), before, limit))
    }

    async fn count_live_agent_sessions(
        &mut self,
        zone: &ZoneId,
        application_id: Option<&str>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(0);
        }
        Ok(self
            .read()
            .agent_sessions
            .values()
            .filter(|s| {
                &s.zone_id == zone
                    && application_id.is_none_or(|app| s.application_id == app)
                    && counts_as_live(s, now)
            })
            .count() as u64)
    }

    async fn list_edges_by_target(
        &mut self,
        zone: &ZoneId,
        session: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DelegationEdge>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .delegation_edges
            .values()
            .filter(|e| &e.zone_id == zone && e.target_session_id == session);
        Ok(id_page(rows.cloned(), |e| e.id.as_str(), before, limit))
    }

    async fn list_edges_by_source(
        &mut self,
        zone: &ZoneId,
        session: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DelegationEdge>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .delegation_edges
            .values()
            .filter(|e| &e.zone_id == zone && e.source_session_id == session);
        Ok(id_page(rows.cloned(), |e| e.id.as_str(), before, limit))
    }

    async fn list_edges_by_parent(
        &mut self,
        zone: &ZoneId,
        edge: &str,
    ) -> Result<Vec<DelegationEdge>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .delegation_edges
            .values()
            .filter(|e| &e.zone_id == zone && e.parent_edge_id.as_deref() == Some(edge));
        Ok(id_page(rows.cloned(), |e| e.id.as_str(), None, u32::MAX))
    }

    async fn list_active_edges(
        &mut self,
        zone: &ZoneId,
        now: Timestamp,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<DelegationEdge>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .delegation_edges
            .values()
            .filter(|e| &e.zone_id == zone && e.status == "active" && e.expires_at > now);
        Ok(id_page(rows.cloned(), |e| e.id.as_str(), before, limit))
    }

    async fn active_edges_touching(
        &mut self,
        zone: &ZoneId,
        sessions: &[String],
    ) -> Result<Vec<DelegationEdge>, StoreError> {
        if !self.visible(Some(zone)) || sessions.is_empty() {
            return Ok(Vec::new());
        }
        let rows = self.read().delegation_edges.values().filter(|e| {
            &e.zone_id == zone
                && e.status == "active"
                && (sessions.contains(&e.source_session_id)
                    || sessions.contains(&e.target_session_id))
        });
        Ok(id_page(rows.cloned(), |e| e.id.as_str(), None, u32::MAX))
    }

    async fn due_task_sessions(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<AgentSession>, StoreError> {
        let rows = self.read().agent_sessions.values().filter(|s| {
            self.visible(Some(&s.zone_id))
                && s.lifecycle == Lifecycle::Task
                && (s.status == "active" || s.status == "suspended")
                && task_due_at(s) <= now
        });
        Ok(oldest_first(
            rows.cloned(),
            |s| (task_due_at(s), s.id.clone()),
            limit,
        ))
    }

    async fn lapsed_service_sessions(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<AgentSession>, StoreError> {
        let rows = self.read().agent_sessions.values().filter(|s| {
            self.visible(Some(&s.zone_id))
                && s.lifecycle == Lifecycle::Service
                && s.status == "active"
                && s.heartbeat_deadline_at.is_some_and(|d| d <= now)
        });
        Ok(oldest_first(
            rows.cloned(),
            |s| (s.heartbeat_deadline_at, s.id.clone()),
            limit,
        ))
    }

    async fn lapsed_active_edges(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<DelegationEdge>, StoreError> {
        let rows = self.read().delegation_edges.values().filter(|e| {
            self.visible(Some(&e.zone_id)) && e.status == "active" && e.expires_at <= now
        });
        Ok(oldest_first(
            rows.cloned(),
            |e| (e.expires_at, e.id.clone()),
            limit,
        ))
    }

    async fn purge_ended_graph(
        &mut self,
        cutoff: Timestamp,
        limit: u32,
    ) -> Result<(u64, u64), StoreError> {
        // Candidates and references are both taken from the state before any delete, as one
        // Postgres DELETE sees its own snapshot: a parent whose last child goes in this pass
        // is left for the next one.
        let state = self.read();
        let referenced_edges: std::collections::BTreeSet<(&ZoneId, &str)> = state
            .delegation_edges
            .values()
            .filter_map(|e| e.parent_edge_id.as_deref().map(|p| (&e.zone_id, p)))
            .collect();
        let edges = oldest_first(
            state.delegation_edges.values().filter(|e| {
                self.visible(Some(&e.zone_id))
                    && (e.status == "revoked" || e.status == "expired")
                    && edge_ended_at(e) < cutoff
                    && !referenced_edges.contains(&(&e.zone_id, e.id.as_str()))
            }),
            |e| (edge_ended_at(e), e.id.clone()),
            limit,
        );
        let edges: Vec<String> = edges.into_iter().map(|e| e.id.clone()).collect();
        let referenced_sessions: std::collections::BTreeSet<(&ZoneId, &str)> = state
            .agent_sessions
            .values()
            .filter_map(|s| s.parent_id.as_deref().map(|p| (&s.zone_id, p)))
            .collect();
        let sessions = oldest_first(
            state.agent_sessions.values().filter(|s| {
                self.visible(Some(&s.zone_id))
                    && (s.status == "terminated" || s.status == "expired")
                    && s.ended_at.is_some_and(|at| at < cutoff)
                    && !referenced_sessions.contains(&(&s.zone_id, s.id.as_str()))
            }),
            |s| (s.ended_at, s.id.clone()),
            limit,
        );
        let sessions: Vec<String> = sessions.into_iter().map(|s| s.id.clone()).collect();
        if edges.is_empty() && sessions.is_empty() {
            return Ok((0, 0));
        }
        let state = self.write();
        for id in &edges {
            state.delegation_edges.remove(id);
        }
        for id in &sessions {
            state.agent_sessions.remove(id);
        }
        Ok((edges.len() as u64, sessions.len() as u64))
    }

    async fn revoked_anchors(&mut self, since: Timestamp) -> Result<RevokedAnchors, StoreError> {
        let state = self.read();
        let records = state
            .authority_records
            .values()
            .filter(|r| {
                self.visible(Some(&r.zone_id))
                    && r.status == RecordStatus::Revoked
                    && r.expires_at > since
            })
            .map(|r| r.id.clone())
            .collect();
        let sessions = state
            .agent_sessions
            .values()
            .filter(|s| {
                self.visible(Some(&s.zone_id)) && s.status == "terminated" && s.updated_at > since
            })
            .map(|s| s.id.clone())
            .collect();
        let edges = state
            .delegation_edges
            .values()
            .filter(|e| {
                self.visible(Some(&e.zone_id))
                    && e.status == "revoked"
                    && e.revoked_at.is_some_and(|at| at > since)
            })
            .map(|e| e.id.clone())
            .collect();
        Ok(RevokedAnchors {
            records,
            sessions,
            edges,
        })
    }
}

#[async_trait]
impl CoordinationRepo for MemoryUnitOfWork {
    async fn get_idempotency_receipt(
        &mut self,
        scope: &str,
        key_hash: &str,
        now: Timestamp,
    ) -> Result<Option<IdempotencyReceipt>, StoreError> {
        let key = (scope.to_owned(), key_hash.to_owned());
        let found = self.read().idempotency_receipts.get(&key).cloned();
        Ok(found.filter(|r| self.visible(Some(&r.zone_id)) && r.expires_at > now))
    }

    async fn count_idempotency_receipts(
        &mut self,
        scope: &str,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let start = (scope.to_owned(), String::new());
        Ok(self
            .read()
            .idempotency_receipts
            .range(start..)
            .take_while(|((s, _), _)| s == scope)
            .filter(|(_, r)| self.visible(Some(&r.zone_id)) && r.expires_at > now)
            .count() as u64)
    }

    async fn insert_idempotency_receipt(
        &mut self,
        receipt: &IdempotencyReceipt,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.check_write(Some(&receipt.zone_id))?;
        let key = (receipt.scope.clone(), receipt.key_hash.clone());
        if let Some(existing) = self.read().idempotency_receipts.get(&key) {
            // Another zone's row under the same key: RLS refuses the update in Postgres.
            self.check_write(Some(&existing.zone_id))?;
            if existing.expires_at > now {
                return Err(StoreError::Conflict("idempotency_receipts_key".into()));
            }
        }
        self.write()
            .idempotency_receipts
            .insert(key, receipt.clone());
        Ok(())
    }

    async fn purge_idempotency_receipts(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let expired = oldest_first(
            self.read()
                .idempotency_receipts
                .iter()
                .filter(|(_, r)| self.visible(Some(&r.zone_id)) && r.expires_at <= now),
            |(key, r)| (r.expires_at, (*key).clone()),
            limit,
        );
        let keys: Vec<(String, String)> = expired.into_iter().map(|(k, _)| k.clone()).collect();
        if keys.is_empty() {
            return Ok(0);
        }
        let state = self.write();
        for key in &keys {
            state.idempotency_receipts.remove(key);
        }
        Ok(keys.len() as u64)
    }

    async fn save_agent_service(&mut self, service: &AgentService) -> Result<(), StoreError> {
        self.check_write(Some(&service.zone_id))?;
        // An id owned by a zone this unit cannot see stays untouched, as RLS keeps it in Postgres.
        if let Some(existing) = self.read().agent_services.get(&service.id) {
            self.check_write(Some(&existing.zone_id))?;
        }
        let clash = self.read().agent_services.values().any(|s| {
            s.id != service.id
                && s.zone_id == service.zone_id
                && s.application_id == service.application_id
                && s.endpoint_url == service.endpoint_url
        });
        if clash {
            return Err(StoreError::Conflict("agent_services_endpoint".into()));
        }
        self.write()
            .agent_services
            .insert(service.id.clone(), service.clone());
        Ok(())
    }

    async fn get_agent_service(
        &mut self,
        zone: &ZoneId,
        id: &str,
    ) -> Result<Option<AgentService>, StoreError> {
        let found = self.read().agent_services.get(id).cloned();
        Ok(found.filter(|s| &s.zone_id == zone && self.visible(Some(&s.zone_id))))
    }

    async fn find_agent_service(
        &mut self,
        zone: &ZoneId,
        application_id: &str,
        endpoint_url: &str,
    ) -> Result<Option<AgentService>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(None);
        }
        Ok(self
            .read()
            .agent_services
            .values()
            .find(|s| {
                &s.zone_id == zone
                    && s.application_id == application_id
                    && s.endpoint_url == endpoint_url
            })
            .cloned())
    }

    async fn list_agent_services(
        &mut self,
        zone: &ZoneId,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AgentService>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .agent_services
            .values()
            .filter(|s| &s.zone_id == zone);
        Ok(id_page(rows.cloned(), |s| s.id.as_str(), before, limit))
    }

    async fn save_invocation(&mut self, invocation: &Invocation) -> Result<(), StoreError> {
        self.check_write(Some(&invocation.zone_id))?;
        // An id owned by a zone this unit cannot see stays untouched, as RLS keeps it in Postgres.
        if let Some(existing) = self.read().invocations.get(&invocation.id) {
            self.check_write(Some(&existing.zone_id))?;
        }
        self.write()
            .invocations
            .insert(invocation.id.clone(), invocation.clone());
        Ok(())
    }

    async fn get_invocation(
        &mut self,
        zone: &ZoneId,
        id: &str,
    ) -> Result<Option<Invocation>, StoreError> {
        let found = self.read().invocations.get(id).cloned();
        Ok(found.filter(|i| &i.zone_id == zone && self.visible(Some(&i.zone_id))))
    }

    async fn list_invocations(
        &mut self,
        zone: &ZoneId,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Invocation>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows = self
            .read()
            .invocations
            .values()
            .filter(|i| &i.zone_id == zone);
        Ok(id_page(rows.cloned(), |i| i.id.as_str(), before, limit))
    }

    async fn overdue_invocations(
        &mut self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Invocation>, StoreError> {
        let rows = self.read().invocations.values().filter(|i| {
            self.visible(Some(&i.zone_id))
                && i.status == "running"
                && i.deadline_at.is_some_and(|d| d <= now)
        });
        Ok(oldest_first(
            rows.cloned(),
            |i| (i.deadline_at, i.id.clone()),
            limit,
        ))
    }
}

#[async_trait]
impl SigningKeyRepo for MemoryUnitOfWork {
    async fn insert_signing_key(&mut self, key: &ZoneSigningKey) -> Result<(), StoreError> {
        self.check_write(Some(&key.zone_id))?;
        if self.read().signing_keys.contains_key(&key.id) {
            return Err(StoreError::Conflict("zone_signing_keys_pkey".into()));
        }
        let clash = self
            .read()
            .signing_keys
            .values()
            .any(|k| k.zone_id == key.zone_id && k.version == key.version);
        if clash {
            return Err(StoreError::Conflict("zone_signing_keys_version".into()));
        }
        self.write()
            .signing_keys
            .insert(key.id.clone(), key.clone());
        Ok(())
    }

    async fn latest_signing_keys(
        &mut self,
        zone: &ZoneId,
        limit: u32,
    ) -> Result<Vec<ZoneSigningKey>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let mut keys: Vec<ZoneSigningKey> = self
            .read()
            .signing_keys
            .values()
            .filter(|k| &k.zone_id == zone)
            .cloned()
            .collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.version));
        keys.truncate(limit as usize);
        Ok(keys)
    }
}

#[async_trait]
impl UnitLocks for MemoryUnitOfWork {
    async fn lock(&mut self, _name: &str) -> Result<(), StoreError> {
        // Every memory unit of work already holds the store lock for its whole life.
        Ok(())
    }

    /// Always `true`: units of work are serialised by the store lock, so no other unit can
    /// hold any named lock while this one runs.
    async fn try_lock(&mut self, _name: &str) -> Result<bool, StoreError> {
        Ok(true)
    }
}

#[async_trait]
impl UnitOfWork for MemoryUnitOfWork {
    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let MemoryUnitOfWork {
            mut guard, draft, ..
        } = *self;
        if let Some(state) = draft {
            *guard = state;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn begin(&self, scope: &ZoneScope) -> Result<Box<dyn UnitOfWork>, StoreError> {
        let guard = Arc::clone(&self.state).lock_owned().await;
        Ok(Box::new(MemoryUnitOfWork {
            guard,
            draft: None,
            scope: scope.clone(),
        }))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl OutboxQueue for MemoryStore {
    async fn claim_due(
        &self,
        now: Timestamp,
        lock_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let mut state = self.state.lock().await;
        let mut due: Vec<&mut OutboxMessage> = state
            .outbox
            .values_mut()
            .filter(|m| {
                m.dispatched_at.is_none()
                    && m.available_at.is_some_and(|at| at <= now)
                    && m.locked_until.is_none_or(|until| until <= now)
            })
            .collect();
        due.sort_by_key(|m| (m.available_at, m.id.to_string()));
        Ok(due
            .into_iter()
            .take(limit as usize)
            .map(|m| {
                m.locked_until = Some(lock_until);
                m.attempts += 1;
                m.clone()
            })
            .collect())
    }

    async fn mark_dispatched(&self, id: &OutboxId, at: Timestamp) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        if let Some(m) = state.outbox.get_mut(id.as_str()) {
            m.dispatched_at = Some(at);
            m.locked_until = None;
            m.last_error = None;
        }
        Ok(())
    }

    async fn mark_failed(
        &self,
        id: &OutboxId,
        error: &str,
        retry_at: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let mut state = self.state.lock().await;
        if let Some(m) = state.outbox.get_mut(id.as_str()) {
            m.available_at = retry_at;
            m.locked_until = None;
            m.last_error = Some(error.to_owned());
        }
        Ok(())
    }

    async fn outbox_counts(&self) -> Result<(u64, u64), StoreError> {
        let state = self.state.lock().await;
        let pending = state
            .outbox
            .values()
            .filter(|m| m.dispatched_at.is_none() && m.available_at.is_some())
            .count() as u64;
        let dead = state
            .outbox
            .values()
            .filter(|m| m.dispatched_at.is_none() && m.available_at.is_none())
            .count() as u64;
        Ok((pending, dead))
    }
}

#[async_trait]
impl ApprovalRepo for MemoryUnitOfWork {
    async fn save_approval(&mut self, hold: &ApprovalHold) -> Result<(), StoreError> {
        self.check_write(Some(&hold.zone_id))?;
        self.write().approvals.insert(hold.id.clone(), hold.clone());
        Ok(())
    }

    async fn get_approval(&mut self, id: &str) -> Result<Option<ApprovalHold>, StoreError> {
        let found = self.read().approvals.get(id).cloned();
        Ok(found.filter(|h| self.visible(Some(&h.zone_id))))
    }

    async fn find_approvals(
        &mut self,
        zone: &ZoneId,
        principal: &str,
        session_id: &str,
        binding: &str,
    ) -> Result<Vec<ApprovalHold>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let mut rows: Vec<ApprovalHold> = self
            .read()
            .approvals
            .values()
            .filter(|h| {
                &h.zone_id == zone
                    && h.principal_id == principal
                    && h.session_id == session_id
                    && h.binding == binding
            })
            .cloned()
            .collect();
        rows.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(rows)
    }

    async fn delete_approval(&mut self, id: &str) -> Result<bool, StoreError> {
        let Some(zone) = self.read().approvals.get(id).map(|h| h.zone_id.clone()) else {
            return Ok(false);
        };
        if !self.visible(Some(&zone)) {
            return Ok(false);
        }
        self.check_write(Some(&zone))?;
        Ok(self.write().approvals.remove(id).is_some())
    }

    async fn list_approvals(
        &mut self,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<ApprovalHold>, StoreError> {
        if !self.visible(Some(zone)) {
            return Ok(Vec::new());
        }
        let rows: Vec<ApprovalHold> = self
            .read()
            .approvals
            .values()
            .filter(|h| &h.zone_id == zone)
            .cloned()
            .collect();
        Ok(page_of(
            rows.into_iter(),
            |h| (h.created_at, h.id.clone()),
            page,
        ))
    }
}
