//! Zones (not under row-level security: a zone must be found before its rows can be scoped).

use async_trait::async_trait;
use caracal_core::ids::ZoneId;
use caracal_core::model::Zone;
use caracal_core::ports::store::{Page, ZoneRepo};
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::dsl::exists;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::convert::{attribution, id, opt_dt, opt_ts};
use crate::schema::zones as t;
use crate::unit_of_work::{keyset, op, write_op, PgUnitOfWork};

/// Reserved zones (`caracal-sys-…`) are readable by id only, never listed.
const RESERVED_SLUG_PATTERN: &str = "caracal-sys-%";

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = t, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub(crate) struct ZoneRow {
    id: String,
    name: String,
    slug: String,
    dcr_enabled: bool,
    operator_coauthor_badge: bool,
    operator_governed: bool,
    created_by: String,
    created_via_operator: bool,
    updated_by: String,
    updated_via_operator: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    archived_at: Option<DateTime<Utc>>,
}

impl From<&Zone> for ZoneRow {
    fn from(z: &Zone) -> Self {
        Self {
            id: z.id.to_string(),
            name: z.name.clone(),
            slug: z.slug.clone(),
            dcr_enabled: z.dcr_enabled,
            operator_coauthor_badge: z.operator_coauthor_badge,
            operator_governed: z.operator_governed,
            created_by: z.attr.created_by.clone(),
            created_via_operator: z.attr.created_via_operator,
            updated_by: z.attr.updated_by.clone(),
            updated_via_operator: z.attr.updated_via_operator,
            created_at: z.attr.created_at.as_datetime(),
            updated_at: z.attr.updated_at.as_datetime(),
            archived_at: opt_dt(z.archived_at),
        }
    }
}

impl TryFrom<ZoneRow> for Zone {
    type Error = StoreError;

    fn try_from(r: ZoneRow) -> Result<Self, StoreError> {
        Ok(Zone {
            id: id(ZoneId::parse, &r.id, "zones.id")?,
            name: r.name,
            slug: r.slug,
            dcr_enabled: r.dcr_enabled,
            operator_coauthor_badge: r.operator_coauthor_badge,
            operator_governed: r.operator_governed,
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
impl ZoneRepo for PgUnitOfWork {
    async fn save_zone(&mut self, zone: &Zone) -> Result<(), StoreError> {
        let row = ZoneRow::from(zone);
        write_op!(self, |conn| diesel::insert_into(t::table)
            .values(&row)
            .on_conflict(t::id)
            .do_update()
            .set(&row)
            .execute(conn))?;
        Ok(())
    }

    async fn get_zone(&mut self, zone: &ZoneId) -> Result<Option<Zone>, StoreError> {
        let row: Option<ZoneRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .find(zone.as_str())
                    .select(ZoneRow::as_select())
                    .first(conn)
        )?;
        row.map(Zone::try_from).transpose()
    }

    async fn list_zones(&mut self, page: &Page) -> Result<Vec<Zone>, StoreError> {
        let query = t::table
            .filter(t::archived_at.is_null())
            .filter(t::slug.not_like(RESERVED_SLUG_PATTERN))
            .select(ZoneRow::as_select())
            .into_boxed();
        let rows: Vec<ZoneRow> = op!(self, |conn| keyset!(query, page, t::created_at, t::id)
            .load(conn))?;
        rows.into_iter().map(Zone::try_from).collect()
    }

    async fn zone_slug_exists(&mut self, slug: &str) -> Result<bool, StoreError> {
        op!(self, |conn| diesel::select(exists(
            t::table.filter(t::slug.eq(slug))
        ))
        .get_result(conn))
    }
}
