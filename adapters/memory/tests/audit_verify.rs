//! `verify_ledger` over the memory ledger: an intact ledger verifies, and each kind of
//! after-the-fact edit is reported at the row where it happened, per zone.

use std::sync::Arc;

use caracal_core::audit::{verify_ledger, BreakKind};
use caracal_core::contract::audit::{event, ContractMac};
use caracal_core::ports::audit::AuditLedger;
use caracal_memory::{MemoryLedger, SystemClock};

async fn seeded() -> MemoryLedger {
    let ledger = MemoryLedger::new(Arc::new(SystemClock));
    let mac = ContractMac::spec_key();
    let batch: Vec<_> = (0..10)
        .flat_map(|i| {
            ["zone_a", "zone_b"].map(|zone| {
                event(
                    zone,
                    &format!("{zone}-{i}"),
                    "2026-05-21T12:00:00Z",
                    serde_json::json!({"metadata_json": {"n": i}}),
                )
            })
        })
        .collect();
    ledger.append(&batch, Some(&mac)).await.expect("append");
    ledger
}

#[tokio::test]
async fn an_untouched_ledger_verifies_in_every_zone() {
    let ledger = seeded().await;
    let mac = ContractMac::spec_key();
    let reports = verify_ledger(&ledger, None, Some(&mac))
        .await
        .expect("verify");
    assert_eq!(reports.len(), 2);
    for report in reports {
        assert_eq!(
            (report.rows, report.head_seq, report.broken),
            (10, 10, None)
        );
    }
}

#[tokio::test]
async fn edits_deletions_and_forgeries_are_named() {
    let mac = ContractMac::spec_key();

    let ledger = seeded().await;
    ledger.rewrite_rows_unchecked(|rows| {
        let row = rows
            .iter_mut()
            .find(|r| r.event.id == "zone_b-4")
            .expect("row");
        row.event.decision = "deny".into();
    });
    let reports = verify_ledger(&ledger, None, Some(&mac))
        .await
        .expect("verify");
    assert_eq!(reports[0].broken, None, "zone_a is untouched");
    let broken = reports[1].broken.clone().expect("zone_b is broken");
    assert_eq!((broken.seq, broken.kind), (5, BreakKind::ContentMismatch));
    assert_eq!(broken.event_id, "zone_b-4");
    assert_eq!(reports[1].rows, 5, "verification stops at the first break");

    let ledger = seeded().await;
    ledger.rewrite_rows_unchecked(|rows| rows.retain(|r| r.event.id != "zone_a-0"));
    let only_a = ["zone_a".to_string()];
    let reports = verify_ledger(&ledger, Some(&only_a), Some(&mac))
        .await
        .expect("verify");
    let broken = reports[0].broken.clone().expect("deleted first row");
    assert_eq!((broken.seq, broken.kind), (2, BreakKind::SeqGap));

    let ledger = seeded().await;
    ledger.rewrite_rows_unchecked(|rows| {
        let row = rows
            .iter_mut()
            .find(|r| r.event.id == "zone_a-9")
            .expect("row");
        row.event.decision = "deny".into();
        row.content_sha256 = caracal_core::audit::chain::content_sha256(&row.event);
    });
    let with_key = verify_ledger(&ledger, None, Some(&mac))
        .await
        .expect("verify");
    assert_eq!(
        with_key[0].broken.as_ref().map(|b| (b.seq, b.kind)),
        Some((10, BreakKind::HmacMismatch))
    );
    let without_key = verify_ledger(&ledger, None, None).await.expect("verify");
    assert_eq!(
        without_key[0].broken, None,
        "a rehashed last row needs the key to catch"
    );
}
