//! Internal routes: policy simulation and load status for the API (`spec/sts.md §11`, signed
//! with the Gateway/API HMAC envelope), and signing-key rotation (`§5`, `STS_ADMIN_TOKEN`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::digest::constant_time_eq;
use caracal_core::error::{Error, ErrorKind};
use caracal_core::ids::ZoneId;
use caracal_core::policy::{self, PolicyModule, SimulationError};
use caracal_core::sts::form::malformed;
use caracal_core::sts::gateway_sig::SignedHeaders;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::reply::{error, plain, read_body};
use crate::StsState;

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn signed(req: &HttpRequest) -> SignedHeaders<'_> {
    SignedHeaders {
        timestamp: header(req, "x-caracal-gateway-timestamp"),
        nonce: header(req, "x-caracal-gateway-request"),
        signature: header(req, "x-caracal-gateway-signature"),
    }
}

async fn authentic(state: &StsState, req: &HttpRequest, body: &[u8]) -> bool {
    let now = state.sts.clock().now().unix_seconds();
    state
        .sts
        .gateway_verifier()
        .verify(&signed(req), req.method().as_str(), req.path(), body, now)
        .await
}

fn denied(description: &str) -> Error {
    Error::new(ErrorKind::Unauthenticated, "access_denied").describe(description)
}

#[derive(Deserialize)]
struct Module {
    #[serde(default)]
    id: String,
    content: String,
}

#[derive(Deserialize)]
struct SimulateBody {
    #[serde(default)]
    policy_set_id: Value,
    #[serde(default)]
    version_id: Value,
    #[serde(default)]
    manifest_sha256: Value,
    #[serde(default)]
    policies: Vec<Module>,
    #[serde(default)]
    input: Value,
}

pub async fn simulate(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<StsState>,
) -> HttpResponse {
    let Ok(body) = read_body(payload).await else {
        return error(&malformed("malformed request body"), None);
    };
    if !authentic(&state, &req, &body).await {
        return error(&denied("invalid simulation request signature"), None);
    }
    let parsed: SimulateBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(_) => return error(&malformed("malformed json body"), None),
    };
    if parsed.policies.is_empty() {
        return error(&malformed("policy bundle is empty"), None);
    }
    let modules: Vec<PolicyModule> = parsed
        .policies
        .into_iter()
        .map(|m| PolicyModule {
            id: m.id,
            content: m.content,
        })
        .collect();
    match policy::simulate(&modules, &parsed.input) {
        Ok(decision) => HttpResponse::Ok().json(json!({
            "policy_set_id": parsed.policy_set_id,
            "version_id": parsed.version_id,
            "manifest_sha256": parsed.manifest_sha256,
            "result": decision.to_json(),
        })),
        Err(SimulationError::MalformedInput(_)) => error(&malformed("malformed json body"), None),
        Err(SimulationError::Failed(text)) => error(
            &Error::new(ErrorKind::Unprocessable, "policy_eval_failed").describe(text),
            None,
        ),
    }
}

pub async fn status(
    req: HttpRequest,
    zone: web::Path<String>,
    state: web::Data<StsState>,
) -> HttpResponse {
    if !authentic(&state, &req, b"").await {
        return error(&denied("invalid policy status request signature"), None);
    }
    let Ok(zone) = ZoneId::parse(zone.trim()) else {
        return HttpResponse::Ok().json(json!({"zone_id": zone.as_str(), "loaded": false}));
    };
    HttpResponse::Ok().json(state.sts.policies.status(&zone).to_json())
}

pub async fn rotate(
    req: HttpRequest,
    zone: web::Path<String>,
    state: web::Data<StsState>,
) -> HttpResponse {
    let Some(token) = state.config.admin_token.as_deref() else {
        return plain(StatusCode::NOT_FOUND, "404 page not found");
    };
    let given = header(&req, "authorization").unwrap_or("");
    if !constant_time_eq(given.as_bytes(), format!("Bearer {token}").as_bytes()) {
        let mut res = plain(StatusCode::UNAUTHORIZED, "unauthorized");
        res.headers_mut().insert(
            actix_web::http::header::WWW_AUTHENTICATE,
            actix_web::http::header::HeaderValue::from_static("Bearer realm=\"caracal-sts\""),
        );
        return res;
    }
    let failed = || {
        error(
            &Error::new(ErrorKind::Internal, "internal_error")
                .describe("signing key rotation failed"),
            None,
        )
    };
    let Ok(zone) = ZoneId::parse(zone.trim()) else {
        return failed();
    };
    match state.sts.keys.rotate(&zone).await {
        Ok(kid) => {
            HttpResponse::Ok().json(json!({"rotated": true, "zone_id": zone.as_str(), "kid": kid}))
        }
        Err(e) => {
            tracing::error!(zone = %zone, error = %e, "signing key rotation failed");
            failed()
        }
    }
}
