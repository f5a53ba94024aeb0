//! ES256 verification that remembers what it found valid.
//!
//! Verification is a pure function of the public point, the message and the signature, so a
//! `true` it answered once it answers forever. [`RememberingEs256`] keeps the inputs of recent
//! positive answers (as a SHA-256 digest of all three) and answers them again without the
//! elliptic-curve work; everything else (a miss, a refusal) is verified afresh, and refusals are
//! never remembered. A hit is exactly what the inner verifier would say, short of a SHA-256
//! collision.
//!
//! What it is for: in one process (`caracal serve all`, `caracal dev`) the Gateway verifies a
//! gateway mandate and, a moment later, the STS verifies the same mandate again as the
//! exchange's subject token (`spec/sts.md §3.4`). Both keep their checks; the second one costs
//! a digest and a lookup instead of ~35 µs. Processes that do not share the instance gain
//! nothing and lose a digest per verification.
//!
//! Bounded: at most [`REMEMBERED_MAX`] answers, each for [`REMEMBERED_FOR`]; when full, the
//! expired ones go, then everything (forgetting is always safe).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caracal_core::error::CryptoError;
use caracal_core::ports::{Es256, Es256Signer};

/// Answers kept at most.
pub const REMEMBERED_MAX: usize = 4096;
/// How long an answer is kept. Correctness does not depend on it (the function is pure); it
/// only bounds what a burst of distinct tokens can hold.
pub const REMEMBERED_FOR: Duration = Duration::from_secs(30);

/// An [`Es256`] whose positive verifications are remembered (see the module documentation).
pub struct RememberingEs256<E> {
    inner: E,
    valid: Mutex<HashMap<[u8; 32], Instant>>,
    capacity: usize,
}

impl<E: Es256> RememberingEs256<E> {
    /// Remembers up to [`REMEMBERED_MAX`] of `inner`'s positive verifications.
    pub fn new(inner: E) -> Self {
        Self::with_capacity(inner, REMEMBERED_MAX)
    }

    fn with_capacity(inner: E, capacity: usize) -> Self {
        Self {
            inner,
            valid: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }
}

impl<E> std::fmt::Debug for RememberingEs256<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RememberingEs256").finish_non_exhaustive()
    }
}

/// SHA-256 of the three inputs, each but the last prefixed with its length, so no two distinct
/// triples share an encoding.
fn key(public_point: &[u8], message: &[u8], signature: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(public_point.len() as u64).to_be_bytes());
    ctx.update(public_point);
    ctx.update(&(message.len() as u64).to_be_bytes());
    ctx.update(message);
    ctx.update(signature);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl<E: Es256> Es256 for RememberingEs256<E> {
    fn generate_pem(&self) -> Result<String, CryptoError> {
        self.inner.generate_pem()
    }

    fn load_signer(&self, pem: &str) -> Result<Arc<dyn Es256Signer>, CryptoError> {
        self.inner.load_signer(pem)
    }

    fn verify(&self, public_point: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let key = key(public_point, message, signature);
        let now = Instant::now();
        {
            let valid = self.valid.lock().unwrap_or_else(|p| p.into_inner());
            if valid.get(&key).is_some_and(|until| now < *until) {
                return true;
            }
        }
        if !self.inner.verify(public_point, message, signature) {
            return false;
        }
        let mut valid = self.valid.lock().unwrap_or_else(|p| p.into_inner());
        if valid.len() >= self.capacity {
            valid.retain(|_, until| now < *until);
            if valid.len() >= self.capacity {
                valid.clear();
            }
        }
        valid.insert(key, now + REMEMBERED_FOR);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::RingEs256;

    /// Counts the verifications that reach the real algorithm.
    struct Counting {
        inner: RingEs256,
        calls: AtomicUsize,
    }

    impl Es256 for Counting {
        fn generate_pem(&self) -> Result<String, CryptoError> {
            self.inner.generate_pem()
        }
        fn load_signer(&self, pem: &str) -> Result<Arc<dyn Es256Signer>, CryptoError> {
            self.inner.load_signer(pem)
        }
        fn verify(&self, public_point: &[u8], message: &[u8], signature: &[u8]) -> bool {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.inner.verify(public_point, message, signature)
        }
    }

    #[test]
    fn a_valid_signature_is_verified_once_and_nothing_else_is_remembered() {
        let es = RememberingEs256::new(Counting {
            inner: RingEs256::new(),
            calls: AtomicUsize::new(0),
        });
        let calls = || es.inner.calls.load(Ordering::SeqCst);
        let signer = es
            .load_signer(&es.generate_pem().expect("pem"))
            .expect("signer");
        let other = es
            .load_signer(&es.generate_pem().expect("pem"))
            .expect("other");
        let point = signer.public_point().to_vec();
        let message = b"header.payload".to_vec();
        let signature = signer.sign(&message).expect("sign");

        assert!(es.verify(&point, &message, &signature));
        assert!(es.verify(&point, &message, &signature));
        assert!(es.verify(&point, &message, &signature));
        assert_eq!(calls(), 1, "answered from memory after the first time");

        // Any change to any input is verified, and refused, afresh every time.
        let mut tampered = signature.clone();
        tampered[10] ^= 1;
        let mut longer = message.clone();
        longer.push(b'x');
        for _ in 0..2 {
            assert!(!es.verify(&point, &message, &tampered));
            assert!(!es.verify(&point, &longer, &signature));
            assert!(!es.verify(other.public_point(), &message, &signature));
        }
        assert_eq!(calls(), 7, "refusals are never remembered");

        // Moving bytes between the message and the signature changes the key.
        let mut shifted = message.clone();
        shifted.push(signature[0]);
        assert!(!es.verify(&point, &shifted, &signature[1..]));
        assert_eq!(calls(), 8);
    }

    #[test]
    fn a_full_memory_forgets_rather_than_grows() {
        let es = RememberingEs256::with_capacity(RingEs256::new(), 8);
        let signer = es
            .load_signer(&es.generate_pem().expect("pem"))
            .expect("signer");
        for i in 0..20 {
            let message = format!("message {i}");
            let signature = signer.sign(message.as_bytes()).expect("sign");
            assert!(es.verify(signer.public_point(), message.as_bytes(), &signature));
            let held = es.valid.lock().expect("lock").len();
            assert!(held <= 8, "{held} answers held after {i}");
        }
    }
}
