//! Federation's pure parts: which issuer keys are usable, and every check an `id_token` must
//! pass. Tokens are signed for real (ring): an RSA-2048 fixture key generated with
//! `openssl genrsa` and fresh P-256 / P-384 keys. The exchange itself is covered by the STS
//! service tests (`services/sts/tests/federation.rs`).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, RsaKeyPair, RsaPublicKeyComponents, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING, RSA_PKCS1_SHA256, RSA_PKCS1_SHA384, RSA_PKCS1_SHA512,
};
use serde_json::{json, Value};

use super::id_token::{self, Expect};
use super::key_set::{self, KeySet};

/// `openssl genrsa 2048 | openssl pkcs8 -topk8 -nocrypt`.
const RSA_PEM: &str = include_str!("testdata/rsa-2048.pk8.pem");
const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "caracal-app";
const NOW: i64 = 1_790_000_000;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa_key() -> RsaKeyPair {
    let body: String = RSA_PEM
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = STANDARD.decode(body).expect("fixture PEM is base64");
    RsaKeyPair::from_pkcs8(&der).expect("fixture is an RSA PKCS#8 key")
}

fn rsa_jwk(key: &RsaKeyPair, kid: &str) -> Value {
    let public = RsaPublicKeyComponents::<Vec<u8>>::from(key.public());
    json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&public.n), "e": b64(&public.e)})
}

fn ec_key(p384: bool) -> EcdsaKeyPair {
    let rng = SystemRandom::new();
    let alg = if p384 {
        &ECDSA_P384_SHA384_FIXED_SIGNING
    } else {
        &ECDSA_P256_SHA256_FIXED_SIGNING
    };
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("generate");
    EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("load")
}

fn ec_jwk(key: &EcdsaKeyPair, kid: &str, crv: &str) -> Value {
    use ring::signature::KeyPair;
    let point = key.public_key().as_ref();
    let len = (point.len() - 1) / 2;
    json!({"kty": "EC", "kid": kid, "crv": crv, "x": b64(&point[1..=len]), "y": b64(&point[1 + len..])})
}

/// Who signs a test token.
enum Signer<'a> {
    Rsa(&'a RsaKeyPair, &'static dyn ring::signature::RsaEncoding),
    Ec(&'a EcdsaKeyPair),
    /// A fixed signature (for `none`, HS256 and tampering).
    Raw(Vec<u8>),
}

fn token(header: &Value, claims: &Value, signer: &Signer<'_>) -> String {
    let input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(header).expect("header")),
        b64(&serde_json::to_vec(claims).expect("claims"))
    );
    let signature = match signer {
        Signer::Rsa(key, encoding) => {
            let mut sig = vec![0; key.public().modulus_len()];
            key.sign(*encoding, &SystemRandom::new(), input.as_bytes(), &mut sig)
                .expect("rsa sign");
            sig
        }
        Signer::Ec(key) => key
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("ec sign")
            .as_ref()
            .to_vec(),
        Signer::Raw(sig) => sig.clone(),
    };
    format!("{input}.{}", b64(&signature))
}

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "user-42", "exp": NOW + 300, "iat": NOW - 10})
}

fn keys_of(jwks: Value) -> KeySet {
    key_set::parse(&jwks).expect("usable keys")
}

fn check(token: &str, keys: &KeySet) -> Result<String, String> {
    let parsed = id_token::parse(token)?;
    assert_eq!(parsed.issuer(), Some(ISSUER));
    parsed.verify(
        keys,
        &Expect {
            issuer: ISSUER,
            audience: AUDIENCE,
        },
        NOW,
    )
}

/// A key set holding the fixture RSA key as `rsa`, a P-256 key as `p256` and a P-384 key as
/// `p384`, with the keys that sign.
struct Fixture {
    rsa: RsaKeyPair,
    p256: EcdsaKeyPair,
    p384: EcdsaKeyPair,
    keys: KeySet,
}

fn fixture() -> Fixture {
    let rsa = rsa_key();
    let p256 = ec_key(false);
    let p384 = ec_key(true);
    let keys = keys_of(json!({"keys": [
        rsa_jwk(&rsa, "rsa"),
        ec_jwk(&p256, "p256", "P-256"),
        ec_jwk(&p384, "p384", "P-384"),
    ]}));
    Fixture {
        rsa,
        p256,
        p384,
        keys,
    }
}

// --- key sets ------------------------------------------------------------------------------

#[test]
fn usable_keys_need_a_kid_a_signature_use_and_a_supported_shape() {
    let rsa = rsa_key();
    let p256 = ec_key(false);
    let good = rsa_jwk(&rsa, "good");
    let mut no_kid = good.clone();
    no_kid["kid"] = json!("");
    let mut enc = good.clone();
    enc["kid"] = json!("enc");
    enc["use"] = json!("enc");
    let mut empty_use = good.clone();
    empty_use["kid"] = json!("empty-use");
    empty_use["use"] = json!("");
    let mut no_use = ec_jwk(&p256, "no-use", "P-256");
    no_use.as_object_mut().expect("object").remove("use");
    let oct = json!({"kty": "oct", "kid": "hmac", "k": b64(b"secret")});
    let set = keys_of(json!({"keys": [good, no_kid, enc, empty_use, no_use, oct, "junk", 7]}));
    assert_eq!(set.len(), 3);
    for kid in ["good", "empty-use", "no-use"] {
        assert!(set.get(kid).is_some(), "{kid} is usable");
    }
    for kid in ["", "enc", "hmac"] {
        assert!(set.get(kid).is_none(), "{kid:?} is not usable");
    }
}

#[test]
fn rsa_keys_need_a_sane_exponent_and_modulus() {
    let rsa = rsa_key();
    let base = rsa_jwk(&rsa, "k");
    let with = |field: &str, value: Vec<u8>| {
        let mut jwk = base.clone();
        jwk[field] = json!(b64(&value));
        key_set::parse(&json!({"keys": [jwk]}))
    };
    assert!(with("e", vec![3]).is_ok(), "e = 3 is the smallest accepted");
    assert!(
        with("e", vec![0x7f, 0xff, 0xff, 0xff]).is_ok(),
        "e = 2^31 - 1"
    );
    assert!(
        with("e", vec![0, 1, 0, 1]).is_ok(),
        "leading zero bytes are ignored"
    );
    for bad in [
        vec![1],
        vec![2],
        vec![4],
        vec![0x80, 0, 0, 1],
        vec![1, 0, 0, 0, 1],
        vec![],
    ] {
        assert_eq!(
            with("e", bad.clone()).err(),
            Some("issuer key set contains no usable signing keys"),
            "e = {bad:?}"
        );
    }
    let n = URL_SAFE_NO_PAD
        .decode(base["n"].as_str().expect("n"))
        .expect("b64");
    assert!(
        with("n", n[..128].to_vec()).is_err(),
        "a 1024-bit modulus is refused"
    );
    let mut even = n.clone();
    if let Some(last) = even.last_mut() {
        *last &= 0xfe;
    }
    assert!(
        with("n", even).is_err(),
        "an even modulus is no RSA modulus"
    );
    let mut padded = vec![0];
    padded.extend_from_slice(&n);
    assert!(
        with("n", padded).is_ok(),
        "a leading zero byte is tolerated"
    );
    let mut not_b64 = base.clone();
    not_b64["n"] = json!("***");
    assert!(key_set::parse(&json!({"keys": [not_b64]})).is_err());
}

#[test]
fn ec_points_must_lie_on_their_curve() {
    let p256 = ec_key(false);
    let p384 = ec_key(true);
    let good256 = ec_jwk(&p256, "a", "P-256");
    let good384 = ec_jwk(&p384, "b", "P-384");
    assert_eq!(
        keys_of(json!({"keys": [good256.clone(), good384.clone()]})).len(),
        2
    );
    for (good, len) in [(good256, 32), (good384, 48)] {
        let mut y = URL_SAFE_NO_PAD
            .decode(good["y"].as_str().expect("y"))
            .expect("b64");
        y[len - 1] ^= 1;
        let mut off = good.clone();
        off["y"] = json!(b64(&y));
        assert!(
            key_set::parse(&json!({"keys": [off]})).is_err(),
            "{} point off the curve",
            good["crv"]
        );
        let mut wrong_curve = good.clone();
        wrong_curve["crv"] = json!(if len == 32 { "P-384" } else { "P-256" });
        assert!(key_set::parse(&json!({"keys": [wrong_curve]})).is_err());
        let mut too_long = good.clone();
        too_long["x"] = json!(b64(&vec![1; len + 1]));
        assert!(key_set::parse(&json!({"keys": [too_long]})).is_err());
    }
    // P-256's prime itself is not a coordinate (coordinates are reduced).
    let p = [
        0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    let unreduced = json!({"kty": "EC", "kid": "p", "crv": "P-256", "x": b64(&p), "y": b64(&p)});
    assert!(key_set::parse(&json!({"keys": [unreduced]})).is_err());
    // P-521 keys are unusable: ring cannot verify ES512.
    let p521 =
        json!({"kty": "EC", "kid": "big", "crv": "P-521", "x": b64(&[1; 66]), "y": b64(&[2; 66])});
    assert!(key_set::parse(&json!({"keys": [p521]})).is_err());
}

#[test]
fn a_set_without_usable_keys_or_not_a_jwks_is_an_error() {
    assert_eq!(
        key_set::parse(&json!({"keys": []})).err(),
        Some("issuer key set contains no usable signing keys")
    );
    for doc in [json!([]), json!({"keys": {}}), json!("x"), json!({})] {
        assert_eq!(
            key_set::parse(&doc).err(),
            Some("issuer key set is not a JWKS document"),
            "{doc}"
        );
    }
}

#[test]
fn the_later_of_two_keys_with_one_kid_wins() {
    let first = ec_key(false);
    let second = ec_key(false);
    let keys =
        keys_of(json!({"keys": [ec_jwk(&first, "k", "P-256"), ec_jwk(&second, "k", "P-256")]}));
    let header = json!({"alg": "ES256", "kid": "k"});
    assert!(check(&token(&header, &claims(), &Signer::Ec(&second)), &keys).is_ok());
    assert!(check(&token(&header, &claims(), &Signer::Ec(&first)), &keys).is_err());
}

// --- token checks --------------------------------------------------------------------------

#[test]
fn every_allowed_algorithm_verifies() {
    let f = fixture();
    let cases = [
        ("RS256", "rsa", Signer::Rsa(&f.rsa, &RSA_PKCS1_SHA256)),
        ("RS384", "rsa", Signer::Rsa(&f.rsa, &RSA_PKCS1_SHA384)),
        ("RS512", "rsa", Signer::Rsa(&f.rsa, &RSA_PKCS1_SHA512)),
        ("ES256", "p256", Signer::Ec(&f.p256)),
        ("ES384", "p384", Signer::Ec(&f.p384)),
    ];
    for (alg, kid, signer) in cases {
        let t = token(
            &json!({"alg": alg, "kid": kid, "typ": "JWT"}),
            &claims(),
            &signer,
        );
        assert_eq!(check(&t, &f.keys), Ok("user-42".to_owned()), "{alg}");
    }
}

#[test]
fn only_allowlisted_asymmetric_algorithms_reach_a_verifier() {
    let f = fixture();
    let rsa_jwk = rsa_jwk(&f.rsa, "rsa");
    // The classic confusion: HS256 keyed with the issuer's public key bytes.
    let public_bytes = serde_json::to_vec(&rsa_jwk).expect("jwk");
    let input = |alg: &str| {
        format!(
            "{}.{}",
            b64(&serde_json::to_vec(&json!({"alg": alg, "kid": "rsa"})).expect("h")),
            b64(&serde_json::to_vec(&claims()).expect("c"))
        )
    };
    let hmac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public_bytes),
        input("HS256").as_bytes(),
    );
    let hs256 = format!("{}.{}", input("HS256"), b64(hmac.as_ref()));
    assert_eq!(
        check(&hs256, &f.keys),
        Err("signing method \"HS256\" is not accepted".into())
    );
    let none = format!("{}.", input("none"));
    assert_eq!(
        check(&none, &f.keys),
        Err("signing method \"none\" is not accepted".into())
    );
    let no_alg = token(&json!({"kid": "rsa"}), &claims(), &Signer::Raw(vec![1]));
    assert_eq!(
        check(&no_alg, &f.keys),
        Err("signing method \"\" is not accepted".into())
    );
    for alg in ["PS256", "EdDSA", "es256"] {
        let t = token(
            &json!({"alg": alg, "kid": "rsa"}),
            &claims(),
            &Signer::Raw(vec![1]),
        );
        assert!(check(&t, &f.keys).is_err(), "{alg}");
    }
}

#[test]
fn kid_is_required_and_must_name_a_compatible_key() {
    let f = fixture();
    let signer = Signer::Ec(&f.p256);
    let no_kid = token(&json!({"alg": "ES256"}), &claims(), &signer);
    assert_eq!(
        check(&no_kid, &f.keys),
        Err("subject token missing kid header".into())
    );
    let unknown = token(&json!({"alg": "ES256", "kid": "nope"}), &claims(), &signer);
    assert_eq!(
        check(&unknown, &f.keys),
        Err(format!(
            "unknown signing key kid \"nope\" for issuer {ISSUER}"
        ))
    );
    // An ES256 signature presented under the RSA key's kid, or an ES384 one under the P-256
    // key's: the key's family and curve decide, not the header.
    let cross = token(&json!({"alg": "ES256", "kid": "rsa"}), &claims(), &signer);
    assert_eq!(
        check(&cross, &f.keys),
        Err("token signature is invalid".into())
    );
    let curve = token(
        &json!({"alg": "ES384", "kid": "p256"}),
        &claims(),
        &Signer::Ec(&f.p384),
    );
    assert_eq!(
        check(&curve, &f.keys),
        Err("token signature is invalid".into())
    );
    let crit = token(
        &json!({"alg": "ES256", "kid": "p256", "crit": ["b64"]}),
        &claims(),
        &signer,
    );
    assert_eq!(
        check(&crit, &f.keys),
        Err("token header has critical extensions".into())
    );
}

#[test]
fn a_tampered_token_fails_its_signature() {
    let f = fixture();
    let good = token(
        &json!({"alg": "RS256", "kid": "rsa"}),
        &claims(),
        &Signer::Rsa(&f.rsa, &RSA_PKCS1_SHA256),
    );
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut forged = claims();
    forged["sub"] = json!("admin");
    parts[1] = b64(&serde_json::to_vec(&forged).expect("json"));
    assert_eq!(
        check(&parts.join("."), &f.keys),
        Err("token signature is invalid".into())
    );
}

#[test]
fn issuer_audience_and_time_window() {
    let f = fixture();
    let signed = |claims: Value| {
        token(
            &json!({"alg": "ES256", "kid": "p256"}),
            &claims,
            &Signer::Ec(&f.p256),
        )
    };
    let with = |name: &str, value: Value| {
        let mut c = claims();
        c[name] = value;
        check(&signed(c), &f.keys)
    };
    let without = |name: &str| {
        let mut c = claims();
        c.as_object_mut().expect("object").remove(name);
        check(&signed(c), &f.keys)
    };
    assert!(
        with("aud", json!(["other", AUDIENCE])).is_ok(),
        "aud array containing it"
    );
    for bad in [json!("other"), json!(["other"]), json!([]), json!(7)] {
        assert_eq!(with("aud", bad), Err("token has invalid audience".into()));
    }
    assert_eq!(without("aud"), Err("token has invalid audience".into()));
    assert_eq!(
        without("exp"),
        Err("token is missing required claim: exp".into())
    );
    assert_eq!(with("exp", json!(NOW - 61)), Err("token is expired".into()));
    assert_eq!(with("exp", json!(NOW - 60)), Err("token is expired".into()));
    assert!(with("exp", json!(NOW - 59)).is_ok(), "60 s of leeway");
    assert!(
        with("exp", json!((NOW + 300) as f64 + 0.5)).is_ok(),
        "fractional NumericDate"
    );
    assert_eq!(
        with("exp", json!("soon")),
        Err("token claim exp is not a number".into())
    );
    assert_eq!(
        with("iat", json!(NOW + 61)),
        Err("token used before issued".into())
    );
    assert!(with("iat", json!(NOW + 60)).is_ok());
    assert!(without("iat").is_ok(), "iat is optional");
    assert_eq!(
        with("nbf", json!(NOW + 61)),
        Err("token is not valid yet".into())
    );
    assert!(with("nbf", json!(NOW + 30)).is_ok());
    // The issuer row was found by this `iss`, so a mismatch cannot reach `verify` through the
    // exchange; the check still stands on its own.
    let other = id_token::parse(&signed(claims())).expect("parse").verify(
        &f.keys,
        &Expect {
            issuer: "https://other.example",
            audience: AUDIENCE,
        },
        NOW,
    );
    assert_eq!(other, Err("token has invalid issuer".into()));
}

#[test]
fn the_subject_rules_apply_to_the_signed_sub() {
    let f = fixture();
    let header = json!({"alg": "ES256", "kid": "p256"});
    let with_sub = |sub: Value| {
        let mut c = claims();
        c["sub"] = sub;
        check(&token(&header, &c, &Signer::Ec(&f.p256)), &f.keys)
    };
    assert_eq!(with_sub(json!("auth0|abc")), Ok("auth0|abc".to_owned()));
    assert_eq!(
        with_sub(json!(42)),
        Err("subject token carries no sub".into())
    );
    assert_eq!(
        with_sub(json!("caracal:app")),
        Err("sub uses the reserved caracal: prefix".into())
    );
    assert_eq!(
        with_sub(json!("bob\u{202e}")),
        Err("sub contains bidirectional control characters".into())
    );
    // Raw invalid UTF-8 inside the signed payload.
    let payload =
        br#"{"iss":"https://idp.example","aud":"caracal-app","exp":1790000300,"sub":"bob"#
            .iter()
            .copied()
            .chain([0xff])
            .chain(*br#""}"#)
            .collect::<Vec<u8>>();
    let input = format!(
        "{}.{}",
        b64(&serde_json::to_vec(&header).expect("h")),
        b64(&payload)
    );
    let signature = f
        .p256
        .sign(&SystemRandom::new(), input.as_bytes())
        .expect("sign");
    let t = format!("{input}.{}", b64(signature.as_ref()));
    assert_eq!(
        check(&t, &f.keys),
        Err("sub is not valid UTF-8 or contains the unicode replacement character".into())
    );
}

#[test]
fn malformed_tokens_name_what_is_wrong() {
    for (bad, why) in [
        (
            "a.b",
            "malformed subject token: not three dot-separated segments",
        ),
        (
            "a.b.c.d",
            "malformed subject token: not three dot-separated segments",
        ),
        (
            "***.e30.",
            "malformed subject token: a segment is not base64url",
        ),
        (
            "e30.W10.",
            "malformed subject token: the payload is not a JSON object",
        ),
        (
            "W10.e30.",
            "malformed subject token: the header is not a JSON object",
        ),
    ] {
        assert_eq!(id_token::parse(bad).err().as_deref(), Some(why), "{bad}");
    }
    let huge = format!("e30.{}.", "A".repeat(id_token::MAX_ID_TOKEN_BYTES));
    assert!(id_token::parse(&huge).is_err());
    let no_iss = id_token::parse("e30.e30.").expect("parses");
    assert_eq!(no_iss.issuer(), None);
}
