//! Expiring keys on Redis: `SET key value NX EX ttl`, so every replica claims single-use `jti`s
//! and nonces in one registry and the first claimant wins.

use async_trait::async_trait;
use caracal_core::ports::{ExpiringKeys, ExpiringKeysError};
use deadpool_redis::Pool;

use crate::shared::SharedConnection;

/// TTLs are clamped to this ceiling (ten years), as the memory adapter does: Redis refuses an
/// `EX` whose milliseconds overflow, and both adapters should accept the same inputs.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3_600;

/// Set-if-absent with a time to live, on Redis.
#[derive(Clone)]
pub struct RedisExpiringKeys {
    conn: SharedConnection,
}

impl RedisExpiringKeys {
    /// A registry on an existing pool (shared with the event bus), over one multiplexed
    /// connection opened with its settings.
    pub fn new(pool: Pool) -> Self {
        Self {
            conn: SharedConnection::new(pool),
        }
    }

    /// The same over connections shared with the other request-path ports (see
    /// [`SharedConnection`]): commands they send together from one thread leave in one write
    /// and come back in one read.
    pub fn on(conn: SharedConnection) -> Self {
        Self { conn }
    }
}

fn unavailable(error: impl std::fmt::Display) -> ExpiringKeysError {
    ExpiringKeysError(error.to_string())
}

#[async_trait]
impl ExpiringKeys for RedisExpiringKeys {
    async fn set_if_absent(
        &self,
        key: &str,
        value: &str,
        ttl_seconds: u64,
    ) -> Result<bool, ExpiringKeysError> {
        // `OK` when set, nil when the key already exists.
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(value)
            .arg("NX")
            .arg("EX")
            .arg(ttl_seconds.clamp(1, MAX_TTL_SECONDS));
        let reply: Option<String> = self
            .conn
            .run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
            .map_err(unavailable)?;
        Ok(reply.is_some())
    }

    async fn exists(&self, key: &str) -> Result<bool, ExpiringKeysError> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(key);
        let count: u64 = self
            .conn
            .run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
            .map_err(unavailable)?;
        Ok(count > 0)
    }
}
