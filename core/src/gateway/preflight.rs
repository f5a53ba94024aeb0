//! B2/B3 steps 1–9: what is checked on the raw request before any key, Redis or STS work, in
//! the contract's order, each with its status and error. Claims are only *peeked* here (the
//! payload is decoded without verifying the signature); they are trusted for routing only.

use super::Denial;

/// Step 2: the longest accepted bearer, in bytes.
pub const MAX_BEARER_BYTES: usize = 4096;
/// Step 4: a mandate must have at least this many seconds left.
pub const PREFLIGHT_WINDOW_SECONDS: i64 = 35;

/// The unverified claims the Gateway routes by (B2). Missing string claims are empty; `kid`
/// comes from the JOSE header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peeked {
    /// `exp` (non-zero when admitted).
    pub exp: i64,
    /// `zone_id` (`^[A-Za-z0-9._:-]{1,128}$` when admitted).
    pub zone_id: String,
    /// `client_id` (same alphabet when admitted).
    pub client_id: String,
    /// `jti`.
    pub jti: String,
    /// `use`.
    pub token_use: String,
    /// `sid`.
    pub sid: String,
    /// `root_sid`.
    pub root_sid: String,
    /// `agent_session_id`.
    pub agent_session_id: String,
    /// `delegation_edge_id`.
    pub delegation_edge_id: String,
    /// `sub_type`.
    pub sub_type: String,
    /// The JOSE header's `kid` (may be empty: step 10 then refuses the signature).
    pub kid: String,
}

/// The parts of the inbound request preflight reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inbound<'a> {
    /// The `Authorization` header, if present (raw value).
    pub authorization: Option<&'a str>,
    /// `X-Caracal-Client-ID`, if present.
    pub client_id_header: Option<&'a str>,
    /// `X-Caracal-Resource`, if present.
    pub resource_header: Option<&'a str>,
    /// The percent-decoded request path (what B9 checks).
    pub path: &'a str,
}

/// A request that passed steps 1–9.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The bearer, trimmed, without its scheme.
    pub bearer: String,
    /// Its peeked claims.
    pub claims: Peeked,
    /// `X-Caracal-Resource`, trimmed.
    pub resource: String,
}

/// Steps 1–9 of B3, in order (1 bearer present, 2 size, 3 form + `exp`, 4 preflight window,
/// 5 no caller client id, 6 resource header, 7 `zone_id`, 8 `client_id`, 9 traversal), at
/// `now_unix`. The first failing step's [`Denial`] is returned.
pub fn preflight(inbound: &Inbound<'_>, now_unix: i64) -> Result<Admitted, Denial> {
    let _ = (inbound, now_unix);
    todo!("issue #5: preflight")
}
