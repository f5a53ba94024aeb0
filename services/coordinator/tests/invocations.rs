//! Agent services and invocations (`spec/coordinator-gateway.md` A9, A7, A11, A12), driven
//! through the use cases with a clock the test moves: every rule on the memory store, and one
//! end-to-end walk plus the sweeper's replica exclusion on a throwaway Postgres database.
//! Zones, applications and Sessions are written straight into the store (Sessions belong to
//! another use case). Each test asserts what a caller would notice: status, error code and
//! issue paths, the rows answered, the lifecycle events enqueued, and that refused calls
//! change nothing.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use caracal_core::attribution::Attribution;
use caracal_core::authority::{AgentSession, Lifecycle};
use caracal_core::coordinator::{
    Coordinator, CoordinatorConfig, Principal, Reply, TOPIC_INVOCATIONS_LIFECYCLE,
};
use caracal_core::ids::{ApplicationId, ZoneId};
use caracal_core::model::{Application, RegistrationMethod, Zone};
use caracal_core::ports::{Clock, IdGenerator, OutboxQueue, Store, ZoneScope};
use caracal_core::time::Timestamp;
use caracal_core::{Error, ErrorKind};
use caracal_crypto::HmacSha256;
use caracal_memory::{FixedClock, MemoryAuthorityVersions, MemoryStore, UuidV7Ids};
use caracal_postgres::PgStore;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{json, Map, Value};

const LIFECYCLE_SCOPE: &str = "agent:lifecycle";
const SERVICE_URL: &str = "https://svc.example.test/a2a";

/// A zone with two live applications: `svc_app` serves, `caller_app` invokes.
struct World {
    coordinator: Coordinator,
    store: Arc<dyn Store>,
    queue: Arc<dyn OutboxQueue>,
    clock: Arc<FixedClock>,
    zone: ZoneId,
    svc_app: String,
    caller_app: String,
    /// Keeps a Postgres test database alive for the test (dropped with the world).
    _db: Option<TestDb>,
}

fn start_instant() -> Timestamp {
    Timestamp::parse_utc_z("2026-07-11T13:00:00.000Z").expect("instant")
}

async fn world_over(
    store: Arc<dyn Store>,
    queue: Arc<dyn OutboxQueue>,
    db: Option<TestDb>,
    config: CoordinatorConfig,
) -> World {
    let clock = Arc::new(FixedClock::new(start_instant()));
    let coordinator = Coordinator::new(
        Arc::clone(&store),
        clock.clone(),
        Arc::new(UuidV7Ids),
        Arc::new(HmacSha256::from_bytes(&[7u8; 32])),
        None,
        Arc::new(MemoryAuthorityVersions::new()),
        config,
    );
    let zone = ZoneId::parse(&UuidV7Ids.new_id()).expect("zone id");
    let now = clock.now();
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.save_zone(&Zone {
        id: zone.clone(),
        name: "invocations".into(),
        slug: format!("invocations-{}", zone.as_str().to_ascii_lowercase()),
        dcr_enabled: false,
        operator_coauthor_badge: false,
        operator_governed: false,
        attr: Attribution::created("test", false, now),
        archived_at: None,
    })
    .await
    .expect("zone");
    uow.commit().await.expect("commit");
    let w = World {
        coordinator,
        store,
        queue,
        clock,
        zone,
        svc_app: String::new(),
        caller_app: String::new(),
        _db: db,
    };
    let svc_app = w.application("svc", None, None).await;
    let caller_app = w.application("caller", None, None).await;
    World {
        svc_app,
        caller_app,
        ..w
    }
}

async fn world_with(config: CoordinatorConfig) -> World {
    let store = MemoryStore::new();
    world_over(Arc::new(store.clone()), Arc::new(store), None, config).await
}

async fn world() -> World {
    world_with(CoordinatorConfig::default()).await
}

/// A world on a fresh, migrated Postgres database, or `None` when no server answers.
async fn pg_world() -> Option<World> {
    let db = TestDb::create().await?;
    let store = PgStore::connect(&db.url, 4).expect("pool");
    Some(
        world_over(
            Arc::new(store.clone()),
            Arc::new(store),
            Some(db),
            CoordinatorConfig::default(),
        )
        .await,
    )
}

impl World {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Saves an application; returns its id.
    async fn application(
        &self,
        name: &str,
        archived_at: Option<Timestamp>,
        expires_at: Option<Timestamp>,
    ) -> String {
        let id = UuidV7Ids.new_id();
        let mut uow = self.store.begin(&ZoneScope::All).await.expect("begin");
        uow.save_application(&Application {
            id: ApplicationId::parse(&id).expect("app id"),
            zone_id: self.zone.clone(),
            name: name.into(),
            registration_method: RegistrationMethod::Managed,
            traits: Vec::new(),
            client_secret_hash: None,
            expires_at,
            attr: Attribution::created("test", false, self.now()),
            archived_at,
        })
        .await
        .expect("application");
        uow.commit().await.expect("commit");
        id
    }

    /// Saves a Session of `app`; returns its id.
    async fn session(&self, app: &str, lifecycle: Lifecycle, status: &str, ttl: i64) -> String {
        let id = UuidV7Ids.new_id();
        let now = self.now();
        let service = lifecycle == Lifecycle::Service;
        let mut uow = self.store.begin(&ZoneScope::All).await.expect("begin");
        uow.save_agent_session(&AgentSession {
            id: id.clone(),
            zone_id: self.zone.clone(),
            application_id: app.into(),
            subject_session_id: UuidV7Ids.new_id(),
            parent_id: None,
            lifecycle,
            labels: Vec::new(),
            status: status.into(),
            depth: 0,
            ttl_seconds: (!service).then_some(ttl),
            started_at: now,
            last_heartbeat_at: service.then_some(now),
            heartbeat_deadline_at: service.then(|| now.plus_millis(120_000)),
            lease_generation: i64::from(service),
            child_count: 0,
            metadata: Map::new(),
            status_reason: None,
            ended_at: None,
            created_at: now,
            updated_at: now,
        })
        .await
        .expect("session");
        uow.commit().await.expect("commit");
        id
    }

    /// A live task Session of `app`.
    async fn task(&self, app: &str) -> String {
        self.session(app, Lifecycle::Task, "active", 3600).await
    }

    /// Registers the standard service of `svc_app`; returns its id.
    async fn service(&self) -> String {
        let reply = self
            .coordinator
            .register_agent_service(
                &owner(&self.zone, &self.svc_app),
                &self.zone,
                &json!({"application_id": self.svc_app, "endpoint_url": SERVICE_URL}),
            )
            .await
            .expect("register");
        id_of(&reply)
    }

    /// Creates an invocation of `service` by `svc_app` with `key`; returns its id.
    async fn invocation(&self, service: &str, key: &str) -> String {
        let reply = self
            .coordinator
            .create_invocation(
                &owner(&self.zone, &self.svc_app),
                &self.zone,
                &json!({"service_id": service, "idempotency_key": key, "method": "run"}),
            )
            .await
            .expect("create");
        id_of(&reply)
    }

    /// Lifecycle events enqueued since the last call (oldest first), as field maps.
    async fn events(&self) -> Vec<BTreeMap<String, String>> {
        let far = self.now().plus_millis(86_400_000);
        let mut claimed = self.queue.claim_due(far, far, 10_000).await.expect("claim");
        claimed.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        let mut out = Vec::new();
        for message in claimed {
            self.queue
                .mark_dispatched(&message.id, far)
                .await
                .expect("dispatched");
            if message.stream == TOPIC_INVOCATIONS_LIFECYCLE {
                out.push(message.fields);
            }
        }
        out
    }

    /// The stored invocation (payload included).
    async fn stored(&self, id: &str) -> caracal_core::coordinator::records::Invocation {
        let mut uow = self.store.begin(&ZoneScope::All).await.expect("begin");
        uow.get_invocation(&self.zone, id)
            .await
            .expect("get")
            .expect("stored")
    }

    async fn start(&self, p: &Principal, id: &str) -> Result<Reply, Error> {
        self.coordinator.start_invocation(p, &self.zone, id).await
    }

    async fn complete(&self, p: &Principal, id: &str, body: Value) -> Result<Reply, Error> {
        self.coordinator
            .complete_invocation(p, &self.zone, id, &body)
            .await
    }

    async fn cancel(&self, p: &Principal, id: &str, body: Option<Value>) -> Result<Reply, Error> {
        self.coordinator
            .cancel_invocation(p, &self.zone, id, body.as_ref())
            .await
    }
}

fn principal(zone: &ZoneId, client: &str, extra: &[&str]) -> Principal {
    let mut scopes = vec![LIFECYCLE_SCOPE.to_owned()];
    scopes.extend(extra.iter().map(|s| (*s).to_owned()));
    Principal {
        sub: format!("sub-{client}"),
        client_id: client.into(),
        scopes,
        zone: zone.clone(),
        sid: None,
        operator: false,
        identity: Default::default(),
    }
}

fn owner(zone: &ZoneId, app: &str) -> Principal {
    principal(zone, app, &[])
}

fn id_of(reply: &Reply) -> String {
    reply.body["id"].as_str().expect("id").to_owned()
}

fn code(result: Result<Reply, Error>) -> (ErrorKind, &'static str) {
    let e = result.expect_err("expected an error");
    (e.kind, e.code)
}

/// The `details.issues[].path` list of an `invalid_body` error.
fn issue_paths(result: Result<Reply, Error>) -> Vec<Value> {
    let e = result.expect_err("expected invalid_body");
    assert_eq!(e.code, "invalid_body");
    assert_eq!(e.kind, ErrorKind::Invalid);
    let extra = e.extra.expect("details");
    extra["details"]["issues"]
        .as_array()
        .expect("issues")
        .iter()
        .map(|issue| issue["path"].clone())
        .collect()
}

fn keys(row: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = row
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn event(
    name: &str,
    zone: &ZoneId,
    service: &str,
    id: &str,
    attempt: i32,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("dedupe_key".to_owned(), format!("{name}:{id}:{attempt}")),
        ("event".to_owned(), name.to_owned()),
        ("zone_id".to_owned(), zone.as_str().to_owned()),
        ("service_id".to_owned(), service.to_owned()),
        ("invocation_id".to_owned(), id.to_owned()),
    ])
}

fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

// --- Agent services ---------------------------------------------------------------------------

#[tokio::test]
async fn registering_a_service_answers_its_row_and_upserts_on_the_endpoint() {
    let w = world().await;
    let p = owner(&w.zone, &w.svc_app);
    let reply = w
        .coordinator
        .register_agent_service(
            &p,
            &w.zone,
            &json!({
                "application_id": w.svc_app,
                "endpoint_url": SERVICE_URL,
                "protocol_versions": ["a2a/0.3"],
                "framework": {"name": "langgraph", "version": "0.2"},
                "capabilities": ["summarize"],
                "metadata": {"region": "eu"},
                "ignored": true,
            }),
        )
        .await
        .expect("register");
    assert_eq!(reply.status, 201);
    assert!(!reply.replayed);
    let row = reply.body.clone();
    assert_eq!(
        keys(&row),
        [
            "application_id",
            "capabilities",
            "endpoint_url",
            "framework_name",
            "framework_version",
            "health",
            "id",
            "last_heartbeat_at",
            "metadata_json",
            "protocol_versions",
            "zone_id"
        ]
    );
    assert_eq!(row["zone_id"], w.zone.as_str());
    assert_eq!(row["application_id"], w.svc_app);
    assert_eq!(row["endpoint_url"], SERVICE_URL);
    assert_eq!(row["protocol_versions"], json!(["a2a/0.3"]));
    assert_eq!(row["framework_name"], "langgraph");
    assert_eq!(row["framework_version"], "0.2");
    assert_eq!(row["capabilities"], json!(["summarize"]));
    assert_eq!(row["health"], "starting");
    assert_eq!(row["metadata_json"], json!({"region": "eu"}));
    assert_eq!(row["last_heartbeat_at"], "2026-07-11T13:00:00.000Z");

    // Same (zone, application, endpoint): the row is replaced in place, id and heartbeat kept.
    w.clock.advance_millis(5_000);
    let again = w
        .coordinator
        .register_agent_service(
            &p,
            &w.zone,
            &json!({"application_id": w.svc_app, "endpoint_url": SERVICE_URL, "capabilities": ["translate"]}),
        )
        .await
        .expect("re-register");
    assert_eq!(again.status, 201);
    assert_eq!(again.body["id"], row["id"]);
    assert_eq!(again.body["capabilities"], json!(["translate"]));
    assert_eq!(again.body["protocol_versions"], json!([]));
    assert_eq!(again.body["framework_name"], Value::Null);
    assert_eq!(again.body["framework_version"], Value::Null);
    assert_eq!(again.body["metadata_json"], json!({}));
    assert_eq!(again.body["last_heartbeat_at"], "2026-07-11T13:00:00.000Z");

    // Another endpoint is another service.
    let other = w
        .coordinator
        .register_agent_service(
            &p,
            &w.zone,
            &json!({"application_id": w.svc_app, "endpoint_url": "https://svc.example.test/other"}),
        )
        .await
        .expect("second endpoint");
    assert_ne!(other.body["id"], row["id"]);
    let list = w
        .coordinator
        .list_agent_services(&p, &w.zone, &[])
        .await
        .expect("list");
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(2));
    // Registering emits no lifecycle event.
    assert!(w.events().await.is_empty());
}

#[tokio::test]
async fn registering_a_service_needs_ownership_and_a_live_application() {
    let w = world().await;
    let body = json!({"application_id": w.svc_app, "endpoint_url": SERVICE_URL});
    let stranger = owner(&w.zone, &w.caller_app);
    assert_eq!(
        code(
            w.coordinator
                .register_agent_service(&stranger, &w.zone, &body)
                .await
        ),
        (ErrorKind::Forbidden, "application_ownership_required")
    );
    // An invoke grant is not a spawn grant.
    let invoker = principal(
        &w.zone,
        &w.caller_app,
        &[&format!("coordinator.invoke_from:{}", w.svc_app)],
    );
    assert_eq!(
        code(
            w.coordinator
                .register_agent_service(&invoker, &w.zone, &body)
                .await
        )
        .1,
        "application_ownership_required"
    );
    let spawner = principal(
        &w.zone,
        &w.caller_app,
        &[&format!("coordinator.spawn_for:{}", w.svc_app)],
    );
    let reply = w
        .coordinator
        .register_agent_service(&spawner, &w.zone, &body)
        .await
        .expect("spawn_for registers");
    assert_eq!(reply.status, 201);
    let admin = principal(&w.zone, "caracal-operator", &["coordinator.admin"]);
    w.coordinator
        .register_agent_service(&admin, &w.zone, &body)
        .await
        .expect("admin registers");

    // Unknown, archived and expired applications are not found (owner of the id or admin).
    let past = w.now().plus_millis(-1_000);
    let archived = w.application("archived", Some(past), None).await;
    let expired = w.application("expired", None, Some(past)).await;
    for app in [
        "no-such-app",
        "bad id!",
        archived.as_str(),
        expired.as_str(),
    ] {
        let body = json!({"application_id": app, "endpoint_url": SERVICE_URL});
        assert_eq!(
            code(
                w.coordinator
                    .register_agent_service(&admin, &w.zone, &body)
                    .await
            ),
            (ErrorKind::NotFound, "application_not_found"),
            "{app}"
        );
    }
    // A future expiry is still live.
    let later = w
        .application("later", None, Some(w.now().plus_millis(60_000)))
        .await;
    let body = json!({"application_id": later, "endpoint_url": SERVICE_URL});
    w.coordinator
        .register_agent_service(&admin, &w.zone, &body)
        .await
        .expect("unexpired application");
    let list = w
        .coordinator
        .list_agent_services(&admin, &w.zone, &[])
        .await
        .expect("list");
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn registration_bodies_are_validated_field_by_field() {
    let w = world().await;
    let p = owner(&w.zone, &w.svc_app);
    let paths = issue_paths(
        w.coordinator
            .register_agent_service(
                &p,
                &w.zone,
                &json!({
                    "endpoint_url": "not a url",
                    "protocol_versions": "v1",
                    "framework": {"version": 2},
                    "capabilities": ["ok", "", 3],
                    "metadata": [],
                }),
            )
            .await,
    );
    assert_eq!(
        paths,
        vec![
            json!(["application_id"]),
            json!(["endpoint_url"]),
            json!(["protocol_versions"]),
            json!(["framework", "name"]),
            json!(["framework", "version"]),
            json!(["capabilities", 1]),
            json!(["capabilities", 2]),
            json!(["metadata"]),
        ]
    );
    for (body, path) in [
        (json!([]), json!([])),
        (
            json!({"application_id": w.svc_app}),
            json!(["endpoint_url"]),
        ),
        (
            json!({"application_id": w.svc_app, "endpoint_url": "http://"}),
            json!(["endpoint_url"]),
        ),
        (
            json!({"application_id": w.svc_app, "endpoint_url": format!("https://h/{}", "a".repeat(2100))}),
            json!(["endpoint_url"]),
        ),
        (
            json!({"application_id": w.svc_app, "endpoint_url": SERVICE_URL, "framework": null}),
            json!(["framework"]),
        ),
        (
            json!({"application_id": "", "endpoint_url": SERVICE_URL}),
            json!(["application_id"]),
        ),
    ] {
        let paths = issue_paths(
            w.coordinator
                .register_agent_service(&p, &w.zone, &body)
                .await,
        );
        assert_eq!(paths, vec![path], "{body}");
    }
    // Nothing was written.
    let list = w
        .coordinator
        .list_agent_services(&p, &w.zone, &[])
        .await
        .expect("list");
    assert_eq!(list.body["items"], json!([]));
    assert_eq!(list.body["next_cursor"], Value::Null);
}

#[tokio::test]
async fn services_page_newest_first_with_cursors() {
    let w = world().await;
    let p = owner(&w.zone, &w.svc_app);
    let mut ids = Vec::new();
    for n in 0..3 {
        let reply = w
            .coordinator
            .register_agent_service(
                &p,
                &w.zone,
                &json!({"application_id": w.svc_app, "endpoint_url": format!("https://svc{n}.example.test")}),
            )
            .await
            .expect("register");
        ids.push(id_of(&reply));
    }
    ids.reverse();
    let first = w
        .coordinator
        .list_agent_services(&p, &w.zone, &query(&[("limit", "2")]))
        .await
        .expect("page 1");
    let items: Vec<&Value> = first.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .collect();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], ids[0]);
    assert_eq!(items[1]["id"], ids[1]);
    assert_eq!(first.body["next_cursor"], ids[1]);
    let second = w
        .coordinator
        .list_agent_services(&p, &w.zone, &query(&[("limit", "2"), ("cursor", &ids[1])]))
        .await
        .expect("page 2");
    assert_eq!(second.body["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(second.body["items"][0]["id"], ids[2]);
    assert_eq!(second.body["next_cursor"], Value::Null);
    // A full last page still points at its last row; the page after it is empty.
    let exact = w
        .coordinator
        .list_agent_services(&p, &w.zone, &query(&[("limit", "1"), ("cursor", &ids[1])]))
        .await
        .expect("exact page");
    assert_eq!(exact.body["next_cursor"], ids[2]);
    let empty = w
        .coordinator
        .list_agent_services(&p, &w.zone, &query(&[("cursor", &ids[2])]))
        .await
        .expect("empty page");
    assert_eq!(empty.body, json!({"items": [], "next_cursor": null}));

    assert_eq!(
        code(
            w.coordinator
                .list_agent_services(&p, &w.zone, &query(&[("cursor", "nope")]))
                .await
        ),
        (ErrorKind::Invalid, "invalid_cursor")
    );
    for bad in [
        ("limit", "0"),
        ("limit", "501"),
        ("limit", "x"),
        ("cursor", ""),
    ] {
        assert_eq!(
            code(
                w.coordinator
                    .list_agent_services(&p, &w.zone, &query(&[bad]))
                    .await
            ),
            (ErrorKind::Invalid, "invalid_query"),
            "{bad:?}"
        );
    }
}

// --- Invocation create ------------------------------------------------------------------------

#[tokio::test]
async fn creating_an_invocation_answers_a_pending_row_without_payload_and_emits_created() {
    let w = world().await;
    let service = w.service().await;
    let source = w.task(&w.caller_app).await;
    let target = w.task(&w.svc_app).await;
    let p = owner(&w.zone, &w.caller_app);
    let reply = w
        .coordinator
        .create_invocation(
            &p,
            &w.zone,
            &json!({
                "service_id": service,
                "source_session_id": source,
                "target_session_id": target,
                "idempotency_key": "create-1",
                "method": "summarize",
                "params": {"text": "secret payload"},
                "metadata": {"trace": "t1"},
                "timeout_ms": 5000,
                "retry_policy": {"max_attempts": 2, "backoff_ms": 0},
            }),
        )
        .await
        .expect("create");
    assert_eq!(reply.status, 201);
    assert!(!reply.replayed);
    let row = &reply.body;
    assert_eq!(
        keys(row),
        [
            "attempts",
            "cancel_requested_at",
            "completed_at",
            "created_at",
            "deadline_at",
            "id",
            "max_attempts",
            "method",
            "retry_policy_json",
            "service_id",
            "source_session_id",
            "started_at",
            "status",
            "target_session_id",
            "timeout_ms",
            "zone_id"
        ]
    );
    assert!(!row.to_string().contains("secret payload"));
    assert_eq!(row["zone_id"], w.zone.as_str());
    assert_eq!(row["service_id"], service);
    assert_eq!(row["source_session_id"], source);
    assert_eq!(row["target_session_id"], target);
    assert_eq!(row["method"], "summarize");
    assert_eq!(row["status"], "pending");
    assert_eq!(row["attempts"], 0);
    assert_eq!(row["max_attempts"], 2);
    assert_eq!(row["timeout_ms"], 5000);
    assert_eq!(
        row["retry_policy_json"],
        json!({"max_attempts": 2, "backoff_ms": 0})
    );
    assert_eq!(row["deadline_at"], Value::Null);
    assert_eq!(row["started_at"], Value::Null);
    assert_eq!(row["cancel_requested_at"], Value::Null);
    assert_eq!(row["completed_at"], Value::Null);
    assert_eq!(row["created_at"], "2026-07-11T13:00:00.000Z");

    let id = id_of(&reply);
    let stored = w.stored(&id).await;
    assert_eq!(stored.params, json!({"text": "secret payload"}));
    assert_eq!(
        stored.metadata,
        json!({"trace": "t1"}).as_object().cloned().expect("map")
    );
    assert_eq!(stored.invoking_application_id, w.caller_app);
    assert_eq!(stored.backoff_ms, 0);

    assert_eq!(
        w.events().await,
        vec![event("invocation.created", &w.zone, &service, &id, 0)]
    );
}

#[tokio::test]
async fn invocation_defaults_follow_the_contract() {
    let w = world().await;
    let service = w.service().await;
    let id = w.invocation(&service, "defaults").await;
    let stored = w.stored(&id).await;
    assert_eq!(stored.timeout_ms, 30_000);
    assert_eq!(stored.max_attempts, 3);
    assert_eq!(stored.backoff_ms, 1_000);
    assert_eq!(stored.params, json!({}));
    assert!(stored.metadata.is_empty());
    assert_eq!(stored.source_session_id, None);
    assert_eq!(stored.target_session_id, None);
    // No source Session: the service's application invokes.
    assert_eq!(stored.invoking_application_id, w.svc_app);
    // Partial retry policy, integral floats and explicit nulls.
    let reply = w
        .coordinator
        .create_invocation(
            &owner(&w.zone, &w.svc_app),
            &w.zone,
            &json!({"service_id": service, "idempotency_key": "partial", "method": "m",
                    "source_session_id": null, "target_session_id": null, "params": null,
                    "timeout_ms": 900000.0, "retry_policy": {"max_attempts": 10}}),
        )
        .await
        .expect("create");
    let stored = w.stored(&id_of(&reply)).await;
    assert_eq!(stored.timeout_ms, 900_000);
    assert_eq!(stored.max_attempts, 10);
    assert_eq!(stored.backoff_ms, 1_000);
    assert_eq!(stored.params, Value::Null);
}

#[tokio::test]
async fn invocation_bodies_are_validated_before_anything_is_read() {
    let w = world().await;
    let p = owner(&w.zone, &w.svc_app);
    // Nothing exists yet: validation answers before the service lookup.
    let paths = issue_paths(
        w.coordinator
            .create_invocation(
                &p,
                &w.zone,
                &json!({
                    "service_id": "",
                    "source_session_id": 5,
                    "target_session_id": "",
                    "idempotency_key": 7,
                    "metadata": "x",
                    "timeout_ms": 0,
                    "retry_policy": {"max_attempts": 11, "backoff_ms": 300001},
                }),
            )
            .await,
    );
    assert_eq!(
        paths,
        vec![
            json!(["service_id"]),
            json!(["source_session_id"]),
            json!(["target_session_id"]),
            json!(["idempotency_key"]),
            json!(["method"]),
            json!(["metadata"]),
            json!(["timeout_ms"]),
            json!(["retry_policy", "max_attempts"]),
            json!(["retry_policy", "backoff_ms"]),
        ]
    );
    let base = json!({"service_id": "s", "idempotency_key": "k", "method": "m"});
    for (field, value) in [
        ("timeout_ms", json!(900_001)),
        ("timeout_ms", json!(1.5)),
        ("timeout_ms", json!("100")),
        ("retry_policy", json!([])),
        ("retry_policy", json!({"max_attempts": 0})),
        ("retry_policy", json!({"backoff_ms": -1})),
        ("idempotency_key", Value::Null),
    ] {
        let mut body = base.clone();
        body[field] = value;
        let paths = issue_paths(w.coordinator.create_invocation(&p, &w.zone, &body).await);
        assert_eq!(paths.len(), 1, "{body}");
        assert_eq!(paths[0][0], field, "{body}");
    }
    assert_eq!(
        issue_paths(
            w.coordinator
                .create_invocation(&p, &w.zone, &json!("x"))
                .await
        ),
        vec![json!([])]
    );
    // Key rules (A7) come after the schema, as their own code.
    for key in ["", " padded", "tab\tkey", &"k".repeat(256)] {
        let mut body = base.clone();
        body["idempotency_key"] = json!(key);
        assert_eq!(
            code(w.coordinator.create_invocation(&p, &w.zone, &body).await),
            (ErrorKind::Invalid, "idempotency_key_invalid"),
            "{key:?}"
        );
    }
    assert!(w.events().await.is_empty());
}

#[tokio::test]
async fn creating_needs_a_known_service_and_live_task_sessions() {
    let w = world().await;
    let p = owner(&w.zone, &w.svc_app);
    let create = |body: Value| {
        let coordinator = &w.coordinator;
        let p = p.clone();
        let zone = w.zone.clone();
        async move { coordinator.create_invocation(&p, &zone, &body).await }
    };
    assert_eq!(
        code(create(json!({"service_id": "missing", "idempotency_key": "k", "method": "m"})).await),
        (ErrorKind::NotFound, "agent_service_not_found")
    );
    let service = w.service().await;
    let live = w.task(&w.svc_app).await;
    let service_session = w.session(&w.svc_app, Lifecycle::Service, "active", 0).await;
    let suspended = w
        .session(&w.svc_app, Lifecycle::Task, "suspended", 3600)
        .await;
    let terminated = w
        .session(&w.svc_app, Lifecycle::Task, "terminated", 3600)
        .await;
    let short = w.session(&w.svc_app, Lifecycle::Task, "active", 10).await;
    w.clock.advance_millis(10_000);
    for bad in [
        "missing",
        service_session.as_str(),
        suspended.as_str(),
        terminated.as_str(),
        short.as_str(),
    ] {
        for field in ["source_session_id", "target_session_id"] {
            let mut body = json!({"service_id": service, "idempotency_key": "k", "method": "m",
                                  "source_session_id": live, "target_session_id": live});
            body[field] = json!(bad);
            assert_eq!(
                code(create(body).await),
                (ErrorKind::NotFound, "session_not_found"),
                "{field} = {bad}"
            );
        }
    }
    // Service lookup comes first: an unknown service with a bad Session is the service's 404.
    assert_eq!(
        code(
            create(
                json!({"service_id": "missing", "idempotency_key": "k", "method": "m",
                          "source_session_id": "missing"})
            )
            .await
        )
        .1,
        "agent_service_not_found"
    );
    assert!(w.events().await.is_empty());
    let ok = create(
        json!({"service_id": service, "idempotency_key": "k", "method": "m",
                           "source_session_id": live, "target_session_id": live}),
    )
    .await
    .expect("live sessions");
    assert_eq!(ok.status, 201);
}

#[tokio::test]
async fn the_invoking_application_must_be_the_callers() {
    let w = world().await;
    let service = w.service().await;
    let caller_session = w.task(&w.caller_app).await;
    let third = w.application("third", None, None).await;
    let body = |source: Option<&str>, key: &str| {
        json!({"service_id": service, "idempotency_key": key, "method": "m",
               "source_session_id": source})
    };

    // The source Session's application invokes: the service's owner may not speak for it.
    let svc_owner = owner(&w.zone, &w.svc_app);
    assert_eq!(
        code(
            w.coordinator
                .create_invocation(&svc_owner, &w.zone, &body(Some(&caller_session), "a"))
                .await
        ),
        (ErrorKind::Forbidden, "invoker_ownership_required")
    );
    // Without a source Session the service's application invokes.
    let caller = owner(&w.zone, &w.caller_app);
    assert_eq!(
        code(
            w.coordinator
                .create_invocation(&caller, &w.zone, &body(None, "b"))
                .await
        )
        .1,
        "invoker_ownership_required"
    );
    // spawn_for is not invoke_from; invoke_from for another application is not either.
    for scope in [
        format!("coordinator.spawn_for:{}", w.caller_app),
        format!("coordinator.invoke_from:{third}"),
        "coordinator.invoke_from".to_owned(),
    ] {
        let p = principal(&w.zone, &third, &[&scope]);
        assert_eq!(
            code(
                w.coordinator
                    .create_invocation(&p, &w.zone, &body(Some(&caller_session), "c"))
                    .await
            )
            .1,
            "invoker_ownership_required",
            "{scope}"
        );
    }
    assert!(w.events().await.is_empty());

    w.coordinator
        .create_invocation(&caller, &w.zone, &body(Some(&caller_session), "owner"))
        .await
        .expect("owner of the source Session");
    let delegate = principal(
        &w.zone,
        &third,
        &[&format!("coordinator.invoke_from:{}", w.caller_app)],
    );
    w.coordinator
        .create_invocation(&delegate, &w.zone, &body(Some(&caller_session), "grant"))
        .await
        .expect("invoke_from grant");
    let admin = principal(&w.zone, "caracal-operator", &["coordinator.admin"]);
    w.coordinator
        .create_invocation(&admin, &w.zone, &body(Some(&caller_session), "admin"))
        .await
        .expect("admin");
    w.coordinator
        .create_invocation(&svc_owner, &w.zone, &body(None, "service"))
        .await
        .expect("service owner without a source");
    assert_eq!(w.events().await.len(), 4);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_response_and_refuses_other_requests() {
    let w = world().await;
    let service = w.service().await;
    let p = owner(&w.zone, &w.svc_app);
    let body = json!({"service_id": service, "idempotency_key": "once", "method": "m",
                      "params": {"n": 1}, "metadata": {"b": 2, "a": 1}});
    let first = w
        .coordinator
        .create_invocation(&p, &w.zone, &body)
        .await
        .expect("first");
    let id = id_of(&first);
    assert_eq!(w.events().await.len(), 1);

    w.clock.advance_millis(1_000);
    // Same request (key order and defaults do not matter): the stored response, marked.
    let same = json!({"metadata": {"a": 1, "b": 2}, "method": "m", "params": {"n": 1},
                      "idempotency_key": "once", "service_id": service, "timeout_ms": 30000,
                      "retry_policy": {"max_attempts": 3, "backoff_ms": 1000}});
    let replay = w
        .coordinator
        .create_invocation(&p, &w.zone, &same)
        .await
        .expect("replay");
    assert_eq!(replay.status, 201);
    assert!(replay.replayed);
    assert_eq!(replay.body, first.body);
    assert!(w.events().await.is_empty(), "a replay emits nothing");

    // The invocation moving on does not stop the replay, which still shows the first answer.
    w.start(&p, &id).await.expect("start");
    w.complete(&p, &id, json!({"status": "succeeded"}))
        .await
        .expect("complete");
    w.events().await;
    let late = w
        .coordinator
        .create_invocation(&p, &w.zone, &body)
        .await
        .expect("replay after completion");
    assert!(late.replayed);
    assert_eq!(late.body["status"], "pending");
    assert_eq!(late.body, first.body);

    // Another request under the key, or the same request by another subject: conflict.
    let mut other = body.clone();
    other["params"] = json!({"n": 2});
    assert_eq!(
        code(w.coordinator.create_invocation(&p, &w.zone, &other).await),
        (ErrorKind::Conflict, "idempotency_key_conflict")
    );
    let mut other_subject = p.clone();
    other_subject.sub = "someone-else".into();
    assert_eq!(
        code(
            w.coordinator
                .create_invocation(&other_subject, &w.zone, &body)
                .await
        )
        .1,
        "idempotency_key_conflict"
    );
    let mut longer = body.clone();
    longer["timeout_ms"] = json!(30_001);
    assert_eq!(
        code(w.coordinator.create_invocation(&p, &w.zone, &longer).await).1,
        "idempotency_key_conflict"
    );
    assert!(w.events().await.is_empty());

    // Receipts are scoped to the invoking application: the same key from another invoker
    // creates anew.
    let source = w.task(&w.caller_app).await;
    let mut elsewhere = body.clone();
    elsewhere["source_session_id"] = json!(source);
    let fresh = w
        .coordinator
        .create_invocation(&owner(&w.zone, &w.caller_app), &w.zone, &elsewhere)
        .await
        .expect("other scope");
    assert!(!fresh.replayed);
    assert_ne!(fresh.body["id"], first.body["id"]);
}

#[tokio::test]
async fn the_receipt_cap_per_scope_is_enforced() {
    let w = world_with(CoordinatorConfig {
        idempotency_max_receipts_per_scope: 2,
        ..CoordinatorConfig::default()
    })
    .await;
    let service = w.service().await;
    w.invocation(&service, "one").await;
    w.invocation(&service, "two").await;
    let p = owner(&w.zone, &w.svc_app);
    let body = json!({"service_id": service, "idempotency_key": "three", "method": "run"});
    assert_eq!(
        code(w.coordinator.create_invocation(&p, &w.zone, &body).await),
        (ErrorKind::RateLimited, "idempotency_receipt_limit_exceeded")
    );
    // Replays of held keys still answer.
    let replay = w
        .coordinator
        .create_invocation(
            &p,
            &w.zone,
            &json!({"service_id": service, "idempotency_key": "one", "method": "run"}),
        )
        .await
        .expect("replay under the cap");
    assert!(replay.replayed);
    // Receipts expire after the retention; then the scope has room again.
    w.clock.advance_millis(7 * 86_400_000 + 1);
    w.coordinator
        .create_invocation(&p, &w.zone, &body)
        .await
        .expect("room after retention");
}

// --- Transitions ------------------------------------------------------------------------------

#[tokio::test]
async fn an_invocation_runs_retries_and_succeeds() {
    let w = world().await;
    let service = w.service().await;
    let p = owner(&w.zone, &w.svc_app);
    let reply = w
        .coordinator
        .create_invocation(
            &p,
            &w.zone,
            &json!({"service_id": service, "idempotency_key": "k", "method": "m",
                    "timeout_ms": 1000, "retry_policy": {"max_attempts": 2}}),
        )
        .await
        .expect("create");
    let id = id_of(&reply);
    w.events().await;

    w.clock.advance_millis(500);
    let started = w.start(&p, &id).await.expect("start");
    assert_eq!(started.status, 200);
    assert_eq!(started.body["status"], "running");
    assert_eq!(started.body["attempts"], 1);
    assert_eq!(started.body["started_at"], "2026-07-11T13:00:00.500Z");
    assert_eq!(started.body["deadline_at"], "2026-07-11T13:00:01.500Z");
    assert_eq!(started.body["completed_at"], Value::Null);
    assert_eq!(keys(&started.body), keys(&reply.body));
    assert_eq!(
        code(w.start(&p, &id).await),
        (ErrorKind::Conflict, "invocation_not_startable")
    );

    w.clock.advance_millis(200);
    let failed = w
        .complete(
            &p,
            &id,
            json!({"status": "failed", "error": {"code": "boom"}, "metadata": {"note": "x"}}),
        )
        .await
        .expect("fail");
    assert_eq!(failed.body["status"], "failed");
    assert_eq!(failed.body["completed_at"], "2026-07-11T13:00:00.700Z");
    let stored = w.stored(&id).await;
    assert_eq!(stored.error_json, Some(json!({"code": "boom"})));
    assert_eq!(stored.metadata.get("note"), Some(&json!("x")));
    assert_eq!(
        code(w.complete(&p, &id, json!({"status": "succeeded"})).await),
        (ErrorKind::Conflict, "invocation_not_completable")
    );
    assert_eq!(
        code(w.cancel(&p, &id, None).await),
        (ErrorKind::Conflict, "invocation_not_cancelable")
    );

    // A failed invocation with attempts left starts again, with a clean slate.
    w.clock.advance_millis(300);
    let retried = w.start(&p, &id).await.expect("retry");
    assert_eq!(retried.body["attempts"], 2);
    assert_eq!(retried.body["completed_at"], Value::Null);
    assert_eq!(retried.body["started_at"], "2026-07-11T13:00:01.000Z");
    assert_eq!(w.stored(&id).await.error_json, None);

    let done = w
        .complete(
            &p,
            &id,
            json!({"status": "succeeded", "metadata": {"more": true}}),
        )
        .await
        .expect("succeed");
    assert_eq!(done.body["status"], "succeeded");
    let stored = w.stored(&id).await;
    assert_eq!(stored.metadata.get("note"), Some(&json!("x")));
    assert_eq!(stored.metadata.get("more"), Some(&json!(true)));
    for result in [
        w.start(&p, &id).await,
        w.complete(&p, &id, json!({"status": "failed"})).await,
        w.cancel(&p, &id, None).await,
    ] {
        assert_eq!(result.expect_err("terminal").kind, ErrorKind::Conflict);
    }

    assert_eq!(
        w.events().await,
        vec![
            event("invocation.started", &w.zone, &service, &id, 1),
            event("invocation.failed", &w.zone, &service, &id, 1),
            event("invocation.started", &w.zone, &service, &id, 2),
            event("invocation.succeeded", &w.zone, &service, &id, 2),
        ]
    );
    let got = w
        .coordinator
        .get_invocation(&p, &w.zone, &id)
        .await
        .expect("get");
    assert_eq!(got.body, done.body);
}

#[tokio::test]
async fn attempts_run_out() {
    let w = world().await;
    let service = w.service().await;
    let p = owner(&w.zone, &w.svc_app);
    let reply = w
        .coordinator
        .create_invocation(
            &p,
            &w.zone,
            &json!({"service_id": service, "idempotency_key": "k", "method": "m",
                    "retry_policy": {"max_attempts": 1}}),
        )
        .await
        .expect("create");
    let id = id_of(&reply);
    w.start(&p, &id).await.expect("start");
    w.complete(&p, &id, json!({"status": "failed"}))
        .await
        .expect("fail");
    assert_eq!(
        code(w.start(&p, &id).await),
        (ErrorKind::Conflict, "invocation_not_startable")
    );
    assert_eq!(w.stored(&id).await.status, "failed");
}

#[tokio::test]
async fn cancellation_ends_pending_work_and_asks_running_work_to_stop() {
    let w = world().await;
    let service = w.service().await;
    let p = owner(&w.zone, &w.svc_app);

    // Pending: canceled at once.
    let pending = w.invocation(&service, "pending").await;
    w.events().await;
    w.clock.advance_millis(100);
    let canceled = w
        .cancel(&p, &pending, Some(json!({"reason": "user aborted"})))
        .await
        .expect("cancel pending");
    assert_eq!(canceled.body["status"], "canceled");
    assert_eq!(
        canceled.body["cancel_requested_at"],
        "2026-07-11T13:00:00.100Z"
    );
    assert_eq!(canceled.body["completed_at"], "2026-07-11T13:00:00.100Z");
    assert_eq!(
        w.stored(&pending).await.cancel_reason.as_deref(),
        Some("user aborted")
    );
    for result in [
        w.cancel(&p, &pending, None).await,
        w.start(&p, &pending).await,
        w.complete(&p, &pending, json!({"status": "succeeded"}))
            .await,
    ] {
        assert_eq!(
            result.expect_err("canceled is terminal").kind,
            ErrorKind::Conflict
        );
    }

    // Running: cancel requested (twice is fine); the service then completes it.
    let running = w.invocation(&service, "running").await;
    w.start(&p, &running).await.expect("start");
    w.events().await;
    w.clock.advance_millis(100);
    let requested = w
        .cancel(&p, &running, Some(json!({})))
        .await
        .expect("cancel running");
    assert_eq!(requested.body["status"], "cancel_requested");
    assert_eq!(
        requested.body["cancel_requested_at"],
        "2026-07-11T13:00:00.200Z"
    );
    assert_eq!(requested.body["completed_at"], Value::Null);
    let again = w
        .cancel(&p, &running, Some(Value::Null))
        .await
        .expect("cancel again");
    assert_eq!(again.body["status"], "cancel_requested");
    assert_eq!(w.stored(&running).await.cancel_reason, None);
    assert_eq!(
        code(w.start(&p, &running).await),
        (ErrorKind::Conflict, "invocation_not_startable")
    );
    let finished = w
        .complete(&p, &running, json!({"status": "failed", "error": null}))
        .await
        .expect("complete after cancel request");
    assert_eq!(finished.body["status"], "failed");

    assert_eq!(
        w.events().await,
        vec![
            event(
                "invocation.cancel_requested",
                &w.zone,
                &service,
                &running,
                1
            ),
            event(
                "invocation.cancel_requested",
                &w.zone,
                &service,
                &running,
                1
            ),
            event("invocation.failed", &w.zone, &service, &running, 1),
        ]
    );
}

#[tokio::test]
async fn transitions_validate_bodies_and_ids_first() {
    let w = world().await;
    let service = w.service().await;
    let p = owner(&w.zone, &w.svc_app);
    let id = w.invocation(&service, "k").await;
    w.start(&p, &id).await.expect("start");
    w.events().await;
    for (body, paths) in [
        (json!({}), vec![json!(["status"])]),
        (json!({"status": "canceled"}), vec![json!(["status"])]),
        (
            json!({"status": "succeeded", "error": "x", "metadata": 1}),
            vec![json!(["error"]), json!(["metadata"])],
        ),
        (json!([]), vec![json!([])]),
    ] {
        assert_eq!(
            issue_paths(w.complete(&p, &id, body.clone()).await),
            paths,
            "{body}"
        );
        // A bad body is refused even for an unknown invocation (validation first).
        assert_eq!(
            issue_paths(w.complete(&p, "unknown", body).await).len(),
            paths.len()
        );
    }
    for body in [
        json!({"reason": ""}),
        json!({"reason": 3}),
        json!({"reason": null}),
        json!("x"),
    ] {
        assert_eq!(
            issue_paths(w.cancel(&p, &id, Some(body.clone())).await).len(),
            1,
            "{body}"
        );
    }
    for bad in ["", "a/b", &"x".repeat(129)] {
        assert_eq!(
            code(w.start(&p, bad).await),
            (ErrorKind::Invalid, "invalid_params")
        );
        assert_eq!(
            code(w.coordinator.get_invocation(&p, &w.zone, bad).await).1,
            "invalid_params"
        );
    }
    // Nothing changed.
    assert_eq!(w.stored(&id).await.status, "running");
    assert!(w.events().await.is_empty());
}

#[tokio::test]
async fn transitions_need_the_service_application_and_a_known_invocation() {
    let w = world().await;
    let service = w.service().await;
    let source = w.task(&w.caller_app).await;
    let caller = owner(&w.zone, &w.caller_app);
    let reply = w
        .coordinator
        .create_invocation(
            &caller,
            &w.zone,
            &json!({"service_id": service, "idempotency_key": "k", "method": "m",
                    "source_session_id": source}),
        )
        .await
        .expect("create");
    let id = id_of(&reply);
    w.events().await;

    for p in [
        &caller,
        &principal(
            &w.zone,
            &w.caller_app,
            &[&format!("coordinator.spawn_for:{}", w.svc_app)],
        ),
    ] {
        assert_eq!(
            code(w.start(p, &id).await),
            (ErrorKind::Forbidden, "invoker_ownership_required")
        );
        assert_eq!(
            code(w.cancel(p, &id, None).await).1,
            "invoker_ownership_required"
        );
        assert_eq!(
            code(w.complete(p, &id, json!({"status": "succeeded"})).await).1,
            "invoker_ownership_required"
        );
    }
    assert_eq!(w.stored(&id).await.status, "pending");
    assert!(w.events().await.is_empty());

    let svc_owner = owner(&w.zone, &w.svc_app);
    for result in [
        w.start(&svc_owner, "unknown").await,
        w.cancel(&svc_owner, "unknown", None).await,
        w.complete(&svc_owner, "unknown", json!({"status": "succeeded"}))
            .await,
        w.coordinator
            .get_invocation(&svc_owner, &w.zone, "unknown")
            .await,
    ] {
        assert_eq!(code(result), (ErrorKind::NotFound, "invocation_not_found"));
    }

    let worker = principal(
        &w.zone,
        &w.caller_app,
        &[&format!("coordinator.invoke_from:{}", w.svc_app)],
    );
    w.start(&worker, &id)
        .await
        .expect("invoke_from the service's app");
    let admin = principal(&w.zone, "caracal-operator", &["coordinator.admin"]);
    w.complete(&admin, &id, json!({"status": "succeeded"}))
        .await
        .expect("admin");
    // Reads carry no ownership rule.
    let read = w
        .coordinator
        .get_invocation(&caller, &w.zone, &id)
        .await
        .expect("read");
    assert_eq!(read.body["status"], "succeeded");
}

#[tokio::test]
async fn invocations_are_confined_to_their_zone() {
    let w = world().await;
    let service = w.service().await;
    let id = w.invocation(&service, "k").await;
    let other = ZoneId::parse(&UuidV7Ids.new_id()).expect("zone");
    let admin = principal(&other, "caracal-operator", &["coordinator.admin"]);
    assert_eq!(
        code(w.coordinator.get_invocation(&admin, &other, &id).await).1,
        "invocation_not_found"
    );
    assert_eq!(
        code(w.coordinator.start_invocation(&admin, &other, &id).await).1,
        "invocation_not_found"
    );
    let body = json!({"service_id": service, "idempotency_key": "k", "method": "m"});
    assert_eq!(
        code(w.coordinator.create_invocation(&admin, &other, &body).await).1,
        "agent_service_not_found"
    );
}

// --- Listing ----------------------------------------------------------------------------------

#[tokio::test]
async fn invocations_list_newest_first_with_filters() {
    let w = world().await;
    let service = w.service().await;
    let other_service = id_of(
        &w.coordinator
            .register_agent_service(
                &owner(&w.zone, &w.svc_app),
                &w.zone,
                &json!({"application_id": w.svc_app, "endpoint_url": "https://other.example.test"}),
            )
            .await
            .expect("register"),
    );
    let p = owner(&w.zone, &w.svc_app);
    let session = w.task(&w.svc_app).await;
    let a = w.invocation(&service, "a").await;
    let b = id_of(
        &w.coordinator
            .create_invocation(
                &p,
                &w.zone,
                &json!({"service_id": other_service, "idempotency_key": "b", "method": "m",
                        "target_session_id": session}),
            )
            .await
            .expect("b"),
    );
    let c = w.invocation(&service, "c").await;
    w.start(&p, &c).await.expect("start c");

    let all = w
        .coordinator
        .list_invocations(&p, &w.zone, &[])
        .await
        .expect("list");
    let ids: Vec<&str> = all.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["id"].as_str())
        .collect();
    assert_eq!(ids, [c.as_str(), b.as_str(), a.as_str()]);
    assert_eq!(all.body["next_cursor"], Value::Null);
    assert_eq!(
        keys(&all.body["items"][0]),
        [
            "attempts",
            "completed_at",
            "created_at",
            "deadline_at",
            "id",
            "max_attempts",
            "method",
            "service_id",
            "source_session_id",
            "started_at",
            "status",
            "target_session_id",
            "timeout_ms",
            "zone_id"
        ]
    );

    let ids_of = |reply: &Reply| -> Vec<String> {
        reply.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["id"].as_str().map(str::to_owned))
            .collect()
    };
    let list = |pairs: Vec<(&str, &str)>| {
        let q = query(&pairs);
        let coordinator = &w.coordinator;
        let p = p.clone();
        let zone = w.zone.clone();
        async move { coordinator.list_invocations(&p, &zone, &q).await }
    };
    let running = list(vec![("status", "running")]).await.expect("status");
    assert_eq!(ids_of(&running), [c.as_str()]);
    let by_service = list(vec![("service_id", service.as_str())])
        .await
        .expect("service");
    assert_eq!(ids_of(&by_service), [c.as_str(), a.as_str()]);
    let by_session = list(vec![("session_id", session.as_str())])
        .await
        .expect("session");
    assert_eq!(ids_of(&by_session), [b.as_str()]);
    let combined = list(vec![
        ("service_id", service.as_str()),
        ("status", "pending"),
    ])
    .await
    .expect("combined");
    assert_eq!(ids_of(&combined), [a.as_str()]);

    // Filtered pages: full page → cursor; the next page continues below it.
    let page1 = list(vec![("service_id", service.as_str()), ("limit", "1")])
        .await
        .expect("page 1");
    assert_eq!(ids_of(&page1), [c.as_str()]);
    assert_eq!(page1.body["next_cursor"], c);
    let page2 = list(vec![
        ("service_id", service.as_str()),
        ("limit", "1"),
        ("cursor", c.as_str()),
    ])
    .await
    .expect("page 2");
    assert_eq!(ids_of(&page2), [a.as_str()]);
    let page3 = list(vec![
        ("service_id", service.as_str()),
        ("limit", "1"),
        ("cursor", a.as_str()),
    ])
    .await
    .expect("page 3");
    assert_eq!(page3.body, json!({"items": [], "next_cursor": null}));
    let unfiltered = list(vec![("limit", "2"), ("cursor", c.as_str())])
        .await
        .expect("unfiltered page");
    assert_eq!(ids_of(&unfiltered), [b.as_str(), a.as_str()]);
    assert_eq!(unfiltered.body["next_cursor"], a);

    assert_eq!(
        code(list(vec![("cursor", "nope")]).await),
        (ErrorKind::Invalid, "invalid_cursor")
    );
    for bad in [
        vec![("status", "done")],
        vec![("status", "")],
        vec![("service_id", "")],
        vec![("limit", "0")],
        vec![("status", "pending"), ("status", "running")],
    ] {
        assert_eq!(
            code(list(bad.clone()).await),
            (ErrorKind::Invalid, "invalid_query"),
            "{bad:?}"
        );
    }
}

// --- Deadline enforcer ------------------------------------------------------------------------

#[tokio::test]
async fn overdue_attempts_fail_or_time_out_and_the_rest_is_untouched() {
    let w = world().await;
    let service = w.service().await;
    let p = owner(&w.zone, &w.svc_app);
    let create = |key: &'static str, timeout: i64, attempts: i64| {
        let coordinator = &w.coordinator;
        let p = p.clone();
        let zone = w.zone.clone();
        let service = service.clone();
        async move {
            let reply = coordinator
                .create_invocation(
                    &p,
                    &zone,
                    &json!({"service_id": service, "idempotency_key": key, "method": "m",
                            "timeout_ms": timeout, "retry_policy": {"max_attempts": attempts}}),
                )
                .await
                .expect("create");
            id_of(&reply)
        }
    };
    let retryable = create("retryable", 1_000, 2).await;
    let last_try = create("last", 1_000, 1).await;
    let patient = create("patient", 60_000, 1).await;
    let pending = create("pending", 1_000, 1).await;
    let finished = create("finished", 1_000, 1).await;
    for id in [&retryable, &last_try, &patient, &finished] {
        w.start(&p, id).await.expect("start");
    }
    w.complete(&p, &finished, json!({"status": "succeeded"}))
        .await
        .expect("complete");
    w.events().await;

    // Not yet due: nothing moves.
    w.clock.advance_millis(999);
    assert_eq!(
        w.coordinator
            .sweep_invocation_deadlines()
            .await
            .expect("sweep"),
        0
    );
    assert!(w.events().await.is_empty());

    // Due at the deadline instant.
    w.clock.advance_millis(1);
    assert_eq!(
        w.coordinator
            .sweep_invocation_deadlines()
            .await
            .expect("sweep"),
        2
    );
    let failed = w.stored(&retryable).await;
    assert_eq!(failed.status, "failed");
    assert_eq!(
        failed.error_json,
        Some(json!({"reason": "deadline_exceeded"}))
    );
    assert_eq!(failed.completed_at, Some(w.now()));
    let timed_out = w.stored(&last_try).await;
    assert_eq!(timed_out.status, "timed_out");
    assert_eq!(
        timed_out.error_json,
        Some(json!({"reason": "deadline_exceeded"}))
    );
    assert_eq!(w.stored(&patient).await.status, "running");
    assert_eq!(w.stored(&pending).await.status, "pending");
    assert_eq!(w.stored(&finished).await.status, "succeeded");
    let mut events = w.events().await;
    events.sort();
    let mut expected = vec![
        event("invocation.failed", &w.zone, &service, &retryable, 1),
        event("invocation.timed_out", &w.zone, &service, &last_try, 1),
    ];
    expected.sort();
    assert_eq!(events, expected);

    // A second pass finds nothing; the failed one may run again, a timed-out one may not.
    assert_eq!(
        w.coordinator
            .sweep_invocation_deadlines()
            .await
            .expect("sweep"),
        0
    );
    let restarted = w.start(&p, &retryable).await.expect("restart");
    assert_eq!(restarted.body["attempts"], 2);
    assert_eq!(w.stored(&retryable).await.error_json, None);
    assert_eq!(
        code(w.start(&p, &last_try).await).1,
        "invocation_not_startable"
    );
    assert_eq!(
        code(
            w.complete(&p, &last_try, json!({"status": "succeeded"}))
                .await
        )
        .1,
        "invocation_not_completable"
    );
    // The second attempt also overruns, with no attempts left: timed out.
    w.events().await;
    w.clock.advance_millis(1_000);
    assert_eq!(
        w.coordinator
            .sweep_invocation_deadlines()
            .await
            .expect("sweep"),
        1
    );
    assert_eq!(w.stored(&retryable).await.status, "timed_out");
    assert_eq!(
        w.events().await,
        vec![event(
            "invocation.timed_out",
            &w.zone,
            &service,
            &retryable,
            2
        )]
    );
}

#[tokio::test]
async fn a_cancel_request_is_not_swept_and_passes_are_batched() {
    let w = world_with(CoordinatorConfig {
        sweeper_batch_size: 2,
        ..CoordinatorConfig::default()
    })
    .await;
    let service = w.service().await;
    let p = owner(&w.zone, &w.svc_app);
    let mut ids = Vec::new();
    for key in ["a", "b", "c", "d"] {
        let reply = w
            .coordinator
            .create_invocation(
                &p,
                &w.zone,
                &json!({"service_id": service, "idempotency_key": key, "method": "m",
                        "timeout_ms": 10}),
            )
            .await
            .expect("create");
        let id = id_of(&reply);
        w.start(&p, &id).await.expect("start");
        ids.push(id);
    }
    // A cancel request leaves `running`: the enforcer only ends running attempts.
    w.cancel(&p, &ids[3], None).await.expect("cancel");
    w.clock.advance_millis(10);
    assert_eq!(
        w.coordinator
            .sweep_invocation_deadlines()
            .await
            .expect("pass 1"),
        2
    );
    assert_eq!(
        w.coordinator
            .sweep_invocation_deadlines()
            .await
            .expect("pass 2"),
        1
    );
    assert_eq!(
        w.coordinator
            .sweep_invocation_deadlines()
            .await
            .expect("pass 3"),
        0
    );
    for id in &ids[..3] {
        assert_eq!(w.stored(id).await.status, "failed");
    }
    assert_eq!(w.stored(&ids[3]).await.status, "cancel_requested");
}

// --- Postgres ---------------------------------------------------------------------------------

#[tokio::test]
async fn postgres_walk_through() {
    let Some(w) = pg_world().await else { return };
    let p = owner(&w.zone, &w.svc_app);
    let service = w.service().await;
    let again = w
        .coordinator
        .register_agent_service(
            &p,
            &w.zone,
            &json!({"application_id": w.svc_app, "endpoint_url": SERVICE_URL,
                    "framework": {"name": "adk"}, "metadata": {"k": [1, 2]}}),
        )
        .await
        .expect("upsert");
    assert_eq!(again.body["id"], service);
    assert_eq!(again.body["framework_name"], "adk");
    assert_eq!(again.body["metadata_json"], json!({"k": [1, 2]}));

    let source = w.task(&w.svc_app).await;
    let body = json!({"service_id": service, "idempotency_key": "pg", "method": "m",
                      "source_session_id": source, "params": null, "timeout_ms": 1000,
                      "retry_policy": {"max_attempts": 2}});
    let created = w
        .coordinator
        .create_invocation(&p, &w.zone, &body)
        .await
        .expect("create");
    let id = id_of(&created);
    let replay = w
        .coordinator
        .create_invocation(&p, &w.zone, &body)
        .await
        .expect("replay");
    assert!(replay.replayed);
    assert_eq!(replay.body, created.body);
    let mut other = body.clone();
    other["method"] = json!("n");
    assert_eq!(
        code(w.coordinator.create_invocation(&p, &w.zone, &other).await).1,
        "idempotency_key_conflict"
    );
    assert_eq!(w.stored(&id).await.params, Value::Null);

    w.start(&p, &id).await.expect("start");
    w.clock.advance_millis(1_000);
    assert_eq!(
        w.coordinator
            .sweep_invocation_deadlines()
            .await
            .expect("sweep"),
        1
    );
    let stored = w.stored(&id).await;
    assert_eq!(stored.status, "failed");
    assert_eq!(
        stored.error_json,
        Some(json!({"reason": "deadline_exceeded"}))
    );
    let retried = w.start(&p, &id).await.expect("retry");
    assert_eq!(retried.body["attempts"], 2);
    assert_eq!(retried.body["started_at"], "2026-07-11T13:00:01.000Z");
    let done = w
        .complete(
            &p,
            &id,
            json!({"status": "succeeded", "metadata": {"x": 1}}),
        )
        .await
        .expect("complete");
    assert_eq!(done.body["status"], "succeeded");
    let got = w
        .coordinator
        .get_invocation(&p, &w.zone, &id)
        .await
        .expect("get");
    assert_eq!(got.body, done.body);

    let pending = w.invocation(&service, "pg-2").await;
    let canceled = w
        .cancel(&p, &pending, Some(json!({"reason": "stop"})))
        .await
        .expect("cancel");
    assert_eq!(canceled.body["status"], "canceled");
    let list = w
        .coordinator
        .list_invocations(&p, &w.zone, &query(&[("session_id", &source)]))
        .await
        .expect("list");
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(list.body["items"][0]["id"], id);
    let services = w
        .coordinator
        .list_agent_services(&p, &w.zone, &query(&[("limit", "1")]))
        .await
        .expect("services");
    assert_eq!(services.body["next_cursor"], service);

    assert_eq!(
        w.events().await,
        vec![
            event("invocation.created", &w.zone, &service, &id, 0),
            event("invocation.started", &w.zone, &service, &id, 1),
            event("invocation.failed", &w.zone, &service, &id, 1),
            event("invocation.started", &w.zone, &service, &id, 2),
            event("invocation.succeeded", &w.zone, &service, &id, 2),
            event("invocation.created", &w.zone, &service, &pending, 0),
            event(
                "invocation.cancel_requested",
                &w.zone,
                &service,
                &pending,
                0
            ),
        ]
    );
}

#[tokio::test]
async fn a_sweep_pass_already_running_elsewhere_is_skipped() {
    let Some(w) = pg_world().await else { return };
    let p = owner(&w.zone, &w.svc_app);
    let service = w.service().await;
    let id = w.invocation(&service, "k").await;
    w.start(&p, &id).await.expect("start");
    w.clock.advance_millis(30_000);

    // Another replica's pass holds the sweep lock: this one does nothing.
    let mut other_replica = w.store.begin(&ZoneScope::All).await.expect("begin");
    assert!(other_replica
        .try_lock("coordinator:sweep:deadlines")
        .await
        .expect("try_lock"));
    assert_eq!(
        w.coordinator
            .sweep_invocation_deadlines()
            .await
            .expect("sweep"),
        0
    );
    assert_eq!(w.stored(&id).await.status, "running");
    other_replica.commit().await.expect("release");

    assert_eq!(
        w.coordinator
            .sweep_invocation_deadlines()
            .await
            .expect("sweep"),
        1
    );
    assert_eq!(w.stored(&id).await.status, "failed");
}

/// The server the Postgres tests use: `DATABASE_URL`, else the local trust-auth default.
fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced (query parameters kept).
fn with_database(url: &str, database: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let base = match head[authority_start..].find('/') {
        Some(slash) => &head[..authority_start + slash],
        None => head,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

async fn admin_connection(admin_url: &str) -> Result<AsyncPgConnection, String> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        AsyncPgConnection::establish(admin_url),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("connection timed out after 5s".to_owned()),
    }
}

/// One test's database, created and migrated for it and dropped (forcibly) after it.
struct TestDb {
    url: String,
    admin_url: String,
    name: String,
}

impl TestDb {
    /// A fresh migrated database, or `None` (after saying so) when the server is unreachable
    /// outside CI; in CI (`CI` set) an unreachable server fails the test.
    async fn create() -> Option<TestDb> {
        let admin_url = with_database(&server_url(), "postgres");
        let mut admin = match admin_connection(&admin_url).await {
            Ok(conn) => conn,
            Err(err) => {
                if std::env::var_os("CI").is_some() {
                    panic!("Postgres unreachable at {admin_url} in CI: {err}");
                }
                println!("skipping: Postgres unreachable at {admin_url}: {err}");
                return None;
            }
        };
        let mut hasher = RandomState::new().build_hasher();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        let name = format!("caracal_inv_{:016x}", hasher.finish());
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|err| panic!("CREATE DATABASE {name}: {err}"));
        let db = TestDb {
            url: with_database(&server_url(), &name),
            admin_url,
            name,
        };
        caracal_postgres::migrate(&db.url)
            .await
            .unwrap_or_else(|err| panic!("migrating {}: {err}", db.name));
        Some(db)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside the test's runtime (which cannot be blocked on) or while
        // unwinding: do the work on a separate thread with its own small runtime.
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                match admin_connection(&admin_url).await {
                    Ok(mut admin) => {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        if let Err(err) = diesel::sql_query(sql).execute(&mut admin).await {
                            eprintln!("could not drop test database {name}: {err}");
                        }
                    }
                    Err(err) => eprintln!("could not drop test database {name}: {err}"),
                }
            });
        });
        let _ = dropper.join();
    }
}
