//! B6 revocation anchors: in-memory sets of revoked authority records, terminated Sessions and
//! revoked Delegation edges, filled by a database snapshot (every 30 s) and by the
//! `caracal.sessions.revoke` stream between snapshots. Entries are kept 24 h. A snapshot older
//! than 70 s makes every proxied request fail closed (`503 sts_unavailable`).

use std::collections::BTreeMap;
use std::sync::RwLock;

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
    /// id → when it was added (ms), per kind.
    entries: BTreeMap<(AnchorKind, String), i64>,
    /// When the last snapshot was loaded (ms); `None` before the first.
    snapshot_at_ms: Option<i64>,
}

impl Anchors {
    /// Empty sets, no snapshot yet (stale).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one revoked id at `now_ms` (a stream message or a reload).
    pub fn revoke(&self, kind: AnchorKind, id: &str, now_ms: i64) {
        let _ = (kind, id, now_ms);
        todo!("issue #5: revoke")
    }

    /// Whether any of the request's anchors is revoked.
    pub fn is_revoked(&self, anchors: &RequestAnchors<'_>) -> bool {
        let _ = anchors;
        todo!("issue #5: is_revoked")
    }

    /// Replaces the sets with `snapshot`, loaded from a query that started at
    /// `load_started_ms`, keeping entries added by the stream at or after that instant (so a
    /// message that arrived during the load is never lost). Marks the snapshot fresh at
    /// `now_ms`.
    pub fn replace(&self, snapshot: Snapshot, load_started_ms: i64, now_ms: i64) {
        let _ = (snapshot, load_started_ms, now_ms);
        todo!("issue #5: replace")
    }

    /// Drops entries older than [`KEEP_MILLIS`].
    pub fn prune(&self, now_ms: i64) {
        let _ = now_ms;
        todo!("issue #5: prune")
    }

    /// Age of the last snapshot in ms, `None` before the first.
    pub fn snapshot_age_ms(&self, now_ms: i64) -> Option<i64> {
        let _ = now_ms;
        todo!("issue #5: snapshot age")
    }

    /// Whether the last snapshot is at most [`STALE_MILLIS`] old.
    pub fn fresh(&self, now_ms: i64) -> bool {
        let _ = now_ms;
        todo!("issue #5: fresh")
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        todo!("issue #5: len")
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The anchors named by one `caracal.sessions.revoke` message's fields: `session_id` →
/// record, `agent_session_id` → Session, `delegation_edge_id` or `edge_id` → edge. Empty
/// when none is usable.
pub fn anchors_of_message(fields: &[(String, String)]) -> Vec<(AnchorKind, String)> {
    let _ = fields;
    todo!("issue #5: anchors_of_message")
}
