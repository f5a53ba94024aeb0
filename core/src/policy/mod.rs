//! The policy decision contract (`spec/sts.md §10`), written in Datalog and run by biscuit's
//! Datalog engine.
//!
//! Adopters ship data documents (`app_ids`, `grants`, `confinement`, `restrict`, `risk`,
//! `approval_tiers`); the platform owns the rules. A [`PolicyBundle`] is a policy set's documents
//! compiled once into per-resource indexes. Each decision builds only the facts its request can
//! reach (the requested resource's grant, the principal's labels' roles, the confinement rules
//! whose prefix matches a label, the requested scopes' risk rows) and matches the contract's
//! ordered policies against them; the first that holds decides. Rust indexes, builds facts and
//! shapes JSON; every allow and deny is derived in `decision_contract.datalog`.
//!
//! Evaluation runs under fact, query and time limits (biscuit's `AuthorizerLimits`); reaching
//! one denies with `evaluation_limit_exceeded` (fail closed). What Rego would report as a
//! conflict (two risk rows giving one requested scope different tiers, bootstrap and workload
//! both allowing) is an error, which the STS answers with 503.

use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};

use crate::policy_document::{DataDocument, ALLOWED_NAMES};

pub mod cache;
mod contract;
mod data;
mod decision;
mod facts;
#[doc(hidden)]
pub mod fixtures;
pub mod input;
pub mod simulate;
mod value_order;

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;

pub use biscuit_auth::AuthorizerLimits;
pub use cache::{LoadedBundle, PolicyCache, PolicyStatus};
pub use decision::Decision;
pub use input::{
    Action, Context, DecisionInput, DelegationEdge, Principal, Resource, SessionRef,
    INPUT_SCHEMA_VERSION,
};
pub use simulate::{compile_modules, simulate, PolicyModule, SimulationError};

use contract::{AllowRule, Verdict};
use data::{Approvals, Risk, ZoneData};

/// The version of the embedded decision contract.
pub const DECISION_CONTRACT_VERSION: &str = "2026-07-12";

/// Lowercase hex SHA-256 of the embedded contract text: the decision brain's identity in
/// metrics and in the approval binding.
pub fn decision_contract_sha256() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| crate::digest::sha256_hex(contract::SOURCE.as_bytes()))
}

/// Why a bundle did not compile or a decision could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The input names a schema version this contract does not read.
    #[error("unsupported policy input schema_version {0}")]
    UnsupportedSchemaVersion(String),
    /// Two documents of one bundle define the same name with different values.
    #[error("conflicting definitions of {0}: documents of one policy set define it with different values")]
    ConflictingData(String),
    /// A document defines something adopters may not (the contract owns `result`).
    #[error("policy documents may define only app_ids, grants, confinement, restrict, risk and approval_tiers, not {0}")]
    ForbiddenName(String),
    /// The data makes one rule produce two values, which Rego reports as a conflict.
    #[error("eval_conflict_error: {0}")]
    Conflict(String),
    /// The engine failed (a defect, not a decision).
    #[error("policy evaluation failed: {0}")]
    Engine(String),
}

impl From<PolicyError> for crate::Error {
    /// Evaluation failures are never decisions: the STS answers `503 policy_eval_failed`.
    fn from(err: PolicyError) -> Self {
        crate::Error::new(crate::ErrorKind::Unavailable, "policy_eval_failed")
            .describe("policy evaluation unavailable")
            .with_detail(err.to_string())
    }
}

/// A policy set compiled for decisions, or the deny-all of a zone without one.
#[derive(Debug, Clone)]
pub struct PolicyBundle {
    data: Option<Arc<ZoneData>>,
    limits: AuthorizerLimits,
}

impl PolicyBundle {
    /// Merges and indexes a policy set's documents.
    pub fn compile(documents: &[DataDocument]) -> Result<Self, PolicyError> {
        // A broken embedded contract must fail the load, not the first request after it.
        contract::contract()?;
        for document in documents {
            if let Some(name) = document
                .values
                .keys()
                .find(|n| !ALLOWED_NAMES.contains(&n.as_str()))
            {
                return Err(PolicyError::ForbiddenName(name.clone()));
            }
        }
        let merged = data::merge(documents)?;
        Ok(Self {
            data: Some(Arc::new(ZoneData::index(&merged))),
            limits: contract::default_limits(),
        })
    }

    /// The bundle of a zone with no active policy set: every decision is
    /// `no_active_policy_set`.
    pub fn deny_all() -> Self {
        Self {
            data: None,
            limits: contract::default_limits(),
        }
    }

    /// Whether this is the deny-all.
    pub fn is_deny_all(&self) -> bool {
        self.data.is_none()
    }

    /// The same bundle under other evaluation limits.
    pub fn with_limits(mut self, limits: AuthorizerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Decides one input. Deny by default; `Err` only when evaluation itself fails.
    pub fn decide(&self, input: &DecisionInput) -> Result<Decision, PolicyError> {
        input.check_schema()?;
        let Some(data) = self.data.as_deref() else {
            return Ok(Decision::deny("no_active_policy_set"));
        };
        let contract = contract::contract()?;
        let (request, gated) = facts::build(contract, input, data);
        let evaluation = contract.evaluate(request, &self.limits, gated)?;
        let owner = || {
            data.grants
                .get(&input.resource.identifier)
                .and_then(|g| g.application.as_deref())
                .ok_or_else(|| PolicyError::Engine("an allow without an owning grant".into()))
        };
        Ok(match evaluation.verdict {
            Verdict::LimitExceeded => Decision::deny("evaluation_limit_exceeded"),
            Verdict::Deny(reason) => Decision::deny(reason),
            Verdict::Conflict(what) => return Err(conflict(what)),
            Verdict::Allow(AllowRule::Bootstrap) => {
                Decision::allow("caracal-bootstrap".into(), Vec::new())
            }
            Verdict::Allow(AllowRule::Workload) => Decision::allow(
                "caracal-workload-mint".into(),
                mint_diagnostics(input, data, &evaluation.step_up),
            ),
            Verdict::Allow(AllowRule::Mint) => Decision::allow(
                format!("caracal-{}-mint", owner()?),
                mint_diagnostics(input, data, &evaluation.step_up),
            ),
            Verdict::Allow(AllowRule::Use) => {
                Decision::allow(format!("caracal-{}-use", owner()?), Vec::new())
            }
        })
    }
}

fn conflict(what: &str) -> PolicyError {
    PolicyError::Conflict(match what {
        "risk_tier" => {
            "functions must not produce multiple outputs for same inputs: risk gives a requested scope more than one tier".into()
        }
        "bootstrap_and_workload_mint" => {
            "complete rules must not produce multiple outputs: result is both caracal-bootstrap and caracal-workload-mint".into()
        }
        other => other.to_owned(),
    })
}

/// The diagnostics of a delegated or workload mint allow: the step-up gate (matching approval
/// declarations, sorted in Rego's order, verbatim) then the risk of each requested scope that
/// has a tier, sorted by scope.
fn mint_diagnostics(input: &DecisionInput, data: &ZoneData, step_up: &[i64]) -> Vec<Value> {
    let mut diagnostics = Vec::new();
    if let Approvals::Valid { declarations, .. } = &data.approvals {
        let gates: Vec<Value> = step_up
            .iter()
            .filter_map(|d| usize::try_from(*d).ok())
            .filter_map(|d| declarations.get(d).cloned())
            .collect();
        if !gates.is_empty() {
            diagnostics.push(json!({
                "step_up_required": {
                    "type": "human_approval",
                    "tiers": value_order::sorted_set(gates),
                }
            }));
        }
    }
    if let Risk::Valid(by_scope) = &data.risk {
        let mut risk: Vec<(&str, &str)> = input
            .context
            .requested_scopes
            .iter()
            .filter_map(|scope| {
                let tier = by_scope.get(scope)?.iter().next()?;
                Some((scope.as_str(), tier.as_str()))
            })
            .collect();
        risk.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        if !risk.is_empty() {
            let entries: Vec<Value> = risk
                .into_iter()
                .map(|(scope, tier)| json!({ "scope": scope, "tier": tier }))
                .collect();
            diagnostics.push(json!({ "risk": entries }));
        }
    }
    diagnostics
}
