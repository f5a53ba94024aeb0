//! Authority versions on Redis: `GET` and `INCR` on one key per zone, shared by every replica,
//! over the multiplexed request-path connection (one round trip each).

use async_trait::async_trait;
use caracal_core::ids::ZoneId;
use caracal_core::ports::{AuthorityVersions, VersionsError};
use deadpool_redis::Pool;

use crate::shared::SharedConnection;

/// The key holding `zone`'s version.
pub fn version_key(zone: &ZoneId) -> String {
    format!("caracal:authority-version:{zone}")
}

/// Per-zone counters on Redis.
#[derive(Clone)]
pub struct RedisAuthorityVersions {
    conn: SharedConnection,
}

impl RedisAuthorityVersions {
    /// Counters on an existing pool, over one multiplexed connection opened with its settings.
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

fn unavailable(error: impl std::fmt::Display) -> VersionsError {
    VersionsError(error.to_string())
}

#[async_trait]
impl AuthorityVersions for RedisAuthorityVersions {
    async fn current(&self, zone: &ZoneId) -> Result<u64, VersionsError> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(version_key(zone));
        let value: Option<u64> = self
            .conn
            .run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
            .map_err(unavailable)?;
        Ok(value.unwrap_or(0))
    }

    async fn advance(&self, zone: &ZoneId) -> Result<(), VersionsError> {
        let mut cmd = redis::cmd("INCR");
        cmd.arg(version_key(zone));
        let _: u64 = self
            .conn
            .run(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
