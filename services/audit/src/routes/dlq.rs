//! The dead-letter routes (`spec/audit-streams-storage.md §6.6`): list (inclusive `start`
//! paging), one entry in detail, and replay of the head's replayable entries into ingestion.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::audit::dlq::{entry_view, replay_fields};
use caracal_core::ports::events::BusError;
use serde_json::{json, Value};

use super::{admin_refusal, query_value, text};
use crate::AuditState;

type State = web::Data<AuditState>;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// Why a `limit` is refused.
const BAD_LIMIT: &str = "limit must be a positive integer";

/// `limit`: absent → 100; not a positive integer → refused; capped at 1000.
fn limit(req: &HttpRequest) -> Option<usize> {
    let raw = query_value(req, "limit");
    if raw.is_empty() {
        return Some(DEFAULT_LIMIT);
    }
    match raw.parse::<i64>() {
        Ok(n) if n > 0 => Some(usize::try_from(n).unwrap_or(MAX_LIMIT).min(MAX_LIMIT)),
        _ => None,
    }
}

fn now_ms(state: &AuditState) -> i64 {
    state.ports.clock.now().unix_micros() / 1000
}

/// `GET /api/audit/dlq?limit=&start=`: entries from `start` (inclusive, default the head);
/// `next_cursor` is the last id returned, so it repeats as the next page's first entry.
pub async fn list(req: HttpRequest, state: State) -> HttpResponse {
    if let Some(refusal) = admin_refusal(&req, &state) {
        return refusal;
    }
    let Some(limit) = limit(&req) else {
        return text(StatusCode::BAD_REQUEST, BAD_LIMIT);
    };
    let start = Some(query_value(&req, "start"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "-".to_owned());
    let entries = match state
        .ports
        .bus
        .range(&state.config.streams.dlq, &start, "+", limit)
        .await
    {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(error = %e, "audit DLQ list failed");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "dlq list failed");
        }
    };
    let now = now_ms(&state);
    let next_cursor = entries
        .last()
        .map(|e| e.entry_id.clone())
        .unwrap_or_default();
    let views: Vec<Value> = entries
        .iter()
        .map(|e| entry_view(&e.entry_id, &e.fields, now, false))
        .collect();
    HttpResponse::Ok().json(json!({"entries": views, "next_cursor": next_cursor}))
}

/// Whether `id` has the shape of a stream id (`<ms>-<seq>` or `<ms>`).
fn stream_id_shaped(id: &str) -> bool {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok()
}

/// `GET /api/audit/dlq/{id}`: one entry with its parsed source event and every field.
pub async fn detail(req: HttpRequest, state: State, id: web::Path<String>) -> HttpResponse {
    if let Some(refusal) = admin_refusal(&req, &state) {
        return refusal;
    }
    let id = id.into_inner();
    if !stream_id_shaped(&id) {
        return super::stock_not_found().await;
    }
    let found = match state
        .ports
        .bus
        .range(&state.config.streams.dlq, &id, &id, 1)
        .await
    {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "audit DLQ detail failed");
            return text(StatusCode::INTERNAL_SERVER_ERROR, "dlq detail failed");
        }
    };
    match found.into_iter().next() {
        Some(entry) => HttpResponse::Ok().json(entry_view(
            &entry.entry_id,
            &entry.fields,
            now_ms(&state),
            true,
        )),
        None => super::stock_not_found().await,
    }
}

/// The replay counts.
struct Replayed {
    scanned: usize,
    replayed: usize,
    skipped: usize,
}

/// Reads the first `limit` entries; each replayable one is published again (`data`, and `sig`
/// when present) and then deleted from the DLQ; the others stay where they are.
async fn replay_head(state: &AuditState, limit: usize) -> Result<Replayed, BusError> {
    let streams = &state.config.streams;
    let bus = &state.ports.bus;
    let head = bus.range(&streams.dlq, "-", "+", limit).await?;
    let mut counts = Replayed {
        scanned: head.len(),
        replayed: 0,
        skipped: 0,
    };
    for entry in head {
        let Some(fields) = replay_fields(&entry.fields) else {
            counts.skipped += 1;
            continue;
        };
        // Published before it is deleted: a failure in between leaves a copy in both, and
        // ingestion absorbs the duplicate.
        bus.publish(&streams.events, &fields).await?;
        bus.delete(&streams.dlq, std::slice::from_ref(&entry.entry_id))
            .await?;
        counts.replayed += 1;
    }
    Ok(counts)
}

/// `POST /api/audit/dlq/replay?limit=`.
pub async fn replay(req: HttpRequest, state: State) -> HttpResponse {
    if let Some(refusal) = admin_refusal(&req, &state) {
        return refusal;
    }
    let Some(limit) = limit(&req) else {
        return text(StatusCode::BAD_REQUEST, BAD_LIMIT);
    };
    match replay_head(&state, limit).await {
        Ok(done) => {
            if done.replayed > 0 {
                tracing::info!(
                    replayed = done.replayed,
                    skipped = done.skipped,
                    "audit DLQ entries replayed"
                );
            }
            HttpResponse::Ok().json(json!({
                "scanned": done.scanned,
                "replayed": done.replayed,
                "skipped": done.skipped,
            }))
        }
        Err(e) => {
            tracing::warn!(error = %e, "audit DLQ replay failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "dlq replay failed")
        }
    }
}
