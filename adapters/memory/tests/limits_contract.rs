//! The rate-limiter contract against the in-process limiter.

use caracal_core::contract::limits::run_rate_limiter_contract;
use caracal_memory::MemoryRateLimiter;

#[tokio::test]
async fn memory_rate_limiter_honours_the_contract() {
    run_rate_limiter_contract(&MemoryRateLimiter::new(), "memory").await;
}
