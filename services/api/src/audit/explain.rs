//! `GET …/audit/by-request/{requestId}/explain` (`spec/api.md §3.13`): what was decided for
//! one request, and for each denial the policy input rebuilt from the event's metadata, so a
//! denied request can be replayed through policy-set simulation without hand-translation.

use caracal_core::audit::StoredEvent;
use caracal_core::policy::input::INPUT_SCHEMA_VERSION;
use serde_json::{json, Map, Value};

use super::redact::redact;

/// The decision the request ended with: `deny` when any event denied, else the last event's
/// decision, else `unknown`. One denial anywhere decides, whatever came after it.
pub fn final_decision(events: &[StoredEvent]) -> String {
    if events.iter().any(|e| e.event.decision == "deny") {
        return "deny".into();
    }
    events
        .last()
        .map(|e| e.event.decision.clone())
        .unwrap_or_else(|| "unknown".into())
}

/// Rebuilds the token-exchange policy input from an event's unredacted metadata, as upstream
/// does. Actor and subject claims are never stored in audit metadata, so `actor_claims` is
/// empty: whoever reproduces a claim-dependent denial adds them.
pub fn policy_input(zone_id: &str, metadata: Option<&Value>) -> Value {
    let empty = Map::new();
    let meta = metadata.and_then(Value::as_object).unwrap_or(&empty);
    let text = |key: &str| meta.get(key).and_then(Value::as_str);
    let scopes = match meta.get("requested_scopes") {
        Some(Value::Array(items)) => Value::Array(items.clone()),
        _ => json!([]),
    };

    let mut principal = Map::new();
    principal.insert("type".into(), json!("Application"));
    principal.insert("id".into(), json!(text("application_id").unwrap_or("")));
    principal.insert("zone_id".into(), json!(zone_id));
    if let Some(method) = text("application_registration_method") {
        principal.insert("registration_method".into(), json!(method));
    }
    if let Some(session) = text("agent_session_id") {
        principal.insert("agent_session_id".into(), json!(session));
    }
    if let Some(lifecycle) = text("agent_lifecycle") {
        principal.insert("lifecycle".into(), json!(lifecycle));
    }
    if let Some(labels @ Value::Array(_)) = meta.get("agent_labels") {
        principal.insert("labels".into(), labels.clone());
    }

    let mut context = Map::new();
    context.insert("actor_claims".into(), json!({}));
    context.insert("requested_scopes".into(), scopes.clone());
    context.insert("challenge_resolved".into(), json!(false));
    for key in ["session_id", "agent_session_id", "delegation_edge_id"] {
        if let Some(value) = text(key) {
            context.insert(key.into(), json!(value));
        }
    }

    let mut input = Map::new();
    input.insert("schema_version".into(), json!(INPUT_SCHEMA_VERSION));
    input.insert("principal".into(), Value::Object(principal));
    input.insert(
        "resource".into(),
        json!({
            "type": "Resource",
            "identifier": text("resource").unwrap_or(""),
            "scopes": scopes,
        }),
    );
    input.insert("action".into(), json!({"id": "TokenExchange"}));
    input.insert("context".into(), Value::Object(context));
    if let Some(session) = text("session_id") {
        input.insert("session".into(), json!({"id": session}));
    }
    if let Some(edge) = text("delegation_edge_id") {
        input.insert("delegation_edge".into(), json!({"id": edge}));
    }
    Value::Object(input)
}

fn parsed(text: &Option<String>) -> Option<Value> {
    text.as_deref().and_then(|t| serde_json::from_str(t).ok())
}

/// The explain document over a request's events (oldest first); `render` gives the event rows
/// as the list routes render them.
pub fn document(
    zone_id: &str,
    request_id: &str,
    events: &[StoredEvent],
    render: impl Fn(&StoredEvent) -> Value,
) -> Value {
    let denied: Vec<Value> = events
        .iter()
        .filter(|e| e.event.decision == "deny")
        .map(|e| {
            let metadata = parsed(&e.event.metadata_json);
            json!({
                "event_id": e.event.id,
                "event_type": e.event.event_type,
                "evaluation_status": e.event.evaluation_status,
                "determining_policies": parsed(&e.event.determining_policies_json)
                    .unwrap_or_else(|| json!([])),
                "diagnostics": parsed(&e.event.diagnostics_json).unwrap_or_else(|| json!([])),
                "metadata": metadata.as_ref().map(redact).unwrap_or_else(|| json!({})),
                "policy_input": policy_input(zone_id, metadata.as_ref()),
            })
        })
        .collect();
    json!({
        "request_id": request_id,
        "zone_id": zone_id,
        "final_decision": final_decision(events),
        "denied": denied,
        "events": events.iter().map(render).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_input_is_rebuilt_from_metadata() {
        let meta = json!({
            "application_id": "app-1",
            "application_registration_method": "managed",
            "resource": "resource://billing",
            "requested_scopes": ["invoices:read"],
            "session_id": "ar-1",
            "agent_session_id": "as-1",
            "agent_lifecycle": "task",
            "agent_labels": ["team:a"],
            "delegation_edge_id": "edge-1",
        });
        assert_eq!(
            policy_input("z1", Some(&meta)),
            json!({
                "schema_version": "2026-05-20",
                "principal": {"type": "Application", "id": "app-1", "zone_id": "z1",
                              "registration_method": "managed", "agent_session_id": "as-1",
                              "lifecycle": "task", "labels": ["team:a"]},
                "resource": {"type": "Resource", "identifier": "resource://billing",
                             "scopes": ["invoices:read"]},
                "action": {"id": "TokenExchange"},
                "context": {"actor_claims": {}, "requested_scopes": ["invoices:read"],
                            "challenge_resolved": false, "session_id": "ar-1",
                            "agent_session_id": "as-1", "delegation_edge_id": "edge-1"},
                "session": {"id": "ar-1"},
                "delegation_edge": {"id": "edge-1"},
            })
        );
        assert_eq!(
            policy_input("z1", None),
            json!({
                "schema_version": "2026-05-20",
                "principal": {"type": "Application", "id": "", "zone_id": "z1"},
                "resource": {"type": "Resource", "identifier": "", "scopes": []},
                "action": {"id": "TokenExchange"},
                "context": {"actor_claims": {}, "requested_scopes": [], "challenge_resolved": false},
            })
        );
    }
}
