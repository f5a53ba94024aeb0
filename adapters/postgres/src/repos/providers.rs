//! Providers.

use async_trait::async_trait;
use caracal_core::ids::{ProviderId, ZoneId};
use caracal_core::model::Provider;
use caracal_core::ports::store::{Liveness, Page, ProviderRepo};
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::Value;

use crate::convert::{attribution, id, opt_dt, opt_ts};
use crate::error::corrupt;
use crate::schema::providers as t;
use crate::unit_of_work::{keyset, op, write_op, PgUnitOfWork};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = t, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub(crate) struct ProviderRow {
    id: String,
    zone_id: String,
    name: String,
    identifier: String,
    kind: String,
    config_json: Value,
    secret_config_keys: Vec<String>,
    connectivity_failed_at: Option<DateTime<Utc>>,
    created_by: String,
    created_via_operator: bool,
    updated_by: String,
    updated_via_operator: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    archived_at: Option<DateTime<Utc>>,
}

impl From<&Provider> for ProviderRow {
    fn from(p: &Provider) -> Self {
        Self {
            id: p.id.to_string(),
            zone_id: p.zone_id.to_string(),
            name: p.name.clone(),
            identifier: p.identifier.clone(),
            kind: p.kind.clone(),
            config_json: Value::Object(p.config_json.clone()),
            secret_config_keys: p.secret_config_keys.clone(),
            connectivity_failed_at: opt_dt(p.connectivity_failed_at),
            created_by: p.attr.created_by.clone(),
            created_via_operator: p.attr.created_via_operator,
            updated_by: p.attr.updated_by.clone(),
            updated_via_operator: p.attr.updated_via_operator,
            created_at: p.attr.created_at.as_datetime(),
            updated_at: p.attr.updated_at.as_datetime(),
            archived_at: opt_dt(p.archived_at),
        }
    }
}

impl TryFrom<ProviderRow> for Provider {
    type Error = StoreError;

    fn try_from(r: ProviderRow) -> Result<Self, StoreError> {
        let Value::Object(config_json) = r.config_json else {
            return Err(corrupt("providers.config_json", "not a JSON object"));
        };
        Ok(Provider {
            id: id(ProviderId::parse, &r.id, "providers.id")?,
            zone_id: id(ZoneId::parse, &r.zone_id, "providers.zone_id")?,
            name: r.name,
            identifier: r.identifier,
            kind: r.kind,
            config_json,
            secret_config_keys: r.secret_config_keys,
            connectivity_failed_at: opt_ts(r.connectivity_failed_at),
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
impl ProviderRepo for PgUnitOfWork {
    async fn save_provider(&mut self, provider: &Provider) -> Result<(), StoreError> {
        let row = ProviderRow::from(provider);
        write_op!(self, |conn| diesel::insert_into(t::table)
            .values(&row)
            .on_conflict(t::id)
            .do_update()
            .set(&row)
            .execute(conn))?;
        Ok(())
    }

    async fn get_provider(
        &mut self,
        zone: &ZoneId,
        provider: &ProviderId,
    ) -> Result<Option<Provider>, StoreError> {
        let row: Option<ProviderRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(
                        t::zone_id
                            .eq(zone.as_str())
                            .and(t::id.eq(provider.as_str()))
                    )
                    .select(ProviderRow::as_select())
                    .first(conn)
        )?;
        row.map(Provider::try_from).transpose()
    }

    async fn list_providers(
        &mut self,
        zone: &ZoneId,
        liveness: Liveness,
        page: &Page,
    ) -> Result<Vec<Provider>, StoreError> {
        let mut query = t::table
            .filter(t::zone_id.eq(zone.as_str()))
            .select(ProviderRow::as_select())
            .into_boxed();
        query = match liveness {
            Liveness::Active => query.filter(t::archived_at.is_null()),
            Liveness::Archived => query.filter(t::archived_at.is_not_null()),
        };
        let rows: Vec<ProviderRow> = op!(self, |conn| keyset!(query, page, t::created_at, t::id)
            .load(conn))?;
        rows.into_iter().map(Provider::try_from).collect()
    }

    async fn find_provider_by_identifier(
        &mut self,
        zone: &ZoneId,
        identifier: &str,
    ) -> Result<Option<Provider>, StoreError> {
        let row: Option<ProviderRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(t::zone_id.eq(zone.as_str()))
                    .filter(t::archived_at.is_null())
                    .filter(t::identifier.eq(identifier))
                    .select(ProviderRow::as_select())
                    .first(conn)
        )?;
        row.map(Provider::try_from).transpose()
    }
}
