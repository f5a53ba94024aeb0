//! The expiring-keys contract against the in-process registry, on the wall clock (the contract
//! waits out a real TTL so it means the same against Redis).

use std::sync::Arc;

use caracal_core::contract::expiring::run_expiring_keys_contract;
use caracal_memory::{MemoryExpiringKeys, SystemClock};

#[tokio::test]
async fn memory_expiring_keys_honour_the_contract() {
    run_expiring_keys_contract(&MemoryExpiringKeys::new(Arc::new(SystemClock)), "memory").await;
}
