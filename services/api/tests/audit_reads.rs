//! The audit read routes (`spec/api.md §3.13`) and `/v1/audit-retention` (§3.15), driven over
//! HTTP as the admin SDK drives them. Decision events are produced by the STS and Gateway and
//! stored by the Audit service, so the tests put them in the memory ledger through
//! `AuditLedger::append`, parsed from stream `data` exactly as the ingestor parses it.

use std::collections::BTreeSet;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::test::{self, TestRequest};
use caracal_api::{api_app, ApiConfig, ApiState};
use caracal_core::audit::parse_entry;
use caracal_core::manage::{Management, ManagementConfig};
use caracal_core::model::AdminAuditRecord;
use caracal_core::ports::audit::AuditLedger;
use caracal_core::ports::store::{Page, Store, ZoneScope};
use caracal_core::ports::Clock;
use caracal_crypto::{Argon2idHasher, EnvelopeSealer, HmacSha256, Kek, RandomSecrets};
use caracal_http::metrics::HttpCounters;
use caracal_memory::{
    FixedClock, MemoryBus, MemoryLedger, MemoryRateLimiter, MemoryStore, SystemClock, UuidV7Ids,
};
use serde_json::{json, Value};

const TOKEN: &str = "cat_test_bootstrap_token";

struct Harness {
    /// The management plane's clock (admin audit times), moved by hand.
    clock: Arc<FixedClock>,
    store: MemoryStore,
    ledger: Arc<MemoryLedger>,
    state: ApiState,
}

async fn harness_with(config: ApiConfig) -> Harness {
    let store = MemoryStore::new();
    let ledger = Arc::new(MemoryLedger::new(Arc::new(SystemClock)));
    let clock = Arc::new(FixedClock::new(SystemClock.now()));
    let management = Management::new(
        Arc::new(store.clone()),
        clock.clone(),
        Arc::new(UuidV7Ids),
        Arc::new(EnvelopeSealer::new(
            Kek::generate().expect("kek"),
            Vec::new(),
        )),
        // Cheap Argon2 parameters keep tests fast.
        Arc::new(Argon2idHasher::with_params(256, 1, 1).expect("params")),
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
        audit: ledger.clone(),
        counters: Arc::new(HttpCounters::default()),
        limiter: Arc::new(MemoryRateLimiter::new()),
        config: Arc::new(config),
    };
    Harness {
        clock,
        store,
        ledger,
        state,
    }
}

async fn harness() -> Harness {
    harness_with(ApiConfig::default()).await
}

/// A response: status, content type, and the body as JSON (`Null` when it is not JSON) and text.
struct Answer {
    status: u16,
    content_type: String,
    json: Value,
    text: String,
}

async fn send<S, B>(app: &S, token: &str, method: &str, path: &str, body: Option<Value>) -> Answer
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let mut req = TestRequest::default()
        .method(method.parse().expect("method"))
        .uri(path)
        .insert_header(("authorization", format!("Bearer {token}")));
    if let Some(body) = body {
        req = req.set_json(body);
    }
    let res = test::call_service(app, req.to_request()).await;
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = test::read_body(res).await;
    Answer {
        status,
        content_type,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn get<S, B>(app: &S, path: &str) -> Answer
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    send(app, TOKEN, "GET", path, None).await
}

/// Creates a zone through the API; returns its id.
async fn zone<S, B>(app: &S, name: &str) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let answer = send(
        app,
        TOKEN,
        "POST",
        "/v1/zones",
        Some(json!({ "name": name })),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    answer.json["id"].as_str().expect("zone id").to_owned()
}

/// An event as a producer emits it on `caracal.audit.events`.
fn event(
    id: &str,
    zone: &str,
    event_type: &str,
    request_id: &str,
    decision: &str,
    at: &str,
) -> Value {
    json!({
        "id": id,
        "zone_id": zone,
        "event_type": event_type,
        "request_id": request_id,
        "decision": decision,
        "evaluation_status": if decision == "deny" { "no_rule_matched" } else { "complete" },
        "determining_policies_json": [{"policy": "caracal-bootstrap"}],
        "diagnostics_json": [],
        "occurred_at": at,
    })
}

fn with_meta(mut event: Value, metadata: Value) -> Value {
    event["metadata_json"] = metadata;
    event
}

/// Stores events through the ledger port, each parsed from its stream `data` field.
async fn seed(ledger: &MemoryLedger, events: &[Value]) {
    let incoming: Vec<_> = events
        .iter()
        .map(|e| {
            let fields = vec![("data".to_owned(), e.to_string())];
            parse_entry(&fields, None).expect("a valid event")
        })
        .collect();
    ledger.append(&incoming, None).await.expect("append");
}

fn ids(items: &Value) -> Vec<String> {
    items
        .as_array()
        .expect("an array")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn admin_chain(store: &MemoryStore, zone: Option<&str>) -> Vec<AdminAuditRecord> {
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.list_admin_audit(
        zone,
        &Page {
            limit: 500,
            after: None,
        },
    )
    .await
    .expect("admin audit")
}

/// Mints an admin token through the API; returns the plaintext.
async fn mint<S, B>(app: &S, body: Value) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let answer = send(app, TOKEN, "POST", "/v1/admin-tokens", Some(body)).await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    answer.json["token"].as_str().expect("token").to_owned()
}

#[actix_web::test]
async fn every_filter_selects_its_events_newest_first() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let z = zone(&app, "filters").await;
    seed(
        &h.ledger,
        &[
            with_meta(
                event(
                    "e1",
                    &z,
                    "token_exchange",
                    "r1",
                    "allow",
                    "2026-05-21T10:00:00Z",
                ),
                json!({"application_id": "app-a", "agent_session_id": "as-1", "session_id": "ar-1",
                       "agent_labels": ["team:blue"], "resource": "resource://a"}),
            ),
            with_meta(
                event(
                    "e2",
                    &z,
                    "token_exchange",
                    "r2",
                    "deny",
                    "2026-05-21T11:00:00Z",
                ),
                json!({"application_id": "app-b", "agent_session_id": "as-2", "session_id": "ar-2",
                       "agent_labels": ["team:red"]}),
            ),
            with_meta(
                event(
                    "e3",
                    &z,
                    "step_up_issued",
                    "r2",
                    "pending",
                    "2026-05-21T12:00:00Z",
                ),
                json!({"application_id": "app-a", "session_id": "ar-2"}),
            ),
            event(
                "e4",
                &z,
                "gateway_resource_request",
                "r3",
                "allow",
                "2026-05-21T13:00:00Z",
            ),
            event(
                "e5",
                &z,
                "replay_detected",
                "r4",
                "partial",
                "2026-05-21T14:00:00Z",
            ),
        ],
    )
    .await;
    let list = |query: &str| format!("/v1/zones/{z}/audit{query}");

    let all = get(&app, &list("")).await;
    assert_eq!(all.status, 200, "{}", all.text);
    assert_eq!(ids(&all.json["items"]), ["e5", "e4", "e3", "e2", "e1"]);
    assert_eq!(all.json["next_cursor"], Value::Null);

    for (query, want) in [
        ("?since=2026-05-21T12:00:00Z", vec!["e5", "e4", "e3"]),
        ("?until=2026-05-21T12:00:00Z", vec!["e2", "e1"]),
        (
            "?since=2026-05-21T11:00:00Z&until=2026-05-21T13:00:00.000Z",
            vec!["e3", "e2"],
        ),
        ("?request_id=r2", vec!["e3", "e2"]),
        ("?decision=deny", vec!["e2"]),
        ("?decision=partial", vec!["e5"]),
        ("?event_type=token_exchange", vec!["e2", "e1"]),
        (
            "?event_type=step_up_issued,%20gateway_resource_request",
            vec!["e4", "e3"],
        ),
        ("?application_id=app-a", vec!["e3", "e1"]),
        ("?session_id=as-2", vec!["e2"]),
        ("?authority_record_id=ar-2", vec!["e3", "e2"]),
        ("?label=team:blue", vec!["e1"]),
        (
            "?application_id=app-a&event_type=token_exchange",
            vec!["e1"],
        ),
        ("?request_id=nope", vec![]),
    ] {
        let answer = get(&app, &list(query)).await;
        assert_eq!(answer.status, 200, "{query}: {}", answer.text);
        assert_eq!(ids(&answer.json["items"]), want, "{query}");
    }
}

#[actix_web::test]
async fn items_are_rows_with_redacted_metadata() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let z = zone(&app, "shape").await;
    seed(
        &h.ledger,
        &[with_meta(
            event(
                "e1",
                &z,
                "token_exchange",
                "r1",
                "allow",
                "2026-05-21T10:00:00.123456Z",
            ),
            json!({"application_id": "app-a", "session_id": "ar-1",
                   "delegation_chain": [{"Token": "leak", "hop": 1}],
                   "upstream": {"headers": {"Authorization": "Bearer leak"}}}),
        )],
    )
    .await;
    let answer = get(&app, &format!("/v1/zones/{z}/audit")).await;
    let item = &answer.json["items"][0];
    let keys: BTreeSet<&str> = item
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "id",
            "zone_id",
            "event_type",
            "request_id",
            "decision",
            "policy_set_id",
            "policy_set_version_id",
            "manifest_sha",
            "evaluation_status",
            "determining_policies_json",
            "diagnostics_json",
            "metadata_json",
            "occurred_at",
            "ingested_at",
        ])
    );
    assert_eq!(item["zone_id"], json!(z));
    assert_eq!(item["policy_set_id"], "", "absent strings read as stored");
    assert_eq!(item["occurred_at"], "2026-05-21T10:00:00.123Z");
    assert!(item["ingested_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(
        item["determining_policies_json"],
        json!([{"policy": "caracal-bootstrap"}])
    );
    assert_eq!(
        item["metadata_json"],
        json!({"application_id": "app-a", "session_id": "[redacted]",
               "delegation_chain": [{"Token": "[redacted]", "hop": 1}],
               "upstream": {"headers": {"Authorization": "[redacted]"}}})
    );
    assert!(!answer.text.contains("leak") && !answer.text.contains("ar-1"));
}

#[actix_web::test]
async fn paging_follows_the_cursor_to_the_end() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let z = zone(&app, "paging").await;
    // 105 events; every five share one microsecond, so the cursor must order by id within it.
    let events: Vec<Value> = (0..105)
        .map(|i| {
            event(
                &format!("ev-{i:03}"),
                &z,
                "token_exchange",
                &format!("r{i}"),
                "allow",
                &format!("2026-05-21T10:00:00.{:06}Z", i / 5),
            )
        })
        .collect();
    seed(&h.ledger, &events).await;

    let first = get(&app, &format!("/v1/zones/{z}/audit")).await;
    assert_eq!(
        first.json["items"].as_array().map(Vec::len),
        Some(100),
        "default limit"
    );
    assert!(first.json["next_cursor"].is_string());

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            None => format!("/v1/zones/{z}/audit?limit=10"),
            Some(c) => format!("/v1/zones/{z}/audit?limit=10&cursor={c}"),
        };
        let answer = get(&app, &path).await;
        assert_eq!(answer.status, 200, "{}", answer.text);
        seen.extend(ids(&answer.json["items"]));
        pages += 1;
        match answer.json["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 11);
    let want: Vec<String> = (0..105).rev().map(|i| format!("ev-{i:03}")).collect();
    assert_eq!(seen, want, "every event once, newest first");

    // A full last page still hands out a cursor; following it yields an empty page.
    let answer = get(&app, &format!("/v1/zones/{z}/audit?limit=105")).await;
    let next = answer.json["next_cursor"]
        .as_str()
        .expect("full page")
        .to_owned();
    let answer = get(
        &app,
        &format!("/v1/zones/{z}/audit?limit=105&cursor={next}"),
    )
    .await;
    assert_eq!(
        (
            answer.json["items"].clone(),
            answer.json["next_cursor"].clone()
        ),
        (json!([]), Value::Null)
    );
    assert_eq!(
        get(&app, &format!("/v1/zones/{z}/audit?limit=1000"))
            .await
            .status,
        200
    );
}

#[actix_web::test]
async fn zones_never_see_each_other() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let a = zone(&app, "zone a").await;
    let b = zone(&app, "zone b").await;
    seed(
        &h.ledger,
        &[
            event(
                "a1",
                &a,
                "token_exchange",
                "shared",
                "allow",
                "2026-05-21T10:00:00Z",
            ),
            event(
                "b1",
                &b,
                "token_exchange",
                "shared",
                "deny",
                "2026-05-21T10:00:01Z",
            ),
            event(
                "b2",
                &b,
                "token_exchange",
                "only-b",
                "allow",
                "2026-05-21T10:00:02Z",
            ),
        ],
    )
    .await;

    assert_eq!(
        ids(&get(&app, &format!("/v1/zones/{a}/audit")).await.json["items"]),
        ["a1"]
    );
    let shared = get(&app, &format!("/v1/zones/{a}/audit/by-request/shared")).await;
    assert_eq!(ids(&shared.json), ["a1"]);
    let explained = get(
        &app,
        &format!("/v1/zones/{a}/audit/by-request/shared/explain"),
    )
    .await;
    assert_eq!(
        explained.json["final_decision"], "allow",
        "b's deny is not a's"
    );
    let missing = get(&app, &format!("/v1/zones/{a}/audit/by-request/only-b")).await;
    assert_eq!(
        (missing.status, missing.json["error"].as_str()),
        (404, Some("request_not_found"))
    );

    // A token of zone a reads zone a, and nothing of zone b.
    let token = mint(
        &app,
        json!({"name": "a reader", "scope": "zone", "zone_id": a, "capability": "read"}),
    )
    .await;
    let own = send(&app, &token, "GET", &format!("/v1/zones/{a}/audit"), None).await;
    assert_eq!(
        (own.status, ids(&own.json["items"])),
        (200, vec!["a1".to_owned()])
    );
    for path in [
        format!("/v1/zones/{b}/audit"),
        format!("/v1/zones/{b}/audit/by-request/only-b"),
        format!("/v1/zones/{b}/audit/by-request/only-b/explain"),
        format!("/v1/zones/{b}/admin-audit"),
        "/v1/audit-retention".to_owned(),
    ] {
        let answer = send(&app, &token, "GET", &path, None).await;
        assert_eq!(
            (answer.status, answer.json["error"].as_str()),
            (403, Some("admin_token_zone_mismatch")),
            "{path}"
        );
        assert!(!answer.text.contains("b1") && !answer.text.contains("b2"));
    }
}

#[actix_web::test]
async fn bad_input_is_typed_and_changes_nothing() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let z = zone(&app, "bad input").await;
    seed(
        &h.ledger,
        &[event(
            "e1",
            &z,
            "token_exchange",
            "r1",
            "allow",
            "2026-05-21T10:00:00Z",
        )],
    )
    .await;
    let chain_before = admin_chain(&h.store, Some(&z)).await.len();
    let seventeen = vec!["t"; 17].join(",");
    for (query, code) in [
        ("limit=0", "invalid_query"),
        ("limit=1001", "invalid_query"),
        ("limit=ten", "invalid_query"),
        ("since=2026-05-21T10:00:00%2B02:00", "invalid_query"),
        ("until=yesterday", "invalid_query"),
        ("decision=maybe", "invalid_query"),
        ("format=xml", "invalid_query"),
        (&format!("event_type={seventeen}"), "invalid_query"),
        (&format!("label={}", "x".repeat(65)), "invalid_query"),
        ("fields=id,secret", "invalid_fields"),
        ("cursor=%21%21", "invalid_cursor"),
        (
            "cursor=eyJ0cyI6Inllc3RlcmRheSIsImlkIjoiYSJ9",
            "invalid_cursor",
        ),
    ] {
        let answer = get(&app, &format!("/v1/zones/{z}/audit?{query}")).await;
        assert_eq!(
            (answer.status, answer.json["error"].as_str()),
            (400, Some(code)),
            "{query}"
        );
    }
    for (query, code) in [
        ("method=GET", "invalid_query"),
        ("limit=0", "invalid_query"),
        ("fields=payload_json", "invalid_fields"),
        ("cursor=abc", "invalid_cursor"),
    ] {
        let answer = get(&app, &format!("/v1/zones/{z}/admin-audit?{query}")).await;
        assert_eq!(
            (answer.status, answer.json["error"].as_str()),
            (400, Some(code)),
            "{query}"
        );
    }
    for path in [
        format!("/v1/zones/{z}/audit/by-request/a$b"),
        format!("/v1/zones/{z}/audit/by-request/a$b/explain"),
        "/v1/zones/z$1/audit".to_owned(),
    ] {
        let answer = get(&app, &path).await;
        assert_eq!(
            (answer.status, answer.json["error"].as_str()),
            (400, Some("invalid_params")),
            "{path}"
        );
    }
    let missing = get(
        &app,
        &format!("/v1/zones/{z}/audit/by-request/r404/explain"),
    )
    .await;
    assert_eq!(
        (missing.status, missing.json["error"].as_str()),
        (404, Some("request_not_found"))
    );
    assert_eq!(h.ledger.len(), 1, "reads never write evidence");
    assert_eq!(
        admin_chain(&h.store, Some(&z)).await.len(),
        chain_before,
        "reads are not audited"
    );
}

#[actix_web::test]
async fn by_request_and_explain_follow_the_final_decision_rules() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let z = zone(&app, "explain").await;
    let denied_meta = json!({
        "application_id": "app-a", "application_registration_method": "managed",
        "resource": "resource://billing", "requested_scopes": ["invoices:write"],
        "session_id": "ar-9", "agent_session_id": "as-9", "agent_lifecycle": "task",
        "agent_labels": ["team:blue"], "delegation_edge_id": "edge-9",
    });
    seed(
        &h.ledger,
        &[
            // r-deny: allow, deny, allow → deny (one denial decides, whatever follows).
            event(
                "d1",
                &z,
                "token_exchange",
                "r-deny",
                "allow",
                "2026-05-21T10:00:00Z",
            ),
            with_meta(
                event(
                    "d2",
                    &z,
                    "token_exchange",
                    "r-deny",
                    "deny",
                    "2026-05-21T10:00:01Z",
                ),
                denied_meta.clone(),
            ),
            event(
                "d3",
                &z,
                "gateway_resource_request",
                "r-deny",
                "allow",
                "2026-05-21T10:00:02Z",
            ),
            // r-hold: pending then consumed → the last decision.
            event(
                "h2",
                &z,
                "step_up_consumed",
                "r-hold",
                "consumed",
                "2026-05-21T11:00:01Z",
            ),
            event(
                "h1",
                &z,
                "step_up_issued",
                "r-hold",
                "pending",
                "2026-05-21T11:00:00Z",
            ),
        ],
    )
    .await;

    let events = get(&app, &format!("/v1/zones/{z}/audit/by-request/r-hold")).await;
    assert_eq!(events.status, 200);
    assert_eq!(
        ids(&events.json),
        ["h1", "h2"],
        "a bare array, oldest first"
    );

    let hold = get(
        &app,
        &format!("/v1/zones/{z}/audit/by-request/r-hold/explain"),
    )
    .await;
    assert_eq!(hold.json["final_decision"], "consumed");
    assert_eq!(hold.json["denied"], json!([]));
    assert_eq!(ids(&hold.json["events"]), ["h1", "h2"]);

    let deny = get(
        &app,
        &format!("/v1/zones/{z}/audit/by-request/r-deny/explain"),
    )
    .await;
    assert_eq!(deny.status, 200, "{}", deny.text);
    assert_eq!(deny.json["request_id"], "r-deny");
    assert_eq!(deny.json["zone_id"], json!(z));
    assert_eq!(deny.json["final_decision"], "deny");
    assert_eq!(ids(&deny.json["events"]), ["d1", "d2", "d3"]);
    let denied = deny.json["denied"].as_array().expect("denied");
    assert_eq!(denied.len(), 1);
    let d = &denied[0];
    assert_eq!(d["event_id"], "d2");
    assert_eq!(d["event_type"], "token_exchange");
    assert_eq!(d["evaluation_status"], "no_rule_matched");
    assert_eq!(
        d["determining_policies"],
        json!([{"policy": "caracal-bootstrap"}])
    );
    assert_eq!(d["diagnostics"], json!([]));
    assert_eq!(d["metadata"]["session_id"], "[redacted]");
    assert_eq!(d["metadata"]["resource"], "resource://billing");
    assert_eq!(
        d["policy_input"],
        json!({
            "schema_version": "2026-05-20",
            "principal": {"type": "Application", "id": "app-a", "zone_id": z,
                          "registration_method": "managed", "agent_session_id": "as-9",
                          "lifecycle": "task", "labels": ["team:blue"]},
            "resource": {"type": "Resource", "identifier": "resource://billing",
                         "scopes": ["invoices:write"]},
            "action": {"id": "TokenExchange"},
            "context": {"actor_claims": {}, "requested_scopes": ["invoices:write"],
                        "challenge_resolved": false, "session_id": "ar-9",
                        "agent_session_id": "as-9", "delegation_edge_id": "edge-9"},
            "session": {"id": "ar-9"},
            "delegation_edge": {"id": "edge-9"},
        })
    );
}

#[actix_web::test]
async fn fields_project_and_csv_exports() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let z = zone(&app, "exports").await;
    seed(
        &h.ledger,
        &[
            with_meta(
                event(
                    "e1",
                    &z,
                    "token_exchange",
                    "r1",
                    "allow",
                    "2026-05-21T10:00:00Z",
                ),
                json!({"resource": "=HYPERLINK(\"x\")", "requested_scopes": ["a:read", "a:write"],
                       "session_id": "ar-1"}),
            ),
            event(
                "e2",
                &z,
                "token_exchange",
                "r2",
                "deny",
                "2026-05-21T10:00:01Z",
            ),
        ],
    )
    .await;
    let projected = get(
        &app,
        &format!("/v1/zones/{z}/audit?fields=id,decision,determining_policies,resource&limit=1"),
    )
    .await;
    assert_eq!(projected.status, 200, "{}", projected.text);
    assert_eq!(
        projected.json["items"],
        json!([{"id": "e2", "decision": "deny", "determining_policies": ["caracal-bootstrap"]}]),
        "a metadata key the event lacks is left out"
    );
    assert!(projected.json["next_cursor"].is_string());

    let csv = get(
        &app,
        &format!("/v1/zones/{z}/audit?format=csv&fields=id,resource,requested_scopes,decision"),
    )
    .await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.content_type, "text/csv; charset=utf-8");
    assert_eq!(
        csv.text,
        "id,resource,requested_scopes,decision\r\ne2,,,deny\r\ne1,\"'=HYPERLINK(\"\"x\"\")\",a:read a:write,allow\r\n"
    );
    let whole = get(&app, &format!("/v1/zones/{z}/audit?format=csv")).await;
    let header = whole.text.lines().next().unwrap_or("");
    assert!(
        header.starts_with("id,occurred_at,event_type,decision,"),
        "{header}"
    );
    assert!(
        header.ends_with(",subject_kind,federated_user_issuer"),
        "{header}"
    );
    assert!(!whole.text.contains("ar-1"), "exports are redacted too");
}

#[actix_web::test]
async fn admin_audit_reads_the_zones_chain_with_filters() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let z = zone(&app, "admin audit").await;
    let other = zone(&app, "elsewhere").await;
    h.clock.advance_millis(1_000);
    let created = send(
        &app,
        TOKEN,
        "POST",
        &format!("/v1/zones/{z}/applications"),
        Some(json!({"name": "agent", "registration_method": "managed"})),
    )
    .await;
    let app_id = created.json["id"].as_str().expect("app").to_owned();
    h.clock.advance_millis(1_000);
    let patched = send(
        &app,
        TOKEN,
        "PATCH",
        &format!("/v1/zones/{z}/applications/{app_id}"),
        Some(json!({"name": "agent 2"})),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    h.clock.advance_millis(1_000);
    let failed = send(
        &app,
        TOKEN,
        "DELETE",
        &format!("/v1/zones/{z}/applications/missing"),
        None,
    )
    .await;
    assert_eq!(failed.status, 404);
    send(
        &app,
        TOKEN,
        "POST",
        &format!("/v1/zones/{other}/applications"),
        Some(json!({"name": "x", "registration_method": "managed"})),
    )
    .await;

    let list = get(&app, &format!("/v1/zones/{z}/admin-audit")).await;
    assert_eq!(list.status, 200, "{}", list.text);
    let items = list.json["items"].as_array().expect("items").clone();
    let actions: Vec<&str> = items
        .iter()
        .map(|i| i["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        actions,
        [
            format!("DELETE /v1/zones/{z}/applications/missing"),
            format!("PATCH /v1/zones/{z}/applications/{app_id}"),
            format!("POST /v1/zones/{z}/applications"),
            "POST /v1/zones".to_owned(),
        ],
        "this zone's chain only, newest first"
    );
    let keys: BTreeSet<&str> = items[1]
        .as_object()
        .expect("row")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "id",
            "request_id",
            "actor_id",
            "actor_name",
            "actor_scope",
            "action",
            "method",
            "path",
            "entity_type",
            "entity_id",
            "status_code",
            "payload_json",
            "occurred_at",
            "chain_seq",
            "signed",
        ])
    );
    assert_eq!(items[1]["entity_type"], "applications");
    assert_eq!(items[1]["entity_id"], json!(app_id));
    assert_eq!(items[1]["status_code"], 200);
    assert_eq!(items[1]["signed"], true);
    assert_eq!(items[1]["chain_seq"], 3);
    assert_eq!(items[1]["payload_json"]["change_kind"], "update");
    assert_eq!(items[0]["status_code"], 404);
    let actor = items[1]["actor_id"].as_str().expect("actor").to_owned();

    let filtered = |query: String| {
        let app = &app;
        let z = z.clone();
        async move {
            let answer = get(app, &format!("/v1/zones/{z}/admin-audit?{query}")).await;
            assert_eq!(answer.status, 200, "{query}: {}", answer.text);
            answer.json["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|i| i["method"].as_str().unwrap_or("").to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(filtered("method=POST".into()).await, ["POST", "POST"]);
    assert_eq!(
        filtered("entity_type=applications".into()).await,
        ["DELETE", "PATCH", "POST"]
    );
    assert_eq!(
        filtered(format!("entity_id={app_id}")).await,
        ["PATCH", "POST"]
    );
    assert_eq!(filtered(format!("actor_id={actor}")).await.len(), 4);
    assert_eq!(filtered("actor_id=someone-else".into()).await.len(), 0);
    let patch_at = items[1]["occurred_at"].as_str().expect("at").to_owned();
    assert_eq!(
        filtered(format!("until={patch_at}"))
            .await
            .first()
            .map(String::as_str),
        Some("POST")
    );
    assert_eq!(
        filtered(format!("since={patch_at}")).await,
        ["DELETE", "PATCH"]
    );

    // One row per page, following the cursor, reaches every record once.
    let mut seen = Vec::new();
    let mut path = format!("/v1/zones/{z}/admin-audit?limit=1");
    loop {
        let answer = get(&app, &path).await;
        seen.extend(ids(&answer.json["items"]));
        match answer.json["next_cursor"].as_str() {
            Some(next) => path = format!("/v1/zones/{z}/admin-audit?limit=1&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ids(&list.json["items"]));

    let csv = get(
        &app,
        &format!("/v1/zones/{z}/admin-audit?format=csv&fields=method,status_code,change_kind"),
    )
    .await;
    assert_eq!(csv.content_type, "text/csv; charset=utf-8");
    assert_eq!(
        csv.text,
        "method,status_code,change_kind\r\nDELETE,404,\r\nPATCH,200,update\r\nPOST,201,create\r\nPOST,201,create\r\n"
    );
}

#[actix_web::test]
async fn retention_reads_and_sets_within_the_ceiling() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;

    let fresh = get(&app, "/v1/audit-retention").await;
    assert_eq!(fresh.status, 200);
    assert_eq!(
        fresh.json,
        json!({"retention_days": 365, "max_days": 365, "updated_by": null, "updated_at": null})
    );

    let set = send(
        &app,
        TOKEN,
        "PUT",
        "/v1/audit-retention",
        Some(json!({"retention_days": 30})),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text);
    assert_eq!(set.json["retention_days"], 30);
    assert_eq!(set.json["max_days"], 365);
    let by = set.json["updated_by"]
        .as_str()
        .expect("attributed")
        .to_owned();
    assert!(by.starts_with("admin:"), "{by}");
    assert!(set.json["updated_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(get(&app, "/v1/audit-retention").await.json, set.json);
    let stored = h
        .ledger
        .retention_setting()
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(stored.retention_days, 30);

    // The PUT is a mutation: its admin audit record is on the global chain.
    let global = admin_chain(&h.store, None).await;
    let record = global
        .iter()
        .find(|r| r.path == "/v1/audit-retention")
        .expect("the PUT was audited");
    assert_eq!((record.method.as_str(), record.status_code), ("PUT", 200));
    assert_eq!(record.payload_json["change_kind"], "update");
    assert_eq!(
        record.payload_json["changed_fields"],
        json!(["retention_days"])
    );

    let above = send(
        &app,
        TOKEN,
        "PUT",
        "/v1/audit-retention",
        Some(json!({"retention_days": 366})),
    )
    .await;
    assert_eq!(
        (
            above.status,
            above.json["error"].as_str(),
            above.json["max_days"].as_u64()
        ),
        (400, Some("retention_above_limit"), Some(365))
    );
    for body in [
        json!({"retention_days": 0}),
        json!({"retention_days": "30"}),
        json!({"retention_days": 7.5}),
        json!({"retention_days": 7, "extra": 1}),
        json!({}),
        json!([7]),
    ] {
        let answer = send(
            &app,
            TOKEN,
            "PUT",
            "/v1/audit-retention",
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (answer.status, answer.json["error"].as_str()),
            (400, Some("invalid_body")),
            "{body}"
        );
    }
    let read_only = mint(
        &app,
        json!({"name": "reader", "scope": "global", "capability": "read"}),
    )
    .await;
    let refused = send(
        &app,
        &read_only,
        "PUT",
        "/v1/audit-retention",
        Some(json!({"retention_days": 7})),
    )
    .await;
    assert_eq!(
        (refused.status, refused.json["error"].as_str()),
        (403, Some("admin_token_read_only"))
    );
    assert_eq!(
        send(&app, &read_only, "GET", "/v1/audit-retention", None)
            .await
            .status,
        200
    );
    assert_eq!(
        get(&app, "/v1/audit-retention").await.json,
        set.json,
        "refusals change nothing"
    );

    // A ceiling lowered after the window was set: the window reads as the ceiling, and a PUT
    // above the new ceiling names it.
    let lowered = harness_with(ApiConfig {
        audit_retention_max_days: 10,
        ..ApiConfig::default()
    })
    .await;
    lowered
        .ledger
        .set_retention_setting(&stored)
        .await
        .expect("carry the stored window over");
    let app = test::init_service(api_app!(lowered.state.clone())).await;
    let capped = get(&app, "/v1/audit-retention").await;
    assert_eq!(
        (
            capped.json["retention_days"].as_u64(),
            capped.json["max_days"].as_u64()
        ),
        (Some(10), Some(10))
    );
    let above = send(
        &app,
        TOKEN,
        "PUT",
        "/v1/audit-retention",
        Some(json!({"retention_days": 11})),
    )
    .await;
    assert_eq!(above.json["max_days"], 10);
}
