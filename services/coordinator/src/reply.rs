//! The Coordinator's wire envelopes (`spec/coordinator-gateway.md` A1): use-case replies,
//! route denials, body-schema failures, idempotency-key failures and framework failures, and
//! the JSON body reader that produces the last kind.
//!
//! The `x-request-id` header is added to every response by the request-id middleware; bodies
//! that carry the id (`requestId`, or `request_id` for idempotency-key errors) take it from
//! the same place.

use actix_web::http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use caracal_core::coordinator::Reply;
use caracal_core::error::{Error, ErrorKind};
use caracal_http::error::status_of;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};

/// The description of every framework failure (upstream's unhandled-error body).
const FRAMEWORK_DESCRIPTION: &str = "The service failed to process the request";

/// `{"error":"internal_error","error_description":…,"requestId":…}` with `status`: malformed
/// JSON (400), a body over the limit (413), a body that is not JSON (415), and anything that
/// failed inside (500).
pub fn framework(status: StatusCode, request_id: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "error": "internal_error",
        "error_description": FRAMEWORK_DESCRIPTION,
        "requestId": request_id,
    }))
}

/// Whether an error is a failure of the service rather than a contract answer: a store,
/// limiter or key backend that failed. Those answer the framework envelope with status 500,
/// as upstream's unhandled errors do, and their detail stays in the log.
fn is_failure(err: &Error) -> bool {
    matches!(
        err.kind,
        ErrorKind::Internal | ErrorKind::Unavailable | ErrorKind::BadGateway
    ) && err.code != "audit_unavailable"
}

/// The response for a use case's error.
pub fn error(err: &Error, request_id: &str) -> HttpResponse {
    if is_failure(err) {
        tracing::error!(
            code = err.code,
            detail = err.detail.as_deref().unwrap_or(""),
            request_id,
            "coordinator request failed"
        );
        return framework(StatusCode::INTERNAL_SERVER_ERROR, request_id);
    }
    if let Some(detail) = &err.detail {
        tracing::info!(code = err.code, detail = %detail, request_id, "coordinator request refused");
    }
    let mut body = Map::new();
    body.insert("error".into(), Value::from(err.code));
    match err.code {
        "invalid_body" => {
            body.insert(
                "error_description".into(),
                Value::from("Request body failed validation"),
            );
            body.insert("requestId".into(), Value::from(request_id));
        }
        "idempotency_key_invalid" | "idempotency_key_multiple" => {
            if let Some(message) = &err.description {
                body.insert("message".into(), Value::from(message.as_str()));
            }
            body.insert("request_id".into(), Value::from(request_id));
        }
        _ => {
            if let Some(message) = &err.description {
                body.insert("message".into(), Value::from(message.as_str()));
            }
        }
    }
    if let Some(Value::Object(extra)) = &err.extra {
        for (k, v) in extra {
            body.insert(k.clone(), v.clone());
        }
    }
    HttpResponse::build(status_of(err.kind)).json(Value::Object(body))
}

/// The response for a use case's reply: its status and JSON body (empty for a `Null` body or
/// a 204), and `Idempotency-Replayed: true` on a replay.
pub fn reply(reply: &Reply) -> HttpResponse {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut res = HttpResponse::build(status);
    if reply.replayed {
        res.insert_header((
            HeaderName::from_static("idempotency-replayed"),
            HeaderValue::from_static("true"),
        ));
    }
    if status == StatusCode::NO_CONTENT || reply.body.is_null() {
        return res.finish();
    }
    res.json(&reply.body)
}

/// One outcome rendered: a reply, or the error's envelope.
pub fn outcome(result: &Result<Reply, Error>, request_id: &str) -> HttpResponse {
    match result {
        Ok(r) => reply(r),
        Err(e) => error(e, request_id),
    }
}

/// Why a body could not be had, as the framework status to answer with.
pub type BodyFailure = StatusCode;

/// Reads and parses a JSON body under `limit` bytes. An empty (or all-whitespace) body is
/// `None`, whatever its media type; a non-empty one must be `application/json` (415 else) and
/// well-formed JSON (400 else); a declared or actual length over the limit is 413.
pub async fn read_json(
    req: &actix_web::HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Option<Value>, BodyFailure> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| StatusCode::BAD_REQUEST)?;
        if body.len() + chunk.len() > limit {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        body.extend_from_slice(&chunk);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let json_media = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !json_media {
        return Err(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|_| StatusCode::BAD_REQUEST)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    async fn body_of(res: HttpResponse) -> (u16, Value) {
        let status = res.status().as_u16();
        let bytes = to_bytes(res.into_body()).await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[actix_web::test]
    async fn envelopes() {
        let denial = Error::new(ErrorKind::Forbidden, "missing_scope");
        assert_eq!(
            body_of(error(&denial, "r1")).await,
            (403, json!({"error": "missing_scope"}))
        );

        let described = Error::conflict("session_not_live", "The Session is not live")
            .with_extra(json!({"detail": "x"}));
        assert_eq!(
            body_of(error(&described, "r1")).await,
            (
                409,
                json!({"error": "session_not_live", "message": "The Session is not live", "detail": "x"})
            )
        );

        let invalid = caracal_core::coordinator::invalid_field("ttl_seconds", "too big");
        assert_eq!(
            body_of(error(&invalid, "r1")).await,
            (
                400,
                json!({
                    "error": "invalid_body",
                    "error_description": "Request body failed validation",
                    "requestId": "r1",
                    "details": {"issues": [{"path": ["ttl_seconds"], "message": "too big"}]}
                })
            )
        );

        let key = Error::invalid("idempotency_key_multiple", "Send exactly one");
        assert_eq!(
            body_of(error(&key, "r1")).await,
            (
                400,
                json!({"error": "idempotency_key_multiple", "message": "Send exactly one", "request_id": "r1"})
            )
        );

        let store: Error =
            caracal_core::StoreError::Unavailable("pg down at 10.0.0.5".into()).into();
        assert_eq!(
            body_of(error(&store, "r1")).await,
            (
                500,
                json!({"error": "internal_error", "error_description": FRAMEWORK_DESCRIPTION, "requestId": "r1"})
            )
        );
    }

    #[actix_web::test]
    async fn replies() {
        let res = reply(&Reply::no_content());
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert!(to_bytes(res.into_body()).await.expect("body").is_empty());
        let replayed = Reply {
            status: 201,
            body: json!({"id": "s1"}),
            replayed: true,
        };
        let res = reply(&replayed);
        assert_eq!(
            res.headers().get("idempotency-replayed").expect("header"),
            "true"
        );
        assert_eq!(body_of(res).await, (201, json!({"id": "s1"})));
    }
}
