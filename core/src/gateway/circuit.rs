//! B7's circuit breaker in front of the STS: three consecutive counted failures open it for
//! ten seconds (requests fast-fail `503 sts_unavailable`); a success resets the count; the end
//! of the open window does not, so the next counted failure reopens it at once.

use std::sync::Mutex;

/// Consecutive counted failures that open the circuit.
pub const FAILURE_THRESHOLD: u32 = 3;
/// How long an opened circuit fast-fails, in milliseconds.
pub const OPEN_MILLIS: i64 = 10_000;

/// The breaker. Shared by every request of one Gateway process.
#[derive(Debug, Default)]
pub struct Breaker {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    open_until_ms: i64,
    opened: u64,
    fast_failed: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a request may call the STS at `now_ms` (false while open; counts a fast fail).
    pub fn allow(&self, now_ms: i64) -> bool {
        let _ = now_ms;
        todo!("issue #5: allow")
    }

    /// Records the end of an exchange: `counted_failure` per
    /// [`super::exchange::counts_against_circuit`]; anything else is a success.
    pub fn record(&self, counted_failure: bool, now_ms: i64) {
        let _ = (counted_failure, now_ms);
        todo!("issue #5: record")
    }

    /// Whether the breaker is open at `now_ms`.
    pub fn is_open(&self, now_ms: i64) -> bool {
        let _ = now_ms;
        todo!("issue #5: is_open")
    }

    /// `(times opened, fast-failed requests)` for the metrics.
    pub fn counters(&self) -> (u64, u64) {
        todo!("issue #5: counters")
    }
}
