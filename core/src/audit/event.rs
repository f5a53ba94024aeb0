//! An audit event in its stored, canonical form (`spec/audit-streams-storage.md §4, §6.2–6.3`),
//! and how one stream entry of `caracal.audit.events` becomes one — or a dead-letter reason.

use chrono::{DateTime, SecondsFormat, Utc};

use super::json::Json;
use crate::ports::MessageAuthenticator;

/// One event as stored: string fields with NUL removed (absent = `""`), the three JSON fields
/// as `jsonb` text (`None` = SQL NULL: absent, empty or `null`), and `occurred_at` in UTC
/// truncated to microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalEvent {
    /// Producer event id; with `occurred_at` the deduplication key.
    pub id: String,
    /// Zone: the key of the hash chain.
    pub zone_id: String,
    /// `token_exchange`, `gateway_resource_request`, …
    pub event_type: String,
    /// Correlation id.
    pub request_id: String,
    /// `allow`, `deny`, `pending`, …
    pub decision: String,
    /// Policy set, when a policy ran.
    pub policy_set_id: String,
    /// Policy set version, when a policy ran.
    pub policy_set_version_id: String,
    /// Manifest SHA-256 of that version.
    pub manifest_sha: String,
    /// `complete`, or a deny reason.
    pub evaluation_status: String,
    /// `determining_policies_json` as `jsonb` text.
    pub determining_policies_json: Option<String>,
    /// `diagnostics_json` as `jsonb` text.
    pub diagnostics_json: Option<String>,
    /// `metadata_json` as `jsonb` text.
    pub metadata_json: Option<String>,
    /// Producer time in Unix microseconds (UTC).
    pub occurred_at_micros: i64,
}

/// An event read off the stream, with the producer's signature kept as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingEvent {
    /// The canonical event.
    pub event: CanonicalEvent,
    /// The frame's `sig`, stored as `ingest_signature`.
    pub sig: Option<String>,
    /// Its content hash (computed once on parse).
    pub content_sha256: String,
}

/// Why an entry cannot become evidence; each maps to its dead-letter `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No `data` field.
    MissingData,
    /// A key is configured and `sig` is missing, not hex, or wrong.
    BadSignature,
    /// `data` is not a usable event.
    Parse(String),
}

impl Rejection {
    /// The DLQ `reason` (`spec/audit-streams-storage.md §6.2`).
    pub fn reason(&self) -> String {
        match self {
            Rejection::MissingData => "missing_data_field".to_string(),
            Rejection::BadSignature => "hmac_verify_failed".to_string(),
            Rejection::Parse(detail) => format!("json_parse_error:{detail}"),
        }
    }
}

const STRING_FIELDS: [&str; 9] = [
    "id",
    "zone_id",
    "event_type",
    "request_id",
    "decision",
    "policy_set_id",
    "policy_set_version_id",
    "manifest_sha",
    "evaluation_status",
];

impl CanonicalEvent {
    /// `occurred_at` as RFC 3339 in UTC with as many fraction digits as needed (Go's
    /// `RFC3339Nano`: trailing zeros dropped).
    pub fn occurred_at_rfc3339(&self) -> String {
        micros_rfc3339(self.occurred_at_micros)
    }

    /// Parses the event JSON of a frame's `data` (`§6.2`): strings must be strings, the
    /// required `id`, `zone_id` and `occurred_at` must be present and non-zero, unknown fields
    /// are ignored.
    pub fn from_data(data: &str) -> Result<CanonicalEvent, Rejection> {
        let json = Json::parse(data).map_err(|e| Rejection::Parse(e.0))?;
        let Json::Object(_) = json else {
            return Err(Rejection::Parse("event is not a JSON object".into()));
        };
        let mut strings: [String; 9] = Default::default();
        for (slot, name) in strings.iter_mut().zip(STRING_FIELDS) {
            match json.get(name) {
                None | Some(Json::Null) => {}
                Some(Json::String(text)) => *slot = text.clone(),
                Some(_) => return Err(Rejection::Parse(format!("{name} is not a string"))),
            }
        }
        let json_field = |name: &str| -> Option<String> {
            match json.get(name) {
                None | Some(Json::Null) => None,
                // An empty raw message is stored as NULL upstream; a JSON empty string is a
                // value like any other.
                Some(value) => Some(value.jsonb_text()),
            }
        };
        let determining_policies_json = json_field("determining_policies_json");
        let diagnostics_json = json_field("diagnostics_json");
        let metadata_json = json_field("metadata_json");
        let occurred_at = match json.get("occurred_at") {
            None | Some(Json::Null) => None,
            Some(Json::String(text)) => Some(parse_occurred_at(text)?),
            Some(_) => return Err(Rejection::Parse("occurred_at is not a string".into())),
        };
        let [id, zone_id, event_type, request_id, decision, policy_set_id, policy_set_version_id, manifest_sha, evaluation_status] =
            strings;
        let occurred_at_micros = match occurred_at {
            Some(micros) if !id.is_empty() && !zone_id.is_empty() => micros,
            _ => {
                return Err(Rejection::Parse(
                    "required fields missing (id, zone_id, occurred_at)".into(),
                ))
            }
        };
        Ok(CanonicalEvent {
            id,
            zone_id,
            event_type,
            request_id,
            decision,
            policy_set_id,
            policy_set_version_id,
            manifest_sha,
            evaluation_status,
            determining_policies_json,
            diagnostics_json,
            metadata_json,
            occurred_at_micros,
        })
    }

    /// The event as JSON in the producer's field names (search and DLQ views). The JSON
    /// fields come back as values; empty optional strings are omitted as the Go struct does.
    pub fn to_value(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        let mut put = |k: &str, v: &str, omit_empty: bool| {
            if !(omit_empty && v.is_empty()) {
                map.insert(k.to_string(), serde_json::Value::String(v.to_string()));
            }
        };
        put("id", &self.id, false);
        put("zone_id", &self.zone_id, false);
        put("event_type", &self.event_type, false);
        put("request_id", &self.request_id, false);
        put("decision", &self.decision, false);
        put("policy_set_id", &self.policy_set_id, true);
        put("policy_set_version_id", &self.policy_set_version_id, true);
        put("manifest_sha", &self.manifest_sha, true);
        put("evaluation_status", &self.evaluation_status, false);
        let parse = |text: &Option<String>| {
            text.as_deref()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
                .unwrap_or(serde_json::Value::Null)
        };
        map.insert(
            "determining_policies_json".into(),
            parse(&self.determining_policies_json),
        );
        map.insert("diagnostics_json".into(), parse(&self.diagnostics_json));
        if self.metadata_json.is_some() {
            map.insert("metadata_json".into(), parse(&self.metadata_json));
        }
        map.insert(
            "occurred_at".into(),
            serde_json::Value::String(self.occurred_at_rfc3339()),
        );
        serde_json::Value::Object(map)
    }
}

/// RFC 3339 with an offset → Unix microseconds, truncated (not rounded). Go's zero time
/// (year 1, the value of an unset `time.Time`) counts as missing.
fn parse_occurred_at(text: &str) -> Result<i64, Rejection> {
    let parsed = DateTime::parse_from_rfc3339(text)
        .map_err(|e| Rejection::Parse(format!("occurred_at: {e}")))?
        .with_timezone(&Utc);
    if parsed == DateTime::<Utc>::from_timestamp(-62_135_596_800, 0).unwrap_or_default() {
        return Err(Rejection::Parse(
            "required fields missing (id, zone_id, occurred_at)".into(),
        ));
    }
    Ok(parsed.timestamp_micros())
}

/// Unix microseconds → RFC 3339 in UTC, fraction digits trimmed (Go `RFC3339Nano`).
pub fn micros_rfc3339(micros: i64) -> String {
    let Some(at) = DateTime::<Utc>::from_timestamp_micros(micros) else {
        return String::new();
    };
    let full = at.to_rfc3339_opts(SecondsFormat::Micros, true);
    // `…:SS.ffffffZ`: drop trailing zeros of the fraction, and the dot when nothing is left.
    let body = full.trim_end_matches('Z').trim_end_matches('0');
    let body = body.strip_suffix('.').unwrap_or(body);
    format!("{body}Z")
}

/// Turns one stream entry into an event or a rejection, in the spec's order: `data` present,
/// then the signature (when a key is configured), then the event JSON.
pub fn parse_entry(
    fields: &[(String, String)],
    mac: Option<&dyn MessageAuthenticator>,
) -> Result<IncomingEvent, Rejection> {
    let field = |name: &str| {
        fields
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let data = field("data").ok_or(Rejection::MissingData)?;
    let sig = field("sig").map(str::to_string);
    if let Some(mac) = mac {
        let valid = match &sig {
            Some(tag) => mac.verify_hex(data.as_bytes(), tag),
            None => false,
        };
        if !valid {
            return Err(Rejection::BadSignature);
        }
    }
    let event = CanonicalEvent::from_data(data)?;
    let content_sha256 = super::chain::content_sha256(&event);
    Ok(IncomingEvent {
        event,
        sig,
        content_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_output_trims_the_fraction() {
        assert_eq!(
            micros_rfc3339(1_779_364_800_123_456),
            "2026-05-21T12:00:00.123456Z"
        );
        assert_eq!(
            micros_rfc3339(1_779_364_800_120_000),
            "2026-05-21T12:00:00.12Z"
        );
        assert_eq!(
            micros_rfc3339(1_779_364_800_000_000),
            "2026-05-21T12:00:00Z"
        );
    }

    #[test]
    fn the_spec_event_parses_to_its_stored_form() {
        let data = r#"{"id":"e1","zone_id":"zone_a","event_type":"token_exchange","request_id":"r1","decision":"allow","evaluation_status":"complete","determining_policies_json":[],"diagnostics_json":[],"occurred_at":"2026-05-21T12:00:00.123456789Z"}"#;
        let event = CanonicalEvent::from_data(data).expect("valid event");
        assert_eq!(event.occurred_at_micros, 1_779_364_800_123_456);
        assert_eq!(event.determining_policies_json.as_deref(), Some("[]"));
        assert_eq!(event.metadata_json, None);
        assert_eq!(event.policy_set_id, "");
    }

    #[test]
    fn offsets_become_utc_and_required_fields_are_enforced() {
        let event = CanonicalEvent::from_data(
            r#"{"id":"a\u0000b","zone_id":"z","occurred_at":"2026-05-21T14:00:00.5+02:00","metadata_json":{"b":1,"a":null}}"#,
        )
        .expect("valid");
        assert_eq!(event.id, "ab");
        assert_eq!(event.occurred_at_micros, 1_779_364_800_500_000);
        assert_eq!(
            event.metadata_json.as_deref(),
            Some(r#"{"a": null, "b": 1}"#)
        );
        for bad in [
            r#"{"zone_id":"z","occurred_at":"2026-05-21T12:00:00Z"}"#,
            r#"{"id":"","zone_id":"z","occurred_at":"2026-05-21T12:00:00Z"}"#,
            r#"{"id":"e","zone_id":"z"}"#,
            r#"{"id":"e","zone_id":"z","occurred_at":"0001-01-01T00:00:00Z"}"#,
            r#"{"id":"e","zone_id":"z","occurred_at":"yesterday"}"#,
            r#"{"id":5,"zone_id":"z","occurred_at":"2026-05-21T12:00:00Z"}"#,
            r#"[1]"#,
            r#"not json"#,
        ] {
            let err = CanonicalEvent::from_data(bad).expect_err(bad);
            assert!(err.reason().starts_with("json_parse_error:"), "{bad}");
        }
    }
}
