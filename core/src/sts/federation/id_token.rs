//! A federated user's `id_token` (`spec/sts.md §9`): its unverified issuer (to find the trust
//! declaration), then the checks that make it an identity proof: an allowlisted asymmetric
//! algorithm, a `kid` from the issuer's key set, the signature, the issuer, the audience and
//! the time window, and last the subject.
//!
//! Every failure is a rejection reason the caller sees after `invalid subject_token: `; none of
//! them reveals anything the token's own issuer would not already know.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::mandate::LEEWAY_SECONDS;

use super::key_set::{Alg, KeySet};
use super::subject;

/// Largest token accepted, in bytes: identity tokens with generous claim sets stay far below
/// this, and the cap bounds the decoding an authenticated caller can cause.
pub(crate) const MAX_ID_TOKEN_BYTES: usize = 16 * 1024;

/// A structurally sound token, not yet trusted.
pub(crate) struct Unverified<'t> {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    signing_input: &'t [u8],
    signature: Vec<u8>,
}

/// What the issuer's trust declaration requires.
pub(crate) struct Expect<'a> {
    /// The `iss` the token must carry.
    pub(crate) issuer: &'a str,
    /// A value `aud` must contain.
    pub(crate) audience: &'a str,
}

fn segment(text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| "malformed subject token: a segment is not base64url".to_owned())
}

fn object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, String> {
    // Invalid UTF-8 becomes U+FFFD, as upstream's JSON decoder reads it, so a `sub` carrying
    // it is refused by the subject rules instead of failing as an unreadable token.
    let text = String::from_utf8_lossy(bytes);
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(format!(
            "malformed subject token: the {what} is not a JSON object"
        )),
    }
}

/// Splits and decodes `token`; nothing is trusted yet.
pub(crate) fn parse(token: &str) -> Result<Unverified<'_>, String> {
    if token.len() > MAX_ID_TOKEN_BYTES {
        return Err(format!(
            "malformed subject token: larger than {MAX_ID_TOKEN_BYTES} bytes"
        ));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed subject token: not three dot-separated segments".into());
    };
    Ok(Unverified {
        header: object(&segment(header)?, "header")?,
        claims: object(&segment(payload)?, "payload")?,
        signing_input: &token.as_bytes()[..header.len() + 1 + payload.len()],
        signature: segment(signature)?,
    })
}

impl Unverified<'_> {
    /// The claimed issuer, used only to find which trust declaration to check against.
    pub(crate) fn issuer(&self) -> Option<&str> {
        self.claims
            .get("iss")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Every check of §9 against the issuer's `keys`, at `now` (unix seconds); the verified
    /// subject on success.
    pub(crate) fn verify(
        self,
        keys: &KeySet,
        expect: &Expect<'_>,
        now: i64,
    ) -> Result<String, String> {
        let alg_name = self.header.get("alg").and_then(Value::as_str).unwrap_or("");
        // The header's `alg` only selects among the allowlist; `none` and the HMAC family never
        // reach a verifier, so a public key can never be used as an HMAC secret.
        let Some(alg) = Alg::parse(alg_name) else {
            return Err(format!("signing method {alg_name:?} is not accepted"));
        };
        if self.header.contains_key("crit") {
            return Err("token header has critical extensions".into());
        }
        let kid = match self.header.get("kid").and_then(Value::as_str) {
            Some(kid) if !kid.is_empty() => kid,
            _ => return Err("subject token missing kid header".into()),
        };
        let Some(key) = keys.get(kid) else {
            return Err(format!(
                "unknown signing key kid {kid:?} for issuer {}",
                expect.issuer
            ));
        };
        if !key.verify(alg, self.signing_input, &self.signature) {
            return Err("token signature is invalid".into());
        }
        let claims = &self.claims;
        if claims.get("iss").and_then(Value::as_str) != Some(expect.issuer) {
            return Err("token has invalid issuer".into());
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(one)) => one == expect.audience,
            Some(Value::Array(many)) => many.iter().any(|a| a.as_str() == Some(expect.audience)),
            _ => false,
        };
        if !audience_ok {
            return Err("token has invalid audience".into());
        }
        let now = now as f64;
        let leeway = LEEWAY_SECONDS as f64;
        match numeric_date(claims, "exp")? {
            None => return Err("token is missing required claim: exp".into()),
            Some(exp) if now >= exp + leeway => return Err("token is expired".into()),
            Some(_) => {}
        }
        if numeric_date(claims, "iat")?.is_some_and(|iat| now < iat - leeway) {
            return Err("token used before issued".into());
        }
        if numeric_date(claims, "nbf")?.is_some_and(|nbf| now < nbf - leeway) {
            return Err("token is not valid yet".into());
        }
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        if let Some(problem) = subject::problem(sub) {
            return Err(problem.into());
        }
        Ok(sub.to_owned())
    }
}

/// A NumericDate claim (RFC 7519 §2: seconds, possibly fractional); absent is `None`, any other
/// JSON type is malformed.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| format!("token claim {name} is not a number")),
    }
}
