//! In-process expiring keys (memory mode: one process, so a local registry is the truth for
//! single-use `jti`s and nonces).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use caracal_core::ports::{Clock, ExpiringKeys, ExpiringKeysError};
use caracal_core::time::Timestamp;

/// Expired keys removed per call at most: purging is lazy and its cost per call is bounded,
/// yet it outpaces growth (each call adds at most one key).
const PURGE_PER_CALL: usize = 64;

/// TTLs are clamped to this ceiling (ten years): an absurd TTL must not overflow the instant
/// arithmetic into the past, which would make a single-use key expire at once.
const MAX_TTL_SECONDS: u64 = 10 * 365 * 24 * 3_600;

#[derive(Debug, Default)]
struct Keys {
    /// Key → expiry instant.
    expiry: HashMap<String, Timestamp>,
    /// The same entries ordered by expiry, so the expired ones are found without a scan.
    by_expiry: BTreeSet<(Timestamp, String)>,
}

impl Keys {
    fn purge(&mut self, now: Timestamp) {
        for _ in 0..PURGE_PER_CALL {
            match self.by_expiry.first() {
                Some((until, _)) if *until <= now => {}
                _ => break,
            }
            if let Some((_, key)) = self.by_expiry.pop_first() {
                self.expiry.remove(&key);
            }
        }
    }

    fn live(&self, key: &str, now: Timestamp) -> bool {
        self.expiry.get(key).is_some_and(|until| *until > now)
    }
}

/// Set-if-absent with a time to live, judged against a [`Clock`]. Live keys are never evicted
/// to make room: forgetting a live `jti` would let a mandate be replayed.
pub struct MemoryExpiringKeys {
    clock: Arc<dyn Clock>,
    keys: Mutex<Keys>,
}

impl MemoryExpiringKeys {
    /// An empty registry whose expiry follows `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            keys: Mutex::new(Keys::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        // Every mutation keeps the two indexes in step before it can panic, so a poisoned lock
        // still guards consistent state.
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl ExpiringKeys for MemoryExpiringKeys {
    async fn set_if_absent(
        &self,
        key: &str,
        _value: &str,
        ttl_seconds: u64,
    ) -> Result<bool, ExpiringKeysError> {
        let now = self.clock.now();
        let mut keys = self.lock();
        keys.purge(now);
        if keys.live(key, now) {
            return Ok(false);
        }
        // An expired entry the purge has not reached yet is replaced in both indexes.
        if let Some(old) = keys.expiry.remove(key) {
            keys.by_expiry.remove(&(old, key.to_owned()));
        }
        let ttl_seconds = ttl_seconds.clamp(1, MAX_TTL_SECONDS) as i64;
        let until = now.plus_millis(ttl_seconds * 1_000);
        keys.expiry.insert(key.to_owned(), until);
        keys.by_expiry.insert((until, key.to_owned()));
        Ok(true)
    }

    async fn exists(&self, key: &str) -> Result<bool, ExpiringKeysError> {
        let now = self.clock.now();
        let mut keys = self.lock();
        keys.purge(now);
        Ok(keys.live(key, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FixedClock;

    fn registry() -> (Arc<FixedClock>, MemoryExpiringKeys) {
        let clock = Arc::new(FixedClock::new(Timestamp::from_unix_micros(
            1_790_000_000_000_000,
        )));
        let keys = MemoryExpiringKeys::new(clock.clone());
        (clock, keys)
    }

    #[tokio::test]
    async fn expiry_follows_the_clock_to_the_millisecond() {
        let (clock, keys) = registry();
        assert_eq!(keys.set_if_absent("k", "v", 2).await.ok(), Some(true));
        clock.advance_millis(1_999);
        assert_eq!(keys.exists("k").await.ok(), Some(true));
        assert_eq!(keys.set_if_absent("k", "v", 2).await.ok(), Some(false));
        clock.advance_millis(1);
        assert_eq!(keys.exists("k").await.ok(), Some(false));
        assert_eq!(keys.set_if_absent("k", "v", 2).await.ok(), Some(true));
    }

    #[tokio::test]
    async fn an_absurd_ttl_does_not_wrap_into_the_past() {
        let (clock, keys) = registry();
        assert_eq!(
            keys.set_if_absent("k", "v", u64::MAX).await.ok(),
            Some(true)
        );
        clock.advance_millis(365 * 24 * 3_600 * 1_000);
        assert_eq!(keys.set_if_absent("k", "v", 1).await.ok(), Some(false));
    }

    #[tokio::test]
    async fn purging_is_lazy_and_bounded_per_call() {
        let (clock, keys) = registry();
        for n in 0..200 {
            assert_eq!(
                keys.set_if_absent(&format!("k{n}"), "v", 1).await.ok(),
                Some(true)
            );
        }
        clock.advance_millis(1_000);
        assert_eq!(keys.exists("k0").await.ok(), Some(false));
        assert_eq!(keys.lock().expiry.len(), 200 - PURGE_PER_CALL);
        for _ in 0..3 {
            let _ = keys.exists("other").await;
        }
        let state = keys.lock();
        assert!(state.expiry.is_empty() && state.by_expiry.is_empty());
    }

    #[tokio::test]
    async fn reclaiming_an_unpurged_expired_key_keeps_the_indexes_in_step() {
        let (clock, keys) = registry();
        for n in 0..(PURGE_PER_CALL + 10) {
            let _ = keys.set_if_absent(&format!("a{n}"), "v", 1).await;
        }
        let _ = keys.set_if_absent("z", "v", 1).await;
        clock.advance_millis(1_000);
        // The purge stops before reaching "z"; reclaiming it must replace its old entry.
        assert_eq!(keys.set_if_absent("z", "v", 5).await.ok(), Some(true));
        let state = keys.lock();
        assert_eq!(state.expiry.len(), state.by_expiry.len());
    }
}
