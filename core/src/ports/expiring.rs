//! Keys that exist for a while and then vanish: the single-use registries (mandate `jti`,
//! Gateway nonces) and short blocks (repeated authentication failures). Redis `SET NX EX` in
//! production, shared by every replica; in-process in memory mode.

use async_trait::async_trait;
use thiserror::Error;

/// The registry could not answer; callers fail closed.
#[derive(Debug, Clone, Error)]
#[error("expiring key store unavailable: {0}")]
pub struct ExpiringKeysError(pub String);

/// Set-if-absent with a time to live.
#[async_trait]
pub trait ExpiringKeys: Send + Sync {
    /// Stores `key = value` for `ttl_seconds` (0 counts as 1: a zero TTL must not leave a
    /// single-use key reusable at once) unless the key already exists.
    /// `true` when this call created it: the first claimant of a `jti` or nonce wins, every
    /// later one (on any replica) gets `false` until the key expires.
    async fn set_if_absent(
        &self,
        key: &str,
        value: &str,
        ttl_seconds: u64,
    ) -> Result<bool, ExpiringKeysError>;
    /// Whether `key` exists (and has not expired).
    async fn exists(&self, key: &str) -> Result<bool, ExpiringKeysError>;
}
