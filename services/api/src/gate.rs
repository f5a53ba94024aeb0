//! The `/v1` gate: authentication, the authorization table (`spec/api.md §2`), response
//! hardening headers, and the admin audit record of every mutation (`spec/api.md §7`).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};
use caracal_core::manage::admin_audit::{audit_unavailable, AuditEntry};
use caracal_core::manage::auth::{authorize, RequestShape};
use caracal_core::manage::{Actor, Caller};
use caracal_core::ErrorKind;
use caracal_http::body::JsonBody;
use caracal_http::{request_id_of, ApiError};

use crate::reply::CreatedId;
use crate::ApiState;

fn mutating(method: &str) -> bool {
    matches!(method, "POST" | "PUT" | "PATCH" | "DELETE")
}

fn harden<B>(res: &mut ServiceResponse<B>) {
    let headers = res.headers_mut();
    headers.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        HeaderName::from_static("cache-control"),
        HeaderValue::from_static("no-store"),
    );
}

fn rate_limited() -> caracal_core::Error {
    caracal_core::Error::new(ErrorKind::RateLimited, "rate_limited")
}

/// The client's address: the peer, or the first `X-Forwarded-For` hop behind a trusted proxy.
fn client_ip(req: &ServiceRequest, trust_proxy: bool) -> String {
    if trust_proxy {
        if let Some(first) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| v.parse::<std::net::IpAddr>().is_ok())
        {
            return first.to_owned();
        }
    }
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The middleware.
pub async fn admin_gate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<ApiState>>().cloned() else {
        return Err(actix_web::error::ErrorInternalServerError(
            "api state missing",
        ));
    };
    let method = req.method().as_str().to_owned();
    let path = req.path().to_owned();
    let request_id = request_id_of(req.request());

    let client_ip = client_ip(&req, state.config.trust_proxy);
    let minute = state.management.clock.now().unix_seconds().div_euclid(60);
    let authorized: Result<Actor, caracal_core::Error> = async {
        let limiter = &state.limiter;
        let per_min = state.config.v1_rate_limit_per_min;
        let fail_limit = state.config.auth_fail_limit_per_min;
        let header = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        // One round trip on every request: count the address and the presented credential
        // (its SHA-256 stands for the token id, one to one) and read the address's failures.
        // Past the failure limit an address is refused before its token is verified, so a
        // guessing client cannot make the server spend Argon2 time on it.
        let credential = caracal_core::digest::sha256_hex(header.unwrap_or("").as_bytes());
        let ip_key = format!("api:v1_rl:ip:{client_ip}");
        let actor_key = format!("api:v1_rl:actor:{}", &credential[..32]);
        let fail_key = format!("api:admin_auth_fail:{client_ip}");
        let (hits, peeks) = limiter
            .hit_and_peek(
                &[ip_key, actor_key],
                std::slice::from_ref(&fail_key),
                minute,
            )
            .await
            .map_err(caracal_core::Error::from)?;
        if hits.iter().any(|n| *n > per_min) || peeks.iter().any(|n| *n >= fail_limit) {
            return Err(rate_limited());
        }
        let actor = match state.management.authenticate(header).await {
            Ok(actor) => actor,
            Err(err) if err.kind == ErrorKind::Unauthenticated => {
                if limiter
                    .hit(&fail_key, minute)
                    .await
                    .map_err(caracal_core::Error::from)?
                    > fail_limit
                {
                    return Err(rate_limited());
                }
                return Err(err);
            }
            Err(err) => return Err(err),
        };
        let shape = RequestShape {
            method: &method,
            path: &path,
        };
        let reserved = match (mutating(&method), shape.path_zone()) {
            (true, Some(zone)) => state.management.zone_is_reserved(zone).await?,
            _ => false,
        };
        authorize(&actor, shape, reserved)?;
        Ok(actor)
    }
    .await;

    let actor = match authorized {
        Ok(actor) => actor,
        Err(err) => {
            let (http_req, _) = req.into_parts();
            let mut res = ServiceResponse::new(http_req, ApiError(err).error_response());
            if mutating(&method) {
                // Refused mutations are recorded too, best effort: a failure to audit a refusal
                // must not turn a 401 into a 500.
                let entry = AuditEntry {
                    request_id,
                    actor: None,
                    method,
                    path,
                    status: res.status().as_u16(),
                    body: None,
                    created_id: None,
                };
                if let Err(e) = state.management.record_admin_audit(entry).await {
                    tracing::warn!(error = %e, "could not record a refused admin request");
                }
            }
            harden(&mut res);
            return Ok(res);
        }
    };

    let via_operator = req
        .headers()
        .get("x-caracal-created-via")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "operator");
    req.extensions_mut().insert(Caller {
        actor: actor.clone(),
        request_id: request_id.clone(),
        via_operator,
    });

    let res = next.call(req).await?.map_into_boxed_body();
    let mut res = if mutating(&method) {
        let status = res.status().as_u16();
        let body = res
            .request()
            .extensions()
            .get::<JsonBody>()
            .map(|b| b.0.clone());
        let created_id = res
            .response()
            .extensions()
            .get::<CreatedId>()
            .map(|c| c.0.clone());
        let entry = AuditEntry {
            request_id,
            actor: Some(actor),
            method,
            path,
            status,
            body,
            created_id,
        };
        match state.management.record_admin_audit(entry).await {
            Ok(_) => res,
            Err(e) if status < 400 => {
                // The change is committed; the caller must learn that its evidence is missing.
                tracing::error!(error = %e, "admin audit write failed after a successful change");
                let (http_req, _) = res.into_parts();
                ServiceResponse::new(http_req, ApiError(audit_unavailable()).error_response())
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not record a failed admin request");
                res
            }
        }
    } else {
        res
    };
    harden(&mut res);
    Ok(res)
}
