//! In-process fixed-window counters (memory mode: one process, so local counts are the truth).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use caracal_core::ports::{LimiterError, RateLimiter};

/// Entries kept before old windows are swept.
const SWEEP_AT: usize = 100_000;

/// Counters by `(key, window)`, like Redis keys `<key>:<window>`; windows older than the newest
/// seen are swept once the map grows, so memory stays bounded under a flood of keys.
#[derive(Debug, Default)]
pub struct MemoryRateLimiter {
    counts: Mutex<HashMap<(String, i64), u64>>,
}

impl MemoryRateLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn hit(&self, key: &str, window: i64) -> Result<u64, LimiterError> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= SWEEP_AT {
            counts.retain(|(_, w), _| *w >= window - 1);
        }
        let count = counts.entry((key.to_owned(), window)).or_insert(0);
        *count += 1;
        Ok(*count)
    }

    async fn count(&self, key: &str, window: i64) -> Result<u64, LimiterError> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        Ok(counts.get(&(key.to_owned(), window)).copied().unwrap_or(0))
    }
}
