//! Agent services and invocations (`spec/coordinator-gateway.md` A9): registering the endpoints
//! an application serves, the durable invocation record a caller creates idempotently (A7) and
//! a service drives through `pending → running → succeeded|failed`, cancellation, the deadline
//! enforcer (A11) and the `caracal.invocations.lifecycle` events (A12).
//!
//! Every mutation of an invocation runs under the zone lock `invocation:{zone}`, so two racing
//! creates with one idempotency key cannot both create, two racing starts cannot both count an
//! attempt, and the deadline enforcer never overwrites a completion that won the race.
//!
//! Response rows never carry the invocation's payload (`params`, `metadata`, `error`): zone
//! operators read lifecycle and timing only, as upstream does.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::authority::Lifecycle;
use crate::coordinator::idempotency::{self, Prior};
use crate::coordinator::records::{AgentService, Invocation};
use crate::coordinator::sessions::input::type_name;
use crate::coordinator::sessions::page_body as page;
use crate::coordinator::{
    invalid_body, path_id, wire_time, wire_time_opt, Coordinator, Principal, Reply,
    TOPIC_INVOCATIONS_LIFECYCLE,
};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ApplicationId, ZoneId};
use crate::ports::UnitOfWork;
use crate::time::Timestamp;

/// Receipt operation of invocation create (A7).
const CREATE_OPERATION: &str = "invocation.create.v2";
/// Scope prefix that lets a caller act for another application's invocations (A3).
const INVOKE_FROM: &str = "coordinator.invoke_from";
/// The deadline enforcer's pass lock: two replicas never sweep at once (A11).
const DEADLINE_SWEEP_LOCK: &str = "coordinator:sweep:deadlines";

/// Longest per-attempt timeout, in milliseconds (A9).
pub const MAX_TIMEOUT_MS: i64 = 900_000;
/// Per-attempt timeout when none is given, in milliseconds (A9).
pub const DEFAULT_TIMEOUT_MS: i64 = 30_000;
/// Most attempts a retry policy may allow (A9).
pub const MAX_ATTEMPTS: i64 = 10;
/// Attempts when the retry policy names none (A9).
pub const DEFAULT_MAX_ATTEMPTS: i64 = 3;
/// Longest backoff between attempts, in milliseconds (A9).
pub const MAX_BACKOFF_MS: i64 = 300_000;
/// Backoff when the retry policy names none, in milliseconds (A9).
pub const DEFAULT_BACKOFF_MS: i64 = 1_000;
/// Longest `endpoint_url`, in bytes. Upstream has no bound; this one keeps the
/// `(zone, application, endpoint_url)` unique index within what a B-tree entry can hold.
pub const MAX_ENDPOINT_URL_BYTES: usize = 2_048;
/// Page size of the listings when none is given (A6.6 paging).
const LIST_DEFAULT_LIMIT: u32 = 100;
/// Largest page of the listings (A6.6 paging).
const LIST_MAX_LIMIT: u32 = 500;

const PENDING: &str = "pending";
const RUNNING: &str = "running";
const CANCEL_REQUESTED: &str = "cancel_requested";
const CANCELED: &str = "canceled";
const SUCCEEDED: &str = "succeeded";
const FAILED: &str = "failed";
const TIMED_OUT: &str = "timed_out";
/// Every invocation status (`dead` is declared by the contract but never set).
const STATUSES: [&str; 8] = [
    PENDING,
    RUNNING,
    SUCCEEDED,
    FAILED,
    CANCEL_REQUESTED,
    CANCELED,
    TIMED_OUT,
    "dead",
];

/// Health of a freshly registered service (A9).
const HEALTH_STARTING: &str = "starting";

/// The zone lock every invocation mutation takes.
fn invocation_lock(zone: &ZoneId) -> String {
    format!("invocation:{}", zone.as_str())
}

/// The zone lock service registration takes, so the find-then-save upsert is atomic.
fn service_lock(zone: &ZoneId) -> String {
    format!("agent_service:{}", zone.as_str())
}

/// Owner, admin, or `coordinator.invoke_from:<app>` (A3).
fn may_invoke_for(principal: &Principal, application_id: &str) -> bool {
    principal.is_admin()
        || principal.owns(application_id)
        || principal.has_scope_for(INVOKE_FROM, application_id)
}

fn invoker_ownership_required() -> Error {
    Error::new(ErrorKind::Forbidden, "invoker_ownership_required")
}

fn invocation_not_found() -> Error {
    Error::not_found("invocation_not_found")
}

// --- Wire rows -------------------------------------------------------------------------------

/// The wire row of an agent service (A9), as registration, listing and heartbeats answer it.
pub fn service_row(service: &AgentService) -> Value {
    json!({
        "id": service.id,
        "zone_id": service.zone_id.as_str(),
        "application_id": service.application_id,
        "endpoint_url": service.endpoint_url,
        "protocol_versions": service.protocol_versions,
        "framework_name": service.framework_name,
        "framework_version": service.framework_version,
        "capabilities": service.capabilities,
        "health": service.health,
        "metadata_json": Value::Object(service.metadata.clone()),
        "last_heartbeat_at": wire_time_opt(service.last_heartbeat_at),
    })
}

/// When the running attempt started: the deadline is always set to start + timeout, and
/// nothing else moves it, so the start instant is recovered exactly.
fn started_at(invocation: &Invocation) -> Option<Timestamp> {
    invocation
        .deadline_at
        .map(|deadline| deadline.plus_millis(invocation.timeout_ms.saturating_neg()))
}

/// When cancellation was requested: the last change of a `cancel_requested` or `canceled`
/// invocation is its cancellation (nothing else changes either status but a completion, which
/// leaves it), so `updated_at` is that instant. Once a requested cancellation completes, the
/// instant is no longer held and reads `null`.
fn cancel_requested_at(invocation: &Invocation) -> Option<Timestamp> {
    matches!(invocation.status.as_str(), CANCEL_REQUESTED | CANCELED)
        .then_some(invocation.updated_at)
}

/// The wire row of an invocation (A9): create, get, start, cancel and complete answer it.
/// No payload columns.
pub fn invocation_row(invocation: &Invocation) -> Value {
    json!({
        "id": invocation.id,
        "zone_id": invocation.zone_id.as_str(),
        "service_id": invocation.service_id,
        "source_session_id": invocation.source_session_id,
        "target_session_id": invocation.target_session_id,
        "method": invocation.method,
        "status": invocation.status,
        "attempts": invocation.attempts,
        "max_attempts": invocation.max_attempts,
        "timeout_ms": invocation.timeout_ms,
        "retry_policy_json": {
            "max_attempts": invocation.max_attempts,
            "backoff_ms": invocation.backoff_ms,
        },
        "deadline_at": wire_time_opt(invocation.deadline_at),
        "cancel_requested_at": wire_time_opt(cancel_requested_at(invocation)),
        "started_at": wire_time_opt(started_at(invocation)),
        "completed_at": wire_time_opt(invocation.completed_at),
        "created_at": wire_time(invocation.created_at),
    })
}

/// The listing's row: the operational columns only (upstream drops the retry policy and the
/// cancellation instant here).
fn invocation_list_row(invocation: &Invocation) -> Value {
    json!({
        "id": invocation.id,
        "zone_id": invocation.zone_id.as_str(),
        "service_id": invocation.service_id,
        "source_session_id": invocation.source_session_id,
        "target_session_id": invocation.target_session_id,
        "method": invocation.method,
        "status": invocation.status,
        "attempts": invocation.attempts,
        "max_attempts": invocation.max_attempts,
        "timeout_ms": invocation.timeout_ms,
        "deadline_at": wire_time_opt(invocation.deadline_at),
        "started_at": wire_time_opt(started_at(invocation)),
        "completed_at": wire_time_opt(invocation.completed_at),
        "created_at": wire_time(invocation.created_at),
    })
}

// --- Body parsing ----------------------------------------------------------------------------

/// The issues of one body, reported together as `400 invalid_body` (A1), the way upstream's
/// schema validation reports every offending field at once.
#[derive(Default)]
struct Issues(Vec<(Vec<Value>, String)>);

impl Issues {
    fn push(&mut self, path: &[&str], message: impl Into<String>) {
        let path = path
            .iter()
            .map(|p| Value::String((*p).to_owned()))
            .collect();
        self.0.push((path, message.into()));
    }

    fn push_at(&mut self, path: &[&str], index: usize, message: impl Into<String>) {
        let mut full: Vec<Value> = path
            .iter()
            .map(|p| Value::String((*p).to_owned()))
            .collect();
        full.push(Value::from(index));
        self.0.push((full, message.into()));
    }

    fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(invalid_body(self.0))
        }
    }
}

fn expected(kind: &str, value: &Value) -> String {
    format!("Expected {kind}, received {}", type_name(value))
}

/// The body as an object; anything else is one issue at the root.
fn body_object<'a>(body: &'a Value, issues: &mut Issues) -> Option<&'a Map<String, Value>> {
    match body {
        Value::Object(map) => Some(map),
        other => {
            issues.push(&[], expected("object", other));
            None
        }
    }
}

/// A required non-empty string.
fn required_string(
    map: &Map<String, Value>,
    path: &[&str],
    key: &str,
    issues: &mut Issues,
) -> Option<String> {
    let full: Vec<&str> = path.iter().copied().chain([key]).collect();
    match map.get(key) {
        None => {
            issues.push(&full, "Required");
            None
        }
        Some(Value::String(s)) if s.is_empty() => {
            issues.push(&full, "String must contain at least 1 character(s)");
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            issues.push(&full, expected("string", other));
            None
        }
    }
}

/// An optional string that may also be `null` (absent and `null` are `None`); when present it
/// must be non-empty unless `allow_empty`.
fn nullable_string(
    map: &Map<String, Value>,
    path: &[&str],
    key: &str,
    allow_null: bool,
    allow_empty: bool,
    issues: &mut Issues,
) -> Option<String> {
    let full: Vec<&str> = path.iter().copied().chain([key]).collect();
    match map.get(key) {
        None => None,
        Some(Value::Null) if allow_null => None,
        Some(Value::String(s)) if s.is_empty() && !allow_empty => {
            issues.push(&full, "String must contain at least 1 character(s)");
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            issues.push(&full, expected("string", other));
            None
        }
    }
}

/// A JSON integer in `min..=max`, `default` when absent. An integral float (`5.0`) counts as
/// an integer, as it does for upstream's JavaScript validator.
fn integer_in(
    map: &Map<String, Value>,
    path: &[&str],
    key: &str,
    (min, max, default): (i64, i64, i64),
    issues: &mut Issues,
) -> i64 {
    let full: Vec<&str> = path.iter().copied().chain([key]).collect();
    let Some(value) = map.get(key) else {
        return default;
    };
    let number = match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        other => {
            issues.push(&full, expected("number", other));
            return default;
        }
    };
    match number {
        None => {
            issues.push(&full, "Expected integer, received float");
            default
        }
        Some(n) if n < min => {
            issues.push(
                &full,
                format!("Number must be greater than or equal to {min}"),
            );
            default
        }
        Some(n) if n > max => {
            issues.push(&full, format!("Number must be less than or equal to {max}"));
            default
        }
        Some(n) => n,
    }
}

/// An array of non-empty strings, `[]` when absent.
fn string_array(map: &Map<String, Value>, key: &str, issues: &mut Issues) -> Vec<String> {
    match map.get(key) {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) if s.is_empty() => {
                        issues.push_at(&[key], i, "String must contain at least 1 character(s)")
                    }
                    Value::String(s) => out.push(s.clone()),
                    other => issues.push_at(&[key], i, expected("string", other)),
                }
            }
            out
        }
        Some(other) => {
            issues.push(&[key], expected("array", other));
            Vec::new()
        }
    }
}

/// A JSON object, `{}` when absent (`null` is refused, as upstream's record schema does).
fn object_field(map: &Map<String, Value>, key: &str, issues: &mut Issues) -> Map<String, Value> {
    match map.get(key) {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            issues.push(&[key], expected("object", other));
            Map::new()
        }
    }
}

/// Whether `text` is an absolute URL the way a WHATWG parser (upstream's `z.string().url()`)
/// reads it: a scheme, and for the network schemes a non-empty host with an optional numeric
/// port. Whitespace and control characters are refused outright rather than stripped.
fn is_absolute_url(text: &str) -> bool {
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((scheme, rest)) = text.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return false;
    }
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https" | "ws" | "wss" | "ftp") {
        return true;
    }
    let authority = rest
        .trim_start_matches(['/', '\\'])
        .split(['/', '\\', '?', '#'])
        .next()
        .unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        match v6.split_once(']') {
            Some((addr, tail)) if !addr.is_empty() => (addr, tail.strip_prefix(':')),
            _ => return false,
        }
    } else {
        match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        }
    };
    let port_ok = port.is_none_or(|p| {
        p.is_empty()
            || (p.bytes().all(|b| b.is_ascii_digit())
                && p.parse::<u32>().is_ok_and(|n| n <= 65_535))
    });
    !host.is_empty() && port_ok
}

/// A parsed registration body (A9).
struct ServiceRegistration {
    application_id: String,
    endpoint_url: String,
    protocol_versions: Vec<String>,
    framework_name: Option<String>,
    framework_version: Option<String>,
    capabilities: Vec<String>,
    metadata: Map<String, Value>,
}

fn parse_registration(body: &Value) -> Result<ServiceRegistration> {
    let mut issues = Issues::default();
    let Some(map) = body_object(body, &mut issues) else {
        return Err(invalid_body(issues.0));
    };
    let application_id = required_string(map, &[], "application_id", &mut issues);
    let endpoint_url = match map.get("endpoint_url") {
        None => {
            issues.push(&["endpoint_url"], "Required");
            None
        }
        Some(Value::String(url)) if url.len() > MAX_ENDPOINT_URL_BYTES => {
            issues.push(
                &["endpoint_url"],
                format!("String must contain at most {MAX_ENDPOINT_URL_BYTES} byte(s)"),
            );
            None
        }
        Some(Value::String(url)) if !is_absolute_url(url) => {
            issues.push(&["endpoint_url"], "Invalid url");
            None
        }
        Some(Value::String(url)) => Some(url.clone()),
        Some(other) => {
            issues.push(&["endpoint_url"], expected("string", other));
            None
        }
    };
    let protocol_versions = string_array(map, "protocol_versions", &mut issues);
    let (framework_name, framework_version) = match map.get("framework") {
        None => (None, None),
        Some(Value::Object(framework)) => {
            let name = required_string(framework, &["framework"], "name", &mut issues);
            let version = nullable_string(
                framework,
                &["framework"],
                "version",
                false,
                true,
                &mut issues,
            );
            (name, version)
        }
        Some(other) => {
            issues.push(&["framework"], expected("object", other));
            (None, None)
        }
    };
    let capabilities = string_array(map, "capabilities", &mut issues);
    let metadata = object_field(map, "metadata", &mut issues);
    issues.finish()?;
    match (application_id, endpoint_url) {
        (Some(application_id), Some(endpoint_url)) => Ok(ServiceRegistration {
            application_id,
            endpoint_url,
            protocol_versions,
            framework_name,
            framework_version,
            capabilities,
            metadata,
        }),
        // Unreachable: a missing required field is an issue above.
        _ => Err(Error::internal(
            "registration fields missing without an issue",
        )),
    }
}

/// A parsed invocation create body (A9), defaults applied.
struct NewInvocation {
    service_id: String,
    source_session_id: Option<String>,
    target_session_id: Option<String>,
    idempotency_key: String,
    method: String,
    params: Value,
    metadata: Map<String, Value>,
    timeout_ms: i64,
    max_attempts: i64,
    backoff_ms: i64,
}

impl NewInvocation {
    /// The normalized request the idempotency fingerprint covers (A7), with the caller.
    fn fingerprint(&self, principal: &Principal) -> String {
        idempotency::fingerprint(&json!({
            "principal": idempotency::principal_fingerprint(&principal.client_id, &principal.sub),
            "service_id": self.service_id,
            "source_session_id": self.source_session_id,
            "target_session_id": self.target_session_id,
            "method": self.method,
            "params": self.params,
            "metadata": Value::Object(self.metadata.clone()),
            "timeout_ms": self.timeout_ms,
            "retry_policy": {"max_attempts": self.max_attempts, "backoff_ms": self.backoff_ms},
        }))
    }
}

fn parse_new_invocation(body: &Value) -> Result<NewInvocation> {
    let mut issues = Issues::default();
    let Some(map) = body_object(body, &mut issues) else {
        return Err(invalid_body(issues.0));
    };
    let service_id = required_string(map, &[], "service_id", &mut issues);
    let source_session_id =
        nullable_string(map, &[], "source_session_id", true, false, &mut issues);
    let target_session_id =
        nullable_string(map, &[], "target_session_id", true, false, &mut issues);
    // The key's own rules (A7) are checked after the schema, as `idempotency_key_invalid`;
    // here it only has to be a string.
    let idempotency_key = match map.get("idempotency_key") {
        None => {
            issues.push(&["idempotency_key"], "Required");
            None
        }
        Some(Value::String(key)) => Some(key.clone()),
        Some(other) => {
            issues.push(&["idempotency_key"], expected("string", other));
            None
        }
    };
    let method = required_string(map, &[], "method", &mut issues);
    let params = map.get("params").cloned().unwrap_or_else(|| json!({}));
    let metadata = object_field(map, "metadata", &mut issues);
    let timeout_ms = integer_in(
        map,
        &[],
        "timeout_ms",
        (1, MAX_TIMEOUT_MS, DEFAULT_TIMEOUT_MS),
        &mut issues,
    );
    let (max_attempts, backoff_ms) = match map.get("retry_policy") {
        None => (DEFAULT_MAX_ATTEMPTS, DEFAULT_BACKOFF_MS),
        Some(Value::Object(policy)) => (
            integer_in(
                policy,
                &["retry_policy"],
                "max_attempts",
                (1, MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS),
                &mut issues,
            ),
            integer_in(
                policy,
                &["retry_policy"],
                "backoff_ms",
                (0, MAX_BACKOFF_MS, DEFAULT_BACKOFF_MS),
                &mut issues,
            ),
        ),
        Some(other) => {
            issues.push(&["retry_policy"], expected("object", other));
            (DEFAULT_MAX_ATTEMPTS, DEFAULT_BACKOFF_MS)
        }
    };
    issues.finish()?;
    match (service_id, idempotency_key, method) {
        (Some(service_id), Some(idempotency_key), Some(method)) => Ok(NewInvocation {
            service_id,
            source_session_id,
            target_session_id,
            idempotency_key,
            method,
            params,
            metadata,
            timeout_ms,
            max_attempts,
            backoff_ms,
        }),
        // Unreachable: a missing required field is an issue above.
        _ => Err(Error::internal(
            "invocation fields missing without an issue",
        )),
    }
}

/// A parsed cancel body: the optional reason.
fn parse_cancel(body: Option<&Value>) -> Result<Option<String>> {
    let Some(body) = body.filter(|b| !b.is_null()) else {
        return Ok(None);
    };
    let mut issues = Issues::default();
    let Some(map) = body_object(body, &mut issues) else {
        return Err(invalid_body(issues.0));
    };
    let reason = nullable_string(map, &[], "reason", false, false, &mut issues);
    issues.finish()?;
    Ok(reason)
}

/// A parsed completion body (A9).
struct Completion {
    status: &'static str,
    error: Option<Value>,
    metadata: Map<String, Value>,
}

fn parse_completion(body: &Value) -> Result<Completion> {
    let mut issues = Issues::default();
    let Some(map) = body_object(body, &mut issues) else {
        return Err(invalid_body(issues.0));
    };
    let status = match map.get("status") {
        None => {
            issues.push(&["status"], "Required");
            None
        }
        Some(Value::String(s)) if s == SUCCEEDED => Some(SUCCEEDED),
        Some(Value::String(s)) if s == FAILED => Some(FAILED),
        Some(other) => {
            issues.push(
                &["status"],
                format!("Invalid enum value. Expected 'succeeded' | 'failed', received {other}"),
            );
            None
        }
    };
    let error = match map.get("error") {
        None | Some(Value::Null) => None,
        Some(Value::Object(e)) => Some(Value::Object(e.clone())),
        Some(other) => {
            issues.push(&["error"], expected("object", other));
            None
        }
    };
    let metadata = object_field(map, "metadata", &mut issues);
    issues.finish()?;
    match status {
        Some(status) => Ok(Completion {
            status,
            error,
            metadata,
        }),
        _ => Err(Error::internal(
            "completion status missing without an issue",
        )),
    }
}

// --- Query parsing ---------------------------------------------------------------------------

/// The paging part of a listing query (A6.6): `limit` 1..500 (100), `cursor` non-empty. A
/// repeated known key, a malformed value or an unknown filter value is `400 invalid_query`;
/// unknown keys are ignored, as upstream's schema strips them.
struct ListQuery {
    limit: u32,
    cursor: Option<String>,
    filters: BTreeMap<&'static str, String>,
}

fn invalid_query() -> Error {
    Error::new(ErrorKind::Invalid, "invalid_query")
}

fn parse_list_query(query: &[(String, String)], filters: &[&'static str]) -> Result<ListQuery> {
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (key, value) in query {
        let known = key == "limit" || key == "cursor" || filters.contains(&key.as_str());
        if known && seen.insert(key.as_str(), value.as_str()).is_some() {
            return Err(invalid_query());
        }
    }
    let limit = match seen.get("limit") {
        None => LIST_DEFAULT_LIMIT,
        Some(text) => {
            let ok =
                !text.is_empty() && text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit());
            match text.parse::<u32>() {
                Ok(n) if ok && (1..=LIST_MAX_LIMIT).contains(&n) => n,
                _ => return Err(invalid_query()),
            }
        }
    };
    let cursor = match seen.get("cursor") {
        None => None,
        Some(&"") => return Err(invalid_query()),
        Some(text) => Some((*text).to_owned()),
    };
    let mut chosen = BTreeMap::new();
    for name in filters {
        if let Some(value) = seen.get(name) {
            if value.is_empty() {
                return Err(invalid_query());
            }
            chosen.insert(*name, (*value).to_owned());
        }
    }
    Ok(ListQuery {
        limit,
        cursor,
        filters: chosen,
    })
}

fn invalid_cursor() -> Error {
    Error::new(ErrorKind::Invalid, "invalid_cursor")
}

// --- Use cases -------------------------------------------------------------------------------

impl Coordinator {
    /// `POST …/agent-services` (A9): registers (or re-registers) the endpoint an application
    /// serves. Owner, `coordinator.spawn_for:<app>` or admin, else
    /// `403 application_ownership_required`; an unknown, archived or expired application is
    /// `404 application_not_found`. Upsert on `(zone, application, endpoint_url)`: a
    /// re-registration replaces the declared fields and keeps id, health and heartbeat.
    /// Answers `201` with the row.
    pub async fn register_agent_service(
        &self,
        principal: &Principal,
        zone: &ZoneId,
        body: &Value,
    ) -> Result<Reply> {
        let input = parse_registration(body)?;
        if !principal.may_manage_sessions_of(&input.application_id) {
            return Err(Error::new(
                ErrorKind::Forbidden,
                "application_ownership_required",
            ));
        }
        let mut uow = self.begin_for(principal, zone).await?;
        uow.lock(&service_lock(zone)).await?;
        let now = self.clock.now();
        let application = match ApplicationId::parse(&input.application_id) {
            Ok(id) => uow.get_application(zone, &id).await?,
            Err(_) => None,
        };
        let live = application.is_some_and(|app| {
            app.archived_at.is_none() && app.expires_at.is_none_or(|at| at > now)
        });
        if !live {
            return Err(Error::not_found("application_not_found"));
        }
        let service = match uow
            .find_agent_service(zone, &input.application_id, &input.endpoint_url)
            .await?
        {
            Some(mut existing) => {
                existing.protocol_versions = input.protocol_versions;
                existing.framework_name = input.framework_name;
                existing.framework_version = input.framework_version;
                existing.capabilities = input.capabilities;
                existing.metadata = input.metadata;
                existing.updated_at = now;
                existing
            }
            None => AgentService {
                id: self.ids.new_id(),
                zone_id: zone.clone(),
                application_id: input.application_id,
                endpoint_url: input.endpoint_url,
                protocol_versions: input.protocol_versions,
                framework_name: input.framework_name,
                framework_version: input.framework_version,
                capabilities: input.capabilities,
                health: HEALTH_STARTING.to_owned(),
                metadata: input.metadata,
                last_heartbeat_at: Some(now),
                created_at: now,
                updated_at: now,
            },
        };
        uow.save_agent_service(&service).await?;
        uow.commit().await?;
        Ok(Reply::created(service_row(&service)))
    }

    /// `GET …/agent-services` (A9): the zone's services, newest first, paged as A6.6
    /// (`400 invalid_query`, `400 invalid_cursor`).
    pub async fn list_agent_services(
        &self,
        principal: &Principal,
        zone: &ZoneId,
        query: &[(String, String)],
    ) -> Result<Reply> {
        let query = parse_list_query(query, &[])?;
        let mut uow = self.begin_for(principal, zone).await?;
        if let Some(cursor) = &query.cursor {
            if uow.get_agent_service(zone, cursor).await?.is_none() {
                return Err(invalid_cursor());
            }
        }
        let rows = uow
            .list_agent_services(zone, query.cursor.as_deref(), query.limit)
            .await?;
        let last = rows.last().map(|s| s.id.clone());
        let items = rows.iter().map(service_row).collect();
        Ok(Reply::ok(page(items, last, query.limit)))
    }

    /// `POST …/invocations` (A9, A7): creates a `pending` invocation of a service, idempotent
    /// on the body's `idempotency_key`. In order: `400 invalid_body`;
    /// `400 idempotency_key_invalid`; `404 agent_service_not_found`; `404 session_not_found`
    /// (a named Session that is not a live active task Session); `403
    /// invoker_ownership_required` (the invoking application is the source Session's, else the
    /// service's); `409 idempotency_key_conflict` / `429 idempotency_receipt_limit_exceeded`.
    /// A replay answers the stored `201` body whatever became of the invocation. Emits
    /// `invocation.created`.
    pub async fn create_invocation(
        &self,
        principal: &Principal,
        zone: &ZoneId,
        body: &Value,
    ) -> Result<Reply> {
        let input = parse_new_invocation(body)?;
        let key = idempotency::validate_body_key(&input.idempotency_key)?;
        let mut uow = self.begin_for(principal, zone).await?;
        uow.lock(&invocation_lock(zone)).await?;
        let now = self.clock.now();
        let service = uow
            .get_agent_service(zone, &input.service_id)
            .await?
            .ok_or_else(|| Error::not_found("agent_service_not_found"))?;
        let mut source_application = None;
        for (id, is_source) in [
            (&input.source_session_id, true),
            (&input.target_session_id, false),
        ] {
            let Some(id) = id else { continue };
            let session = uow.get_agent_session(zone, id).await?;
            match session {
                Some(s) if s.is_live(now) && s.lifecycle == Lifecycle::Task => {
                    if is_source {
                        source_application = Some(s.application_id);
                    }
                }
                _ => return Err(Error::not_found("session_not_found")),
            }
        }
        let invoking_application =
            source_application.unwrap_or_else(|| service.application_id.clone());
        if !may_invoke_for(principal, &invoking_application) {
            return Err(invoker_ownership_required());
        }
        let scope = idempotency::scope(CREATE_OPERATION, zone, &invoking_application);
        let request_fingerprint = input.fingerprint(principal);
        if let Prior::Same(receipt) = self
            .replay(uow.as_mut(), &scope, &key, &request_fingerprint, now)
            .await?
        {
            return Ok(Prior::reply(&receipt));
        }
        let invocation = Invocation {
            id: self.ids.new_id(),
            zone_id: zone.clone(),
            service_id: service.id.clone(),
            source_session_id: input.source_session_id,
            target_session_id: input.target_session_id,
            invoking_application_id: invoking_application,
            method: input.method,
            params: input.params,
            metadata: input.metadata,
            status: PENDING.to_owned(),
            attempts: 0,
            // Both bounded to 1..=10 by the schema.
            max_attempts: i32::try_from(input.max_attempts)
                .map_err(|_| Error::internal("max_attempts out of range"))?,
            backoff_ms: input.backoff_ms,
            timeout_ms: input.timeout_ms,
            deadline_at: None,
            error_json: None,
            cancel_reason: None,
            created_at: now,
            updated_at: now,
            completed_at: None,
        };
        uow.save_invocation(&invocation).await?;
        self.emit_invocation_event(uow.as_mut(), &invocation, "invocation.created")
            .await?;
        let reply = Reply::created(invocation_row(&invocation));
        self.remember(
            uow.as_mut(),
            zone,
            &scope,
            &key,
            &request_fingerprint,
            &invocation.id,
            &reply,
            now,
        )
        .await?;
        uow.commit().await?;
        Ok(reply)
    }

    /// `GET …/invocations` (A9): the zone's invocations, newest first, paged as A6.6, with the
    /// optional filters `status`, `service_id` and `session_id` (source or target).
    pub async fn list_invocations(
        &self,
        principal: &Principal,
        zone: &ZoneId,
        query: &[(String, String)],
    ) -> Result<Reply> {
        let query = parse_list_query(query, &["status", "service_id", "session_id"])?;
        if let Some(status) = query.filters.get("status") {
            if !STATUSES.contains(&status.as_str()) {
                return Err(invalid_query());
            }
        }
        let mut uow = self.begin_for(principal, zone).await?;
        if let Some(cursor) = &query.cursor {
            if uow.get_invocation(zone, cursor).await?.is_none() {
                return Err(invalid_cursor());
            }
        }
        let matches = |i: &Invocation| {
            query.filters.iter().all(|(name, value)| match *name {
                "status" => &i.status == value,
                "service_id" => &i.service_id == value,
                "session_id" => {
                    i.source_session_id.as_ref() == Some(value)
                        || i.target_session_id.as_ref() == Some(value)
                }
                _ => false,
            })
        };
        let limit = query.limit as usize;
        let mut found: Vec<Invocation> = Vec::with_capacity(limit);
        if query.filters.is_empty() {
            found = uow
                .list_invocations(zone, query.cursor.as_deref(), query.limit)
                .await?;
        } else {
            // The store pages by id only; filtered pages scan forward in full batches until
            // the page fills or the zone's invocations run out.
            let mut before = query.cursor.clone();
            'scan: loop {
                let batch = uow
                    .list_invocations(zone, before.as_deref(), LIST_MAX_LIMIT)
                    .await?;
                let exhausted = batch.len() < LIST_MAX_LIMIT as usize;
                before = batch.last().map(|i| i.id.clone());
                for invocation in batch {
                    if matches(&invocation) {
                        found.push(invocation);
                        if found.len() == limit {
                            break 'scan;
                        }
                    }
                }
                if exhausted || before.is_none() {
                    break;
                }
            }
        }
        let last = found.last().map(|i| i.id.clone());
        let items = found.iter().map(invocation_list_row).collect();
        Ok(Reply::ok(page(items, last, query.limit)))
    }

    /// `GET …/invocations/:id` (A9): the row, or `404 invocation_not_found`.
    pub async fn get_invocation(
        &self,
        principal: &Principal,
        zone: &ZoneId,
        id: &str,
    ) -> Result<Reply> {
        let id = path_id(id)?;
        let mut uow = self.begin_for(principal, zone).await?;
        let invocation = uow
            .get_invocation(zone, id)
            .await?
            .ok_or_else(invocation_not_found)?;
        Ok(Reply::ok(invocation_row(&invocation)))
    }

    /// `PATCH …/invocations/:id/start` (A9): a `pending` invocation, or a `failed` one with
    /// attempts left, becomes `running` with one more attempt and a deadline of now + timeout;
    /// else `409 invocation_not_startable`. Emits `invocation.started`.
    pub async fn start_invocation(
        &self,
        principal: &Principal,
        zone: &ZoneId,
        id: &str,
    ) -> Result<Reply> {
        let id = path_id(id)?;
        let (mut uow, mut invocation) = self.load_for_change(principal, zone, id).await?;
        let startable = matches!(invocation.status.as_str(), PENDING | FAILED)
            && invocation.attempts < invocation.max_attempts;
        if !startable {
            return Err(Error::new(ErrorKind::Conflict, "invocation_not_startable"));
        }
        let now = self.clock.now();
        invocation.status = RUNNING.to_owned();
        invocation.attempts += 1;
        invocation.deadline_at = Some(now.plus_millis(invocation.timeout_ms));
        invocation.error_json = None;
        invocation.completed_at = None;
        invocation.updated_at = now;
        uow.save_invocation(&invocation).await?;
        self.emit_invocation_event(uow.as_mut(), &invocation, "invocation.started")
            .await?;
        uow.commit().await?;
        Ok(Reply::ok(invocation_row(&invocation)))
    }

    /// `PATCH …/invocations/:id/cancel` (A9), optional body `{reason}`: `pending` →
    /// `canceled`; `running` or `cancel_requested` → `cancel_requested` (the service finishes
    /// it); anything else is `409 invocation_not_cancelable`. Emits
    /// `invocation.cancel_requested` either way.
    pub async fn cancel_invocation(
        &self,
        principal: &Principal,
        zone: &ZoneId,
        id: &str,
        body: Option<&Value>,
    ) -> Result<Reply> {
        let id = path_id(id)?;
        let reason = parse_cancel(body)?;
        let (mut uow, mut invocation) = self.load_for_change(principal, zone, id).await?;
        let now = self.clock.now();
        match invocation.status.as_str() {
            PENDING => {
                invocation.status = CANCELED.to_owned();
                invocation.completed_at = Some(now);
            }
            RUNNING | CANCEL_REQUESTED => invocation.status = CANCEL_REQUESTED.to_owned(),
            _ => return Err(Error::new(ErrorKind::Conflict, "invocation_not_cancelable")),
        }
        if reason.is_some() {
            invocation.cancel_reason = reason;
        }
        invocation.updated_at = now;
        uow.save_invocation(&invocation).await?;
        self.emit_invocation_event(uow.as_mut(), &invocation, "invocation.cancel_requested")
            .await?;
        uow.commit().await?;
        Ok(Reply::ok(invocation_row(&invocation)))
    }

    /// `PATCH …/invocations/:id/complete` (A9), body `{status: succeeded|failed, error?,
    /// metadata?}`: from `running` or `cancel_requested` only, else
    /// `409 invocation_not_completable`. Stores the error, merges the metadata, and emits
    /// `invocation.succeeded` or `invocation.failed`. A `failed` invocation with attempts left
    /// can be started again.
    pub async fn complete_invocation(
        &self,
        principal: &Principal,
        zone: &ZoneId,
        id: &str,
        body: &Value,
    ) -> Result<Reply> {
        let id = path_id(id)?;
        let completion = parse_completion(body)?;
        let (mut uow, mut invocation) = self.load_for_change(principal, zone, id).await?;
        if !matches!(invocation.status.as_str(), RUNNING | CANCEL_REQUESTED) {
            return Err(Error::new(
                ErrorKind::Conflict,
                "invocation_not_completable",
            ));
        }
        let now = self.clock.now();
        invocation.status = completion.status.to_owned();
        invocation.error_json = completion.error;
        invocation.metadata.extend(completion.metadata);
        invocation.completed_at = Some(now);
        invocation.updated_at = now;
        uow.save_invocation(&invocation).await?;
        let event = format!("invocation.{}", completion.status);
        self.emit_invocation_event(uow.as_mut(), &invocation, &event)
            .await?;
        uow.commit().await?;
        Ok(Reply::ok(invocation_row(&invocation)))
    }

    /// The deadline enforcer (A11): one pass over at most `sweeper_batch_size` overdue
    /// `running` invocations across zones. Each becomes `failed` when attempts are left (it
    /// may be started again) or `timed_out` when not, with `error_json.reason =
    /// "deadline_exceeded"`, and emits the matching event. The pass holds the sweep lock
    /// without waiting (another replica's pass answers `0` here) and re-reads each row under
    /// its zone lock, so a completion that won the race stands. Answers how many changed.
    pub async fn sweep_invocation_deadlines(&self) -> Result<u64> {
        let mut uow = self.begin_all().await?;
        if !uow.try_lock(DEADLINE_SWEEP_LOCK).await? {
            return Ok(0);
        }
        let now = self.clock.now();
        let overdue = uow
            .overdue_invocations(now, self.config.sweeper_batch_size)
            .await?;
        let mut by_zone: BTreeMap<ZoneId, Vec<String>> = BTreeMap::new();
        for invocation in overdue {
            by_zone
                .entry(invocation.zone_id)
                .or_default()
                .push(invocation.id);
        }
        let mut swept = 0u64;
        for (zone, ids) in by_zone {
            uow.lock(&invocation_lock(&zone)).await?;
            for id in ids {
                let Some(mut invocation) = uow.get_invocation(&zone, &id).await? else {
                    continue;
                };
                let due = invocation.status == RUNNING
                    && invocation.deadline_at.is_some_and(|d| d <= now);
                if !due {
                    continue;
                }
                let status = if invocation.attempts < invocation.max_attempts {
                    FAILED
                } else {
                    TIMED_OUT
                };
                let mut error = match invocation.error_json.take() {
                    Some(Value::Object(map)) => map,
                    _ => Map::new(),
                };
                error.insert("reason".into(), Value::String("deadline_exceeded".into()));
                invocation.error_json = Some(Value::Object(error));
                invocation.status = status.to_owned();
                invocation.completed_at = Some(now);
                invocation.updated_at = now;
                uow.save_invocation(&invocation).await?;
                let event = format!("invocation.{status}");
                self.emit_invocation_event(uow.as_mut(), &invocation, &event)
                    .await?;
                swept += 1;
            }
        }
        uow.commit().await?;
        Ok(swept)
    }

    /// Opens a unit under the zone's invocation lock and loads the invocation a transition
    /// changes: `404 invocation_not_found`, then `403 invoker_ownership_required` unless the
    /// caller may act for the service's application (upstream authorizes start, cancel and
    /// complete on the service that executes the invocation).
    async fn load_for_change(
        &self,
        principal: &Principal,
        zone: &ZoneId,
        id: &str,
    ) -> Result<(Box<dyn UnitOfWork>, Invocation)> {
        let mut uow = self.begin_for(principal, zone).await?;
        uow.lock(&invocation_lock(zone)).await?;
        let invocation = uow
            .get_invocation(zone, id)
            .await?
            .ok_or_else(invocation_not_found)?;
        let service = uow
            .get_agent_service(zone, &invocation.service_id)
            .await?
            .ok_or_else(invocation_not_found)?;
        if !may_invoke_for(principal, &service.application_id) {
            return Err(invoker_ownership_required());
        }
        Ok((uow, invocation))
    }

    /// Enqueues one `caracal.invocations.lifecycle` row (A12): dedupe key
    /// `{event}:{id}:{attempt}`, payload `event, zone_id, service_id, invocation_id`.
    async fn emit_invocation_event(
        &self,
        uow: &mut dyn UnitOfWork,
        invocation: &Invocation,
        event: &str,
    ) -> Result<()> {
        self.enqueue(
            uow,
            TOPIC_INVOCATIONS_LIFECYCLE,
            format!("{event}:{}:{}", invocation.id, invocation.attempts),
            &[
                ("event", Some(event.to_owned())),
                ("zone_id", Some(invocation.zone_id.as_str().to_owned())),
                ("service_id", Some(invocation.service_id.clone())),
                ("invocation_id", Some(invocation.id.clone())),
            ],
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_need_a_scheme_and_a_network_host() {
        for ok in [
            "http://svc.internal:8080/a2a",
            "https://[::1]:443/x",
            "https://user@host/x",
            "urn:caracal:svc",
            "HTTP://Example.com",
            "http://host:/x",
        ] {
            assert!(is_absolute_url(ok), "{ok}");
        }
        for bad in [
            "",
            "svc.internal",
            "http://",
            "http:///",
            "https://?q",
            "https://host:99999/",
            "https://host:8o/",
            "1http://host",
            "http://ho st/",
            " http://host/",
            "http://[]/",
        ] {
            assert!(!is_absolute_url(bad), "{bad}");
        }
    }

    #[test]
    fn list_query_rules() {
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let parsed = parse_list_query(&q(&[]), &[]).map(|p| p.limit);
        assert_eq!(parsed.ok(), Some(100));
        let parsed = parse_list_query(&q(&[("limit", "500"), ("other", "x")]), &[]);
        assert_eq!(parsed.map(|p| p.limit).ok(), Some(500));
        for bad in [
            vec![("limit", "0")],
            vec![("limit", "501")],
            vec![("limit", "-1")],
            vec![("limit", "1.5")],
            vec![("limit", "")],
            vec![("limit", "99999999999999")],
            vec![("cursor", "")],
            vec![("limit", "1"), ("limit", "2")],
        ] {
            let e = parse_list_query(&q(&bad), &[]).err().map(|e| e.code);
            assert_eq!(e, Some("invalid_query"), "{bad:?}");
        }
        let e = parse_list_query(&q(&[("status", "")]), &["status"]).err();
        assert_eq!(e.map(|e| e.code), Some("invalid_query"));
    }

    #[test]
    fn started_at_is_recovered_from_the_deadline() {
        let now = Timestamp::from_unix_micros(1_800_000_000_123_456);
        let invocation = Invocation {
            id: "i".into(),
            zone_id: ZoneId::parse("z").unwrap_or_else(|_| unreachable!()),
            service_id: "s".into(),
            source_session_id: None,
            target_session_id: None,
            invoking_application_id: "a".into(),
            method: "m".into(),
            params: Value::Null,
            metadata: Map::new(),
            status: RUNNING.into(),
            attempts: 1,
            max_attempts: 3,
            backoff_ms: 1000,
            timeout_ms: 30_000,
            deadline_at: Some(now.plus_millis(30_000)),
            error_json: None,
            cancel_reason: None,
            created_at: now,
            updated_at: now,
            completed_at: None,
        };
        assert_eq!(started_at(&invocation), Some(now));
    }
}
