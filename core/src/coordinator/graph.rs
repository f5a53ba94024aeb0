//! The Session tree and the Delegation graph as the Coordinator walks them
//! (`spec/coordinator-gateway.md` A6.2, A6.5, A6.6, A8.2, A8.5, A12): which Sessions hold a
//! slot, the cascades that end or pause a subtree (with their edge revocations, epoch bumps
//! and outbox rows), and the bounded walks over active edges.
//!
//! Every function here runs inside the caller's unit of work, after the caller took the zone
//! locks the change needs: [`session_lock`] for anything that changes Session status, and
//! additionally [`delegation_lock`] (always second) when edges may change.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use crate::authority::{AgentSession, AuthorityRecord, DelegationEdge, Lifecycle, SessionType};
use crate::coordinator::records::SessionFilter;
use crate::coordinator::{
    Coordinator, DEFAULT_TASK_TTL_SECONDS, MAX_DEPTH, TOPIC_AGENTS_LIFECYCLE,
    TOPIC_DELEGATIONS_INVALIDATE, TOPIC_SESSIONS_REVOKE,
};
use crate::error::Result;
use crate::ids::ZoneId;
use crate::ports::UnitOfWork;
use crate::time::Timestamp;

/// Rows per page when a walk reads a listing to its end.
const WALK_PAGE: u32 = 500;

/// Rows the caller already read in its unit of work, so a cascade need not read them again:
/// Sessions read after the caller took its zone locks (a root found here is not re-read), and
/// authority records (only their immutable `session_type` is used, by [`exempt_anchors`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Known<'a> {
    /// Sessions read under the unit's locks.
    pub sessions: &'a [AgentSession],
    /// Authority records read in the unit.
    pub records: &'a [AuthorityRecord],
}

/// The zone lock that keeps the Session tree consistent (A8.6): child starts (a start must never
/// commit under a subtree a cascade is ending), terminate, heartbeat, lease, suspend, resume and
/// the Session sweepers serialize on it. Root starts do not take it: they have no parent, and
/// nothing a cascade does can make their capacity count wrong (it only frees slots).
pub(crate) fn session_lock(zone: &ZoneId) -> String {
    format!("coordinator:session_start:{}", zone.as_str())
}

/// The zone lock capacity checks serialize on (A6.1: count-then-insert must never admit past
/// `MAX_AGENTS_PER_ZONE`/`_PER_APP`). Every start takes it, and so does every change that can
/// make a Session hold a slot again: suspending a service whose lease lapsed (heartbeat, lease,
/// suspend, the lease sweeper). Terminates, resumes and the TTL sweeper only free or keep slots
/// and leave it alone, so ending Sessions never queues behind starting them. Order:
/// [`session_lock`], then this, then [`delegation_lock`].
pub(crate) fn capacity_lock(zone: &ZoneId) -> String {
    format!("coordinator:capacity:{}", zone.as_str())
}

/// The zone lock every edge change takes (A8.6); the STS re-checks delegated mints under it.
/// Taken after [`session_lock`] (and [`capacity_lock`]) when both are needed, so two units never
/// wait on each other.
pub(crate) fn delegation_lock(zone: &ZoneId) -> String {
    format!("delegation:{}", zone.as_str())
}

/// When a task Session's lifetime ends: `started_at + COALESCE(ttl_seconds, 3600) s`.
pub(crate) fn task_deadline(session: &AgentSession) -> Timestamp {
    let ttl = session.ttl_seconds.unwrap_or(DEFAULT_TASK_TTL_SECONDS);
    session.started_at.plus_millis(ttl.saturating_mul(1_000))
}

/// "Live" in the capacity and replay sense of A6.1: `active` or `suspended`, and (service)
/// suspended or lease ahead, (task) within its lifetime. Suspended services keep their slot
/// because their deadline is frozen until resume; unswept expired Sessions do not.
pub(crate) fn holds_slot(session: &AgentSession, now: Timestamp) -> bool {
    match session.status.as_str() {
        "active" | "suspended" => match session.lifecycle {
            Lifecycle::Service => {
                session.status == "suspended"
                    || session.heartbeat_deadline_at.is_some_and(|d| d > now)
            }
            Lifecycle::Task => task_deadline(session) > now,
        },
        _ => false,
    }
}

/// Active and unexpired at `now` (status alone is not enough: expiry flips lazily).
pub(crate) fn edge_live(edge: &DelegationEdge, now: Timestamp) -> bool {
    edge.status == "active" && edge.expires_at > now
}

/// Status a cascade gives the Sessions it names explicitly (A6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndStatus {
    /// Ended by a caller, a revocation or a subject check.
    Terminated,
    /// Ended by the TTL sweeper.
    Expired,
}

impl EndStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Terminated => "terminated",
            Self::Expired => "expired",
        }
    }
}

/// One edge reached by a downstream walk, with its distance from the start (the start is 1).
#[derive(Debug, Clone)]
pub(crate) struct Reached {
    /// The edge.
    pub edge: DelegationEdge,
    /// Hops from the start edge, 1-based.
    pub depth: i32,
}

/// Which edges a downstream walk follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Follow {
    /// Status `active`, expired or not (revocation: a lapsed edge is still revoked).
    Active,
    /// Status `active` and unexpired (traverse, impact).
    Live,
}

impl Follow {
    fn admits(self, edge: &DelegationEdge, now: Timestamp) -> bool {
        match self {
            Self::Active => edge.status == "active",
            Self::Live => edge_live(edge, now),
        }
    }
}

/// Every edge whose source is `session`, any status.
pub(crate) async fn edges_from(
    uow: &mut dyn UnitOfWork,
    zone: &ZoneId,
    session: &str,
) -> Result<Vec<DelegationEdge>> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = uow
            .list_edges_by_source(zone, session, before.as_deref(), WALK_PAGE)
            .await?;
        let full = page.len() == WALK_PAGE as usize;
        before = page.last().map(|e| e.id.clone());
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// Every edge whose target is `session`, any status.
pub(crate) async fn edges_into(
    uow: &mut dyn UnitOfWork,
    zone: &ZoneId,
    session: &str,
) -> Result<Vec<DelegationEdge>> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = uow
            .list_edges_by_target(zone, session, before.as_deref(), WALK_PAGE)
            .await?;
        let full = page.len() == WALK_PAGE as usize;
        before = page.last().map(|e| e.id.clone());
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// Every direct child of `parent`, any status.
async fn children_of(
    uow: &mut dyn UnitOfWork,
    zone: &ZoneId,
    parent: &str,
) -> Result<Vec<AgentSession>> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = uow
            .list_child_sessions(zone, parent, before.as_deref(), WALK_PAGE)
            .await?;
        let full = page.len() == WALK_PAGE as usize;
        before = page.last().map(|s| s.id.clone());
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// The roots whose status is one of `statuses`, and every descendant reached through
/// Sessions whose status is one of them (a Session outside the set stops the walk below it,
/// as upstream's recursive query does). Roots first, then breadth-first; no duplicates.
async fn subtree(
    uow: &mut dyn UnitOfWork,
    zone: &ZoneId,
    roots: &[String],
    statuses: &[&str],
    known: &[AgentSession],
) -> Result<Vec<AgentSession>> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    let mut queue: VecDeque<AgentSession> = VecDeque::new();
    for id in roots {
        if seen.contains(id) {
            continue;
        }
        let root = match known.iter().find(|s| &s.id == id) {
            Some(s) => Some(s.clone()),
            None => uow.get_agent_session(zone, id).await?,
        };
        if let Some(s) = root {
            if statuses.contains(&s.status.as_str()) {
                seen.insert(s.id.clone());
                queue.push_back(s);
            }
        }
    }
    while let Some(session) = queue.pop_front() {
        for child in children_of(uow, zone, &session.id).await? {
            if statuses.contains(&child.status.as_str()) && seen.insert(child.id.clone()) {
                queue.push_back(child);
            }
        }
        out.push(session);
    }
    Ok(out)
}

/// Anchors whose revocation a suspend, terminate or Delegation revoke must not announce (A12): an
/// `application` record (the application simply re-mints it; revoking it would break
/// unrelated calls), or a record still anchoring an `active`/`suspended` Session outside
/// `affected` (revoking it would sever that Session's credential lineage).
pub(crate) async fn exempt_anchors(
    uow: &mut dyn UnitOfWork,
    zone: &ZoneId,
    affected: &[AgentSession],
    known_records: &[AuthorityRecord],
) -> Result<HashSet<String>> {
    let anchors: BTreeSet<&str> = affected
        .iter()
        .map(|s| s.subject_session_id.as_str())
        .collect();
    let mut exempt = HashSet::new();
    let mut pending = Vec::new();
    for anchor in anchors {
        // A record's session type never changes: one read earlier in the unit will do.
        let session_type = match known_records.iter().find(|r| r.id == anchor) {
            Some(r) => Some(r.session_type),
            None => uow
                .get_authority_record(zone, anchor)
                .await?
                .map(|r| r.session_type),
        };
        match session_type {
            Some(SessionType::Application) => {
                exempt.insert(anchor.to_owned());
            }
            _ => pending.push(anchor.to_owned()),
        }
    }
    if pending.is_empty() {
        return Ok(exempt);
    }
    let affected_ids: HashSet<&str> = affected.iter().map(|s| s.id.as_str()).collect();
    for status in ["active", "suspended"] {
        let filter = SessionFilter {
            status: Some(status.to_owned()),
            ..SessionFilter::default()
        };
        let mut before: Option<String> = None;
        loop {
            let page = uow
                .list_agent_sessions(zone, &filter, before.as_deref(), WALK_PAGE)
                .await?;
            let full = page.len() == WALK_PAGE as usize;
            before = page.last().map(|s| s.id.clone());
            for s in &page {
                if !affected_ids.contains(s.id.as_str()) && pending.contains(&s.subject_session_id)
                {
                    exempt.insert(s.subject_session_id.clone());
                }
            }
            if !full {
                break;
            }
        }
    }
    Ok(exempt)
}

impl Coordinator {
    /// Ends `roots` and every `active`/`suspended` descendant (A6.5): roots get `root_status`
    /// with `reason`, descendants `terminated` with `parent_terminated`; `ended_at` is set;
    /// parents outside the set lose the children they had; every `active` edge touching an
    /// ended Session is revoked (epoch bumped once when any was). Outbox: `edge_revoke` per
    /// revoked edge, `terminate` per Session, and `sessions.revoke` per Session whose anchor is
    /// not exempt. Roots that are not `active`/`suspended` are skipped. Returns the Sessions
    /// ended, as they now are.
    pub(crate) async fn terminate_subtree(
        &self,
        uow: &mut dyn UnitOfWork,
        zone: &ZoneId,
        roots: &[String],
        reason: &str,
        root_status: EndStatus,
        known: Known<'_>,
    ) -> Result<Vec<AgentSession>> {
        let now = self.clock.now();
        let tree = subtree(uow, zone, roots, &["active", "suspended"], known.sessions).await?;
        if tree.is_empty() {
            return Ok(Vec::new());
        }
        let ended: HashSet<String> = tree.iter().map(|s| s.id.clone()).collect();
        let root_set: HashSet<&String> = roots.iter().collect();
        let mut sessions = Vec::with_capacity(tree.len());
        let mut decrements: BTreeMap<String, i32> = BTreeMap::new();
        for mut s in tree {
            if root_set.contains(&s.id) {
                s.status = root_status.as_str().to_owned();
                s.status_reason = Some(reason.to_owned());
            } else {
                s.status = "terminated".to_owned();
                s.status_reason = Some("parent_terminated".to_owned());
            }
            s.ended_at = Some(now);
            s.updated_at = now;
            uow.save_agent_session(&s).await?;
            if let Some(parent) = &s.parent_id {
                if !ended.contains(parent) {
                    *decrements.entry(parent.clone()).or_default() += 1;
                }
            }
            sessions.push(s);
        }
        for (parent_id, n) in decrements {
            if let Some(mut parent) = uow.get_agent_session(zone, &parent_id).await? {
                parent.child_count = (parent.child_count - n).max(0);
                parent.updated_at = now;
                uow.save_agent_session(&parent).await?;
            }
        }

        // An ended Session must not stay a delegation endpoint: revoking its edges stops
        // delegated minting now rather than at edge expiry.
        let ids: Vec<String> = sessions.iter().map(|s| s.id.clone()).collect();
        let mut revoked_edges = Vec::new();
        for mut edge in uow.active_edges_touching(zone, &ids).await? {
            if edge.status != "active" {
                continue;
            }
            edge.status = "revoked".to_owned();
            edge.revoked_at = Some(now);
            edge.edge_version += 1;
            uow.save_delegation_edge(&edge).await?;
            revoked_edges.push(edge);
        }
        if !revoked_edges.is_empty() {
            let epoch = uow.bump_delegation_graph_epoch(zone).await?.to_string();
            for edge in &revoked_edges {
                self.enqueue(
                    uow,
                    TOPIC_DELEGATIONS_INVALIDATE,
                    format!("edge_revoke:{}", edge.id),
                    &[
                        ("event", Some("edge_revoke".to_owned())),
                        ("zone_id", Some(zone.as_str().to_owned())),
                        ("edge_id", Some(edge.id.clone())),
                        ("reason", Some(reason.to_owned())),
                        ("epoch", Some(epoch.clone())),
                    ],
                )
                .await?;
            }
        }

        let exempt = exempt_anchors(uow, zone, &sessions, known.records).await?;
        for s in &sessions {
            self.enqueue(
                uow,
                TOPIC_AGENTS_LIFECYCLE,
                format!("terminate:{}", s.id),
                &[
                    ("event", Some("terminate".to_owned())),
                    ("zone_id", Some(zone.as_str().to_owned())),
                    ("agent_session_id", Some(s.id.clone())),
                    ("parent_id", s.parent_id.clone()),
                    ("reason", Some(reason.to_owned())),
                ],
            )
            .await?;
            if exempt.contains(&s.subject_session_id) {
                continue;
            }
            self.enqueue(
                uow,
                TOPIC_SESSIONS_REVOKE,
                format!("agent_terminate:{}", s.id),
                &[
                    ("zone_id", Some(zone.as_str().to_owned())),
                    ("session_id", Some(s.subject_session_id.clone())),
                    ("agent_session_id", Some(s.id.clone())),
                    ("reason", Some(reason.to_owned())),
                ],
            )
            .await?;
        }
        Ok(sessions)
    }

    /// Suspends the `active` Sessions of the subtrees under `roots` (A6.2, A6.6). Outbox:
    /// `suspend` per Session and `sessions.revoke` unless its anchor is exempt; both keyed by
    /// the transition instant, since a Session may be suspended many times. Returns how many.
    pub(crate) async fn suspend_subtree(
        &self,
        uow: &mut dyn UnitOfWork,
        zone: &ZoneId,
        roots: &[String],
        reason: &str,
        known: Known<'_>,
    ) -> Result<u64> {
        let now = self.clock.now();
        let tree = subtree(uow, zone, roots, &["active"], known.sessions).await?;
        if tree.is_empty() {
            return Ok(0);
        }
        let mut suspended = Vec::with_capacity(tree.len());
        for mut s in tree {
            s.status = "suspended".to_owned();
            s.updated_at = now;
            uow.save_agent_session(&s).await?;
            suspended.push(s);
        }
        let exempt = exempt_anchors(uow, zone, &suspended, known.records).await?;
        let occurrence = now.to_iso_millis();
        for s in &suspended {
            self.enqueue(
                uow,
                TOPIC_AGENTS_LIFECYCLE,
                format!("suspend:{}:{occurrence}", s.id),
                &[
                    ("event", Some("suspend".to_owned())),
                    ("zone_id", Some(zone.as_str().to_owned())),
                    ("agent_session_id", Some(s.id.clone())),
                    ("parent_id", s.parent_id.clone()),
                    ("reason", Some(reason.to_owned())),
                ],
            )
            .await?;
            if exempt.contains(&s.subject_session_id) {
                continue;
            }
            self.enqueue(
                uow,
                TOPIC_SESSIONS_REVOKE,
                format!("agent_suspend:{}:{occurrence}", s.id),
                &[
                    ("zone_id", Some(zone.as_str().to_owned())),
                    ("session_id", Some(s.subject_session_id.clone())),
                    ("agent_session_id", Some(s.id.clone())),
                    ("reason", Some(reason.to_owned())),
                ],
            )
            .await?;
        }
        Ok(suspended.len() as u64)
    }

    /// Resumes a `suspended` Session and its `suspended` descendants (the walk stops at any
    /// child that is not suspended); service leases restart at now + the lease length.
    /// Outbox: `resume` per Session, keyed by the transition instant. Returns how many.
    pub(crate) async fn resume_subtree(
        &self,
        uow: &mut dyn UnitOfWork,
        zone: &ZoneId,
        root: &str,
    ) -> Result<u64> {
        let now = self.clock.now();
        let tree = subtree(uow, zone, &[root.to_owned()], &["suspended"], &[]).await?;
        let occurrence = now.to_iso_millis();
        let lease = now.plus_millis(self.config.service_lease_seconds.saturating_mul(1_000));
        for mut s in tree.iter().cloned() {
            s.status = "active".to_owned();
            if s.lifecycle == Lifecycle::Service {
                s.heartbeat_deadline_at = Some(lease);
            }
            s.updated_at = now;
            uow.save_agent_session(&s).await?;
            self.enqueue(
                uow,
                TOPIC_AGENTS_LIFECYCLE,
                format!("resume:{}:{occurrence}", s.id),
                &[
                    ("event", Some("resume".to_owned())),
                    ("zone_id", Some(zone.as_str().to_owned())),
                    ("agent_session_id", Some(s.id.clone())),
                    ("parent_id", s.parent_id.clone()),
                ],
            )
            .await?;
        }
        Ok(tree.len() as u64)
    }
}

/// The edges downstream of `start` (included, depth 1): edges leaving the target of an edge
/// already reached, admitted by `follow`, at most [`MAX_DEPTH`] hops from the start.
/// Breadth-first, each edge once. Empty when `start` itself is not admitted.
pub(crate) async fn downstream(
    uow: &mut dyn UnitOfWork,
    zone: &ZoneId,
    start: &DelegationEdge,
    follow: Follow,
    now: Timestamp,
) -> Result<Vec<Reached>> {
    if !follow.admits(start, now) {
        return Ok(Vec::new());
    }
    let mut seen: HashSet<String> = HashSet::from([start.id.clone()]);
    let mut out = vec![Reached {
        edge: start.clone(),
        depth: 1,
    }];
    let mut next = 0;
    while next < out.len() {
        let (target, depth) = (out[next].edge.target_session_id.clone(), out[next].depth);
        next += 1;
        if depth >= MAX_DEPTH {
            continue;
        }
        for edge in edges_from(uow, zone, &target).await? {
            if follow.admits(&edge, now) && seen.insert(edge.id.clone()) {
                out.push(Reached {
                    edge,
                    depth: depth + 1,
                });
            }
        }
    }
    Ok(out)
}

/// Whether a path of live edges leads from `from` to `to` within [`MAX_DEPTH`] hops (the
/// cycle check of A8.1: a new edge `to → from` would close it).
pub(crate) async fn path_exists(
    uow: &mut dyn UnitOfWork,
    zone: &ZoneId,
    from: &str,
    to: &str,
    now: Timestamp,
) -> Result<bool> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut frontier = vec![from.to_owned()];
    for _ in 0..MAX_DEPTH {
        let mut following = Vec::new();
        for session in frontier {
            for edge in edges_from(uow, zone, &session).await? {
                if !edge_live(&edge, now) || !seen.insert(edge.id.clone()) {
                    continue;
                }
                if edge.target_session_id == to {
                    return Ok(true);
                }
                following.push(edge.target_session_id);
            }
        }
        if following.is_empty() {
            break;
        }
        frontier = following;
    }
    Ok(false)
}
