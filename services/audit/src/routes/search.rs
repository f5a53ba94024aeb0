//! `GET /api/audit/search` (`spec/audit-streams-storage.md §6.6`): one zone's chain in
//! `chain_seq` order, keyset-paged, in the upstream's Go field names.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::audit::event::micros_rfc3339;
use caracal_core::audit::StoredEvent;
use caracal_core::ports::audit::SearchQuery;
use chrono::DateTime;
use serde_json::{json, Value};

use super::{admin_refusal, query_value, text};
use crate::AuditState;

/// The default window: the last 24 hours.
const DAY_MICROS: i64 = 86_400_000_000;
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// RFC 3339 → Unix microseconds; `None` for anything else (the caller then keeps its
/// default, as upstream silently does).
fn instant(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
}

/// The query as upstream reads it: `zone_id` required; unusable `since`/`until`/`limit`/
/// `cursor` values fall back to their defaults instead of failing.
fn parse(req: &HttpRequest, now_micros: i64) -> Result<SearchQuery, &'static str> {
    let zone_id = query_value(req, "zone_id");
    if zone_id.is_empty() {
        return Err("zone_id is required");
    }
    let optional = |name: &str| Some(query_value(req, name)).filter(|v| !v.is_empty());
    let limit = query_value(req, "limit")
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .map_or(DEFAULT_LIMIT, |n| {
            u32::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT)
        });
    Ok(SearchQuery {
        zone_id,
        since_micros: instant(&query_value(req, "since")).unwrap_or(now_micros - DAY_MICROS),
        until_micros: instant(&query_value(req, "until")).unwrap_or(now_micros),
        decision: optional("decision"),
        request_id: optional("request_id"),
        after_seq: query_value(req, "cursor").parse().unwrap_or(0),
        limit,
    })
}

/// One row in Go's default field names; the event inside in the audit field names.
fn row(stored: StoredEvent) -> Value {
    json!({
        "Event": stored.event.to_value(),
        "IngestedAt": micros_rfc3339(stored.ingested_at_micros),
        "ContentSHA256": stored.content_sha256,
        "PrevContentSHA256": stored.prev_content_sha256.unwrap_or_default(),
        "ChainHMAC": stored.chain_hmac,
        "ChainSeq": stored.chain_seq,
    })
}

/// `GET /api/audit/search`.
pub async fn search(req: HttpRequest, state: web::Data<AuditState>) -> HttpResponse {
    if let Some(refusal) = admin_refusal(&req, &state) {
        return refusal;
    }
    let query = match parse(&req, state.ports.clock.now().unix_micros()) {
        Ok(query) => query,
        Err(message) => return text(StatusCode::BAD_REQUEST, message),
    };
    let rows = match state.ports.ledger.search(&query).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "audit search failed");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "search failed");
        }
    };
    // Go encodes an empty slice it never appended to as `null`, and the cursor as "".
    let next_cursor = rows
        .last()
        .map(|r| r.chain_seq.to_string())
        .unwrap_or_default();
    let events = if rows.is_empty() {
        Value::Null
    } else {
        Value::Array(rows.into_iter().map(row).collect())
    };
    HttpResponse::Ok().json(json!({"events": events, "next_cursor": next_cursor}))
}
