//! The admin audit log: append-only, hash-chained per zone (`spec/api.md §7`).

use async_trait::async_trait;
use caracal_core::model::AdminAuditRecord;
use caracal_core::ports::store::{AdminAuditRepo, Page};
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use serde_json::Value;

use crate::convert::ts;
use crate::repos::coalesce;
use crate::schema::admin_audit_events as t;
use crate::unit_of_work::{keyset, op, write_op, PgUnitOfWork};

/// The advisory-lock name of the global chain (upstream's, `spec/api.md §7`).
const GLOBAL_CHAIN_LOCK: &str = "admin-audit::global";

/// The key the chain indexes use for a chain: the zone id, or `''` for the global chain (zone
/// ids are never empty, so the two cannot meet).
fn chain_key(zone: Option<&str>) -> &str {
    zone.unwrap_or("")
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = t, check_for_backend(diesel::pg::Pg))]
pub(crate) struct AdminAuditRow {
    id: String,
    request_id: String,
    actor_id: Option<String>,
    actor_name: Option<String>,
    actor_scope: Option<String>,
    action: String,
    method: String,
    path: String,
    zone_id: Option<String>,
    entity_type: Option<String>,
    entity_id: Option<String>,
    status_code: i32,
    payload_json: Value,
    occurred_at: DateTime<Utc>,
    content_sha256: String,
    prev_content_sha256: Option<String>,
    chain_seq: i64,
    chain_hmac: Option<String>,
}

impl From<&AdminAuditRecord> for AdminAuditRow {
    fn from(a: &AdminAuditRecord) -> Self {
        Self {
            id: a.id.clone(),
            request_id: a.request_id.clone(),
            actor_id: a.actor_id.clone(),
            actor_name: a.actor_name.clone(),
            actor_scope: a.actor_scope.clone(),
            action: a.action.clone(),
            method: a.method.clone(),
            path: a.path.clone(),
            zone_id: a.zone_id.clone(),
            entity_type: a.entity_type.clone(),
            entity_id: a.entity_id.clone(),
            status_code: a.status_code,
            payload_json: a.payload_json.clone(),
            occurred_at: a.occurred_at.as_datetime(),
            content_sha256: a.content_sha256.clone(),
            prev_content_sha256: a.prev_content_sha256.clone(),
            chain_seq: a.chain_seq,
            chain_hmac: a.chain_hmac.clone(),
        }
    }
}

impl From<AdminAuditRow> for AdminAuditRecord {
    fn from(r: AdminAuditRow) -> Self {
        AdminAuditRecord {
            id: r.id,
            request_id: r.request_id,
            actor_id: r.actor_id,
            actor_name: r.actor_name,
            actor_scope: r.actor_scope,
            action: r.action,
            method: r.method,
            path: r.path,
            zone_id: r.zone_id,
            entity_type: r.entity_type,
            entity_id: r.entity_id,
            status_code: r.status_code,
            payload_json: r.payload_json,
            occurred_at: ts(r.occurred_at),
            content_sha256: r.content_sha256,
            prev_content_sha256: r.prev_content_sha256,
            chain_seq: r.chain_seq,
            chain_hmac: r.chain_hmac,
        }
    }
}

#[async_trait]
impl AdminAuditRepo for PgUnitOfWork {
    /// Takes the chain's transaction-scoped advisory lock before reading, so a second writer of
    /// the same chain waits here until this unit of work commits or rolls back, then reads the
    /// record this one appended: the chain cannot fork (`spec/api.md §7`). The lock is released
    /// with the transaction.
    async fn last_admin_audit(
        &mut self,
        zone: Option<&str>,
    ) -> Result<Option<AdminAuditRecord>, StoreError> {
        let lock_name = zone.unwrap_or(GLOBAL_CHAIN_LOCK);
        op!(self, |conn| diesel::sql_query(
            "SELECT pg_advisory_xact_lock(hashtext($1))"
        )
        .bind::<Text, _>(lock_name)
        .execute(conn))?;
        // A separate statement, so its snapshot is taken after the lock was granted (READ
        // COMMITTED) and sees the previous holder's committed append.
        let row: Option<AdminAuditRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(coalesce(t::zone_id, "").eq(chain_key(zone)))
                    .order(t::chain_seq.desc())
                    .select(AdminAuditRow::as_select())
                    .first(conn)
        )?;
        Ok(row.map(AdminAuditRecord::from))
    }

    async fn append_admin_audit(&mut self, record: &AdminAuditRecord) -> Result<(), StoreError> {
        let row = AdminAuditRow::from(record);
        write_op!(self, |conn| diesel::insert_into(t::table)
            .values(&row)
            .execute(conn))?;
        Ok(())
    }

    async fn list_admin_audit(
        &mut self,
        zone: Option<&str>,
        page: &Page,
    ) -> Result<Vec<AdminAuditRecord>, StoreError> {
        // The chain's "created_at" is the instant the audited call happened.
        let query = t::table
            .filter(coalesce(t::zone_id, "").eq(chain_key(zone)))
            .select(AdminAuditRow::as_select())
            .into_boxed();
        let rows: Vec<AdminAuditRow> =
            op!(self, |conn| keyset!(query, page, t::occurred_at, t::id)
                .load(conn))?;
        Ok(rows.into_iter().map(AdminAuditRecord::from).collect())
    }
}
