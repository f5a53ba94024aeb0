//! `POST /v1/verify` (`spec/coordinator-gateway.md` A10): mandate verification for callers
//! without an SDK. Public, rate limited per IP, with its own `{"valid":…}` envelope.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::coordinator::auth::{verify_for_caller, VerifyRequest};
use caracal_http::request_id_of;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::gate::{client_ip, over_limit, verify_rate_limited};
use crate::reply;
use crate::CoordinatorState;

/// The strict body: unknown members, empty strings and wrong types are `invalid_request`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    authorization: Option<String>,
    token: Option<String>,
    zone_id: String,
    required_scope: Option<String>,
    require_session: Option<bool>,
    require_delegation: Option<bool>,
}

fn refuse(status: StatusCode, error: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({"valid": false, "error": error}))
}

fn parse(body: Option<Value>) -> Option<Body> {
    let body: Body = serde_json::from_value(body.unwrap_or_else(|| json!({}))).ok()?;
    let empty = |v: &Option<String>| v.as_deref().is_some_and(str::is_empty);
    if body.zone_id.is_empty()
        || empty(&body.authorization)
        || empty(&body.token)
        || empty(&body.required_scope)
    {
        return None;
    }
    Some(body)
}

pub async fn verify(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<CoordinatorState>,
) -> HttpResponse {
    let request_id = request_id_of(&req);
    let body = match reply::read_json(&req, payload, state.config.body_limit).await {
        Ok(body) => body,
        Err(status) => return reply::framework(status, &request_id),
    };
    let key = format!(
        "coordinator:verify_rl:{}",
        client_ip(&req, state.config.trust_proxy)
    );
    match over_limit(&state, &key, state.config.verify_limit_per_min).await {
        Ok(false) => {}
        Ok(true) => return verify_rate_limited(),
        Err(e) => return reply::error(&e, &request_id),
    }
    let Some(body) = parse(body) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request");
    };
    let raw = match (&body.token, &body.authorization) {
        (Some(token), _) => token.trim(),
        (None, Some(header)) => header
            .strip_prefix("Bearer ")
            .map_or(header.as_str(), str::trim),
        (None, None) => "",
    };
    if raw.is_empty() {
        return refuse(StatusCode::BAD_REQUEST, "missing_token");
    }
    let request = VerifyRequest {
        zone_id: &body.zone_id,
        required_scope: body.required_scope.as_deref(),
        require_session: body.require_session.unwrap_or(false),
        require_delegation: body.require_delegation.unwrap_or(false),
    };
    let now = state.clock.now().unix_seconds();
    match verify_for_caller(
        raw,
        &request,
        state.keys.as_ref(),
        state.es256.as_ref(),
        &state.config.issuer,
        now,
    )
    .await
    {
        Ok(claims) => HttpResponse::Ok().json(json!({"valid": true, "claims": claims})),
        Err(e) => {
            tracing::info!(
                detail = e.detail.as_deref().unwrap_or(""),
                request_id,
                "token verification failed"
            );
            refuse(StatusCode::UNAUTHORIZED, "token_invalid")
        }
    }
}
