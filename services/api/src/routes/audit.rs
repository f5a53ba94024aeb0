//! `/v1/zones/{z}/audit…` and `/v1/zones/{z}/admin-audit` (`spec/api.md §3.13`): the zone's
//! decision evidence and its admin audit chain, read-only. The gate has already confined a
//! zone-scoped token to its own zone; every read here is keyed by the path zone, so events of
//! another zone can never appear.

use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::error::Error;
use caracal_core::ids::{is_path_id, ZoneId};
use caracal_core::time::Timestamp;
use serde_json::{json, Map, Value};

use super::Query;
use crate::audit::export::{self, Export};
use crate::audit::{admin, cursor, explain, ledger_error, query};
use crate::reply::{caller, Handled};
use crate::{views, ApiState};

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// Renders a page as the request asked: whole rows or `fields` projections in the list
/// envelope, or a CSV attachment of the projected columns.
fn page(
    export: &Export,
    rows: Vec<Map<String, Value>>,
    own: &[&'static str],
    payload_key: &str,
    filename: String,
    next_cursor: Option<String>,
) -> HttpResponse {
    let project = |r: &Map<String, Value>| export::project(r, &export.fields, own, payload_key);
    if export.csv {
        let flat: Vec<Map<String, Value>> = rows.iter().map(project).collect();
        return HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((
                "content-disposition",
                format!("attachment; filename=\"{filename}\""),
            ))
            .body(export::csv(&export.fields, &flat));
    }
    let items: Vec<Value> = if export.projected {
        rows.iter().map(|r| Value::Object(project(r))).collect()
    } else {
        rows.into_iter().map(Value::Object).collect()
    };
    HttpResponse::Ok().json(json!({ "items": items, "next_cursor": next_cursor }))
}

async fn list(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: Query,
) -> Handled {
    caller(&req)?;
    let zone = ZoneId::parse(&path)?;
    let request = query::event_list(&zone, &query)?;
    let rows = state
        .audit
        .list(&request.query)
        .await
        .map_err(ledger_error)?;
    let next = match rows.last() {
        Some(last) if rows.len() as u32 == request.query.limit => Some(cursor::encode(
            Timestamp::from_unix_micros(last.event.occurred_at_micros),
            &last.event.id,
        )),
        _ => None,
    };
    let mut rendered: Vec<Map<String, Value>> =
        rows.iter().map(|r| object(views::audit_event(r))).collect();
    if request.export.csv || request.export.projected {
        rendered = rendered
            .into_iter()
            .map(export::with_policy_names)
            .collect();
    }
    Ok(page(
        &request.export,
        rendered,
        &export::EVENT_ROW_FIELDS,
        "metadata_json",
        format!("audit-{zone}.csv"),
        next,
    ))
}

/// The zone and request id of a by-request path; the request id takes the path-id alphabet.
fn request_path(path: &(String, String)) -> Result<(ZoneId, &str), Error> {
    let zone = ZoneId::parse(&path.0)?;
    if !is_path_id(&path.1) {
        return Err(Error::invalid(
            "invalid_params",
            "path identifier is malformed",
        ));
    }
    Ok((zone, &path.1))
}

async fn request_events(
    state: &ApiState,
    zone: &ZoneId,
    request_id: &str,
) -> Result<Vec<caracal_core::audit::StoredEvent>, Error> {
    let rows = state
        .audit
        .by_request(zone.as_str(), request_id)
        .await
        .map_err(ledger_error)?;
    if rows.is_empty() {
        return Err(Error::not_found("request_not_found"));
    }
    Ok(rows)
}

async fn by_request(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
) -> Handled {
    caller(&req)?;
    let (zone, request_id) = request_path(&path)?;
    let rows = request_events(&state, &zone, request_id).await?;
    let events: Vec<Value> = rows.iter().map(views::audit_event).collect();
    Ok(HttpResponse::Ok().json(events))
}

async fn explain(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
) -> Handled {
    caller(&req)?;
    let (zone, request_id) = request_path(&path)?;
    let rows = request_events(&state, &zone, request_id).await?;
    Ok(HttpResponse::Ok().json(explain::document(
        zone.as_str(),
        request_id,
        &rows,
        views::audit_event,
    )))
}

async fn admin_audit(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: Query,
) -> Handled {
    let caller = caller(&req)?;
    let zone = ZoneId::parse(&path)?;
    let request = query::admin_audit_list(&query)?;
    let rows = admin::list(state.store.as_ref(), &caller, &zone, &request).await?;
    let next = match rows.last() {
        Some(last) if rows.len() as u32 == request.limit => {
            Some(cursor::encode(last.occurred_at, &last.id))
        }
        _ => None,
    };
    let rendered = rows
        .iter()
        .map(|r| object(views::admin_audit_event(r)))
        .collect();
    Ok(page(
        &request.export,
        rendered,
        &export::ADMIN_ROW_FIELDS,
        "payload_json",
        format!("admin-audit-{zone}.csv"),
        next,
    ))
}

/// Mounts the audit read routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/zones/{z}/audit", web::get().to(list))
        .route(
            "/zones/{z}/audit/by-request/{request_id}",
            web::get().to(by_request),
        )
        .route(
            "/zones/{z}/audit/by-request/{request_id}/explain",
            web::get().to(explain),
        )
        .route("/zones/{z}/admin-audit", web::get().to(admin_audit));
}
