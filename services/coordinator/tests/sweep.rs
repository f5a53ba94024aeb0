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
        identity: Default::default(),
    }
}

/// What a race test runs on: a fresh Postgres database (kept while this lives) with `app`'s zone
/// seeded, and two Coordinator replicas over it.
struct Race {
    _db: TestDb,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    zone: ZoneId,
    replicas: Vec<Arc<caracal_core::coordinator::Coordinator>>,
    principal: caracal_core::coordinator::Principal,
}

/// A [`Race`] under `config`; `None` (the test skips) where Postgres is not there.
async fn race(config: CoordinatorConfig) -> Option<Race> {
    let db = TestDb::create().await?;
    let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db.url, 12).expect("connect"));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let zone = seed_capacity_zone(store.as_ref(), clock.now().plus_millis(-1_000)).await;
    let replicas = two_replicas(&store, &clock, &config);
    let principal = app_principal(&zone);
    Some(Race {
        _db: db,
        store,
        clock,
        zone,
        replicas,
        principal,
    })
}

/// A root start takes the zone lock only after writing its Session, for its capacity check
/// and commit. Twenty concurrent starts through two replicas against `MAX_AGENTS_PER_APP = 5`
/// on Postgres: exactly five are admitted, the rest are refused with the typed limit error,
/// and exactly five Sessions (and five spawn rows) exist afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_root_starts_never_exceed_the_application_limit() {
    let Some(Race {
        _db,
        store,
        clock,
        zone,
        replicas,
        principal,
    }) = race(CoordinatorConfig {
        max_agents_per_app: 5,
        ..CoordinatorConfig::default()
    })
    .await
    else {
        return;
    };
    let queue = PgStore::connect(&_db.url, 2).expect("queue");
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
    let Some(Race {
        _db,
        store,
        clock,
        zone,
        replicas,
        principal,
    }) = race(CoordinatorConfig::default()).await
    else {
        return;
    };
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

/// Starts of children race the terminate of their parent through two replicas on Postgres.
/// Root starts no longer share a lock with terminates, so the tree lock alone must keep every
/// child either refused or ended with its parent: after each round no Session under the
/// terminated parent is live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn child_starts_racing_the_parents_terminate_leave_no_live_orphan() {
    let Some(Race {
        _db,
        store,
        clock,
        zone,
        replicas,
        principal,
    }) = race(CoordinatorConfig::default()).await
    else {
        return;
    };
    let no_key = caracal_core::coordinator::IdempotencyHeaders::default();
    for round in 0..5 {
        let parent = replicas[0]
            .start_session(
                &principal,
                &zone,
                &no_key,
                &json!({"application_id": "app"}),
            )
            .await
            .expect("parent");
        let parent = id_of(&parent.body, "agent_session_id");
        let mut tasks = Vec::new();
        for i in 0..8 {
            let replica = Arc::clone(&replicas[i % 2]);
            let (p, z, under) = (principal.clone(), zone.clone(), parent.clone());
            tasks.push(tokio::spawn(async move {
                replica
                    .start_session(
                        &p,
                        &z,
                        &caracal_core::coordinator::IdempotencyHeaders::default(),
                        &json!({"application_id": "app", "parent_id": under}),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| e.code)
            }));
            if i == 3 {
                let replica = Arc::clone(&replicas[1]);
                let (p, z, ending) = (principal.clone(), zone.clone(), parent.clone());
                tasks.push(tokio::spawn(async move {
                    replica
                        .terminate_session(&p, &z, &ending, None, None)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.code)
                }));
            }
        }
        for t in tasks {
            if let Err(code) = t.await.expect("task") {
                assert_eq!(code, "parent_not_found", "round {round}");
            }
        }
        let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
        let children = uow
            .list_child_sessions(&zone, &parent, None, 100)
            .await
            .expect("children");
        let parent_row = uow
            .get_agent_session(&zone, &parent)
            .await
            .expect("parent")
            .expect("parent row");
        assert_eq!(parent_row.status, "terminated", "round {round}");
        for child in &children {
            assert_eq!(
                child.status, "terminated",
                "round {round}: a child outlived its parent"
            );
        }
        let live = uow
            .count_live_agent_sessions(&zone, Some("app"), clock.now())
            .await
            .expect("count");
        assert_eq!(live, 0, "round {round}: nothing under the parent is live");
    }
}

/// Root starts and terminates at once through two replicas on Postgres, against
/// `MAX_AGENTS_PER_APP = 5` with five Sessions live: terminates only free slots, so however
/// they interleave, no more than five Sessions are live at the end, and every start was either
/// admitted or refused with the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn root_starts_alongside_terminates_never_exceed_the_limit() {
    let Some(Race {
        _db,
        store,
        clock,
        zone,
        replicas,
        principal,
    }) = race(CoordinatorConfig {
        max_agents_per_app: 5,
        ..CoordinatorConfig::default()
    })
    .await
    else {
        return;
    };
    let no_key = caracal_core::coordinator::IdempotencyHeaders::default();
    let mut live_ids = Vec::new();
    for _ in 0..5 {
        let reply = replicas[0]
            .start_session(
                &principal,
                &zone,
                &no_key,
                &json!({"application_id": "app"}),
            )
            .await
            .expect("start");
        live_ids.push(id_of(&reply.body, "agent_session_id"));
    }
    let mut tasks = Vec::new();
    for i in 0..15 {
        let replica = Arc::clone(&replicas[i % 2]);
        let (principal, zone) = (principal.clone(), zone.clone());
        let ending = (i % 3 == 0).then(|| live_ids[i / 3].clone());
        tasks.push(tokio::spawn(async move {
            match ending {
                Some(id) => replica
                    .terminate_session(&principal, &zone, &id, None, None)
                    .await
                    .map(|_| false)
                    .map_err(|e| e.code),
                None => replica
                    .start_session(
                        &principal,
                        &zone,
                        &caracal_core::coordinator::IdempotencyHeaders::default(),
                        &json!({"application_id": "app"}),
                    )
                    .await
                    .map(|_| true)
                    .map_err(|e| e.code),
            }
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(started) => admitted += usize::from(started),
            Err(code) => assert_eq!(code, "session_limit_exceeded"),
        }
    }
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    let live = uow
        .count_live_agent_sessions(&zone, Some("app"), clock.now())
        .await
        .expect("count");
    assert_eq!(live, admitted as u64, "five ended, the admitted ones live");
    assert!(live <= 5, "{live} live Sessions against a limit of 5");
}
