//! HMAC-SHA256 under a configured key (`MessageAuthenticator`): signatures on Redis stream
//! entries (`STREAMS_HMAC_KEY`) and the admin audit chain (`AUDIT_HMAC_KEY`).

use std::fmt;

use caracal_core::ports::MessageAuthenticator;
use ring::hmac;

use crate::wipe::wipe;

/// Why a configured HMAC key was refused. Messages never include the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Odd length or a non-hex character.
    #[error("HMAC key must be hex-encoded")]
    NotHex,
    /// Shorter than the configured minimum; a short key makes forged tags guessable offline.
    #[error("HMAC key must be at least {min} bytes ({} hex characters), got {got} bytes", min * 2)]
    TooShort {
        /// Decoded length in bytes.
        got: usize,
        /// Required length in bytes.
        min: usize,
    },
}

/// The production `MessageAuthenticator`. `Debug` never shows the key.
#[derive(Clone)]
pub struct HmacSha256 {
    key: hmac::Key,
}

impl HmacSha256 {
    /// Parses a hex key from configuration, refusing keys under `min_bytes` (32 for
    /// `STREAMS_HMAC_KEY` and `AUDIT_HMAC_KEY`) so a misconfigured deployment fails at boot.
    pub fn from_hex(hex: &str, min_bytes: usize) -> Result<Self, KeyError> {
        let mut bytes = crate::hex::decode(hex).ok_or(KeyError::NotHex)?;
        let checked = if bytes.len() < min_bytes {
            Err(KeyError::TooShort {
                got: bytes.len(),
                min: min_bytes,
            })
        } else {
            Ok(Self::from_bytes(&bytes))
        };
        wipe(&mut bytes);
        checked
    }

    /// A key from raw bytes, with no length floor: for keys that are not configured by hand
    /// (derived or generated) and for RFC test vectors.
    pub fn from_bytes(key: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }
}

impl HmacSha256 {
    /// A fresh random 32-byte key, for throwaway dev-mode keys shared inside one process.
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())?;
        Ok(Self { key })
    }
}

impl fmt::Debug for HmacSha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HmacSha256").finish_non_exhaustive()
    }
}

impl MessageAuthenticator for HmacSha256 {
    fn sign_hex(&self, message: &[u8]) -> String {
        crate::hex::encode(hmac::sign(&self.key, message).as_ref())
    }

    fn verify_hex(&self, message: &[u8], tag_hex: &str) -> bool {
        // ring compares in constant time; the tag is public, so decoding it first is fine.
        crate::hex::decode(tag_hex)
            .is_some_and(|tag| hmac::verify(&self.key, message, &tag).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC4231_CASE2: &str = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
    const MESSAGE: &[u8] = b"what do ya want for nothing?";

    #[test]
    fn rfc4231_test_case_2() {
        let mac = HmacSha256::from_bytes(b"Jefe");
        assert_eq!(mac.sign_hex(MESSAGE), RFC4231_CASE2);
        assert!(mac.verify_hex(MESSAGE, RFC4231_CASE2));
        assert!(mac.verify_hex(MESSAGE, &RFC4231_CASE2.to_uppercase()));
    }

    #[test]
    fn rejects_modified_tags_and_messages() {
        let mac = HmacSha256::from_bytes(b"Jefe");
        let mut flipped = RFC4231_CASE2.to_owned();
        flipped.replace_range(0..1, "4");
        assert!(!mac.verify_hex(MESSAGE, &flipped));
        assert!(!mac.verify_hex(MESSAGE, &RFC4231_CASE2[..62]));
        assert!(!mac.verify_hex(MESSAGE, &format!("{RFC4231_CASE2}00")));
        assert!(!mac.verify_hex(MESSAGE, ""));
        assert!(!mac.verify_hex(MESSAGE, &RFC4231_CASE2.replace('5', "z")));
        assert!(!mac.verify_hex(b"what do ya want for nothing!", RFC4231_CASE2));
        assert!(!HmacSha256::from_bytes(b"Jeff").verify_hex(MESSAGE, RFC4231_CASE2));
    }

    #[test]
    fn from_hex_enforces_the_minimum() {
        let key = "0b".repeat(32);
        let mac = HmacSha256::from_hex(&key, 32).expect("32 bytes");
        assert_eq!(
            mac.sign_hex(MESSAGE),
            HmacSha256::from_bytes(&[0x0b; 32]).sign_hex(MESSAGE)
        );
        assert_eq!(
            HmacSha256::from_hex(&key[..62], 32).expect_err("31 bytes"),
            KeyError::TooShort { got: 31, min: 32 }
        );
        assert_eq!(
            HmacSha256::from_hex(&key[..63], 32).expect_err("odd"),
            KeyError::NotHex
        );
        assert_eq!(
            HmacSha256::from_hex(&"zz".repeat(32), 32).expect_err("hex"),
            KeyError::NotHex
        );
        let message = HmacSha256::from_hex(&key[..62], 32)
            .expect_err("short")
            .to_string();
        assert!(!message.contains("0b0b"), "{message}");
    }

    #[test]
    fn debug_hides_the_key() {
        let shown = format!("{:?}", HmacSha256::from_bytes(b"Jefe"));
        assert!(!shown.contains("Jefe"));
    }
}
