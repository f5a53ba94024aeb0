//! `/v1/zones/{z}/policy-sets` (`spec/api.md §3.7`).

use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::ids::{PolicySetId, PolicySetVersionId, ZoneId};
use caracal_core::manage::policy_sets::{ManifestEntry, NewPolicySet};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{page, Query};
use crate::reply::{caller, created, json_body_issues, Handled};
use crate::{views, ApiState};

type ZonePath = web::Path<String>;
type ItemPath = web::Path<(String, String)>;

#[derive(Deserialize)]
struct VersionBody {
    manifest: Vec<ManifestEntry>,
}

#[derive(Deserialize)]
struct ActivateBody {
    version_id: String,
}

#[derive(Deserialize)]
struct SimulateBody {
    version_id: String,
    input: Option<serde_json::Map<String, Value>>,
}

fn ids(path: &(String, String)) -> Result<(ZoneId, PolicySetId), caracal_core::Error> {
    Ok((ZoneId::parse(&path.0)?, PolicySetId::parse(&path.1)?))
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
        .list_policy_sets(&caller, &zone, &page)
        .await?;
    Ok(HttpResponse::Ok().json(views::envelope(
        &rows,
        &page,
        |s| (s.attr.created_at, s.id.to_string()),
        |s| views::policy_set(s, true),
    )))
}

async fn get(req: HttpRequest, state: web::Data<ApiState>, path: ItemPath) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    Ok(HttpResponse::Ok().json(views::policy_set(
        &state.management.get_policy_set(&caller, &zone, &id).await?,
        true,
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
    let input: NewPolicySet = json_body_issues(&req, &state, payload).await?;
    let set = state
        .management
        .create_policy_set(&caller, &zone, input)
        .await?;
    Ok(created(set.id.as_str(), views::policy_set(&set, false)))
}

async fn add_version(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ItemPath,
    payload: web::Payload,
) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    let body: VersionBody = json_body_issues(&req, &state, payload).await?;
    let v = state
        .management
        .add_policy_set_version(&caller, &zone, &id, body.manifest)
        .await?;
    Ok(created(
        v.id.as_str(),
        json!({
            "version_id": v.id,
            "id": v.id,
            "policy_set_id": v.policy_set_id,
            "version": v.version,
            "manifest_sha256": v.manifest_sha256,
            "schema_version": v.schema_version,
            "created_at": v.created_at,
        }),
    ))
}

async fn list_versions(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ItemPath,
    query: Query,
) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    let page = page(&query)?;
    let rows = state
        .management
        .list_policy_set_versions(&caller, &zone, &id, &page)
        .await?;
    Ok(HttpResponse::Ok().json(views::envelope(
        &rows,
        &page,
        |v| (v.created_at, v.id.to_string()),
        views::policy_set_version,
    )))
}

async fn get_version(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<(String, String, String)>,
) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&(path.0.clone(), path.1.clone()))?;
    let version = PolicySetVersionId::parse(&path.2)?;
    let v = state
        .management
        .get_policy_set_version(&caller, &zone, &id, &version)
        .await?;
    Ok(HttpResponse::Ok().json(views::policy_set_version_detail(&v)))
}

async fn activate(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ItemPath,
    payload: web::Payload,
) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    let body: ActivateBody = json_body_issues(&req, &state, payload).await?;
    let done = state
        .management
        .activate_policy_set(&caller, &zone, &id, &body.version_id)
        .await?;
    Ok(HttpResponse::Accepted().json(json!({
        "activated": true,
        "version_id": done.version_id,
        "outbox_id": done.outbox_id,
        "status_url": format!(
            "/v1/zones/{zone}/policy-sets/{id}/activation-status?version_id={}&outbox_id={}",
            done.version_id, done.outbox_id
        ),
    })))
}

async fn activation_status(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ItemPath,
    query: Query,
) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    let status = state
        .management
        .activation_status(
            &caller,
            &zone,
            &id,
            query.get("version_id").map(String::as_str),
            query.get("outbox_id").map(String::as_str),
        )
        .await?;
    let outbox = status.outbox.as_ref().map(|m| {
        json!({
            "id": m.id,
            "state": status.outbox_state,
            "attempts": m.attempts,
            "last_error": m.last_error,
            "dispatched_at": m.dispatched_at,
        })
    });
    let outbox = outbox.unwrap_or_else(|| json!({ "id": null, "state": status.outbox_state, "attempts": 0, "last_error": null, "dispatched_at": null }));
    Ok(HttpResponse::Ok().json(json!({
        "zone_id": zone,
        "policy_set_id": id,
        "version_id": status.version.id,
        "active": status.active,
        "active_version_id": status.set.active_version_id,
        "manifest_sha256": status.version.manifest_sha256,
        "propagation_status": status.propagation_status,
        "outbox": outbox,
        "sts": { "state": "not_configured" },
    })))
}

async fn simulate(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: ItemPath,
    payload: web::Payload,
) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    let body: SimulateBody = json_body_issues(&req, &state, payload).await?;
    let out = state
        .management
        .simulate_policy_set(
            &caller,
            &zone,
            &id,
            &body.version_id,
            body.input.map(Value::Object),
        )
        .await?;
    Ok(HttpResponse::Ok().json(out))
}

async fn delete(req: HttpRequest, state: web::Data<ApiState>, path: ItemPath) -> Handled {
    let caller = caller(&req)?;
    let (zone, id) = ids(&path)?;
    state
        .management
        .delete_policy_set(&caller, &zone, &id)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Mounts the policy-set routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/zones/{z}/policy-sets", web::get().to(list))
        .route("/zones/{z}/policy-sets", web::post().to(create))
        .route("/zones/{z}/policy-sets/{id}", web::get().to(get))
        .route("/zones/{z}/policy-sets/{id}", web::delete().to(delete))
        .route(
            "/zones/{z}/policy-sets/{id}/versions",
            web::post().to(add_version),
        )
        .route(
            "/zones/{z}/policy-sets/{id}/versions",
            web::get().to(list_versions),
        )
        .route(
            "/zones/{z}/policy-sets/{id}/versions/{v}",
            web::get().to(get_version),
        )
        .route(
            "/zones/{z}/policy-sets/{id}/activate",
            web::post().to(activate),
        )
        .route(
            "/zones/{z}/policy-sets/{id}/activation-status",
            web::get().to(activation_status),
        )
        .route(
            "/zones/{z}/policy-sets/{id}/simulate",
            web::post().to(simulate),
        );
}
