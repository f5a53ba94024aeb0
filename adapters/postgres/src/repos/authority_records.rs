//! Authority records: one per minted mandate, the mandate's `sid` (`spec/sts.md §3.9`).

use async_trait::async_trait;
use caracal_core::authority::{AuthorityRecord, RecordStatus, SessionType};
use caracal_core::ids::ZoneId;
use caracal_core::ports::store::AuthorityRecordRepo;
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;

use crate::convert::{id, opt_dt, opt_ts, ts};
use crate::error::corrupt;
use crate::prepared::keep_prepared;
use crate::schema::authority_records as t;
use crate::unit_of_work::{op, PgUnitOfWork};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = t, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub(crate) struct AuthorityRecordRow {
    id: String,
    zone_id: String,
    session_type: String,
    subject_id: String,
    client_id: String,
    parent_id: Option<String>,
    status: String,
    expires_at: DateTime<Utc>,
    authenticated_at: DateTime<Utc>,
    claims_json: Option<Value>,
    revoked_at: Option<DateTime<Utc>>,
    revoked_reason: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<&AuthorityRecord> for AuthorityRecordRow {
    fn from(r: &AuthorityRecord) -> Self {
        Self {
            id: r.id.clone(),
            zone_id: r.zone_id.to_string(),
            session_type: r.session_type.as_str().to_owned(),
            subject_id: r.subject_id.clone(),
            client_id: r.client_id.clone(),
            parent_id: r.parent_id.clone(),
            status: r.status.as_str().to_owned(),
            expires_at: r.expires_at.as_datetime(),
            authenticated_at: r.authenticated_at.as_datetime(),
            claims_json: r.claims_json.clone(),
            revoked_at: opt_dt(r.revoked_at),
            revoked_reason: r.revoked_reason.clone(),
            created_at: r.created_at.as_datetime(),
        }
    }
}

impl TryFrom<AuthorityRecordRow> for AuthorityRecord {
    type Error = StoreError;

    fn try_from(r: AuthorityRecordRow) -> Result<Self, StoreError> {
        let session_type = SessionType::parse(&r.session_type).ok_or_else(|| {
            corrupt(
                "authority_records.session_type",
                format!("unknown {:?}", r.session_type),
            )
        })?;
        let status = RecordStatus::parse(&r.status).ok_or_else(|| {
            corrupt(
                "authority_records.status",
                format!("unknown {:?}", r.status),
            )
        })?;
        Ok(AuthorityRecord {
            zone_id: id(ZoneId::parse, &r.zone_id, "authority_records.zone_id")?,
            id: r.id,
            session_type,
            subject_id: r.subject_id,
            client_id: r.client_id,
            parent_id: r.parent_id,
            status,
            expires_at: ts(r.expires_at),
            authenticated_at: ts(r.authenticated_at),
            claims_json: r.claims_json,
            revoked_at: opt_ts(r.revoked_at),
            revoked_reason: r.revoked_reason,
            created_at: ts(r.created_at),
        })
    }
}

/// The row `get_authority_record` reads. Takes a shared connection so that a caller can
/// pipeline it with other statements (`PgStore::begin_with_caller`).
pub(crate) async fn authority_record_row(
    mut conn: &AsyncPgConnection,
    zone: &ZoneId,
    record: &str,
) -> QueryResult<Option<AuthorityRecordRow>> {
    t::table
        .filter(t::zone_id.eq(zone.as_str()).and(t::id.eq(record)))
        .select(AuthorityRecordRow::as_select())
        .first(&mut conn)
        .await
        .optional()
}

#[async_trait]
impl AuthorityRecordRepo for PgUnitOfWork {
    async fn save_authority_record(&mut self, record: &AuthorityRecord) -> Result<(), StoreError> {
        let row = AuthorityRecordRow::from(record);
        // No savepoint: every mint writes one of these, and the savepoint's two round trips
        // bought nothing here. An upsert by primary key cannot hit a uniqueness rule, and a
        // write outside the unit's zone is a bug whose transaction may as well be lost.
        op!(self, |conn| keep_prepared(
            diesel::insert_into(t::table)
                .values(&row)
                .on_conflict(t::id)
                .do_update()
                .set(&row)
        )
        .execute(conn))?;
        Ok(())
    }

    async fn get_authority_record(
        &mut self,
        zone: &ZoneId,
        record: &str,
    ) -> Result<Option<AuthorityRecord>, StoreError> {
        let row = op!(self, |conn| authority_record_row(conn, zone, record))?;
        row.map(AuthorityRecord::try_from).transpose()
    }

    async fn list_authority_record_children(
        &mut self,
        zone: &ZoneId,
        record: &str,
    ) -> Result<Vec<AuthorityRecord>, StoreError> {
        let rows: Vec<AuthorityRecordRow> = op!(self, |conn| t::table
            .filter(t::zone_id.eq(zone.as_str()).and(t::parent_id.eq(record)))
            .select(AuthorityRecordRow::as_select())
            .order((t::created_at.asc(), t::id.asc()))
            .load(conn))?;
        rows.into_iter().map(AuthorityRecord::try_from).collect()
    }
}
