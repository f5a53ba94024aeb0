//! B7: the signed Gateway → STS token exchange, and B8's upstream directive as the STS returns
//! it.

use crate::ports::MessageAuthenticator;

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
    let _ = request;
    todo!("issue #5: form body")
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
pub fn sign(
    mac: &dyn MessageAuthenticator,
    unix: i64,
    nonce_hex: &str,
    body: &[u8],
) -> Envelope {
    let _ = (mac, unix, nonce_hex, body);
    todo!("issue #5: sign")
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
    let _ = (outcome, resource);
    todo!("issue #5: interpret")
}

/// Whether a denial from [`interpret`] counts towards the circuit breaker: `sts_unavailable`
/// with status ≥ 500.
pub fn counts_against_circuit(denial: &Denial) -> bool {
    denial.error == "sts_unavailable" && denial.status >= 500
}
