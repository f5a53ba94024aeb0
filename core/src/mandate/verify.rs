//! Verification of a presented mandate (`spec/sts.md §3.4`; the Gateway and Coordinator check
//! the same things): compact form, ES256 only, a `kid` from the zone's verification set, the
//! signature, then issuer, audience, time window, zone and `use`.
//!
//! Only ES256 is ever verified, and only against keys the zone holds: the header's `alg` is
//! compared to a constant rather than used to pick an algorithm, so `none`, HS256 keyed with
//! the public key, or any other downgrade cannot reach a verifier. Every failure has its own
//! [`TokenError`] variant for the log; callers answer all of them the same way (the STS with
//! `401 invalid_token "invalid subject_token"`), so the caller learns nothing about which check
//! failed.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::mandate::claims::{MandateClaims, MandateUse};
use crate::mandate::jws::{ALGORITHM, SIGNATURE_LEN, TOKEN_TYPE};
use crate::ports::Es256;

/// Clock skew tolerated on `exp`, `iat` and `nbf`, in seconds (upstream and the SDK use 60).
pub const LEEWAY_SECONDS: i64 = 60;

/// Largest token accepted, in bytes. A mandate with a ten-hop delegation chain stays well under
/// 8 KiB; the cap bounds the base64 and JSON work an unauthenticated caller can cause.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a presented mandate was refused. Logged, never shown to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    /// Not exactly three dot-separated segments.
    #[error("token is not three dot-separated segments")]
    Segments,
    /// A segment is not canonical unpadded base64url.
    #[error("token segment is not canonical base64url")]
    Encoding,
    /// The header is not a JSON object.
    #[error("token header is not a JSON object")]
    Header,
    /// `alg` is anything but `ES256` (including `none` and HS256).
    #[error("token algorithm is not ES256")]
    Algorithm,
    /// `typ` is present and not `JWT`.
    #[error("token type is not JWT")]
    Type,
    /// The header lists critical extensions, none of which we implement (RFC 7515 §4.1.11).
    #[error("token header has critical extensions")]
    Critical,
    /// No `kid`, or not a non-empty string.
    #[error("token header has no kid")]
    MissingKid,
    /// The `kid` is not in the zone's verification set.
    #[error("token kid is not a verification key of the zone")]
    UnknownKid,
    /// The signature is not 64 bytes or does not verify.
    #[error("token signature is invalid")]
    Signature,
    /// The payload is not a JSON object, or a claim is missing or of the wrong type.
    #[error("token claims are malformed: {0}")]
    Claims(String),
    /// `iss` is not the issuer.
    #[error("token issuer mismatch")]
    Issuer,
    /// `aud` does not contain the expected audience.
    #[error("token audience mismatch")]
    Audience,
    /// No `exp`.
    #[error("token has no exp")]
    MissingExp,
    /// `exp` passed more than the leeway ago.
    #[error("token expired")]
    Expired,
    /// `iat` or `nbf` lies more than the leeway in the future.
    #[error("token is not yet valid")]
    NotYetValid,
    /// `zone_id` is not the expected zone.
    #[error("token zone mismatch")]
    Zone,
    /// `use` is not one the caller accepts.
    #[error("token use not accepted")]
    Use,
}

/// One verification key: a `kid` and its uncompressed P-256 point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    /// The signing key's id (JWT `kid`).
    pub kid: String,
    /// `0x04‖X‖Y`.
    pub public_point: Vec<u8>,
}

impl VerifyingKey {
    /// A key from its id and point.
    pub fn new(kid: impl Into<String>, public_point: Vec<u8>) -> Self {
        Self {
            kid: kid.into(),
            public_point,
        }
    }
}

/// A zone's verification set, newest first. Cheap to clone (shared), so a cached set can be
/// handed to every request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyingKeys {
    keys: Arc<[VerifyingKey]>,
}

impl VerifyingKeys {
    /// The set, newest key first.
    pub fn new(keys: Vec<VerifyingKey>) -> Self {
        Self { keys: keys.into() }
    }

    /// The point of `kid`, if the set holds it.
    pub fn get(&self, kid: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|key| key.kid == kid)
            .map(|key| key.public_point.as_slice())
    }

    /// Whether the set holds `kid`.
    pub fn contains(&self, kid: &str) -> bool {
        self.get(kid).is_some()
    }

    /// The keys, newest first.
    pub fn iter(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.iter()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty (the zone has never minted).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What the verifier requires of a mandate beyond a good signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expectations<'a> {
    /// `ISSUER_URL`: `iss` must equal it.
    pub issuer: &'a str,
    /// `aud` must contain this; the issuer unless configured otherwise.
    pub audience: &'a str,
    /// `zone_id` must equal this (the request's zone).
    pub zone_id: &'a str,
    /// `use` must be one of these.
    pub uses: &'a [MandateUse],
    /// Clock skew tolerated on `exp`, `iat` and `nbf` ([`LEEWAY_SECONDS`] everywhere in the
    /// contract).
    pub leeway_seconds: i64,
}

impl<'a> Expectations<'a> {
    /// Expectations with the audience equal to the issuer and the contract's leeway, as every
    /// Caracal verifier of STS mandates uses.
    pub fn new(issuer: &'a str, zone_id: &'a str, uses: &'a [MandateUse]) -> Self {
        Self {
            issuer,
            audience: issuer,
            zone_id,
            uses,
            leeway_seconds: LEEWAY_SECONDS,
        }
    }

    /// The same expectations with another required audience.
    pub fn with_audience(self, audience: &'a str) -> Self {
        Self { audience, ..self }
    }
}

/// The `kid` of a token whose form and header are acceptable, read before the signature is
/// checked so the caller can fetch the right verification set. Performs the same structural
/// checks as [`verify_mandate`]; trusting the result for anything but key lookup is wrong.
pub fn peek_kid(token: &str) -> Result<String, TokenError> {
    split(token).and_then(|parts| parse_header(parts.header))
}

/// Verifies `token` against the zone's `keys` and `expect` at `now_unix` (seconds) and returns
/// its claims.
pub fn verify_mandate(
    token: &str,
    keys: &VerifyingKeys,
    expect: &Expectations<'_>,
    es256: &dyn Es256,
    now_unix: i64,
) -> Result<MandateClaims, TokenError> {
    let claims = verified_claims(token, keys, expect, es256, now_unix)?;
    typed_claims(claims, expect)
}

/// [`verify_mandate`], also returning the verified payload as JSON, unknown claims included
/// (the STS hands a subject token's claims to the policy contract as they were signed).
pub fn verify_mandate_raw(
    token: &str,
    keys: &VerifyingKeys,
    expect: &Expectations<'_>,
    es256: &dyn Es256,
    now_unix: i64,
) -> Result<(MandateClaims, Value), TokenError> {
    let claims = verified_claims(token, keys, expect, es256, now_unix)?;
    let raw = Value::Object(claims.clone());
    Ok((typed_claims(claims, expect)?, raw))
}

/// Form, header, key, signature and the registered claims; the payload as a JSON object.
fn verified_claims(
    token: &str,
    keys: &VerifyingKeys,
    expect: &Expectations<'_>,
    es256: &dyn Es256,
    now_unix: i64,
) -> Result<Map<String, Value>, TokenError> {
    let parts = split(token)?;
    let kid = parse_header(parts.header)?;
    let point = keys.get(&kid).ok_or(TokenError::UnknownKid)?;

    let signature = decode(parts.signature)?;
    if signature.len() != SIGNATURE_LEN || !es256.verify(point, parts.signing_input, &signature) {
        return Err(TokenError::Signature);
    }

    let payload = decode(parts.payload)?;
    let claims = match serde_json::from_slice::<Value>(&payload) {
        Ok(Value::Object(claims)) => claims,
        _ => return Err(TokenError::Claims("payload is not a JSON object".into())),
    };
    check_registered(&claims, expect, now_unix)?;
    Ok(claims)
}

/// The typed claims, then the Caracal-specific checks (zone, `use`).
fn typed_claims(
    claims: Map<String, Value>,
    expect: &Expectations<'_>,
) -> Result<MandateClaims, TokenError> {
    let claims: MandateClaims = serde_json::from_value(Value::Object(claims))
        .map_err(|err| TokenError::Claims(err.to_string()))?;
    if claims.zone_id != expect.zone_id {
        return Err(TokenError::Zone);
    }
    if !expect.uses.contains(&claims.use_) {
        return Err(TokenError::Use);
    }
    Ok(claims)
}

/// The three segments of a compact JWS, plus the bytes the signature covers.
struct Parts<'t> {
    header: &'t str,
    payload: &'t str,
    signature: &'t str,
    signing_input: &'t [u8],
}

fn split(token: &str) -> Result<Parts<'_>, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge);
    }
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(TokenError::Segments);
    };
    // header + '.' + payload: a prefix of the token, so no copy.
    let signing_input = &token.as_bytes()[..header.len() + 1 + payload.len()];
    Ok(Parts {
        header,
        payload,
        signature,
        signing_input,
    })
}

/// Unpadded base64url with no trailing bits, so each byte string has exactly one encoding and
/// a token cannot be re-spelled into a "different" token with the same signature.
fn decode(segment: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Encoding)
}

fn parse_header(segment: &str) -> Result<String, TokenError> {
    let header = match serde_json::from_slice::<Value>(&decode(segment)?) {
        Ok(Value::Object(header)) => header,
        _ => return Err(TokenError::Header),
    };
    if header.get("alg").and_then(Value::as_str) != Some(ALGORITHM) {
        return Err(TokenError::Algorithm);
    }
    if let Some(typ) = header.get("typ") {
        // RFC 7515 §4.1.9: media type names compare case-insensitively.
        if !typ
            .as_str()
            .is_some_and(|t| t.eq_ignore_ascii_case(TOKEN_TYPE))
        {
            return Err(TokenError::Type);
        }
    }
    if header.contains_key("crit") {
        return Err(TokenError::Critical);
    }
    match header.get("kid").and_then(Value::as_str) {
        Some(kid) if !kid.is_empty() => Ok(kid.to_owned()),
        _ => Err(TokenError::MissingKid),
    }
}

/// `iss`, `aud` and the time window, checked on the raw claims so each failure keeps its own
/// name (a missing `exp` is not just "malformed").
fn check_registered(
    claims: &Map<String, Value>,
    expect: &Expectations<'_>,
    now: i64,
) -> Result<(), TokenError> {
    if claims.get("iss").and_then(Value::as_str) != Some(expect.issuer) {
        return Err(TokenError::Issuer);
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(one)) => one == expect.audience,
        Some(Value::Array(many)) => many.iter().any(|aud| aud.as_str() == Some(expect.audience)),
        _ => false,
    };
    if !audience_ok {
        return Err(TokenError::Audience);
    }

    let exp = numeric_date(claims, "exp")?.ok_or(TokenError::MissingExp)?;
    let leeway = expect.leeway_seconds.max(0);
    if now >= exp.saturating_add(leeway) {
        return Err(TokenError::Expired);
    }
    for name in ["nbf", "iat"] {
        if let Some(at) = numeric_date(claims, name)? {
            if at > now.saturating_add(leeway) {
                return Err(TokenError::NotYetValid);
            }
        }
    }
    Ok(())
}

/// An integer-seconds time claim; absent is `None`, anything but an integer is malformed.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_i64()
            .map(Some)
            .ok_or_else(|| TokenError::Claims(format!("{name} is not an integer"))),
    }
}

/// The Gateway's local check (`spec/coordinator-gateway.md` B3 step 10): compact form, the
/// header rules of [`verify_mandate`] (`kid` required), a `kid` in `keys` and a 64-byte ES256
/// signature over the signing input, and nothing about the claims: issuer, audience, time
/// window and `use` are judged by the STS in the exchange.
pub fn verify_signature_only(
    token: &str,
    keys: &VerifyingKeys,
    es256: &dyn Es256,
) -> Result<(), TokenError> {
    let parts = split(token)?;
    let kid = parse_header(parts.header)?;
    let point = keys.get(&kid).ok_or(TokenError::UnknownKid)?;
    let signature = decode(parts.signature)?;
    if signature.len() != SIGNATURE_LEN || !es256.verify(point, parts.signing_input, &signature) {
        return Err(TokenError::Signature);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::error::CryptoError;
    use crate::mandate::claims::SubType;
    use crate::mandate::jws::encode;
    use crate::ports::Es256Signer;

    /// A stand-in for ES256 with the same shapes (64-byte signatures over the signing input,
    /// bound to the key's point) but no cryptography: enough to test every non-crypto check.
    /// The real algorithm's attack tests live in `adapters/crypto/tests/mandate.rs`.
    struct FakeEs256;

    struct FakeSigner(Vec<u8>);

    fn fake_signature(point: &[u8], message: &[u8]) -> Vec<u8> {
        let digest = |salt: u8| {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(&[salt]);
            ctx.update(point);
            ctx.update(message);
            ctx.finish().as_ref().to_vec()
        };
        [digest(1), digest(2)].concat()
    }

    impl Es256 for FakeEs256 {
        fn generate_pem(&self) -> Result<String, CryptoError> {
            Err(CryptoError::Backend("fake".into()))
        }
        fn load_signer(&self, _pem: &str) -> Result<Arc<dyn Es256Signer>, CryptoError> {
            Err(CryptoError::Backend("fake".into()))
        }
        fn verify(&self, point: &[u8], message: &[u8], signature: &[u8]) -> bool {
            fake_signature(point, message) == signature
        }
    }

    impl Es256Signer for FakeSigner {
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
            Ok(fake_signature(&self.0, message))
        }
        fn public_point(&self) -> &[u8] {
            &self.0
        }
    }

    const ISSUER: &str = "http://sts:8080";
    const NOW: i64 = 1_790_000_000;
    const SESSION: &[MandateUse] = &[MandateUse::Session];

    fn claims() -> MandateClaims {
        MandateClaims {
            iss: ISSUER.into(),
            sub: "app-1".into(),
            aud: vec![ISSUER.into()],
            exp: NOW + 900,
            iat: NOW,
            jti: "j-1".into(),
            zone_id: "z1".into(),
            client_id: "app-1".into(),
            scope: "agent:lifecycle".into(),
            sid: "ar-1".into(),
            root_sid: "ar-1".into(),
            use_: MandateUse::Session,
            sub_type: SubType::Application,
            target: vec!["resource://pipernet".into()],
            agent_session_id: None,
            delegation_edge_id: None,
            source_session_id: None,
            target_session_id: None,
            delegation_path: vec![],
            delegation_chain: vec![],
            hop_count: 0,
            delegation_graph_epoch: 0,
        }
    }

    fn keys() -> VerifyingKeys {
        VerifyingKeys::new(vec![
            VerifyingKey::new("k2", vec![2; 65]),
            VerifyingKey::new("k1", vec![1; 65]),
        ])
    }

    fn mint(kid: &str, point: u8, claims: &MandateClaims) -> String {
        encode(kid, claims, &FakeSigner(vec![point; 65])).expect("encode")
    }

    fn check(token: &str) -> Result<MandateClaims, TokenError> {
        verify_mandate(
            token,
            &keys(),
            &Expectations::new(ISSUER, "z1", SESSION),
            &FakeEs256,
            NOW,
        )
    }

    /// A token with a hand-written payload, signed by k1.
    fn with_payload(payload: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(payload.to_string());
        let input = format!("{header}.{body}");
        let signature = fake_signature(&[1; 65], input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn claims_value() -> Value {
        serde_json::to_value(claims()).expect("json")
    }

    #[test]
    fn a_good_token_verifies_under_either_key() {
        for (kid, point) in [("k1", 1), ("k2", 2)] {
            assert_eq!(check(&mint(kid, point, &claims())), Ok(claims()));
        }
        assert_eq!(peek_kid(&mint("k2", 2, &claims())).as_deref(), Ok("k2"));
    }

    #[test]
    fn raw_claims_keep_unknown_members() {
        let mut payload = claims_value();
        payload["x-extra"] = "kept".into();
        let token = with_payload(&payload);
        let expect = Expectations::new(ISSUER, "z1", SESSION);
        let (claims, raw) =
            verify_mandate_raw(&token, &keys(), &expect, &FakeEs256, NOW).expect("verifies");
        assert_eq!(claims, self::claims());
        assert_eq!(raw, payload);
        let wrong_zone = Expectations::new(ISSUER, "z2", SESSION);
        assert_eq!(
            verify_mandate_raw(&token, &keys(), &wrong_zone, &FakeEs256, NOW),
            Err(TokenError::Zone)
        );
    }

    #[test]
    fn leeway_is_configurable_and_never_negative() {
        let token = mint("k1", 1, &claims());
        let exp = claims().exp;
        let strict = Expectations {
            leeway_seconds: 0,
            ..Expectations::new(ISSUER, "z1", SESSION)
        };
        assert_eq!(
            verify_mandate(&token, &keys(), &strict, &FakeEs256, exp),
            Err(TokenError::Expired)
        );
        assert!(verify_mandate(&token, &keys(), &strict, &FakeEs256, exp - 1).is_ok());
        let negative = Expectations {
            leeway_seconds: -1_000,
            ..strict
        };
        assert!(verify_mandate(&token, &keys(), &negative, &FakeEs256, exp - 1).is_ok());
    }

    #[test]
    fn kid_must_be_known_and_match_the_signing_key() {
        assert_eq!(
            check(&mint("k9", 1, &claims())),
            Err(TokenError::UnknownKid)
        );
        // Signed by k1's key but naming k2.
        assert_eq!(check(&mint("k2", 1, &claims())), Err(TokenError::Signature));
        let empty = VerifyingKeys::default();
        let expect = Expectations::new(ISSUER, "z1", SESSION);
        let token = mint("k1", 1, &claims());
        assert_eq!(
            verify_mandate(&token, &empty, &expect, &FakeEs256, NOW),
            Err(TokenError::UnknownKid)
        );
    }

    #[test]
    fn issuer_audience_zone_and_use_are_enforced() {
        let token = mint("k1", 1, &claims());
        let verify =
            |expect: Expectations<'_>| verify_mandate(&token, &keys(), &expect, &FakeEs256, NOW);
        assert_eq!(
            verify(Expectations::new("http://other", "z1", SESSION)),
            Err(TokenError::Issuer)
        );
        assert_eq!(
            verify(Expectations::new(ISSUER, "z1", SESSION).with_audience("resource://x")),
            Err(TokenError::Audience)
        );
        assert_eq!(
            verify(Expectations::new(ISSUER, "z2", SESSION)),
            Err(TokenError::Zone)
        );
        assert_eq!(
            verify(Expectations::new(ISSUER, "z1", &[MandateUse::Gateway])),
            Err(TokenError::Use)
        );
        assert!(verify(Expectations::new(
            ISSUER,
            "z1",
            &[MandateUse::Gateway, MandateUse::Session]
        ))
        .is_ok());

        let resource = MandateClaims {
            aud: vec!["resource://a".into(), "resource://b".into()],
            ..claims()
        };
        let token = mint("k1", 1, &resource);
        let expect = Expectations::new(ISSUER, "z1", SESSION).with_audience("resource://b");
        assert!(verify_mandate(&token, &keys(), &expect, &FakeEs256, NOW).is_ok());
    }

    #[test]
    fn time_window_has_sixty_seconds_of_leeway() {
        let at = |now: i64, claims: &MandateClaims| {
            verify_mandate(
                &mint("k1", 1, claims),
                &keys(),
                &Expectations::new(ISSUER, "z1", SESSION),
                &FakeEs256,
                now,
            )
        };
        let exp = claims().exp;
        assert!(at(exp + 59, &claims()).is_ok());
        assert_eq!(at(exp + 60, &claims()), Err(TokenError::Expired));

        let future = MandateClaims {
            iat: NOW + 61,
            ..claims()
        };
        assert_eq!(at(NOW, &future), Err(TokenError::NotYetValid));
        let skewed = MandateClaims {
            iat: NOW + 60,
            ..claims()
        };
        assert!(at(NOW, &skewed).is_ok());
    }

    #[test]
    fn nbf_is_checked_when_present() {
        let mut payload = claims_value();
        payload["nbf"] = (NOW + 61).into();
        assert_eq!(check(&with_payload(&payload)), Err(TokenError::NotYetValid));
        payload["nbf"] = (NOW + 60).into();
        assert!(check(&with_payload(&payload)).is_ok());
        payload["nbf"] = "soon".into();
        assert!(matches!(
            check(&with_payload(&payload)),
            Err(TokenError::Claims(_))
        ));
    }

    #[test]
    fn exp_is_required_and_claims_are_typed() {
        let mut payload = claims_value();
        payload.as_object_mut().expect("object").remove("exp");
        assert_eq!(check(&with_payload(&payload)), Err(TokenError::MissingExp));

        let mut payload = claims_value();
        payload["exp"] = "tomorrow".into();
        assert!(matches!(
            check(&with_payload(&payload)),
            Err(TokenError::Claims(_))
        ));

        let mut payload = claims_value();
        payload["hop_count"] = (-1).into();
        assert!(matches!(
            check(&with_payload(&payload)),
            Err(TokenError::Claims(_))
        ));

        assert!(matches!(
            check(&with_payload(&Value::from("not an object"))),
            Err(TokenError::Claims(_))
        ));

        // A single-string audience is fine (RFC 7519), extra claims too.
        let mut payload = claims_value();
        payload["aud"] = ISSUER.into();
        payload["x-extra"] = true.into();
        assert!(check(&with_payload(&payload)).is_ok());
    }

    #[test]
    fn header_rules() {
        let body = URL_SAFE_NO_PAD.encode(claims_value().to_string());
        let signed = |header: &str| {
            let input = format!("{}.{body}", URL_SAFE_NO_PAD.encode(header));
            let signature = fake_signature(&[1; 65], input.as_bytes());
            check(&format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
        };
        assert!(signed(r#"{"alg":"ES256","kid":"k1"}"#).is_ok());
        assert!(signed(r#"{"alg":"ES256","kid":"k1","typ":"jwt"}"#).is_ok());
        assert_eq!(
            signed(r#"{"alg":"ES256","kid":"k1","typ":"at+jwt"}"#),
            Err(TokenError::Type)
        );
        assert_eq!(
            signed(r#"{"alg":"ES256","kid":"k1","crit":["exp"]}"#),
            Err(TokenError::Critical)
        );
        assert_eq!(signed(r#"{"alg":"ES256"}"#), Err(TokenError::MissingKid));
        assert_eq!(
            signed(r#"{"alg":"ES256","kid":""}"#),
            Err(TokenError::MissingKid)
        );
        assert_eq!(
            signed(r#"{"alg":"ES256","kid":7}"#),
            Err(TokenError::MissingKid)
        );
        for alg in [
            r#""none""#,
            r#""HS256""#,
            r#""es256""#,
            r#""ES384""#,
            "null",
        ] {
            assert_eq!(
                signed(&format!(r#"{{"alg":{alg},"kid":"k1"}}"#)),
                Err(TokenError::Algorithm),
                "alg {alg}"
            );
        }
        assert_eq!(signed("[]"), Err(TokenError::Header));
        assert_eq!(signed("not json"), Err(TokenError::Header));
    }

    #[test]
    fn form_and_encoding_rules() {
        let token = mint("k1", 1, &claims());
        let segments: Vec<&str> = token.split('.').collect();
        assert_eq!(check(&segments[..2].join(".")), Err(TokenError::Segments));
        assert_eq!(check(&format!("{token}.")), Err(TokenError::Segments));
        assert_eq!(check(""), Err(TokenError::Segments));
        assert_eq!(
            check(&format!("{}=.{}.{}", segments[0], segments[1], segments[2])),
            Err(TokenError::Encoding)
        );
        assert_eq!(
            check(&format!("{}.{}.{}=", segments[0], segments[1], segments[2])),
            Err(TokenError::Encoding)
        );
        let oversized = format!("{token}{}", "A".repeat(MAX_TOKEN_BYTES));
        assert_eq!(check(&oversized), Err(TokenError::TooLarge));
        assert_eq!(peek_kid(&oversized), Err(TokenError::TooLarge));
    }

    #[test]
    fn signature_only_ignores_the_claims() {
        let verify = |token: &str| verify_signature_only(token, &keys(), &FakeEs256);
        assert_eq!(verify(&mint("k1", 1, &claims())), Ok(()));
        assert_eq!(verify(&mint("k2", 2, &claims())), Ok(()));
        // Claims the full verifier refuses: wrong issuer, expired, not even an object.
        let foreign = MandateClaims {
            iss: "http://other".into(),
            exp: NOW - 10_000,
            zone_id: "z9".into(),
            ..claims()
        };
        assert_eq!(verify(&mint("k1", 1, &foreign)), Ok(()));
        assert_eq!(verify(&with_payload(&Value::from("not an object"))), Ok(()));

        // Form, header, key and signature are still checked.
        assert_eq!(
            verify(&mint("k9", 1, &claims())),
            Err(TokenError::UnknownKid)
        );
        assert_eq!(
            verify(&mint("k2", 1, &claims())),
            Err(TokenError::Signature)
        );
        let token = mint("k1", 1, &claims());
        let segments: Vec<&str> = token.split('.').collect();
        assert_eq!(verify(&segments[..2].join(".")), Err(TokenError::Segments));
        assert_eq!(
            verify(&format!("{}.{}.{}=", segments[0], segments[1], segments[2])),
            Err(TokenError::Encoding)
        );
        let short = URL_SAFE_NO_PAD.encode([0u8; 63]);
        assert_eq!(
            verify(&format!("{}.{}.{short}", segments[0], segments[1])),
            Err(TokenError::Signature)
        );
        let body = segments[1];
        let signed = |header: &str| {
            let input = format!("{}.{body}", URL_SAFE_NO_PAD.encode(header));
            let signature = fake_signature(&[1; 65], input.as_bytes());
            verify(&format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
        };
        assert_eq!(signed(r#"{"alg":"ES256","kid":"k1"}"#), Ok(()));
        assert_eq!(signed(r#"{"alg":"ES256"}"#), Err(TokenError::MissingKid));
        assert_eq!(
            signed(r#"{"alg":"HS256","kid":"k1"}"#),
            Err(TokenError::Algorithm)
        );
        let oversized = format!("{token}{}", "A".repeat(MAX_TOKEN_BYTES));
        assert_eq!(verify(&oversized), Err(TokenError::TooLarge));
    }
}
