//! Service tests: the STS and the API actix apps in process on one memory store. The API seeds
//! what an adopter would (zone, provider, resource, application, grant policy, activation); the
//! test writes the Coordinator's Sessions and Delegations directly (the Coordinator is another
//! service). Each test asserts what a caller would notice: status, error code and description,
//! claims, and that refused requests mint nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::test::{self, TestRequest};
use base64::Engine;
use caracal_api::{api_app, ApiConfig, ApiState};
use caracal_core::authority::{
    AgentSession, AuthorityRecord, DelegationEdge, Lifecycle, RecordStatus,
};
use caracal_core::ids::ZoneId;
use caracal_core::manage::{Management, ManagementConfig};
use caracal_core::mandate::{MandateClaims, MandateUse, SubType};
use caracal_core::policy::PolicyCache;
use caracal_core::ports::{
    AuthorityVersions, Clock, Es256, ExpiringKeys, ExpiringKeysError, LimiterError,
    MessageAuthenticator, RateLimiter, Store, VersionsError, ZoneScope,
};
use caracal_core::sts::gateway_sig::SignedHeaders;
use caracal_core::sts::keys::ZoneKeys;
use caracal_core::sts::{Sts, StsConfig, StsPorts};
use caracal_crypto::{Argon2idHasher, EnvelopeSealer, HmacSha256, Kek, RandomSecrets, RingEs256};
use caracal_http::metrics::HttpCounters;
use caracal_memory::{
    MemoryAuthorityVersions, MemoryBus, MemoryExpiringKeys, MemoryRateLimiter, MemoryStore,
    SystemClock, UuidV7Ids,
};
use caracal_sts::{sts_app, StsServiceConfig, StsState};
use serde_json::{json, Map, Value};

mod support;
use support::{b64, body_of, claims_of, form, token_call as mint, Recorded, GRANT};

const ADMIN: &str = "cat_sts_service_test_token";
const ISSUER: &str = "http://sts.test";
const GATEWAY_KEY: [u8; 32] = [9u8; 32];
const ACCESS: &str = "urn:ietf:params:oauth:token-type:access_token";

struct Harness {
    store: MemoryStore,
    versions: Arc<MemoryAuthorityVersions>,
    api: ApiState,
    sts: StsState,
    audit: Arc<Recorded>,
}

async fn harness(mint_limit: u64) -> Harness {
    harness_observed(mint_limit, None).await
}

/// Calls to the single-use keys, the rate limiter and the authority versions, and the waves
/// they went out in (a wave starts when a call begins while none is in flight): the STS's
/// independent Redis checks should be sent together (one round trip on the connection they
/// share in production), not one after another.
#[derive(Default)]
struct Flight {
    now: AtomicUsize,
    calls: AtomicUsize,
    waves: AtomicUsize,
}

impl Flight {
    async fn during<T>(&self, call: impl std::future::Future<Output = T>) -> T {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.now.fetch_add(1, Ordering::SeqCst) == 0 {
            self.waves.fetch_add(1, Ordering::SeqCst);
        }
        // Give calls made alongside this one the chance to start before it ends.
        tokio::task::yield_now().await;
        let out = call.await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        out
    }

    /// (calls, waves) since the last call of this.
    fn take(&self) -> (usize, usize) {
        (
            self.calls.swap(0, Ordering::SeqCst),
            self.waves.swap(0, Ordering::SeqCst),
        )
    }
}

struct Observed<T: ?Sized> {
    inner: Arc<T>,
    flight: Arc<Flight>,
}

#[async_trait::async_trait]
impl ExpiringKeys for Observed<dyn ExpiringKeys> {
    async fn set_if_absent(
        &self,
        key: &str,
        value: &str,
        ttl_seconds: u64,
    ) -> Result<bool, ExpiringKeysError> {
        self.flight
            .during(self.inner.set_if_absent(key, value, ttl_seconds))
            .await
    }
    async fn exists(&self, key: &str) -> Result<bool, ExpiringKeysError> {
        self.flight.during(self.inner.exists(key)).await
    }
}

#[async_trait::async_trait]
impl AuthorityVersions for Observed<dyn AuthorityVersions> {
    async fn current(&self, zone: &ZoneId) -> Result<u64, VersionsError> {
        self.flight.during(self.inner.current(zone)).await
    }
    async fn advance(&self, zone: &ZoneId) -> Result<(), VersionsError> {
        self.flight.during(self.inner.advance(zone)).await
    }
}

#[async_trait::async_trait]
impl RateLimiter for Observed<dyn RateLimiter> {
    async fn hit(&self, key: &str, window: i64) -> Result<u64, LimiterError> {
        self.flight.during(self.inner.hit(key, window)).await
    }
    async fn hit_and_peek(
        &self,
        hits: &[String],
        peeks: &[String],
        window: i64,
    ) -> Result<(Vec<u64>, Vec<u64>), LimiterError> {
        self.flight
            .during(self.inner.hit_and_peek(hits, peeks, window))
            .await
    }
    async fn count(&self, key: &str, window: i64) -> Result<u64, LimiterError> {
        self.flight.during(self.inner.count(key, window)).await
    }
}

async fn harness_observed(mint_limit: u64, flight: Option<Arc<Flight>>) -> Harness {
    let store = MemoryStore::new();
    let versions = Arc::new(MemoryAuthorityVersions::new());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sealer = Arc::new(EnvelopeSealer::new(
        Kek::generate().expect("kek"),
        Vec::new(),
    ));
    // Cheap Argon2 parameters keep tests fast; production parameters are covered in caracal-crypto.
    let hasher = Arc::new(Argon2idHasher::with_params(256, 1, 1).expect("params"));
    let management = Management::new(
        Arc::new(store.clone()),
        Arc::clone(&clock),
        Arc::new(UuidV7Ids),
        sealer.clone(),
        hasher.clone(),
        Arc::new(RandomSecrets::new()),
        None,
        ManagementConfig::default(),
    );
    management.seed_bootstrap_token(ADMIN).await.expect("seed");
    let api = ApiState {
        management,
        outbox: Arc::new(store.clone()),
        bus: Arc::new(MemoryBus::new()),
        store: Arc::new(store.clone()),
        audit: Arc::new(caracal_memory::MemoryLedger::new(Arc::new(SystemClock))),
        counters: Arc::new(HttpCounters::default()),
        limiter: Arc::new(MemoryRateLimiter::new()),
        config: Arc::new(ApiConfig::default()),
    };
    let es256: Arc<dyn Es256> = Arc::new(RingEs256::new());
    let audit = Arc::new(Recorded::default());
    let keys = Arc::new(ZoneKeys::new(
        Arc::new(store.clone()),
        sealer.clone(),
        Arc::clone(&es256),
        Arc::new(UuidV7Ids),
        Arc::clone(&clock),
    ));
    let policies = Arc::new(PolicyCache::new(
        Arc::new(store.clone()),
        Arc::clone(&clock),
    ));
    let mut expiring: Arc<dyn ExpiringKeys> = Arc::new(MemoryExpiringKeys::new(Arc::clone(&clock)));
    let mut sts_versions: Arc<dyn AuthorityVersions> = versions.clone();
    let mut limiter: Arc<dyn RateLimiter> = Arc::new(MemoryRateLimiter::new());
    if let Some(flight) = flight {
        expiring = Arc::new(Observed {
            inner: expiring,
            flight: Arc::clone(&flight),
        });
        sts_versions = Arc::new(Observed {
            inner: sts_versions,
            flight: Arc::clone(&flight),
        });
        limiter = Arc::new(Observed {
            inner: limiter,
            flight,
        });
    }
    let sts = Arc::new(Sts::new(
        StsPorts {
            store: Arc::new(store.clone()),
            clock: Arc::clone(&clock),
            ids: Arc::new(UuidV7Ids),
            hasher,
            sealer,
            es256,
            limiter,
            expiring,
            audit: audit.clone(),
            versions: sts_versions,
            gateway_mac: Some(Arc::new(HmacSha256::from_bytes(&GATEWAY_KEY))),
        },
        keys,
        policies,
        StsConfig {
            issuer: ISSUER.into(),
            control_audience: "caracal-control".into(),
            mint_limit_per_min: mint_limit,
        },
    ));
    let config = StsServiceConfig {
        host: "127.0.0.1".into(),
        port: 0,
        issuer: ISSUER.into(),
        control_audience: "caracal-control".into(),
        mint_limit_per_min: mint_limit,
        secret_verify_concurrency: 2,
        policy_poll_seconds: 60,
        admin_token: Some("sat_rotate".into()),
        metrics_bearer: None,
        dev: true,
    };
    let state = StsState {
        sts,
        store: Arc::new(store.clone()),
        bus: Arc::new(MemoryBus::new()),
        audit: audit.clone(),
        counters: Arc::new(HttpCounters::default()),
        config: Arc::new(config),
    };
    Harness {
        store,
        versions,
        api,
        sts: state,
        audit,
    }
}

async fn admin<S, B>(app: &S, method: &str, path: &str, body: Value) -> Value
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let req = TestRequest::default()
        .method(method.parse().expect("method"))
        .uri(path)
        .insert_header(("authorization", format!("Bearer {ADMIN}")))
        .set_json(body);
    let (status, value) = body_of(test::call_service(app, req.to_request()).await).await;
    assert!(status < 300, "{method} {path}: {status} {value}");
    value
}

/// A zone where application `app` holds role `reader` (`svc:read`) on `resource://svc`.
struct World {
    zone: String,
    app: String,
    secret: String,
    resource_id: String,
}

const RESOURCE: &str = "resource://svc";

async fn world<S, B>(app: &S) -> World
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let zone = admin(app, "POST", "/v1/zones", json!({"name": "sts tests"})).await;
    let z = zone["id"].as_str().expect("zone").to_owned();
    let provider = admin(
        app,
        "POST",
        &format!("/v1/zones/{z}/providers"),
        json!({"name": "svc token", "kind": "bearer_token", "config_json": {"bearer_token": "upstream-secret"}}),
    )
    .await;
    let resource = admin(
        app,
        "POST",
        &format!("/v1/zones/{z}/resources"),
        json!({"name": "svc", "identifier": RESOURCE, "scopes": ["svc:read", "svc:write"],
               "upstream_url": "https://svc.example.test/api", "credential_provider_id": provider["id"],
               "operation_enforcement": "transport_uniform"}),
    )
    .await;
    let application = admin(
        app,
        "POST",
        &format!("/v1/zones/{z}/applications"),
        json!({"name": "agent", "registration_method": "managed"}),
    )
    .await;
    let a = application["id"].as_str().expect("app").to_owned();
    let doc = format!(
        "# caracal:data-document\npackage caracal.authz\nimport rego.v1\n\
         app_ids := {{\"agent\": \"{a}\"}}\n\
         grants := {{\"{RESOURCE}\": {{\"application\": \"agent\", \"roles\": {{\"reader\": [\"svc:read\"], \"writer\": [\"svc:read\", \"svc:write\"]}}}}}}\n\
         confinement := [{{\"label_prefix\": \"sandbox\", \"scopes\": [\"svc:read\"]}}]\n\
         risk := [{{\"scope\": \"svc:write\", \"tier\": \"high\"}}]\n\
         approval_tiers := [{{\"tier\": \"high\"}}]\n"
    );
    let policy = admin(
        app,
        "POST",
        &format!("/v1/zones/{z}/policies"),
        json!({"name": "grants", "content": doc}),
    )
    .await;
    let set = admin(
        app,
        "POST",
        &format!("/v1/zones/{z}/policy-sets"),
        json!({"name": "main"}),
    )
    .await;
    let version = admin(
        app,
        "POST",
        &format!(
            "/v1/zones/{z}/policy-sets/{}/versions",
            set["id"].as_str().expect("set")
        ),
        json!({"manifest": [{"policy_version_id": policy["version_id"]}]}),
    )
    .await;
    admin(
        app,
        "POST",
        &format!(
            "/v1/zones/{z}/policy-sets/{}/activate",
            set["id"].as_str().expect("set")
        ),
        json!({"version_id": version["version_id"]}),
    )
    .await;
    World {
        zone: z,
        app: a,
        secret: application["client_secret"]
            .as_str()
            .expect("secret")
            .to_owned(),
        resource_id: resource["id"].as_str().expect("resource").to_owned(),
    }
}

/// Seeds a parent and a child Session of `w.app` and an edge parent → child.
async fn graph(
    h: &Harness,
    w: &World,
    anchor: &str,
    labels: &[&str],
    edge: Value,
) -> (String, String) {
    let now = SystemClock.now();
    let zone = ZoneId::parse(&w.zone).expect("zone");
    let session = |id: &str, parent: Option<&str>, labels: &[&str]| AgentSession {
        id: id.into(),
        zone_id: zone.clone(),
        application_id: w.app.clone(),
        subject_session_id: anchor.into(),
        parent_id: parent.map(str::to_owned),
        lifecycle: Lifecycle::Task,
        labels: labels.iter().map(|s| s.to_string()).collect(),
        status: "active".into(),
        depth: i32::from(parent.is_some()),
        ttl_seconds: Some(3600),
        started_at: now,
        last_heartbeat_at: None,
        heartbeat_deadline_at: None,
        lease_generation: 0,
        child_count: 0,
        metadata: Map::new(),
        status_reason: None,
        ended_at: None,
        created_at: now,
        updated_at: now,
    };
    let parent_id = format!("s-parent-{}", uuid_like());
    let child_id = format!("s-child-{}", uuid_like());
    let edge_id = edge["id"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("d-{}", uuid_like()));
    let mut uow = h.store.begin(&ZoneScope::All).await.expect("begin");
    uow.save_agent_session(&session(&parent_id, None, &[]))
        .await
        .expect("parent");
    uow.save_agent_session(&session(&child_id, Some(&parent_id), labels))
        .await
        .expect("child");
    let constraints = edge["constraints"].as_object().cloned().unwrap_or_default();
    uow.save_delegation_edge(&DelegationEdge {
        id: edge_id.clone(),
        zone_id: zone.clone(),
        source_session_id: parent_id.clone(),
        target_session_id: child_id.clone(),
        issuer_application_id: w.app.clone(),
        receiver_application_id: w.app.clone(),
        parent_edge_id: None,
        resource_id: edge["resource_id"].as_str().map(str::to_owned),
        scopes: edge["scopes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        constraints_json: constraints,
        status: edge["status"].as_str().unwrap_or("active").into(),
        expires_at: now.plus_millis(3_600_000),
        edge_version: 0,
        revoked_at: None,
        created_at: now,
    })
    .await
    .expect("edge");
    uow.bump_delegation_graph_epoch(&zone).await.expect("epoch");
    uow.commit().await.expect("commit");
    (child_id, edge_id)
}

fn uuid_like() -> String {
    caracal_core::ports::IdGenerator::new_id(&UuidV7Ids)
}

/// Mints the application's bootstrap session mandate and answers its authority record (`sid`),
/// the anchor of the Sessions a test then writes.
async fn application_anchor<S, B>(sts: &S, w: &World) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let (status, session) = mint(sts, bootstrap(w), &[]).await;
    assert_eq!(status, 200, "{session}");
    claims_of(session["access_token"].as_str().expect("token"))["sid"]
        .as_str()
        .expect("sid")
        .to_owned()
}

/// A world whose application has a parent and a child Session and an edge parent → child for
/// `svc:read` on `RESOURCE`: (world, child Session, edge).
async fn reader_edge<A, BA, S, BS>(h: &Harness, api: &A, sts: &S) -> (World, String, String)
where
    A: Service<actix_http::Request, Response = ServiceResponse<BA>, Error = actix_web::Error>,
    BA: MessageBody,
    S: Service<actix_http::Request, Response = ServiceResponse<BS>, Error = actix_web::Error>,
    BS: MessageBody,
{
    let w = world(api).await;
    let anchor = application_anchor(sts, &w).await;
    let (child, edge) = graph(
        h,
        &w,
        &anchor,
        &["reader"],
        json!({"scopes": ["svc:read"], "resource_id": w.resource_id,
               "constraints": {"resources": [RESOURCE]}}),
    )
    .await;
    (w, child, edge)
}

fn bootstrap(w: &World) -> String {
    form(&[
        ("grant_type", GRANT),
        ("zone_id", &w.zone),
        ("application_id", &w.app),
        ("client_secret", &w.secret),
        ("scope", "agent:lifecycle"),
        ("resource", RESOURCE),
    ])
}

fn delegated(w: &World, session: &str, edge: &str, scope: &str) -> String {
    form(&[
        ("grant_type", GRANT),
        ("zone_id", &w.zone),
        ("application_id", &w.app),
        ("client_secret", &w.secret),
        ("scope", scope),
        ("resource", RESOURCE),
        ("agent_session_id", session),
        ("delegation_edge_id", edge),
    ])
}

/// The Gateway's signed exchange of a gateway mandate.
fn signed_exchange(
    w: &World,
    mandate: &str,
    request_id: &str,
) -> (String, Vec<(&'static str, String)>) {
    let body = form(&[
        ("grant_type", GRANT),
        ("zone_id", &w.zone),
        ("application_id", &w.app),
        ("subject_token", mandate),
        ("subject_token_type", ACCESS),
        ("resource", RESOURCE),
        ("request_method", "GET"),
        ("request_path", "/v1/items"),
        ("gateway_request_id", request_id),
    ]);
    let headers = sign(&body, request_id);
    (body, headers)
}

fn sign(body: &str, request_id: &str) -> Vec<(&'static str, String)> {
    let unix = SystemClock.now().unix_seconds();
    let nonce = uuid_like();
    let canonical = format!(
        "{unix}\n{nonce}\nPOST\n/oauth/2/token\n{}",
        caracal_core::digest::sha256_hex(body.as_bytes())
    );
    let sig = HmacSha256::from_bytes(&GATEWAY_KEY).sign_hex(canonical.as_bytes());
    vec![
        ("x-caracal-gateway-timestamp", unix.to_string()),
        ("x-caracal-gateway-request", nonce),
        ("x-caracal-gateway-signature", sig),
        ("x-request-id", request_id.to_owned()),
    ]
}

#[actix_web::test]
async fn bootstrap_delegated_mint_and_gateway_exchange() {
    let h = harness(1_000).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;

    let anchor = application_anchor(&sts, &w).await;

    let (child, edge) = graph(
        &h,
        &w,
        &anchor,
        &["reader"],
        json!({"scopes": ["svc:read", "svc:write"], "resource_id": w.resource_id,
               "constraints": {"resources": [RESOURCE], "ttl_seconds": 600}}),
    )
    .await;

    // Delegated mint: a single-use gateway mandate narrowed to the delegation.
    let (status, minted) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    assert_eq!(status, 200, "{minted}");
    assert_eq!(minted["expires_in"], 600, "clamped to the constraint ttl");
    let gateway = minted["access_token"].as_str().expect("token").to_owned();
    let c = claims_of(&gateway);
    assert_eq!(c["use"], "gateway");
    assert_eq!(c["aud"], json!([ISSUER]));
    assert_eq!(c["scope"], "svc:read");
    assert_eq!(c["target"], json!([RESOURCE]));
    assert_eq!(c["agent_session_id"], child.as_str());
    assert_eq!(c["delegation_edge_id"], edge.as_str());
    assert_eq!(c["target_session_id"], child.as_str());
    assert_eq!(c["delegation_path"], json!([edge]));
    assert_eq!(c["hop_count"], 1);
    assert_eq!(c["delegation_graph_epoch"], 1);
    assert_eq!(
        c["sid"], c["root_sid"],
        "gateway mandates are their own root"
    );
    let chain = c["delegation_chain"].as_array().expect("chain");
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0]["delegation_edge_id"], edge.as_str());
    assert_eq!(chain[1]["agent_session_id"], child.as_str());
    assert!(chain[1].get("delegation_edge_id").is_none());

    // The allow is evidence with the determining policy.
    let events = h.audit.0.lock().expect("lock").clone();
    let allow = events
        .iter()
        .rev()
        .find(|e| e.decision == "allow")
        .expect("allow event");
    let name = allow.determining_policies_json.as_ref().expect("policies")[0]["policy"]
        .as_str()
        .expect("name")
        .to_owned();
    assert_eq!(name, "caracal-agent-mint");
    assert_eq!(
        allow.metadata_json.as_ref().expect("metadata")["delegation_edge_id"],
        edge.as_str()
    );

    // A gateway mandate presented directly is not a session mandate.
    let direct = form(&[
        ("grant_type", GRANT),
        ("zone_id", &w.zone),
        ("application_id", &w.app),
        ("client_secret", &w.secret),
        ("subject_token", &gateway),
        ("subject_token_type", ACCESS),
        ("resource", RESOURCE),
    ]);
    let (status, body) = mint(&sts, direct, &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );

    // A forged envelope is refused before anything else.
    let (body, mut headers) = signed_exchange(&w, &gateway, "gw-req-0");
    headers[2].1 = "00".repeat(32);
    let (status, refused) = mint(&sts, body, &headers).await;
    assert_eq!(status, 401, "{refused}");
    assert_eq!(
        refused["error_description"],
        "invalid gateway exchange signature"
    );

    // The Gateway exchange: a resource mandate plus the private upstream directive.
    let (body, headers) = signed_exchange(&w, &gateway, "gw-req-1");
    let (status, exchanged) = mint(&sts, body, &headers).await;
    assert_eq!(status, 200, "{exchanged}");
    let resource = exchanged["access_token"].as_str().expect("token");
    let r = claims_of(resource);
    assert_eq!(r["use"], "resource");
    assert_eq!(r["aud"], json!([RESOURCE]));
    assert_eq!(
        r["scope"], "svc:read",
        "inherited from the presented mandate"
    );
    assert_eq!(
        r["root_sid"], c["sid"],
        "resource mandates carry the gateway mandate's root"
    );
    assert_ne!(r["sid"], c["sid"]);
    let upstream = &exchanged["upstreams"][RESOURCE];
    assert_eq!(upstream["url"], "https://svc.example.test/api");
    assert_eq!(upstream["auth_mode"], "provider_oauth");
    assert_eq!(upstream["provider_token"], "upstream-secret");
    assert_eq!(upstream["auth_header"], "Authorization");
    assert_eq!(upstream["auth_scheme"], "Bearer");

    // Single use: the same gateway mandate cannot be exchanged twice.
    let (body, headers) = signed_exchange(&w, &gateway, "gw-req-2");
    let (status, replay) = mint(&sts, body, &headers).await;
    assert_eq!(status, 401, "{replay}");
    assert_eq!(replay["error_description"], "invalid subject_token");

    // A resource mandate is never a subject token.
    let (body, headers) = signed_exchange(&w, resource, "gw-req-3");
    let (status, wrong_class) = mint(&sts, body, &headers).await;
    assert_eq!(status, 401, "{wrong_class}");

    // The request id must match the signed gateway_request_id.
    let (status, minted) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    assert_eq!(status, 200, "{minted}");
    let fresh = minted["access_token"].as_str().expect("token");
    let (body, mut headers) = signed_exchange(&w, fresh, "gw-req-4");
    headers[3].1 = "other-request".into();
    let (status, mismatch) = mint(&sts, body, &headers).await;
    assert_eq!(status, 401, "{mismatch}");
}

#[actix_web::test]
async fn independent_redis_checks_are_sent_together() {
    let flight = Arc::new(Flight::default());
    let h = harness_observed(1_000, Some(Arc::clone(&flight))).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let (w, child, edge) = reader_edge(&h, &api, &sts).await;

    flight.take();
    let (status, minted) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    assert_eq!(status, 200, "{minted}");
    assert_eq!(
        flight.take(),
        (4, 2),
        "a delegated mint: the failure block with the zone's version, then the rate-limit hit \
         with the jti registration"
    );

    let gateway = minted["access_token"].as_str().expect("token");
    let (body, headers) = signed_exchange(&w, gateway, "gw-together");
    let (status, exchanged) = mint(&sts, body, &headers).await;
    assert_eq!(status, 200, "{exchanged}");
    assert_eq!(
        flight.take(),
        (5, 2),
        "an exchange: the envelope's nonce, the version, the presented mandate's single use and \
         the jti registration, then the rate-limit hit"
    );
    // Sent together, judged in order: the replay is still refused as one.
    let (body, headers) = signed_exchange(&w, gateway, "gw-together-again");
    let (status, replay) = mint(&sts, body.clone(), &headers).await;
    assert_eq!(status, 401, "{replay}");
    assert_eq!(replay["error_description"], "invalid subject_token");
    // The same envelope again: its nonce was claimed with those checks, and a replayed envelope
    // is refused as one before anything else is judged.
    let (status, again) = mint(&sts, body, &headers).await;
    assert_eq!(status, 401, "{again}");
    assert_eq!(
        again["error_description"],
        "invalid gateway exchange signature"
    );

    // An envelope refused for something else before its checks went out still burns its
    // nonce: replayed, it is refused as a replay, not judged again.
    let unknown = form(&[
        ("grant_type", GRANT),
        ("zone_id", &w.zone),
        ("application_id", &uuid_like()),
        ("subject_token", gateway),
        ("subject_token_type", ACCESS),
        ("resource", RESOURCE),
        ("gateway_request_id", "gw-unknown-app"),
    ]);
    let headers = sign(&unknown, "gw-unknown-app");
    let (status, first) = mint(&sts, unknown.clone(), &headers).await;
    assert_eq!(status, 401, "{first}");
    assert_eq!(first["error_description"], "invalid client credentials");
    let (status, second) = mint(&sts, unknown, &headers).await;
    assert_eq!(status, 401, "{second}");
    assert_eq!(
        second["error_description"],
        "invalid gateway exchange signature"
    );
}

/// What `exchange_in_process` answers for the signed exchange `body` under `headers`.
async fn in_process(h: &Harness, body: &str, headers: &[(&str, String)]) -> (u16, Value) {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    };
    let (status, answer) = caracal_sts::exchange_in_process(
        &h.sts,
        body.as_bytes(),
        SignedHeaders {
            timestamp: get("x-caracal-gateway-timestamp"),
            nonce: get("x-caracal-gateway-request"),
            signature: get("x-caracal-gateway-signature"),
        },
        get("x-request-id").expect("request id"),
    )
    .await;
    (
        status,
        serde_json::from_slice(&answer).expect("a JSON answer"),
    )
}

#[actix_web::test]
async fn the_in_process_exchange_answers_as_the_route_does() {
    let h = harness(1_000).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let (w, child, edge) = reader_edge(&h, &api, &sts).await;
    let gateway = |sts_minted: &Value| {
        sts_minted["access_token"]
            .as_str()
            .expect("token")
            .to_owned()
    };

    // Allowed: the same shape of answer as over HTTP.
    let (_, minted) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    let (body, headers) = signed_exchange(&w, &gateway(&minted), "in-process-1");
    let (status, local) = in_process(&h, &body, &headers).await;
    assert_eq!(status, 200, "{local}");
    let (_, minted) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    let (body, headers) = signed_exchange(&w, &gateway(&minted), "over-http-1");
    let (status, remote) = mint(&sts, body, &headers).await;
    assert_eq!(status, 200, "{remote}");
    let keys = |v: &Value| {
        let mut keys: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&local), keys(&remote));
    assert_eq!(local["upstreams"], remote["upstreams"]);
    assert_eq!(
        claims_of(local["access_token"].as_str().expect("token"))["use"],
        "resource"
    );

    // Refused: the same status and body, request id included.
    let (_, minted) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    let token = gateway(&minted);
    let (body, headers) = signed_exchange(&w, &token, "refused");
    let (status, first) = in_process(&h, &body, &headers).await;
    assert_eq!(status, 200, "{first}");
    let (body, headers) = signed_exchange(&w, &token, "refused");
    let (local_status, local) = in_process(&h, &body, &headers).await;
    let (body, headers) = signed_exchange(&w, &token, "refused");
    let (remote_status, remote) = mint(&sts, body, &headers).await;
    assert_eq!((local_status, &local), (remote_status, &remote));
    assert_eq!(local_status, 401);
    assert_eq!(local["requestId"], "refused");

    // The envelope's nonce is single-use across both ways in.
    let (_, minted) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    let (body, headers) = signed_exchange(&w, &gateway(&minted), "twice");
    let (status, _) = in_process(&h, &body, &headers).await;
    assert_eq!(status, 200);
    let (status, again) = mint(&sts, body, &headers).await;
    assert_eq!(status, 401, "{again}");
    assert_eq!(
        again["error_description"],
        "invalid gateway exchange signature"
    );
}

#[actix_web::test]
async fn delegation_narrowing_and_policy_denials_name_their_reason() {
    let h = harness(1_000).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;
    let anchor = application_anchor(&sts, &w).await;

    let (child, edge) = graph(
        &h,
        &w,
        &anchor,
        &["reader"],
        json!({"scopes": ["svc:read", "svc:write"],
        "constraints": {"ttl_seconds": 300}}),
    )
    .await;
    let cases: [(String, u16, &str); 4] = [
        (
            delegated(&w, &child, &edge, "svc:admin"),
            403,
            "requested scopes exceed delegation scopes",
        ),
        (
            delegated(&w, &child, &edge, "svc:write"),
            403,
            "policy denied (role_scope_mismatch)",
        ),
        (
            delegated(&w, "s-nope", &edge, "svc:read"),
            403,
            "delegation edge target mismatch",
        ),
        (
            format!(
                "{}&ttl_seconds=301",
                delegated(&w, &child, &edge, "svc:read")
            ),
            403,
            "requested ttl exceeds delegation ttl",
        ),
    ];
    for (body, status, description) in cases {
        let (got, err) = mint(&sts, body, &[]).await;
        assert_eq!(
            (got, err["error_description"].as_str()),
            (status, Some(description)),
            "{err}"
        );
    }
    // A delegation without a Session is refused.
    let body = form(&[
        ("grant_type", GRANT),
        ("zone_id", &w.zone),
        ("application_id", &w.app),
        ("client_secret", &w.secret),
        ("scope", "svc:read"),
        ("resource", RESOURCE),
        ("delegation_edge_id", &edge),
    ]);
    let (status, err) = mint(&sts, body, &[]).await;
    assert_eq!(
        (status, err["error_description"].as_str()),
        (403, Some("delegation requires a target Session"))
    );

    // Confinement subtracts: a sandbox-labelled Session may only read.
    let (child, edge) = graph(
        &h,
        &w,
        &anchor,
        &["writer", "sandbox-1"],
        json!({"scopes": ["svc:read", "svc:write"]}),
    )
    .await;
    let (status, err) = mint(&sts, delegated(&w, &child, &edge, "svc:write"), &[]).await;
    assert_eq!(
        (status, err["error_description"].as_str()),
        (403, Some("policy denied (confinement_violation)"))
    );
    let (status, ok) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    assert_eq!(status, 200, "{ok}");

    // A revoked edge carries no authority.
    let (child, edge) = graph(
        &h,
        &w,
        &anchor,
        &["reader"],
        json!({"scopes": ["svc:read"], "status": "revoked"}),
    )
    .await;
    let (status, err) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    assert_eq!(
        (status, err["error_description"].as_str()),
        (403, Some("delegation edge inactive or expired"))
    );

    // An edge confined to other resources skips this one.
    let (child, edge) = graph(
        &h,
        &w,
        &anchor,
        &["reader"],
        json!({"scopes": ["svc:read"],
        "constraints": {"resources": ["resource://other"]}}),
    )
    .await;
    let (status, err) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    assert_eq!(
        (status, err["error_description"].as_str()),
        (403, Some("policy denied"))
    );
    let events = h.audit.0.lock().expect("lock").clone();
    assert!(
        events
            .iter()
            .any(|e| e.evaluation_status == "resource_outside_delegation"
                && e.determining_policies_json.is_none()),
        "a pre-policy skip is evidence with null arrays"
    );
}

/// Signs arbitrary claims with the zone's real key, so only the claim checks can refuse them.
async fn forge(h: &Harness, zone: &str, edit: impl FnOnce(&mut MandateClaims)) -> String {
    let zone = ZoneId::parse(zone).expect("zone");
    let (kid, signer) = h.sts.sts.keys.signer(&zone).await.expect("signer");
    let now = SystemClock.now().unix_seconds();
    let mut claims = MandateClaims {
        iss: ISSUER.into(),
        sub: "x".into(),
        aud: vec![ISSUER.into()],
        exp: now + 300,
        iat: now,
        jti: uuid_like(),
        zone_id: zone.to_string(),
        client_id: "x".into(),
        scope: String::new(),
        sid: "sid".into(),
        root_sid: "sid".into(),
        use_: MandateUse::Session,
        sub_type: SubType::Application,
        target: Vec::new(),
        agent_session_id: None,
        delegation_edge_id: None,
        source_session_id: None,
        target_session_id: None,
        delegation_path: Vec::new(),
        delegation_chain: Vec::new(),
        hop_count: 0,
        delegation_graph_epoch: 0,
    };
    edit(&mut claims);
    caracal_core::mandate::jws::encode(&kid, &claims, signer.as_ref()).expect("sign")
}

#[actix_web::test]
async fn subject_token_attacks_are_refused() {
    let h = harness(1_000).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;
    let (_, session) = mint(&sts, bootstrap(&w), &[]).await;
    let good = session["access_token"].as_str().expect("token").to_owned();
    let parts: Vec<&str> = good.split('.').collect();
    let kid = serde_json::from_slice::<Value>(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[0])
            .expect("b64"),
    )
    .expect("header")["kid"]
        .as_str()
        .expect("kid")
        .to_owned();

    // alg: none, and HS256 keyed with the zone's public key (algorithm confusion).
    let none = format!(
        "{}.{}.",
        b64(json!({"alg":"none","kid":kid,"typ":"JWT"})
            .to_string()
            .as_bytes()),
        parts[1]
    );
    let jwks = h
        .sts
        .sts
        .keys
        .jwks(&ZoneId::parse(&w.zone).expect("zone"))
        .await
        .expect("jwks");
    let public = jwks.to_string();
    let hs_input = format!(
        "{}.{}",
        b64(json!({"alg":"HS256","kid":kid,"typ":"JWT"})
            .to_string()
            .as_bytes()),
        parts[1]
    );
    let hs_sig = HmacSha256::from_bytes(public.as_bytes()).sign_hex(hs_input.as_bytes());
    let hs = format!("{hs_input}.{}", b64(&hex_bytes(&hs_sig)));
    // Signed by a key the zone never had.
    let stranger = {
        let es = RingEs256::new();
        let signer = es
            .load_signer(&es.generate_pem().expect("pem"))
            .expect("signer");
        let input = format!(
            "{}.{}",
            b64(json!({"alg":"ES256","kid":uuid_like(),"typ":"JWT"})
                .to_string()
                .as_bytes()),
            parts[1]
        );
        format!(
            "{input}.{}",
            b64(&signer.sign(input.as_bytes()).expect("sign"))
        )
    };
    let now = SystemClock.now().unix_seconds();
    let zone = w.zone.clone();
    let cases = vec![
        ("alg none", none),
        ("HS256 with the public key", hs),
        ("unknown kid", stranger),
        (
            "wrong issuer",
            forge(&h, &zone, |c| c.iss = "http://evil.test".into()).await,
        ),
        (
            "wrong audience",
            forge(&h, &zone, |c| c.aud = vec!["resource://svc".into()]).await,
        ),
        (
            "expired",
            forge(&h, &zone, |c| {
                c.iat = now - 1000;
                c.exp = now - 120;
            })
            .await,
        ),
        (
            "issued in the future",
            forge(&h, &zone, |c| {
                c.iat = now + 600;
                c.exp = now + 900;
            })
            .await,
        ),
        (
            "resource mandate",
            forge(&h, &zone, |c| c.use_ = MandateUse::Resource).await,
        ),
        (
            "tampered",
            format!("{}.{}x.{}", parts[0], parts[1], parts[2]),
        ),
    ];
    for (what, token) in cases {
        let body = form(&[
            ("grant_type", GRANT),
            ("zone_id", &w.zone),
            ("application_id", &w.app),
            ("client_secret", &w.secret),
            ("subject_token", &token),
            ("subject_token_type", ACCESS),
            ("resource", RESOURCE),
        ]);
        let (status, err) = mint(&sts, body, &[]).await;
        assert_eq!(status, 401, "{what}: {err}");
        assert_eq!(err["error"], "invalid_token", "{what}");
        assert_eq!(err["error_description"], "invalid subject_token", "{what}");
    }

    // The right key but another zone's claim.
    let other = admin(&api, "POST", "/v1/zones", json!({"name": "other zone"})).await;
    let foreign = forge(&h, &zone, |c| {
        c.zone_id = other["id"].as_str().expect("id").into()
    })
    .await;
    let body = form(&[
        ("grant_type", GRANT),
        ("zone_id", &w.zone),
        ("application_id", &w.app),
        ("client_secret", &w.secret),
        ("subject_token", &foreign),
        ("subject_token_type", ACCESS),
        ("resource", RESOURCE),
    ]);
    assert_eq!(mint(&sts, body, &[]).await.0, 401, "wrong zone");

    // A well-signed session mandate without a live authority record.
    let orphan = forge(&h, &zone, |c| {
        c.sub = w.app.clone();
        c.client_id = w.app.clone();
    })
    .await;
    let body = form(&[
        ("grant_type", GRANT),
        ("zone_id", &w.zone),
        ("application_id", &w.app),
        ("client_secret", &w.secret),
        ("subject_token", &orphan),
        ("subject_token_type", ACCESS),
        ("resource", RESOURCE),
    ]);
    let (status, err) = mint(&sts, body, &[]).await;
    assert_eq!(
        (status, err["error_description"].as_str()),
        (403, Some("authority record inactive or expired"))
    );
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

#[actix_web::test]
async fn limits_fail_closed() {
    let h = harness(2).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;
    assert_eq!(mint(&sts, bootstrap(&w), &[]).await.0, 200);
    assert_eq!(mint(&sts, bootstrap(&w), &[]).await.0, 200);
    let (status, err) = mint(&sts, bootstrap(&w), &[]).await;
    assert_eq!(
        (status, err["error_description"].as_str()),
        (403, Some("policy denied")),
        "the mint limit skips the resource"
    );
    assert!(h
        .audit
        .0
        .lock()
        .expect("lock")
        .iter()
        .any(|e| e.evaluation_status == "rate_limited"));

    let wrong = bootstrap(&World {
        secret: "cs_wrong".into(),
        ..clone_world(&w)
    });
    for _ in 0..60 {
        let (status, err) = mint(&sts, wrong.clone(), &[]).await;
        assert_eq!(
            (status, err["error_description"].as_str()),
            (401, Some("invalid client credentials"))
        );
    }
    let (status, err) = mint(&sts, wrong.clone(), &[]).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (429, Some("provider_rate_limited")),
        "{err}"
    );
    let (status, _) = mint(&sts, bootstrap(&w), &[]).await;
    assert_eq!(
        status, 429,
        "while blocked, even the right secret is refused"
    );
}

fn clone_world(w: &World) -> World {
    World {
        zone: w.zone.clone(),
        app: w.app.clone(),
        secret: w.secret.clone(),
        resource_id: w.resource_id.clone(),
    }
}

#[actix_web::test]
async fn control_keys_mint_without_a_zone_and_without_policy() {
    let h = harness(1_000).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let zone = admin(&api, "POST", "/v1/zones", json!({"name": "control"})).await;
    let z = zone["id"].as_str().expect("zone");
    admin(&api, "POST", &format!("/v1/zones/{z}/resources"),
        json!({"name": "control", "identifier": "caracal-control", "scopes": ["control:read", "control:write"]})).await;
    let key = admin(
        &api,
        "POST",
        &format!("/v1/zones/{z}/applications"),
        json!({"name": "operator", "registration_method": "managed",
               "traits": ["control:invoke", "control:scope:control:read", "control:max-ttl:120"]}),
    )
    .await;
    let plain = admin(
        &api,
        "POST",
        &format!("/v1/zones/{z}/applications"),
        json!({"name": "plain", "registration_method": "managed"}),
    )
    .await;
    let body = |app: &Value, scope: &str| {
        form(&[
            ("grant_type", GRANT),
            ("application_id", app["id"].as_str().expect("id")),
            (
                "client_secret",
                app["client_secret"].as_str().expect("secret"),
            ),
            ("scope", scope),
            ("resource", "caracal-control"),
        ])
    };
    let (status, minted) = mint(&sts, body(&key, "control:read"), &[]).await;
    assert_eq!(status, 200, "{minted}");
    assert_eq!(minted["expires_in"], 120, "control:max-ttl clamps silently");
    let c = claims_of(minted["access_token"].as_str().expect("token"));
    assert_eq!(
        (c["use"].as_str(), c["zone_id"].as_str()),
        (Some("resource"), Some(z))
    );
    assert_eq!(c["aud"], json!(["caracal-control"]));
    let (status, err) = mint(&sts, body(&key, "control:write"), &[]).await;
    assert_eq!(
        status, 403,
        "a control scope without its control:scope trait: {err}"
    );
    assert!(err["error_description"]
        .as_str()
        .is_some_and(|d| d.starts_with("the control resource is mintable only by a control key")));
    let (status, err) = mint(&sts, body(&key, "control:admin"), &[]).await;
    assert_eq!(
        (status, err["error_description"].as_str()),
        (403, Some("policy denied")),
        "not a scope of the resource"
    );
    assert_eq!(
        mint(&sts, body(&plain, "control:read"), &[]).await.0,
        401,
        "no control:invoke trait"
    );
}

#[actix_web::test]
async fn internal_policy_routes_are_signed_and_use_the_same_evaluator() {
    let h = harness(1_000).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;
    let doc = format!(
        "{{\"app_ids\": {{\"agent\": \"{}\"}}, \"grants\": {{\"{RESOURCE}\": {{\"application\": \"agent\", \"roles\": {{}}}}}}}}",
        w.app
    );
    let payload = json!({
        "policy_set_id": "ps", "version_id": "v", "manifest_sha256": "m",
        "policies": [{"id": "p1", "content": doc}],
        "input": {"principal": {"type": "Application", "id": w.app, "zone_id": w.zone},
                  "resource": {"type": "Resource", "id": w.resource_id, "identifier": RESOURCE, "scopes": ["svc:read"]},
                  "action": {"id": "TokenExchange"},
                  "context": {"actor_claims": {}, "challenge_resolved": false, "requested_scopes": ["agent:lifecycle"]}}
    })
    .to_string();
    let signed = |method: &str, path: &str, body: &str| {
        let unix = SystemClock.now().unix_seconds();
        let nonce = uuid_like();
        let canonical = format!(
            "{unix}\n{nonce}\n{method}\n{path}\n{}",
            caracal_core::digest::sha256_hex(body.as_bytes())
        );
        vec![
            ("x-caracal-gateway-timestamp", unix.to_string()),
            ("x-caracal-gateway-request", nonce),
            (
                "x-caracal-gateway-signature",
                HmacSha256::from_bytes(&GATEWAY_KEY).sign_hex(canonical.as_bytes()),
            ),
        ]
    };
    let mut req = TestRequest::post()
        .uri("/internal/policy/simulate")
        .set_payload(payload.clone());
    for (n, v) in signed("POST", "/internal/policy/simulate", &payload) {
        req = req.insert_header((n, v));
    }
    let (status, result) = body_of(test::call_service(&sts, req.to_request()).await).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["policy_set_id"], "ps");
    assert_eq!(result["result"]["decision"], "allow");
    assert_eq!(
        result["result"]["determining_policies"],
        json!([{"policy": "caracal-bootstrap"}])
    );

    let unsigned = TestRequest::post()
        .uri("/internal/policy/simulate")
        .set_payload(payload);
    let (status, err) = body_of(test::call_service(&sts, unsigned.to_request()).await).await;
    assert_eq!(
        (status, err["error_description"].as_str()),
        (401, Some("invalid simulation request signature"))
    );

    // Status reports the loaded bundle once a mint has loaded it.
    assert_eq!(mint(&sts, bootstrap(&w), &[]).await.0, 200);
    let path = format!("/internal/policy/status/{}", w.zone);
    let mut req = TestRequest::get().uri(&path);
    for (n, v) in signed("GET", &path, "") {
        req = req.insert_header((n, v));
    }
    let (status, body) = body_of(test::call_service(&sts, req.to_request()).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["zone_id"], w.zone.as_str());
    assert_eq!(body["loaded"], true);

    // Rotating a zone that does not exist fails and creates nothing.
    let ghost = "01a20000-0000-7000-8000-000000000000";
    let req = TestRequest::post()
        .uri(&format!("/internal/zones/{ghost}/signing-key/rotate"))
        .insert_header(("authorization", "Bearer sat_rotate"));
    let (status, err) = body_of(test::call_service(&sts, req.to_request()).await).await;
    assert_eq!(
        (status, err["error_description"].as_str()),
        (500, Some("signing key rotation failed"))
    );
    let req = TestRequest::get().uri(&format!("/.well-known/jwks.json?zone_id={ghost}"));
    assert_eq!(
        body_of(test::call_service(&sts, req.to_request()).await)
            .await
            .0,
        404
    );
    assert!(body["manifest_sha256"]
        .as_str()
        .is_some_and(|m| m.len() == 64));
}

/// Decides a hold the way an operator's approve/reject does (the API route is tested with the
/// API); the STS only reads the decision.
async fn decide(h: &Harness, id: &str, approve: bool) {
    let now = SystemClock.now();
    let mut uow = h.store.begin(&ZoneScope::All).await.expect("begin");
    let mut hold = uow.get_approval(id).await.expect("read").expect("hold");
    if approve {
        hold.satisfied_at = Some(now);
    } else {
        hold.rejected_at = Some(now);
    }
    hold.approver_subject_id = Some("admin:test".into());
    uow.save_approval(&hold).await.expect("save");
    uow.commit().await.expect("commit");
}

async fn poll<S, B>(sts: &S, id: &str) -> (u16, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let req = TestRequest::get().uri(&format!("/approvals/{id}?wait=0"));
    body_of(test::call_service(sts, req.to_request()).await).await
}

#[actix_web::test]
async fn gated_mints_park_a_hold_that_is_consumed_once() {
    let h = harness(1_000).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;
    let anchor = application_anchor(&sts, &w).await;
    let (child, edge) = graph(
        &h,
        &w,
        &anchor,
        &["writer"],
        json!({"scopes": ["svc:read", "svc:write"]}),
    )
    .await;

    // The gated scope parks a hold.
    let req = TestRequest::post()
        .uri("/oauth/2/token")
        .insert_header(("content-type", "application/x-www-form-urlencoded"))
        .set_payload(delegated(&w, &child, &edge, "svc:write"));
    let res = test::call_service(&sts, req.to_request()).await;
    assert_eq!(
        res.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer error=\"interaction_required\"")
    );
    let (status, held) = body_of(res).await;
    assert_eq!(status, 401, "{held}");
    assert_eq!(held["error"], "interaction_required");
    assert_eq!(held["approval_type"], "human_approval");
    assert_eq!(held["state"], "pending");
    assert_eq!(held["tier"], "high");
    assert_eq!(held["binding"].as_str().map(str::len), Some(64));
    assert!(held["requestId"].is_string());
    let id = held["approval_id"].as_str().expect("id").to_owned();
    assert_eq!(id.as_bytes()[14], b'4', "hold ids are random UUIDv4");

    // The same request converges on the same hold.
    let (status, again) = mint(&sts, delegated(&w, &child, &edge, "svc:write"), &[]).await;
    assert_eq!(
        (status, again["approval_id"].as_str()),
        (401, Some(id.as_str()))
    );
    let (status, state) = poll(&sts, &id).await;
    assert_eq!((status, state["state"].as_str()), (200, Some("pending")));

    // A retry naming the hold while pending is the same 401; another request's binding is not.
    let retry = format!(
        "{}&approval_id={id}",
        delegated(&w, &child, &edge, "svc:write")
    );
    assert_eq!(mint(&sts, retry.clone(), &[]).await.0, 401);
    let other = format!(
        "{}&approval_id={id}",
        delegated(&w, &child, &edge, "svc:read svc:write")
    );
    let (status, err) = mint(&sts, other, &[]).await;
    assert_eq!(
        (status, err["error_description"].as_str()),
        (401, Some("approval not found or bindings do not match"))
    );

    // Approved: the retry mints and consumes the hold.
    decide(&h, &id, true).await;
    let (status, minted) = mint(&sts, retry.clone(), &[]).await;
    assert_eq!(status, 200, "{minted}");
    let first = claims_of(minted["access_token"].as_str().expect("token"));
    assert_eq!(first["scope"], "svc:write");
    assert_eq!(poll(&sts, &id).await.1["state"], "consumed");

    // A lost response may be re-issued for the same record within two minutes …
    let (status, reissued) = mint(&sts, retry.clone(), &[]).await;
    assert_eq!(status, 200, "{reissued}");
    let second = claims_of(reissued["access_token"].as_str().expect("token"));
    assert_eq!(
        second["sid"], first["sid"],
        "a re-issue mints for the consumed record"
    );
    assert_ne!(second["jti"], first["jti"]);
    let events = h.audit.0.lock().expect("lock").clone();
    assert!(events
        .iter()
        .any(|e| e.event_type == "step_up_issued" && e.decision == "pending"));
    assert!(events.iter().any(|e| e.event_type == "step_up_consumed"
        && e.metadata_json
            .as_ref()
            .is_some_and(|m| m.get("reissued") == Some(&json!(true)))));

    // … but a fresh gated request needs a fresh approval, and a rejection is final.
    let (status, fresh) = mint(&sts, delegated(&w, &child, &edge, "svc:write"), &[]).await;
    assert_eq!(status, 401, "{fresh}");
    let second_id = fresh["approval_id"].as_str().expect("id").to_owned();
    assert_ne!(second_id, id);
    decide(&h, &second_id, false).await;
    let (status, err) = mint(
        &sts,
        format!(
            "{}&approval_id={second_id}",
            delegated(&w, &child, &edge, "svc:write")
        ),
        &[],
    )
    .await;
    assert_eq!(
        (status, err["error_description"].as_str()),
        (403, Some("approval was rejected"))
    );
    let (status, err) = mint(&sts, delegated(&w, &child, &edge, "svc:write"), &[]).await;
    assert_eq!(
        (status, err["error_description"].as_str()),
        (403, Some("approval was rejected")),
        "the converged hold is rejected"
    );

    // Unknown and malformed ids.
    assert_eq!(poll(&sts, "not-a-uuid").await.0, 404);
    assert_eq!(
        poll(&sts, "00000000-0000-4000-8000-000000000000").await.0,
        404
    );
    let req = TestRequest::get().uri(&format!("/approvals/{id}?wait=soon"));
    assert_eq!(
        body_of(test::call_service(&sts, req.to_request()).await)
            .await
            .0,
        400
    );
}

#[actix_web::test]
async fn subject_approvers_decide_with_a_user_session() {
    use caracal_core::approval::{ApprovalHold, ApproverClass, PrivacyMode};
    use caracal_core::authority::{AuthorityRecord, RecordStatus, SessionType};

    let h = harness(1_000).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;
    let zone = ZoneId::parse(&w.zone).expect("zone");
    let now = SystemClock.now();
    let record =
        |id: &str, kind: SessionType, subject: &str, parent: Option<&str>| AuthorityRecord {
            id: id.into(),
            zone_id: zone.clone(),
            session_type: kind,
            subject_id: subject.into(),
            client_id: w.app.clone(),
            parent_id: parent.map(str::to_owned),
            status: RecordStatus::Active,
            expires_at: now.plus_millis(3_600_000),
            authenticated_at: now,
            claims_json: None,
            revoked_at: None,
            revoked_reason: None,
            created_at: now,
        };
    let hold = |id: &str, class: ApproverClass, anchor: Option<&str>, session: &str| ApprovalHold {
        id: id.into(),
        zone_id: zone.clone(),
        session_id: session.into(),
        principal_id: w.app.clone(),
        application_id: Some(w.app.clone()),
        approval_type: "human_approval".into(),
        tier: "high".into(),
        approver_class: class,
        privacy_mode: PrivacyMode::Pseudonymous,
        subject_anchor: anchor.map(str::to_owned),
        binding: "ab".repeat(32),
        metadata_json: Map::new(),
        decision_reason: None,
        created_at: now,
        expires_at: now.plus_millis(600_000),
        satisfied_at: None,
        rejected_at: None,
        consumed_at: None,
        approver_subject_id: None,
        approver_session_id: None,
        consumed_authority_record_id: None,
    };
    let ids: Vec<String> = (0..4).map(|_| h_uuid4()).collect();
    {
        let mut uow = h.store.begin(&ZoneScope::All).await.expect("begin");
        uow.save_authority_record(&record("ar-alice", SessionType::User, "alice", None))
            .await
            .expect("r");
        uow.save_authority_record(&record(
            "ar-agent",
            SessionType::Application,
            &w.app,
            Some("ar-alice"),
        ))
        .await
        .expect("r");
        uow.save_authority_record(&record("ar-app", SessionType::Application, &w.app, None))
            .await
            .expect("r");
        uow.save_approval(&hold(
            &ids[0],
            ApproverClass::Subject,
            Some("alice"),
            "ar-app",
        ))
        .await
        .expect("h");
        uow.save_approval(&hold(&ids[1], ApproverClass::Operator, None, "ar-app"))
            .await
            .expect("h");
        uow.save_approval(&hold(&ids[2], ApproverClass::Any, Some("bob"), "ar-app"))
            .await
            .expect("h");
        uow.save_approval(&hold(&ids[3], ApproverClass::Subject, None, "ar-agent"))
            .await
            .expect("h");
        uow.commit().await.expect("commit");
    }
    let user = forge(&h, &w.zone, |c| {
        c.sub = "alice".into();
        c.sub_type = SubType::User;
        c.sid = "ar-alice".into();
        c.root_sid = "ar-alice".into();
        c.client_id = w.app.clone();
    })
    .await;
    let app_session = forge(&h, &w.zone, |c| {
        c.sub = w.app.clone();
        c.sid = "ar-app".into();
        c.client_id = w.app.clone();
    })
    .await;
    let decide = |id: &str, bearer: Option<&str>, body: Value| {
        let mut req = TestRequest::post()
            .uri(&format!("/approvals/{id}/decision"))
            .set_payload(body.to_string());
        if let Some(b) = bearer {
            req = req.insert_header(("authorization", format!("Bearer {b}")));
        }
        req.to_request()
    };
    let good = json!({"decision": "approved", "binding": "ab".repeat(32), "reason": "ok"});

    let res = test::call_service(&sts, decide(&ids[0], None, good.clone())).await;
    assert_eq!(
        res.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"caracal-sts\"")
    );
    assert_eq!(body_of(res).await.0, 401);
    let cases = [
        (
            ids[0].clone(),
            user.clone(),
            json!({"decision": "maybe"}),
            400,
            "decision must be approved or rejected",
        ),
        (
            ids[0].clone(),
            app_session.clone(),
            good.clone(),
            403,
            "approver must be a user session",
        ),
        (
            ids[1].clone(),
            user.clone(),
            good.clone(),
            403,
            "this approval requires an operator decision",
        ),
        (
            ids[2].clone(),
            user.clone(),
            good.clone(),
            403,
            "this approval is reserved for the subject the requesting agent acts for",
        ),
        (
            ids[3].clone(),
            user.clone(),
            good.clone(),
            403,
            "an approver cannot decide a hold raised by its own authority record lineage",
        ),
        (
            ids[0].clone(),
            user.clone(),
            json!({"decision": "approved", "binding": "00"}),
            409,
            "binding does not match this challenge",
        ),
        (
            ids[0].clone(),
            "not.a.jwt".into(),
            good.clone(),
            401,
            "invalid session mandate",
        ),
    ];
    for (id, bearer, body, status, description) in cases {
        let (got, err) =
            body_of(test::call_service(&sts, decide(&id, Some(&bearer), body)).await).await;
        assert_eq!(
            (got, err["error_description"].as_str()),
            (status, Some(description)),
            "{err}"
        );
    }
    let (status, decided) =
        body_of(test::call_service(&sts, decide(&ids[0], Some(&user), good.clone())).await).await;
    assert_eq!(
        (status, decided["state"].as_str()),
        (200, Some("approved")),
        "{decided}"
    );
    let (status, again) =
        body_of(test::call_service(&sts, decide(&ids[0], Some(&user), good)).await).await;
    assert_eq!(
        (status, again["error_description"].as_str()),
        (409, Some("approval is not pending"))
    );
    let mut uow = h.store.begin(&ZoneScope::All).await.expect("begin");
    let stored = uow
        .get_approval(&ids[0])
        .await
        .expect("read")
        .expect("hold");
    let approver = stored.approver_subject_id.expect("approver");
    assert!(
        approver.starts_with("subject:pseudonym:")
            && approver.len() == "subject:pseudonym:".len() + 16
    );
    assert_eq!(stored.approver_session_id.as_deref(), Some("ar-alice"));
    assert!(h
        .audit
        .0
        .lock()
        .expect("lock")
        .iter()
        .any(|e| e.event_type == "step_up_decided"));
}

fn h_uuid4() -> String {
    caracal_core::ports::IdGenerator::new_random_id(&UuidV7Ids)
}

/// `caracal.sessions.revoke` (spec/sts.md §14): revoking an authority record revokes it and its
/// `parent_id` descendants, so the next exchange presenting its mandate is refused.
#[actix_web::test]
async fn revoking_an_authority_record_revokes_its_descendants() {
    let h = harness(1_000).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;
    let zone = ZoneId::parse(&w.zone).expect("zone");
    let (_, session) = mint(&sts, bootstrap(&w), &[]).await;
    let mandate = session["access_token"].as_str().expect("token").to_owned();
    let sid = claims_of(&mandate)["sid"].as_str().expect("sid").to_owned();
    let exchange = || {
        form(&[
            ("grant_type", GRANT),
            ("zone_id", &w.zone),
            ("application_id", &w.app),
            ("client_secret", &w.secret),
            ("subject_token", &mandate),
            ("subject_token_type", ACCESS),
            ("scope", "agent:lifecycle"),
            ("resource", RESOURCE),
        ])
    };
    // Before: the record check passes (the exchange goes on to the policy decision).
    let (_, before) = mint(&sts, exchange(), &[]).await;
    assert_ne!(
        before["error_description"], "authority record inactive or expired",
        "{before}"
    );

    // Two descendants and an unrelated record of the same zone.
    let template = {
        let mut uow = h.store.begin(&ZoneScope::All).await.expect("uow");
        uow.get_authority_record(&zone, &sid)
            .await
            .expect("read")
            .expect("record")
    };
    let child = AuthorityRecord {
        id: uuid_like(),
        parent_id: Some(sid.clone()),
        ..template.clone()
    };
    let grandchild = AuthorityRecord {
        id: uuid_like(),
        parent_id: Some(child.id.clone()),
        ..template.clone()
    };
    let unrelated = AuthorityRecord {
        id: uuid_like(),
        parent_id: None,
        ..template.clone()
    };
    {
        let mut uow = h.store.begin(&ZoneScope::All).await.expect("uow");
        for r in [&child, &grandchild, &unrelated] {
            uow.save_authority_record(r).await.expect("save");
        }
        uow.commit().await.expect("commit");
    }

    let sts_uc = &h.sts.sts;
    assert_eq!(
        sts_uc
            .revoke_authority_record(&zone, &sid, Some("delegation_revoked"))
            .await
            .expect("revoke"),
        3
    );
    assert_eq!(
        sts_uc
            .revoke_authority_record(&zone, &sid, None)
            .await
            .expect("again"),
        0,
        "idempotent"
    );
    assert_eq!(
        sts_uc
            .revoke_authority_record(&zone, "no-such-record", None)
            .await
            .expect("unknown"),
        0
    );
    let mut uow = h.store.begin(&ZoneScope::All).await.expect("uow");
    for id in [&sid, &child.id, &grandchild.id] {
        let r = uow
            .get_authority_record(&zone, id)
            .await
            .expect("read")
            .expect("record");
        assert_eq!(r.status, RecordStatus::Revoked, "{id}");
        assert_eq!(r.revoked_reason.as_deref(), Some("delegation_revoked"));
    }
    let r = uow
        .get_authority_record(&zone, &unrelated.id)
        .await
        .expect("read")
        .expect("record");
    assert_eq!(r.status, RecordStatus::Active, "untouched");
    drop(uow);

    let (status, err) = mint(&sts, exchange(), &[]).await;
    assert_eq!(
        (status, err["error_description"].as_str()),
        (403, Some("authority record inactive or expired"))
    );
}

/// Rewrites the stored Session `id` with `change` (what the Coordinator's writes would do).
async fn change_session(
    h: &Harness,
    zone: &ZoneId,
    id: &str,
    change: impl FnOnce(&mut AgentSession),
) {
    let mut uow = h.store.begin(&ZoneScope::All).await.expect("begin");
    let mut session = uow
        .get_agent_session(zone, id)
        .await
        .expect("read")
        .expect("session");
    change(&mut session);
    uow.save_agent_session(&session).await.expect("save");
    uow.commit().await.expect("commit");
}

/// A warm delegated mint decides on the rows the last one read, for as long as the zone's
/// authority version stands (`sts::kept`); the advance that follows every change taking
/// authority away makes the next mint read the store again, and a denial on kept rows is
/// decided again on fresh ones (a heartbeat renews a lease without advancing anything).
#[actix_web::test]
async fn kept_delegation_rows_stand_until_the_zone_version_moves() {
    let h = harness(1_000).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let (w, child, edge) = reader_edge(&h, &api, &sts).await;
    let zone = ZoneId::parse(&w.zone).expect("zone");
    // The target is a service whose lease ends in two seconds.
    change_session(&h, &zone, &child, |s| {
        s.lifecycle = Lifecycle::Service;
        s.ttl_seconds = None;
        s.heartbeat_deadline_at = Some(SystemClock.now().plus_millis(2_000));
    })
    .await;
    let (status, body) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    assert_eq!(status, 200, "{body}");

    // A heartbeat renews the lease; nothing advances. Past the old deadline the kept rows
    // deny, so the mint reads the store, which allows.
    change_session(&h, &zone, &child, |s| {
        s.heartbeat_deadline_at = Some(SystemClock.now().plus_millis(120_000));
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let (status, body) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    assert_eq!(
        status, 200,
        "a denial on kept rows is decided again on fresh rows: {body}"
    );

    // A suspend written behind the versions' back is not read by a warm mint: the proof that
    // warm mints do not touch the store.
    change_session(&h, &zone, &child, |s| s.status = "suspended".into()).await;
    let (status, body) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    assert_eq!(status, 200, "{body}");

    // The advance the Coordinator makes after such a commit: the very next mint is refused.
    h.versions.advance(&zone).await.expect("advance");
    let (status, body) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error_description"],
        "delegation target inactive or unauthorized"
    );

    // Refused rows are not kept: resuming (which grants, so advances nothing) is seen at once.
    change_session(&h, &zone, &child, |s| s.status = "active".into()).await;
    let (status, body) = mint(&sts, delegated(&w, &child, &edge, "svc:read"), &[]).await;
    assert_eq!(status, 200, "{body}");
}
