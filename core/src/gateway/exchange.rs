//! B7: the signed Gateway → STS token exchange, and B8's upstream directive as the STS returns
//! it.

use std::collections::HashMap;

use serde_json::Value;

use crate::ports::MessageAuthenticator;
use crate::sts::gateway_sig::canonical;

use super::Denial;

/// The STS path the exchange is posted to (and signed over).
pub const TOKEN_PATH: &str = "/oauth/2/token";

/// What the exchange form carries (B7).
#[derive(Debug, Clone, Copy)]
pub struct ExchangeRequest<'a> {
    /// The inbound bearer (`subject_token`).
    pub bearer: &'a str,
    /// Peeked `zone_id`.
    pub zone_id: &'a str,
    /// Peeked `client_id` (`application_id`).
    pub application_id: &'a str,
    /// `X-Caracal-Resource`.
    pub resource: &'a str,
    /// Inbound method.
    pub method: &'a str,
    /// Decoded inbound path.
    pub path: &'a str,
    /// The Gateway's request id (`gateway_request_id`, also the `X-Request-Id` header).
    pub request_id: &'a str,
}

/// The `application/x-www-form-urlencoded` body: `grant_type`, `subject_token`,
/// `subject_token_type`, `zone_id`, `application_id`, `resource`, `request_method`,
/// `request_path`, `gateway_request_id`, keys sorted.
pub fn form_body(request: &ExchangeRequest<'_>) -> String {
    // Already in the byte order Go's `url.Values.Encode` sorts keys into.
    let fields: [(&str, &str); 9] = [
        ("application_id", request.application_id),
        ("gateway_request_id", request.request_id),
        ("grant_type", GRANT_TYPE),
        ("request_method", request.method),
        ("request_path", request.path),
        ("resource", request.resource),
        ("subject_token", request.bearer),
        ("subject_token_type", SUBJECT_TOKEN_TYPE),
        ("zone_id", request.zone_id),
    ];
    let mut body = String::new();
    for (key, value) in fields {
        if !body.is_empty() {
            body.push('&');
        }
        query_escape(&mut body, key);
        body.push('=');
        query_escape(&mut body, value);
    }
    body
}

/// `grant_type` of the exchange.
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `subject_token_type` of the inbound mandate.
const SUBJECT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Appends `value` escaped as Go's `url.QueryEscape` does: unreserved bytes kept, space as
/// `+`, every other byte as `%XX` (uppercase hex).
fn query_escape(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
}

/// The three signing headers' values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `X-Caracal-Gateway-Timestamp`: Unix seconds.
    pub timestamp: String,
    /// `X-Caracal-Gateway-Request`: the nonce (64 lowercase hex).
    pub nonce: String,
    /// `X-Caracal-Gateway-Signature`: lowercase hex HMAC-SHA256.
    pub signature: String,
}

/// Signs `body` for `POST /oauth/2/token` at `unix` with `nonce_hex` (B7; the canonical
/// string is [`crate::sts::gateway_sig::canonical`]).
pub fn sign(mac: &dyn MessageAuthenticator, unix: i64, nonce_hex: &str, body: &[u8]) -> Envelope {
    let timestamp = unix.to_string();
    let signature =
        mac.sign_hex(canonical(&timestamp, nonce_hex, "POST", TOKEN_PATH, body).as_bytes());
    Envelope {
        timestamp,
        nonce: nonce_hex.to_owned(),
        signature,
    }
}

/// The private upstream directive for one resource (B8). Never returned to the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directive {
    /// Upstream base URL.
    pub url: String,
    /// `none`, `caracal_jwt` (default), `provider_oauth`, `provider_apikey`.
    pub auth_mode: String,
    /// `header` (default) or `query`.
    pub auth_location: String,
    /// Credential header name (default `Authorization`).
    pub auth_header: String,
    /// Query parameter name for `auth_location = query`.
    pub query_param_name: String,
    /// Scheme prefix (default `Bearer` for `caracal_jwt`).
    pub auth_scheme: String,
    /// Hosts the provider credential may be sent to (empty: any).
    pub allowed_token_hosts: Vec<String>,
    /// The unsealed provider credential (provider modes). Lives only in memory.
    pub provider_token: Option<String>,
    /// Provider id, for audit.
    pub provider_id: String,
    /// Connection id, for audit.
    pub connection_id: String,
    /// Add `X-Caracal-Identity` in provider modes.
    pub forward_caracal_identity: bool,
    /// Directive expiry (RFC 3339), informational.
    pub expires_at: String,
}

/// A successful exchange: the `use=resource` mandate and the directive for the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchanged {
    /// `access_token`.
    pub access_token: String,
    /// `upstreams[<resource>]`.
    pub directive: Directive,
}

/// How the STS call ended.
#[derive(Debug, Clone, Copy)]
pub enum StsOutcome<'a> {
    /// No answer within `STS_TIMEOUT`.
    Timeout,
    /// The caller went away.
    Cancelled,
    /// Connection or protocol failure.
    Transport,
    /// An HTTP answer.
    Answer {
        /// Status code.
        status: u16,
        /// Its reason phrase (for non-JSON errors).
        status_text: &'a str,
        /// The body (the caller reads at most 16 KiB; longer bodies are passed truncated and
        /// fail to decode).
        body: &'a [u8],
    },
}

/// Reads the STS outcome per the B7 table: timeout 504 / cancel 499 / other transport 502
/// `sts_unavailable`; a non-200 JSON error relayed with the same status, `error` and
/// `error_description`; a non-200 otherwise `sts_unavailable` with the status text; a 200 that
/// is not JSON, has no `access_token` → 502 `sts_unavailable` "sts response invalid"; no
/// `upstreams[resource]` or an empty `url` → 403 `access_denied` "resource upstream not
/// configured". Metric stem `sts_exchange_errors`.
pub fn interpret(outcome: StsOutcome<'_>, resource: &str) -> Result<Exchanged, Denial> {
    let (status, status_text, body) = match outcome {
        StsOutcome::Timeout => return Err(sts_error(504, "sts_unavailable", "sts timeout")),
        StsOutcome::Cancelled => return Err(sts_error(499, "sts_unavailable", "client cancelled")),
        StsOutcome::Transport => return Err(sts_error(502, "sts_unavailable", "sts unreachable")),
        StsOutcome::Answer {
            status,
            status_text,
            body,
        } => (status, status_text, body),
    };
    if status != 200 {
        return Err(match relayed_error(body) {
            Some((error, description)) => sts_error(status, &error, &description),
            None => sts_error(status, "sts_unavailable", status_text),
        });
    }
    let invalid = || sts_error(502, "sts_unavailable", "sts response invalid");
    let answer = decode_answer(body).ok_or_else(invalid)?;
    if answer.access_token.is_empty() {
        return Err(invalid());
    }
    let directive = answer
        .upstreams
        .and_then(|mut upstreams| upstreams.remove(resource))
        .flatten()
        .filter(|d| !d.url.is_empty())
        .ok_or_else(|| sts_error(403, "access_denied", "resource upstream not configured"))?;
    Ok(Exchanged {
        access_token: answer.access_token,
        directive: with_defaults(directive),
    })
}

/// The largest STS answer the Gateway decodes (16 KiB).
const MAX_ANSWER_BYTES: usize = 16 * 1024;

/// Metric stem of every exchange failure.
const METRIC: &str = "sts_exchange_errors";

fn sts_error(status: u16, error: &str, description: &str) -> Denial {
    Denial::new(status, error, description, METRIC)
}

/// `(error, error_description)` of a non-200 JSON error body: an object whose `error` is a
/// non-empty string and whose `error_description`, when present, is a string (or null).
fn relayed_error(body: &[u8]) -> Option<(String, String)> {
    if body.len() > MAX_ANSWER_BYTES {
        return None;
    }
    let Value::Object(mut object) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    let error = match object.remove("error") {
        Some(Value::String(e)) if !e.is_empty() => e,
        _ => return None,
    };
    let description = match object.remove("error_description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(d)) => d,
        Some(_) => return None,
    };
    Some((error, description))
}

/// A decoded 200 answer: the members the Gateway reads.
struct Answer {
    access_token: String,
    /// `upstreams`, `None` when absent or null; an entry is `None` when it is null.
    upstreams: Option<HashMap<String, Option<Directive>>>,
}

/// Decodes a 200 body the way a typed JSON decoder would: an object (≤ 16 KiB) whose known
/// members, when present and not null, have the expected types; unknown members are ignored.
/// `None` when it does not decode.
fn decode_answer(body: &[u8]) -> Option<Answer> {
    if body.len() > MAX_ANSWER_BYTES {
        return None;
    }
    let Value::Object(mut object) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    let access_token = opt_string(object.remove("access_token"))?;
    let upstreams = match object.remove("upstreams") {
        None | Some(Value::Null) => None,
        Some(Value::Object(entries)) => {
            let mut decoded = HashMap::with_capacity(entries.len());
            for (name, entry) in entries {
                decoded.insert(name, decode_directive(entry)?);
            }
            Some(decoded)
        }
        Some(_) => return None,
    };
    Some(Answer {
        access_token,
        upstreams,
    })
}

/// A string member: absent or null is empty, any other non-string fails the decode.
fn opt_string(value: Option<Value>) -> Option<String> {
    match value {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s),
        Some(_) => None,
    }
}

/// One `upstreams` entry: `Some(None)` for null, `None` when it does not decode.
fn decode_directive(entry: Value) -> Option<Option<Directive>> {
    let mut object = match entry {
        Value::Null => return Some(None),
        Value::Object(object) => object,
        _ => return None,
    };
    let mut text = |name: &str| opt_string(object.remove(name));
    let url = text("url")?;
    let auth_mode = text("auth_mode")?;
    let auth_location = text("auth_location")?;
    let auth_header = text("auth_header")?;
    let query_param_name = text("query_param_name")?;
    let auth_scheme = text("auth_scheme")?;
    let provider_token = text("provider_token")?;
    let provider_id = text("provider_id")?;
    let connection_id = text("connection_id")?;
    let expires_at = text("expires_at")?;
    // A null element decodes as an empty host: the list stays non-empty and matches nothing,
    // so it can only narrow where the credential goes.
    let allowed_token_hosts = match object.remove("allowed_token_hosts") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(hosts)) => hosts
            .into_iter()
            .map(|h| opt_string(Some(h)))
            .collect::<Option<Vec<_>>>()?,
        Some(_) => return None,
    };
    let forward_caracal_identity = match object.remove("forward_caracal_identity") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return None,
    };
    Some(Some(Directive {
        url,
        auth_mode,
        auth_location,
        auth_header,
        query_param_name,
        auth_scheme,
        allowed_token_hosts,
        provider_token: Some(provider_token).filter(|t| !t.is_empty()),
        provider_id,
        connection_id,
        forward_caracal_identity,
        expires_at,
    }))
}

/// The STS defaults (B8): mode `caracal_jwt`, header `Authorization`, and scheme `Bearer` for
/// `caracal_jwt` only (provider modes keep the scheme as sent, possibly none).
fn with_defaults(mut directive: Directive) -> Directive {
    if directive.auth_mode.is_empty() {
        directive.auth_mode = "caracal_jwt".to_owned();
    }
    if directive.auth_header.is_empty() {
        directive.auth_header = "Authorization".to_owned();
    }
    if directive.auth_mode == "caracal_jwt" && directive.auth_scheme.is_empty() {
        directive.auth_scheme = "Bearer".to_owned();
    }
    directive
}

/// Whether a denial from [`interpret`] counts towards the circuit breaker: `sts_unavailable`
/// with status ≥ 500.
pub fn counts_against_circuit(denial: &Denial) -> bool {
    denial.error == "sts_unavailable" && denial.status >= 500
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use serde_json::{json, Map};

    use super::*;
    use crate::attribution::Attribution;
    use crate::digest::sha256_hex;
    use crate::ids::{ProviderId, ResourceId, ZoneId};
    use crate::model::{Provider, Resource};
    use crate::ports::{ExpiringKeys, ExpiringKeysError};
    use crate::sts::directive;
    use crate::sts::form::{self, FormPairs, SubjectKind};
    use crate::sts::gateway_sig::{GatewayVerifier, SignedHeaders};
    use crate::time::Timestamp;

    /// A keyed digest stand-in: the tag is sha256(key ‖ message).
    struct FakeMac(&'static str);

    impl MessageAuthenticator for FakeMac {
        fn sign_hex(&self, message: &[u8]) -> String {
            sha256_hex(&[self.0.as_bytes(), message].concat())
        }
        fn verify_hex(&self, message: &[u8], tag_hex: &str) -> bool {
            self.sign_hex(message) == tag_hex
        }
    }

    /// Single-use keys in memory.
    #[derive(Default)]
    struct Seen(Mutex<HashSet<String>>);

    #[async_trait]
    impl ExpiringKeys for Seen {
        async fn set_if_absent(
            &self,
            key: &str,
            _: &str,
            _: u64,
        ) -> Result<bool, ExpiringKeysError> {
            Ok(self.0.lock().expect("lock").insert(key.to_owned()))
        }
        async fn exists(&self, key: &str) -> Result<bool, ExpiringKeysError> {
            Ok(self.0.lock().expect("lock").contains(key))
        }
    }

    const NONCE: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn request() -> ExchangeRequest<'static> {
        ExchangeRequest {
            bearer: "eyJh.eyJw.sig-_",
            zone_id: "zone:1",
            application_id: "app.1",
            resource: "resource://billing api",
            method: "POST",
            path: "/v1/items/a b/ü+&=?",
            request_id: "req-1",
        }
    }

    #[test]
    fn form_body_is_sorted_and_go_escaped() {
        assert_eq!(
            form_body(&request()),
            "application_id=app.1\
             &gateway_request_id=req-1\
             &grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange\
             &request_method=POST\
             &request_path=%2Fv1%2Fitems%2Fa+b%2F%C3%BC%2B%26%3D%3F\
             &resource=resource%3A%2F%2Fbilling+api\
             &subject_token=eyJh.eyJw.sig-_\
             &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aaccess_token\
             &zone_id=zone%3A1"
        );
    }

    #[test]
    fn query_escape_keeps_only_unreserved_bytes() {
        let mut out = String::new();
        query_escape(&mut out, "AZaz09-._~ !*'()/\t%\u{7f}");
        assert_eq!(out, "AZaz09-._~+%21%2A%27%28%29%2F%09%25%7F");
    }

    #[test]
    fn the_sts_form_parser_reads_the_body_back() {
        let req = request();
        let body = form_body(&req);
        let pairs = FormPairs::parse(body.as_bytes()).expect("parses");
        let keys: Vec<&str> = pairs.pairs().iter().map(|(k, _)| k.as_str()).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(keys, sorted, "keys are sorted");
        assert_eq!(keys.len(), 9);
        let ttl = form::precheck(&pairs).expect("precheck");
        let parsed = form::token_request(&pairs, ttl).expect("token request");
        assert_eq!(parsed.zone_id, req.zone_id);
        assert_eq!(parsed.application_id, req.application_id);
        assert_eq!(parsed.resources, vec![req.resource.to_owned()]);
        assert_eq!(parsed.request_method, req.method);
        assert_eq!(parsed.request_path, req.path);
        assert_eq!(parsed.gateway_request_id, req.request_id);
        let subject = parsed.subject.expect("subject");
        assert_eq!(subject.token, req.bearer);
        assert_eq!(subject.kind, SubjectKind::AccessToken);
        assert_eq!(parsed.client_secret, None);
    }

    #[test]
    fn sign_covers_the_canonical_string() {
        let body = form_body(&request());
        let envelope = sign(&FakeMac("k"), 1_700_000_000, NONCE, body.as_bytes());
        assert_eq!(envelope.timestamp, "1700000000");
        assert_eq!(envelope.nonce, NONCE);
        let expected = format!(
            "1700000000\n{NONCE}\nPOST\n/oauth/2/token\n{}",
            sha256_hex(body.as_bytes())
        );
        assert_eq!(
            envelope.signature,
            FakeMac("k").sign_hex(expected.as_bytes())
        );
    }

    #[tokio::test]
    async fn the_sts_verifier_accepts_what_the_gateway_signs() {
        let verifier = GatewayVerifier::new(
            Some(Arc::new(FakeMac("shared")) as Arc<dyn MessageAuthenticator>),
            Arc::new(Seen::default()),
        );
        let body = form_body(&request());
        let envelope = sign(&FakeMac("shared"), 1_000, NONCE, body.as_bytes());
        let headers = SignedHeaders {
            timestamp: Some(&envelope.timestamp),
            nonce: Some(&envelope.nonce),
            signature: Some(&envelope.signature),
        };
        assert!(
            !verifier
                .verify(&headers, "POST", TOKEN_PATH, b"tampered", 1_000)
                .await,
            "the body is signed"
        );
        assert!(
            verifier
                .verify(&headers, "POST", TOKEN_PATH, body.as_bytes(), 1_030)
                .await
        );
        assert!(
            !verifier
                .verify(&headers, "POST", TOKEN_PATH, body.as_bytes(), 1_030)
                .await,
            "the nonce is single-use"
        );
        let forged = sign(&FakeMac("other"), 1_000, "f00d", body.as_bytes());
        let headers = SignedHeaders {
            timestamp: Some(&forged.timestamp),
            nonce: Some(&forged.nonce),
            signature: Some(&forged.signature),
        };
        assert!(
            !verifier
                .verify(&headers, "POST", TOKEN_PATH, body.as_bytes(), 1_000)
                .await,
            "another key does not verify"
        );
    }

    fn answer(status: u16, status_text: &str, body: &[u8]) -> Result<Exchanged, Denial> {
        interpret(
            StsOutcome::Answer {
                status,
                status_text,
                body,
            },
            "resource://api",
        )
    }

    fn ok_body(value: &Value) -> Vec<u8> {
        serde_json::to_vec(value).expect("encodes")
    }

    fn denial(status: u16, error: &str, description: &str) -> Denial {
        Denial::new(status, error, description, "sts_exchange_errors")
    }

    #[test]
    fn transport_failures() {
        assert_eq!(
            interpret(StsOutcome::Timeout, "r").expect_err("timeout"),
            denial(504, "sts_unavailable", "sts timeout")
        );
        assert_eq!(
            interpret(StsOutcome::Cancelled, "r").expect_err("cancel"),
            denial(499, "sts_unavailable", "client cancelled")
        );
        assert_eq!(
            interpret(StsOutcome::Transport, "r").expect_err("transport"),
            denial(502, "sts_unavailable", "sts unreachable")
        );
    }

    #[test]
    fn non_200_json_errors_are_relayed() {
        assert_eq!(
            answer(
                403,
                "Forbidden",
                br#"{"error":"access_denied","error_description":"policy denied","requestId":"x"}"#
            )
            .expect_err("relayed"),
            denial(403, "access_denied", "policy denied")
        );
        assert_eq!(
            answer(401, "Unauthorized", br#"{"error":"invalid_token"}"#).expect_err("relayed"),
            denial(401, "invalid_token", "")
        );
        assert_eq!(
            answer(
                503,
                "Service Unavailable",
                br#"{"error":"temporarily_unavailable","error_description":null}"#
            )
            .expect_err("relayed"),
            denial(503, "temporarily_unavailable", "")
        );
        assert_eq!(
            answer(201, "Created", br#"{"error":"x","error_description":"y"}"#)
                .expect_err("only 200 succeeds"),
            denial(201, "x", "y")
        );
    }

    #[test]
    fn other_non_200_answers_carry_the_status_text() {
        let cases: [&[u8]; 8] = [
            b"",
            b"<html>bad gateway</html>",
            b"[\"error\"]",
            br#"{"message":"nope"}"#,
            br#"{"error":""}"#,
            br#"{"error":5}"#,
            br#"{"error":"x","error_description":7}"#,
            br#"{"error":"x"} trailing"#,
        ];
        for body in cases {
            assert_eq!(
                answer(502, "Bad Gateway", body).expect_err("error"),
                denial(502, "sts_unavailable", "Bad Gateway"),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            answer(302, "Found", b"").expect_err("no redirects"),
            denial(302, "sts_unavailable", "Found")
        );
        let mut huge = br#"{"error":"access_denied","error_description":""#.to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_ANSWER_BYTES));
        huge.extend(br#""}"#);
        assert_eq!(
            answer(403, "Forbidden", &huge).expect_err("too long"),
            denial(403, "sts_unavailable", "Forbidden")
        );
    }

    #[test]
    fn invalid_200_answers() {
        let invalid = denial(502, "sts_unavailable", "sts response invalid");
        let mut huge =
            br#"{"access_token":"t","upstreams":{"resource://api":{"url":"https://u"}},"pad":""#
                .to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_ANSWER_BYTES));
        huge.extend(br#""}"#);
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"not json".to_vec(),
            b"[]".to_vec(),
            b"\"t\"".to_vec(),
            b"null".to_vec(),
            br#"{"access_token":"t","upstreams":{"resource://api":{"url":"https://u"}}"#.to_vec(),
            br#"{"upstreams":{"resource://api":{"url":"https://u"}}}"#.to_vec(),
            br#"{"access_token":"","upstreams":{"resource://api":{"url":"https://u"}}}"#.to_vec(),
            br#"{"access_token":null,"upstreams":{"resource://api":{"url":"https://u"}}}"#
                .to_vec(),
            br#"{"access_token":7,"upstreams":{"resource://api":{"url":"https://u"}}}"#.to_vec(),
            br#"{"access_token":"t","upstreams":[]}"#.to_vec(),
            br#"{"access_token":"t","upstreams":{"resource://api":"https://u"}}"#.to_vec(),
            br#"{"access_token":"t","upstreams":{"resource://api":{"url":1}}}"#.to_vec(),
            br#"{"access_token":"t","upstreams":{"resource://api":{"url":"https://u","forward_caracal_identity":"true"}}}"#.to_vec(),
            br#"{"access_token":"t","upstreams":{"resource://api":{"url":"https://u","allowed_token_hosts":"a.example"}}}"#.to_vec(),
            br#"{"access_token":"t","upstreams":{"resource://api":{"url":"https://u","allowed_token_hosts":[1]}}}"#.to_vec(),
            br#"{"access_token":"t","upstreams":{"resource://api":{"url":"https://u"},"other":{"auth_mode":false}}}"#.to_vec(),
            huge,
        ];
        for body in cases {
            assert_eq!(
                answer(200, "OK", &body).expect_err("invalid"),
                invalid,
                "{}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
        }
    }

    #[test]
    fn a_missing_upstream_is_denied() {
        let not_configured = denial(403, "access_denied", "resource upstream not configured");
        let cases = [
            json!({"access_token": "t"}),
            json!({"access_token": "t", "upstreams": null}),
            json!({"access_token": "t", "upstreams": {}}),
            json!({"access_token": "t", "upstreams": {"resource://other": {"url": "https://u"}}}),
            json!({"access_token": "t", "upstreams": {"Resource://API": {"url": "https://u"}}}),
            json!({"access_token": "t", "upstreams": {"resource://api ": {"url": "https://u"}}}),
            json!({"access_token": "t", "upstreams": {"resource://api": null}}),
            json!({"access_token": "t", "upstreams": {"resource://api": {}}}),
            json!({"access_token": "t", "upstreams": {"resource://api": {"url": ""}}}),
            json!({"access_token": "t", "upstreams": {"resource://api": {"url": null}}}),
        ];
        for body in cases {
            assert_eq!(
                answer(200, "OK", &ok_body(&body)).expect_err("denied"),
                not_configured,
                "{body}"
            );
        }
    }

    #[test]
    fn a_bare_directive_gets_the_sts_defaults() {
        let body = json!({
            "access_token": "mandate",
            "token_type": "Bearer",
            "expires_in": 60,
            "issued_token_type": form::ACCESS_TOKEN_TYPE,
            "target_resources": ["resource://api"],
            "upstreams": {"resource://api": {"url": "https://api.example/v1"}},
        });
        let exchanged = answer(200, "OK", &ok_body(&body)).expect("exchanged");
        assert_eq!(exchanged.access_token, "mandate");
        assert_eq!(
            exchanged.directive,
            Directive {
                url: "https://api.example/v1".into(),
                auth_mode: "caracal_jwt".into(),
                auth_header: "Authorization".into(),
                auth_scheme: "Bearer".into(),
                ..Directive::default()
            }
        );
    }

    #[test]
    fn every_directive_member_is_read() {
        let body = json!({
            "access_token": "mandate",
            "upstreams": {
                "resource://api": {
                    "url": "https://api.example",
                    "auth_mode": "provider_apikey",
                    "auth_location": "query",
                    "auth_header": "X-Api-Key",
                    "query_param_name": "key",
                    "auth_scheme": "",
                    "allowed_token_hosts": ["api.example", null],
                    "provider_token": "secret",
                    "provider_id": "prov_1",
                    "connection_id": "conn_1",
                    "forward_caracal_identity": true,
                    "expires_at": "2030-01-01T00:00:00Z",
                    "unknown_member": {"ignored": true},
                },
                "resource://other": {"url": "https://other.example"},
            },
        });
        let exchanged = answer(200, "OK", &ok_body(&body)).expect("exchanged");
        assert_eq!(
            exchanged.directive,
            Directive {
                url: "https://api.example".into(),
                auth_mode: "provider_apikey".into(),
                auth_location: "query".into(),
                auth_header: "X-Api-Key".into(),
                query_param_name: "key".into(),
                auth_scheme: String::new(),
                allowed_token_hosts: vec!["api.example".into(), String::new()],
                provider_token: Some("secret".into()),
                provider_id: "prov_1".into(),
                connection_id: "conn_1".into(),
                forward_caracal_identity: true,
                expires_at: "2030-01-01T00:00:00Z".into(),
            }
        );
    }

    #[test]
    fn provider_modes_keep_their_scheme_and_empty_tokens_are_none() {
        let body = json!({
            "access_token": "mandate",
            "upstreams": {"resource://api": {
                "url": "https://api.example",
                "auth_mode": "provider_oauth",
                "provider_token": "",
                "forward_caracal_identity": null,
                "allowed_token_hosts": null,
            }},
        });
        let directive = answer(200, "OK", &ok_body(&body))
            .expect("exchanged")
            .directive;
        assert_eq!(directive.auth_mode, "provider_oauth");
        assert_eq!(directive.auth_header, "Authorization");
        assert_eq!(directive.auth_scheme, "");
        assert_eq!(directive.provider_token, None);
        assert!(!directive.forward_caracal_identity);
        assert!(directive.allowed_token_hosts.is_empty());

        let body = json!({
            "access_token": "mandate",
            "upstreams": {"resource://api": {
                "url": "https://api.example",
                "auth_mode": "caracal_jwt",
                "auth_scheme": "Token",
            }},
        });
        let directive = answer(200, "OK", &ok_body(&body))
            .expect("exchanged")
            .directive;
        assert_eq!(directive.auth_scheme, "Token", "a sent scheme is kept");
    }

    fn at() -> Timestamp {
        Timestamp::from_unix_micros(1_700_000_000_000_000)
    }

    fn resource(identifier: &str, provider: Option<&str>) -> Resource {
        Resource {
            id: ResourceId::parse("res_1").expect("id"),
            zone_id: ZoneId::parse("zone_1").expect("id"),
            name: "Resource".into(),
            identifier: identifier.into(),
            upstream_url: Some("https://api.example/base".into()),
            scopes: vec!["read".into()],
            credential_provider_id: provider.map(str::to_owned),
            operations: vec![],
            operation_enforcement: "enforced".into(),
            attr: Attribution::created("admin:t", false, at()),
            archived_at: None,
        }
    }

    fn provider(kind: &str, config: Value) -> Provider {
        let Value::Object(config_json) = config else {
            panic!("config is an object");
        };
        Provider {
            id: ProviderId::parse("prov_1").expect("id"),
            zone_id: ZoneId::parse("zone_1").expect("id"),
            name: "Provider".into(),
            identifier: "provider://p".into(),
            kind: kind.into(),
            config_json,
            secret_config_keys: vec![],
            connectivity_failed_at: None,
            attr: Attribution::created("admin:t", false, at()),
            archived_at: None,
        }
    }

    /// Runs a directive the STS builds through the STS success body and back.
    fn round_trip(
        resource: &Resource,
        provider: Option<&Provider>,
        secrets: &[(&str, &str)],
    ) -> Exchanged {
        let secrets: BTreeMap<String, String> = secrets
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let built = directive::build(resource, provider, &secrets).expect("built");
        let mut upstreams = Map::new();
        upstreams.insert(resource.identifier.clone(), built);
        let minted = crate::sts::exchange::Minted {
            access_token: "mandate".into(),
            expires_in: 60,
            scope: "read".into(),
            target_resources: vec![resource.identifier.clone()],
            upstreams: Some(upstreams),
        };
        let body = ok_body(&minted.to_json());
        interpret(
            StsOutcome::Answer {
                status: 200,
                status_text: "OK",
                body: &body,
            },
            &resource.identifier,
        )
        .expect("exchanged")
    }

    #[test]
    fn accepts_every_directive_the_sts_builds() {
        let plain = round_trip(&resource("resource://api", None), None, &[]);
        assert_eq!(plain.access_token, "mandate");
        assert_eq!(plain.directive.url, "https://api.example/base");
        assert_eq!(plain.directive.auth_mode, "caracal_jwt");
        assert_eq!(plain.directive.auth_header, "Authorization");
        assert_eq!(plain.directive.auth_scheme, "Bearer");

        let res = resource("resource://api", Some("prov_1"));
        let none = round_trip(&res, Some(&provider("none", json!({}))), &[]);
        assert_eq!(none.directive.auth_mode, "none");
        assert_eq!(none.directive.provider_id, "prov_1");

        let mandate = round_trip(&res, Some(&provider("caracal_mandate", json!({}))), &[]);
        assert_eq!(mandate.directive.auth_mode, "caracal_jwt");
        assert_eq!(mandate.directive.auth_scheme, "Bearer");

        let bearer = round_trip(
            &res,
            Some(&provider(
                "bearer_token",
                json!({"auth_header": "X-Token", "allowed_token_hosts": ["API.example"],
                       "forward_caracal_identity": true}),
            )),
            &[("bearer_token", "tok")],
        );
        assert_eq!(
            bearer.directive,
            Directive {
                url: "https://api.example/base".into(),
                auth_mode: "provider_oauth".into(),
                auth_header: "X-Token".into(),
                auth_scheme: "Bearer".into(),
                allowed_token_hosts: vec!["api.example".into()],
                provider_token: Some("tok".into()),
                provider_id: "prov_1".into(),
                forward_caracal_identity: true,
                ..Directive::default()
            }
        );

        let basic = round_trip(
            &res,
            Some(&provider("http_basic", json!({"username": "u"}))),
            &[("password", "p")],
        );
        assert_eq!(basic.directive.auth_mode, "provider_oauth");
        assert_eq!(basic.directive.auth_scheme, "Basic");
        assert_eq!(basic.directive.provider_token.as_deref(), Some("dTpw"));

        let header_key = round_trip(
            &res,
            Some(&provider("api_key", json!({"header_name": "X-Api-Key"}))),
            &[("api_key", "k")],
        );
        assert_eq!(header_key.directive.auth_mode, "provider_apikey");
        assert_eq!(header_key.directive.auth_header, "X-Api-Key");
        assert_eq!(header_key.directive.auth_scheme, "", "no scheme: bare key");
        assert_eq!(header_key.directive.provider_token.as_deref(), Some("k"));

        let query_key = round_trip(
            &res,
            Some(&provider(
                "api_key",
                json!({"auth_location": "query", "query_param_name": "api_key"}),
            )),
            &[("api_key", "k")],
        );
        assert_eq!(query_key.directive.auth_location, "query");
        assert_eq!(query_key.directive.query_param_name, "api_key");
        assert_eq!(query_key.directive.auth_header, "Authorization");
        assert_eq!(query_key.directive.auth_scheme, "");
    }

    #[test]
    fn only_server_side_unavailability_counts_against_the_circuit() {
        let counted = |outcome| {
            counts_against_circuit(&interpret(outcome, "resource://api").expect_err("denied"))
        };
        assert!(counted(StsOutcome::Timeout));
        assert!(counted(StsOutcome::Transport));
        assert!(!counted(StsOutcome::Cancelled));
        let answer = |status, body: &'static [u8]| StsOutcome::Answer {
            status,
            status_text: "x",
            body,
        };
        assert!(counted(answer(503, b"")));
        assert!(counted(answer(200, b"garbage")));
        assert!(!counted(answer(500, br#"{"error":"server_error"}"#)));
        assert!(!counted(answer(429, b"")));
        assert!(!counted(answer(200, br#"{"access_token":"t"}"#)));
    }
}
