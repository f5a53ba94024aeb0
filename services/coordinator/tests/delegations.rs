//! Delegation use cases (`spec/coordinator-gateway.md` A8, A7 for creates, A12 rows): the
//! SDK's `application_transport` flow end to end through the STS's delegation checks, every
//! refusal of A8.1 with nothing written, narrowing, revocation cascades, and the reads.

mod support;

use caracal_core::coordinator::{
    IdempotencyHeaders, TOPIC_DELEGATIONS_INVALIDATE, TOPIC_SESSIONS_REVOKE,
};
use caracal_core::ports::{Store, ZoneScope};
use caracal_core::sts::references::{check_delegation, clamp_ttl, DelegationRequest};
use caracal_core::ErrorKind;
use serde_json::{json, Value};
use support::*;

fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// What a refused create must leave untouched: edge-bearing outbox rows and the epoch.
async fn fingerprint_of_graph(w: &World) -> (usize, i64) {
    (
        w.outbox_matching(TOPIC_DELEGATIONS_INVALIDATE, &[])
            .await
            .len(),
        w.graph_epoch().await,
    )
}

#[tokio::test]
async fn application_transport_flow_mints_through_the_sts_checks() {
    let w = World::new().await;
    // The SDK: two task Sessions (ttl 900 + 120, labels [application_id]) …
    let source = w
        .task(json!({"ttl_seconds": 1020, "labels": ["app"]}))
        .await;
    let target = w
        .task(json!({"ttl_seconds": 1020, "labels": ["app"]}))
        .await;
    // … then a Delegation issuer = receiver = own app, confined by constraints, no resource_id.
    let reply = w
        .delegate(
            &w.me(),
            json!({"issuer_application_id": "app", "source_session_id": source, "target_session_id": target,
                   "receiver_application_id": "app", "scopes": ["svc:read"],
                   "constraints": {"resources": [SVC]}, "ttl_seconds": 1020}),
        )
        .await
        .expect("delegate");
    assert_eq!(reply.status, 201);
    let b = &reply.body;
    let edge_id = id_of(b, "delegation_edge_id");
    assert_eq!(b["scopes"], json!(["svc:read"]));
    assert_eq!(b["expires_at"], "2030-01-01T00:17:00.000Z");
    assert_eq!(b["zone_id"], "z1");
    assert_eq!(b["source_session_id"], json!(source));
    assert_eq!(b["target_session_id"], json!(target));
    assert_eq!(b["issuer_application_id"], "app");
    assert_eq!(b["receiver_application_id"], "app");
    assert_eq!(b["parent_edge_id"], Value::Null);
    assert_eq!(b["resource_id"], Value::Null);
    assert_eq!(
        b["constraints_json"],
        json!({"resources": [SVC], "ttl_seconds": 1020})
    );
    assert_eq!(b["status"], "active");
    assert_eq!(b["edge_version"], 0);
    assert_eq!(b["revoked_at"], Value::Null);
    assert_eq!(b["created_at"], "2030-01-01T00:00:00.000Z");
    assert_eq!(b["warnings"], json!([]));
    assert_eq!(
        b["allow_reason"],
        json!([
            "same_zone_endpoints_active",
            "resource_scope_checked",
            "source_authority_root",
            "typed_constraints_validated"
        ])
    );
    assert_eq!(
        b["effective_authority"],
        json!({"source_session_id": source, "target_session_id": target, "parent_edge_id": null,
               "resource_id": null, "resources": [SVC], "scopes": ["svc:read"],
               "expires_at": "2030-01-01T00:17:00.000Z", "max_hops": 1, "ttl_seconds": 1020,
               "broad": false, "parent_edges_considered": []})
    );
    assert!(b.get("id").is_none());

    // Epoch and edge_create row.
    assert_eq!(w.graph_epoch().await, 1);
    let rows = w.outbox_matching(TOPIC_DELEGATIONS_INVALIDATE, &[]).await;
    assert_eq!(rows.len(), 1);
    let f = &rows[0].fields;
    assert_eq!(f["dedupe_key"], format!("edge_create:{edge_id}"));
    let mut keys: Vec<&str> = f.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "dedupe_key",
            "edge_id",
            "epoch",
            "event",
            "source_session_id",
            "target_session_id",
            "zone_id"
        ]
    );
    assert_eq!(
        (f["event"].as_str(), f["epoch"].as_str()),
        ("edge_create", "1")
    );

    // The STS then mints with agent_session_id = target, delegation_edge_id = edge.
    w.advance_secs(5);
    let mut uow = w
        .store
        .begin(&ZoneScope::Zone(w.zone.clone()))
        .await
        .expect("begin");
    let scopes = vec!["svc:read".to_owned()];
    let d = check_delegation(
        &mut uow,
        &w.zone,
        &DelegationRequest {
            edge_id: &edge_id,
            agent_session_id: &target,
            caller: "app",
            requested_scopes: &scopes,
            ttl_seconds: Some(900),
        },
        w.now(),
    )
    .await
    .expect("the STS accepts the edge");
    assert_eq!(d.epoch, 1);
    assert_eq!(d.path, vec![edge_id.clone()]);
    assert_eq!(d.constraints.resources, vec![SVC.to_owned()]);
    assert_eq!(clamp_ttl(900, &d, w.now()).expect("clamp"), 900);
    // Wider scopes are the STS's to refuse, not ours to have stored.
    let wide = vec!["svc:write".to_owned()];
    let e = check_delegation(
        &mut uow,
        &w.zone,
        &DelegationRequest {
            edge_id: &edge_id,
            agent_session_id: &target,
            caller: "app",
            requested_scopes: &wide,
            ttl_seconds: None,
        },
        w.now(),
    )
    .await
    .expect_err("wider");
    assert_eq!(e.code, "access_denied");
}

#[tokio::test]
async fn resources_resolve_by_row_id_or_identifier_and_store_the_row_id() {
    let w = World::new().await;
    let (s, t) = (w.task(json!({})).await, w.task(json!({})).await);
    for reference in ["r-svc", SVC] {
        let reply = w
            .delegate(
                &w.me(),
                json!({"issuer_application_id": "app", "receiver_application_id": "app",
                "source_session_id": s, "target_session_id": t, "resource_id": reference,
                "scopes": ["svc:write"], "expires_at": "2030-01-01T00:10:00Z"}),
            )
            .await
            .expect("delegate");
        assert_eq!(reply.body["resource_id"], "r-svc");
        assert_eq!(reply.body["expires_at"], "2030-01-01T00:10:00.000Z");
        assert_eq!(reply.body["constraints_json"], json!({}));
        assert_eq!(reply.body["effective_authority"]["resources"], json!([SVC]));
        assert_eq!(
            reply.body["effective_authority"]["ttl_seconds"],
            Value::Null
        );
        let edge = w.edge(&id_of(&reply.body, "delegation_edge_id")).await;
        assert_eq!(edge.resource_id.as_deref(), Some("r-svc"));
    }
    // resource_id among constraints.resources (by either name) is fine.
    w.delegate(&w.me(), json!({"issuer_application_id": "app", "receiver_application_id": "app",
        "source_session_id": s, "target_session_id": t, "resource_id": "r-svc",
        "constraints": {"resources": [SVC, OTHER]}, "scopes": ["svc:read", "other:read"], "ttl_seconds": 60}))
        .await
        .expect("union of scopes");
}

#[tokio::test]
async fn malformed_bodies_and_constraints_name_their_field() {
    let w = World::new().await;
    let (s, t) = (w.task(json!({})).await, w.task(json!({})).await);
    let base = json!({"issuer_application_id": "app", "receiver_application_id": "app",
                      "source_session_id": s, "target_session_id": t, "scopes": ["svc:read"],
                      "constraints": {"resources": [SVC]}, "ttl_seconds": 60});
    let with = |extra: Value| {
        let mut b = base.clone();
        merge(&mut b, extra);
        b
    };
    let before = fingerprint_of_graph(&w).await;
    for (body, code) in [
        (json!("x"), "invalid_body"),
        (json!({"source_session_id": s}), "invalid_body"),
        (with(json!({"scopes": "svc:read"})), "invalid_body"),
        (with(json!({"scopes": [""]})), "invalid_body"),
        (
            with(json!({"expires_at": "2030-01-01T01:00:00+01:00"})),
            "invalid_body",
        ),
        (with(json!({"ttl_seconds": 0})), "invalid_body"),
        (with(json!({"resource_id": ""})), "invalid_body"),
        (
            with(json!({"constraints": {"resources": [SVC], "color": "red"}})),
            "invalid_delegation_constraint",
        ),
        (
            with(json!({"constraints": [1]})),
            "invalid_delegation_constraint",
        ),
        (
            with(json!({"constraints": null})),
            "invalid_delegation_constraint",
        ),
        (
            with(json!({"constraints_json": "x"})),
            "invalid_delegation_constraint",
        ),
        (
            with(json!({"constraints": {"resources": vec![SVC; 65]}})),
            "invalid_resources",
        ),
        (
            with(json!({"constraints": {"resources": [""]}})),
            "invalid_resources",
        ),
        (
            with(json!({"constraints": {"resources": [SVC], "max_depth": 0}})),
            "invalid_max_depth",
        ),
        (
            with(json!({"constraints": {"resources": [SVC], "max_hops": 11}})),
            "invalid_max_hops",
        ),
        (
            with(json!({"constraints": {"resources": [SVC], "max_depth": 2, "max_hops": 3}})),
            "invalid_max_hops",
        ),
        (
            with(json!({"constraints": {"resources": [SVC], "budget": 65}})),
            "invalid_budget",
        ),
        (
            with(json!({"constraints": {"resources": [SVC], "ttl_seconds": 0}})),
            "invalid_ttl_seconds",
        ),
        (
            with(json!({"constraints": {"resources": [SVC], "policy_approved": "yes"}})),
            "invalid_policy_approved",
        ),
        (
            with(json!({"constraints": {"resources": [SVC], "expires_at": "tomorrow"}})),
            "invalid_expires_at",
        ),
        (
            with(json!({"constraints": {"resources": [SVC], "broad_reason": ""}})),
            "invalid_broad_reason",
        ),
        // The first bad key in schema order names the error, before unknown keys.
        (
            with(json!({"constraints": {"zzz": 1, "budget": 0, "max_hops": 0}})),
            "invalid_max_hops",
        ),
    ] {
        let e = assert_code(w.delegate(&w.me(), body.clone()).await, code);
        assert_eq!(e.kind, ErrorKind::Invalid, "{body}");
    }
    assert_eq!(
        fingerprint_of_graph(&w).await,
        before,
        "refusals wrote nothing"
    );

    // Merging: constraints beat the legacy constraints_json; max_depth alone becomes max_hops;
    // a constraints ttl beats the body's.
    let reply = w
        .delegate(
            &w.me(),
            with(
                json!({"constraints_json": {"resources": [OTHER], "budget": 3}, "scopes": [],
            "constraints": {"resources": [SVC], "max_depth": 2, "ttl_seconds": 30}}),
            ),
        )
        .await
        .expect("merged");
    assert_eq!(
        reply.body["constraints_json"],
        json!({"resources": [SVC], "budget": 3, "max_depth": 2, "max_hops": 2, "ttl_seconds": 30})
    );
    assert_eq!(reply.body["expires_at"], "2030-01-01T00:00:30.000Z");
    assert_eq!(reply.body["effective_authority"]["max_hops"], 2);
    // Integral floats are normalized so the STS reads them.
    let reply = w
        .delegate(
            &w.me(),
            with(json!({"constraints": {"resources": [SVC], "max_hops": 2.0}})),
        )
        .await
        .expect("float");
    assert_eq!(reply.body["constraints_json"]["max_hops"], json!(2));
}

#[tokio::test]
async fn create_refusals_follow_the_contract_order() {
    let w = World::new().await;
    let (s, t) = (w.task(json!({})).await, w.task(json!({})).await);
    let body = |extra: Value| {
        let mut b = json!({"issuer_application_id": "app", "receiver_application_id": "app",
                           "source_session_id": s, "target_session_id": t, "scopes": ["svc:read"],
                           "constraints": {"resources": [SVC]}, "ttl_seconds": 60});
        merge(&mut b, extra);
        b
    };
    let before = fingerprint_of_graph(&w).await;
    assert_code(
        w.delegate(&w.me(), body(json!({"ttl_seconds": null})))
            .await,
        "invalid_body",
    );
    let mut no_expiry = body(json!({}));
    no_expiry
        .as_object_mut()
        .expect("obj")
        .remove("ttl_seconds");
    assert_code(
        w.delegate(&w.me(), no_expiry).await,
        "delegation_expiry_required",
    );
    let b_app = w.principal("app_b", Some("sid_b"), &[]);
    let e = assert_code(
        w.delegate(&b_app, body(json!({}))).await,
        "issuer_ownership_required",
    );
    assert_eq!(e.kind, ErrorKind::Forbidden);
    assert_code(
        w.delegate(&w.me(), body(json!({"target_session_id": s})))
            .await,
        "self_delegation_denied",
    );
    let broad = body(json!({"constraints": {}}));
    let e = assert_code(
        w.delegate(&w.me(), broad.clone()).await,
        "broad_delegation_permission_required",
    );
    assert_eq!(e.kind, ErrorKind::Forbidden);
    assert_code(
        w.delegate(&w.me(), body(json!({"source_session_id": "ghost"})))
            .await,
        "delegation_endpoint_not_found",
    );
    // Mismatched applications.
    let b_session = w
        .start(&b_app, json!({"application_id": "app_b"}))
        .await
        .expect("b session")
        .body["agent_session_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let e = assert_code(
        w.delegate(&w.me(), body(json!({"target_session_id": b_session})))
            .await,
        "delegation_application_mismatch",
    );
    assert_eq!(e.kind, ErrorKind::Conflict);
    for (extra, code) in [
        (json!({"resource_id": "r-nope"}), "resource_not_found"),
        (json!({"resource_id": GONE}), "resource_not_found"),
        (json!({"resource_id": "r-gone"}), "resource_not_found"),
        (
            json!({"constraints": {"resources": [SVC, "resource://nope"]}}),
            "resource_not_found",
        ),
        (
            json!({"resource_id": "r-other", "constraints": {"resources": [SVC]}}),
            "delegation_resource_scope_mismatch",
        ),
        (
            json!({"scopes": ["svc:read", "svc:admin"]}),
            "delegation_scopes_exceed_resource",
        ),
        (
            json!({"expires_at": "2029-12-31T23:59:59Z"}),
            "delegation_expired",
        ),
    ] {
        assert_code(w.delegate(&w.me(), body(extra)).await, code);
    }
    assert_eq!(
        fingerprint_of_graph(&w).await,
        before,
        "refusals wrote nothing"
    );

    // delegate_from opens another issuer; broad scopes open resource-unbound edges.
    let from = w.principal("app_b", Some("sid_b"), &["coordinator.delegate_from:app"]);
    w.delegate(&from, body(json!({})))
        .await
        .expect("delegate_from");
    for extra in [
        &["coordinator.delegate_broad"][..],
        &["coordinator.delegate_broad:app"][..],
        &["coordinator.admin"][..],
    ] {
        let p = w.principal("app", Some("sid"), extra);
        let reply = w.delegate(&p, broad.clone()).await.expect("broad");
        let b = &reply.body;
        assert_eq!(
            b["warnings"],
            json!(["resource_null_delegation_broadens_resource_matching"])
        );
        assert_eq!(
            b["constraints_json"],
            json!({"broad_reason": "resource_null_delegation", "policy_approved": true, "ttl_seconds": 60})
        );
        assert_eq!(b["allow_reason"][1], "broad_delegation_elevated");
        assert_eq!(b["effective_authority"]["broad"], true);
    }
    let p = w.principal("app", Some("sid"), &["coordinator.delegate_broad"]);
    let reply = w
        .delegate(
            &p,
            body(json!({"constraints": {"broad_reason": "ops", "policy_approved": false}})),
        )
        .await
        .expect("own reason");
    assert_eq!(reply.body["constraints_json"]["broad_reason"], "ops");
    assert_eq!(reply.body["constraints_json"]["policy_approved"], true);
}

#[tokio::test]
async fn endpoints_must_be_live_sessions_of_this_zone() {
    let w = World::new().await;
    let live = w.task(json!({})).await;
    let short = w.task(json!({"ttl_seconds": 5})).await;
    let ended = w.task(json!({})).await;
    w.coordinator
        .terminate_session(&w.me(), &w.zone, &ended, None, None)
        .await
        .expect("terminate");
    let suspended = w.task(json!({})).await;
    w.coordinator
        .suspend_session(&w.me(), &w.zone, &suspended)
        .await
        .expect("suspend");
    w.advance_secs(6);
    for other in [&short, &ended, &suspended] {
        for (s, t) in [(&live, other), (other, &live)] {
            assert_code(
                w.delegate(
                    &w.me(),
                    json!({"issuer_application_id": "app", "receiver_application_id": "app",
                    "source_session_id": s, "target_session_id": t, "scopes": [],
                    "constraints": {"resources": [SVC]}, "ttl_seconds": 60}),
                )
                .await,
                "delegation_endpoint_not_found",
            );
        }
    }
    // A Session of another zone is not an endpoint here, and another zone's caller sees none.
    let mut foreign = w.principal("app2", Some("sid2"), &[]);
    foreign.zone = w.zone2.clone();
    let other = live.clone();
    assert_code(
        w.coordinator
            .create_delegation(&foreign, &w.zone2, &IdempotencyHeaders::default(), &json!({"issuer_application_id": "app2",
                "receiver_application_id": "app2", "source_session_id": other, "target_session_id": "x",
                "scopes": [], "constraints": {"resources": [SVC]}, "ttl_seconds": 60}))
            .await,
        "delegation_endpoint_not_found",
    );
}

/// A root edge src → mid with the given extra members; returns (src, mid, edge).
async fn root_edge(w: &World, extra: Value) -> (String, String, String) {
    let src = w.task(json!({})).await;
    let mid = w.task(json!({})).await;
    let edge = w.edge_between(&src, &mid, extra).await;
    (src, mid, edge)
}

fn child_body(mid: &str, target: &str, extra: Value) -> Value {
    let mut b = json!({"issuer_application_id": "app", "receiver_application_id": "app",
                       "source_session_id": mid, "target_session_id": target, "scopes": ["svc:read"],
                       "constraints": {"resources": [SVC], "max_hops": 1}, "ttl_seconds": 60});
    merge(&mut b, extra);
    b
}

#[tokio::test]
async fn re_delegation_only_narrows() {
    let w = World::new().await;
    let (_, mid, parent) = root_edge(
        &w,
        json!({"scopes": ["svc:read", "svc:write"], "ttl_seconds": 600,
               "constraints": {"resources": [SVC], "max_hops": 3, "ttl_seconds": 300, "budget": 1}}),
    )
    .await;
    let leaf = w.task(json!({})).await;
    let before = fingerprint_of_graph(&w).await;
    for extra in [
        json!({"scopes": ["svc:read", "svc:write"]}), // over budget
        json!({"scopes": [], "constraints": {"resources": [OTHER], "max_hops": 1, "ttl_seconds": 60}}), // resource widened
        json!({"constraints": {"resources": [SVC], "max_hops": 3, "ttl_seconds": 60}}), // hops not reduced
        json!({"constraints": {"resources": [SVC], "max_hops": 1, "ttl_seconds": 301}}), // ttl widened
        json!({"constraints": {"resources": [SVC], "max_hops": 1}, "ttl_seconds": null, "expires_at": "2030-01-01T00:01:00Z"}), // no ttl
        json!({"constraints": {"resources": [SVC], "max_hops": 1, "ttl_seconds": 60}, "expires_at": "2030-01-01T00:10:01Z"}), // later expiry
    ] {
        let mut body = child_body(&mid, &leaf, extra.clone());
        if body["ttl_seconds"].is_null() {
            body.as_object_mut().expect("obj").remove("ttl_seconds");
        }
        let e = assert_code(
            w.delegate(&w.me(), body).await,
            "delegation_exceeds_parent_authority",
        );
        assert_eq!(e.kind, ErrorKind::Forbidden, "{extra}");
    }
    // A parent named that is not an inbound edge of the source.
    assert_code(
        w.delegate(&w.me(), child_body(&mid, &leaf, json!({"parent_edge_id": "nope", "constraints": {"resources": [SVC], "max_hops": 1, "ttl_seconds": 60}}))).await,
        "parent_delegation_not_active",
    );
    assert_eq!(fingerprint_of_graph(&w).await, before);

    let reply = w
        .delegate(
            &w.me(),
            child_body(
                &mid,
                &leaf,
                json!({"constraints": {"resources": [SVC], "max_hops": 2, "ttl_seconds": 60}}),
            ),
        )
        .await
        .expect("narrower");
    assert_eq!(reply.body["parent_edge_id"], json!(parent));
    assert_eq!(reply.body["allow_reason"][2], "parent_authority_narrowed");
    assert_eq!(
        reply.body["effective_authority"]["parent_edges_considered"],
        json!([parent])
    );
    let child = id_of(&reply.body, "delegation_edge_id");

    assert_eq!(
        w.edge(&child).await.parent_edge_id.as_deref(),
        Some(parent.as_str())
    );

    // A default edge (max_hops 1) cannot be re-delegated.
    let (_, default_mid, _) = root_edge(&w, json!({})).await;
    let leaf2 = w.task(json!({})).await;
    assert_code(
        w.delegate(
            &w.me(),
            child_body(
                &default_mid,
                &leaf2,
                json!({"constraints": {"resources": [SVC]}}),
            ),
        )
        .await,
        "delegation_exceeds_parent_authority",
    );

    // Two live inbound edges: the parent must be named.
    let other_src = w.task(json!({})).await;
    w.edge_between(
        &other_src,
        &mid,
        json!({"constraints": {"resources": [SVC], "max_hops": 2}}),
    )
    .await;
    let leaf3 = w.task(json!({})).await;
    assert_code(
        w.delegate(
            &w.me(),
            child_body(
                &mid,
                &leaf3,
                json!({"constraints": {"resources": [SVC], "max_hops": 1, "ttl_seconds": 60}}),
            ),
        )
        .await,
        "parent_delegation_ambiguous",
    );
    w.delegate(
        &w.me(),
        child_body(
            &mid,
            &leaf3,
            json!({"parent_edge_id": parent,
        "constraints": {"resources": [SVC], "max_hops": 1, "ttl_seconds": 60}}),
        ),
    )
    .await
    .expect("named parent");
}

#[tokio::test]
async fn resource_bound_parents_confine_children() {
    let w = World::new().await;
    let (_, mid, _) = root_edge(
        &w,
        json!({"resource_id": "r-svc", "constraints": {"max_hops": 2}}),
    )
    .await;
    let leaf = w.task(json!({})).await;
    // Naming the same resource (by either name) narrows; another does not.
    assert_code(
        w.delegate(
            &w.me(),
            child_body(
                &mid,
                &leaf,
                json!({"resource_id": "r-other", "scopes": [], "constraints": {}}),
            ),
        )
        .await,
        "delegation_exceeds_parent_authority",
    );
    w.delegate(
        &w.me(),
        child_body(&mid, &leaf, json!({"resource_id": SVC, "constraints": {}})),
    )
    .await
    .expect("same resource");
    // A broad child of a resource-bound parent widens it.
    let leaf2 = w.task(json!({})).await;
    let p = w.principal("app", Some("sid"), &["coordinator.delegate_broad"]);
    assert_code(
        w.delegate(&p, child_body(&mid, &leaf2, json!({"constraints": {}})))
            .await,
        "delegation_exceeds_parent_authority",
    );
}

#[tokio::test]
async fn cycles_are_refused() {
    let w = World::new().await;
    let a = w.task(json!({})).await;
    let b = w.task(json!({})).await;
    let c = w.task(json!({})).await;
    let p = w.principal("app", Some("sid"), &[]);
    w.edge_between(
        &a,
        &b,
        json!({"constraints": {"resources": [SVC], "max_hops": 3}}),
    )
    .await;
    w.delegate(
        &p,
        child_body(
            &b,
            &c,
            json!({"constraints": {"resources": [SVC], "max_hops": 2}}),
        ),
    )
    .await
    .expect("b → c");
    // c → a would close a → b → c → a. (c holds an inbound edge; name nothing: one parent.)
    let e = assert_code(
        w.delegate(
            &p,
            child_body(
                &c,
                &a,
                json!({"constraints": {"resources": [SVC], "max_hops": 1}}),
            ),
        )
        .await,
        "delegation_cycle_denied",
    );
    assert_eq!(e.kind, ErrorKind::Conflict);
}

#[tokio::test]
async fn idempotent_creates_replay_conflict_and_go_inactive() {
    let w = World::new().await;
    let (s, t) = (w.task(json!({})).await, w.task(json!({})).await);
    let body = json!({"issuer_application_id": "app", "receiver_application_id": "app",
                      "source_session_id": s, "target_session_id": t, "scopes": ["svc:write", "svc:read"],
                      "constraints": {"resources": [SVC]}, "ttl_seconds": 60});
    let first = w
        .coordinator
        .create_delegation(&w.me(), &w.zone, &key("d1"), &body)
        .await
        .expect("first");
    let again = w
        .coordinator
        .create_delegation(&w.me(), &w.zone, &key("d1"), &body)
        .await
        .expect("again");
    assert!(again.replayed);
    assert_eq!(again.body, first.body);
    assert_eq!(w.graph_epoch().await, 1, "a replay creates nothing");
    // Scope order does not matter; anything else does.
    let mut reordered = body.clone();
    reordered["scopes"] = json!(["svc:read", "svc:write"]);
    assert!(
        w.coordinator
            .create_delegation(&w.me(), &w.zone, &key("d1"), &reordered)
            .await
            .expect("same")
            .replayed
    );
    let mut other = body.clone();
    other["ttl_seconds"] = json!(61);
    assert_code(
        w.coordinator
            .create_delegation(&w.me(), &w.zone, &key("d1"), &other)
            .await,
        "idempotency_key_conflict",
    );
    assert_code(
        w.coordinator
            .create_delegation(
                &w.me(),
                &w.zone,
                &IdempotencyHeaders {
                    keys: vec!["".into()],
                    generated: false,
                },
                &body,
            )
            .await,
        "idempotency_key_invalid",
    );
    // Expired → inactive.
    w.advance_secs(61);
    assert_code(
        w.coordinator
            .create_delegation(&w.me(), &w.zone, &key("d1"), &body)
            .await,
        "idempotency_result_inactive",
    );
}

#[tokio::test]
async fn revoking_cascades_downstream_and_terminates_targets() {
    let w = World::new().await;
    let (src, mid, root) = root_edge(
        &w,
        json!({"constraints": {"resources": [SVC], "max_hops": 3}}),
    )
    .await;
    let leaf = w.task(json!({"subject_session_id": "user_sid"})).await;
    let grandchild = w.task(json!({"parent_id": leaf})).await;
    let child = id_of(
        &w.delegate(
            &w.me(),
            child_body(
                &mid,
                &leaf,
                json!({"constraints": {"resources": [SVC], "max_hops": 2}}),
            ),
        )
        .await
        .expect("child")
        .body,
        "delegation_edge_id",
    );
    let bystander = w.task(json!({})).await;
    let side = w.edge_between(&leaf, &bystander, json!({"constraints": {"resources": [SVC], "max_hops": 1}, "parent_edge_id": child, "ttl_seconds": 60})).await;
    let epoch = w.graph_epoch().await;

    assert_code(
        w.coordinator
            .revoke_delegation(&w.principal("app_b", Some("sid_b"), &[]), &w.zone, &root)
            .await,
        "issuer_ownership_required",
    );
    assert_code(
        w.coordinator
            .revoke_delegation(&w.me(), &w.zone, "ghost")
            .await,
        "delegation_not_found",
    );
    assert_code(
        w.coordinator
            .revoke_delegation(&w.me(), &w.zone2, &root)
            .await,
        "delegation_not_found",
    );
    assert_eq!(w.graph_epoch().await, epoch);

    w.advance_secs(1);
    let reply = w
        .coordinator
        .revoke_delegation(&w.me(), &w.zone, &root)
        .await
        .expect("revoke");
    // root, child and side are downstream; mid, leaf and bystander end (leaf's subtree too).
    assert_eq!(
        reply.body,
        json!({"revoked_edges": 3, "affected_sessions": 2, "terminated_sessions": 4})
    );
    for e in [&root, &child, &side] {
        let edge = w.edge(e).await;
        assert_eq!(
            (edge.status.as_str(), edge.revoked_at, edge.edge_version),
            ("revoked", Some(w.now()), 1)
        );
    }
    for s in [&mid, &leaf, &bystander] {
        let session = w.session(s).await;
        assert_eq!(
            (session.status.as_str(), session.status_reason.as_deref()),
            ("terminated", Some("delegation_revoked"))
        );
    }
    assert_eq!(
        w.session(&grandchild).await.status_reason.as_deref(),
        Some("parent_terminated")
    );
    assert_eq!(
        w.session(&src).await.status,
        "active",
        "the source lives on"
    );
    assert!(w.graph_epoch().await > epoch);

    let explicit = w
        .outbox_matching(
            TOPIC_DELEGATIONS_INVALIDATE,
            &[("dedupe_key", &format!("edge_revoke:{root}"))],
        )
        .await;
    assert_eq!(explicit.len(), 1);
    let f = &explicit[0].fields;
    let mut keys: Vec<&str> = f.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "affected_edges",
            "dedupe_key",
            "edge_id",
            "epoch",
            "event",
            "zone_id"
        ]
    );
    assert_eq!(
        (f["affected_edges"].as_str(), f["epoch"].clone()),
        ("3", w.graph_epoch().await.to_string())
    );
    let anchors = w
        .outbox_matching(TOPIC_SESSIONS_REVOKE, &[("delegation_edge_id", &root)])
        .await;
    let mut keys: Vec<String> = anchors
        .iter()
        .map(|m| m.fields["dedupe_key"].clone())
        .collect();
    keys.sort();
    // The application record `sid` is exempt (it is the issuer's own lifecycle credential);
    // the user anchor is announced.
    assert_eq!(keys, vec![format!("delegation:{root}:subject:user_sid")]);
    let user = anchors
        .iter()
        .find(|m| m.fields["session_id"] == "user_sid")
        .expect("user anchor");
    assert_eq!(user.fields["agent_session_id"], leaf);
    assert_eq!(user.fields["reason"], "delegation_revoked");
    // Gone is gone.
    assert_code(
        w.coordinator
            .revoke_delegation(&w.me(), &w.zone, &root)
            .await,
        "delegation_not_found",
    );
}

#[tokio::test]
async fn issuers_delegates_and_admins_may_revoke() {
    let w = World::new().await;
    for p in [
        w.principal("app_b", Some("sid_b"), &["coordinator.delegate_from:app"]),
        w.principal("app_b", Some("sid_b"), &["coordinator.admin"]),
        w.operator(),
    ] {
        let (_, _, edge) = root_edge(&w, json!({})).await;
        let reply = w
            .coordinator
            .revoke_delegation(&p, &w.zone, &edge)
            .await
            .expect("revoke");
        assert_eq!(reply.body["revoked_edges"], 1);
    }
}

#[tokio::test]
async fn reads_show_what_the_caller_may_see() {
    let w = World::new().await;
    let (src, mid, edge) = root_edge(&w, json!({})).await;
    let me = w.me();
    let inbound = w
        .coordinator
        .list_inbound_delegations(&me, &w.zone, &mid, &[])
        .await
        .expect("inbound")
        .body;
    assert_eq!(inbound["next_cursor"], Value::Null);
    let item = &inbound["items"][0];
    assert_eq!(item["id"], json!(edge));
    assert_eq!(item["status"], "active");
    assert_eq!(item["expires_at"], "2030-01-01T00:10:00.000Z");
    let mut keys: Vec<&str> = item
        .as_object()
        .expect("item")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "constraints_json",
            "created_at",
            "edge_version",
            "expires_at",
            "id",
            "issuer_application_id",
            "parent_edge_id",
            "receiver_application_id",
            "resource_id",
            "revoked_at",
            "scopes",
            "source_session_id",
            "status",
            "target_session_id",
            "zone_id"
        ]
    );
    let outbound = w
        .coordinator
        .list_outbound_delegations(&me, &w.zone, &src, &[])
        .await
        .expect("outbound")
        .body;
    assert_eq!(outbound["items"][0]["id"], json!(edge));
    assert_eq!(
        w.coordinator
            .list_outbound_delegations(&me, &w.zone, &mid, &[])
            .await
            .expect("none")
            .body["items"],
        json!([])
    );

    // Another application does not own the Session; admins see everything.
    let other = w.principal("app_b", Some("sid_b"), &[]);
    assert_code(
        w.coordinator
            .list_inbound_delegations(&other, &w.zone, &mid, &[])
            .await,
        "session_not_found",
    );
    assert_code(
        w.coordinator
            .list_inbound_delegations(&me, &w.zone, "ghost", &[])
            .await,
        "session_not_found",
    );
    let op = w.operator();
    assert_eq!(
        w.coordinator
            .list_inbound_delegations(&op, &w.zone, &mid, &[])
            .await
            .expect("op")
            .body["items"][0]["id"],
        json!(edge)
    );
    assert_code(
        w.coordinator
            .list_inbound_delegations(&me, &w.zone, &mid, &q(&[("limit", "0")]))
            .await,
        "invalid_query",
    );
    assert_code(
        w.coordinator
            .list_inbound_delegations(&me, &w.zone, &mid, &q(&[("cursor", "nope")]))
            .await,
        "invalid_cursor",
    );

    let detail = w
        .coordinator
        .get_inbound_delegation(&me, &w.zone, &mid, &edge)
        .await
        .expect("detail");
    assert_eq!(detail.body, json!({"id": edge, "status": "active"}));
    assert_code(
        w.coordinator
            .get_inbound_delegation(&other, &w.zone, &mid, &edge)
            .await,
        "delegation_not_found",
    );
    assert_code(
        w.coordinator
            .get_inbound_delegation(&me, &w.zone, &src, &edge)
            .await,
        "delegation_not_found",
    );
    w.coordinator
        .get_inbound_delegation(&op, &w.zone, &mid, &edge)
        .await
        .expect("admin");

    // Active listing with broad_reason, filtered to the caller's edges.
    let p = w.principal("app", Some("sid"), &["coordinator.delegate_broad"]);
    let (bs, bt) = (w.task(json!({})).await, w.task(json!({})).await);
    let broad = id_of(
        &w.delegate(
            &p,
            json!({"issuer_application_id": "app", "receiver_application_id": "app",
            "source_session_id": bs, "target_session_id": bt, "scopes": [], "ttl_seconds": 60}),
        )
        .await
        .expect("broad")
        .body,
        "delegation_edge_id",
    );
    let active = w
        .coordinator
        .list_active_delegations(&me, &w.zone, &[])
        .await
        .expect("active")
        .body;
    let items = active["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], json!(broad));
    assert_eq!(items[0]["broad_reason"], "resource_null_delegation");
    assert_eq!(items[1]["broad_reason"], Value::Null);
    let paged = w
        .coordinator
        .list_active_delegations(&me, &w.zone, &q(&[("limit", "1")]))
        .await
        .expect("page")
        .body;
    assert_eq!(paged["next_cursor"], json!(broad));
    let rest = w
        .coordinator
        .list_active_delegations(&me, &w.zone, &q(&[("limit", "1"), ("cursor", &broad)]))
        .await
        .expect("rest")
        .body;
    assert_eq!(rest["items"][0]["id"], json!(edge));
    assert_eq!(
        w.coordinator
            .list_active_delegations(&other, &w.zone, &[])
            .await
            .expect("other")
            .body["items"],
        json!([])
    );
    assert_code(
        w.coordinator
            .list_active_delegations(&other, &w.zone, &q(&[("cursor", &broad)]))
            .await,
        "invalid_cursor",
    );
    w.advance_secs(61);
    let active = w
        .coordinator
        .list_active_delegations(&me, &w.zone, &[])
        .await
        .expect("active")
        .body;
    assert_eq!(
        active["items"].as_array().expect("items").len(),
        1,
        "expired edges are not active"
    );
}

#[tokio::test]
async fn traverse_impact_and_effective_authority() {
    let w = World::new().await;
    let (_, mid, root) = root_edge(&w, json!({"scopes": ["svc:read", "svc:write"], "constraints": {"resources": [SVC], "max_hops": 3, "ttl_seconds": 300}})).await;
    let leaf = w.task(json!({})).await;
    let child = id_of(
        &w.delegate(
            &w.me(),
            child_body(
                &mid,
                &leaf,
                json!({"constraints": {"resources": [SVC], "max_hops": 2, "ttl_seconds": 60}}),
            ),
        )
        .await
        .expect("child")
        .body,
        "delegation_edge_id",
    );
    let me = w.me();
    assert_code(
        w.coordinator.traverse_delegation(&me, &w.zone, &root).await,
        "coordinator_admin_required",
    );
    assert_code(
        w.coordinator.delegation_impact(&me, &w.zone, &root).await,
        "coordinator_admin_required",
    );
    let op = w.operator();
    let walk = w
        .coordinator
        .traverse_delegation(&op, &w.zone, &root)
        .await
        .expect("traverse")
        .body;
    assert_eq!(
        walk,
        json!([{"id": root, "source_session_id": w.edge(&root).await.source_session_id, "target_session_id": mid, "depth": 1},
               {"id": child, "source_session_id": mid, "target_session_id": leaf, "depth": 2}])
    );
    assert_eq!(
        w.coordinator
            .traverse_delegation(&op, &w.zone, "ghost")
            .await
            .expect("empty")
            .body,
        json!([])
    );
    let impact = w
        .coordinator
        .delegation_impact(&op, &w.zone, &root)
        .await
        .expect("impact")
        .body;
    assert_eq!(impact["edge_id"], json!(root));
    assert_eq!(impact["affected_edges"], walk);
    assert_eq!(impact["affected_sessions"], json!([mid, leaf]));
    assert_eq!(impact["affected_authority_records"], json!(["sid"]));
    assert_code(
        w.coordinator.delegation_impact(&op, &w.zone, "ghost").await,
        "delegation_not_found",
    );

    let ea = w
        .coordinator
        .effective_authority(&me, &w.zone, &leaf)
        .await
        .expect("effective")
        .body;
    assert_eq!(
        ea,
        json!({"agent_session_id": leaf, "inbound_edges": [child], "effective_scopes": ["svc:read"],
               "effective_resource_ids": [], "effective_resources": [SVC], "effective_resource_constrained": true,
               "effective_max_hops": 2, "effective_ttl_seconds": 60, "earliest_expires_at": "2030-01-01T00:01:00.000Z"})
    );
    let none = w
        .coordinator
        .effective_authority(&me, &w.zone, &w.task(json!({})).await)
        .await
        .expect("none")
        .body;
    assert_eq!(none["inbound_edges"], json!([]));
    assert_eq!(none["effective_max_hops"], 0);
    assert_eq!(none["earliest_expires_at"], Value::Null);
    assert_eq!(none["effective_ttl_seconds"], Value::Null);
    assert_code(
        w.coordinator
            .effective_authority(&w.principal("app_b", Some("sid_b"), &[]), &w.zone, &leaf)
            .await,
        "session_not_found",
    );
    w.coordinator
        .effective_authority(&op, &w.zone, &leaf)
        .await
        .expect("admin");
}
