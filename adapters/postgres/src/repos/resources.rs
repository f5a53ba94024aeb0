//! Resources.

use async_trait::async_trait;
use caracal_core::ids::{ResourceId, ZoneId};
use caracal_core::model::{Operation, Resource};
use caracal_core::ports::store::{Liveness, Page, ResourceRepo};
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::Value;

use crate::convert::{attribution, id, opt_dt, opt_ts};
use crate::error::corrupt;
use crate::schema::resources as t;
use crate::unit_of_work::{keyset, op, write_op, PgUnitOfWork};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = t, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub(crate) struct ResourceRow {
    id: String,
    zone_id: String,
    name: String,
    identifier: String,
    upstream_url: Option<String>,
    scopes: Vec<String>,
    credential_provider_id: Option<String>,
    operations: Value,
    operation_enforcement: String,
    created_by: String,
    created_via_operator: bool,
    updated_by: String,
    updated_via_operator: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    archived_at: Option<DateTime<Utc>>,
}

impl TryFrom<&Resource> for ResourceRow {
    type Error = StoreError;

    fn try_from(r: &Resource) -> Result<Self, StoreError> {
        let operations = serde_json::to_value(&r.operations)
            .map_err(|err| StoreError::Corrupt(format!("resources.operations: {err}")))?;
        Ok(Self {
            id: r.id.to_string(),
            zone_id: r.zone_id.to_string(),
            name: r.name.clone(),
            identifier: r.identifier.clone(),
            upstream_url: r.upstream_url.clone(),
            scopes: r.scopes.clone(),
            credential_provider_id: r.credential_provider_id.clone(),
            operations,
            operation_enforcement: r.operation_enforcement.clone(),
            created_by: r.attr.created_by.clone(),
            created_via_operator: r.attr.created_via_operator,
            updated_by: r.attr.updated_by.clone(),
            updated_via_operator: r.attr.updated_via_operator,
            created_at: r.attr.created_at.as_datetime(),
            updated_at: r.attr.updated_at.as_datetime(),
            archived_at: opt_dt(r.archived_at),
        })
    }
}

impl TryFrom<ResourceRow> for Resource {
    type Error = StoreError;

    fn try_from(r: ResourceRow) -> Result<Self, StoreError> {
        let operations: Vec<Operation> = serde_json::from_value(r.operations)
            .map_err(|err| corrupt("resources.operations", err))?;
        Ok(Resource {
            id: id(ResourceId::parse, &r.id, "resources.id")?,
            zone_id: id(ZoneId::parse, &r.zone_id, "resources.zone_id")?,
            name: r.name,
            identifier: r.identifier,
            upstream_url: r.upstream_url,
            scopes: r.scopes,
            credential_provider_id: r.credential_provider_id,
            operations,
            operation_enforcement: r.operation_enforcement,
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
impl ResourceRepo for PgUnitOfWork {
    async fn save_resource(&mut self, resource: &Resource) -> Result<(), StoreError> {
        let row = ResourceRow::try_from(resource)?;
        write_op!(self, |conn| diesel::insert_into(t::table)
            .values(&row)
            .on_conflict(t::id)
            .do_update()
            .set(&row)
            .execute(conn))?;
        Ok(())
    }

    async fn get_resource(
        &mut self,
        zone: &ZoneId,
        resource: &ResourceId,
    ) -> Result<Option<Resource>, StoreError> {
        let row: Option<ResourceRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(
                        t::zone_id
                            .eq(zone.as_str())
                            .and(t::id.eq(resource.as_str()))
                    )
                    .select(ResourceRow::as_select())
                    .first(conn)
        )?;
        row.map(Resource::try_from).transpose()
    }

    async fn list_resources(
        &mut self,
        zone: &ZoneId,
        liveness: Liveness,
        page: &Page,
    ) -> Result<Vec<Resource>, StoreError> {
        let mut query = t::table
            .filter(t::zone_id.eq(zone.as_str()))
            .select(ResourceRow::as_select())
            .into_boxed();
        query = match liveness {
            Liveness::Active => query.filter(t::archived_at.is_null()),
            Liveness::Archived => query.filter(t::archived_at.is_not_null()),
        };
        let rows: Vec<ResourceRow> = op!(self, |conn| keyset!(query, page, t::created_at, t::id)
            .load(conn))?;
        rows.into_iter().map(Resource::try_from).collect()
    }

    async fn find_resource_by_identifier(
        &mut self,
        zone: &ZoneId,
        identifier: &str,
    ) -> Result<Option<Resource>, StoreError> {
        let row: Option<ResourceRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(t::zone_id.eq(zone.as_str()))
                    .filter(t::archived_at.is_null())
                    .filter(t::identifier.eq(identifier))
                    .select(ResourceRow::as_select())
                    .first(conn)
        )?;
        row.map(Resource::try_from).transpose()
    }

    async fn count_active_resources(&mut self, zone: &ZoneId) -> Result<u64, StoreError> {
        let count: i64 = op!(self, |conn| t::table
            .filter(t::zone_id.eq(zone.as_str()))
            .filter(t::archived_at.is_null())
            .select(count_star())
            .get_result(conn))?;
        u64::try_from(count).map_err(|_| corrupt("count of resources", count))
    }
}
