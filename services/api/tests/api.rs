//! Service tests: the real actix app in process, on memory adapters, driven over HTTP shapes
//! the admin SDK uses. Each test asserts what a user would notice: status, error code, fields,
//! and for bad input that nothing was written.

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::test::{self, TestRequest};
use caracal_api::{api_app, ApiConfig, ApiState};
use caracal_core::manage::{Management, ManagementConfig};
use caracal_core::model::OutboxMessage;
use caracal_core::ports::store::{Page, Store, ZoneScope};
use caracal_crypto::{Argon2idHasher, EnvelopeSealer, HmacSha256, Kek, RandomSecrets};
use caracal_http::metrics::HttpCounters;
use caracal_memory::{MemoryBus, MemoryRateLimiter, MemoryStore, SystemClock, UuidV7Ids};
use serde_json::{json, Value};

const TOKEN: &str = "cat_test_bootstrap_token";

struct Harness {
    store: MemoryStore,
    state: ApiState,
}

async fn harness() -> Harness {
    harness_with(ApiConfig::default()).await
}

async fn harness_with(config: ApiConfig) -> Harness {
    let store = MemoryStore::new();
    let kek = Kek::generate().expect("kek");
    // Cheap Argon2 parameters keep tests fast; production parameters are covered in caracal-crypto.
    let hasher = Argon2idHasher::with_params(256, 1, 1).expect("params");
    let management = Management::new(
        Arc::new(store.clone()),
        Arc::new(SystemClock),
        Arc::new(UuidV7Ids),
        Arc::new(EnvelopeSealer::new(kek, Vec::new())),
        Arc::new(hasher),
        Arc::new(RandomSecrets::new()),
        Some(Arc::new(HmacSha256::from_bytes(&[7u8; 32]))),
        ManagementConfig::default(),
    );
    management.seed_bootstrap_token(TOKEN).await.expect("seed");
    let state = ApiState {
        management,
        outbox: Arc::new(store.clone()),
        bus: Arc::new(MemoryBus::new()),
        store: Arc::new(store.clone()),
        audit: Arc::new(caracal_memory::MemoryLedger::new(Arc::new(SystemClock))),
        counters: Arc::new(HttpCounters::default()),
        limiter: Arc::new(MemoryRateLimiter::new()),
        config: Arc::new(config),
    };
    Harness { store, state }
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
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    (status, value)
}

async fn raw<S, B>(app: &S, req: TestRequest) -> (u16, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let res = test::call_service(app, req.to_request()).await;
    let status = res.status().as_u16();
    let bytes = test::read_body(res).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

const DOC: &str = "# caracal:data-document\npackage caracal.authz\nimport rego.v1\napp_ids := {\"a\":\"a\"}\ngrants := {}\n";

async fn outbox_rows(store: &MemoryStore, stream: &str) -> Vec<OutboxMessage> {
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    let mut out = Vec::new();
    if let Some(m) = uow.find_latest_outbox(stream, &[]).await.expect("outbox") {
        out.push(m);
    }
    out
}

#[actix_web::test]
async fn full_management_flow() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;

    let (status, zone) = call(
        &app,
        "POST",
        "/v1/zones",
        Some(json!({"name": "Payments Team"})),
    )
    .await;
    assert_eq!(status, 201, "{zone}");
    assert_eq!(zone["slug"], "payments-team");
    let z = zone["id"].as_str().expect("zone id").to_owned();

    let (status, app_row) = call(
        &app,
        "POST",
        &format!("/v1/zones/{z}/applications"),
        Some(json!({"name": "agent", "registration_method": "managed"})),
    )
    .await;
    assert_eq!(status, 201, "{app_row}");
    let secret = app_row["client_secret"]
        .as_str()
        .expect("secret")
        .to_owned();
    assert!(secret.starts_with("cs_") && secret.len() == 46);
    let a = app_row["id"].as_str().expect("app id").to_owned();

    let (status, revealed) = call(
        &app,
        "GET",
        &format!("/v1/zones/{z}/applications/{a}/client-secret"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(revealed["client_secret"], secret);
    let reveal_events = outbox_rows(&h.store, "caracal.audit.events").await;
    assert_eq!(
        reveal_events.len(),
        1,
        "reveal is audited through the outbox"
    );
    assert!(reveal_events[0].fields.contains_key("sig"));

    let (status, rotated) = call(
        &app,
        "POST",
        &format!("/v1/zones/{z}/applications/{a}/rotate-secret"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_ne!(rotated["client_secret"], secret);

    let (status, provider) = call(
        &app,
        "POST",
        &format!("/v1/zones/{z}/providers"),
        Some(json!({"name": "Upstream", "kind": "api_key", "config_json": {"header_name": "X-Api-Key", "api_key": "k-123"}})),
    )
    .await;
    assert_eq!(status, 201, "{provider}");
    assert_eq!(provider["identifier"], "provider://upstream");
    assert_eq!(provider["secret_config_keys"], json!(["api_key"]));
    assert!(
        !provider.to_string().contains("k-123"),
        "a provider secret is never returned"
    );
    let p = provider["id"].as_str().expect("provider id").to_owned();

    let (status, resource) = call(
        &app,
        "POST",
        &format!("/v1/zones/{z}/resources"),
        Some(json!({"name": "Reports", "scopes": ["reports:read"], "upstream_url": "https://reports.example.com", "credential_provider_id": p})),
    )
    .await;
    assert_eq!(status, 201, "{resource}");
    assert_eq!(resource["identifier"], "resource://reports");

    let (status, policy) = call(
        &app,
        "POST",
        &format!("/v1/zones/{z}/policies"),
        Some(json!({"name": "grants", "content": DOC})),
    )
    .await;
    assert_eq!(status, 201, "{policy}");
    let pv = policy["version_id"]
        .as_str()
        .expect("version id")
        .to_owned();
    let (status, set) = call(
        &app,
        "POST",
        &format!("/v1/zones/{z}/policy-sets"),
        Some(json!({"name": "main"})),
    )
    .await;
    assert_eq!(status, 201);
    assert!(set.get("active_version_id").is_none());
    let s = set["id"].as_str().expect("set id").to_owned();
    let (status, version) = call(
        &app,
        "POST",
        &format!("/v1/zones/{z}/policy-sets/{s}/versions"),
        Some(json!({"manifest": [{"policy_version_id": pv}]})),
    )
    .await;
    assert_eq!(status, 201, "{version}");
    let v = version["version_id"]
        .as_str()
        .expect("set version")
        .to_owned();
    let (status, activated) = call(
        &app,
        "POST",
        &format!("/v1/zones/{z}/policy-sets/{s}/activate"),
        Some(json!({"version_id": v})),
    )
    .await;
    assert_eq!(status, 202, "{activated}");
    assert_eq!(activated["activated"], true);
    let invalidations = outbox_rows(&h.store, "caracal.policy.invalidate").await;
    assert_eq!(invalidations.len(), 1);
    assert_eq!(
        invalidations[0]
            .fields
            .get("policy_set_version_id")
            .map(String::as_str),
        Some(v.as_str())
    );
    let (status, got) = call(&app, "GET", &format!("/v1/zones/{z}/policy-sets/{s}"), None).await;
    assert_eq!(status, 200);
    assert_eq!(got["active_version_id"], v);
    let status_url = activated["status_url"]
        .as_str()
        .expect("status url")
        .to_owned();
    let (status, progress) = call(&app, "GET", &status_url, None).await;
    assert_eq!(status, 200, "{progress}");
    assert_eq!(progress["active"], true);
    assert_eq!(progress["outbox"]["state"], "pending");

    // Every mutation above left a chained admin-audit record in the zone's chain.
    let mut uow = h.store.begin(&ZoneScope::All).await.expect("begin");
    let chain = uow
        .list_admin_audit(
            Some(&z),
            &Page {
                limit: 100,
                after: None,
            },
        )
        .await
        .expect("audit");
    let mut oldest_first = chain.clone();
    oldest_first.reverse();
    caracal_core::manage::admin_audit::verify_chain(&oldest_first).expect("chain verifies");
    assert!(
        chain.len() >= 8,
        "one record per mutation, got {}",
        chain.len()
    );
    assert!(
        chain
            .iter()
            .all(|r| !r.payload_json.to_string().contains("k-123")),
        "audit never stores values"
    );
}

#[actix_web::test]
async fn authentication_and_unknown_routes() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let (status, body) = raw(&app, TestRequest::get().uri("/v1/zones")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_admin_token"))
    );
    let (status, body) = raw(
        &app,
        TestRequest::get()
            .uri("/v1/zones")
            .insert_header(("authorization", "Bearer nope")),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_admin_token"))
    );
    let (status, body) = raw(
        &app,
        TestRequest::get()
            .uri("/v1/nothing-here")
            .insert_header(("authorization", format!("Bearer {TOKEN}"))),
    )
    .await;
    assert_eq!((status, body["statusCode"].as_i64()), (404, Some(404)));
    let (status, body) = raw(&app, TestRequest::get().uri("/health")).await;
    assert_eq!((status, body["ok"].as_bool()), (200, Some(true)));
    let (status, _) = raw(&app, TestRequest::get().uri("/ready")).await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn bad_input_is_typed_and_writes_nothing() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let (_, zone) = call(&app, "POST", "/v1/zones", Some(json!({"name": "z"}))).await;
    let z = zone["id"].as_str().expect("zone").to_owned();
    let apps = format!("/v1/zones/{z}/applications");

    let cases: Vec<(TestRequest, u16, &str)> = vec![
        (TestRequest::post().uri(&apps).insert_header(("content-type", "application/json")).set_payload("{not json"), 400, "invalid_json"),
        (TestRequest::post().uri(&apps).set_json(json!({"name": 123, "registration_method": "managed"})), 400, "invalid_application"),
        (TestRequest::post().uri(&apps).set_json(json!({"name": "x", "registration_method": "managed", "extra": 1})), 400, "invalid_application"),
        (TestRequest::post().uri(&apps).set_json(json!({"name": "x", "registration_method": "dcr"})), 400, "invalid_application"),
        (TestRequest::post().uri(&apps).set_payload(vec![b' '; 1_048_577]), 413, "payload_too_large"),
        (TestRequest::get().uri(&format!("/v1/zones/{z}/applications/bad%20id")), 400, "invalid_params"),
        (TestRequest::get().uri(&format!("/v1/zones/{z}/applications?limit=0")), 400, "invalid_query"),
        (TestRequest::post().uri(&format!("/v1/zones/{z}/resources")).set_json(json!({"name": "r", "identifier": "not a uri", "scopes": ["a"]})), 400, "invalid_resource_identifier"),
        (TestRequest::post().uri(&format!("/v1/zones/{z}/providers")).set_json(json!({"name": "p", "kind": "api_key", "config_json": {"header_name": "X-K", "api_key": "k", "bogus": true}})), 400, "invalid_provider_config"),
        (TestRequest::post().uri(&format!("/v1/zones/{z}/policies")).set_json(json!({"name": "p", "content": "package other\n"})), 422, "invalid_rego"),
        (TestRequest::post().uri("/v1/zones/nope/applications").set_json(json!({"name": "x", "registration_method": "managed"})), 404, "zone_not_found"),
    ];
    for (req, want_status, want_code) in cases {
        let (status, body) = raw(
            &app,
            req.insert_header(("authorization", format!("Bearer {TOKEN}"))),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (want_status, Some(want_code)),
            "{body}"
        );
    }
    for path in [
        apps.clone(),
        format!("/v1/zones/{z}/resources"),
        format!("/v1/zones/{z}/providers"),
        format!("/v1/zones/{z}/policies"),
    ] {
        let (_, list) = call(&app, "GET", &path, None).await;
        assert_eq!(list["items"], json!([]), "nothing written at {path}");
    }

    let (status, _) = call(
        &app,
        "POST",
        &apps,
        Some(json!({"name": "Agent", "registration_method": "managed"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = call(
        &app,
        "POST",
        &apps,
        Some(json!({"name": "agent", "registration_method": "managed"})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("application_name_taken"))
    );
    let (_, other) = call(&app, "POST", "/v1/zones", Some(json!({"name": "other"}))).await;
    let (_, list) = call(&app, "GET", &apps, None).await;
    let a = list["items"][0]["id"].as_str().expect("app").to_owned();
    let other_zone = other["id"].as_str().expect("zone").to_owned();
    let (status, body) = call(
        &app,
        "GET",
        &format!("/v1/zones/{other_zone}/applications/{a}"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("application_not_found")),
        "ids from another zone are not found"
    );
}

#[actix_web::test]
async fn pagination_follows_cursors_to_the_end() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    for i in 0..5 {
        call(
            &app,
            "POST",
            "/v1/zones",
            Some(json!({"name": format!("zone {i}")})),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut uri = "/v1/zones?limit=2".to_owned();
    loop {
        let (status, page) = call(&app, "GET", &uri, None).await;
        assert_eq!(status, 200);
        for item in page["items"].as_array().expect("items") {
            seen.push(item["id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/v1/zones?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((seen.len(), unique.len()), (5, 5));
}

#[actix_web::test]
async fn grants_and_templates() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let (_, zone) = call(&app, "POST", "/v1/zones", Some(json!({"name": "g"}))).await;
    let z = zone["id"].as_str().expect("zone").to_owned();
    let (_, a) = call(
        &app,
        "POST",
        &format!("/v1/zones/{z}/applications"),
        Some(json!({"name": "a", "registration_method": "managed"})),
    )
    .await;
    let (_, p) = call(
        &app,
        "POST",
        &format!("/v1/zones/{z}/providers"),
        Some(json!({"name": "p", "kind": "bearer_token", "config_json": {"bearer_token": "t"}})),
    )
    .await;
    let (_, r) = call(
        &app,
        "POST",
        &format!("/v1/zones/{z}/resources"),
        Some(json!({"name": "r", "scopes": ["r:read", "r:write"], "upstream_url": "https://r.example", "credential_provider_id": p["id"]})),
    )
    .await;
    let grants = format!("/v1/zones/{z}/grants");
    let body = |scopes: Value| json!({"application_id": a["id"], "user_id": "user-1", "resource_id": r["id"], "scopes": scopes});
    let (status, err) = call(&app, "POST", &grants, Some(body(json!(["r:admin"])))).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (403, Some("grant_scopes_exceed_resource"))
    );
    let (status, grant) = call(&app, "POST", &grants, Some(body(json!(["r:read"])))).await;
    assert_eq!(
        (status, grant["status"].as_str()),
        (201, Some("active")),
        "{grant}"
    );
    let (_, list) = call(
        &app,
        "GET",
        &format!("{grants}?scopes=r:read&user_id=user-1"),
        None,
    )
    .await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["items"][0]["provider_kind"], "bearer_token");
    let (_, none) = call(&app, "GET", &format!("{grants}?scopes=r:write"), None).await;
    assert_eq!(none["items"], json!([]));
    let g = grant["id"].as_str().expect("grant").to_owned();
    assert_eq!(
        call(&app, "DELETE", &format!("{grants}/{g}"), None).await.0,
        204
    );
    assert_eq!(
        call(&app, "DELETE", &format!("{grants}/{g}"), None).await.0,
        204,
        "revoking twice is fine"
    );
    let (_, revoked) = call(&app, "GET", &format!("{grants}/{g}"), None).await;
    assert_eq!(revoked["status"], "revoked");

    let (status, templates) = call(&app, "GET", "/v1/policy-templates", None).await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = templates
        .as_array()
        .expect("bare array")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "application-bindings",
            "resource-grants",
            "label-confinement",
            "zone-restriction"
        ]
    );
}

#[actix_web::test]
async fn rate_limits_per_address_and_failed_auth() {
    let h = harness_with(ApiConfig {
        v1_rate_limit_per_min: 5,
        auth_fail_limit_per_min: 2,
        ..ApiConfig::default()
    })
    .await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let bad = || {
        TestRequest::get()
            .uri("/v1/zones")
            .insert_header(("authorization", "Bearer wrong"))
            .peer_addr("10.0.0.9:1000".parse().expect("addr"))
    };
    assert_eq!(raw(&app, bad()).await.0, 401);
    assert_eq!(raw(&app, bad()).await.0, 401);
    let (status, body) = raw(&app, bad()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited")),
        "third failure in a minute"
    );
    let good = TestRequest::get()
        .uri("/v1/zones")
        .insert_header(("authorization", format!("Bearer {TOKEN}")))
        .peer_addr("10.0.0.9:1000".parse().expect("addr"));
    assert_eq!(
        raw(&app, good).await.0,
        429,
        "a guessing address is refused even with a good token"
    );

    // The token already spent one of its five requests from the refused address: the actor
    // budget is per credential, whatever address it comes from.
    let ok = || {
        TestRequest::get()
            .uri("/v1/zones")
            .insert_header(("authorization", format!("Bearer {TOKEN}")))
            .peer_addr("10.0.0.7:1000".parse().expect("addr"))
    };
    for _ in 0..4 {
        assert_eq!(raw(&app, ok()).await.0, 200);
    }
    let (status, body) = raw(&app, ok()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited")),
        "sixth use of the token in a minute"
    );
}

#[actix_web::test]
async fn dcr_registration_gate_limit_and_garbage_collection() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let (_, zone) = call(&app, "POST", "/v1/zones", Some(json!({"name": "dcr"}))).await;
    let z = zone["id"].as_str().expect("zone").to_owned();
    let dcr = format!("/v1/zones/{z}/applications/dcr");
    let (status, body) = call(&app, "POST", &dcr, Some(json!({"name": "bot"}))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("dcr_disabled"))
    );
    call(
        &app,
        "PATCH",
        &format!("/v1/zones/{z}"),
        Some(json!({"dcr_enabled": true})),
    )
    .await;
    let (status, reg) = call(
        &app,
        "POST",
        &dcr,
        Some(json!({"name": "bot", "expires_in": 1})),
    )
    .await;
    assert_eq!(
        (status, reg["registration_method"].as_str()),
        (201, Some("dcr")),
        "{reg}"
    );
    assert!(reg["client_secret"]
        .as_str()
        .is_some_and(|s| s.starts_with("cs_")));
    let id = reg["id"].as_str().expect("id").to_owned();
    let (status, body) = call(
        &app,
        "GET",
        &format!("/v1/zones/{z}/applications/{id}/client-secret"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("application_not_found")),
        "DCR secrets are never retrievable"
    );

    let mut limited = false;
    for i in 0..40 {
        let (status, body) = call(
            &app,
            "POST",
            &dcr,
            Some(json!({"name": format!("burst-{i}")})),
        )
        .await;
        if status == 429 {
            assert_eq!(body["error"], "dcr_rate_limit_exceeded");
            limited = true;
            break;
        }
    }
    assert!(
        limited,
        "more than 10 registrations in one second are refused"
    );

    // Expired by a second; with no grace period the collector archives it and nothing else.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let archived = h
        .state
        .management
        .archive_expired_dcr_applications(0)
        .await
        .expect("gc");
    assert_eq!(archived, 1);
    let (status, _) = call(
        &app,
        "GET",
        &format!("/v1/zones/{z}/applications/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        h.state
            .management
            .archive_expired_dcr_applications(0)
            .await
            .expect("gc"),
        0
    );
}

#[actix_web::test]
async fn scoped_and_read_only_tokens_are_confined() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let (_, a) = call(&app, "POST", "/v1/zones", Some(json!({"name": "a"}))).await;
    let (_, b) = call(&app, "POST", "/v1/zones", Some(json!({"name": "b"}))).await;
    let (za, zb) = (
        a["id"].as_str().expect("a").to_owned(),
        b["id"].as_str().expect("b").to_owned(),
    );

    let (status, body) = call(
        &app,
        "POST",
        "/v1/admin-tokens",
        Some(json!({"name": "zone a", "scope": "zone"})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("zone_id_required"))
    );
    let (status, minted) = call(
        &app,
        "POST",
        "/v1/admin-tokens",
        Some(json!({"name": "zone a", "scope": "zone", "zone_id": za})),
    )
    .await;
    assert_eq!(status, 201, "{minted}");
    let zone_token = minted["token"].as_str().expect("plaintext once").to_owned();
    assert!(zone_token.starts_with("cat_"));
    let (_, reader) = call(
        &app,
        "POST",
        "/v1/admin-tokens",
        Some(json!({"name": "reader", "scope": "global", "capability": "read"})),
    )
    .await;
    let read_token = reader["token"].as_str().expect("reader").to_owned();

    let with = |token: &str, req: TestRequest| {
        req.insert_header(("authorization", format!("Bearer {token}")))
    };
    let (status, body) = raw(&app, with(&zone_token, TestRequest::get().uri("/v1/zones"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("admin_token_zone_mismatch"))
    );
    let (status, _) = raw(
        &app,
        with(
            &zone_token,
            TestRequest::get().uri(&format!("/v1/zones/{za}/applications")),
        ),
    )
    .await;
    assert_eq!(status, 200, "a zone token reads its own zone");
    let (status, body) = raw(
        &app,
        with(
            &zone_token,
            TestRequest::get().uri(&format!("/v1/zones/{zb}/applications")),
        ),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("admin_token_zone_mismatch"))
    );
    let (status, body) = raw(
        &app,
        with(&zone_token, TestRequest::get().uri("/v1/admin-tokens")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = raw(
        &app,
        with(
            &read_token,
            TestRequest::post()
                .uri(&format!("/v1/zones/{za}/applications"))
                .set_json(json!({"name": "x", "registration_method": "managed"})),
        ),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("admin_token_read_only"))
    );
    let (_, apps) = call(&app, "GET", &format!("/v1/zones/{za}/applications"), None).await;
    assert_eq!(apps["items"], json!([]), "a refused write changes nothing");

    let (_, list) = call(&app, "GET", "/v1/admin-tokens", None).await;
    assert!(
        !list.to_string().contains(&zone_token),
        "plaintext is never listed"
    );
    let id = minted["id"].as_str().expect("id").to_owned();
    assert_eq!(
        call(&app, "DELETE", &format!("/v1/admin-tokens/{id}"), None)
            .await
            .0,
        204
    );
    let (status, body) = raw(
        &app,
        with(
            &zone_token,
            TestRequest::get().uri(&format!("/v1/zones/{za}/applications")),
        ),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_admin_token")),
        "revocation lands at once in this process"
    );
    let (status, body) = call(&app, "DELETE", &format!("/v1/admin-tokens/{id}"), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("admin_token_not_found"))
    );
}
