//! Argon2id hashing of client secrets and admin tokens (`PasswordHasher`), in the
//! `argon2id$<salt>$<hash>` format the STS verifies (`spec/api.md §3.2`).

use std::num::NonZeroUsize;
use std::sync::Arc;

use argon2::password_hash::Output;
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use caracal_core::error::CryptoError;
use caracal_core::ports::PasswordHasher;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::Semaphore;

use crate::wipe::wipe;

const SCHEME: &str = "argon2id";
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;

/// m = 64 MiB, t = 3, p = 2: the contract's parameters. Evaluated at compile time, so a typo
/// here fails the build instead of the first login.
const PRODUCTION_PARAMS: Params = match Params::new(65_536, 3, 2, Some(HASH_LEN)) {
    Ok(params) => params,
    Err(_) => panic!("production Argon2id parameters are out of range"),
};

/// Argon2id parameters that the library refuses (for example memory below 8 KiB per lane).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Argon2id parameters: {0}")]
pub struct HasherParamsError(String);

/// The production `PasswordHasher`. Each hash costs 64 MiB and real CPU time, so work runs on
/// tokio's blocking pool (never stalling the async workers) behind a semaphore: a burst of
/// logins queues instead of allocating 64 MiB per request until the process is killed.
///
/// The stored format carries no parameters, so `verify` always uses the parameters this hasher
/// was built with; a hasher with other parameters simply reports `false`.
#[derive(Debug, Clone)]
pub struct Argon2idHasher {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    rng: SystemRandom,
}

impl Argon2idHasher {
    /// Production parameters (m = 65536 KiB, t = 3, p = 2, 32-byte output), with at most one
    /// hash in flight per available CPU.
    pub fn new() -> Self {
        Self::from_params(PRODUCTION_PARAMS)
    }

    /// Custom cost parameters (`m_kib` in KiB). Tests use cheap ones, since production costs
    /// make every hash take a noticeable fraction of a second; hashes made with one set of
    /// parameters never verify under another.
    pub fn with_params(m_kib: u32, t: u32, p: u32) -> Result<Self, HasherParamsError> {
        Params::new(m_kib, t, p, Some(HASH_LEN))
            .map(Self::from_params)
            .map_err(|err| HasherParamsError(err.to_string()))
    }

    /// Caps how many hashes run at once (default: the number of CPUs), which also caps the
    /// memory Argon2id takes at `limit` × m.
    pub fn with_concurrency_limit(mut self, limit: NonZeroUsize) -> Self {
        self.permits = Arc::new(Semaphore::new(limit.get()));
        self
    }

    fn from_params(params: Params) -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self {
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            permits: Arc::new(Semaphore::new(cpus)),
            rng: SystemRandom::new(),
        }
    }

    async fn compute(
        &self,
        secret: &str,
        salt: [u8; SALT_LEN],
    ) -> Result<[u8; HASH_LEN], CryptoError> {
        // Take the permit before spawning so waiting callers queue here, not on blocking
        // threads; it moves into the task so it is held even if the caller's future is
        // dropped while the hash still runs.
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| CryptoError::Backend("password hashing is shut down".into()))?;
        let argon2 = self.argon2.clone();
        let mut secret = secret.as_bytes().to_vec();
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut hash = [0u8; HASH_LEN];
            let result = argon2.hash_password_into(&secret, &salt, &mut hash);
            wipe(&mut secret);
            result.map(|()| hash)
        });
        match task.await {
            Ok(Ok(hash)) => Ok(hash),
            Ok(Err(err)) => Err(CryptoError::Backend(format!("argon2id failed: {err}"))),
            Err(_) => Err(CryptoError::Backend("password hashing task failed".into())),
        }
    }
}

impl Default for Argon2idHasher {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl PasswordHasher for Argon2idHasher {
    async fn hash(&self, secret: &str) -> Result<String, CryptoError> {
        let mut salt = [0u8; SALT_LEN];
        self.rng
            .fill(&mut salt)
            .map_err(|_| CryptoError::Backend("system random source failed".into()))?;
        let hash = self.compute(secret, salt).await?;
        Ok(format!(
            "{SCHEME}${}${}",
            STANDARD_NO_PAD.encode(salt),
            STANDARD_NO_PAD.encode(hash)
        ))
    }

    async fn verify(&self, secret: &str, stored: &str) -> Result<bool, CryptoError> {
        let Some((salt, expected)) = parse(stored) else {
            return Ok(false);
        };
        let actual = self.compute(secret, salt).await?;
        // `Output` compares in constant time, so response timing does not reveal how many
        // leading bytes of a guess's hash matched.
        match (Output::new(&actual), Output::new(&expected)) {
            (Ok(actual), Ok(expected)) => Ok(actual == expected),
            _ => Ok(false),
        }
    }
}

/// Splits `argon2id$<salt>$<hash>`; anything else (other scheme, padding, wrong sizes, extra
/// fields) is `None`, which `verify` reports as a non-match rather than an error.
fn parse(stored: &str) -> Option<([u8; SALT_LEN], [u8; HASH_LEN])> {
    let mut fields = stored.split('$');
    let (Some(SCHEME), Some(salt), Some(hash), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return None;
    };
    Some((decode_exact(salt)?, decode_exact(hash)?))
}

fn decode_exact<const N: usize>(b64: &str) -> Option<[u8; N]> {
    STANDARD_NO_PAD.decode(b64).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "cs_correct-horse-battery-staple";

    /// Made by the reference C implementation (libargon2 `argon2id_hash_raw`, v1.3) with the
    /// production parameters and salt 0x10..0x1f, so a mismatch means we no longer interoperate.
    const REFERENCE_PRODUCTION: &str =
        "argon2id$EBESExQVFhcYGRobHB0eHw$akU6WS7qLAGE9hpitrPbvgaqz7zJRj7HIUUE7qEHs3w";
    /// Same, with the cheap test parameters m = 64, t = 1, p = 1.
    const REFERENCE_CHEAP: &str =
        "argon2id$EBESExQVFhcYGRobHB0eHw$GSbwoyxAPKWDTQ47S4nkJCHIGrJ2jLZjTldA00QiSl0";

    fn cheap() -> Argon2idHasher {
        Argon2idHasher::with_params(64, 1, 1).expect("cheap params are valid")
    }

    #[tokio::test]
    async fn hash_has_the_contract_format() {
        let stored = cheap().hash(SECRET).await.expect("hash");
        let fields: Vec<&str> = stored.split('$').collect();
        assert_eq!(fields.len(), 3, "{stored}");
        assert_eq!(fields[0], "argon2id");
        assert!(!stored.contains('='), "no padding: {stored}");
        assert_eq!(
            STANDARD_NO_PAD.decode(fields[1]).expect("salt b64").len(),
            16
        );
        assert_eq!(
            STANDARD_NO_PAD.decode(fields[2]).expect("hash b64").len(),
            32
        );
    }

    #[tokio::test]
    async fn verifies_the_right_secret_only() {
        let hasher = cheap();
        let stored = hasher.hash(SECRET).await.expect("hash");
        assert!(hasher.verify(SECRET, &stored).await.expect("verify"));
        assert!(!hasher.verify("cs_wrong", &stored).await.expect("verify"));
        assert!(!hasher.verify("", &stored).await.expect("verify"));
    }

    #[tokio::test]
    async fn salts_are_fresh_per_hash() {
        let hasher = cheap();
        let first = hasher.hash(SECRET).await.expect("hash");
        let second = hasher.hash(SECRET).await.expect("hash");
        assert_ne!(first, second);
        assert!(hasher.verify(SECRET, &second).await.expect("verify"));
    }

    #[tokio::test]
    async fn matches_the_reference_implementation() {
        let hasher = cheap();
        assert!(hasher
            .verify(SECRET, REFERENCE_CHEAP)
            .await
            .expect("verify"));
        assert!(!hasher
            .verify("cs_other", REFERENCE_CHEAP)
            .await
            .expect("verify"));
    }

    #[tokio::test]
    async fn malformed_stored_values_are_false() {
        let hasher = cheap();
        let good = hasher.hash(SECRET).await.expect("hash");
        let (_, rest) = good.split_once('$').expect("scheme");
        let (salt, hash) = rest.split_once('$').expect("salt");
        let malformed = [
            String::new(),
            "argon2id".to_owned(),
            format!("argon2id${salt}"),
            format!("argon2i${salt}${hash}"),
            format!("ARGON2ID${salt}${hash}"),
            format!("$argon2id${salt}${hash}"),
            format!("argon2id${salt}${hash}$"),
            format!("argon2id${salt}=${hash}"),
            format!("argon2id${salt}${hash}="),
            format!("argon2id${}${hash}", &salt[1..]),
            format!("argon2id${salt}${}", &hash[..hash.len() - 4]),
            format!(
                "argon2id${salt}${}",
                hash.replace(|c: char| c.is_alphanumeric(), "-")
            ),
            format!("argon2id$v=19$m=65536,t=3,p=2${salt}${hash}"),
        ];
        for stored in malformed {
            assert!(
                !hasher.verify(SECRET, &stored).await.expect("verify"),
                "{stored}"
            );
        }
    }

    #[tokio::test]
    async fn other_parameters_do_not_verify() {
        let stored = cheap().hash(SECRET).await.expect("hash");
        let other = Argon2idHasher::with_params(128, 1, 1).expect("valid");
        assert!(!other.verify(SECRET, &stored).await.expect("verify"));
    }

    #[test]
    fn refuses_invalid_params() {
        assert!(Argon2idHasher::with_params(4, 1, 1).is_err());
        assert!(Argon2idHasher::with_params(64, 0, 1).is_err());
        assert!(Argon2idHasher::with_params(64, 1, 0).is_err());
    }

    #[tokio::test]
    async fn hashes_wait_for_a_free_permit() {
        let hasher = cheap().with_concurrency_limit(NonZeroUsize::MIN);
        let held = Arc::clone(&hasher.permits)
            .acquire_owned()
            .await
            .expect("permit");
        let worker = hasher.clone();
        let pending = tokio::spawn(async move { worker.hash(SECRET).await });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!pending.is_finished(), "ran without a permit");
        drop(held);
        let stored = pending.await.expect("task").expect("hash");
        assert!(hasher.verify(SECRET, &stored).await.expect("verify"));
        assert_eq!(hasher.permits.available_permits(), 1, "permit returned");
    }

    /// The one test with production parameters: proves the contract's costs are what we run
    /// and that the result matches the reference implementation byte for byte.
    #[tokio::test]
    async fn production_parameters_match_the_reference() {
        let hasher = Argon2idHasher::new();
        assert!(hasher
            .verify(SECRET, REFERENCE_PRODUCTION)
            .await
            .expect("verify"));
        let stored = hasher.hash(SECRET).await.expect("hash");
        assert!(hasher.verify(SECRET, &stored).await.expect("verify"));
        assert!(!cheap().verify(SECRET, &stored).await.expect("verify"));
    }
}
