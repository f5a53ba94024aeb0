//! `/v1/zones/{z}/providers` (`spec/api.md §3.4`).

use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::ids::{ProviderId, ZoneId};
use caracal_core::manage::providers::{NewProvider, ProviderPatch};

use super::{liveness, page, Query};
use crate::reply::{caller, created, json_body, Handled};
use crate::{views, ApiState};

type ZonePath = web::Path<String>;
type ItemPath = web::Path<(String, String)>;

fn ids(path: &(String, String)) -> Result<(ZoneId, ProviderId), caracal_core::Error> {
    Ok((ZoneId::parse(&path.0)?, ProviderId::parse(&path.1)?))
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
        .list_providers(&caller, &zone, liveness, &page)
        .await?;
    Ok(HttpResponse::Ok().json(views::envelope(
        &rows,
        &page,
        |p| (p.attr.created_at, p.id.to_string()),
        views::provider,
    )))
}

async fn get(req: HttpRequest, state: web::Data<ApiState>, path: ItemPath) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    Ok(HttpResponse::Ok().json(views::provider(
        &state.management.get_provider(&caller, &zone, &id).await?,
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
    let input: NewProvider = json_body(&req, &state, payload, "invalid_provider").await?;
    let provider = state
        .management
        .create_provider(&caller, &zone, input)
        .await?;
    Ok(created(provider.id.as_str(), views::provider(&provider)))
}

async fn patch(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ItemPath,
    payload: web::Payload,
) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    let input: ProviderPatch = json_body(&req, &state, payload, "invalid_provider").await?;
    Ok(HttpResponse::Ok().json(views::provider(
        &state
            .management
            .patch_provider(&caller, &zone, &id, input)
            .await?,
    )))
}

async fn delete(req: HttpRequest, state: web::Data<ApiState>, path: ItemPath) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    state
        .management
        .delete_provider(&caller, &zone, &id)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Mounts the provider routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/zones/{z}/providers", web::get().to(list))
        .route("/zones/{z}/providers", web::post().to(create))
        .route("/zones/{z}/providers/{id}", web::get().to(get))
        .route("/zones/{z}/providers/{id}", web::patch().to(patch))
        .route("/zones/{z}/providers/{id}", web::delete().to(delete));
}
