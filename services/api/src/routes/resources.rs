//! `/v1/zones/{z}/resources` (`spec/api.md §3.4`).

use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::ids::{ResourceId, ZoneId};
use caracal_core::manage::resources::ResourceInput;

use super::{liveness, page, Query};
use crate::reply::{caller, created, json_body, Handled};
use crate::{views, ApiState};

type ZonePath = web::Path<String>;
type ItemPath = web::Path<(String, String)>;

fn ids(path: &(String, String)) -> Result<(ZoneId, ResourceId), caracal_core::Error> {
    Ok((ZoneId::parse(&path.0)?, ResourceId::parse(&path.1)?))
}

async fn list(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ZonePath,
    query: Query,
) -> Handled {
    let caller = caller(&req)?;
    let zone = ZoneId::parse(&path)?;
    let (page, liveness) = (page(&query)?, liveness(&query)?);
    let rows = state
        .management
        .list_resources(&caller, &zone, liveness, &page)
        .await?;
    Ok(HttpResponse::Ok().json(views::envelope(
        &rows,
        &page,
        |p| (p.attr.created_at, p.id.to_string()),
        views::resource,
    )))
}

async fn get(req: HttpRequest, state: web::Data<ApiState>, path: ItemPath) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    Ok(HttpResponse::Ok().json(views::resource(
        &state.management.get_resource(&caller, &zone, &id).await?,
    )))
}

async fn create(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ZonePath,
    payload: web::Payload,
) -> Handled {
    let caller = caller(&req)?;
    let zone = ZoneId::parse(&path)?;
    let input: ResourceInput = json_body(&req, &state, payload, "invalid_resource").await?;
    let resource = state
        .management
        .create_resource(&caller, &zone, input)
        .await?;
    Ok(created(resource.id.as_str(), views::resource(&resource)))
}

async fn patch(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ItemPath,
    payload: web::Payload,
) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    let input: ResourceInput = json_body(&req, &state, payload, "invalid_resource").await?;
    Ok(HttpResponse::Ok().json(views::resource(
        &state
            .management
            .patch_resource(&caller, &zone, &id, input)
            .await?,
    )))
}

async fn delete(req: HttpRequest, state: web::Data<ApiState>, path: ItemPath) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    state
        .management
        .delete_resource(&caller, &zone, &id)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Mounts the resource routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/zones/{z}/resources", web::get().to(list))
        .route("/zones/{z}/resources", web::post().to(create))
        .route("/zones/{z}/resources/{id}", web::get().to(get))
        .route("/zones/{z}/resources/{id}", web::patch().to(patch))
        .route("/zones/{z}/resources/{id}", web::delete().to(delete));
}
