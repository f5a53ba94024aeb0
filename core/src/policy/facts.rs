//! Turns one decision input and the zone's indexed data into the facts the contract reads
//! (the list at the top of `decision_contract.datalog`), built programmatically straight into
//! biscuit's Datalog form, so no Datalog text is parsed per request. Only rows the request can
//! reach become facts.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::contract::{Arg, Contract, RequestFacts};
use super::data::{Approvals, Risk, ZoneData};
use super::input::DecisionInput;

/// The scopes a presented mandate carries: its `scope` claim split on single spaces, empty
/// tokens dropped (nothing when the claim is not a string).
fn presented_scopes(claims: Option<&Map<String, Value>>) -> BTreeSet<&str> {
    let scope = claims
        .and_then(|c| c.get("scope"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    scope.split(' ').filter(|s| !s.is_empty()).collect()
}

/// `subject_claims.delegation_edge_id` as the contract compares it with `""`: a string as
/// itself, any other JSON value as its (never empty) JSON text, since Rego's `!= ""` holds for
/// every non-string.
fn subject_edge_id(claims: &Map<String, Value>) -> Option<String> {
    claims.get("delegation_edge_id").map(|v| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The request's facts, and whether any approval declaration row is among them.
pub(crate) fn build<'c>(
    contract: &'c Contract,
    input: &DecisionInput,
    data: &ZoneData,
) -> (RequestFacts<'c>, bool) {
    let context = &input.context;
    let claims = context.subject_claims();
    let labels: BTreeSet<&str> = input
        .principal
        .labels()
        .iter()
        .map(String::as_str)
        .collect();
    let requested: BTreeSet<&str> = context
        .requested_scopes
        .iter()
        .map(String::as_str)
        .collect();
    let mut facts = contract.request();

    facts.add(
        "exchange",
        &[
            Arg::Bool(claims.is_some()),
            Arg::Bool(input.delegation_edge.is_some()),
            Arg::Bool(context.has_agent_session()),
        ],
    );
    facts.add("principal", &[Arg::Str(&input.principal.id)]);
    facts.add("principal_type", &[Arg::Str(&input.principal.kind)]);
    facts.add("action", &[Arg::Str(&input.action.id)]);
    facts.add("resource", &[Arg::Str(&input.resource.identifier)]);
    for label in &labels {
        facts.add("principal_label", &[Arg::Str(label)]);
    }
    facts.add("requested_scopes", &[Arg::Strs(requested.clone())]);
    let edge_scopes = input
        .delegation_edge
        .as_ref()
        .map(|edge| edge.scopes())
        .unwrap_or_default();
    facts.add(
        "edge_scopes",
        &[Arg::Strs(edge_scopes.iter().map(String::as_str).collect())],
    );
    facts.add("presented_scopes", &[Arg::Strs(presented_scopes(claims))]);
    if let Some(claims) = claims {
        if let Some(edge) = subject_edge_id(claims) {
            facts.add("subject_edge_id", &[Arg::Str(&edge)]);
        }
        let targets: BTreeSet<&str> = match claims.get("target") {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            Some(Value::Object(map)) => map.values().filter_map(Value::as_str).collect(),
            _ => BTreeSet::new(),
        };
        for target in targets {
            facts.add("subject_target", &[Arg::Str(target)]);
        }
    }

    if let Some(grant) = data.grants.get(&input.resource.identifier) {
        if let Some(id) = grant
            .application
            .as_ref()
            .and_then(|application| data.app_ids.get(application))
        {
            facts.add("grant_owner", &[Arg::Str(id)]);
        }
        for label in &labels {
            if let Some(scopes) = grant.roles.get(*label) {
                facts.add(
                    "role_scopes",
                    &[
                        Arg::Str(label),
                        Arg::Strs(scopes.iter().map(String::as_str).collect()),
                    ],
                );
            }
        }
    }
    for rule in &data.confinement {
        if labels.iter().any(|l| l.starts_with(rule.prefix.as_str())) {
            facts.add(
                "confinement",
                &[
                    Arg::Int(rule.index),
                    Arg::Str(&rule.prefix),
                    Arg::Strs(rule.scopes.iter().map(String::as_str).collect()),
                ],
            );
        }
    }
    facts.add("restriction_entries", &[Arg::Int(data.restriction_entries)]);

    let mut tiers = BTreeSet::new();
    match &data.risk {
        Risk::Malformed => facts.add("malformed", &[Arg::Str("risk")]),
        Risk::Valid(by_scope) => {
            for scope in &requested {
                for tier in by_scope.get(*scope).into_iter().flatten() {
                    facts.add("risk_tier", &[Arg::Str(scope), Arg::Str(tier)]);
                    tiers.insert(tier.as_str());
                }
            }
        }
    }
    let mut gated = false;
    match &data.approvals {
        Approvals::Malformed => facts.add("malformed", &[Arg::Str("approval_tiers")]),
        Approvals::Valid { by_tier, .. } => {
            for tier in tiers {
                for position in by_tier.get(tier).into_iter().flatten() {
                    let Ok(position) = i64::try_from(*position) else {
                        continue;
                    };
                    facts.add("approval_tier", &[Arg::Int(position), Arg::Str(tier)]);
                    gated = true;
                }
            }
        }
    }
    (facts, gated)
}
