//! `/v1/zones/{z}/grants` (`spec/api.md §3.9`) and `/v1/policy-templates` (§3.8).

use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::ids::{GrantId, ZoneId};
use caracal_core::manage::grants::{GrantFilter, NewGrant, TEMPLATES};
use serde_json::{json, Value};

use super::{page, Query};
use crate::reply::{caller, created, json_body_issues, Handled};
use crate::{views, ApiState};

async fn list(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: Query,
) -> Handled {
    let caller = caller(&req)?;
    let zone = ZoneId::parse(&path)?;
    let page = page(&query)?;
    let get = |k: &str| query.get(k).filter(|v| !v.is_empty()).cloned();
    let filter = GrantFilter {
        application_id: get("application_id"),
        user_id: get("user_id").or_else(|| get("subject_id")),
        resource_id: get("resource_id"),
        provider_id: get("provider_id"),
        status: get("status"),
        scopes: get("scopes")
            .map(|s| {
                s.split(',')
                    .map(|x| x.trim().to_owned())
                    .filter(|x| !x.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    };
    let rows = state
        .management
        .list_grants(&caller, &zone, &filter, &page)
        .await?;
    Ok(HttpResponse::Ok().json(views::envelope(
        &rows,
        &page,
        |r| (r.grant.attr.created_at, r.grant.id.to_string()),
        |r| {
            let mut out = views::grant(&r.grant);
            if let Some(map) = out.as_object_mut() {
                map.insert(
                    "provider_id".into(),
                    json!(r.provider.as_ref().map(|p| &p.id)),
                );
                map.insert(
                    "application_name".into(),
                    json!(r.application.as_ref().map(|a| &a.name)),
                );
                map.insert(
                    "resource_name".into(),
                    json!(r.resource.as_ref().map(|x| &x.name)),
                );
                map.insert(
                    "provider_name".into(),
                    json!(r.provider.as_ref().map(|p| &p.name)),
                );
                map.insert(
                    "provider_kind".into(),
                    json!(r.provider.as_ref().map(|p| &p.kind)),
                );
            }
            out
        },
    )))
}

async fn get(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = (ZoneId::parse(&path.0)?, GrantId::parse(&path.1)?);
    Ok(HttpResponse::Ok().json(views::grant(
        &state.management.get_grant(&caller, &zone, &id).await?,
    )))
}

async fn create(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Handled {
    let caller = caller(&req)?;
    let zone = ZoneId::parse(&path)?;
    let input: NewGrant = json_body_issues(&req, &state, payload).await?;
    let grant = state.management.create_grant(&caller, &zone, input).await?;
    Ok(created(grant.id.as_str(), views::grant(&grant)))
}

async fn revoke(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = (ZoneId::parse(&path.0)?, GrantId::parse(&path.1)?);
    state.management.revoke_grant(&caller, &zone, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn templates(req: HttpRequest) -> Handled {
    caller(&req)?;
    let list: Vec<Value> = TEMPLATES
        .iter()
        .map(|t| json!({ "id": t.id, "name": t.name, "description": t.description, "content": t.content }))
        .collect();
    Ok(HttpResponse::Ok().json(list))
}

/// Mounts the grant and template routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/policy-templates", web::get().to(templates))
        .route("/zones/{z}/grants", web::get().to(list))
        .route("/zones/{z}/grants", web::post().to(create))
        .route("/zones/{z}/grants/{id}", web::get().to(get))
        .route("/zones/{z}/grants/{id}", web::delete().to(revoke));
}
