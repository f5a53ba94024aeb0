//! Wire shapes: how each aggregate is rendered for the admin SDK (`spec/api.md §3`). Domain
//! types stay free of wire concerns; these functions are the only place that knows the JSON.

use caracal_core::attribution::Attribution;
use caracal_core::manage::Caller;
use caracal_core::model::*;
use caracal_core::pagination::next_cursor;
use caracal_core::ports::store::Page;
use caracal_core::time::Timestamp;
use serde_json::{json, Map, Value};

fn attr(out: &mut Map<String, Value>, a: &Attribution) {
    out.insert("created_by".into(), json!(a.created_by));
    out.insert("created_via_operator".into(), json!(a.created_via_operator));
    out.insert("updated_by".into(), json!(a.updated_by));
    out.insert("updated_via_operator".into(), json!(a.updated_via_operator));
    out.insert("created_at".into(), json!(a.created_at));
    out.insert("updated_at".into(), json!(a.updated_at));
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The list envelope `{"items", "next_cursor"}`.
pub fn envelope<T>(
    rows: &[T],
    page: &Page,
    key: impl Fn(&T) -> (Timestamp, String),
    render: impl Fn(&T) -> Value,
) -> Value {
    json!({
        "items": rows.iter().map(render).collect::<Vec<_>>(),
        "next_cursor": next_cursor(rows, page, key),
    })
}

/// A zone.
pub fn zone(z: &Zone) -> Value {
    let mut out = object(json!({
        "id": z.id,
        "name": z.name,
        "slug": z.slug,
        "dcr_enabled": z.dcr_enabled,
        "operator_coauthor_badge": z.operator_coauthor_badge,
        "operator_governed": z.operator_governed,
    }));
    attr(&mut out, &z.attr);
    Value::Object(out)
}

/// An application row; `traits` only for global-scope callers.
pub fn application(a: &Application, caller: &Caller) -> Value {
    let mut out = object(json!({
        "id": a.id,
        "zone_id": a.zone_id,
        "name": a.name,
        "registration_method": a.registration_method.as_str(),
        "expires_at": a.expires_at,
        "archived_at": a.archived_at,
    }));
    if caller.actor.is_global() {
        out.insert("traits".into(), json!(a.traits));
    }
    attr(&mut out, &a.attr);
    Value::Object(out)
}

/// The create/rotate/DCR shape: no traits or archived_at, plus the plaintext secret.
pub fn application_with_secret(a: &Application, secret: &str) -> Value {
    let mut out = object(json!({
        "id": a.id,
        "zone_id": a.zone_id,
        "name": a.name,
        "registration_method": a.registration_method.as_str(),
        "expires_at": a.expires_at,
        "client_secret": secret,
    }));
    attr(&mut out, &a.attr);
    Value::Object(out)
}

/// A provider: public config and secret key names only.
pub fn provider(p: &Provider) -> Value {
    let mut out = object(json!({
        "id": p.id,
        "zone_id": p.zone_id,
        "name": p.name,
        "identifier": p.identifier,
        "kind": p.kind,
        "config_json": p.config_json,
        "secret_config_keys": p.secret_config_keys,
        "connectivity_failed_at": p.connectivity_failed_at,
        "archived_at": p.archived_at,
    }));
    attr(&mut out, &p.attr);
    Value::Object(out)
}

/// A resource.
pub fn resource(r: &Resource) -> Value {
    let mut out = object(json!({
        "id": r.id,
        "zone_id": r.zone_id,
        "name": r.name,
        "identifier": r.identifier,
        "upstream_url": r.upstream_url,
        "scopes": r.scopes,
        "credential_provider_id": r.credential_provider_id,
        "operations": r.operations,
        "operation_enforcement": r.operation_enforcement,
        "archived_at": r.archived_at,
    }));
    attr(&mut out, &r.attr);
    Value::Object(out)
}

/// A policy (list shape).
pub fn policy(p: &Policy) -> Value {
    let mut out = object(json!({
        "id": p.id,
        "zone_id": p.zone_id,
        "name": p.name,
        "description": p.description,
    }));
    attr(&mut out, &p.attr);
    Value::Object(out)
}

/// A full policy version row.
pub fn policy_version(v: &PolicyVersion) -> Value {
    json!({
        "id": v.id,
        "policy_id": v.policy_id,
        "version": v.version,
        "content": v.content,
        "content_sha256": v.content_sha256,
        "schema_version": v.schema_version,
        "created_by": v.created_by,
        "created_at": v.created_at,
        "archived_at": v.archived_at,
        "created_via_operator": v.created_via_operator,
    })
}

/// The short version shape returned by creates.
pub fn policy_version_summary(v: &PolicyVersion) -> Value {
    json!({
        "id": v.id,
        "policy_id": v.policy_id,
        "version": v.version,
        "content_sha256": v.content_sha256,
        "schema_version": v.schema_version,
        "created_at": v.created_at,
    })
}

/// A policy set; `with_active` adds `active_version_id` (list/get, not create).
pub fn policy_set(s: &PolicySet, with_active: bool) -> Value {
    let mut out = object(json!({
        "id": s.id,
        "zone_id": s.zone_id,
        "name": s.name,
        "description": s.description,
    }));
    attr(&mut out, &s.attr);
    if with_active {
        out.insert("active_version_id".into(), json!(s.active_version_id));
    }
    Value::Object(out)
}

/// A policy set version (list shape).
pub fn policy_set_version(v: &PolicySetVersion) -> Value {
    json!({
        "id": v.id,
        "policy_set_id": v.policy_set_id,
        "version": v.version,
        "manifest_sha256": v.manifest_sha256,
        "schema_version": v.schema_version,
        "created_by": v.created_by,
        "created_via_operator": v.created_via_operator,
        "created_at": v.created_at,
    })
}

/// A policy set version with its manifest.
pub fn policy_set_version_detail(v: &PolicySetVersion) -> Value {
    let mut out = object(policy_set_version(v));
    let manifest: Vec<Value> = v
        .manifest
        .iter()
        .map(|id| json!({ "policy_version_id": id }))
        .collect();
    out.insert("manifest_json".into(), Value::Array(manifest));
    out.insert("policies".into(), json!(v.manifest));
    Value::Object(out)
}

/// A grant row.
pub fn grant(g: &Grant) -> Value {
    let mut out = object(json!({
        "id": g.id,
        "zone_id": g.zone_id,
        "application_id": g.application_id,
        "user_id": g.user_id,
        "resource_id": g.resource_id,
        "scopes": g.scopes,
        "status": g.status,
    }));
    attr(&mut out, &g.attr);
    Value::Object(out)
}

/// A subject issuer row (`archived_at` is never shown: archived issuers are not readable).
pub fn subject_issuer(i: &SubjectIssuer) -> Value {
    let mut out = object(json!({
        "id": i.id,
        "zone_id": i.zone_id,
        "issuer": i.issuer,
        "jwks_url": i.jwks_url,
        "audience": i.audience,
    }));
    attr(&mut out, &i.attr);
    Value::Object(out)
}

/// An approval hold as the operator reads it (`spec/api.md §3.14`).
pub fn approval(r: &caracal_core::manage::approvals::ApprovalRow) -> Value {
    let h = &r.hold;
    json!({
        "id": h.id,
        "zone_id": h.zone_id,
        "session_id": h.session_id,
        "principal_id": h.principal_id,
        "application_id": h.application_id,
        "approval_type": h.approval_type,
        "tier": h.tier,
        "approver_class": h.approver_class.as_str(),
        "privacy_mode": h.privacy_mode.as_str(),
        "subject_anchor": h.subject_anchor,
        "binding": h.binding,
        "metadata_json": h.metadata_json,
        "decision_reason": h.decision_reason,
        "created_at": h.created_at,
        "expires_at": h.expires_at,
        "satisfied_at": h.satisfied_at,
        "rejected_at": h.rejected_at,
        "consumed_at": h.consumed_at,
        "approver_subject_id": h.approver_subject_id,
        "principal_federated": r.principal_federated,
        "prior_approved": r.prior_approved,
        "prior_rejected": r.prior_rejected,
        "state": r.state.as_str(),
    })
}

/// What an operator decision answers.
pub fn approval_decision(
    h: &caracal_core::approval::ApprovalHold,
    verdict: caracal_core::manage::approvals::Verdict,
) -> Value {
    json!({
        "id": h.id,
        "state": verdict.as_str(),
        "satisfied_at": h.satisfied_at,
        "rejected_at": h.rejected_at,
        "approver_subject_id": h.approver_subject_id,
    })
}

fn stored_json(text: &Option<String>) -> Value {
    text.as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

/// A decision event as the zone audit reads render it (upstream's `audit_events` row): the
/// producer's strings as stored, the three JSON columns as values, `metadata_json` redacted,
/// times in milliseconds.
pub fn audit_event(row: &caracal_core::audit::StoredEvent) -> Value {
    let e = &row.event;
    let metadata = match stored_json(&e.metadata_json) {
        Value::Null => Value::Null,
        meta => crate::audit::redact::redact(&meta),
    };
    json!({
        "id": e.id,
        "zone_id": e.zone_id,
        "event_type": e.event_type,
        "request_id": e.request_id,
        "decision": e.decision,
        "policy_set_id": e.policy_set_id,
        "policy_set_version_id": e.policy_set_version_id,
        "manifest_sha": e.manifest_sha,
        "evaluation_status": e.evaluation_status,
        "determining_policies_json": stored_json(&e.determining_policies_json),
        "diagnostics_json": stored_json(&e.diagnostics_json),
        "metadata_json": metadata,
        "occurred_at": Timestamp::from_unix_micros(e.occurred_at_micros),
        "ingested_at": Timestamp::from_unix_micros(row.ingested_at_micros),
    })
}

/// An admin audit record as `GET …/admin-audit` renders it; `signed` says whether the chain
/// link carries an HMAC.
pub fn admin_audit_event(r: &AdminAuditRecord) -> Value {
    json!({
        "id": r.id,
        "request_id": r.request_id,
        "actor_id": r.actor_id,
        "actor_name": r.actor_name,
        "actor_scope": r.actor_scope,
        "action": r.action,
        "method": r.method,
        "path": r.path,
        "entity_type": r.entity_type,
        "entity_id": r.entity_id,
        "status_code": r.status_code,
        "payload_json": crate::audit::redact::redact(&r.payload_json),
        "occurred_at": r.occurred_at,
        "chain_seq": r.chain_seq,
        "signed": r.chain_hmac.is_some(),
    })
}
