//! The store contract suite against the memory adapter: the same assertions the Postgres adapter
//! passes, so dev mode and production cannot drift apart.

use caracal_core::contract::store::{run_outbox_queue_contract, run_store_contract};
use caracal_memory::MemoryStore;

#[tokio::test]
async fn memory_store_honours_the_store_contract() {
    let store = MemoryStore::new();
    run_store_contract(&store).await;
    // A second run on the same store must not trip over the first one's rows.
    run_store_contract(&store).await;
}

#[tokio::test]
async fn memory_store_honours_the_outbox_queue_contract() {
    let store = MemoryStore::new();
    run_outbox_queue_contract(&store, &store).await;
}
