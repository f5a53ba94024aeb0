//! Mandate verification against real ES256 keys: the attacks `spec/sts.md §3.4` and RFC 8725
//! name, each refused with its own `TokenError`. (These live here rather than in `core` because
//! a dev-dependency of core on this crate would link two copies of core's traits.)

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use caracal_core::mandate::{
    encode, verify_mandate, Expectations, MandateClaims, MandateUse, SubType, TokenError,
    VerifyingKey, VerifyingKeys, MAX_TOKEN_BYTES,
};
use caracal_core::ports::{Es256, Es256Signer};
use caracal_crypto::RingEs256;
use serde_json::Value;

const ISSUER: &str = "http://sts:8080";
const ZONE: &str = "z1";
const KID: &str = "0190f5c2-7a4b-7cc3-9a7e-1b2c3d4e5f60";
const NOW: i64 = 1_790_000_000;
const GATEWAY: &[MandateUse] = &[MandateUse::Gateway];

struct Fixture {
    es256: RingEs256,
    signer: Arc<dyn Es256Signer>,
    keys: VerifyingKeys,
}

fn fixture() -> Fixture {
    let es256 = RingEs256::new();
    let signer = es256
        .load_signer(&es256.generate_pem().expect("generate"))
        .expect("load");
    let keys = VerifyingKeys::new(vec![VerifyingKey::new(KID, signer.public_point().to_vec())]);
    Fixture {
        es256,
        signer,
        keys,
    }
}

fn claims() -> MandateClaims {
    MandateClaims {
        iss: ISSUER.into(),
        sub: "app-1".into(),
        aud: vec![ISSUER.into()],
        exp: NOW + 900,
        iat: NOW,
        jti: "0190f5c2-0000-7000-8000-000000000001".into(),
        zone_id: ZONE.into(),
        client_id: "app-1".into(),
        scope: "pipernet:read".into(),
        sid: "ar-1".into(),
        root_sid: "ar-1".into(),
        use_: MandateUse::Gateway,
        sub_type: SubType::Application,
        target: vec!["resource://pipernet".into()],
        agent_session_id: Some("s-1".into()),
        delegation_edge_id: None,
        source_session_id: None,
        target_session_id: None,
        delegation_path: vec![],
        delegation_chain: vec![],
        hop_count: 0,
        delegation_graph_epoch: 0,
    }
}

impl Fixture {
    fn mint(&self, claims: &MandateClaims) -> String {
        encode(KID, claims, self.signer.as_ref()).expect("encode")
    }

    fn verify_at(
        &self,
        token: &str,
        expect: &Expectations<'_>,
        now: i64,
    ) -> Result<MandateClaims, TokenError> {
        verify_mandate(token, &self.keys, expect, &self.es256, now)
    }

    fn verify(&self, token: &str) -> Result<MandateClaims, TokenError> {
        self.verify_at(token, &Expectations::new(ISSUER, ZONE, GATEWAY), NOW)
    }

    /// A token with an arbitrary header and payload, ES256-signed with the zone key.
    fn signed_raw(&self, header: &str, payload: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let signature = self.signer.sign(input.as_bytes()).expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

fn payload() -> Value {
    serde_json::to_value(claims()).expect("json")
}

fn segments(token: &str) -> Vec<String> {
    token.split('.').map(str::to_owned).collect()
}

#[test]
fn a_minted_mandate_verifies() {
    let f = fixture();
    assert_eq!(f.verify(&f.mint(&claims())), Ok(claims()));
}

#[test]
fn alg_none_is_refused() {
    let f = fixture();
    let body = URL_SAFE_NO_PAD.encode(payload().to_string());
    for header in [
        format!(r#"{{"alg":"none","kid":"{KID}","typ":"JWT"}}"#),
        format!(r#"{{"alg":"None","kid":"{KID}"}}"#),
        r#"{"alg":"none"}"#.to_owned(),
    ] {
        let unsigned = format!("{}.{body}.", URL_SAFE_NO_PAD.encode(&header));
        assert_eq!(f.verify(&unsigned), Err(TokenError::Algorithm), "{header}");
    }
    // Even with a genuine ES256 signature over it, a header that says `none` is refused.
    let header = format!(r#"{{"alg":"none","kid":"{KID}"}}"#);
    assert_eq!(
        f.verify(&f.signed_raw(&header, &payload())),
        Err(TokenError::Algorithm)
    );
}

#[test]
fn hs256_keyed_with_the_public_key_is_refused() {
    let f = fixture();
    let point = f.signer.public_point().to_vec();
    let jwk = serde_json::to_string(
        &caracal_core::mandate::Jwk::from_public_point(KID, &point).expect("jwk"),
    )
    .expect("json");
    let header = format!(r#"{{"alg":"HS256","kid":"{KID}","typ":"JWT"}}"#);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&header),
        URL_SAFE_NO_PAD.encode(payload().to_string())
    );
    // Every public form of the key an attacker could try as the HMAC secret.
    for secret in [point.as_slice(), jwk.as_bytes()] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, input.as_bytes());
        let forged = format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
        assert_eq!(f.verify(&forged), Err(TokenError::Algorithm));
    }
}

#[test]
fn other_algorithms_are_refused_even_when_the_signature_is_real() {
    let f = fixture();
    for alg in ["ES384", "es256", "RS256", "PS256", "EdDSA"] {
        let header = format!(r#"{{"alg":"{alg}","kid":"{KID}"}}"#);
        assert_eq!(
            f.verify(&f.signed_raw(&header, &payload())),
            Err(TokenError::Algorithm),
            "{alg}"
        );
    }
}

#[test]
fn kid_must_be_present_and_known() {
    let f = fixture();
    assert_eq!(
        f.verify(&f.signed_raw(r#"{"alg":"ES256","typ":"JWT"}"#, &payload())),
        Err(TokenError::MissingKid)
    );
    let unknown = encode("someone-else", &claims(), f.signer.as_ref()).expect("encode");
    assert_eq!(f.verify(&unknown), Err(TokenError::UnknownKid));

    // A key from outside the zone, naming the zone's kid: the signature fails.
    let outsider = f
        .es256
        .load_signer(&f.es256.generate_pem().expect("generate"))
        .expect("load");
    let forged = encode(KID, &claims(), outsider.as_ref()).expect("encode");
    assert_eq!(f.verify(&forged), Err(TokenError::Signature));
}

#[test]
fn issuer_audience_and_zone_must_match() {
    let f = fixture();
    let wrong_issuer = MandateClaims {
        iss: "http://evil:8080".into(),
        ..claims()
    };
    assert_eq!(f.verify(&f.mint(&wrong_issuer)), Err(TokenError::Issuer));

    let wrong_audience = MandateClaims {
        aud: vec!["resource://pipernet".into()],
        ..claims()
    };
    assert_eq!(
        f.verify(&f.mint(&wrong_audience)),
        Err(TokenError::Audience)
    );

    let wrong_zone = MandateClaims {
        zone_id: "z2".into(),
        ..claims()
    };
    assert_eq!(f.verify(&f.mint(&wrong_zone)), Err(TokenError::Zone));

    let session = MandateClaims {
        use_: MandateUse::Session,
        ..claims()
    };
    assert_eq!(f.verify(&f.mint(&session)), Err(TokenError::Use));
}

#[test]
fn expiry_and_not_before_honour_sixty_seconds_of_leeway() {
    let f = fixture();
    let expect = Expectations::new(ISSUER, ZONE, GATEWAY);
    let token = f.mint(&claims());
    let exp = claims().exp;
    assert!(f.verify_at(&token, &expect, exp + 59).is_ok());
    assert_eq!(
        f.verify_at(&token, &expect, exp + 60),
        Err(TokenError::Expired)
    );
    assert_eq!(
        f.verify_at(&token, &expect, exp + 86_400),
        Err(TokenError::Expired)
    );

    // iat ahead of our clock: within the leeway fine, beyond it refused.
    assert!(f.verify_at(&token, &expect, NOW - 60).is_ok());
    assert_eq!(
        f.verify_at(&token, &expect, NOW - 61),
        Err(TokenError::NotYetValid)
    );

    let mut with_nbf = payload();
    with_nbf["nbf"] = (NOW + 61).into();
    let header = format!(r#"{{"alg":"ES256","kid":"{KID}","typ":"JWT"}}"#);
    assert_eq!(
        f.verify(&f.signed_raw(&header, &with_nbf)),
        Err(TokenError::NotYetValid)
    );
    with_nbf["nbf"] = (NOW + 60).into();
    assert!(f.verify(&f.signed_raw(&header, &with_nbf)).is_ok());

    let mut no_exp = payload();
    no_exp.as_object_mut().expect("object").remove("exp");
    assert_eq!(
        f.verify(&f.signed_raw(&header, &no_exp)),
        Err(TokenError::MissingExp)
    );
}

#[test]
fn tampered_payload_fails_the_signature() {
    let f = fixture();
    let parts = segments(&f.mint(&claims()));
    let mut escalated = payload();
    escalated["scope"] = "pipernet:admin".into();
    let swapped = URL_SAFE_NO_PAD.encode(escalated.to_string());
    let token = format!("{}.{swapped}.{}", parts[0], parts[2]);
    assert_eq!(f.verify(&token), Err(TokenError::Signature));

    // Header swapped for an equivalent one: the signature covers the header bytes too.
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"kid":"{KID}","alg":"ES256"}}"#));
    let token = format!("{header}.{}.{}", parts[1], parts[2]);
    assert_eq!(f.verify(&token), Err(TokenError::Signature));
}

#[test]
fn signatures_of_the_wrong_shape_are_refused() {
    let f = fixture();
    let parts = segments(&f.mint(&claims()));
    let raw = URL_SAFE_NO_PAD.decode(&parts[2]).expect("b64");
    assert_eq!(raw.len(), 64);
    let with_signature = |signature: &[u8]| {
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            URL_SAFE_NO_PAD.encode(signature)
        )
    };
    assert_eq!(
        f.verify(&with_signature(&raw[..63])),
        Err(TokenError::Signature)
    );
    assert_eq!(
        f.verify(&with_signature(&[raw.as_slice(), &[0]].concat())),
        Err(TokenError::Signature)
    );
    assert_eq!(f.verify(&with_signature(&[])), Err(TokenError::Signature));
    assert_eq!(
        f.verify(&with_signature(&[0u8; 64])),
        Err(TokenError::Signature)
    );
    // The same R and S in ASN.1 DER (what a careless signer emits) is not ES256 JWS.
    let der = {
        let int = |bytes: &[u8]| {
            let mut v = bytes.to_vec();
            while v.len() > 1 && v[0] == 0 && v[1] < 0x80 {
                v.remove(0);
            }
            if v[0] >= 0x80 {
                v.insert(0, 0);
            }
            let mut out = vec![0x02, v.len() as u8];
            out.extend(v);
            out
        };
        let body = [int(&raw[..32]), int(&raw[32..])].concat();
        [vec![0x30, body.len() as u8], body].concat()
    };
    assert_eq!(f.verify(&with_signature(&der)), Err(TokenError::Signature));
}

#[test]
fn malformed_forms_are_refused() {
    let f = fixture();
    let token = f.mint(&claims());
    let parts = segments(&token);
    assert_eq!(
        f.verify(&format!("{}.{}", parts[0], parts[1])),
        Err(TokenError::Segments)
    );
    assert_eq!(
        f.verify(&format!("{token}.{}", parts[2])),
        Err(TokenError::Segments)
    );
    let not_json = URL_SAFE_NO_PAD.encode("alg=ES256");
    assert_eq!(
        f.verify(&format!("{not_json}.{}.{}", parts[1], parts[2])),
        Err(TokenError::Header)
    );
    assert_eq!(
        f.verify(&format!("!!.{}.{}", parts[1], parts[2])),
        Err(TokenError::Encoding)
    );
    let oversized = format!("{}.{}.{}", parts[0], "A".repeat(MAX_TOKEN_BYTES), parts[2]);
    assert_eq!(f.verify(&oversized), Err(TokenError::TooLarge));
}
