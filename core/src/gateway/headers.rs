//! B10 header rewriting in both directions and B8 credential placement.

use std::net::IpAddr;

use super::exchange::Directive;
use super::Denial;

/// A header as bytes (names lowercase on output).
pub type Header = (String, Vec<u8>);

/// What the outbound rewrite needs besides the inbound headers.
#[derive(Debug, Clone, Copy)]
pub struct OutboundContext<'a> {
    /// The Gateway's request id (sent as `X-Request-Id`).
    pub request_id: &'a str,
    /// The TCP peer.
    pub peer_ip: IpAddr,
    /// `TRUST_PROXY`: take `X-Forwarded-For`'s first entry and `X-Forwarded-Proto` from the
    /// caller.
    pub trust_proxy: bool,
    /// Whether the caller reached the Gateway over TLS.
    pub tls: bool,
    /// `Host` for the upstream (`host[:port]` as in its URL).
    pub upstream_host: &'a str,
    /// A fresh `00-<32 hex>-<16 hex>-01` used when the inbound `traceparent` is missing or
    /// invalid.
    pub fresh_traceparent: &'a str,
}

/// The outbound headers (B10): hop-by-hop (and `Connection`-listed) dropped, `baggage`
/// members keyed `caracal.*` dropped (header removed when empty), every `X-Caracal-*`,
/// `X-Forwarded-*`, `Forwarded`, `X-Real-Ip` and the inbound `Authorization` dropped,
/// `X-Request-Id`, `traceparent`, `X-Forwarded-For/Proto/Host` and `Host` set. The
/// credential is added separately ([`Credential::apply`]).
pub fn outbound(inbound: &[Header], ctx: &OutboundContext<'_>) -> Vec<Header> {
    let _ = (inbound, ctx);
    todo!("issue #5: outbound headers")
}

/// Where the provider credential goes (B8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `auth_mode = none`.
    Nothing,
    /// A header (`name` lowercase) with `value`; `identity` is the `X-Caracal-Identity` value
    /// when the directive forwards the Caracal identity.
    Header {
        /// Header name.
        name: String,
        /// Header value.
        value: String,
        /// `X-Caracal-Identity`, when forwarded.
        identity: Option<String>,
    },
    /// A query parameter (`provider_apikey` with `auth_location = query`).
    Query {
        /// Parameter name.
        name: String,
        /// Parameter value.
        value: String,
        /// `X-Caracal-Identity`, when forwarded.
        identity: Option<String>,
    },
}

impl Credential {
    /// Removes the credential header name from `headers` and appends the credential header
    /// and `x-caracal-identity` as planned (a `Query` credential only adds the identity
    /// header; the caller puts the parameter in the query).
    pub fn apply(&self, headers: &mut Vec<Header>) {
        let _ = headers;
        todo!("issue #5: credential apply")
    }
}

/// The credential for `directive` and the resource mandate `access_token` (B8), or the
/// step-17 build failure (`400 internal_error` "upstream request build failed") for a bad
/// header name, a missing query parameter name, a missing provider token or an unknown mode.
pub fn credential(directive: &Directive, access_token: &str) -> Result<Credential, Denial> {
    let _ = (directive, access_token);
    todo!("issue #5: credential")
}

/// The response headers relayed to the caller (B10): hop-by-hop, `X-Caracal-Identity`,
/// `Server`, `X-Powered-By`, `X-AspNet-Version`, `X-AspNetMvc-Version`, `Refresh` dropped;
/// `Location`/`Content-Location` kept only when relative.
pub fn response(upstream: &[Header]) -> Vec<Header> {
    let _ = upstream;
    todo!("issue #5: response headers")
}
