//! Policy sets, their versions and the zone's single active binding.

use async_trait::async_trait;
use caracal_core::ids::{PolicySetId, PolicySetVersionId, PolicyVersionId, ZoneId};
use caracal_core::model::{PolicySet, PolicySetVersion};
use caracal_core::ports::store::{Page, PolicySetRepo};
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::dsl::max;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::Value;

use crate::convert::{attribution, id, opt_dt, opt_ts, ts};
use crate::error::corrupt;
use crate::schema::{policy_set_versions as v, policy_sets as t};
use crate::unit_of_work::{keyset, op, write_op, PgUnitOfWork};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = t, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub(crate) struct PolicySetRow {
    id: String,
    zone_id: String,
    name: String,
    description: Option<String>,
    active_version_id: Option<String>,
    created_by: String,
    created_via_operator: bool,
    updated_by: String,
    updated_via_operator: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    archived_at: Option<DateTime<Utc>>,
}

impl From<&PolicySet> for PolicySetRow {
    fn from(s: &PolicySet) -> Self {
        Self {
            id: s.id.to_string(),
            zone_id: s.zone_id.to_string(),
            name: s.name.clone(),
            description: s.description.clone(),
            active_version_id: s.active_version_id.as_ref().map(ToString::to_string),
            created_by: s.attr.created_by.clone(),
            created_via_operator: s.attr.created_via_operator,
            updated_by: s.attr.updated_by.clone(),
            updated_via_operator: s.attr.updated_via_operator,
            created_at: s.attr.created_at.as_datetime(),
            updated_at: s.attr.updated_at.as_datetime(),
            archived_at: opt_dt(s.archived_at),
        }
    }
}

impl TryFrom<PolicySetRow> for PolicySet {
    type Error = StoreError;

    fn try_from(r: PolicySetRow) -> Result<Self, StoreError> {
        let active_version_id = r
            .active_version_id
            .as_deref()
            .map(|text| {
                id(
                    PolicySetVersionId::parse,
                    text,
                    "policy_sets.active_version_id",
                )
            })
            .transpose()?;
        Ok(PolicySet {
            id: id(PolicySetId::parse, &r.id, "policy_sets.id")?,
            zone_id: id(ZoneId::parse, &r.zone_id, "policy_sets.zone_id")?,
            name: r.name,
            description: r.description,
            active_version_id,
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

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = v, check_for_backend(diesel::pg::Pg))]
pub(crate) struct PolicySetVersionRow {
    id: String,
    policy_set_id: String,
    zone_id: String,
    version: i32,
    manifest: Value,
    manifest_sha256: String,
    schema_version: String,
    created_by: String,
    created_via_operator: bool,
    created_at: DateTime<Utc>,
}

impl From<&PolicySetVersion> for PolicySetVersionRow {
    fn from(s: &PolicySetVersion) -> Self {
        Self {
            id: s.id.to_string(),
            policy_set_id: s.policy_set_id.to_string(),
            zone_id: s.zone_id.to_string(),
            version: s.version,
            manifest: Value::Array(
                s.manifest
                    .iter()
                    .map(|pv| Value::String(pv.to_string()))
                    .collect(),
            ),
            manifest_sha256: s.manifest_sha256.clone(),
            schema_version: s.schema_version.clone(),
            created_by: s.created_by.clone(),
            created_via_operator: s.created_via_operator,
            created_at: s.created_at.as_datetime(),
        }
    }
}

impl TryFrom<PolicySetVersionRow> for PolicySetVersion {
    type Error = StoreError;

    fn try_from(r: PolicySetVersionRow) -> Result<Self, StoreError> {
        let manifest: Vec<PolicyVersionId> = serde_json::from_value(r.manifest)
            .map_err(|err| corrupt("policy_set_versions.manifest", err))?;
        Ok(PolicySetVersion {
            id: id(PolicySetVersionId::parse, &r.id, "policy_set_versions.id")?,
            policy_set_id: id(
                PolicySetId::parse,
                &r.policy_set_id,
                "policy_set_versions.policy_set_id",
            )?,
            zone_id: id(ZoneId::parse, &r.zone_id, "policy_set_versions.zone_id")?,
            version: r.version,
            manifest,
            manifest_sha256: r.manifest_sha256,
            schema_version: r.schema_version,
            created_by: r.created_by,
            created_via_operator: r.created_via_operator,
            created_at: ts(r.created_at),
        })
    }
}

#[async_trait]
impl PolicySetRepo for PgUnitOfWork {
    async fn save_policy_set(&mut self, set: &PolicySet) -> Result<(), StoreError> {
        // `policy_sets_one_active_per_zone` backs the rule that a zone evaluates one set.
        let row = PolicySetRow::from(set);
        write_op!(self, |conn| diesel::insert_into(t::table)
            .values(&row)
            .on_conflict(t::id)
            .do_update()
            .set(&row)
            .execute(conn))?;
        Ok(())
    }

    async fn get_policy_set(
        &mut self,
        zone: &ZoneId,
        set: &PolicySetId,
    ) -> Result<Option<PolicySet>, StoreError> {
        let row: Option<PolicySetRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(t::zone_id.eq(zone.as_str()).and(t::id.eq(set.as_str())))
                    .select(PolicySetRow::as_select())
                    .first(conn)
        )?;
        row.map(PolicySet::try_from).transpose()
    }

    async fn list_policy_sets(
        &mut self,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<PolicySet>, StoreError> {
        let query = t::table
            .filter(t::zone_id.eq(zone.as_str()))
            .filter(t::archived_at.is_null())
            .select(PolicySetRow::as_select())
            .into_boxed();
        let rows: Vec<PolicySetRow> = op!(self, |conn| keyset!(query, page, t::created_at, t::id)
            .load(conn))?;
        rows.into_iter().map(PolicySet::try_from).collect()
    }

    async fn find_policy_set_by_name(
        &mut self,
        zone: &ZoneId,
        name: &str,
    ) -> Result<Option<PolicySet>, StoreError> {
        let row: Option<PolicySetRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .filter(t::zone_id.eq(zone.as_str()))
                    .filter(t::archived_at.is_null())
                    .filter(t::name.eq(name))
                    .select(PolicySetRow::as_select())
                    .first(conn)
        )?;
        row.map(PolicySet::try_from).transpose()
    }

    async fn list_active_policy_sets(
        &mut self,
        zone: &ZoneId,
    ) -> Result<Vec<PolicySet>, StoreError> {
        let rows: Vec<PolicySetRow> = op!(self, |conn| t::table
            .filter(t::zone_id.eq(zone.as_str()))
            .filter(t::archived_at.is_null())
            .filter(t::active_version_id.is_not_null())
            .order((t::created_at.desc(), t::id.desc()))
            .select(PolicySetRow::as_select())
            .load(conn))?;
        rows.into_iter().map(PolicySet::try_from).collect()
    }

    async fn insert_policy_set_version(
        &mut self,
        version: &PolicySetVersion,
    ) -> Result<(), StoreError> {
        // Versions are immutable: a plain insert, so a repeated id or number is a Conflict.
        let row = PolicySetVersionRow::from(version);
        write_op!(self, |conn| diesel::insert_into(v::table)
            .values(&row)
            .execute(conn))?;
        Ok(())
    }

    async fn get_policy_set_version(
        &mut self,
        zone: &ZoneId,
        version: &PolicySetVersionId,
    ) -> Result<Option<PolicySetVersion>, StoreError> {
        let row: Option<PolicySetVersionRow> = op!(
            self,
            optional
                | conn
                | v::table
                    .filter(v::zone_id.eq(zone.as_str()).and(v::id.eq(version.as_str())))
                    .select(PolicySetVersionRow::as_select())
                    .first(conn)
        )?;
        row.map(PolicySetVersion::try_from).transpose()
    }

    async fn list_policy_set_versions(
        &mut self,
        zone: &ZoneId,
        set: &PolicySetId,
        page: &Page,
    ) -> Result<Vec<PolicySetVersion>, StoreError> {
        let query = v::table
            .filter(v::zone_id.eq(zone.as_str()))
            .filter(v::policy_set_id.eq(set.as_str()))
            .select(PolicySetVersionRow::as_select())
            .into_boxed();
        let rows: Vec<PolicySetVersionRow> =
            op!(self, |conn| keyset!(query, page, v::created_at, v::id)
                .load(conn))?;
        rows.into_iter().map(PolicySetVersion::try_from).collect()
    }

    async fn max_policy_set_version(
        &mut self,
        zone: &ZoneId,
        set: &PolicySetId,
    ) -> Result<i32, StoreError> {
        let highest: Option<i32> = op!(self, |conn| v::table
            .filter(v::zone_id.eq(zone.as_str()))
            .filter(v::policy_set_id.eq(set.as_str()))
            .select(max(v::version))
            .get_result(conn))?;
        Ok(highest.unwrap_or(0))
    }
}
