//! Application authentication at the token endpoint (`spec/sts.md §3.3`, §7).
//!
//! Argon2id at the contract's cost takes tens of milliseconds, so a verified secret is
//! remembered for an hour as the SHA-256 of the presented secret, keyed by the *stored hash*:
//! rotating the secret changes the key, so an old secret can never ride on the cache. Hits
//! compare in constant time. Misses run the full derivation, whose concurrency the hasher
//! adapter bounds (`STS_SECRET_VERIFY_CONCURRENCY`).
//!
//! Repeated failures per application id are counted in a fixed one-minute window; more than
//! 60 block the id for 60 s. The limiter failing blocks too: authentication fails closed.

use std::sync::Arc;

use crate::digest::sha256_hex;
use crate::error::{Error, ErrorKind};
use crate::expiry_cache::ExpiryCache;
use crate::ports::{ExpiringKeys, PasswordHasher, RateLimiter};
use crate::time::Timestamp;

/// How long a verified secret is trusted without Argon2.
const VERIFIED_TTL_MS: i64 = 3_600_000;
/// Bound on remembered secrets.
const VERIFIED_MAX: usize = 8_192;
/// Failures per window before the id is blocked.
pub const AUTH_FAILURE_LIMIT: u64 = 60;
/// How long a block lasts.
const BLOCK_SECONDS: u64 = 60;

/// `401 access_denied "invalid client credentials"`: every authentication failure looks the
/// same to the caller.
pub fn invalid_client() -> Error {
    Error::new(ErrorKind::Unauthenticated, "access_denied").describe("invalid client credentials")
}

fn auth_rate_limited(description: &str) -> Error {
    Error::new(ErrorKind::RateLimited, "provider_rate_limited").describe(description)
}

/// Secret verification with the verified-secret cache.
pub struct SecretVerifier {
    hasher: Arc<dyn PasswordHasher>,
    verified: ExpiryCache<String, [u8; 32]>,
}

fn digest(secret: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl SecretVerifier {
    /// A verifier over the Argon2id hasher.
    pub fn new(hasher: Arc<dyn PasswordHasher>) -> Self {
        Self {
            hasher,
            verified: ExpiryCache::new(VERIFIED_MAX),
        }
    }

    /// A verifier over the same hasher with an empty cache of its own.
    pub fn fresh(&self) -> Self {
        Self::new(Arc::clone(&self.hasher))
    }

    /// Whether `secret` matches `stored` (`argon2id$<salt>$<hash>`). A missing stored hash
    /// still costs one derivation, so timing does not reveal which applications have secrets.
    pub async fn verify(&self, secret: &str, stored: Option<&str>, now: Timestamp) -> bool {
        let presented = digest(secret);
        let Some(stored) = stored else {
            let _ = self.hasher.verify(secret, "").await;
            return false;
        };
        if let Some(known) = self.verified.get(&stored.to_owned(), now) {
            return crate::digest::constant_time_eq(&known, &presented);
        }
        match self.hasher.verify(secret, stored).await {
            Ok(true) => {
                self.verified.put(
                    stored.to_owned(),
                    presented,
                    now.plus_millis(VERIFIED_TTL_MS),
                    now,
                );
                true
            }
            _ => false,
        }
    }
}

/// The failure counter and block for one application id.
#[derive(Clone)]
pub struct FailureGate {
    limiter: Arc<dyn RateLimiter>,
    flags: Arc<dyn ExpiringKeys>,
}

impl FailureGate {
    /// A gate over the shared limiter and flag store.
    pub fn new(limiter: Arc<dyn RateLimiter>, flags: Arc<dyn ExpiringKeys>) -> Self {
        Self { limiter, flags }
    }

    fn key(application_id: &str) -> String {
        format!("auth-rl:{}", sha256_hex(application_id.trim().as_bytes()))
    }

    /// `429` while the id is blocked (or when the block cannot be read).
    pub async fn check(&self, application_id: &str) -> Result<(), Error> {
        let blocked = format!("{}:blocked", Self::key(application_id));
        match self.flags.exists(&blocked).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(auth_rate_limited("authentication rate limit exceeded")),
            Err(e) => Err(auth_rate_limited("authentication rate limit unavailable")
                .with_detail(e.to_string())),
        }
    }

    /// Counts one failure. Returns the error the caller gets: `invalid client credentials`,
    /// or `429` when this failure crossed the limit (or could not be counted).
    pub async fn fail(&self, application_id: &str, now: Timestamp) -> Error {
        let key = Self::key(application_id);
        let window = now.unix_seconds().div_euclid(60);
        match self.limiter.hit(&key, window).await {
            Ok(count) if count > AUTH_FAILURE_LIMIT => {
                let blocked = format!("{key}:blocked");
                match self.flags.set_if_absent(&blocked, "1", BLOCK_SECONDS).await {
                    Ok(_) => auth_rate_limited("authentication rate limit exceeded"),
                    Err(e) => auth_rate_limited("authentication rate limit unavailable")
                        .with_detail(e.to_string()),
                }
            }
            Ok(_) => invalid_client(),
            Err(e) => auth_rate_limited("authentication rate limit unavailable")
                .with_detail(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::error::CryptoError;

    /// Counts derivations; "hash" of a secret is `h:<secret>`.
    #[derive(Default)]
    struct CountingHasher(AtomicUsize);

    #[async_trait]
    impl PasswordHasher for CountingHasher {
        async fn hash(&self, secret: &str) -> Result<String, CryptoError> {
            Ok(format!("h:{secret}"))
        }
        async fn verify(&self, secret: &str, stored: &str) -> Result<bool, CryptoError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(stored == format!("h:{secret}"))
        }
    }

    #[tokio::test]
    async fn verified_secrets_skip_the_derivation_until_the_hash_changes() {
        let hasher = Arc::new(CountingHasher::default());
        let v = SecretVerifier::new(hasher.clone());
        let now = Timestamp::from_unix_micros(0);
        assert!(v.verify("s", Some("h:s"), now).await);
        assert!(v.verify("s", Some("h:s"), now).await);
        assert_eq!(
            hasher.0.load(Ordering::SeqCst),
            1,
            "second check is a cache hit"
        );
        assert!(
            !v.verify("wrong", Some("h:s"), now).await,
            "a hit still compares"
        );
        assert!(
            !v.verify("s", Some("h:rotated"), now).await,
            "a new hash is a new key"
        );
        let later = now.plus_millis(VERIFIED_TTL_MS + 1);
        assert!(v.verify("s", Some("h:s"), later).await);
        assert_eq!(
            hasher.0.load(Ordering::SeqCst),
            3,
            "expired entries derive again"
        );
        assert!(!v.verify("s", None, now).await);
        assert_eq!(
            hasher.0.load(Ordering::SeqCst),
            4,
            "a missing hash still costs a derivation"
        );
    }
}
