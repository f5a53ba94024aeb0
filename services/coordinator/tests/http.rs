//! The Coordinator's HTTP shell in process over the memory store, with real ES256 mandates
//! signed by a test key the key source serves (and, once, by the STS's own `ZoneKeys`). Each
//! test asserts what a caller notices: status, error code and envelope, headers, and that a
//! refused request changes nothing.

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::header::HeaderMap;
use actix_web::test::{self, TestRequest};
use async_trait::async_trait;
use caracal_coordinator::{coordinator_app, CoordinatorServiceConfig, CoordinatorState, Stats};
use caracal_core::attribution::Attribution;
use caracal_core::authority::{AuthorityRecord, RecordStatus, SessionType};
use caracal_core::coordinator::{Coordinator, CoordinatorConfig};
use caracal_core::ids::{ApplicationId, ZoneId};
use caracal_core::mandate::{
    encode, MandateClaims, MandateUse, SubType, VerifyingKey, VerifyingKeys,
};
use caracal_core::model::{Application, RegistrationMethod};
use caracal_core::ports::{
    Clock, Es256, Es256Signer, IdGenerator, Store, ZoneKeySource, ZoneScope,
};
use caracal_core::sts::keys::ZoneKeys;
use caracal_core::time::Timestamp;
use caracal_crypto::{EnvelopeSealer, HmacSha256, Kek, RingEs256};
use caracal_http::metrics::HttpCounters;
use caracal_memory::{
    MemoryAuthorityVersions, MemoryBus, MemoryRateLimiter, MemoryStore, SystemClock, UuidV7Ids,
};
use serde_json::{json, Value};

const ISSUER: &str = "http://sts.test";
const OPERATOR: &str = "cct_operator_token_for_tests";
const APP: &str = "app-1";
const ARCHIVED_APP: &str = "app-archived";
const SID: &str = "ar-live";
const REVOKED_SID: &str = "ar-revoked";
const KID: &str = "k1";

/// One test signer's key, for every zone.
struct TestKeys(VerifyingKeys);

#[async_trait]
impl ZoneKeySource for TestKeys {
    async fn verifying_keys(
        &self,
        _zone: &ZoneId,
        _kid: &str,
    ) -> caracal_core::Result<VerifyingKeys> {
        Ok(self.0.clone())
    }
}

struct Harness {
    store: MemoryStore,
    state: CoordinatorState,
    signer: Arc<dyn Es256Signer>,
}

fn zone(id: &str) -> ZoneId {
    ZoneId::parse(id).expect("zone")
}

fn now() -> Timestamp {
    SystemClock.now()
}

fn application(zone_id: &str, id: &str, archived: bool) -> Application {
    let at = now();
    Application {
        id: ApplicationId::parse(id).expect("app id"),
        zone_id: zone(zone_id),
        name: id.to_owned(),
        registration_method: RegistrationMethod::Managed,
        traits: Vec::new(),
        client_secret_hash: None,
        expires_at: None,
        attr: Attribution::created("admin:test", false, at),
        archived_at: archived.then_some(at),
    }
}

fn record(zone_id: &str, id: &str, status: RecordStatus) -> AuthorityRecord {
    let at = now();
    AuthorityRecord {
        id: id.to_owned(),
        zone_id: zone(zone_id),
        session_type: SessionType::Application,
        subject_id: APP.to_owned(),
        client_id: APP.to_owned(),
        parent_id: None,
        status,
        expires_at: at.plus_millis(3_600_000),
        authenticated_at: at,
        claims_json: None,
        revoked_at: None,
        revoked_reason: None,
        created_at: at,
    }
}

/// The application and authority records of `z1` (ids are global, as in Postgres).
async fn seed(store: &MemoryStore) {
    for z in ["z1"] {
        let mut uow = store.begin(&ZoneScope::Zone(zone(z))).await.expect("begin");
        uow.save_application(&application(z, APP, false))
            .await
            .expect("app");
        uow.save_application(&application(z, ARCHIVED_APP, true))
            .await
            .expect("archived app");
        uow.save_authority_record(&record(z, SID, RecordStatus::Active))
            .await
            .expect("record");
        uow.save_authority_record(&record(z, REVOKED_SID, RecordStatus::Revoked))
            .await
            .expect("revoked record");
        uow.commit().await.expect("commit");
    }
}

fn state_over(
    store: &MemoryStore,
    keys: Arc<dyn ZoneKeySource>,
    config: CoordinatorServiceConfig,
) -> CoordinatorState {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let coordinator = Coordinator::new(
        Arc::new(store.clone()),
        Arc::clone(&clock),
        Arc::new(UuidV7Ids),
        Arc::new(HmacSha256::from_bytes(&[7u8; 32])),
        None,
        Arc::new(MemoryAuthorityVersions::new()),
        CoordinatorConfig::default(),
    );
    CoordinatorState {
        coordinator: Arc::new(coordinator),
        keys,
        es256: Arc::new(RingEs256::new()),
        limiter: Arc::new(MemoryRateLimiter::new()),
        outbox: Arc::new(store.clone()),
        bus: Arc::new(MemoryBus::new()),
        clock,
        counters: Arc::new(HttpCounters::default()),
        stats: Arc::new(Stats::default()),
        config: Arc::new(config),
    }
}

fn config() -> CoordinatorServiceConfig {
    let mut config = CoordinatorServiceConfig::with_issuer(ISSUER);
    config.operator_token = Some(OPERATOR.into());
    config
}

async fn harness_with(config: CoordinatorServiceConfig) -> Harness {
    let store = MemoryStore::new();
    seed(&store).await;
    let es256 = RingEs256::new();
    let pem = es256.generate_pem().expect("pem");
    let signer = es256.load_signer(&pem).expect("signer");
    let keys = VerifyingKeys::new(vec![VerifyingKey::new(KID, signer.public_point().to_vec())]);
    let state = state_over(&store, Arc::new(TestKeys(keys)), config);
    Harness {
        store,
        state,
        signer,
    }
}

async fn harness() -> Harness {
    harness_with(config()).await
}

/// A `use=session` mandate of `APP` in `z1` with the lifecycle scope and a live `sid`.
fn claims() -> MandateClaims {
    let at = now().unix_seconds();
    MandateClaims {
        iss: ISSUER.into(),
        sub: APP.into(),
        aud: vec![ISSUER.into()],
        exp: at + 900,
        iat: at,
        jti: uuid_like(),
        zone_id: "z1".into(),
        client_id: APP.into(),
        scope: "agent:lifecycle".into(),
        sid: SID.into(),
        root_sid: SID.into(),
        use_: MandateUse::Session,
        sub_type: SubType::Application,
        target: vec!["resource://r".into()],
        agent_session_id: None,
        delegation_edge_id: None,
        source_session_id: None,
        target_session_id: None,
        delegation_path: vec![],
        delegation_chain: vec![],
        hop_count: 0,
        delegation_graph_epoch: 0,
    }
}

fn uuid_like() -> String {
    UuidV7Ids.new_id()
}

impl Harness {
    fn mint(&self, claims: &MandateClaims) -> String {
        encode(KID, claims, self.signer.as_ref()).expect("mint")
    }

    fn token(&self) -> String {
        self.mint(&claims())
    }
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
    raw: Vec<u8>,
}

async fn answer<B: MessageBody>(res: ServiceResponse<B>) -> Answer {
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let raw = test::read_body(res).await.to_vec();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        raw,
    }
}

async fn call<S, B>(app: &S, req: TestRequest) -> Answer
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    answer(test::call_service(app, req.to_request()).await).await
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

fn start_body() -> Value {
    json!({"application_id": APP, "ttl_seconds": 600, "labels": ["planner"]})
}

async fn session_count(store: &MemoryStore) -> usize {
    let mut uow = store
        .begin(&ZoneScope::Zone(zone("z1")))
        .await
        .expect("begin");
    uow.list_agent_sessions(&zone("z1"), &Default::default(), None, 500)
        .await
        .expect("list")
        .len()
}

#[actix_web::test]
async fn a_missing_or_malformed_bearer_is_missing_token() {
    let h = harness().await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    let long = "a".repeat(4097);
    for header in [
        None,
        Some("bearer abc".to_owned()),
        Some("Bearer ".to_owned()),
        Some("Basic abc".to_owned()),
        Some(format!("Bearer {long}")),
    ] {
        let mut req = TestRequest::get().uri("/zones/z1/agents");
        if let Some(h) = &header {
            req = req.insert_header(("authorization", h.clone()));
        }
        let a = call(&app, req).await;
        assert_eq!(
            (a.status, a.body.clone()),
            (401, json!({"error": "missing_token"})),
            "{header:?}"
        );
    }
    // Not a JWT at all, or not ours.
    for token in ["abc", "a.b.c"] {
        let a = call(
            &app,
            TestRequest::get()
                .uri("/zones/z1/agents")
                .insert_header(bearer(token)),
        )
        .await;
        assert_eq!((a.status, a.body), (401, json!({"error": "invalid_token"})));
    }
}

#[actix_web::test]
async fn gateway_and_resource_mandates_never_open_the_coordinator() {
    let h = harness().await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    for use_ in [MandateUse::Gateway, MandateUse::Resource] {
        let mut c = claims();
        c.use_ = use_;
        let a = call(
            &app,
            TestRequest::post()
                .uri("/zones/z1/agents")
                .insert_header(bearer(&h.mint(&c)))
                .set_json(start_body()),
        )
        .await;
        assert_eq!((a.status, a.body), (401, json!({"error": "invalid_token"})));
    }
    assert_eq!(session_count(&h.store).await, 0);
}

#[actix_web::test]
async fn tokens_that_do_not_verify_are_invalid_token() {
    let h = harness().await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    let at = now().unix_seconds();
    let mut expired = claims();
    expired.iat = at - 1_000;
    expired.exp = at - 61;
    let mut issuer = claims();
    issuer.iss = "http://other.test".into();
    let mut audience = claims();
    audience.aud = vec!["http://other.test".into()];
    let mut no_sub = claims();
    no_sub.sub = String::new();
    let mut no_client = claims();
    no_client.client_id = String::new();
    let other = RingEs256::new()
        .load_signer(&RingEs256::new().generate_pem().expect("pem"))
        .expect("signer");
    let forged = encode(KID, &claims(), other.as_ref()).expect("mint");
    let mut bad_zone = claims();
    bad_zone.zone_id = "z/1".into();
    for (what, token) in [
        ("expired", h.mint(&expired)),
        ("issuer", h.mint(&issuer)),
        ("audience", h.mint(&audience)),
        ("sub", h.mint(&no_sub)),
        ("client_id", h.mint(&no_client)),
        ("signature", forged),
        ("zone", h.mint(&bad_zone)),
    ] {
        let a = call(
            &app,
            TestRequest::get()
                .uri("/zones/z1/agents")
                .insert_header(bearer(&token)),
        )
        .await;
        assert_eq!(
            (a.status, a.body),
            (401, json!({"error": "invalid_token"})),
            "{what}"
        );
    }
    // Within the 60 s leeway, an expired token still passes.
    let mut fresh_enough = claims();
    fresh_enough.exp = at - 30;
    let a = call(
        &app,
        TestRequest::get()
            .uri("/zones/z1/agents")
            .insert_header(bearer(&h.mint(&fresh_enough))),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[actix_web::test]
async fn scope_and_zone_are_checked_in_order() {
    let h = harness().await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    let mut no_scope = claims();
    no_scope.scope = "pipernet:read".into();
    let a = call(
        &app,
        TestRequest::get()
            .uri("/zones/z2/agents")
            .insert_header(bearer(&h.mint(&no_scope))),
    )
    .await;
    assert_eq!(
        (a.status, a.body),
        (403, json!({"error": "missing_scope"})),
        "missing_scope comes before zone_mismatch"
    );
    for path in [
        "/zones/z2/agents",
        "/zones/z%2F2/agents",
        "/zones/z2/agents/s1",
    ] {
        let a = call(
            &app,
            TestRequest::get()
                .uri(path)
                .insert_header(bearer(&h.token())),
        )
        .await;
        assert_eq!(
            (a.status, a.body),
            (403, json!({"error": "zone_mismatch"})),
            "{path}"
        );
    }
    let mut scopes = claims();
    scopes.scope = "a agent:lifecycle  b".into();
    let a = call(
        &app,
        TestRequest::get()
            .uri("/zones/z1/agents")
            .insert_header(bearer(&h.mint(&scopes))),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

/// Requests that fail, or succeed, at different points of a request: invalid body (before any
/// unit), malformed path id and query (in the shell), a read (in a unit).
fn revoked_identity_probes() -> Vec<(&'static str, TestRequest)> {
    vec![
        (
            "invalid body",
            TestRequest::post()
                .uri("/zones/z1/agents")
                .set_json(json!({"application_id": 5})),
        ),
        (
            "invalid path id",
            TestRequest::get().uri("/zones/z1/agents/bad%21id"),
        ),
        (
            "invalid reason (in the use case, before its unit)",
            TestRequest::delete().uri("/zones/z1/agents/s1?reason="),
        ),
        (
            "repeated query parameter",
            TestRequest::delete().uri("/zones/z1/agents/s1?reason=a&reason=b"),
        ),
        ("a read", TestRequest::get().uri("/zones/z1/agents")),
    ]
}

#[actix_web::test]
async fn a_revoked_identity_is_refused() {
    let h = harness().await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    let mut archived = claims();
    archived.client_id = ARCHIVED_APP.into();
    let mut unknown = claims();
    unknown.client_id = "app-unknown".into();
    let mut revoked = claims();
    revoked.sid = REVOKED_SID.into();
    let mut missing = claims();
    missing.sid = "ar-missing".into();
    for (what, c) in [
        ("archived app", archived),
        ("unknown app", unknown),
        ("revoked sid", revoked),
        ("unknown sid", missing),
    ] {
        let a = call(
            &app,
            TestRequest::post()
                .uri("/zones/z1/agents")
                .insert_header(bearer(&h.mint(&c)))
                .set_json(start_body()),
        )
        .await;
        assert_eq!(
            (a.status, a.body),
            (401, json!({"error": "identity_revoked"})),
            "{what}"
        );
        // The check runs in the request's own unit of work, or on its own before any answer
        // when the request fails before opening one: bad input, a bad path id or query, a
        // read, all lose to 401 as when the check ran first.
        for (kind, request) in revoked_identity_probes() {
            let a = call(&app, request.insert_header(bearer(&h.mint(&c)))).await;
            assert_eq!(
                (a.status, a.body),
                (401, json!({"error": "identity_revoked"})),
                "{what}: {kind}"
            );
        }
    }
    // The same probes from a standing identity get their own answers, so the 401s above are
    // the identity check's.
    for (kind, request) in revoked_identity_probes() {
        let a = call(&app, request.insert_header(bearer(&h.token()))).await;
        assert_ne!(a.status, 401, "{kind}: {}", a.body);
    }
    assert_eq!(session_count(&h.store).await, 0);
    // No sid at all: the application check alone applies.
    let mut no_sid = claims();
    no_sid.sid = String::new();
    let a = call(
        &app,
        TestRequest::get()
            .uri("/zones/z1/agents")
            .insert_header(bearer(&h.mint(&no_sid))),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
}

#[actix_web::test]
async fn the_operator_token_opens_only_operator_routes() {
    let h = harness().await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    let op = bearer(OPERATOR);
    for path in ["/zones/z1/agents", "/zones/z1/delegations/active"] {
        let a = call(&app, TestRequest::get().uri(path).insert_header(op.clone())).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
    }
    // Routes without "op": the token falls through to mandate checks.
    let a = call(
        &app,
        TestRequest::post()
            .uri("/zones/z1/agents")
            .insert_header(op.clone())
            .set_json(start_body()),
    )
    .await;
    assert_eq!((a.status, a.body), (401, json!({"error": "invalid_token"})));
    let a = call(
        &app,
        TestRequest::post()
            .uri("/zones/z1/agents/s1/lease")
            .insert_header(op.clone()),
    )
    .await;
    assert_eq!((a.status, a.body), (401, json!({"error": "invalid_token"})));
    // Only an exact match counts.
    let a = call(
        &app,
        TestRequest::get()
            .uri("/zones/z1/agents")
            .insert_header(bearer(&format!("{OPERATOR}x"))),
    )
    .await;
    assert_eq!((a.status, a.body), (401, json!({"error": "invalid_token"})));

    // Without a configured token there is no operator access at all.
    let mut closed = config();
    closed.operator_token = None;
    let h2 = harness_with(closed).await;
    let app2 = test::init_service(coordinator_app!(h2.state.clone())).await;
    let a = call(
        &app2,
        TestRequest::get()
            .uri("/zones/z1/agents")
            .insert_header(op.clone()),
    )
    .await;
    assert_eq!((a.status, a.body), (401, json!({"error": "invalid_token"})));
    let a = call(&app2, TestRequest::get().uri("/metrics").insert_header(op)).await;
    assert_eq!(
        (a.status, a.body),
        (403, json!({"error": "operator_token_required"}))
    );
}

#[actix_web::test]
async fn metrics_and_stats_take_the_operator_token() {
    let h = harness().await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    for path in ["/metrics", "/stats"] {
        let a = call(&app, TestRequest::get().uri(path)).await;
        assert_eq!((a.status, a.body), (401, json!({"error": "missing_token"})));
        let a = call(
            &app,
            TestRequest::get()
                .uri(path)
                .insert_header(bearer(&h.token())),
        )
        .await;
        assert_eq!(
            (a.status, a.body),
            (403, json!({"error": "operator_token_required"})),
            "{path}"
        );
    }
    let a = call(
        &app,
        TestRequest::get()
            .uri("/metrics")
            .insert_header(bearer(OPERATOR)),
    )
    .await;
    assert_eq!(a.status, 200);
    let text = String::from_utf8(a.raw).expect("utf8");
    for series in [
        "caracal_http_responses_total{service=\"coordinator\",class=\"4xx\"}",
        "caracal_outbox_total{status=\"dead\"} 0",
        "caracal_idempotency_requests_total{outcome=\"created\"}",
        "caracal_ttl_sweeper_runs_total",
        "caracal_retention_cleaner_runs_total",
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
    let a = call(
        &app,
        TestRequest::get()
            .uri("/stats")
            .insert_header(bearer(OPERATOR)),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["outbox"], json!({"pending": 0, "dead": 0}));

    // METRICS_BEARER must be the bearer as well; published mode without one serves nothing.
    let mut guarded = config();
    guarded.metrics_bearer = Some("other".into());
    let h2 = harness_with(guarded).await;
    let app2 = test::init_service(coordinator_app!(h2.state.clone())).await;
    let a = call(
        &app2,
        TestRequest::get()
            .uri("/metrics")
            .insert_header(bearer(OPERATOR)),
    )
    .await;
    assert_eq!((a.status, a.body), (401, json!({"error": "unauthorized"})));
    let mut published = config();
    published.published = true;
    let h3 = harness_with(published).await;
    let app3 = test::init_service(coordinator_app!(h3.state.clone())).await;
    let a = call(
        &app3,
        TestRequest::get()
            .uri("/metrics")
            .insert_header(bearer(OPERATOR)),
    )
    .await;
    assert_eq!(a.status, 401);
}

#[actix_web::test]
async fn health_and_ready() {
    let h = harness().await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    let a = call(&app, TestRequest::get().uri("/health")).await;
    assert_eq!((a.status, a.body), (200, json!({"ok": true})));
    let a = call(&app, TestRequest::get().uri("/ready")).await;
    assert_eq!((a.status, a.body), (200, json!({"ok": true})));
    // Public: no bearer needed, and a bearer is not looked at.
    let a = call(
        &app,
        TestRequest::get()
            .uri("/ready")
            .insert_header(("authorization", "garbage")),
    )
    .await;
    assert_eq!(a.status, 200);
}

#[actix_web::test]
async fn request_ids_are_adopted_or_assigned_and_always_echoed() {
    let h = harness().await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    let a = call(
        &app,
        TestRequest::get()
            .uri("/zones/z1/agents")
            .insert_header(("x-request-id", "req-123:abc")),
    )
    .await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.headers.get("x-request-id").expect("header"),
        "req-123:abc"
    );
    let a = call(
        &app,
        TestRequest::get()
            .uri("/health")
            .insert_header(("x-request-id", "bad id with spaces")),
    )
    .await;
    let assigned = a
        .headers
        .get("x-request-id")
        .expect("header")
        .to_str()
        .expect("ascii");
    assert_ne!(assigned, "bad id with spaces");
    assert!(uuid::Uuid::parse_str(assigned).is_ok(), "{assigned}");
    // Error bodies that carry the id carry the same one.
    let a = call(
        &app,
        TestRequest::post()
            .uri("/zones/z1/agents")
            .insert_header(bearer(&h.token()))
            .insert_header(("x-request-id", "rid-1"))
            .insert_header(("content-type", "application/json"))
            .set_payload("{not json"),
    )
    .await;
    assert_eq!(a.body["requestId"], "rid-1");
    assert_eq!(a.headers.get("x-request-id").expect("header"), "rid-1");
}

#[actix_web::test]
async fn error_envelopes_have_the_contract_shapes() {
    let h = harness().await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    let token = h.token();
    // Framework: bad JSON (400), wrong media type (415), both before authentication.
    let a = call(
        &app,
        TestRequest::post()
            .uri("/zones/z1/agents")
            .insert_header(("x-request-id", "r-json"))
            .insert_header(("content-type", "application/json"))
            .set_payload("{"),
    )
    .await;
    assert_eq!(
        (a.status, a.body),
        (
            400,
            json!({"error": "internal_error", "error_description": "The service failed to process the request", "requestId": "r-json"})
        )
    );
    let a = call(
        &app,
        TestRequest::post()
            .uri("/zones/z1/agents")
            .insert_header(bearer(&token))
            .insert_header(("content-type", "text/plain"))
            .set_payload("hello"),
    )
    .await;
    assert_eq!(
        (a.status, &a.body["error"]),
        (415, &json!("internal_error"))
    );

    // Body schema: invalid_body with issues and requestId.
    let a = call(
        &app,
        TestRequest::post()
            .uri("/zones/z1/agents")
            .insert_header(bearer(&token))
            .insert_header(("x-request-id", "r-body"))
            .set_json(json!({"application_id": APP, "ttl_seconds": 0})),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["error"], "invalid_body");
    assert_eq!(
        a.body["error_description"],
        "Request body failed validation"
    );
    assert_eq!(a.body["requestId"], "r-body");
    assert!(
        a.body["details"]["issues"][0]["path"].is_array(),
        "{}",
        a.body
    );

    // Idempotency keys: snake_case request_id and a message.
    let a = call(
        &app,
        TestRequest::post()
            .uri("/zones/z1/agents")
            .insert_header(bearer(&token))
            .insert_header(("x-request-id", "r-key"))
            .append_header(("idempotency-key", "one"))
            .append_header(("idempotency-key", "two"))
            .set_json(start_body()),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.body["error"], "idempotency_key_multiple");
    assert_eq!(a.body["request_id"], "r-key");
    assert!(a.body["message"].is_string());
    let a = call(
        &app,
        TestRequest::post()
            .uri("/zones/z1/agents")
            .insert_header(bearer(&token))
            .insert_header(("idempotency-key", " padded"))
            .set_json(start_body()),
    )
    .await;
    assert_eq!(a.body["error"], "idempotency_key_invalid", "{}", a.body);

    // A malformed path id.
    let a = call(
        &app,
        TestRequest::get()
            .uri("/zones/z1/agents/bad%20id")
            .insert_header(bearer(&token)),
    )
    .await;
    assert_eq!(
        (a.status, &a.body["error"]),
        (400, &json!("invalid_params"))
    );

    // Unknown routes and wrong methods: the framework's 404.
    for req in [
        TestRequest::get().uri("/nope"),
        TestRequest::put().uri("/zones/z1/agents"),
    ] {
        let a = call(&app, req).await;
        assert_eq!((a.status, &a.body["error"]), (404, &json!("Not Found")));
    }
    assert_eq!(session_count(&h.store).await, 0, "refusals write nothing");
}

#[actix_web::test]
async fn bodies_over_the_limit_are_413() {
    let mut small = config();
    small.body_limit = 1024;
    let h = harness_with(small).await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    let big = json!({"application_id": APP, "metadata": {"blob": "x".repeat(2048)}});
    let a = call(
        &app,
        TestRequest::post()
            .uri("/zones/z1/agents")
            .insert_header(bearer(&h.token()))
            .insert_header(("x-request-id", "r-big"))
            .set_json(big),
    )
    .await;
    assert_eq!(
        (a.status, a.body),
        (
            413,
            json!({"error": "internal_error", "error_description": "The service failed to process the request", "requestId": "r-big"})
        )
    );
    assert_eq!(session_count(&h.store).await, 0);
}

#[actix_web::test]
async fn the_per_ip_limit_answers_429_except_on_health() {
    let mut limited = config();
    limited.global_limit_per_min = 3;
    let h = harness_with(limited).await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    let peer = "10.1.2.3:5000".parse().expect("addr");
    for _ in 0..3 {
        let a = call(&app, TestRequest::get().uri("/ready").peer_addr(peer)).await;
        assert_eq!(a.status, 200);
    }
    let a = call(&app, TestRequest::get().uri("/ready").peer_addr(peer)).await;
    assert_eq!((a.status, a.body), (429, json!({"error": "rate_limited"})));
    assert!(a.headers.get("retry-after").is_none());
    assert!(a.headers.get("x-request-id").is_some());
    let a = call(&app, TestRequest::get().uri("/health").peer_addr(peer)).await;
    assert_eq!(a.status, 200, "/health is exempt");
    // Another address has its own window.
    let other = "10.9.9.9:5000".parse().expect("addr");
    let a = call(&app, TestRequest::get().uri("/ready").peer_addr(other)).await;
    assert_eq!(a.status, 200);
}

#[actix_web::test]
async fn invocation_changes_are_rate_limited_per_application() {
    let mut limited = config();
    limited.invocation_limit_per_min = 1;
    let h = harness_with(limited).await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    let token = h.token();
    let first = call(
        &app,
        TestRequest::patch()
            .uri("/zones/z1/invocations/inv-1/start")
            .insert_header(bearer(&token)),
    )
    .await;
    assert_ne!(first.status, 429, "{}", first.body);
    let second = call(
        &app,
        TestRequest::patch()
            .uri("/zones/z1/invocations/inv-1/cancel")
            .insert_header(bearer(&token)),
    )
    .await;
    assert_eq!(
        (second.status, second.body),
        (429, json!({"error": "rate_limited"}))
    );
}

#[actix_web::test]
async fn a_task_session_starts_replays_and_terminates() {
    let h = harness().await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    let token = h.token();
    let start = || {
        TestRequest::post()
            .uri("/zones/z1/agents")
            .insert_header(bearer(&token))
            .insert_header(("idempotency-key", "start-1"))
            .set_json(start_body())
    };
    let a = call(&app, start()).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert!(a.headers.get("idempotency-replayed").is_none());
    let id = a.body["agent_session_id"]
        .as_str()
        .expect("agent_session_id")
        .to_owned();
    assert_eq!(a.body["lifecycle"], "task");
    assert_eq!(a.body["status"], "active");

    let replay = call(&app, start()).await;
    assert_eq!(replay.status, 201);
    assert_eq!(
        replay.headers.get("idempotency-replayed").expect("header"),
        "true"
    );
    assert_eq!(replay.body, a.body);
    assert_eq!(session_count(&h.store).await, 1);

    let got = call(
        &app,
        TestRequest::get()
            .uri(&format!("/zones/z1/agents/{id}"))
            .insert_header(bearer(&token)),
    )
    .await;
    assert_eq!((got.status, &got.body["status"]), (200, &json!("active")));

    let end = call(
        &app,
        TestRequest::delete()
            .uri(&format!("/zones/z1/agents/{id}?reason=done"))
            .insert_header(bearer(&token)),
    )
    .await;
    assert_eq!(end.status, 204, "{:?}", String::from_utf8_lossy(&end.raw));
    assert!(end.raw.is_empty());

    let got = call(
        &app,
        TestRequest::get()
            .uri(&format!("/zones/z1/agents/{id}"))
            .insert_header(bearer(OPERATOR)),
    )
    .await;
    assert_eq!(got.body["status"], "terminated", "{}", got.body);
    assert_eq!(got.body["termination_reason"], "done");

    // Terminating again is a 404 (already terminal); a repeated reason is a bad query.
    let again = call(
        &app,
        TestRequest::delete()
            .uri(&format!("/zones/z1/agents/{id}"))
            .insert_header(bearer(&token)),
    )
    .await;
    assert_eq!(again.status, 404, "{}", again.body);
    let twice = call(
        &app,
        TestRequest::delete()
            .uri(&format!("/zones/z1/agents/{id}?reason=a&reason=b"))
            .insert_header(bearer(&token)),
    )
    .await;
    assert_eq!(
        (twice.status, &twice.body["error"]),
        (400, &json!("invalid_query"))
    );

    let metrics = call(
        &app,
        TestRequest::get()
            .uri("/metrics")
            .insert_header(bearer(OPERATOR)),
    )
    .await;
    let text = String::from_utf8(metrics.raw).expect("utf8");
    assert!(
        text.contains("caracal_idempotency_requests_total{outcome=\"created\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("caracal_idempotency_requests_total{outcome=\"replayed\"} 1"),
        "{text}"
    );
}

#[actix_web::test]
async fn verify_checks_mandates_for_other_callers() {
    let h = harness().await;
    let app = test::init_service(coordinator_app!(h.state.clone())).await;
    let token = h.token();
    let verify = |body: Value| TestRequest::post().uri("/v1/verify").set_json(body);

    let a = call(&app, verify(json!({"token": token, "zone_id": "z1"}))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["valid"], true);
    assert_eq!(a.body["claims"]["zoneId"], "z1");
    assert_eq!(a.body["claims"]["clientId"], APP);
    assert_eq!(a.body["claims"]["authorityRecordId"], SID);
    assert_eq!(a.body["claims"]["use"], "session");
    assert_eq!(a.body["claims"]["targetResources"], json!(["resource://r"]));

    let a = call(
        &app,
        verify(json!({"authorization": format!("Bearer {token}"), "zone_id": "z1", "required_scope": "agent:lifecycle"})),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);

    for (body, status, error) in [
        (
            json!({"token": token, "zone_id": "z2"}),
            401,
            "token_invalid",
        ),
        (
            json!({"token": token, "zone_id": "z1", "required_scope": "x"}),
            401,
            "token_invalid",
        ),
        (
            json!({"token": token, "zone_id": "z1", "require_session": true}),
            401,
            "token_invalid",
        ),
        (
            json!({"token": token, "zone_id": "z1", "extra": 1}),
            400,
            "invalid_request",
        ),
        (
            json!({"token": "", "zone_id": "z1"}),
            400,
            "invalid_request",
        ),
        (json!({"zone_id": "z1"}), 400, "missing_token"),
        (
            json!({"authorization": "Bearer   ", "zone_id": "z1"}),
            400,
            "missing_token",
        ),
        (json!({"token": token}), 400, "invalid_request"),
    ] {
        let a = call(&app, verify(body.clone())).await;
        assert_eq!(
            (a.status, a.body),
            (status, json!({"valid": false, "error": error})),
            "{body}"
        );
    }
    let mut gateway = claims();
    gateway.use_ = MandateUse::Gateway;
    let a = call(
        &app,
        verify(json!({"token": h.mint(&gateway), "zone_id": "z1"})),
    )
    .await;
    assert_eq!((a.status, &a.body["error"]), (401, &json!("token_invalid")));

    let mut limited = config();
    limited.verify_limit_per_min = 1;
    let h2 = harness_with(limited).await;
    let app2 = test::init_service(coordinator_app!(h2.state.clone())).await;
    call(&app2, verify(json!({"zone_id": "z1"}))).await;
    let a = call(&app2, verify(json!({"zone_id": "z1"}))).await;
    assert_eq!(
        (a.status, a.body),
        (429, json!({"valid": false, "error": "rate_limited"}))
    );
}

#[actix_web::test]
async fn the_in_process_sts_keys_verify_its_mandates() {
    let store = MemoryStore::new();
    seed(&store).await;
    let es256: Arc<dyn Es256> = Arc::new(RingEs256::new());
    let keys = Arc::new(ZoneKeys::new(
        Arc::new(store.clone()),
        Arc::new(EnvelopeSealer::new(
            Kek::generate().expect("kek"),
            Vec::new(),
        )),
        Arc::clone(&es256),
        Arc::new(UuidV7Ids),
        Arc::new(SystemClock),
    ));
    let (kid, signer) = keys.signer(&zone("z1")).await.expect("signer");
    let state = state_over(&store, keys, config());
    let app = test::init_service(coordinator_app!(state)).await;
    let token = encode(&kid, &claims(), signer.as_ref()).expect("mint");
    let a = call(
        &app,
        TestRequest::get()
            .uri("/zones/z1/agents")
            .insert_header(bearer(&token)),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["items"], json!([]));
    // Zone z2 never minted: nothing verifies there.
    let mut z2 = claims();
    z2.zone_id = "z2".into();
    let token = encode(&kid, &z2, signer.as_ref()).expect("mint");
    let a = call(
        &app,
        TestRequest::get()
            .uri("/zones/z2/agents")
            .insert_header(bearer(&token)),
    )
    .await;
    assert_eq!((a.status, a.body), (401, json!({"error": "invalid_token"})));
}

/// Counts the key lookups a verification makes.
struct CountingKeys {
    keys: VerifyingKeys,
    lookups: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl ZoneKeySource for CountingKeys {
    async fn verifying_keys(
        &self,
        _zone: &ZoneId,
        _kid: &str,
    ) -> caracal_core::Result<VerifyingKeys> {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(self.keys.clone())
    }
}

/// A mandate presented again within a few seconds is not verified again (`mandate::verified`),
/// but anything else about the request still is: a token differing by one character is
/// verified (and refused), and a revoked authority record is refused on the very next request.
#[actix_web::test]
async fn a_verified_mandate_is_trusted_briefly_and_nothing_else_is() {
    let store = MemoryStore::new();
    seed(&store).await;
    let es256 = RingEs256::new();
    let signer = es256
        .load_signer(&es256.generate_pem().expect("pem"))
        .expect("signer");
    let keys = Arc::new(CountingKeys {
        keys: VerifyingKeys::new(vec![VerifyingKey::new(KID, signer.public_point().to_vec())]),
        lookups: std::sync::atomic::AtomicUsize::new(0),
    });
    let state = state_over(
        &store,
        Arc::clone(&keys) as Arc<dyn ZoneKeySource>,
        config(),
    );
    let app = test::init_service(coordinator_app!(state.clone())).await;
    let lookups = || keys.lookups.load(std::sync::atomic::Ordering::SeqCst);
    let token = encode(KID, &claims(), signer.as_ref()).expect("mint");
    for _ in 0..3 {
        let a = call(
            &app,
            TestRequest::get()
                .uri("/zones/z1/agents")
                .insert_header(bearer(&token)),
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    assert_eq!(lookups(), 1, "one verification for three requests");

    // One character off in the signature: a different token, verified and refused.
    let mut tampered = token.clone();
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let a = call(
        &app,
        TestRequest::get()
            .uri("/zones/z1/agents")
            .insert_header(bearer(&tampered)),
    )
    .await;
    assert_eq!((a.status, a.body), (401, json!({"error": "invalid_token"})));
    assert_eq!(lookups(), 2);

    // The identity check is not cached: revoking the record refuses the trusted token.
    let mut uow = store
        .begin(&ZoneScope::Zone(zone("z1")))
        .await
        .expect("begin");
    uow.save_authority_record(&record("z1", SID, RecordStatus::Revoked))
        .await
        .expect("revoke");
    uow.commit().await.expect("commit");
    let a = call(
        &app,
        TestRequest::get()
            .uri("/zones/z1/agents")
            .insert_header(bearer(&token)),
    )
    .await;
    assert_eq!(
        (a.status, a.body),
        (401, json!({"error": "identity_revoked"}))
    );
    assert_eq!(
        lookups(),
        2,
        "still trusted: only the identity check refused it"
    );
}
