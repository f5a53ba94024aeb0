//! Governed agent Sessions, Delegation edges and the zone's delegation graph epoch (written by
//! the Coordinator, read by the STS when it mints, `spec/sts.md §3.6`).

use async_trait::async_trait;
use caracal_core::authority::{AgentSession, DelegationEdge, Lifecycle};
use caracal_core::ids::ZoneId;
use caracal_core::ports::store::AgentGraphRepo;
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::Value;

use crate::convert::{id, opt_dt, opt_ts, ts};
use crate::error::corrupt;
use crate::schema::{agent_sessions as s, delegation_edges as d, delegation_graph_epochs as e};
use crate::unit_of_work::{op, write_op, PgUnitOfWork};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
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

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
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

#[async_trait]
impl AgentGraphRepo for PgUnitOfWork {
    async fn save_agent_session(&mut self, session: &AgentSession) -> Result<(), StoreError> {
        let row = AgentSessionRow::from(session);
        write_op!(self, |conn| diesel::insert_into(s::table)
            .values(&row)
            .on_conflict(s::id)
            .do_update()
            .set(&row)
            .execute(conn))?;
        Ok(())
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

    async fn save_delegation_edge(&mut self, edge: &DelegationEdge) -> Result<(), StoreError> {
        let row = DelegationEdgeRow::from(edge);
        write_op!(self, |conn| diesel::insert_into(d::table)
            .values(&row)
            .on_conflict(d::id)
            .do_update()
            .set(&row)
            .execute(conn))?;
        Ok(())
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
        write_op!(self, |conn| diesel::insert_into(e::table)
            .values((e::zone_id.eq(zone.as_str()), e::epoch.eq(1_i64)))
            .on_conflict(e::zone_id)
            .do_update()
            .set(e::epoch.eq(e::epoch + 1_i64))
            .returning(e::epoch)
            .get_result::<i64>(conn))
    }
}
