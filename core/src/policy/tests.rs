//! The decision contract, rule by rule and reason by reason (`spec/sts.md §10.4`).

use serde_json::{json, Value};

use super::*;
use crate::policy_document::parse;

/// A zone: app `app` (binding key) is application `app-1`; `resource://r` is granted to it with
/// a reader and a writer role.
fn zone() -> Value {
    json!({
        "app_ids": {"app": "app-1", "alias": "app-1", "other": "app-2"},
        "grants": {
            "resource://r": {
                "application": "app",
                "roles": {"reader": ["r:read"], "writer": ["r:read", "r:write"]}
            },
            "resource://theirs": {"application": "other", "roles": {"reader": ["t:read"]}}
        }
    })
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(target), Some(more)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            target.insert(k.clone(), v.clone());
        }
    }
    base
}

fn bundle(data: &Value) -> PolicyBundle {
    let document = parse(&data.to_string()).expect("test document parses");
    PolicyBundle::compile(&[document]).expect("test bundle compiles")
}

fn input(value: Value) -> DecisionInput {
    serde_json::from_value(value).expect("test input decodes")
}

/// A delegated mint of `scopes` on `resource://r` by `app-1`, with the edge's scopes and the
/// target Session's labels.
fn delegated(scopes: &[&str], edge: &[&str], labels: &[&str]) -> DecisionInput {
    input(json!({
        "principal": {"type": "Application", "id": "app-1", "zone_id": "z1",
                      "agent_session_id": "s-child", "labels": labels},
        "resource": {"type": "Resource", "id": "res-1", "identifier": "resource://r",
                     "scopes": ["r:read", "r:write"]},
        "action": {"id": "TokenExchange"},
        "delegation_edge": {"id": "d-1", "scopes": edge},
        "context": {"actor_claims": {"caracal_client_id": "app-1"}, "agent_session_id": "s-child",
                    "delegation_edge_id": "d-1", "challenge_resolved": false,
                    "requested_scopes": scopes}
    }))
}

fn bootstrap() -> DecisionInput {
    input(json!({
        "principal": {"type": "Application", "id": "app-1", "zone_id": "z1"},
        "resource": {"type": "Resource", "id": "res-1", "identifier": "resource://r", "scopes": []},
        "action": {"id": "TokenExchange"},
        "context": {"actor_claims": {}, "challenge_resolved": false,
                    "requested_scopes": ["agent:lifecycle"]}
    }))
}

fn workload(scopes: Value) -> DecisionInput {
    input(json!({
        "principal": {"type": "Workload", "id": "wl-1", "zone_id": "z1"},
        "resource": {"type": "Resource", "id": "res-9", "identifier": "resource://ungranted",
                     "scopes": []},
        "action": {"id": "CredentialInjection"},
        "context": {"actor_claims": {}, "challenge_resolved": false, "requested_scopes": scopes}
    }))
}

/// A Gateway exchange presenting a mandate carrying `scope` and targeting `target`.
fn mandate(scope: &str, target: &str, labels: &[&str]) -> DecisionInput {
    input(json!({
        "principal": {"type": "Application", "id": "app-1", "zone_id": "z1",
                      "agent_session_id": "s-child", "labels": labels},
        "resource": {"type": "Resource", "id": "res-1", "identifier": "resource://r",
                     "scopes": ["r:read", "r:write"]},
        "action": {"id": "TokenExchange", "method": "GET", "path": "/v1/items"},
        "context": {"actor_claims": {"caracal_client_id": "app-1"},
                    "subject_claims": {"delegation_edge_id": "d-1", "scope": scope,
                                       "target": [target], "use": "gateway"},
                    "challenge_resolved": false, "requested_scopes": []}
    }))
}

fn decide(data: &Value, input: &DecisionInput) -> Decision {
    bundle(data).decide(input).expect("decision")
}

fn reason(data: &Value, input: &DecisionInput) -> String {
    let decision = decide(data, input);
    assert!(
        !decision.allow,
        "expected a deny, got {}",
        decision.to_json()
    );
    decision.deny_reason().unwrap_or_default().to_owned()
}

fn allowed_by(data: &Value, input: &DecisionInput) -> String {
    let decision = decide(data, input);
    assert!(
        decision.allow,
        "expected an allow, got {}",
        decision.to_json()
    );
    decision.policy_name().unwrap_or_default().to_owned()
}

// --- defaults -------------------------------------------------------------------------------

#[test]
fn no_data_denies_with_no_rule_matched() {
    let decision = decide(&json!({"risk": []}), &bootstrap());
    assert_eq!(
        decision.to_json(),
        json!({"decision":"deny","evaluation_status":"complete","determining_policies":[],"diagnostics":[{"reason":"no_rule_matched"}]})
    );
    assert_eq!(
        PolicyBundle::compile(&[])
            .expect("empty bundle")
            .decide(&bootstrap())
            .expect("decision")
            .deny_reason(),
        Some("no_rule_matched")
    );
    // A delegated mint with no grants is refused as not granted.
    assert_eq!(
        reason(
            &json!({"risk": []}),
            &delegated(&["r:read"], &["r:read"], &["reader"])
        ),
        "resource_not_granted"
    );
}

#[test]
fn deny_all_is_no_active_policy_set() {
    let decision = PolicyBundle::deny_all()
        .decide(&delegated(&["r:read"], &["r:read"], &["reader"]))
        .expect("decision");
    assert_eq!(
        decision.to_json(),
        json!({"decision":"deny","evaluation_status":"complete","determining_policies":[],"diagnostics":[{"reason":"no_active_policy_set"}]})
    );
}

// --- bootstrap ------------------------------------------------------------------------------

#[test]
fn bootstrap_allows_the_owner_with_empty_diagnostics() {
    let decision = decide(&zone(), &bootstrap());
    assert_eq!(
        decision.to_json(),
        json!({"decision":"allow","evaluation_status":"complete","determining_policies":[{"policy":"caracal-bootstrap"}],"diagnostics":[]})
    );
    // The requested scopes are a set: a repeat is still exactly {agent:lifecycle}.
    let mut repeated = bootstrap();
    repeated.context.requested_scopes = vec!["agent:lifecycle".into(), "agent:lifecycle".into()];
    assert_eq!(allowed_by(&zone(), &repeated), "caracal-bootstrap");
}

#[test]
fn bootstrap_needs_exactly_lifecycle_and_no_context() {
    let mut extra_scope = bootstrap();
    extra_scope.context.requested_scopes.push("r:read".into());
    assert_eq!(reason(&zone(), &extra_scope), "no_rule_matched");

    let mut with_subject = bootstrap();
    with_subject.context.subject_claims =
        Some(json!({"sub": "x"}).as_object().cloned().unwrap_or_default());
    assert_eq!(reason(&zone(), &with_subject), "no_rule_matched");

    let mut with_edge = bootstrap();
    with_edge.delegation_edge = Some(DelegationEdge::default());
    assert_eq!(reason(&zone(), &with_edge), "no_rule_matched");

    let mut with_session = bootstrap();
    with_session.context.agent_session_id = Some("s-1".into());
    assert_eq!(reason(&zone(), &with_session), "no_rule_matched");

    // Empty members are absent, as upstream omits them.
    let mut empty_members = bootstrap();
    empty_members.context.agent_session_id = Some(String::new());
    empty_members.context.subject_claims = Some(serde_json::Map::new());
    assert_eq!(allowed_by(&zone(), &empty_members), "caracal-bootstrap");

    let mut not_owner = bootstrap();
    not_owner.principal.id = "app-2".into();
    assert_eq!(reason(&zone(), &not_owner), "no_rule_matched");
}

#[test]
fn bootstrap_ignores_roles_confinement_risk_and_malformed_data() {
    let data = with(
        zone(),
        json!({"confinement": [{"label_prefix": "", "scopes": []}], "risk": "not an array",
               "approval_tiers": {"tier": 1}}),
    );
    let mut labelled = bootstrap();
    labelled.principal.labels = Some(vec!["nobody".into()]);
    assert_eq!(allowed_by(&data, &labelled), "caracal-bootstrap");
}

// --- delegated mint -------------------------------------------------------------------------

#[test]
fn delegated_mint_allows_within_edge_role_and_confinement() {
    let decision = decide(
        &zone(),
        &delegated(&["r:read"], &["r:read", "r:write"], &["reader"]),
    );
    assert_eq!(
        decision.to_json(),
        json!({"decision":"allow","evaluation_status":"complete","determining_policies":[{"policy":"caracal-app-mint"}],"diagnostics":[]})
    );
    // The policy is named by the grant's binding key, even when an alias key also maps to the
    // acting application.
    assert_eq!(
        allowed_by(
            &zone(),
            &delegated(&["r:read", "r:write"], &["r:read", "r:write"], &["writer"])
        ),
        "caracal-app-mint"
    );
}

#[test]
fn delegated_deny_reasons_in_precedence_order() {
    let confined = with(
        zone(),
        json!({"confinement": [{"label_prefix": "read", "scopes": ["r:write"]}]}),
    );
    // Not the owner beats everything after it, even an edge that does not narrow.
    let mut foreign = delegated(&["t:read"], &["r:read"], &["reader"]);
    foreign.resource.identifier = "resource://theirs".into();
    assert_eq!(reason(&confined, &foreign), "resource_not_granted");
    let mut ungranted = delegated(&["r:read"], &["r:read"], &["reader"]);
    ungranted.resource.identifier = "resource://nowhere".into();
    assert_eq!(reason(&zone(), &ungranted), "resource_not_granted");
    // Owner, but a scope outside the edge: beats a confinement violation.
    assert_eq!(
        reason(
            &confined,
            &delegated(&["r:read"], &["r:write"], &["reader"])
        ),
        "delegation_scope_exceeded"
    );
    // Narrowed but confined below the request: beats a role mismatch.
    assert_eq!(
        reason(&confined, &delegated(&["r:read"], &["r:read"], &["reader"])),
        "confinement_violation"
    );
    // Narrowed and confined, but no label's role covers every scope.
    assert_eq!(
        reason(
            &zone(),
            &delegated(&["r:read", "r:write"], &["r:read", "r:write"], &["reader"])
        ),
        "role_scope_mismatch"
    );
    assert_eq!(
        reason(&zone(), &delegated(&["r:read"], &["r:read"], &["auditor"])),
        "role_scope_mismatch"
    );
}

#[test]
fn role_coverage_is_per_label_not_across_labels() {
    // reader covers r:read and a second role covers r:write, but no single role covers both.
    let data = with(
        zone(),
        json!({"grants": {"resource://r": {"application": "app",
               "roles": {"reader": ["r:read"], "scribe": ["r:write"]}}}}),
    );
    assert_eq!(
        reason(
            &data,
            &delegated(
                &["r:read", "r:write"],
                &["r:read", "r:write"],
                &["reader", "scribe"]
            )
        ),
        "role_scope_mismatch"
    );
}

#[test]
fn confinement_applies_only_to_matching_labels() {
    let data = with(
        zone(),
        json!({"confinement": [
            {"label_prefix": "contractor-", "scopes": []},
            {"label_prefix": "writ", "scopes": ["r:read", "r:write"]},
            {"scopes": []},
            {"label_prefix": 7, "scopes": []},
            "not a rule"
        ]}),
    );
    assert_eq!(
        allowed_by(
            &data,
            &delegated(&["r:read", "r:write"], &["r:read", "r:write"], &["writer"])
        ),
        "caracal-app-mint"
    );
    // Every matching rule must cover the request.
    let strict = with(
        zone(),
        json!({"confinement": [
            {"label_prefix": "writ", "scopes": ["r:read", "r:write"]},
            {"label_prefix": "w", "scopes": ["r:read"]}
        ]}),
    );
    assert_eq!(
        reason(
            &strict,
            &delegated(&["r:read", "r:write"], &["r:read", "r:write"], &["writer"])
        ),
        "confinement_violation"
    );
}

#[test]
fn delegated_request_shape() {
    // agent:lifecycle is never minted through a delegation.
    assert_eq!(
        reason(
            &zone(),
            &delegated(
                &["r:read", "agent:lifecycle"],
                &["r:read", "agent:lifecycle"],
                &["reader"]
            )
        ),
        "no_rule_matched"
    );
    // At least one scope.
    assert_eq!(
        reason(&zone(), &delegated(&[], &["r:read"], &["reader"])),
        "no_rule_matched"
    );
    // The governed Session must ride along.
    let mut no_session = delegated(&["r:read"], &["r:read"], &["reader"]);
    no_session.context.agent_session_id = None;
    assert_eq!(reason(&zone(), &no_session), "no_rule_matched");
    // A subject token makes it something else (never a direct mint).
    let mut subject = delegated(&["r:read"], &["r:read"], &["reader"]);
    subject.context.subject_claims = json!({"sub": "u"}).as_object().cloned();
    assert_eq!(reason(&zone(), &subject), "no_rule_matched");
    // An edge present with an empty id still counts as present, as upstream tests existence.
    let mut empty_id = delegated(&["r:read"], &["r:read"], &["reader"]);
    if let Some(edge) = empty_id.delegation_edge.as_mut() {
        edge.id = String::new();
    }
    assert_eq!(allowed_by(&zone(), &empty_id), "caracal-app-mint");
}

// --- workload -------------------------------------------------------------------------------

#[test]
fn workload_mint_needs_no_grant() {
    let decision = decide(&zone(), &workload(json!(null)));
    assert_eq!(decision.policy_name(), Some("caracal-workload-mint"));
    assert_eq!(decision.diagnostics, Vec::<Value>::new());
    assert_eq!(
        allowed_by(&json!({"risk": []}), &workload(json!(["x:read"]))),
        "caracal-workload-mint"
    );
    let mut subject = workload(json!(["x:read"]));
    subject.context.subject_claims = json!({"sub": "u"}).as_object().cloned();
    assert_eq!(reason(&zone(), &subject), "no_rule_matched");
    let mut wrong_action = workload(json!(["x:read"]));
    wrong_action.action.id = "TokenExchange".into();
    assert_eq!(reason(&zone(), &wrong_action), "no_rule_matched");
}

#[test]
fn workload_and_bootstrap_both_holding_is_a_conflict() {
    let mut both = workload(json!(["agent:lifecycle"]));
    both.principal.id = "app-1".into();
    both.resource.identifier = "resource://r".into();
    assert!(matches!(
        bundle(&zone()).decide(&both),
        Err(PolicyError::Conflict(_))
    ));
    // Malformed data blocks the workload allow, leaving bootstrap alone.
    let data = with(zone(), json!({"risk": {}}));
    assert_eq!(allowed_by(&data, &both), "caracal-bootstrap");
    // Without ownership the workload allow stands alone.
    both.principal.id = "wl-1".into();
    assert_eq!(allowed_by(&zone(), &both), "caracal-workload-mint");
    // ... and malformed data in bootstrap shape is no_rule_matched, not a malformed reason.
    assert_eq!(reason(&data, &both), "no_rule_matched");
}

// --- mandate use ----------------------------------------------------------------------------

#[test]
fn mandate_use_allows_with_empty_diagnostics_even_when_risky() {
    let data = with(
        zone(),
        json!({"risk": [{"scope": "r:read", "tier": "high"}],
               "approval_tiers": [{"tier": "high"}]}),
    );
    let decision = decide(&data, &mandate("r:read", "resource://r", &["reader"]));
    assert_eq!(
        decision.to_json(),
        json!({"decision":"allow","evaluation_status":"complete","determining_policies":[{"policy":"caracal-app-use"}],"diagnostics":[]})
    );
    // Extra spaces in the scope claim are dropped.
    assert_eq!(
        allowed_by(
            &zone(),
            &mandate(" r:read  r:write ", "resource://r", &["writer"])
        ),
        "caracal-app-use"
    );
}

#[test]
fn mandate_deny_reasons_in_order() {
    assert_eq!(
        reason(
            &zone(),
            &mandate("r:read", "resource://elsewhere", &["reader"])
        ),
        "mandate_target_mismatch"
    );
    let mut foreign = mandate("t:read", "resource://theirs", &["reader"]);
    foreign.resource.identifier = "resource://theirs".into();
    assert_eq!(reason(&zone(), &foreign), "resource_not_granted");
    // The current grant no longer covers a carried scope.
    assert_eq!(
        reason(
            &zone(),
            &mandate("r:read r:write", "resource://r", &["reader"])
        ),
        "role_scope_mismatch"
    );
    // Restrictions and malformed data: restriction wins; malformed data does not touch use.
    let malformed = with(zone(), json!({"risk": 5, "approval_tiers": 5}));
    assert_eq!(
        allowed_by(&malformed, &mandate("r:read", "resource://r", &["reader"])),
        "caracal-app-use"
    );
}

#[test]
fn mandate_presentation_shape() {
    let mut requested = mandate("r:read", "resource://r", &["reader"]);
    requested.context.requested_scopes = vec!["r:read".into()];
    assert_eq!(reason(&zone(), &requested), "no_rule_matched");
    let mut no_edge = mandate("r:read", "resource://r", &["reader"]);
    if let Some(claims) = no_edge.context.subject_claims.as_mut() {
        claims.insert("delegation_edge_id".into(), json!(""));
    }
    assert_eq!(reason(&zone(), &no_edge), "no_rule_matched");
    let mut no_scope = mandate("  ", "resource://r", &["reader"]);
    assert_eq!(reason(&zone(), &no_scope), "no_rule_matched");
    if let Some(claims) = no_scope.context.subject_claims.as_mut() {
        claims.insert("scope".into(), json!(["r:read"]));
    }
    assert_eq!(reason(&zone(), &no_scope), "no_rule_matched");
    // A string target is not a collection of targets.
    let mut string_target = mandate("r:read", "resource://r", &["reader"]);
    if let Some(claims) = string_target.context.subject_claims.as_mut() {
        claims.insert("target".into(), json!("resource://r"));
    }
    assert_eq!(reason(&zone(), &string_target), "mandate_target_mismatch");
}

// --- restrict -------------------------------------------------------------------------------

#[test]
fn restrict_beats_everything() {
    for restrict in [json!(["incident-42"]), json!({"freeze": true})] {
        let data = with(
            zone(),
            json!({"restrict": restrict, "risk": "malformed too"}),
        );
        for input in [
            bootstrap(),
            delegated(&["r:read"], &["r:read"], &["reader"]),
            delegated(&["r:read"], &["r:write"], &["reader"]),
            workload(json!(["x"])),
            mandate("r:read", "resource://r", &["reader"]),
            mandate("r:read", "resource://elsewhere", &["reader"]),
        ] {
            assert_eq!(reason(&data, &input), "restriction_active");
        }
    }
    // An empty collection or a scalar restricts nothing.
    for restrict in [json!([]), json!({}), json!("freeze"), json!(1)] {
        let data = with(zone(), json!({"restrict": restrict}));
        assert_eq!(allowed_by(&data, &bootstrap()), "caracal-bootstrap");
    }
}

// --- malformed data -------------------------------------------------------------------------

#[test]
fn malformed_risk_then_approval_fail_mints_closed() {
    let bad_risk = with(
        zone(),
        json!({"risk": [{"scope": "r:read"}], "approval_tiers": "x"}),
    );
    let bad_approval = with(
        zone(),
        json!({"approval_tiers": [{"tier": "t", "ttl_seconds": -1}]}),
    );
    for input in [
        delegated(&["r:read"], &["r:read"], &["reader"]),
        // Even a delegated mint that would otherwise fail later.
        delegated(&["t:read"], &["nothing"], &["nobody"]),
        workload(json!(["x"])),
    ] {
        assert_eq!(reason(&bad_risk, &input), "malformed_risk_data");
        assert_eq!(reason(&bad_approval, &input), "malformed_approval_data");
    }
}

// --- diagnostics ----------------------------------------------------------------------------

#[test]
fn mint_diagnostics_step_up_then_sorted_risk() {
    let data = with(
        zone(),
        json!({
            "risk": [
                {"scope": "r:write", "tier": "high"},
                {"scope": "r:read", "tier": "low"},
                {"scope": "r:write", "tier": "high"},
                {"scope": "unrequested", "tier": "critical"}
            ],
            "approval_tiers": [
                {"tier": "high", "ttl_seconds": 600},
                {"tier": "critical"},
                {"tier": "high", "approver": "any"},
                {"tier": "high", "ttl_seconds": 600},
                {"tier": "low", "privacy": "pseudonymous"}
            ]
        }),
    );
    let decision = decide(
        &data,
        &delegated(&["r:write", "r:read"], &["r:read", "r:write"], &["writer"]),
    );
    assert_eq!(
        decision.diagnostics,
        vec![
            json!({"step_up_required": {"type": "human_approval", "tiers": [
                {"approver": "any", "tier": "high"},
                {"privacy": "pseudonymous", "tier": "low"},
                {"tier": "high", "ttl_seconds": 600}
            ]}}),
            json!({"risk": [{"scope": "r:read", "tier": "low"}, {"scope": "r:write", "tier": "high"}]}),
        ]
    );
    assert_eq!(decision.step_up_tiers().map(Vec::len), Some(3));
    // Risk without a gate: only the risk entry.
    let ungated = with(
        zone(),
        json!({"risk": [{"scope": "r:read", "tier": "low"}]}),
    );
    let decision = decide(&ungated, &delegated(&["r:read"], &["r:read"], &["reader"]));
    assert_eq!(
        decision.diagnostics,
        vec![json!({"risk": [{"scope": "r:read", "tier": "low"}]})]
    );
    assert_eq!(decision.step_up_tiers(), None);
    // Workload mints carry the same diagnostics.
    let decision = decide(&data, &workload(json!(["r:read"])));
    assert_eq!(decision.diagnostics.len(), 2);
}

#[test]
fn two_tiers_for_a_requested_scope_is_an_evaluation_error_on_allow_only() {
    let data = with(
        zone(),
        json!({"risk": [{"scope": "r:read", "tier": "low"}, {"scope": "r:read", "tier": "high"}]}),
    );
    assert!(matches!(
        bundle(&data).decide(&delegated(&["r:read"], &["r:read"], &["reader"])),
        Err(PolicyError::Conflict(_))
    ));
    assert!(matches!(
        bundle(&data).decide(&workload(json!(["r:read"]))),
        Err(PolicyError::Conflict(_))
    ));
    // Denies never compute diagnostics, and scopes not requested are not looked at.
    assert_eq!(
        reason(&data, &delegated(&["r:read"], &["r:read"], &["auditor"])),
        "role_scope_mismatch"
    );
    assert_eq!(
        allowed_by(&data, &workload(json!(["other"]))),
        "caracal-workload-mint"
    );
}

// --- Rego-form documents --------------------------------------------------------------------

#[test]
fn rego_form_documents_load_merge_and_decide() {
    let grants = "# caracal:data-document\npackage caracal.authz\nimport rego.v1\n\
        app_ids := {\"app\": \"app-1\"}\n\
        grants := {\n  \"resource://r\": {\n    \"application\": \"app\",\n    \"roles\": {\"reader\": [\"r:read\"]}\n  }\n}\n";
    let risk = "# caracal:data-document\npackage caracal.authz\n\
        risk := [{\"scope\": \"r:read\", \"tier\": \"high\"}]\n\
        approval_tiers := [{\"tier\": \"high\", \"approver\": \"operator\"}]\n\
        app_ids := {\"app\": \"app-1\"}\n";
    let documents = [
        parse(grants).expect("grants document"),
        parse(risk).expect("risk document"),
    ];
    let bundle = PolicyBundle::compile(&documents).expect("bundle");
    let decision = bundle
        .decide(&delegated(&["r:read"], &["r:read"], &["reader"]))
        .expect("decision");
    assert_eq!(decision.policy_name(), Some("caracal-app-mint"));
    assert_eq!(
        decision.step_up_tiers(),
        Some(&vec![json!({"approver": "operator", "tier": "high"})])
    );

    let conflicting =
        parse("# caracal:data-document\npackage caracal.authz\napp_ids := {\"app\": \"app-2\"}\n")
            .expect("document");
    assert_eq!(
        PolicyBundle::compile(&[documents[0].clone(), conflicting]).err(),
        Some(PolicyError::ConflictingData("app_ids".into()))
    );
    let mut forged = documents[0].clone();
    forged
        .values
        .insert("result".into(), json!({"decision": "allow"}));
    assert_eq!(
        PolicyBundle::compile(&[forged]).err(),
        Some(PolicyError::ForbiddenName("result".into()))
    );
}

// --- limits ---------------------------------------------------------------------------------

#[test]
fn reaching_a_limit_denies_closed() {
    let limited = bundle(&zone()).with_limits(AuthorizerLimits {
        max_facts: 5,
        ..contract::default_limits()
    });
    let decision = limited
        .decide(&delegated(&["r:read"], &["r:read"], &["reader"]))
        .expect("decision");
    assert_eq!(
        decision.to_json(),
        json!({"decision":"deny","evaluation_status":"complete","determining_policies":[],"diagnostics":[{"reason":"evaluation_limit_exceeded"}]})
    );
    let few_queries = bundle(&zone()).with_limits(AuthorizerLimits {
        max_iterations: 3,
        ..contract::default_limits()
    });
    assert_eq!(
        few_queries
            .decide(&delegated(&["r:read"], &["r:read"], &["reader"]))
            .expect("decision")
            .deny_reason(),
        Some("evaluation_limit_exceeded")
    );
    let no_time = bundle(&zone()).with_limits(AuthorizerLimits {
        max_time: std::time::Duration::ZERO,
        ..contract::default_limits()
    });
    assert_eq!(
        no_time
            .decide(&bootstrap())
            .expect("decision")
            .deny_reason(),
        Some("evaluation_limit_exceeded")
    );
}

// --- input ----------------------------------------------------------------------------------

#[test]
fn input_round_trips_and_omits_empty_members() {
    let spec = json!({"schema_version":"2026-05-20",
        "principal":{"type":"Application","id":"app-1","zone_id":"z1","registration_method":"manual","agent_session_id":"s-child","lifecycle":"task","labels":["reader"]},
        "resource":{"type":"Resource","id":"row-1","identifier":"resource://pipernet","scopes":["pipernet:read"]},
        "action":{"id":"TokenExchange","method":"GET","path":"/v1/items"},
        "session":{"id":"ar-1"},
        "delegation_edge":{"id":"d-1","source_session_id":"s-p","target_session_id":"s-child","issuer_application_id":"app-0","receiver_application_id":"app-1","resource_id":"row-1","scopes":["pipernet:read"],"edge_version":2,"path":["d-0","d-1"],"graph_epoch":7,"constraints_json":{"max_hops":1}},
        "context":{"actor_claims":{"caracal_client_id":"app-1"},"subject_claims":{"sub":"x"},"trace_id":"req-1",
          "session_id":"ar-1","agent_session_id":"s-child","delegation_edge_id":"d-1","challenge_resolved":false,"requested_scopes":["pipernet:read"]}});
    let parsed = input(spec.clone());
    assert_eq!(serde_json::to_value(&parsed).expect("serialises"), spec);
    let back: DecisionInput =
        serde_json::from_value(serde_json::to_value(&parsed).expect("serialises"))
            .expect("decodes");
    assert_eq!(back, parsed);

    let sparse = input(json!({
        "schema_version": "",
        "principal": {"type": "Workload", "id": "wl", "zone_id": "z", "labels": [], "lifecycle": ""},
        "resource": {"type": "Resource", "id": "r", "identifier": "resource://x", "scopes": null},
        "action": {"id": "CredentialInjection", "method": ""},
        "context": {"actor_claims": null, "subject_claims": {}, "agent_session_id": "",
                    "challenge_resolved": false, "requested_scopes": null}
    }));
    assert_eq!(sparse.schema_version, INPUT_SCHEMA_VERSION);
    assert_eq!(
        serde_json::to_value(&sparse).expect("serialises"),
        json!({"schema_version":"2026-05-20",
               "principal":{"type":"Workload","id":"wl","zone_id":"z"},
               "resource":{"type":"Resource","id":"r","identifier":"resource://x","scopes":[]},
               "action":{"id":"CredentialInjection"},
               "context":{"actor_claims":{},"challenge_resolved":false,"requested_scopes":[]}})
    );
}

#[test]
fn other_schema_versions_fail_evaluation() {
    let mut odd = bootstrap();
    odd.schema_version = "2025-01-01".into();
    assert_eq!(
        bundle(&zone()).decide(&odd).err(),
        Some(PolicyError::UnsupportedSchemaVersion("2025-01-01".into()))
    );
    assert!(PolicyBundle::deny_all().decide(&odd).is_err());
    let missing: DecisionInput = serde_json::from_value(json!({})).expect("decodes");
    assert_eq!(missing.schema_version, INPUT_SCHEMA_VERSION);
}

#[test]
fn contract_identity() {
    assert_eq!(DECISION_CONTRACT_VERSION, "2026-07-12");
    let sha = decision_contract_sha256();
    assert_eq!(sha.len(), 64);
    assert!(sha.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(sha, crate::digest::sha256_hex(contract::SOURCE.as_bytes()));
}

#[test]
fn the_bench_fixture_is_a_gated_delegated_mint() {
    let (bundle, input) = fixtures::bench_fixture_100_grants();
    let decision = bundle.decide(&input).expect("decision");
    assert_eq!(decision.policy_name(), Some("caracal-app-42-mint"));
    assert!(decision.step_up_tiers().is_some());
}

#[test]
#[ignore = "timing: cargo test --release -p caracal-core --lib decision_median -- --ignored --nocapture"]
fn decision_median_on_the_100_grant_fixture() {
    let (bundle, input) = fixtures::bench_fixture_100_grants();
    let mut samples = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let start = std::time::Instant::now();
        let decision = bundle.decide(&input).expect("fixture decides");
        samples.push(start.elapsed());
        assert!(decision.allow, "{}", decision.to_json());
    }
    samples.sort();
    let at = |p: usize| samples[samples.len() * p / 100];
    println!(
        "decision p10 {:?} p50 {:?} p90 {:?} p99 {:?}",
        at(10),
        at(50),
        at(90),
        at(99)
    );
}
