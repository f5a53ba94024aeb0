//! JSON request bodies. Bodies are read as bytes under a hard limit, parsed once into a JSON
//! value (kept for the admin audit's change summary, which records key names only), then into
//! the use case's input type. Failures are typed errors that change nothing.

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use caracal_core::error::{Error, ErrorKind};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The parsed body, kept in request extensions for the audit middleware.
#[derive(Debug, Clone)]
pub struct JsonBody(pub Value);

/// A body-level failure, answered in the framework envelope.
#[derive(Debug)]
pub enum BodyError {
    /// Not JSON.
    Malformed(String),
    /// Over the limit.
    TooLarge,
}

impl BodyError {
    /// The response for this failure.
    pub fn respond(&self, req: &HttpRequest) -> HttpResponse {
        match self {
            BodyError::Malformed(detail) => {
                crate::framework_error(req, StatusCode::BAD_REQUEST, "invalid_json", detail)
            }
            BodyError::TooLarge => crate::framework_error(
                req,
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "request body exceeds the limit",
            ),
        }
    }
}

/// Parses raw bytes as JSON. An empty body is `null`, so bodiless POSTs are accepted.
pub fn parse_value(req: &HttpRequest, bytes: &[u8], limit: usize) -> Result<Value, BodyError> {
    if bytes.len() > limit {
        return Err(BodyError::TooLarge);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| BodyError::Malformed(e.to_string()))?;
    req.extensions_mut().insert(JsonBody(value.clone()));
    Ok(value)
}

/// Converts a parsed body into `T`; a shape mismatch is `400 <code>` naming the problem.
pub fn typed<T: DeserializeOwned>(value: Value, code: &'static str) -> Result<T, Error> {
    if !value.is_object() {
        return Err(
            Error::new(ErrorKind::Invalid, code).describe("request body must be a JSON object")
        );
    }
    serde_json::from_value(value)
        .map_err(|e| Error::new(ErrorKind::Invalid, code).describe(e.to_string()))
}

/// Like [`typed`] but in the validation shape some routes use (`invalid_body` + `details.issues`).
pub fn typed_issues<T: DeserializeOwned>(value: Value) -> Result<T, Error> {
    if !value.is_object() {
        return Err(caracal_core::manage::policies::invalid_body(
            "",
            "request body must be a JSON object",
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        let message = e.to_string();
        let field = message.split('`').nth(1).unwrap_or("").to_owned();
        caracal_core::manage::policies::invalid_body(&field, &message)
    })
}
