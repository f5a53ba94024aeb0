//! Fixtures for the decision benchmark: a zone of 100 grants and a delegated mint against one
//! of them, the shape the architecture's measurements use.

use serde_json::{json, Map, Value};

use crate::policy_document::parse;

use super::{DecisionInput, PolicyBundle};

/// A compiled zone of 100 grants (with confinement, risk and approval rows) and a delegated
/// mint input for grant 42 that the contract allows with a step-up gate.
pub fn bench_fixture_100_grants() -> (PolicyBundle, DecisionInput) {
    let mut app_ids = Map::new();
    let mut grants = Map::new();
    for i in 0..100 {
        app_ids.insert(format!("app-{i}"), json!(format!("app-id-{i}")));
        grants.insert(
            format!("resource://r-{i}"),
            json!({
                "application": format!("app-{i}"),
                "roles": {
                    "reader": [format!("r-{i}:read")],
                    "writer": [format!("r-{i}:read"), format!("r-{i}:write")],
                }
            }),
        );
    }
    let document = format!(
        "# caracal:data-document\npackage caracal.authz\nimport rego.v1\n\
         app_ids := {}\ngrants := {}\n\
         confinement := [{{\"label_prefix\": \"contractor-\", \"scopes\": [\"r-42:read\"]}}, {{\"label_prefix\": \"read\", \"scopes\": [\"r-42:read\", \"r-42:write\"]}}]\n\
         risk := [{{\"scope\": \"r-42:write\", \"tier\": \"high\"}}, {{\"scope\": \"r-7:read\", \"tier\": \"low\"}}]\n\
         approval_tiers := [{{\"tier\": \"high\", \"approver\": \"operator\", \"ttl_seconds\": 600}}]\n",
        Value::Object(app_ids),
        Value::Object(grants),
    );
    // The fixture is fixed text: failing to parse or compile it is a defect of this file.
    let document = parse(&document).expect("fixture document parses");
    let bundle = PolicyBundle::compile(&[document]).expect("fixture bundle compiles");
    let input: DecisionInput = serde_json::from_value(json!({
        "schema_version": "2026-05-20",
        "principal": {"type": "Application", "id": "app-id-42", "zone_id": "z1",
                      "agent_session_id": "s-child", "lifecycle": "task", "labels": ["writer"]},
        "resource": {"type": "Resource", "id": "res-42", "identifier": "resource://r-42",
                     "scopes": ["r-42:read", "r-42:write"]},
        "action": {"id": "TokenExchange"},
        "session": {"id": "ar-1"},
        "delegation_edge": {"id": "d-1", "source_session_id": "s-parent",
                            "target_session_id": "s-child", "scopes": ["r-42:read", "r-42:write"]},
        "context": {"actor_claims": {"caracal_client_id": "app-id-42"}, "trace_id": "req-1",
                    "session_id": "ar-1", "agent_session_id": "s-child", "delegation_edge_id": "d-1",
                    "challenge_resolved": false, "requested_scopes": ["r-42:read", "r-42:write"]}
    }))
    .expect("fixture input decodes");
    (bundle, input)
}
