//! The publisher against the in-memory bus and a bus that fails on demand: frames, signing,
//! spooling, replay without loss or repetition, restarts, shutdown, and the health counters.

mod support;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use caracal_core::ports::{AuditSink, EventBus, MessageAuthenticator};
use caracal_crypto::HmacSha256;
use caracal_evidence::{AuditPublisher, PublisherConfig};
use caracal_memory::MemoryBus;
use serde_json::{json, Value};
use support::{config, entries, event, eventually, field, ids, FlakyBus, Scratch};

fn mac() -> Arc<dyn MessageAuthenticator> {
    Arc::new(HmacSha256::from_bytes(&[0x11; 32]))
}

/// Every id exactly once, and in the given order.
fn assert_once_in_order(published: &[String], expected: &[String]) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in published {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        repeated.is_empty(),
        "published more than once: {repeated:?}"
    );
    assert_eq!(published, expected, "published ids, in order");
}

async fn read_all(bus: &MemoryBus, stream: &str) -> Vec<Vec<(String, String)>> {
    bus.ensure_group(stream, "test").await.expect("group");
    let deliveries = bus
        .read_group(stream, "test", "reader", 10_000, 0)
        .await
        .expect("read");
    deliveries.into_iter().map(|d| d.fields).collect()
}

#[tokio::test]
async fn events_reach_the_stream_in_order_signed_over_the_exact_data() {
    let bus = Arc::new(MemoryBus::new());
    let publisher = AuditPublisher::start(bus.clone(), Some(mac()), config(None, 1000));
    let expected = ids("e", 250);
    for id in &expected {
        publisher.emit(event(id));
    }
    publisher.shutdown().await;

    let got = read_all(&bus, "caracal.audit.events").await;
    let got_ids: Vec<String> = got.iter().map(|e| field(e, "id")).collect();
    assert_once_in_order(&got_ids, &expected);
    let verifier = HmacSha256::from_bytes(&[0x11; 32]);
    for entry in &got {
        let names: Vec<&str> = entry.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["id", "data", "sig"]);
        let data = field(entry, "data");
        let sig = field(entry, "sig");
        assert!(verifier.verify_hex(data.as_bytes(), &sig), "sig over data");
        assert_eq!(sig, sig.to_lowercase());
        let parsed: Value = serde_json::from_str(&data).expect("data is JSON");
        assert_eq!(parsed["id"], json!(field(entry, "id")));
    }
    let health = publisher.health();
    assert_eq!(health.dropped, 0);
    assert_eq!(health.sink_errors, 0);
    assert!(health.replay_available, "no replay dir configured");
    assert_eq!(health.persisted, 250, "every event went out live");
    assert_eq!(health.replayed, 0);
    assert_eq!(health.queue_depth, 0, "flushed at shutdown");
    assert_eq!(health.queue_capacity, 10_000);
}

#[tokio::test]
async fn the_frame_matches_the_spec_example_byte_for_byte() {
    // spec/audit-streams-storage.md §3.3, key = 32 bytes of 0x11.
    let bus = Arc::new(MemoryBus::new());
    let publisher = AuditPublisher::start(bus.clone(), Some(mac()), config(None, 1000));
    let mut e1 = event("e1");
    e1.request_id = "r1".to_string();
    publisher.emit(e1);
    publisher.shutdown().await;
    let got = read_all(&bus, "caracal.audit.events").await;
    assert_eq!(got.len(), 1);
    assert_eq!(field(&got[0], "id"), "e1");
    assert_eq!(
        field(&got[0], "data"),
        r#"{"id":"e1","zone_id":"zone_a","event_type":"token_exchange","request_id":"r1","decision":"allow","evaluation_status":"complete","determining_policies_json":[],"diagnostics_json":[],"occurred_at":"2026-05-21T12:00:00.123456789Z"}"#
    );
    assert_eq!(
        field(&got[0], "sig"),
        "350fde97fa2751d3f12407dfe38a5a66082c0c1ef8640fd14aea363281253b78"
    );
}

#[tokio::test]
async fn without_a_key_there_is_no_sig_and_absent_values_take_their_upstream_shape() {
    let bus = Arc::new(MemoryBus::new());
    let mut cfg = config(None, 1000);
    cfg.stream = "audit.shape".to_string();
    let publisher = AuditPublisher::start(bus.clone(), None, cfg);
    let mut deny = event("d1");
    deny.decision = "deny".to_string();
    deny.evaluation_status = "rate_limited".to_string();
    deny.determining_policies_json = None;
    deny.diagnostics_json = None;
    let mut full = event("p1");
    full.policy_set_version_id = Some("psv_1".to_string());
    full.manifest_sha = Some("abc".to_string());
    full.metadata_json = Some(
        json!({"application_id": "app_1", "requested_scopes": ["read"]})
            .as_object()
            .cloned()
            .expect("object"),
    );
    publisher.emit(deny);
    publisher.emit(full);
    publisher.shutdown().await;

    let got = read_all(&bus, "audit.shape").await;
    assert_eq!(got.len(), 2);
    for entry in &got {
        let names: Vec<&str> = entry.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["id", "data"], "no sig without a key");
    }
    assert_eq!(
        field(&got[0], "data"),
        r#"{"id":"d1","zone_id":"zone_a","event_type":"token_exchange","request_id":"req-d1","decision":"deny","evaluation_status":"rate_limited","determining_policies_json":null,"diagnostics_json":null,"occurred_at":"2026-05-21T12:00:00.123456789Z"}"#,
        "optional strings omitted, arrays null, in upstream order"
    );
    let data = field(&got[1], "data");
    assert!(
        data.contains(r#""decision":"allow","policy_set_version_id":"psv_1","manifest_sha":"abc","evaluation_status":"complete""#),
        "{data}"
    );
    assert!(
        data.contains(r#""diagnostics_json":[],"metadata_json":{"application_id":"app_1","requested_scopes":["read"]},"occurred_at""#),
        "{data}"
    );
}

#[tokio::test]
async fn a_failing_stream_spools_frames_and_recovery_replays_them_in_order() {
    let scratch = Scratch::new("spool");
    let bus = FlakyBus::failing();
    let publisher =
        AuditPublisher::start(bus.clone(), Some(mac()), config(Some(scratch.replay()), 7));
    let expected = ids("s", 20);
    for id in &expected {
        publisher.emit(event(id));
    }
    eventually("20 events pending in the spool", || {
        publisher.health().replay_pending == 20
    })
    .await;

    let files: Vec<String> = entries(&scratch.replay())
        .into_iter()
        .filter(|n| n.ends_with(".ndjson"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = &files[0];
    let pid = std::process::id().to_string();
    assert!(name.starts_with(&format!("pending-{pid}-")), "{name}");
    let text = fs::read_to_string(scratch.replay().join(name)).expect("spool file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 20);
    let verifier = HmacSha256::from_bytes(&[0x11; 32]);
    for (line, id) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(&format!(r#"{{"id":"{id}","data":"{{\"id\":"#)),
            "{line}"
        );
        let frame: Value = serde_json::from_str(line).expect("frame JSON");
        let mut keys: Vec<&str> = frame
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["data", "id", "sig"]);
        assert_eq!(frame["id"], json!(id));
        let data = frame["data"].as_str().expect("data");
        assert!(verifier.verify_hex(data.as_bytes(), frame["sig"].as_str().expect("sig")));
    }
    let health = publisher.health();
    assert_eq!(health.replay_files, 1);
    assert_eq!(health.replay_bytes, text.len() as u64);
    assert_eq!(health.dropped, 0);
    assert!(health.sink_errors >= 1);
    assert!(health.replay_available);
    assert_eq!(bus.count(), 0);

    bus.heal();
    // The drained file goes first and its offset sidecar right after it: wait for both.
    eventually("the spool drains", || {
        let h = publisher.health();
        h.replayed == 20 && h.replay_files == 0 && entries(&scratch.replay()).is_empty()
    })
    .await;
    assert_once_in_order(&bus.ids(), &expected);
    let health = publisher.health();
    assert_eq!(health.replay_pending, 0);
    assert_eq!(health.dropped, 0);
    assert!(
        entries(&scratch.replay()).is_empty(),
        "no file, sidecar or probe left: {:?}",
        entries(&scratch.replay())
    );

    assert_eq!(
        health.persisted, 0,
        "replayed events are not counted as persisted live"
    );

    // Live again: new events go straight out, after the replayed ones.
    publisher.emit(event("after"));
    eventually("the live event", || bus.count() == 21).await;
    assert_eq!(publisher.health().replayed, 20);
    assert_eq!(publisher.health().persisted, 1);
    publisher.shutdown().await;
    assert_eq!(bus.ids().last().map(String::as_str), Some("after"));
}

#[tokio::test]
async fn a_failure_midway_through_replay_resumes_without_repeating_the_published_prefix() {
    let scratch = Scratch::new("midway");
    let bus = FlakyBus::failing();
    let publisher =
        AuditPublisher::start(bus.clone(), Some(mac()), config(Some(scratch.replay()), 7));
    let expected = ids("m", 30);
    for id in &expected {
        publisher.emit(event(id));
    }
    eventually("30 events spooled", || {
        publisher.health().replay_pending == 30
    })
    .await;

    // 10 get through (one full chunk of 7 and 3 of the next), then the stream fails again.
    let errors = publisher.health().sink_errors;
    bus.allow(10);
    eventually("10 replayed", || publisher.health().replayed == 10).await;
    eventually("the 11th attempt fails", || {
        publisher.health().sink_errors > errors
    })
    .await;
    let offsets: Vec<String> = entries(&scratch.replay())
        .into_iter()
        .filter(|n| n.ends_with(".offset"))
        .collect();
    assert_eq!(offsets.len(), 1, "progress is recorded beside the file");
    assert_eq!(publisher.health().replay_pending, 20);

    bus.heal();
    eventually("the rest replays", || publisher.health().replayed == 30).await;
    eventually("the files go", || publisher.health().replay_files == 0).await;
    assert_once_in_order(&bus.ids(), &expected);
    assert_eq!(publisher.health().dropped, 0);
    publisher.shutdown().await;
    assert!(entries(&scratch.replay()).is_empty());
}

#[tokio::test]
async fn a_new_publisher_replays_what_an_earlier_one_left_and_resumes_at_its_offset() {
    let scratch = Scratch::new("restart");
    let first_bus = FlakyBus::failing();
    let first = AuditPublisher::start(
        first_bus.clone(),
        Some(mac()),
        config(Some(scratch.replay()), 4),
    );
    let expected = ids("r", 15);
    for id in &expected {
        first.emit(event(id));
    }
    eventually("spooled", || first.health().replay_pending == 15).await;
    let errors = first.health().sink_errors;
    first_bus.allow(6);
    eventually("6 replayed by the first", || first.health().replayed == 6).await;
    eventually("then the stream fails", || {
        first.health().sink_errors > errors
    })
    .await;
    first.shutdown().await;

    let second_bus = FlakyBus::healthy();
    let second = AuditPublisher::start(
        second_bus.clone(),
        Some(mac()),
        config(Some(scratch.replay()), 4),
    );
    eventually("the second replays the rest at start-up", || {
        second.health().replayed == 9
    })
    .await;
    eventually("no files left", || second.health().replay_files == 0).await;
    let mut all = first_bus.ids();
    all.extend(second_bus.ids());
    assert_once_in_order(&all, &expected);
    // The signatures were made by the first publisher and are carried as they were.
    let verifier = HmacSha256::from_bytes(&[0x11; 32]);
    for entry in second_bus.entries() {
        assert!(verifier.verify_hex(field(&entry, "data").as_bytes(), &field(&entry, "sig")));
    }
    second.shutdown().await;
}

#[tokio::test]
async fn events_emitted_at_start_up_queue_behind_the_backlog() {
    let scratch = Scratch::new("backlog");
    let first = AuditPublisher::start(
        FlakyBus::failing(),
        None,
        config(Some(scratch.replay()), 1000),
    );
    let old = ids("old", 50);
    for id in &old {
        first.emit(event(id));
    }
    first.shutdown().await;
    assert_eq!(first.health().replay_pending, 50);

    let bus = FlakyBus::healthy();
    let second = AuditPublisher::start(bus.clone(), None, config(Some(scratch.replay()), 1000));
    let new = ids("new", 50);
    for id in &new {
        second.emit(event(id));
    }
    eventually("all 100", || bus.count() == 100).await;
    second.shutdown().await;
    let mut expected = old;
    expected.extend(new);
    assert_once_in_order(&bus.ids(), &expected);
}

#[tokio::test]
async fn a_file_locked_by_a_live_writer_is_left_alone_until_released() {
    let scratch = Scratch::new("foreign");
    let dir = scratch.replay();
    fs::create_dir_all(&dir).expect("dir");
    // Another publisher (here: this test) is still appending to its file and holds the lock.
    let foreign = dir.join("pending-999999-1.ndjson");
    let mut writer = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&foreign)
        .expect("foreign file");
    writer.lock().expect("lock");
    writer
        .write_all(b"{\"id\":\"f1\",\"data\":\"{\\\"id\\\":\\\"f1\\\"}\"}\n")
        .expect("write");

    let bus = FlakyBus::healthy();
    let publisher = AuditPublisher::start(bus.clone(), None, config(Some(dir.clone()), 1000));
    publisher.emit(event("live"));
    eventually("the live event", || bus.count() == 1).await;
    tokio::time::sleep(Duration::from_millis(150)).await; // several replay intervals
    assert_eq!(bus.ids(), ["live"], "a locked file is not replayed");
    assert!(foreign.exists());
    assert_eq!(publisher.health().replay_files, 1);

    writer
        .write_all(b"{\"id\":\"f2\",\"data\":\"{\\\"id\\\":\\\"f2\\\"}\"}\n")
        .expect("write");
    drop(writer); // the writer is done: closing releases the lock
    eventually("the released file is replayed", || bus.count() == 3).await;
    assert_eq!(bus.ids(), ["live", "f1", "f2"]);
    eventually("and removed", || !foreign.exists()).await;
    publisher.shutdown().await;
}

#[tokio::test]
async fn upstream_spool_lines_are_replayed_with_a_fresh_sig_and_garbage_is_counted() {
    let scratch = Scratch::new("upstream");
    let dir = scratch.replay();
    fs::create_dir_all(&dir).expect("dir");
    let raw = r#"{"id":"u1","zone_id":"zone_a","event_type":"token_exchange","request_id":"r","decision":"allow","evaluation_status":"complete","determining_policies_json":[],"diagnostics_json":[],"occurred_at":"2026-05-21T12:00:00Z"}"#;
    let mut file = File::create(dir.join("pending-42-100.ndjson")).expect("file");
    writeln!(file, "{raw}").expect("write");
    writeln!(file).expect("a blank line is skipped without a count");
    writeln!(file, "not json at all").expect("write");
    drop(file);

    let bus = FlakyBus::healthy();
    let publisher =
        AuditPublisher::start(bus.clone(), Some(mac()), config(Some(dir.clone()), 1000));
    eventually("replayed", || publisher.health().replay_files == 0).await;
    let got = bus.entries();
    assert_eq!(got.len(), 1);
    assert_eq!(field(&got[0], "id"), "u1");
    assert_eq!(field(&got[0], "data"), raw);
    assert_eq!(field(&got[0], "sig"), mac().sign_hex(raw.as_bytes()));
    let health = publisher.health();
    assert_eq!(health.replayed, 1);
    assert_eq!(health.dropped, 1, "the unreadable line is lost evidence");
    publisher.shutdown().await;
}

#[tokio::test]
async fn an_unusable_replay_dir_is_reported_and_failed_events_are_counted_as_dropped() {
    let scratch = Scratch::new("unwritable");
    // A regular file where the directory should be: creation fails even for root.
    let blocker = scratch.0.join("not-a-dir");
    fs::write(&blocker, b"x").expect("blocker");
    let bus = FlakyBus::failing();
    let publisher = AuditPublisher::start(
        bus.clone(),
        None,
        config(Some(blocker.join("replay")), 1000),
    );
    assert!(!publisher.health().replay_available);
    for id in ids("x", 3) {
        publisher.emit(event(&id));
    }
    eventually("3 dropped", || publisher.health().dropped == 3).await;
    let health = publisher.health();
    assert_eq!(health.replay_files, 0);
    assert_eq!(health.replay_pending, 0);
    assert!(!health.replay_available);

    // The stream still works for whatever comes next.
    bus.heal();
    publisher.emit(event("ok"));
    eventually("published", || bus.count() == 1).await;
    publisher.shutdown().await;
    assert_eq!(publisher.health().dropped, 3, "drops stay counted");
}

#[tokio::test]
async fn without_a_replay_dir_a_failed_publication_is_dropped() {
    let bus = FlakyBus::failing();
    let publisher = AuditPublisher::start(bus.clone(), None, config(None, 1000));
    for id in ids("n", 4) {
        publisher.emit(event(&id));
    }
    eventually("4 dropped", || publisher.health().dropped == 4).await;
    assert!(publisher.health().replay_available);
    bus.heal();
    publisher.emit(event("later"));
    eventually("the next one goes out", || bus.count() == 1).await;
    publisher.shutdown().await;
}

#[tokio::test]
async fn shutdown_flushes_the_buffer_to_the_stream() {
    let bus = FlakyBus::healthy();
    let cfg = PublisherConfig {
        flush_interval: Duration::from_secs(3600),
        ..config(None, 1000)
    };
    let publisher = AuditPublisher::start(bus.clone(), None, cfg);
    let expected = ids("z", 5);
    for id in &expected {
        publisher.emit(event(id));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(bus.count(), 0, "nothing flushes before the interval");
    publisher.shutdown().await;
    assert_once_in_order(&bus.ids(), &expected);
    publisher.shutdown().await; // idempotent
}

#[tokio::test]
async fn shutdown_spools_what_the_stream_refuses_and_later_emits_go_to_the_spool() {
    let scratch = Scratch::new("shutdown");
    let bus = FlakyBus::failing();
    let cfg = PublisherConfig {
        flush_interval: Duration::from_secs(3600),
        ..config(Some(scratch.replay()), 1000)
    };
    let publisher = AuditPublisher::start(bus.clone(), None, cfg);
    for id in ids("q", 5) {
        publisher.emit(event(&id));
    }
    publisher.shutdown().await;
    assert_eq!(publisher.health().replay_pending, 5);
    publisher.emit(event("late"));
    let health = publisher.health();
    assert_eq!(health.replay_pending, 6);
    assert_eq!(health.dropped, 0);
    let lines: usize = entries(&scratch.replay())
        .iter()
        .filter(|n| n.ends_with(".ndjson"))
        .map(|n| {
            fs::read_to_string(scratch.replay().join(n))
                .expect("file")
                .lines()
                .count()
        })
        .sum();
    assert_eq!(lines, 6);
}

#[tokio::test]
async fn a_full_buffer_spills_to_the_spool_and_nothing_is_lost() {
    let scratch = Scratch::new("overflow");
    let bus = FlakyBus::healthy();
    bus.slow(Duration::from_millis(2));
    let cfg = PublisherConfig {
        capacity: 4,
        ..config(Some(scratch.replay()), 4)
    };
    let publisher = AuditPublisher::start(bus.clone(), None, cfg);
    // Let the start-up check find the spool empty and go live.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let expected = ids("o", 60);
    for id in &expected {
        publisher.emit(event(id));
    }
    eventually("all 60 delivered", || bus.count() == 60).await;
    eventually("spool drained", || publisher.health().replay_files == 0).await;
    let health = publisher.health();
    assert!(health.replayed > 0, "some events overflowed to the spool");
    assert_eq!(health.dropped, 0);
    let mut got = bus.ids();
    got.sort();
    assert_eq!(got, expected, "each event exactly once");
    publisher.shutdown().await;
}

#[tokio::test]
async fn metrics_use_the_sts_series_names() {
    let publisher = AuditPublisher::start(FlakyBus::failing(), None, config(None, 1000));
    publisher.emit(event("m"));
    eventually("dropped", || publisher.health().dropped == 1).await;
    let metrics = publisher.metrics();
    let names: Vec<&str> = metrics.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "audit_emitted_total",
            "audit_dropped_total",
            "audit_replay_pending",
            "audit_replay_files",
            "audit_replay_bytes",
            "audit_replay_oldest_age_seconds",
            "audit_replay_replayed_total",
            "audit_sink_errors_total"
        ]
    );
    assert_eq!(metrics[0].1, 1, "one event emitted");
    assert_eq!(metrics[1].1, 1, "and dropped");
    assert_eq!(metrics[7].1, 1);
    publisher.shutdown().await;
}

#[tokio::test]
async fn a_line_cut_short_by_a_crash_is_counted_and_the_rest_still_replays() {
    let scratch = Scratch::new("torn");
    let dir = scratch.replay();
    fs::create_dir_all(&dir).expect("dir");
    let good = |id: &str| format!(r#"{{"id":"{id}","data":"{{\"id\":\"{id}\"}}"}}"#);
    // An older file whose writer died mid-line, and a newer one that is whole.
    fs::write(
        dir.join("pending-7-100.ndjson"),
        format!("{}\n{}", good("t1"), &good("t2")[..12]),
    )
    .expect("write");
    fs::write(
        dir.join("pending-7-200.ndjson"),
        format!("{}\n", good("t3")),
    )
    .expect("write");

    let bus = FlakyBus::healthy();
    let publisher = AuditPublisher::start(bus.clone(), None, config(Some(dir.clone()), 1000));
    eventually("both files replayed", || {
        publisher.health().replay_files == 0
    })
    .await;
    assert_eq!(bus.ids(), ["t1", "t3"]);
    let health = publisher.health();
    assert_eq!(health.replayed, 2);
    assert_eq!(health.dropped, 1, "the torn event is lost and says so");
    assert_eq!(health.replay_pending, 0);
    publisher.shutdown().await;
}
