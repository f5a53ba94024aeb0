//! The Coordinator's own rows (`spec/coordinator-gateway.md` A7, A9): idempotency receipts,
//! agent services and invocations.

use async_trait::async_trait;
use caracal_core::coordinator::records::{AgentService, IdempotencyReceipt, Invocation};
use caracal_core::ids::ZoneId;
use caracal_core::ports::store::CoordinationRepo;
use caracal_core::time::Timestamp;
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::dsl::{count_star, sql};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Timestamptz};
use diesel_async::RunQueryDsl;
use serde_json::Value;

use crate::convert::{count, id, limit, opt_dt, opt_ts, ts};
use crate::error::corrupt;
use crate::prepared::keep_prepared;
use crate::schema::{agent_services as a, idempotency_receipts as r, invocations as i};
use crate::unit_of_work::{op, write_op, PgUnitOfWork};

/// The rule an unexpired receipt of the same `(scope, key_hash)` violates: the table's primary
/// key is named after it, and the memory adapter reports the same name.
const RECEIPT_KEY: &str = "idempotency_receipts_key";

/// Deletes expired receipts, oldest expiry first (served by `idempotency_receipts_expiry`).
const PURGE_RECEIPTS: &str = "\
DELETE FROM idempotency_receipts WHERE (scope, key_hash) IN (
    SELECT scope, key_hash FROM idempotency_receipts
    WHERE expires_at <= $1
    ORDER BY expires_at, scope, key_hash
    LIMIT $2)";

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = r, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
struct ReceiptRow {
    scope: String,
    key_hash: String,
    zone_id: String,
    request_hash: String,
    object_id: String,
    status: i32,
    body: Value,
    expires_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
}

impl From<&IdempotencyReceipt> for ReceiptRow {
    fn from(x: &IdempotencyReceipt) -> Self {
        Self {
            scope: x.scope.clone(),
            key_hash: x.key_hash.clone(),
            zone_id: x.zone_id.to_string(),
            request_hash: x.request_hash.clone(),
            object_id: x.object_id.clone(),
            status: i32::from(x.status),
            body: x.body.clone(),
            expires_at: x.expires_at.as_datetime(),
            created_at: x.created_at.as_datetime(),
        }
    }
}

impl TryFrom<ReceiptRow> for IdempotencyReceipt {
    type Error = StoreError;

    fn try_from(x: ReceiptRow) -> Result<Self, StoreError> {
        let status = u16::try_from(x.status)
            .map_err(|_| corrupt("idempotency_receipts.status", x.status))?;
        Ok(IdempotencyReceipt {
            zone_id: id(ZoneId::parse, &x.zone_id, "idempotency_receipts.zone_id")?,
            scope: x.scope,
            key_hash: x.key_hash,
            request_hash: x.request_hash,
            object_id: x.object_id,
            status,
            body: x.body,
            expires_at: ts(x.expires_at),
            created_at: ts(x.created_at),
        })
    }
}

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = a, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
struct AgentServiceRow {
    id: String,
    zone_id: String,
    application_id: String,
    endpoint_url: String,
    protocol_versions: Vec<String>,
    framework_name: Option<String>,
    framework_version: Option<String>,
    capabilities: Vec<String>,
    health: String,
    metadata: Value,
    last_heartbeat_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<&AgentService> for AgentServiceRow {
    fn from(x: &AgentService) -> Self {
        Self {
            id: x.id.clone(),
            zone_id: x.zone_id.to_string(),
            application_id: x.application_id.clone(),
            endpoint_url: x.endpoint_url.clone(),
            protocol_versions: x.protocol_versions.clone(),
            framework_name: x.framework_name.clone(),
            framework_version: x.framework_version.clone(),
            capabilities: x.capabilities.clone(),
            health: x.health.clone(),
            metadata: Value::Object(x.metadata.clone()),
            last_heartbeat_at: opt_dt(x.last_heartbeat_at),
            created_at: x.created_at.as_datetime(),
            updated_at: x.updated_at.as_datetime(),
        }
    }
}

impl TryFrom<AgentServiceRow> for AgentService {
    type Error = StoreError;

    fn try_from(x: AgentServiceRow) -> Result<Self, StoreError> {
        let Value::Object(metadata) = x.metadata else {
            return Err(corrupt("agent_services.metadata", "not a JSON object"));
        };
        Ok(AgentService {
            zone_id: id(ZoneId::parse, &x.zone_id, "agent_services.zone_id")?,
            id: x.id,
            application_id: x.application_id,
            endpoint_url: x.endpoint_url,
            protocol_versions: x.protocol_versions,
            framework_name: x.framework_name,
            framework_version: x.framework_version,
            capabilities: x.capabilities,
            health: x.health,
            metadata,
            last_heartbeat_at: opt_ts(x.last_heartbeat_at),
            created_at: ts(x.created_at),
            updated_at: ts(x.updated_at),
        })
    }
}

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = i, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
struct InvocationRow {
    id: String,
    zone_id: String,
    service_id: String,
    source_session_id: Option<String>,
    target_session_id: Option<String>,
    invoking_application_id: String,
    method: String,
    params: Value,
    metadata: Value,
    status: String,
    attempts: i32,
    max_attempts: i32,
    backoff_ms: i64,
    timeout_ms: i64,
    deadline_at: Option<DateTime<Utc>>,
    error_json: Option<Value>,
    cancel_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

impl From<&Invocation> for InvocationRow {
    fn from(x: &Invocation) -> Self {
        Self {
            id: x.id.clone(),
            zone_id: x.zone_id.to_string(),
            service_id: x.service_id.clone(),
            source_session_id: x.source_session_id.clone(),
            target_session_id: x.target_session_id.clone(),
            invoking_application_id: x.invoking_application_id.clone(),
            method: x.method.clone(),
            params: x.params.clone(),
            metadata: Value::Object(x.metadata.clone()),
            status: x.status.clone(),
            attempts: x.attempts,
            max_attempts: x.max_attempts,
            backoff_ms: x.backoff_ms,
            timeout_ms: x.timeout_ms,
            deadline_at: opt_dt(x.deadline_at),
            error_json: x.error_json.clone(),
            cancel_reason: x.cancel_reason.clone(),
            created_at: x.created_at.as_datetime(),
            updated_at: x.updated_at.as_datetime(),
            completed_at: opt_dt(x.completed_at),
        }
    }
}

impl TryFrom<InvocationRow> for Invocation {
    type Error = StoreError;

    fn try_from(x: InvocationRow) -> Result<Self, StoreError> {
        let Value::Object(metadata) = x.metadata else {
            return Err(corrupt("invocations.metadata", "not a JSON object"));
        };
        Ok(Invocation {
            zone_id: id(ZoneId::parse, &x.zone_id, "invocations.zone_id")?,
            id: x.id,
            service_id: x.service_id,
            source_session_id: x.source_session_id,
            target_session_id: x.target_session_id,
            invoking_application_id: x.invoking_application_id,
            method: x.method,
            params: x.params,
            metadata,
            status: x.status,
            attempts: x.attempts,
            max_attempts: x.max_attempts,
            backoff_ms: x.backoff_ms,
            timeout_ms: x.timeout_ms,
            deadline_at: opt_ts(x.deadline_at),
            error_json: x.error_json,
            cancel_reason: x.cancel_reason,
            created_at: ts(x.created_at),
            updated_at: ts(x.updated_at),
            completed_at: opt_ts(x.completed_at),
        })
    }
}

#[async_trait]
impl CoordinationRepo for PgUnitOfWork {
    async fn get_idempotency_receipt(
        &mut self,
        scope: &str,
        key_hash: &str,
        now: Timestamp,
    ) -> Result<Option<IdempotencyReceipt>, StoreError> {
        let row: Option<ReceiptRow> = op!(
            self,
            optional
                | conn
                | r::table
                    .find((scope, key_hash))
                    .filter(r::expires_at.gt(now.as_datetime()))
                    .select(ReceiptRow::as_select())
                    .first(conn)
        )?;
        row.map(IdempotencyReceipt::try_from).transpose()
    }

    async fn count_idempotency_receipts(
        &mut self,
        scope: &str,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let n: i64 = op!(self, |conn| r::table
            .filter(r::scope.eq(scope))
            .filter(r::expires_at.gt(now.as_datetime()))
            .select(count_star())
            .get_result(conn))?;
        count(n, "count of idempotency receipts")
    }

    /// One statement: the upsert replaces the row of the same key only when that row has
    /// expired; against an unexpired one it updates nothing, which is the conflict. A concurrent
    /// insert of the same key waits on the first, then sees it unexpired: also a conflict.
    async fn insert_idempotency_receipt(
        &mut self,
        receipt: &IdempotencyReceipt,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        // `ON CONFLICT … DO UPDATE … WHERE` is diesel's `FilterDsl` on the insert statement,
        // which the prelude's `QueryDsl::filter` does not reach.
        use diesel::query_dsl::methods::FilterDsl;

        let row = ReceiptRow::from(receipt);
        let written = write_op!(self, |conn| keep_prepared(FilterDsl::filter(
            diesel::insert_into(r::table)
                .values(&row)
                .on_conflict((r::scope, r::key_hash))
                .do_update()
                .set(&row),
            r::expires_at.le(now.as_datetime())
        ))
        .execute(conn))?;
        if written == 0 {
            return Err(StoreError::Conflict(RECEIPT_KEY.into()));
        }
        Ok(())
    }

    async fn purge_idempotency_receipts(
        &mut self,
        now: Timestamp,
        limit_to: u32,
    ) -> Result<u64, StoreError> {
        let deleted = write_op!(self, |conn| diesel::sql_query(PURGE_RECEIPTS)
            .bind::<Timestamptz, _>(now.as_datetime())
            .bind::<BigInt, _>(limit(limit_to))
            .execute(conn))?;
        Ok(deleted as u64)
    }

    async fn save_agent_service(&mut self, service: &AgentService) -> Result<(), StoreError> {
        let row = AgentServiceRow::from(service);
        write_op!(self, |conn| keep_prepared(
            diesel::insert_into(a::table)
                .values(&row)
                .on_conflict(a::id)
                .do_update()
                .set(&row)
        )
        .execute(conn))?;
        Ok(())
    }

    async fn get_agent_service(
        &mut self,
        zone: &ZoneId,
        service: &str,
    ) -> Result<Option<AgentService>, StoreError> {
        let row: Option<AgentServiceRow> = op!(
            self,
            optional
                | conn
                | a::table
                    .filter(a::zone_id.eq(zone.as_str()).and(a::id.eq(service)))
                    .select(AgentServiceRow::as_select())
                    .first(conn)
        )?;
        row.map(AgentService::try_from).transpose()
    }

    async fn find_agent_service(
        &mut self,
        zone: &ZoneId,
        application_id: &str,
        endpoint_url: &str,
    ) -> Result<Option<AgentService>, StoreError> {
        let row: Option<AgentServiceRow> = op!(
            self,
            optional
                | conn
                | a::table
                    .filter(a::zone_id.eq(zone.as_str()))
                    .filter(a::application_id.eq(application_id))
                    .filter(a::endpoint_url.eq(endpoint_url))
                    .select(AgentServiceRow::as_select())
                    .first(conn)
        )?;
        row.map(AgentService::try_from).transpose()
    }

    async fn list_agent_services(
        &mut self,
        zone: &ZoneId,
        before: Option<&str>,
        limit_to: u32,
    ) -> Result<Vec<AgentService>, StoreError> {
        let mut query = a::table
            .filter(a::zone_id.eq(zone.as_str()))
            .select(AgentServiceRow::as_select())
            .into_boxed();
        if let Some(before) = before {
            query = query.filter(a::id.lt(before.to_owned()));
        }
        let query = query.order(a::id.desc()).limit(limit(limit_to));
        let rows: Vec<AgentServiceRow> = op!(self, |conn| query.load(conn))?;
        rows.into_iter().map(AgentService::try_from).collect()
    }

    async fn save_invocation(&mut self, invocation: &Invocation) -> Result<(), StoreError> {
        let row = InvocationRow::from(invocation);
        write_op!(self, |conn| keep_prepared(
            diesel::insert_into(i::table)
                .values(&row)
                .on_conflict(i::id)
                .do_update()
                .set(&row)
        )
        .execute(conn))?;
        Ok(())
    }

    async fn get_invocation(
        &mut self,
        zone: &ZoneId,
        invocation: &str,
    ) -> Result<Option<Invocation>, StoreError> {
        let row: Option<InvocationRow> = op!(
            self,
            optional
                | conn
                | i::table
                    .filter(i::zone_id.eq(zone.as_str()).and(i::id.eq(invocation)))
                    .select(InvocationRow::as_select())
                    .first(conn)
        )?;
        row.map(Invocation::try_from).transpose()
    }

    async fn list_invocations(
        &mut self,
        zone: &ZoneId,
        before: Option<&str>,
        limit_to: u32,
    ) -> Result<Vec<Invocation>, StoreError> {
        let mut query = i::table
            .filter(i::zone_id.eq(zone.as_str()))
            .select(InvocationRow::as_select())
            .into_boxed();
        if let Some(before) = before {
            query = query.filter(i::id.lt(before.to_owned()));
        }
        let query = query.order(i::id.desc()).limit(limit(limit_to));
        let rows: Vec<InvocationRow> = op!(self, |conn| query.load(conn))?;
        rows.into_iter().map(Invocation::try_from).collect()
    }

    /// The status is a literal so `invocations_running_deadline` (a partial index) serves it.
    async fn overdue_invocations(
        &mut self,
        now: Timestamp,
        limit_to: u32,
    ) -> Result<Vec<Invocation>, StoreError> {
        let rows: Vec<InvocationRow> = op!(self, |conn| i::table
            .filter(sql::<Bool>("status = 'running'"))
            .filter(i::deadline_at.le(now.as_datetime()))
            .select(InvocationRow::as_select())
            .order((i::deadline_at, i::id))
            .limit(limit(limit_to))
            .load(conn))?;
        rows.into_iter().map(Invocation::try_from).collect()
    }
}
