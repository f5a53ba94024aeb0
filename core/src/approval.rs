//! Human-approval holds (`spec/sts.md §8`, `spec/api.md §3.14`): when the policy gates a mint
//! behind a human decision, the STS parks the exact request as a hold bound to a hash of
//! everything that decided it; an approver decides; a retry that recomputes the same binding
//! consumes the approved hold exactly once.

use serde_json::{Map, Value};

use crate::error::Error;
use crate::ids::ZoneId;
use crate::time::Timestamp;

/// The only approval type.
pub const HUMAN_APPROVAL: &str = "human_approval";

/// Who may decide a hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApproverClass {
    /// An operator (admin API).
    Operator,
    /// The user the agent acts for (a user session mandate).
    Subject,
    /// Either.
    Any,
}

impl ApproverClass {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Subject => "subject",
            Self::Any => "any",
        }
    }

    /// Parses a stored or declared spelling; unknown values are `None`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "operator" => Some(Self::Operator),
            "subject" => Some(Self::Subject),
            "any" => Some(Self::Any),
            _ => None,
        }
    }

    /// The class default lifetime when no declaration sets one.
    fn default_ttl(self) -> i64 {
        match self {
            Self::Operator => 4 * 3_600,
            Self::Subject | Self::Any => 15 * 60,
        }
    }

    /// The lifetime ceiling.
    fn max_ttl(self) -> i64 {
        match self {
            Self::Operator => 7 * 24 * 3_600,
            Self::Subject | Self::Any => 24 * 3_600,
        }
    }
}

/// How much of the approver's identity the hold records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PrivacyMode {
    /// `subject:<sub>`.
    Identified,
    /// `subject:pseudonym:<hex>`.
    Pseudonymous,
    /// `subject:redacted`.
    Anonymous,
}

impl PrivacyMode {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identified => "identified",
            Self::Pseudonymous => "pseudonymous",
            Self::Anonymous => "anonymous",
        }
    }

    /// Parses a stored or declared spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "identified" => Some(Self::Identified),
            "pseudonymous" => Some(Self::Pseudonymous),
            "anonymous" => Some(Self::Anonymous),
            _ => None,
        }
    }
}

/// A hold's lifecycle state, by the contract's precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    /// Waiting for a decision.
    Pending,
    /// Approved, not yet consumed.
    Approved,
    /// Rejected.
    Rejected,
    /// Past its expiry without being consumed.
    Expired,
    /// Used by a retry.
    Consumed,
}

impl HoldState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Consumed => "consumed",
        }
    }
}

/// One approval hold (`step_up_challenges`).
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalHold {
    /// Random UUIDv4 (the id is a capability for the long-poll).
    pub id: String,
    /// Zone.
    pub zone_id: ZoneId,
    /// Authority record of the request (may be empty).
    pub session_id: String,
    /// The subject `sub`, else the application id (or the workload id).
    pub principal_id: String,
    /// The requesting application (absent for workload holds).
    pub application_id: Option<String>,
    /// Always `human_approval`.
    pub approval_type: String,
    /// Sorted distinct tiers joined with `,`.
    pub tier: String,
    /// Who may decide.
    pub approver_class: ApproverClass,
    /// How the approver is recorded.
    pub privacy_mode: PrivacyMode,
    /// The user the agent acts for, when known.
    pub subject_anchor: Option<String>,
    /// Hex SHA-256 of the request binding.
    pub binding: String,
    /// `requested_scopes resources agent_session_id? agent_labels? delegation_edge_id?
    /// policy_set_version_id policy_manifest_sha decision_contract_version decision_contract_sha`.
    pub metadata_json: Map<String, Value>,
    /// Why it was decided so.
    pub decision_reason: Option<String>,
    /// Issue instant.
    pub created_at: Timestamp,
    /// Expiry.
    pub expires_at: Timestamp,
    /// Approval instant.
    pub satisfied_at: Option<Timestamp>,
    /// Rejection instant.
    pub rejected_at: Option<Timestamp>,
    /// Consumption instant.
    pub consumed_at: Option<Timestamp>,
    /// Who decided (`admin:<token id>`, `subject:<sub>`, …).
    pub approver_subject_id: Option<String>,
    /// The approver's session (subject decisions).
    pub approver_session_id: Option<String>,
    /// The authority record minted when consumed.
    pub consumed_authority_record_id: Option<String>,
}

impl ApprovalHold {
    /// The state at `now`: consumed > rejected > expired > approved > pending.
    pub fn state(&self, now: Timestamp) -> HoldState {
        if self.consumed_at.is_some() {
            HoldState::Consumed
        } else if self.rejected_at.is_some() {
            HoldState::Rejected
        } else if self.expires_at <= now {
            HoldState::Expired
        } else if self.satisfied_at.is_some() {
            HoldState::Approved
        } else {
            HoldState::Pending
        }
    }
}

/// The merged gate of one request (§8 merge rules).
#[derive(Debug, Clone, PartialEq)]
pub struct Gate {
    /// Sorted distinct tiers joined with `,`.
    pub tier: String,
    /// Merged approver class.
    pub approver: ApproverClass,
    /// Most protective privacy.
    pub privacy: PrivacyMode,
    /// Hold lifetime in seconds, clamped.
    pub ttl_seconds: i64,
}

/// Merges the `step_up_required` tier declarations collected over a request. Combining
/// operator with subject cannot be satisfied by one decision and is refused.
pub fn merge(declarations: &[Value]) -> Result<Gate, Error> {
    let mut tiers: Vec<String> = Vec::new();
    let mut approver: Option<ApproverClass> = None;
    let mut privacy = PrivacyMode::Identified;
    let mut ttl: Option<i64> = None;
    for d in declarations {
        if let Some(t) = d.get("tier").and_then(Value::as_str) {
            tiers.push(t.to_owned());
        }
        let class = d
            .get("approver")
            .and_then(Value::as_str)
            .and_then(ApproverClass::parse)
            .unwrap_or(ApproverClass::Operator);
        approver = Some(match (approver, class) {
            (None, c) | (Some(ApproverClass::Any), c) => c,
            (Some(c), ApproverClass::Any) => c,
            (Some(a), b) if a == b => a,
            _ => {
                return Err(Error::forbidden(
                    "access_denied",
                    "approval requires separate operator and subject decisions",
                ))
            }
        });
        if let Some(p) = d
            .get("privacy")
            .and_then(Value::as_str)
            .and_then(PrivacyMode::parse)
        {
            privacy = privacy.max(p);
        }
        if let Some(t) = d
            .get("ttl_seconds")
            .and_then(Value::as_i64)
            .filter(|t| *t > 0)
        {
            ttl = Some(ttl.map_or(t, |m: i64| m.min(t)));
        }
    }
    tiers.sort();
    tiers.dedup();
    let approver = approver.unwrap_or(ApproverClass::Operator);
    let ttl = ttl
        .unwrap_or_else(|| approver.default_ttl())
        .clamp(60, approver.max_ttl());
    Ok(Gate {
        tier: tiers.join(","),
        approver,
        privacy,
        ttl_seconds: ttl,
    })
}

/// What a hold binds (§8 "Binding").
#[derive(Debug, Clone, Default)]
pub struct BindingInput<'a> {
    /// Requested resources as sent.
    pub resources: &'a [String],
    /// Requested scope tokens.
    pub scopes: &'a [String],
    /// Subject `sub`, else the application id.
    pub principal: &'a str,
    /// Authority record id.
    pub authority_record: &'a str,
    /// Governed Session.
    pub session: &'a str,
    /// Delegation edge.
    pub delegation: &'a str,
    /// Application.
    pub application: &'a str,
    /// Active policy set version.
    pub policy_set_version: &'a str,
    /// Its manifest SHA.
    pub policy_manifest: &'a str,
    /// Decision contract version.
    pub contract_version: &'a str,
    /// Decision contract SHA.
    pub contract_sha: &'a str,
}

/// The hex SHA-256 binding of a request.
pub fn binding(input: &BindingInput<'_>) -> String {
    let mut resources: Vec<String> = input
        .resources
        .iter()
        .map(|r| r.trim().to_lowercase())
        .collect();
    resources.sort();
    resources.dedup();
    let mut scopes: Vec<&str> = input.scopes.iter().map(String::as_str).collect();
    scopes.sort_unstable();
    scopes.dedup();
    let text = [
        "resources",
        &resources.join("\n"),
        "scopes",
        &scopes.join("\n"),
        "principal",
        input.principal,
        "authority_record",
        input.authority_record,
        "session",
        input.session,
        "delegation",
        input.delegation,
        "application",
        input.application,
        "policy_set_version",
        input.policy_set_version,
        "policy_manifest",
        input.policy_manifest,
        "decision_contract_version",
        input.contract_version,
        "decision_contract_sha",
        input.contract_sha,
    ]
    .join("\0");
    crate::digest::sha256_hex(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_rules() {
        let g = merge(&[
            json!({"tier": "high"}),
            json!({"tier": "crit", "approver": "any",
            "privacy": "anonymous", "ttl_seconds": 30}),
        ])
        .expect("merge");
        assert_eq!(g.tier, "crit,high");
        assert_eq!(
            g.approver,
            ApproverClass::Operator,
            "missing means operator; any yields"
        );
        assert_eq!(g.privacy, PrivacyMode::Anonymous);
        assert_eq!(g.ttl_seconds, 60, "clamped to at least a minute");
        let s = merge(&[json!({"tier": "t", "approver": "subject"})]).expect("merge");
        assert_eq!((s.approver, s.ttl_seconds), (ApproverClass::Subject, 900));
        let o = merge(&[json!({"tier": "t"})]).expect("merge");
        assert_eq!(o.ttl_seconds, 4 * 3600);
        let long = merge(&[json!({"tier": "t", "approver": "subject", "ttl_seconds": 999999})])
            .expect("merge");
        assert_eq!(long.ttl_seconds, 24 * 3600);
        let conflict = merge(&[
            json!({"tier": "a", "approver": "operator"}),
            json!({"tier": "b", "approver": "subject"}),
        ]);
        assert!(conflict.is_err());
    }

    #[test]
    fn binding_normalises_resources_and_scopes() {
        let a = binding(&BindingInput {
            resources: &["resource://B ".into(), "resource://a".into()],
            scopes: &["y".into(), "x".into(), "x".into()],
            principal: "app",
            ..BindingInput::default()
        });
        let b = binding(&BindingInput {
            resources: &["resource://a".into(), "resource://b".into()],
            scopes: &["x".into(), "y".into()],
            principal: "app",
            ..BindingInput::default()
        });
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        let c = binding(&BindingInput {
            resources: &["resource://a".into(), "resource://b".into()],
            scopes: &["x".into(), "y".into()],
            principal: "other",
            ..BindingInput::default()
        });
        assert_ne!(a, c, "the principal is bound");
    }

    #[test]
    fn state_precedence() {
        let at = |s: i64| Timestamp::from_unix_micros(s * 1_000_000);
        let mut h = ApprovalHold {
            id: "h".into(),
            zone_id: ZoneId::parse("z").expect("zone"),
            session_id: String::new(),
            principal_id: "p".into(),
            application_id: None,
            approval_type: HUMAN_APPROVAL.into(),
            tier: "high".into(),
            approver_class: ApproverClass::Operator,
            privacy_mode: PrivacyMode::Identified,
            subject_anchor: None,
            binding: String::new(),
            metadata_json: Map::new(),
            decision_reason: None,
            created_at: at(0),
            expires_at: at(100),
            satisfied_at: None,
            rejected_at: None,
            consumed_at: None,
            approver_subject_id: None,
            approver_session_id: None,
            consumed_authority_record_id: None,
        };
        assert_eq!(h.state(at(1)), HoldState::Pending);
        assert_eq!(h.state(at(100)), HoldState::Expired);
        h.satisfied_at = Some(at(2));
        assert_eq!(h.state(at(3)), HoldState::Approved);
        assert_eq!(
            h.state(at(200)),
            HoldState::Expired,
            "expired beats approved"
        );
        h.rejected_at = Some(at(4));
        assert_eq!(h.state(at(200)), HoldState::Rejected);
        h.consumed_at = Some(at(5));
        assert_eq!(h.state(at(200)), HoldState::Consumed);
    }
}
