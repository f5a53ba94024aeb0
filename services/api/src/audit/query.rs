//! The query strings of the audit lists, checked the way upstream's schemas check them
//! (`spec/api.md §3.13`): a malformed value is `400 invalid_query`, an unknown `fields`
//! column `400 invalid_fields`, a bad cursor `400 invalid_cursor`, in that order. Unknown
//! parameters are ignored.

use std::collections::HashMap;

use caracal_core::error::{Error, Result};
use caracal_core::ids::ZoneId;
use caracal_core::ports::audit::ListQuery;
use caracal_core::time::Timestamp;

use super::cursor;
use super::export::{self, Export};

/// Page size when none is asked for.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page a caller may ask for.
pub const MAX_LIMIT: u32 = 1000;
/// Most event types one `event_type` list may name.
pub const MAX_EVENT_TYPES: usize = 16;

fn invalid_query(why: impl Into<String>) -> Error {
    Error::invalid("invalid_query", why)
}

/// The raw query parameters.
struct Params<'a>(&'a HashMap<String, String>);

impl<'a> Params<'a> {
    /// A string of `min..=max` characters, when present. Present-but-empty counts as present.
    fn text(&self, name: &str, min: usize, max: usize) -> Result<Option<&'a str>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(value) => {
                let len = value.chars().count();
                if (min..=max).contains(&len) {
                    Ok(Some(value.as_str()))
                } else {
                    Err(invalid_query(format!(
                        "{name} must be {min} to {max} characters"
                    )))
                }
            }
        }
    }

    fn instant(&self, name: &str) -> Result<Option<Timestamp>> {
        self.0
            .get(name)
            .map(|text| {
                Timestamp::parse_utc_z(text).ok_or_else(|| {
                    invalid_query(format!(
                        "{name} must be an ISO-8601 UTC instant ending in Z"
                    ))
                })
            })
            .transpose()
    }

    fn one_of(&self, name: &str, allowed: &[&'static str]) -> Result<Option<&'static str>> {
        self.0
            .get(name)
            .map(|text| {
                allowed
                    .iter()
                    .find(|a| **a == text.as_str())
                    .copied()
                    .ok_or_else(|| {
                        invalid_query(format!("{name} must be one of {}", allowed.join(", ")))
                    })
            })
            .transpose()
    }

    /// `limit` 1..=1000 (default 100). Numeric text is read as a number first, as upstream's
    /// coercion does, so `50.0` is 50 and `1.5` is refused.
    fn limit(&self) -> Result<u32> {
        let Some(text) = self.0.get("limit") else {
            return Ok(DEFAULT_LIMIT);
        };
        match text.trim().parse::<f64>() {
            Ok(n) if n.fract() == 0.0 && (1.0..=f64::from(MAX_LIMIT)).contains(&n) => Ok(n as u32),
            _ => Err(invalid_query("limit must be an integer from 1 to 1000")),
        }
    }

    /// `format` (`json` default, or `csv`), `fields` and `cursor`, the tail every audit list
    /// shares. `cursor` is decoded later, after `fields` is resolved.
    fn tail(&self) -> Result<(bool, Option<&'a str>, Option<&'a str>)> {
        let csv = self.one_of("format", &["json", "csv"])? == Some("csv");
        let fields = self.text("fields", 1, 1000)?;
        let cursor = self.text("cursor", 1, 512)?;
        Ok((csv, fields, cursor))
    }
}

fn export_of(
    csv: bool,
    fields: Option<&str>,
    own: &[&'static str],
    payload: &[&'static str],
) -> Result<Export> {
    let resolved = export::parse_fields(fields, own, payload).ok_or_else(|| {
        Error::invalid(
            "invalid_fields",
            "fields names a column this list does not export",
        )
    })?;
    Ok(Export {
        csv,
        fields: resolved,
        projected: fields.is_some(),
    })
}

/// `GET /v1/zones/{z}/audit`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventList {
    /// The ledger query.
    pub query: ListQuery,
    /// How to render the page.
    pub export: Export,
}

/// Parses the zone audit list's query. `session_id` is the agent Session
/// (`metadata_json.agent_session_id`); `authority_record_id` is metadata `session_id`.
pub fn event_list(zone: &ZoneId, raw: &HashMap<String, String>) -> Result<EventList> {
    let p = Params(raw);
    let since = p.instant("since")?;
    let until = p.instant("until")?;
    let request_id = p.text("request_id", 1, usize::MAX)?;
    let decision = p.one_of("decision", &["allow", "deny", "partial"])?;
    let event_type = p.text("event_type", 1, 512)?;
    let application_id = p.text("application_id", 1, 128)?;
    let agent_session_id = p.text("session_id", 1, 128)?;
    let authority_record_id = p.text("authority_record_id", 1, 128)?;
    let label = p.text("label", 1, 64)?;
    let (csv, fields, cursor) = p.tail()?;
    let limit = p.limit()?;
    let export = export_of(
        csv,
        fields,
        &export::EVENT_ROW_FIELDS,
        &export::EVENT_METADATA_FIELDS,
    )?;
    let event_types = match event_type {
        None => Vec::new(),
        Some(raw) => {
            let types: Vec<String> = raw
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
            if types.is_empty() || types.len() > MAX_EVENT_TYPES {
                return Err(invalid_query(
                    "event_type must name 1 to 16 comma-separated event types",
                ));
            }
            types
        }
    };
    let before = cursor
        .map(cursor::decode)
        .transpose()?
        .map(|(at, id)| (at.unix_micros(), id));
    let owned = |v: Option<&str>| v.map(str::to_owned);
    Ok(EventList {
        query: ListQuery {
            zone_id: zone.to_string(),
            since_micros: since.map(|t| t.unix_micros()),
            until_micros: until.map(|t| t.unix_micros()),
            request_id: owned(request_id),
            decision: decision.map(str::to_owned),
            event_types,
            application_id: owned(application_id),
            agent_session_id: owned(agent_session_id),
            authority_record_id: owned(authority_record_id),
            label: owned(label),
            before,
            limit,
        },
        export,
    })
}

/// `GET /v1/zones/{z}/admin-audit`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAuditList {
    /// `occurred_at >= since`.
    pub since: Option<Timestamp>,
    /// `occurred_at < until`.
    pub until: Option<Timestamp>,
    /// Exact actor (admin token id).
    pub actor_id: Option<String>,
    /// Exact entity collection.
    pub entity_type: Option<String>,
    /// Exact entity id.
    pub entity_id: Option<String>,
    /// `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: Option<&'static str>,
    /// Keyset cursor: rows strictly before (`occurred_at`, `id`).
    pub before: Option<(Timestamp, String)>,
    /// Page size.
    pub limit: u32,
    /// How to render the page.
    pub export: Export,
}

/// Parses the admin audit list's query.
pub fn admin_audit_list(raw: &HashMap<String, String>) -> Result<AdminAuditList> {
    let p = Params(raw);
    let since = p.instant("since")?;
    let until = p.instant("until")?;
    let owned = |v: Option<&str>| v.map(str::to_owned);
    let actor_id = owned(p.text("actor_id", 1, 128)?);
    let entity_type = owned(p.text("entity_type", 1, 64)?);
    let entity_id = owned(p.text("entity_id", 1, 128)?);
    let method = p.one_of("method", &["POST", "PUT", "PATCH", "DELETE"])?;
    let (csv, fields, cursor) = p.tail()?;
    let limit = p.limit()?;
    let export = export_of(
        csv,
        fields,
        &export::ADMIN_ROW_FIELDS,
        &export::ADMIN_PAYLOAD_FIELDS,
    )?;
    let before = cursor.map(cursor::decode).transpose()?;
    Ok(AdminAuditList {
        since,
        until,
        actor_id,
        entity_type,
        entity_id,
        method,
        before,
        limit,
        export,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn code(pairs: &[(&str, &str)]) -> Option<&'static str> {
        let zone = ZoneId::parse("z1").ok()?;
        event_list(&zone, &params(pairs)).err().map(|e| e.code)
    }

    #[test]
    fn event_filters_map_onto_the_ledger_query() {
        let zone = ZoneId::parse("z1").expect("zone id");
        let parsed = event_list(
            &zone,
            &params(&[
                ("since", "2026-05-21T12:00:00Z"),
                ("until", "2026-05-21T13:00:00.5Z"),
                ("event_type", " token_exchange, step_up_issued ,"),
                ("session_id", "as-1"),
                ("authority_record_id", "ar-1"),
                ("limit", "50.0"),
                ("unknown", "ignored"),
            ]),
        )
        .expect("valid query");
        assert_eq!(parsed.query.since_micros, Some(1_779_364_800_000_000));
        assert_eq!(parsed.query.until_micros, Some(1_779_368_400_500_000));
        assert_eq!(
            parsed.query.event_types,
            vec!["token_exchange", "step_up_issued"]
        );
        assert_eq!(parsed.query.agent_session_id.as_deref(), Some("as-1"));
        assert_eq!(parsed.query.authority_record_id.as_deref(), Some("ar-1"));
        assert_eq!(parsed.query.limit, 50);
        assert!(!parsed.export.csv && !parsed.export.projected);
    }

    #[test]
    fn bad_values_are_typed_in_upstream_order() {
        let many = vec!["t"; 17].join(",");
        for (pairs, want) in [
            (vec![("limit", "0")], "invalid_query"),
            (vec![("limit", "1001")], "invalid_query"),
            (vec![("limit", "1.5")], "invalid_query"),
            (vec![("limit", "")], "invalid_query"),
            (
                vec![("since", "2026-05-21T12:00:00+02:00")],
                "invalid_query",
            ),
            (vec![("until", "yesterday")], "invalid_query"),
            (vec![("decision", "pending")], "invalid_query"),
            (vec![("format", "xml")], "invalid_query"),
            (vec![("label", &"l".repeat(65))], "invalid_query"),
            (vec![("event_type", &many)], "invalid_query"),
            (vec![("event_type", ",")], "invalid_query"),
            (vec![("cursor", "")], "invalid_query"),
            (vec![("fields", "id,secret_column")], "invalid_fields"),
            (vec![("cursor", "!!")], "invalid_cursor"),
            // A bad limit wins over bad fields, bad fields over a bad cursor.
            (
                vec![("fields", "nope"), ("limit", "0"), ("cursor", "!!")],
                "invalid_query",
            ),
            (vec![("fields", "nope"), ("cursor", "!!")], "invalid_fields"),
        ] {
            assert_eq!(code(&pairs), Some(want), "{pairs:?}");
        }
    }

    #[test]
    fn admin_filters_parse() {
        let parsed = admin_audit_list(&params(&[
            ("method", "PUT"),
            ("fields", "action,change_kind"),
            ("format", "csv"),
        ]))
        .expect("valid");
        assert_eq!(parsed.method, Some("PUT"));
        assert_eq!(parsed.export.fields, vec!["action", "change_kind"]);
        assert!(parsed.export.csv && parsed.export.projected);
        assert_eq!(parsed.limit, DEFAULT_LIMIT);
        for bad in [
            vec![("method", "GET")],
            vec![("entity_type", &"e".repeat(65)[..])],
        ] {
            assert_eq!(
                admin_audit_list(&params(&bad)).err().map(|e| e.code),
                Some("invalid_query")
            );
        }
    }
}
