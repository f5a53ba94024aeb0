//! The Coordinator's sweepers (`spec/coordinator-gateway.md` A11): TTL expiry, lease loss and
//! retention on a memory store with a controlled clock, and, when Postgres is reachable, two
//! Coordinator replicas sweeping one database concurrently without processing any Session
//! twice, and concurrent Session starts against the capacity limit and one idempotency key.

mod support;

use std::collections::HashMap;
use std::sync::Arc;

use caracal_core::authority::{AgentSession, SessionType};
use caracal_core::coordinator::{
    CoordinatorConfig, TOPIC_AGENTS_LIFECYCLE, TOPIC_DELEGATIONS_INVALIDATE,
};
use caracal_core::ids::ZoneId;
use caracal_core::ports::{Clock, Store, ZoneScope};
use caracal_memory::SystemClock;
use caracal_postgres::PgStore;
use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn ttl_sweeper_expires_the_root_and_terminates_descendants() {
    let w = World::new().await;
    let root = w.task(json!({"ttl_seconds": 10})).await;
    let child = w.task(json!({"parent_id": root})).await;
    let grandchild = w.task(json!({"parent_id": child})).await;
    let keeper = w.task(json!({})).await;
    let edge = w.edge_between(&keeper, &grandchild, json!({})).await;
    let epoch = w.graph_epoch().await;

    assert_eq!(w.coordinator.sweep_task_ttl().await.expect("early pass"), 0);
    w.advance_secs(10);
    assert_eq!(w.coordinator.sweep_task_ttl().await.expect("pass"), 3);
    let r = w.session(&root).await;
    assert_eq!(
        (r.status.as_str(), r.status_reason.as_deref(), r.ended_at),
        ("expired", Some("ttl"), Some(w.now()))
    );
    for id in [&child, &grandchild] {
        let s = w.session(id).await;
        assert_eq!(
            (s.status.as_str(), s.status_reason.as_deref()),
            ("terminated", Some("parent_terminated"))
        );
    }
    assert_eq!(w.session(&keeper).await.status, "active");
    assert_eq!(w.edge(&edge).await.status, "revoked");
    assert_eq!(w.graph_epoch().await, epoch + 1);
    let terminates = w
        .outbox_matching(TOPIC_AGENTS_LIFECYCLE, &[("event", "terminate")])
        .await;
    assert_eq!(terminates.len(), 3);
    assert!(terminates.iter().all(|m| m.fields["reason"] == "ttl"));
    let revoke = w
        .outbox_matching(TOPIC_DELEGATIONS_INVALIDATE, &[("event", "edge_revoke")])
        .await;
    assert_eq!(revoke.len(), 1);
    assert_eq!(revoke[0].fields["reason"], "ttl");
    // Nothing is processed twice.
    assert_eq!(w.coordinator.sweep_task_ttl().await.expect("again"), 0);
    assert_eq!(
        w.outbox_matching(TOPIC_AGENTS_LIFECYCLE, &[("event", "terminate")])
            .await
            .len(),
        3
    );
}

#[tokio::test]
async fn ttl_sweeper_works_in_batches_across_zones() {
    let w = World::with_config(CoordinatorConfig {
        sweeper_batch_size: 2,
        ..CoordinatorConfig::default()
    })
    .await;
    let now = w.now();
    let mut due = Vec::new();
    for (i, zone) in [&w.zone, &w.zone2, &w.zone, &w.zone2, &w.zone]
        .into_iter()
        .enumerate()
    {
        let id = format!("due-{i}");
        w.save_session(&task_row(zone, &id, "app", "sid", None, 5, now))
            .await;
        due.push(id);
    }
    w.save_session(&task_row(&w.zone, "fresh", "app", "sid", None, 3600, now))
        .await;
    w.advance_secs(5);
    let mut total = 0;
    for _ in 0..5 {
        total += w.coordinator.sweep_task_ttl().await.expect("pass");
    }
    assert_eq!(total, 5);
    for id in &due {
        assert_eq!(w.session(id).await.status, "expired", "{id}");
    }
    assert_eq!(w.session("fresh").await.status, "active");
}

#[tokio::test]
async fn lease_sweeper_suspends_the_subtree_and_resume_restores_it() {
    let w = World::new().await;
    let svc = w.service(json!({})).await;
    let child = w.task(json!({"parent_id": svc})).await;
    let healthy = w.service(json!({})).await;
    w.advance_secs(60);
    w.coordinator
        .heartbeat_session(&w.me(), &w.zone, &healthy, &json!({"lease_generation": 1}))
        .await
        .expect("heartbeat");
    w.advance_secs(60);
    assert_eq!(w.coordinator.sweep_service_leases().await.expect("pass"), 2);
    assert_eq!(w.session(&svc).await.status, "suspended");
    assert_eq!(w.session(&child).await.status, "suspended");
    assert_eq!(w.session(&healthy).await.status, "active");
    let suspends = w
        .outbox_matching(TOPIC_AGENTS_LIFECYCLE, &[("event", "suspend")])
        .await;
    assert_eq!(suspends.len(), 2);
    assert!(suspends
        .iter()
        .all(|m| m.fields["reason"] == "service_heartbeat_lost"));
    assert_eq!(
        w.coordinator.sweep_service_leases().await.expect("again"),
        0
    );
    // Suspended is resumable, with a fresh lease.
    w.coordinator
        .resume_session(&w.me(), &w.zone, &svc)
        .await
        .expect("resume");
    let s = w.session(&svc).await;
    assert_eq!(
        (s.status.as_str(), s.heartbeat_deadline_at),
        ("active", Some(w.now().plus_millis(120_000)))
    );
    assert_eq!(w.session(&child).await.status, "active");
}

#[tokio::test]
async fn retention_expires_edges_and_purges_old_rows() {
    let w = World::with_config(CoordinatorConfig {
        graph_retention_seconds: 100,
        ..CoordinatorConfig::default()
    })
    .await;
    let (a, b) = (w.task(json!({})).await, w.task(json!({})).await);
    let short = w.edge_between(&a, &b, json!({"ttl_seconds": 30})).await;
    let long = w.edge_between(&a, &b, json!({"ttl_seconds": 600})).await;
    let ended = w.task(json!({})).await;
    w.coordinator
        .terminate_session(&w.me(), &w.zone, &ended, None, None)
        .await
        .expect("terminate");
    w.coordinator
        .start_session(
            &w.me(),
            &w.zone,
            &key("k"),
            &json!({"application_id": "app"}),
        )
        .await
        .expect("keyed start");
    let epoch = w.graph_epoch().await;

    w.advance_secs(30);
    assert_eq!(w.coordinator.sweep_retention().await.expect("pass"), 1);
    assert_eq!(w.edge(&short).await.status, "expired");
    assert_eq!(w.edge(&long).await.status, "active");
    assert_eq!(
        (
            w.session(&a).await.status.as_str(),
            w.session(&b).await.status.as_str()
        ),
        ("active", "active"),
        "expiry leaves the endpoints alone"
    );
    assert_eq!(w.graph_epoch().await, epoch + 1);
    let rows = w
        .outbox_matching(TOPIC_DELEGATIONS_INVALIDATE, &[("event", "edge_expire")])
        .await;
    assert_eq!(rows.len(), 1);
    let f = &rows[0].fields;
    assert_eq!(f["dedupe_key"], format!("edge_expire:z1:{}", epoch + 1));
    assert_eq!(f["affected_edges"], "1");
    assert_eq!(
        serde_json::from_str::<Value>(&f["edge_ids"]).expect("json"),
        json!([short])
    );
    assert_eq!(f["epoch"], (epoch + 1).to_string());
    assert_eq!(f["zone_id"], "z1");
    assert_eq!(w.coordinator.sweep_retention().await.expect("again"), 0);

    // Past retention: the ended Session and the expired edge are purged; after the receipt
    // lapses (7 days) it goes too.
    w.advance_secs(101);
    let purged = w.coordinator.sweep_retention().await.expect("purge");
    assert_eq!(purged, 2, "one ended Session and one expired edge");
    assert!(w.try_session(&ended).await.is_none());
    w.advance_secs(7 * 86_400);
    let later = w.coordinator.sweep_retention().await.expect("receipts");
    assert!(
        later >= 2,
        "the long edge expired and the receipt lapsed: {later}"
    );
}

/// Seeds `per_zone` due root task Sessions (each with one child) in each of `zones`.
async fn seed_due(
    store: &dyn Store,
    zones: &[ZoneId],
    per_zone: usize,
    at: caracal_core::time::Timestamp,
) -> Vec<AgentSession> {
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    let mut due = Vec::new();
    for zone in zones {
        uow.save_zone(&zone_row(zone, at)).await.expect("zone");
        uow.save_authority_record(&record_row(
            zone,
            &format!("rec-{zone}"),
            SessionType::User,
            "u",
            at,
        ))
        .await
        .expect("record");
        for _ in 0..per_zone {
            let root = task_row(zone, &new_id(), "app", &format!("rec-{zone}"), None, 1, at);
            let mut child = task_row(
                zone,
                &new_id(),
                "app",
                &format!("rec-{zone}"),
                Some(&root.id),
                3600,
                at,
            );
            child.depth = 1;
            let mut root = root;
            root.child_count = 1;
            uow.save_agent_session(&root).await.expect("root");
            uow.save_agent_session(&child).await.expect("child");
            due.push(root);
            due.push(child);
        }
    }
    uow.commit().await.expect("commit");
    due
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_never_process_a_session_twice() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url, 8).expect("connect"));
    let queue = PgStore::connect(&db.url, 2).expect("queue");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let config = CoordinatorConfig {
        sweeper_batch_size: 7,
        ..CoordinatorConfig::default()
    };
    let zones: Vec<ZoneId> = (0..4)
        .map(|i| ZoneId::parse(&format!("zr{i}")).expect("zone"))
        .collect();
    let start = clock.now().plus_millis(-5_000);
    let sessions = seed_due(store.as_ref(), &zones, 15, start).await;

    let replicas = two_replicas(&store, &clock, &config);
    let mut tasks = Vec::new();
    for replica in &replicas {
        let replica = Arc::clone(replica);
        tasks.push(tokio::spawn(async move {
            let mut processed = 0u64;
            let mut idle = 0;
            // Keep sweeping until several passes in a row find nothing (the other replica
            // may hold the pass lock while work remains).
            while idle < 20 {
                let n = replica.sweep_task_ttl().await.expect("pass");
                processed += n;
                idle = if n == 0 { idle + 1 } else { 0 };
                tokio::task::yield_now().await;
            }
            processed
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("replica");
    }
    assert_eq!(
        total,
        sessions.len() as u64,
        "every Session ended exactly once"
    );

    let mut terminates: HashMap<String, usize> = HashMap::new();
    for m in all_outbox(&queue).await {
        if m.stream == TOPIC_AGENTS_LIFECYCLE
            && m.fields.get("event").map(String::as_str) == Some("terminate")
        {
            *terminates
                .entry(m.fields["agent_session_id"].clone())
                .or_default() += 1;
        }
    }
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    for s in &sessions {
        assert_eq!(
            terminates.get(&s.id),
            Some(&1),
            "one terminate row for {}",
            s.id
        );
        let now = uow
            .get_agent_session(&s.zone_id, &s.id)
            .await
            .expect("read")
            .expect("row");
        let want = if s.parent_id.is_none() {
            "expired"
        } else {
            "terminated"
        };
        assert_eq!(now.status, want);
    }
    assert_eq!(terminates.len(), sessions.len());
}

/// Seeds zone `zc` with application `app` and its application record `sid` on Postgres.
async fn seed_capacity_zone(store: &dyn Store, at: caracal_core::time::Timestamp) -> ZoneId {
    use caracal_core::model::RegistrationMethod;
    let zone = ZoneId::parse("zc").expect("zone");
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.save_zone(&zone_row(&zone, at)).await.expect("zone");
    uow.save_application(&app_row(&zone, "app", RegistrationMethod::Managed, at))
        .await
        .expect("app");
    uow.save_authority_record(&record_row(
        &zone,
        "sid",
        SessionType::Application,
        "app",
        at,
    ))
    .await
    .expect("record");
    uow.commit().await.expect("commit");
    zone
}

/// Two Coordinators over one store, as two replicas would be.
fn two_replicas(
    store: &Arc<dyn Store>,
    clock: &Arc<dyn Clock>,
    config: &CoordinatorConfig,
) -> Vec<Arc<caracal_core::coordinator::Coordinator>> {
    (0..2)
        .map(|_| {
            Arc::new(coordinator_over(
                Arc::clone(store),
                Arc::clone(clock),
                config.clone(),
            ))
        })
        .collect()
}

/// `app` calling with its own application record `sid`.
fn app_principal(zone: &ZoneId) -> caracal_core::coordinator::Principal {
    caracal_core::coordinator::Principal {
        sub: "app".into(),
        client_id: "app".into(),
        scopes: vec![LIFECYCLE.to_owned()],
        zone: zone.clone(),
        sid: Some("sid".into()),
        operator: false,
    }
}

/// A root start takes the zone lock only after writing its Session, for its capacity check
/// and commit. Twenty concurrent starts through two replicas against `MAX_AGENTS_PER_APP = 5`
/// on Postgres: exactly five are admitted, the rest are refused with the typed limit error,
/// and exactly five Sessions (and five spawn rows) exist afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_root_starts_never_exceed_the_application_limit() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url, 12).expect("connect"));
    let queue = PgStore::connect(&db.url, 2).expect("queue");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let zone = seed_capacity_zone(store.as_ref(), clock.now().plus_millis(-1_000)).await;
    let config = CoordinatorConfig {
        max_agents_per_app: 5,
        ..CoordinatorConfig::default()
    };
    let replicas = two_replicas(&store, &clock, &config);
    let principal = app_principal(&zone);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let replica = Arc::clone(&replicas[i % 2]);
        let principal = principal.clone();
        let zone = zone.clone();
        tasks.push(tokio::spawn(async move {
            replica
                .start_session(
                    &principal,
                    &zone,
                    &caracal_core::coordinator::IdempotencyHeaders::default(),
                    &json!({"application_id": "app"}),
                )
                .await
        }));
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("start task") {
            Ok(reply) => {
                assert_eq!(reply.status, 201, "{}", reply.body);
                admitted.push(id_of(&reply.body, "agent_session_id"));
            }
            Err(e) => {
                assert_eq!(e.code, "session_limit_exceeded", "{e:?}");
                refused += 1;
            }
        }
    }
    println!(
        "concurrent starts: {} admitted, {refused} refused",
        admitted.len()
    );
    assert_eq!(admitted.len(), 5, "exactly the limit is admitted");
    assert_eq!(refused, 15);
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    let live = uow
        .count_live_agent_sessions(&zone, Some("app"), clock.now())
        .await
        .expect("count");
    assert_eq!(live, 5, "the refused starts wrote nothing");
    drop(uow);
    let spawns = all_outbox(&queue)
        .await
        .into_iter()
        .filter(|m| {
            m.stream == TOPIC_AGENTS_LIFECYCLE
                && m.fields.get("event").map(String::as_str) == Some("spawn")
        })
        .count();
    assert_eq!(
        spawns, 5,
        "one spawn row per admitted Session, none for the refused"
    );
}

/// Eight concurrent starts with one Idempotency-Key through two replicas on Postgres: one
/// Session is created and every request answers with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_twins_with_one_key_create_one_session() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url, 10).expect("connect"));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let zone = seed_capacity_zone(store.as_ref(), clock.now().plus_millis(-1_000)).await;
    let replicas = two_replicas(&store, &clock, &CoordinatorConfig::default());
    let principal = app_principal(&zone);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let replica = Arc::clone(&replicas[i % 2]);
        let principal = principal.clone();
        let zone = zone.clone();
        tasks.push(tokio::spawn(async move {
            replica
                .start_session(
                    &principal,
                    &zone,
                    &key("twin-key-0001"),
                    &json!({"application_id": "app"}),
                )
                .await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let reply = t.await.expect("start task").expect("every twin succeeds");
        ids.insert(id_of(&reply.body, "agent_session_id"));
    }
    assert_eq!(
        ids.len(),
        1,
        "every twin answers with the one Session: {ids:?}"
    );
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    let live = uow
        .count_live_agent_sessions(&zone, Some("app"), clock.now())
        .await
        .expect("count");
    assert_eq!(live, 1, "one Session was written");
}

/// Starts a task Session of `app` in `zone` through `replica`, under `parent` when given.
async fn start_in(
    replica: &caracal_core::coordinator::Coordinator,
    zone: &ZoneId,
    parent: Option<&str>,
) -> Result<caracal_core::coordinator::Reply, caracal_core::Error> {
    let mut body = json!({"application_id": "app", "ttl_seconds": 600});
    if let Some(parent) = parent {
        body["parent_id"] = json!(parent);
    }
    replica
        .start_session(
            &app_principal(zone),
            zone,
            &caracal_core::coordinator::IdempotencyHeaders::default(),
            &body,
        )
        .await
}

/// The Session as stored on Postgres.
async fn stored(store: &Arc<dyn Store>, zone: &ZoneId, id: &str) -> AgentSession {
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.get_agent_session(zone, id)
        .await
        .expect("read")
        .expect("session exists")
}

/// A child start locks its parent's row instead of a zone lock, and counts the parent's open
/// children after its own insert. Twenty-five concurrent child starts under one parent through
/// two replicas on Postgres: exactly ten are admitted, the rest are refused with the typed
/// limit error, and the parent has exactly ten open children afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_child_starts_never_exceed_ten_children() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url, 12).expect("connect"));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let zone = seed_capacity_zone(store.as_ref(), clock.now().plus_millis(-1_000)).await;
    let replicas = two_replicas(&store, &clock, &CoordinatorConfig::default());
    let parent = id_of(
        &start_in(&replicas[0], &zone, None)
            .await
            .expect("parent")
            .body,
        "agent_session_id",
    );
    let mut tasks = Vec::new();
    for i in 0..25 {
        let replica = Arc::clone(&replicas[i % 2]);
        let (zone, parent) = (zone.clone(), parent.clone());
        tasks.push(tokio::spawn(async move {
            start_in(&replica, &zone, Some(&parent)).await
        }));
    }
    let (mut admitted, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("start task") {
            Ok(reply) => {
                assert_eq!(reply.status, 201, "{}", reply.body);
                admitted += 1;
            }
            Err(e) => {
                assert_eq!(e.code, "session_children_limit_exceeded", "{e:?}");
                refused += 1;
            }
        }
    }
    assert_eq!(
        (admitted, refused),
        (10, 15),
        "exactly the limit is admitted"
    );
    assert_eq!(
        stored(&store, &zone, &parent).await.child_count,
        10,
        "ten open children, derived from the rows"
    );
}

/// A terminate locks the Session and then each level of its subtree; a child start locks its
/// parent. Racing child starts against the terminate of their parent (and of its parent) on
/// Postgres, round after round: every start either fails with `parent_not_found` or created a
/// child that the cascade ended, so no live Session is ever left under an ended one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn terminates_racing_child_starts_leave_no_live_child_under_an_ended_parent() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url, 16).expect("connect"));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let zone = seed_capacity_zone(store.as_ref(), clock.now().plus_millis(-1_000)).await;
    let replicas = two_replicas(&store, &clock, &CoordinatorConfig::default());
    let (mut created, mut refused) = (0, 0);
    for round in 0..8 {
        let root = id_of(
            &start_in(&replicas[0], &zone, None)
                .await
                .expect("root")
                .body,
            "agent_session_id",
        );
        let mid = id_of(
            &start_in(&replicas[1], &zone, Some(&root))
                .await
                .expect("mid")
                .body,
            "agent_session_id",
        );
        let mut starts = Vec::new();
        for i in 0..6 {
            let replica = Arc::clone(&replicas[i % 2]);
            let zone = zone.clone();
            let parent = if i % 2 == 0 {
                mid.clone()
            } else {
                root.clone()
            };
            starts.push(tokio::spawn(async move {
                start_in(&replica, &zone, Some(&parent)).await
            }));
        }
        // Alternate which end of the tree the terminate comes from.
        let victim = if round % 2 == 0 {
            root.clone()
        } else {
            mid.clone()
        };
        let terminator = Arc::clone(&replicas[round % 2]);
        let principal = app_principal(&zone);
        let tz = zone.clone();
        let terminate = tokio::spawn(async move {
            terminator
                .terminate_session(&principal, &tz, &victim, None, None)
                .await
        });
        let mut children = Vec::new();
        for s in starts {
            match s.await.expect("start task") {
                Ok(reply) => {
                    children.push(id_of(&reply.body, "agent_session_id"));
                    created += 1;
                }
                Err(e) => {
                    assert_eq!(e.code, "parent_not_found", "{e:?}");
                    refused += 1;
                }
            }
        }
        let reply = terminate.await.expect("terminate task").expect("terminate");
        assert_eq!(reply.status, 204);
        for id in children.iter().chain([&root, &mid]) {
            let s = stored(&store, &zone, id).await;
            let Some(parent) = &s.parent_id else { continue };
            let parent = stored(&store, &zone, parent).await;
            if parent.status == "terminated" {
                assert_eq!(
                    s.status, "terminated",
                    "round {round}: {id} is live under the ended {}",
                    parent.id
                );
            }
        }
        // Clean up for the next round (the capacity limits count live Sessions).
        replicas[0]
            .terminate_session(&app_principal(&zone), &zone, &root, None, None)
            .await
            .ok();
    }
    println!("racing child starts: {created} created and ended, {refused} refused");
}

/// A Delegation create locks both endpoints; a terminate locks the Session and then the
/// edges touching it. Racing creates into a Session against its terminate on Postgres: an edge
/// whose create won is revoked by the terminate, one that lost is refused, and no active edge
/// is left touching the ended Session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delegation_creates_racing_a_terminate_leave_no_active_edge_on_it() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url, 16).expect("connect"));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let zone = seed_capacity_zone(store.as_ref(), clock.now().plus_millis(-1_000)).await;
    let replicas = two_replicas(&store, &clock, &CoordinatorConfig::default());
    for round in 0..6 {
        let mut sources = Vec::new();
        for _ in 0..4 {
            sources.push(id_of(
                &start_in(&replicas[0], &zone, None)
                    .await
                    .expect("source")
                    .body,
                "agent_session_id",
            ));
        }
        let target = id_of(
            &start_in(&replicas[1], &zone, None)
                .await
                .expect("target")
                .body,
            "agent_session_id",
        );
        let mut creates = Vec::new();
        for (i, source) in sources.iter().enumerate() {
            let replica = Arc::clone(&replicas[i % 2]);
            let zone = zone.clone();
            let body = json!({
                "source_session_id": source,
                "target_session_id": target,
                "issuer_application_id": "app",
                "receiver_application_id": "app",
                "scopes": ["svc:read"],
                "ttl_seconds": 600,
            });
            creates.push(tokio::spawn(async move {
                let principal = caracal_core::coordinator::Principal {
                    scopes: vec![
                        LIFECYCLE.to_owned(),
                        "coordinator.delegate_broad".to_owned(),
                    ],
                    ..app_principal(&zone)
                };
                replica
                    .create_delegation(
                        &principal,
                        &zone,
                        &caracal_core::coordinator::IdempotencyHeaders::default(),
                        &body,
                    )
                    .await
            }));
        }
        let terminator = Arc::clone(&replicas[round % 2]);
        let (tz, victim) = (zone.clone(), target.clone());
        let terminate = tokio::spawn(async move {
            terminator
                .terminate_session(&app_principal(&tz), &tz, &victim, None, None)
                .await
        });
        for c in creates {
            if let Err(e) = c.await.expect("create task") {
                assert_eq!(e.code, "delegation_endpoint_not_found", "{e:?}");
            }
        }
        terminate.await.expect("terminate task").expect("terminate");
        let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
        let left = uow
            .active_edges_touching(&zone, std::slice::from_ref(&target))
            .await
            .expect("edges");
        assert!(
            left.is_empty(),
            "round {round}: active edges on the ended target: {left:?}"
        );
        drop(uow);
        for source in &sources {
            replicas[0]
                .terminate_session(&app_principal(&zone), &zone, source, None, None)
                .await
                .expect("clean up");
        }
    }
}

/// Cascades lock top-down, one depth per statement: terminates of the root and of two
/// Sessions below it in one tree, all at once on Postgres, never deadlock, and every Session of
/// the tree ends exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_cascades_end_each_session_once() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url, 16).expect("connect"));
    let queue = PgStore::connect(&db.url, 2).expect("queue");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let zone = seed_capacity_zone(store.as_ref(), clock.now().plus_millis(-1_000)).await;
    let replicas = two_replicas(&store, &clock, &CoordinatorConfig::default());
    let mut all = Vec::new();
    for _ in 0..4 {
        // A chain of five with a second child at each level.
        let mut chain = vec![id_of(
            &start_in(&replicas[0], &zone, None)
                .await
                .expect("root")
                .body,
            "agent_session_id",
        )];
        for _ in 0..4 {
            let parent = chain.last().cloned().expect("a parent");
            let side = start_in(&replicas[1], &zone, Some(&parent))
                .await
                .expect("side");
            all.push(id_of(&side.body, "agent_session_id"));
            chain.push(id_of(
                &start_in(&replicas[0], &zone, Some(&parent))
                    .await
                    .expect("link")
                    .body,
                "agent_session_id",
            ));
        }
        let victims = [chain[0].clone(), chain[2].clone(), chain[3].clone()];
        all.extend(chain);
        let mut tasks = Vec::new();
        for (i, victim) in victims.into_iter().enumerate() {
            let replica = Arc::clone(&replicas[i % 2]);
            let zone = zone.clone();
            tasks.push(tokio::spawn(async move {
                replica
                    .terminate_session(&app_principal(&zone), &zone, &victim, None, None)
                    .await
            }));
        }
        for t in tasks {
            match t.await.expect("terminate task") {
                Ok(reply) => assert_eq!(reply.status, 204),
                // Ended by a cascade that won the race.
                Err(e) => assert_eq!(e.code, "session_not_found", "{e:?}"),
            }
        }
    }
    let mut terminates: HashMap<String, usize> = HashMap::new();
    for m in all_outbox(&queue).await {
        if m.stream == TOPIC_AGENTS_LIFECYCLE
            && m.fields.get("event").map(String::as_str) == Some("terminate")
        {
            *terminates
                .entry(m.fields["agent_session_id"].clone())
                .or_default() += 1;
        }
    }
    for id in &all {
        assert_eq!(stored(&store, &zone, id).await.status, "terminated", "{id}");
        assert_eq!(terminates.get(id), Some(&1), "one terminate row for {id}");
    }
}
