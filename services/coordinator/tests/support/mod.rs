//! What the Coordinator use-case tests share: a memory store with a clock that only moves
//! when told to, a seeded zone (applications, resources, authority records), principals,
//! and readers for the rows and outbox messages a use case leaves behind. Also a throwaway
//! Postgres database per test (created through the server's `postgres` database, migrated,
//! dropped on drop) for the multi-replica sweeper test.

#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use caracal_core::attribution::Attribution;
use caracal_core::authority::{
    AgentSession, AuthorityRecord, DelegationEdge, Lifecycle, RecordStatus, SessionType,
};
use caracal_core::coordinator::{
    Coordinator, CoordinatorConfig, IdempotencyHeaders, Principal, Reply,
};
use caracal_core::ids::{ApplicationId, ResourceId, ZoneId};
use caracal_core::model::{Application, OutboxMessage, RegistrationMethod, Resource, Zone};
use caracal_core::ports::{Clock, IdGenerator, OutboxQueue, Store, ZoneScope};
use caracal_core::time::Timestamp;
use caracal_core::Error;
use caracal_crypto::HmacSha256;
use caracal_memory::{FixedClock, MemoryAuthorityVersions, MemoryStore, UuidV7Ids};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{json, Map, Value};

/// The lifecycle scope every runtime mandate carries.
pub const LIFECYCLE: &str = "agent:lifecycle";
/// The resource the zone's applications are confined to.
pub const SVC: &str = "resource://svc";
/// A second resource.
pub const OTHER: &str = "resource://other";
/// An archived resource.
pub const GONE: &str = "resource://gone";

/// Where the test clock starts.
pub fn epoch() -> Timestamp {
    Timestamp::parse_utc_z("2030-01-01T00:00:00.000Z").expect("start instant")
}

/// A zone row.
pub fn zone_row(id: &ZoneId, at: Timestamp) -> Zone {
    Zone {
        id: id.clone(),
        name: format!("zone {id}"),
        slug: format!("zone-{}", id.as_str().to_lowercase()),
        dcr_enabled: true,
        operator_coauthor_badge: false,
        operator_governed: false,
        attr: Attribution::created("test", false, at),
        archived_at: None,
    }
}

/// An application row.
pub fn app_row(zone: &ZoneId, id: &str, method: RegistrationMethod, at: Timestamp) -> Application {
    Application {
        id: ApplicationId::parse(id).expect("app id"),
        zone_id: zone.clone(),
        name: id.to_owned(),
        registration_method: method,
        traits: Vec::new(),
        client_secret_hash: None,
        expires_at: None,
        attr: Attribution::created("test", false, at),
        archived_at: None,
    }
}

/// A resource row.
pub fn resource_row(
    zone: &ZoneId,
    id: &str,
    identifier: &str,
    scopes: &[&str],
    at: Timestamp,
) -> Resource {
    Resource {
        id: ResourceId::parse(id).expect("resource id"),
        zone_id: zone.clone(),
        name: id.to_owned(),
        identifier: identifier.to_owned(),
        upstream_url: Some("https://svc.example.test".to_owned()),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        credential_provider_id: None,
        operations: Vec::new(),
        operation_enforcement: "transport_uniform".to_owned(),
        attr: Attribution::created("test", false, at),
        archived_at: None,
    }
}

/// An active authority record living an hour.
pub fn record_row(
    zone: &ZoneId,
    id: &str,
    kind: SessionType,
    subject: &str,
    at: Timestamp,
) -> AuthorityRecord {
    AuthorityRecord {
        id: id.to_owned(),
        zone_id: zone.clone(),
        session_type: kind,
        subject_id: subject.to_owned(),
        client_id: subject.to_owned(),
        parent_id: None,
        status: RecordStatus::Active,
        expires_at: at.plus_millis(3_600_000),
        authenticated_at: at,
        claims_json: None,
        revoked_at: None,
        revoked_reason: None,
        created_at: at,
    }
}

/// A task Session row (for sweeper tests that seed rows directly).
pub fn task_row(
    zone: &ZoneId,
    id: &str,
    app: &str,
    anchor: &str,
    parent: Option<&str>,
    ttl: i64,
    at: Timestamp,
) -> AgentSession {
    AgentSession {
        id: id.to_owned(),
        zone_id: zone.clone(),
        application_id: app.to_owned(),
        subject_session_id: anchor.to_owned(),
        parent_id: parent.map(str::to_owned),
        lifecycle: Lifecycle::Task,
        labels: Vec::new(),
        status: "active".to_owned(),
        depth: i32::from(parent.is_some()),
        ttl_seconds: Some(ttl),
        started_at: at,
        last_heartbeat_at: None,
        heartbeat_deadline_at: None,
        lease_generation: 0,
        child_count: 0,
        metadata: Map::new(),
        status_reason: None,
        ended_at: None,
        created_at: at,
        updated_at: at,
    }
}

/// The idempotency MAC key of the tests.
pub fn mac() -> Arc<HmacSha256> {
    Arc::new(HmacSha256::from_bytes(&[7u8; 32]))
}

/// One seeded zone over a memory store:
/// * `app` (managed) with application record `sid`, `app_b` (managed) with `sid_b`,
///   `dcr` (DCR-registered) with `sid_dcr`, and a user record `user_sid` anchored on `app`;
/// * resources `r-svc` (`resource://svc`: `svc:read svc:write`), `r-other`
///   (`resource://other`: `other:read`) and the archived `r-gone`;
/// * a second zone `z2` with its own application `app2` and record `sid2`.
pub struct World {
    pub store: MemoryStore,
    pub clock: Arc<FixedClock>,
    pub coordinator: Coordinator,
    /// The authority versions the Coordinator advances.
    pub versions: Arc<MemoryAuthorityVersions>,
    pub zone: ZoneId,
    pub app: String,
    pub sid: String,
    pub app_b: String,
    pub sid_b: String,
    pub dcr: String,
    pub sid_dcr: String,
    pub user_sid: String,
    pub zone2: ZoneId,
    pub app2: String,
    pub sid2: String,
}

impl World {
    /// The seeded world with the default configuration.
    pub async fn new() -> Self {
        Self::with_config(CoordinatorConfig::default()).await
    }

    /// The seeded world with `config`.
    pub async fn with_config(config: CoordinatorConfig) -> Self {
        let store = MemoryStore::new();
        let clock = Arc::new(FixedClock::new(epoch()));
        let versions = Arc::new(MemoryAuthorityVersions::new());
        let coordinator = Coordinator::new(
            Arc::new(store.clone()),
            clock.clone(),
            Arc::new(UuidV7Ids),
            mac(),
            None,
            versions.clone() as Arc<dyn caracal_core::ports::AuthorityVersions>,
            config,
        );
        let zone = ZoneId::parse("z1").expect("zone");
        let zone2 = ZoneId::parse("z2").expect("zone");
        let now = epoch();
        let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
        uow.save_zone(&zone_row(&zone, now)).await.expect("zone");
        uow.save_zone(&zone_row(&zone2, now)).await.expect("zone2");
        for (id, method) in [
            ("app", RegistrationMethod::Managed),
            ("app_b", RegistrationMethod::Managed),
            ("dcr", RegistrationMethod::Dcr),
        ] {
            uow.save_application(&app_row(&zone, id, method, now))
                .await
                .expect("app");
        }
        uow.save_application(&app_row(&zone2, "app2", RegistrationMethod::Managed, now))
            .await
            .expect("app2");
        for (id, identifier, scopes) in [
            ("r-svc", SVC, &["svc:read", "svc:write"][..]),
            ("r-other", OTHER, &["other:read"][..]),
            ("r-gone", GONE, &["gone:read"][..]),
        ] {
            let mut r = resource_row(&zone, id, identifier, scopes, now);
            if id == "r-gone" {
                r.archived_at = Some(now);
            }
            uow.save_resource(&r).await.expect("resource");
        }
        for (id, kind, subject) in [
            ("sid", SessionType::Application, "app"),
            ("sid_b", SessionType::Application, "app_b"),
            ("sid_dcr", SessionType::Application, "dcr"),
            ("user_sid", SessionType::User, "user-1"),
        ] {
            uow.save_authority_record(&record_row(&zone, id, kind, subject, now))
                .await
                .expect("record");
        }
        uow.save_authority_record(&record_row(
            &zone2,
            "sid2",
            SessionType::Application,
            "app2",
            now,
        ))
        .await
        .expect("record2");
        uow.commit().await.expect("commit");
        Self {
            store,
            clock,
            coordinator,
            versions,
            zone,
            app: "app".into(),
            sid: "sid".into(),
            app_b: "app_b".into(),
            sid_b: "sid_b".into(),
            dcr: "dcr".into(),
            sid_dcr: "sid_dcr".into(),
            user_sid: "user_sid".into(),
            zone2,
            app2: "app2".into(),
            sid2: "sid2".into(),
        }
    }

    /// A runtime principal of `app` in zone `z1` with mandate `sid` and extra scopes.
    pub fn principal(&self, app: &str, sid: Option<&str>, extra: &[&str]) -> Principal {
        let mut scopes = vec![LIFECYCLE.to_owned()];
        scopes.extend(extra.iter().map(|s| (*s).to_owned()));
        Principal {
            sub: app.to_owned(),
            client_id: app.to_owned(),
            scopes,
            zone: self.zone.clone(),
            sid: sid.map(str::to_owned),
            operator: false,
            identity: Default::default(),
        }
    }

    /// `app` with its own record.
    pub fn me(&self) -> Principal {
        self.principal(&self.app, Some(&self.sid), &[])
    }

    /// The operator token's principal.
    pub fn operator(&self) -> Principal {
        Principal::operator(self.zone.clone(), LIFECYCLE)
    }

    /// Moves the clock forward.
    pub fn advance_secs(&self, secs: i64) {
        self.clock.advance_millis(secs * 1_000);
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Starts a Session without an idempotency key.
    pub async fn start(&self, p: &Principal, body: Value) -> Result<Reply, Error> {
        self.coordinator
            .start_session(p, &self.zone, &IdempotencyHeaders::default(), &body)
            .await
    }

    /// Starts a task Session of `app` with extra body members; returns its id.
    pub async fn task(&self, extra: Value) -> String {
        let mut body = json!({"application_id": self.app});
        merge(&mut body, extra);
        let reply = self.start(&self.me(), body).await.expect("start task");
        assert_eq!(reply.status, 201, "{}", reply.body);
        id_of(&reply.body, "agent_session_id")
    }

    /// Starts a service Session of `app`; returns its id.
    pub async fn service(&self, extra: Value) -> String {
        let mut body = json!({"application_id": self.app, "lifecycle": "service"});
        merge(&mut body, extra);
        let reply = self.start(&self.me(), body).await.expect("start service");
        assert_eq!(reply.status, 201, "{}", reply.body);
        id_of(&reply.body, "agent_session_id")
    }

    /// Creates a Delegation without an idempotency key.
    pub async fn delegate(&self, p: &Principal, body: Value) -> Result<Reply, Error> {
        self.coordinator
            .create_delegation(p, &self.zone, &IdempotencyHeaders::default(), &body)
            .await
    }

    /// Creates a Delegation of `app` from `source` to `target` confined to `resource://svc`
    /// with extra members; returns its id.
    pub async fn edge_between(&self, source: &str, target: &str, extra: Value) -> String {
        let mut body = json!({
            "source_session_id": source,
            "target_session_id": target,
            "issuer_application_id": self.app,
            "receiver_application_id": self.app,
            "scopes": ["svc:read"],
            "constraints": {"resources": [SVC]},
            "ttl_seconds": 600,
        });
        merge(&mut body, extra);
        let reply = self.delegate(&self.me(), body).await.expect("delegate");
        assert_eq!(reply.status, 201, "{}", reply.body);
        id_of(&reply.body, "delegation_edge_id")
    }

    /// The Session as stored (any zone).
    pub async fn session(&self, id: &str) -> AgentSession {
        self.try_session(id).await.expect("session exists")
    }

    /// The Session as stored, if any.
    pub async fn try_session(&self, id: &str) -> Option<AgentSession> {
        let mut uow = self.store.begin(&ZoneScope::All).await.expect("begin");
        for zone in [&self.zone, &self.zone2] {
            if let Some(s) = uow.get_agent_session(zone, id).await.expect("read") {
                return Some(s);
            }
        }
        None
    }

    /// The edge as stored.
    pub async fn edge(&self, id: &str) -> DelegationEdge {
        let mut uow = self.store.begin(&ZoneScope::All).await.expect("begin");
        uow.get_delegation_edge(&self.zone, id)
            .await
            .expect("read")
            .expect("edge exists")
    }

    /// The zone's graph epoch.
    pub async fn graph_epoch(&self) -> i64 {
        let mut uow = self.store.begin(&ZoneScope::All).await.expect("begin");
        uow.delegation_graph_epoch(&self.zone).await.expect("epoch")
    }

    /// Saves rows directly (bypassing the use cases).
    pub async fn save_record(&self, record: &AuthorityRecord) {
        let mut uow = self.store.begin(&ZoneScope::All).await.expect("begin");
        uow.save_authority_record(record).await.expect("save");
        uow.commit().await.expect("commit");
    }

    /// Saves a Session directly.
    pub async fn save_session(&self, session: &AgentSession) {
        let mut uow = self.store.begin(&ZoneScope::All).await.expect("begin");
        uow.save_agent_session(session).await.expect("save");
        uow.commit().await.expect("commit");
    }

    /// Every outbox message so far, oldest first.
    pub async fn outbox(&self) -> Vec<OutboxMessage> {
        all_outbox(&self.store).await
    }

    /// Outbox messages on `topic` whose fields include all of `fields`.
    pub async fn outbox_matching(
        &self,
        topic: &str,
        fields: &[(&str, &str)],
    ) -> Vec<OutboxMessage> {
        self.outbox()
            .await
            .into_iter()
            .filter(|m| {
                m.stream == topic
                    && fields
                        .iter()
                        .all(|(k, v)| m.fields.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }
}

/// Every undispatched outbox message of a store, oldest first. Claims with a lock that ends
/// at the claim instant, so the rows stay claimable for the next read.
pub async fn all_outbox(queue: &dyn OutboxQueue) -> Vec<OutboxMessage> {
    let far = epoch().plus_millis(100 * 365 * 86_400_000);
    queue.claim_due(far, far, 1_000_000).await.expect("claim")
}

/// Merges the members of `extra` into `body`.
pub fn merge(body: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}

/// A string member of a reply body.
pub fn id_of(body: &Value, key: &str) -> String {
    body[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} in {body}"))
        .to_owned()
}

/// The error of a failed use case.
pub fn err(result: Result<Reply, Error>) -> Error {
    match result {
        Ok(reply) => panic!("expected an error, got {} {}", reply.status, reply.body),
        Err(e) => e,
    }
}

/// Asserts an error's code (and shows the error otherwise).
#[track_caller]
pub fn assert_code(result: Result<Reply, Error>, code: &str) -> Error {
    let e = err(result);
    assert_eq!(e.code, code, "{e:?}");
    e
}

/// Idempotency headers with one key.
pub fn key(k: &str) -> IdempotencyHeaders {
    IdempotencyHeaders {
        keys: vec![k.to_owned()],
        generated: false,
    }
}

/// A fresh UUIDv7.
pub fn new_id() -> String {
    UuidV7Ids.new_id()
}

// --- Postgres -------------------------------------------------------------------------------

/// The server the tests use: `DATABASE_URL`, else the local trust-auth default.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced (query parameters kept).
pub fn with_database(url: &str, database: &str) -> String {
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

fn random_hex() -> String {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
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

/// One test's database. Dropping it drops the database (forcibly: pooled connections of the
/// store under test may still be open).
pub struct TestDb {
    /// URL of the test database.
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDb {
    /// Creates and migrates a fresh database, or returns `None` (after saying so) when the
    /// server is unreachable outside CI. In CI (`CI` set) an unreachable server fails the test.
    pub async fn create() -> Option<TestDb> {
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
        let name = format!("caracal_t_{}", random_hex());
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

/// A Coordinator over any store with the test MAC and the given clock.
pub fn coordinator_over(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    config: CoordinatorConfig,
) -> Coordinator {
    Coordinator::new(
        store,
        clock,
        Arc::new(UuidV7Ids),
        mac(),
        None,
        Arc::new(MemoryAuthorityVersions::new()),
        config,
    )
}
