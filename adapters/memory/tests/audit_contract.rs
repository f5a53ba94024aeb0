//! The audit ledger contract against the memory ledger.

use std::sync::Arc;

use caracal_core::contract::audit::run_audit_ledger_contract;
use caracal_memory::{MemoryLedger, SystemClock};

#[tokio::test]
async fn memory_ledger_honours_the_contract() {
    run_audit_ledger_contract(Arc::new(MemoryLedger::new(Arc::new(SystemClock)))).await;
}
