//! Service tests for federated users (`spec/sts.md §9`): the STS and API apps in process on one
//! memory store. Subject issuers are registered through the API route; the issuer's key set
//! comes from a fake `IssuerKeys` (the production fetcher only reaches public HTTPS hosts, so
//! it cannot serve a test key set). Identity tokens are ES256, signed with caracal-crypto's
//! ring signer; the RS* and ES384 paths are covered by the core unit tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::test::{self, TestRequest};
use async_trait::async_trait;
use caracal_api::{api_app, ApiConfig, ApiState};
use caracal_core::authority::{RecordStatus, SessionType};
use caracal_core::ids::ZoneId;
use caracal_core::manage::{Management, ManagementConfig};
use caracal_core::policy::PolicyCache;
use caracal_core::ports::{Clock, Es256, Es256Signer, FetchError, IssuerKeys, Store, ZoneScope};
use caracal_core::sts::keys::ZoneKeys;
use caracal_core::sts::{Sts, StsConfig, StsPorts};
use caracal_crypto::{Argon2idHasher, EnvelopeSealer, HmacSha256, Kek, RandomSecrets, RingEs256};
use caracal_http::metrics::HttpCounters;
use caracal_memory::{
    FixedClock, MemoryAuthorityVersions, MemoryBus, MemoryExpiringKeys, MemoryRateLimiter,
    MemoryStore, SystemClock, UuidV7Ids,
};
use caracal_sts::{sts_app, StsServiceConfig, StsState};
use serde_json::{json, Value};

mod support;
use support::{b64, body_of, claims_of, form, token_call, Recorded, GRANT};

const ADMIN: &str = "cat_federation_test_token";
const ISSUER_URL: &str = "http://sts.test";
const GATEWAY_KEY: [u8; 32] = [9u8; 32];
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
const IDP: &str = "https://idp.example";
const JWKS_URL: &str = "https://idp.example/.well-known/jwks.json";
const AUDIENCE: &str = "caracal-app";

// --- harness -----------------------------------------------------------------------------------

/// A key-set fetcher serving fixed documents by URL, counting fetches; a URL it does not know
/// answers 404.
#[derive(Default)]
struct FakeIssuerKeys {
    documents: Mutex<BTreeMap<String, Result<Value, FetchError>>>,
    fetches: Mutex<Vec<String>>,
}

impl FakeIssuerKeys {
    fn serve(&self, url: &str, document: Result<Value, FetchError>) {
        self.documents
            .lock()
            .expect("lock")
            .insert(url.into(), document);
    }
    fn fetches(&self) -> usize {
        self.fetches.lock().expect("lock").len()
    }
}

#[async_trait]
impl IssuerKeys for FakeIssuerKeys {
    async fn fetch(&self, jwks_url: &str) -> Result<Value, FetchError> {
        self.fetches.lock().expect("lock").push(jwks_url.into());
        self.documents
            .lock()
            .expect("lock")
            .get(jwks_url)
            .cloned()
            .unwrap_or(Err(FetchError::Status(404)))
    }
}

struct Harness {
    store: MemoryStore,
    api: ApiState,
    sts: StsState,
    audit: Arc<Recorded>,
    clock: Arc<FixedClock>,
    keys: Arc<FakeIssuerKeys>,
}

/// The API on the wall clock; the STS on a clock the test moves (the key-set cache's expiry).
/// `with_fetcher: false` wires no egress at all.
async fn harness(with_fetcher: bool) -> Harness {
    let store = MemoryStore::new();
    let sealer = Arc::new(EnvelopeSealer::new(
        Kek::generate().expect("kek"),
        Vec::new(),
    ));
    // Cheap Argon2 parameters keep tests fast; production parameters are covered in caracal-crypto.
    let hasher = Arc::new(Argon2idHasher::with_params(256, 1, 1).expect("params"));
    let management = Management::new(
        Arc::new(store.clone()),
        Arc::new(SystemClock),
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
    let fixed = Arc::new(FixedClock::new(SystemClock.now()));
    let clock: Arc<dyn Clock> = fixed.clone();
    let es256: Arc<dyn Es256> = Arc::new(RingEs256::new());
    let audit = Arc::new(Recorded::default());
    let zone_keys = Arc::new(ZoneKeys::new(
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
    let keys = Arc::new(FakeIssuerKeys::default());
    let mut sts = Sts::new(
        StsPorts {
            store: Arc::new(store.clone()),
            clock: Arc::clone(&clock),
            ids: Arc::new(UuidV7Ids),
            hasher,
            sealer,
            es256,
            limiter: Arc::new(MemoryRateLimiter::new()),
            expiring: Arc::new(MemoryExpiringKeys::new(Arc::clone(&clock))),
            audit: audit.clone(),
            versions: Arc::new(MemoryAuthorityVersions::new()),
            gateway_mac: Some(Arc::new(HmacSha256::from_bytes(&GATEWAY_KEY))),
        },
        zone_keys,
        policies,
        StsConfig {
            issuer: ISSUER_URL.into(),
            control_audience: "caracal-control".into(),
            mint_limit_per_min: 1_000,
        },
    );
    if with_fetcher {
        sts = sts.with_issuer_keys(keys.clone());
    }
    let config = StsServiceConfig {
        host: "127.0.0.1".into(),
        port: 0,
        issuer: ISSUER_URL.into(),
        control_audience: "caracal-control".into(),
        mint_limit_per_min: 1_000,
        secret_verify_concurrency: 2,
        policy_poll_seconds: 60,
        admin_token: None,
        metrics_bearer: None,
        dev: true,
    };
    let state = StsState {
        sts: Arc::new(sts),
        store: Arc::new(store.clone()),
        bus: Arc::new(MemoryBus::new()),
        audit: audit.clone(),
        counters: Arc::new(HttpCounters::default()),
        config: Arc::new(config),
    };
    Harness {
        store,
        api,
        sts: state,
        audit,
        clock: fixed,
        keys,
    }
}

async fn admin<S, B>(app: &S, method: &str, path: &str, body: Value) -> (u16, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let req = TestRequest::default()
        .method(method.parse().expect("method"))
        .uri(path)
        .insert_header(("authorization", format!("Bearer {ADMIN}")))
        .set_json(body);
    body_of(test::call_service(app, req.to_request()).await).await
}

async fn admin_ok<S, B>(app: &S, method: &str, path: &str, body: Value) -> Value
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let (status, value) = admin(app, method, path, body).await;
    assert!(status < 300, "{method} {path}: {status} {value}");
    value
}

/// The external identity provider: one ES256 key, published as `kid` `idp-1`.
struct Idp {
    signer: Arc<dyn Es256Signer>,
}

impl Idp {
    fn new() -> Self {
        let es256 = RingEs256::new();
        let pem = es256.generate_pem().expect("key");
        Self {
            signer: es256.load_signer(&pem).expect("signer"),
        }
    }

    fn jwks(&self) -> Value {
        let point = self.signer.public_point();
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "idp-1", "use": "sig", "alg": "ES256",
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        }]})
    }

    /// A compact token over raw header and payload bytes.
    fn sign_raw(&self, header: &Value, payload: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(header).expect("header")),
            b64(payload)
        );
        let signature = self.signer.sign(input.as_bytes()).expect("sign");
        format!("{input}.{}", b64(&signature))
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_raw(
            &json!({"alg": "ES256", "kid": "idp-1", "typ": "JWT"}),
            &serde_json::to_vec(claims).expect("claims"),
        )
    }
}

/// Claims a well-behaved issuer would sign at `now` (unix seconds).
fn id_claims(sub: &str, now: i64) -> Value {
    json!({"iss": IDP, "aud": [AUDIENCE, "other-client"], "sub": sub, "iat": now - 5,
           "exp": now + 300, "email": "alice@example.com"})
}

/// A zone with one managed application and the IdP registered as a subject issuer.
struct World {
    zone: String,
    app: String,
    secret: String,
    issuer_id: String,
}

async fn world<S, B>(api: &S) -> World
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let zone = admin_ok(api, "POST", "/v1/zones", json!({"name": "federation"})).await;
    let z = zone["id"].as_str().expect("zone").to_owned();
    let app = admin_ok(
        api,
        "POST",
        &format!("/v1/zones/{z}/applications"),
        json!({"name": "portal", "registration_method": "managed"}),
    )
    .await;
    let (status, issuer) = admin(
        api,
        "POST",
        &format!("/v1/zones/{z}/subject-issuers"),
        json!({"issuer": IDP, "jwks_url": JWKS_URL, "audience": AUDIENCE}),
    )
    .await;
    assert_eq!(status, 201, "{issuer}");
    World {
        zone: z,
        app: app["id"].as_str().expect("app").to_owned(),
        secret: app["client_secret"].as_str().expect("secret").to_owned(),
        issuer_id: issuer["id"].as_str().expect("issuer id").to_owned(),
    }
}

fn federation(w: &World, id_token: &str, extra: &[(&str, &str)]) -> String {
    let mut pairs = vec![
        ("grant_type", GRANT),
        ("zone_id", w.zone.as_str()),
        ("application_id", w.app.as_str()),
        ("client_secret", w.secret.as_str()),
        ("subject_token", id_token),
        ("subject_token_type", ID_TOKEN),
    ];
    pairs.extend_from_slice(extra);
    form(&pairs)
}

fn now(h: &Harness) -> i64 {
    h.clock.now().unix_seconds()
}

fn allows(h: &Harness) -> usize {
    h.audit
        .all()
        .iter()
        .filter(|e| e.decision == "allow")
        .count()
}

// --- tests -------------------------------------------------------------------------------------

#[actix_web::test]
async fn a_federated_user_gets_a_session_mandate_and_an_authority_record() {
    let h = harness(true).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;
    let idp = Idp::new();
    h.keys.serve(JWKS_URL, Ok(idp.jwks()));

    let sub = "auth0|5f7c8ec7c33c6c004bbafe82";
    let (status, body) = token_call(
        &sts,
        federation(&w, &idp.sign(&id_claims(sub, now(&h))), &[]),
        &[("x-request-id", "req-federate-1".into())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(
        body["issued_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert!(body.get("scope").is_none(), "{body}");
    assert!(body.get("target_resources").is_none(), "{body}");
    assert!(body.get("upstreams").is_none(), "{body}");

    let claims = claims_of(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["iss"], ISSUER_URL);
    assert_eq!(claims["sub"], sub);
    assert_eq!(claims["aud"], json!([ISSUER_URL]));
    assert_eq!(claims["zone_id"], w.zone.as_str());
    assert_eq!(claims["client_id"], w.app.as_str());
    assert_eq!(claims["use"], "session");
    assert_eq!(claims["sub_type"], "user");
    assert_eq!(claims["sid"], claims["root_sid"]);
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        900
    );
    for absent in [
        "scope",
        "target",
        "agent_session_id",
        "delegation_edge_id",
        "delegation_path",
        "delegation_chain",
        "hop_count",
        "nbf",
    ] {
        assert!(claims.get(absent).is_none(), "{absent} in {claims}");
    }

    let sid = claims["sid"].as_str().expect("sid");
    let zone = ZoneId::parse(&w.zone).expect("zone");
    let mut uow = h.store.begin(&ZoneScope::All).await.expect("begin");
    let record = uow
        .get_authority_record(&zone, sid)
        .await
        .expect("read")
        .expect("the federation wrote an authority record");
    assert_eq!(record.session_type, SessionType::User);
    assert_eq!(record.subject_id, sub);
    assert_eq!(record.client_id, w.app);
    assert_eq!(record.parent_id, None);
    assert_eq!(record.status, RecordStatus::Active);
    assert_eq!(record.claims_json, Some(json!({"iss": IDP})));
    assert_eq!(
        record.expires_at.unix_seconds(),
        claims["exp"].as_i64().expect("exp")
    );
    drop(uow);

    let event = h.audit.last();
    assert_eq!(event.event_type, "token_exchange");
    assert_eq!(event.decision, "allow");
    assert_eq!(event.evaluation_status, "complete");
    assert_eq!(event.request_id, "req-federate-1");
    assert_eq!(event.zone_id, w.zone);
    assert_eq!(
        event.determining_policies_json,
        Some(vec![json!({"policy": "caracal-subject-federation"})])
    );
    let meta = event.metadata_json.expect("metadata");
    assert_eq!(meta["federated_user_issuer"], IDP);
    assert_eq!(meta["session_id"], sid);
    assert_eq!(meta["subject_kind"], "user");
    assert_eq!(meta["application_id"], w.app.as_str());
}

#[actix_web::test]
async fn ttl_defaults_to_900_and_is_capped_at_3600() {
    let h = harness(true).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;
    let idp = Idp::new();
    h.keys.serve(JWKS_URL, Ok(idp.jwks()));
    let token = idp.sign(&id_claims("alice", now(&h)));

    let (status, body) = token_call(
        &sts,
        federation(&w, &token, &[("ttl_seconds", "3600")]),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 3600);
    for (ttl, why) in [
        ("3601", "ttl_seconds exceeds token TTL cap"),
        ("-1", "ttl_seconds must be positive"),
    ] {
        let before = allows(&h);
        let (status, body) =
            token_call(&sts, federation(&w, &token, &[("ttl_seconds", ttl)]), &[]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_token"))
        );
        assert_eq!(body["error_description"], why);
        assert_eq!(allows(&h), before, "nothing minted for ttl {ttl}");
    }
}

#[actix_web::test]
async fn a_federation_exchange_carries_only_the_identity_token() {
    let h = harness(true).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;
    let idp = Idp::new();
    h.keys.serve(JWKS_URL, Ok(idp.jwks()));
    let token = idp.sign(&id_claims("alice", now(&h)));
    for (field, value) in [
        ("resource", "resource://svc"),
        ("scope", "agent:lifecycle"),
        ("session_id", "ar-1"),
        ("agent_session_id", "s-1"),
        ("delegation_edge_id", "d-1"),
        ("approval_id", "ap-1"),
    ] {
        let (status, body) = token_call(&sts, federation(&w, &token, &[(field, value)]), &[]).await;
        assert_eq!(status, 400, "{field}: {body}");
        assert_eq!(body["error"], "invalid_token");
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| d.starts_with("a subject federation exchange carries only")),
            "{body}"
        );
        let event = h.audit.last();
        assert_eq!(
            (event.decision.as_str(), event.evaluation_status.as_str()),
            ("deny", "subject_federation_invalid"),
            "{field}"
        );
        assert_eq!(event.determining_policies_json, None);
    }
    assert_eq!(allows(&h), 0);
    assert_eq!(
        h.keys.fetches(),
        0,
        "a refused shape never reaches the issuer"
    );
}

#[actix_web::test]
async fn the_application_authenticates_first() {
    let h = harness(true).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let mut w = world(&api).await;
    let idp = Idp::new();
    h.keys.serve(JWKS_URL, Ok(idp.jwks()));
    let token = idp.sign(&id_claims("alice", now(&h)));
    w.secret = "cs_wrong".into();
    let (status, body) = token_call(&sts, federation(&w, &token, &[]), &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("access_denied"))
    );
    assert_eq!(body["error_description"], "invalid client credentials");
    assert_eq!(h.keys.fetches(), 0);

    // A Gateway envelope is no substitute for the application's secret.
    let request_id = "gw-federate-1";
    let body = form(&[
        ("grant_type", GRANT),
        ("zone_id", &w.zone),
        ("application_id", &w.app),
        ("subject_token", &token),
        ("subject_token_type", ID_TOKEN),
        ("gateway_request_id", request_id),
    ]);
    let headers = gateway_headers(&body, request_id);
    let (status, reply) = token_call(&sts, body, &headers).await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (401, Some("access_denied")),
        "{reply}"
    );
    assert_eq!(
        reply["error_description"], "invalid client credentials",
        "the envelope verified; the missing secret is what is refused"
    );
    assert_eq!(allows(&h), 0);
}

fn gateway_headers(body: &str, request_id: &str) -> Vec<(&'static str, String)> {
    let unix = SystemClock.now().unix_seconds();
    let nonce = caracal_core::ports::IdGenerator::new_id(&UuidV7Ids);
    let canonical = format!(
        "{unix}\n{nonce}\nPOST\n/oauth/2/token\n{}",
        caracal_core::digest::sha256_hex(body.as_bytes())
    );
    let sig = caracal_core::ports::MessageAuthenticator::sign_hex(
        &HmacSha256::from_bytes(&GATEWAY_KEY),
        canonical.as_bytes(),
    );
    vec![
        ("x-caracal-gateway-timestamp", unix.to_string()),
        ("x-caracal-gateway-request", nonce),
        ("x-caracal-gateway-signature", sig),
        ("x-request-id", request_id.to_owned()),
    ]
}

/// Every refusal: `401 invalid_token "invalid subject_token: <reason>"`, a
/// `subject_federation_rejected` event carrying the reason, and nothing minted.
#[actix_web::test]
async fn every_rejection_is_a_401_with_its_reason() {
    let h = harness(true).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;
    let idp = Idp::new();
    h.keys.serve(JWKS_URL, Ok(idp.jwks()));
    let t = now(&h);
    let with = |name: &str, value: Value| {
        let mut c = id_claims("alice", t);
        c[name] = value;
        idp.sign(&c)
    };
    let header = |hdr: Value| {
        idp.sign_raw(
            &hdr,
            &serde_json::to_vec(&id_claims("alice", t)).expect("c"),
        )
    };
    let unsigned = |alg: &str, signature: &[u8]| {
        let input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(&json!({"alg": alg, "kid": "idp-1"})).expect("h")),
            b64(&serde_json::to_vec(&id_claims("alice", t)).expect("c"))
        );
        format!("{input}.{}", b64(signature))
    };
    let forged = {
        let good = idp.sign(&id_claims("alice", t));
        let parts: Vec<&str> = good.split('.').collect();
        let other = b64(&serde_json::to_vec(&id_claims("mallory", t)).expect("c"));
        format!("{}.{other}.{}", parts[0], parts[2])
    };
    let raw_sub = |sub: &[u8]| {
        let mut payload = br#"{"iss":"https://idp.example","aud":"caracal-app","exp":"#.to_vec();
        payload.extend_from_slice((t + 300).to_string().as_bytes());
        payload.extend_from_slice(br#","sub":""#);
        payload.extend_from_slice(sub);
        payload.extend_from_slice(br#""}"#);
        idp.sign_raw(&json!({"alg": "ES256", "kid": "idp-1"}), &payload)
    };
    let cases: Vec<(&str, String, String)> = vec![
        (
            "not a JWT",
            "abc".into(),
            "malformed subject token: not three dot-separated segments".into(),
        ),
        (
            "no issuer",
            {
                let mut c = id_claims("alice", t);
                c.as_object_mut().expect("o").remove("iss");
                idp.sign(&c)
            },
            "subject token carries no issuer".into(),
        ),
        (
            "unknown issuer",
            with("iss", json!("https://evil.example")),
            "issuer \"https://evil.example\" is not trusted by this zone".into(),
        ),
        (
            "lookalike issuer",
            with("iss", json!("https://idp.example/")),
            "issuer \"https://idp.example/\" is not trusted by this zone".into(),
        ),
        (
            "wrong audience",
            with("aud", json!("another-app")),
            "token has invalid audience".into(),
        ),
        (
            "expired",
            with("exp", json!(t - 61)),
            "token is expired".into(),
        ),
        (
            "no exp",
            {
                let mut c = id_claims("alice", t);
                c.as_object_mut().expect("o").remove("exp");
                idp.sign(&c)
            },
            "token is missing required claim: exp".into(),
        ),
        (
            "issued in the future",
            with("iat", json!(t + 120)),
            "token used before issued".into(),
        ),
        (
            "not yet valid",
            with("nbf", json!(t + 120)),
            "token is not valid yet".into(),
        ),
        (
            "unknown kid",
            header(json!({"alg": "ES256", "kid": "rotated-away"})),
            "unknown signing key kid \"rotated-away\" for issuer https://idp.example".into(),
        ),
        (
            "no kid",
            header(json!({"alg": "ES256"})),
            "subject token missing kid header".into(),
        ),
        (
            "alg none",
            unsigned("none", b""),
            "signing method \"none\" is not accepted".into(),
        ),
        (
            "alg HS256",
            unsigned("HS256", &[7; 32]),
            "signing method \"HS256\" is not accepted".into(),
        ),
        (
            "forged payload",
            forged,
            "token signature is invalid".into(),
        ),
        (
            "empty sub",
            with("sub", json!("")),
            "subject token carries no sub".into(),
        ),
        (
            "missing sub",
            {
                let mut c = id_claims("alice", t);
                c.as_object_mut().expect("o").remove("sub");
                idp.sign(&c)
            },
            "subject token carries no sub".into(),
        ),
        (
            "long sub",
            with("sub", json!("x".repeat(513))),
            "sub exceeds 512 bytes".into(),
        ),
        (
            "reserved prefix",
            with("sub", json!("caracal:app-1")),
            "sub uses the reserved caracal: prefix".into(),
        ),
        (
            "invalid UTF-8",
            raw_sub(b"bob\xff"),
            "sub is not valid UTF-8 or contains the unicode replacement character".into(),
        ),
        (
            "replacement character",
            with("sub", json!("bob\u{fffd}")),
            "sub is not valid UTF-8 or contains the unicode replacement character".into(),
        ),
        (
            "control character",
            with("sub", json!("bob\nadmin")),
            "sub contains control characters".into(),
        ),
        (
            "NUL",
            with("sub", json!("bob\u{0}")),
            "sub contains control characters".into(),
        ),
        (
            "bidi override",
            with("sub", json!("bob\u{202e}nimda")),
            "sub contains bidirectional control characters".into(),
        ),
        (
            "bidi isolate",
            with("sub", json!("bob\u{2067}")),
            "sub contains bidirectional control characters".into(),
        ),
        (
            "leading whitespace",
            with("sub", json!(" bob")),
            "sub carries leading or trailing whitespace".into(),
        ),
        (
            "trailing whitespace",
            with("sub", json!("bob\u{a0}")),
            "sub carries leading or trailing whitespace".into(),
        ),
    ];
    for (case, token, reason) in cases {
        let (status, body) = token_call(&sts, federation(&w, &token, &[]), &[]).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_token")),
            "{case}: {body}"
        );
        assert_eq!(
            body["error_description"].as_str(),
            Some(format!("invalid subject_token: {reason}").as_str()),
            "{case}"
        );
        let event = h.audit.last();
        assert_eq!(
            (event.decision.as_str(), event.evaluation_status.as_str()),
            ("deny", "subject_federation_rejected"),
            "{case}"
        );
        let meta = event.metadata_json.expect("metadata");
        assert_eq!(meta["reason"], reason.as_str(), "{case}");
        assert_eq!(meta["application_id"], w.app.as_str());
    }
    assert_eq!(allows(&h), 0, "no rejection minted anything");
}

#[actix_web::test]
async fn trust_is_per_zone_and_ends_when_the_issuer_is_deleted() {
    let h = harness(true).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;
    let idp = Idp::new();
    h.keys.serve(JWKS_URL, Ok(idp.jwks()));
    let token = idp.sign(&id_claims("alice", now(&h)));

    // Another zone with its own application, but no trust in the IdP.
    let zone = admin_ok(&api, "POST", "/v1/zones", json!({"name": "elsewhere"})).await;
    let z2 = zone["id"].as_str().expect("zone").to_owned();
    let app = admin_ok(
        &api,
        "POST",
        &format!("/v1/zones/{z2}/applications"),
        json!({"name": "portal", "registration_method": "managed"}),
    )
    .await;
    let other = World {
        zone: z2,
        app: app["id"].as_str().expect("app").to_owned(),
        secret: app["client_secret"].as_str().expect("secret").to_owned(),
        issuer_id: String::new(),
    };
    let (status, body) = token_call(&sts, federation(&other, &token, &[]), &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["error_description"],
        "invalid subject_token: issuer \"https://idp.example\" is not trusted by this zone"
    );

    let (status, _) = token_call(&sts, federation(&w, &token, &[]), &[]).await;
    assert_eq!(status, 200);
    let (status, _) = admin(
        &api,
        "DELETE",
        &format!("/v1/zones/{}/subject-issuers/{}", w.zone, w.issuer_id),
        json!({}),
    )
    .await;
    assert_eq!(status, 204);
    let (status, body) = token_call(&sts, federation(&w, &token, &[]), &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["error_description"],
        "invalid subject_token: issuer \"https://idp.example\" is not trusted by this zone"
    );
}

#[actix_web::test]
async fn key_sets_are_cached_ten_minutes_per_issuer_and_url_and_never_served_stale() {
    let h = harness(true).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;
    let idp = Idp::new();
    h.keys.serve(JWKS_URL, Ok(idp.jwks()));

    for _ in 0..3 {
        let token = idp.sign(&id_claims("alice", now(&h)));
        let (status, body) = token_call(&sts, federation(&w, &token, &[]), &[]).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(h.keys.fetches(), 1, "one fetch serves the next ten minutes");

    // A new URL for the same issuer row is another cache entry.
    let moved = "https://keys.idp.example/jwks";
    h.keys.serve(moved, Ok(idp.jwks()));
    admin_ok(
        &api,
        "PATCH",
        &format!("/v1/zones/{}/subject-issuers/{}", w.zone, w.issuer_id),
        json!({"jwks_url": moved}),
    )
    .await;
    let token = idp.sign(&id_claims("alice", now(&h)));
    let (status, _) = token_call(&sts, federation(&w, &token, &[]), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(h.keys.fetches(), 2);

    // Just before expiry the cache still answers; at ten minutes it refetches, and a failed
    // refetch fails the exchange instead of trusting the old document.
    h.clock.advance_millis(10 * 60 * 1000 - 1);
    let token = idp.sign(&id_claims("alice", now(&h)));
    let (status, _) = token_call(&sts, federation(&w, &token, &[]), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(h.keys.fetches(), 2);
    h.clock.advance_millis(1);
    h.keys.serve(
        moved,
        Err(FetchError::Transport("connection refused".into())),
    );
    let token = idp.sign(&id_claims("alice", now(&h)));
    let (status, body) = token_call(&sts, federation(&w, &token, &[]), &[]).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["error_description"],
        "invalid subject_token: issuer key set unavailable"
    );
    assert_eq!(h.keys.fetches(), 3);
    let reason = h.audit.last().metadata_json.expect("metadata")["reason"].clone();
    assert_eq!(
        reason, "issuer key set unavailable: key set request failed: connection refused",
        "the evidence keeps the fetch failure"
    );

    // A document without a usable key is refused, and not cached.
    h.keys.serve(
        moved,
        Ok(json!({"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]})),
    );
    let (status, body) = token_call(&sts, federation(&w, &token, &[]), &[]).await;
    assert_eq!(status, 401);
    assert_eq!(
        body["error_description"],
        "invalid subject_token: issuer key set contains no usable signing keys"
    );
    h.keys.serve(moved, Ok(idp.jwks()));
    let (status, _) = token_call(&sts, federation(&w, &token, &[]), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(h.keys.fetches(), 5);
}

#[actix_web::test]
async fn without_egress_federation_fails_closed() {
    let h = harness(false).await;
    let api = test::init_service(api_app!(h.api.clone())).await;
    let sts = test::init_service(sts_app!(h.sts.clone())).await;
    let w = world(&api).await;
    let idp = Idp::new();
    let token = idp.sign(&id_claims("alice", now(&h)));
    let (status, body) = token_call(&sts, federation(&w, &token, &[]), &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
    assert_eq!(
        body["error_description"],
        "invalid subject_token: issuer key set unavailable: this STS has no egress for issuer key sets"
    );
    assert_eq!(allows(&h), 0);
}
