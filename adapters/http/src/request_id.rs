//! Request ids: the caller's `x-request-id` when well formed, else a fresh UUIDv7; echoed on
//! every response and stamped on audit and outbox rows.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest};

/// The request's id, stored in request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Whether a caller-supplied id may be reused: `^[A-Za-z0-9_.\-:]{1,128}$`.
pub fn acceptable(id: &str) -> bool {
    caracal_core::ids::is_path_id(id)
}

/// The id of a request (empty when the middleware did not run).
pub fn request_id_of(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default()
}

/// Middleware: assigns the id and echoes it.
pub async fn assign(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut res = next.call(req).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), value);
    }
    Ok(res)
}
