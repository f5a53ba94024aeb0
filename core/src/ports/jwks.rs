//! Fetching an external issuer's key set (`spec/sts.md §9`): the STS's only egress to a URL an
//! administrator chose. The production adapter owns every network safety rule (HTTPS only, a
//! timeout, no redirects, a size cap, the SSRF guard on resolved addresses, extra CA roots);
//! the domain only sees a JSON document or a reason it could not be had.

use async_trait::async_trait;
use serde_json::Value;

/// Why a key set could not be fetched. The reason is logged and put in audit evidence; the
/// token caller only learns that the issuer's keys were unavailable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL is not an absolute `https` URL with a host.
    #[error("jwks_url is not an https URL: {0}")]
    NotHttps(String),
    /// The destination is refused by the egress policy (a blocked address class).
    #[error("egress refused: {0}")]
    Blocked(String),
    /// Name resolution, connection, TLS or the request itself failed (timeouts included).
    #[error("key set request failed: {0}")]
    Transport(String),
    /// The issuer answered with a status other than 200 (redirects are not followed).
    #[error("key set request returned status {0}")]
    Status(u16),
    /// The body exceeded the size cap.
    #[error("key set document exceeds {0} bytes")]
    TooLarge(usize),
    /// The body is not a JSON document.
    #[error("key set document is not JSON: {0}")]
    Malformed(String),
    /// Egress is misconfigured (for example an unreadable extra CA file), so it fails closed.
    #[error("egress unavailable: {0}")]
    Unavailable(String),
}

/// Fetches issuer key sets (RFC 7517 JWKS documents).
#[async_trait]
pub trait IssuerKeys: Send + Sync {
    /// The JSON document at `jwks_url`, fetched now (callers cache; adapters do not).
    async fn fetch(&self, jwks_url: &str) -> Result<Value, FetchError>;
}
