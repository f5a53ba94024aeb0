//! The ingest pipeline end to end over the memory bus and ledger: every row of the outcome
//! table of `spec/audit-streams-storage.md §6.2`, the ACK rule, the start-up drain, the
//! reaper's delivery counts, batch isolation and retention.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use caracal_audit::retention::retention_pass;
use caracal_audit::Tally;
use caracal_core::audit::dlq::replayable;
use caracal_core::ports::audit::{AuditLedger, RetentionSetting};
use caracal_core::ports::events::EventBus;
use caracal_core::time::Timestamp;
use caracal_memory::FixedClock;
use support::*;

#[tokio::test]
async fn valid_events_are_stored_in_one_append_chained_and_acknowledged() {
    let w = World::new(|_| {}).await;
    for n in 1..=3 {
        let id = format!("e{n}");
        w.publish_event(&id, &event(&id, "zone_a", &minutes_ago(5), "allow", "r1"))
            .await;
    }
    let tally = w.ingest().await;
    assert_eq!(
        tally,
        Tally {
            acked: 3,
            dead_lettered: 0,
            pending: 0
        }
    );
    assert_eq!(
        w.ledger.appends.load(Ordering::SeqCst),
        1,
        "one append for the batch"
    );
    let rows = w.rows("zone_a").await;
    let ids: Vec<(&str, i64)> = rows
        .iter()
        .map(|r| (r.event.id.as_str(), r.chain_seq))
        .collect();
    assert_eq!(ids, vec![("e1", 1), ("e2", 2), ("e3", 3)]);
    assert_eq!(
        rows[1].prev_content_sha256.as_deref(),
        Some(rows[0].content_sha256.as_str())
    );
    assert!(!rows[0].chain_hmac.is_empty(), "chained under the key");
    assert!(
        rows[0].ingest_signature.is_some(),
        "the producer's sig is kept"
    );
    assert_eq!(w.pending_count().await, 0);
    assert!(w.dead_letters().await.is_empty());
    assert_eq!(w.state.metrics.inserts.get(), 3);
}

#[tokio::test]
async fn a_bad_or_missing_signature_is_dead_lettered_and_counted_never_stored() {
    let w = World::new(|_| {}).await;
    let data = event("forged", "zone_a", &minutes_ago(1), "allow", "r1");
    let mut forged = w.frame("forged", &data);
    forged[2].1 = "00".repeat(32);
    w.publish(forged).await;
    w.publish(vec![
        ("id".into(), "unsigned".into()),
        ("data".into(), data.clone()),
    ])
    .await;
    w.publish(vec![
        ("data".into(), data.clone()),
        ("sig".into(), "not hex".into()),
    ])
    .await;
    let tally = w.ingest().await;
    assert_eq!((tally.acked, tally.dead_lettered), (3, 3));
    assert!(w.rows("zone_a").await.is_empty(), "nothing stored");
    let dlq = w.dead_letters().await;
    let reasons: Vec<&str> = dlq
        .iter()
        .filter_map(|d| field(&d.fields, "reason"))
        .collect();
    assert_eq!(reasons, vec!["hmac_verify_failed"; 3]);
    assert_eq!(field(&dlq[0].fields, "src_id"), Some("forged"));
    assert_eq!(field(&dlq[0].fields, "src_data"), Some(data.as_str()));
    assert_eq!(w.state.metrics.hmac_failures.get(), 3);
    assert_eq!(w.state.metrics.dlq.get(), 3);
    assert!(
        dlq.iter().all(|d| !replayable(&d.fields)),
        "forgeries are never replayable"
    );
    assert_eq!(w.pending_count().await, 0);
}

#[tokio::test]
async fn unusable_entries_are_dead_lettered_with_their_reason() {
    let w = World::new(|_| {}).await;
    w.publish(vec![("id".into(), "x".into()), ("sig".into(), "ab".into())])
        .await;
    w.publish_event("bad-json", "{not json").await;
    w.publish_event(
        "no-zone",
        r#"{"id":"no-zone","occurred_at":"2026-05-21T12:00:00Z"}"#,
    )
    .await;
    let tally = w.ingest().await;
    assert_eq!((tally.acked, tally.dead_lettered), (3, 3));
    let dlq = w.dead_letters().await;
    let reasons: Vec<&str> = dlq
        .iter()
        .filter_map(|d| field(&d.fields, "reason"))
        .collect();
    assert_eq!(reasons[0], "missing_data_field");
    assert!(
        reasons[1].starts_with("json_parse_error:"),
        "{}",
        reasons[1]
    );
    assert_eq!(
        reasons[2],
        "json_parse_error:required fields missing (id, zone_id, occurred_at)"
    );
    assert_eq!(w.state.metrics.parse_errors.get(), 3);
    assert_eq!(w.state.metrics.inserts.get(), 0);
}

#[tokio::test]
async fn a_duplicate_is_acknowledged_without_moving_the_chain() {
    let w = World::new(|_| {}).await;
    let data = event("e1", "zone_a", &minutes_ago(1), "allow", "r1");
    w.publish_event("e1", &data).await;
    w.publish_event("e1", &data).await;
    w.ingest().await;
    w.publish_event("e1", &data).await;
    let tally = w.ingest().await;
    assert_eq!(tally.acked, 1);
    assert_eq!(w.rows("zone_a").await.len(), 1, "stored once");
    assert!(w.dead_letters().await.is_empty(), "a duplicate is benign");
    assert_eq!(w.pending_count().await, 0);
    assert_eq!(w.state.metrics.inserts.get(), 1);
}

#[tokio::test]
async fn a_tampered_replay_raises_an_alert_then_dead_letters() {
    let w = World::new(|_| {}).await;
    let at = minutes_ago(1);
    w.publish_event("e1", &event("e1", "zone_a", &at, "deny", "r1"))
        .await;
    w.ingest().await;
    let stored = w.rows("zone_a").await;
    w.publish_event("e1", &event("e1", "zone_a", &at, "allow", "r1"))
        .await;
    let tally = w.ingest().await;
    assert_eq!((tally.acked, tally.dead_lettered), (1, 1));
    assert_eq!(
        w.rows("zone_a").await,
        stored,
        "the stored row is untouched"
    );
    let alerts = w.ledger.inner.alerts();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, "content_mismatch_on_replay");
    assert!(alerts[0]
        .detail
        .starts_with(&format!("stored={} incoming=", stored[0].content_sha256)));
    let dlq = w.dead_letters().await;
    assert_eq!(field(&dlq[0].fields, "reason"), Some("tamper_on_replay"));
    assert!(!replayable(&dlq[0].fields));
    assert_eq!(w.state.metrics.tamper_replay.get(), 1);
}

#[tokio::test]
async fn an_alert_that_cannot_be_recorded_keeps_the_entry_pending() {
    let w = World::new(|_| {}).await;
    let at = minutes_ago(1);
    w.publish_event("e1", &event("e1", "zone_a", &at, "deny", "r1"))
        .await;
    w.ingest().await;
    w.ledger.alerts_down.store(true, Ordering::SeqCst);
    w.publish_event("e1", &event("e1", "zone_a", &at, "allow", "r1"))
        .await;
    let tally = w.ingest().await;
    assert_eq!(tally.pending, 1);
    assert!(
        w.dead_letters().await.is_empty(),
        "no dead letter before the alert"
    );
    assert_eq!(w.pending_count().await, 1);
    w.ledger.alerts_down.store(false, Ordering::SeqCst);
    let tally = w.reap().await;
    assert_eq!(tally.dead_lettered, 1);
    assert_eq!(w.ledger.inner.alerts().len(), 1);
    assert_eq!(w.pending_count().await, 0);
}

#[tokio::test]
async fn transient_failures_retry_through_the_reaper_then_dead_letter_at_the_limit() {
    let w = World::new(|_| {}).await;
    w.ledger
        .fail_transiently(Some("57P01 terminating connection"));
    let data = event("e1", "zone_a", &minutes_ago(1), "allow", "r1");
    w.publish_event("e1", &data).await;
    assert_eq!(w.ingest().await.pending, 1, "delivery 1: left pending");
    for delivery in 2..8 {
        let tally = w.reap().await;
        assert_eq!(tally.pending, 1, "delivery {delivery}: still pending");
        assert!(w.dead_letters().await.is_empty());
    }
    let tally = w.reap().await;
    assert_eq!(
        tally.dead_lettered, 1,
        "delivery 8 reaches AUDIT_MAX_DELIVERIES"
    );
    assert_eq!(w.pending_count().await, 0);
    assert_eq!(w.state.metrics.retries.get(), 7, "seven reclaims");
    let dlq = w.dead_letters().await;
    assert_eq!(
        field(&dlq[0].fields, "reason"),
        Some("transient_exceeded_max_deliveries:57P01 terminating connection")
    );
    assert!(
        replayable(&dlq[0].fields),
        "a storage failure can be replayed"
    );
    assert!(w.rows("zone_a").await.is_empty());
}

#[tokio::test]
async fn without_a_delivery_limit_transient_failures_stay_pending() {
    let w = World::new(|c| c.max_deliveries = 0).await;
    w.ledger.fail_transiently(Some("08006 connection failure"));
    w.publish_event("e1", &event("e1", "zone_a", &minutes_ago(1), "allow", "r1"))
        .await;
    w.ingest().await;
    for _ in 0..10 {
        w.reap().await;
    }
    assert!(w.dead_letters().await.is_empty());
    w.ledger.fail_transiently(None);
    assert_eq!(w.reap().await.acked, 1, "stored once storage is back");
    assert_eq!(w.rows("zone_a").await.len(), 1);
}

#[tokio::test]
async fn one_refused_event_does_not_take_its_batch_with_it() {
    let w = World::new(|_| {}).await;
    w.ledger.poison("e2");
    for n in 1..=3 {
        let id = format!("e{n}");
        w.publish_event(&id, &event(&id, "zone_a", &minutes_ago(1), "allow", "r1"))
            .await;
    }
    let tally = w.ingest().await;
    assert_eq!((tally.acked, tally.dead_lettered), (3, 1));
    let stored: Vec<String> = w
        .rows("zone_a")
        .await
        .into_iter()
        .map(|r| r.event.id)
        .collect();
    assert_eq!(stored, vec!["e1", "e3"]);
    let dlq = w.dead_letters().await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(field(&dlq[0].fields, "src_id"), Some("e2"));
    assert_eq!(
        field(&dlq[0].fields, "reason"),
        Some("pg_permanent_error:22P05 unsupported Unicode escape sequence")
    );
    assert_eq!(
        w.ledger.appends.load(Ordering::SeqCst),
        4,
        "the batch, then one by one"
    );
}

#[tokio::test]
async fn a_batch_that_fails_transiently_is_not_retried_event_by_event() {
    let w = World::new(|_| {}).await;
    w.ledger.fail_transiently(Some("connection refused"));
    for n in 1..=5 {
        let id = format!("e{n}");
        w.publish_event(&id, &event(&id, "zone_a", &minutes_ago(1), "allow", "r1"))
            .await;
    }
    assert_eq!(w.ingest().await.pending, 5);
    assert_eq!(
        w.ledger.appends.load(Ordering::SeqCst),
        2,
        "the batch and one event: storage is down, the rest wait for the reaper"
    );
}

#[tokio::test]
async fn a_dead_letter_that_cannot_be_published_is_not_acknowledged() {
    let w = World::new(|_| {}).await;
    w.bus.down.store(true, Ordering::SeqCst);
    w.publish(vec![("id".into(), "x".into())]).await;
    let tally = w.ingest().await;
    assert_eq!((tally.acked, tally.pending), (0, 1));
    assert_eq!(
        w.pending_count().await,
        1,
        "kept pending until the DLQ has it"
    );
    w.bus.down.store(false, Ordering::SeqCst);
    assert_eq!(w.reap().await.dead_lettered, 1);
    assert_eq!(w.pending_count().await, 0);
    assert_eq!(w.dead_letters().await.len(), 1);
}

#[tokio::test]
async fn the_start_up_drain_processes_what_a_crashed_run_left_pending() {
    let w = World::new(|c| c.consumer = "audit-worker-0".into()).await;
    for n in 1..=3 {
        let id = format!("e{n}");
        w.publish_event(&id, &event(&id, "zone_a", &minutes_ago(1), "allow", "r1"))
            .await;
    }
    // The previous run under this name read them and died before acknowledging.
    let taken = w
        .bus
        .read_group(EVENTS, GROUP, "audit-worker-0", 10, 0)
        .await
        .expect("read");
    assert_eq!(taken.len(), 3);
    // Another replica's pending entries are not this one's to drain.
    w.publish_event(
        "other",
        &event("other", "zone_a", &minutes_ago(1), "allow", "r1"),
    )
    .await;
    w.bus
        .read_group(EVENTS, GROUP, "audit-worker-1", 10, 0)
        .await
        .expect("read");
    let drained = w.ingestor().drain_own_pending().await.expect("drain");
    assert_eq!(drained, 3);
    let stored: Vec<String> = w
        .rows("zone_a")
        .await
        .into_iter()
        .map(|r| r.event.id)
        .collect();
    assert_eq!(stored, vec!["e1", "e2", "e3"]);
    assert_eq!(
        w.pending_count().await,
        1,
        "only the other replica's entry is left"
    );
}

#[tokio::test]
async fn the_reaper_takes_over_a_dead_replicas_entries() {
    let w = World::new(|_| {}).await;
    w.publish_event("e1", &event("e1", "zone_a", &minutes_ago(1), "allow", "r1"))
        .await;
    w.bus
        .read_group(EVENTS, GROUP, "audit-worker-9", 10, 0)
        .await
        .expect("read");
    let tally = w.reap().await;
    assert_eq!(tally.acked, 1);
    assert_eq!(w.rows("zone_a").await.len(), 1);
    assert_eq!(w.pending_count().await, 0);
    assert_eq!(w.state.metrics.retries.get(), 1);
}

#[tokio::test]
async fn the_workers_drain_then_ingest_until_shutdown() {
    let w = World::new(|c| {
        c.read_block = Duration::from_millis(50);
        c.consumer = "audit-worker-0".into();
        c.claim_idle = Duration::from_secs(30);
    })
    .await;
    w.publish_event(
        "left",
        &event("left", "zone_a", &minutes_ago(2), "allow", "r0"),
    )
    .await;
    w.bus
        .read_group(EVENTS, GROUP, "audit-worker-0", 10, 0)
        .await
        .expect("read");
    assert!(
        !w.state.consumer.healthy(),
        "unhealthy until the drain finished"
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let workers = caracal_audit::spawn_workers(&w.state, &stopped);
    w.publish_event(
        "live",
        &event("live", "zone_a", &minutes_ago(1), "allow", "r1"),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while w.rows("zone_a").await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both events were never stored"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(w.state.consumer.healthy());
    stop.send(true).expect("stop");
    for worker in workers {
        worker.await.expect("worker ends on shutdown");
    }
    let ids: Vec<String> = w
        .rows("zone_a")
        .await
        .into_iter()
        .map(|r| r.event.id)
        .collect();
    assert_eq!(ids, vec!["left", "live"]);
}

#[tokio::test]
async fn retention_uses_the_smaller_of_the_limit_and_the_setting() {
    // 2026-01-15: partitions exist for January through April.
    let clock = Arc::new(FixedClock::new(Timestamp::from_unix_micros(
        1_768_435_200_000_000,
    )));
    let w = World::with_clock(clock.clone(), |_| {}).await;
    w.publish_event(
        "jan",
        &event("jan", "zone_a", "2026-01-15T00:00:00Z", "allow", "r1"),
    )
    .await;
    w.ingest().await;
    clock.advance_millis(76 * 86_400_000); // 2026-04-01
    let ledger: &dyn AuditLedger = w.ledger.as_ref();
    let report = retention_pass(ledger, clock.as_ref(), 365, &w.state.metrics)
        .await
        .expect("pass");
    assert_eq!(report.dropped, 0, "nothing is older than 365 days");
    w.ledger
        .set_retention_setting(&RetentionSetting {
            retention_days: 30,
            updated_by: Some("admin".into()),
            updated_at_micros: 0,
        })
        .await
        .expect("setting");
    let report = retention_pass(ledger, clock.as_ref(), 365, &w.state.metrics)
        .await
        .expect("pass");
    assert_eq!(
        report.dropped, 2,
        "January and February end before the 30-day cutoff"
    );
    assert!(w.rows("zone_a").await.is_empty());
    let again = retention_pass(ledger, clock.as_ref(), 365, &w.state.metrics)
        .await
        .expect("pass");
    assert_eq!(
        (again.created, again.dropped),
        (0, 0),
        "a second pass changes nothing"
    );
    assert_eq!(w.state.metrics.retention_dropped.get(), 2);
    w.ledger
        .set_retention_setting(&RetentionSetting {
            retention_days: 4000,
            updated_by: None,
            updated_at_micros: 0,
        })
        .await
        .expect("setting");
    assert_eq!(
        caracal_audit::retention::retention_days(ledger, 365)
            .await
            .expect("days"),
        365,
        "the setting can only lower the limit"
    );
}
