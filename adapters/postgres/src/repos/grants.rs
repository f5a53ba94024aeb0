//! Grants.

use async_trait::async_trait;
use caracal_core::ids::{ApplicationId, GrantId, ResourceId, ZoneId};
use caracal_core::model::Grant;
use caracal_core::ports::store::{GrantRepo, Page};
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::convert::{attribution, id};
use crate::schema::grants as t;
use crate::unit_of_work::{keyset, op, write_op, PgUnitOfWork};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = t, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub(crate) struct GrantRow {
    id: String,
    zone_id: String,
    application_id: String,
    user_id: String,
    resource_id: String,
    scopes: Vec<String>,
    status: String,
    created_by: String,
    created_via_operator: bool,
    updated_by: String,
    updated_via_operator: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<&Grant> for GrantRow {
    fn from(g: &Grant) -> Self {
        Self {
            id: g.id.to_string(),
            zone_id: g.zone_id.to_string(),
            application_id: g.application_id.to_string(),
            user_id: g.user_id.clone(),
            resource_id: g.resource_id.to_string(),
            scopes: g.scopes.clone(),
            status: g.status.clone(),
            created_by: g.attr.created_by.clone(),
            created_via_operator: g.attr.created_via_operator,
            updated_by: g.attr.updated_by.clone(),
            updated_via_operator: g.attr.updated_via_operator,
            created_at: g.attr.created_at.as_datetime(),
            updated_at: g.attr.updated_at.as_datetime(),
        }
    }
}

impl TryFrom<GrantRow> for Grant {
    type Error = StoreError;

    fn try_from(r: GrantRow) -> Result<Self, StoreError> {
        Ok(Grant {
            id: id(GrantId::parse, &r.id, "grants.id")?,
            zone_id: id(ZoneId::parse, &r.zone_id, "grants.zone_id")?,
            application_id: id(
                ApplicationId::parse,
                &r.application_id,
                "grants.application_id",
            )?,
            user_id: r.user_id,
            resource_id: id(ResourceId::parse, &r.resource_id, "grants.resource_id")?,
            scopes: r.scopes,
            status: r.status,
            attr: attribution(
                r.created_by,
                r.created_via_operator,
                r.updated_by,
                r.updated_via_operator,
                r.created_at,
                r.updated_at,
            ),
        })
    }
}

#[async_trait]
impl GrantRepo for PgUnitOfWork {
    async fn save_grant(&mut self, grant: &Grant) -> Result<(), StoreError> {
        let row = GrantRow::from(grant);
        write_op!(self, |conn| diesel::insert_into(t::table)
            .values(&row)
            .on_conflict(t::id)
            .do_update()
            .set(&row)
            .execute(conn))?;
        Ok(())
    }

    async fn get_grant(
        &mut self,
        zone: &ZoneId,
        grant: &GrantId,
    ) -> Result<Option<Grant>, StoreError> {
        let row: Option<GrantRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(t::zone_id.eq(zone.as_str()).and(t::id.eq(grant.as_str())))
                    .select(GrantRow::as_select())
                    .first(conn)
        )?;
        row.map(Grant::try_from).transpose()
    }

    async fn list_grants(&mut self, zone: &ZoneId, page: &Page) -> Result<Vec<Grant>, StoreError> {
        let query = t::table
            .filter(t::zone_id.eq(zone.as_str()))
            .select(GrantRow::as_select())
            .into_boxed();
        let rows: Vec<GrantRow> = op!(self, |conn| keyset!(query, page, t::created_at, t::id)
            .load(conn))?;
        rows.into_iter().map(Grant::try_from).collect()
    }
}
