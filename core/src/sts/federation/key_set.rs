//! An external issuer's key set (RFC 7517) reduced to the keys a federated `id_token` may be
//! verified with (`spec/sts.md §9`), and the signature check itself.
//!
//! Public-key verification is deterministic and keyless (the keys are public), so, like plain
//! SHA-256, it stays in the domain; ring does the arithmetic.
//!
//! A key is usable when it has a `kid`, its `use` is absent, empty or `sig`, and it is one of:
//! - RSA with a modulus of 2048 to 8192 bits and an odd exponent `e` with 3 ≤ e < 2³¹ (ring's
//!   PKCS#1 v1.5 verifier refuses shorter moduli and even exponents, so such keys could never
//!   verify anything);
//! - EC on P-256 or P-384 whose point lies on the curve.
//!
//! EC keys on P-521 are unusable: ring has no P-521 verifier, so an ES512 token can never be
//! accepted here. Keys that are not usable are skipped; a set with none is an error. When two
//! usable keys share a `kid`, the later one wins (upstream keeps a map keyed by `kid`).

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
use crypto_bigint::{Uint, U256, U384};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value;

/// The algorithms a federated token may be signed with. Symmetric algorithms are excluded
/// categorically: a shared-secret token proves nothing about which party issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    Rs256,
    Rs384,
    Rs512,
    Es256,
    Es384,
    Es512,
}

impl Alg {
    /// The header `alg`, if it is on the allowlist.
    pub(crate) fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "ES512" => Self::Es512,
            _ => return None,
        })
    }
}

/// A usable public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicKey {
    /// Modulus and exponent, big-endian without leading zero bytes.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed P-256 point `0x04‖X‖Y`.
    P256(Vec<u8>),
    /// Uncompressed P-384 point `0x04‖X‖Y`.
    P384(Vec<u8>),
}

impl PublicKey {
    /// Whether `signature` is a valid `alg` signature of `message` under this key. An
    /// algorithm of another family or curve than the key's never verifies.
    pub(crate) fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        match (self, alg) {
            (Self::Rsa { n, e }, Alg::Rs256 | Alg::Rs384 | Alg::Rs512) => {
                let params = match alg {
                    Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    _ => &signature::RSA_PKCS1_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, signature)
                    .is_ok()
            }
            (Self::P256(point), Alg::Es256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            (Self::P384(point), Alg::Es384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// The usable keys of one issuer, by `kid`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeySet {
    keys: BTreeMap<String, PublicKey>,
}

impl KeySet {
    /// The key named `kid`, if it is usable.
    pub(crate) fn get(&self, kid: &str) -> Option<&PublicKey> {
        self.keys.get(kid)
    }

    /// Number of usable keys.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// Reduces a fetched JWKS document to its usable keys; the error is the rejection reason.
pub(crate) fn parse(document: &Value) -> Result<KeySet, &'static str> {
    let Some(entries) = document.get("keys").and_then(Value::as_array) else {
        return Err("issuer key set is not a JWKS document");
    };
    let mut keys = BTreeMap::new();
    for entry in entries {
        if let Some((kid, key)) = usable(entry) {
            keys.insert(kid, key);
        }
    }
    if keys.is_empty() {
        return Err("issuer key set contains no usable signing keys");
    }
    Ok(KeySet { keys })
}

fn text<'a>(entry: &'a Value, name: &str) -> Option<&'a str> {
    entry.get(name).and_then(Value::as_str)
}

fn usable(entry: &Value) -> Option<(String, PublicKey)> {
    let kid = text(entry, "kid").filter(|k| !k.is_empty())?;
    match entry.get("use") {
        None => {}
        Some(Value::String(u)) if u.is_empty() || u == "sig" => {}
        Some(_) => return None,
    }
    let key = match text(entry, "kty")? {
        "RSA" => rsa(entry)?,
        "EC" => ec(entry)?,
        _ => return None,
    };
    Some((kid.to_owned(), key))
}

fn decode(entry: &Value, name: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text(entry, name)?).ok()
}

fn strip_leading_zeros(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[start..].to_vec()
}

fn rsa(entry: &Value) -> Option<PublicKey> {
    let n = strip_leading_zeros(&decode(entry, "n")?);
    let e = strip_leading_zeros(&decode(entry, "e")?);
    let bits = n.first().map_or(0, |top| {
        (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize)
    });
    if !(2048..=8192).contains(&bits) || n.last().is_none_or(|b| b % 2 == 0) {
        return None;
    }
    if e.is_empty() || e.len() > 4 {
        return None;
    }
    let exponent = e.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b));
    if !(3..1 << 31).contains(&exponent) || exponent % 2 == 0 {
        return None;
    }
    Some(PublicKey::Rsa { n, e })
}

/// `y² = x³ − 3x + b (mod p)`, the short Weierstrass form both NIST curves share, with both
/// coordinates reduced (`< p`).
fn on_curve<const L: usize>(x: &Uint<L>, y: &Uint<L>, p: &Uint<L>, b: &Uint<L>) -> bool {
    if x >= p || y >= p {
        return false;
    }
    let params = DynResidueParams::new(p);
    let x = DynResidue::new(x, params);
    let y = DynResidue::new(y, params);
    let b = DynResidue::new(b, params);
    let three = DynResidue::new(&Uint::from_u8(3), params);
    let rhs = x.square() * x - three * x + b;
    y.square().retrieve() == rhs.retrieve()
}

const P256_P: U256 =
    U256::from_be_hex("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff");
const P256_B: U256 =
    U256::from_be_hex("5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b");
const P384_P: U384 = U384::from_be_hex(
    "fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffeffffffff0000000000000000ffffffff",
);
const P384_B: U384 = U384::from_be_hex(
    "b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef",
);

/// A coordinate as exactly `len` big-endian bytes. Shorter values are left-padded (issuers
/// that drop leading zero bytes still name the same point); longer ones are not coordinates.
fn coordinate(entry: &Value, name: &str, len: usize) -> Option<Vec<u8>> {
    let raw = decode(entry, name)?;
    if raw.is_empty() || raw.len() > len {
        return None;
    }
    let mut out = vec![0u8; len - raw.len()];
    out.extend_from_slice(&raw);
    Some(out)
}

fn ec(entry: &Value) -> Option<PublicKey> {
    let len = match text(entry, "crv")? {
        "P-256" => 32,
        "P-384" => 48,
        _ => return None,
    };
    let x = coordinate(entry, "x", len)?;
    let y = coordinate(entry, "y", len)?;
    let ok = if len == 32 {
        on_curve(
            &U256::from_be_slice(&x),
            &U256::from_be_slice(&y),
            &P256_P,
            &P256_B,
        )
    } else {
        on_curve(
            &U384::from_be_slice(&x),
            &U384::from_be_slice(&y),
            &P384_P,
            &P384_B,
        )
    };
    if !ok {
        return None;
    }
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Some(if len == 32 {
        PublicKey::P256(point)
    } else {
        PublicKey::P384(point)
    })
}
