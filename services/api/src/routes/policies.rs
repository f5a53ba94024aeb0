//! `/v1/policies/validate` and `/v1/zones/{z}/policies` (`spec/api.md §3.6`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::ids::{PolicyId, ZoneId};
use caracal_core::manage::policies::NewPolicy;
use caracal_core::policy_document::{self, SCHEMA_VERSION};
use serde::Deserialize;
use serde_json::json;

use super::{page, Query};
use crate::reply::{caller, created, json_body_issues, Handled};
use crate::{views, ApiState};

type ZonePath = web::Path<String>;
type ItemPath = web::Path<(String, String)>;

#[derive(Deserialize)]
struct ContentBody {
    content: String,
}

fn ids(path: &(String, String)) -> Result<(ZoneId, PolicyId), caracal_core::Error> {
    Ok((ZoneId::parse(&path.0)?, PolicyId::parse(&path.1)?))
}

async fn validate(req: HttpRequest, state: web::Data<ApiState>, payload: web::Payload) -> Handled {
    caller(&req)?;
    let body: ContentBody = json_body_issues(&req, &state, payload).await?;
    Ok(match policy_document::parse(&body.content) {
        Ok(doc) => HttpResponse::Ok().json(json!({
            "valid": true,
            "schema_version": SCHEMA_VERSION,
            "input_schema_version": SCHEMA_VERSION,
            "output_contract": {
                "package": "caracal.authz",
                "rule": "result",
                "decision": ["allow", "deny"],
                "evaluation_status": ["complete"],
            },
            "preview": policy_document::preview(&doc),
        })),
        Err(err) => HttpResponse::build(StatusCode::UNPROCESSABLE_ENTITY).json(json!({
            "valid": false,
            "error": "invalid_rego",
            "error_description": err.code,
        })),
    })
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
        .list_policies(&caller, &zone, &page)
        .await?;
    Ok(HttpResponse::Ok().json(views::envelope(
        &rows,
        &page,
        |p| (p.attr.created_at, p.id.to_string()),
        views::policy,
    )))
}

async fn get(req: HttpRequest, state: web::Data<ApiState>, path: ItemPath) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    let (policy, versions) = state.management.get_policy(&caller, &zone, &id).await?;
    let mut body = views::policy(&policy);
    if let Some(map) = body.as_object_mut() {
        map.insert(
            "versions".into(),
            versions.iter().map(views::policy_version).collect(),
        );
    }
    Ok(HttpResponse::Ok().json(body))
}

async fn create(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ZonePath,
    payload: web::Payload,
) -> Handled {
    let caller = caller(&req)?;
    let zone = ZoneId::parse(&path)?;
    let input: NewPolicy = json_body_issues(&req, &state, payload).await?;
    let out = state
        .management
        .create_policy(&caller, &zone, input)
        .await?;
    Ok(created(
        out.policy.id.as_str(),
        json!({
            "id": out.policy.id,
            "version_id": out.version.id,
            "zone_id": out.policy.zone_id,
            "name": out.policy.name,
            "description": out.policy.description,
            "version": views::policy_version_summary(&out.version),
        }),
    ))
}

async fn add_version(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ItemPath,
    payload: web::Payload,
) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    let body: ContentBody = json_body_issues(&req, &state, payload).await?;
    let version = state
        .management
        .add_policy_version(&caller, &zone, &id, body.content)
        .await?;
    let mut out = views::policy_version_summary(&version);
    if let Some(map) = out.as_object_mut() {
        map.insert("version_id".into(), json!(version.id));
    }
    Ok(created(version.id.as_str(), out))
}

async fn delete(req: HttpRequest, state: web::Data<ApiState>, path: ItemPath) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    state.management.delete_policy(&caller, &zone, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Mounts the policy routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/policies/validate", web::post().to(validate))
        .route("/zones/{z}/policies", web::get().to(list))
        .route("/zones/{z}/policies", web::post().to(create))
        .route("/zones/{z}/policies/{id}", web::get().to(get))
        .route("/zones/{z}/policies/{id}", web::delete().to(delete))
        .route(
            "/zones/{z}/policies/{id}/versions",
            web::post().to(add_version),
        );
}
