//! The event-bus contract against the in-process bus: one test per case, so a failure names the
//! semantics that drifted.

use caracal_core::contract::events;
use caracal_memory::MemoryBus;

macro_rules! contract_case {
    ($($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let bus = MemoryBus::new();
                events::$case(&bus, "memory").await;
            }
        )*
    };
}

contract_case!(
    publish_returns_increasing_ids,
    publish_rejects_entry_without_fields,
    ensure_group_is_idempotent,
    group_starts_at_beginning_of_stream,
    read_group_delivers_in_order_with_exact_fields,
    read_group_honours_count,
    read_group_does_not_redeliver,
    consumers_in_one_group_split_entries,
    every_group_sees_every_entry,
    ack_is_idempotent_and_final,
    read_group_without_group_fails,
    blocking_read_returns_entry_published_meanwhile,
    blocking_read_returns_empty_after_timeout,
    zero_block_does_not_wait,
    unicode_and_empty_values_round_trip,
    claim_idle_takes_over_entries_left_pending,
    claim_idle_honours_count_and_order,
    read_own_pending_returns_what_the_consumer_left_unacknowledged,
    read_own_pending_returns_deleted_entries_without_fields,
    pending_lists_owner_idle_time_and_delivery_count,
    pending_count_follows_reads_and_acks,
    range_reads_inclusive_bounds_without_delivering,
    delete_removes_entries_and_counts_them,
);

/// The whole suite on one shared bus, as the Redis adapter runs it: cases must not interfere.
#[tokio::test]
async fn full_suite_on_one_bus() {
    let bus = MemoryBus::new();
    events::run_all(&bus, "memory-all").await;
}
