//! In-process fixed-window counters (memory mode: one process, so local counts are the truth).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use caracal_core::ports::{LimiterError, RateLimiter};

/// Counters by `(key, window)`; older windows are dropped as newer ones arrive.
#[derive(Debug, Default)]
pub struct MemoryRateLimiter {
    counts: Mutex<HashMap<String, (i64, u64)>>,
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
        if counts.len() > 100_000 {
            // Bound memory under a flood of distinct keys: keep only the current window.
            counts.retain(|_, (w, _)| *w >= window);
        }
        let entry = counts.entry(key.to_owned()).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        entry.1 += 1;
        Ok(entry.1)
    }

    async fn count(&self, key: &str, window: i64) -> Result<u64, LimiterError> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        Ok(counts
            .get(key)
            .filter(|(w, _)| *w == window)
            .map(|(_, c)| *c)
            .unwrap_or(0))
    }
}
