//! ES256 (ECDSA P-256 with SHA-256) with ring: zone signing keys and mandate signatures
//! (`spec/sts.md §4–5`).
//!
//! Keys travel as SEC1 PEM (`EC PRIVATE KEY`), the plaintext upstream seals in its secret
//! store, so keys created here and keys created by upstream open either way. Signatures are
//! the fixed-width JWS form (raw R‖S, 64 bytes), never ASN.1 DER.

use std::fmt;
use std::sync::Arc;

use caracal_core::error::CryptoError;
use caracal_core::ports::{Es256, Es256Signer};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};

use crate::pem;
use crate::sec1;
use crate::wipe::wipe;

/// PEM label of an RFC 5915 key.
const SEC1_LABEL: &str = "EC PRIVATE KEY";
/// PEM label of an RFC 5208 / 5958 key.
const PKCS8_LABEL: &str = "PRIVATE KEY";
/// Raw R‖S length.
const SIGNATURE_LEN: usize = 64;

/// The production `Es256`.
#[derive(Clone)]
pub struct RingEs256 {
    rng: SystemRandom,
}

impl RingEs256 {
    /// An ES256 implementation over the system random source (signing is randomised).
    pub fn new() -> Self {
        Self {
            rng: SystemRandom::new(),
        }
    }
}

impl Default for RingEs256 {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RingEs256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingEs256").finish_non_exhaustive()
    }
}

impl Es256 for RingEs256 {
    fn generate_pem(&self) -> Result<String, CryptoError> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.rng)
            .map_err(|_| CryptoError::Backend("system random source failed".into()))?;
        // ring only emits PKCS#8; re-encode as SEC1, the form the secret store holds. ring's
        // document cannot be wiped from here; the copies we make are.
        let parts = sec1::parse_pkcs8(pkcs8.as_ref())
            .ok_or_else(|| CryptoError::Backend("unexpected PKCS#8 layout from ring".into()))?;
        let mut der = sec1::write_sec1(&parts);
        let pem = pem::encode(SEC1_LABEL, &der);
        wipe(&mut der);
        Ok(pem)
    }

    fn load_signer(&self, pem: &str) -> Result<Arc<dyn Es256Signer>, CryptoError> {
        let block = pem::decode(pem).ok_or(CryptoError::MalformedKey("not one PEM block"))?;
        let parts = match block.label.as_str() {
            SEC1_LABEL => sec1::parse_sec1(&block.der),
            PKCS8_LABEL => sec1::parse_pkcs8(&block.der),
            _ => {
                return Err(CryptoError::MalformedKey(
                    "PEM block is not an EC private key",
                ))
            }
        }
        .ok_or(CryptoError::MalformedKey(
            "not a P-256 private key carrying its public key",
        ))?;
        // ring checks the scalar is in range and that the point is the scalar's public key.
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &parts.scalar,
            &parts.point,
            &self.rng,
        )
        .map_err(|_| CryptoError::MalformedKey("private and public key do not form a pair"))?;
        Ok(Arc::new(RingEs256Signer {
            pair,
            rng: self.rng.clone(),
        }))
    }

    fn verify(&self, public_point: &[u8], message: &[u8], signature: &[u8]) -> bool {
        // ring refuses malformed points and wrong-length signatures with an error, not a panic;
        // the length check only spares it the work.
        signature.len() == SIGNATURE_LEN
            && UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public_point)
                .verify(message, signature)
                .is_ok()
    }
}

/// A loaded P-256 key. `Debug` never shows it.
struct RingEs256Signer {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl fmt::Debug for RingEs256Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingEs256Signer").finish_non_exhaustive()
    }
}

impl Es256Signer for RingEs256Signer {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.pair
            .sign(&self.rng, message)
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|_| CryptoError::Backend("ECDSA signing failed".into()))
    }

    fn public_point(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl ecparam -name prime256v1 -genkey -noout` (OpenSSL 3.0.19).
    const OPENSSL_SEC1: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIObO25l9I/uOBvKz5mmYhqwPY36kKumLBidG4u30+C5MoAoGCCqGSM49
AwEHoUQDQgAE6ddgMHvrAIUH0UYbZm9hFH7NG674FiMWm/7fHWSDyP5Q4xkH8yvi
WeO102qaRp+qwNMFtCmaAF6ThXk9qOQ90w==
-----END EC PRIVATE KEY-----
";

    /// The same key through `openssl pkcs8 -topk8 -nocrypt`.
    const OPENSSL_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg5s7bmX0j+44G8rPm
aZiGrA9jfqQq6YsGJ0bi7fT4LkyhRANCAATp12Awe+sAhQfRRhtmb2EUfs0brvgW
Ixab/t8dZIPI/lDjGQfzK+JZ47XTappGn6rA0wW0KZoAXpOFeT2o5D3T
-----END PRIVATE KEY-----
";

    /// Its public point, as `openssl ec -text` prints it.
    const OPENSSL_POINT_HEX: &str = "04e9d760307beb008507d1461b666f61147ecd1baef81623169bfedf1d6483c8fe50e31907f32be259e3b5d36a9a469faac0d305b4299a005e9385793da8e43dd3";

    /// `openssl dgst -sha256 -sign` over `hello`, DER converted to raw R‖S.
    const OPENSSL_SIGNATURE_HEX: &str = "db5fe880e13e128e656b6a7d586b7ab38f58a9fcb0c48539f82dbc58b2272b754b142ae11f47fea795073143588b4d27b2772137f1569f811d4d8f5c7974eeee";

    fn unhex(hex: &str) -> Vec<u8> {
        crate::hex::decode(hex).expect("test hex")
    }

    #[test]
    fn generated_key_round_trips_through_pem() {
        let es256 = RingEs256::new();
        let pem = es256.generate_pem().expect("generate");
        assert!(pem.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
        assert!(pem.ends_with("-----END EC PRIVATE KEY-----\n"));
        let signer = es256.load_signer(&pem).expect("load");
        let point = signer.public_point().to_vec();
        assert_eq!(point.len(), 65);
        assert_eq!(point[0], 0x04);

        let signature = signer.sign(b"header.payload").expect("sign");
        assert_eq!(signature.len(), 64);
        assert!(es256.verify(&point, b"header.payload", &signature));

        // Loading the same PEM again yields the same public key.
        let again = es256.load_signer(&pem).expect("reload");
        assert_eq!(again.public_point(), point.as_slice());
    }

    #[test]
    fn generated_pem_is_what_openssl_reads() {
        let pem = RingEs256::new().generate_pem().expect("generate");
        let block = pem::decode(&pem).expect("pem");
        assert_eq!(block.label, SEC1_LABEL);
        // Same layout and header bytes as the OpenSSL fixture.
        let fixture = pem::decode(OPENSSL_SEC1).expect("fixture");
        assert_eq!(block.der.len(), fixture.der.len());
        assert_eq!(block.der[..7], fixture.der[..7]);
        assert_eq!(block.der[39..56], fixture.der[39..56]);
    }

    #[test]
    fn openssl_sec1_and_pkcs8_fixtures_load() {
        let es256 = RingEs256::new();
        let point = unhex(OPENSSL_POINT_HEX);
        for pem in [OPENSSL_SEC1, OPENSSL_PKCS8] {
            let signer = es256.load_signer(pem).expect("fixture loads");
            assert_eq!(signer.public_point(), point.as_slice());
            let signature = signer.sign(b"m").expect("sign");
            assert!(es256.verify(&point, b"m", &signature));
        }
        // A signature OpenSSL made with the fixture key verifies here.
        assert!(es256.verify(&point, b"hello", &unhex(OPENSSL_SIGNATURE_HEX)));
    }

    #[test]
    fn garbage_pem_is_refused() {
        let es256 = RingEs256::new();
        let public_only = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE6ddgMHvrAIUH0UYbZm9hFH7NG674\nFiMWm/7fHWSDyP5Q4xkH8yviWeO102qaRp+qwNMFtCmaAF6ThXk9qOQ90w==\n-----END PUBLIC KEY-----\n";
        let wrong_label = OPENSSL_PKCS8.replace("PRIVATE KEY", "EC PRIVATE KEY");
        // Flip one bit of the public point: no longer the scalar's key.
        let mut der = pem::decode(OPENSSL_SEC1).expect("fixture").der.clone();
        der[100] ^= 0x01;
        let mismatched = pem::encode(SEC1_LABEL, &der);
        let cases = [
            "",
            "garbage",
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
            public_only,
            wrong_label.as_str(),
            mismatched.as_str(),
        ];
        for case in cases {
            assert!(
                matches!(es256.load_signer(case), Err(CryptoError::MalformedKey(_))),
                "accepted {case:?}"
            );
        }
    }

    #[test]
    fn verify_refuses_wrong_key_tampered_message_and_bad_signatures() {
        let es256 = RingEs256::new();
        let signer = es256
            .load_signer(&es256.generate_pem().expect("generate"))
            .expect("load");
        let other = es256
            .load_signer(&es256.generate_pem().expect("generate"))
            .expect("load");
        let point = signer.public_point();
        let signature = signer.sign(b"message").expect("sign");

        assert!(es256.verify(point, b"message", &signature));
        assert!(!es256.verify(other.public_point(), b"message", &signature));
        assert!(!es256.verify(point, b"messagE", &signature));
        assert!(!es256.verify(point, b"message", &signature[..63]));
        assert!(!es256.verify(point, b"message", &[signature.as_slice(), &[0]].concat()));
        assert!(!es256.verify(point, b"message", &[0u8; 64]));
        assert!(!es256.verify(point, b"message", &[]));
        let mut flipped = signature.clone();
        flipped[40] ^= 0x80;
        assert!(!es256.verify(point, b"message", &flipped));
        // Malformed points: truncated, compressed-looking, off-curve, empty.
        assert!(!es256.verify(&point[..64], b"message", &signature));
        assert!(!es256.verify(&point[..33], b"message", &signature));
        let mut off_curve = point.to_vec();
        off_curve[64] ^= 0x01;
        assert!(!es256.verify(&off_curve, b"message", &signature));
        assert!(!es256.verify(&[], b"message", &signature));
    }
}
