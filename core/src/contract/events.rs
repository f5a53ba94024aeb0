//! The `EventBus` contract: what every bus adapter (Redis Streams, the in-process bus) must do the
//! same way, so that a service wired to either sees identical delivery semantics.
//!
//! Each case uses its own stream, named by [`stream_name`] from the case name and the caller's
//! `unique` suffix, so runs against a shared Redis never see each other's entries and the caller
//! can delete every stream a run touched ([`streams_used`]).

use std::time::{Duration, Instant};

use crate::ports::events::{BusError, Delivery, EventBus, PendingEntry};

/// Case names, one stream each; [`streams_used`] derives the full list from it.
const CASES: &[&str] = &[
    "ids",
    "empty-fields",
    "ensure-group",
    "group-start",
    "order",
    "count",
    "no-redelivery",
    "split",
    "groups",
    "ack",
    "missing-group",
    "block-wakes",
    "block-timeout",
    "no-block",
    "roundtrip",
    "batch",
    "batch-empty",
    "claim-idle",
    "claim-count",
    "own-pending",
    "own-pending-deleted",
    "pending",
    "pending-count",
    "range",
    "delete",
];

/// The stream a contract case writes to: `caracal.contract.<case>.<unique>`.
///
/// The prefix keeps contract streams away from the wire-contract names (`caracal.audit.events`, …)
/// so a run against a real Redis can never touch production topics.
pub fn stream_name(case: &str, unique: &str) -> String {
    format!("caracal.contract.{case}.{unique}")
}

/// Every stream a full run with `unique` may create, so adapters backed by shared storage can
/// delete them afterwards (even after a failed assertion).
pub fn streams_used(unique: &str) -> Vec<String> {
    CASES.iter().map(|case| stream_name(case, unique)).collect()
}

/// Runs every case of the contract, in order. `unique` must differ between runs that share
/// storage (a random suffix), since entries published by one run would otherwise be read by the
/// next.
pub async fn run_all(bus: &dyn EventBus, unique: &str) {
    publish_returns_increasing_ids(bus, unique).await;
    publish_rejects_entry_without_fields(bus, unique).await;
    ensure_group_is_idempotent(bus, unique).await;
    group_starts_at_beginning_of_stream(bus, unique).await;
    read_group_delivers_in_order_with_exact_fields(bus, unique).await;
    read_group_honours_count(bus, unique).await;
    read_group_does_not_redeliver(bus, unique).await;
    consumers_in_one_group_split_entries(bus, unique).await;
    every_group_sees_every_entry(bus, unique).await;
    ack_is_idempotent_and_final(bus, unique).await;
    read_group_without_group_fails(bus, unique).await;
    blocking_read_returns_entry_published_meanwhile(bus, unique).await;
    blocking_read_returns_empty_after_timeout(bus, unique).await;
    zero_block_does_not_wait(bus, unique).await;
    unicode_and_empty_values_round_trip(bus, unique).await;
    publish_batch_appends_in_order(bus, unique).await;
    publish_batch_counts_what_it_appended(bus, unique).await;
    claim_idle_takes_over_entries_left_pending(bus, unique).await;
    claim_idle_honours_count_and_order(bus, unique).await;
    read_own_pending_returns_what_the_consumer_left_unacknowledged(bus, unique).await;
    read_own_pending_returns_deleted_entries_without_fields(bus, unique).await;
    pending_lists_owner_idle_time_and_delivery_count(bus, unique).await;
    pending_count_follows_reads_and_acks(bus, unique).await;
    range_reads_inclusive_bounds_without_delivering(bus, unique).await;
    delete_removes_entries_and_counts_them(bus, unique).await;
}

/// Entry ids have the `<ms>-<seq>` shape and grow strictly with each publish on one stream:
/// consumers and the outbox dispatcher rely on stream order being publish order.
pub async fn publish_returns_increasing_ids(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("ids", unique);
    let mut previous: Option<(u64, u64)> = None;
    for n in 0..20 {
        let id = publish(bus, &stream, &[("n", &n.to_string())]).await;
        let parsed = parse_entry_id(&id)
            .unwrap_or_else(|| panic!("publish returned {id:?}, not an `<ms>-<seq>` entry id"));
        if let Some(prev) = previous {
            assert!(
                parsed > prev,
                "entry id {id:?} is not greater than the previous one {prev:?}"
            );
        }
        previous = Some(parsed);
    }
}

/// An entry must carry at least one field (Redis refuses `XADD s *` with none), so the memory
/// bus must refuse it too rather than accept what production would reject.
pub async fn publish_rejects_entry_without_fields(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("empty-fields", unique);
    assert!(
        bus.publish(&stream, &[]).await.is_err(),
        "publishing an entry with no fields must fail, as XADD does"
    );
}

/// Every consumer calls `ensure_group` at start-up, on every replica: the second call must
/// succeed (Redis BUSYGROUP is success), and it must work before the stream exists (MKSTREAM).
pub async fn ensure_group_is_idempotent(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("ensure-group", unique);
    ensure(bus, &stream, "g").await;
    ensure(bus, &stream, "g").await;
    let id = publish(bus, &stream, &[("k", "v")]).await;
    ensure(bus, &stream, "g").await;
    let got = read(bus, &stream, "g", "c", 10, 0).await;
    assert_eq!(
        ids(&got),
        vec![id],
        "a re-ensured group must keep its cursor and deliver the entry once"
    );
}

/// A group is created at the start of the stream, so entries published before the consumer
/// first started are still delivered (nothing an outbox dispatched early is lost).
pub async fn group_starts_at_beginning_of_stream(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("group-start", unique);
    let first = publish(bus, &stream, &[("n", "1")]).await;
    let second = publish(bus, &stream, &[("n", "2")]).await;
    ensure(bus, &stream, "late").await;
    let got = read(bus, &stream, "late", "c", 10, 0).await;
    assert_eq!(
        ids(&got),
        vec![first, second],
        "a group created after entries were published must deliver them from the start"
    );
}

/// Entries come back in publish order, each with its id and its fields exactly as published,
/// in their published order (signatures are computed over the exact strings).
pub async fn read_group_delivers_in_order_with_exact_fields(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("order", unique);
    ensure(bus, &stream, "g").await;
    let published: Vec<Vec<(String, String)>> = vec![
        owned(&[
            ("zone_id", "zone_a"),
            ("session_id", "ar_1"),
            ("reason", "x"),
        ]),
        owned(&[("z", "last-first"), ("a", "first-last")]),
        owned(&[("outbox_id", "0197a000-0000-7000-8000-000000000001")]),
    ];
    let mut expected = Vec::new();
    for fields in &published {
        let entry_id = bus
            .publish(&stream, fields)
            .await
            .unwrap_or_else(|e| panic!("publish to {stream} failed: {e}"));
        expected.push(Delivery {
            entry_id,
            fields: fields.clone(),
        });
    }
    let got = read(bus, &stream, "g", "c", 10, 0).await;
    assert_eq!(
        got, expected,
        "read_group must return every entry in publish order with exact fields"
    );
}

/// `count` caps one read; the rest stay for the next read, still in order.
pub async fn read_group_honours_count(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("count", unique);
    ensure(bus, &stream, "g").await;
    let mut published = Vec::new();
    for n in 0..3 {
        published.push(publish(bus, &stream, &[("n", &n.to_string())]).await);
    }
    let first = read(bus, &stream, "g", "c", 2, 0).await;
    assert_eq!(
        ids(&first),
        published[..2].to_vec(),
        "a read with count 2 must return the two oldest undelivered entries"
    );
    let second = read(bus, &stream, "g", "c", 2, 0).await;
    assert_eq!(
        ids(&second),
        published[2..].to_vec(),
        "the next read must continue where the previous one stopped"
    );
}

/// Reading with `>` semantics never hands an entry to the group twice, acknowledged or not:
/// unacknowledged entries wait in the pending list, not in the new-entries feed.
pub async fn read_group_does_not_redeliver(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("no-redelivery", unique);
    ensure(bus, &stream, "g").await;
    publish(bus, &stream, &[("n", "1")]).await;
    publish(bus, &stream, &[("n", "2")]).await;
    let first = read(bus, &stream, "g", "c", 10, 0).await;
    assert_eq!(first.len(), 2, "the first read must deliver both entries");
    let again = read(bus, &stream, "g", "c", 10, 0).await;
    assert!(
        again.is_empty(),
        "a second read must not redeliver unacknowledged entries, got {again:?}"
    );
    let other_consumer = read(bus, &stream, "g", "other", 10, 0).await;
    assert!(
        other_consumer.is_empty(),
        "another consumer of the same group must not receive delivered entries, got {other_consumer:?}"
    );
    let newer = publish(bus, &stream, &[("n", "3")]).await;
    let third = read(bus, &stream, "g", "c", 10, 0).await;
    assert_eq!(
        ids(&third),
        vec![newer],
        "only the entry published after the reads must be delivered"
    );
}

/// Consumers of one group share the work: every entry goes to exactly one of them (this is how
/// several replicas of a service split a topic).
pub async fn consumers_in_one_group_split_entries(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("split", unique);
    ensure(bus, &stream, "workers").await;
    let mut published = Vec::new();
    for n in 0..4 {
        published.push(publish(bus, &stream, &[("n", &n.to_string())]).await);
    }
    let a = read(bus, &stream, "workers", "a", 2, 0).await;
    let b = read(bus, &stream, "workers", "b", 10, 0).await;
    assert_eq!(
        ids(&a),
        published[..2].to_vec(),
        "consumer a must get the two oldest entries"
    );
    assert_eq!(
        ids(&b),
        published[2..].to_vec(),
        "consumer b must get exactly the entries a did not"
    );
    let a_again = read(bus, &stream, "workers", "a", 10, 0).await;
    let b_again = read(bus, &stream, "workers", "b", 10, 0).await;
    assert!(
        a_again.is_empty() && b_again.is_empty(),
        "no entry may be delivered twice within a group (a: {a_again:?}, b: {b_again:?})"
    );
}

/// Groups are independent: each sees every entry, and one group's reads and acks do not move
/// another's cursor (the STS and every Gateway host each consume the revocation topic fully).
pub async fn every_group_sees_every_entry(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("groups", unique);
    ensure(bus, &stream, "sts").await;
    ensure(bus, &stream, "gateway").await;
    let mut published = Vec::new();
    for n in 0..3 {
        published.push(publish(bus, &stream, &[("n", &n.to_string())]).await);
    }
    let sts = read(bus, &stream, "sts", "c", 10, 0).await;
    assert_eq!(
        ids(&sts),
        published,
        "group sts must see every entry in order"
    );
    ack(bus, &stream, "sts", &ids(&sts)).await;
    let gateway = read(bus, &stream, "gateway", "c", 10, 0).await;
    assert_eq!(
        ids(&gateway),
        published,
        "group gateway must see every entry even after sts read and acknowledged them"
    );
}

/// Acknowledging is final and idempotent: acked entries never come back, acking twice, acking
/// nothing and acking an id that was never pending all succeed (at-least-once consumers ack after
/// processing and may ack the same entry again after a retry).
pub async fn ack_is_idempotent_and_final(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("ack", unique);
    ensure(bus, &stream, "g").await;
    publish(bus, &stream, &[("n", "1")]).await;
    publish(bus, &stream, &[("n", "2")]).await;
    let got = read(bus, &stream, "g", "c", 10, 0).await;
    assert_eq!(
        got.len(),
        2,
        "both entries must be delivered before the ack"
    );
    let delivered = ids(&got);
    ack(bus, &stream, "g", &delivered).await;
    ack(bus, &stream, "g", &delivered).await;
    ack(bus, &stream, "g", &[]).await;
    ack(bus, &stream, "g", &["1-1".to_string()]).await;
    let after = read(bus, &stream, "g", "c", 10, 0).await;
    assert!(
        after.is_empty(),
        "acknowledged entries must never be redelivered, got {after:?}"
    );
    let next = publish(bus, &stream, &[("n", "3")]).await;
    let later = read(bus, &stream, "g", "c", 10, 0).await;
    assert_eq!(
        ids(&later),
        vec![next],
        "acks must not disturb delivery of later entries"
    );
}

/// Reading through a group that was never created fails (Redis NOGROUP) instead of silently
/// returning nothing, so a consumer that skipped `ensure_group` is noticed.
pub async fn read_group_without_group_fails(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("missing-group", unique);
    assert!(
        bus.read_group(&stream, "never-created", "c", 10, 0)
            .await
            .is_err(),
        "reading a missing stream's group must fail"
    );
    publish(bus, &stream, &[("k", "v")]).await;
    assert!(
        bus.read_group(&stream, "never-created", "c", 10, 0)
            .await
            .is_err(),
        "reading through a group that does not exist must fail"
    );
}

/// A blocking read wakes as soon as an entry is published meanwhile, well before its timeout
/// (revocations must propagate in milliseconds, not at the next poll).
pub async fn blocking_read_returns_entry_published_meanwhile(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("block-wakes", unique);
    ensure(bus, &stream, "g").await;
    let block_ms = 5_000;
    let started = Instant::now();
    let reader = read(bus, &stream, "g", "c", 10, block_ms);
    let publisher = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        publish(bus, &stream, &[("late", "entry")]).await
    };
    let (got, published) = tokio::join!(reader, publisher);
    let elapsed = started.elapsed();
    assert_eq!(
        got,
        vec![Delivery {
            entry_id: published,
            fields: owned(&[("late", "entry")]),
        }],
        "a blocking read must return the entry published while it waited"
    );
    assert!(
        elapsed < Duration::from_millis(block_ms / 2),
        "a blocking read must return when the entry arrives, not at its timeout (took {elapsed:?})"
    );
}

/// A blocking read with nothing to deliver waits about `block_ms`, then returns empty: it
/// neither returns early (a busy loop for the caller) nor hangs.
pub async fn blocking_read_returns_empty_after_timeout(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("block-timeout", unique);
    ensure(bus, &stream, "g").await;
    let started = Instant::now();
    let got = read(bus, &stream, "g", "c", 10, 300).await;
    let elapsed = started.elapsed();
    assert!(got.is_empty(), "nothing was published, yet got {got:?}");
    assert!(
        elapsed >= Duration::from_millis(250),
        "a read with block_ms 300 must wait for new entries, returned after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "a read with block_ms 300 must give up near its timeout, took {elapsed:?}"
    );
}

/// `block_ms == 0` means "do not wait" (Redis' `BLOCK 0` would wait forever; an adapter must not
/// pass it through).
pub async fn zero_block_does_not_wait(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("no-block", unique);
    ensure(bus, &stream, "g").await;
    let started = Instant::now();
    let read_once = bus.read_group(&stream, "g", "c", 10, 0);
    let got = tokio::time::timeout(Duration::from_secs(5), read_once)
        .await
        .unwrap_or_else(|_| panic!("read_group with block_ms 0 waited instead of returning"))
        .unwrap_or_else(|e| panic!("read_group on {stream} failed: {e}"));
    let elapsed = started.elapsed();
    assert!(got.is_empty(), "nothing was published, yet got {got:?}");
    assert!(
        elapsed < Duration::from_secs(1),
        "read_group with block_ms 0 must return at once, took {elapsed:?}"
    );
}

/// Field names and values are opaque strings: unicode, empty strings, newlines, JSON and
/// repeated names all come back byte for byte and in order.
pub async fn unicode_and_empty_values_round_trip(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("roundtrip", unique);
    ensure(bus, &stream, "g").await;
    let fields = owned(&[
        ("emoji", "🐆 caracal"),
        ("ключ", "значение"),
        ("名前", "値"),
        ("empty", ""),
        ("", "empty name"),
        ("spaces", "  padded  "),
        ("newline", "line 1\nline 2\r\n"),
        ("data", r#"{"id":"x","metadata_json":{"a":[1,2,null]}}"#),
        ("dup", "first"),
        ("dup", "second"),
    ]);
    let entry_id = bus
        .publish(&stream, &fields)
        .await
        .unwrap_or_else(|e| panic!("publish to {stream} failed: {e}"));
    let got = read(bus, &stream, "g", "c", 10, 0).await;
    assert_eq!(
        got,
        vec![Delivery { entry_id, fields }],
        "fields must round-trip exactly, including unicode, empty and repeated names"
    );
}

/// Parses `<ms>-<seq>` into a pair that orders like stream ids do.
fn parse_entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn ids(deliveries: &[Delivery]) -> Vec<String> {
    deliveries.iter().map(|d| d.entry_id.clone()).collect()
}

async fn publish(bus: &dyn EventBus, stream: &str, pairs: &[(&str, &str)]) -> String {
    bus.publish(stream, &owned(pairs))
        .await
        .unwrap_or_else(|e| panic!("publish to {stream} failed: {e}"))
}

async fn ensure(bus: &dyn EventBus, stream: &str, group: &str) {
    bus.ensure_group(stream, group)
        .await
        .unwrap_or_else(|e| panic!("ensure_group {group} on {stream} failed: {e}"));
}

/// `publish_batch` appends every entry, in order, with exact fields, after what was already
/// there; an empty batch appends nothing and succeeds.
pub async fn publish_batch_appends_in_order(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("batch", unique);
    ensure(bus, &stream, "g").await;
    publish(bus, &stream, &[("n", "before")]).await;
    let entries: Vec<Vec<(String, String)>> = (0..25)
        .map(|n| {
            vec![
                ("n".to_owned(), n.to_string()),
                ("k".to_owned(), "v".to_owned()),
            ]
        })
        .collect();
    let (published, error) = bus.publish_batch(&stream, &entries).await;
    assert!(error.is_none(), "publish_batch failed: {error:?}");
    assert_eq!(
        published,
        entries.len(),
        "every entry of the batch is appended"
    );
    assert_eq!(
        bus.publish_batch(&stream, &[]).await.0,
        0,
        "an empty batch appends nothing"
    );
    let delivered = read(bus, &stream, "g", "c", 100, 0).await;
    let got: Vec<Vec<(String, String)>> = delivered.into_iter().map(|d| d.fields).collect();
    let mut expected = vec![vec![("n".to_owned(), "before".to_owned())]];
    expected.extend(entries);
    assert_eq!(
        got, expected,
        "batch entries follow earlier ones, in order, fields exact"
    );
}

/// A batch holding an entry without fields is refused with an error, and the answered count
/// is exactly what reached the stream (all-or-nothing adapters answer 0; one-by-one adapters
/// the entries before the bad one).
pub async fn publish_batch_counts_what_it_appended(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("batch-empty", unique);
    ensure(bus, &stream, "g").await;
    let entries = vec![
        vec![("n".to_owned(), "0".to_owned())],
        vec![("n".to_owned(), "1".to_owned())],
        Vec::new(),
        vec![("n".to_owned(), "3".to_owned())],
    ];
    let (published, error) = bus.publish_batch(&stream, &entries).await;
    assert!(error.is_some(), "an entry without fields fails the batch");
    let delivered = read(bus, &stream, "g", "c", 100, 0).await;
    assert_eq!(
        delivered.len(),
        published,
        "the answered count is what the stream holds"
    );
    let got: Vec<Vec<(String, String)>> = delivered.into_iter().map(|d| d.fields).collect();
    assert_eq!(
        got,
        entries[..published].to_vec(),
        "the appended prefix, in order"
    );
}

/// An entry delivered to a consumer that never acknowledged it (it died) can be taken over by
/// another once it has been idle `min_idle_ms`, not before; it comes back with exact fields; the
/// claim counts as a new delivery, so it is not claimable again until idle anew; acknowledged
/// entries are never claimed.
pub async fn claim_idle_takes_over_entries_left_pending(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("claim-idle", unique);
    ensure(bus, &stream, "g").await;
    let fields = owned(&[("session_id", "ar_1"), ("reason", "consumer died")]);
    let lost = bus
        .publish(&stream, &fields)
        .await
        .unwrap_or_else(|e| panic!("publish to {stream} failed: {e}"));
    let done = publish(bus, &stream, &[("n", "acked")]).await;
    let got = read(bus, &stream, "g", "a", 10, 0).await;
    assert_eq!(
        ids(&got),
        vec![lost.clone(), done.clone()],
        "consumer a must get both entries"
    );
    ack(bus, &stream, "g", std::slice::from_ref(&done)).await;
    let early = claim(bus, &stream, "g", "b", CLAIM_IDLE_MS, 10).await;
    assert!(
        early.is_empty(),
        "an entry delivered less than min_idle_ms ago must not be claimable, got {early:?}"
    );
    tokio::time::sleep(Duration::from_millis(CLAIM_IDLE_MS * 5 / 2)).await;
    let claimed = claim(bus, &stream, "g", "b", CLAIM_IDLE_MS, 10).await;
    assert_eq!(
        claimed,
        vec![Delivery {
            entry_id: lost.clone(),
            fields,
        }],
        "after min_idle_ms the unacknowledged entry (and only it) must be claimable, fields exact"
    );
    let again = claim(bus, &stream, "g", "c", CLAIM_IDLE_MS, 10).await;
    assert!(
        again.is_empty(),
        "a claim must reset the entry's idle time, yet it was claimed again at once: {again:?}"
    );
    let unread = read(bus, &stream, "g", "a", 10, 0).await;
    assert!(
        unread.is_empty(),
        "claimed entries are pending, not new: a read must not return them, got {unread:?}"
    );
    ack(bus, &stream, "g", std::slice::from_ref(&lost)).await;
    let after_ack = claim(bus, &stream, "g", "c", 0, 10).await;
    assert!(
        after_ack.is_empty(),
        "acknowledged entries must never be claimed, got {after_ack:?}"
    );
}

/// `count` caps one claim, oldest pending entries first; entries never delivered are not
/// pending and cannot be claimed; claiming through a group that does not exist fails.
pub async fn claim_idle_honours_count_and_order(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("claim-count", unique);
    ensure(bus, &stream, "g").await;
    let mut published = Vec::new();
    for n in 0..3 {
        published.push(publish(bus, &stream, &[("n", &n.to_string())]).await);
    }
    let never_read = claim(bus, &stream, "g", "b", 0, 10).await;
    assert!(
        never_read.is_empty(),
        "entries never delivered are not pending and must not be claimed, got {never_read:?}"
    );
    let got = read(bus, &stream, "g", "a", 10, 0).await;
    assert_eq!(ids(&got), published, "consumer a must get every entry");
    let first = claim(bus, &stream, "g", "b", 0, 2).await;
    assert_eq!(
        ids(&first),
        published[..2].to_vec(),
        "a claim with count 2 must take the two oldest pending entries"
    );
    let all = claim(bus, &stream, "g", "c", 0, 10).await;
    assert_eq!(
        ids(&all),
        published,
        "with min_idle_ms 0 every pending entry is claimable, oldest first"
    );
    assert!(
        bus.claim_idle(&stream, "never-created", "b", 0, 10)
            .await
            .is_err(),
        "claiming through a group that does not exist must fail"
    );
}

/// The idle threshold of the claim cases: long enough that back-to-back calls stay under it,
/// short enough to wait out.
const CLAIM_IDLE_MS: u64 = 100;

async fn claim(
    bus: &dyn EventBus,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle_ms: u64,
    count: usize,
) -> Vec<Delivery> {
    bus.claim_idle(stream, group, consumer, min_idle_ms, count)
        .await
        .unwrap_or_else(|e| panic!("claim_idle {group}/{consumer} on {stream} failed: {e}"))
}

async fn read(
    bus: &dyn EventBus,
    stream: &str,
    group: &str,
    consumer: &str,
    count: usize,
    block_ms: u64,
) -> Vec<Delivery> {
    bus.read_group(stream, group, consumer, count, block_ms)
        .await
        .unwrap_or_else(|e| panic!("read_group {group}/{consumer} on {stream} failed: {e}"))
}

async fn ack(bus: &dyn EventBus, stream: &str, group: &str, entry_ids: &[String]) {
    bus.ack(stream, group, entry_ids)
        .await
        .unwrap_or_else(|e| panic!("ack {entry_ids:?} in {group} on {stream} failed: {e}"));
}

/// A consumer restarting under its own name re-reads what it left unacknowledged: only its own
/// pending entries, after the given id, oldest first, with exact fields, `count` at a time;
/// never entries not yet delivered, nor other consumers' ones, nor acknowledged ones.
pub async fn read_own_pending_returns_what_the_consumer_left_unacknowledged(
    bus: &dyn EventBus,
    unique: &str,
) {
    let stream = stream_name("own-pending", unique);
    ensure(bus, &stream, "g").await;
    let mut published = Vec::new();
    for n in 0..4 {
        published.push(publish(bus, &stream, &[("n", &n.to_string())]).await);
    }
    let mine = read(bus, &stream, "g", "me", 3, 0).await;
    assert_eq!(ids(&mine), published[..3].to_vec());
    let theirs = read(bus, &stream, "g", "other", 10, 0).await;
    assert_eq!(ids(&theirs), published[3..].to_vec());
    ack(bus, &stream, "g", std::slice::from_ref(&published[1])).await;
    let never_delivered = publish(bus, &stream, &[("n", "new")]).await;

    let first = own_pending(bus, &stream, "g", "me", "0", 1).await;
    assert_eq!(
        first,
        vec![Delivery {
            entry_id: published[0].clone(),
            fields: owned(&[("n", "0")]),
        }],
        "count 1 from 0: the oldest own pending entry, fields exact"
    );
    let rest = own_pending(bus, &stream, "g", "me", &published[0], 10).await;
    assert_eq!(
        ids(&rest),
        vec![published[2].clone()],
        "after an id: the later own pending entries only (acked, other consumers' and \
         undelivered entries excluded)"
    );
    let done = own_pending(bus, &stream, "g", "me", &published[2], 10).await;
    assert!(done.is_empty(), "nothing after the last one, got {done:?}");
    let fresh = read(bus, &stream, "g", "me", 10, 0).await;
    assert_eq!(
        ids(&fresh),
        vec![never_delivered],
        "re-reading pending entries does not consume new ones"
    );
    assert!(
        bus.read_own_pending(&stream, "never-created", "me", "0", 10)
            .await
            .is_err(),
        "reading through a group that does not exist must fail"
    );
}

/// An own pending entry deleted from the stream meanwhile still comes back, by id, without
/// fields (the consumer acknowledges or dead-letters it instead of waiting on it forever).
pub async fn read_own_pending_returns_deleted_entries_without_fields(
    bus: &dyn EventBus,
    unique: &str,
) {
    let stream = stream_name("own-pending-deleted", unique);
    ensure(bus, &stream, "g").await;
    let gone = publish(bus, &stream, &[("n", "0")]).await;
    let kept = publish(bus, &stream, &[("n", "1")]).await;
    read(bus, &stream, "g", "me", 10, 0).await;
    delete(bus, &stream, std::slice::from_ref(&gone)).await;
    let got = own_pending(bus, &stream, "g", "me", "0", 10).await;
    assert_eq!(
        got,
        vec![
            Delivery {
                entry_id: gone,
                fields: Vec::new(),
            },
            Delivery {
                entry_id: kept,
                fields: owned(&[("n", "1")]),
            },
        ],
        "a deleted pending entry comes back without fields, the other one with its fields"
    );
}

/// The pending list names each entry's consumer, its idle time and how often it was
/// delivered: the first read counts one, a claim and a re-read of own pending entries each add
/// one. Bounds are inclusive, `-`/`+` are the ends, `count` caps, a consumer filters; a group
/// that does not exist fails.
pub async fn pending_lists_owner_idle_time_and_delivery_count(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("pending", unique);
    ensure(bus, &stream, "g").await;
    let mut published = Vec::new();
    for n in 0..3 {
        published.push(publish(bus, &stream, &[("n", &n.to_string())]).await);
    }
    read(bus, &stream, "g", "a", 2, 0).await;
    read(bus, &stream, "g", "b", 10, 0).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let all = pending(bus, &stream, "g", "-", "+", 10, None).await;
    let shape: Vec<(String, String, u64)> = all
        .iter()
        .map(|p| (p.entry_id.clone(), p.consumer.clone(), p.deliveries))
        .collect();
    assert_eq!(
        shape,
        vec![
            (published[0].clone(), "a".to_string(), 1),
            (published[1].clone(), "a".to_string(), 1),
            (published[2].clone(), "b".to_string(), 1),
        ],
        "every pending entry with its consumer, delivered once"
    );
    assert!(
        all.iter().all(|p| p.idle_ms >= 100),
        "idle time counts from the delivery, 150 ms ago: {all:?}"
    );

    let claimed = claim(bus, &stream, "g", "c", 0, 1).await;
    assert_eq!(ids(&claimed), vec![published[0].clone()]);
    own_pending(bus, &stream, "g", "c", "0", 10).await;
    let first = pending(bus, &stream, "g", &published[0], &published[0], 10, None).await;
    assert_eq!(
        first
            .iter()
            .map(|p| (p.consumer.as_str(), p.deliveries))
            .collect::<Vec<_>>(),
        vec![("c", 3)],
        "read, claimed, re-read: three deliveries, now c's"
    );
    let untouched = pending(bus, &stream, "g", &published[1], &published[1], 1, None).await;
    assert!(
        first[0].idle_ms < untouched[0].idle_ms,
        "the re-read restarted the idle time: {first:?} vs the untouched {untouched:?}"
    );

    let inner = pending(bus, &stream, "g", &published[1], &published[2], 10, None).await;
    assert_eq!(
        inner.iter().map(|p| p.entry_id.clone()).collect::<Vec<_>>(),
        published[1..].to_vec(),
        "both bounds are inclusive"
    );
    let capped = pending(bus, &stream, "g", "-", "+", 2, None).await;
    assert_eq!(
        capped
            .iter()
            .map(|p| p.entry_id.clone())
            .collect::<Vec<_>>(),
        published[..2].to_vec(),
        "count caps, oldest first"
    );
    let of_a = pending(bus, &stream, "g", "-", "+", 10, Some("a")).await;
    assert_eq!(
        of_a.iter().map(|p| p.entry_id.clone()).collect::<Vec<_>>(),
        vec![published[1].clone()],
        "a consumer filter keeps that consumer's entries only"
    );
    assert!(
        bus.pending(&stream, "never-created", "-", "+", 10, None)
            .await
            .is_err(),
        "a group that does not exist must fail"
    );
}

/// The pending count is the number of entries delivered and not acknowledged.
pub async fn pending_count_follows_reads_and_acks(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("pending-count", unique);
    ensure(bus, &stream, "g").await;
    assert_eq!(
        count_pending(bus, &stream, "g").await,
        0,
        "nothing delivered yet"
    );
    publish(bus, &stream, &[("n", "0")]).await;
    publish(bus, &stream, &[("n", "1")]).await;
    publish(bus, &stream, &[("n", "2")]).await;
    assert_eq!(
        count_pending(bus, &stream, "g").await,
        0,
        "published but undelivered entries are not pending"
    );
    let got = read(bus, &stream, "g", "c", 10, 0).await;
    assert_eq!(count_pending(bus, &stream, "g").await, 3);
    ack(bus, &stream, "g", &ids(&got)[..2]).await;
    assert_eq!(count_pending(bus, &stream, "g").await, 1);
    assert!(
        bus.pending_count(&stream, "never-created").await.is_err(),
        "a group that does not exist must fail"
    );
}

/// `range` reads entries between inclusive bounds, `count` at a time, without delivering them
/// to any group; a missing stream is empty, a malformed id an error.
pub async fn range_reads_inclusive_bounds_without_delivering(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("range", unique);
    let missing = bus
        .range(&stream, "-", "+", 10)
        .await
        .unwrap_or_else(|e| panic!("range of a missing stream failed: {e}"));
    assert!(missing.is_empty(), "a missing stream is empty");
    ensure(bus, &stream, "g").await;
    let mut published = Vec::new();
    for n in 0..4 {
        published.push(publish(bus, &stream, &[("n", &n.to_string())]).await);
    }
    let all = range(bus, &stream, "-", "+", 10).await;
    assert_eq!(ids(&all), published, "every entry, oldest first");
    assert_eq!(all[2].fields, owned(&[("n", "2")]), "fields exact");
    let from_second = range(bus, &stream, &published[1], "+", 2).await;
    assert_eq!(
        ids(&from_second),
        published[1..3].to_vec(),
        "the start is inclusive and count caps"
    );
    let one = range(bus, &stream, &published[3], &published[3], 10).await;
    assert_eq!(
        ids(&one),
        vec![published[3].clone()],
        "start = end reads that entry"
    );
    let nothing = range(bus, &stream, "-", "+", 0).await;
    assert!(nothing.is_empty(), "count 0 reads nothing");
    assert!(
        bus.range(&stream, "not-an-id", "+", 10).await.is_err(),
        "a malformed start must fail"
    );
    let delivered = read(bus, &stream, "g", "c", 10, 0).await;
    assert_eq!(
        ids(&delivered),
        published,
        "ranges delivered nothing: the group still gets every entry"
    );
}

/// `delete` removes entries and answers how many it held; the stream length follows; deleting
/// again, or from a missing stream, removes nothing.
pub async fn delete_removes_entries_and_counts_them(bus: &dyn EventBus, unique: &str) {
    let stream = stream_name("delete", unique);
    assert_eq!(
        length(bus, &stream).await,
        0,
        "a missing stream has no entries"
    );
    let mut published = Vec::new();
    for n in 0..3 {
        published.push(publish(bus, &stream, &[("n", &n.to_string())]).await);
    }
    assert_eq!(length(bus, &stream).await, 3);
    let target = vec![published[1].clone(), "1-1".to_string()];
    assert_eq!(
        delete(bus, &stream, &target).await,
        1,
        "one of the two existed"
    );
    assert_eq!(length(bus, &stream).await, 2);
    assert_eq!(delete(bus, &stream, &target).await, 0, "already gone");
    assert_eq!(delete(bus, &stream, &[]).await, 0, "nothing asked");
    let left = range(bus, &stream, "-", "+", 10).await;
    assert_eq!(
        ids(&left),
        vec![published[0].clone(), published[2].clone()],
        "the others stay, in order"
    );
    let missing = stream_name("delete", &format!("{unique}-missing"));
    assert_eq!(delete(bus, &missing, &published).await, 0);
}

async fn own_pending(
    bus: &dyn EventBus,
    stream: &str,
    group: &str,
    consumer: &str,
    after_id: &str,
    count: usize,
) -> Vec<Delivery> {
    bus.read_own_pending(stream, group, consumer, after_id, count)
        .await
        .unwrap_or_else(|e| panic!("read_own_pending {group}/{consumer} on {stream} failed: {e}"))
}

async fn pending(
    bus: &dyn EventBus,
    stream: &str,
    group: &str,
    start: &str,
    end: &str,
    count: usize,
    consumer: Option<&str>,
) -> Vec<PendingEntry> {
    bus.pending(stream, group, start, end, count, consumer)
        .await
        .unwrap_or_else(|e| panic!("pending {group} on {stream} failed: {e}"))
}

async fn count_pending(bus: &dyn EventBus, stream: &str, group: &str) -> u64 {
    bus.pending_count(stream, group)
        .await
        .unwrap_or_else(|e| panic!("pending_count {group} on {stream} failed: {e}"))
}

async fn range(
    bus: &dyn EventBus,
    stream: &str,
    start: &str,
    end: &str,
    count: usize,
) -> Vec<Delivery> {
    bus.range(stream, start, end, count)
        .await
        .unwrap_or_else(|e| panic!("range {start}..{end} on {stream} failed: {e}"))
}

async fn length(bus: &dyn EventBus, stream: &str) -> u64 {
    bus.stream_len(stream)
        .await
        .unwrap_or_else(|e| panic!("stream_len of {stream} failed: {e}"))
}

async fn delete(bus: &dyn EventBus, stream: &str, entry_ids: &[String]) -> u64 {
    bus.delete(stream, entry_ids)
        .await
        .unwrap_or_else(|e| panic!("delete {entry_ids:?} from {stream} failed: {e}"))
}

/// A bus for failure tests: forwards everything to `inner`, except that while [`Self::down`] is
/// set it refuses publications (to every stream, or only to streams ending with a suffix) as
/// an unreachable Redis would.
pub struct GatedBus {
    /// The bus everything is forwarded to.
    pub inner: std::sync::Arc<dyn EventBus>,
    only_suffix: Option<String>,
    /// While set, matching publications fail with `BusError::Unavailable`.
    pub down: std::sync::atomic::AtomicBool,
}

impl GatedBus {
    /// Gates publications to every stream.
    pub fn new(inner: std::sync::Arc<dyn EventBus>) -> GatedBus {
        GatedBus {
            inner,
            only_suffix: None,
            down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Gates publications to streams whose name ends with `suffix` only.
    pub fn for_streams_ending_with(inner: std::sync::Arc<dyn EventBus>, suffix: &str) -> GatedBus {
        GatedBus {
            only_suffix: Some(suffix.to_string()),
            ..GatedBus::new(inner)
        }
    }
}

#[async_trait::async_trait]
impl EventBus for GatedBus {
    async fn publish(&self, stream: &str, fields: &[(String, String)]) -> Result<String, BusError> {
        let gated = self
            .only_suffix
            .as_deref()
            .is_none_or(|suffix| stream.ends_with(suffix));
        if gated && self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(BusError::Unavailable(format!(
                "{stream} is down on purpose"
            )));
        }
        self.inner.publish(stream, fields).await
    }
    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
        self.inner.ensure_group(stream, group).await
    }
    async fn read_group(
        &self,
        s: &str,
        g: &str,
        c: &str,
        n: usize,
        block_ms: u64,
    ) -> Result<Vec<Delivery>, BusError> {
        self.inner.read_group(s, g, c, n, block_ms).await
    }
    async fn claim_idle(
        &self,
        s: &str,
        g: &str,
        c: &str,
        idle: u64,
        n: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        self.inner.claim_idle(s, g, c, idle, n).await
    }
    async fn read_own_pending(
        &self,
        s: &str,
        g: &str,
        c: &str,
        after: &str,
        n: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        self.inner.read_own_pending(s, g, c, after, n).await
    }
    async fn pending(
        &self,
        s: &str,
        g: &str,
        start: &str,
        end: &str,
        n: usize,
        c: Option<&str>,
    ) -> Result<Vec<PendingEntry>, BusError> {
        self.inner.pending(s, g, start, end, n, c).await
    }
    async fn pending_count(&self, s: &str, g: &str) -> Result<u64, BusError> {
        self.inner.pending_count(s, g).await
    }
    async fn stream_len(&self, s: &str) -> Result<u64, BusError> {
        self.inner.stream_len(s).await
    }
    async fn range(
        &self,
        s: &str,
        start: &str,
        end: &str,
        n: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        self.inner.range(s, start, end, n).await
    }
    async fn delete(&self, s: &str, ids: &[String]) -> Result<u64, BusError> {
        self.inner.delete(s, ids).await
    }
    async fn ack(&self, s: &str, g: &str, ids: &[String]) -> Result<(), BusError> {
        self.inner.ack(s, g, ids).await
    }
    async fn ping(&self) -> Result<(), BusError> {
        self.inner.ping().await
    }
}
