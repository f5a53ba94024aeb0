//! The in-process event bus: Redis Streams semantics for one process (`caracal dev`, tests).
//!
//! What it keeps from Redis, because services depend on it: per-stream order; `<ms>-<seq>` entry
//! ids that only grow; consumer groups that each have a last-delivered cursor and a pending list;
//! `>` reads that hand each entry to one consumer of a group once; blocking reads that wake on
//! publish; `MAXLEN 100000` trimming (never of audit evidence); delivery counts and idle times
//! in the pending list; and the same refusals (no fields, unknown group, malformed ids). What it
//! drops: persistence and sharing across processes, which is why memory mode is all-in-one only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use caracal_core::ports::events::{trims_on_publish, BusError, Delivery, EventBus, PendingEntry};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Cap on entries kept per stream, as producers' `MAXLEN ~ 100000` (api.md §4).
pub const DEFAULT_MAX_LEN: usize = 100_000;

/// A stream entry id: milliseconds and a sequence within that millisecond. Ordered like Redis ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
struct EntryId {
    ms: u64,
    seq: u64,
}

impl EntryId {
    /// Parses `<ms>-<seq>` or `<ms>` (Redis reads a bare `<ms>` as `<ms>-0`).
    fn parse(text: &str) -> Option<EntryId> {
        let (ms, seq) = match text.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            None => (text, "0"),
        };
        Some(EntryId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The id a new entry gets: the wall clock if it moved past `last`, else `last` plus one in
    /// sequence, so ids grow strictly even when the clock stalls or steps back.
    fn next_after(last: EntryId, now_ms: u64) -> EntryId {
        if now_ms > last.ms {
            return EntryId { ms: now_ms, seq: 0 };
        }
        match last.seq.checked_add(1) {
            Some(seq) => EntryId { ms: last.ms, seq },
            None => EntryId {
                ms: last.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[derive(Debug)]
struct Entry {
    id: EntryId,
    fields: Vec<(String, String)>,
}

/// One consumer group: where `>` reads resume, and what was delivered but not yet acked (to
/// whom, when), as Redis' PEL. Entries trimmed from the stream stay pending until acked or
/// claimed, as in Redis.
#[derive(Debug, Default)]
struct Group {
    last_delivered: EntryId,
    pending: BTreeMap<EntryId, Pending>,
}

/// One pending entry: the consumer it was last delivered to and when, which is what its idle
/// time counts from, and how many times it was delivered.
#[derive(Debug)]
struct Pending {
    consumer: String,
    delivered_at: Instant,
    deliveries: u64,
}

/// A range bound as Redis reads it: `-` and `+` for the ends, else an id.
fn bound(text: &str, end: bool) -> Result<EntryId, BusError> {
    match text {
        "-" => Ok(EntryId::default()),
        "+" => Ok(EntryId {
            ms: u64::MAX,
            seq: u64::MAX,
        }),
        // A bare `<ms>` as an end means the whole millisecond, as in Redis.
        _ if end && !text.contains('-') => EntryId::parse(text)
            .map(|id| EntryId {
                seq: u64::MAX,
                ..id
            })
            .ok_or_else(|| invalid_id(text)),
        _ => EntryId::parse(text).ok_or_else(|| invalid_id(text)),
    }
}

fn invalid_id(text: &str) -> BusError {
    BusError::Unavailable(format!("invalid stream entry id {text:?}"))
}

#[derive(Debug, Default)]
struct Stream {
    entries: VecDeque<Entry>,
    last_id: EntryId,
    groups: HashMap<String, Group>,
    /// Woken on every publish to this stream; blocked readers wait on it.
    published: Arc<Notify>,
}

impl Stream {
    /// Delivers up to `count` (0 = no limit, like Redis `COUNT 0`) never-delivered entries to
    /// `consumer`, moving the group's cursor and recording them as pending.
    fn deliver(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let state = self
            .groups
            .get_mut(group)
            .ok_or_else(|| no_group(stream, group))?;
        let start = self
            .entries
            .partition_point(|entry| entry.id <= state.last_delivered);
        let limit = if count == 0 { usize::MAX } else { count };
        let now = Instant::now();
        let mut delivered = Vec::new();
        for entry in self.entries.iter().skip(start).take(limit) {
            state.last_delivered = entry.id;
            state.pending.insert(
                entry.id,
                Pending {
                    consumer: consumer.to_string(),
                    delivered_at: now,
                    deliveries: 1,
                },
            );
            delivered.push(Delivery {
                entry_id: entry.id.to_string(),
                fields: entry.fields.clone(),
            });
        }
        Ok(delivered)
    }

    /// Hands up to `count` entries pending in `group` for at least `min_idle` to `consumer`,
    /// oldest id first, as `XAUTOCLAIM … 0-0`: each claimed entry is delivered again now; pending
    /// entries no longer in the stream are dropped from the pending list and not counted.
    fn claim(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let state = self
            .groups
            .get_mut(group)
            .ok_or_else(|| no_group(stream, group))?;
        let now = Instant::now();
        let mut claimed = Vec::new();
        let mut deleted = Vec::new();
        for (id, pending) in state.pending.iter_mut() {
            if claimed.len() >= count {
                break;
            }
            if now.saturating_duration_since(pending.delivered_at) < min_idle {
                continue;
            }
            let Ok(index) = self.entries.binary_search_by(|entry| entry.id.cmp(id)) else {
                deleted.push(*id);
                continue;
            };
            pending.consumer = consumer.to_string();
            pending.delivered_at = now;
            pending.deliveries += 1;
            claimed.push(Delivery {
                entry_id: id.to_string(),
                fields: self.entries[index].fields.clone(),
            });
        }
        for id in deleted {
            state.pending.remove(&id);
        }
        Ok(claimed)
    }

    /// `consumer`'s pending entries after `after`, up to `count`, re-delivered now (as
    /// `XREADGROUP … <id>`); one no longer in the stream comes back without fields, unchanged.
    fn redeliver_own(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        after: EntryId,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let state = self
            .groups
            .get_mut(group)
            .ok_or_else(|| no_group(stream, group))?;
        let now = Instant::now();
        let mut out = Vec::new();
        let after_start = (std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded);
        for (id, pending) in state.pending.range_mut(after_start) {
            if out.len() >= count {
                break;
            }
            if pending.consumer != consumer {
                continue;
            }
            let fields = match self.entries.binary_search_by(|entry| entry.id.cmp(id)) {
                Ok(index) => {
                    pending.delivered_at = now;
                    pending.deliveries += 1;
                    self.entries[index].fields.clone()
                }
                Err(_) => Vec::new(),
            };
            out.push(Delivery {
                entry_id: id.to_string(),
                fields,
            });
        }
        Ok(out)
    }

    /// Index range of the entries with ids in `start..=end`.
    fn span(&self, start: EntryId, end: EntryId) -> std::ops::Range<usize> {
        let from = self.entries.partition_point(|entry| entry.id < start);
        let to = self.entries.partition_point(|entry| entry.id <= end);
        from..to.max(from)
    }
}

/// [`EventBus`] in process memory, with the Redis Streams semantics the services rely on.
///
/// Cheap to share behind an `Arc`; every method takes `&self`. The state sits behind one
/// `std::sync::Mutex` that is never held across an `.await`: blocked readers wait on the stream's
/// [`Notify`] with the lock released.
pub struct MemoryBus {
    streams: Mutex<HashMap<String, Stream>>,
    max_len: usize,
}

impl MemoryBus {
    /// An empty bus trimming each stream to [`DEFAULT_MAX_LEN`] entries, as the producers' `MAXLEN`.
    pub fn new() -> MemoryBus {
        MemoryBus::with_max_len(DEFAULT_MAX_LEN)
    }

    /// An empty bus keeping at most `max_len` entries per stream (at least one), oldest trimmed
    /// first; for tests of trimming without publishing a hundred thousand entries.
    pub fn with_max_len(max_len: usize) -> MemoryBus {
        MemoryBus {
            streams: Mutex::new(HashMap::new()),
            max_len: max_len.max(1),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, HashMap<String, Stream>>, BusError> {
        // A poisoned lock means a panic mid-update; refusing is safer than serving torn state.
        self.streams
            .lock()
            .map_err(|_| BusError::Unavailable("memory bus state poisoned by a panic".into()))
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new()
    }
}

impl fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBus")
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

fn no_group(stream: &str, group: &str) -> BusError {
    BusError::Unavailable(format!(
        "NOGROUP no stream {stream:?} or consumer group {group:?}"
    ))
}

/// Every id of `texts`, or an error naming the first malformed one (before anything changes).
fn parse_ids(texts: &[String]) -> Result<Vec<EntryId>, BusError> {
    texts
        .iter()
        .map(|text| EntryId::parse(text).ok_or_else(|| invalid_id(text)))
        .collect()
}

fn now_ms() -> u64 {
    // A clock before 1970 only makes ids fall back to last-plus-one; never an error.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[async_trait]
impl EventBus for MemoryBus {
    async fn publish(&self, stream: &str, fields: &[(String, String)]) -> Result<String, BusError> {
        if fields.is_empty() {
            return Err(BusError::Unavailable(
                "an entry needs at least one field (as XADD)".into(),
            ));
        }
        let mut streams = self.lock()?;
        let state = streams.entry(stream.to_string()).or_default();
        let id = EntryId::next_after(state.last_id, now_ms());
        state.last_id = id;
        state.entries.push_back(Entry {
            id,
            fields: fields.to_vec(),
        });
        if trims_on_publish(stream) {
            while state.entries.len() > self.max_len {
                state.entries.pop_front();
            }
        }
        // Readers register their `Notified` under the lock before releasing it, so this wake-up
        // cannot fall between their check and their wait.
        state.published.notify_waiters();
        Ok(id.to_string())
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
        let mut streams = self.lock()?;
        streams
            .entry(stream.to_string())
            .or_default()
            .groups
            .entry(group.to_string())
            .or_default();
        Ok(())
    }

    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Delivery>, BusError> {
        let deadline = Instant::now() + Duration::from_millis(block_ms);
        loop {
            let published: Arc<Notify>;
            let notified;
            {
                let mut streams = self.lock()?;
                let state = streams
                    .get_mut(stream)
                    .ok_or_else(|| no_group(stream, group))?;
                let delivered = state.deliver(stream, group, consumer, count)?;
                if !delivered.is_empty() || block_ms == 0 || Instant::now() >= deadline {
                    return Ok(delivered);
                }
                published = Arc::clone(&state.published);
                // Created while the lock is held: a publish after the unlock wakes it.
                notified = published.notified();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
            // Woken by a publish; another consumer may have taken the entries, so check again.
        }
    }

    async fn claim_idle(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let mut streams = self.lock()?;
        streams
            .get_mut(stream)
            .ok_or_else(|| no_group(stream, group))?
            .claim(
                stream,
                group,
                consumer,
                Duration::from_millis(min_idle_ms),
                count,
            )
    }

    async fn read_own_pending(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        after_id: &str,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let after = EntryId::parse(after_id).ok_or_else(|| invalid_id(after_id))?;
        let limit = if count == 0 { usize::MAX } else { count };
        let mut streams = self.lock()?;
        streams
            .get_mut(stream)
            .ok_or_else(|| no_group(stream, group))?
            .redeliver_own(stream, group, consumer, after, limit)
    }

    async fn pending(
        &self,
        stream: &str,
        group: &str,
        start: &str,
        end: &str,
        count: usize,
        consumer: Option<&str>,
    ) -> Result<Vec<PendingEntry>, BusError> {
        let (start, end) = (bound(start, false)?, bound(end, true)?);
        let streams = self.lock()?;
        let state = streams
            .get(stream)
            .and_then(|s| s.groups.get(group))
            .ok_or_else(|| no_group(stream, group))?;
        if start > end {
            return Ok(Vec::new());
        }
        let now = Instant::now();
        Ok(state
            .pending
            .range(start..=end)
            .filter(|(_, p)| consumer.is_none_or(|c| p.consumer == c))
            .take(count)
            .map(|(id, p)| PendingEntry {
                entry_id: id.to_string(),
                consumer: p.consumer.clone(),
                idle_ms: u64::try_from(now.saturating_duration_since(p.delivered_at).as_millis())
                    .unwrap_or(u64::MAX),
                deliveries: p.deliveries,
            })
            .collect())
    }

    async fn pending_count(&self, stream: &str, group: &str) -> Result<u64, BusError> {
        let streams = self.lock()?;
        let state = streams
            .get(stream)
            .and_then(|s| s.groups.get(group))
            .ok_or_else(|| no_group(stream, group))?;
        Ok(state.pending.len() as u64)
    }

    async fn stream_len(&self, stream: &str) -> Result<u64, BusError> {
        let streams = self.lock()?;
        Ok(streams.get(stream).map_or(0, |s| s.entries.len() as u64))
    }

    async fn range(
        &self,
        stream: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let (start, end) = (bound(start, false)?, bound(end, true)?);
        let streams = self.lock()?;
        let Some(state) = streams.get(stream) else {
            return Ok(Vec::new());
        };
        Ok(state
            .entries
            .range(state.span(start, end))
            .take(count)
            .map(|entry| Delivery {
                entry_id: entry.id.to_string(),
                fields: entry.fields.clone(),
            })
            .collect())
    }

    async fn delete(&self, stream: &str, entry_ids: &[String]) -> Result<u64, BusError> {
        let ids = parse_ids(entry_ids)?;
        let mut streams = self.lock()?;
        let Some(state) = streams.get_mut(stream) else {
            return Ok(0);
        };
        let mut deleted = 0;
        for id in ids {
            if let Ok(index) = state.entries.binary_search_by(|entry| entry.id.cmp(&id)) {
                state.entries.remove(index);
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    async fn ack(&self, stream: &str, group: &str, entry_ids: &[String]) -> Result<(), BusError> {
        let ids = parse_ids(entry_ids)?;
        let mut streams = self.lock()?;
        // As XACK: an unknown stream or group acknowledges nothing and is not an error.
        if let Some(state) = streams
            .get_mut(stream)
            .and_then(|state| state.groups.get_mut(group))
        {
            for id in ids {
                state.pending.remove(&id);
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        self.lock().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(n: usize) -> Vec<(String, String)> {
        vec![("n".to_string(), n.to_string())]
    }

    #[test]
    fn ids_grow_when_the_clock_stalls_or_steps_back() {
        let last = EntryId { ms: 100, seq: 7 };
        assert_eq!(EntryId::next_after(last, 100), EntryId { ms: 100, seq: 8 });
        assert_eq!(EntryId::next_after(last, 50), EntryId { ms: 100, seq: 8 });
        assert_eq!(EntryId::next_after(last, 101), EntryId { ms: 101, seq: 0 });
        let full = EntryId {
            ms: 100,
            seq: u64::MAX,
        };
        assert_eq!(EntryId::next_after(full, 100), EntryId { ms: 101, seq: 0 });
    }

    #[test]
    fn ids_parse_like_redis() {
        assert_eq!(EntryId::parse("5-3"), Some(EntryId { ms: 5, seq: 3 }));
        assert_eq!(EntryId::parse("5"), Some(EntryId { ms: 5, seq: 0 }));
        assert_eq!(EntryId::parse("x-1"), None);
        assert_eq!(EntryId::parse("1-"), None);
        assert_eq!(EntryId { ms: 5, seq: 3 }.to_string(), "5-3");
    }

    #[tokio::test]
    async fn trimming_drops_the_oldest_entries_beyond_the_cap() {
        let bus = MemoryBus::with_max_len(3);
        bus.ensure_group("s", "g").await.expect("ensure group");
        let mut ids = Vec::new();
        for n in 0..5 {
            ids.push(bus.publish("s", &fields(n)).await.expect("publish"));
        }
        let got = bus.read_group("s", "g", "c", 10, 0).await.expect("read");
        let got_ids: Vec<String> = got.into_iter().map(|d| d.entry_id).collect();
        assert_eq!(
            got_ids,
            ids[2..].to_vec(),
            "only the newest 3 entries remain"
        );
    }

    #[tokio::test]
    async fn audit_evidence_and_its_dead_letters_are_never_trimmed() {
        let bus = MemoryBus::with_max_len(2);
        for stream in ["caracal.audit.events", "caracal.audit.events.dlq"] {
            for n in 0..5 {
                bus.publish(stream, &fields(n)).await.expect("publish");
            }
            assert_eq!(bus.stream_len(stream).await.expect("len"), 5, "{stream}");
        }
        for n in 0..5 {
            bus.publish("caracal.sessions.revoke", &fields(n))
                .await
                .expect("publish");
        }
        assert_eq!(
            bus.stream_len("caracal.sessions.revoke")
                .await
                .expect("len"),
            2,
            "other streams keep their cap"
        );
    }

    #[tokio::test]
    async fn read_and_ack_maintain_the_pending_list() {
        let bus = MemoryBus::new();
        bus.ensure_group("s", "g").await.expect("ensure group");
        let first = bus.publish("s", &fields(1)).await.expect("publish");
        let second = bus.publish("s", &fields(2)).await.expect("publish");
        bus.read_group("s", "g", "a", 1, 0).await.expect("read a");
        bus.read_group("s", "g", "b", 1, 0).await.expect("read b");
        let pending = |bus: &MemoryBus| -> Vec<(String, String)> {
            let streams = bus.lock().expect("lock");
            streams["s"].groups["g"]
                .pending
                .iter()
                .map(|(id, pending)| (id.to_string(), pending.consumer.clone()))
                .collect()
        };
        assert_eq!(
            pending(&bus),
            vec![
                (first.clone(), "a".to_string()),
                (second.clone(), "b".to_string())
            ]
        );
        bus.ack("s", "g", std::slice::from_ref(&first))
            .await
            .expect("ack");
        assert_eq!(pending(&bus), vec![(second, "b".to_string())]);
    }

    #[tokio::test]
    async fn ack_rejects_malformed_ids_and_changes_nothing() {
        let bus = MemoryBus::new();
        bus.ensure_group("s", "g").await.expect("ensure group");
        let id = bus.publish("s", &fields(1)).await.expect("publish");
        bus.read_group("s", "g", "c", 10, 0).await.expect("read");
        let result = bus.ack("s", "g", &[id, "not-an-id".to_string()]).await;
        assert!(result.is_err(), "a malformed id must be refused");
        let streams = bus.lock().expect("lock");
        assert_eq!(streams["s"].groups["g"].pending.len(), 1, "nothing acked");
    }

    #[tokio::test]
    async fn claims_drop_pending_entries_trimmed_from_the_stream() {
        let bus = MemoryBus::with_max_len(2);
        bus.ensure_group("s", "g").await.expect("ensure group");
        let first = bus.publish("s", &fields(1)).await.expect("publish");
        let second = bus.publish("s", &fields(2)).await.expect("publish");
        bus.read_group("s", "g", "a", 10, 0).await.expect("read");
        bus.publish("s", &fields(3))
            .await
            .expect("publish trims the first");
        let claimed = bus.claim_idle("s", "g", "b", 0, 10).await.expect("claim");
        let claimed_ids: Vec<String> = claimed.into_iter().map(|d| d.entry_id).collect();
        assert_eq!(
            claimed_ids,
            vec![second.clone()],
            "the trimmed entry is not returned"
        );
        let streams = bus.lock().expect("lock");
        let pending = &streams["s"].groups["g"].pending;
        assert!(
            !pending.contains_key(&EntryId::parse(&first).expect("id")),
            "the trimmed entry left the pending list"
        );
        let owner = pending
            .get(&EntryId::parse(&second).expect("id"))
            .map(|p| p.consumer.as_str());
        assert_eq!(owner, Some("b"), "the claimed entry is now b's");
    }

    #[tokio::test]
    async fn a_blocked_reader_wakes_for_its_stream_only_when_entries_arrive() {
        let bus = Arc::new(MemoryBus::new());
        bus.ensure_group("s", "g").await.expect("ensure group");
        let reader = {
            let bus = Arc::clone(&bus);
            tokio::spawn(async move { bus.read_group("s", "g", "c", 10, 2_000).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        bus.publish("other", &fields(0))
            .await
            .expect("publish other");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !reader.is_finished(),
            "a publish elsewhere must not end the read"
        );
        let id = bus.publish("s", &fields(1)).await.expect("publish");
        let got = reader.await.expect("join").expect("read");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].entry_id, id);
    }
}
