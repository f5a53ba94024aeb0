//! The key-encryption key (`SECRET_STORE_KEK`): parsed once at boot, refused if weak.

use std::fmt;

use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

use crate::wipe::wipe;

/// Length of a KEK in bytes (AES-256).
const KEK_LEN: usize = 32;

/// Length of the KEK fingerprint stored in every envelope.
pub const KEK_ID_LEN: usize = 8;

/// Why a configured KEK was refused. Messages name the problem, never the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KekError {
    /// The value is not 64 characters long (so cannot be 32 hex-encoded bytes).
    #[error("KEK must be exactly 64 hex characters (32 bytes), got {0} characters")]
    WrongLength(usize),
    /// The value has the right length but contains a non-hex character.
    #[error("KEK must contain only hex digits")]
    NotHex,
    /// Every byte is zero: the placeholder left in an unedited config.
    #[error("KEK is weak: all bytes are zero")]
    AllZero,
    /// Every byte is the same value.
    #[error("KEK is weak: a single repeated byte")]
    RepeatedByte,
    /// Each byte is the previous one plus one (`0x00 0x01 0x02 …`).
    #[error("KEK is weak: an ascending byte sequence")]
    Ascending,
    /// Each byte is the previous one minus one (`0xff 0xfe 0xfd …`).
    #[error("KEK is weak: a descending byte sequence")]
    Descending,
    /// Two bytes repeated in turn (`ABAB…`).
    #[error("KEK is weak: an alternating two-byte pattern")]
    Alternating,
    /// ring refused the key bytes; unreachable for 32 bytes, kept so it is an error, not a panic.
    #[error("KEK could not be loaded as an AES-256-GCM key")]
    Unusable,
    /// The operating system's random source failed while generating a key.
    #[error("could not generate a KEK: system random source failed")]
    RandomUnavailable,
}

/// A key-encryption key with its fingerprint. Holds only ring's key schedule after
/// construction, so the raw bytes are not kept around; `Debug` shows the fingerprint only.
pub struct Kek {
    key: LessSafeKey,
    id: [u8; KEK_ID_LEN],
}

impl Kek {
    /// Parses `SECRET_STORE_KEK` (or one `SECRET_STORE_KEK_PREVIOUS` entry): exactly 64 hex
    /// digits. Weak patterns are refused because they are what a hand-typed or placeholder key
    /// looks like, and boot must fail rather than seal secrets under a guessable key.
    pub fn from_hex(hex: &str) -> Result<Kek, KekError> {
        if hex.len() != KEK_LEN * 2 {
            // 64 characters but more bytes means multi-byte characters: not hex.
            let chars = hex.chars().count();
            return Err(if chars == KEK_LEN * 2 {
                KekError::NotHex
            } else {
                KekError::WrongLength(chars)
            });
        }
        let mut bytes = [0u8; KEK_LEN];
        let parsed = crate::hex::decode_into(hex, &mut bytes)
            .ok_or(KekError::NotHex)
            .and_then(|()| Kek::from_bytes(&bytes));
        wipe(&mut bytes);
        parsed
    }

    /// A fresh random KEK for dev mode, where nothing sealed needs to survive a restart.
    pub fn generate() -> Result<Kek, KekError> {
        let rng = SystemRandom::new();
        let mut bytes = [0u8; KEK_LEN];
        // A CSPRNG producing one of the weak patterns is astronomically unlikely; retrying
        // keeps the invariant "every Kek passed the weak-key check" without exceptions.
        let kek = loop {
            rng.fill(&mut bytes)
                .map_err(|_| KekError::RandomUnavailable)?;
            if let Ok(kek) = Kek::from_bytes(&bytes) {
                break kek;
            }
        };
        wipe(&mut bytes);
        Ok(kek)
    }

    fn from_bytes(bytes: &[u8; KEK_LEN]) -> Result<Kek, KekError> {
        check_strength(bytes)?;
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).map_err(|_| KekError::Unusable)?;
        let mut id = [0u8; KEK_ID_LEN];
        id.copy_from_slice(&digest(&SHA256, bytes).as_ref()[..KEK_ID_LEN]);
        Ok(Kek {
            key: LessSafeKey::new(unbound),
            id,
        })
    }

    /// The fingerprint written into every envelope: first 8 bytes of SHA-256(KEK). It lets
    /// `open` pick the right keyring entry during rotation without trying every key.
    pub fn kek_id(&self) -> [u8; KEK_ID_LEN] {
        self.id
    }

    /// The fingerprint as lowercase hex, safe to log at boot to show which key is active.
    pub fn kek_id_hex(&self) -> String {
        crate::hex::encode(&self.id)
    }

    pub(crate) fn key(&self) -> &LessSafeKey {
        &self.key
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("kek_id", &self.kek_id_hex())
            .finish_non_exhaustive()
    }
}

fn check_strength(bytes: &[u8; KEK_LEN]) -> Result<(), KekError> {
    let first = bytes[0];
    let second = bytes[1];
    let steps = || bytes.windows(2).map(|pair| (pair[0], pair[1]));
    if bytes.iter().all(|&b| b == 0) {
        return Err(KekError::AllZero);
    }
    if bytes.iter().all(|&b| b == first) {
        return Err(KekError::RepeatedByte);
    }
    if steps().all(|(prev, next)| next == prev.wrapping_add(1)) {
        return Err(KekError::Ascending);
    }
    if steps().all(|(prev, next)| next == prev.wrapping_sub(1)) {
        return Err(KekError::Descending);
    }
    if bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b == if i % 2 == 0 { first } else { second })
    {
        return Err(KekError::Alternating);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex::encode;

    fn hex_of(f: impl Fn(usize) -> u8) -> String {
        let bytes: Vec<u8> = (0..KEK_LEN).map(f).collect();
        encode(&bytes)
    }

    fn good_hex() -> String {
        let rng = SystemRandom::new();
        let mut bytes = [0u8; KEK_LEN];
        rng.fill(&mut bytes).expect("system random source");
        encode(&bytes)
    }

    #[test]
    fn accepts_a_random_key_in_either_case() {
        let hex = good_hex();
        let lower = Kek::from_hex(&hex).expect("random key is strong");
        let upper = Kek::from_hex(&hex.to_uppercase()).expect("upper-case hex is hex");
        assert_eq!(lower.kek_id(), upper.kek_id());
    }

    #[test]
    fn kek_id_is_the_sha256_prefix() {
        let kek = Kek::from_hex(&hex_of(|i| (i as u8).wrapping_mul(37) ^ 0x5a)).expect("strong");
        let bytes: Vec<u8> = (0..KEK_LEN)
            .map(|i| (i as u8).wrapping_mul(37) ^ 0x5a)
            .collect();
        assert_eq!(kek.kek_id(), digest(&SHA256, &bytes).as_ref()[..KEK_ID_LEN]);
        assert_eq!(kek.kek_id_hex(), encode(&kek.kek_id()));
    }

    #[test]
    fn rejects_wrong_length() {
        assert_eq!(
            Kek::from_hex("").expect_err("must be refused"),
            KekError::WrongLength(0)
        );
        assert_eq!(
            Kek::from_hex(&good_hex()[..62]).expect_err("must be refused"),
            KekError::WrongLength(62)
        );
        let long = format!("{}00", good_hex());
        assert_eq!(
            Kek::from_hex(&long).expect_err("must be refused"),
            KekError::WrongLength(66)
        );
        // A trailing newline from an env file is a length error, not silently trimmed.
        let newline = format!("{}\n", &good_hex()[..63]);
        assert!(Kek::from_hex(&newline).is_err());
    }

    #[test]
    fn rejects_non_hex() {
        let mut hex = good_hex();
        hex.replace_range(10..11, "g");
        assert_eq!(
            Kek::from_hex(&hex).expect_err("must be refused"),
            KekError::NotHex
        );
    }

    #[test]
    fn rejects_every_weak_class() {
        let cases: [(&str, String, KekError); 8] = [
            ("zero", hex_of(|_| 0), KekError::AllZero),
            ("repeated", hex_of(|_| 0x41), KekError::RepeatedByte),
            ("ascending", hex_of(|i| i as u8), KekError::Ascending),
            (
                "ascending, wrapping",
                hex_of(|i| (i as u8).wrapping_add(0xf0)),
                KekError::Ascending,
            ),
            (
                "descending",
                hex_of(|i| 0xff - i as u8),
                KekError::Descending,
            ),
            (
                "descending, wrapping",
                hex_of(|i| 0x05u8.wrapping_sub(i as u8)),
                KekError::Descending,
            ),
            (
                "alternating",
                hex_of(|i| if i % 2 == 0 { 0xde } else { 0xad }),
                KekError::Alternating,
            ),
            (
                "alternating from zero",
                hex_of(|i| if i % 2 == 0 { 0 } else { 1 }),
                KekError::Alternating,
            ),
        ];
        for (name, hex, expected) in cases {
            assert_eq!(
                Kek::from_hex(&hex).expect_err("must be refused"),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn near_patterns_that_break_once_are_accepted() {
        let mut bytes: Vec<u8> = (0..KEK_LEN as u8).collect();
        bytes[17] = 0x99;
        assert!(Kek::from_hex(&encode(&bytes)).is_ok());
    }

    #[test]
    fn errors_and_debug_never_show_the_key() {
        let hex = good_hex();
        let kek = Kek::from_hex(&hex).expect("strong");
        let shown = format!("{kek:?}");
        assert!(shown.contains(&kek.kek_id_hex()));
        assert!(!shown.contains(&hex[..16]));
        let mut bad = hex.clone();
        bad.replace_range(0..1, "x");
        let message = Kek::from_hex(&bad)
            .expect_err("must be refused")
            .to_string();
        assert!(!message.contains(&hex[1..16]));
    }

    #[test]
    fn generated_keys_are_strong_and_distinct() {
        let a = Kek::generate().expect("random source");
        let b = Kek::generate().expect("random source");
        assert_ne!(a.kek_id(), b.kek_id());
    }
}
