//! The Session tree and the Delegation graph as the Coordinator walks them
//! (`spec/coordinator-gateway.md` A6.2, A6.5, A6.6, A8.2, A8.5, A12): which Sessions hold a
//! slot, the cascades that end or pause a subtree (with their edge revocations, epoch bumps
//! and outbox rows), and the bounded walks over active edges.
//!
//! Every function here runs inside the caller's unit of work. Concurrency control is by row
//! locks on the Sessions a change touches, not by a lock per zone (A8.6 as built):
//! - Session rows are locked top-down, one tree depth per statement ([`lock_subtree`]), so
//!   every unit takes them in `(depth, id)` order and two units never deadlock on them. A
//!   child start locks its parent, a cascade its roots and then each level of descendants, a
//!   Delegation create both endpoints. A child can only be inserted under a parent locked by
//!   its start, so a cascade that locked a Session sees every child committed under it, and a
//!   start that waited for a cascade sees the parent it ended.
//! - Edge rows a change revokes or expires are locked after the Sessions, in one statement per
//!   unit (id order); the zone's epoch row (`bump_delegation_graph_epoch`) after the edges.
//!   Delegation creates serialise on the epoch row: they bump it first, so each create's cycle
//!   check and receipt lookup see every create committed before it.
//! - Only the zone-wide capacity counts need a zone lock ([`capacity_lock`]): starts take it
//!   last, after their writes, for the count and the commit. Nothing that ends a Session takes
//!   it, and nothing stored is written upwards (`child_count` is derived on read).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::authority::{AgentSession, DelegationEdge, Lifecycle, SessionType};
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

/// The zone lock Session starts take last, just before their capacity count and commit
/// (A6.1): `MAX_AGENTS_PER_ZONE` and `MAX_AGENTS_PER_APP` are count-then-insert, and a new lock
/// holder's count sees every start committed before it. Only starts raise the counts, so
/// nothing else takes it. (The name is upstream's Session-start lock, A8.6.)
pub(crate) fn capacity_lock(zone: &ZoneId) -> String {
    format!("coordinator:session_start:{}", zone.as_str())
}

/// Every status a Session can have: locking a Session whatever its status.
pub(crate) const ANY_STATUS: [&str; 4] = ["active", "suspended", "terminated", "expired"];

/// Statuses a cascade ends.
const OPEN: [&str; 2] = ["active", "suspended"];

/// Where a [`lock_subtree`] walk starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Roots<'a> {
    /// Rows this unit already locked (and read under the lock), all at one depth.
    Locked(&'a [AgentSession]),
    /// Rows read without a lock: only their ids and depths (which never change) are used, and
    /// each is locked and read again before anything is decided about it.
    Candidates(&'a [AgentSession]),
}

/// Locks and returns `roots` and every descendant reached through Sessions whose status is one
/// of `statuses` (a Session outside the set stops the walk below it, as upstream's recursive
/// query does), shallowest first; no duplicates. One statement per depth: the roots at that
/// depth plus the children of the rows locked one level up, in `(depth, id)` order. A root
/// reached only as a root (not as a descendant of another) is kept only if `keep_root` accepts
/// its locked row; a root it refuses stays locked but is not walked.
pub(crate) async fn lock_subtree(
    uow: &mut dyn UnitOfWork,
    zone: &ZoneId,
    roots: Roots<'_>,
    statuses: &[&str],
    keep_root: &(dyn Fn(&AgentSession) -> bool + Sync),
) -> Result<Vec<AgentSession>> {
    let mut pending: BTreeMap<i32, Vec<String>> = BTreeMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    // Ids locked at the previous depth: their children are the next level.
    let mut parents: Vec<String> = Vec::new();
    let mut depth = match roots {
        Roots::Locked(rows) => {
            for row in rows {
                if statuses.contains(&row.status.as_str())
                    && keep_root(row)
                    && seen.insert(row.id.clone())
                {
                    parents.push(row.id.clone());
                    out.push(row.clone());
                }
            }
            match rows.first() {
                Some(first) => first.depth + 1,
                None => return Ok(out),
            }
        }
        Roots::Candidates(rows) => {
            for row in rows {
                pending.entry(row.depth).or_default().push(row.id.clone());
            }
            match pending.keys().next() {
                Some(first) => *first,
                None => return Ok(out),
            }
        }
    };
    loop {
        let ids = pending.remove(&depth).unwrap_or_default();
        if ids.is_empty() && parents.is_empty() {
            match pending.keys().next() {
                Some(next) => {
                    depth = *next;
                    continue;
                }
                None => return Ok(out),
            }
        }
        let level = uow
            .lock_agent_sessions(zone, &ids, &parents, statuses)
            .await?;
        let above: HashSet<String> = parents.drain(..).collect();
        for row in level {
            let descendant = row.parent_id.as_ref().is_some_and(|p| above.contains(p));
            if (descendant || keep_root(&row)) && seen.insert(row.id.clone()) {
                parents.push(row.id.clone());
                out.push(row);
            }
        }
        depth += 1;
    }
}

/// Accepts every root.
pub(crate) fn any_root(_: &AgentSession) -> bool {
    true
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

/// Anchors whose revocation a suspend, terminate or Delegation revoke must not announce (A12): an
/// `application` record (the application simply re-mints it; revoking it would break
/// unrelated calls), or a record still anchoring an `active`/`suspended` Session outside
/// `affected` (revoking it would sever that Session's credential lineage).
pub(crate) async fn exempt_anchors(
    uow: &mut dyn UnitOfWork,
    zone: &ZoneId,
    affected: &[AgentSession],
) -> Result<HashSet<String>> {
    let anchors: BTreeSet<&str> = affected
        .iter()
        .map(|s| s.subject_session_id.as_str())
        .collect();
    let mut exempt = HashSet::new();
    let mut pending = Vec::new();
    for anchor in anchors {
        match uow.get_authority_record(zone, anchor).await? {
            Some(r) if r.session_type == SessionType::Application => {
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
    /// Ends `roots` and every `active`/`suspended` descendant (A6.5), locking them top-down
    /// ([`lock_subtree`]; `keep_root` re-checks each root once locked): see
    /// [`Coordinator::end_locked`]. Returns the Sessions ended, as they now are.
    pub(crate) async fn terminate_subtree(
        &self,
        uow: &mut dyn UnitOfWork,
        zone: &ZoneId,
        roots: Roots<'_>,
        keep_root: &(dyn Fn(&AgentSession) -> bool + Sync),
        reason: &str,
        root_status: EndStatus,
    ) -> Result<Vec<AgentSession>> {
        let root_ids: HashSet<String> = match roots {
            Roots::Locked(rows) | Roots::Candidates(rows) => {
                rows.iter().map(|s| s.id.clone()).collect()
            }
        };
        let tree = lock_subtree(uow, zone, roots, &OPEN, keep_root).await?;
        if tree.is_empty() {
            return Ok(Vec::new());
        }
        let (sessions, _) = self
            .end_locked(uow, zone, tree, &root_ids, &[], reason, root_status)
            .await?;
        Ok(sessions)
    }

    /// Ends `tree`, Sessions this unit locked with [`lock_subtree`]: those in `root_ids` get
    /// `root_status` with `reason`, the others `terminated` with `parent_terminated`;
    /// `ended_at` is set. Parents are never written (their `child_count` is derived). Every
    /// `active` edge touching an ended Session is locked and revoked, in one statement with
    /// the edges named in `also_revoke` (revoked too, without an event of their own: the caller
    /// announces them). Outbox: `edge_revoke` per touching edge (epoch bumped once when there
    /// was any), `terminate` per Session, and `sessions.revoke` per Session whose anchor is not
    /// exempt. Returns the Sessions ended and the ids of the `also_revoke` edges that were
    /// still active.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn end_locked(
        &self,
        uow: &mut dyn UnitOfWork,
        zone: &ZoneId,
        tree: Vec<AgentSession>,
        root_ids: &HashSet<String>,
        also_revoke: &[String],
        reason: &str,
        root_status: EndStatus,
    ) -> Result<(Vec<AgentSession>, Vec<String>)> {
        let now = self.clock.now();
        let mut sessions = Vec::with_capacity(tree.len());
        for mut s in tree {
            if root_ids.contains(&s.id) {
                s.status = root_status.as_str().to_owned();
                s.status_reason = Some(reason.to_owned());
            } else {
                s.status = "terminated".to_owned();
                s.status_reason = Some("parent_terminated".to_owned());
            }
            s.ended_at = Some(now);
            s.updated_at = now;
            uow.save_agent_session(&s).await?;
            sessions.push(s);
        }

        // An ended Session must not stay a delegation endpoint: revoking its edges stops
        // delegated minting now rather than at edge expiry. Locked after the Sessions, all in
        // one statement, so two cascades never wait on each other's edges.
        let ids: Vec<String> = sessions.iter().map(|s| s.id.clone()).collect();
        let named: HashSet<&String> = also_revoke.iter().collect();
        let mut revoked_edges = Vec::new();
        let mut revoked_named = Vec::new();
        for mut edge in uow.lock_active_edges(zone, also_revoke, &ids).await? {
            edge.status = "revoked".to_owned();
            edge.revoked_at = Some(now);
            edge.edge_version += 1;
            uow.save_delegation_edge(&edge).await?;
            if named.contains(&edge.id) {
                revoked_named.push(edge.id);
            } else {
                revoked_edges.push(edge);
            }
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
        if sessions.is_empty() {
            return Ok((sessions, revoked_named));
        }

        let exempt = exempt_anchors(uow, zone, &sessions).await?;
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
        Ok((sessions, revoked_named))
    }

    /// Suspends the `active` Sessions of the subtrees under `roots` (A6.2, A6.6), locked
    /// top-down ([`lock_subtree`]; `keep_root` re-checks each root once locked). Outbox:
    /// `suspend` per Session and `sessions.revoke` unless its anchor is exempt; both keyed by
    /// the transition instant, since a Session may be suspended many times. Returns how many.
    pub(crate) async fn suspend_subtree(
        &self,
        uow: &mut dyn UnitOfWork,
        zone: &ZoneId,
        roots: Roots<'_>,
        keep_root: &(dyn Fn(&AgentSession) -> bool + Sync),
        reason: &str,
    ) -> Result<u64> {
        let now = self.clock.now();
        let tree = lock_subtree(uow, zone, roots, &["active"], keep_root).await?;
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
        let exempt = exempt_anchors(uow, zone, &suspended).await?;
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
    /// `root` is locked by the caller. Outbox: `resume` per Session, keyed by the transition
    /// instant. Returns how many.
    pub(crate) async fn resume_subtree(
        &self,
        uow: &mut dyn UnitOfWork,
        zone: &ZoneId,
        root: &AgentSession,
    ) -> Result<u64> {
        let now = self.clock.now();
        let tree = lock_subtree(
            uow,
            zone,
            Roots::Locked(std::slice::from_ref(root)),
            &["suspended"],
            &any_root,
        )
        .await?;
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
