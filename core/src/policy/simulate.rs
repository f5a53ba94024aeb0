//! Dry runs of a policy set against one input: the evaluation behind the API's
//! `POST …/policy-sets/{id}/simulate` and the STS's `POST /internal/policy/simulate`
//! (`spec/sts.md §11`), so both answer with the same engine the STS decides with.

use serde_json::Value;

use crate::policy_document;

use super::{Decision, DecisionInput, PolicyBundle};

/// One policy of the set: its version id and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyModule {
    /// The policy version id (names the module in errors).
    pub id: String,
    /// The document text.
    pub content: String,
}

/// Why a simulation produced no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimulationError {
    /// The input is not a decision input document (the STS answers `400 "malformed json body"`).
    #[error("malformed policy input: {0}")]
    MalformedInput(String),
    /// A document, the bundle or the evaluation failed (the STS answers
    /// `422 policy_eval_failed` with this text).
    #[error("{0}")]
    Failed(String),
}

impl SimulationError {
    /// The error code the STS route answers with, which the API reports in its
    /// `sts_simulation_failed:<code>` warning.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedInput(_) => "invalid_token",
            Self::Failed(_) => "policy_eval_failed",
        }
    }
}

/// Compiles `policies` and decides `input`, without touching any zone's active bundle.
pub fn simulate(policies: &[PolicyModule], input: &Value) -> Result<Decision, SimulationError> {
    let input: DecisionInput = serde_json::from_value(input.clone())
        .map_err(|e| SimulationError::MalformedInput(e.to_string()))?;
    input
        .check_schema()
        .map_err(|e| SimulationError::Failed(e.to_string()))?;
    let bundle = compile_modules(policies)?;
    bundle
        .decide(&input)
        .map_err(|e| SimulationError::Failed(e.to_string()))
}

/// Validates every module as a data document and compiles them as one bundle.
pub fn compile_modules(policies: &[PolicyModule]) -> Result<PolicyBundle, SimulationError> {
    let mut documents = Vec::with_capacity(policies.len());
    for module in policies {
        let document = policy_document::parse(&module.content).map_err(|e| {
            SimulationError::Failed(format!("policy {} is invalid: {}", module.id, e.code))
        })?;
        documents.push(document);
    }
    PolicyBundle::compile(&documents)
        .map_err(|e| SimulationError::Failed(format!("compile policy bundle: {e}")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn module(content: &str) -> PolicyModule {
        PolicyModule {
            id: "pv-1".into(),
            content: content.into(),
        }
    }

    #[test]
    fn evaluates_an_input_against_the_documents() {
        let doc = module(
            "# caracal:data-document\npackage caracal.authz\napp_ids := {\"app\": \"app-1\"}\n\
             grants := {\"resource://r\": {\"application\": \"app\", \"roles\": {}}}\n",
        );
        let decision = simulate(
            std::slice::from_ref(&doc),
            &json!({"principal": {"id": "app-1"}, "resource": {"identifier": "resource://r"},
                    "context": {"requested_scopes": ["agent:lifecycle"]}}),
        )
        .expect("simulates");
        assert_eq!(decision.policy_name(), Some("caracal-bootstrap"));
        // An empty input is a valid input: nothing matches.
        assert_eq!(
            simulate(&[doc], &json!({}))
                .expect("simulates")
                .deny_reason(),
            Some("no_rule_matched")
        );
    }

    #[test]
    fn failures_are_typed() {
        let doc = module("# caracal:data-document\npackage caracal.authz\nrisk := []\n");
        let malformed = simulate(
            std::slice::from_ref(&doc),
            &json!({"principal": {"labels": "x"}}),
        );
        assert!(matches!(malformed, Err(SimulationError::MalformedInput(_))));
        assert_eq!(malformed.err().map(|e| e.code()), Some("invalid_token"));
        let schema = simulate(
            std::slice::from_ref(&doc),
            &json!({"schema_version": "1999-01-01"}),
        );
        assert_eq!(
            schema.err(),
            Some(SimulationError::Failed(
                "unsupported policy input schema_version 1999-01-01".into()
            ))
        );
        let bad = simulate(&[module("package other\n")], &json!({}));
        assert!(
            matches!(&bad, Err(SimulationError::Failed(text)) if text.contains("pv-1")),
            "{bad:?}"
        );
        let conflicting = module("# caracal:data-document\npackage caracal.authz\nrisk := [{\"scope\": \"a\", \"tier\": \"b\"}]\n");
        let failed = compile_modules(&[doc, conflicting]).err();
        assert_eq!(
            failed.as_ref().map(SimulationError::code),
            Some("policy_eval_failed")
        );
    }
}
