//! The audit dead-letter queue `caracal.audit.events.dlq` (`spec/audit-streams-storage.md
//! §6.2, §6.6`): what an entry holds, how the operator routes show it, and which entries may
//! be replayed.

use serde_json::{Map, Value};

use super::event::micros_rfc3339;

/// The audit stream.
pub const AUDIT_STREAM: &str = "caracal.audit.events";
/// Its dead-letter stream.
pub const DLQ_STREAM: &str = "caracal.audit.events.dlq";
/// The ingest consumer group.
pub const INGEST_GROUP: &str = "audit-ingestor";

/// Reason prefixes whose entries can be sent through ingestion again: the event itself was
/// fine, storage failed.
const REPLAYABLE_PREFIXES: [&str; 2] =
    ["transient_exceeded_max_deliveries:", "pg_permanent_error:"];

/// The fields of a DLQ entry for the source entry `source_entry_id` with `source_fields`:
/// `reason`, `received_at` (Unix ms), then `src_<field>` for each source field, with `src_id`
/// set to the source's own `id` field when it has one (else the stream id).
pub fn dlq_fields(
    reason: &str,
    received_at_ms: i64,
    source_entry_id: &str,
    source_fields: &[(String, String)],
) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(source_fields.len() + 3);
    out.push(("reason".to_string(), reason.to_string()));
    out.push(("received_at".to_string(), received_at_ms.to_string()));
    let producer_id = source_fields
        .iter()
        .rev()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.clone());
    out.push((
        "src_id".to_string(),
        producer_id.unwrap_or_else(|| source_entry_id.to_string()),
    ));
    for (key, value) in source_fields {
        if key == "id" {
            continue;
        }
        out.push((format!("src_{key}"), value.clone()));
    }
    out
}

/// Whether an entry with these fields may be replayed into ingestion.
pub fn replayable(fields: &[(String, String)]) -> bool {
    let get = |name: &str| field(fields, name);
    let reason_ok = get("reason")
        .map(|r| REPLAYABLE_PREFIXES.iter().any(|p| r.starts_with(p)))
        .unwrap_or(false);
    let data_ok = get("src_data")
        .map(|d| !d.trim().is_empty())
        .unwrap_or(false);
    reason_ok && data_ok
}

/// The source fields to publish again on replay: `data`, and `sig` when non-blank.
pub fn replay_fields(fields: &[(String, String)]) -> Option<Vec<(String, String)>> {
    if !replayable(fields) {
        return None;
    }
    let mut out = vec![(
        "data".to_string(),
        field(fields, "src_data").unwrap_or_default().to_string(),
    )];
    if let Some(sig) = field(fields, "src_sig").filter(|s| !s.trim().is_empty()) {
        out.push(("sig".to_string(), sig.to_string()));
    }
    Some(out)
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Milliseconds of a stream id `<ms>-<seq>`.
pub fn stream_id_millis(id: &str) -> Option<i64> {
    id.split('-').next()?.parse().ok()
}

/// The JSON view of one entry for `GET /api/audit/dlq` (and, with `detail`, for
/// `GET /api/audit/dlq/{id}`): always `id`, `reason`, `age_seconds`, `replayable`; the rest
/// only when non-empty.
pub fn entry_view(id: &str, fields: &[(String, String)], now_ms: i64, detail: bool) -> Value {
    let mut map = Map::new();
    map.insert("id".into(), Value::String(id.to_string()));
    map.insert(
        "reason".into(),
        Value::String(field(fields, "reason").unwrap_or_default().to_string()),
    );
    let age = stream_id_millis(id)
        .map(|ms| ((now_ms - ms).max(0)) / 1000)
        .unwrap_or(0);
    map.insert("age_seconds".into(), Value::from(age));
    map.insert("replayable".into(), Value::Bool(replayable(fields)));
    let mut put = |key: &str, value: Option<String>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            map.insert(key.to_string(), Value::String(v));
        }
    };
    put("source_id", field(fields, "src_id").map(str::to_string));
    put(
        "received_at",
        field(fields, "received_at")
            .and_then(|ms| ms.parse::<i64>().ok())
            .map(|ms| micros_rfc3339((ms / 1000) * 1_000_000)),
    );
    put("source_sig", field(fields, "src_sig").map(str::to_string));
    let source_event = field(fields, "src_data")
        .and_then(|data| serde_json::from_str::<Value>(data).ok())
        .filter(Value::is_object);
    if let Some(event) = &source_event {
        for key in [
            "event_id",
            "zone_id",
            "event_type",
            "request_id",
            "decision",
        ] {
            let source_key = if key == "event_id" { "id" } else { key };
            put(
                key,
                event
                    .get(source_key)
                    .and_then(Value::as_str)
                    .map(str::to_string),
            );
        }
    }
    if detail {
        if let Some(event) = source_event {
            map.insert("source_event".into(), event);
        }
        let all: Map<String, Value> = fields
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        map.insert("fields".into(), Value::Object(all));
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dead_letters_keep_the_source_under_src_names() {
        let source = pairs(&[("id", "e1"), ("data", "{}"), ("sig", "ab")]);
        let fields = dlq_fields("hmac_verify_failed", 1_700_000_000_000, "5-0", &source);
        assert_eq!(
            fields,
            pairs(&[
                ("reason", "hmac_verify_failed"),
                ("received_at", "1700000000000"),
                ("src_id", "e1"),
                ("src_data", "{}"),
                ("src_sig", "ab"),
            ])
        );
        let anonymous = dlq_fields("missing_data_field", 1, "7-1", &pairs(&[("x", "y")]));
        assert_eq!(anonymous[2], ("src_id".to_string(), "7-1".to_string()));
    }

    #[test]
    fn only_storage_failures_with_data_replay() {
        let storage = pairs(&[
            ("reason", "pg_permanent_error:boom"),
            ("src_data", "{\"id\":\"e\"}"),
            ("src_sig", "cd"),
        ]);
        assert!(replayable(&storage));
        assert_eq!(
            replay_fields(&storage),
            Some(pairs(&[("data", "{\"id\":\"e\"}"), ("sig", "cd")]))
        );
        let forged = pairs(&[("reason", "hmac_verify_failed"), ("src_data", "{}")]);
        assert!(!replayable(&forged));
        let blank = pairs(&[
            ("reason", "transient_exceeded_max_deliveries:x"),
            ("src_data", " "),
        ]);
        assert!(!replayable(&blank));
    }

    #[test]
    fn the_view_names_the_event_and_omits_blanks() {
        let fields = pairs(&[
            ("reason", "tamper_on_replay"),
            ("received_at", "1779364800999"),
            ("src_id", "e1"),
            (
                "src_data",
                r#"{"id":"e1","zone_id":"z","event_type":"token_exchange","request_id":"","decision":"allow"}"#,
            ),
        ]);
        let view = entry_view("1779364800000-0", &fields, 1_779_364_810_000, false);
        assert_eq!(view["age_seconds"], 10);
        assert_eq!(view["event_id"], "e1");
        assert_eq!(view["received_at"], "2026-05-21T12:00:00Z");
        assert!(view.get("request_id").is_none());
        assert!(view.get("fields").is_none());
        assert_eq!(view["replayable"], false);
        let detail = entry_view("1779364800000-0", &fields, 1_779_364_810_000, true);
        assert_eq!(detail["source_event"]["zone_id"], "z");
        assert_eq!(detail["fields"]["reason"], "tamper_on_replay");
    }
}
