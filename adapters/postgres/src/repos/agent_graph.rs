//! Governed agent Sessions, Delegation edges and the zone's delegation graph epoch (written by
//! the Coordinator, read by the STS when it mints, `spec/sts.md §3.6`).

use async_trait::async_trait;
use caracal_core::authority::{AgentSession, DelegationEdge, Lifecycle};
use caracal_core::coordinator::records::SessionFilter;
use caracal_core::ids::ZoneId;
use caracal_core::ports::store::{AgentGraphRepo, RevokedAnchors};
use caracal_core::time::Timestamp;
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::dsl::sql;
use diesel::expression::{
    is_aggregate, AppearsOnTable, Expression, SelectableExpression, ValidGrouping,
};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Bool, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

use crate::convert::{count, id, limit, opt_dt, opt_ts, ts};
use crate::error::corrupt;
use crate::prepared::keep_prepared;
use crate::schema::{
    agent_sessions as s, authority_records as r, delegation_edges as d,
    delegation_graph_epochs as e,
};
use crate::unit_of_work::{op, write_op, Deferred, PgUnitOfWork};

#[derive(Queryable, QueryableByName, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = s, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub(crate) struct AgentSessionRow {
    id: String,
    zone_id: String,
    application_id: String,
    subject_session_id: String,
    parent_id: Option<String>,
    lifecycle: String,
    labels: Vec<String>,
    status: String,
    depth: i32,
    ttl_seconds: Option<i64>,
    started_at: DateTime<Utc>,
    last_heartbeat_at: Option<DateTime<Utc>>,
    heartbeat_deadline_at: Option<DateTime<Utc>>,
    lease_generation: i64,
    child_count: i32,
    metadata: Value,
    status_reason: Option<String>,
    ended_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<&AgentSession> for AgentSessionRow {
    fn from(a: &AgentSession) -> Self {
        Self {
            id: a.id.clone(),
            zone_id: a.zone_id.to_string(),
            application_id: a.application_id.clone(),
            subject_session_id: a.subject_session_id.clone(),
            parent_id: a.parent_id.clone(),
            lifecycle: a.lifecycle.as_str().to_owned(),
            labels: a.labels.clone(),
            status: a.status.clone(),
            depth: a.depth,
            ttl_seconds: a.ttl_seconds,
            started_at: a.started_at.as_datetime(),
            last_heartbeat_at: opt_dt(a.last_heartbeat_at),
            heartbeat_deadline_at: opt_dt(a.heartbeat_deadline_at),
            lease_generation: a.lease_generation,
            child_count: a.child_count,
            metadata: Value::Object(a.metadata.clone()),
            status_reason: a.status_reason.clone(),
            ended_at: opt_dt(a.ended_at),
            created_at: a.created_at.as_datetime(),
            updated_at: a.updated_at.as_datetime(),
        }
    }
}

impl TryFrom<AgentSessionRow> for AgentSession {
    type Error = StoreError;

    fn try_from(r: AgentSessionRow) -> Result<Self, StoreError> {
        let lifecycle = Lifecycle::parse(&r.lifecycle).ok_or_else(|| {
            corrupt(
                "agent_sessions.lifecycle",
                format!("unknown {:?}", r.lifecycle),
            )
        })?;
        let Value::Object(metadata) = r.metadata else {
            return Err(corrupt("agent_sessions.metadata", "not a JSON object"));
        };
        Ok(AgentSession {
            zone_id: id(ZoneId::parse, &r.zone_id, "agent_sessions.zone_id")?,
            id: r.id,
            application_id: r.application_id,
            subject_session_id: r.subject_session_id,
            parent_id: r.parent_id,
            lifecycle,
            labels: r.labels,
            status: r.status,
            depth: r.depth,
            ttl_seconds: r.ttl_seconds,
            started_at: ts(r.started_at),
            last_heartbeat_at: opt_ts(r.last_heartbeat_at),
            heartbeat_deadline_at: opt_ts(r.heartbeat_deadline_at),
            lease_generation: r.lease_generation,
            child_count: r.child_count,
            metadata,
            status_reason: r.status_reason,
            ended_at: opt_ts(r.ended_at),
            created_at: ts(r.created_at),
            updated_at: ts(r.updated_at),
        })
    }
}

#[derive(Queryable, QueryableByName, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = d, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub(crate) struct DelegationEdgeRow {
    id: String,
    zone_id: String,
    source_session_id: String,
    target_session_id: String,
    issuer_application_id: String,
    receiver_application_id: String,
    parent_edge_id: Option<String>,
    resource_id: Option<String>,
    scopes: Vec<String>,
    constraints_json: Value,
    status: String,
    expires_at: DateTime<Utc>,
    edge_version: i64,
    revoked_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl From<&DelegationEdge> for DelegationEdgeRow {
    fn from(x: &DelegationEdge) -> Self {
        Self {
            id: x.id.clone(),
            zone_id: x.zone_id.to_string(),
            source_session_id: x.source_session_id.clone(),
            target_session_id: x.target_session_id.clone(),
            issuer_application_id: x.issuer_application_id.clone(),
            receiver_application_id: x.receiver_application_id.clone(),
            parent_edge_id: x.parent_edge_id.clone(),
            resource_id: x.resource_id.clone(),
            scopes: x.scopes.clone(),
            constraints_json: Value::Object(x.constraints_json.clone()),
            status: x.status.clone(),
            expires_at: x.expires_at.as_datetime(),
            edge_version: x.edge_version,
            revoked_at: opt_dt(x.revoked_at),
            created_at: x.created_at.as_datetime(),
        }
    }
}

impl TryFrom<DelegationEdgeRow> for DelegationEdge {
    type Error = StoreError;

    fn try_from(r: DelegationEdgeRow) -> Result<Self, StoreError> {
        let Value::Object(constraints_json) = r.constraints_json else {
            return Err(corrupt(
                "delegation_edges.constraints_json",
                "not a JSON object",
            ));
        };
        Ok(DelegationEdge {
            zone_id: id(ZoneId::parse, &r.zone_id, "delegation_edges.zone_id")?,
            id: r.id,
            source_session_id: r.source_session_id,
            target_session_id: r.target_session_id,
            issuer_application_id: r.issuer_application_id,
            receiver_application_id: r.receiver_application_id,
            parent_edge_id: r.parent_edge_id,
            resource_id: r.resource_id,
            scopes: r.scopes,
            constraints_json,
            status: r.status,
            expires_at: ts(r.expires_at),
            edge_version: r.edge_version,
            revoked_at: opt_ts(r.revoked_at),
            created_at: ts(r.created_at),
        })
    }
}

// Several predicates below are spelled as SQL literals rather than bound parameters: a partial
// index (migration 000005) is only usable when the planner can prove the query implies the
// index predicate, which it cannot do for `status = $1` under a generic plan.

/// A task Session's end, `started_at + COALESCE(ttl_seconds, 3600) s` (A6.1: 3600 s when the
/// row carries no TTL).
const TASK_END: &str = "(started_at + COALESCE(ttl_seconds, 3600) * interval '1 second')";

/// Live Sessions of a zone in the capacity sense (A6.1), served by `agent_sessions_live`.
const COUNT_LIVE: &str = "\
SELECT count(*) AS n FROM agent_sessions
WHERE zone_id = $1
  AND ($2::text IS NULL OR application_id = $2)
  AND status IN ('active', 'suspended')
  AND CASE lifecycle
        WHEN 'service' THEN status = 'suspended' OR heartbeat_deadline_at > $3
        ELSE (started_at + COALESCE(ttl_seconds, 3600) * interval '1 second') > $3
      END";

/// [`COUNT_LIVE`] for the zone and, in the same scan, for one application of it.
const COUNT_LIVE_SPLIT: &str = "\
SELECT count(*) AS n, count(*) FILTER (WHERE application_id = $2) AS m FROM agent_sessions
WHERE zone_id = $1
  AND status IN ('active', 'suspended')
  AND CASE lifecycle
        WHEN 'service' THEN status = 'suspended' OR heartbeat_deadline_at > $3
        ELSE (started_at + COALESCE(ttl_seconds, 3600) * interval '1 second') > $3
      END";

/// Result row of [`COUNT_LIVE_SPLIT`].
#[derive(QueryableByName)]
struct SplitCount {
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = BigInt)]
    m: i64,
}

/// Result row of a `count(*) AS n`.
#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Deletes ended edges no remaining edge narrows, oldest end first. The end,
/// `COALESCE(revoked_at, expires_at) < $1`, is spelled as its two arms so that each is an index
/// condition (`delegation_edges_revoked_end`, `delegation_edges_expired_end`): under row-level
/// security a COALESCE never is. The child probe uses `delegation_edges_parent`. One statement
/// sees one snapshot, so a parent whose last child goes in this pass stays until the next.
const PURGE_EDGES: &str = "\
DELETE FROM delegation_edges WHERE id IN (
    SELECT e.id FROM delegation_edges e
    WHERE e.status IN ('revoked', 'expired')
      AND ((e.revoked_at IS NOT NULL AND e.revoked_at < $1)
           OR (e.revoked_at IS NULL AND e.expires_at < $1))
      AND NOT EXISTS (
          SELECT 1 FROM delegation_edges c
          WHERE c.zone_id = e.zone_id AND c.parent_edge_id = e.id)
    ORDER BY COALESCE(e.revoked_at, e.expires_at), e.id
    LIMIT $2)";

/// Deletes ended Sessions no remaining Session names as parent, oldest end first (served by
/// `agent_sessions_ended`; the child probe by `agent_sessions_parent`).
const PURGE_SESSIONS: &str = "\
DELETE FROM agent_sessions WHERE id IN (
    SELECT p.id FROM agent_sessions p
    WHERE p.status IN ('terminated', 'expired')
      AND p.ended_at < $1
      AND NOT EXISTS (
          SELECT 1 FROM agent_sessions c
          WHERE c.zone_id = p.zone_id AND c.parent_id = p.id)
    ORDER BY p.ended_at, p.id
    LIMIT $2)";

/// Defines a `text` constant spelled into the statement (`'revoked'`) instead of bound. Like the
/// `sql` literals above, it lets the planner prove a partial index's predicate under a generic
/// plan; unlike them, it has a static query id and the same text every time, so Diesel keeps the
/// statement prepared (an `sql` literal opts the whole statement out of its statement cache).
macro_rules! text_constant {
    ($(#[$doc:meta])* $name:ident = $sql:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, QueryId)]
        struct $name;

        impl Expression for $name {
            type SqlType = Text;
        }

        impl<QS> AppearsOnTable<QS> for $name {}

        impl<QS> SelectableExpression<QS> for $name {}

        impl<GB> ValidGrouping<GB> for $name {
            type IsAggregate = is_aggregate::Never;
        }

        impl QueryFragment<Pg> for $name {
            fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
                out.push_sql($sql);
                Ok(())
            }
        }
    };
}

text_constant!(
    /// The status of a revoked authority record or Delegation edge.
    Revoked = "'revoked'"
);
text_constant!(
    /// The status of a terminated Session.
    Terminated = "'terminated'"
);
text_constant!(
    /// Tags an authority record id in a `revoked_anchors` row.
    RecordKind = "'record'::text"
);
text_constant!(
    /// Tags a Session id in a `revoked_anchors` row.
    SessionKind = "'session'::text"
);
text_constant!(
    /// Tags an edge id in a `revoked_anchors` row.
    EdgeKind = "'edge'::text"
);

/// The upsert of `save_agent_session`, on a shared connection (it may be deferred and
/// pipelined, `unit_of_work::Deferred`).
pub(crate) async fn save_session_on(
    mut conn: &AsyncPgConnection,
    row: &AgentSessionRow,
) -> QueryResult<()> {
    keep_prepared(
        diesel::insert_into(s::table)
            .values(row)
            .on_conflict(s::id)
            .do_update()
            .set(row),
    )
    .execute(&mut conn)
    .await
    .map(drop)
}

/// The upsert of `save_delegation_edge`, on a shared connection (see [`save_session_on`]).
pub(crate) async fn save_edge_on(
    mut conn: &AsyncPgConnection,
    row: &DelegationEdgeRow,
) -> QueryResult<()> {
    keep_prepared(
        diesel::insert_into(d::table)
            .values(row)
            .on_conflict(d::id)
            .do_update()
            .set(row),
    )
    .execute(&mut conn)
    .await
    .map(drop)
}

#[async_trait]
impl AgentGraphRepo for PgUnitOfWork {
    async fn save_agent_session(&mut self, session: &AgentSession) -> Result<(), StoreError> {
        let row = AgentSessionRow::from(session);
        if self.defers() {
            return self.defer(Deferred::Session(row));
        }
        write_op!(self, |conn| save_session_on(conn, &row))
    }

    async fn get_agent_session(
        &mut self,
        zone: &ZoneId,
        session: &str,
    ) -> Result<Option<AgentSession>, StoreError> {
        let row: Option<AgentSessionRow> = op!(
            self,
            optional
                | conn
                | s::table
                    .filter(s::zone_id.eq(zone.as_str()).and(s::id.eq(session)))
                    .select(AgentSessionRow::as_select())
                    .first(conn)
        )?;
        row.map(AgentSession::try_from).transpose()
    }

    async fn get_agent_sessions(
        &mut self,
        zone: &ZoneId,
        ids: &[&str],
    ) -> Result<Vec<AgentSession>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // `= ANY($2)`: one array parameter, one kept statement whatever the count.
        let rows: Vec<AgentSessionRow> = op!(self, |conn| s::table
            .filter(s::zone_id.eq(zone.as_str()).and(s::id.eq_any(ids)))
            .select(AgentSessionRow::as_select())
            .load(conn))?;
        rows.into_iter().map(AgentSession::try_from).collect()
    }

    async fn save_delegation_edge(&mut self, edge: &DelegationEdge) -> Result<(), StoreError> {
        let row = DelegationEdgeRow::from(edge);
        if self.defers() {
            return self.defer(Deferred::Edge(row));
        }
        write_op!(self, |conn| save_edge_on(conn, &row))
    }

    async fn get_delegation_edge(
        &mut self,
        zone: &ZoneId,
        edge: &str,
    ) -> Result<Option<DelegationEdge>, StoreError> {
        let row: Option<DelegationEdgeRow> = op!(
            self,
            optional
                | conn
                | d::table
                    .filter(d::zone_id.eq(zone.as_str()).and(d::id.eq(edge)))
                    .select(DelegationEdgeRow::as_select())
                    .first(conn)
        )?;
        row.map(DelegationEdge::try_from).transpose()
    }

    async fn delegation_graph_epoch(&mut self, zone: &ZoneId) -> Result<i64, StoreError> {
        let epoch: Option<i64> = op!(
            self,
            optional | conn | e::table.find(zone.as_str()).select(e::epoch).first(conn)
        )?;
        Ok(epoch.unwrap_or(0))
    }

    /// One atomic upsert: concurrent bumps serialise on the row, so each sees a distinct value
    /// and none is lost (a read-then-write would let two units both write the same epoch).
    async fn bump_delegation_graph_epoch(&mut self, zone: &ZoneId) -> Result<i64, StoreError> {
        write_op!(self, |conn| keep_prepared(
            diesel::insert_into(e::table)
                .values((e::zone_id.eq(zone.as_str()), e::epoch.eq(1_i64)))
                .on_conflict(e::zone_id)
                .do_update()
                .set(e::epoch.eq(e::epoch + 1_i64))
                .returning(e::epoch)
        )
        .get_result::<i64>(conn))
    }

    async fn list_agent_sessions(
        &mut self,
        zone: &ZoneId,
        filter: &SessionFilter,
        before: Option<&str>,
        limit_to: u32,
    ) -> Result<Vec<AgentSession>, StoreError> {
        let mut query = s::table
            .filter(s::zone_id.eq(zone.as_str()))
            .select(AgentSessionRow::as_select())
            .into_boxed();
        if let Some(status) = &filter.status {
            query = query.filter(s::status.eq(status.clone()));
        }
        if let Some(lifecycle) = filter.lifecycle {
            query = query.filter(s::lifecycle.eq(lifecycle.as_str()));
        }
        if let Some(app) = &filter.application_id {
            query = query.filter(s::application_id.eq(app.clone()));
        }
        if let Some(label) = &filter.label {
            query = query.filter(s::labels.contains(vec![label.clone()]));
        }
        if let Some(before) = before {
            query = query.filter(s::id.lt(before.to_owned()));
        }
        let query = query.order(s::id.desc()).limit(limit(limit_to));
        let rows: Vec<AgentSessionRow> = op!(self, |conn| query.load(conn))?;
        rows.into_iter().map(AgentSession::try_from).collect()
    }

    async fn list_child_sessions(
        &mut self,
        zone: &ZoneId,
        parent: &str,
        before: Option<&str>,
        limit_to: u32,
    ) -> Result<Vec<AgentSession>, StoreError> {
        let mut query = s::table
            .filter(s::zone_id.eq(zone.as_str()).and(s::parent_id.eq(parent)))
            .select(AgentSessionRow::as_select())
            .into_boxed();
        if let Some(before) = before {
            query = query.filter(s::id.lt(before.to_owned()));
        }
        let query = query.order(s::id.desc()).limit(limit(limit_to));
        let rows: Vec<AgentSessionRow> = op!(self, |conn| query.load(conn))?;
        rows.into_iter().map(AgentSession::try_from).collect()
    }

    async fn count_live_agent_sessions(
        &mut self,
        zone: &ZoneId,
        application_id: Option<&str>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let row: Count = op!(self, |conn| keep_prepared(
            diesel::sql_query(COUNT_LIVE)
                .bind::<Text, _>(zone.as_str())
                .bind::<Nullable<Text>, _>(application_id)
                .bind::<Timestamptz, _>(now.as_datetime())
        )
        .get_result(conn))?;
        count(row.n, "count of live agent sessions")
    }

    async fn count_live_agent_sessions_split(
        &mut self,
        zone: &ZoneId,
        application_id: &str,
        now: Timestamp,
    ) -> Result<(u64, u64), StoreError> {
        let row: SplitCount = op!(self, |conn| keep_prepared(
            diesel::sql_query(COUNT_LIVE_SPLIT)
                .bind::<Text, _>(zone.as_str())
                .bind::<Text, _>(application_id)
                .bind::<Timestamptz, _>(now.as_datetime())
        )
        .get_result(conn))?;
        Ok((
            count(row.n, "count of live agent sessions")?,
            count(row.m, "count of live agent sessions")?,
        ))
    }

    async fn list_edges_by_target(
        &mut self,
        zone: &ZoneId,
        session: &str,
        before: Option<&str>,
        limit_to: u32,
    ) -> Result<Vec<DelegationEdge>, StoreError> {
        let mut query = d::table
            .filter(
                d::zone_id
                    .eq(zone.as_str())
                    .and(d::target_session_id.eq(session)),
            )
            .select(DelegationEdgeRow::as_select())
            .into_boxed();
        if let Some(before) = before {
            query = query.filter(d::id.lt(before.to_owned()));
        }
        let query = query.order(d::id.desc()).limit(limit(limit_to));
        let rows: Vec<DelegationEdgeRow> = op!(self, |conn| query.load(conn))?;
        rows.into_iter().map(DelegationEdge::try_from).collect()
    }

    async fn list_edges_by_source(
        &mut self,
        zone: &ZoneId,
        session: &str,
        before: Option<&str>,
        limit_to: u32,
    ) -> Result<Vec<DelegationEdge>, StoreError> {
        let mut query = d::table
            .filter(
                d::zone_id
                    .eq(zone.as_str())
                    .and(d::source_session_id.eq(session)),
            )
            .select(DelegationEdgeRow::as_select())
            .into_boxed();
        if let Some(before) = before {
            query = query.filter(d::id.lt(before.to_owned()));
        }
        let query = query.order(d::id.desc()).limit(limit(limit_to));
        let rows: Vec<DelegationEdgeRow> = op!(self, |conn| query.load(conn))?;
        rows.into_iter().map(DelegationEdge::try_from).collect()
    }

    async fn list_edges_by_parent(
        &mut self,
        zone: &ZoneId,
        edge: &str,
    ) -> Result<Vec<DelegationEdge>, StoreError> {
        let rows: Vec<DelegationEdgeRow> = op!(self, |conn| d::table
            .filter(d::zone_id.eq(zone.as_str()).and(d::parent_edge_id.eq(edge)))
            .select(DelegationEdgeRow::as_select())
            .order(d::id.desc())
            .load(conn))?;
        rows.into_iter().map(DelegationEdge::try_from).collect()
    }

    async fn list_active_edges(
        &mut self,
        zone: &ZoneId,
        now: Timestamp,
        before: Option<&str>,
        limit_to: u32,
    ) -> Result<Vec<DelegationEdge>, StoreError> {
        let mut query = d::table
            .filter(d::zone_id.eq(zone.as_str()))
            .filter(sql::<Bool>("status = 'active'"))
            .filter(d::expires_at.gt(now.as_datetime()))
            .select(DelegationEdgeRow::as_select())
            .into_boxed();
        if let Some(before) = before {
            query = query.filter(d::id.lt(before.to_owned()));
        }
        let query = query.order(d::id.desc()).limit(limit(limit_to));
        let rows: Vec<DelegationEdgeRow> = op!(self, |conn| query.load(conn))?;
        rows.into_iter().map(DelegationEdge::try_from).collect()
    }

    async fn active_edges_touching(
        &mut self,
        zone: &ZoneId,
        sessions: &[String],
    ) -> Result<Vec<DelegationEdge>, StoreError> {
        if sessions.is_empty() {
            return Ok(Vec::new());
        }
        // One statement for the whole set (`= ANY($n)` on both endpoint indexes), never one
        // per Session. The status is checked here, not in SQL, and the order is made here too:
        // with `status = 'active'` in the query, a planner whose statistics predate the zone's
        // live edges estimates one active edge in all and scans a whole partial index on
        // status (measured at 0.6–1.3 ms per Session end at 6k edges, under the zone lock).
        // Without it only the endpoint indexes fit, whatever the statistics say; the price is
        // reading the ended edges of these Sessions too, which retention bounds.
        let rows: Vec<DelegationEdgeRow> = op!(self, |conn| d::table
            .filter(d::zone_id.eq(zone.as_str()))
            .filter(
                d::source_session_id
                    .eq_any(sessions)
                    .or(d::target_session_id.eq_any(sessions)),
            )
            .select(DelegationEdgeRow::as_select())
            .load(conn))?;
        let mut edges = rows
            .into_iter()
            .filter(|row| row.status == "active")
            .map(DelegationEdge::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        edges.sort_unstable_by(|a, b| b.id.cmp(&a.id));
        Ok(edges)
    }

    async fn due_task_sessions(
        &mut self,
        now: Timestamp,
        limit_to: u32,
    ) -> Result<Vec<AgentSession>, StoreError> {
        let query = format!(
            "SELECT * FROM agent_sessions \
             WHERE lifecycle = 'task' AND status IN ('active', 'suspended') AND {TASK_END} <= $1 \
             ORDER BY {TASK_END}, id LIMIT $2"
        );
        let rows: Vec<AgentSessionRow> = op!(self, |conn| diesel::sql_query(&query)
            .bind::<Timestamptz, _>(now.as_datetime())
            .bind::<BigInt, _>(limit(limit_to))
            .load(conn))?;
        rows.into_iter().map(AgentSession::try_from).collect()
    }

    async fn lapsed_service_sessions(
        &mut self,
        now: Timestamp,
        limit_to: u32,
    ) -> Result<Vec<AgentSession>, StoreError> {
        let rows: Vec<AgentSessionRow> = op!(self, |conn| s::table
            .filter(sql::<Bool>("lifecycle = 'service' AND status = 'active'"))
            .filter(s::heartbeat_deadline_at.le(now.as_datetime()))
            .select(AgentSessionRow::as_select())
            .order((s::heartbeat_deadline_at, s::id))
            .limit(limit(limit_to))
            .load(conn))?;
        rows.into_iter().map(AgentSession::try_from).collect()
    }

    async fn lapsed_active_edges(
        &mut self,
        now: Timestamp,
        limit_to: u32,
    ) -> Result<Vec<DelegationEdge>, StoreError> {
        let rows: Vec<DelegationEdgeRow> = op!(self, |conn| d::table
            .filter(sql::<Bool>("status = 'active'"))
            .filter(d::expires_at.le(now.as_datetime()))
            .select(DelegationEdgeRow::as_select())
            .order((d::expires_at, d::id))
            .limit(limit(limit_to))
            .load(conn))?;
        rows.into_iter().map(DelegationEdge::try_from).collect()
    }

    async fn purge_ended_graph(
        &mut self,
        cutoff: Timestamp,
        limit_to: u32,
    ) -> Result<(u64, u64), StoreError> {
        let edges = write_op!(self, |conn| diesel::sql_query(PURGE_EDGES)
            .bind::<Timestamptz, _>(cutoff.as_datetime())
            .bind::<BigInt, _>(limit(limit_to))
            .execute(conn))?;
        let sessions = write_op!(self, |conn| diesel::sql_query(PURGE_SESSIONS)
            .bind::<Timestamptz, _>(cutoff.as_datetime())
            .bind::<BigInt, _>(limit(limit_to))
            .execute(conn))?;
        Ok((edges as u64, sessions as u64))
    }

    /// One `UNION ALL` statement, one snapshot and one round trip, tagging each id with its
    /// kind. Each arm is a range scan of a partial index: `authority_records_revoked` and
    /// `agent_sessions_terminated` (migration 000006) and `delegation_edges_revoked_end`
    /// (000005; `status = 'revoked' AND revoked_at > since` implies its predicate).
    async fn revoked_anchors(&mut self, since: Timestamp) -> Result<RevokedAnchors, StoreError> {
        let since = since.as_datetime();
        let query = r::table
            .filter(r::status.eq(Revoked).and(r::expires_at.gt(since)))
            .select((RecordKind, r::id))
            .union_all(
                s::table
                    .filter(s::status.eq(Terminated).and(s::updated_at.gt(since)))
                    .select((SessionKind, s::id)),
            )
            .union_all(
                d::table
                    .filter(d::status.eq(Revoked).and(d::revoked_at.gt(since)))
                    .select((EdgeKind, d::id)),
            );
        let rows: Vec<(String, String)> = op!(self, |conn| query.load(conn))?;
        let mut anchors = RevokedAnchors::default();
        for (kind, anchor) in rows {
            match kind.as_str() {
                "record" => anchors.records.push(anchor),
                "session" => anchors.sessions.push(anchor),
                "edge" => anchors.edges.push(anchor),
                other => return Err(corrupt("revoked anchor kind", format!("unknown {other:?}"))),
            }
        }
        Ok(anchors)
    }
}
