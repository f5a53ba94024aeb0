//! `/v1/admin-tokens` (`spec/api.md §2`).

use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::manage::admin_tokens::NewAdminToken;
use caracal_core::model::{AdminToken, Capability, TokenScope};
use serde_json::{json, Value};

use super::{page, Query};
use crate::reply::{caller, created, json_body, Handled};
use crate::{views, ApiState};

fn scope(t: &AdminToken) -> &'static str {
    match t.scope {
        TokenScope::Global => "global",
        TokenScope::Zone => "zone",
    }
}

fn capability(t: &AdminToken) -> &'static str {
    match t.capability {
        Capability::Read => "read",
        Capability::Write => "write",
        Capability::Approve => "approve",
    }
}

fn row(t: &AdminToken) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "scope": scope(t),
        "capability": capability(t),
        "zone_id": t.zone_id,
        "created_by": t.created_by,
        "created_at": t.created_at,
        "last_used_at": t.last_used_at,
        "revoked_at": t.revoked_at,
    })
}

async fn list(req: HttpRequest, state: web::Data<ApiState>, query: Query) -> Handled {
    let caller = caller(&req)?;
    let page = page(&query)?;
    let rows = state.management.list_admin_tokens(&caller, &page).await?;
    Ok(HttpResponse::Ok().json(views::envelope(
        &rows,
        &page,
        |t| (t.created_at, t.id.to_string()),
        row,
    )))
}

async fn create(req: HttpRequest, state: web::Data<ApiState>, payload: web::Payload) -> Handled {
    let caller = caller(&req)?;
    let input: NewAdminToken =
        json_body(&req, &state, payload, "invalid_admin_token_request").await?;
    let minted = state.management.create_admin_token(&caller, input).await?;
    let t = &minted.token;
    Ok(created(
        t.id.as_str(),
        json!({
            "id": t.id,
            "name": t.name,
            "scope": scope(t),
            "capability": capability(t),
            "zone_id": t.zone_id,
            "created_by": t.created_by,
            "created_at": t.created_at,
            "token": minted.plaintext,
        }),
    ))
}

async fn revoke(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<String>) -> Handled {
    let caller = caller(&req)?;
    state.management.revoke_admin_token(&caller, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Mounts the admin-token routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin-tokens", web::get().to(list))
        .route("/admin-tokens", web::post().to(create))
        .route("/admin-tokens/{id}", web::delete().to(revoke));
}
