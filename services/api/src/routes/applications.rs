//! `/v1/zones/{z}/applications` (`spec/api.md §3.2`).

use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::ids::{ApplicationId, ZoneId};
use caracal_core::manage::applications::{ApplicationPatch, NewApplication, NewDcrApplication};
use serde_json::json;

use super::{liveness, page, Query};
use crate::reply::{caller, created, json_body, Handled};
use crate::{views, ApiState};

type ZonePath = web::Path<String>;

/// DCR registrations allowed per second per zone and actor.
const DCR_PER_SECOND: u64 = 10;
type AppPath = web::Path<(String, String)>;

fn ids(path: &(String, String)) -> Result<(ZoneId, ApplicationId), caracal_core::Error> {
    Ok((ZoneId::parse(&path.0)?, ApplicationId::parse(&path.1)?))
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
        .list_applications(&caller, &zone, liveness, &page)
        .await?;
    Ok(HttpResponse::Ok().json(views::envelope(
        &rows,
        &page,
        |a| (a.attr.created_at, a.id.to_string()),
        |a| views::application(a, &caller),
    )))
}

async fn get(req: HttpRequest, state: web::Data<ApiState>, path: AppPath) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    let app = state
        .management
        .get_application(&caller, &zone, &id)
        .await?;
    Ok(HttpResponse::Ok().json(views::application(&app, &caller)))
}

async fn create(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ZonePath,
    payload: web::Payload,
) -> Handled {
    let caller = caller(&req)?;
    let zone = ZoneId::parse(&path)?;
    let input: NewApplication = json_body(&req, &state, payload, "invalid_application").await?;
    let out = state
        .management
        .create_application(&caller, &zone, input)
        .await?;
    Ok(created(
        out.application.id.as_str(),
        views::application_with_secret(&out.application, &out.client_secret),
    ))
}

async fn dcr(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ZonePath,
    payload: web::Payload,
) -> Handled {
    let caller = caller(&req)?;
    let zone = ZoneId::parse(&path)?;
    let input: NewDcrApplication = json_body(&req, &state, payload, "invalid_application").await?;
    // At most 10 registrations per second per zone and actor (`spec/api.md §3.2`).
    let second = state.management.clock.now().unix_seconds();
    let key = format!("rl:dcr:{zone}:{}", caller.actor.token_id);
    let count = state
        .limiter
        .hit(&key, second)
        .await
        .map_err(caracal_core::Error::from)?;
    if count > DCR_PER_SECOND {
        return Err(caracal_core::Error::new(
            caracal_core::ErrorKind::RateLimited,
            "dcr_rate_limit_exceeded",
        )
        .describe("at most 10 DCR registrations per second per zone and actor")
        .into());
    }
    let out = state
        .management
        .register_dcr_application(&caller, &zone, input)
        .await?;
    let mut body = views::application(&out.application, &caller);
    if let Some(map) = body.as_object_mut() {
        map.insert("traits".into(), json!([]));
        map.insert("client_secret".into(), json!(out.client_secret));
    }
    Ok(created(out.application.id.as_str(), body))
}

async fn patch(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: AppPath,
    payload: web::Payload,
) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    let input: ApplicationPatch = json_body(&req, &state, payload, "invalid_application").await?;
    let app = state
        .management
        .patch_application(&caller, &zone, &id, input)
        .await?;
    Ok(HttpResponse::Ok().json(views::application(&app, &caller)))
}

async fn rotate(req: HttpRequest, state: web::Data<ApiState>, path: AppPath) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    let out = state
        .management
        .rotate_application_secret(&caller, &zone, &id)
        .await?;
    Ok(HttpResponse::Ok().json(views::application_with_secret(
        &out.application,
        &out.client_secret,
    )))
}

async fn reveal(req: HttpRequest, state: web::Data<ApiState>, path: AppPath) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    let secret = state
        .management
        .reveal_application_secret(&caller, &zone, &id)
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "client_secret": secret })))
}

async fn delete(req: HttpRequest, state: web::Data<ApiState>, path: AppPath) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    state
        .management
        .delete_application(&caller, &zone, &id)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Mounts the application routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/zones/{z}/applications", web::get().to(list))
        .route("/zones/{z}/applications", web::post().to(create))
        .route("/zones/{z}/applications/dcr", web::post().to(dcr))
        .route("/zones/{z}/applications/{id}", web::get().to(get))
        .route("/zones/{z}/applications/{id}", web::patch().to(patch))
        .route("/zones/{z}/applications/{id}", web::delete().to(delete))
        .route(
            "/zones/{z}/applications/{id}/rotate-secret",
            web::post().to(rotate),
        )
        .route(
            "/zones/{z}/applications/{id}/client-secret",
            web::get().to(reveal),
        );
}
