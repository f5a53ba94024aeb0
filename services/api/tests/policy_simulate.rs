//! `POST /v1/zones/{z}/policy-sets/{id}/simulate` evaluates with the decision contract in
//! process, and a manifest whose documents cannot compile together is refused when the version
//! is created. Driven over HTTP as the admin SDK drives it.

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::test::{self, TestRequest};
use caracal_api::{api_app, ApiConfig, ApiState};
use caracal_core::manage::{Management, ManagementConfig};
use caracal_crypto::{Argon2idHasher, EnvelopeSealer, Kek, RandomSecrets};
use caracal_http::metrics::HttpCounters;
use caracal_memory::{MemoryBus, MemoryRateLimiter, MemoryStore, SystemClock, UuidV7Ids};
use serde_json::{json, Value};

const TOKEN: &str = "cat_test_bootstrap_token";

async fn state() -> ApiState {
    let store = MemoryStore::new();
    let management = Management::new(
        Arc::new(store.clone()),
        Arc::new(SystemClock),
        Arc::new(UuidV7Ids),
        Arc::new(EnvelopeSealer::new(
            Kek::generate().expect("kek"),
            Vec::new(),
        )),
        Arc::new(Argon2idHasher::with_params(256, 1, 1).expect("params")),
        Arc::new(RandomSecrets::new()),
        None,
        ManagementConfig::default(),
    );
    management.seed_bootstrap_token(TOKEN).await.expect("seed");
    ApiState {
        management,
        outbox: Arc::new(store.clone()),
        bus: Arc::new(MemoryBus::new()),
        store: Arc::new(store),
        audit: Arc::new(caracal_memory::MemoryLedger::new(Arc::new(SystemClock))),
        counters: Arc::new(HttpCounters::default()),
        limiter: Arc::new(MemoryRateLimiter::new()),
        config: Arc::new(ApiConfig::default()),
    }
}

async fn call<S, B>(app: &S, method: &str, path: &str, body: Option<Value>) -> (u16, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let mut req = TestRequest::default()
        .method(method.parse().expect("method"))
        .uri(path)
        .insert_header(("authorization", format!("Bearer {TOKEN}")));
    if let Some(body) = body {
        req = req.set_json(body);
    }
    let res = test::call_service(app, req.to_request()).await;
    let status = res.status().as_u16();
    let bytes = test::read_body(res).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn document(body: &str) -> String {
    format!("# caracal:data-document\npackage caracal.authz\nimport rego.v1\n{body}")
}

/// Creates a policy with `content` and returns its version id.
async fn policy<S, B>(app: &S, zone: &str, name: &str, content: &str) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let (status, policy) = call(
        app,
        "POST",
        &format!("/v1/zones/{zone}/policies"),
        Some(json!({"name": name, "content": content})),
    )
    .await;
    assert_eq!(status, 201, "{policy}");
    policy["version_id"].as_str().expect("version").to_owned()
}

#[actix_web::test]
async fn simulate_evaluates_in_process_and_bad_bundles_are_refused() {
    let app = test::init_service(api_app!(state().await)).await;
    let (status, zone) = call(&app, "POST", "/v1/zones", Some(json!({"name": "Sim"}))).await;
    assert_eq!(status, 201, "{zone}");
    let z = zone["id"].as_str().expect("zone id").to_owned();

    let grants = policy(
        &app,
        &z,
        "grants",
        &document(
            "app_ids := {\"app\": \"app-1\"}\n\
             grants := {\"resource://r\": {\"application\": \"app\", \"roles\": {\"reader\": [\"r:read\"]}}}\n",
        ),
    )
    .await;
    let risk = policy(
        &app,
        &z,
        "risk",
        &document(
            "risk := [{\"scope\": \"r:read\", \"tier\": \"high\"}]\n\
             approval_tiers := [{\"tier\": \"high\"}]\n",
        ),
    )
    .await;
    let (_, set) = call(
        &app,
        "POST",
        &format!("/v1/zones/{z}/policy-sets"),
        Some(json!({"name": "main"})),
    )
    .await;
    let s = set["id"].as_str().expect("set id").to_owned();
    let (status, version) = call(
        &app,
        "POST",
        &format!("/v1/zones/{z}/policy-sets/{s}/versions"),
        Some(json!({"manifest": [{"policy_version_id": grants}, {"policy_version_id": risk}]})),
    )
    .await;
    assert_eq!(status, 201, "{version}");
    let v = version["version_id"].as_str().expect("version").to_owned();
    let sha = version["manifest_sha256"].clone();

    // A delegated mint the documents allow behind an approval gate.
    let input = json!({
        "schema_version": "2026-05-20",
        "principal": {"type": "Application", "id": "app-1", "zone_id": z, "labels": ["reader"]},
        "resource": {"type": "Resource", "id": "res", "identifier": "resource://r", "scopes": ["r:read"]},
        "action": {"id": "TokenExchange"},
        "delegation_edge": {"id": "d-1", "scopes": ["r:read"]},
        "context": {"actor_claims": {}, "agent_session_id": "s-1", "delegation_edge_id": "d-1",
                    "challenge_resolved": false, "requested_scopes": ["r:read"]}
    });
    let simulate = format!("/v1/zones/{z}/policy-sets/{s}/simulate");
    let (status, out) = call(
        &app,
        "POST",
        &simulate,
        Some(json!({"version_id": v, "input": input})),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["dry_run"], true);
    assert_eq!(out["would_activate"], true);
    assert_eq!(out["warnings"], json!([]));
    assert_eq!(out["manifest_sha256"], sha);
    assert_eq!(out["policies"], json!([grants, risk]));
    assert_eq!(out["explanation"]["evaluation"], "executed");
    assert_eq!(out["explanation"]["decision"], "allow");
    assert_eq!(out["explanation"]["policy_set_version_id"], v);
    assert_eq!(
        out["result"],
        json!({"decision": "allow", "evaluation_status": "complete",
        "determining_policies": [{"policy": "caracal-app-mint"}],
        "diagnostics": [
            {"step_up_required": {"type": "human_approval", "tiers": [{"tier": "high"}]}},
            {"risk": [{"scope": "r:read", "tier": "high"}]}
        ]})
    );

    // Without an input nothing is evaluated and nothing is warned about.
    let (status, out) = call(&app, "POST", &simulate, Some(json!({"version_id": v}))).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["explanation"]["evaluation"], "not_executed");
    assert_eq!(out["result"], Value::Null);
    assert_eq!(out["would_activate"], true);

    // An input of another zone and shape still evaluates, with warnings.
    let (status, out) = call(
        &app,
        "POST",
        &simulate,
        Some(json!({"version_id": v, "input": {"principal": {"zone_id": "elsewhere"}}})),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["would_activate"], false);
    assert_eq!(
        out["warnings"],
        json!([
            "principal_zone_mismatch",
            "missing_resource",
            "missing_action",
            "missing_context"
        ])
    );
    assert_eq!(
        out["result"]["diagnostics"],
        json!([{"reason": "no_rule_matched"}])
    );

    // An evaluation failure is reported, not thrown.
    let (status, out) = call(
        &app,
        "POST",
        &simulate,
        Some(json!({"version_id": v, "input": {"schema_version": "2020-01-01"}})),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["explanation"]["evaluation"], "failed");
    assert_eq!(out["result"], Value::Null);
    assert_eq!(
        out["warnings"],
        json!([
            "input_schema_mismatch:2020-01-01",
            "principal_zone_mismatch",
            "missing_resource",
            "missing_action",
            "missing_context",
            "sts_simulation_failed:policy_eval_failed"
        ])
    );
    let (status, out) = call(
        &app,
        "POST",
        &simulate,
        Some(json!({"version_id": v, "input": {"principal": {"labels": "not a list"}}})),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["explanation"]["evaluation"], "failed");
    assert!(out["warnings"]
        .as_array()
        .is_some_and(|w| w.contains(&json!("sts_simulation_failed:invalid_token"))));

    // Two documents that define app_ids differently cannot be one bundle.
    let other = policy(
        &app,
        &z,
        "other-apps",
        &document("app_ids := {\"app\": \"app-2\"}\n"),
    )
    .await;
    let (status, refused) = call(
        &app,
        "POST",
        &format!("/v1/zones/{z}/policy-sets/{s}/versions"),
        Some(json!({"manifest": [{"policy_version_id": grants}, {"policy_version_id": other}]})),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"], "invalid_policy_bundle");
    assert!(refused["error_description"]
        .as_str()
        .is_some_and(|d| d.contains("app_ids")));
}
