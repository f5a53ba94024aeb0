//! Session use cases (`spec/coordinator-gateway.md` A6, A7 for starts, A12 rows): what the
//! SDK sees (status, body, error code) and what the store and outbox hold afterwards,
//! including that refused requests change nothing.

mod support;

use caracal_core::authority::{Lifecycle, RecordStatus, SessionType};
use caracal_core::coordinator::records::AgentService;
use caracal_core::coordinator::{
    CoordinatorConfig, IdempotencyHeaders, TOPIC_AGENTS_LIFECYCLE, TOPIC_DELEGATIONS_INVALIDATE,
    TOPIC_SESSIONS_REVOKE,
};
use caracal_core::ports::{AuthorityVersions, Store, ZoneScope};

use caracal_core::ErrorKind;
use serde_json::{json, Map, Value};
use support::*;

fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn issues(e: &caracal_core::Error) -> Vec<Value> {
    e.extra.as_ref().expect("details")["details"]["issues"]
        .as_array()
        .expect("issues")
        .iter()
        .map(|i| i["path"].clone())
        .collect()
}

#[tokio::test]
async fn task_start_answers_the_contract_shape_and_announces_the_spawn() {
    let w = World::new().await;
    let reply = w
        .start(
            &w.me(),
            json!({"application_id": "app", "labels": ["  planner ", "x"], "metadata": {"task": "t"},
                   "subject_token": "ignored", "unknown": 1}),
        )
        .await
        .expect("start");
    assert_eq!(reply.status, 201);
    assert!(!reply.replayed);
    let b = &reply.body;
    let id = id_of(b, "agent_session_id");
    let keys: Vec<&str> = b
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    let mut want = vec![
        "agent_session_id",
        "zone_id",
        "application_id",
        "parent_id",
        "subject_authority_record_id",
        "lifecycle",
        "labels",
        "status",
        "depth",
        "ttl_seconds",
        "started_at",
        "last_heartbeat_at",
        "heartbeat_deadline_at",
        "lease_generation",
        "delegation_edge_id",
    ];
    want.sort();
    let mut got = keys.clone();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(b["zone_id"], "z1");
    assert_eq!(b["application_id"], "app");
    assert_eq!(b["parent_id"], Value::Null);
    assert_eq!(b["subject_authority_record_id"], "sid");
    assert_eq!(b["lifecycle"], "task");
    assert_eq!(b["labels"], json!(["planner", "x"]));
    assert_eq!(b["status"], "active");
    assert_eq!(b["depth"], 0);
    assert_eq!(b["ttl_seconds"], 3600);
    assert_eq!(b["started_at"], "2030-01-01T00:00:00.000Z");
    assert_eq!(b["last_heartbeat_at"], Value::Null);
    assert_eq!(b["heartbeat_deadline_at"], Value::Null);
    assert_eq!(b["lease_generation"], 0);
    assert_eq!(b["delegation_edge_id"], Value::Null);

    let s = w.session(&id).await;
    assert_eq!(s.metadata["task"], "t");
    assert!(
        s.is_live(w.now()),
        "the STS must see a started task Session as live"
    );
    let spawn = w
        .outbox_matching(TOPIC_AGENTS_LIFECYCLE, &[("event", "spawn")])
        .await;
    assert_eq!(spawn.len(), 1);
    let f = &spawn[0].fields;
    assert_eq!(f["dedupe_key"], format!("spawn:{id}"));
    assert_eq!(f["zone_id"], "z1");
    assert_eq!(f["agent_session_id"], id);
    assert_eq!(f["application_id"], "app");
    assert!(
        !f.contains_key("parent_id"),
        "null parent is dropped: {f:?}"
    );

    let row = w
        .coordinator
        .get_session(&w.me(), &w.zone, &id)
        .await
        .expect("get")
        .body;
    assert_eq!(row["metadata"], json!({"task": "t"}));
    assert_eq!(row["terminated_at"], Value::Null);
    assert_eq!(row["termination_reason"], Value::Null);
}

#[tokio::test]
async fn service_start_holds_a_first_generation_lease() {
    let w = World::new().await;
    let reply = w
        .start(
            &w.me(),
            json!({"application_id": "app", "lifecycle": "service"}),
        )
        .await
        .expect("start");
    let b = reply.body;
    assert_eq!(b["lifecycle"], "service");
    assert_eq!(b["ttl_seconds"], Value::Null);
    assert_eq!(b["lease_generation"], 1);
    assert_eq!(b["last_heartbeat_at"], "2030-01-01T00:00:00.000Z");
    assert_eq!(b["heartbeat_deadline_at"], "2030-01-01T00:02:00.000Z");
    let s = w.session(&id_of(&b, "agent_session_id")).await;
    assert_eq!(s.lifecycle, Lifecycle::Service);
    assert!(s.is_live(w.now()));
}

#[tokio::test]
async fn malformed_starts_name_every_offending_field_and_write_nothing() {
    let w = World::new().await;
    let cases: Vec<(Value, Vec<Value>)> = vec![
        (json!([1]), vec![json!([])]),
        (json!({}), vec![json!(["application_id"])]),
        (
            json!({"application_id": ""}),
            vec![json!(["application_id"])],
        ),
        (
            json!({"application_id": "app", "ttl_seconds": 0}),
            vec![json!(["ttl_seconds"])],
        ),
        (
            json!({"application_id": "app", "ttl_seconds": 86401}),
            vec![json!(["ttl_seconds"])],
        ),
        (
            json!({"application_id": "app", "ttl_seconds": 1.5}),
            vec![json!(["ttl_seconds"])],
        ),
        (
            json!({"application_id": "app", "lifecycle": "service", "ttl_seconds": 60}),
            vec![json!(["ttl_seconds"])],
        ),
        (
            json!({"application_id": "app", "lifecycle": "daemon"}),
            vec![json!(["lifecycle"])],
        ),
        (
            json!({"application_id": "app", "labels": ["ok", "   "]}),
            vec![json!(["labels", 1])],
        ),
        (
            json!({"application_id": "app", "labels": ["x".repeat(65)]}),
            vec![json!(["labels", 0])],
        ),
        (
            json!({"application_id": "app", "labels": vec!["l"; 33]}),
            vec![json!(["labels"])],
        ),
        (
            json!({"application_id": "app", "parent_authority": "all"}),
            vec![json!(["parent_authority"])],
        ),
        (
            json!({"application_id": "app", "metadata": []}),
            vec![json!(["metadata"])],
        ),
        (
            json!({"application_id": "app", "subject_session_id": 5}),
            vec![json!(["subject_session_id"])],
        ),
        (
            json!({"application_id": "app", "inherit_parent_edge_id": ""}),
            vec![json!(["inherit_parent_edge_id"])],
        ),
        (
            json!({"application_id": 1, "ttl_seconds": -1}),
            vec![json!(["application_id"]), json!(["ttl_seconds"])],
        ),
    ];
    for (body, paths) in cases {
        let e = assert_code(w.start(&w.me(), body.clone()).await, "invalid_body");
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert_eq!(issues(&e), paths, "{body}");
    }
    // 1 label of 64 characters and 32 labels are fine.
    w.task(json!({"labels": ["y".repeat(64)]})).await;
    w.task(json!({"labels": vec!["l"; 32]})).await;
    assert_eq!(w.outbox().await.len(), 2, "only the two valid starts wrote");
}

#[tokio::test]
async fn start_refusals_before_the_lock_follow_the_contract_order() {
    let w = World::new().await;
    // No body anchor and no sid.
    assert_code(
        w.start(
            &w.principal("app", None, &[]),
            json!({"application_id": "app"}),
        )
        .await,
        "subject_session_id_required",
    );
    // Another application's Sessions need spawn_for.
    let e = assert_code(
        w.start(
            &w.principal("app_b", Some("sid_b"), &[]),
            json!({"application_id": "app"}),
        )
        .await,
        "application_ownership_required",
    );
    assert_eq!(e.kind, ErrorKind::Forbidden);
    // Ownership is checked before the idempotency key.
    let bad_key = IdempotencyHeaders {
        keys: vec![" k".into()],
        generated: false,
    };
    let e = w
        .coordinator
        .start_session(
            &w.principal("app_b", Some("sid_b"), &[]),
            &w.zone,
            &bad_key,
            &json!({"application_id": "app"}),
        )
        .await
        .expect_err("refused");
    assert_eq!(e.code, "application_ownership_required");
    for (keys, code) in [
        (vec![" k".to_owned()], "idempotency_key_invalid"),
        (
            vec!["a".to_owned(), "b".to_owned()],
            "idempotency_key_multiple",
        ),
    ] {
        let e = w
            .coordinator
            .start_session(
                &w.me(),
                &w.zone,
                &IdempotencyHeaders {
                    keys,
                    generated: false,
                },
                &json!({"application_id": "app"}),
            )
            .await
            .expect_err("refused");
        assert_eq!(e.code, code);
    }
    // spawn_for opens another application's starts, anchored on the caller's record.
    let reply = w
        .start(
            &w.principal("app_b", Some("sid_b"), &["coordinator.spawn_for:app"]),
            json!({"application_id": "app"}),
        )
        .await
        .expect("spawn_for");
    assert_eq!(reply.body["subject_authority_record_id"], "sid_b");
    assert_eq!(w.outbox().await.len(), 1);
}

#[tokio::test]
async fn applications_and_anchors_must_exist_in_the_zone() {
    let w = World::new().await;
    let spawn_any = |app: &str| w.principal(app, Some("sid"), &[]);
    assert_code(
        w.start(&spawn_any("ghost"), json!({"application_id": "ghost"}))
            .await,
        "application_not_found",
    );
    // An application of another zone is not found here.
    assert_code(
        w.start(&spawn_any("app2"), json!({"application_id": "app2"}))
            .await,
        "application_not_found",
    );
    // Archived and expired applications are gone.
    save_archived_app(&w, "old").await;
    let mut uow = w.store.begin(&ZoneScope::All).await.expect("begin");
    let mut lapsed = app_row(
        &w.zone,
        "lapsed",
        caracal_core::model::RegistrationMethod::Dcr,
        w.now(),
    );
    lapsed.expires_at = Some(w.now());
    uow.save_application(&lapsed).await.expect("save");
    uow.commit().await.expect("commit");
    assert_code(
        w.start(&spawn_any("old"), json!({"application_id": "old"}))
            .await,
        "application_not_found",
    );
    assert_code(
        w.start(&spawn_any("lapsed"), json!({"application_id": "lapsed"}))
            .await,
        "application_not_found",
    );

    // The anchor must be an active, unexpired record of this zone.
    for anchor in ["nope", "sid2"] {
        let e = assert_code(
            w.start(
                &w.me(),
                json!({"application_id": "app", "subject_session_id": anchor}),
            )
            .await,
            "session_not_found",
        );
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(
            e.extra.as_ref().expect("extra")["detail"]
                .as_str()
                .expect("detail")
                .contains("authority_records"),
            "{e:?}"
        );
    }
    let mut revoked = record_row(&w.zone, "revoked", SessionType::Application, "app", w.now());
    revoked.status = RecordStatus::Revoked;
    w.save_record(&revoked).await;
    let mut expired = record_row(&w.zone, "expired", SessionType::Application, "app", w.now());
    expired.expires_at = w.now();
    w.save_record(&expired).await;
    for anchor in ["revoked", "expired"] {
        assert_code(
            w.start(
                &w.me(),
                json!({"application_id": "app", "subject_session_id": anchor}),
            )
            .await,
            "session_not_found",
        );
    }
    // A user anchor named explicitly is fine.
    let reply = w
        .start(
            &w.me(),
            json!({"application_id": "app", "subject_session_id": "user_sid"}),
        )
        .await
        .expect("user anchor");
    assert_eq!(reply.body["subject_authority_record_id"], "user_sid");
    assert_eq!(w.outbox().await.len(), 1);
}

#[tokio::test]
async fn dcr_applications_host_one_root_task_only() {
    let w = World::new().await;
    let dcr = w.principal("dcr", Some("sid_dcr"), &[]);
    assert_code(
        w.start(
            &dcr,
            json!({"application_id": "dcr", "lifecycle": "service"}),
        )
        .await,
        "dcr_application_cannot_host_service",
    );
    let parent = w.task(json!({})).await;
    assert_code(
        w.start(&dcr, json!({"application_id": "dcr", "parent_id": parent}))
            .await,
        "dcr_application_cannot_be_child",
    );
    let root = w
        .start(&dcr, json!({"application_id": "dcr"}))
        .await
        .expect("dcr root");
    let dcr_session = id_of(&root.body, "agent_session_id");
    assert_code(
        w.start(&dcr, json!({"application_id": "dcr"})).await,
        "dcr_application_already_bound",
    );
    // A DCR Session cannot parent anyone, even with spawn_under.
    let e = assert_code(
        w.start(
            &w.principal("app", Some("sid"), &["coordinator.spawn_under:dcr"]),
            json!({"application_id": "app", "parent_id": dcr_session}),
        )
        .await,
        "dcr_application_cannot_start_child",
    );
    assert_eq!(e.kind, ErrorKind::Conflict);
}

#[tokio::test]
async fn capacity_counts_live_sessions_only() {
    let w = World::with_config(CoordinatorConfig {
        max_agents_per_zone: 3,
        max_agents_per_app: 2,
        ..CoordinatorConfig::default()
    })
    .await;
    w.task(json!({"ttl_seconds": 10})).await;
    w.task(json!({})).await;
    let e = assert_code(
        w.start(&w.me(), json!({"application_id": "app"})).await,
        "session_limit_exceeded",
    );
    assert_eq!(e.kind, ErrorKind::RateLimited);
    // Another application still has room in the zone, then the zone is full.
    let b = w.principal("app_b", Some("sid_b"), &[]);
    w.start(&b, json!({"application_id": "app_b"}))
        .await
        .expect("app_b");
    assert_code(
        w.start(&b, json!({"application_id": "app_b"})).await,
        "session_zone_limit_exceeded",
    );
    // An unswept task past its TTL no longer holds a slot.
    w.advance_secs(11);
    w.start(&w.me(), json!({"application_id": "app"}))
        .await
        .expect("slot freed");
}

#[tokio::test]
async fn parents_bound_the_tree() {
    let w = World::new().await;
    assert_code(
        w.start(
            &w.me(),
            json!({"application_id": "app", "parent_id": "ghost"}),
        )
        .await,
        "parent_not_found",
    );
    // Expired (unswept) and terminated parents are not parents.
    let short = w.task(json!({"ttl_seconds": 5})).await;
    w.advance_secs(6);
    assert_code(
        w.start(
            &w.me(),
            json!({"application_id": "app", "parent_id": short}),
        )
        .await,
        "parent_not_found",
    );
    let ended = w.task(json!({})).await;
    w.coordinator
        .terminate_session(&w.me(), &w.zone, &ended, None, None)
        .await
        .expect("terminate");
    assert_code(
        w.start(
            &w.me(),
            json!({"application_id": "app", "parent_id": ended}),
        )
        .await,
        "parent_not_found",
    );

    // A task cannot parent a service.
    let task = w.task(json!({})).await;
    assert_code(
        w.start(
            &w.me(),
            json!({"application_id": "app", "parent_id": task, "lifecycle": "service"}),
        )
        .await,
        "task_session_cannot_start_service",
    );
    // A service can parent both.
    let svc = w.service(json!({})).await;
    w.service(json!({"parent_id": svc})).await;
    w.task(json!({"parent_id": svc})).await;
    assert_eq!(w.session(&svc).await.child_count, 2);

    // Another application's parent needs spawn_under.
    let b = w.principal("app_b", Some("sid_b"), &[]);
    let e = assert_code(
        w.start(&b, json!({"application_id": "app_b", "parent_id": task}))
            .await,
        "parent_ownership_required",
    );
    assert_eq!(e.kind, ErrorKind::Forbidden);
    let under = w.principal("app_b", Some("sid_b"), &["coordinator.spawn_under:app"]);
    let child = w
        .start(
            &under,
            json!({"application_id": "app_b", "parent_id": task}),
        )
        .await
        .expect("spawn_under");
    assert_eq!(child.body["depth"], 1);
    assert_eq!(child.body["parent_id"], json!(task));

    // Ten children at most.
    let full = w.task(json!({})).await;
    for _ in 0..10 {
        w.task(json!({"parent_id": full})).await;
    }
    assert_code(
        w.start(&w.me(), json!({"application_id": "app", "parent_id": full}))
            .await,
        "session_children_limit_exceeded",
    );
    // Terminating a child frees its slot.
    let kids = w
        .coordinator
        .list_child_sessions(&w.me(), &w.zone, &full, &[])
        .await
        .expect("children")
        .body;
    let kid = kids["items"][0]["agent_session_id"]
        .as_str()
        .expect("kid")
        .to_owned();
    w.coordinator
        .terminate_session(&w.me(), &w.zone, &kid, None, None)
        .await
        .expect("terminate");
    assert_eq!(w.session(&full).await.child_count, 9);
    w.task(json!({"parent_id": full})).await;
}

#[tokio::test]
async fn depth_stops_at_ten() {
    let w = World::new().await;
    let mut parent = w.task(json!({})).await;
    for depth in 1..=10 {
        let reply = w
            .start(
                &w.me(),
                json!({"application_id": "app", "parent_id": parent}),
            )
            .await
            .expect("child");
        assert_eq!(reply.body["depth"], depth);
        parent = id_of(&reply.body, "agent_session_id");
    }
    let e = assert_code(
        w.start(
            &w.me(),
            json!({"application_id": "app", "parent_id": parent}),
        )
        .await,
        "session_depth_limit_exceeded",
    );
    assert_eq!(e.kind, ErrorKind::RateLimited);
}

/// A parent task holding an inbound edge that may be re-delegated twice.
async fn parent_with_edge(w: &World, hops: i64) -> (String, String, String) {
    let source = w.task(json!({})).await;
    let parent = w.task(json!({})).await;
    let edge = w
        .edge_between(
            &source,
            &parent,
            json!({"constraints": {"resources": [SVC], "max_hops": hops}}),
        )
        .await;
    (source, parent, edge)
}

#[tokio::test]
async fn inheriting_children_mirror_the_parent_edge() {
    let w = World::new().await;
    let (_, parent, parent_edge) = parent_with_edge(&w, 3).await;
    let before = w.graph_epoch().await;
    let reply = w
        .start(
            &w.me(),
            json!({"application_id": "app", "parent_id": parent}),
        )
        .await
        .expect("inherit");
    let child = id_of(&reply.body, "agent_session_id");
    let mirrored = id_of(&reply.body, "delegation_edge_id");
    let (p, m) = (w.edge(&parent_edge).await, w.edge(&mirrored).await);
    assert_eq!(m.source_session_id, parent);
    assert_eq!(m.target_session_id, child);
    assert_eq!(m.issuer_application_id, p.receiver_application_id);
    assert_eq!(m.receiver_application_id, "app");
    assert_eq!(m.parent_edge_id.as_deref(), Some(parent_edge.as_str()));
    assert_eq!(
        (
            m.scopes.clone(),
            m.constraints_json.clone(),
            m.expires_at,
            m.resource_id.clone()
        ),
        (
            p.scopes.clone(),
            p.constraints_json.clone(),
            p.expires_at,
            p.resource_id.clone()
        )
    );
    assert_eq!(m.status, "active");
    assert_eq!(w.graph_epoch().await, before + 1);
    let created = w
        .outbox_matching(TOPIC_DELEGATIONS_INVALIDATE, &[("edge_id", &mirrored)])
        .await;
    assert_eq!(created.len(), 1);
    let f = &created[0].fields;
    assert_eq!(f["dedupe_key"], format!("edge_create:{mirrored}"));
    assert_eq!(f["event"], "edge_create");
    assert_eq!(f["source_session_id"], parent);
    assert_eq!(f["target_session_id"], child);
    assert_eq!(f["epoch"], (before + 1).to_string());

    // parent_authority none starts without an edge.
    let none = w
        .start(
            &w.me(),
            json!({"application_id": "app", "parent_id": parent, "parent_authority": "none"}),
        )
        .await
        .expect("none");
    assert_eq!(none.body["delegation_edge_id"], Value::Null);
    // A cross-application child never inherits.
    let under = w.principal("app_b", Some("sid_b"), &["coordinator.spawn_under:app"]);
    let other = w
        .start(
            &under,
            json!({"application_id": "app_b", "parent_id": parent}),
        )
        .await
        .expect("cross");
    assert_eq!(other.body["delegation_edge_id"], Value::Null);
    // A named edge that is not the parent's → not active.
    assert_code(
        w.start(
            &w.me(),
            json!({"application_id": "app", "parent_id": parent, "inherit_parent_edge_id": "nope"}),
        )
        .await,
        "inherit_parent_edge_not_active",
    );
    // A parent without edges starts edge-less.
    let bare = w.task(json!({})).await;
    let plain = w
        .start(&w.me(), json!({"application_id": "app", "parent_id": bare}))
        .await
        .expect("plain");
    assert_eq!(plain.body["delegation_edge_id"], Value::Null);
}

#[tokio::test]
async fn inheritance_refuses_lapsed_and_ambiguous_parent_edges() {
    let w = World::new().await;
    let (_, parent, _) = parent_with_edge(&w, 2).await;
    let second_source = w.task(json!({})).await;
    let second = w.edge_between(&second_source, &parent, json!({})).await;
    let sessions_before = w
        .outbox_matching(TOPIC_AGENTS_LIFECYCLE, &[("event", "spawn")])
        .await
        .len();
    assert_code(
        w.start(
            &w.me(),
            json!({"application_id": "app", "parent_id": parent}),
        )
        .await,
        "inherit_parent_edge_ambiguous",
    );
    // Naming one resolves the ambiguity.
    let chosen = w
        .start(
            &w.me(),
            json!({"application_id": "app", "parent_id": parent, "inherit_parent_edge_id": second}),
        )
        .await
        .expect("explicit");
    assert_eq!(
        w.edge(&id_of(&chosen.body, "delegation_edge_id"))
            .await
            .parent_edge_id
            .as_deref(),
        Some(second.as_str())
    );
    // A parent whose only edge lapsed no longer carries its narrowing.
    let parent2_source = w.task(json!({})).await;
    let parent2 = w.task(json!({})).await;
    w.edge_between(&parent2_source, &parent2, json!({"ttl_seconds": 5}))
        .await;
    w.advance_secs(6);
    // parent2 is still live (ttl 3600) but its only edge expired.
    assert_code(
        w.start(
            &w.me(),
            json!({"application_id": "app", "parent_id": parent2}),
        )
        .await,
        "inherit_parent_edge_not_active",
    );
    let spawned = w
        .outbox_matching(TOPIC_AGENTS_LIFECYCLE, &[("event", "spawn")])
        .await
        .len();
    assert_eq!(
        spawned,
        sessions_before + 1 + 2,
        "refused starts wrote nothing"
    );
}

#[tokio::test]
async fn idempotent_starts_replay_conflict_and_go_inactive() {
    let w = World::new().await;
    let body = json!({"application_id": "app", "labels": ["a"]});
    let first = w
        .coordinator
        .start_session(&w.me(), &w.zone, &key("k1"), &body)
        .await
        .expect("first");
    assert_eq!(first.status, 201);
    let again = w
        .coordinator
        .start_session(&w.me(), &w.zone, &key("k1"), &body)
        .await
        .expect("again");
    assert!(again.replayed);
    assert_eq!(again.status, 201);
    assert_eq!(again.body, first.body);
    assert_eq!(w.outbox().await.len(), 1, "a replay starts nothing");
    // Same key, other request (or other principal) → conflict.
    let e = w
        .coordinator
        .start_session(
            &w.me(),
            &w.zone,
            &key("k1"),
            &json!({"application_id": "app", "labels": ["b"]}),
        )
        .await
        .expect_err("conflict");
    assert_eq!(e.code, "idempotency_key_conflict");
    let other_sub = w.principal("app", Some("sid"), &[]);
    let mut other_sub = other_sub;
    other_sub.sub = "someone-else".into();
    let e = w
        .coordinator
        .start_session(&other_sub, &w.zone, &key("k1"), &body)
        .await
        .expect_err("conflict");
    assert_eq!(e.code, "idempotency_key_conflict");
    // Generated keys are honoured the same way.
    let generated = IdempotencyHeaders {
        keys: vec!["g1".into()],
        generated: true,
    };
    let g = w
        .coordinator
        .start_session(&w.me(), &w.zone, &generated, &body)
        .await
        .expect("generated");
    assert!(!g.replayed);
    // Once the Session ended, the stored answer would lie.
    let id = id_of(&first.body, "agent_session_id");
    w.coordinator
        .terminate_session(&w.me(), &w.zone, &id, None, None)
        .await
        .expect("terminate");
    let e = w
        .coordinator
        .start_session(&w.me(), &w.zone, &key("k1"), &body)
        .await
        .expect_err("inactive");
    assert_eq!(e.code, "idempotency_result_inactive");
    assert_eq!(e.kind, ErrorKind::Conflict);
}

#[tokio::test]
async fn idempotency_receipts_are_capped_per_scope() {
    let w = World::with_config(CoordinatorConfig {
        idempotency_max_receipts_per_scope: 1,
        ..CoordinatorConfig::default()
    })
    .await;
    let body = json!({"application_id": "app"});
    w.coordinator
        .start_session(&w.me(), &w.zone, &key("a"), &body)
        .await
        .expect("first");
    let e = w
        .coordinator
        .start_session(&w.me(), &w.zone, &key("b"), &body)
        .await
        .expect_err("cap");
    assert_eq!(e.code, "idempotency_receipt_limit_exceeded");
    assert_eq!(e.kind, ErrorKind::RateLimited);
    // Without a key nothing is capped.
    w.task(json!({})).await;
}

#[tokio::test]
async fn heartbeats_renew_the_current_generation_only() {
    let w = World::new().await;
    let svc = w.service(json!({})).await;
    w.advance_secs(60);
    let reply = w
        .coordinator
        .heartbeat_session(
            &w.me(),
            &w.zone,
            &svc,
            &json!({"lease_generation": 1, "status": "healthy"}),
        )
        .await
        .expect("heartbeat");
    assert_eq!(reply.status, 200);
    let agent = &reply.body["agent"];
    assert_eq!(agent["id"], json!(svc));
    assert_eq!(agent["zone_id"], "z1");
    assert_eq!(agent["application_id"], "app");
    assert_eq!(agent["status"], "active");
    assert_eq!(agent["lease_generation"], 1);
    assert_eq!(agent["last_active_at"], "2030-01-01T00:01:00.000Z");
    assert_eq!(agent["last_heartbeat_at"], "2030-01-01T00:01:00.000Z");
    assert_eq!(agent["heartbeat_deadline_at"], "2030-01-01T00:03:00.000Z");
    assert_eq!(reply.body["service"], Value::Null);
    assert_eq!(reply.body["active_invocations"], 0);

    let e = assert_code(
        w.coordinator
            .heartbeat_session(&w.me(), &w.zone, &svc, &json!({"lease_generation": 2}))
            .await,
        "session_lease_fenced",
    );
    assert_eq!(e.kind, ErrorKind::Conflict);
    for body in [
        json!({}),
        json!({"lease_generation": 0}),
        json!({"lease_generation": true}),
        json!({"lease_generation": "1"}),
        json!({"lease_generation": 1, "status": "great"}),
        json!({"lease_generation": 1, "active_invocations": -1}),
    ] {
        assert_code(
            w.coordinator
                .heartbeat_session(&w.me(), &w.zone, &svc, &body)
                .await,
            "invalid_body",
        );
    }
    // Not found, foreign, not owned, not a service, not live.
    let hb = json!({"lease_generation": 1});
    assert_code(
        w.coordinator
            .heartbeat_session(&w.me(), &w.zone, "ghost", &hb)
            .await,
        "session_not_found",
    );
    assert_code(
        w.coordinator
            .heartbeat_session(&w.me(), &w.zone2, &svc, &hb)
            .await,
        "session_not_found",
    );
    assert_code(
        w.coordinator
            .heartbeat_session(
                &w.principal("app_b", Some("sid_b"), &[]),
                &w.zone,
                &svc,
                &hb,
            )
            .await,
        "application_ownership_required",
    );
    let task = w.task(json!({})).await;
    assert_code(
        w.coordinator
            .heartbeat_session(&w.me(), &w.zone, &task, &hb)
            .await,
        "session_not_service",
    );
    // The mandate's record must be the Session application's own, live.
    let e = assert_code(
        w.coordinator
            .heartbeat_session(&w.principal("app", None, &[]), &w.zone, &svc, &hb)
            .await,
        "authority_record_required",
    );
    assert_eq!(e.kind, ErrorKind::Unauthenticated);
    for sid in ["sid_b", "user_sid", "ghost"] {
        let e = assert_code(
            w.coordinator
                .heartbeat_session(&w.principal("app", Some(sid), &[]), &w.zone, &svc, &hb)
                .await,
            "identity_revoked",
        );
        assert_eq!(e.kind, ErrorKind::Unauthenticated);
    }
    // spawn_for holders heartbeat too (with the Session application's record).
    let helper = w.principal("app_b", Some("sid"), &["coordinator.spawn_for:app"]);
    w.coordinator
        .heartbeat_session(&helper, &w.zone, &svc, &hb)
        .await
        .expect("spawn_for");

    w.coordinator
        .terminate_session(&w.me(), &w.zone, &svc, None, Some(&hb))
        .await
        .expect("terminate");
    assert_code(
        w.coordinator
            .heartbeat_session(&w.me(), &w.zone, &svc, &hb)
            .await,
        "session_not_live",
    );
}

#[tokio::test]
async fn heartbeats_update_named_agent_services() {
    let w = World::new().await;
    let svc = w.service(json!({})).await;
    let now = w.now();
    let mut metadata = Map::new();
    metadata.insert("a".into(), json!(1));
    let service = AgentService {
        id: "svc-1".into(),
        zone_id: w.zone.clone(),
        application_id: "app".into(),
        endpoint_url: "https://agent.example.test".into(),
        protocol_versions: vec!["1".into()],
        framework_name: None,
        framework_version: None,
        capabilities: vec![],
        health: "starting".into(),
        metadata,
        last_heartbeat_at: None,
        created_at: now,
        updated_at: now,
    };
    let mut uow = w.store.begin(&ZoneScope::All).await.expect("begin");
    uow.save_agent_service(&service).await.expect("service");
    let mut foreign = service.clone();
    foreign.id = "svc-b".into();
    foreign.application_id = "app_b".into();
    uow.save_agent_service(&foreign).await.expect("service");
    uow.commit().await.expect("commit");

    let reply = w
        .coordinator
        .heartbeat_session(
            &w.me(),
            &w.zone,
            &svc,
            &json!({"lease_generation": 1, "service_id": "svc-1",
            "status": "degraded", "metadata": {"b": 2}, "active_invocations": 3}),
        )
        .await
        .expect("heartbeat");
    let s = &reply.body["service"];
    assert_eq!(s["id"], "svc-1");
    assert_eq!(s["health"], "degraded");
    assert_eq!(s["metadata_json"], json!({"a": 1, "b": 2}));
    assert_eq!(s["last_heartbeat_at"], "2030-01-01T00:00:00.000Z");
    assert_eq!(reply.body["active_invocations"], 3);
    // Another application's service is not found, and nothing of the heartbeat commits.
    w.advance_secs(10);
    assert_code(
        w.coordinator
            .heartbeat_session(
                &w.me(),
                &w.zone,
                &svc,
                &json!({"lease_generation": 1, "service_id": "svc-b"}),
            )
            .await,
        "agent_service_not_found",
    );
    assert_eq!(w.session(&svc).await.last_heartbeat_at, Some(now));
}

#[tokio::test]
async fn lapsed_leases_suspend_the_subtree_and_heartbeats_keep_suspended_sessions_suspended() {
    let w = World::new().await;
    let svc = w.service(json!({})).await;
    let child = w.task(json!({"parent_id": svc})).await;
    w.advance_secs(120);
    let hb = json!({"lease_generation": 1});
    assert_code(
        w.coordinator
            .heartbeat_session(&w.me(), &w.zone, &svc, &hb)
            .await,
        "session_lease_expired",
    );
    assert_eq!(
        w.session(&svc).await.status,
        "suspended",
        "the suspension committed"
    );
    assert_eq!(w.session(&child).await.status, "suspended");
    let suspends = w
        .outbox_matching(TOPIC_AGENTS_LIFECYCLE, &[("event", "suspend")])
        .await;
    assert_eq!(suspends.len(), 2);
    let f = &suspends
        .iter()
        .find(|m| m.fields["agent_session_id"] == svc)
        .expect("root")
        .fields;
    assert_eq!(f["reason"], "service_heartbeat_lost");
    assert_eq!(
        f["dedupe_key"],
        format!("suspend:{svc}:2030-01-01T00:02:00.000Z")
    );
    assert!(!f.contains_key("parent_id"));
    // Application anchors are exempt from sessions.revoke.
    assert!(w
        .outbox_matching(TOPIC_SESSIONS_REVOKE, &[])
        .await
        .is_empty());

    // A suspended service may still heartbeat: the deadline moves, the status does not.
    w.advance_secs(5);
    let reply = w
        .coordinator
        .heartbeat_session(&w.me(), &w.zone, &svc, &hb)
        .await
        .expect("heartbeat");
    assert_eq!(reply.body["agent"]["status"], "suspended");
    assert_eq!(
        reply.body["agent"]["heartbeat_deadline_at"],
        "2030-01-01T00:04:05.000Z"
    );
    // Lease takeover is refused while suspended.
    assert_code(
        w.coordinator.lease_session(&w.me(), &w.zone, &svc).await,
        "session_suspended",
    );
}

#[tokio::test]
async fn lease_takeover_fences_the_previous_holder() {
    let w = World::new().await;
    let svc = w.service(json!({})).await;
    w.advance_secs(30);
    let reply = w
        .coordinator
        .lease_session(&w.me(), &w.zone, &svc)
        .await
        .expect("lease");
    assert_eq!(
        reply.body,
        json!({"status": "active", "heartbeat_deadline_at": "2030-01-01T00:02:30.000Z", "lease_generation": 2})
    );
    assert_code(
        w.coordinator
            .heartbeat_session(&w.me(), &w.zone, &svc, &json!({"lease_generation": 1}))
            .await,
        "session_lease_fenced",
    );
    w.coordinator
        .heartbeat_session(&w.me(), &w.zone, &svc, &json!({"lease_generation": 2}))
        .await
        .expect("new holder");
    // The old holder cannot terminate either.
    assert_code(
        w.coordinator
            .terminate_session(
                &w.me(),
                &w.zone,
                &svc,
                None,
                Some(&json!({"lease_generation": 1})),
            )
            .await,
        "session_lease_fenced",
    );

    // Refusals.
    assert_code(
        w.coordinator.lease_session(&w.me(), &w.zone, "ghost").await,
        "session_not_found",
    );
    assert_code(
        w.coordinator
            .lease_session(&w.principal("app_b", Some("sid_b"), &[]), &w.zone, &svc)
            .await,
        "application_ownership_required",
    );
    let task = w.task(json!({})).await;
    assert_code(
        w.coordinator.lease_session(&w.me(), &w.zone, &task).await,
        "session_not_service",
    );
    assert_code(
        w.coordinator
            .lease_session(&w.principal("app", None, &[]), &w.zone, &svc)
            .await,
        "authority_record_required",
    );
    assert_code(
        w.coordinator
            .lease_session(&w.principal("app", Some("sid_b"), &[]), &w.zone, &svc)
            .await,
        "identity_revoked",
    );
    assert_eq!(
        w.session(&svc).await.lease_generation,
        2,
        "refusals change nothing"
    );

    // A lapsed lease is suspended instead of taken over.
    w.advance_secs(121);
    assert_code(
        w.coordinator.lease_session(&w.me(), &w.zone, &svc).await,
        "session_lease_expired",
    );
    assert_eq!(w.session(&svc).await.status, "suspended");
    // Ended Sessions are not live.
    w.coordinator
        .terminate_session(&w.operator(), &w.zone, &svc, None, None)
        .await
        .expect("operator terminate");
    assert_code(
        w.coordinator.lease_session(&w.me(), &w.zone, &svc).await,
        "session_not_live",
    );
}

#[tokio::test]
async fn a_lapsed_user_anchor_ends_the_session_on_its_next_heartbeat_or_lease() {
    let w = World::new().await;
    let svc = w.service(json!({"subject_session_id": "user_sid"})).await;
    let second = w.service(json!({"subject_session_id": "user_sid"})).await;
    let mut user = record_row(&w.zone, "user_sid", SessionType::User, "user-1", w.now());
    user.status = RecordStatus::Revoked;
    w.save_record(&user).await;
    assert_code(
        w.coordinator
            .heartbeat_session(&w.me(), &w.zone, &svc, &json!({"lease_generation": 1}))
            .await,
        "session_subject_inactive",
    );
    let s = w.session(&svc).await;
    assert_eq!(
        (s.status.as_str(), s.status_reason.as_deref()),
        ("terminated", Some("subject_authority_inactive"))
    );
    // `second` still anchors on the record: no revocation is announced yet.
    assert!(w
        .outbox_matching(TOPIC_SESSIONS_REVOKE, &[])
        .await
        .is_empty());
    assert_code(
        w.coordinator.lease_session(&w.me(), &w.zone, &second).await,
        "session_subject_inactive",
    );
    let revokes = w
        .outbox_matching(TOPIC_SESSIONS_REVOKE, &[("agent_session_id", &second)])
        .await;
    assert_eq!(revokes.len(), 1);
    let f = &revokes[0].fields;
    assert_eq!(f["dedupe_key"], format!("agent_terminate:{second}"));
    assert_eq!(f["session_id"], "user_sid");
    assert_eq!(f["zone_id"], "z1");
    assert_eq!(f["reason"], "subject_authority_inactive");
}

#[tokio::test]
async fn terminate_cascades_through_the_subtree_and_its_edges() {
    let w = World::new().await;
    let root = w.task(json!({})).await;
    let child = w.task(json!({"parent_id": root})).await;
    let grandchild = w.task(json!({"parent_id": child})).await;
    let outsider = w.task(json!({})).await;
    let touching = w.edge_between(&outsider, &grandchild, json!({})).await;
    let unrelated_src = w.task(json!({})).await;
    let unrelated_dst = w.task(json!({})).await;
    let unrelated = w
        .edge_between(&unrelated_src, &unrelated_dst, json!({}))
        .await;
    let epoch = w.graph_epoch().await;
    w.advance_secs(1);

    let reply = w
        .coordinator
        .terminate_session(&w.me(), &w.zone, &child, Some("done"), None)
        .await
        .expect("terminate");
    assert_eq!(reply.status, 204);
    assert_eq!(reply.body, Value::Null);
    let c = w.session(&child).await;
    assert_eq!(
        (c.status.as_str(), c.status_reason.as_deref()),
        ("terminated", Some("done"))
    );
    assert_eq!(c.ended_at, Some(w.now()));
    let g = w.session(&grandchild).await;
    assert_eq!(
        (g.status.as_str(), g.status_reason.as_deref()),
        ("terminated", Some("parent_terminated"))
    );
    let r = w.session(&root).await;
    assert_eq!((r.status.as_str(), r.child_count), ("active", 0));
    let e = w.edge(&touching).await;
    assert_eq!(
        (e.status.as_str(), e.revoked_at, e.edge_version),
        ("revoked", Some(w.now()), 1)
    );
    assert_eq!(w.edge(&unrelated).await.status, "active");
    assert_eq!(w.graph_epoch().await, epoch + 1);

    let terminates = w
        .outbox_matching(TOPIC_AGENTS_LIFECYCLE, &[("event", "terminate")])
        .await;
    assert_eq!(terminates.len(), 2);
    let f = &terminates
        .iter()
        .find(|m| m.fields["agent_session_id"] == grandchild)
        .expect("grandchild")
        .fields;
    assert_eq!(f["dedupe_key"], format!("terminate:{grandchild}"));
    assert_eq!(f["parent_id"], child);
    assert_eq!(f["reason"], "done");
    let revokes = w
        .outbox_matching(TOPIC_DELEGATIONS_INVALIDATE, &[("event", "edge_revoke")])
        .await;
    assert_eq!(revokes.len(), 1);
    let f = &revokes[0].fields;
    assert_eq!(f["dedupe_key"], format!("edge_revoke:{touching}"));
    assert_eq!(
        (
            f["edge_id"].as_str(),
            f["reason"].as_str(),
            f["epoch"].clone()
        ),
        (touching.as_str(), "done", (epoch + 1).to_string())
    );
    assert_eq!(f["zone_id"], "z1");

    // Ended is gone.
    assert_code(
        w.coordinator
            .terminate_session(&w.me(), &w.zone, &child, None, None)
            .await,
        "session_not_found",
    );
    assert_code(
        w.coordinator
            .terminate_session(&w.me(), &w.zone, "ghost", None, None)
            .await,
        "session_not_found",
    );
    assert_code(
        w.coordinator
            .terminate_session(&w.me(), &w.zone2, &root, None, None)
            .await,
        "session_not_found",
    );
}

#[tokio::test]
async fn terminate_checks_its_inputs_and_fencing() {
    let w = World::new().await;
    let task = w.task(json!({})).await;
    for reason in ["", &"r".repeat(257)] {
        assert_code(
            w.coordinator
                .terminate_session(&w.me(), &w.zone, &task, Some(reason), None)
                .await,
            "invalid_query",
        );
    }
    for body in [
        json!({"lease_generation": 0}),
        json!({"lease_generation": "1"}),
        json!([1]),
    ] {
        assert_code(
            w.coordinator
                .terminate_session(&w.me(), &w.zone, &task, None, Some(&body))
                .await,
            "invalid_body",
        );
    }
    assert_code(
        w.coordinator
            .terminate_session(
                &w.principal("app_b", Some("sid_b"), &[]),
                &w.zone,
                &task,
                None,
                None,
            )
            .await,
        "application_ownership_required",
    );
    assert_eq!(w.session(&task).await.status, "active");
    // A 256-character reason is accepted; a spawn_for holder may terminate.
    let helper = w.principal("app_b", Some("sid_b"), &["coordinator.spawn_for:app"]);
    w.coordinator
        .terminate_session(
            &helper,
            &w.zone,
            &task,
            Some(&"r".repeat(256)),
            Some(&Value::Null),
        )
        .await
        .expect("terminate");

    let svc = w.service(json!({})).await;
    let e = assert_code(
        w.coordinator
            .terminate_session(&w.me(), &w.zone, &svc, None, None)
            .await,
        "lease_generation_required",
    );
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert_code(
        w.coordinator
            .terminate_session(
                &w.me(),
                &w.zone,
                &svc,
                None,
                Some(&json!({"lease_generation": 9})),
            )
            .await,
        "session_lease_fenced",
    );
    w.coordinator
        .terminate_session(
            &w.me(),
            &w.zone,
            &svc,
            None,
            Some(&json!({"lease_generation": 1})),
        )
        .await
        .expect("holder");
    // Admins end services without a generation.
    let svc2 = w.service(json!({})).await;
    let admin = w.principal("app_b", Some("sid_b"), &["coordinator.admin"]);
    w.coordinator
        .terminate_session(&admin, &w.zone, &svc2, None, None)
        .await
        .expect("admin");
}

#[tokio::test]
async fn session_revocations_skip_shared_and_application_anchors() {
    let w = World::new().await;
    let a = w.task(json!({"subject_session_id": "user_sid"})).await;
    let b = w.task(json!({"subject_session_id": "user_sid"})).await;
    w.coordinator
        .terminate_session(&w.me(), &w.zone, &a, None, None)
        .await
        .expect("a");
    assert!(
        w.outbox_matching(TOPIC_SESSIONS_REVOKE, &[])
            .await
            .is_empty(),
        "b still anchors user_sid"
    );
    w.coordinator
        .terminate_session(&w.me(), &w.zone, &b, None, None)
        .await
        .expect("b");
    let rows = w.outbox_matching(TOPIC_SESSIONS_REVOKE, &[]).await;
    assert_eq!(rows.len(), 1);
    let f = &rows[0].fields;
    let mut keys: Vec<&str> = f.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "agent_session_id",
            "dedupe_key",
            "reason",
            "session_id",
            "zone_id"
        ]
    );
    assert_eq!(f["agent_session_id"], b);
    assert_eq!(f["reason"], "requested");
}

#[tokio::test]
async fn reads_page_newest_first_with_filters() {
    let w = World::new().await;
    let a = w.task(json!({"labels": ["red"]})).await;
    let b = w.service(json!({})).await;
    let c = w.task(json!({"labels": ["red"], "parent_id": a})).await;
    let list = |query: Vec<(String, String)>| {
        let w = &w;
        async move { w.coordinator.list_sessions(&w.me(), &w.zone, &query).await }
    };
    let all = list(vec![]).await.expect("list").body;
    let ids: Vec<&str> = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["agent_session_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [c.as_str(), b.as_str(), a.as_str()]);
    assert_eq!(all["next_cursor"], Value::Null);
    let row = &all["items"][2];
    let mut keys: Vec<&str> = row
        .as_object()
        .expect("row")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "agent_session_id",
            "application_id",
            "depth",
            "heartbeat_deadline_at",
            "labels",
            "last_heartbeat_at",
            "lease_generation",
            "lifecycle",
            "metadata",
            "parent_id",
            "started_at",
            "status",
            "subject_authority_record_id",
            "terminated_at",
            "termination_reason",
            "ttl_seconds",
            "zone_id"
        ]
    );

    let page = list(q(&[("limit", "2")])).await.expect("page").body;
    assert_eq!(page["items"].as_array().expect("items").len(), 2);
    assert_eq!(page["next_cursor"], json!(b));
    let rest = list(q(&[("limit", "2"), ("cursor", &b)]))
        .await
        .expect("rest")
        .body;
    assert_eq!(rest["items"][0]["agent_session_id"], json!(a));
    assert_eq!(rest["next_cursor"], Value::Null);
    let red = list(q(&[("label", "red"), ("lifecycle", "task")]))
        .await
        .expect("red")
        .body;
    assert_eq!(red["items"].as_array().expect("items").len(), 2);
    let svc = list(q(&[
        ("lifecycle", "service"),
        ("application_id", "app"),
        ("status", "active"),
        ("other", "x"),
    ]))
    .await
    .expect("svc")
    .body;
    assert_eq!(svc["items"][0]["agent_session_id"], json!(b));

    for bad in [
        vec![("limit", "0")],
        vec![("limit", "501")],
        vec![("limit", "x")],
        vec![("status", "gone")],
        vec![("lifecycle", "x")],
        vec![("cursor", "")],
        vec![("limit", "1"), ("limit", "2")],
    ] {
        assert_code(list(q(&bad)).await, "invalid_query");
    }
    assert_code(list(q(&[("cursor", "ghost")])).await, "invalid_cursor");

    let kids = w
        .coordinator
        .list_child_sessions(&w.me(), &w.zone, &a, &[])
        .await
        .expect("children")
        .body;
    assert_eq!(kids["items"].as_array().expect("items").len(), 1);
    let kid = kids["items"][0].as_object().expect("kid");
    assert!(
        !kid.contains_key("terminated_at")
            && !kid.contains_key("termination_reason")
            && !kid.contains_key("lease_generation")
    );
    assert_eq!(kid["parent_id"], json!(a));
    assert_code(
        w.coordinator.get_session(&w.me(), &w.zone, "ghost").await,
        "session_not_found",
    );
    assert_code(
        w.coordinator.get_session(&w.me(), &w.zone2, &a).await,
        "session_not_found",
    );

    w.coordinator
        .terminate_session(&w.me(), &w.zone, &a, Some("bye"), None)
        .await
        .expect("terminate");
    let ended = w
        .coordinator
        .get_session(&w.me(), &w.zone, &a)
        .await
        .expect("get")
        .body;
    assert_eq!(ended["status"], "terminated");
    assert_eq!(ended["termination_reason"], "bye");
    assert_eq!(ended["terminated_at"], "2030-01-01T00:00:00.000Z");
    let terminated = list(q(&[("status", "terminated")]))
        .await
        .expect("terminated")
        .body;
    assert_eq!(terminated["items"].as_array().expect("items").len(), 2);
}

#[tokio::test]
async fn suspend_and_resume_walk_the_subtree() {
    let w = World::new().await;
    let svc = w.service(json!({})).await;
    let child = w.service(json!({"parent_id": svc})).await;
    let grandchild = w.task(json!({"parent_id": child})).await;
    w.advance_secs(50);
    let reply = w
        .coordinator
        .suspend_session(&w.me(), &w.zone, &svc)
        .await
        .expect("suspend");
    assert_eq!(reply.body, json!({"suspended": 3}));
    for id in [&svc, &child, &grandchild] {
        assert_eq!(w.session(id).await.status, "suspended");
    }
    assert_code(
        w.coordinator.suspend_session(&w.me(), &w.zone, &svc).await,
        "session_not_found_or_not_active",
    );
    assert_code(
        w.coordinator
            .suspend_session(&w.me(), &w.zone, "ghost")
            .await,
        "session_not_found",
    );
    assert_code(
        w.coordinator
            .suspend_session(&w.principal("app_b", Some("sid_b"), &[]), &w.zone, &svc)
            .await,
        "application_ownership_required",
    );
    w.advance_secs(200);
    let reply = w
        .coordinator
        .resume_session(&w.me(), &w.zone, &svc)
        .await
        .expect("resume");
    assert_eq!(reply.body, json!({"resumed": 3}));
    let s = w.session(&svc).await;
    assert_eq!(s.status, "active");
    assert_eq!(
        s.heartbeat_deadline_at,
        Some(w.now().plus_millis(120_000)),
        "service leases restart"
    );
    assert_eq!(w.session(&grandchild).await.heartbeat_deadline_at, None);
    assert_code(
        w.coordinator.resume_session(&w.me(), &w.zone, &svc).await,
        "session_not_found_or_not_suspended",
    );

    let resumes = w
        .outbox_matching(TOPIC_AGENTS_LIFECYCLE, &[("event", "resume")])
        .await;
    assert_eq!(resumes.len(), 3);
    let f = &resumes
        .iter()
        .find(|m| m.fields["agent_session_id"] == child)
        .expect("child")
        .fields;
    assert_eq!(
        f["dedupe_key"],
        format!("resume:{child}:2030-01-01T00:04:10.000Z")
    );
    assert_eq!(f["parent_id"], svc);
    assert!(!f.contains_key("reason"));
    // A second suspension gets new dedupe keys.
    w.advance_secs(1);
    w.coordinator
        .suspend_session(&w.me(), &w.zone, &svc)
        .await
        .expect("suspend again");
    let suspends = w
        .outbox_matching(
            TOPIC_AGENTS_LIFECYCLE,
            &[("event", "suspend"), ("agent_session_id", &svc)],
        )
        .await;
    assert_eq!(suspends.len(), 2);
    assert_ne!(
        suspends[0].fields["dedupe_key"],
        suspends[1].fields["dedupe_key"]
    );
    assert_eq!(suspends[0].fields["reason"], "requested");
    // The operator may suspend and resume too.
    w.coordinator
        .resume_session(&w.operator(), &w.zone, &svc)
        .await
        .expect("operator resume");
}

#[tokio::test]
async fn foreign_zone_sessions_are_not_found() {
    let w = World::new().await;
    let mine = w.task(json!({})).await;
    let other = w.principal("app2", Some("sid2"), &[]);
    let mut other = other;
    other.zone = w.zone2.clone();
    assert_code(
        w.coordinator.suspend_session(&other, &w.zone2, &mine).await,
        "session_not_found",
    );
    assert_code(
        w.coordinator.resume_session(&other, &w.zone2, &mine).await,
        "session_not_found",
    );
    assert_code(
        w.coordinator.lease_session(&other, &w.zone2, &mine).await,
        "session_not_found",
    );
    assert_code(
        w.coordinator
            .start_session(
                &other,
                &w.zone2,
                &IdempotencyHeaders::default(),
                &json!({"application_id": "app2", "parent_id": mine}),
            )
            .await,
        "parent_not_found",
    );
    assert_eq!(w.session(&mine).await.status, "active");
}

/// A start whose identity check runs in its own unit (the HTTP path) reuses the caller's
/// application and record rows only when the body names exactly those; any other application
/// or anchor is read and judged as before.
#[tokio::test]
async fn a_start_reuses_only_the_identity_rows_it_names() {
    let w = World::new().await;
    let pending = |extra: &[&str]| {
        let mut p = w.principal(&w.app, Some(&w.sid), extra);
        p.identity = caracal_core::coordinator::IdentityGate::pending();
        p
    };
    save_archived_app(&w, "old").await;
    let mut revoked = record_row(&w.zone, "revoked", SessionType::Application, "app", w.now());
    revoked.status = RecordStatus::Revoked;
    w.save_record(&revoked).await;

    // Another application, by spawn_for: read, and archived.
    let p = pending(&["coordinator.spawn_for:old"]);
    assert_code(
        w.start(&p, json!({"application_id": "old"})).await,
        "application_not_found",
    );
    assert!(!p.identity.is_pending(), "the start's unit ran the check");
    // Another anchor than the mandate's record: read, and revoked.
    assert_code(
        w.start(
            &pending(&[]),
            json!({"application_id": w.app, "subject_session_id": "revoked"}),
        )
        .await,
        "session_not_found",
    );
    assert!(w.outbox().await.is_empty(), "nothing written");
    // Its own application under its own record: the rows the check read.
    let p = pending(&[]);
    let reply = w
        .start(&p, json!({"application_id": w.app}))
        .await
        .expect("own start");
    assert_eq!(reply.body["subject_authority_record_id"], w.sid.as_str());
    assert_eq!(w.outbox().await.len(), 1);

    // A pending principal whose own record was revoked is refused before anything is read
    // for the start, whatever the body asks.
    let mut gone = record_row(&w.zone, "gone", SessionType::Application, "app", w.now());
    gone.status = RecordStatus::Revoked;
    w.save_record(&gone).await;
    let mut p = w.principal(&w.app, Some("gone"), &[]);
    p.identity = caracal_core::coordinator::IdentityGate::pending();
    assert_code(
        w.start(
            &p,
            json!({"application_id": w.app, "subject_session_id": w.sid}),
        )
        .await,
        "identity_revoked",
    );
    assert!(p.identity.is_pending(), "a failed check stays pending");
    assert_eq!(w.outbox().await.len(), 1, "nothing more written");
}

/// Stores a managed application `name` of the world's zone, archived now.
async fn save_archived_app(w: &World, name: &str) {
    let mut uow = w.store.begin(&ZoneScope::All).await.expect("begin");
    let mut archived = app_row(
        &w.zone,
        name,
        caracal_core::model::RegistrationMethod::Managed,
        w.now(),
    );
    archived.archived_at = Some(w.now());
    uow.save_application(&archived).await.expect("save");
    uow.commit().await.expect("commit");
}

/// The STS decides warm delegated mints on rows it kept, trusting them only while the zone's
/// authority version stands (`ports::versions`): every committed change that takes authority
/// away must advance it, in its own zone only; changes that grant or renew need not.
#[tokio::test]
async fn changes_that_take_authority_away_advance_the_zone_version() {
    let w = World::new().await;
    let version = || async { w.versions.current(&w.zone).await.expect("version") };
    let other = || async { w.versions.current(&w.zone2).await.expect("version") };

    let source = w.task(json!({"ttl_seconds": 600})).await;
    let target = w.task(json!({"ttl_seconds": 600})).await;
    let svc = w.service(json!({})).await;
    let edge = w.edge_between(&source, &target, json!({})).await;
    w.coordinator
        .heartbeat_session(&w.me(), &w.zone, &svc, &json!({"lease_generation": 1}))
        .await
        .expect("heartbeat");
    assert_eq!(
        version().await,
        0,
        "starts, Delegations and heartbeats grant or renew"
    );

    w.coordinator
        .suspend_session(&w.me(), &w.zone, &svc)
        .await
        .expect("suspend");
    assert_eq!(version().await, 1, "a suspend advances");
    w.coordinator
        .resume_session(&w.me(), &w.zone, &svc)
        .await
        .expect("resume");
    assert_eq!(version().await, 1, "a resume grants");

    w.coordinator
        .revoke_delegation(&w.me(), &w.zone, &edge)
        .await
        .expect("revoke");
    assert_eq!(version().await, 2, "a Delegation revoke advances");
    w.coordinator
        .terminate_session(&w.me(), &w.zone, &source, None, None)
        .await
        .expect("terminate");
    assert_eq!(version().await, 3, "a terminate advances");

    // Sweeps advance the zones they changed, and only when they changed something.
    assert_eq!(w.coordinator.sweep_task_ttl().await.expect("ttl sweep"), 0);
    assert_eq!(
        w.coordinator
            .sweep_service_leases()
            .await
            .expect("lease sweep"),
        0
    );
    assert_eq!(version().await, 3, "a sweep that changed nothing leaves it");
    // (Revoking the Delegation ended its target, and the source was terminated.)
    w.task(json!({"ttl_seconds": 60})).await;
    w.advance_secs(601);
    assert!(w.coordinator.sweep_task_ttl().await.expect("ttl sweep") > 0);
    assert_eq!(
        version().await,
        4,
        "a TTL sweep that ended Sessions advances"
    );
    assert!(
        w.coordinator
            .sweep_service_leases()
            .await
            .expect("lease sweep")
            > 0
    );
    assert_eq!(
        version().await,
        5,
        "a lease sweep that suspended Sessions advances"
    );
    assert_eq!(other().await, 0, "another zone's version never moves");
}
