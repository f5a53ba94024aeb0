//! Subject issuers.

use async_trait::async_trait;
use caracal_core::ids::{SubjectIssuerId, ZoneId};
use caracal_core::model::SubjectIssuer;
use caracal_core::ports::store::{Page, SubjectIssuerRepo};
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::convert::{attribution, id, opt_dt, opt_ts};
use crate::error::corrupt;
use crate::schema::subject_issuers as t;
use crate::unit_of_work::{keyset, op, write_op, PgUnitOfWork};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = t, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub(crate) struct SubjectIssuerRow {
    id: String,
    zone_id: String,
    issuer: String,
    jwks_url: String,
    audience: String,
    created_by: String,
    created_via_operator: bool,
    updated_by: String,
    updated_via_operator: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    archived_at: Option<DateTime<Utc>>,
}

impl From<&SubjectIssuer> for SubjectIssuerRow {
    fn from(i: &SubjectIssuer) -> Self {
        Self {
            id: i.id.to_string(),
            zone_id: i.zone_id.to_string(),
            issuer: i.issuer.clone(),
            jwks_url: i.jwks_url.clone(),
            audience: i.audience.clone(),
            created_by: i.attr.created_by.clone(),
            created_via_operator: i.attr.created_via_operator,
            updated_by: i.attr.updated_by.clone(),
            updated_via_operator: i.attr.updated_via_operator,
            created_at: i.attr.created_at.as_datetime(),
            updated_at: i.attr.updated_at.as_datetime(),
            archived_at: opt_dt(i.archived_at),
        }
    }
}

impl TryFrom<SubjectIssuerRow> for SubjectIssuer {
    type Error = StoreError;

    fn try_from(r: SubjectIssuerRow) -> Result<Self, StoreError> {
        Ok(SubjectIssuer {
            id: id(SubjectIssuerId::parse, &r.id, "subject_issuers.id")?,
            zone_id: id(ZoneId::parse, &r.zone_id, "subject_issuers.zone_id")?,
            issuer: r.issuer,
            jwks_url: r.jwks_url,
            audience: r.audience,
            attr: attribution(
                r.created_by,
                r.created_via_operator,
                r.updated_by,
                r.updated_via_operator,
                r.created_at,
                r.updated_at,
            ),
            archived_at: opt_ts(r.archived_at),
        })
    }
}

#[async_trait]
impl SubjectIssuerRepo for PgUnitOfWork {
    async fn save_subject_issuer(&mut self, issuer: &SubjectIssuer) -> Result<(), StoreError> {
        let row = SubjectIssuerRow::from(issuer);
        write_op!(self, |conn| diesel::insert_into(t::table)
            .values(&row)
            .on_conflict(t::id)
            .do_update()
            .set(&row)
            .execute(conn))?;
        Ok(())
    }

    async fn get_subject_issuer(
        &mut self,
        zone: &ZoneId,
        issuer: &SubjectIssuerId,
    ) -> Result<Option<SubjectIssuer>, StoreError> {
        let row: Option<SubjectIssuerRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(t::zone_id.eq(zone.as_str()).and(t::id.eq(issuer.as_str())))
                    .select(SubjectIssuerRow::as_select())
                    .first(conn)
        )?;
        row.map(SubjectIssuer::try_from).transpose()
    }

    async fn list_subject_issuers(
        &mut self,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<SubjectIssuer>, StoreError> {
        let query = t::table
            .filter(t::zone_id.eq(zone.as_str()))
            .filter(t::archived_at.is_null())
            .select(SubjectIssuerRow::as_select())
            .into_boxed();
        let rows: Vec<SubjectIssuerRow> =
            op!(self, |conn| keyset!(query, page, t::created_at, t::id)
                .load(conn))?;
        rows.into_iter().map(SubjectIssuer::try_from).collect()
    }

    async fn find_subject_issuer(
        &mut self,
        zone: &ZoneId,
        issuer: &str,
    ) -> Result<Option<SubjectIssuer>, StoreError> {
        let row: Option<SubjectIssuerRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(t::zone_id.eq(zone.as_str()))
                    .filter(t::archived_at.is_null())
                    .filter(t::issuer.eq(issuer))
                    .select(SubjectIssuerRow::as_select())
                    .first(conn)
        )?;
        row.map(SubjectIssuer::try_from).transpose()
    }

    async fn count_active_subject_issuers(&mut self, zone: &ZoneId) -> Result<u64, StoreError> {
        let count: i64 = op!(self, |conn| t::table
            .filter(t::zone_id.eq(zone.as_str()))
            .filter(t::archived_at.is_null())
            .select(count_star())
            .get_result(conn))?;
        u64::try_from(count).map_err(|_| corrupt("count of subject issuers", count))
    }
}
