//! The Coordinator's background passes (`spec/coordinator-gateway.md` A11): task TTL expiry,
//! service lease loss, and retention (edge expiry, purging ended graph rows and expired
//! idempotency receipts). The service runs each on its interval; one call is one pass.
//!
//! Each pass is one unit of work that first try-takes a pass-wide lock, so two Coordinator
//! replicas never run the same pass at once (the loser returns 0 at once rather than queue
//! behind the winner), then takes the per-zone locks of the zones it touches, in zone order,
//! and re-reads every candidate row under them: a row may have changed between the scan and
//! the lock (a caller terminated it, a heartbeat renewed it).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::authority::{AgentSession, DelegationEdge, Lifecycle};
use crate::coordinator::graph::{
    capacity_lock, delegation_lock, session_lock, task_deadline, EndStatus, Known,
};
use crate::coordinator::{Coordinator, TOPIC_DELEGATIONS_INVALIDATE};
use crate::error::Result;
use crate::ids::ZoneId;

/// Pass lock of the TTL sweeper.
const TTL_PASS_LOCK: &str = "coordinator:sweep:task_ttl";
/// Pass lock of the lease sweeper.
const LEASE_PASS_LOCK: &str = "coordinator:sweep:service_leases";
/// Pass lock of the retention cleaner.
const RETENTION_PASS_LOCK: &str = "coordinator:sweep:retention";

/// Groups rows by zone, zones in order (lock order across zones).
fn by_zone<T>(rows: Vec<T>, zone: impl Fn(&T) -> &ZoneId) -> BTreeMap<ZoneId, Vec<T>> {
    let mut out: BTreeMap<ZoneId, Vec<T>> = BTreeMap::new();
    for row in rows {
        out.entry(zone(&row).clone()).or_default().push(row);
    }
    out
}

impl Coordinator {
    /// One TTL sweeper pass (A11): task Sessions `active`/`suspended` past
    /// `started_at + ttl` end as `expired` (reason `ttl`) and their descendants as
    /// `terminated` (`parent_terminated`), with the terminate cascade's edge revocations and
    /// outbox rows. Returns how many Sessions ended (0 when another replica holds the pass).
    pub async fn sweep_task_ttl(&self) -> Result<u64> {
        let mut uow = self.begin_all().await?;
        if !uow.try_lock(TTL_PASS_LOCK).await? {
            return Ok(0);
        }
        let now = self.clock.now();
        let due = uow
            .due_task_sessions(now, self.config.sweeper_batch_size)
            .await?;
        let mut ended = 0u64;
        let mut narrowed = Vec::new();
        for (zone, sessions) in by_zone(due, |s: &AgentSession| &s.zone_id) {
            uow.lock(&session_lock(&zone)).await?;
            uow.lock(&delegation_lock(&zone)).await?;
            let mut roots = Vec::with_capacity(sessions.len());
            for candidate in sessions {
                let still_due = uow
                    .get_agent_session(&zone, &candidate.id)
                    .await?
                    .is_some_and(|s| {
                        s.lifecycle == Lifecycle::Task
                            && (s.status == "active" || s.status == "suspended")
                            && task_deadline(&s) <= now
                    });
                if still_due {
                    roots.push(candidate.id);
                }
            }
            let done = self
                .terminate_subtree(
                    &mut *uow,
                    &zone,
                    &roots,
                    "ttl",
                    EndStatus::Expired,
                    Known::default(),
                )
                .await?;
            ended += done.len() as u64;
            if !done.is_empty() {
                // Descendants end with their root whatever their own deadline, and the edges
                // touching them are revoked: more than the clock alone takes away.
                narrowed.push(zone);
            }
        }
        self.commit_narrowing(uow, &narrowed).await?;
        Ok(ended)
    }

    /// One lease sweeper pass (A11): `active` service Sessions whose heartbeat deadline
    /// passed are suspended with their subtrees (`service_heartbeat_lost`); they stay
    /// resumable. Returns how many Sessions were suspended.
    pub async fn sweep_service_leases(&self) -> Result<u64> {
        let mut uow = self.begin_all().await?;
        if !uow.try_lock(LEASE_PASS_LOCK).await? {
            return Ok(0);
        }
        let now = self.clock.now();
        let lapsed = uow
            .lapsed_service_sessions(now, self.config.sweeper_batch_size)
            .await?;
        let mut suspended = 0u64;
        let mut narrowed = Vec::new();
        for (zone, sessions) in by_zone(lapsed, |s: &AgentSession| &s.zone_id) {
            // A suspended service holds a slot again: the capacity lock too.
            uow.lock_both(&session_lock(&zone), &capacity_lock(&zone))
                .await?;
            let mut roots = Vec::with_capacity(sessions.len());
            for candidate in sessions {
                let still_lapsed = uow
                    .get_agent_session(&zone, &candidate.id)
                    .await?
                    .is_some_and(|s| {
                        s.lifecycle == Lifecycle::Service
                            && s.status == "active"
                            && s.heartbeat_deadline_at.is_some_and(|d| d <= now)
                    });
                if still_lapsed {
                    roots.push(candidate.id);
                }
            }
            let n = self
                .suspend_subtree(
                    &mut *uow,
                    &zone,
                    &roots,
                    "service_heartbeat_lost",
                    Known::default(),
                )
                .await?;
            if n > 0 {
                narrowed.push(zone);
            }
            suspended += n;
        }
        self.commit_narrowing(uow, &narrowed).await?;
        Ok(suspended)
    }

    /// One retention pass (A11): active edges past their expiry become `expired` (one epoch
    /// bump and one `edge_expire` row per zone; their endpoint Sessions live on), then ended
    /// edges and Sessions older than `graph_retention_seconds` and expired idempotency
    /// receipts are deleted. Returns the rows expired plus the rows deleted.
    pub async fn sweep_retention(&self) -> Result<u64> {
        let mut uow = self.begin_all().await?;
        if !uow.try_lock(RETENTION_PASS_LOCK).await? {
            return Ok(0);
        }
        let now = self.clock.now();
        let batch = self.config.sweeper_batch_size;
        let lapsed = uow.lapsed_active_edges(now, batch).await?;
        let mut processed = 0u64;
        for (zone, edges) in by_zone(lapsed, |e: &DelegationEdge| &e.zone_id) {
            uow.lock(&delegation_lock(&zone)).await?;
            let mut expired = Vec::with_capacity(edges.len());
            for candidate in edges {
                let Some(mut edge) = uow.get_delegation_edge(&zone, &candidate.id).await? else {
                    continue;
                };
                if edge.status != "active" || edge.expires_at > now {
                    continue;
                }
                edge.status = "expired".to_owned();
                uow.save_delegation_edge(&edge).await?;
                expired.push(edge.id);
            }
            if expired.is_empty() {
                continue;
            }
            let epoch = uow.bump_delegation_graph_epoch(&zone).await?;
            let ids = Value::from(expired.clone()).to_string();
            self.enqueue(
                &mut *uow,
                TOPIC_DELEGATIONS_INVALIDATE,
                format!("edge_expire:{}:{epoch}", zone.as_str()),
                &[
                    ("event", Some("edge_expire".to_owned())),
                    ("zone_id", Some(zone.as_str().to_owned())),
                    ("affected_edges", Some(expired.len().to_string())),
                    ("edge_ids", Some(ids)),
                    ("epoch", Some(epoch.to_string())),
                ],
            )
            .await?;
            processed += expired.len() as u64;
        }
        let cutoff = now.plus_millis(-self.config.graph_retention_seconds.saturating_mul(1_000));
        let (edges, sessions) = uow.purge_ended_graph(cutoff, batch).await?;
        let receipts = uow.purge_idempotency_receipts(now, batch).await?;
        uow.commit().await?;
        Ok(processed + edges + sessions + receipts)
    }
}
