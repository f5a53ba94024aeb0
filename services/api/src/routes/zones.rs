//! `/v1/zones` (`spec/api.md §3.1`).

use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::ids::ZoneId;
use caracal_core::manage::zones::{NewZone, ZonePatch};
use serde_json::json;

use super::{page, Query};
use crate::reply::{caller, created, json_body, Handled};
use crate::{views, ApiState};

async fn list(req: HttpRequest, state: web::Data<ApiState>, query: Query) -> Handled {
    let caller = caller(&req)?;
    let page = page(&query)?;
    let rows = state.management.list_zones(&caller, &page).await?;
    Ok(HttpResponse::Ok().json(views::envelope(
        &rows,
        &page,
        |z| (z.attr.created_at, z.id.to_string()),
        views::zone,
    )))
}

async fn create(req: HttpRequest, state: web::Data<ApiState>, payload: web::Payload) -> Handled {
    let caller = caller(&req)?;
    let input: NewZone = json_body(&req, &state, payload, "invalid_zone").await?;
    let zone = state.management.create_zone(&caller, input).await?;
    Ok(created(zone.id.as_str(), views::zone(&zone)))
}

async fn get(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<String>) -> Handled {
    let caller = caller(&req)?;
    let id = ZoneId::parse(&path)?;
    Ok(HttpResponse::Ok().json(views::zone(&state.management.get_zone(&caller, &id).await?)))
}

async fn dcr_status(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Handled {
    let caller = caller(&req)?;
    let id = ZoneId::parse(&path)?;
    let status = state.management.zone_dcr_status(&caller, &id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "id": status.id,
        "dcr_enabled": status.dcr_enabled,
        "live_dcr_applications": status.live_dcr_applications,
    })))
}

async fn patch(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Handled {
    let caller = caller(&req)?;
    let id = ZoneId::parse(&path)?;
    let input: ZonePatch = json_body(&req, &state, payload, "invalid_zone").await?;
    Ok(HttpResponse::Ok().json(views::zone(
        &state.management.patch_zone(&caller, &id, input).await?,
    )))
}

async fn delete(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<String>) -> Handled {
    let caller = caller(&req)?;
    let id = ZoneId::parse(&path)?;
    state.management.delete_zone(&caller, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Mounts the zone routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/zones", web::get().to(list))
        .route("/zones", web::post().to(create))
        .route("/zones/{id}", web::get().to(get))
        .route("/zones/{id}", web::patch().to(patch))
        .route("/zones/{id}", web::delete().to(delete))
        .route("/zones/{id}/dcr-status", web::get().to(dcr_status));
}
