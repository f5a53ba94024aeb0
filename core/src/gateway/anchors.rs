//! B6 revocation anchors: in-memory sets of revoked authority records, terminated Sessions and
//! revoked Delegation edges, filled by a database snapshot (every 30 s) and by the
//! `caracal.sessions.revoke` stream between snapshots. Entries are kept 24 h. A snapshot older
//! than 70 s makes every proxied request fail closed (`503 sts_unavailable`).

use std::collections::HashMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// How long an entry is kept, in milliseconds (24 h).
pub const KEEP_MILLIS: i64 = 24 * 3_600 * 1_000;
/// A snapshot older than this is stale, in milliseconds (70 s).
pub const STALE_MILLIS: i64 = 70_000;

/// Which set an id belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnchorKind {
    /// An authority record (`sid`, `root_sid`; stream field `session_id`).
    Record,
    /// An agent Session (`agent_session_id`).
    Session,
    /// A Delegation edge (`delegation_edge_id`; stream field `delegation_edge_id` or
    /// `edge_id`).
    Edge,
}

/// A database snapshot: the ids revoked within the last 24 h.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Revoked authority records.
    pub records: Vec<String>,
    /// Terminated Sessions.
    pub sessions: Vec<String>,
    /// Revoked edges.
    pub edges: Vec<String>,
}

/// The anchors a request carries (peeked claims; empty strings are ignored).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestAnchors<'a> {
    /// `sid`.
    pub sid: &'a str,
    /// `root_sid`.
    pub root_sid: &'a str,
    /// `agent_session_id`.
    pub agent_session_id: &'a str,
    /// `delegation_edge_id`.
    pub delegation_edge_id: &'a str,
}

/// The sets. Shared by every request of one Gateway process; reads take a read lock.
#[derive(Debug, Default)]
pub struct Anchors {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Revoked authority records: id → when it was added (ms).
    records: HashMap<String, i64>,
    /// Terminated Sessions: id → when it was added (ms).
    sessions: HashMap<String, i64>,
    /// Revoked edges: id → when it was added (ms).
    edges: HashMap<String, i64>,
    /// When the last snapshot was loaded (ms); `None` before the first.
    snapshot_at_ms: Option<i64>,
}

impl Inner {
    fn set_mut(&mut self, kind: AnchorKind) -> &mut HashMap<String, i64> {
        match kind {
            AnchorKind::Record => &mut self.records,
            AnchorKind::Session => &mut self.sessions,
            AnchorKind::Edge => &mut self.edges,
        }
    }

    fn sets_mut(&mut self) -> [&mut HashMap<String, i64>; 3] {
        [&mut self.records, &mut self.sessions, &mut self.edges]
    }
}

/// `ids` as a set added at `now_ms`, plus the `previous` entries added at or after
/// `load_started_ms` (stream messages that arrived while the snapshot was loading).
fn merged(
    ids: Vec<String>,
    previous: HashMap<String, i64>,
    load_started_ms: i64,
    now_ms: i64,
) -> HashMap<String, i64> {
    let mut set: HashMap<String, i64> = ids
        .into_iter()
        .filter(|id| !id.is_empty())
        .map(|id| (id, now_ms))
        .collect();
    for (id, added_ms) in previous {
        if added_ms >= load_started_ms {
            set.entry(id).or_insert(added_ms);
        }
    }
    set
}

fn holds(set: &HashMap<String, i64>, id: &str) -> bool {
    !id.is_empty() && set.contains_key(id)
}

impl Anchors {
    /// Empty sets, no snapshot yet (stale).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one revoked id at `now_ms` (a stream message or a reload).
    pub fn revoke(&self, kind: AnchorKind, id: &str, now_ms: i64) {
        if id.is_empty() {
            return;
        }
        let mut inner = self.write();
        let added = inner.set_mut(kind).entry(id.to_owned()).or_insert(now_ms);
        // A repeated revocation restarts the keep period, never shortens it.
        *added = (*added).max(now_ms);
    }

    /// Whether any of the request's anchors is revoked.
    pub fn is_revoked(&self, anchors: &RequestAnchors<'_>) -> bool {
        let inner = self.read();
        holds(&inner.records, anchors.sid)
            || holds(&inner.records, anchors.root_sid)
            || holds(&inner.sessions, anchors.agent_session_id)
            || holds(&inner.edges, anchors.delegation_edge_id)
    }

    /// Replaces the sets with `snapshot`, loaded from a query that started at
    /// `load_started_ms`, keeping entries added by the stream at or after that instant (so a
    /// message that arrived during the load is never lost). Marks the snapshot fresh at
    /// `now_ms`.
    pub fn replace(&self, snapshot: Snapshot, load_started_ms: i64, now_ms: i64) {
        let Snapshot {
            records,
            sessions,
            edges,
        } = snapshot;
        let mut inner = self.write();
        inner.records = merged(
            records,
            std::mem::take(&mut inner.records),
            load_started_ms,
            now_ms,
        );
        inner.sessions = merged(
            sessions,
            std::mem::take(&mut inner.sessions),
            load_started_ms,
            now_ms,
        );
        inner.edges = merged(
            edges,
            std::mem::take(&mut inner.edges),
            load_started_ms,
            now_ms,
        );
        inner.snapshot_at_ms = Some(now_ms);
    }

    /// Drops entries older than [`KEEP_MILLIS`].
    pub fn prune(&self, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(KEEP_MILLIS);
        let mut inner = self.write();
        for set in inner.sets_mut() {
            set.retain(|_, added_ms| *added_ms >= cutoff);
        }
    }

    /// Age of the last snapshot in ms, `None` before the first.
    pub fn snapshot_age_ms(&self, now_ms: i64) -> Option<i64> {
        self.read()
            .snapshot_at_ms
            .map(|at| now_ms.saturating_sub(at))
    }

    /// Whether the last snapshot is at most [`STALE_MILLIS`] old.
    pub fn fresh(&self, now_ms: i64) -> bool {
        self.snapshot_age_ms(now_ms)
            .is_some_and(|age| age <= STALE_MILLIS)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        let inner = self.read();
        inner.records.len() + inner.sessions.len() + inner.edges.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sets for reading; the data stays consistent across a panic elsewhere (every
    /// mutation is a single map operation or a whole-set swap), so poisoning is recovered.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The sets for writing, recovering from poisoning as [`Self::read`] does.
    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The anchors named by one `caracal.sessions.revoke` message's fields: `session_id` →
/// record, `agent_session_id` → Session, `delegation_edge_id` or `edge_id` → edge. Empty
/// when none is usable.
pub fn anchors_of_message(fields: &[(String, String)]) -> Vec<(AnchorKind, String)> {
    let usable = |name: &str| -> Option<String> {
        fields
            .iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.trim())
            .find(|value| !value.is_empty())
            .map(str::to_owned)
    };
    let mut anchors = Vec::new();
    if let Some(id) = usable("session_id") {
        anchors.push((AnchorKind::Record, id));
    }
    if let Some(id) = usable("agent_session_id") {
        anchors.push((AnchorKind::Session, id));
    }
    if let Some(id) = usable("delegation_edge_id").or_else(|| usable("edge_id")) {
        anchors.push((AnchorKind::Edge, id));
    }
    anchors
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn sid(id: &str) -> RequestAnchors<'_> {
        RequestAnchors {
            sid: id,
            ..RequestAnchors::default()
        }
    }

    #[test]
    fn starts_empty_and_stale() {
        let anchors = Anchors::new();
        assert!(anchors.is_empty());
        assert_eq!(anchors.snapshot_age_ms(1_000), None);
        assert!(!anchors.fresh(1_000));
        assert!(!anchors.is_revoked(&RequestAnchors::default()));
    }

    #[test]
    fn each_claim_is_checked_against_its_set() {
        let anchors = Anchors::new();
        anchors.revoke(AnchorKind::Record, "rec", 0);
        anchors.revoke(AnchorKind::Session, "ses", 0);
        anchors.revoke(AnchorKind::Edge, "edge", 0);
        anchors.revoke(AnchorKind::Edge, "", 0);
        assert_eq!(anchors.len(), 3, "empty ids are not stored");

        assert!(anchors.is_revoked(&sid("rec")));
        assert!(anchors.is_revoked(&RequestAnchors {
            sid: "live",
            root_sid: "rec",
            ..RequestAnchors::default()
        }));
        assert!(anchors.is_revoked(&RequestAnchors {
            agent_session_id: "ses",
            ..RequestAnchors::default()
        }));
        assert!(anchors.is_revoked(&RequestAnchors {
            delegation_edge_id: "edge",
            ..RequestAnchors::default()
        }));

        // An id only counts in its own set.
        assert!(!anchors.is_revoked(&sid("ses")));
        assert!(!anchors.is_revoked(&RequestAnchors {
            agent_session_id: "rec",
            delegation_edge_id: "ses",
            ..RequestAnchors::default()
        }));
        assert!(!anchors.is_revoked(&RequestAnchors {
            sid: "a",
            root_sid: "b",
            agent_session_id: "c",
            delegation_edge_id: "d",
        }));
        assert!(!anchors.is_revoked(&RequestAnchors::default()));
    }

    #[test]
    fn replace_swaps_the_sets_but_keeps_mid_load_stream_entries() {
        let anchors = Anchors::new();
        anchors.revoke(AnchorKind::Record, "old-record", 1_000);
        anchors.revoke(AnchorKind::Session, "old-session", 4_999);
        // The load starts at 5 000; these stream messages arrive while it runs.
        anchors.revoke(AnchorKind::Session, "streamed-session", 5_000);
        anchors.revoke(AnchorKind::Edge, "streamed-edge", 5_500);
        anchors.revoke(AnchorKind::Record, "both", 5_200);
        anchors.replace(
            Snapshot {
                records: ids(&["db-record", "both", ""]),
                sessions: ids(&["db-session"]),
                edges: vec![],
            },
            5_000,
            6_000,
        );
        assert!(!anchors.is_revoked(&sid("old-record")), "replaced");
        assert!(!anchors.is_revoked(&RequestAnchors {
            agent_session_id: "old-session",
            ..RequestAnchors::default()
        }));
        assert!(anchors.is_revoked(&sid("db-record")));
        assert!(anchors.is_revoked(&sid("both")));
        assert!(anchors.is_revoked(&RequestAnchors {
            agent_session_id: "db-session",
            ..RequestAnchors::default()
        }));
        assert!(anchors.is_revoked(&RequestAnchors {
            agent_session_id: "streamed-session",
            ..RequestAnchors::default()
        }));
        assert!(anchors.is_revoked(&RequestAnchors {
            delegation_edge_id: "streamed-edge",
            ..RequestAnchors::default()
        }));
        assert!(!anchors.is_revoked(&sid("")));
        assert_eq!(anchors.len(), 5);
        assert_eq!(anchors.snapshot_age_ms(6_000), Some(0));

        // Snapshot entries are stamped at the load's end, kept stream entries keep theirs.
        anchors.prune(5_000 + KEEP_MILLIS + 1);
        assert!(!anchors.is_revoked(&RequestAnchors {
            agent_session_id: "streamed-session",
            ..RequestAnchors::default()
        }));
        assert!(anchors.is_revoked(&RequestAnchors {
            delegation_edge_id: "streamed-edge",
            ..RequestAnchors::default()
        }));
        assert!(anchors.is_revoked(&sid("db-record")));
        assert!(anchors.is_revoked(&sid("both")), "stamped at 6 000");
        assert_eq!(anchors.len(), 4);
    }

    #[test]
    fn prune_drops_entries_older_than_a_day() {
        let anchors = Anchors::new();
        anchors.revoke(AnchorKind::Record, "old", 0);
        anchors.revoke(AnchorKind::Session, "edge-of-window", 1_000);
        anchors.revoke(AnchorKind::Edge, "new", 2_000);
        anchors.prune(1_000 + KEEP_MILLIS);
        assert_eq!(anchors.len(), 2);
        assert!(!anchors.is_revoked(&sid("old")));
        assert!(anchors.is_revoked(&RequestAnchors {
            agent_session_id: "edge-of-window",
            ..RequestAnchors::default()
        }));
        anchors.prune(1_001 + KEEP_MILLIS);
        assert_eq!(anchors.len(), 1);
        assert!(anchors.is_revoked(&RequestAnchors {
            delegation_edge_id: "new",
            ..RequestAnchors::default()
        }));
    }

    #[test]
    fn a_repeated_revocation_restarts_the_keep_period() {
        let anchors = Anchors::new();
        anchors.revoke(AnchorKind::Record, "r", 0);
        anchors.revoke(AnchorKind::Record, "r", 10_000);
        anchors.revoke(AnchorKind::Record, "r", 5_000);
        assert_eq!(anchors.len(), 1);
        anchors.prune(9_999 + KEEP_MILLIS);
        assert!(anchors.is_revoked(&sid("r")));
        anchors.prune(10_001 + KEEP_MILLIS);
        assert!(anchors.is_empty());
    }

    #[test]
    fn snapshots_go_stale_after_seventy_seconds() {
        let anchors = Anchors::new();
        anchors.replace(Snapshot::default(), 90_000, 100_000);
        assert_eq!(anchors.snapshot_age_ms(100_000), Some(0));
        assert!(anchors.fresh(100_000));
        assert!(anchors.fresh(100_000 + STALE_MILLIS));
        assert_eq!(
            anchors.snapshot_age_ms(100_001 + STALE_MILLIS),
            Some(STALE_MILLIS + 1)
        );
        assert!(!anchors.fresh(100_001 + STALE_MILLIS));
        anchors.replace(Snapshot::default(), 170_000, 171_000);
        assert!(anchors.fresh(171_000 + STALE_MILLIS));
        assert!(anchors.is_empty());
    }

    #[test]
    fn a_poisoned_lock_is_recovered() {
        let anchors = Arc::new(Anchors::new());
        let poisoner = Arc::clone(&anchors);
        let joined = std::thread::spawn(move || {
            let _guard = poisoner.inner.write().expect("first lock");
            panic!("poison the anchors");
        })
        .join();
        assert!(joined.is_err());
        assert!(anchors.inner.is_poisoned());
        anchors.revoke(AnchorKind::Record, "r", 0);
        anchors.replace(Snapshot::default(), 0, 1);
        anchors.prune(2);
        assert!(anchors.is_revoked(&sid("r")));
        assert!(anchors.fresh(2));
        assert_eq!(anchors.len(), 1);
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn message_fields_map_to_their_sets() {
        assert_eq!(
            anchors_of_message(&fields(&[
                ("_sig", "abc"),
                ("delegation_edge_id", " edge-1 "),
                ("agent_session_id", "ses-1"),
                ("session_id", "rec-1"),
                ("reason", "terminated"),
            ])),
            vec![
                (AnchorKind::Record, "rec-1".to_owned()),
                (AnchorKind::Session, "ses-1".to_owned()),
                (AnchorKind::Edge, "edge-1".to_owned()),
            ]
        );
        assert_eq!(
            anchors_of_message(&fields(&[("edge_id", "edge-2")])),
            vec![(AnchorKind::Edge, "edge-2".to_owned())]
        );
        assert_eq!(
            anchors_of_message(&fields(&[
                ("edge_id", "edge-2"),
                ("delegation_edge_id", "edge-3")
            ])),
            vec![(AnchorKind::Edge, "edge-3".to_owned())],
            "delegation_edge_id is preferred"
        );
        assert_eq!(
            anchors_of_message(&fields(&[
                ("delegation_edge_id", "  "),
                ("edge_id", "edge-4")
            ])),
            vec![(AnchorKind::Edge, "edge-4".to_owned())],
            "a blank delegation_edge_id falls back to edge_id"
        );
        assert!(anchors_of_message(&fields(&[
            ("session_id", ""),
            ("agent_session_id", " \t"),
            ("sid", "not-a-stream-field"),
            ("_sig", "abc"),
        ]))
        .is_empty());
        assert!(anchors_of_message(&[]).is_empty());
    }
}
