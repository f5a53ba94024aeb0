//! The decision input document (`spec/sts.md §10.2`), typed.
//!
//! Upstream builds this document from a Go struct whose empty optional members are omitted
//! (`omitempty`), and the contract tests their *absence*: an empty `agent_session_id` or an empty
//! `subject_claims` object is the same as none. The presence helpers below carry that rule, so
//! the engine never asks "is it there" in two different ways.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::PolicyError;

/// The only input schema version; an empty one is read as this.
pub const INPUT_SCHEMA_VERSION: &str = "2026-05-20";

/// The policy input for one resource of one exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionInput {
    /// `2026-05-20`; empty or absent reads as it, any other value fails evaluation.
    #[serde(default = "default_schema", deserialize_with = "schema_version")]
    pub schema_version: String,
    /// Who is asking.
    #[serde(default, deserialize_with = "nullable")]
    pub principal: Principal,
    /// What is asked for.
    #[serde(default, deserialize_with = "nullable")]
    pub resource: Resource,
    /// The action (`TokenExchange`, `CredentialInjection`, …).
    #[serde(default, deserialize_with = "nullable")]
    pub action: Action,
    /// The authority record the exchange runs under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionRef>,
    /// The Delegation the exchange presents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegation_edge: Option<DelegationEdge>,
    /// Claims and request details.
    #[serde(default, deserialize_with = "nullable")]
    pub context: Context,
}

fn default_schema() -> String {
    INPUT_SCHEMA_VERSION.to_owned()
}

fn schema_version<'de, D: Deserializer<'de>>(de: D) -> Result<String, D::Error> {
    let raw: Option<String> = Option::deserialize(de)?;
    Ok(raw.filter(|v| !v.is_empty()).unwrap_or_else(default_schema))
}

/// `null` reads as the type's empty value, as Go's decoder leaves a zero value in place.
fn nullable<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

fn blank(value: &Option<String>) -> bool {
    value.as_deref().is_none_or(str::is_empty)
}

fn no_labels(labels: &Option<Vec<String>>) -> bool {
    labels.as_ref().is_none_or(Vec::is_empty)
}

fn no_claims(claims: &Option<Map<String, Value>>) -> bool {
    claims.as_ref().is_none_or(Map::is_empty)
}

fn zero(n: &Option<i64>) -> bool {
    n.is_none_or(|n| n == 0)
}

/// The acting application, workload or user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// `Application`, `Workload`, …
    #[serde(rename = "type", default, deserialize_with = "nullable")]
    pub kind: String,
    /// Application or workload id.
    #[serde(default, deserialize_with = "nullable")]
    pub id: String,
    /// The zone.
    #[serde(default, deserialize_with = "nullable")]
    pub zone_id: String,
    /// How the application registered.
    #[serde(default, skip_serializing_if = "blank")]
    pub registration_method: Option<String>,
    /// The governed Session (the delegation's target Session when there is one).
    #[serde(default, skip_serializing_if = "blank")]
    pub agent_session_id: Option<String>,
    /// The Session's lifecycle.
    #[serde(default, skip_serializing_if = "blank")]
    pub lifecycle: Option<String>,
    /// The Session's labels: the roles the grants are keyed by.
    #[serde(default, skip_serializing_if = "no_labels")]
    pub labels: Option<Vec<String>>,
}

impl Principal {
    /// The labels, empty when there are none.
    pub fn labels(&self) -> &[String] {
        self.labels.as_deref().unwrap_or_default()
    }
}

/// The resource row asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// Always `Resource`.
    #[serde(rename = "type", default, deserialize_with = "nullable")]
    pub kind: String,
    /// Row id.
    #[serde(default, deserialize_with = "nullable")]
    pub id: String,
    /// `resource://…`: the key of the grants document.
    #[serde(default, deserialize_with = "nullable")]
    pub identifier: String,
    /// The resource's declared scopes.
    #[serde(default, deserialize_with = "nullable")]
    pub scopes: Vec<String>,
}

/// The action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    /// `TokenExchange` or `CredentialInjection`.
    #[serde(default, deserialize_with = "nullable")]
    pub id: String,
    /// Uppercased upstream method (Gateway exchanges only).
    #[serde(default, skip_serializing_if = "blank")]
    pub method: Option<String>,
    /// Upstream path (Gateway exchanges only).
    #[serde(default, skip_serializing_if = "blank")]
    pub path: Option<String>,
}

/// The authority record of the exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    /// Its id.
    #[serde(default, deserialize_with = "nullable")]
    pub id: String,
}

/// The Delegation presented with a mint. Present means present: upstream tests the member's
/// existence, not its id's emptiness.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DelegationEdge {
    /// Edge id.
    #[serde(default, deserialize_with = "nullable")]
    pub id: String,
    /// Source Session.
    #[serde(default, skip_serializing_if = "blank")]
    pub source_session_id: Option<String>,
    /// Target Session.
    #[serde(default, skip_serializing_if = "blank")]
    pub target_session_id: Option<String>,
    /// Issuing application.
    #[serde(default, skip_serializing_if = "blank")]
    pub issuer_application_id: Option<String>,
    /// Receiving application.
    #[serde(default, skip_serializing_if = "blank")]
    pub receiver_application_id: Option<String>,
    /// Resource row the edge is bound to.
    #[serde(default, skip_serializing_if = "blank")]
    pub resource_id: Option<String>,
    /// The narrowed scopes.
    #[serde(default, skip_serializing_if = "no_labels")]
    pub scopes: Option<Vec<String>>,
    /// Edge version.
    #[serde(default, skip_serializing_if = "zero")]
    pub edge_version: Option<i64>,
    /// Root-first edge path.
    #[serde(default, skip_serializing_if = "no_labels")]
    pub path: Option<Vec<String>>,
    /// Delegation graph epoch.
    #[serde(default, skip_serializing_if = "zero")]
    pub graph_epoch: Option<i64>,
    /// The edge's constraints document, verbatim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints_json: Option<Value>,
}

impl DelegationEdge {
    /// The narrowed scopes, empty when there are none.
    pub fn scopes(&self) -> &[String] {
        self.scopes.as_deref().unwrap_or_default()
    }
}

/// Claims and request details.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// The caller's claims (`caracal_client_id`, …). Always present.
    #[serde(default, deserialize_with = "nullable")]
    pub actor_claims: Map<String, Value>,
    /// The verified subject token's claims; an empty object counts as none.
    #[serde(default, skip_serializing_if = "no_claims")]
    pub subject_claims: Option<Map<String, Value>>,
    /// Request id.
    #[serde(default, skip_serializing_if = "blank")]
    pub trace_id: Option<String>,
    /// Authority record id.
    #[serde(default, skip_serializing_if = "blank")]
    pub session_id: Option<String>,
    /// The governed Session of a delegated mint.
    #[serde(default, skip_serializing_if = "blank")]
    pub agent_session_id: Option<String>,
    /// The Delegation's id.
    #[serde(default, skip_serializing_if = "blank")]
    pub delegation_edge_id: Option<String>,
    /// Whether an approval already resolved this request. Always present.
    #[serde(default, deserialize_with = "nullable")]
    pub challenge_resolved: bool,
    /// The requested scopes; always present (`[]` when none). A workload's may arrive `null`.
    #[serde(default, deserialize_with = "nullable")]
    pub requested_scopes: Vec<String>,
}

impl Context {
    /// The subject claims when there are any (an empty object is omitted upstream).
    pub fn subject_claims(&self) -> Option<&Map<String, Value>> {
        self.subject_claims.as_ref().filter(|c| !c.is_empty())
    }

    /// Whether a governed Session id rides along.
    pub fn has_agent_session(&self) -> bool {
        !blank(&self.agent_session_id)
    }
}

impl DecisionInput {
    /// Fails on a schema version other than the one this contract reads.
    pub fn check_schema(&self) -> Result<(), PolicyError> {
        if self.schema_version == INPUT_SCHEMA_VERSION {
            Ok(())
        } else {
            Err(PolicyError::UnsupportedSchemaVersion(
                self.schema_version.clone(),
            ))
        }
    }
}
