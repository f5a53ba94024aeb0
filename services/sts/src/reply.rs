//! The STS error envelope and body reading.

use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use caracal_core::Error;
use caracal_http::error::{error_body, status_of};
use futures_util::StreamExt;
use serde_json::Value;

/// Largest accepted body (`spec/sts.md §1`).
pub const BODY_LIMIT: usize = 64 * 1024;

/// `{"error","error_description"?,"requestId"?}`; server-side detail goes to the log only.
pub fn error(err: &Error, request_id: Option<&str>) -> HttpResponse {
    let (status, body) = error_parts(err, request_id);
    let mut res = HttpResponse::build(status);
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        res.insert_header((HeaderName::from_static("x-request-id"), id));
    }
    if err.code == "interaction_required" {
        res.insert_header((
            actix_web::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"interaction_required\""),
        ));
    }
    res.json(body)
}

/// The status and body [`error`] answers with (and logs the detail, as it does).
pub fn error_parts(err: &Error, request_id: Option<&str>) -> (StatusCode, Value) {
    if let Some(detail) = &err.detail {
        tracing::warn!(code = err.code, detail = %detail, "sts request failed");
    }
    let mut body = error_body(err);
    if let (Some(id), Value::Object(map)) = (request_id, &mut body) {
        map.insert("requestId".into(), Value::from(id));
    }
    (status_of(err.kind), body)
}

/// Reads the body up to [`BODY_LIMIT`]; `None` when it is larger (or the stream fails).
pub async fn read_body(mut payload: actix_web::web::Payload) -> Result<Vec<u8>, BodyFailure> {
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| BodyFailure::Unreadable)?;
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(BodyFailure::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// Over the limit.
    TooLarge,
    /// The stream broke.
    Unreadable,
}

/// A plain-text response (the route-level 401/404/405 upstream's mux writes).
pub fn plain(status: actix_web::http::StatusCode, text: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(format!("{text}\n"))
}
