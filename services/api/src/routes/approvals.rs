//! `/v1/zones/{z}/approvals` (`spec/api.md §3.14`): operator reads and decisions over the
//! holds the STS parks. Decisions need an approve-capability token (or the bootstrap token);
//! the gate enforces that before a handler runs.

use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::ids::ZoneId;
use caracal_core::manage::approvals::{ApprovalFilter, DecisionInput, Verdict};
use serde_json::json;

use super::{page, Query};
use crate::reply::{caller, json_value, Handled};
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
    let get = |k: &str| query.get(k).map(String::as_str);
    let filter = ApprovalFilter::parse(
        get("state"),
        get("tier"),
        get("principal"),
        get("since"),
        get("until"),
    )?;
    let rows = state
        .management
        .list_approvals(&caller, &zone, &filter, &page)
        .await?;
    Ok(HttpResponse::Ok().json(views::envelope(
        &rows,
        &page,
        |r| (r.hold.created_at, r.hold.id.clone()),
        views::approval,
    )))
}

async fn counts(req: HttpRequest, state: web::Data<ApiState>, path: web::Path<String>) -> Handled {
    let caller = caller(&req)?;
    let zone = ZoneId::parse(&path)?;
    let c = state.management.approval_counts(&caller, &zone).await?;
    Ok(HttpResponse::Ok().json(json!({
        "pending": c.pending,
        "approved": c.approved,
        "rejected": c.rejected,
        "expired": c.expired,
        "consumed": c.consumed,
    })))
}

async fn get(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
) -> Handled {
    let caller = caller(&req)?;
    let zone = ZoneId::parse(&path.0)?;
    let row = state
        .management
        .get_approval(&caller, &zone, &path.1)
        .await?;
    Ok(HttpResponse::Ok().json(views::approval(&row)))
}

async fn decide(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    verdict: Verdict,
) -> Handled {
    let caller = caller(&req)?;
    let zone = ZoneId::parse(&path.0)?;
    let body = json_value(&req, &state, payload).await?;
    // The SDK sends `{}` without a reason; a bare POST is accepted like everywhere on `/v1`.
    let input: DecisionInput = if body.is_null() {
        DecisionInput::default()
    } else {
        caracal_http::body::typed(body, "invalid_body")?
    };
    let hold = state
        .management
        .decide_approval(&caller, &zone, &path.1, verdict, input)
        .await?;
    Ok(HttpResponse::Ok().json(views::approval_decision(&hold, verdict)))
}

async fn approve(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Handled {
    decide(req, state, path, payload, Verdict::Approve).await
}

async fn reject(
    req: HttpRequest,
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Handled {
    decide(req, state, path, payload, Verdict::Reject).await
}

/// Mounts the approval routes (`counts` before `{id}`, which would otherwise take it).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/zones/{z}/approvals", web::get().to(list))
        .route("/zones/{z}/approvals/counts", web::get().to(counts))
        .route("/zones/{z}/approvals/{id}", web::get().to(get))
        .route("/zones/{z}/approvals/{id}/approve", web::post().to(approve))
        .route("/zones/{z}/approvals/{id}/reject", web::post().to(reject));
}
