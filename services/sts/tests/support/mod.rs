//! What both STS service-test files share: the recording audit sink, the form encoder, the
//! token-endpoint call and claim decoding. Each file keeps its own harness (their clocks and
//! fetchers differ).

#![allow(dead_code)]

use std::sync::Mutex;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::test::{self, TestRequest};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use caracal_core::ports::{AuditEvent, AuditSink, SinkHealth};
use serde_json::Value;

/// The token-exchange grant type.
pub const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Every event the STS emitted, for assertions.
#[derive(Default)]
pub struct Recorded(pub Mutex<Vec<AuditEvent>>);

impl AuditSink for Recorded {
    fn emit(&self, event: AuditEvent) {
        self.0.lock().expect("lock").push(event);
    }
    fn health(&self) -> SinkHealth {
        SinkHealth {
            replay_available: true,
            ..SinkHealth::default()
        }
    }
}

impl Recorded {
    /// Every event so far.
    pub fn all(&self) -> Vec<AuditEvent> {
        self.0.lock().expect("lock").clone()
    }

    /// The newest event.
    pub fn last(&self) -> AuditEvent {
        self.all().last().cloned().expect("an audit event")
    }
}

/// Status and JSON body (null when the body is not JSON).
pub async fn body_of<B: MessageBody>(res: ServiceResponse<B>) -> (u16, Value) {
    let status = res.status().as_u16();
    let bytes = test::read_body(res).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Percent-encodes everything but the unreserved characters.
pub fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A form body in the given order.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `POST /oauth/2/token` with a form body and extra headers.
pub async fn token_call<S, B>(sts: &S, body: String, headers: &[(&str, String)]) -> (u16, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let mut req = TestRequest::post()
        .uri("/oauth/2/token")
        .insert_header(("content-type", "application/x-www-form-urlencoded"))
        .set_payload(body);
    for (name, value) in headers {
        req = req.insert_header((*name, value.clone()));
    }
    body_of(test::call_service(sts, req.to_request()).await).await
}

/// Base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The (unverified) payload of a compact JWT.
pub fn claims_of(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("b64")).expect("json")
}
