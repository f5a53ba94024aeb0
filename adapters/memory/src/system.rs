//! The process's clock and id generator. These are used by every storage mode; the fixed clock
//! lets tests move time explicitly.

use std::sync::Mutex;

use caracal_core::ports::{Clock, IdGenerator};
use caracal_core::time::Timestamp;

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_datetime(chrono::Utc::now())
    }
}

/// A clock that only moves when told to, for deterministic tests of expiry and ordering.
#[derive(Debug)]
pub struct FixedClock(Mutex<Timestamp>);

impl FixedClock {
    /// A clock stopped at `at`.
    pub fn new(at: Timestamp) -> Self {
        Self(Mutex::new(at))
    }

    /// Moves the clock forward.
    pub fn advance_millis(&self, millis: i64) {
        let mut now = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        *now = now.plus_millis(millis);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }
}

/// UUIDv7 ids: time-ordered, as upstream generates them (`spec/api.md §1`); random UUIDv4 for
/// capability ids.
#[derive(Debug, Default, Clone, Copy)]
pub struct UuidV7Ids;

impl IdGenerator for UuidV7Ids {
    fn new_id(&self) -> String {
        uuid::Uuid::now_v7().to_string()
    }

    fn new_random_id(&self) -> String {
        uuid::Uuid::new_v4().to_string()
    }
}
