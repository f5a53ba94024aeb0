//! Rate-limit counters on Redis: one `INCR` + `EXPIRE` per hit, pipelined in one round trip,
//! so every replica counts into the same window.

use async_trait::async_trait;
use caracal_core::ports::{LimiterError, RateLimiter};
use deadpool_redis::Pool;

use crate::shared::SharedConnection;

/// Seconds a window's key lives: longer than a one-minute window, so a late hit still counts
/// and keys never pile up.
const WINDOW_TTL_SECS: i64 = 90;

/// Fixed-window counters in Redis, keyed `<key>:<window>`.
#[derive(Clone)]
pub struct RedisRateLimiter {
    conn: SharedConnection,
}

impl RedisRateLimiter {
    /// Counters on an existing pool (shared with the event bus), over one multiplexed
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

fn unavailable(error: impl std::fmt::Display) -> LimiterError {
    LimiterError(error.to_string())
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn hit(&self, key: &str, window: i64) -> Result<u64, LimiterError> {
        let full = format!("{key}:{window}");
        let (count,): (u64,) = self
            .conn
            .run(|mut conn| async move {
                // A plain pipeline, not MULTI/EXEC: one round trip either way, and the two
                // commands leave together on this connection. Were it cut between them, the
                // window key would only miss its expiry, and window keys are never counted
                // again once their window has passed.
                redis::pipe()
                    .incr(&full, 1)
                    .expire(&full, WINDOW_TTL_SECS)
                    .ignore()
                    .query_async(&mut conn)
                    .await
            })
            .await
            .map_err(unavailable)?;
        Ok(count)
    }

    async fn hit_and_peek(
        &self,
        hits: &[String],
        peeks: &[String],
        window: i64,
    ) -> Result<(Vec<u64>, Vec<u64>), LimiterError> {
        // Not MULTI/EXEC, for the reason given in `hit`.
        let mut pipe = redis::pipe();
        for key in hits {
            let full = format!("{key}:{window}");
            pipe.incr(&full, 1).expire(&full, WINDOW_TTL_SECS).ignore();
        }
        for key in peeks {
            pipe.cmd("GET").arg(format!("{key}:{window}"));
        }
        let values: Vec<Option<u64>> = self
            .conn
            .run(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
            .map_err(unavailable)?;
        if values.len() != hits.len() + peeks.len() {
            return Err(LimiterError("unexpected pipeline reply".into()));
        }
        let (h, p) = values.split_at(hits.len());
        Ok((
            h.iter().map(|v| v.unwrap_or(0)).collect(),
            p.iter().map(|v| v.unwrap_or(0)).collect(),
        ))
    }

    async fn count(&self, key: &str, window: i64) -> Result<u64, LimiterError> {
        let full = format!("{key}:{window}");
        let value: Option<u64> = self
            .conn
            .run(|mut conn| async move { redis::cmd("GET").arg(full).query_async(&mut conn).await })
            .await
            .map_err(unavailable)?;
        Ok(value.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Option<Pool> {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        deadpool_redis::Config::from_url(url)
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .ok()
    }

    #[tokio::test]
    async fn counts_per_window_and_expires() {
        let Some(pool) = pool() else { return };
        let limiter = RedisRateLimiter::new(pool.clone());
        let key = format!("caracal:test:rl:{}", std::process::id());
        match limiter.hit(&key, 1).await {
            Ok(1) => {}
            Ok(n) => panic!("fresh window started at {n}"),
            Err(e) if std::env::var_os("CI").is_none() => {
                println!("skipping: Redis unreachable: {e}");
                return;
            }
            Err(e) => panic!("Redis must be reachable in CI: {e}"),
        }
        assert_eq!(limiter.hit(&key, 1).await.ok(), Some(2));
        assert_eq!(limiter.count(&key, 1).await.ok(), Some(2));
        assert_eq!(
            limiter.hit(&key, 2).await.ok(),
            Some(1),
            "a new window starts at one"
        );
        let mut conn = pool.get().await.expect("conn");
        let ttl: i64 = redis::cmd("TTL")
            .arg(format!("{key}:1"))
            .query_async(&mut conn)
            .await
            .expect("ttl");
        assert!(
            (1..=WINDOW_TTL_SECS).contains(&ttl),
            "window keys expire, ttl {ttl}"
        );
        let _: () = redis::cmd("DEL")
            .arg(format!("{key}:1"))
            .arg(format!("{key}:2"))
            .query_async(&mut conn)
            .await
            .expect("del");
    }
}
