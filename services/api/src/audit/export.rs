//! `fields` projections and `format=csv` exports of the audit lists (upstream
//! `zone-events.ts`): a row's own columns plus the keys of its (redacted) JSON payload,
//! flattened so an export carries readable columns instead of blobs.

use serde_json::{Map, Value};

/// Columns of a decision-event row an export may name (`determining_policies` is the list of
/// policy names flattened from `determining_policies_json`).
pub const EVENT_ROW_FIELDS: [&str; 11] = [
    "id",
    "occurred_at",
    "event_type",
    "decision",
    "evaluation_status",
    "request_id",
    "ingested_at",
    "policy_set_id",
    "policy_set_version_id",
    "manifest_sha",
    "determining_policies",
];

/// `metadata_json` keys an event export may name.
pub const EVENT_METADATA_FIELDS: [&str; 35] = [
    "application_id",
    "application_name",
    "resource",
    "requested_scopes",
    "agent_session_id",
    "agent_lifecycle",
    "agent_labels",
    "delegation_edge_id",
    "delegation_hop_count",
    "method",
    "latency_ms",
    "upstream_status",
    "result_class",
    "reason",
    "trace_id",
    "provider_id",
    "connection_id",
    "upstream_host",
    "gateway_status",
    "error_kind",
    "response_bytes",
    "auth_mode",
    "subject_fingerprint",
    "subject",
    "authorized_by",
    "command",
    "subcommand",
    "challenge_id",
    "tier",
    "approver_class",
    "privacy_mode",
    "approver_subject_id",
    "subject_anchor",
    "subject_kind",
    "federated_user_issuer",
];

/// Columns of an admin audit row an export may name.
pub const ADMIN_ROW_FIELDS: [&str; 14] = [
    "id",
    "occurred_at",
    "action",
    "method",
    "path",
    "entity_type",
    "entity_id",
    "status_code",
    "actor_id",
    "actor_name",
    "actor_scope",
    "request_id",
    "chain_seq",
    "signed",
];

/// `payload_json` keys an admin audit export may name.
pub const ADMIN_PAYLOAD_FIELDS: [&str; 2] = ["change_kind", "changed_fields"];

/// Which of a list's exports a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// `format=csv`.
    pub csv: bool,
    /// The columns, in the caller's order (every exportable column when `fields` is absent).
    pub fields: Vec<&'static str>,
    /// Whether `fields` was given: JSON items are then projections instead of whole rows.
    pub projected: bool,
}

/// Resolves `fields` against what a list exports; `None` when it names nothing or an unknown
/// column (`400 invalid_fields`).
pub fn parse_fields(
    raw: Option<&str>,
    own: &[&'static str],
    payload: &[&'static str],
) -> Option<Vec<&'static str>> {
    let allowed = || own.iter().chain(payload.iter()).copied();
    let Some(raw) = raw else {
        return Some(allowed().collect());
    };
    let mut fields = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        fields.push(allowed().find(|a| *a == name)?);
    }
    (!fields.is_empty()).then_some(fields)
}

/// A row projected onto `fields`: own columns from the row, the rest from its `payload_key`
/// object. A payload key the row lacks is left out, as upstream's JSON rendering drops it.
pub fn project(
    row: &Map<String, Value>,
    fields: &[&'static str],
    own: &[&'static str],
    payload_key: &str,
) -> Map<String, Value> {
    let payload = row.get(payload_key).and_then(Value::as_object);
    let mut out = Map::new();
    for field in fields {
        let value = if own.contains(field) {
            row.get(*field)
        } else {
            payload.and_then(|p| p.get(*field))
        };
        if let Some(value) = value {
            out.insert((*field).to_owned(), value.clone());
        }
    }
    out
}

/// Adds the `determining_policies` column: the policy names of the stored
/// `[{"policy": name}]` list, which is how exports show which policies decided an event.
pub fn with_policy_names(mut row: Map<String, Value>) -> Map<String, Value> {
    let names: Vec<Value> = match row.get("determining_policies_json") {
        Some(Value::Array(entries)) => entries
            .iter()
            .filter_map(|e| e.get("policy").and_then(Value::as_str))
            .map(|name| Value::String(name.to_owned()))
            .collect(),
        _ => Vec::new(),
    };
    row.insert("determining_policies".into(), Value::Array(names));
    row
}

fn cell_text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell_text).collect::<Vec<_>>().join(" "),
        Value::Object(_) => value.to_string(),
        Value::Bool(_) | Value::Number(_) => value.to_string(),
    }
}

/// One CSV cell. Exported values come from producers and identity providers, so every cell is
/// hostile: one that starts with a spreadsheet formula trigger is prefixed with `'` so it
/// renders as text.
fn cell(value: Option<&Value>) -> String {
    let mut text = value.map(cell_text).unwrap_or_default();
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        text.insert(0, '\'');
    }
    if text.contains(['"', ',', '\r', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The CSV document: a header line of `fields`, then one line per row, CRLF-terminated.
pub fn csv(fields: &[&'static str], rows: &[Map<String, Value>]) -> String {
    let mut out = fields.join(",");
    out.push_str("\r\n");
    for row in rows {
        let line: Vec<String> = fields.iter().map(|f| cell(row.get(*f))).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_must_all_be_known() {
        let own = ["id", "occurred_at"];
        let payload = ["resource"];
        assert_eq!(
            parse_fields(None, &own, &payload),
            Some(vec!["id", "occurred_at", "resource"])
        );
        assert_eq!(
            parse_fields(Some(" resource, id ,"), &own, &payload),
            Some(vec!["resource", "id"])
        );
        assert_eq!(parse_fields(Some(",,"), &own, &payload), None);
        assert_eq!(parse_fields(Some("id,metadata_json"), &own, &payload), None);
    }

    #[test]
    fn projection_reads_own_columns_then_the_payload() {
        let row = json!({"id": "e1", "decision": null,
                         "metadata_json": {"resource": "r", "id": "not this"}});
        let row = row.as_object().cloned().unwrap_or_default();
        let out = project(
            &row,
            &["id", "decision", "resource", "tier"],
            &["id", "decision"],
            "metadata_json",
        );
        assert_eq!(
            Value::Object(out),
            json!({"id": "e1", "decision": null, "resource": "r"})
        );
    }

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        let rows = vec![
            json!({"a": "=SUM(A1)", "b": ["x", "y"], "c": "say \"hi\", ok"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ];
        assert_eq!(
            csv(&["a", "b", "c", "d"], &rows),
            "a,b,c,d\r\n'=SUM(A1),x y,\"say \"\"hi\"\", ok\",\r\n"
        );
    }
}
