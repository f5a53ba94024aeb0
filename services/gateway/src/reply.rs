//! Responses the Gateway writes itself: the B4 error body, plain text, JSON, and the request id
//! every response carries.

use bytes::Bytes;
use caracal_core::gateway::Denial;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use serde_json::{json, Value};

/// The error type of response bodies (a relayed upstream body can fail mid-way).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body: fixed bytes or a relayed stream.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// A response the Gateway wrote.
pub type Reply = Response<Body>;

/// Whether a caller-supplied `X-Request-Id` is adopted: 1..=128 visible ASCII characters
/// (0x21–0x7E), as upstream's Gateway accepts.
pub fn acceptable_request_id(id: &[u8]) -> bool {
    (1..=128).contains(&id.len()) && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// The request's id: the caller's when acceptable, else a fresh UUIDv4.
pub fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .map(HeaderValue::as_bytes)
        .filter(|id| acceptable_request_id(id))
        .and_then(|id| std::str::from_utf8(id).ok())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// A body of fixed bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn status_of(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY)
}

/// A JSON response.
pub fn json(status: u16, value: &Value) -> Reply {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status_of(status);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The B4 error body for a refusal.
pub fn denial(denial: &Denial, request_id: &str) -> Reply {
    json(
        denial.status,
        &json!({
            "error": denial.error,
            "error_description": denial.description,
            "requestId": request_id,
        }),
    )
}

/// A plain-text response.
pub fn plain(status: u16, text: &'static str) -> Reply {
    let mut response = Response::new(full(text));
    *response.status_mut() = status_of(status);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A response with no body.
pub fn status_only(status: u16) -> Reply {
    let mut response = Response::new(empty());
    *response.status_mut() = status_of(status);
    response
}

/// Stamps `X-Request-Id` on a response.
pub fn with_request_id(mut response: Reply, request_id: &str) -> Reply {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(acceptable_request_id(b"abc-123"));
        assert!(acceptable_request_id(b"!~"));
        assert!(!acceptable_request_id(b""));
        assert!(!acceptable_request_id(b"has space"));
        assert!(!acceptable_request_id(&[b'a'; 129]));
        assert!(acceptable_request_id(&[b'a'; 128]));
        let mut headers = http::HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("caller-id"));
        assert_eq!(request_id(&headers), "caller-id");
        headers.insert("x-request-id", HeaderValue::from_static("bad id"));
        let fresh = request_id(&headers);
        assert_eq!(
            uuid::Uuid::parse_str(&fresh)
                .expect("uuid")
                .get_version_num(),
            4
        );
    }
}
