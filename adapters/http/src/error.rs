//! The one mapping from domain errors to HTTP status and the Caracal error envelope.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use caracal_core::{Error, ErrorKind};
use serde_json::{json, Map, Value};

/// A domain error on its way to the wire.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        Self(err)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Status for each failure class.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The route error body: `{"error": code, "error_description"?, …extra}`. An error's
/// server-side `detail` goes to the log only.
pub fn error_body(err: &Error) -> Value {
    let mut body = Map::new();
    body.insert("error".into(), json!(err.code));
    if let Some(description) = &err.description {
        body.insert("error_description".into(), json!(description));
    }
    if let Some(Value::Object(extra)) = &err.extra {
        for (k, v) in extra {
            body.insert(k.clone(), v.clone());
        }
    }
    Value::Object(body)
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        status_of(self.0.kind)
    }

    fn error_response(&self) -> HttpResponse {
        if let Some(detail) = &self.0.detail {
            tracing::error!(code = self.0.code, detail = %detail, "request failed");
        }
        HttpResponse::build(self.status_code()).json(error_body(&self.0))
    }
}

/// The framework envelope (`{"error","error_description","requestId"}`) used for body-level
/// failures before a route runs: malformed JSON, oversized bodies.
pub fn framework_error(
    req: &HttpRequest,
    status: StatusCode,
    code: &str,
    description: &str,
) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "error": code,
        "error_description": description,
        "requestId": crate::request_id_of(req),
    }))
}

/// Unknown routes answer the framework's 404 shape.
pub async fn not_found_route(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(json!({
        "message": format!("Route {}:{} not found", req.method(), req.path()),
        "error": "Not Found",
        "statusCode": 404,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_side_detail_never_reaches_the_wire() {
        let body = error_body(&Error::internal(
            "connection refused to 10.0.0.5 as user caracal",
        ));
        assert_eq!(body, json!({ "error": "internal_error" }));
        let store = error_body(
            &caracal_core::StoreError::Unavailable("pg: password auth failed".into()).into(),
        );
        assert_eq!(store, json!({ "error": "store_unavailable" }));
        let audit = caracal_core::manage::admin_audit::audit_unavailable();
        assert_eq!(status_of(audit.kind), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            error_body(&audit)["error_description"].is_string(),
            "contractual descriptions stay public"
        );
    }
}
