//! `POST /oauth/2/token` (`spec/sts.md §3`). The transport checks run here in the contract's
//! order (query string, media type, size); the rest is `Sts::token`.

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::error::{Error, ErrorKind};
use caracal_core::gateway::exchange::TOKEN_PATH;
use caracal_core::sts::exchange::TokenCall;
use caracal_core::sts::form::{is_form_media_type, malformed};
use caracal_core::sts::gateway_sig::SignedHeaders;

use crate::reply::{error, error_parts, read_body, BodyFailure, BODY_LIMIT};
use crate::StsState;

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The inbound `X-Request-Id` when acceptable, or a fresh UUIDv7.
fn accepted_request_id(inbound: Option<&str>) -> String {
    inbound
        .map(str::trim)
        .filter(|v| caracal_http::request_id::acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

pub async fn token(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<StsState>,
) -> HttpResponse {
    let id = accepted_request_id(header(&req, "x-request-id"));
    let fail = |e: Error| error(&e, Some(&id));
    if !req.query_string().is_empty() {
        return fail(malformed("query parameters are not allowed"));
    }
    if !is_form_media_type(header(&req, "content-type")) {
        return fail(
            Error::new(ErrorKind::UnsupportedMediaType, "invalid_token")
                .describe("application/x-www-form-urlencoded content type is required"),
        );
    }
    let body = match read_body(payload).await {
        Ok(body) => body,
        Err(BodyFailure::TooLarge) => {
            return fail(
                Error::new(ErrorKind::PayloadTooLarge, "payload_too_large")
                    .describe("request body too large"),
            )
        }
        Err(BodyFailure::Unreadable) => return fail(malformed("malformed request body")),
    };
    let call = TokenCall {
        body: &body,
        gateway: SignedHeaders {
            timestamp: header(&req, "x-caracal-gateway-timestamp"),
            nonce: header(&req, "x-caracal-gateway-request"),
            signature: header(&req, "x-caracal-gateway-signature"),
        },
        path: req.path(),
        request_id: &id,
    };
    answer(&state, call, &id).await
}

/// The token endpoint for a Gateway in the same process (`caracal serve all`, `caracal dev`):
/// its signed exchange, answered (status and body) exactly as `POST /oauth/2/token` would
/// answer it, without the loopback HTTP hop. The route's transport checks hold as they would:
/// the Gateway's own request has no query string and the form media type, and its body is
/// held to the same limit.
pub async fn in_process(
    state: &StsState,
    body: &[u8],
    envelope: SignedHeaders<'_>,
    request_id: &str,
) -> (u16, Vec<u8>) {
    let id = accepted_request_id(Some(request_id));
    let outcome = if body.len() > BODY_LIMIT {
        Err(Error::new(ErrorKind::PayloadTooLarge, "payload_too_large")
            .describe("request body too large"))
    } else {
        let call = TokenCall {
            body,
            gateway: envelope,
            path: TOKEN_PATH,
            request_id: &id,
        };
        state.sts.token(call).await
    };
    let (status, answer) = match outcome {
        Ok(minted) => (StatusCode::OK, minted.to_json()),
        Err(e) => error_parts(&e, Some(&id)),
    };
    // As the response counter would have seen it.
    state.counters.observe(status.as_u16());
    (
        status.as_u16(),
        serde_json::to_vec(&answer).unwrap_or_default(),
    )
}

/// The endpoint once its transport checks passed: the use case and its rendering.
async fn answer(state: &StsState, call: TokenCall<'_>, id: &str) -> HttpResponse {
    let fail = |e: Error| error(&e, Some(id));
    match state.sts.token(call).await {
        Ok(minted) => {
            let mut res = HttpResponse::Ok();
            if let Ok(v) = HeaderValue::from_str(id) {
                res.insert_header((HeaderName::from_static("x-request-id"), v));
            }
            res.insert_header(("cache-control", "no-store"))
                .insert_header(("pragma", "no-cache"))
                .json(minted.to_json())
        }
        Err(e) => fail(e),
    }
}
