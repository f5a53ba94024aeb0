//! `/v1/zones/{z}/subject-issuers` (`spec/api.md §3.10`).

use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::ids::{SubjectIssuerId, ZoneId};
use caracal_core::manage::subject_issuers::{NewSubjectIssuer, SubjectIssuerPatch};

use super::{page, Query};
use crate::reply::{caller, created, json_body, Handled};
use crate::{views, ApiState};

type ZonePath = web::Path<String>;
type ItemPath = web::Path<(String, String)>;

/// Body shape errors are `400 invalid_subject_issuer`, as upstream answers them.
const INVALID: &str = "invalid_subject_issuer";

fn ids(path: &(String, String)) -> Result<(ZoneId, SubjectIssuerId), caracal_core::Error> {
    Ok((ZoneId::parse(&path.0)?, SubjectIssuerId::parse(&path.1)?))
}

async fn list(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ZonePath,
    query: Query,
) -> Handled {
    let caller = caller(&req)?;
    let zone = ZoneId::parse(&path)?;
    let page = page(&query)?;
    let rows = state
        .management
        .list_subject_issuers(&caller, &zone, &page)
        .await?;
    Ok(HttpResponse::Ok().json(views::envelope(
        &rows,
        &page,
        |i| (i.attr.created_at, i.id.to_string()),
        views::subject_issuer,
    )))
}

async fn get(req: HttpRequest, state: web::Data<ApiState>, path: ItemPath) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    Ok(HttpResponse::Ok().json(views::subject_issuer(
        &state
            .management
            .get_subject_issuer(&caller, &zone, &id)
            .await?,
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
    let input: NewSubjectIssuer = json_body(&req, &state, payload, INVALID).await?;
    let issuer = state
        .management
        .create_subject_issuer(&caller, &zone, input)
        .await?;
    Ok(created(issuer.id.as_str(), views::subject_issuer(&issuer)))
}

async fn patch(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ItemPath,
    payload: web::Payload,
) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    let input: SubjectIssuerPatch = json_body(&req, &state, payload, INVALID).await?;
    Ok(HttpResponse::Ok().json(views::subject_issuer(
        &state
            .management
            .patch_subject_issuer(&caller, &zone, &id, input)
            .await?,
    )))
}

async fn delete(req: HttpRequest, state: web::Data<ApiState>, path: ItemPath) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    state
        .management
        .delete_subject_issuer(&caller, &zone, &id)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Mounts the subject issuer routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/zones/{z}/subject-issuers", web::get().to(list))
        .route("/zones/{z}/subject-issuers", web::post().to(create))
        .route("/zones/{z}/subject-issuers/{id}", web::get().to(get))
        .route("/zones/{z}/subject-issuers/{id}", web::patch().to(patch))
        .route("/zones/{z}/subject-issuers/{id}", web::delete().to(delete));
}
