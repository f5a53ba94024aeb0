//! The authority-versions contract against the in-process counters.

use caracal_core::contract::versions::run_authority_versions_contract;
use caracal_memory::MemoryAuthorityVersions;

#[tokio::test]
async fn memory_authority_versions_honour_the_contract() {
    run_authority_versions_contract(&MemoryAuthorityVersions::new(), "memory").await;
}
