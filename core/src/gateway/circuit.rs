//! B7's circuit breaker in front of the STS: three consecutive counted failures open it for
//! ten seconds (requests fast-fail `503 sts_unavailable`); a success resets the count; the end
//! of the open window does not, so the next counted failure reopens it at once.

use std::sync::{Mutex, MutexGuard};

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
        let mut state = self.lock();
        if now_ms < state.open_until_ms {
            state.fast_failed = state.fast_failed.saturating_add(1);
            return false;
        }
        true
    }

    /// Records the end of an exchange: `counted_failure` per
    /// [`super::exchange::counts_against_circuit`]; anything else is a success.
    pub fn record(&self, counted_failure: bool, now_ms: i64) {
        let mut state = self.lock();
        if !counted_failure {
            state.failures = 0;
            return;
        }
        state.failures = state.failures.saturating_add(1);
        // Opens on reaching the threshold, and again on any counted failure once a previous
        // window has ended (the count is not reset by the window's end). A failure finishing
        // while the circuit is already open leaves the window as it is.
        if state.failures >= FAILURE_THRESHOLD && now_ms >= state.open_until_ms {
            state.open_until_ms = now_ms.saturating_add(OPEN_MILLIS);
            state.opened = state.opened.saturating_add(1);
        }
    }

    /// Whether the breaker is open at `now_ms`.
    pub fn is_open(&self, now_ms: i64) -> bool {
        now_ms < self.lock().open_until_ms
    }

    /// `(times opened, fast-failed requests)` for the metrics.
    pub fn counters(&self) -> (u64, u64) {
        let state = self.lock();
        (state.opened, state.fast_failed)
    }

    /// The state; a panic elsewhere while holding the lock leaves plain counters behind, so
    /// a poisoned lock is recovered rather than propagated.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn opens_after_three_consecutive_failures_and_fast_fails() {
        let breaker = Breaker::new();
        assert!(!breaker.is_open(0));
        assert!(breaker.allow(0));
        breaker.record(true, 100);
        breaker.record(true, 200);
        assert!(!breaker.is_open(200), "two failures keep it closed");
        assert!(breaker.allow(200));
        breaker.record(true, 1_000);
        assert!(breaker.is_open(1_000));
        assert_eq!(breaker.counters(), (1, 0));
        assert!(!breaker.allow(1_000));
        assert!(!breaker.allow(1_000 + OPEN_MILLIS - 1));
        assert!(breaker.is_open(1_000 + OPEN_MILLIS - 1));
        assert_eq!(breaker.counters(), (1, 2), "fast fails are counted");
        assert!(!breaker.is_open(1_000 + OPEN_MILLIS), "the window ends");
        assert!(breaker.allow(1_000 + OPEN_MILLIS));
        assert_eq!(
            breaker.counters(),
            (1, 2),
            "an allowed request is no fast fail"
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = Breaker::new();
        breaker.record(true, 0);
        breaker.record(true, 1);
        breaker.record(false, 2);
        breaker.record(true, 3);
        breaker.record(true, 4);
        assert!(!breaker.is_open(4), "not three consecutive");
        breaker.record(true, 5);
        assert!(breaker.is_open(5));
        assert_eq!(breaker.counters(), (1, 0));
    }

    #[test]
    fn the_next_failure_after_the_window_reopens_at_once() {
        let breaker = Breaker::new();
        for t in 0..3 {
            breaker.record(true, t);
        }
        let reopen_at = 2 + OPEN_MILLIS;
        assert!(breaker.allow(reopen_at));
        breaker.record(true, reopen_at);
        assert!(breaker.is_open(reopen_at), "the count survived the window");
        assert!(breaker.is_open(reopen_at + OPEN_MILLIS - 1));
        assert!(!breaker.is_open(reopen_at + OPEN_MILLIS));
        assert_eq!(breaker.counters(), (2, 0));

        // A success after the window closes it for good: three more failures are needed.
        breaker.record(false, reopen_at + OPEN_MILLIS);
        breaker.record(true, reopen_at + OPEN_MILLIS + 1);
        assert!(!breaker.is_open(reopen_at + OPEN_MILLIS + 1));
        assert_eq!(breaker.counters(), (2, 0));
    }

    #[test]
    fn failures_finishing_inside_the_window_do_not_extend_it() {
        let breaker = Breaker::new();
        for t in 0..3 {
            breaker.record(true, t);
        }
        // In-flight exchanges that started before the circuit opened.
        breaker.record(true, 5_000);
        breaker.record(true, 9_000);
        assert!(!breaker.is_open(2 + OPEN_MILLIS));
        assert_eq!(breaker.counters(), (1, 0));
    }

    #[test]
    fn a_poisoned_lock_is_recovered() {
        let breaker = Arc::new(Breaker::new());
        let poisoner = Arc::clone(&breaker);
        let joined = std::thread::spawn(move || {
            let _guard = poisoner.state.lock().expect("first lock");
            panic!("poison the breaker");
        })
        .join();
        assert!(joined.is_err());
        assert!(breaker.state.is_poisoned());
        for t in 0..3 {
            breaker.record(true, t);
        }
        assert!(!breaker.allow(3));
        assert!(breaker.is_open(3));
        assert_eq!(breaker.counters(), (1, 1));
    }
}
