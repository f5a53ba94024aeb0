//! Fixed-window counters for rate limits. Redis in production (shared by every replica),
//! in-process in memory mode.

use async_trait::async_trait;
use thiserror::Error;

/// The limiter could not count; callers fail closed.
#[derive(Debug, Clone, Error)]
#[error("rate limiter unavailable: {0}")]
pub struct LimiterError(pub String);

/// Counts hits per key and window.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Records one hit on `key` in the window numbered `window` (e.g. the current minute) and
    /// returns the window's count including this hit. Windows expire on their own.
    async fn hit(&self, key: &str, window: i64) -> Result<u64, LimiterError>;
    /// The window's count without recording a hit.
    async fn count(&self, key: &str, window: i64) -> Result<u64, LimiterError>;
    /// Records a hit on each of `hits` and reads each of `peeks`, in one round trip where the
    /// backend allows it (this sits on every request's path). Returns the counts in order.
    async fn hit_and_peek(
        &self,
        hits: &[String],
        peeks: &[String],
        window: i64,
    ) -> Result<(Vec<u64>, Vec<u64>), LimiterError> {
        let mut hit_counts = Vec::with_capacity(hits.len());
        for key in hits {
            hit_counts.push(self.hit(key, window).await?);
        }
        let mut peek_counts = Vec::with_capacity(peeks.len());
        for key in peeks {
            peek_counts.push(self.count(key, window).await?);
        }
        Ok((hit_counts, peek_counts))
    }
}
