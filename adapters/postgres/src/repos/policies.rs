//! Policies and their immutable versions.

use async_trait::async_trait;
use caracal_core::ids::{PolicyId, PolicyVersionId, ZoneId};
use caracal_core::model::{Policy, PolicyVersion};
use caracal_core::ports::store::{Page, PolicyRepo};
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::convert::{attribution, id, opt_dt, opt_ts, ts};
use crate::schema::{policies as t, policy_versions as v};
use crate::unit_of_work::{keyset, op, write_op, PgUnitOfWork};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = t, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub(crate) struct PolicyRow {
    id: String,
    zone_id: String,
    name: String,
    description: Option<String>,
    created_by: String,
    created_via_operator: bool,
    updated_by: String,
    updated_via_operator: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    archived_at: Option<DateTime<Utc>>,
}

impl From<&Policy> for PolicyRow {
    fn from(p: &Policy) -> Self {
        Self {
            id: p.id.to_string(),
            zone_id: p.zone_id.to_string(),
            name: p.name.clone(),
            description: p.description.clone(),
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

impl TryFrom<PolicyRow> for Policy {
    type Error = StoreError;

    fn try_from(r: PolicyRow) -> Result<Self, StoreError> {
        Ok(Policy {
            id: id(PolicyId::parse, &r.id, "policies.id")?,
            zone_id: id(ZoneId::parse, &r.zone_id, "policies.zone_id")?,
            name: r.name,
            description: r.description,
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

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = v, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub(crate) struct PolicyVersionRow {
    id: String,
    policy_id: String,
    zone_id: String,
    version: i32,
    content: String,
    content_sha256: String,
    schema_version: String,
    created_by: String,
    created_via_operator: bool,
    created_at: DateTime<Utc>,
    archived_at: Option<DateTime<Utc>>,
}

impl From<&PolicyVersion> for PolicyVersionRow {
    fn from(p: &PolicyVersion) -> Self {
        Self {
            id: p.id.to_string(),
            policy_id: p.policy_id.to_string(),
            zone_id: p.zone_id.to_string(),
            version: p.version,
            content: p.content.clone(),
            content_sha256: p.content_sha256.clone(),
            schema_version: p.schema_version.clone(),
            created_by: p.created_by.clone(),
            created_via_operator: p.created_via_operator,
            created_at: p.created_at.as_datetime(),
            archived_at: opt_dt(p.archived_at),
        }
    }
}

impl TryFrom<PolicyVersionRow> for PolicyVersion {
    type Error = StoreError;

    fn try_from(r: PolicyVersionRow) -> Result<Self, StoreError> {
        Ok(PolicyVersion {
            id: id(PolicyVersionId::parse, &r.id, "policy_versions.id")?,
            policy_id: id(PolicyId::parse, &r.policy_id, "policy_versions.policy_id")?,
            zone_id: id(ZoneId::parse, &r.zone_id, "policy_versions.zone_id")?,
            version: r.version,
            content: r.content,
            content_sha256: r.content_sha256,
            schema_version: r.schema_version,
            created_by: r.created_by,
            created_via_operator: r.created_via_operator,
            created_at: ts(r.created_at),
            archived_at: opt_ts(r.archived_at),
        })
    }
}

#[async_trait]
impl PolicyRepo for PgUnitOfWork {
    async fn save_policy(&mut self, policy: &Policy) -> Result<(), StoreError> {
        let row = PolicyRow::from(policy);
        write_op!(self, |conn| diesel::insert_into(t::table)
            .values(&row)
            .on_conflict(t::id)
            .do_update()
            .set(&row)
            .execute(conn))?;
        Ok(())
    }

    async fn get_policy(
        &mut self,
        zone: &ZoneId,
        policy: &PolicyId,
    ) -> Result<Option<Policy>, StoreError> {
        let row: Option<PolicyRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(t::zone_id.eq(zone.as_str()).and(t::id.eq(policy.as_str())))
                    .select(PolicyRow::as_select())
                    .first(conn)
        )?;
        row.map(Policy::try_from).transpose()
    }

    async fn list_policies(
        &mut self,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<Policy>, StoreError> {
        let query = t::table
            .filter(t::zone_id.eq(zone.as_str()))
            .filter(t::archived_at.is_null())
            .select(PolicyRow::as_select())
            .into_boxed();
        let rows: Vec<PolicyRow> = op!(self, |conn| keyset!(query, page, t::created_at, t::id)
            .load(conn))?;
        rows.into_iter().map(Policy::try_from).collect()
    }

    async fn find_policy_by_name(
        &mut self,
        zone: &ZoneId,
        name: &str,
    ) -> Result<Option<Policy>, StoreError> {
        let row: Option<PolicyRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(t::zone_id.eq(zone.as_str()))
                    .filter(t::archived_at.is_null())
                    .filter(t::name.eq(name))
                    .select(PolicyRow::as_select())
                    .first(conn)
        )?;
        row.map(Policy::try_from).transpose()
    }

    async fn save_policy_version(&mut self, version: &PolicyVersion) -> Result<(), StoreError> {
        let row = PolicyVersionRow::from(version);
        write_op!(self, |conn| diesel::insert_into(v::table)
            .values(&row)
            .on_conflict(v::id)
            .do_update()
            .set(&row)
            .execute(conn))?;
        Ok(())
    }

    async fn list_policy_versions(
        &mut self,
        zone: &ZoneId,
        policy: &PolicyId,
    ) -> Result<Vec<PolicyVersion>, StoreError> {
        let rows: Vec<PolicyVersionRow> = op!(self, |conn| v::table
            .filter(v::zone_id.eq(zone.as_str()))
            .filter(v::policy_id.eq(policy.as_str()))
            .order(v::version.desc())
            .select(PolicyVersionRow::as_select())
            .load(conn))?;
        rows.into_iter().map(PolicyVersion::try_from).collect()
    }

    async fn get_policy_version(
        &mut self,
        zone: &ZoneId,
        version: &PolicyVersionId,
    ) -> Result<Option<PolicyVersion>, StoreError> {
        let row: Option<PolicyVersionRow> = op!(
            self,
            optional
                | conn
                | v::table
                    .filter(v::zone_id.eq(zone.as_str()).and(v::id.eq(version.as_str())))
                    .select(PolicyVersionRow::as_select())
                    .first(conn)
        )?;
        row.map(PolicyVersion::try_from).transpose()
    }
}
