//! The Coordinator's storage (`spec/coordinator-gateway.md` A6.1, A6.6, A7, A8.4, A9, A11): the
//! graph reads and sweeps of `AgentGraphRepo`, the whole of `CoordinationRepo`, and
//! `UnitLocks::try_lock`.
//!
//! Listings are `id DESC`, strictly below `before`, at most `limit` rows, and confined to the
//! zone they name and to the unit's scope. The sweeps and the purges see every zone the unit's
//! scope allows, so their cases work in windows of instants that no real row uses (1991: due
//! Sessions and lapsed edges; 1992: retention of ended graph rows; 1993: receipt expiry; 1994:
//! invocation deadlines), draining the window first so rows a previous run left there do not
//! count.
//!
//! `try_lock` runs two units of work at once. What the case can ask of every adapter is
//! exclusion: while one unit holds the lock, no other unit takes it, either because the second
//! cannot even begin (the memory store serialises units, so its `try_lock` always answers
//! `true`) or because its `try_lock` answers `false` (Postgres). The Postgres test suite checks
//! the latter strictly (`adapters/postgres/tests/postgres.rs`).

use serde_json::Value;

use crate::coordinator::records::{AgentService, IdempotencyReceipt, Invocation, SessionFilter};

use super::*;

/// Every case of the Coordinator's storage, in order. The retention case drains everything
/// the sweep case leaves ended in its window, so it runs after it.
pub(super) async fn coordination(store: &dyn Store, run: &Run) {
    session_listings(store, run).await;
    live_session_counts(store, run).await;
    edge_listings(store, run).await;
    graph_sweeps(store, run).await;
    retention_of_ended_graph_rows(store, run).await;
    idempotency_receipts(store, run).await;
    receipt_purge(store, run).await;
    agent_services(store, run).await;
    invocations(store, run).await;
    overdue_invocations(store, run).await;
    try_lock_excludes_other_units(store).await;
}

// ------------------------------------------------------------------------------------------------
// Fixtures
// ------------------------------------------------------------------------------------------------

/// An instant `seconds` after 1 January of `year`'s window (1991–1994).
fn in_year(year: i64, seconds: i64) -> Timestamp {
    let start = match year {
        1991 => 662_688_000,
        1992 => 694_224_000,
        1993 => 725_846_400,
        _ => 757_382_400,
    };
    Timestamp::from_unix_micros((start + seconds) * 1_000_000)
}

/// The end of a year's window: everything the cases put in it lies before.
fn year_end(year: i64) -> Timestamp {
    in_year(year, 364 * 86_400)
}

const SECOND: i64 = 1_000;

fn object(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

fn ids_of_sessions(rows: &[AgentSession]) -> Vec<String> {
    rows.iter().map(|s| s.id.clone()).collect()
}

fn ids_of_edges(rows: &[DelegationEdge]) -> Vec<String> {
    rows.iter().map(|e| e.id.clone()).collect()
}

/// `ids` newest first, as every Coordinator listing orders them.
fn id_desc(ids: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
    ids.sort_by(|a, b| b.cmp(a));
    ids
}

/// Walks a listing page by page (`before` = the last id of a full page) with several page sizes
/// and asserts that every walk yields exactly `$expected`, that no page exceeds its limit and
/// that only the last page is short. `$fetch` uses `$before: Option<&str>` and `$limit: u32`.
macro_rules! assert_id_pages {
    ($what:expr, $expected:expr, |$before:ident, $limit:ident| $fetch:expr, $id:expr) => {{
        let expected: Vec<String> = $expected;
        for $limit in [1u32, 2, 3, 500] {
            let mut seen: Vec<String> = Vec::new();
            let mut cursor: Option<String> = None;
            for _ in 0..=expected.len() + 1 {
                let $before: Option<&str> = cursor.as_deref();
                let rows = ok($fetch.await, $what);
                assert!(
                    rows.len() <= $limit as usize,
                    "{}: a page with limit {} returned {} rows",
                    $what,
                    $limit,
                    rows.len()
                );
                let ids: Vec<String> = rows.iter().map($id).collect();
                seen.extend(ids.iter().cloned());
                match ids.last() {
                    Some(last) if ids.len() == $limit as usize => cursor = Some(last.clone()),
                    _ => break,
                }
            }
            assert_eq!(
                seen, expected,
                "{}: walking pages of {} strictly below the last id must list every row once, \
                 id DESC",
                $what, $limit
            );
        }
    }};
}

fn service_session(run: &Run, zone: &ZoneId, at: Timestamp) -> AgentSession {
    let mut s = agent_session(run, zone, at);
    s.lifecycle = Lifecycle::Service;
    s.last_heartbeat_at = Some(at);
    s.heartbeat_deadline_at = Some(at.plus_millis(120 * SECOND));
    s.lease_generation = 1;
    s
}

fn receipt(run: &Run, zone: &ZoneId, scope: &str, at: Timestamp) -> IdempotencyReceipt {
    IdempotencyReceipt {
        scope: scope.to_owned(),
        key_hash: run.text("keyhash"),
        zone_id: zone.clone(),
        request_hash: run.text("reqhash"),
        object_id: run.text("as"),
        status: 201,
        body: json!({"agent_session_id": "x", "labels": ["a", "b"], "depth": 0, "parent_id": null}),
        expires_at: at.plus_millis(3_600 * SECOND),
        created_at: at,
    }
}

fn service(run: &Run, zone: &ZoneId, app: &str, url: &str, at: Timestamp) -> AgentService {
    AgentService {
        id: run.text("svc"),
        zone_id: zone.clone(),
        application_id: app.to_owned(),
        endpoint_url: url.to_owned(),
        protocol_versions: vec!["a2a/1.0".into()],
        framework_name: None,
        framework_version: None,
        capabilities: vec![],
        health: "starting".into(),
        metadata: Map::new(),
        last_heartbeat_at: None,
        created_at: at,
        updated_at: at,
    }
}

fn invocation(run: &Run, zone: &ZoneId, at: Timestamp) -> Invocation {
    Invocation {
        id: run.text("inv"),
        zone_id: zone.clone(),
        service_id: run.text("svc"),
        source_session_id: None,
        target_session_id: None,
        invoking_application_id: run.text("app"),
        method: "summarise".into(),
        params: json!({}),
        metadata: Map::new(),
        status: "pending".into(),
        attempts: 0,
        max_attempts: 3,
        backoff_ms: 1_000,
        timeout_ms: 30_000,
        deadline_at: None,
        error_json: None,
        cancel_reason: None,
        created_at: at,
        updated_at: at,
        completed_at: None,
    }
}

async fn save_sessions(store: &dyn Store, sessions: &[&AgentSession], what: &str) {
    let mut uow = begin_all(store).await;
    for s in sessions {
        ok(uow.save_agent_session(s).await, "save_agent_session");
    }
    commit(uow, what).await;
}

async fn save_edges(store: &dyn Store, edges: &[&DelegationEdge], what: &str) {
    let mut uow = begin_all(store).await;
    for e in edges {
        ok(uow.save_delegation_edge(e).await, "save_delegation_edge");
    }
    commit(uow, what).await;
}

// ------------------------------------------------------------------------------------------------
// Session reads (A6.6) and capacity counts (A6.1)
// ------------------------------------------------------------------------------------------------

/// Session listings: `id DESC`, strictly below `before`, each filter alone and together, any
/// status; children are one level of one parent; nothing crosses a zone, and a unit scoped to
/// another zone lists nothing.
async fn session_listings(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let app_a = run.text("app");
    let app_b = run.text("app");

    let mut planner = agent_session(run, &z.id, run.at(1));
    planner.application_id = app_a.clone();
    planner.labels = vec!["planner".into()];
    let mut worker = service_session(run, &z.id, run.at(2));
    worker.application_id = app_a.clone();
    worker.labels = vec!["reader".into(), "planner".into()];
    worker.status = "suspended".into();
    let mut done = agent_session(run, &z.id, run.at(3));
    done.application_id = app_b.clone();
    done.status = "terminated".into();
    done.ended_at = Some(run.at(4));
    let mut kid_one = agent_session(run, &z.id, run.at(5));
    kid_one.application_id = app_b.clone();
    kid_one.parent_id = Some(planner.id.clone());
    kid_one.depth = 1;
    let mut kid_two = kid_one.clone();
    kid_two.id = run.text("as");
    kid_two.status = "expired".into();
    let mut grandkid = agent_session(run, &z.id, run.at(6));
    grandkid.parent_id = Some(kid_one.id.clone());
    grandkid.depth = 2;
    let mut foreign = agent_session(run, &other.id, run.at(7));
    foreign.application_id = app_a.clone();
    foreign.labels = vec!["planner".into()];
    foreign.parent_id = Some(planner.id.clone());
    save_sessions(
        store,
        &[
            &planner, &worker, &done, &kid_one, &kid_two, &grandkid, &foreign,
        ],
        "listing fixtures",
    )
    .await;

    let all = id_desc(&[
        &planner.id,
        &worker.id,
        &done.id,
        &kid_one.id,
        &kid_two.id,
        &grandkid.id,
    ]);
    let mut uow = begin_all(store).await;
    let none = SessionFilter::default();
    assert_id_pages!(
        "list_agent_sessions",
        all.clone(),
        |before, limit| uow.list_agent_sessions(&z.id, &none, before, limit),
        |s: &AgentSession| s.id.clone()
    );
    let cases: Vec<(SessionFilter, Vec<String>, &str)> = vec![
        (
            SessionFilter {
                status: Some("suspended".into()),
                ..SessionFilter::default()
            },
            vec![worker.id.clone()],
            "status",
        ),
        (
            SessionFilter {
                lifecycle: Some(Lifecycle::Service),
                ..SessionFilter::default()
            },
            vec![worker.id.clone()],
            "lifecycle service",
        ),
        (
            SessionFilter {
                lifecycle: Some(Lifecycle::Task),
                ..SessionFilter::default()
            },
            id_desc(&[
                &planner.id,
                &done.id,
                &kid_one.id,
                &kid_two.id,
                &grandkid.id,
            ]),
            "lifecycle task",
        ),
        (
            SessionFilter {
                application_id: Some(app_a.clone()),
                ..SessionFilter::default()
            },
            id_desc(&[&planner.id, &worker.id]),
            "application",
        ),
        (
            SessionFilter {
                label: Some("planner".into()),
                ..SessionFilter::default()
            },
            id_desc(&[&planner.id, &worker.id]),
            "label (any position in the labels)",
        ),
        (
            SessionFilter {
                label: Some("plan".into()),
                ..SessionFilter::default()
            },
            vec![],
            "label matches whole labels only",
        ),
        (
            SessionFilter {
                status: Some("active".into()),
                lifecycle: Some(Lifecycle::Task),
                application_id: Some(app_a.clone()),
                label: Some("planner".into()),
            },
            vec![planner.id.clone()],
            "every filter together",
        ),
        (
            SessionFilter {
                application_id: Some(app_b.clone()),
                status: Some("expired".into()),
                ..SessionFilter::default()
            },
            vec![kid_two.id.clone()],
            "application and status",
        ),
    ];
    for (filter, expected, what) in cases {
        let rows = ok(
            uow.list_agent_sessions(&z.id, &filter, None, 100).await,
            "list_agent_sessions",
        );
        assert_eq!(ids_of_sessions(&rows), expected, "filter by {what}");
    }
    let rows = ok(
        uow.list_agent_sessions(&z.id, &none, Some(&all[2]), 100)
            .await,
        "list_agent_sessions",
    );
    assert_eq!(
        ids_of_sessions(&rows),
        all[3..].to_vec(),
        "`before` starts strictly below the given id"
    );
    let rows = ok(
        uow.list_agent_sessions(&z.id, &none, None, 0).await,
        "list_agent_sessions",
    );
    assert!(rows.is_empty(), "limit 0 returns nothing");
    let first = ok(
        uow.list_agent_sessions(&z.id, &none, None, 1).await,
        "list_agent_sessions",
    );
    assert_eq!(
        first.first(),
        Some(&grandkid),
        "a listed Session round-trips"
    );

    assert_id_pages!(
        "list_child_sessions",
        id_desc(&[&kid_one.id, &kid_two.id]),
        |before, limit| uow.list_child_sessions(&z.id, &planner.id, before, limit),
        |s: &AgentSession| s.id.clone()
    );
    assert_eq!(
        ids_of_sessions(&ok(
            uow.list_child_sessions(&other.id, &planner.id, None, 100)
                .await,
            "list_child_sessions"
        )),
        vec![foreign.id.clone()],
        "children are listed within the named zone only"
    );
    assert!(
        ok(
            uow.list_child_sessions(&z.id, &grandkid.id, None, 100)
                .await,
            "list_child_sessions"
        )
        .is_empty(),
        "a leaf has no children"
    );
    let foreign_rows = ok(
        uow.list_agent_sessions(&other.id, &none, None, 100).await,
        "list_agent_sessions",
    );
    assert_eq!(
        ids_of_sessions(&foreign_rows),
        vec![foreign.id.clone()],
        "a listing names one zone and shows only its Sessions"
    );
    drop(uow);

    let mut scoped = begin(store, &ZoneScope::Zone(other.id.clone())).await;
    assert!(
        ok(
            scoped.list_agent_sessions(&z.id, &none, None, 100).await,
            "list_agent_sessions"
        )
        .is_empty(),
        "a unit scoped to another zone lists no Session of this zone"
    );
    assert!(
        ok(
            scoped
                .list_child_sessions(&z.id, &planner.id, None, 100)
                .await,
            "list_child_sessions"
        )
        .is_empty(),
        "a unit scoped to another zone lists no child of this zone"
    );
    drop(scoped);
    let mut scoped = begin(store, &ZoneScope::Zone(z.id.clone())).await;
    assert_eq!(
        ids_of_sessions(&ok(
            scoped.list_agent_sessions(&z.id, &none, None, 100).await,
            "list_agent_sessions"
        )),
        all,
        "a unit scoped to the zone lists its Sessions"
    );
}

/// Capacity liveness (A6.1): `active`/`suspended`; a service counts while suspended or while
/// its deadline is ahead; a task while `started_at + COALESCE(ttl_seconds, 3600) s` is ahead
/// (suspended or not); terminated and expired never count; boundaries are exclusive
/// (`> now`); the application filter narrows; other zones never count.
async fn live_session_counts(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let now = run.at(50_000_000);
    let app_a = run.text("app");
    let app_b = run.text("app");
    let mut rows: Vec<(AgentSession, bool)> = Vec::new();
    let task = |started: i64, ttl: Option<i64>, status: &str, app: &str| {
        let mut s = agent_session(run, &z.id, now.plus_millis(started));
        s.ttl_seconds = ttl;
        s.status = status.into();
        s.application_id = app.into();
        s
    };
    // Default TTL: live one microsecond before its hour is up, not at the hour.
    let mut almost = task(0, None, "active", &app_a);
    almost.started_at = Timestamp::from_unix_micros(now.unix_micros() - 3_600_000_000 + 1);
    rows.push((almost, true));
    rows.push((task(-3_600 * SECOND, None, "active", &app_a), false));
    rows.push((task(-9 * SECOND, Some(10), "active", &app_a), true));
    rows.push((task(-10 * SECOND, Some(10), "active", &app_a), false));
    rows.push((task(-5 * SECOND, Some(10), "suspended", &app_b), true));
    rows.push((task(-11 * SECOND, Some(10), "suspended", &app_b), false));
    rows.push((task(0, Some(60), "terminated", &app_a), false));
    rows.push((task(0, None, "expired", &app_b), false));
    let svc = |deadline: Option<i64>, status: &str, app: &str| {
        let mut s = service_session(run, &z.id, now.plus_millis(-60 * SECOND));
        s.heartbeat_deadline_at =
            deadline.map(|d| Timestamp::from_unix_micros(now.unix_micros() + d));
        s.status = status.into();
        s.application_id = app.into();
        s
    };
    rows.push((svc(Some(1), "active", &app_a), true));
    rows.push((svc(Some(0), "active", &app_a), false));
    rows.push((svc(None, "active", &app_b), false));
    rows.push((svc(Some(-3_600_000_000), "suspended", &app_b), true));
    rows.push((svc(None, "suspended", &app_a), true));
    rows.push((svc(Some(60_000_000), "terminated", &app_a), false));
    rows.push((svc(Some(60_000_000), "expired", &app_b), false));
    let mut foreign = agent_session(run, &other.id, now);
    foreign.application_id = app_a.clone();
    let refs: Vec<&AgentSession> = rows
        .iter()
        .map(|(s, _)| s)
        .chain(std::iter::once(&foreign))
        .collect();
    save_sessions(store, &refs, "liveness fixtures").await;

    let live = |app: Option<&str>| {
        rows.iter()
            .filter(|(s, live)| *live && app.is_none_or(|a| s.application_id == a))
            .count() as u64
    };
    assert_eq!(live(None), 6, "fixture sanity");
    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.count_live_agent_sessions(&z.id, None, now).await,
            "count_live_agent_sessions"
        ),
        live(None),
        "live Sessions of the zone"
    );
    for app in [&app_a, &app_b] {
        assert_eq!(
            ok(
                uow.count_live_agent_sessions(&z.id, Some(app), now).await,
                "count_live_agent_sessions"
            ),
            live(Some(app)),
            "live Sessions of one application"
        );
        assert_eq!(
            ok(
                uow.count_live_agent_sessions_split(&z.id, app, now).await,
                "count_live_agent_sessions_split"
            ),
            (live(None), live(Some(app))),
            "the zone's and one application's live Sessions in one read"
        );
    }
    assert_eq!(
        ok(
            uow.count_live_agent_sessions_split(&z.id, "no-such-app", now)
                .await,
            "count_live_agent_sessions_split"
        ),
        (live(None), 0),
        "the split count of an application without Sessions"
    );
    assert_eq!(
        ok(
            uow.count_live_agent_sessions(&z.id, Some("no-such-app"), now)
                .await,
            "count_live_agent_sessions"
        ),
        0,
        "an application without Sessions"
    );
    assert_eq!(
        ok(
            uow.count_live_agent_sessions(&other.id, Some(&app_a), now)
                .await,
            "count_live_agent_sessions"
        ),
        1,
        "another zone counts its own Sessions only"
    );
    assert_eq!(
        ok(
            uow.count_live_agent_sessions(&z.id, None, now.plus_millis(-120 * SECOND))
                .await,
            "count_live_agent_sessions"
        ),
        // The six open tasks all end after `now - 120 s`; of the open services, the two
        // active ones with a deadline and the two suspended ones.
        10,
        "two minutes earlier every open Session with a lifetime ahead was live"
    );
    drop(uow);
    let mut scoped = begin(store, &ZoneScope::Zone(other.id.clone())).await;
    assert_eq!(
        ok(
            scoped.count_live_agent_sessions(&z.id, None, now).await,
            "count_live_agent_sessions"
        ),
        0,
        "a unit scoped to another zone counts nothing of this zone"
    );
}

// ------------------------------------------------------------------------------------------------
// Edge reads (A8.4)
// ------------------------------------------------------------------------------------------------

/// Edges by target, by source, by parent, the zone's live edges, and the active edges touching
/// a set of Sessions: each of any status unless it says otherwise, `id DESC`, zone-confined.
async fn edge_listings(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let now = run.at(60_000_000);
    let (hub, left, right) = (run.text("as"), run.text("as"), run.text("as"));
    let edge = |source: &str, target: &str, status: &str, expires_in: i64| {
        let mut e = delegation_edge(run, &z.id, now);
        e.source_session_id = source.into();
        e.target_session_id = target.into();
        e.status = status.into();
        e.expires_at = Timestamp::from_unix_micros(now.unix_micros() + expires_in);
        if status == "revoked" {
            e.revoked_at = Some(now);
        }
        e
    };
    let in_one = edge(&left, &hub, "active", 60_000_000);
    let in_two = edge(&right, &hub, "revoked", 60_000_000);
    let in_three = edge(&left, &hub, "expired", -1);
    let mut out_one = edge(&hub, &left, "active", 1);
    out_one.parent_edge_id = Some(in_one.id.clone());
    let mut out_two = edge(&hub, &right, "active", 0);
    out_two.parent_edge_id = Some(in_one.id.clone());
    let mut out_three = edge(&hub, &right, "revoked", 60_000_000);
    out_three.parent_edge_id = Some(in_two.id.clone());
    let stale = edge(&left, &right, "active", -60_000_000);
    let unrelated = edge(&run.text("as"), &run.text("as"), "active", 60_000_000);
    let mut foreign = delegation_edge(run, &other.id, now);
    foreign.source_session_id = hub.clone();
    foreign.target_session_id = hub.clone();
    foreign.parent_edge_id = Some(in_one.id.clone());
    foreign.expires_at = now.plus_millis(60 * SECOND);
    save_edges(
        store,
        &[
            &in_one, &in_two, &in_three, &out_one, &out_two, &out_three, &stale, &unrelated,
            &foreign,
        ],
        "edge fixtures",
    )
    .await;

    let mut uow = begin_all(store).await;
    assert_id_pages!(
        "list_edges_by_target",
        id_desc(&[&in_one.id, &in_two.id, &in_three.id]),
        |before, limit| uow.list_edges_by_target(&z.id, &hub, before, limit),
        |e: &DelegationEdge| e.id.clone()
    );
    assert_id_pages!(
        "list_edges_by_source",
        id_desc(&[&out_one.id, &out_two.id, &out_three.id]),
        |before, limit| uow.list_edges_by_source(&z.id, &hub, before, limit),
        |e: &DelegationEdge| e.id.clone()
    );
    assert_id_pages!(
        "list_active_edges",
        id_desc(&[&in_one.id, &out_one.id, &unrelated.id]),
        |before, limit| uow.list_active_edges(&z.id, now, before, limit),
        |e: &DelegationEdge| e.id.clone()
    );
    let by_parent = ok(
        uow.list_edges_by_parent(&z.id, &in_one.id).await,
        "list_edges_by_parent",
    );
    assert_eq!(
        ids_of_edges(&by_parent),
        id_desc(&[&out_one.id, &out_two.id]),
        "edges narrowing one edge, any status, within the zone"
    );
    assert_eq!(
        by_parent.first(),
        Some(if out_one.id > out_two.id {
            &out_one
        } else {
            &out_two
        }),
        "a listed edge round-trips"
    );
    let touching = ok(
        uow.active_edges_touching(&z.id, &[left.clone(), run.text("as")])
            .await,
        "active_edges_touching",
    );
    assert_eq!(
        ids_of_edges(&touching),
        id_desc(&[&in_one.id, &out_one.id, &stale.id]),
        "active edges with the Session at either end, expired by time or not"
    );
    let touching = ok(
        uow.active_edges_touching(&z.id, &[left.clone(), right.clone()])
            .await,
        "active_edges_touching",
    );
    assert_eq!(
        ids_of_edges(&touching),
        id_desc(&[&in_one.id, &out_one.id, &out_two.id, &stale.id]),
        "each edge once, whichever of its ends matched"
    );
    assert!(
        ok(
            uow.active_edges_touching(&z.id, &[]).await,
            "active_edges_touching"
        )
        .is_empty(),
        "no Sessions, no edges"
    );
    assert_eq!(
        ids_of_edges(&ok(
            uow.list_edges_by_target(&other.id, &hub, None, 100).await,
            "list_edges_by_target"
        )),
        vec![foreign.id.clone()],
        "another zone's listing shows its own edges only"
    );
    drop(uow);

    let mut scoped = begin(store, &ZoneScope::Zone(other.id.clone())).await;
    assert!(
        ok(
            scoped.list_edges_by_target(&z.id, &hub, None, 100).await,
            "list_edges_by_target"
        )
        .is_empty(),
        "a unit scoped to another zone: no inbound edges"
    );
    assert!(
        ok(
            scoped.list_edges_by_source(&z.id, &hub, None, 100).await,
            "list_edges_by_source"
        )
        .is_empty(),
        "a unit scoped to another zone: no outbound edges"
    );
    assert!(
        ok(
            scoped.list_edges_by_parent(&z.id, &in_one.id).await,
            "list_edges_by_parent"
        )
        .is_empty(),
        "a unit scoped to another zone: no narrowed edges"
    );
    assert!(
        ok(
            scoped.list_active_edges(&z.id, now, None, 100).await,
            "list_active_edges"
        )
        .is_empty(),
        "a unit scoped to another zone: no live edges"
    );
    assert!(
        ok(
            scoped
                .active_edges_touching(&z.id, std::slice::from_ref(&hub))
                .await,
            "active_edges_touching"
        )
        .is_empty(),
        "a unit scoped to another zone: no touching edges"
    );
}

// ------------------------------------------------------------------------------------------------
// Sweeps (A11)
// ------------------------------------------------------------------------------------------------

/// Ends every open Session and edge a previous run left due in the 1991 window, so the sweep
/// case sees its own rows only. (They end in the window, and the retention case then purges
/// them.)
async fn drain_sweep_window(store: &dyn Store) {
    let end = year_end(1991);
    for _ in 0..1_000 {
        let mut uow = begin_all(store).await;
        let mut left = ok(uow.due_task_sessions(end, 500).await, "drain due");
        left.extend(ok(
            uow.lapsed_service_sessions(end, 500).await,
            "drain lapsed",
        ));
        let edges = ok(uow.lapsed_active_edges(end, 500).await, "drain edges");
        if left.is_empty() && edges.is_empty() {
            return;
        }
        for mut s in left {
            s.status = "terminated".into();
            s.ended_at = Some(end);
            ok(uow.save_agent_session(&s).await, "drain save_agent_session");
        }
        for mut e in edges {
            e.status = "expired".into();
            ok(
                uow.save_delegation_edge(&e).await,
                "drain save_delegation_edge",
            );
        }
        commit(uow, "drain the sweep window").await;
    }
    panic!("the sweep window never drained");
}

/// Due task Sessions, lapsed service Sessions and lapsed edges: `<= now` selects, one
/// microsecond later does not; oldest due first (by the due instant, not the id or the start);
/// `limit` caps; every zone under `ZoneScope::All`, one zone under a zone scope.
async fn graph_sweeps(store: &dyn Store, run: &Run) {
    drain_sweep_window(store).await;
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let now = in_year(1991, 86_400);
    let task = |zone: &ZoneId, started_before: i64, ttl: Option<i64>, status: &str| {
        let mut s = agent_session(run, zone, now.plus_millis(-started_before));
        s.ttl_seconds = ttl;
        s.status = status.into();
        s
    };
    // Due at `now` exactly (default TTL), due 50 s ago although started later, due in 1 µs.
    let at_hour = task(&z.id, 3_600 * SECOND, None, "active");
    let early = task(&z.id, 100 * SECOND, Some(50), "suspended");
    let mut not_yet = task(&z.id, 60 * SECOND, Some(60), "active");
    not_yet.started_at = Timestamp::from_unix_micros(now.unix_micros() - 60_000_000 + 1);
    let ended = task(&z.id, 7_200 * SECOND, Some(60), "terminated");
    let gone = task(&z.id, 7_200 * SECOND, Some(60), "expired");
    let foreign_task = task(&other.id, 30 * SECOND, Some(10), "active");
    let mut service_past = service_session(run, &z.id, now.plus_millis(-600 * SECOND));
    service_past.heartbeat_deadline_at = Some(now.plus_millis(-SECOND));
    let mut service_now = service_session(run, &z.id, now.plus_millis(-600 * SECOND));
    service_now.heartbeat_deadline_at = Some(now);
    let mut service_later = service_session(run, &z.id, now.plus_millis(-600 * SECOND));
    service_later.heartbeat_deadline_at = Some(Timestamp::from_unix_micros(now.unix_micros() + 1));
    let mut service_suspended = service_session(run, &z.id, now.plus_millis(-600 * SECOND));
    service_suspended.heartbeat_deadline_at = Some(now.plus_millis(-300 * SECOND));
    service_suspended.status = "suspended".into();
    let mut service_unleased = service_session(run, &z.id, now.plus_millis(-600 * SECOND));
    service_unleased.heartbeat_deadline_at = None;
    let mut service_foreign = service_session(run, &other.id, now.plus_millis(-600 * SECOND));
    service_foreign.heartbeat_deadline_at = Some(now.plus_millis(-2 * SECOND));
    save_sessions(
        store,
        &[
            &at_hour,
            &early,
            &not_yet,
            &ended,
            &gone,
            &foreign_task,
            &service_past,
            &service_now,
            &service_later,
            &service_suspended,
            &service_unleased,
            &service_foreign,
        ],
        "sweep Sessions",
    )
    .await;

    let edge = |zone: &ZoneId, expires: Timestamp, status: &str| {
        let mut e = delegation_edge(run, zone, now.plus_millis(-3_600 * SECOND));
        e.expires_at = expires;
        e.status = status.into();
        e
    };
    let edge_now = edge(&z.id, now, "active");
    let edge_past = edge(&z.id, now.plus_millis(-5 * SECOND), "active");
    let edge_later = edge(
        &z.id,
        Timestamp::from_unix_micros(now.unix_micros() + 1),
        "active",
    );
    let edge_revoked = edge(&z.id, now.plus_millis(-9 * SECOND), "revoked");
    let edge_foreign = edge(&other.id, now.plus_millis(-SECOND), "active");
    save_edges(
        store,
        &[
            &edge_now,
            &edge_past,
            &edge_later,
            &edge_revoked,
            &edge_foreign,
        ],
        "sweep edges",
    )
    .await;

    let mut uow = begin_all(store).await;
    let due = ok(uow.due_task_sessions(now, 500).await, "due_task_sessions");
    assert_eq!(
        ids_of_sessions(&due),
        vec![
            early.id.clone(),
            foreign_task.id.clone(),
            at_hour.id.clone()
        ],
        "open task Sessions due at or before now, every zone, oldest due first"
    );
    assert_eq!(due.first(), Some(&early), "a swept Session round-trips");
    assert_eq!(
        ids_of_sessions(&ok(
            uow.due_task_sessions(now, 2).await,
            "due_task_sessions"
        )),
        vec![early.id.clone(), foreign_task.id.clone()],
        "the limit keeps the oldest due"
    );
    assert_eq!(
        ids_of_sessions(&ok(
            uow.due_task_sessions(Timestamp::from_unix_micros(now.unix_micros() + 1), 500)
                .await,
            "due_task_sessions"
        )),
        vec![
            early.id.clone(),
            foreign_task.id.clone(),
            at_hour.id.clone(),
            not_yet.id.clone()
        ],
        "one microsecond later the next task is due"
    );
    assert_eq!(
        ids_of_sessions(&ok(
            uow.lapsed_service_sessions(now, 500).await,
            "lapsed_service_sessions"
        )),
        vec![
            service_foreign.id.clone(),
            service_past.id.clone(),
            service_now.id.clone()
        ],
        "active service Sessions whose deadline is at or before now, oldest deadline first"
    );
    assert_eq!(
        ids_of_sessions(&ok(
            uow.lapsed_service_sessions(now, 1).await,
            "lapsed_service_sessions"
        )),
        vec![service_foreign.id.clone()],
        "the limit keeps the oldest deadline"
    );
    assert_eq!(
        ids_of_edges(&ok(
            uow.lapsed_active_edges(now, 500).await,
            "lapsed_active_edges"
        )),
        vec![
            edge_past.id.clone(),
            edge_foreign.id.clone(),
            edge_now.id.clone()
        ],
        "active edges expiring at or before now, oldest expiry first"
    );
    assert_eq!(
        ids_of_edges(&ok(
            uow.lapsed_active_edges(now, 1).await,
            "lapsed_active_edges"
        )),
        vec![edge_past.id.clone()],
        "the limit keeps the oldest expiry"
    );
    drop(uow);

    let mut scoped = begin(store, &ZoneScope::Zone(other.id.clone())).await;
    assert_eq!(
        ids_of_sessions(&ok(
            scoped.due_task_sessions(now, 500).await,
            "due_task_sessions"
        )),
        vec![foreign_task.id.clone()],
        "a zone-scoped sweep sees its zone only"
    );
    assert_eq!(
        ids_of_sessions(&ok(
            scoped.lapsed_service_sessions(now, 500).await,
            "lapsed_service_sessions"
        )),
        vec![service_foreign.id.clone()],
        "a zone-scoped lease sweep sees its zone only"
    );
    assert_eq!(
        ids_of_edges(&ok(
            scoped.lapsed_active_edges(now, 500).await,
            "lapsed_active_edges"
        )),
        vec![edge_foreign.id.clone()],
        "a zone-scoped edge sweep sees its zone only"
    );
    drop(scoped);
    // Leave the window drained for the next run and for the retention case.
    drain_sweep_window(store).await;
}

// ------------------------------------------------------------------------------------------------
// Retention of ended graph rows (A11)
// ------------------------------------------------------------------------------------------------

/// Purges everything purgeable at the end of the 1992 window (including what the sweep case
/// ended in 1991), so the retention case counts its own rows only.
async fn drain_retention_window(store: &dyn Store) {
    for _ in 0..1_000 {
        let mut uow = begin_all(store).await;
        let purged = ok(
            uow.purge_ended_graph(year_end(1992), 500).await,
            "drain purge_ended_graph",
        );
        commit(uow, "drain the retention window").await;
        if purged == (0, 0) {
            return;
        }
    }
    panic!("the retention window never drained");
}

/// Purges until nothing more goes, returning the totals.
async fn purge_all(store: &dyn Store, scope: &ZoneScope, cutoff: Timestamp) -> (u64, u64) {
    let mut total = (0, 0);
    for _ in 0..100 {
        let mut uow = begin(store, scope).await;
        let (edges, sessions) = ok(
            uow.purge_ended_graph(cutoff, 500).await,
            "purge_ended_graph",
        );
        commit(uow, "purge").await;
        if (edges, sessions) == (0, 0) {
            return total;
        }
        total = (total.0 + edges, total.1 + sessions);
    }
    panic!("purge_ended_graph never finished");
}

/// `purge_ended_graph` deletes revoked/expired edges that ended (`COALESCE(revoked_at,
/// expires_at)`) strictly before the cutoff and terminated/expired Sessions that ended strictly
/// before it, oldest end first, at most `limit` of each, never a row another row still names as
/// its parent, never an open row, never another zone's row under a zone scope.
async fn retention_of_ended_graph_rows(store: &dyn Store, run: &Run) {
    drain_retention_window(store).await;
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let cutoff = in_year(1992, 86_400);
    let before = |s: i64| cutoff.plus_millis(-s * SECOND);
    let mut gone: Vec<String> = Vec::new();

    let edge = |zone: &ZoneId, status: &str, expires: Timestamp, revoked: Option<Timestamp>| {
        let mut e = delegation_edge(run, zone, before(7_200));
        e.status = status.into();
        e.expires_at = expires;
        e.revoked_at = revoked;
        e
    };
    let e_old = edge(&z.id, "revoked", before(-60), Some(before(2)));
    let e_revoked = edge(&z.id, "revoked", before(-86_400), Some(before(1)));
    let e_at_cutoff = edge(&z.id, "expired", cutoff, None);
    let e_recent = edge(&z.id, "revoked", before(-60), Some(before(-1)));
    let e_open = edge(&z.id, "active", before(5), None);
    let e_parent = edge(&z.id, "expired", before(3), None);
    let mut e_kid = edge(&z.id, "active", before(-86_400), None);
    e_kid.parent_edge_id = Some(e_parent.id.clone());
    let e_foreign = edge(&other.id, "expired", before(9), None);
    save_edges(
        store,
        &[
            &e_old,
            &e_revoked,
            &e_at_cutoff,
            &e_recent,
            &e_open,
            &e_parent,
            &e_kid,
            &e_foreign,
        ],
        "retention edges",
    )
    .await;

    let session = |zone: &ZoneId, status: &str, ended: Option<Timestamp>| {
        let mut s = agent_session(run, zone, before(7_200));
        s.status = status.into();
        s.ended_at = ended;
        s
    };
    let s_old = session(&z.id, "terminated", Some(before(2)));
    let s_expired = session(&z.id, "expired", Some(before(1)));
    let s_at_cutoff = session(&z.id, "terminated", Some(cutoff));
    let s_recent = session(&z.id, "terminated", Some(before(-1)));
    let s_open = session(&z.id, "active", None);
    let s_unstamped = session(&z.id, "terminated", None);
    let s_parent = session(&z.id, "terminated", Some(before(3)));
    let mut s_kid = session(&z.id, "active", None);
    s_kid.parent_id = Some(s_parent.id.clone());
    let s_foreign = session(&other.id, "expired", Some(before(9)));
    save_sessions(
        store,
        &[
            &s_old,
            &s_expired,
            &s_at_cutoff,
            &s_recent,
            &s_open,
            &s_unstamped,
            &s_parent,
            &s_kid,
            &s_foreign,
        ],
        "retention Sessions",
    )
    .await;

    // An empty zone's unit purges nothing of this zone.
    let empty = committed_zone(store, run).await;
    let mut scoped = begin(store, &ZoneScope::Zone(empty.id.clone())).await;
    assert_eq!(
        ok(
            scoped.purge_ended_graph(cutoff, 500).await,
            "purge_ended_graph"
        ),
        (0, 0),
        "a unit scoped to another zone purges nothing here"
    );
    commit(scoped, "empty purge").await;

    let zone_scope = ZoneScope::Zone(z.id.clone());
    let mut uow = begin(store, &zone_scope).await;
    assert_eq!(
        ok(uow.purge_ended_graph(cutoff, 1).await, "purge_ended_graph"),
        (1, 1),
        "the limit caps each kind"
    );
    commit(uow, "purge one of each").await;
    let mut uow = begin_all(store).await;
    for (id, expect, what) in [
        (
            &e_old.id,
            false,
            "the oldest unreferenced ended edge goes first",
        ),
        (&e_revoked.id, true, "the next one waits for the next pass"),
        (&e_parent.id, true, "an edge another edge narrows stays"),
    ] {
        assert_eq!(
            ok(
                uow.get_delegation_edge(&z.id, id).await,
                "get_delegation_edge"
            )
            .is_some(),
            expect,
            "{what}"
        );
    }
    for (id, expect, what) in [
        (
            &s_old.id,
            false,
            "the oldest childless ended Session goes first",
        ),
        (&s_expired.id, true, "the next one waits for the next pass"),
        (
            &s_parent.id,
            true,
            "a Session another Session names as parent stays",
        ),
    ] {
        assert_eq!(
            ok(uow.get_agent_session(&z.id, id).await, "get_agent_session").is_some(),
            expect,
            "{what}"
        );
    }
    drop(uow);
    gone.push(e_old.id.clone());
    gone.push(s_old.id.clone());

    assert_eq!(
        purge_all(store, &zone_scope, cutoff).await,
        (1, 1),
        "then only the other ended row of each kind goes"
    );
    gone.push(e_revoked.id.clone());
    gone.push(s_expired.id.clone());

    let mut uow = begin_all(store).await;
    for e in [
        &e_at_cutoff,
        &e_recent,
        &e_open,
        &e_parent,
        &e_kid,
        &e_foreign,
    ] {
        assert!(
            ok(
                uow.get_delegation_edge(&e.zone_id, &e.id).await,
                "get_delegation_edge"
            )
            .is_some(),
            "kept: ended at or after the cutoff, open, still narrowed, or another zone's ({})",
            e.id
        );
    }
    for s in [
        &s_at_cutoff,
        &s_recent,
        &s_open,
        &s_unstamped,
        &s_parent,
        &s_kid,
        &s_foreign,
    ] {
        assert!(
            ok(
                uow.get_agent_session(&s.zone_id, &s.id).await,
                "get_agent_session"
            )
            .is_some(),
            "kept: ended at or after the cutoff, open, unstamped, still a parent, or another \
             zone's ({})",
            s.id
        );
    }
    for id in &gone {
        assert!(
            ok(
                uow.get_delegation_edge(&z.id, id).await,
                "get_delegation_edge"
            )
            .is_none()
                && ok(uow.get_agent_session(&z.id, id).await, "get_agent_session").is_none(),
            "purged rows are gone ({id})"
        );
    }
    drop(uow);

    // Once the children end long enough ago, their parents follow them.
    let mut kid = e_kid.clone();
    kid.status = "revoked".into();
    kid.revoked_at = Some(before(1));
    let mut skid = s_kid.clone();
    skid.status = "terminated".into();
    skid.ended_at = Some(before(1));
    let mut uow = begin_all(store).await;
    ok(uow.save_delegation_edge(&kid).await, "save_delegation_edge");
    ok(uow.save_agent_session(&skid).await, "save_agent_session");
    commit(uow, "end the children").await;
    assert_eq!(
        purge_all(store, &zone_scope, cutoff).await,
        (2, 2),
        "a child and then its parent go, within passes"
    );
    assert_eq!(
        purge_all(store, &ZoneScope::All, cutoff).await,
        (1, 1),
        "an unscoped purge reaches the other zone's rows"
    );
}

// ------------------------------------------------------------------------------------------------
// Idempotency receipts (A7)
// ------------------------------------------------------------------------------------------------

/// A receipt round-trips; it reads as missing from the instant it expires; live receipts of a
/// scope are counted; a second insert of a live key is `Conflict("idempotency_receipts_key")`
/// and changes nothing; an expired key is replaced; nothing crosses a unit's zone scope.
async fn idempotency_receipts(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let now = run.at(70_000_000);
    let scope = format!("session.start.v2:{}:{}", z.id, run.text("app"));
    let first = receipt(run, &z.id, &scope, now);
    let mut second = receipt(run, &z.id, &scope, now);
    second.status = 200;
    second.body = json!([1, "two", {"three": 3.5}]);
    second.expires_at = now.plus_millis(10 * SECOND);
    let elsewhere = receipt(run, &z.id, &format!("{scope}:other"), now);

    let mut uow = begin_all(store).await;
    for r in [&first, &second, &elsewhere] {
        ok(
            uow.insert_idempotency_receipt(r, now).await,
            "insert_idempotency_receipt",
        );
    }
    commit(uow, "receipts").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.get_idempotency_receipt(&scope, &first.key_hash, now)
                .await,
            "get_idempotency_receipt"
        ),
        Some(first.clone()),
        "a receipt round-trips every field"
    );
    assert_eq!(
        ok(
            uow.get_idempotency_receipt(&scope, &second.key_hash, now)
                .await,
            "get_idempotency_receipt"
        ),
        Some(second.clone()),
        "any JSON body round-trips"
    );
    assert_eq!(
        ok(
            uow.get_idempotency_receipt(&scope, &elsewhere.key_hash, now)
                .await,
            "get_idempotency_receipt"
        ),
        None,
        "a key is looked up within its scope"
    );
    assert_eq!(
        ok(
            uow.get_idempotency_receipt(&scope, &second.key_hash, second.expires_at)
                .await,
            "get_idempotency_receipt"
        ),
        None,
        "a receipt reads as missing from the instant it expires"
    );
    assert_eq!(
        ok(
            uow.count_idempotency_receipts(&scope, now).await,
            "count_idempotency_receipts"
        ),
        2,
        "live receipts of the scope"
    );
    assert_eq!(
        ok(
            uow.count_idempotency_receipts(&scope, second.expires_at)
                .await,
            "count_idempotency_receipts"
        ),
        1,
        "expired receipts are not counted"
    );
    assert_eq!(
        ok(
            uow.count_idempotency_receipts(&run.text("scope"), now)
                .await,
            "count_idempotency_receipts"
        ),
        0,
        "an unused scope"
    );

    let mut clash = receipt(run, &z.id, &scope, now);
    clash.key_hash = first.key_hash.clone();
    assert_conflict(
        uow.insert_idempotency_receipt(&clash, now.plus_millis(SECOND))
            .await,
        "idempotency_receipts_key",
        "a live key cannot be stored again",
    );
    assert_eq!(
        ok(
            uow.get_idempotency_receipt(&scope, &first.key_hash, now)
                .await,
            "get_idempotency_receipt after the conflict"
        ),
        Some(first.clone()),
        "the conflict changed nothing, and the unit of work is still usable"
    );
    let mut renewed = receipt(run, &z.id, &scope, second.expires_at);
    renewed.key_hash = second.key_hash.clone();
    ok(
        uow.insert_idempotency_receipt(&renewed, second.expires_at)
            .await,
        "insert over an expired receipt",
    );
    commit(uow, "replace an expired receipt").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.get_idempotency_receipt(&scope, &second.key_hash, second.expires_at)
                .await,
            "get_idempotency_receipt"
        ),
        Some(renewed),
        "an expired receipt is replaced by a new insert of its key"
    );
    drop(uow);

    let mut scoped = begin(store, &ZoneScope::Zone(other.id.clone())).await;
    assert_eq!(
        ok(
            scoped
                .get_idempotency_receipt(&scope, &first.key_hash, now)
                .await,
            "get_idempotency_receipt"
        ),
        None,
        "a unit scoped to another zone cannot read the receipt"
    );
    assert_eq!(
        ok(
            scoped.count_idempotency_receipts(&scope, now).await,
            "count_idempotency_receipts"
        ),
        0,
        "a unit scoped to another zone counts no receipt of this zone"
    );
    assert!(
        scoped
            .insert_idempotency_receipt(&receipt(run, &z.id, &scope, now), now)
            .await
            .is_err(),
        "a unit scoped to another zone cannot write a receipt into this zone"
    );
}

/// `purge_idempotency_receipts` deletes receipts expired at `now` (`expires_at <= now`),
/// oldest expiry first, at most `limit`, and keeps live ones.
async fn receipt_purge(store: &dyn Store, run: &Run) {
    let end = year_end(1993);
    for _ in 0..1_000 {
        let mut uow = begin_all(store).await;
        let purged = ok(
            uow.purge_idempotency_receipts(end, 500).await,
            "drain purge_idempotency_receipts",
        );
        commit(uow, "drain the receipt window").await;
        if purged == 0 {
            break;
        }
    }
    let z = committed_zone(store, run).await;
    let now = in_year(1993, 86_400);
    let scope = format!("delegation.create.v2:{}:{}", z.id, run.text("app"));
    let expiring = |seconds: i64| {
        let mut r = receipt(run, &z.id, &scope, in_year(1993, 0));
        r.expires_at = now.plus_millis(seconds * SECOND);
        r
    };
    let (oldest, older, at_now, live) = (expiring(-2), expiring(-1), expiring(0), expiring(1));
    let mut uow = begin_all(store).await;
    for r in [&live, &at_now, &older, &oldest] {
        ok(
            uow.insert_idempotency_receipt(r, in_year(1993, 0)).await,
            "insert_idempotency_receipt",
        );
    }
    commit(uow, "receipts to purge").await;

    let long_ago = in_year(1993, 0);
    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.purge_idempotency_receipts(now, 2).await,
            "purge_idempotency_receipts"
        ),
        2,
        "the limit caps the purge"
    );
    commit(uow, "purge two").await;
    let mut uow = begin_all(store).await;
    for (r, expect, what) in [
        (&oldest, false, "the oldest expiry goes first"),
        (&older, false, "then the next"),
        (&at_now, true, "the rest waits for the next pass"),
    ] {
        assert_eq!(
            ok(
                uow.get_idempotency_receipt(&scope, &r.key_hash, long_ago)
                    .await,
                "get_idempotency_receipt"
            )
            .is_some(),
            expect,
            "{what}"
        );
    }
    assert_eq!(
        ok(
            uow.purge_idempotency_receipts(now, 500).await,
            "purge_idempotency_receipts"
        ),
        1,
        "a receipt expiring exactly now is expired"
    );
    commit(uow, "purge the rest").await;
    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.get_idempotency_receipt(&scope, &live.key_hash, long_ago)
                .await,
            "get_idempotency_receipt"
        ),
        Some(live),
        "a live receipt is kept"
    );
    assert_eq!(
        ok(
            uow.get_idempotency_receipt(&scope, &at_now.key_hash, long_ago)
                .await,
            "get_idempotency_receipt"
        ),
        None,
        "the receipt expired at now is gone"
    );
}

// ------------------------------------------------------------------------------------------------
// Agent services and invocations (A9)
// ------------------------------------------------------------------------------------------------

/// Services round-trip, upsert by id, are unique per `(zone, application, endpoint_url)`
/// (`Conflict("agent_services_endpoint")`), are found by that triple, list `id DESC`, and never
/// cross a zone.
async fn agent_services(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let now = run.at(80_000_000);
    let (app, app_two) = (run.text("app"), run.text("app"));
    let url = "https://agents.example.com/a2a";
    let bare = service(run, &z.id, &app, url, now);
    let mut full = service(run, &z.id, &app, "https://agents.example.com/other", now);
    full.protocol_versions = vec!["a2a/1.0".into(), "mcp/2025-06-18".into()];
    full.framework_name = Some("langgraph".into());
    full.framework_version = Some("0.2.1".into());
    full.capabilities = vec!["search".into(), "summarise".into()];
    full.health = "degraded".into();
    full.metadata = object(json!({"region": "eu", "nested": {"n": [1, 2]}}));
    full.last_heartbeat_at = Some(now.plus_millis(1));
    full.updated_at = now.plus_millis(2);
    let same_url_other_app = service(run, &z.id, &app_two, url, now);
    let same_url_other_zone = service(run, &other.id, &app, url, now);

    let mut uow = begin_all(store).await;
    for s in [&bare, &full, &same_url_other_app, &same_url_other_zone] {
        ok(uow.save_agent_service(s).await, "save_agent_service");
    }
    let twin = service(run, &z.id, &app, url, now);
    assert_conflict(
        uow.save_agent_service(&twin).await,
        "agent_services_endpoint",
        "one service per (zone, application, endpoint)",
    );
    commit(uow, "services").await;

    let mut uow = begin_all(store).await;
    for s in [&bare, &full] {
        assert_eq!(
            ok(
                uow.get_agent_service(&z.id, &s.id).await,
                "get_agent_service"
            ),
            Some(s.clone()),
            "a service round-trips every field"
        );
        assert_eq!(
            ok(
                uow.get_agent_service(&other.id, &s.id).await,
                "get_agent_service"
            ),
            None,
            "a service of another zone reads as missing"
        );
    }
    assert_eq!(
        ok(
            uow.get_agent_service(&z.id, &twin.id).await,
            "get_agent_service"
        ),
        None,
        "the refused twin was not written"
    );
    assert_eq!(
        ok(
            uow.find_agent_service(&z.id, &app, url).await,
            "find_agent_service"
        ),
        Some(bare.clone()),
        "found by (zone, application, endpoint)"
    );
    assert_eq!(
        ok(
            uow.find_agent_service(&z.id, &app_two, url).await,
            "find_agent_service"
        ),
        Some(same_url_other_app.clone()),
        "the same endpoint under another application is another service"
    );
    assert_eq!(
        ok(
            uow.find_agent_service(&other.id, &app, url).await,
            "find_agent_service"
        ),
        Some(same_url_other_zone.clone()),
        "the same endpoint in another zone is another service"
    );
    for (zone, app, url, what) in [
        (
            &z.id,
            app.as_str(),
            "https://agents.example.com/a2a/",
            "a different URL",
        ),
        (&z.id, "no-such-app", url, "a different application"),
    ] {
        assert_eq!(
            ok(
                uow.find_agent_service(zone, app, url).await,
                "find_agent_service"
            ),
            None,
            "nothing under {what}"
        );
    }
    assert_id_pages!(
        "list_agent_services",
        id_desc(&[&bare.id, &full.id, &same_url_other_app.id]),
        |before, limit| uow.list_agent_services(&z.id, before, limit),
        |s: &AgentService| s.id.clone()
    );

    let mut healthy = bare.clone();
    healthy.health = "healthy".into();
    healthy.metadata = object(json!({"load": 0.5}));
    healthy.last_heartbeat_at = Some(now.plus_millis(10));
    healthy.updated_at = now.plus_millis(10);
    ok(
        uow.save_agent_service(&healthy).await,
        "save_agent_service again",
    );
    let mut cleared = full.clone();
    cleared.framework_name = None;
    cleared.framework_version = None;
    cleared.last_heartbeat_at = None;
    ok(
        uow.save_agent_service(&cleared).await,
        "save_agent_service cleared",
    );
    commit(uow, "service upserts").await;
    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.find_agent_service(&z.id, &app, url).await,
            "find_agent_service"
        ),
        Some(healthy),
        "saving a service again replaces it"
    );
    assert_eq!(
        ok(
            uow.get_agent_service(&z.id, &full.id).await,
            "get_agent_service"
        ),
        Some(cleared),
        "saving None clears optional fields"
    );
    drop(uow);

    let mut scoped = begin(store, &ZoneScope::Zone(other.id.clone())).await;
    assert_eq!(
        ok(
            scoped.get_agent_service(&z.id, &bare.id).await,
            "get_agent_service"
        ),
        None,
        "a unit scoped to another zone cannot read the service"
    );
    assert_eq!(
        ok(
            scoped.find_agent_service(&z.id, &app, url).await,
            "find_agent_service"
        ),
        None,
        "a unit scoped to another zone cannot find the service"
    );
    assert!(
        ok(
            scoped.list_agent_services(&z.id, None, 100).await,
            "list_agent_services"
        )
        .is_empty(),
        "a unit scoped to another zone lists no service of this zone"
    );
    assert!(
        scoped
            .save_agent_service(&service(run, &z.id, &app, "https://x.example", now))
            .await
            .is_err(),
        "a unit scoped to another zone cannot write a service into this zone"
    );
}

/// Invocations round-trip every field (any JSON `params`), upsert by id, list `id DESC`, and
/// never cross a zone.
async fn invocations(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let now = run.at(90_000_000);
    let bare = invocation(run, &z.id, now);
    let mut full = invocation(run, &z.id, now);
    full.source_session_id = Some(run.text("as"));
    full.target_session_id = Some(run.text("as"));
    full.params = json!(["positional", 2, {"deep": [null, true]}]);
    full.metadata = object(json!({"trace": "abc"}));
    full.status = "failed".into();
    full.attempts = 2;
    full.max_attempts = 10;
    full.backoff_ms = 300_000;
    full.timeout_ms = 900_000;
    full.deadline_at = Some(now.plus_millis(1));
    full.error_json = Some(json!({"reason": "deadline_exceeded"}));
    full.cancel_reason = Some("operator".into());
    full.updated_at = now.plus_millis(2);
    full.completed_at = Some(now.plus_millis(3));
    let mut scalar = invocation(run, &z.id, now);
    scalar.params = json!("just a string");
    let foreign = invocation(run, &other.id, now);

    let mut uow = begin_all(store).await;
    for i in [&bare, &full, &scalar, &foreign] {
        ok(uow.save_invocation(i).await, "save_invocation");
    }
    commit(uow, "invocations").await;

    let mut uow = begin_all(store).await;
    for i in [&bare, &full, &scalar] {
        assert_eq!(
            ok(uow.get_invocation(&z.id, &i.id).await, "get_invocation"),
            Some(i.clone()),
            "an invocation round-trips every field"
        );
        assert_eq!(
            ok(uow.get_invocation(&other.id, &i.id).await, "get_invocation"),
            None,
            "an invocation of another zone reads as missing"
        );
    }
    assert_id_pages!(
        "list_invocations",
        id_desc(&[&bare.id, &full.id, &scalar.id]),
        |before, limit| uow.list_invocations(&z.id, before, limit),
        |i: &Invocation| i.id.clone()
    );
    let mut running = bare.clone();
    running.status = "running".into();
    running.attempts = 1;
    running.deadline_at = Some(now.plus_millis(30 * SECOND));
    running.updated_at = now.plus_millis(5);
    ok(uow.save_invocation(&running).await, "save_invocation again");
    let mut cleared = full.clone();
    cleared.source_session_id = None;
    cleared.target_session_id = None;
    cleared.deadline_at = None;
    cleared.error_json = None;
    cleared.cancel_reason = None;
    cleared.completed_at = None;
    ok(
        uow.save_invocation(&cleared).await,
        "save_invocation cleared",
    );
    commit(uow, "invocation upserts").await;
    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.get_invocation(&z.id, &bare.id).await, "get_invocation"),
        Some(running),
        "saving an invocation again replaces it"
    );
    assert_eq!(
        ok(uow.get_invocation(&z.id, &full.id).await, "get_invocation"),
        Some(cleared),
        "saving None clears optional fields"
    );
    drop(uow);

    let mut scoped = begin(store, &ZoneScope::Zone(other.id.clone())).await;
    assert_eq!(
        ok(
            scoped.get_invocation(&z.id, &bare.id).await,
            "get_invocation"
        ),
        None,
        "a unit scoped to another zone cannot read the invocation"
    );
    assert!(
        ok(
            scoped.list_invocations(&z.id, None, 100).await,
            "list_invocations"
        )
        .is_empty(),
        "a unit scoped to another zone lists no invocation of this zone"
    );
    assert!(
        scoped
            .save_invocation(&invocation(run, &z.id, now))
            .await
            .is_err(),
        "a unit scoped to another zone cannot write an invocation into this zone"
    );
}

/// `overdue_invocations`: `running` with `deadline_at <= now`, oldest deadline first, `limit`
/// caps, every zone the scope allows.
async fn overdue_invocations(store: &dyn Store, run: &Run) {
    let end = year_end(1994);
    for _ in 0..1_000 {
        let mut uow = begin_all(store).await;
        let overdue = ok(uow.overdue_invocations(end, 500).await, "drain overdue");
        if overdue.is_empty() {
            break;
        }
        for mut i in overdue {
            i.status = "timed_out".into();
            ok(uow.save_invocation(&i).await, "drain save_invocation");
        }
        commit(uow, "drain the deadline window").await;
    }
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let now = in_year(1994, 86_400);
    let with = |zone: &ZoneId, status: &str, deadline: Option<Timestamp>| {
        let mut i = invocation(run, zone, in_year(1994, 0));
        i.status = status.into();
        i.deadline_at = deadline;
        i
    };
    let at_now = with(&z.id, "running", Some(now));
    let past = with(&z.id, "running", Some(now.plus_millis(-SECOND)));
    let later = with(
        &z.id,
        "running",
        Some(Timestamp::from_unix_micros(now.unix_micros() + 1)),
    );
    let cancelling = with(&z.id, "cancel_requested", Some(now.plus_millis(-SECOND)));
    let pending = with(&z.id, "pending", Some(now.plus_millis(-SECOND)));
    let undated = with(&z.id, "running", None);
    let foreign = with(&other.id, "running", Some(now.plus_millis(-2 * SECOND)));
    let mut uow = begin_all(store).await;
    for i in [
        &at_now,
        &past,
        &later,
        &cancelling,
        &pending,
        &undated,
        &foreign,
    ] {
        ok(uow.save_invocation(i).await, "save_invocation");
    }
    commit(uow, "deadline fixtures").await;

    let ids = |rows: Vec<Invocation>| rows.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let mut uow = begin_all(store).await;
    assert_eq!(
        ids(ok(
            uow.overdue_invocations(now, 500).await,
            "overdue_invocations"
        )),
        vec![foreign.id.clone(), past.id.clone(), at_now.id.clone()],
        "running invocations past their deadline, every zone, oldest deadline first"
    );
    assert_eq!(
        ids(ok(
            uow.overdue_invocations(now, 2).await,
            "overdue_invocations"
        )),
        vec![foreign.id.clone(), past.id.clone()],
        "the limit keeps the oldest deadlines"
    );
    drop(uow);
    let mut scoped = begin(store, &ZoneScope::Zone(z.id.clone())).await;
    assert_eq!(
        ids(ok(
            scoped.overdue_invocations(now, 500).await,
            "overdue_invocations"
        )),
        vec![past.id.clone(), at_now.id.clone()],
        "a zone-scoped enforcer sees its zone only"
    );
    drop(scoped);
    let mut uow = begin_all(store).await;
    for mut i in [at_now, past, foreign] {
        i.status = "timed_out".into();
        ok(uow.save_invocation(&i).await, "save_invocation");
    }
    commit(uow, "leave the deadline window drained").await;
}

// ------------------------------------------------------------------------------------------------
// try_lock
// ------------------------------------------------------------------------------------------------

/// `try_lock` takes a free lock; while a unit holds it no other unit gets it (the second either
/// cannot begin yet or is told `false`, never both holding); after the holder commits a new
/// unit takes it; a unit that holds a lock may try it again. (Release on rollback is not
/// asserted here: a Postgres unit dropped without commit rolls back on a spawned task, so the
/// release is not synchronous with the drop.)
async fn try_lock_excludes_other_units(store: &dyn Store) {
    let name = format!("contract-try-lock-{}", std::process::id());
    let mut holder = begin_all(store).await;
    assert!(
        ok(holder.try_lock(&name).await, "try_lock"),
        "a free lock is taken"
    );
    assert!(
        ok(holder.try_lock(&name).await, "try_lock again"),
        "the holder may take its own lock again"
    );
    let contender = tokio::time::timeout(std::time::Duration::from_millis(300), async {
        let mut other = begin_all(store).await;
        ok(other.try_lock(&name).await, "contending try_lock")
    })
    .await;
    assert!(
        !matches!(contender, Ok(true)),
        "no other unit takes the lock while it is held"
    );
    commit(holder, "release the lock").await;

    let mut next = begin_all(store).await;
    assert!(
        ok(next.try_lock(&name).await, "try_lock after release"),
        "the lock is free again once its holder committed"
    );
    commit(next, "release again").await;
}
