//! What a route handler can fail with: a domain error, or a body-level failure answered in the
//! framework envelope.

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError};
use caracal_core::manage::Caller;
use caracal_core::Error;
use caracal_http::body::BodyError;
use caracal_http::ApiError;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ApiState;

/// A handler failure.
#[derive(Debug)]
pub enum Reply {
    /// A use-case failure.
    Domain(ApiError),
    /// Malformed or oversized body.
    Body(StatusCode, &'static str, String, String),
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Domain(e) => e.fmt(f),
            Reply::Body(_, code, _, _) => f.write_str(code),
        }
    }
}

impl From<Error> for Reply {
    fn from(err: Error) -> Self {
        Reply::Domain(ApiError(err))
    }
}

impl ResponseError for Reply {
    fn status_code(&self) -> StatusCode {
        match self {
            Reply::Domain(e) => e.status_code(),
            Reply::Body(status, ..) => *status,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            Reply::Domain(e) => e.error_response(),
            Reply::Body(status, code, description, request_id) => HttpResponse::build(*status)
                .json(serde_json::json!({
                    "error": code,
                    "error_description": description,
                    "requestId": request_id,
                })),
        }
    }
}

/// Handler result.
pub type Handled = Result<HttpResponse, Reply>;

/// The authenticated caller the gate stored.
pub fn caller(req: &HttpRequest) -> Result<Caller, Reply> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Error::internal("admin gate did not run").into())
}

/// Reads the body under the configured limit and parses it as JSON (`null` when empty).
pub async fn json_value(
    req: &HttpRequest,
    state: &ApiState,
    mut payload: actix_web::web::Payload,
) -> Result<Value, Reply> {
    let limit = state.config.body_limit;
    let request_id = caracal_http::request_id_of(req);
    let too_large = || {
        Reply::Body(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body exceeds the limit".into(),
            request_id.clone(),
        )
    };
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            Reply::Body(
                StatusCode::BAD_REQUEST,
                "invalid_body_stream",
                e.to_string(),
                request_id.clone(),
            )
        })?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    caracal_http::body::parse_value(req, &bytes, limit).map_err(|e| match e {
        BodyError::TooLarge => too_large(),
        BodyError::Malformed(detail) => Reply::Body(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            detail,
            request_id.clone(),
        ),
    })
}

/// Reads and types a body; shape errors are `400 <code>`.
pub async fn json_body<T: DeserializeOwned>(
    req: &HttpRequest,
    state: &ApiState,
    payload: actix_web::web::Payload,
    code: &'static str,
) -> Result<T, Reply> {
    let value = json_value(req, state, payload).await?;
    Ok(caracal_http::body::typed(value, code)?)
}

/// Reads and types a body; shape errors are `400 invalid_body` with `details.issues`.
pub async fn json_body_issues<T: DeserializeOwned>(
    req: &HttpRequest,
    state: &ApiState,
    payload: actix_web::web::Payload,
) -> Result<T, Reply> {
    let value = json_value(req, state, payload).await?;
    Ok(caracal_http::body::typed_issues(value)?)
}

/// The id of a created row, for the audit record's `entity_id`.
#[derive(Debug, Clone)]
pub struct CreatedId(pub String);

/// `201` with a body, recording the created id for the audit.
pub fn created(id: &str, body: Value) -> HttpResponse {
    let mut res = HttpResponse::Created().json(body);
    res.extensions_mut().insert(CreatedId(id.to_owned()));
    res
}
