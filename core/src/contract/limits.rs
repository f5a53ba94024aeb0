//! The rate-limiter contract: fixed windows that count exactly, never share counts across keys
//! or windows, and read without counting.

use crate::ports::RateLimiter;

/// Runs every check. `unique` keeps concurrent runs against one backend apart.
pub async fn run_rate_limiter_contract(limiter: &dyn RateLimiter, unique: &str) {
    let key = format!("caracal:contract:rl:{unique}");
    let other = format!("{key}:other");
    let window = 1_000;

    assert_eq!(
        limiter.count(&key, window).await.ok(),
        Some(0),
        "an unseen key counts zero"
    );
    for expected in 1..=3 {
        assert_eq!(
            limiter.hit(&key, window).await.ok(),
            Some(expected),
            "hits count exactly"
        );
    }
    assert_eq!(
        limiter.count(&key, window).await.ok(),
        Some(3),
        "count reads without counting"
    );
    assert_eq!(
        limiter.count(&key, window).await.ok(),
        Some(3),
        "reading twice changes nothing"
    );
    assert_eq!(
        limiter.hit(&other, window).await.ok(),
        Some(1),
        "keys are independent"
    );
    assert_eq!(
        limiter.hit(&key, window + 1).await.ok(),
        Some(1),
        "a new window starts from one"
    );

    let (hits, peeks) = limiter
        .hit_and_peek(
            &[key.clone(), other.clone()],
            &[key.clone(), format!("{key}:never")],
            window,
        )
        .await
        .unwrap_or_else(|e| panic!("hit_and_peek failed: {e}"));
    assert_eq!(hits, vec![4, 2], "hit_and_peek counts each hit key once");
    assert_eq!(
        peeks,
        vec![4, 0],
        "peeks see this call's own hits and count nothing themselves"
    );
}
