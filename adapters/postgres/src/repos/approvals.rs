//! Approval holds (`step_up_challenges`, `spec/sts.md §8`). Reads by id alone are deliberate:
//! the hold id is a capability and the long-poll carries no zone; row-level security still
//! confines them to the unit of work's scope.

use async_trait::async_trait;
use caracal_core::approval::{ApprovalHold, ApproverClass, PrivacyMode};
use caracal_core::ids::ZoneId;
use caracal_core::ports::store::{ApprovalRepo, Page};
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde_json::Value;

use crate::convert::{id, opt_dt, opt_ts, ts};
use crate::error::corrupt;
use crate::schema::step_up_challenges as t;
use crate::unit_of_work::{keyset, op, write_op, PgUnitOfWork};

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = t, check_for_backend(diesel::pg::Pg), treat_none_as_null = true)]
pub(crate) struct ApprovalRow {
    id: String,
    zone_id: String,
    session_id: String,
    principal_id: String,
    application_id: Option<String>,
    approval_type: String,
    tier: String,
    approver_class: String,
    privacy_mode: String,
    subject_anchor: Option<String>,
    binding: String,
    metadata_json: Value,
    decision_reason: Option<String>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    satisfied_at: Option<DateTime<Utc>>,
    rejected_at: Option<DateTime<Utc>>,
    consumed_at: Option<DateTime<Utc>>,
    approver_subject_id: Option<String>,
    approver_session_id: Option<String>,
    consumed_authority_record_id: Option<String>,
}

impl From<&ApprovalHold> for ApprovalRow {
    fn from(h: &ApprovalHold) -> Self {
        Self {
            id: h.id.clone(),
            zone_id: h.zone_id.to_string(),
            session_id: h.session_id.clone(),
            principal_id: h.principal_id.clone(),
            application_id: h.application_id.clone(),
            approval_type: h.approval_type.clone(),
            tier: h.tier.clone(),
            approver_class: h.approver_class.as_str().to_owned(),
            privacy_mode: h.privacy_mode.as_str().to_owned(),
            subject_anchor: h.subject_anchor.clone(),
            binding: h.binding.clone(),
            metadata_json: Value::Object(h.metadata_json.clone()),
            decision_reason: h.decision_reason.clone(),
            created_at: h.created_at.as_datetime(),
            expires_at: h.expires_at.as_datetime(),
            satisfied_at: opt_dt(h.satisfied_at),
            rejected_at: opt_dt(h.rejected_at),
            consumed_at: opt_dt(h.consumed_at),
            approver_subject_id: h.approver_subject_id.clone(),
            approver_session_id: h.approver_session_id.clone(),
            consumed_authority_record_id: h.consumed_authority_record_id.clone(),
        }
    }
}

impl TryFrom<ApprovalRow> for ApprovalHold {
    type Error = StoreError;

    fn try_from(r: ApprovalRow) -> Result<Self, StoreError> {
        let approver_class = ApproverClass::parse(&r.approver_class).ok_or_else(|| {
            corrupt(
                "step_up_challenges.approver_class",
                format!("unknown {:?}", r.approver_class),
            )
        })?;
        let privacy_mode = PrivacyMode::parse(&r.privacy_mode).ok_or_else(|| {
            corrupt(
                "step_up_challenges.privacy_mode",
                format!("unknown {:?}", r.privacy_mode),
            )
        })?;
        let Value::Object(metadata_json) = r.metadata_json else {
            return Err(corrupt(
                "step_up_challenges.metadata_json",
                "not a JSON object",
            ));
        };
        Ok(ApprovalHold {
            zone_id: id(ZoneId::parse, &r.zone_id, "step_up_challenges.zone_id")?,
            id: r.id,
            session_id: r.session_id,
            principal_id: r.principal_id,
            application_id: r.application_id,
            approval_type: r.approval_type,
            tier: r.tier,
            approver_class,
            privacy_mode,
            subject_anchor: r.subject_anchor,
            binding: r.binding,
            metadata_json,
            decision_reason: r.decision_reason,
            created_at: ts(r.created_at),
            expires_at: ts(r.expires_at),
            satisfied_at: opt_ts(r.satisfied_at),
            rejected_at: opt_ts(r.rejected_at),
            consumed_at: opt_ts(r.consumed_at),
            approver_subject_id: r.approver_subject_id,
            approver_session_id: r.approver_session_id,
            consumed_authority_record_id: r.consumed_authority_record_id,
        })
    }
}

#[async_trait]
impl ApprovalRepo for PgUnitOfWork {
    async fn save_approval(&mut self, hold: &ApprovalHold) -> Result<(), StoreError> {
        let row = ApprovalRow::from(hold);
        write_op!(self, |conn| diesel::insert_into(t::table)
            .values(&row)
            .on_conflict(t::id)
            .do_update()
            .set(&row)
            .execute(conn))?;
        Ok(())
    }

    async fn get_approval(&mut self, approval: &str) -> Result<Option<ApprovalHold>, StoreError> {
        let row: Option<ApprovalRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .find(approval)
                    .select(ApprovalRow::as_select())
                    .first(conn)
        )?;
        row.map(ApprovalHold::try_from).transpose()
    }

    async fn find_approvals(
        &mut self,
        zone: &ZoneId,
        principal: &str,
        session_id: &str,
        binding: &str,
    ) -> Result<Vec<ApprovalHold>, StoreError> {
        let rows: Vec<ApprovalRow> = op!(self, |conn| t::table
            .filter(
                t::zone_id
                    .eq(zone.as_str())
                    .and(t::principal_id.eq(principal))
                    .and(t::session_id.eq(session_id))
                    .and(t::binding.eq(binding)),
            )
            .select(ApprovalRow::as_select())
            .order((t::created_at.asc(), t::id.asc()))
            .load(conn))?;
        rows.into_iter().map(ApprovalHold::try_from).collect()
    }

    async fn delete_approval(&mut self, approval: &str) -> Result<bool, StoreError> {
        let deleted = write_op!(self, |conn| diesel::delete(t::table.find(approval))
            .execute(conn))?;
        Ok(deleted > 0)
    }

    async fn list_approvals(
        &mut self,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<ApprovalHold>, StoreError> {
        let query = t::table
            .filter(t::zone_id.eq(zone.as_str()))
            .select(ApprovalRow::as_select())
            .into_boxed();
        let rows: Vec<ApprovalRow> = op!(self, |conn| keyset!(query, page, t::created_at, t::id)
            .load(conn))?;
        rows.into_iter().map(ApprovalHold::try_from).collect()
    }
}
