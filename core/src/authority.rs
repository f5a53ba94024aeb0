//! The authority graph the STS mints against: authority records (the `sid` of every mandate),
//! governed agent Sessions, Delegation edges and the zone's signing keys. The Coordinator
//! (`spec/coordinator-gateway.md` Part A) writes Sessions and Delegations; the STS reads them
//! when it mints (`spec/sts.md §3.6`) and writes authority records for every mandate (§3.9).

use serde_json::{Map, Value};

use crate::ids::*;
use crate::time::Timestamp;

/// Whose authority a record anchors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    /// An application authenticated with its client credentials.
    Application,
    /// A federated end user (`sub_type=user`).
    User,
}

impl SessionType {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Application => "application",
            Self::User => "user",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "application" => Some(Self::Application),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

/// Whether a record still carries authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStatus {
    /// Live until `expires_at`.
    Active,
    /// Revoked (subject revoke, Session revoke cascade).
    Revoked,
}

impl RecordStatus {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Revoked => "revoked",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

/// An authority record: one row per minted mandate (except approval re-issues), whose id is the
/// mandate's `sid` (`spec/sts.md §3.9`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityRecord {
    /// UUIDv7; the mandate's `sid`.
    pub id: String,
    /// Zone.
    pub zone_id: ZoneId,
    /// Application or user.
    pub session_type: SessionType,
    /// The mandate's `sub`.
    pub subject_id: String,
    /// The application the mandate was minted for (`client_id`).
    pub client_id: String,
    /// The presented mandate's `sid`, for `use=resource` records only.
    pub parent_id: Option<String>,
    /// Active or revoked.
    pub status: RecordStatus,
    /// When the authority ends.
    pub expires_at: Timestamp,
    /// When the subject authenticated.
    pub authenticated_at: Timestamp,
    /// `{"iss":…}` for federated users; `None` otherwise.
    pub claims_json: Option<Value>,
    /// Revocation instant.
    pub revoked_at: Option<Timestamp>,
    /// Revocation reason (`session_revoked`, `subject_revoked`, …).
    pub revoked_reason: Option<String>,
    /// Insert instant.
    pub created_at: Timestamp,
}

impl AuthorityRecord {
    /// Active and not yet expired at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.status == RecordStatus::Active && self.expires_at > now
    }
}

/// How a governed Session lives (`spec/coordinator-gateway.md` A6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Lives `ttl_seconds` from `started_at`.
    Task,
    /// Lives while its lease is renewed (heartbeat deadline).
    Service,
}

impl Lifecycle {
    /// The wire and stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::Service => "service",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "task" => Some(Self::Task),
            "service" => Some(Self::Service),
            _ => None,
        }
    }
}

/// A governed agent Session (Coordinator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSession {
    /// Identifier (`agent_session_id`).
    pub id: String,
    /// Zone.
    pub zone_id: ZoneId,
    /// The application the Session runs as.
    pub application_id: String,
    /// The anchoring authority record (`subject_authority_record_id`).
    pub subject_session_id: String,
    /// Parent Session.
    pub parent_id: Option<String>,
    /// Task or service.
    pub lifecycle: Lifecycle,
    /// Labels (role keys for the policy contract).
    pub labels: Vec<String>,
    /// `active`, `suspended`, `terminated` or `expired`.
    pub status: String,
    /// 0 for a root.
    pub depth: i32,
    /// Task lifetime in seconds.
    pub ttl_seconds: Option<i64>,
    /// Start instant.
    pub started_at: Timestamp,
    /// Last lease renewal (service).
    pub last_heartbeat_at: Option<Timestamp>,
    /// Lease deadline (service).
    pub heartbeat_deadline_at: Option<Timestamp>,
    /// Lease generation (service; 0 for task).
    pub lease_generation: i64,
    /// Live children.
    pub child_count: i32,
    /// Caller metadata.
    pub metadata: Map<String, Value>,
    /// Why it stopped.
    pub status_reason: Option<String>,
    /// When it stopped.
    pub ended_at: Option<Timestamp>,
    /// Insert instant.
    pub created_at: Timestamp,
    /// Last change.
    pub updated_at: Timestamp,
}

impl AgentSession {
    /// `spec/sts.md §3.6` "Active Session": status active and within its lifetime at `now`
    /// (service: lease deadline ahead; task: a positive TTL not yet elapsed).
    pub fn is_live(&self, now: Timestamp) -> bool {
        if self.status != "active" {
            return false;
        }
        match self.lifecycle {
            Lifecycle::Service => self.heartbeat_deadline_at.is_some_and(|d| d > now),
            Lifecycle::Task => match self.ttl_seconds {
                Some(ttl) if ttl > 0 => {
                    self.started_at.plus_millis(ttl.saturating_mul(1_000)) > now
                }
                _ => false,
            },
        }
    }
}

/// A Delegation edge between two Sessions (Coordinator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegationEdge {
    /// Identifier (`delegation_edge_id`).
    pub id: String,
    /// Zone.
    pub zone_id: ZoneId,
    /// Delegating Session.
    pub source_session_id: String,
    /// Receiving Session.
    pub target_session_id: String,
    /// Application of the source Session.
    pub issuer_application_id: String,
    /// Application of the target Session.
    pub receiver_application_id: String,
    /// The source's inbound edge this one narrows.
    pub parent_edge_id: Option<String>,
    /// Resource row id the edge is confined to.
    pub resource_id: Option<String>,
    /// Delegated scopes.
    pub scopes: Vec<String>,
    /// Typed constraints (`resources ttl_seconds max_depth max_hops budget policy_approved
    /// expires_at broad_reason`), as stored.
    pub constraints_json: Map<String, Value>,
    /// `active`, `revoked` or `expired`.
    pub status: String,
    /// Hard expiry.
    pub expires_at: Timestamp,
    /// Bumped on change.
    pub edge_version: i64,
    /// Revocation instant.
    pub revoked_at: Option<Timestamp>,
    /// Insert instant.
    pub created_at: Timestamp,
}

impl DelegationEdge {
    /// Active, unrevoked and unexpired at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.status == "active" && self.revoked_at.is_none() && self.expires_at > now
    }
}

/// One version of a zone's ES256 signing key (`spec/sts.md §5`). The id is the JWT `kid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneSigningKey {
    /// UUIDv7; the `kid`.
    pub id: String,
    /// Zone.
    pub zone_id: ZoneId,
    /// 1, 2, … per zone; the newest signs.
    pub version: i32,
    /// The sealed SEC1 PEM private key (AAD `caracal/secrets/zoneSigningKey`).
    pub envelope: Vec<u8>,
    /// Insert instant (the previous key stays published for 24 h after a newer one appears).
    pub created_at: Timestamp,
}
