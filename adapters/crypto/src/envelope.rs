//! Envelope encryption of secrets at rest (`SecretSealer`): a fresh AES-256-GCM data key per
//! value, wrapped by the KEK, so rotating the KEK never means re-encrypting bulk data with it and
//! one leaked DEK exposes one value.
//!
//! Layout (`CAE1`, 100 bytes + plaintext):
//! `"CAE1"`(4) ‖ kek_id(8) ‖ dek_nonce(12) ‖ wrapped DEK(32 + 16 tag) ‖ value_nonce(12) ‖
//! value ciphertext(n + 16 tag).

use caracal_core::error::CryptoError;
use caracal_core::ports::SecretSealer;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::kek::{Kek, KEK_ID_LEN};
use crate::wipe::wipe;

const MAGIC: &[u8; 4] = b"CAE1";
const DEK_LEN: usize = 32;
const TAG_LEN: usize = 16;
const WRAPPED_DEK_LEN: usize = DEK_LEN + TAG_LEN;
/// Prefix of the DEK-wrapping AAD: a wrapped DEK cannot be passed off as a sealed value (or the
/// reverse) even if some other use of the KEK ever appears.
const DEK_AAD_LABEL: &[u8] = b"caracal.envelope.dek";
/// Size of an envelope around an empty value; anything shorter is not an envelope.
const MIN_LEN: usize = MAGIC.len() + KEK_ID_LEN + NONCE_LEN + WRAPPED_DEK_LEN + NONCE_LEN + TAG_LEN;

/// The production `SecretSealer`: seals under the current KEK and opens envelopes sealed under
/// the current or any previous KEK (`SECRET_STORE_KEK_PREVIOUS`), so a KEK can be rotated while
/// existing envelopes are re-sealed at leisure.
///
/// Nonces are random. The value nonce is used once under a one-time DEK; the DEK-wrapping nonce
/// is random under a long-lived KEK, which stays within AES-GCM's bound for random 96-bit
/// nonces up to roughly 2^32 seals per KEK, far beyond the number of stored secrets.
#[derive(Debug)]
pub struct EnvelopeSealer {
    current: Kek,
    previous: Vec<Kek>,
    rng: SystemRandom,
}

impl EnvelopeSealer {
    /// A keyring that seals under `current` and also opens envelopes sealed under `previous`.
    pub fn new(current: Kek, previous: impl IntoIterator<Item = Kek>) -> Self {
        Self {
            current,
            previous: previous.into_iter().collect(),
            rng: SystemRandom::new(),
        }
    }

    fn find(&self, kek_id: &[u8; KEK_ID_LEN]) -> Option<&Kek> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|kek| kek.kek_id() == *kek_id)
    }
}

impl SecretSealer for EnvelopeSealer {
    fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut dek = [0u8; DEK_LEN];
        let mut dek_nonce = [0u8; NONCE_LEN];
        let mut value_nonce = [0u8; NONCE_LEN];
        let sealed = self
            .rng
            .fill(&mut dek)
            .and_then(|()| self.rng.fill(&mut dek_nonce))
            .and_then(|()| self.rng.fill(&mut value_nonce))
            .map_err(|_| CryptoError::Backend("system random source failed".into()))
            .and_then(|()| seal_with(&self.current, &dek, dek_nonce, value_nonce, aad, plaintext));
        wipe(&mut dek);
        sealed
    }

    fn open(&self, aad: &str, envelope: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let parts = split(envelope).ok_or(CryptoError::Tampered)?;
        // The kek_id is only a hint for choosing the key; it is also bound into both AADs, so
        // rewriting it to another key of the ring still fails authentication.
        let kek = self.find(parts.kek_id).ok_or(CryptoError::UnknownKey)?;

        let mut wrapped = *parts.wrapped_dek;
        let unwrapped = kek
            .key()
            .open_in_place(
                Nonce::assume_unique_for_key(*parts.dek_nonce),
                Aad::from(dek_aad(parts.kek_id)),
                &mut wrapped,
            )
            .and_then(|dek| UnboundKey::new(&AES_256_GCM, dek));
        wipe(&mut wrapped);
        let dek_key = LessSafeKey::new(unwrapped.map_err(|_| CryptoError::Tampered)?);

        let mut value = parts.value_ciphertext.to_vec();
        let plain_len = dek_key
            .open_in_place(
                Nonce::assume_unique_for_key(*parts.value_nonce),
                Aad::from(value_aad(parts.kek_id, aad)),
                &mut value,
            )
            .map_err(|_| CryptoError::Tampered)?
            .len();
        value.truncate(plain_len);
        Ok(value)
    }
}

fn seal_with(
    kek: &Kek,
    dek: &[u8; DEK_LEN],
    dek_nonce: [u8; NONCE_LEN],
    value_nonce: [u8; NONCE_LEN],
    aad: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let too_large = |_| CryptoError::Backend("value too large to seal".into());
    let kek_id = kek.kek_id();
    let dek_key = UnboundKey::new(&AES_256_GCM, dek)
        .map_err(|_| CryptoError::Backend("could not load the data key".into()))?;
    let dek_key = LessSafeKey::new(dek_key);

    // Full capacity up front: the plaintext DEK is copied into this buffer before being
    // encrypted in place, and a reallocation would leave an unwiped copy on the heap.
    let mut out = Vec::with_capacity(MIN_LEN + plaintext.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&kek_id);
    out.extend_from_slice(&dek_nonce);
    let wrapped_at = out.len();
    out.extend_from_slice(dek);
    let dek_tag = kek.key().seal_in_place_separate_tag(
        Nonce::assume_unique_for_key(dek_nonce),
        Aad::from(dek_aad(&kek_id)),
        &mut out[wrapped_at..],
    );
    let dek_tag = match dek_tag {
        Ok(tag) => tag,
        Err(_) => {
            wipe(&mut out);
            return Err(CryptoError::Backend("could not wrap the data key".into()));
        }
    };
    out.extend_from_slice(dek_tag.as_ref());
    out.extend_from_slice(&value_nonce);
    let value_at = out.len();
    out.extend_from_slice(plaintext);
    let value_tag = dek_key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(value_nonce),
            Aad::from(value_aad(&kek_id, aad)),
            &mut out[value_at..],
        )
        .map_err(too_large)?;
    out.extend_from_slice(value_tag.as_ref());
    Ok(out)
}

fn dek_aad(kek_id: &[u8; KEK_ID_LEN]) -> Vec<u8> {
    [DEK_AAD_LABEL, kek_id].concat()
}

/// kek_id ‖ purpose: the fixed-width kek_id first keeps the concatenation unambiguous, and
/// binding the purpose means an envelope copied to another reference fails to open.
fn value_aad(kek_id: &[u8; KEK_ID_LEN], aad: &str) -> Vec<u8> {
    [kek_id.as_slice(), aad.as_bytes()].concat()
}

struct Parts<'a> {
    kek_id: &'a [u8; KEK_ID_LEN],
    dek_nonce: &'a [u8; NONCE_LEN],
    wrapped_dek: &'a [u8; WRAPPED_DEK_LEN],
    value_nonce: &'a [u8; NONCE_LEN],
    value_ciphertext: &'a [u8],
}

fn split(envelope: &[u8]) -> Option<Parts<'_>> {
    if envelope.len() < MIN_LEN {
        return None;
    }
    let (magic, rest) = envelope.split_first_chunk::<4>()?;
    if magic != MAGIC {
        return None;
    }
    let (kek_id, rest) = rest.split_first_chunk::<KEK_ID_LEN>()?;
    let (dek_nonce, rest) = rest.split_first_chunk::<NONCE_LEN>()?;
    let (wrapped_dek, rest) = rest.split_first_chunk::<WRAPPED_DEK_LEN>()?;
    let (value_nonce, value_ciphertext) = rest.split_first_chunk::<NONCE_LEN>()?;
    Some(Parts {
        kek_id,
        dek_nonce,
        wrapped_dek,
        value_nonce,
        value_ciphertext,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF: &str = "zones/z1/applications/a1/clientSecret";

    fn sealer() -> EnvelopeSealer {
        EnvelopeSealer::new(Kek::generate().expect("random source"), [])
    }

    fn is_tampered(result: Result<Vec<u8>, CryptoError>) -> bool {
        matches!(result, Err(CryptoError::Tampered))
    }

    #[test]
    fn round_trips_including_empty_values() {
        let sealer = sealer();
        for plaintext in [&b""[..], b"s3cret", &[0xffu8; 4096][..]] {
            let envelope = sealer.seal(REF, plaintext).expect("seal");
            assert_eq!(envelope.len(), MIN_LEN + plaintext.len());
            assert_eq!(sealer.open(REF, &envelope).expect("open"), plaintext);
        }
    }

    #[test]
    fn envelope_carries_magic_and_kek_id() {
        let kek = Kek::generate().expect("random source");
        let kek_id = kek.kek_id();
        let envelope = EnvelopeSealer::new(kek, []).seal(REF, b"v").expect("seal");
        assert_eq!(&envelope[..4], b"CAE1");
        assert_eq!(envelope[4..12], kek_id);
    }

    #[test]
    fn wrong_aad_is_tampered() {
        let sealer = sealer();
        let envelope = sealer.seal(REF, b"s3cret").expect("seal");
        assert!(is_tampered(
            sealer.open("zones/z1/applications/a2/clientSecret", &envelope)
        ));
        assert!(is_tampered(sealer.open("", &envelope)));
    }

    #[test]
    fn any_flipped_byte_fails() {
        let sealer = sealer();
        let envelope = sealer.seal(REF, b"s3cret").expect("seal");
        for index in 0..envelope.len() {
            let mut altered = envelope.clone();
            altered[index] ^= 0x01;
            let result = sealer.open(REF, &altered);
            // A changed fingerprint names a key this ring does not hold; everything else is
            // caught by the magic check or by an authentication tag.
            if (4..12).contains(&index) {
                assert!(
                    matches!(result, Err(CryptoError::UnknownKey)),
                    "byte {index}"
                );
            } else {
                assert!(is_tampered(result), "byte {index}");
            }
        }
    }

    #[test]
    fn short_truncated_or_extended_input_is_tampered() {
        let sealer = sealer();
        let envelope = sealer.seal(REF, b"s3cret").expect("seal");
        assert!(is_tampered(sealer.open(REF, b"")));
        assert!(is_tampered(sealer.open(REF, b"CAE1")));
        assert!(is_tampered(sealer.open(REF, &envelope[..MIN_LEN - 1])));
        assert!(is_tampered(
            sealer.open(REF, &envelope[..envelope.len() - 1])
        ));
        let mut extended = envelope.clone();
        extended.push(0);
        assert!(is_tampered(sealer.open(REF, &extended)));
    }

    #[test]
    fn envelope_from_another_kek_is_unknown_key() {
        let envelope = sealer().seal(REF, b"s3cret").expect("seal");
        assert!(matches!(
            sealer().open(REF, &envelope),
            Err(CryptoError::UnknownKey)
        ));
    }

    #[test]
    fn rotation_opens_envelopes_sealed_under_the_previous_key() {
        let mut old_bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut old_bytes)
            .expect("random source");
        let old_hex = crate::hex::encode(&old_bytes);
        let old_sealer = EnvelopeSealer::new(Kek::from_hex(&old_hex).expect("strong"), []);
        let envelope = old_sealer.seal(REF, b"s3cret").expect("seal");

        let new = Kek::generate().expect("random source");
        let new_id = new.kek_id();
        let rotated = EnvelopeSealer::new(new, [Kek::from_hex(&old_hex).expect("strong")]);
        assert_eq!(rotated.open(REF, &envelope).expect("open"), b"s3cret");

        // New seals use the current key, which the old ring cannot open.
        let resealed = rotated.seal(REF, b"s3cret").expect("seal");
        assert_eq!(resealed[4..12], new_id);
        assert!(matches!(
            old_sealer.open(REF, &resealed),
            Err(CryptoError::UnknownKey)
        ));
    }

    #[test]
    fn rewriting_kek_id_to_another_ring_member_is_tampered() {
        let a = Kek::generate().expect("random source");
        let b = Kek::generate().expect("random source");
        let b_id = b.kek_id();
        let ring = EnvelopeSealer::new(a, [b]);
        let mut envelope = ring.seal(REF, b"s3cret").expect("seal");
        envelope[4..12].copy_from_slice(&b_id);
        assert!(is_tampered(ring.open(REF, &envelope)));
    }

    #[test]
    fn sealing_twice_differs() {
        let sealer = sealer();
        let first = sealer.seal(REF, b"s3cret").expect("seal");
        let second = sealer.seal(REF, b"s3cret").expect("seal");
        assert_ne!(first, second);
        // Fresh DEK and both nonces each time, not just a different tag.
        assert_ne!(first[12..24], second[12..24]);
        assert_ne!(first[24..72], second[24..72]);
        assert_ne!(first[72..84], second[72..84]);
    }
}
