//! A bounded map whose entries expire: the one in-process cache shape the services use for
//! verified credentials, looked-up rows and decrypted keys. Expired entries are evicted first
//! when the bound is reached, then the entries closest to expiry, so a flood of distinct keys
//! cannot grow memory and cannot evict fresh entries before stale ones.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use crate::time::Timestamp;

/// Entries with a deadline, at most `capacity` of them.
#[derive(Debug)]
pub struct ExpiryCache<K, V> {
    entries: Mutex<HashMap<K, (V, Timestamp)>>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> ExpiryCache<K, V> {
    /// An empty cache holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, Timestamp)>> {
        // A panic while holding the lock cannot leave a half-written entry (every mutation is
        // one map call), so a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value, if present and not expired at `now`.
    pub fn get(&self, key: &K, now: Timestamp) -> Option<V> {
        let map = self.lock();
        map.get(key)
            .filter(|(_, until)| *until > now)
            .map(|(value, _)| value.clone())
    }

    /// Stores `value` until `until`, making room first if the cache is full.
    pub fn put(&self, key: K, value: V, until: Timestamp, now: Timestamp) {
        let mut map = self.lock();
        if map.len() >= self.capacity && !map.contains_key(&key) {
            map.retain(|_, (_, t)| *t > now);
            if map.len() >= self.capacity {
                // Still full of live entries: drop the eighth closest to expiry, so the cost of
                // a full cache is amortised over many inserts.
                let mut deadlines: Vec<Timestamp> = map.values().map(|(_, t)| *t).collect();
                deadlines.sort_unstable();
                let cut = deadlines[(deadlines.len() / 8).min(deadlines.len() - 1)];
                map.retain(|_, (_, t)| *t > cut);
            }
        }
        map.insert(key, (value, until));
    }

    /// Forgets one entry.
    pub fn remove(&self, key: &K) {
        self.lock().remove(key);
    }

    /// Forgets every entry the predicate selects.
    pub fn remove_where(&self, mut select: impl FnMut(&K) -> bool) {
        self.lock().retain(|k, _| !select(k));
    }

    /// Number of entries, expired ones included.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_unix_micros(ms * 1_000)
    }

    #[test]
    fn entries_expire() {
        let cache = ExpiryCache::new(4);
        cache.put("a", 1, at(100), at(0));
        assert_eq!(cache.get(&"a", at(99)), Some(1));
        assert_eq!(cache.get(&"a", at(100)), None);
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first() {
        let cache = ExpiryCache::new(2);
        cache.put("old", 1, at(10), at(0));
        cache.put("live", 2, at(1_000), at(0));
        cache.put("new", 3, at(1_000), at(50));
        assert_eq!(cache.get(&"live", at(60)), Some(2));
        assert_eq!(cache.get(&"new", at(60)), Some(3));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_full_cache_of_live_entries_stays_bounded() {
        let cache = ExpiryCache::new(16);
        for i in 0..1_000 {
            cache.put(i, i, at(10_000 + i), at(0));
            assert!(cache.len() <= 16);
        }
        assert_eq!(cache.get(&999, at(1)), Some(999));
    }
}
