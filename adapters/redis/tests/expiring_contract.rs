//! The expiring-keys contract against a real Redis (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`). Outside CI an unreachable Redis skips with a message; in CI it fails.

use std::time::{SystemTime, UNIX_EPOCH};

use caracal_core::contract::expiring::run_expiring_keys_contract;
use caracal_core::ports::EventBus;
use caracal_redis::{RedisBus, RedisExpiringKeys};

#[tokio::test]
async fn redis_expiring_keys_honour_the_contract() {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let bus = match RedisBus::connect(&url) {
        Ok(bus) => bus,
        Err(e) => panic!("REDIS_URL is unusable: {e}"),
    };
    if let Err(e) = bus.ping().await {
        if std::env::var_os("CI").is_some() {
            panic!("Redis must be reachable in CI: {e}");
        }
        println!("skipping: Redis unreachable: {e}");
        return;
    }
    let unique = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    run_expiring_keys_contract(&RedisExpiringKeys::new(bus.pool().clone()), &unique).await;
    // Every contract key has a TTL of at most 60 s; nothing to clean up.
}
