//! Governed Sessions (`spec/coordinator-gateway.md` A6): start (with idempotency, capacity,
//! tree limits and inherited-edge mirroring), service heartbeats and lease takeover with
//! generation fencing, cascade terminate, reads, suspend and resume.

use serde_json::{json, Map, Value};

use crate::authority::{AgentSession, DelegationEdge, Lifecycle, SessionType};
use crate::coordinator::graph::{
    capacity_lock, delegation_lock, edge_live, edges_into, holds_slot, session_lock, EndStatus,
    Known,
};
use crate::coordinator::idempotency::{self, fingerprint, principal_fingerprint, Prior};
use crate::coordinator::records::{IdempotencyReceipt, SessionFilter};
use crate::coordinator::{
    wire_time, wire_time_opt, Coordinator, IdempotencyHeaders, Principal, Reply,
    DEFAULT_TASK_TTL_SECONDS, MAX_CHILDREN, MAX_DEPTH, MAX_LABELS, MAX_LABEL_CHARS,
    MAX_TTL_SECONDS, TOPIC_AGENTS_LIFECYCLE, TOPIC_DELEGATIONS_INVALIDATE,
};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ApplicationId, ZoneId};
use crate::model::RegistrationMethod;
use crate::ports::UnitOfWork;
use crate::time::Timestamp;

/// Reading JSON bodies and query strings the way upstream's schemas do: every offending field
/// becomes one `invalid_body` issue with its path, unknown body members are ignored.
pub(crate) mod input {
    use serde_json::{Map, Value};

    use crate::coordinator::invalid_body;
    use crate::error::{Error, Result};
    use crate::time::Timestamp;

    /// Issues collected while reading one body.
    #[derive(Debug, Default)]
    pub(crate) struct Issues(Vec<(Vec<Value>, String)>);

    impl Issues {
        /// Records an issue at `path`.
        pub(crate) fn push(&mut self, path: Vec<Value>, message: impl Into<String>) {
            self.0.push((path, message.into()));
        }

        /// Records an issue at the top-level member `key`.
        pub(crate) fn at(&mut self, key: &str, message: impl Into<String>) {
            self.push(vec![Value::String(key.to_owned())], message);
        }

        /// `400 invalid_body` when anything was recorded.
        pub(crate) fn finish(self) -> Result<()> {
            if self.0.is_empty() {
                Ok(())
            } else {
                Err(invalid_body(self.0))
            }
        }
    }

    /// The JSON type name upstream's validator reports.
    pub(crate) fn type_name(value: &Value) -> &'static str {
        match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// An integral JSON number (`2` or `2.0`; huge values saturate so range checks reject
    /// them), else `None`.
    pub(crate) fn integral(value: &Value) -> Option<i64> {
        if let Some(v) = value.as_i64() {
            return Some(v);
        }
        if value.as_u64().is_some() {
            return Some(i64::MAX);
        }
        let f = value.as_f64()?;
        if f.is_finite() && f.fract() == 0.0 {
            // Saturating cast: out-of-range values fail the caller's bounds.
            Some(f as i64)
        } else {
            None
        }
    }

    /// The body as an object, or one root issue.
    pub(crate) fn object<'a>(
        body: &'a Value,
        issues: &mut Issues,
    ) -> Option<&'a Map<String, Value>> {
        match body {
            Value::Object(map) => Some(map),
            other => {
                issues.push(
                    Vec::new(),
                    format!("Expected object, received {}", type_name(other)),
                );
                None
            }
        }
    }

    /// A string member of `min..=max` characters. Absent: `Required` when `required`. `null`
    /// is accepted (as absent) only when `nullable`.
    pub(crate) fn text(
        obj: &Map<String, Value>,
        key: &str,
        issues: &mut Issues,
        required: bool,
        nullable: bool,
        min: usize,
        max: usize,
    ) -> Option<String> {
        match obj.get(key) {
            None => {
                if required {
                    issues.at(key, "Required");
                }
                None
            }
            Some(Value::Null) if nullable => None,
            Some(Value::String(s)) => {
                let n = s.chars().count();
                if n < min {
                    issues.at(
                        key,
                        format!("String must contain at least {min} character(s)"),
                    );
                    None
                } else if n > max {
                    issues.at(
                        key,
                        format!("String must contain at most {max} character(s)"),
                    );
                    None
                } else {
                    Some(s.clone())
                }
            }
            Some(other) => {
                issues.at(
                    key,
                    format!("Expected string, received {}", type_name(other)),
                );
                None
            }
        }
    }

    /// An integer member within `min..=max`.
    pub(crate) fn integer(
        obj: &Map<String, Value>,
        key: &str,
        issues: &mut Issues,
        required: bool,
        min: i64,
        max: i64,
    ) -> Option<i64> {
        let value = match obj.get(key) {
            None => {
                if required {
                    issues.at(key, "Required");
                }
                return None;
            }
            Some(v) => v,
        };
        if !value.is_number() {
            issues.at(
                key,
                format!("Expected number, received {}", type_name(value)),
            );
            return None;
        }
        let Some(n) = integral(value) else {
            issues.at(key, "Expected integer, received float");
            return None;
        };
        if n < min {
            issues.at(
                key,
                format!("Number must be greater than or equal to {min}"),
            );
            None
        } else if n > max {
            issues.at(key, format!("Number must be less than or equal to {max}"));
            None
        } else {
            Some(n)
        }
    }

    /// An optional member that must be one of `options`.
    pub(crate) fn choice(
        obj: &Map<String, Value>,
        key: &str,
        issues: &mut Issues,
        options: &[&str],
    ) -> Option<String> {
        let value = obj.get(key)?;
        let expected = options
            .iter()
            .map(|o| format!("'{o}'"))
            .collect::<Vec<_>>()
            .join(" | ");
        match value.as_str() {
            Some(s) if options.contains(&s) => Some(s.to_owned()),
            Some(s) => {
                issues.at(
                    key,
                    format!("Invalid enum value. Expected {expected}, received '{s}'"),
                );
                None
            }
            None => {
                issues.at(
                    key,
                    format!("Expected {expected}, received {}", type_name(value)),
                );
                None
            }
        }
    }

    /// An optional object member (default `{}`).
    pub(crate) fn record(
        obj: &Map<String, Value>,
        key: &str,
        issues: &mut Issues,
    ) -> Map<String, Value> {
        match obj.get(key) {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                issues.at(
                    key,
                    format!("Expected object, received {}", type_name(other)),
                );
                Map::new()
            }
        }
    }

    /// An optional ISO-8601 datetime ending in `Z`.
    pub(crate) fn datetime(
        obj: &Map<String, Value>,
        key: &str,
        issues: &mut Issues,
    ) -> Option<(String, Timestamp)> {
        let value = obj.get(key)?;
        match value.as_str() {
            Some(s) => match Timestamp::parse_utc_z(s) {
                Some(at) => Some((s.to_owned(), at)),
                None => {
                    issues.at(key, "Invalid datetime");
                    None
                }
            },
            None => {
                issues.at(
                    key,
                    format!("Expected string, received {}", type_name(value)),
                );
                None
            }
        }
    }

    /// A page request of a Coordinator listing (A6.6): `limit` 1..500 (default 100), an
    /// optional non-empty `cursor` (an existing id, checked by the caller), and for Session
    /// listings the filters. Other parameters are ignored; a repeated one is invalid.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub(crate) struct ListQuery {
        /// Rows wanted.
        pub limit: u32,
        /// Start strictly below this id.
        pub cursor: Option<String>,
        /// `status` filter.
        pub status: Option<String>,
        /// `lifecycle` filter.
        pub lifecycle: Option<String>,
        /// `application_id` filter.
        pub application_id: Option<String>,
        /// `label` filter.
        pub label: Option<String>,
    }

    /// Default page size of Coordinator listings.
    pub(crate) const DEFAULT_LIMIT: u32 = 100;
    /// Largest page size of Coordinator listings.
    pub(crate) const MAX_LIMIT: u32 = 500;

    fn bad_query() -> Error {
        Error::invalid("invalid_query", "Query parameters failed validation")
    }

    impl ListQuery {
        /// Parses raw query pairs; `sessions` enables the Session filters.
        pub(crate) fn parse(query: &[(String, String)], sessions: bool) -> Result<Self> {
            let mut out = ListQuery {
                limit: DEFAULT_LIMIT,
                ..ListQuery::default()
            };
            let mut seen: Vec<&str> = Vec::new();
            for (key, value) in query {
                let known = matches!(key.as_str(), "limit" | "cursor")
                    || (sessions
                        && matches!(
                            key.as_str(),
                            "status" | "lifecycle" | "application_id" | "label"
                        ));
                if !known {
                    continue;
                }
                if seen.contains(&key.as_str()) {
                    return Err(bad_query());
                }
                seen.push(key);
                match key.as_str() {
                    "limit" => {
                        let n = value
                            .trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|n| n.is_finite() && n.fract() == 0.0)
                            .ok_or_else(bad_query)?;
                        if n < 1.0 || n > f64::from(MAX_LIMIT) {
                            return Err(bad_query());
                        }
                        out.limit = n as u32;
                    }
                    "status" => {
                        if !["active", "suspended", "terminated", "expired"]
                            .contains(&value.as_str())
                        {
                            return Err(bad_query());
                        }
                        out.status = Some(value.clone());
                    }
                    "lifecycle" => {
                        if !["task", "service"].contains(&value.as_str()) {
                            return Err(bad_query());
                        }
                        out.lifecycle = Some(value.clone());
                    }
                    other => {
                        if value.is_empty() {
                            return Err(bad_query());
                        }
                        let slot = match other {
                            "cursor" => &mut out.cursor,
                            "application_id" => &mut out.application_id,
                            _ => &mut out.label,
                        };
                        *slot = Some(value.clone());
                    }
                }
            }
            Ok(out)
        }
    }

    /// `400 invalid_cursor`: the cursor names no row this listing could contain.
    pub(crate) fn bad_cursor() -> Error {
        Error::invalid(
            "invalid_cursor",
            "cursor does not name a row of this listing",
        )
    }
}

use input::{Issues, ListQuery};

/// Whether a start inherits its parent's narrowing edge (A8.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParentAuthority {
    Inherit,
    None,
}

impl ParentAuthority {
    fn as_str(self) -> &'static str {
        match self {
            Self::Inherit => "inherit",
            Self::None => "none",
        }
    }
}

/// A validated start body (A6.1).
struct StartRequest {
    application_id: String,
    subject_session_id: Option<String>,
    parent_id: Option<String>,
    lifecycle: Lifecycle,
    labels: Vec<String>,
    /// The effective TTL: task default 3600, `None` for services.
    ttl_seconds: Option<i64>,
    parent_authority: ParentAuthority,
    inherit_parent_edge_id: Option<String>,
    metadata: Map<String, Value>,
}

impl StartRequest {
    fn parse(body: &Value) -> Result<Self> {
        let mut issues = Issues::default();
        let Some(obj) = input::object(body, &mut issues) else {
            issues.finish()?;
            return Err(Error::internal(
                "unreachable: non-object body without issue",
            ));
        };
        let application_id = input::text(
            obj,
            "application_id",
            &mut issues,
            true,
            false,
            1,
            usize::MAX,
        );
        let subject_session_id = input::text(
            obj,
            "subject_session_id",
            &mut issues,
            false,
            false,
            1,
            usize::MAX,
        );
        // Upstream treats an empty parent id as "no parent" (falsy); keep that reading.
        let parent_id = input::text(obj, "parent_id", &mut issues, false, true, 0, usize::MAX)
            .filter(|p| !p.is_empty());
        let lifecycle =
            match input::choice(obj, "lifecycle", &mut issues, &["task", "service"]).as_deref() {
                Some("service") => Lifecycle::Service,
                _ => Lifecycle::Task,
            };
        let labels = labels(obj, &mut issues);
        let ttl = input::integer(obj, "ttl_seconds", &mut issues, false, 1, MAX_TTL_SECONDS);
        if lifecycle == Lifecycle::Service && obj.contains_key("ttl_seconds") {
            issues.at(
                "ttl_seconds",
                "service sessions are lease-renewed and do not accept ttl_seconds",
            );
        }
        let parent_authority =
            match input::choice(obj, "parent_authority", &mut issues, &["inherit", "none"])
                .as_deref()
            {
                Some("none") => ParentAuthority::None,
                _ => ParentAuthority::Inherit,
            };
        let inherit_parent_edge_id = input::text(
            obj,
            "inherit_parent_edge_id",
            &mut issues,
            false,
            false,
            1,
            usize::MAX,
        );
        let metadata = input::record(obj, "metadata", &mut issues);
        issues.finish()?;
        let application_id =
            application_id.ok_or_else(|| Error::internal("application_id validated but absent"))?;
        Ok(Self {
            application_id,
            subject_session_id,
            parent_id,
            lifecycle,
            labels,
            ttl_seconds: match lifecycle {
                Lifecycle::Task => Some(ttl.unwrap_or(DEFAULT_TASK_TTL_SECONDS)),
                Lifecycle::Service => None,
            },
            parent_authority,
            inherit_parent_edge_id,
            metadata,
        })
    }
}

/// `labels`: up to 32 strings, each trimmed to 1..64 characters (stored trimmed).
fn labels(obj: &Map<String, Value>, issues: &mut Issues) -> Vec<String> {
    let Some(value) = obj.get("labels") else {
        return Vec::new();
    };
    let Some(items) = value.as_array() else {
        issues.at(
            "labels",
            format!("Expected array, received {}", input::type_name(value)),
        );
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = vec![json!("labels"), json!(i)];
        match item.as_str() {
            Some(s) => {
                let trimmed = s.trim();
                let n = trimmed.chars().count();
                if n < 1 {
                    issues.push(path, "String must contain at least 1 character(s)");
                } else if n > MAX_LABEL_CHARS {
                    issues.push(
                        path,
                        format!("String must contain at most {MAX_LABEL_CHARS} character(s)"),
                    );
                } else {
                    out.push(trimmed.to_owned());
                }
            }
            None => issues.push(
                path,
                format!("Expected string, received {}", input::type_name(item)),
            ),
        }
    }
    if items.len() > MAX_LABELS {
        issues.at(
            "labels",
            format!("Array must contain at most {MAX_LABELS} element(s)"),
        );
    }
    out
}

/// The full Session row of `GET …/agents` and `GET …/agents/:id` (A6.6).
fn session_row(s: &AgentSession) -> Value {
    json!({
        "agent_session_id": s.id,
        "zone_id": s.zone_id.as_str(),
        "application_id": s.application_id,
        "parent_id": s.parent_id,
        "subject_authority_record_id": s.subject_session_id,
        "lifecycle": s.lifecycle.as_str(),
        "labels": s.labels,
        "status": s.status,
        "depth": s.depth,
        "ttl_seconds": s.ttl_seconds,
        "metadata": s.metadata,
        "started_at": wire_time(s.started_at),
        "terminated_at": wire_time_opt(s.ended_at),
        "termination_reason": s.status_reason,
        "last_heartbeat_at": wire_time_opt(s.last_heartbeat_at),
        "heartbeat_deadline_at": wire_time_opt(s.heartbeat_deadline_at),
        "lease_generation": s.lease_generation,
    })
}

/// A row of `…/children`: the full row without the end and lease columns.
fn child_row(s: &AgentSession) -> Value {
    let mut row = session_row(s);
    if let Some(map) = row.as_object_mut() {
        map.remove("terminated_at");
        map.remove("termination_reason");
        map.remove("lease_generation");
    }
    row
}

/// The 201 body of a start (A6.1).
fn started_body(s: &AgentSession, edge: Option<&str>) -> Value {
    json!({
        "agent_session_id": s.id,
        "zone_id": s.zone_id.as_str(),
        "application_id": s.application_id,
        "parent_id": s.parent_id,
        "subject_authority_record_id": s.subject_session_id,
        "lifecycle": s.lifecycle.as_str(),
        "labels": s.labels,
        "status": s.status,
        "depth": s.depth,
        "ttl_seconds": s.ttl_seconds,
        "started_at": wire_time(s.started_at),
        "last_heartbeat_at": wire_time_opt(s.last_heartbeat_at),
        "heartbeat_deadline_at": wire_time_opt(s.heartbeat_deadline_at),
        "lease_generation": s.lease_generation,
        "delegation_edge_id": edge,
    })
}

fn session_not_found() -> Error {
    Error::not_found("session_not_found")
}

fn ownership_required() -> Error {
    Error::forbidden(
        "application_ownership_required",
        "The caller may not manage Sessions of this application",
    )
}

fn conflict(code: &'static str) -> Error {
    Error::new(ErrorKind::Conflict, code)
}

fn too_many(code: &'static str) -> Error {
    Error::new(ErrorKind::RateLimited, code)
}

/// A heartbeat body (A6.3).
struct HeartbeatRequest {
    lease_generation: i64,
    status: String,
    service_id: Option<String>,
    active_invocations: i64,
    metadata: Map<String, Value>,
}

impl HeartbeatRequest {
    fn parse(body: &Value) -> Result<Self> {
        let mut issues = Issues::default();
        let Some(obj) = input::object(body, &mut issues) else {
            issues.finish()?;
            return Err(Error::internal(
                "unreachable: non-object body without issue",
            ));
        };
        let service_id = input::text(obj, "service_id", &mut issues, false, false, 1, usize::MAX);
        let status = input::choice(
            obj,
            "status",
            &mut issues,
            &["starting", "healthy", "degraded", "unhealthy"],
        )
        .unwrap_or_else(|| "healthy".to_owned());
        let active_invocations =
            input::integer(obj, "active_invocations", &mut issues, false, 0, i64::MAX).unwrap_or(0);
        let metadata = input::record(obj, "metadata", &mut issues);
        let generation = input::integer(obj, "lease_generation", &mut issues, true, 1, i64::MAX);
        issues.finish()?;
        Ok(Self {
            lease_generation: generation
                .ok_or_else(|| Error::internal("lease_generation validated but absent"))?,
            status,
            service_id,
            active_invocations,
            metadata,
        })
    }
}

/// Why a lease-bearing call stops before renewing (heartbeat and lease share the tail).
enum LeaseGate {
    /// Go on.
    Open,
    /// The anchor (a user record) is gone: the subtree was terminated.
    SubjectInactive,
    /// The lease ran out: the subtree was suspended.
    Expired,
}

impl Coordinator {
    /// `POST …/agents` (A6.1): starts a task or service Session, optionally under a parent
    /// (mirroring the parent's narrowing edge), idempotently per `Idempotency-Key`.
    pub async fn start_session(
        &self,
        p: &Principal,
        zone: &ZoneId,
        idem: &IdempotencyHeaders,
        body: &Value,
    ) -> Result<Reply> {
        let req = StartRequest::parse(body)?;
        let anchor = req
            .subject_session_id
            .clone()
            .or_else(|| p.sid.clone())
            .ok_or_else(|| {
                Error::invalid(
                    "subject_session_id_required",
                    "subject_session_id is required when the mandate carries no sid",
                )
            })?;
        if !p.owns(&req.application_id)
            && !p.has_scope_for("coordinator.spawn_for", &req.application_id)
        {
            return Err(ownership_required());
        }
        let key = idempotency::validate_headers(idem)?;
        let request_fingerprint = fingerprint(&json!({
            "principal": principal_fingerprint(&p.client_id, &p.sub),
            "application_id": req.application_id,
            "subject_authority_record_id": anchor,
            "parent_id": req.parent_id,
            "lifecycle": req.lifecycle.as_str(),
            "labels": req.labels,
            "ttl_seconds": req.ttl_seconds,
            "parent_authority": req.parent_authority.as_str(),
            "inherit_parent_edge_id": req.inherit_parent_edge_id,
            "metadata": req.metadata,
        }));

        let now = self.clock.now();
        let (mut uow, identity) = self.begin_with_identity(p, zone).await?;
        // A child start takes the tree and capacity locks first: its parent checks must hold
        // until commit against a cascade ending the parent. A root start has only the capacity
        // check to serialize, so it takes the capacity lock alone and last, after its writes
        // (see `admit_capacity`), and holds it for two statements and the commit instead of the
        // whole request; terminates never wait for it.
        let early_lock = req.parent_id.is_some();
        if early_lock {
            uow.lock_both(&session_lock(zone), &capacity_lock(zone))
                .await?;
        }
        let scope = idempotency::scope("session.start.v2", zone, &req.application_id);
        if let Some(key) = &key {
            if let Prior::Same(receipt) = self
                .replay(&mut *uow, &scope, key, &request_fingerprint, now)
                .await?
            {
                return self
                    .replay_start(&mut *uow, zone, &req.application_id, &receipt, now)
                    .await;
            }
        }

        // The identity check of this unit read the caller's application and record a moment
        // ago; a start for itself under its own record (the usual case) reuses those rows.
        let (own_app, own_record) = match identity {
            Some(rows) => (Some(rows.application), rows.record),
            None => (None, None),
        };
        let app = match own_app.filter(|a| a.id.as_str() == req.application_id) {
            Some(app) => Some(app),
            None => match ApplicationId::parse(&req.application_id) {
                Ok(id) => uow.get_application(zone, &id).await?,
                Err(_) => None,
            },
        };
        let app = app
            .filter(|a| a.archived_at.is_none() && a.expires_at.is_none_or(|e| e > now))
            .ok_or_else(|| Error::not_found("application_not_found"))?;
        let dcr = app.registration_method == RegistrationMethod::Dcr;
        if dcr && req.lifecycle != Lifecycle::Task {
            return Err(conflict("dcr_application_cannot_host_service"));
        }
        if dcr && req.parent_id.is_some() {
            return Err(conflict("dcr_application_cannot_be_child"));
        }
        let anchor_record = match own_record.filter(|r| r.id == anchor) {
            Some(record) => Some(record),
            None => uow.get_authority_record(zone, &anchor).await?,
        };
        let anchor_live = anchor_record.is_some_and(|r| r.is_live(now));
        if !anchor_live {
            return Err(session_not_found().with_extra(json!({
                "detail": "subject_session_id must reference an STS authority_records.id; for business correlation use metadata"
            })));
        }

        let mut parent = None;
        if let Some(parent_id) = &req.parent_id {
            self.admit_capacity(&mut *uow, zone, &req.application_id, dcr, 0, now)
                .await?;
            parent = Some(
                self.admit_parent(&mut *uow, p, zone, parent_id, &req, now)
                    .await?,
            );
        }

        let lease = now.plus_millis(self.config.service_lease_seconds.saturating_mul(1_000));
        let service = req.lifecycle == Lifecycle::Service;
        let session = AgentSession {
            id: self.ids.new_id(),
            zone_id: zone.clone(),
            application_id: req.application_id.clone(),
            subject_session_id: anchor.clone(),
            parent_id: req.parent_id.clone(),
            lifecycle: req.lifecycle,
            labels: req.labels.clone(),
            status: "active".to_owned(),
            depth: parent.as_ref().map_or(0, |p: &AgentSession| p.depth + 1),
            ttl_seconds: req.ttl_seconds,
            started_at: now,
            last_heartbeat_at: service.then_some(now),
            heartbeat_deadline_at: service.then_some(lease),
            lease_generation: i64::from(service),
            child_count: 0,
            metadata: req.metadata.clone(),
            status_reason: None,
            ended_at: None,
            created_at: now,
            updated_at: now,
        };
        uow.save_agent_session(&session).await?;
        if let Some(mut parent) = parent {
            parent.child_count += 1;
            parent.updated_at = now;
            uow.save_agent_session(&parent).await?;
        }

        let mut mirrored = None;
        if let Some(parent_id) = &req.parent_id {
            if req.parent_authority == ParentAuthority::Inherit {
                uow.lock(&delegation_lock(zone)).await?;
                if let Some(edge) = inherited_edge(&mut *uow, zone, parent_id, &req, now).await? {
                    mirrored = Some(
                        self.mirror_edge(&mut *uow, zone, &edge, &session, now)
                            .await?,
                    );
                }
            }
        }

        self.enqueue(
            &mut *uow,
            TOPIC_AGENTS_LIFECYCLE,
            format!("spawn:{}", session.id),
            &[
                ("event", Some("spawn".to_owned())),
                ("zone_id", Some(zone.as_str().to_owned())),
                ("agent_session_id", Some(session.id.clone())),
                ("parent_id", session.parent_id.clone()),
                ("application_id", Some(session.application_id.clone())),
            ],
        )
        .await?;
        let reply = Reply::created(started_body(&session, mirrored.as_deref()));
        if !early_lock {
            uow.lock(&capacity_lock(zone)).await?;
            // A twin request with the same key may have committed while this one worked.
            if let Some(key) = &key {
                if let Prior::Same(receipt) = self
                    .committed_twin(&mut *uow, &scope, key, &request_fingerprint, now)
                    .await?
                {
                    return self
                        .replay_start(&mut *uow, zone, &req.application_id, &receipt, now)
                        .await;
                }
            }
            self.admit_capacity(&mut *uow, zone, &req.application_id, dcr, 1, now)
                .await?;
        }
        if let Some(key) = &key {
            self.remember(
                &mut *uow,
                zone,
                &scope,
                key,
                &request_fingerprint,
                &session.id,
                &reply,
                now,
            )
            .await?;
        }
        uow.commit().await?;
        Ok(reply)
    }

    /// The answer to a start whose key already named a committed start: the stored reply,
    /// while the Session it created still holds a slot (A7). Writes nothing; the caller drops
    /// the unit, rolling back anything it wrote.
    async fn replay_start(
        &self,
        uow: &mut dyn UnitOfWork,
        zone: &ZoneId,
        application_id: &str,
        receipt: &IdempotencyReceipt,
        now: Timestamp,
    ) -> Result<Reply> {
        let live = uow
            .get_agent_session(zone, &receipt.object_id)
            .await?
            .is_some_and(|s| s.application_id == application_id && holds_slot(&s, now));
        if !live {
            return Err(idempotency::result_inactive());
        }
        Ok(Prior::reply(receipt))
    }

    /// The capacity checks of a start (A6.1), under the zone's capacity lock: the zone's and the
    /// application's live Sessions against `MAX_AGENTS_PER_ZONE` / `MAX_AGENTS_PER_APP`, and a
    /// DCR application's single binding. `own` is how many of the counted Sessions this unit
    /// wrote itself (1 when the lock is taken after the insert): a new lock holder's first
    /// statement sees every start committed before it, so count-then-commit under the lock
    /// never admits more than the limit.
    async fn admit_capacity(
        &self,
        uow: &mut dyn UnitOfWork,
        zone: &ZoneId,
        application_id: &str,
        dcr: bool,
        own: u64,
        now: Timestamp,
    ) -> Result<()> {
        let (zone_live, app_live) = uow
            .count_live_agent_sessions_split(zone, application_id, now)
            .await?;
        let zone_live = zone_live.saturating_sub(own);
        let app_live = app_live.saturating_sub(own);
        if zone_live >= self.config.max_agents_per_zone {
            return Err(too_many("session_zone_limit_exceeded"));
        }
        if dcr && app_live > 0 {
            return Err(conflict("dcr_application_already_bound"));
        }
        if app_live >= self.config.max_agents_per_app {
            return Err(too_many("session_limit_exceeded"));
        }
        Ok(())
    }

    /// The parent checks of a start, in the contract's order (A6.1).
    async fn admit_parent(
        &self,
        uow: &mut dyn UnitOfWork,
        p: &Principal,
        zone: &ZoneId,
        parent_id: &str,
        req: &StartRequest,
        now: Timestamp,
    ) -> Result<AgentSession> {
        let parent_not_found = || Error::not_found("parent_not_found");
        // A parent past its TTL or lease is as gone as a terminated one: a child started
        // under it would only be swept away with it.
        let parent = uow
            .get_agent_session(zone, parent_id)
            .await?
            .filter(|s| s.status == "active" && s.is_live(now))
            .ok_or_else(parent_not_found)?;
        let parent_app = match ApplicationId::parse(&parent.application_id) {
            Ok(id) => uow.get_application(zone, &id).await?,
            Err(_) => None,
        }
        .ok_or_else(parent_not_found)?;
        if parent_app.registration_method == RegistrationMethod::Dcr {
            return Err(conflict("dcr_application_cannot_start_child"));
        }
        if parent.lifecycle == Lifecycle::Task && req.lifecycle == Lifecycle::Service {
            return Err(conflict("task_session_cannot_start_service"));
        }
        if parent.application_id != req.application_id
            && !p.has_scope_for("coordinator.spawn_under", &parent.application_id)
        {
            return Err(Error::forbidden(
                "parent_ownership_required",
                "Starting a child under another application's Session requires coordinator.spawn_under",
            ));
        }
        if parent.child_count >= MAX_CHILDREN {
            return Err(too_many("session_children_limit_exceeded"));
        }
        if parent.depth + 1 > MAX_DEPTH {
            return Err(too_many("session_depth_limit_exceeded"));
        }
        Ok(parent)
    }

    /// Inserts the parent → child copy of `parent_edge` (A8.3): issuer = the parent edge's
    /// receiver, receiver = the child's application, same resource, scopes, constraints and
    /// expiry, so the child can never hold more than the parent did. Bumps the epoch and
    /// enqueues `edge_create`. Returns the new edge id.
    async fn mirror_edge(
        &self,
        uow: &mut dyn UnitOfWork,
        zone: &ZoneId,
        parent_edge: &DelegationEdge,
        child: &AgentSession,
        now: Timestamp,
    ) -> Result<String> {
        let edge = DelegationEdge {
            id: self.ids.new_id(),
            zone_id: zone.clone(),
            source_session_id: parent_edge.target_session_id.clone(),
            target_session_id: child.id.clone(),
            issuer_application_id: parent_edge.receiver_application_id.clone(),
            receiver_application_id: child.application_id.clone(),
            parent_edge_id: Some(parent_edge.id.clone()),
            resource_id: parent_edge.resource_id.clone(),
            scopes: parent_edge.scopes.clone(),
            constraints_json: parent_edge.constraints_json.clone(),
            status: "active".to_owned(),
            expires_at: parent_edge.expires_at,
            edge_version: 0,
            revoked_at: None,
            created_at: now,
        };
        uow.save_delegation_edge(&edge).await?;
        let epoch = uow.bump_delegation_graph_epoch(zone).await?;
        self.enqueue(
            uow,
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
        Ok(edge.id)
    }

    /// `POST …/agents/:id/heartbeat` (A6.3): renews a service lease held at the current
    /// generation; optionally updates an agent service's health.
    pub async fn heartbeat_session(
        &self,
        p: &Principal,
        zone: &ZoneId,
        session_id: &str,
        body: &Value,
    ) -> Result<Reply> {
        let req = HeartbeatRequest::parse(body)?;
        let now = self.clock.now();
        let mut uow = self.begin_for(p, zone).await?;
        uow.lock_both(&session_lock(zone), &capacity_lock(zone))
            .await?;
        let mut session = uow
            .get_agent_session(zone, session_id)
            .await?
            .ok_or_else(session_not_found)?;
        if !p.may_manage_sessions_of(&session.application_id) {
            return Err(ownership_required());
        }
        if session.status != "active" && session.status != "suspended" {
            return Err(conflict("session_not_live"));
        }
        if session.lifecycle != Lifecycle::Service {
            return Err(conflict("session_not_service"));
        }
        if !self.subject_active(&mut *uow, &session, now).await? {
            return self.end_for_subject(uow, zone, &session).await;
        }
        if req.lease_generation != session.lease_generation {
            return Err(conflict("session_lease_fenced"));
        }
        if session.status == "active" && session.heartbeat_deadline_at.is_some_and(|d| d <= now) {
            return self.suspend_for_lease(uow, zone, &session).await;
        }
        check_identity(&mut *uow, p, zone, &session, now).await?;

        session.last_heartbeat_at = Some(now);
        session.heartbeat_deadline_at =
            Some(now.plus_millis(self.config.service_lease_seconds.saturating_mul(1_000)));
        session.updated_at = now;
        uow.save_agent_session(&session).await?;
        let mut service = Value::Null;
        if let Some(service_id) = &req.service_id {
            let mut row = uow
                .get_agent_service(zone, service_id)
                .await?
                .filter(|s| s.application_id == session.application_id)
                .ok_or_else(|| Error::not_found("agent_service_not_found"))?;
            row.health = req.status.clone();
            row.metadata.extend(req.metadata.clone());
            row.last_heartbeat_at = Some(now);
            row.updated_at = now;
            uow.save_agent_service(&row).await?;
            service = crate::coordinator::invocations::service_row(&row);
        }
        uow.commit().await?;
        Ok(Reply::ok(json!({
            "agent": {
                "id": session.id,
                "zone_id": zone.as_str(),
                "application_id": session.application_id,
                "status": session.status,
                "last_active_at": wire_time(now),
                "last_heartbeat_at": wire_time_opt(session.last_heartbeat_at),
                "heartbeat_deadline_at": wire_time_opt(session.heartbeat_deadline_at),
                "lease_generation": session.lease_generation,
            },
            "service": service,
            "active_invocations": req.active_invocations,
        })))
    }

    /// `POST …/agents/:id/lease` (A6.4): takes over an active service lease, bumping the
    /// generation so the previous holder's heartbeats are fenced.
    pub async fn lease_session(
        &self,
        p: &Principal,
        zone: &ZoneId,
        session_id: &str,
    ) -> Result<Reply> {
        let now = self.clock.now();
        let mut uow = self.begin_for(p, zone).await?;
        uow.lock_both(&session_lock(zone), &capacity_lock(zone))
            .await?;
        let mut session = uow
            .get_agent_session(zone, session_id)
            .await?
            .ok_or_else(session_not_found)?;
        if !p.may_manage_sessions_of(&session.application_id) {
            return Err(ownership_required());
        }
        if session.lifecycle != Lifecycle::Service {
            return Err(conflict("session_not_service"));
        }
        if session.status == "suspended" {
            return Err(conflict("session_suspended"));
        }
        if session.status != "active" {
            return Err(conflict("session_not_live"));
        }
        match self.lease_gate(&mut *uow, &session, now).await? {
            LeaseGate::Open => {}
            LeaseGate::SubjectInactive => return self.end_for_subject(uow, zone, &session).await,
            LeaseGate::Expired => return self.suspend_for_lease(uow, zone, &session).await,
        }
        check_identity(&mut *uow, p, zone, &session, now).await?;
        session.lease_generation += 1;
        session.last_heartbeat_at = Some(now);
        session.heartbeat_deadline_at =
            Some(now.plus_millis(self.config.service_lease_seconds.saturating_mul(1_000)));
        session.updated_at = now;
        uow.save_agent_session(&session).await?;
        uow.commit().await?;
        Ok(Reply::ok(json!({
            "status": session.status,
            "heartbeat_deadline_at": wire_time_opt(session.heartbeat_deadline_at),
            "lease_generation": session.lease_generation,
        })))
    }

    async fn lease_gate(
        &self,
        uow: &mut dyn UnitOfWork,
        session: &AgentSession,
        now: Timestamp,
    ) -> Result<LeaseGate> {
        if !self.subject_active(uow, session, now).await? {
            return Ok(LeaseGate::SubjectInactive);
        }
        if session.heartbeat_deadline_at.is_some_and(|d| d <= now) {
            return Ok(LeaseGate::Expired);
        }
        Ok(LeaseGate::Open)
    }

    /// Whether the Session's anchor still carries authority: only a `user` record can lapse
    /// under a running Session (an application re-mints its own).
    async fn subject_active(
        &self,
        uow: &mut dyn UnitOfWork,
        session: &AgentSession,
        now: Timestamp,
    ) -> Result<bool> {
        let record = uow
            .get_authority_record(&session.zone_id, &session.subject_session_id)
            .await?;
        Ok(match record {
            Some(r) if r.session_type == SessionType::User => r.is_live(now),
            _ => true,
        })
    }

    /// Terminates the subtree of a Session whose user anchor lapsed, commits that, and answers
    /// `409 session_subject_inactive`.
    async fn end_for_subject(
        &self,
        mut uow: Box<dyn UnitOfWork>,
        zone: &ZoneId,
        session: &AgentSession,
    ) -> Result<Reply> {
        uow.lock(&delegation_lock(zone)).await?;
        self.terminate_subtree(
            &mut *uow,
            zone,
            std::slice::from_ref(&session.id),
            "subject_authority_inactive",
            EndStatus::Terminated,
            Known {
                sessions: std::slice::from_ref(session),
                records: &[],
            },
        )
        .await?;
        self.commit_narrowing(uow, [zone]).await?;
        Err(conflict("session_subject_inactive"))
    }

    /// Suspends the subtree of a Session whose lease lapsed, commits that, and answers
    /// `409 session_lease_expired`.
    async fn suspend_for_lease(
        &self,
        mut uow: Box<dyn UnitOfWork>,
        zone: &ZoneId,
        session: &AgentSession,
    ) -> Result<Reply> {
        self.suspend_subtree(
            &mut *uow,
            zone,
            std::slice::from_ref(&session.id),
            "service_heartbeat_lost",
            Known {
                sessions: std::slice::from_ref(session),
                records: &[],
            },
        )
        .await?;
        self.commit_narrowing(uow, [zone]).await?;
        Err(conflict("session_lease_expired"))
    }

    /// `DELETE …/agents/:id` (A6.5): terminates the Session and its subtree, revoking every
    /// edge that touches it. Service Sessions are owned through their fenced lease: only the
    /// current generation (or an admin) may end them.
    pub async fn terminate_session(
        &self,
        p: &Principal,
        zone: &ZoneId,
        session_id: &str,
        reason: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Reply> {
        let reason = match reason {
            None => "requested",
            Some(r) if (1..=256).contains(&r.chars().count()) => r,
            Some(_) => {
                return Err(Error::invalid(
                    "invalid_query",
                    "reason must be 1 to 256 characters",
                ))
            }
        };
        let generation = match body {
            None | Some(Value::Null) => None,
            Some(body) => {
                let mut issues = Issues::default();
                let generation = match input::object(body, &mut issues) {
                    Some(obj) => {
                        input::integer(obj, "lease_generation", &mut issues, false, 1, i64::MAX)
                    }
                    None => None,
                };
                issues.finish()?;
                generation
            }
        };
        let (mut uow, identity) = self.begin_with_identity(p, zone).await?;
        uow.lock_both(&session_lock(zone), &delegation_lock(zone))
            .await?;
        let session = uow
            .get_agent_session(zone, session_id)
            .await?
            .ok_or_else(session_not_found)?;
        if !p.may_manage_sessions_of(&session.application_id) {
            return Err(ownership_required());
        }
        let identity_record = identity.and_then(|rows| rows.record);
        // A process that lost a lease takeover must never tear down its successor.
        if session.lifecycle == Lifecycle::Service && !p.is_admin() {
            match generation {
                None => {
                    return Err(Error::invalid(
                        "lease_generation_required",
                        "Terminating a service Session requires its lease_generation",
                    ))
                }
                Some(g) if g != session.lease_generation => {
                    return Err(conflict("session_lease_fenced"))
                }
                Some(_) => {}
            }
        }
        let ended = self
            .terminate_subtree(
                &mut *uow,
                zone,
                std::slice::from_ref(&session.id),
                reason,
                EndStatus::Terminated,
                Known {
                    sessions: std::slice::from_ref(&session),
                    records: identity_record.as_slice(),
                },
            )
            .await?;
        if ended.is_empty() {
            return Err(session_not_found());
        }
        self.commit_narrowing(uow, [zone]).await?;
        Ok(Reply::no_content())
    }

    /// `GET …/agents/:id` (A6.6).
    pub async fn get_session(
        &self,
        p: &Principal,
        zone: &ZoneId,
        session_id: &str,
    ) -> Result<Reply> {
        let mut uow = self.begin_for(p, zone).await?;
        let session = uow
            .get_agent_session(zone, session_id)
            .await?
            .ok_or_else(session_not_found)?;
        Ok(Reply::ok(session_row(&session)))
    }

    /// `GET …/agents` (A6.6): the zone's Sessions, newest first, filtered.
    pub async fn list_sessions(
        &self,
        p: &Principal,
        zone: &ZoneId,
        query: &[(String, String)],
    ) -> Result<Reply> {
        let q = ListQuery::parse(query, true)?;
        let mut uow = self.begin_for(p, zone).await?;
        check_session_cursor(&mut *uow, zone, &q).await?;
        let filter = SessionFilter {
            status: q.status.clone(),
            lifecycle: q.lifecycle.as_deref().and_then(Lifecycle::parse),
            application_id: q.application_id.clone(),
            label: q.label.clone(),
        };
        let rows = uow
            .list_agent_sessions(zone, &filter, q.cursor.as_deref(), q.limit)
            .await?;
        Ok(Reply::ok(page_body(
            rows.iter().map(session_row).collect(),
            rows.last().map(|s| s.id.clone()),
            q.limit,
        )))
    }

    /// `GET …/agents/:id/children` (A6.6): direct children, newest first.
    pub async fn list_child_sessions(
        &self,
        p: &Principal,
        zone: &ZoneId,
        session_id: &str,
        query: &[(String, String)],
    ) -> Result<Reply> {
        let q = ListQuery::parse(query, true)?;
        let mut uow = self.begin_for(p, zone).await?;
        check_session_cursor(&mut *uow, zone, &q).await?;
        let rows = uow
            .list_child_sessions(zone, session_id, q.cursor.as_deref(), q.limit)
            .await?;
        Ok(Reply::ok(page_body(
            rows.iter().map(child_row).collect(),
            rows.last().map(|s| s.id.clone()),
            q.limit,
        )))
    }

    /// `PATCH …/agents/:id/suspend` (A6.6): suspends the active subtree.
    pub async fn suspend_session(
        &self,
        p: &Principal,
        zone: &ZoneId,
        session_id: &str,
    ) -> Result<Reply> {
        let (mut uow, identity) = self.begin_with_identity(p, zone).await?;
        uow.lock_both(&session_lock(zone), &capacity_lock(zone))
            .await?;
        let session = uow
            .get_agent_session(zone, session_id)
            .await?
            .ok_or_else(session_not_found)?;
        if !p.may_manage_sessions_of(&session.application_id) {
            return Err(ownership_required());
        }
        let identity_record = identity.and_then(|rows| rows.record);
        let n = self
            .suspend_subtree(
                &mut *uow,
                zone,
                std::slice::from_ref(&session.id),
                "requested",
                Known {
                    sessions: std::slice::from_ref(&session),
                    records: identity_record.as_slice(),
                },
            )
            .await?;
        if n == 0 {
            return Err(conflict("session_not_found_or_not_active"));
        }
        self.commit_narrowing(uow, [zone]).await?;
        Ok(Reply::ok(json!({ "suspended": n })))
    }

    /// `PATCH …/agents/:id/resume` (A6.6): resumes the suspended subtree; service leases
    /// restart.
    pub async fn resume_session(
        &self,
        p: &Principal,
        zone: &ZoneId,
        session_id: &str,
    ) -> Result<Reply> {
        let mut uow = self.begin_for(p, zone).await?;
        uow.lock(&session_lock(zone)).await?;
        let session = uow
            .get_agent_session(zone, session_id)
            .await?
            .ok_or_else(session_not_found)?;
        if !p.may_manage_sessions_of(&session.application_id) {
            return Err(ownership_required());
        }
        let n = self.resume_subtree(&mut *uow, zone, &session.id).await?;
        if n == 0 {
            return Err(conflict("session_not_found_or_not_suspended"));
        }
        uow.commit().await?;
        Ok(Reply::ok(json!({ "resumed": n })))
    }
}

/// Which parent edge a start with `parent_authority=inherit` mirrors (A8.3): the parent's
/// inbound edges received by the child's application (only the named one when
/// `inherit_parent_edge_id` is given). None at all and none named: nothing to mirror (`None`). Rows
/// but none live, or the named one missing: `409 inherit_parent_edge_not_active`. More than
/// one live: `409 inherit_parent_edge_ambiguous`.
async fn inherited_edge(
    uow: &mut dyn UnitOfWork,
    zone: &ZoneId,
    parent_id: &str,
    req: &StartRequest,
    now: Timestamp,
) -> Result<Option<DelegationEdge>> {
    let explicit = req.inherit_parent_edge_id.as_deref();
    let rows: Vec<DelegationEdge> = edges_into(uow, zone, parent_id)
        .await?
        .into_iter()
        .filter(|e| e.receiver_application_id == req.application_id)
        .filter(|e| explicit.is_none_or(|id| e.id == id))
        .collect();
    let mut live: Vec<DelegationEdge> =
        rows.iter().filter(|e| edge_live(e, now)).cloned().collect();
    match live.len() {
        0 if explicit.is_some() || !rows.is_empty() => {
            Err(conflict("inherit_parent_edge_not_active"))
        }
        0 => Ok(None),
        1 => Ok(Some(live.swap_remove(0))),
        _ => Err(conflict("inherit_parent_edge_ambiguous")),
    }
}

/// The heartbeat and lease identity check: the mandate's `sid` must be an active, unexpired
/// `application` record of this zone whose subject is the Session's application.
async fn check_identity(
    uow: &mut dyn UnitOfWork,
    p: &Principal,
    zone: &ZoneId,
    session: &AgentSession,
    now: Timestamp,
) -> Result<()> {
    let Some(sid) = &p.sid else {
        return Err(Error::new(
            ErrorKind::Unauthenticated,
            "authority_record_required",
        ));
    };
    let ok = uow.get_authority_record(zone, sid).await?.is_some_and(|r| {
        r.is_live(now)
            && r.session_type == SessionType::Application
            && r.subject_id == session.application_id
    });
    if ok {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Unauthenticated, "identity_revoked"))
    }
}

/// A Session listing's cursor must name a Session of the zone.
async fn check_session_cursor(
    uow: &mut dyn UnitOfWork,
    zone: &ZoneId,
    q: &ListQuery,
) -> Result<()> {
    if let Some(cursor) = &q.cursor {
        if uow.get_agent_session(zone, cursor).await?.is_none() {
            return Err(input::bad_cursor());
        }
    }
    Ok(())
}

/// `{items, next_cursor}`: the cursor is the last id when the page is full.
pub(crate) fn page_body(items: Vec<Value>, last: Option<String>, limit: u32) -> Value {
    let next = if items.len() == limit as usize {
        last
    } else {
        None
    };
    json!({ "items": items, "next_cursor": next })
}
