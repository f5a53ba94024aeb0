//! Operator reads and decisions over approval holds (`spec/api.md §3.14`). The STS issues and
//! consumes holds (`spec/sts.md §8`); here an operator lists them and approves or rejects the
//! ones an operator may decide. A decision commits with its `step_up_decided` audit frame, so
//! no decision exists without evidence; the STS long-poll sees it on its next re-read.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::approval::{ApprovalHold, ApproverClass, HoldState, HUMAN_APPROVAL};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{is_path_id, ZoneId};
use crate::ports::store::{After, Page, UnitOfWork};
use crate::time::Timestamp;

use super::{Caller, Management};

/// Longest decision reason, in characters.
const REASON_MAX: usize = 500;
/// Rows read per store round trip while scanning a zone's holds.
const SCAN_PAGE: u32 = 500;
/// Every state, in the order the counts route lists them.
const STATES: [HoldState; 5] = [
    HoldState::Pending,
    HoldState::Approved,
    HoldState::Rejected,
    HoldState::Expired,
    HoldState::Consumed,
];

/// A query value; empty counts as absent (the SDK drops empty values, curl may not).
fn present(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.is_empty())
}

fn invalid_query(description: &str) -> Error {
    Error::invalid("invalid_query", description)
}

/// A hold id from a path: the path-id rule of `spec/api.md §1`, else `400 invalid_params`.
fn approval_id(text: &str) -> Result<&str> {
    if is_path_id(text) {
        Ok(text)
    } else {
        Err(Error::invalid(
            "invalid_params",
            "path identifier is malformed",
        ))
    }
}

/// List filters; every given filter must match.
#[derive(Debug, Clone, Default)]
pub struct ApprovalFilter {
    /// The state at read time.
    pub state: Option<HoldState>,
    /// One of the hold's tiers (a hold's `tier` lists its tiers joined with `,`).
    pub tier: Option<String>,
    /// The principal (`sub`, application or workload id).
    pub principal: Option<String>,
    /// Created at or after.
    pub since: Option<Timestamp>,
    /// Created before.
    pub until: Option<Timestamp>,
}

impl ApprovalFilter {
    /// Parses the raw query values (empty means absent); a bad value is `400 invalid_query`.
    pub fn parse(
        state: Option<&str>,
        tier: Option<&str>,
        principal: Option<&str>,
        since: Option<&str>,
        until: Option<&str>,
    ) -> Result<Self> {
        let instant = |v: Option<&str>, name: &str| -> Result<Option<Timestamp>> {
            present(v)
                .map(|text| {
                    Timestamp::parse_utc_z(text).ok_or_else(|| {
                        invalid_query(&format!(
                            "{name} must be an ISO-8601 UTC instant ending in Z"
                        ))
                    })
                })
                .transpose()
        };
        let state = present(state)
            .map(|text| {
                STATES
                    .into_iter()
                    .find(|s| s.as_str() == text)
                    .ok_or_else(|| {
                        invalid_query(
                            "state must be pending, approved, rejected, expired or consumed",
                        )
                    })
            })
            .transpose()?;
        Ok(Self {
            state,
            tier: present(tier).map(str::to_owned),
            principal: present(principal).map(str::to_owned),
            since: instant(since, "since")?,
            until: instant(until, "until")?,
        })
    }

    fn matches(&self, hold: &ApprovalHold, now: Timestamp) -> bool {
        self.state.is_none_or(|s| hold.state(now) == s)
            && self
                .tier
                .as_deref()
                .is_none_or(|t| hold.tier == t || hold.tier.split(',').any(|x| x == t))
            && self
                .principal
                .as_deref()
                .is_none_or(|p| hold.principal_id == p)
            && self.since.is_none_or(|s| hold.created_at >= s)
            && self.until.is_none_or(|u| hold.created_at < u)
    }
}

/// A hold as the operator reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRow {
    /// The hold.
    pub hold: ApprovalHold,
    /// Its state at read time.
    pub state: HoldState,
    /// Whether the principal is the user the agent acts for (a federated user), not an
    /// application or workload.
    pub principal_federated: bool,
    /// Earlier holds of the same principal in the zone that were approved.
    pub prior_approved: u64,
    /// Earlier holds of the same principal in the zone that were rejected.
    pub prior_rejected: u64,
}

/// Holds per state at read time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApprovalCounts {
    /// Waiting for a decision.
    pub pending: u64,
    /// Approved, unconsumed, unexpired.
    pub approved: u64,
    /// Rejected.
    pub rejected: u64,
    /// Expired undecided or unconsumed.
    pub expired: u64,
    /// Used by a retry.
    pub consumed: u64,
}

/// `POST …/approvals/{id}/approve|reject` body (`{}` or no body at all is fine).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DecisionInput {
    /// Why; at most 500 characters.
    #[serde(default)]
    pub reason: Option<String>,
}

/// What the operator decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let the retry through.
    Approve,
    /// Refuse it.
    Reject,
}

impl Verdict {
    /// The audit `decision`, which is also the hold's resulting state.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approve => "approved",
            Self::Reject => "rejected",
        }
    }
}

/// Every hold of the zone, newest first.
///
/// Reads, filters, counts and prior-decision tallies all work on this one scan: the port keeps
/// a single keyset list, holds are few per zone (one per gated request key, short-lived), and
/// the tallies need the principal's whole history anyway.
async fn zone_holds(uow: &mut Box<dyn UnitOfWork>, zone: &ZoneId) -> Result<Vec<ApprovalHold>> {
    let mut out = Vec::new();
    let mut page = Page {
        limit: SCAN_PAGE,
        after: None,
    };
    loop {
        let batch = uow.list_approvals(zone, &page).await?;
        let full = batch.len() as u32 == page.limit;
        page.after = batch.last().map(|h| After {
            created_at: h.created_at,
            id: h.id.clone(),
        });
        out.extend(batch);
        if !full {
            return Ok(out);
        }
    }
}

/// The operator view of `hold`. `prior_approved` / `prior_rejected` count the zone's holds of
/// the same principal created before this one (keyset order, so ties break by id) by their
/// decision: a rejection counts as rejected; an approval counts as approved whatever happened
/// after it (consumed, or expired unused), since the approver's judgement is what it tells.
fn row(hold: ApprovalHold, zone_holds: &[ApprovalHold], now: Timestamp) -> ApprovalRow {
    let key = (hold.created_at, hold.id.as_str());
    let (mut prior_approved, mut prior_rejected) = (0, 0);
    for other in zone_holds
        .iter()
        .filter(|o| o.principal_id == hold.principal_id && (o.created_at, o.id.as_str()) < key)
    {
        if other.rejected_at.is_some() {
            prior_rejected += 1;
        } else if other.satisfied_at.is_some() {
            prior_approved += 1;
        }
    }
    ApprovalRow {
        state: hold.state(now),
        principal_federated: hold.subject_anchor.as_deref() == Some(hold.principal_id.as_str()),
        prior_approved,
        prior_rejected,
        hold,
    }
}

/// The `step_up_decided` metadata (`spec/api.md §3.14`).
fn decided_metadata(hold: &ApprovalHold, approver: &str, reason: Option<&str>) -> Value {
    let mut m = Map::new();
    m.insert("challenge_id".into(), json!(hold.id));
    m.insert("tier".into(), json!(hold.tier));
    m.insert("approver_class".into(), json!(hold.approver_class.as_str()));
    m.insert("privacy_mode".into(), json!(hold.privacy_mode.as_str()));
    m.insert("binding".into(), json!(hold.binding));
    m.insert("session_id".into(), json!(hold.session_id));
    m.insert("approver_plane".into(), json!("operator"));
    m.insert("approver_subject_id".into(), json!(approver));
    if let Some(a) = &hold.application_id {
        m.insert("application_id".into(), json!(a));
    }
    if let Some(a) = &hold.subject_anchor {
        m.insert("subject_anchor".into(), json!(a));
    }
    if let Some(r) = reason {
        m.insert("reason".into(), json!(r));
    }
    if let Some(labels) = hold.metadata_json.get("agent_labels") {
        m.insert("agent_labels".into(), labels.clone());
    }
    Value::Object(m)
}

impl Management {
    /// The zone's hold `id`, or `404 approval_not_found` (also for another zone's hold: the
    /// path zone is the caller's boundary even where the id alone would find it).
    async fn zone_hold(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        zone: &ZoneId,
        id: &str,
    ) -> Result<ApprovalHold> {
        let id = approval_id(id)?;
        match uow.get_approval(id).await? {
            Some(h) if &h.zone_id == zone && h.approval_type == HUMAN_APPROVAL => Ok(h),
            _ => Err(Error::not_found("approval_not_found")),
        }
    }

    /// Lists the zone's holds matching every filter, newest first, keyset-paginated over the
    /// matches.
    pub async fn list_approvals(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        filter: &ApprovalFilter,
        page: &Page,
    ) -> Result<Vec<ApprovalRow>> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let all = zone_holds(&mut uow, zone).await?;
        let now = self.clock.now();
        let after = page.after.as_ref().map(|a| (a.created_at, a.id.as_str()));
        Ok(all
            .iter()
            .filter(|h| after.is_none_or(|a| (h.created_at, h.id.as_str()) < a))
            .filter(|h| filter.matches(h, now))
            .take(page.limit as usize)
            .map(|h| row(h.clone(), &all, now))
            .collect())
    }

    /// How many of the zone's holds are in each state now.
    pub async fn approval_counts(&self, caller: &Caller, zone: &ZoneId) -> Result<ApprovalCounts> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let now = self.clock.now();
        let mut counts = ApprovalCounts::default();
        for hold in zone_holds(&mut uow, zone).await? {
            let slot = match hold.state(now) {
                HoldState::Pending => &mut counts.pending,
                HoldState::Approved => &mut counts.approved,
                HoldState::Rejected => &mut counts.rejected,
                HoldState::Expired => &mut counts.expired,
                HoldState::Consumed => &mut counts.consumed,
            };
            *slot += 1;
        }
        Ok(counts)
    }

    /// One hold of the zone.
    pub async fn get_approval(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &str,
    ) -> Result<ApprovalRow> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let hold = self.zone_hold(&mut uow, zone, id).await?;
        let all = zone_holds(&mut uow, zone).await?;
        Ok(row(hold, &all, self.clock.now()))
    }

    /// Approves or rejects a hold as an operator. Only a pending hold an operator may decide
    /// (`approver_class` operator or any) is decidable; a subject-only hold is `403
    /// subject_approval_required` while pending, and anything else (decided, consumed,
    /// expired) is `409 approval_not_decidable` naming the current state, which is also what a
    /// repeated decision gets. The decision and its `step_up_decided` audit frame commit
    /// together.
    pub async fn decide_approval(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &str,
        verdict: Verdict,
        input: DecisionInput,
    ) -> Result<ApprovalHold> {
        let reason = input.reason;
        if reason
            .as_deref()
            .is_some_and(|r| r.chars().count() > REASON_MAX)
        {
            return Err(Error::invalid(
                "invalid_body",
                format!("reason must be at most {REASON_MAX} characters"),
            ));
        }
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let id = approval_id(id)?;
        // The lock the STS takes to consume a hold: every lifecycle write after issuance runs
        // one at a time, so two deciders (or a decider and a consuming retry) cannot both act
        // on the same pending read.
        uow.lock(&format!("approval-consume:{id}")).await?;
        let mut hold = self.zone_hold(&mut uow, zone, id).await?;
        let now = self.clock.now();
        let state = hold.state(now);
        if state == HoldState::Pending && hold.approver_class == ApproverClass::Subject {
            return Err(Error::forbidden(
                "subject_approval_required",
                "this approval must be decided by the subject the agent acts for",
            ));
        }
        if state != HoldState::Pending {
            return Err(Error::new(ErrorKind::Conflict, "approval_not_decidable")
                .with_extra(json!({ "state": state.as_str() })));
        }
        let approver = caller.attribution();
        match verdict {
            Verdict::Approve => hold.satisfied_at = Some(now),
            Verdict::Reject => hold.rejected_at = Some(now),
        }
        hold.approver_subject_id = Some(approver.clone());
        hold.decision_reason = reason.clone();
        uow.save_approval(&hold).await?;
        let event = self.audit_event(
            caller,
            zone,
            "step_up_decided",
            (hold.id.as_str(), verdict.as_str()),
            decided_metadata(&hold, &approver, reason.as_deref()),
        )?;
        uow.enqueue_outbox(&event).await?;
        uow.commit().await?;
        Ok(hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval::PrivacyMode;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_unix_micros(s * 1_000_000)
    }

    fn hold(id: &str, principal: &str, created: i64) -> ApprovalHold {
        ApprovalHold {
            id: id.into(),
            zone_id: ZoneId::parse("z").expect("zone"),
            session_id: "ar-1".into(),
            principal_id: principal.into(),
            application_id: Some("app-1".into()),
            approval_type: HUMAN_APPROVAL.into(),
            tier: "critical,high".into(),
            approver_class: ApproverClass::Operator,
            privacy_mode: PrivacyMode::Identified,
            subject_anchor: None,
            binding: "b".into(),
            metadata_json: Map::new(),
            decision_reason: None,
            created_at: at(created),
            expires_at: at(created + 100),
            satisfied_at: None,
            rejected_at: None,
            consumed_at: None,
            approver_subject_id: None,
            approver_session_id: None,
            consumed_authority_record_id: None,
        }
    }

    #[test]
    fn filters_parse_and_match() {
        let f = ApprovalFilter::parse(
            Some("pending"),
            Some("high"),
            Some("alice"),
            Some("1970-01-01T00:00:10Z"),
            Some("1970-01-01T00:00:20Z"),
        )
        .expect("filter");
        assert!(f.matches(&hold("h", "alice", 10), at(11)));
        assert!(
            !f.matches(&hold("h", "alice", 20), at(21)),
            "until excludes"
        );
        assert!(!f.matches(&hold("h", "bob", 10), at(11)), "principal");
        assert!(!f.matches(&hold("h", "alice", 10), at(200)), "expired now");
        let exact =
            ApprovalFilter::parse(None, Some("critical,high"), None, None, None).expect("filter");
        assert!(exact.matches(&hold("h", "alice", 10), at(11)));
        let other = ApprovalFilter::parse(None, Some("hig"), None, None, None).expect("filter");
        assert!(
            !other.matches(&hold("h", "alice", 10), at(11)),
            "whole tiers"
        );
        let blank = ApprovalFilter::parse(Some(""), Some(""), None, Some(""), None).expect("blank");
        assert!(blank.matches(&hold("h", "x", 1), at(500)));
        for bad in [
            ApprovalFilter::parse(Some("open"), None, None, None, None),
            ApprovalFilter::parse(None, None, None, Some("2026-01-01T00:00:00+01:00"), None),
            ApprovalFilter::parse(None, None, None, None, Some("yesterday")),
        ] {
            assert_eq!(bad.err().map(|e| e.code), Some("invalid_query"));
        }
    }

    #[test]
    fn rows_tally_earlier_decisions_of_the_same_principal() {
        let mut approved = hold("a", "alice", 1);
        approved.satisfied_at = Some(at(2));
        approved.consumed_at = Some(at(3));
        let mut rejected = hold("b", "alice", 4);
        rejected.rejected_at = Some(at(5));
        let mut later = hold("z", "alice", 50);
        later.satisfied_at = Some(at(51));
        let mut foreign = hold("c", "bob", 4);
        foreign.satisfied_at = Some(at(5));
        let pending = hold("d", "alice", 4);
        let mut current = hold("e", "alice", 10);
        current.subject_anchor = Some("alice".into());
        let all = vec![later, current.clone(), pending, foreign, rejected, approved];
        let r = row(current, &all, at(11));
        assert_eq!((r.prior_approved, r.prior_rejected), (1, 1));
        assert!(r.principal_federated, "the principal is the anchored user");
        assert_eq!(r.state, HoldState::Pending);
        let first = row(all[5].clone(), &all, at(11));
        assert_eq!((first.prior_approved, first.prior_rejected), (0, 0));
        assert!(!first.principal_federated);
    }
}
