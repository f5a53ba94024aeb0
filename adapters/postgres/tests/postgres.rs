//! The Postgres adapter against a real server: the shared store and outbox-queue contracts, plus
//! what only Postgres can show (migrations, row-level security, privileges, pool hygiene).
//!
//! Each test creates its own database (see `support`) so tests run in parallel and leave
//! nothing behind. Without a reachable server they skip, except under `CI`, where they fail.

mod support;

use std::time::Duration;

use caracal_core::attribution::Attribution;
use caracal_core::ids::{ApplicationId, ZoneId};
use caracal_core::model::{AdminAuditRecord, Application, RegistrationMethod, Zone};
use caracal_core::ports::store::{Store, ZoneScope};
use caracal_core::time::Timestamp;
use caracal_core::StoreError;
use caracal_postgres::{migrate, PgStore};
use diesel::sql_types::BigInt;
use diesel::QueryableByName;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use support::TestDb;

fn at(micros: i64) -> Timestamp {
    Timestamp::from_unix_micros(1_790_000_000_000_000 + micros)
}

fn zone(id: &str) -> Zone {
    Zone {
        id: ZoneId::parse(id).expect("zone id"),
        name: id.into(),
        slug: id.into(),
        dcr_enabled: false,
        operator_coauthor_badge: false,
        operator_governed: false,
        attr: Attribution::created("admin:test", false, at(0)),
        archived_at: None,
    }
}

fn app(zone: &Zone, id: &str) -> Application {
    Application {
        id: ApplicationId::parse(id).expect("app id"),
        zone_id: zone.id.clone(),
        name: id.into(),
        registration_method: RegistrationMethod::Managed,
        traits: vec![],
        client_secret_hash: None,
        expires_at: None,
        attr: Attribution::created("admin:test", false, at(1)),
        archived_at: None,
    }
}

fn audit_record(zone: Option<&str>, id: &str) -> AdminAuditRecord {
    AdminAuditRecord {
        id: id.into(),
        request_id: "req".into(),
        actor_id: None,
        actor_name: None,
        actor_scope: None,
        action: "POST /v1/zones".into(),
        method: "POST".into(),
        path: "/v1/zones".into(),
        zone_id: zone.map(str::to_owned),
        entity_type: None,
        entity_id: None,
        status_code: 201,
        payload_json: serde_json::json!({}),
        occurred_at: at(2),
        content_sha256: "c".into(),
        prev_content_sha256: None,
        chain_seq: 1,
        chain_hmac: None,
    }
}

/// Two zones and one application in each, committed by a global unit of work.
async fn two_zones_with_apps(store: &PgStore) -> (Zone, Zone, Application, Application) {
    let (za, zb) = (zone("zone-a"), zone("zone-b"));
    let (aa, ab) = (app(&za, "app-a"), app(&zb, "app-b"));
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.save_zone(&za).await.expect("save zone a");
    uow.save_zone(&zb).await.expect("save zone b");
    uow.save_application(&aa).await.expect("save app a");
    uow.save_application(&ab).await.expect("save app b");
    uow.commit().await.expect("commit");
    (za, zb, aa, ab)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_contract() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url, 4).expect("pool");
    caracal_core::contract::store::run_store_contract(&store).await;
    // A second run on the same store must not trip over the first one's rows (the sweep and
    // retention cases drain their windows first).
    caracal_core::contract::store::run_store_contract(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_queue_contract() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url, 4).expect("pool");
    caracal_core::contract::store::run_outbox_queue_contract(&store, &store).await;
    // A second run on the same store must not trip over the first one's rows.
    caracal_core::contract::store::run_outbox_queue_contract(&store, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // `create` already applied the baseline; running again applies nothing.
    let again = migrate(&db.url).await.expect("second migrate");
    assert!(
        again.is_empty(),
        "a current schema gets no migration, got {again:?}"
    );
    let third = migrate(&db.url).await.expect("third migrate");
    assert!(third.is_empty(), "still nothing to apply, got {third:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rls_confines_a_zone_scoped_unit_even_when_the_query_names_another_zone() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url, 2).expect("pool");
    let (za, zb, _, ab) = two_zones_with_apps(&store).await;

    let mut uow = store
        .begin(&ZoneScope::Zone(za.id.clone()))
        .await
        .expect("begin");
    assert_eq!(
        uow.get_application(&zb.id, &ab.id).await.expect("get"),
        None,
        "RLS hides zone B from a unit scoped to zone A, though the query filters on zone B"
    );
    drop(uow);
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    assert_eq!(
        uow.get_application(&zb.id, &ab.id).await.expect("get"),
        Some(ab)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_role_without_a_zone_setting_sees_nothing() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url, 2).expect("pool");
    two_zones_with_apps(&store).await;

    let mut raw = AsyncPgConnection::establish(&db.url)
        .await
        .expect("raw connection");
    let count = |sql: &'static str| diesel::sql_query(sql);
    let total: Count = count("SELECT count(*) AS n FROM applications")
        .get_result(&mut raw)
        .await
        .expect("count as owner");
    assert_eq!(total.n, 2, "the owner (no RLS) sees both rows");

    raw.batch_execute("SET ROLE caracal_app")
        .await
        .expect("SET ROLE");
    let unset: Count = count("SELECT count(*) AS n FROM applications")
        .get_result(&mut raw)
        .await
        .expect("count as caracal_app");
    assert_eq!(
        unset.n, 0,
        "caracal.zone_id never set: fail closed, no rows"
    );

    raw.batch_execute("SELECT set_config('caracal.zone_id', '', false)")
        .await
        .expect("set ''");
    let empty: Count = count("SELECT count(*) AS n FROM applications")
        .get_result(&mut raw)
        .await
        .expect("count with empty zone");
    assert_eq!(empty.n, 0, "an empty caracal.zone_id matches no row");

    raw.batch_execute("SELECT set_config('caracal.zone_id', 'zone-a', false)")
        .await
        .expect("set zone-a");
    let scoped: Count = count("SELECT count(*) AS n FROM applications")
        .get_result(&mut raw)
        .await
        .expect("count in zone-a");
    assert_eq!(scoped.n, 1, "a zone setting shows that zone's rows only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_role_cannot_rewrite_the_admin_audit_log() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url, 2).expect("pool");
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.append_admin_audit(&audit_record(None, "audit-1"))
        .await
        .expect("append as caracal_app");
    uow.commit().await.expect("commit");

    let mut raw = AsyncPgConnection::establish(&db.url)
        .await
        .expect("raw connection");
    raw.batch_execute("SET ROLE caracal_app; SELECT set_config('caracal.zone_id', '*', false)")
        .await
        .expect("become caracal_app with every zone visible");
    for statement in [
        "UPDATE admin_audit_events SET status_code = 500",
        "DELETE FROM admin_audit_events",
    ] {
        let err = diesel::sql_query(statement)
            .execute(&mut raw)
            .await
            .expect_err("the audit log is append-only for the app role");
        assert!(
            err.to_string().contains("permission denied"),
            "{statement}: expected a permission error, got {err}"
        );
    }
    let rows: Count = diesel::sql_query("SELECT count(*) AS n FROM admin_audit_events")
        .get_result(&mut raw)
        .await
        .expect("count");
    assert_eq!(rows.n, 1, "the record is still there");
}

/// Dropped units of work roll back, release their locks at once, and never hand an open
/// transaction to the next borrower, even after many more drops than the pool has connections
/// and when a drop interrupts a statement mid-flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_units_of_work_do_not_poison_the_pool() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    const POOL: usize = 2;
    let store = PgStore::connect(&db.url, POOL).expect("pool");
    let home = zone("home");
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.save_zone(&home).await.expect("save zone");
    uow.commit().await.expect("commit");

    for n in 0..(2 * POOL + 2) {
        let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
        uow.save_application(&app(&home, &format!("dropped-{n}")))
            .await
            .expect("save");
        // Take the chain lock too: a leaked transaction would keep it.
        uow.last_admin_audit(Some("home"))
            .await
            .expect("last_admin_audit");
        drop(uow);

        let mut check = tokio::time::timeout(
            Duration::from_secs(10),
            store.begin(&ZoneScope::Zone(home.id.clone())),
        )
        .await
        .expect("a connection is available again after a drop")
        .expect("begin");
        let app_id = ApplicationId::parse(&format!("dropped-{n}")).expect("id");
        assert_eq!(
            check.get_application(&home.id, &app_id).await.expect("get"),
            None,
            "an uncommitted write of a dropped unit of work is not visible"
        );
        tokio::time::timeout(
            Duration::from_secs(10),
            check.last_admin_audit(Some("home")),
        )
        .await
        .expect("the dropped unit released the chain lock")
        .expect("last_admin_audit");
        check.commit().await.expect("commit of a read-only unit");
    }

    // The dropped unit's locks must go at once, not when its connection is next borrowed: here
    // nobody borrows again while an already-open unit waits for the lock.
    let mut waiting = store.begin(&ZoneScope::All).await.expect("begin");
    let mut dropped = store.begin(&ZoneScope::All).await.expect("begin");
    dropped
        .last_admin_audit(Some("home"))
        .await
        .expect("take the lock");
    drop(dropped);
    tokio::time::timeout(
        Duration::from_secs(10),
        waiting.last_admin_audit(Some("home")),
    )
    .await
    .expect("a dropped unit of work releases its locks without waiting for the pool")
    .expect("last_admin_audit");
    waiting.commit().await.expect("commit");

    // A statement cut off mid-flight: the second unit waits on the chain lock the first holds,
    // and its future is dropped by a timeout.
    let mut holder = store.begin(&ZoneScope::All).await.expect("begin");
    holder
        .last_admin_audit(Some("home"))
        .await
        .expect("take the lock");
    let mut waiter = store.begin(&ZoneScope::All).await.expect("begin");
    let cut = tokio::time::timeout(
        Duration::from_millis(200),
        waiter.last_admin_audit(Some("home")),
    )
    .await;
    assert!(
        cut.is_err(),
        "the waiter blocks behind the holder's advisory lock"
    );
    drop(waiter);
    holder
        .append_admin_audit(&audit_record(Some("home"), "after-cut"))
        .await
        .expect("append");
    holder.commit().await.expect("commit");

    for _ in 0..(2 * POOL) {
        let mut uow = tokio::time::timeout(Duration::from_secs(10), store.begin(&ZoneScope::All))
            .await
            .expect("the pool still hands out connections")
            .expect("begin");
        let last = uow
            .last_admin_audit(Some("home"))
            .await
            .expect("last_admin_audit");
        assert_eq!(last.map(|r| r.id), Some("after-cut".to_owned()));
        uow.commit().await.expect("commit");
    }
    store.ping().await.expect("ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_leaves_the_unit_of_work_usable() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url, 2).expect("pool");
    let (za, _, aa, _) = two_zones_with_apps(&store).await;
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    let mut twin = app(&za, "app-twin");
    twin.name = aa.name.to_uppercase();
    match uow.save_application(&twin).await {
        Err(StoreError::Conflict(rule)) => assert_eq!(rule, "applications_active_managed_name"),
        other => panic!("expected a name conflict, got {other:?}"),
    }
    let other = app(&za, "app-other");
    uow.save_application(&other)
        .await
        .expect("the transaction is not aborted by the conflict");
    uow.commit().await.expect("commit");
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    assert_eq!(
        uow.get_application(&za.id, &other.id).await.expect("get"),
        Some(other)
    );
}

/// A unit that waived write recovery (`abandon_on_write_error`) still reports a refused write
/// as its typed conflict, then refuses everything after it, commit included, and writes
/// nothing: no savepoint means no half-applied unit can ever commit.
#[tokio::test]
async fn an_abandoned_unit_reports_the_conflict_and_commits_nothing() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url, 2).expect("pool");
    let (za, _, aa, _) = two_zones_with_apps(&store).await;
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.abandon_on_write_error();
    let before = app(&za, "app-before");
    uow.save_application(&before)
        .await
        .expect("a write before the refused one");
    let mut twin = app(&za, "app-twin");
    twin.name = aa.name.to_uppercase();
    match uow.save_application(&twin).await {
        Err(StoreError::Conflict(rule)) => assert_eq!(rule, "applications_active_managed_name"),
        other => panic!("expected a name conflict, got {other:?}"),
    }
    match uow.get_application(&za.id, &before.id).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("an abandoned unit must refuse further reads, got {other:?}"),
    }
    match uow.commit().await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("an abandoned unit must not commit, got {other:?}"),
    }
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    assert_eq!(
        uow.get_application(&za.id, &before.id).await.expect("get"),
        None,
        "nothing of the abandoned unit was written"
    );
    drop(uow);
    // The connection went back to the pool clean: both pool slots still work.
    for _ in 0..4 {
        let mut uow = store
            .begin(&ZoneScope::All)
            .await
            .expect("begin after abandon");
        uow.get_application(&za.id, &aa.id)
            .await
            .expect("a pooled connection after an abandoned unit");
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_not_a_panic() {
    let store = PgStore::connect("postgres://postgres@127.0.0.1:1/nowhere", 1).expect("pool");
    match store.ping().await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    match store.begin(&ZoneScope::All).await {
        Err(StoreError::Unavailable(_)) => {}
        Err(other) => panic!("expected Unavailable, got {other:?}"),
        Ok(_) => panic!("begin cannot succeed without a server"),
    }
}

/// An approval decision notifies `caracal_approval_decided` with the hold id at commit, the
/// channel upstream's long-poll waiters listen on; issuing or consuming a hold does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_decisions_notify_waiters_at_commit() {
    use caracal_core::approval::{ApprovalHold, ApproverClass, PrivacyMode, HUMAN_APPROVAL};
    use futures_util::StreamExt;

    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url, 2).expect("pool");
    let (za, _, _, _) = two_zones_with_apps(&store).await;
    let hold = |id: &str| ApprovalHold {
        id: id.into(),
        zone_id: za.id.clone(),
        session_id: String::new(),
        principal_id: "app-a".into(),
        application_id: Some("app-a".into()),
        approval_type: HUMAN_APPROVAL.into(),
        tier: "high".into(),
        approver_class: ApproverClass::Operator,
        privacy_mode: PrivacyMode::Identified,
        subject_anchor: None,
        binding: "b".repeat(64),
        metadata_json: serde_json::Map::new(),
        decision_reason: None,
        created_at: at(10),
        expires_at: at(3_600_000_000),
        satisfied_at: None,
        rejected_at: None,
        consumed_at: None,
        approver_subject_id: None,
        approver_session_id: None,
        consumed_authority_record_id: None,
    };
    let mut listener = AsyncPgConnection::establish(&db.url)
        .await
        .expect("listener connection");
    listener
        .batch_execute("LISTEN caracal_approval_decided")
        .await
        .expect("LISTEN");

    let (first, mut second) = (hold("hold-1"), hold("hold-2"));
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.save_approval(&first).await.expect("issue first");
    uow.save_approval(&second).await.expect("issue second");
    uow.commit().await.expect("commit issuance");

    second.satisfied_at = Some(at(20));
    second.approver_subject_id = Some("admin:tok".into());
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.save_approval(&second).await.expect("decide second");
    uow.commit().await.expect("commit decision");
    second.consumed_at = Some(at(30));
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.save_approval(&second).await.expect("consume second");
    uow.commit().await.expect("commit consumption");
    let mut rejected = first.clone();
    rejected.rejected_at = Some(at(40));
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.save_approval(&rejected).await.expect("reject first");
    drop(uow);
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.save_approval(&rejected).await.expect("reject first");
    uow.commit().await.expect("commit rejection");

    let mut notifications = std::pin::pin!(listener.notifications_stream());
    let mut received = Vec::new();
    while received.len() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(10), notifications.next())
            .await
            .expect("a notification within 10 s")
            .expect("stream open")
            .expect("notification");
        received.push((n.channel, n.payload));
    }
    assert_eq!(
        received[0],
        ("caracal_approval_decided".to_owned(), "hold-2".to_owned()),
        "issuance does not notify; the approval does"
    );
    assert_eq!(
        received[1].1, "hold-1",
        "the consumption and the rolled-back rejection did not notify; the committed one did"
    );
}

/// `try_lock` never waits: while one unit holds the lock (taken by `try_lock` or by `lock`,
/// which share `hashtext(name)`), another unit's `try_lock` answers `false` at once; after the
/// holder commits, or rolls back, it answers `true`. (The memory store serialises whole units,
/// so its `try_lock` always answers `true`; the shared contract asks only for exclusion.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn try_lock_answers_false_while_another_unit_holds_the_lock() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url, 4).expect("pool");
    let name = "coordinator:ttl_sweep";

    let mut holder = store.begin(&ZoneScope::All).await.expect("begin holder");
    assert!(holder.try_lock(name).await.expect("try_lock"), "free lock");
    let mut contender = store.begin(&ZoneScope::All).await.expect("begin contender");
    let answer = tokio::time::timeout(Duration::from_secs(2), contender.try_lock(name))
        .await
        .expect("try_lock never waits for the holder")
        .expect("try_lock");
    assert!(!answer, "another unit holds the lock");
    assert!(
        contender
            .try_lock("coordinator:lease_sweep")
            .await
            .expect("try_lock"),
        "a different name is a different lock"
    );
    contender.commit().await.expect("commit contender");
    holder.commit().await.expect("commit holder");

    let mut next = store.begin(&ZoneScope::All).await.expect("begin next");
    assert!(
        next.try_lock(name).await.expect("try_lock"),
        "the holder's commit released the lock"
    );
    next.commit().await.expect("commit next");

    // `lock` and `try_lock` exclude each other.
    let mut blocking = store.begin(&ZoneScope::All).await.expect("begin");
    blocking.lock(name).await.expect("lock");
    let mut trying = store.begin(&ZoneScope::All).await.expect("begin");
    assert!(
        !trying.try_lock(name).await.expect("try_lock"),
        "a lock taken with `lock` is held for `try_lock` too"
    );
    drop(trying);
    drop(blocking);

    // A rolled-back holder releases the lock (on the drop's rollback task, so poll briefly).
    let mut released = false;
    for _ in 0..100 {
        let mut probe = store.begin(&ZoneScope::All).await.expect("begin probe");
        if probe.try_lock(name).await.expect("try_lock") {
            probe.commit().await.expect("commit probe");
            released = true;
            break;
        }
        drop(probe);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(released, "a dropped holder's rollback released the lock");
}

/// Every query the Coordinator's storage adds is index-backed at a realistic shape (thousands
/// of ended Sessions, edges, invocations, receipts and services; a few live ones), under
/// row-level security as `caracal_app`: after all of them ran, not one sequential scan touched
/// those tables. (A partial index serves a query only when the query's own predicate implies the
/// index's, which is why the adapter spells those statuses as literals.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_queries_never_scan_whole_tables() {
    use caracal_core::coordinator::records::SessionFilter;

    let Some(db) = TestDb::create().await else {
        return;
    };
    // One connection: its statistics reach the collector when it closes (the store's drop).
    let store = PgStore::connect(&db.url, 1).expect("pool");
    let (za, _, _, _) = two_zones_with_apps(&store).await;
    let mut raw = AsyncPgConnection::establish(&db.url)
        .await
        .expect("raw connection");
    // The bulk belongs to another zone (as most rows do in a shared database) and has ended;
    // the zone under test holds a few rows of each kind, some open.
    raw.batch_execute(
        "INSERT INTO agent_sessions
             SELECT 'as-' || lpad(g::text, 6, '0'), CASE WHEN g <= 20 THEN 'zone-a' ELSE 'zone-b' END,
                    'app-a', 'ar', NULL,
                    CASE WHEN g % 2 = 0 THEN 'task' ELSE 'service' END, '{}', 'terminated', 0,
                    60, now() - interval '2 hours', NULL, NULL, 0, 0, '{}', 'requested',
                    now() - interval '1 hour', now(), now()
             FROM generate_series(1, 5000) g;
         INSERT INTO agent_sessions
             SELECT 'live-' || g, 'zone-a', 'app-a', 'ar', 'as-000001',
                    CASE WHEN g % 2 = 0 THEN 'task' ELSE 'service' END, '{}', 'active', 1,
                    600, now(), now(), now() + interval '2 minutes', 1, 0, '{}', NULL, NULL,
                    now(), now()
             FROM generate_series(1, 20) g;
         INSERT INTO delegation_edges
             SELECT 'de-' || lpad(g::text, 6, '0'), CASE WHEN g <= 20 THEN 'zone-a' ELSE 'zone-b' END,
                    'as-' || lpad(g::text, 6, '0'), 'as-' || lpad((g + 1)::text, 6, '0'),
                    'app-a', 'app-a',
                    CASE WHEN g > 1 THEN 'de-' || lpad((g - 1)::text, 6, '0') END, NULL, '{}',
                    '{}', CASE WHEN g % 10 = 0 THEN 'active' ELSE 'revoked' END,
                    now() + interval '1 hour', 1,
                    CASE WHEN g % 10 = 0 THEN NULL ELSE now() - interval '1 hour' END, now()
             FROM generate_series(1, 5000) g;
         INSERT INTO invocations
             SELECT 'inv-' || g, CASE WHEN g <= 20 THEN 'zone-a' ELSE 'zone-b' END, 'svc-1',
                    NULL, NULL, 'app-a', 'm', '{}', '{}',
                    CASE WHEN g % 100 = 0 THEN 'running' ELSE 'succeeded' END, 1, 3, 1000,
                    30000, now() + interval '30 seconds', NULL, NULL, now(), now(), now()
             FROM generate_series(1, 5000) g;
         INSERT INTO idempotency_receipts
             SELECT 'scope-' || (g % 50), 'key-' || g,
                    CASE WHEN g <= 20 THEN 'zone-a' ELSE 'zone-b' END, 'rh', 'obj', 201, '{}',
                    now() + interval '1 day', now()
             FROM generate_series(1, 5000) g;
         INSERT INTO agent_services
             SELECT 'svc-' || g, CASE WHEN g <= 20 THEN 'zone-a' ELSE 'zone-b' END, 'app-a',
                    'https://s' || g || '.example', '{}', NULL, NULL, '{}', 'healthy', '{}',
                    NULL, now(), now()
             FROM generate_series(1, 5000) g;
         ANALYZE agent_sessions, delegation_edges, invocations, idempotency_receipts,
                 agent_services;",
    )
    .await
    .expect("fixture rows");
    // Building the migration's indexes scanned the tables; count from here on.
    raw.batch_execute("SELECT pg_stat_reset()")
        .await
        .expect("reset statistics");

    let now = Timestamp::from_datetime(chrono::Utc::now());
    let retention_cutoff = now.plus_millis(-90 * 86_400_000);
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    let none = SessionFilter::default();
    uow.count_live_agent_sessions(&za.id, None, now)
        .await
        .expect("count_live_agent_sessions");
    uow.count_live_agent_sessions(&za.id, Some("app-a"), now)
        .await
        .expect("count_live_agent_sessions by application");
    uow.list_agent_sessions(&za.id, &none, None, 100)
        .await
        .expect("list_agent_sessions");
    uow.list_agent_sessions(&za.id, &none, Some("as-000010"), 5)
        .await
        .expect("list_agent_sessions from a cursor");
    uow.list_child_sessions(&za.id, "as-000001", None, 100)
        .await
        .expect("list_child_sessions");
    uow.list_edges_by_target(&za.id, "as-000010", None, 100)
        .await
        .expect("list_edges_by_target");
    uow.list_edges_by_source(&za.id, "as-000010", None, 100)
        .await
        .expect("list_edges_by_source");
    uow.list_edges_by_parent(&za.id, "de-000010")
        .await
        .expect("list_edges_by_parent");
    uow.list_active_edges(&za.id, now, None, 100)
        .await
        .expect("list_active_edges");
    uow.active_edges_touching(
        &za.id,
        &["as-000010".into(), "as-000011".into(), "live-1".into()],
    )
    .await
    .expect("active_edges_touching");
    uow.due_task_sessions(now, 500)
        .await
        .expect("due_task_sessions");
    uow.lapsed_service_sessions(now, 500)
        .await
        .expect("lapsed_service_sessions");
    uow.lapsed_active_edges(now, 500)
        .await
        .expect("lapsed_active_edges");
    uow.purge_ended_graph(retention_cutoff, 500)
        .await
        .expect("purge_ended_graph");
    uow.get_idempotency_receipt("scope-7", "key-7", now)
        .await
        .expect("get_idempotency_receipt");
    uow.count_idempotency_receipts("scope-7", now)
        .await
        .expect("count_idempotency_receipts");
    uow.purge_idempotency_receipts(now, 500)
        .await
        .expect("purge_idempotency_receipts");
    uow.get_agent_service(&za.id, "svc-7")
        .await
        .expect("get_agent_service");
    uow.find_agent_service(&za.id, "app-a", "https://s7.example")
        .await
        .expect("find_agent_service");
    uow.list_agent_services(&za.id, Some("svc-15"), 100)
        .await
        .expect("list_agent_services");
    uow.get_invocation(&za.id, "inv-7")
        .await
        .expect("get_invocation");
    uow.list_invocations(&za.id, Some("inv-15"), 100)
        .await
        .expect("list_invocations");
    uow.overdue_invocations(now.plus_millis(60_000), 500)
        .await
        .expect("overdue_invocations");
    uow.commit().await.expect("commit");
    drop(store);

    #[derive(QueryableByName)]
    struct Scans {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = BigInt)]
        seq: i64,
        #[diesel(sql_type = BigInt)]
        idx: i64,
    }
    let tables = [
        "agent_sessions",
        "delegation_edges",
        "invocations",
        "idempotency_receipts",
        "agent_services",
    ];
    // Wait until the closed connection's statistics arrived: every table shows index scans.
    let mut scans: Vec<Scans> = Vec::new();
    for _ in 0..100 {
        scans = diesel::sql_query(
            "SELECT relname::text AS name, coalesce(seq_scan, 0) AS seq, \
                    coalesce(idx_scan, 0) AS idx \
             FROM pg_stat_user_tables WHERE relname = ANY($1) ORDER BY relname",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&tables[..])
        .load(&mut raw)
        .await
        .expect("table statistics");
        if scans.len() == tables.len() && scans.iter().all(|t| t.idx > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        scans.len() == tables.len() && scans.iter().all(|t| t.idx > 0),
        "statistics of every table arrived"
    );
    let scanned: Vec<(String, i64)> = scans
        .into_iter()
        .filter(|t| t.seq > 0)
        .map(|t| (t.name, t.seq))
        .collect();
    assert!(
        scanned.is_empty(),
        "sequential scans (a query without a usable index): {scanned:?}"
    );
}

/// Minted records go through pooled connections that stay pooled: one after another, a
/// thousand of them open no connection beyond the pool's two.
#[tokio::test]
async fn minted_records_reuse_pooled_connections() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url, 2).expect("pool");
    let (za, _, _, _) = two_zones_with_apps(&store).await;
    let sessions = || async {
        let mut conn = AsyncPgConnection::establish(&db.url)
            .await
            .expect("connect");
        let row: Count = diesel::sql_query(
            "SELECT sessions AS n FROM pg_stat_database WHERE datname = current_database()",
        )
        .get_result(&mut conn)
        .await
        .expect("sessions");
        row.n
    };
    let mut record = caracal_core::authority::AuthorityRecord {
        id: String::new(),
        zone_id: za.id.clone(),
        session_type: caracal_core::authority::SessionType::Application,
        subject_id: "app-a".into(),
        client_id: "app-a".into(),
        parent_id: None,
        status: caracal_core::authority::RecordStatus::Active,
        expires_at: at(600),
        authenticated_at: at(1),
        claims_json: None,
        revoked_at: None,
        revoked_reason: None,
        created_at: at(1),
    };
    record.id = "warm".into();
    store.insert_minted_record(&record).await.expect("insert");
    let before = sessions().await;
    for i in 0..1000 {
        record.id = format!("rec-{i}");
        store.insert_minted_record(&record).await.expect("insert");
    }
    let after = sessions().await;
    assert!(after - before <= 2, "{before} -> {after} sessions");
}

fn session(zone: &Zone, id: &str) -> caracal_core::authority::AgentSession {
    caracal_core::authority::AgentSession {
        id: id.to_owned(),
        zone_id: zone.id.clone(),
        application_id: "app-a".into(),
        subject_session_id: "anchor".into(),
        parent_id: None,
        lifecycle: caracal_core::authority::Lifecycle::Task,
        labels: vec![],
        status: "active".into(),
        depth: 0,
        ttl_seconds: Some(600),
        started_at: at(1),
        last_heartbeat_at: None,
        heartbeat_deadline_at: None,
        lease_generation: 0,
        child_count: 0,
        metadata: serde_json::Map::new(),
        status_reason: None,
        ended_at: None,
        created_at: at(1),
        updated_at: at(1),
    }
}

/// An abandoned (unguarded) unit holds its Session writes and locks back and sends them with
/// its next statement or its COMMIT. They still apply in order before that statement (a read
/// sees them; a deferred lock is held), and a refused one is reported by that statement or by
/// the commit, with nothing of the unit written.
#[tokio::test]
async fn deferred_writes_apply_in_order_and_refusals_surface_later() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url, 4).expect("pool");
    let (za, zb, _, _) = two_zones_with_apps(&store).await;
    let scope_a = ZoneScope::Zone(za.id.clone());

    // Read-your-writes and a held lock.
    let mut uow = store.begin(&scope_a).await.expect("begin");
    uow.abandon_on_write_error();
    uow.lock("deferred:test").await.expect("deferred lock");
    uow.save_agent_session(&session(&za, "s-1"))
        .await
        .expect("deferred save");
    let mut first = session(&za, "s-1");
    first.status = "terminated".into();
    uow.save_agent_session(&first).await.expect("deferred save");
    let read = uow.get_agent_session(&za.id, "s-1").await.expect("read");
    assert_eq!(
        read.map(|s| s.status),
        Some("terminated".to_owned()),
        "the read ran after both deferred writes, in order"
    );
    let mut other = store.begin(&ZoneScope::All).await.expect("begin other");
    assert!(
        !other.try_lock("deferred:test").await.expect("try_lock"),
        "the deferred lock is held once a statement carried it"
    );
    drop(other);
    uow.save_agent_session(&session(&za, "s-2"))
        .await
        .expect("deferred save");
    uow.commit().await.expect("commit carries the last write");
    let mut check = store.begin(&ZoneScope::All).await.expect("begin");
    assert!(check
        .get_agent_session(&za.id, "s-2")
        .await
        .expect("get")
        .is_some());
    drop(check);

    // A refused write (another zone's row, row-level security) surfaces at the next read.
    let mut uow = store.begin(&scope_a).await.expect("begin");
    uow.abandon_on_write_error();
    uow.save_agent_session(&session(&za, "s-3"))
        .await
        .expect("deferred save");
    uow.save_agent_session(&session(&zb, "s-foreign"))
        .await
        .expect("the refusal is not known yet");
    assert!(
        uow.get_agent_session(&za.id, "s-3").await.is_err(),
        "the statement carrying a refused write reports it"
    );
    assert!(uow.commit().await.is_err(), "a poisoned unit never commits");

    // ... or at the commit that carried it, on a fresh connection: the writes' statement is
    // still being prepared when the COMMIT is sent, and must not be overtaken by it.
    let fresh = PgStore::connect(&db.url, 1).expect("pool");
    let mut uow = fresh.begin(&scope_a).await.expect("begin");
    uow.abandon_on_write_error();
    uow.save_agent_session(&session(&za, "s-4"))
        .await
        .expect("deferred save");
    uow.save_agent_session(&session(&zb, "s-foreign-2"))
        .await
        .expect("deferred save");
    assert!(
        uow.commit().await.is_err(),
        "the commit carrying a refused write fails"
    );

    let mut check = store.begin(&ZoneScope::All).await.expect("begin");
    for (zone, id) in [
        (&za.id, "s-3"),
        (&zb.id, "s-foreign"),
        (&za.id, "s-4"),
        (&zb.id, "s-foreign-2"),
    ] {
        assert_eq!(
            check.get_agent_session(zone, id).await.expect("get"),
            None,
            "nothing of a unit with a refused write is stored ({id})"
        );
    }
    drop(check);
    // Every connection went back to the pool usable.
    for _ in 0..6 {
        let mut uow = store.begin(&scope_a).await.expect("begin");
        uow.get_agent_session(&za.id, "s-2")
            .await
            .expect("pooled connection");
    }
}

/// `pool_usage` counts the connections handed out, against the pool's size.
#[tokio::test]
async fn pool_usage_counts_connections_in_use() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = PgStore::connect(&db.url, 3).expect("pool");
    let usage = |store: &PgStore| store.pool_usage().expect("a pooling store reports usage");
    assert_eq!((usage(&store).max, usage(&store).acquired), (3, 0));
    let first = store.begin(&ZoneScope::All).await.expect("begin");
    let second = store.begin(&ZoneScope::All).await.expect("begin");
    assert_eq!(usage(&store).acquired, 2);
    assert!((usage(&store).in_use_ratio() - 2.0 / 3.0).abs() < 1e-9);
    first.commit().await.expect("commit");
    second.commit().await.expect("commit");
    assert_eq!(
        usage(&store).acquired,
        0,
        "committed units hand their connections back"
    );
}

/// A store preferring index scans keeps answering the edge lookups by index when the table was
/// analysed empty and then grew: the prepared statements' generic plans cannot settle on a
/// sequential scan (`PgStore::preferring_index_scans`).
#[tokio::test]
async fn a_table_analysed_empty_is_still_read_by_index() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    // One connection, so every lookup reuses its prepared statements; its statistics reach
    // the collector when it closes (the store's drop).
    let store = PgStore::connect(&db.url, 1)
        .expect("pool")
        .preferring_index_scans();
    let (za, _, _, _) = two_zones_with_apps(&store).await;
    let mut raw = AsyncPgConnection::establish(&db.url)
        .await
        .expect("raw connection");
    raw.batch_execute("ANALYZE delegation_edges")
        .await
        .expect("analyse the empty table");
    // Building the migrations' indexes scanned the table: count from here.
    let before = table_scans(&mut raw, "delegation_edges").await;
    let lookups = |store: PgStore, zone: ZoneId| async move {
        for _ in 0..8 {
            let mut uow = store
                .begin(&ZoneScope::Zone(zone.clone()))
                .await
                .expect("begin");
            uow.list_edges_by_target(&zone, "as-nobody", None, 500)
                .await
                .expect("edges by target");
            uow.list_edges_by_source(&zone, "as-nobody", None, 500)
                .await
                .expect("edges by source");
            uow.commit().await.expect("commit");
        }
    };
    lookups(store.clone(), za.id.clone()).await;
    raw.batch_execute(&format!(
        "INSERT INTO delegation_edges
             SELECT 'de-' || g, '{zone}', 'as-' || g, 'as-' || (g + 1), 'app-a', 'app-a', NULL,
                    NULL, '{{}}', '{{}}', 'active', now() + interval '1 hour', 0, NULL, now()
             FROM generate_series(1, 5000) g",
        zone = za.id.as_str()
    ))
    .await
    .expect("grow the table");
    lookups(store.clone(), za.id.clone()).await;
    drop(store);

    let mut after = table_scans(&mut raw, "delegation_edges").await;
    for _ in 0..50 {
        if after.idx + after.seq >= before.idx + before.seq + 32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = table_scans(&mut raw, "delegation_edges").await;
    }
    assert!(
        after.idx + after.seq >= before.idx + before.seq + 32,
        "the statistics of the 32 lookups arrived"
    );
    assert_eq!(
        after.seq - before.seq,
        0,
        "sequential scans of delegation_edges by the lookups"
    );
}

#[derive(QueryableByName)]
struct Scans {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = BigInt)]
    idx: i64,
}

/// A table's sequential and index scans so far (cumulative statistics).
async fn table_scans(raw: &mut AsyncPgConnection, table: &str) -> Scans {
    diesel::sql_query(
        "SELECT coalesce(seq_scan, 0) AS seq, coalesce(idx_scan, 0) AS idx \
         FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind::<diesel::sql_types::Text, _>(table)
    .get_result(raw)
    .await
    .expect("table statistics")
}
