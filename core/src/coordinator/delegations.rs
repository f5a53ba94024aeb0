//! The Delegation graph (`spec/coordinator-gateway.md` A8): creating edges between live
//! Sessions that only ever narrow authority (typed constraints, resource resolution, parent
//! narrowing, cycle check), revoking with a downstream cascade, and the reads (inbound,
//! outbound, active, traverse, impact, effective authority).

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::authority::DelegationEdge;
use crate::coordinator::graph::{
    delegation_lock, downstream, edge_live, edges_into, path_exists, session_lock, EndStatus,
    Follow, Known, Reached,
};
use crate::coordinator::idempotency::{self, fingerprint, principal_fingerprint, Prior};
use crate::coordinator::sessions::input::{self, Issues, ListQuery};
use crate::coordinator::sessions::page_body;
use crate::coordinator::{
    wire_time, wire_time_opt, Coordinator, IdempotencyHeaders, Principal, Reply, MAX_DEPTH,
    MAX_TTL_SECONDS, TOPIC_DELEGATIONS_INVALIDATE, TOPIC_SESSIONS_REVOKE,
};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ResourceId, ZoneId};
use crate::ports::UnitOfWork;
use crate::time::Timestamp;

/// Most resource identifiers one edge may name.
const MAX_CONSTRAINT_RESOURCES: usize = 64;
/// Largest `budget`.
const MAX_BUDGET: i64 = 64;
/// Longest `broad_reason`, in characters.
const MAX_BROAD_REASON_CHARS: usize = 256;
/// The warning a resource-unbound edge carries.
const BROAD_WARNING: &str = "resource_null_delegation_broadens_resource_matching";
/// `broad_reason` of a broad edge that gave none.
const DEFAULT_BROAD_REASON: &str = "resource_null_delegation";

/// An edge's typed constraints after validation (A8.1): the object stored as
/// `constraints_json` (integers normalized, `max_depth` mirrored into `max_hops`) and the
/// values the narrowing rules read.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Constraints {
    /// The stored object.
    pub map: Map<String, Value>,
    /// Resource identifiers the edge is confined to (empty: none named).
    pub resources: Vec<String>,
    /// Hop limit (default 1 when absent).
    pub max_hops: Option<i64>,
    /// Longest mandate lifetime.
    pub ttl_seconds: Option<i64>,
    /// Most scopes a child may carry.
    pub budget: Option<i64>,
    /// Expiry named inside the constraints.
    pub expires_at: Option<(String, Timestamp)>,
}

fn constraint_error(code: &'static str) -> Error {
    Error::invalid(code, "Delegation constraints failed validation")
}

/// The strict key set, in the order upstream's schema checks them: the first offending key
/// names the error.
const CONSTRAINT_KEYS: [(&str, &str); 8] = [
    ("resources", "invalid_resources"),
    ("max_depth", "invalid_max_depth"),
    ("max_hops", "invalid_max_hops"),
    ("budget", "invalid_budget"),
    ("ttl_seconds", "invalid_ttl_seconds"),
    ("policy_approved", "invalid_policy_approved"),
    ("expires_at", "invalid_expires_at"),
    ("broad_reason", "invalid_broad_reason"),
];

fn bounded_int(value: &Value, max: i64) -> Option<i64> {
    if !value.is_number() {
        return None;
    }
    input::integral(value).filter(|n| (1..=max).contains(n))
}

impl Constraints {
    /// Merges the legacy `constraints_json` with `constraints` (`constraints` wins), mirrors a
    /// lone `max_depth` into `max_hops`, copies the body's `ttl_seconds` when the constraints
    /// name none, and validates strictly: unknown key → `invalid_delegation_constraint`, bad
    /// key `k` → `invalid_<k>`, `max_depth` ≠ `max_hops` → `invalid_max_hops`.
    pub(crate) fn normalize(
        legacy: Option<&Value>,
        current: Option<&Value>,
        body_ttl: Option<i64>,
    ) -> Result<Self> {
        let mut merged = Map::new();
        for part in [legacy, current].into_iter().flatten() {
            match part {
                Value::Object(map) => merged.extend(map.clone()),
                _ => return Err(constraint_error("invalid_delegation_constraint")),
            }
        }
        if merged.get("max_depth").is_some_and(Value::is_number) && !merged.contains_key("max_hops")
        {
            let depth = merged["max_depth"].clone();
            merged.insert("max_hops".into(), depth);
        }
        if let Some(ttl) = body_ttl {
            if !merged.contains_key("ttl_seconds") {
                merged.insert("ttl_seconds".into(), json!(ttl));
            }
        }

        let mut out = Constraints::default();
        let mut depth = None;
        for (key, code) in CONSTRAINT_KEYS {
            let Some(value) = merged.get(key) else {
                continue;
            };
            let bad = || constraint_error(code);
            let stored = match key {
                "resources" => {
                    let items = value.as_array().ok_or_else(bad)?;
                    if items.len() > MAX_CONSTRAINT_RESOURCES {
                        return Err(bad());
                    }
                    let list = items
                        .iter()
                        .map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(bad)?;
                    out.resources.clone_from(&list);
                    json!(list)
                }
                "max_depth" => {
                    let n = bounded_int(value, i64::from(MAX_DEPTH)).ok_or_else(bad)?;
                    depth = Some(n);
                    json!(n)
                }
                "max_hops" => {
                    let n = bounded_int(value, i64::from(MAX_DEPTH)).ok_or_else(bad)?;
                    out.max_hops = Some(n);
                    json!(n)
                }
                "budget" => {
                    let n = bounded_int(value, MAX_BUDGET).ok_or_else(bad)?;
                    out.budget = Some(n);
                    json!(n)
                }
                "ttl_seconds" => {
                    let n = bounded_int(value, MAX_TTL_SECONDS).ok_or_else(bad)?;
                    out.ttl_seconds = Some(n);
                    json!(n)
                }
                "policy_approved" => Value::Bool(value.as_bool().ok_or_else(bad)?),
                "expires_at" => {
                    let text = value.as_str().ok_or_else(bad)?;
                    let at = Timestamp::parse_utc_z(text).ok_or_else(bad)?;
                    out.expires_at = Some((text.to_owned(), at));
                    json!(text)
                }
                _ => {
                    let text = value
                        .as_str()
                        .filter(|s| (1..=MAX_BROAD_REASON_CHARS).contains(&s.chars().count()))
                        .ok_or_else(bad)?;
                    json!(text)
                }
            };
            out.map.insert(key.to_owned(), stored);
        }
        if merged
            .keys()
            .any(|k| !CONSTRAINT_KEYS.iter().any(|(known, _)| known == k))
        {
            return Err(constraint_error("invalid_delegation_constraint"));
        }
        if let (Some(d), Some(h)) = (depth, out.max_hops) {
            if d != h {
                return Err(constraint_error("invalid_max_hops"));
            }
        }
        Ok(out)
    }

    /// The constraints of a stored edge; `None` when they no longer validate (such an edge
    /// narrows nothing and is never a usable parent).
    pub(crate) fn of_edge(edge: &DelegationEdge) -> Option<Self> {
        Self::normalize(
            Some(&Value::Object(edge.constraints_json.clone())),
            None,
            None,
        )
        .ok()
    }
}

/// A validated create body (A8.1).
struct CreateRequest {
    source_session_id: String,
    target_session_id: String,
    issuer_application_id: String,
    receiver_application_id: String,
    parent_edge_id: Option<String>,
    resource_id: Option<String>,
    scopes: Vec<String>,
    legacy_constraints: Option<Value>,
    constraints: Option<Value>,
    expires_at: Option<(String, Timestamp)>,
    ttl_seconds: Option<i64>,
}

impl CreateRequest {
    fn parse(body: &Value) -> Result<Self> {
        let mut issues = Issues::default();
        let Some(obj) = input::object(body, &mut issues) else {
            issues.finish()?;
            return Err(Error::internal(
                "unreachable: non-object body without issue",
            ));
        };
        let required = |key: &str, issues: &mut Issues| {
            input::text(obj, key, issues, true, false, 1, usize::MAX)
        };
        let source = required("source_session_id", &mut issues);
        let target = required("target_session_id", &mut issues);
        let issuer = required("issuer_application_id", &mut issues);
        let receiver = required("receiver_application_id", &mut issues);
        let parent_edge_id = input::text(
            obj,
            "parent_edge_id",
            &mut issues,
            false,
            false,
            1,
            usize::MAX,
        );
        let resource_id = input::text(obj, "resource_id", &mut issues, false, true, 1, usize::MAX);
        let scopes = scopes(obj, &mut issues);
        let expires_at = input::datetime(obj, "expires_at", &mut issues);
        let ttl_seconds =
            input::integer(obj, "ttl_seconds", &mut issues, false, 1, MAX_TTL_SECONDS);
        issues.finish()?;
        let (Some(source), Some(target), Some(issuer), Some(receiver)) =
            (source, target, issuer, receiver)
        else {
            return Err(Error::internal("required members validated but absent"));
        };
        Ok(Self {
            source_session_id: source,
            target_session_id: target,
            issuer_application_id: issuer,
            receiver_application_id: receiver,
            parent_edge_id,
            resource_id,
            scopes,
            legacy_constraints: obj.get("constraints_json").cloned(),
            constraints: obj.get("constraints").cloned(),
            expires_at,
            ttl_seconds,
        })
    }
}

/// `scopes`: non-empty strings, default `[]`.
fn scopes(obj: &Map<String, Value>, issues: &mut Issues) -> Vec<String> {
    let Some(value) = obj.get("scopes") else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        issues.at(
            "scopes",
            format!("Expected array, received {}", input::type_name(value)),
        );
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) if !s.is_empty() => out.push(s.to_owned()),
            Some(_) => issues.push(
                vec![json!("scopes"), json!(i)],
                "String must contain at least 1 character(s)",
            ),
            None => issues.push(
                vec![json!("scopes"), json!(i)],
                format!("Expected string, received {}", input::type_name(item)),
            ),
        }
    }
    out
}

/// A resource an edge names, resolved to its row.
#[derive(Debug, Clone)]
struct NamedResource {
    id: String,
    identifier: String,
    scopes: Vec<String>,
}

fn resource_not_found() -> Error {
    Error::not_found("resource_not_found")
}

/// An unarchived resource of the zone by row id or public identifier.
async fn resource_by_reference(
    uow: &mut dyn UnitOfWork,
    zone: &ZoneId,
    reference: &str,
) -> Result<Option<NamedResource>> {
    if let Ok(id) = ResourceId::parse(reference) {
        if let Some(r) = uow.get_resource(zone, &id).await? {
            if r.archived_at.is_none() {
                return Ok(Some(NamedResource {
                    id: r.id.as_str().to_owned(),
                    identifier: r.identifier,
                    scopes: r.scopes,
                }));
            }
        }
    }
    Ok(uow
        .find_resource_by_identifier(zone, reference)
        .await?
        .filter(|r| r.archived_at.is_none())
        .map(|r| NamedResource {
            id: r.id.as_str().to_owned(),
            identifier: r.identifier,
            scopes: r.scopes,
        }))
}

/// Resolves `resource_id` and `constraints.resources` (A8.1): any unknown or archived →
/// `404 resource_not_found`; a `resource_id` outside a non-empty `constraints.resources` →
/// `400 delegation_resource_scope_mismatch`. Distinct rows, `resource_id`'s first.
async fn resolve_resources(
    uow: &mut dyn UnitOfWork,
    zone: &ZoneId,
    resource_id: Option<&str>,
    identifiers: &[String],
) -> Result<Vec<NamedResource>> {
    let mut out: Vec<NamedResource> = Vec::new();
    if let Some(reference) = resource_id {
        let r = resource_by_reference(uow, zone, reference)
            .await?
            .ok_or_else(resource_not_found)?;
        out.push(r);
    }
    if identifiers.is_empty() {
        return Ok(out);
    }
    let unique: BTreeSet<&String> = identifiers.iter().collect();
    let mut listed = Vec::with_capacity(unique.len());
    for identifier in unique {
        let r = uow
            .find_resource_by_identifier(zone, identifier)
            .await?
            .filter(|r| r.archived_at.is_none())
            .ok_or_else(resource_not_found)?;
        listed.push(NamedResource {
            id: r.id.as_str().to_owned(),
            identifier: r.identifier,
            scopes: r.scopes,
        });
    }
    if let Some(reference) = resource_id {
        if !listed
            .iter()
            .any(|r| r.id == reference || r.identifier == reference)
        {
            return Err(Error::invalid(
                "delegation_resource_scope_mismatch",
                "resource_id must be one of constraints.resources",
            ));
        }
    }
    for r in listed {
        if !out.iter().any(|o| o.id == r.id) {
            out.push(r);
        }
    }
    Ok(out)
}

/// What the narrowing check compares on the child side.
struct Child<'a> {
    resource_id: Option<&'a str>,
    resources: &'a [NamedResource],
    scopes: &'a [String],
    constraints: &'a Constraints,
    requested_expiry: Option<Timestamp>,
}

/// A8.2: whether `child` only narrows `parent`.
fn narrows(parent: &DelegationEdge, child: &Child<'_>) -> bool {
    let Some(pc) = Constraints::of_edge(parent) else {
        return false;
    };
    if !child.scopes.iter().all(|s| parent.scopes.contains(s)) {
        return false;
    }
    if child
        .requested_expiry
        .is_some_and(|at| at > parent.expires_at)
    {
        return false;
    }
    let resources_ok = if let Some(parent_resource) = &parent.resource_id {
        child.resource_id == Some(parent_resource.as_str())
            || (!child.resources.is_empty()
                && child.resources.iter().all(|r| &r.id == parent_resource))
    } else if !pc.resources.is_empty() {
        !child.resources.is_empty()
            && child
                .resources
                .iter()
                .all(|r| pc.resources.contains(&r.identifier))
    } else {
        true
    };
    if !resources_ok {
        return false;
    }
    // A default edge (max_hops 1) cannot be re-delegated; a child must hop strictly less.
    let parent_hops = pc.max_hops.unwrap_or(1);
    let child_hops = child.constraints.max_hops.unwrap_or(1);
    if parent_hops <= 1 || child_hops > parent_hops - 1 {
        return false;
    }
    if let Some(limit) = pc.ttl_seconds {
        if child.constraints.ttl_seconds.is_none_or(|t| t > limit) {
            return false;
        }
    }
    if let Some(limit) = pc.budget {
        let budget = child
            .constraints
            .budget
            .unwrap_or(child.scopes.len() as i64);
        if budget > limit {
            return false;
        }
    }
    true
}

/// An edge as listings show it (A8.4).
fn edge_row(e: &DelegationEdge) -> Value {
    json!({
        "id": e.id,
        "zone_id": e.zone_id.as_str(),
        "source_session_id": e.source_session_id,
        "target_session_id": e.target_session_id,
        "issuer_application_id": e.issuer_application_id,
        "receiver_application_id": e.receiver_application_id,
        "parent_edge_id": e.parent_edge_id,
        "resource_id": e.resource_id,
        "scopes": e.scopes,
        "constraints_json": e.constraints_json,
        "status": e.status,
        "expires_at": wire_time(e.expires_at),
        "edge_version": e.edge_version,
        "revoked_at": wire_time_opt(e.revoked_at),
        "created_at": wire_time(e.created_at),
    })
}

/// The created edge as the 201 body starts (A8.1): the row with `delegation_edge_id`.
fn created_row(e: &DelegationEdge) -> Map<String, Value> {
    let mut row = match edge_row(e) {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    if let Some(id) = row.remove("id") {
        row.insert("delegation_edge_id".into(), id);
    }
    row
}

/// A walk row of traverse and impact.
fn reached_row(r: &Reached) -> Value {
    json!({
        "id": r.edge.id,
        "source_session_id": r.edge.source_session_id,
        "target_session_id": r.edge.target_session_id,
        "depth": r.depth,
    })
}

fn delegation_not_found() -> Error {
    Error::not_found("delegation_not_found")
}

fn admin_required(p: &Principal) -> Result<()> {
    if p.is_admin() {
        Ok(())
    } else {
        Err(Error::forbidden(
            "coordinator_admin_required",
            "This route requires coordinator.admin",
        ))
    }
}

/// The application whose edges a caller may see: `None` for admins (everything).
fn reader(p: &Principal) -> Option<&str> {
    (!p.is_admin()).then_some(p.client_id.as_str())
}

fn visible(edge: &DelegationEdge, reader: Option<&str>) -> bool {
    reader
        .is_none_or(|app| edge.issuer_application_id == app || edge.receiver_application_id == app)
}

/// Which edges a listing pages over.
#[derive(Clone, Copy)]
enum Listing<'a> {
    Inbound(&'a str),
    Outbound(&'a str),
    Active,
}

/// One page of a listing, keeping only edges the reader may see (reading on until the page
/// is full, so the visibility filter never shortens a page that has more rows behind it).
async fn edge_page(
    uow: &mut dyn UnitOfWork,
    zone: &ZoneId,
    listing: Listing<'_>,
    reader: Option<&str>,
    cursor: Option<&str>,
    limit: u32,
    now: Timestamp,
) -> Result<Vec<DelegationEdge>> {
    let mut out = Vec::new();
    let mut before = cursor.map(str::to_owned);
    loop {
        let page = match listing {
            Listing::Inbound(s) => {
                uow.list_edges_by_target(zone, s, before.as_deref(), limit)
                    .await?
            }
            Listing::Outbound(s) => {
                uow.list_edges_by_source(zone, s, before.as_deref(), limit)
                    .await?
            }
            Listing::Active => {
                uow.list_active_edges(zone, now, before.as_deref(), limit)
                    .await?
            }
        };
        let exhausted = page.len() < limit as usize;
        before = page.last().map(|e| e.id.clone());
        for e in page {
            if visible(&e, reader) && out.len() < limit as usize {
                out.push(e);
            }
        }
        if exhausted || out.len() >= limit as usize {
            return Ok(out);
        }
    }
}

impl Coordinator {
    /// `POST …/delegations` (A8.1): an edge from a live source Session to a live target
    /// Session that narrows whatever authority the source itself received.
    pub async fn create_delegation(
        &self,
        p: &Principal,
        zone: &ZoneId,
        idem: &IdempotencyHeaders,
        body: &Value,
    ) -> Result<Reply> {
        let req = CreateRequest::parse(body)?;
        let mut constraints = Constraints::normalize(
            req.legacy_constraints.as_ref(),
            req.constraints.as_ref(),
            req.ttl_seconds,
        )?;
        let requested_expiry = req
            .expires_at
            .clone()
            .or_else(|| constraints.expires_at.clone());
        let ttl_seconds = match requested_expiry {
            Some(_) => None,
            None => constraints.ttl_seconds,
        };
        if requested_expiry.is_none() && ttl_seconds.is_none() {
            return Err(Error::invalid(
                "delegation_expiry_required",
                "A Delegation needs expires_at or ttl_seconds",
            ));
        }
        let issuer = req.issuer_application_id.as_str();
        if !p.owns(issuer) && !p.has_scope_for("coordinator.delegate_from", issuer) {
            return Err(Error::forbidden(
                "issuer_ownership_required",
                "The caller may not delegate for this issuer application",
            ));
        }
        if req.source_session_id == req.target_session_id {
            return Err(Error::invalid(
                "self_delegation_denied",
                "A Session cannot delegate to itself",
            ));
        }
        let resource_scoped = req.resource_id.is_some() || !constraints.resources.is_empty();
        if !resource_scoped
            && !p.is_admin()
            && !p.has_scope("coordinator.delegate_broad")
            && !p.has_scope_for("coordinator.delegate_broad", issuer)
        {
            return Err(Error::forbidden(
                "broad_delegation_permission_required",
                "A Delegation without a resource requires coordinator.delegate_broad",
            ));
        }
        if !resource_scoped {
            constraints
                .map
                .entry("broad_reason")
                .or_insert_with(|| json!(DEFAULT_BROAD_REASON));
            constraints
                .map
                .insert("policy_approved".into(), json!(true));
        }
        let key = idempotency::validate_headers(idem)?;
        let mut sorted_scopes = req.scopes.clone();
        sorted_scopes.sort();
        let request_fingerprint = fingerprint(&json!({
            "principal": principal_fingerprint(&p.client_id, &p.sub),
            "source_session_id": req.source_session_id,
            "target_session_id": req.target_session_id,
            "issuer_application_id": req.issuer_application_id,
            "receiver_application_id": req.receiver_application_id,
            "parent_edge_id": req.parent_edge_id,
            "resource_id": req.resource_id,
            "scopes": sorted_scopes,
            "constraints": constraints.map,
            "expires_at": requested_expiry.as_ref().map(|(text, _)| text),
            "ttl_seconds": ttl_seconds,
        }));

        let now = self.clock.now();
        let mut uow = self.begin_for(p, zone).await?;
        uow.lock(&delegation_lock(zone)).await?;
        let scope = idempotency::scope("delegation.create.v2", zone, issuer);
        if let Some(key) = &key {
            if let Prior::Same(receipt) = self
                .replay(&mut *uow, &scope, key, &request_fingerprint, now)
                .await?
            {
                let live = uow
                    .get_delegation_edge(zone, &receipt.object_id)
                    .await?
                    .is_some_and(|e| e.issuer_application_id == issuer && edge_live(&e, now));
                if !live {
                    return Err(idempotency::result_inactive());
                }
                return Ok(Prior::reply(&receipt));
            }
        }

        // Both endpoints in one read.
        let endpoints = uow
            .get_agent_sessions(zone, &[&req.source_session_id, &req.target_session_id])
            .await?;
        let live = |id: &str| {
            endpoints
                .iter()
                .find(|s| s.id == id)
                .filter(|s| s.is_live(now))
                .cloned()
        };
        let source = live(&req.source_session_id);
        let target = live(&req.target_session_id);
        let (Some(source), Some(target)) = (source, target) else {
            return Err(Error::not_found("delegation_endpoint_not_found"));
        };
        if source.application_id != req.issuer_application_id
            || target.application_id != req.receiver_application_id
        {
            return Err(Error::new(
                ErrorKind::Conflict,
                "delegation_application_mismatch",
            ));
        }
        let resources = resolve_resources(
            &mut *uow,
            zone,
            req.resource_id.as_deref(),
            &constraints.resources,
        )
        .await?;
        // The edge stores the row id whichever form the caller named.
        let resource_id = req.resource_id.as_ref().and_then(|reference| {
            resources
                .iter()
                .find(|r| &r.id == reference || &r.identifier == reference)
                .map(|r| r.id.clone())
        });
        if !resources.is_empty() {
            let available: BTreeSet<&String> = resources.iter().flat_map(|r| &r.scopes).collect();
            if !req.scopes.iter().all(|s| available.contains(s)) {
                return Err(Error::forbidden(
                    "delegation_scopes_exceed_resource",
                    "scopes must be declared by the named resources",
                ));
            }
        }

        let parents: Vec<DelegationEdge> = edges_into(&mut *uow, zone, &source.id)
            .await?
            .into_iter()
            .filter(|e| edge_live(e, now))
            .collect();
        let mut parent_edge_id = None;
        let mut parent_expiry = None;
        if !parents.is_empty() {
            let parent = match &req.parent_edge_id {
                Some(id) => parents.iter().find(|e| &e.id == id).ok_or_else(|| {
                    Error::forbidden(
                        "parent_delegation_not_active",
                        "parent_edge_id is not an active inbound edge of the source",
                    )
                })?,
                None if parents.len() == 1 => &parents[0],
                None => {
                    return Err(Error::conflict(
                        "parent_delegation_ambiguous",
                        "The source holds several active inbound edges; name parent_edge_id",
                    ))
                }
            };
            let child = Child {
                resource_id: resource_id.as_deref(),
                resources: &resources,
                scopes: &req.scopes,
                constraints: &constraints,
                requested_expiry: requested_expiry.as_ref().map(|(_, at)| *at),
            };
            if !narrows(parent, &child) {
                return Err(exceeds_parent());
            }
            parent_edge_id = Some(parent.id.clone());
            parent_expiry = Some(parent.expires_at);
        }
        if path_exists(
            &mut *uow,
            zone,
            &req.target_session_id,
            &req.source_session_id,
            now,
        )
        .await?
        {
            return Err(Error::conflict(
                "delegation_cycle_denied",
                "The target already reaches the source through active edges",
            ));
        }

        let expires_at = match (&requested_expiry, ttl_seconds) {
            (Some((_, at)), _) => *at,
            (None, Some(ttl)) => now.plus_millis(ttl.saturating_mul(1_000)),
            (None, None) => return Err(Error::internal("expiry validated but absent")),
        };
        match parent_expiry {
            Some(limit) if expires_at <= now || expires_at > limit => return Err(exceeds_parent()),
            None if expires_at <= now => {
                return Err(Error::invalid(
                    "delegation_expired",
                    "The Delegation would already be expired",
                ))
            }
            _ => {}
        }

        let edge = DelegationEdge {
            id: self.ids.new_id(),
            zone_id: zone.clone(),
            source_session_id: req.source_session_id.clone(),
            target_session_id: req.target_session_id.clone(),
            issuer_application_id: req.issuer_application_id.clone(),
            receiver_application_id: req.receiver_application_id.clone(),
            parent_edge_id: parent_edge_id.clone(),
            resource_id: resource_id.clone(),
            scopes: req.scopes.clone(),
            constraints_json: constraints.map.clone(),
            status: "active".to_owned(),
            expires_at,
            edge_version: 0,
            revoked_at: None,
            created_at: now,
        };
        uow.save_delegation_edge(&edge).await?;
        let epoch = uow.bump_delegation_graph_epoch(zone).await?;
        self.enqueue(
            &mut *uow,
            TOPIC_DELEGATIONS_INVALIDATE,
            format!("edge_create:{}", edge.id),
            &[
                ("event", Some("edge_create".to_owned())),
                ("zone_id", Some(zone.as_str().to_owned())),
                ("edge_id", Some(edge.id.clone())),
                ("source_session_id", Some(edge.source_session_id.clone())),
                ("target_session_id", Some(edge.target_session_id.clone())),
                ("epoch", Some(epoch.to_string())),
            ],
        )
        .await?;

        let mut body = created_row(&edge);
        body.insert(
            "warnings".into(),
            json!(if resource_scoped {
                Vec::new()
            } else {
                vec![BROAD_WARNING]
            }),
        );
        body.insert(
            "allow_reason".into(),
            json!([
                "same_zone_endpoints_active",
                if resource_scoped {
                    "resource_scope_checked"
                } else {
                    "broad_delegation_elevated"
                },
                if parent_edge_id.is_some() {
                    "parent_authority_narrowed"
                } else {
                    "source_authority_root"
                },
                "typed_constraints_validated",
            ]),
        );
        body.insert(
            "effective_authority".into(),
            json!({
                "source_session_id": edge.source_session_id,
                "target_session_id": edge.target_session_id,
                "parent_edge_id": parent_edge_id,
                "resource_id": resource_id,
                "resources": resources.iter().map(|r| r.identifier.clone()).collect::<Vec<_>>(),
                "scopes": edge.scopes,
                "expires_at": wire_time(expires_at),
                "max_hops": constraints.max_hops.unwrap_or(1),
                "ttl_seconds": constraints.ttl_seconds,
                "broad": resource_id.is_none() && resources.is_empty(),
                "parent_edges_considered": parents.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
            }),
        );
        let reply = Reply::created(Value::Object(body));
        if let Some(key) = &key {
            self.remember(
                &mut *uow,
                zone,
                &scope,
                key,
                &request_fingerprint,
                &edge.id,
                &reply,
                now,
            )
            .await?;
        }
        uow.commit().await?;
        Ok(reply)
    }

    /// `PATCH …/delegations/:id/revoke` (A8.5): revokes the edge and every active edge
    /// downstream of it (≤ 10 hops), terminates the live targets of those edges with their
    /// subtrees, and tells the STS and Gateways which anchors lost authority.
    pub async fn revoke_delegation(
        &self,
        p: &Principal,
        zone: &ZoneId,
        edge_id: &str,
    ) -> Result<Reply> {
        let now = self.clock.now();
        let (mut uow, identity) = self.begin_with_identity(p, zone).await?;
        let identity_record = identity.and_then(|rows| rows.record);
        // Terminating targets changes Sessions too: the Session lock first (deadlock order).
        uow.lock_both(&session_lock(zone), &delegation_lock(zone))
            .await?;
        let edge = uow
            .get_delegation_edge(zone, edge_id)
            .await?
            .ok_or_else(delegation_not_found)?;
        let issuer = edge.issuer_application_id.as_str();
        if !p.owns(issuer) && !p.has_scope_for("coordinator.delegate_from", issuer) && !p.is_admin()
        {
            return Err(Error::forbidden(
                "issuer_ownership_required",
                "The caller may not revoke Delegations of this issuer application",
            ));
        }
        let reached = downstream(&mut *uow, zone, &edge, Follow::Active, now).await?;
        if reached.is_empty() {
            return Err(delegation_not_found());
        }
        let mut target_ids: Vec<String> = Vec::new();
        for r in &reached {
            let mut e = r.edge.clone();
            e.status = "revoked".to_owned();
            e.revoked_at = Some(now);
            e.edge_version += 1;
            uow.save_delegation_edge(&e).await?;
            if !target_ids.contains(&e.target_session_id) {
                target_ids.push(e.target_session_id.clone());
            }
        }
        let mut targets = Vec::new();
        for id in &target_ids {
            if let Some(s) = uow.get_agent_session(zone, id).await? {
                if s.status == "active" || s.status == "suspended" {
                    targets.push(s);
                }
            }
        }
        let ids: Vec<String> = targets.iter().map(|s| s.id.clone()).collect();
        let ended = self
            .terminate_subtree(
                &mut *uow,
                zone,
                &ids,
                "delegation_revoked",
                EndStatus::Terminated,
                Known {
                    sessions: &targets,
                    records: identity_record.as_slice(),
                },
            )
            .await?;
        let epoch = uow.bump_delegation_graph_epoch(zone).await?;
        self.enqueue(
            &mut *uow,
            TOPIC_DELEGATIONS_INVALIDATE,
            format!("edge_revoke:{}", edge.id),
            &[
                ("event", Some("edge_revoke".to_owned())),
                ("zone_id", Some(zone.as_str().to_owned())),
                ("edge_id", Some(edge.id.clone())),
                ("affected_edges", Some(reached.len().to_string())),
                ("epoch", Some(epoch.to_string())),
            ],
        )
        .await?;
        // Upstream announces every distinct anchor here, without the suspend/terminate
        // exemption. We apply the exemption: the usual anchor is the application's own
        // lifecycle mandate, and revoking it would cut the issuer off from the Coordinator and
        // the STS altogether, far beyond the revoked slice. The slice itself is already gone:
        // its edges are revoked and its target Sessions terminated, which the STS checks on
        // every mint.
        let exempt =
            super::graph::exempt_anchors(&mut *uow, zone, &targets, identity_record.as_slice())
                .await?;
        let mut anchors: Vec<&str> = Vec::new();
        for s in &targets {
            if anchors.contains(&s.subject_session_id.as_str()) {
                continue;
            }
            anchors.push(&s.subject_session_id);
            if exempt.contains(&s.subject_session_id) {
                continue;
            }
            self.enqueue(
                &mut *uow,
                TOPIC_SESSIONS_REVOKE,
                format!("delegation:{}:subject:{}", edge.id, s.subject_session_id),
                &[
                    ("zone_id", Some(zone.as_str().to_owned())),
                    ("session_id", Some(s.subject_session_id.clone())),
                    ("agent_session_id", Some(s.id.clone())),
                    ("delegation_edge_id", Some(edge.id.clone())),
                    ("reason", Some("delegation_revoked".to_owned())),
                ],
            )
            .await?;
        }
        self.commit_narrowing(uow, [zone]).await?;
        Ok(Reply::ok(json!({
            "revoked_edges": reached.len(),
            "affected_sessions": anchors.len(),
            "terminated_sessions": ended.len(),
        })))
    }

    /// `GET …/delegations/inbound/:sessionId` (A8.4): edges into a Session, any status.
    pub async fn list_inbound_delegations(
        &self,
        p: &Principal,
        zone: &ZoneId,
        session_id: &str,
        query: &[(String, String)],
    ) -> Result<Reply> {
        self.list_session_edges(p, zone, Listing::Inbound(session_id), session_id, query)
            .await
    }

    /// `GET …/delegations/outbound/:sessionId` (A8.4): edges out of a Session, any status.
    pub async fn list_outbound_delegations(
        &self,
        p: &Principal,
        zone: &ZoneId,
        session_id: &str,
        query: &[(String, String)],
    ) -> Result<Reply> {
        self.list_session_edges(p, zone, Listing::Outbound(session_id), session_id, query)
            .await
    }

    async fn list_session_edges(
        &self,
        p: &Principal,
        zone: &ZoneId,
        listing: Listing<'_>,
        session_id: &str,
        query: &[(String, String)],
    ) -> Result<Reply> {
        let q = ListQuery::parse(query, false)?;
        let now = self.clock.now();
        let reader = reader(p);
        let mut uow = self.begin_for(p, zone).await?;
        if let Some(app) = reader {
            let owned = uow
                .get_agent_session(zone, session_id)
                .await?
                .is_some_and(|s| s.application_id == app);
            if !owned {
                return Err(Error::not_found("session_not_found"));
            }
        }
        if let Some(cursor) = &q.cursor {
            let ok = uow
                .get_delegation_edge(zone, cursor)
                .await?
                .is_some_and(|e| {
                    let on_session = match listing {
                        Listing::Inbound(s) => e.target_session_id == s,
                        Listing::Outbound(s) => e.source_session_id == s,
                        Listing::Active => true,
                    };
                    on_session && visible(&e, reader)
                });
            if !ok {
                return Err(input::bad_cursor());
            }
        }
        let rows = edge_page(
            &mut *uow,
            zone,
            listing,
            reader,
            q.cursor.as_deref(),
            q.limit,
            now,
        )
        .await?;
        Ok(Reply::ok(page_body(
            rows.iter().map(edge_row).collect(),
            rows.last().map(|e| e.id.clone()),
            q.limit,
        )))
    }

    /// `GET …/delegations/inbound/:sessionId/:id` (A8.4): `{"id","status":"active"}` for an
    /// active, unexpired edge into the Session received by the caller's application.
    pub async fn get_inbound_delegation(
        &self,
        p: &Principal,
        zone: &ZoneId,
        session_id: &str,
        edge_id: &str,
    ) -> Result<Reply> {
        let now = self.clock.now();
        let reader = reader(p);
        let mut uow = self.begin_for(p, zone).await?;
        let edge = uow
            .get_delegation_edge(zone, edge_id)
            .await?
            .filter(|e| {
                e.target_session_id == session_id
                    && edge_live(e, now)
                    && reader.is_none_or(|app| e.receiver_application_id == app)
            })
            .ok_or_else(delegation_not_found)?;
        Ok(Reply::ok(json!({ "id": edge.id, "status": edge.status })))
    }

    /// `GET …/delegations/active` (A8.4): the zone's live edges the caller may see, with
    /// their `broad_reason`.
    pub async fn list_active_delegations(
        &self,
        p: &Principal,
        zone: &ZoneId,
        query: &[(String, String)],
    ) -> Result<Reply> {
        let q = ListQuery::parse(query, false)?;
        let now = self.clock.now();
        let reader = reader(p);
        let mut uow = self.begin_for(p, zone).await?;
        if let Some(cursor) = &q.cursor {
            let ok = uow
                .get_delegation_edge(zone, cursor)
                .await?
                .is_some_and(|e| visible(&e, reader));
            if !ok {
                return Err(input::bad_cursor());
            }
        }
        let rows = edge_page(
            &mut *uow,
            zone,
            Listing::Active,
            reader,
            q.cursor.as_deref(),
            q.limit,
            now,
        )
        .await?;
        let items = rows
            .iter()
            .map(|e| {
                let mut row = edge_row(e);
                if let Some(map) = row.as_object_mut() {
                    let reason = e
                        .constraints_json
                        .get("broad_reason")
                        .and_then(Value::as_str)
                        .map(str::to_owned);
                    map.insert("broad_reason".into(), json!(reason));
                }
                row
            })
            .collect();
        Ok(Reply::ok(page_body(
            items,
            rows.last().map(|e| e.id.clone()),
            q.limit,
        )))
    }

    /// `GET …/delegations/:id/traverse` (A8.4, admin): the live edges downstream of this one,
    /// `[{id, source_session_id, target_session_id, depth}]` by depth then id.
    pub async fn traverse_delegation(
        &self,
        p: &Principal,
        zone: &ZoneId,
        edge_id: &str,
    ) -> Result<Reply> {
        admin_required(p)?;
        let reached = self.live_downstream(zone, edge_id).await?;
        Ok(Reply::ok(Value::Array(
            reached.iter().map(reached_row).collect(),
        )))
    }

    /// `GET …/delegations/:id/impact` (A8.4, admin): what revoking this edge would reach.
    pub async fn delegation_impact(
        &self,
        p: &Principal,
        zone: &ZoneId,
        edge_id: &str,
    ) -> Result<Reply> {
        admin_required(p)?;
        let reached = self.live_downstream(zone, edge_id).await?;
        if reached.is_empty() {
            return Err(delegation_not_found());
        }
        let mut sessions: Vec<String> = Vec::new();
        for r in &reached {
            if !sessions.contains(&r.edge.target_session_id) {
                sessions.push(r.edge.target_session_id.clone());
            }
        }
        let mut uow = self.begin_for(p, zone).await?;
        let mut records: Vec<String> = Vec::new();
        for id in &sessions {
            if let Some(s) = uow.get_agent_session(zone, id).await? {
                if !records.contains(&s.subject_session_id) {
                    records.push(s.subject_session_id);
                }
            }
        }
        Ok(Reply::ok(json!({
            "edge_id": edge_id,
            "affected_edges": reached.iter().map(reached_row).collect::<Vec<_>>(),
            "affected_sessions": sessions,
            "affected_authority_records": records,
        })))
    }

    async fn live_downstream(&self, zone: &ZoneId, edge_id: &str) -> Result<Vec<Reached>> {
        let now = self.clock.now();
        let mut uow = self.begin(zone).await?;
        let Some(edge) = uow.get_delegation_edge(zone, edge_id).await? else {
            return Ok(Vec::new());
        };
        let mut reached = downstream(&mut *uow, zone, &edge, Follow::Live, now).await?;
        reached.sort_by(|a, b| (a.depth, &a.edge.id).cmp(&(b.depth, &b.edge.id)));
        Ok(reached)
    }

    /// `GET …/agents/:sessionId/effective-authority` (A8.4): what the Session's live inbound
    /// edges jointly allow (scope intersection, resource union, smallest hop and TTL limits,
    /// earliest expiry).
    pub async fn effective_authority(
        &self,
        p: &Principal,
        zone: &ZoneId,
        session_id: &str,
    ) -> Result<Reply> {
        let now = self.clock.now();
        let mut uow = self.begin_for(p, zone).await?;
        if let Some(app) = reader(p) {
            let owned = uow
                .get_agent_session(zone, session_id)
                .await?
                .is_some_and(|s| s.application_id == app);
            if !owned {
                return Err(Error::not_found("session_not_found"));
            }
        }
        let parents: Vec<DelegationEdge> = edges_into(&mut *uow, zone, session_id)
            .await?
            .into_iter()
            .filter(|e| edge_live(e, now))
            .collect();
        if parents.is_empty() {
            return Ok(Reply::ok(json!({
                "agent_session_id": session_id,
                "inbound_edges": [],
                "effective_scopes": [],
                "effective_resource_ids": [],
                "effective_resources": [],
                "effective_resource_constrained": false,
                "effective_max_hops": 0,
                "effective_ttl_seconds": null,
                "earliest_expires_at": null,
            })));
        }
        let mut scopes: Option<BTreeSet<String>> = None;
        let mut resource_ids = BTreeSet::new();
        let mut identifiers = BTreeSet::new();
        let mut constrained = false;
        let mut max_hops: Option<i64> = None;
        let mut ttl: Option<i64> = None;
        let mut earliest = parents[0].expires_at;
        let mut considered = Vec::with_capacity(parents.len());
        for edge in &parents {
            considered.push(edge.id.clone());
            let Some(c) = Constraints::of_edge(edge) else {
                continue;
            };
            let own: BTreeSet<String> = edge.scopes.iter().cloned().collect();
            scopes = Some(match scopes {
                None => own,
                Some(acc) => acc.intersection(&own).cloned().collect(),
            });
            if let Some(rid) = &edge.resource_id {
                resource_ids.insert(rid.clone());
                constrained = true;
                if let Ok(id) = ResourceId::parse(rid) {
                    if let Some(r) = uow.get_resource(zone, &id).await? {
                        identifiers.insert(r.identifier);
                    }
                }
            }
            if !c.resources.is_empty() {
                identifiers.extend(c.resources.iter().cloned());
                constrained = true;
            }
            let hops = c.max_hops.unwrap_or(1);
            max_hops = Some(max_hops.map_or(hops, |m| m.min(hops)));
            if let Some(t) = c.ttl_seconds {
                ttl = Some(ttl.map_or(t, |m| m.min(t)));
            }
            earliest = earliest.min(edge.expires_at);
        }
        Ok(Reply::ok(json!({
            "agent_session_id": session_id,
            "inbound_edges": considered,
            "effective_scopes": scopes.unwrap_or_default(),
            "effective_resource_ids": resource_ids,
            "effective_resources": identifiers,
            "effective_resource_constrained": constrained,
            "effective_max_hops": max_hops,
            "effective_ttl_seconds": ttl,
            "earliest_expires_at": wire_time(earliest),
        })))
    }
}

fn exceeds_parent() -> Error {
    Error::forbidden(
        "delegation_exceeds_parent_authority",
        "The Delegation would exceed the authority the source received",
    )
}
