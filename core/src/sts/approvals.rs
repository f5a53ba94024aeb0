//! Approval holds at the token endpoint (`spec/sts.md §8`): a gated allow parks the request as
//! a hold and answers `401 interaction_required`; a retry that recomputes the same binding
//! finds the hold decided and consumes it exactly once, in the unit of work that writes the new
//! authority record.

use serde_json::{json, Map, Value};

use crate::approval::{self, ApprovalHold, HoldState, HUMAN_APPROVAL};
use crate::authority::SessionType;
use crate::error::{Error, ErrorKind};
use crate::ids::ZoneId;
use crate::ports::{AuditEvent, UnitOfWork, ZoneScope};
use crate::time::Timestamp;

use super::evidence::rfc3339_nanos;
use super::references::denied;
use super::Sts;

/// A consumed hold may be re-issued for this long (a client that lost the response).
const REISSUE_WINDOW_MS: i64 = 120_000;

/// What identifies one gated request.
#[derive(Debug, Clone)]
pub(crate) struct HoldKey {
    pub zone: ZoneId,
    pub principal: String,
    pub session_id: String,
    pub binding: String,
    pub application_id: String,
    pub agent_session_id: String,
    pub subject_anchor: Option<String>,
    /// `requested_scopes resources … decision_contract_sha` for the row's metadata.
    pub metadata: Map<String, Value>,
}

/// How a retry's `approval_id` resolved.
pub(crate) enum Retry {
    /// Approved and unconsumed: evaluate with `challenge_resolved` and consume on mint.
    Approved(ApprovalHold),
    /// Consumed moments ago by this same request: mint a new bearer for the same record.
    Reissue(ApprovalHold),
}

/// `401 interaction_required` carrying the hold (the SDK raises `ApprovalRequired`).
pub fn interaction_required(hold: &ApprovalHold, now: Timestamp) -> Error {
    let mut extra = Map::new();
    extra.insert("approval_id".into(), json!(hold.id));
    extra.insert("approval_type".into(), json!(HUMAN_APPROVAL));
    extra.insert("state".into(), json!(hold.state(now).as_str()));
    if !hold.tier.is_empty() {
        extra.insert("tier".into(), json!(hold.tier));
    }
    extra.insert("binding".into(), json!(hold.binding));
    extra.insert(
        "approval_expires_at".into(),
        json!(hold
            .expires_at
            .as_datetime()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    );
    Error::new(ErrorKind::Unauthenticated, "interaction_required")
        .describe("Human approval required for this request")
        .with_extra(Value::Object(extra))
}

fn not_matching() -> Error {
    Error::new(ErrorKind::Unauthenticated, "access_denied")
        .describe("approval not found or bindings do not match")
}

fn consumed() -> Error {
    Error::new(ErrorKind::Conflict, "approval_consumed")
        .describe("approval already used; another request consumed it")
}

/// `409` when the approved hold was consumed concurrently, or the re-issue window closed.
pub fn no_longer_valid() -> Error {
    Error::new(ErrorKind::Conflict, "approval_consumed")
        .describe("approval no longer valid; another request may have consumed it")
}

impl Sts {
    fn step_up_event(&self, hold: &ApprovalHold, decision: &str, request_id: &str) -> AuditEvent {
        let mut m = Map::new();
        m.insert("challenge_id".into(), json!(hold.id));
        m.insert("tier".into(), json!(hold.tier));
        m.insert("approver_class".into(), json!(hold.approver_class.as_str()));
        m.insert("privacy_mode".into(), json!(hold.privacy_mode.as_str()));
        m.insert("binding".into(), json!(hold.binding));
        m.insert("expires_at".into(), json!(hold.expires_at.to_iso_millis()));
        if let Some(a) = &hold.subject_anchor {
            m.insert("subject_anchor".into(), json!(a));
        }
        if let Some(a) = &hold.application_id {
            m.insert("application_id".into(), json!(a));
        }
        if !hold.session_id.is_empty() {
            m.insert("session_id".into(), json!(hold.session_id));
        }
        for key in ["agent_session_id", "delegation_edge_id", "agent_labels"] {
            if let Some(v) = hold.metadata_json.get(key) {
                m.insert(key.into(), v.clone());
            }
        }
        AuditEvent {
            id: self.ids.new_id(),
            zone_id: hold.zone_id.to_string(),
            event_type: if decision == "pending" {
                "step_up_issued".into()
            } else {
                "step_up_consumed".into()
            },
            request_id: request_id.to_owned(),
            decision: decision.into(),
            policy_set_version_id: None,
            manifest_sha: None,
            evaluation_status: "complete".into(),
            determining_policies_json: None,
            diagnostics_json: None,
            metadata_json: Some(m),
            occurred_at: rfc3339_nanos(self.clock.now()),
        }
    }

    fn emit_denied(&self, key: &HoldKey, request_id: &str, reason: &str) {
        let mut m = key.metadata.clone();
        m.insert("application_id".into(), json!(key.application_id));
        m.insert("reason".into(), json!(reason));
        self.emit(AuditEvent {
            id: self.ids.new_id(),
            zone_id: key.zone.to_string(),
            event_type: "token_exchange".into(),
            request_id: request_id.to_owned(),
            decision: "deny".into(),
            policy_set_version_id: None,
            manifest_sha: None,
            evaluation_status: reason.into(),
            determining_policies_json: None,
            diagnostics_json: None,
            metadata_json: Some(m),
            occurred_at: rfc3339_nanos(self.clock.now()),
        });
    }

    /// A retry with `approval_id` (§8 "Retry"): the hold must be this request's, and decided.
    pub(crate) async fn resolve_retry(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        key: &HoldKey,
        approval_id: &str,
        request_id: &str,
        now: Timestamp,
    ) -> Result<Retry, Error> {
        let hold = uow.get_approval(approval_id).await?;
        let Some(hold) = hold.filter(|h| {
            h.approval_type == HUMAN_APPROVAL
                && h.zone_id == key.zone
                && h.principal_id == key.principal
                && h.session_id == key.session_id
                && h.binding == key.binding
        }) else {
            self.emit_denied(key, request_id, "approval_invalid");
            return Err(not_matching());
        };
        match hold.state(now) {
            HoldState::Pending => Err(interaction_required(&hold, now)),
            HoldState::Rejected => {
                self.emit_denied(key, request_id, "approval_rejected");
                Err(denied("approval was rejected"))
            }
            HoldState::Expired => {
                self.emit_denied(key, request_id, "approval_expired");
                Err(Error::new(ErrorKind::Unauthenticated, "access_denied")
                    .describe("approval expired"))
            }
            HoldState::Approved => Ok(Retry::Approved(hold)),
            HoldState::Consumed => {
                let recent = hold
                    .consumed_at
                    .is_some_and(|at| at.plus_millis(REISSUE_WINDOW_MS) > now);
                let live = match &hold.consumed_authority_record_id {
                    Some(rid) => uow
                        .get_authority_record(&key.zone, rid)
                        .await?
                        .is_some_and(|r| r.is_live(now)),
                    None => false,
                };
                if recent && live {
                    Ok(Retry::Reissue(hold))
                } else {
                    self.emit_denied(key, request_id, "approval_already_consumed");
                    Err(consumed())
                }
            }
        }
    }

    /// Gates were collected and nothing resolved them (§8 "Idempotent issuance"): reuse this
    /// request's live hold or park a new one. Returns the hold when it is already approved
    /// (the caller mints and consumes it); otherwise the error to answer.
    pub(crate) async fn hold_for(
        &self,
        key: &HoldKey,
        gates: &[Value],
        request_id: &str,
        now: Timestamp,
    ) -> Result<ApprovalHold, Error> {
        let gate = approval::merge(gates)?;
        let mut uow = self.store.begin(&ZoneScope::Zone(key.zone.clone())).await?;
        uow.lock(&format!("approval:{}:{}", key.zone, key.binding))
            .await?;
        let mut live = None;
        for hold in uow
            .find_approvals(&key.zone, &key.principal, &key.session_id, &key.binding)
            .await?
        {
            match hold.state(now) {
                HoldState::Expired if hold.consumed_at.is_none() => {
                    uow.delete_approval(&hold.id).await?;
                }
                HoldState::Pending | HoldState::Approved | HoldState::Rejected => {
                    live = Some(hold);
                }
                _ => {}
            }
        }
        let hold = match live {
            Some(hold) => hold,
            None => {
                let subject_anchor = match &key.subject_anchor {
                    Some(a) => Some(a.clone()),
                    None => self.session_user(&mut uow, key).await?,
                };
                let hold = ApprovalHold {
                    id: self.ids.new_random_id(),
                    zone_id: key.zone.clone(),
                    session_id: key.session_id.clone(),
                    principal_id: key.principal.clone(),
                    application_id: Some(key.application_id.clone()),
                    approval_type: HUMAN_APPROVAL.into(),
                    tier: gate.tier.clone(),
                    approver_class: gate.approver,
                    privacy_mode: gate.privacy,
                    subject_anchor,
                    binding: key.binding.clone(),
                    metadata_json: key.metadata.clone(),
                    decision_reason: None,
                    created_at: now,
                    expires_at: now.plus_millis(gate.ttl_seconds * 1_000),
                    satisfied_at: None,
                    rejected_at: None,
                    consumed_at: None,
                    approver_subject_id: None,
                    approver_session_id: None,
                    consumed_authority_record_id: None,
                };
                uow.save_approval(&hold).await.map_err(|e| {
                    super::exchange::issuance_failed("approval hold creation failed")
                        .with_detail(e.to_string())
                })?;
                self.emit(self.step_up_event(&hold, "pending", request_id));
                hold
            }
        };
        uow.commit().await.map_err(|e| {
            super::exchange::issuance_failed("approval hold creation failed")
                .with_detail(e.to_string())
        })?;
        match hold.state(now) {
            HoldState::Approved => Ok(hold),
            HoldState::Rejected => {
                self.emit_denied(key, request_id, "approval_rejected");
                Err(denied("approval was rejected"))
            }
            _ => Err(interaction_required(&hold, now)),
        }
    }

    /// The user behind the governed Session, when its anchor record is a user's.
    async fn session_user(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        key: &HoldKey,
    ) -> Result<Option<String>, Error> {
        if key.agent_session_id.is_empty() {
            return Ok(None);
        }
        let Some(session) = uow
            .get_agent_session(&key.zone, &key.agent_session_id)
            .await?
        else {
            return Ok(None);
        };
        let record = uow
            .get_authority_record(&key.zone, &session.subject_session_id)
            .await?;
        Ok(record
            .filter(|r| r.session_type == SessionType::User)
            .map(|r| r.subject_id))
    }

    /// Consumes an approved hold in the mint's unit of work (§8 "Consumption"): only if it is
    /// still approved, unrejected, decided by someone, unconsumed, unexpired, and its record
    /// (if any) is active. Losing a race to another retry is `409`.
    pub(crate) async fn consume(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        hold_id: &str,
        record_id: &str,
        request_id: &str,
        now: Timestamp,
    ) -> Result<(), Error> {
        uow.lock(&format!("approval-consume:{hold_id}")).await?;
        let Some(mut hold) = uow.get_approval(hold_id).await? else {
            return Err(no_longer_valid());
        };
        let record_ok = if hold.session_id.is_empty() {
            true
        } else {
            uow.get_authority_record(&hold.zone_id, &hold.session_id)
                .await?
                .is_some_and(|r| r.is_live(now))
        };
        if hold.state(now) != HoldState::Approved
            || hold.approver_subject_id.is_none()
            || !record_ok
        {
            return Err(no_longer_valid());
        }
        hold.consumed_at = Some(now);
        hold.consumed_authority_record_id = Some(record_id.to_owned());
        uow.save_approval(&hold).await?;
        self.emit(self.step_up_event(&hold, "consumed", request_id));
        Ok(())
    }

    /// A re-issue mints for the consumed record again; this records the evidence.
    pub(crate) fn reissued(&self, hold: &ApprovalHold, request_id: &str) {
        let mut event = self.step_up_event(hold, "consumed", request_id);
        if let Some(m) = event.metadata_json.as_mut() {
            m.insert("reissued".into(), json!(true));
            if let Some(r) = &hold.consumed_authority_record_id {
                m.insert("authority_record_id".into(), json!(r));
            }
        }
        self.emit(event);
    }

    /// `GET /approvals/{id}`: the hold's id, state and expiry. The id is the capability, so the
    /// lookup spans zones.
    pub async fn approval_state(&self, id: &str) -> Result<Value, Error> {
        let not_found = || Error::not_found("resource_not_found").describe("approval not found");
        if !is_uuid(id) {
            return Err(not_found());
        }
        let mut uow = self.store.begin(&ZoneScope::All).await?;
        let hold = uow.get_approval(id).await?;
        drop(uow);
        let hold = hold
            .filter(|h| h.approval_type == HUMAN_APPROVAL)
            .ok_or_else(not_found)?;
        let now = self.clock.now();
        Ok(json!({
            "id": hold.id,
            "state": hold.state(now).as_str(),
            "expires_at": hold.expires_at.as_datetime().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }))
    }
}

/// Canonical 8-4-4-4-12 hex form.
pub fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `POST /approvals/{id}/decision` body.
#[derive(serde::Deserialize)]
struct DecisionBody {
    decision: String,
    #[serde(default)]
    binding: String,
    #[serde(default)]
    reason: Option<String>,
}

/// Longest decision reason.
const MAX_REASON_BYTES: usize = 500;

impl Sts {
    /// A subject approver's decision (§8, checks 1–14 in order). The approver proves itself with
    /// a user session mandate of the hold's zone, must be the user the agent acts for when the
    /// hold names one, and can never decide a hold raised by its own authority lineage.
    pub async fn decide_approval(
        &self,
        id: &str,
        bearer: Option<&str>,
        body: &[u8],
        request_id: &str,
    ) -> Result<Value, Error> {
        let not_found = || Error::not_found("resource_not_found").describe("approval not found");
        if !is_uuid(id) {
            return Err(not_found());
        }
        let Some(token) = bearer.filter(|t| !t.is_empty()) else {
            return Err(Error::new(ErrorKind::Unauthenticated, "invalid_token")
                .describe("session mandate required"));
        };
        let parsed: DecisionBody = serde_json::from_slice(body)
            .map_err(|_| super::form::malformed("malformed request body"))?;
        let approve = match parsed.decision.as_str() {
            "approved" => true,
            "rejected" => false,
            _ => {
                return Err(super::form::malformed(
                    "decision must be approved or rejected",
                ))
            }
        };
        if parsed
            .reason
            .as_ref()
            .is_some_and(|r| r.len() > MAX_REASON_BYTES)
        {
            return Err(super::form::malformed("reason too long"));
        }
        let mut uow = self.store.begin(&ZoneScope::All).await?;
        let hold = uow
            .get_approval(id)
            .await?
            .filter(|h| h.approval_type == HUMAN_APPROVAL)
            .ok_or_else(not_found)?;
        drop(uow);
        let zone = hold.zone_id.clone();
        let invalid_mandate = || {
            Error::new(ErrorKind::Unauthenticated, "invalid_token")
                .describe("invalid session mandate")
        };
        let kid = crate::mandate::verify::peek_kid(token).map_err(|_| invalid_mandate())?;
        let keys = self
            .keys
            .verification_keys(&zone, &kid)
            .await
            .map_err(|e| invalid_mandate().with_detail(e.to_string()))?;
        let uses = [crate::mandate::MandateUse::Session];
        let expect =
            crate::mandate::verify::Expectations::new(&self.config.issuer, zone.as_str(), &uses);
        let claims = crate::mandate::verify::verify_mandate(
            token,
            &keys,
            &expect,
            self.es256.as_ref(),
            self.clock.now().unix_seconds(),
        )
        .map_err(|e| invalid_mandate().with_detail(format!("{e:?}")))?;
        if claims.sub_type != crate::mandate::SubType::User {
            return Err(denied("approver must be a user session"));
        }
        let Some(app) = hold.application_id.clone() else {
            return Err(denied("approval does not admit subject decisions"));
        };
        let now = self.clock.now();
        let mut uow = self.store.begin(&ZoneScope::Zone(zone.clone())).await?;
        if claims.sid.is_empty() {
            return Err(Error::forbidden(
                "invalid_token",
                "missing token authority record",
            ));
        }
        let record = uow.get_authority_record(&zone, &claims.sid).await?;
        let Some(record) = record.filter(|r| r.is_live(now)) else {
            return Err(denied("authority record inactive or expired"));
        };
        if record.subject_id != claims.sub {
            return Err(denied("authority record subject mismatch"));
        }
        if claims.client_id != app {
            return Err(denied("authority record client mismatch"));
        }
        if !matches!(
            hold.approver_class,
            approval::ApproverClass::Subject | approval::ApproverClass::Any
        ) {
            return Err(denied("this approval requires an operator decision"));
        }
        if hold
            .subject_anchor
            .as_ref()
            .is_some_and(|a| *a != claims.sub)
        {
            return Err(denied(
                "this approval is reserved for the subject the requesting agent acts for",
            ));
        }
        if !hold.session_id.is_empty()
            && self
                .same_lineage(&mut uow, &zone, &claims.sid, &hold.session_id)
                .await?
        {
            return Err(denied(
                "an approver cannot decide a hold raised by its own authority record lineage",
            ));
        }
        if parsed.binding != hold.binding {
            return Err(Error::conflict(
                "access_denied",
                "binding does not match this challenge",
            ));
        }
        uow.lock(&format!("approval-consume:{}", hold.id)).await?;
        let Some(mut current) = uow.get_approval(&hold.id).await? else {
            return Err(not_found());
        };
        if current.state(now) != HoldState::Pending {
            return Err(Error::conflict("access_denied", "approval is not pending"));
        }
        if approve {
            current.satisfied_at = Some(now);
        } else {
            current.rejected_at = Some(now);
        }
        current.approver_subject_id = Some(approver_subject(&current, &claims.sub));
        current.approver_session_id = Some(claims.sid.clone());
        current.decision_reason = parsed.reason.clone();
        uow.save_approval(&current).await?;
        uow.commit().await?;
        let mut event = self.step_up_event(
            &current,
            if approve { "approved" } else { "rejected" },
            &current.id,
        );
        event.event_type = "step_up_decided".into();
        if let Some(m) = event.metadata_json.as_mut() {
            m.insert("approver_plane".into(), json!("subject"));
            m.insert("approver_session_id".into(), json!(claims.sid));
            m.insert("decision_request_id".into(), json!(request_id));
        }
        self.emit(event);
        Ok(json!({
            "id": current.id,
            "state": current.state(now).as_str(),
            "expires_at": current.expires_at.as_datetime().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }))
    }

    /// Whether `a` and `b` are the same authority record or one descends from the other
    /// (through `parent_id`, at most 32 links).
    async fn same_lineage(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        zone: &ZoneId,
        a: &str,
        b: &str,
    ) -> Result<bool, Error> {
        if a == b {
            return Ok(true);
        }
        for (from, to) in [(a, b), (b, a)] {
            let mut cursor = from.to_owned();
            for _ in 0..32 {
                let Some(record) = uow.get_authority_record(zone, &cursor).await? else {
                    break;
                };
                match record.parent_id {
                    Some(parent) if parent == to => return Ok(true),
                    Some(parent) => cursor = parent,
                    None => break,
                }
            }
        }
        Ok(false)
    }
}

/// `subject:<sub>`, `subject:pseudonym:<hex(sha256(zone‖0‖sub)[:8])>` or `subject:redacted`.
fn approver_subject(hold: &ApprovalHold, sub: &str) -> String {
    match hold.privacy_mode {
        approval::PrivacyMode::Identified => format!("subject:{sub}"),
        approval::PrivacyMode::Pseudonymous => {
            let digest = crate::digest::sha256_hex(format!("{}\0{sub}", hold.zone_id).as_bytes());
            format!("subject:pseudonym:{}", &digest[..16])
        }
        approval::PrivacyMode::Anonymous => "subject:redacted".into(),
    }
}
