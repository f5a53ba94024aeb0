//! The storage contract: what every `Store` / `OutboxQueue` adapter (in-memory, Postgres) must do
//! the same way, so a use case behaves identically whichever store it runs on.
//!
//! Entry points: [`run_store_contract`] and [`run_outbox_queue_contract`]. Both may run against
//! a store that already holds data (another run, another test): every fixture gets a fresh id
//! from a per-run prefix, each list case works inside its own fresh zone, and the outbox queue
//! case works in a window of instants (1990) that no real row uses, draining it first.
//!
//! Requirements on the adapter under test: units of work are used one at a time, except in the
//! admin-audit chain case, which runs two concurrently (`tokio::join!`) and expects the store to
//! serialise them (a pool of at least two connections, or a store-wide lock).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map};

use crate::attribution::Attribution;
use crate::authority::*;
use crate::error::StoreError;
use crate::ids::*;
use crate::model::*;
use crate::ports::store::*;
use crate::time::Timestamp;

// ------------------------------------------------------------------------------------------------
// Entry points
// ------------------------------------------------------------------------------------------------

/// Runs every case of the store contract against `store`, in order.
pub async fn run_store_contract(store: &dyn Store) {
    let run = Run::new();
    store.ping().await.expect("ping: a reachable store answers");
    commit_makes_writes_visible(store, &run).await;
    dropping_a_unit_of_work_discards_its_writes(store, &run).await;
    saves_are_upserts_and_round_trip_every_field(store, &run).await;
    gets_never_cross_zones(store, &run).await;
    zone_scoped_units_see_only_their_zone(store, &run).await;
    zone_lists_hide_archived_and_reserved_zones(store, &run).await;
    application_lists_and_name_lookup(store, &run).await;
    provider_lists_and_identifier_lookup(store, &run).await;
    resource_lists_lookup_and_count(store, &run).await;
    policies_and_versions(store, &run).await;
    policy_sets_and_versions(store, &run).await;
    grant_lists(store, &run).await;
    subject_issuers::subject_issuers(store, &run).await;
    admin_tokens(store, &run).await;
    admin_audit_chains(store, &run).await;
    admin_audit_appends_serialise(store, &run).await;
    outbox_enqueue_and_lookup(store, &run).await;
    secrets(store, &run).await;
    uniqueness_rules(store, &run).await;
    named_locks_serialise(store).await;
    authority_records(store, &run).await;
    relaxed_units(store, &run).await;
    units_that_read_their_caller(store, &run).await;
    agent_sessions_and_delegation_edges(store, &run).await;
    delegation_graph_epochs(store, &run).await;
    signing_keys(store, &run).await;
    authority_graph_writes_roll_back_on_drop(store, &run).await;
    approvals::approvals(store, &run).await;
    coordination::coordination(store, &run).await;
    revocation::revoked_anchors(store, &run).await;
}

/// Runs every case of the outbox-queue contract (`spec/api.md §4`). `store` and `queue` are the
/// same adapter seen through its two ports.
pub async fn run_outbox_queue_contract(store: &dyn Store, queue: &dyn OutboxQueue) {
    let run = Run::new();
    drain_window(queue).await;
    claims_only_due_unlocked_rows_and_locks_them(store, queue, &run).await;
    claim_honours_limit_and_due_order(store, queue, &run).await;
    dead_rows_are_counted_and_never_claimed(store, queue, &run).await;
    concurrent_claims_never_share_a_row(store, queue, &run).await;
    drain_window(queue).await;
}

// ------------------------------------------------------------------------------------------------
// Fixtures
// ------------------------------------------------------------------------------------------------

/// Fresh identifiers and instants for one run.
struct Run {
    prefix: String,
    counter: AtomicU64,
    now: Timestamp,
}

impl Run {
    fn new() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        // Wall-clock nanoseconds plus a process-wide counter: distinct across reruns and across
        // runs started in the same nanosecond by one process.
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let seq = RUNS.fetch_add(1, Ordering::Relaxed);
        Self {
            prefix: format!("k{since_epoch:x}{seq:x}"),
            counter: AtomicU64::new(0),
            now: Timestamp::from_unix_micros((since_epoch / 1_000) as i64),
        }
    }

    /// A fresh identifier text, lower-case `[a-z0-9-]` (so it is also a valid slug).
    fn text(&self, kind: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}-{kind}-{n:04}", self.prefix)
    }

    /// A fresh identifier parsed into its newtype.
    fn id<T>(&self, kind: &str, parse: fn(&str) -> Result<T, crate::Error>) -> T {
        parse(&self.text(kind)).expect("contract ids are valid path ids")
    }

    /// An instant `micros` after the run's start: distinct microseconds exercise the full
    /// precision both adapters must keep.
    fn at(&self, micros: i64) -> Timestamp {
        Timestamp::from_unix_micros(self.now.unix_micros() + micros)
    }
}

fn attr(at: Timestamp) -> Attribution {
    Attribution::created("admin:contract", false, at)
}

fn zone(run: &Run, at: Timestamp) -> Zone {
    let id = run.id("zone", ZoneId::parse);
    Zone {
        slug: id.to_string(),
        id,
        name: "Contract zone".into(),
        dcr_enabled: false,
        operator_coauthor_badge: false,
        operator_governed: false,
        attr: attr(at),
        archived_at: None,
    }
}

fn app(run: &Run, zone: &ZoneId, name: &str, at: Timestamp) -> Application {
    Application {
        id: run.id("app", ApplicationId::parse),
        zone_id: zone.clone(),
        name: name.into(),
        registration_method: RegistrationMethod::Managed,
        traits: vec![],
        client_secret_hash: None,
        expires_at: None,
        attr: attr(at),
        archived_at: None,
    }
}

fn provider(run: &Run, zone: &ZoneId, identifier: &str, at: Timestamp) -> Provider {
    Provider {
        id: run.id("prov", ProviderId::parse),
        zone_id: zone.clone(),
        name: "Provider".into(),
        identifier: identifier.into(),
        kind: "api_key".into(),
        config_json: Map::new(),
        secret_config_keys: vec![],
        connectivity_failed_at: None,
        attr: attr(at),
        archived_at: None,
    }
}

fn resource(run: &Run, zone: &ZoneId, identifier: &str, at: Timestamp) -> Resource {
    Resource {
        id: run.id("res", ResourceId::parse),
        zone_id: zone.clone(),
        name: "Resource".into(),
        identifier: identifier.into(),
        upstream_url: None,
        scopes: vec!["read".into()],
        credential_provider_id: None,
        operations: vec![],
        operation_enforcement: "enforced".into(),
        attr: attr(at),
        archived_at: None,
    }
}

fn policy(run: &Run, zone: &ZoneId, name: &str, at: Timestamp) -> Policy {
    Policy {
        id: run.id("pol", PolicyId::parse),
        zone_id: zone.clone(),
        name: name.into(),
        description: None,
        attr: attr(at),
        archived_at: None,
    }
}

fn policy_version(run: &Run, policy: &Policy, version: i32, at: Timestamp) -> PolicyVersion {
    PolicyVersion {
        id: run.id("pv", PolicyVersionId::parse),
        policy_id: policy.id.clone(),
        zone_id: policy.zone_id.clone(),
        version,
        content: format!("package caracal.data\napp_ids := [\"v{version}\"]\n"),
        content_sha256: format!("{version:064x}"),
        schema_version: "1".into(),
        created_by: "admin:contract".into(),
        created_via_operator: false,
        created_at: at,
        archived_at: None,
    }
}

fn policy_set(run: &Run, zone: &ZoneId, name: &str, at: Timestamp) -> PolicySet {
    PolicySet {
        id: run.id("ps", PolicySetId::parse),
        zone_id: zone.clone(),
        name: name.into(),
        description: None,
        active_version_id: None,
        attr: attr(at),
        archived_at: None,
    }
}

fn set_version(
    run: &Run,
    set: &PolicySet,
    version: i32,
    manifest: Vec<PolicyVersionId>,
    at: Timestamp,
) -> PolicySetVersion {
    PolicySetVersion {
        id: run.id("psv", PolicySetVersionId::parse),
        policy_set_id: set.id.clone(),
        zone_id: set.zone_id.clone(),
        version,
        manifest,
        manifest_sha256: format!("{version:064x}"),
        schema_version: "1".into(),
        created_by: "admin:contract".into(),
        created_via_operator: false,
        created_at: at,
    }
}

fn grant(run: &Run, app: &Application, res: &Resource, at: Timestamp) -> Grant {
    Grant {
        id: run.id("grant", GrantId::parse),
        zone_id: app.zone_id.clone(),
        application_id: app.id.clone(),
        user_id: "user-1".into(),
        resource_id: res.id.clone(),
        scopes: vec!["read".into()],
        status: "active".into(),
        attr: attr(at),
    }
}

fn token(run: &Run, zone: Option<&ZoneId>, creator: &str, at: Timestamp) -> AdminToken {
    AdminToken {
        id: run.id("tok", AdminTokenId::parse),
        name: "Contract token".into(),
        token_sha256: run.text("sha256"),
        token_hash: "argon2id$salt$hash".into(),
        scope: if zone.is_some() {
            TokenScope::Zone
        } else {
            TokenScope::Global
        },
        zone_id: zone.cloned(),
        capability: Capability::Write,
        created_by: creator.into(),
        created_at: at,
        last_used_at: None,
        revoked_at: None,
    }
}

fn audit(
    run: &Run,
    zone: Option<&str>,
    previous: Option<&AdminAuditRecord>,
    at: Timestamp,
) -> AdminAuditRecord {
    let id = run.text("audit");
    AdminAuditRecord {
        request_id: format!("req-{id}"),
        actor_id: Some("tok-1".into()),
        actor_name: Some("Contract".into()),
        actor_scope: Some("global".into()),
        action: "POST /v1/zones".into(),
        method: "POST".into(),
        path: "/v1/zones".into(),
        zone_id: zone.map(str::to_owned),
        entity_type: Some("zones".into()),
        entity_id: zone.map(str::to_owned),
        status_code: 201,
        payload_json: json!({"rls_mode": "control_plane_wildcard", "changed_fields": ["name"]}),
        occurred_at: at,
        content_sha256: format!("content-of-{id}"),
        prev_content_sha256: previous.map(|p| p.content_sha256.clone()),
        chain_seq: previous.map_or(1, |p| p.chain_seq + 1),
        chain_hmac: None,
        id,
    }
}

fn outbox(
    run: &Run,
    stream: &str,
    fields: &[(&str, &str)],
    available_at: Option<Timestamp>,
    created_at: Timestamp,
) -> OutboxMessage {
    OutboxMessage {
        id: run.id("obx", OutboxId::parse),
        stream: stream.into(),
        fields: fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        attempts: 0,
        available_at,
        locked_until: None,
        last_error: None,
        dispatched_at: None,
        request_id: None,
        created_at,
    }
}

// ------------------------------------------------------------------------------------------------
// Small helpers
// ------------------------------------------------------------------------------------------------

async fn begin(store: &dyn Store, scope: &ZoneScope) -> Box<dyn UnitOfWork> {
    store
        .begin(scope)
        .await
        .unwrap_or_else(|err| panic!("begin({scope:?}) failed: {err}"))
}

async fn begin_all(store: &dyn Store) -> Box<dyn UnitOfWork> {
    begin(store, &ZoneScope::All).await
}

async fn commit(uow: Box<dyn UnitOfWork>, what: &str) {
    uow.commit()
        .await
        .unwrap_or_else(|err| panic!("{what}: commit failed: {err}"));
}

/// Unwraps a store result with a message naming the operation.
fn ok<T>(result: Result<T, StoreError>, what: &str) -> T {
    result.unwrap_or_else(|err| panic!("{what}: unexpected store error: {err}"))
}

/// Saves a fresh zone and commits it.
async fn committed_zone(store: &dyn Store, run: &Run) -> Zone {
    let z = zone(run, run.at(0));
    let mut uow = begin_all(store).await;
    ok(uow.save_zone(&z).await, "save_zone");
    commit(uow, "save a fixture zone").await;
    z
}

fn page(limit: u32) -> Page {
    Page { limit, after: None }
}

/// Keys in list order: `(created_at DESC, id DESC)`, ids compared byte-wise.
fn sorted_keys(mut keys: Vec<(Timestamp, String)>) -> Vec<(Timestamp, String)> {
    keys.sort_by(|a, b| b.cmp(a));
    keys
}

/// Pages through a list with several page sizes and asserts that every walk yields exactly
/// `$expected` (keys in order), that no page exceeds its limit, and that only the last page is
/// short. `$fetch` is an expression using `$page: Page` that returns the store's future.
macro_rules! assert_keyset {
    ($what:expr, $expected:expr, |$page:ident| $fetch:expr, $key:expr) => {{
        let expected: Vec<(Timestamp, String)> = $expected;
        for limit in [1u32, 2, 3, 500] {
            let mut seen: Vec<(Timestamp, String)> = Vec::new();
            let mut after: Option<After> = None;
            for _ in 0..=expected.len() + 1 {
                let $page = Page {
                    limit,
                    after: after.clone(),
                };
                let rows = ok($fetch.await, $what);
                assert!(
                    rows.len() <= limit as usize,
                    "{}: a page with limit {limit} returned {} rows",
                    $what,
                    rows.len()
                );
                let keys: Vec<(Timestamp, String)> = rows.iter().map($key).collect();
                seen.extend(keys.iter().cloned());
                match keys.last() {
                    Some(last) if keys.len() == limit as usize => {
                        after = Some(After {
                            created_at: last.0,
                            id: last.1.clone(),
                        });
                    }
                    _ => break,
                }
            }
            assert_eq!(
                seen, expected,
                "{}: walking pages of {limit} with `after` must list every row once, ordered by \
                 (created_at DESC, id DESC)",
                $what
            );
        }
    }};
}

// ------------------------------------------------------------------------------------------------
// Units of work
// ------------------------------------------------------------------------------------------------

/// A committed unit of work makes all of its writes visible to later units; inside the unit,
/// its own writes are visible before the commit.
async fn commit_makes_writes_visible(store: &dyn Store, run: &Run) {
    let z = zone(run, run.at(1));
    let a = app(run, &z.id, "Visible", run.at(2));
    let message = outbox(
        run,
        &run.text("stream"),
        &[("k", "v")],
        Some(run.now),
        run.at(3),
    );

    let mut uow = begin_all(store).await;
    ok(uow.save_zone(&z).await, "save_zone");
    ok(uow.save_application(&a).await, "save_application");
    ok(uow.enqueue_outbox(&message).await, "enqueue_outbox");
    assert_eq!(
        ok(uow.get_application(&z.id, &a.id).await, "get_application"),
        Some(a.clone()),
        "a unit of work reads its own uncommitted writes"
    );
    commit(uow, "commit_makes_writes_visible").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.get_zone(&z.id).await, "get_zone"),
        Some(z.clone()),
        "committed zone"
    );
    assert_eq!(
        ok(uow.get_application(&z.id, &a.id).await, "get_application"),
        Some(a),
        "committed application"
    );
    assert_eq!(
        ok(uow.get_outbox(&message.id).await, "get_outbox"),
        Some(message),
        "an outbox row commits with the state change that enqueued it"
    );
}

/// Dropping a unit of work without `commit` discards every write (state and outbox alike), and
/// the store stays usable afterwards, however many units were abandoned.
async fn dropping_a_unit_of_work_discards_its_writes(store: &dyn Store, run: &Run) {
    let z = zone(run, run.at(1));
    let a = app(run, &z.id, "Discarded", run.at(2));
    let message = outbox(
        run,
        &run.text("stream"),
        &[("k", "v")],
        Some(run.now),
        run.at(3),
    );
    let reference = format!("zones/{}/providers/p/secretConfig", z.id);

    let mut uow = begin_all(store).await;
    ok(uow.save_zone(&z).await, "save_zone");
    ok(uow.save_application(&a).await, "save_application");
    ok(uow.enqueue_outbox(&message).await, "enqueue_outbox");
    ok(
        uow.put_secret(&SealedSecret {
            reference: reference.clone(),
            zone_id: z.id.clone(),
            envelope: vec![1, 2, 3],
            version: 1,
        })
        .await,
        "put_secret",
    );
    drop(uow);

    // Abandon more units than a small connection pool holds: none may leak a transaction.
    for n in 0..24 {
        let mut uow = begin_all(store).await;
        let extra = zone(run, run.at(100 + n));
        ok(
            uow.save_zone(&extra).await,
            "save_zone in an abandoned unit",
        );
        drop(uow);
    }

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.get_zone(&z.id).await, "get_zone"),
        None,
        "dropped zone write"
    );
    assert_eq!(
        ok(uow.get_application(&z.id, &a.id).await, "get_application"),
        None,
        "dropped application write"
    );
    assert_eq!(
        ok(uow.get_outbox(&message.id).await, "get_outbox"),
        None,
        "an outbox row enqueued by an abandoned unit of work must not exist"
    );
    assert_eq!(
        ok(uow.get_secret(&reference).await, "get_secret"),
        None,
        "dropped secret"
    );
    assert!(
        !ok(uow.zone_slug_exists(&z.slug).await, "zone_slug_exists"),
        "a dropped zone's slug is free"
    );
}

/// Every `save_*` inserts or replaces by id (saving twice leaves one row holding the second
/// values), and every field, including optional ones, JSON and microsecond instants, survives the
/// round trip unchanged.
async fn saves_are_upserts_and_round_trip_every_field(store: &dyn Store, run: &Run) {
    let mut z = zone(run, run.at(11));
    let mut a = app(run, &z.id, "Round Trip", run.at(12));
    let mut p = provider(
        run,
        &z.id,
        &format!("provider://{}", run.text("p")),
        run.at(13),
    );
    let mut r = resource(
        run,
        &z.id,
        &format!("resource://{}", run.text("r")),
        run.at(14),
    );
    let mut pol = policy(run, &z.id, &run.text("policy"), run.at(15));
    let mut pv = policy_version(run, &pol, 1, run.at(16));
    let mut set = policy_set(run, &z.id, &run.text("set"), run.at(17));
    let sv = set_version(run, &set, 1, vec![pv.id.clone()], run.at(18));
    let mut g = grant(run, &a, &r, run.at(19));
    let creator = run.text("creator");
    let mut t = token(run, Some(&z.id), &creator, run.at(20));

    let mut uow = begin_all(store).await;
    ok(uow.save_zone(&z).await, "save_zone");
    ok(uow.save_application(&a).await, "save_application");
    ok(uow.save_provider(&p).await, "save_provider");
    ok(uow.save_resource(&r).await, "save_resource");
    ok(uow.save_policy(&pol).await, "save_policy");
    ok(uow.save_policy_version(&pv).await, "save_policy_version");
    ok(uow.save_policy_set(&set).await, "save_policy_set");
    ok(
        uow.insert_policy_set_version(&sv).await,
        "insert_policy_set_version",
    );
    ok(uow.save_grant(&g).await, "save_grant");
    ok(uow.save_admin_token(&t).await, "save_admin_token");
    commit(uow, "first saves").await;

    // Second values: every optional field set, every collection non-empty.
    let later = run.at(1_000_001);
    z.name = "Renamed zone".into();
    z.dcr_enabled = true;
    z.operator_coauthor_badge = true;
    z.operator_governed = true;
    z.attr.touch("admin:other", true, later);
    a.name = "Round Trip Renamed".into();
    a.traits = vec!["trusted".into(), "batch".into()];
    a.client_secret_hash = Some("argon2id$c2FsdA$aGFzaA".into());
    a.expires_at = Some(run.at(86_400_000_123));
    a.attr.touch("admin:other", true, later);
    p.name = "Provider renamed".into();
    p.kind = "bearer_token".into();
    p.config_json = json!({"header": "X-Api-Key", "nested": {"n": 1, "list": [true, null]}})
        .as_object()
        .cloned()
        .unwrap_or_default();
    p.secret_config_keys = vec!["api_key".into(), "token".into()];
    p.connectivity_failed_at = Some(run.at(7));
    p.attr.touch("admin:other", false, later);
    r.upstream_url = Some("https://upstream.example/api".into());
    r.scopes = vec!["read".into(), "write".into()];
    r.credential_provider_id = Some(p.id.to_string());
    r.operations = vec![
        Operation {
            method: "GET".into(),
            path: "/items".into(),
            scope: "read".into(),
        },
        Operation {
            method: "POST".into(),
            path: "/items".into(),
            scope: "write".into(),
        },
    ];
    r.operation_enforcement = "transport_uniform".into();
    r.attr.touch("admin:other", false, later);
    pol.description = Some("Described".into());
    pol.attr.touch("admin:other", false, later);
    pv.archived_at = Some(later);
    set.description = Some("Set described".into());
    set.active_version_id = Some(sv.id.clone());
    set.attr.touch("admin:other", false, later);
    g.scopes = vec!["read".into(), "write".into()];
    g.status = "revoked".into();
    g.attr.touch("admin:other", false, later);
    t.name = "Renamed token".into();
    t.capability = Capability::Approve;
    t.last_used_at = Some(later);

    let mut uow = begin_all(store).await;
    ok(uow.save_zone(&z).await, "save_zone again");
    ok(uow.save_application(&a).await, "save_application again");
    ok(uow.save_provider(&p).await, "save_provider again");
    ok(uow.save_resource(&r).await, "save_resource again");
    ok(uow.save_policy(&pol).await, "save_policy again");
    ok(
        uow.save_policy_version(&pv).await,
        "save_policy_version again",
    );
    ok(uow.save_policy_set(&set).await, "save_policy_set again");
    ok(uow.save_grant(&g).await, "save_grant again");
    ok(uow.save_admin_token(&t).await, "save_admin_token again");
    commit(uow, "second saves").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.get_zone(&z.id).await, "get_zone"),
        Some(z.clone()),
        "zone upsert"
    );
    assert_eq!(
        ok(uow.get_application(&z.id, &a.id).await, "get_application"),
        Some(a.clone()),
        "application upsert"
    );
    assert_eq!(
        ok(uow.get_provider(&z.id, &p.id).await, "get_provider"),
        Some(p.clone()),
        "provider upsert"
    );
    assert_eq!(
        ok(uow.get_resource(&z.id, &r.id).await, "get_resource"),
        Some(r.clone()),
        "resource upsert"
    );
    assert_eq!(
        ok(uow.get_policy(&z.id, &pol.id).await, "get_policy"),
        Some(pol.clone()),
        "policy upsert"
    );
    assert_eq!(
        ok(
            uow.get_policy_version(&z.id, &pv.id).await,
            "get_policy_version"
        ),
        Some(pv.clone()),
        "policy version replace (archiving)"
    );
    assert_eq!(
        ok(uow.get_policy_set(&z.id, &set.id).await, "get_policy_set"),
        Some(set.clone()),
        "policy set upsert (activation)"
    );
    assert_eq!(
        ok(
            uow.get_policy_set_version(&z.id, &sv.id).await,
            "get_policy_set_version"
        ),
        Some(sv.clone()),
        "policy set version round trip (manifest order kept)"
    );
    assert_eq!(
        ok(uow.get_grant(&z.id, &g.id).await, "get_grant"),
        Some(g.clone()),
        "grant"
    );
    assert_eq!(
        ok(
            uow.find_admin_token_by_sha256(&t.token_sha256).await,
            "find_admin_token"
        ),
        Some(t.clone()),
        "admin token upsert"
    );

    // One row each, not two.
    let apps = ok(
        uow.list_applications(&z.id, Liveness::Active, &page(500))
            .await,
        "list",
    );
    assert_eq!(apps, vec![a], "saving twice leaves one application row");
    let providers = ok(
        uow.list_providers(&z.id, Liveness::Active, &page(500))
            .await,
        "list",
    );
    assert_eq!(providers, vec![p], "saving twice leaves one provider row");
    let resources = ok(
        uow.list_resources(&z.id, Liveness::Active, &page(500))
            .await,
        "list",
    );
    assert_eq!(resources, vec![r], "saving twice leaves one resource row");
    let policies = ok(uow.list_policies(&z.id, &page(500)).await, "list_policies");
    assert_eq!(
        policies,
        vec![pol.clone()],
        "saving twice leaves one policy row"
    );
    let versions = ok(
        uow.list_policy_versions(&z.id, &pol.id).await,
        "list_policy_versions",
    );
    assert_eq!(
        versions,
        vec![pv],
        "saving a version twice leaves one version row"
    );
    let sets = ok(
        uow.list_policy_sets(&z.id, &page(500)).await,
        "list_policy_sets",
    );
    assert_eq!(sets, vec![set], "saving twice leaves one policy set row");
    let grants = ok(uow.list_grants(&z.id, &page(500)).await, "list_grants");
    assert_eq!(grants, vec![g], "saving twice leaves one grant row");
    let tokens = ok(
        uow.list_admin_tokens_created_by(&creator).await,
        "list tokens",
    );
    assert_eq!(tokens, vec![t], "saving twice leaves one admin token row");
}

/// Every `get_*` inside a zone returns `None` for a row of another zone, even for a global
/// actor: a foreign id is indistinguishable from a missing one. Lists of one zone never show
/// another zone's rows.
async fn gets_never_cross_zones(store: &dyn Store, run: &Run) {
    let home = zone(run, run.at(0));
    let other = zone(run, run.at(0));
    let a = app(run, &home.id, "Home app", run.at(1));
    let p = provider(run, &home.id, "provider://home", run.at(2));
    let r = resource(run, &home.id, "resource://home", run.at(3));
    let pol = policy(run, &home.id, "home-policy", run.at(4));
    let pv = policy_version(run, &pol, 1, run.at(5));
    let set = policy_set(run, &home.id, "home-set", run.at(6));
    let sv = set_version(run, &set, 1, vec![pv.id.clone()], run.at(7));
    let g = grant(run, &a, &r, run.at(8));

    let mut uow = begin_all(store).await;
    ok(uow.save_zone(&home).await, "save_zone");
    ok(uow.save_zone(&other).await, "save_zone");
    ok(uow.save_application(&a).await, "save_application");
    ok(uow.save_provider(&p).await, "save_provider");
    ok(uow.save_resource(&r).await, "save_resource");
    ok(uow.save_policy(&pol).await, "save_policy");
    ok(uow.save_policy_version(&pv).await, "save_policy_version");
    ok(uow.save_policy_set(&set).await, "save_policy_set");
    ok(
        uow.insert_policy_set_version(&sv).await,
        "insert_policy_set_version",
    );
    ok(uow.save_grant(&g).await, "save_grant");
    commit(uow, "cross-zone fixtures").await;

    let o = &other.id;
    let mut uow = begin_all(store).await;
    let none = "a row of another zone must read as missing";
    assert_eq!(
        ok(uow.get_application(o, &a.id).await, "get_application"),
        None,
        "{none}"
    );
    assert_eq!(
        ok(uow.get_provider(o, &p.id).await, "get_provider"),
        None,
        "{none}"
    );
    assert_eq!(
        ok(uow.get_resource(o, &r.id).await, "get_resource"),
        None,
        "{none}"
    );
    assert_eq!(
        ok(uow.get_policy(o, &pol.id).await, "get_policy"),
        None,
        "{none}"
    );
    assert_eq!(
        ok(
            uow.get_policy_version(o, &pv.id).await,
            "get_policy_version"
        ),
        None,
        "{none}"
    );
    assert_eq!(
        ok(uow.get_policy_set(o, &set.id).await, "get_policy_set"),
        None,
        "{none}"
    );
    assert_eq!(
        ok(
            uow.get_policy_set_version(o, &sv.id).await,
            "get_policy_set_version"
        ),
        None,
        "{none}"
    );
    assert_eq!(
        ok(uow.get_grant(o, &g.id).await, "get_grant"),
        None,
        "{none}"
    );

    let empty = "another zone's rows never appear in this zone's lists";
    let all = page(500);
    assert!(
        ok(
            uow.list_applications(o, Liveness::Active, &all).await,
            "list"
        )
        .is_empty(),
        "{empty}"
    );
    assert!(
        ok(uow.list_providers(o, Liveness::Active, &all).await, "list").is_empty(),
        "{empty}"
    );
    assert!(
        ok(uow.list_resources(o, Liveness::Active, &all).await, "list").is_empty(),
        "{empty}"
    );
    assert!(
        ok(uow.list_policies(o, &all).await, "list").is_empty(),
        "{empty}"
    );
    assert!(
        ok(uow.list_policy_versions(o, &pol.id).await, "list").is_empty(),
        "{empty}"
    );
    assert!(
        ok(uow.list_policy_sets(o, &all).await, "list").is_empty(),
        "{empty}"
    );
    assert!(
        ok(uow.list_policy_set_versions(o, &set.id, &all).await, "list").is_empty(),
        "{empty}"
    );
    assert!(
        ok(uow.list_grants(o, &all).await, "list").is_empty(),
        "{empty}"
    );
    assert_eq!(
        ok(uow.count_active_resources(o).await, "count"),
        0,
        "{empty}"
    );
    assert_eq!(
        ok(uow.max_policy_set_version(o, &set.id).await, "max"),
        0,
        "{empty}"
    );
    assert_eq!(
        ok(
            uow.find_managed_application_by_name(o, &a.name).await,
            "find app"
        ),
        None,
        "{empty}"
    );
    assert_eq!(
        ok(
            uow.find_provider_by_identifier(o, &p.identifier).await,
            "find provider"
        ),
        None,
        "{empty}"
    );
    assert_eq!(
        ok(
            uow.find_resource_by_identifier(o, &r.identifier).await,
            "find resource"
        ),
        None,
        "{empty}"
    );
    assert_eq!(
        ok(uow.find_policy_by_name(o, &pol.name).await, "find policy"),
        None,
        "{empty}"
    );
    assert_eq!(
        ok(uow.find_policy_set_by_name(o, &set.name).await, "find set"),
        None,
        "{empty}"
    );
}

/// A unit of work scoped to a zone reads and writes that zone; rows of other zones and zone-less
/// rows (global tokens, the global audit chain) are invisible to it, and its writes into another
/// zone are refused without changing anything (`spec/api.md §5`).
async fn zone_scoped_units_see_only_their_zone(store: &dyn Store, run: &Run) {
    let za = zone(run, run.at(0));
    let zb = zone(run, run.at(0));
    let a_app = app(run, &za.id, "A app", run.at(1));
    let b_app = app(run, &zb.id, "B app", run.at(1));
    let global_token = token(run, None, &run.text("creator"), run.at(2));
    let b_token = token(run, Some(&zb.id), &run.text("creator"), run.at(2));
    let b_secret = SealedSecret {
        reference: format!("zones/{}/applications/{}/clientSecret", zb.id, b_app.id),
        zone_id: zb.id.clone(),
        envelope: vec![9; 8],
        version: 1,
    };

    let mut uow = begin_all(store).await;
    ok(uow.save_zone(&za).await, "save_zone");
    ok(uow.save_zone(&zb).await, "save_zone");
    ok(uow.save_application(&a_app).await, "save_application");
    ok(uow.save_application(&b_app).await, "save_application");
    ok(
        uow.save_admin_token(&global_token).await,
        "save_admin_token",
    );
    ok(uow.save_admin_token(&b_token).await, "save_admin_token");
    ok(uow.put_secret(&b_secret).await, "put_secret");
    commit(uow, "scoped fixtures").await;

    let mut uow = begin(store, &ZoneScope::Zone(za.id.clone())).await;
    assert_eq!(
        ok(
            uow.get_application(&za.id, &a_app.id).await,
            "get_application"
        ),
        Some(a_app.clone()),
        "a zone-scoped unit of work reads its own zone"
    );
    assert_eq!(
        ok(
            uow.list_applications(&za.id, Liveness::Active, &page(500))
                .await,
            "list"
        ),
        vec![a_app.clone()],
        "a zone-scoped unit of work lists its own zone"
    );
    assert_eq!(
        ok(
            uow.get_application(&zb.id, &b_app.id).await,
            "get_application"
        ),
        None,
        "a unit scoped to zone A must not read zone B even when the query names zone B"
    );
    assert!(
        ok(
            uow.list_applications(&zb.id, Liveness::Active, &page(500))
                .await,
            "list"
        )
        .is_empty(),
        "a unit scoped to zone A must not list zone B"
    );
    assert_eq!(
        ok(
            uow.find_admin_token_by_sha256(&global_token.token_sha256)
                .await,
            "find token"
        ),
        None,
        "zone-less rows (global tokens) are visible to global units only"
    );
    assert_eq!(
        ok(
            uow.find_admin_token_by_sha256(&b_token.token_sha256).await,
            "find token"
        ),
        None,
        "another zone's token is invisible to a zone-scoped unit"
    );
    assert_eq!(
        ok(uow.get_secret(&b_secret.reference).await, "get_secret"),
        None,
        "another zone's secret is invisible to a zone-scoped unit"
    );
    assert!(
        !ok(
            uow.delete_secret(&b_secret.reference).await,
            "delete_secret"
        ),
        "a zone-scoped unit cannot delete another zone's secret"
    );
    assert_eq!(
        ok(
            uow.last_admin_audit(Some(zb.id.as_str())).await,
            "last_admin_audit"
        ),
        None,
        "another zone's audit chain is invisible to a zone-scoped unit"
    );
    let mut moved = b_app.clone();
    moved.name = "Hijacked".into();
    assert!(
        uow.save_application(&moved).await.is_err(),
        "a unit scoped to zone A must refuse to write a zone B row"
    );
    drop(uow);

    let mut uow = begin(store, &ZoneScope::Zone(zb.id.clone())).await;
    assert_eq!(
        ok(
            uow.get_application(&zb.id, &b_app.id).await,
            "get_application"
        ),
        Some(b_app),
        "a refused cross-zone write changes nothing"
    );
    assert_eq!(
        ok(uow.get_secret(&b_secret.reference).await, "get_secret"),
        Some(b_secret),
        "a refused cross-zone delete changes nothing"
    );
    assert_eq!(
        ok(
            uow.find_admin_token_by_sha256(&b_token.token_sha256).await,
            "find token"
        ),
        Some(b_token),
        "a zone-scoped unit sees its zone's tokens"
    );
}

// ------------------------------------------------------------------------------------------------
// Lists and lookups
// ------------------------------------------------------------------------------------------------

/// `list_zones` hides archived zones and reserved `caracal-sys-` slugs (readable by id only),
/// orders by `(created_at DESC, id DESC)` and pages exactly; `zone_slug_exists` counts archived
/// zones too, so a slug is never reused.
async fn zone_lists_hide_archived_and_reserved_zones(store: &dyn Store, run: &Run) {
    let shared = run.at(500);
    let live: Vec<Zone> = (0..3).map(|_| zone(run, shared)).collect();
    let mut archived = zone(run, shared);
    archived.archived_at = Some(run.at(501));
    let mut reserved = zone(run, shared);
    reserved.slug = format!("caracal-sys-{}", reserved.id);

    let mut uow = begin_all(store).await;
    for z in live.iter().chain([&archived, &reserved]) {
        ok(uow.save_zone(z).await, "save_zone");
    }
    commit(uow, "zone list fixtures").await;

    let mut uow = begin_all(store).await;
    // The store may hold other zones: read the whole list, then check its shape.
    let mut whole: Vec<Zone> = Vec::new();
    let mut after = None;
    loop {
        let rows = ok(
            uow.list_zones(&Page {
                limit: 500,
                after: after.clone(),
            })
            .await,
            "list",
        );
        let full = rows.len() == 500;
        after = rows.last().map(|z| After {
            created_at: z.attr.created_at,
            id: z.id.to_string(),
        });
        whole.extend(rows);
        if !full {
            break;
        }
    }
    let keys: Vec<(Timestamp, String)> = whole
        .iter()
        .map(|z| (z.attr.created_at, z.id.to_string()))
        .collect();
    assert_eq!(
        keys,
        sorted_keys(keys.clone()),
        "list_zones order is (created_at DESC, id DESC)"
    );
    assert!(
        whole
            .iter()
            .all(|z| z.archived_at.is_none() && !z.slug.starts_with("caracal-sys-")),
        "list_zones shows neither archived nor reserved zones"
    );
    let listed: BTreeSet<&str> = whole.iter().map(|z| z.id.as_str()).collect();
    for z in &live {
        assert!(
            listed.contains(z.id.as_str()),
            "list_zones shows live zone {}",
            z.id
        );
    }
    assert!(
        !listed.contains(archived.id.as_str()),
        "list_zones hides archived zones"
    );
    assert!(
        !listed.contains(reserved.id.as_str()),
        "list_zones hides caracal-sys- zones"
    );
    assert_eq!(
        ok(uow.get_zone(&reserved.id).await, "get_zone"),
        Some(reserved.clone()),
        "reserved zones stay readable by id"
    );
    assert_eq!(
        ok(uow.get_zone(&archived.id).await, "get_zone"),
        Some(archived.clone()),
        "get_zone returns archived zones"
    );
    assert_keyset!("list_zones", keys.clone(), |p| uow.list_zones(&p), |z| (
        z.attr.created_at,
        z.id.to_string()
    ));

    assert!(
        ok(uow.zone_slug_exists(&live[0].slug).await, "slug"),
        "a live zone's slug exists"
    );
    assert!(
        ok(uow.zone_slug_exists(&archived.slug).await, "slug"),
        "an archived zone's slug still exists (slugs are never reused)"
    );
    assert!(
        !ok(uow.zone_slug_exists(&run.text("unused-slug")).await, "slug"),
        "an unknown slug does not exist"
    );
}

/// Builds `n` rows' creation instants where several rows share one instant, so keyset paging
/// must break ties by id.
fn instants(run: &Run, n: usize) -> Vec<Timestamp> {
    (0..n)
        .map(|i| match i % 4 {
            0 => run.at(10),
            1 | 2 => run.at(20),
            _ => run.at(30 + i as i64),
        })
        .collect()
}

/// Applications: keyset lists by liveness, and the case-insensitive managed-name lookup that
/// ignores archived and DCR applications.
async fn application_lists_and_name_lookup(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let mut active = Vec::new();
    let mut archived = Vec::new();
    for (i, at) in instants(run, 9).into_iter().enumerate() {
        let mut a = app(run, &z.id, &format!("App {i}"), at);
        if i % 3 == 2 {
            a.archived_at = Some(run.at(40));
            archived.push(a);
        } else {
            active.push(a);
        }
    }
    let mut named = app(run, &z.id, "Billing-Bot", run.at(10));
    let mut ghost = app(run, &z.id, "Ghost", run.at(10));
    ghost.archived_at = Some(run.at(11));
    let mut dcr = app(run, &z.id, "Self Registered", run.at(10));
    dcr.registration_method = RegistrationMethod::Dcr;
    dcr.expires_at = Some(run.at(3_600_000_000));
    let foreign = app(run, &other.id, "Foreign", run.at(10));

    let mut uow = begin_all(store).await;
    for a in active
        .iter()
        .chain(&archived)
        .chain([&named, &ghost, &dcr, &foreign])
    {
        ok(uow.save_application(a).await, "save_application");
    }
    commit(uow, "application fixtures").await;
    active.extend([named.clone(), dcr.clone()]);
    archived.push(ghost.clone());

    let key = |a: &Application| (a.attr.created_at, a.id.to_string());
    let mut uow = begin_all(store).await;
    assert_keyset!(
        "list_applications(Active)",
        sorted_keys(active.iter().map(key).collect()),
        |p| uow.list_applications(&z.id, Liveness::Active, &p),
        key
    );
    assert_keyset!(
        "list_applications(Archived)",
        sorted_keys(archived.iter().map(key).collect()),
        |p| uow.list_applications(&z.id, Liveness::Archived, &p),
        key
    );

    for spelling in ["Billing-Bot", "billing-bot", "BILLING-BOT"] {
        assert_eq!(
            ok(
                uow.find_managed_application_by_name(&z.id, spelling).await,
                "find"
            ),
            Some(named.clone()),
            "managed application names compare case-insensitively ({spelling})"
        );
    }
    assert_eq!(
        ok(
            uow.find_managed_application_by_name(&z.id, "ghost").await,
            "find"
        ),
        None,
        "archived applications are ignored by the name lookup"
    );
    assert_eq!(
        ok(
            uow.find_managed_application_by_name(&z.id, "Self Registered")
                .await,
            "find"
        ),
        None,
        "DCR applications are ignored by the managed-name lookup"
    );
    assert_eq!(
        ok(
            uow.find_managed_application_by_name(&z.id, "Foreign").await,
            "find"
        ),
        None,
        "the name lookup stays inside its zone"
    );

    // Archiving frees the name for the lookup.
    named.archived_at = Some(run.at(50));
    ok(uow.save_application(&named).await, "archive application");
    assert_eq!(
        ok(
            uow.find_managed_application_by_name(&z.id, "billing-bot")
                .await,
            "find"
        ),
        None,
        "an application archived in this unit of work is no longer found by name"
    );

    // The any-zone lookup finds a row wherever it lives, archived or not, but a zone-scoped
    // unit still sees only its own zone.
    assert_eq!(
        ok(uow.find_application_any_zone(&foreign.id).await, "any zone").map(|a| a.zone_id),
        Some(other.id.clone()),
        "the any-zone lookup reports the zone that holds the application"
    );
    assert!(
        ok(uow.find_application_any_zone(&ghost.id).await, "any zone").is_some(),
        "the any-zone lookup includes archived rows; callers decide liveness"
    );
    commit(uow, "application fixtures").await;
    let mut scoped = begin(store, &ZoneScope::Zone(z.id.clone())).await;
    assert_eq!(
        ok(
            scoped.find_application_any_zone(&foreign.id).await,
            "scoped"
        ),
        None,
        "a zone-scoped unit cannot find another zone's application"
    );
}

/// Providers: keyset lists by liveness; the identifier lookup ignores archived rows.
async fn provider_lists_and_identifier_lookup(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let mut active = Vec::new();
    let mut archived = Vec::new();
    for (i, at) in instants(run, 7).into_iter().enumerate() {
        let mut p = provider(run, &z.id, &format!("provider://list/{i}"), at);
        if i % 3 == 0 {
            p.archived_at = Some(run.at(40));
            archived.push(p);
        } else {
            active.push(p);
        }
    }
    let mut old = provider(run, &z.id, "provider://reused", run.at(1));
    old.archived_at = Some(run.at(2));
    let current = provider(run, &z.id, "provider://reused", run.at(3));
    let mut gone = provider(run, &z.id, "provider://gone", run.at(1));
    gone.archived_at = Some(run.at(2));

    let mut uow = begin_all(store).await;
    for p in active
        .iter()
        .chain(&archived)
        .chain([&old, &current, &gone])
    {
        ok(uow.save_provider(p).await, "save_provider");
    }
    commit(uow, "provider fixtures").await;
    active.push(current.clone());
    archived.extend([old, gone]);

    let key = |p: &Provider| (p.attr.created_at, p.id.to_string());
    let mut uow = begin_all(store).await;
    assert_keyset!(
        "list_providers(Active)",
        sorted_keys(active.iter().map(key).collect()),
        |p| uow.list_providers(&z.id, Liveness::Active, &p),
        key
    );
    assert_keyset!(
        "list_providers(Archived)",
        sorted_keys(archived.iter().map(key).collect()),
        |p| uow.list_providers(&z.id, Liveness::Archived, &p),
        key
    );
    assert_eq!(
        ok(
            uow.find_provider_by_identifier(&z.id, "provider://reused")
                .await,
            "find"
        ),
        Some(current),
        "the identifier lookup returns the active provider, not an archived namesake"
    );
    assert_eq!(
        ok(
            uow.find_provider_by_identifier(&z.id, "provider://gone")
                .await,
            "find"
        ),
        None,
        "an archived provider is not found by identifier"
    );
}

/// Resources: keyset lists by liveness, identifier lookup ignoring archived rows, and the
/// active count behind the per-zone quota.
async fn resource_lists_lookup_and_count(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.count_active_resources(&z.id).await, "count"),
        0,
        "a new zone has none"
    );
    drop(uow);

    let mut active = Vec::new();
    let mut archived = Vec::new();
    for (i, at) in instants(run, 8).into_iter().enumerate() {
        let mut r = resource(run, &z.id, &format!("resource://list/{i}"), at);
        if i % 4 == 1 {
            r.archived_at = Some(run.at(40));
            archived.push(r);
        } else {
            active.push(r);
        }
    }
    let mut old = resource(run, &z.id, "https://api.example/reused", run.at(1));
    old.archived_at = Some(run.at(2));
    let current = resource(run, &z.id, "https://api.example/reused", run.at(3));

    let mut uow = begin_all(store).await;
    for r in active.iter().chain(&archived).chain([&old, &current]) {
        ok(uow.save_resource(r).await, "save_resource");
    }
    commit(uow, "resource fixtures").await;
    active.push(current.clone());
    archived.push(old);

    let key = |r: &Resource| (r.attr.created_at, r.id.to_string());
    let mut uow = begin_all(store).await;
    assert_keyset!(
        "list_resources(Active)",
        sorted_keys(active.iter().map(key).collect()),
        |p| uow.list_resources(&z.id, Liveness::Active, &p),
        key
    );
    assert_keyset!(
        "list_resources(Archived)",
        sorted_keys(archived.iter().map(key).collect()),
        |p| uow.list_resources(&z.id, Liveness::Archived, &p),
        key
    );
    assert_eq!(
        ok(
            uow.find_resource_by_identifier(&z.id, "https://api.example/reused")
                .await,
            "find"
        ),
        Some(current),
        "the identifier lookup returns the active resource, not an archived namesake"
    );
    assert_eq!(
        ok(
            uow.find_resource_by_identifier(&z.id, "resource://list/1")
                .await,
            "find"
        ),
        None,
        "an archived resource is not found by identifier"
    );
    assert_eq!(
        ok(uow.count_active_resources(&z.id).await, "count"),
        active.len() as u64,
        "count_active_resources counts unarchived resources of the zone only"
    );
}

/// Policies: active-only keyset list, name lookup ignoring archived policies, versions listed
/// highest first.
async fn policies_and_versions(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let mut active = Vec::new();
    let mut archived = Vec::new();
    for (i, at) in instants(run, 7).into_iter().enumerate() {
        let mut p = policy(run, &z.id, &format!("policy-{i}"), at);
        if i == 3 {
            p.archived_at = Some(run.at(40));
            archived.push(p);
        } else {
            active.push(p);
        }
    }
    let mut old = policy(run, &z.id, "reused-name", run.at(1));
    old.archived_at = Some(run.at(2));
    let current = policy(run, &z.id, "reused-name", run.at(3));
    // Versions saved out of order, with creation instants unrelated to their numbers.
    let v3 = policy_version(run, &current, 3, run.at(5));
    let v1 = policy_version(run, &current, 1, run.at(7));
    let v2 = policy_version(run, &current, 2, run.at(6));
    let elsewhere = policy_version(run, &active[0], 9, run.at(5));

    let mut uow = begin_all(store).await;
    for p in active.iter().chain(&archived).chain([&old, &current]) {
        ok(uow.save_policy(p).await, "save_policy");
    }
    for v in [&v3, &v1, &v2, &elsewhere] {
        ok(uow.save_policy_version(v).await, "save_policy_version");
    }
    commit(uow, "policy fixtures").await;
    active.push(current.clone());

    let key = |p: &Policy| (p.attr.created_at, p.id.to_string());
    let mut uow = begin_all(store).await;
    assert_keyset!(
        "list_policies",
        sorted_keys(active.iter().map(key).collect()),
        |p| uow.list_policies(&z.id, &p),
        key
    );
    assert_eq!(
        ok(uow.find_policy_by_name(&z.id, "reused-name").await, "find"),
        Some(current.clone()),
        "the name lookup returns the active policy, not an archived namesake"
    );
    assert_eq!(
        ok(uow.find_policy_by_name(&z.id, "policy-3").await, "find"),
        None,
        "an archived policy is not found by name"
    );
    assert_eq!(
        ok(
            uow.list_policy_versions(&z.id, &current.id).await,
            "list_policy_versions"
        ),
        vec![v3, v2, v1],
        "policy versions are listed highest version first, and only the policy's own"
    );
}

/// Policy sets: active-only keyset list, name lookup, the zone's active binding, versions with
/// keyset paging and the running maximum version number.
async fn policy_sets_and_versions(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let mut active = Vec::new();
    for (i, at) in instants(run, 6).into_iter().enumerate() {
        active.push(policy_set(run, &z.id, &format!("set-{i}"), at));
    }
    let mut bound = policy_set(run, &z.id, "bound", run.at(8));
    let mut archived_bound = policy_set(run, &z.id, "archived-bound", run.at(9));
    let pol = policy(run, &z.id, "set-member", run.at(1));
    let pv = policy_version(run, &pol, 1, run.at(1));

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.max_policy_set_version(&z.id, &bound.id).await,
            "max_policy_set_version"
        ),
        0,
        "a set without versions has max version 0"
    );
    ok(uow.save_policy(&pol).await, "save_policy");
    ok(uow.save_policy_version(&pv).await, "save_policy_version");
    for s in active.iter().chain([&bound, &archived_bound]) {
        ok(uow.save_policy_set(s).await, "save_policy_set");
    }
    let shared = run.at(60);
    let versions: Vec<PolicySetVersion> = (1..=5)
        .map(|n| {
            let at = if n % 2 == 0 {
                shared
            } else {
                run.at(60 + i64::from(n))
            };
            set_version(run, &bound, n, vec![pv.id.clone(), pv.id.clone()], at)
        })
        .collect();
    for v in &versions {
        ok(
            uow.insert_policy_set_version(v).await,
            "insert_policy_set_version",
        );
    }
    let archived_version = set_version(run, &archived_bound, 1, vec![pv.id.clone()], run.at(61));
    ok(
        uow.insert_policy_set_version(&archived_version).await,
        "insert_policy_set_version",
    );
    commit(uow, "policy set fixtures").await;

    // Activate `bound`; an archived set may keep a stale binding without counting as active.
    bound.active_version_id = Some(versions[4].id.clone());
    archived_bound.active_version_id = Some(archived_version.id.clone());
    archived_bound.archived_at = Some(run.at(70));
    let mut uow = begin_all(store).await;
    ok(
        uow.save_policy_set(&archived_bound).await,
        "archive policy set",
    );
    ok(uow.save_policy_set(&bound).await, "activate policy set");
    commit(uow, "activation").await;
    active.push(bound.clone());

    let key = |s: &PolicySet| (s.attr.created_at, s.id.to_string());
    let vkey = |v: &PolicySetVersion| (v.created_at, v.id.to_string());
    let mut uow = begin_all(store).await;
    assert_keyset!(
        "list_policy_sets",
        sorted_keys(active.iter().map(key).collect()),
        |p| uow.list_policy_sets(&z.id, &p),
        key
    );
    assert_eq!(
        ok(
            uow.list_active_policy_sets(&z.id).await,
            "list_active_policy_sets"
        ),
        vec![bound.clone()],
        "only the unarchived set holding an active version is the zone's active set"
    );
    assert_eq!(
        ok(uow.find_policy_set_by_name(&z.id, "bound").await, "find"),
        Some(bound.clone()),
        "find_policy_set_by_name finds the active set"
    );
    assert_eq!(
        ok(
            uow.find_policy_set_by_name(&z.id, "archived-bound").await,
            "find"
        ),
        None,
        "an archived set is not found by name"
    );
    assert_eq!(
        ok(
            uow.max_policy_set_version(&z.id, &bound.id).await,
            "max_policy_set_version"
        ),
        5,
        "max_policy_set_version is the highest version inserted"
    );
    assert_keyset!(
        "list_policy_set_versions",
        sorted_keys(versions.iter().map(vkey).collect()),
        |p| uow.list_policy_set_versions(&z.id, &bound.id, &p),
        vkey
    );
}

/// Grants: every status, keyset paging.
async fn grant_lists(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let a = app(run, &z.id, "Grantee", run.at(1));
    let r = resource(run, &z.id, "resource://granted", run.at(1));
    let grants: Vec<Grant> = instants(run, 7)
        .into_iter()
        .enumerate()
        .map(|(i, at)| {
            let mut g = grant(run, &a, &r, at);
            if i % 2 == 1 {
                g.status = "revoked".into();
            }
            g
        })
        .collect();
    let mut uow = begin_all(store).await;
    ok(uow.save_application(&a).await, "save_application");
    ok(uow.save_resource(&r).await, "save_resource");
    for g in &grants {
        ok(uow.save_grant(g).await, "save_grant");
    }
    commit(uow, "grant fixtures").await;

    let key = |g: &Grant| (g.attr.created_at, g.id.to_string());
    let mut uow = begin_all(store).await;
    assert_keyset!(
        "list_grants",
        sorted_keys(grants.iter().map(key).collect()),
        |p| uow.list_grants(&z.id, &p),
        key
    );
}

/// Admin tokens: the authentication lookup by SHA-256 ignores revoked tokens; the
/// created-by list returns the creator's unrevoked tokens only.
async fn admin_tokens(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let creator = run.text("creator");
    let global = token(run, None, &creator, run.at(1));
    let zoned = token(run, Some(&z.id), &creator, run.at(2));
    let mut revoked = token(run, None, &creator, run.at(3));
    revoked.revoked_at = Some(run.at(4));
    let foreign = token(run, None, &run.text("someone-else"), run.at(5));

    let mut uow = begin_all(store).await;
    for t in [&global, &zoned, &revoked, &foreign] {
        ok(uow.save_admin_token(t).await, "save_admin_token");
    }
    commit(uow, "token fixtures").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.find_admin_token_by_sha256(&global.token_sha256).await,
            "find"
        ),
        Some(global.clone()),
        "a live token is found by the SHA-256 of its plaintext"
    );
    assert_eq!(
        ok(
            uow.find_admin_token_by_sha256(&revoked.token_sha256).await,
            "find"
        ),
        None,
        "a revoked token no longer authenticates"
    );
    assert_eq!(
        ok(
            uow.find_admin_token_by_sha256(&run.text("unknown-sha"))
                .await,
            "find"
        ),
        None,
        "an unknown hash finds nothing"
    );
    assert_eq!(
        ok(uow.get_admin_token(&revoked.id).await, "get"),
        Some(revoked.clone()),
        "get by id returns revoked tokens too"
    );
    let all = ok(
        uow.list_admin_tokens(&Page {
            limit: 500,
            after: None,
        })
        .await,
        "list all",
    );
    for t in [&global, &zoned, &revoked, &foreign] {
        assert!(
            all.iter().any(|x| x.id == t.id),
            "list_admin_tokens includes revoked and every creator's tokens"
        );
    }
    assert!(
        all.windows(2)
            .all(|w| (w[0].created_at, w[0].id.as_str()) > (w[1].created_at, w[1].id.as_str())),
        "admin tokens list newest first"
    );
    let mut listed = ok(uow.list_admin_tokens_created_by(&creator).await, "list");
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expected = vec![global.clone(), zoned];
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        listed, expected,
        "the creator's unrevoked tokens, and only theirs"
    );

    let mut now_revoked = global.clone();
    now_revoked.revoked_at = Some(run.at(9));
    ok(uow.save_admin_token(&now_revoked).await, "revoke token");
    assert_eq!(
        ok(
            uow.find_admin_token_by_sha256(&global.token_sha256).await,
            "find"
        ),
        None,
        "revocation takes effect at once"
    );
}

/// Admin audit chains (`spec/api.md §7`): one chain per zone plus the global chain (`None`);
/// `last_admin_audit` is `None` for an empty chain and then the newest record; chains do not
/// see each other; lists are newest first by `(occurred_at DESC, id DESC)`.
async fn admin_audit_chains(store: &dyn Store, run: &Run) {
    let za = committed_zone(store, run).await;
    let zb = committed_zone(store, run).await;
    let (a, b) = (za.id.as_str(), zb.id.as_str());

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.last_admin_audit(Some(a)).await, "last"),
        None,
        "empty chain has no last"
    );
    let a1 = audit(run, Some(a), None, run.at(1));
    ok(uow.append_admin_audit(&a1).await, "append");
    assert_eq!(
        ok(uow.last_admin_audit(Some(a)).await, "last"),
        Some(a1.clone()),
        "last returns the record just appended"
    );
    commit(uow, "first audit record").await;

    let mut uow = begin_all(store).await;
    let last = ok(uow.last_admin_audit(Some(a)).await, "last");
    assert_eq!(last.as_ref(), Some(&a1), "last survives the commit");
    let a2 = audit(run, Some(a), last.as_ref(), run.at(2));
    ok(uow.append_admin_audit(&a2).await, "append");
    assert_eq!(
        ok(uow.last_admin_audit(Some(b)).await, "last"),
        None,
        "zone B's chain is independent of zone A's"
    );
    let b1 = audit(run, Some(b), None, run.at(2));
    ok(
        uow.append_admin_audit(&b1).await,
        "append: chain_seq 1 in another zone is no clash",
    );

    let global_last = ok(uow.last_admin_audit(None).await, "last(global)");
    let g = audit(run, None, global_last.as_ref(), run.at(3));
    ok(uow.append_admin_audit(&g).await, "append(global)");
    commit(uow, "more audit records").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.last_admin_audit(Some(a)).await, "last"),
        Some(a2.clone()),
        "A's last"
    );
    assert_eq!(
        ok(uow.last_admin_audit(Some(b)).await, "last"),
        Some(b1.clone()),
        "B's last"
    );
    assert_eq!(
        ok(uow.last_admin_audit(None).await, "last(global)"),
        Some(g.clone()),
        "the global chain's last record"
    );
    assert_eq!(
        a2.prev_content_sha256.as_deref(),
        Some(a1.content_sha256.as_str())
    );

    // Several records sharing one instant, listed newest first.
    let mut chain = vec![a1, a2];
    for n in 0..5 {
        let at = if n % 2 == 0 {
            run.at(10)
        } else {
            run.at(11 + n)
        };
        let next = audit(run, Some(a), chain.last(), at);
        ok(uow.append_admin_audit(&next).await, "append");
        chain.push(next);
    }
    let key = |r: &AdminAuditRecord| (r.occurred_at, r.id.clone());
    assert_keyset!(
        "list_admin_audit",
        sorted_keys(chain.iter().map(key).collect()),
        |p| uow.list_admin_audit(Some(a), &p),
        key
    );
    assert_eq!(
        ok(uow.list_admin_audit(Some(b), &page(500)).await, "list"),
        vec![b1],
        "a zone's audit list shows its own chain only"
    );
    let global_rows = ok(uow.list_admin_audit(None, &page(500)).await, "list(global)");
    assert!(
        global_rows.contains(&g),
        "the global list shows global records"
    );
    assert!(
        global_rows.iter().all(|r| r.zone_id.is_none()),
        "the global list shows zone-less records only"
    );
}

/// Two writers that each read the chain's last record and append the next one, concurrently,
/// end up one after the other: the adapter serialises appends to one chain, so the chain never
/// forks (`spec/api.md §7`).
async fn admin_audit_appends_serialise(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let chain = z.id.as_str();
    let append_next = |at: Timestamp| async move {
        let mut uow = store.begin(&ZoneScope::All).await?;
        let last = uow.last_admin_audit(Some(chain)).await?;
        let record = audit(run, Some(chain), last.as_ref(), at);
        uow.append_admin_audit(&record).await?;
        uow.commit().await?;
        Ok::<AdminAuditRecord, StoreError>(record)
    };
    let (first, second) = tokio::join!(append_next(run.at(1)), append_next(run.at(2)));
    let first = ok(first, "concurrent append 1");
    let second = ok(second, "concurrent append 2");
    let mut seqs = [first.chain_seq, second.chain_seq];
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        [1, 2],
        "concurrent appenders must take positions 1 and 2, one each"
    );
    let (earlier, later) = if first.chain_seq == 1 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(
        later.prev_content_sha256.as_deref(),
        Some(earlier.content_sha256.as_str()),
        "the second appender must have read the first one's record"
    );
}

// ------------------------------------------------------------------------------------------------
// Outbox (unit-of-work side) and secrets
// ------------------------------------------------------------------------------------------------

/// Enqueued messages read back whole; `find_latest_outbox` returns the newest message of the
/// stream whose fields include every pair asked for.
async fn outbox_enqueue_and_lookup(store: &dyn Store, run: &Run) {
    let stream = format!("caracal.contract.{}", run.text("stream"));
    let other_stream = format!("{stream}.other");
    let (za, zb) = (run.text("zone-a"), run.text("zone-b"));
    let m1 = outbox(
        run,
        &stream,
        &[("zone_id", &za), ("policy_set_id", "p1")],
        Some(run.now),
        run.at(1),
    );
    let m2 = outbox(
        run,
        &stream,
        &[("zone_id", &za), ("policy_set_id", "p2")],
        Some(run.now),
        run.at(2),
    );
    let m3 = outbox(
        run,
        &stream,
        &[("zone_id", &zb), ("policy_set_id", "p1")],
        Some(run.now),
        run.at(3),
    );
    let mut m4 = outbox(run, &other_stream, &[("zone_id", &za)], None, run.at(9));
    m4.attempts = 100;
    m4.last_error = Some("gave up".into());
    m4.request_id = Some("req-1".into());
    m4.locked_until = Some(run.at(5));
    m4.dispatched_at = Some(run.at(6));

    let mut uow = begin_all(store).await;
    for m in [&m1, &m2, &m3, &m4] {
        ok(uow.enqueue_outbox(m).await, "enqueue_outbox");
    }
    commit(uow, "outbox fixtures").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.get_outbox(&m4.id).await, "get_outbox"),
        Some(m4.clone()),
        "round trip"
    );
    assert_eq!(
        ok(
            uow.get_outbox(&run.id("missing", OutboxId::parse)).await,
            "get_outbox"
        ),
        None,
        "unknown outbox id"
    );
    assert_eq!(
        ok(
            uow.find_latest_outbox(&stream, &[("zone_id", &za)]).await,
            "find"
        ),
        Some(m2),
        "newest message of the stream matching one field"
    );
    assert_eq!(
        ok(
            uow.find_latest_outbox(&stream, &[("zone_id", &za), ("policy_set_id", "p1")])
                .await,
            "find"
        ),
        Some(m1),
        "every given field must match"
    );
    assert_eq!(
        ok(uow.find_latest_outbox(&stream, &[]).await, "find"),
        Some(m3),
        "no fields: the newest message of the stream"
    );
    assert_eq!(
        ok(
            uow.find_latest_outbox(&stream, &[("zone_id", "nowhere")])
                .await,
            "find"
        ),
        None,
        "no message matches"
    );
    assert_eq!(
        ok(
            uow.find_latest_outbox(&stream, &[("zone_id", &za), ("zone_id", &zb)])
                .await,
            "find"
        ),
        None,
        "one field cannot hold two values"
    );
    assert_eq!(
        ok(
            uow.find_latest_outbox(&other_stream, &[("zone_id", &za)])
                .await,
            "find"
        ),
        Some(m4),
        "the stream name scopes the lookup"
    );
}

/// The builtin secret store: put inserts version 1 and each replacement bumps the version; get
/// reads the envelope; delete reports whether there was one.
async fn secrets(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let reference = format!("zones/{}/providers/{}/secretConfig", z.id, run.text("p"));
    let first = SealedSecret {
        reference: reference.clone(),
        zone_id: z.id.clone(),
        envelope: b"CSS1-first".to_vec(),
        version: 42,
    };
    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.get_secret(&reference).await, "get_secret"),
        None,
        "nothing stored yet"
    );
    ok(uow.put_secret(&first).await, "put_secret");
    commit(uow, "first put").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.get_secret(&reference).await, "get_secret"),
        Some(SealedSecret {
            version: 1,
            ..first.clone()
        }),
        "the first put stores version 1, whatever version the caller passed"
    );
    let second = SealedSecret {
        envelope: vec![0, 255, 1, 254],
        ..first.clone()
    };
    ok(uow.put_secret(&second).await, "put_secret again");
    assert_eq!(
        ok(uow.get_secret(&reference).await, "get_secret"),
        Some(SealedSecret {
            version: 2,
            ..second.clone()
        }),
        "replacing bumps the version and stores the new envelope"
    );
    commit(uow, "second put").await;

    let mut uow = begin_all(store).await;
    assert!(
        ok(uow.delete_secret(&reference).await, "delete_secret"),
        "delete finds the secret"
    );
    assert_eq!(
        ok(uow.get_secret(&reference).await, "get_secret"),
        None,
        "deleted"
    );
    assert!(
        !ok(uow.delete_secret(&reference).await, "delete_secret"),
        "deleting again reports that nothing was there"
    );
    commit(uow, "delete").await;
}

// ------------------------------------------------------------------------------------------------
// Uniqueness rules
// ------------------------------------------------------------------------------------------------

fn assert_conflict(result: Result<(), StoreError>, rule: &str, what: &str) {
    match result {
        Err(StoreError::Conflict(name)) => {
            assert_eq!(
                name, rule,
                "{what}: the conflict names the rule that was violated"
            );
        }
        other => panic!("{what}: expected Conflict({rule}), got {other:?}"),
    }
}

/// The uniqueness rules the store holds itself, reported as `Conflict(<rule name>)` with the
/// same names by every adapter. A refused write changes nothing and leaves the unit of work
/// usable: the rest of it still commits.
async fn uniqueness_rules(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let zid = &z.id;
    let at = run.at(1);

    let managed = app(run, zid, "Unique Name", at);
    let p = provider(run, zid, "provider://unique", at);
    let r = resource(run, zid, "resource://unique", at);
    let pol = policy(run, zid, "unique-policy", at);
    let pv = policy_version(run, &pol, 1, at);
    let mut set = policy_set(run, zid, "unique-set", at);
    let sv = set_version(run, &set, 1, vec![pv.id.clone()], at);
    set.active_version_id = Some(sv.id.clone());
    let other_set = policy_set(run, zid, "other-set", at);
    let other_sv = set_version(run, &other_set, 1, vec![pv.id.clone()], at);
    let t = token(run, None, "admin:contract", at);
    let a1 = audit(run, Some(zid.as_str()), None, at);
    let m = outbox(run, &run.text("stream"), &[("k", "v")], Some(run.now), at);

    let mut uow = begin_all(store).await;
    ok(uow.save_application(&managed).await, "save_application");
    ok(uow.save_provider(&p).await, "save_provider");
    ok(uow.save_resource(&r).await, "save_resource");
    ok(uow.save_policy(&pol).await, "save_policy");
    ok(uow.save_policy_version(&pv).await, "save_policy_version");
    ok(uow.save_policy_set(&set).await, "save_policy_set");
    ok(
        uow.insert_policy_set_version(&sv).await,
        "insert_policy_set_version",
    );
    ok(uow.save_policy_set(&other_set).await, "save_policy_set");
    ok(
        uow.insert_policy_set_version(&other_sv).await,
        "insert_policy_set_version",
    );
    ok(uow.save_admin_token(&t).await, "save_admin_token");
    ok(uow.append_admin_audit(&a1).await, "append_admin_audit");
    ok(uow.enqueue_outbox(&m).await, "enqueue_outbox");
    commit(uow, "uniqueness fixtures").await;

    let mut uow = begin_all(store).await;
    let mut twin_zone = zone(run, at);
    twin_zone.slug = z.slug.clone();
    assert_conflict(
        uow.save_zone(&twin_zone).await,
        "zones_slug_key",
        "same slug",
    );
    let twin_app = app(run, zid, "unique name", at);
    assert_conflict(
        uow.save_application(&twin_app).await,
        "applications_active_managed_name",
        "same managed name, other case",
    );
    let twin_provider = provider(run, zid, &p.identifier, at);
    assert_conflict(
        uow.save_provider(&twin_provider).await,
        "providers_active_identifier",
        "same provider identifier",
    );
    let twin_resource = resource(run, zid, &r.identifier, at);
    assert_conflict(
        uow.save_resource(&twin_resource).await,
        "resources_active_identifier",
        "same resource identifier",
    );
    let twin_policy = policy(run, zid, &pol.name, at);
    assert_conflict(
        uow.save_policy(&twin_policy).await,
        "policies_active_name",
        "same policy name",
    );
    let twin_pv = policy_version(run, &pol, 1, at);
    assert_conflict(
        uow.save_policy_version(&twin_pv).await,
        "policy_versions_policy_version",
        "same policy version number",
    );
    let twin_set = policy_set(run, zid, &set.name, at);
    assert_conflict(
        uow.save_policy_set(&twin_set).await,
        "policy_sets_active_name",
        "same set name",
    );
    let mut second_active = other_set.clone();
    second_active.active_version_id = Some(other_sv.id.clone());
    assert_conflict(
        uow.save_policy_set(&second_active).await,
        "policy_sets_one_active_per_zone",
        "a second active set in the zone",
    );
    let twin_sv = set_version(run, &set, 1, vec![], at);
    assert_conflict(
        uow.insert_policy_set_version(&twin_sv).await,
        "policy_set_versions_set_version",
        "same set version number",
    );
    let mut twin_token = token(run, None, "admin:contract", at);
    twin_token.token_sha256 = t.token_sha256.clone();
    assert_conflict(
        uow.save_admin_token(&twin_token).await,
        "admin_tokens_token_sha256_key",
        "same token hash",
    );
    let fork = audit(run, Some(zid.as_str()), None, at);
    assert_conflict(
        uow.append_admin_audit(&fork).await,
        "admin_audit_events_chain_seq",
        "a second record at one chain position",
    );
    assert_conflict(
        uow.enqueue_outbox(&m).await,
        "event_outbox_pkey",
        "same outbox id",
    );

    // Not conflicts: a DCR application may share a managed name; archived rows free their names.
    let mut dcr = app(run, zid, "Unique Name", at);
    dcr.registration_method = RegistrationMethod::Dcr;
    ok(
        uow.save_application(&dcr).await,
        "a DCR app may reuse a managed name",
    );
    let mut archived_twin = provider(run, zid, &p.identifier, at);
    archived_twin.archived_at = Some(at);
    ok(
        uow.save_provider(&archived_twin).await,
        "an archived provider may share an identifier",
    );
    let survivor = app(run, zid, "Saved after conflicts", at);
    ok(
        uow.save_application(&survivor).await,
        "the unit of work is usable after conflicts",
    );
    commit(uow, "unit of work after refused writes").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.get_application(zid, &survivor.id).await,
            "get_application"
        ),
        Some(survivor),
        "writes after a refused write commit"
    );
    assert_eq!(
        ok(
            uow.get_application(zid, &twin_app.id).await,
            "get_application"
        ),
        None,
        "a refused write leaves nothing behind"
    );
    assert_eq!(
        ok(uow.get_application(zid, &dcr.id).await, "get_application"),
        Some(dcr),
        "the DCR namesake was saved"
    );
    assert_eq!(
        ok(uow.get_zone(&twin_zone.id).await, "get_zone"),
        None,
        "the refused zone was not saved"
    );
}

// ------------------------------------------------------------------------------------------------
// Outbox queue (dispatcher side)
// ------------------------------------------------------------------------------------------------

/// Start of the instant window the queue cases use (1990-01-01T00:00:00Z): real rows are enqueued
/// "now" and never fall in it, so claims in the window only ever see this suite's rows.
const WINDOW_START_MICROS: i64 = 631_152_000_000_000;

fn w(seconds: i64) -> Timestamp {
    Timestamp::from_unix_micros(WINDOW_START_MICROS + seconds * 1_000_000)
}

/// End of the window (one day).
fn window_end() -> Timestamp {
    w(86_400)
}

/// Marks every claimable row of the window dispatched, so leftovers of an earlier (possibly
/// failed) run against the same store cannot disturb this one.
async fn drain_window(queue: &dyn OutboxQueue) {
    for _ in 0..1_000 {
        let claimed = ok(
            queue.claim_due(window_end(), window_end(), 500).await,
            "drain claim",
        );
        for m in &claimed {
            ok(
                queue.mark_dispatched(&m.id, window_end()).await,
                "drain mark_dispatched",
            );
        }
        if claimed.len() < 500 {
            return;
        }
    }
}

async fn enqueue_all(store: &dyn Store, messages: &[&OutboxMessage]) {
    let mut uow = begin_all(store).await;
    for m in messages {
        ok(uow.enqueue_outbox(m).await, "enqueue_outbox");
    }
    commit(uow, "enqueue queue fixtures").await;
}

async fn read_outbox(store: &dyn Store, id: &OutboxId) -> OutboxMessage {
    let mut uow = begin_all(store).await;
    ok(uow.get_outbox(id).await, "get_outbox")
        .unwrap_or_else(|| panic!("outbox row {id} disappeared"))
}

fn ids(messages: &[OutboxMessage]) -> Vec<String> {
    messages.iter().map(|m| m.id.to_string()).collect()
}

/// `claim_due` returns only due, undispatched, unlocked rows in due order, counts an attempt and
/// locks each until `lock_until`; a locked row is not claimed again before the lock expires;
/// `mark_dispatched` ends a row's life; `mark_failed(Some(t))` makes it due again at `t`.
async fn claims_only_due_unlocked_rows_and_locks_them(
    store: &dyn Store,
    queue: &dyn OutboxQueue,
    run: &Run,
) {
    let stream = run.text("stream");
    let mut due_late = outbox(run, &stream, &[("n", "late")], Some(w(20)), w(0));
    due_late.attempts = 3;
    let due_early = outbox(run, &stream, &[("n", "early")], Some(w(10)), w(1));
    let not_yet = outbox(run, &stream, &[("n", "future")], Some(w(3_600)), w(0));
    let mut delivered = outbox(run, &stream, &[("n", "delivered")], Some(w(5)), w(0));
    delivered.dispatched_at = Some(w(6));
    let dead = outbox(run, &stream, &[("n", "dead")], None, w(0));
    let mut locked = outbox(run, &stream, &[("n", "locked")], Some(w(5)), w(0));
    locked.locked_until = Some(w(7_200));
    enqueue_all(
        store,
        &[&due_late, &due_early, &not_yet, &delivered, &dead, &locked],
    )
    .await;

    let claimed = ok(queue.claim_due(w(30), w(60), 10).await, "claim_due");
    assert_eq!(
        ids(&claimed),
        vec![due_early.id.to_string(), due_late.id.to_string()],
        "claim_due returns exactly the due, undispatched, live, unlocked rows, earliest due first"
    );
    assert_eq!(
        claimed.iter().map(|m| m.attempts).collect::<Vec<_>>(),
        vec![1, 4],
        "claiming counts one attempt per row"
    );
    assert!(
        claimed.iter().all(|m| m.locked_until == Some(w(60))),
        "claimed rows come back locked until lock_until"
    );
    let stored = read_outbox(store, &due_late.id).await;
    assert_eq!(
        (stored.attempts, stored.locked_until),
        (4, Some(w(60))),
        "the claim is persisted"
    );

    assert!(
        ok(queue.claim_due(w(40), w(70), 10).await, "claim_due").is_empty(),
        "a second claim before the lock expires gets none of the locked rows"
    );
    let again = ok(queue.claim_due(w(61), w(120), 10).await, "claim_due");
    assert_eq!(
        ids(&again),
        vec![due_early.id.to_string(), due_late.id.to_string()],
        "rows whose lock expired are claimable again"
    );
    assert_eq!(
        again.iter().map(|m| m.attempts).collect::<Vec<_>>(),
        vec![2, 5]
    );

    ok(
        queue.mark_dispatched(&due_early.id, w(62)).await,
        "mark_dispatched",
    );
    let stored = read_outbox(store, &due_early.id).await;
    assert_eq!(
        stored.dispatched_at,
        Some(w(62)),
        "mark_dispatched records the delivery"
    );
    assert_eq!(stored.state(), "dispatched");

    ok(
        queue
            .mark_failed(&due_late.id, "redis down", Some(w(300)))
            .await,
        "mark_failed",
    );
    let stored = read_outbox(store, &due_late.id).await;
    assert_eq!(
        (
            stored.available_at,
            stored.locked_until,
            stored.last_error.as_deref()
        ),
        (Some(w(300)), None, Some("redis down")),
        "mark_failed(Some(t)) reschedules at t, unlocks, and records the error"
    );
    assert!(
        ok(queue.claim_due(w(299), w(400), 10).await, "claim_due").is_empty(),
        "a failed row is not due before its retry instant, a dispatched row never again"
    );
    let retried = ok(queue.claim_due(w(300), w(400), 10).await, "claim_due");
    assert_eq!(
        ids(&retried),
        vec![due_late.id.to_string()],
        "due again at the retry instant"
    );
    ok(
        queue.mark_dispatched(&due_late.id, w(301)).await,
        "mark_dispatched",
    );
}

/// At most `limit` rows per claim, the earliest due first.
async fn claim_honours_limit_and_due_order(store: &dyn Store, queue: &dyn OutboxQueue, run: &Run) {
    let stream = run.text("stream");
    let rows: Vec<OutboxMessage> = (0..5)
        .map(|i| {
            outbox(
                run,
                &stream,
                &[("i", &i.to_string())],
                Some(w(1_000 - i)),
                w(0),
            )
        })
        .collect();
    enqueue_all(store, &rows.iter().collect::<Vec<_>>()).await;
    let claimed = ok(queue.claim_due(w(1_000), w(1_100), 2).await, "claim_due");
    assert_eq!(
        ids(&claimed),
        vec![rows[4].id.to_string(), rows[3].id.to_string()],
        "claim_due honours its limit and takes the earliest available_at first"
    );
    let all: Vec<OutboxId> = rows.iter().map(|m| m.id.clone()).collect();
    ok(
        queue.mark_all_dispatched(&all, w(1_001)).await,
        "mark_all_dispatched",
    );
    ok(
        queue.mark_all_dispatched(&[], w(1_001)).await,
        "mark_all_dispatched of nothing",
    );
    for m in &rows {
        assert_eq!(
            read_outbox(store, &m.id).await.dispatched_at,
            Some(w(1_001)),
            "mark_all_dispatched records every row's delivery"
        );
    }
}

/// `mark_failed(None)` makes a row dead: counted in `outbox_counts().1` (what `/ready` reports),
/// no longer pending, and never claimed again.
async fn dead_rows_are_counted_and_never_claimed(
    store: &dyn Store,
    queue: &dyn OutboxQueue,
    run: &Run,
) {
    let stream = run.text("stream");
    let doomed = outbox(run, &stream, &[("n", "doomed")], Some(w(2_000)), w(0));
    let (pending0, dead0) = ok(queue.outbox_counts().await, "outbox_counts");
    enqueue_all(store, &[&doomed]).await;
    assert_eq!(
        ok(queue.outbox_counts().await, "outbox_counts"),
        (pending0 + 1, dead0),
        "an enqueued row counts as pending"
    );
    let claimed = ok(queue.claim_due(w(2_000), w(2_030), 10).await, "claim_due");
    assert_eq!(ids(&claimed), vec![doomed.id.to_string()]);
    ok(
        queue
            .mark_failed(&doomed.id, "attempts exhausted", None)
            .await,
        "mark_failed",
    );
    assert_eq!(
        ok(queue.outbox_counts().await, "outbox_counts"),
        (pending0, dead0 + 1),
        "a dead row leaves the pending count and joins the dead count"
    );
    let stored = read_outbox(store, &doomed.id).await;
    assert_eq!(
        (stored.available_at, stored.state()),
        (None, "dead"),
        "dead = no available_at"
    );
    assert_eq!(stored.last_error.as_deref(), Some("attempts exhausted"));
    let late = ok(
        queue.claim_due(window_end(), window_end(), 500).await,
        "claim_due",
    );
    assert!(
        late.iter().all(|m| m.id != doomed.id),
        "a dead row is never claimed, however late"
    );
}

/// Two dispatchers claiming at the same moment never receive the same row, and between them
/// (plus a follow-up claim) every due row is claimed exactly once.
async fn concurrent_claims_never_share_a_row(
    store: &dyn Store,
    queue: &dyn OutboxQueue,
    run: &Run,
) {
    let stream = run.text("stream");
    let rows: Vec<OutboxMessage> = (0..24)
        .map(|i| {
            outbox(
                run,
                &stream,
                &[("i", &i.to_string())],
                Some(w(3_000 + i)),
                w(0),
            )
        })
        .collect();
    enqueue_all(store, &rows.iter().collect::<Vec<_>>()).await;

    let now = w(3_100);
    let (left, right) = tokio::join!(
        queue.claim_due(now, w(3_200), 15),
        queue.claim_due(now, w(3_200), 15)
    );
    let (left, right) = (ok(left, "claim_due (left)"), ok(right, "claim_due (right)"));
    let left_ids: BTreeSet<String> = ids(&left).into_iter().collect();
    let right_ids: BTreeSet<String> = ids(&right).into_iter().collect();
    assert!(
        left_ids.is_disjoint(&right_ids),
        "two concurrent claims returned the same row(s): {:?}",
        left_ids.intersection(&right_ids).collect::<Vec<_>>()
    );
    assert!(
        left.len() <= 15 && right.len() <= 15,
        "each claim honours its limit"
    );
    let rest = ok(
        queue.claim_due(now, w(3_200), 100).await,
        "claim_due (rest)",
    );
    let mut all: Vec<String> = ids(&left);
    all.extend(ids(&right));
    all.extend(ids(&rest));
    all.sort();
    let mut expected = ids(&rows);
    expected.sort();
    assert_eq!(all, expected, "every due row is claimed exactly once");
    for m in &rows {
        ok(
            queue.mark_dispatched(&m.id, w(3_101)).await,
            "mark_dispatched",
        );
    }
    let counted: BTreeMap<String, i32> = left
        .iter()
        .chain(&right)
        .chain(&rest)
        .map(|m| (m.id.to_string(), m.attempts))
        .collect();
    assert!(
        counted.values().all(|&a| a == 1),
        "each row was claimed once: one attempt each"
    );
}

/// Two units of work taking the same named lock run one after the other: the second is granted
/// the lock only after the first commits.
async fn named_locks_serialise(store: &dyn Store) {
    let name = format!("contract-lock-{}", std::process::id());
    let mut first = ok(store.begin(&ZoneScope::All).await, "begin first");
    ok(first.lock(&name).await, "first takes the lock");
    let second = async {
        let mut second = ok(store.begin(&ZoneScope::All).await, "begin second");
        ok(second.lock(&name).await, "second takes the lock");
        let granted = std::time::Instant::now();
        commit(second, "second").await;
        granted
    };
    let release = async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        let released = std::time::Instant::now();
        commit(first, "first").await;
        released
    };
    let (granted, released) = tokio::join!(second, release);
    assert!(
        granted >= released,
        "the second unit got the lock only after the first released it"
    );
}

// ------------------------------------------------------------------------------------------------
// Authority graph: authority records, agent Sessions, Delegation edges, epochs, signing keys
// ------------------------------------------------------------------------------------------------

fn authority_record(
    run: &Run,
    zone: &ZoneId,
    parent: Option<&str>,
    at: Timestamp,
) -> AuthorityRecord {
    AuthorityRecord {
        id: run.text("ar"),
        zone_id: zone.clone(),
        session_type: SessionType::Application,
        subject_id: run.text("subject"),
        client_id: run.text("client"),
        parent_id: parent.map(str::to_owned),
        status: RecordStatus::Active,
        expires_at: at.plus_millis(300_000),
        authenticated_at: at,
        claims_json: None,
        revoked_at: None,
        revoked_reason: None,
        created_at: at,
    }
}

fn agent_session(run: &Run, zone: &ZoneId, at: Timestamp) -> AgentSession {
    AgentSession {
        id: run.text("as"),
        zone_id: zone.clone(),
        application_id: run.text("app"),
        subject_session_id: run.text("ar"),
        parent_id: None,
        lifecycle: Lifecycle::Task,
        labels: vec![],
        status: "active".into(),
        depth: 0,
        ttl_seconds: None,
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

fn delegation_edge(run: &Run, zone: &ZoneId, at: Timestamp) -> DelegationEdge {
    DelegationEdge {
        id: run.text("de"),
        zone_id: zone.clone(),
        source_session_id: run.text("as"),
        target_session_id: run.text("as"),
        issuer_application_id: run.text("app"),
        receiver_application_id: run.text("app"),
        parent_edge_id: None,
        resource_id: None,
        scopes: vec![],
        constraints_json: Map::new(),
        status: "active".into(),
        expires_at: at.plus_millis(60_000),
        edge_version: 1,
        revoked_at: None,
        created_at: at,
    }
}

fn signing_key(run: &Run, zone: &ZoneId, version: i32, at: Timestamp) -> ZoneSigningKey {
    ZoneSigningKey {
        id: run.text("kid"),
        zone_id: zone.clone(),
        version,
        envelope: vec![0, 255, version as u8, 1, 254],
        created_at: at,
    }
}

fn by_id(mut records: Vec<AuthorityRecord>) -> Vec<AuthorityRecord> {
    records.sort_by(|a, b| a.id.cmp(&b.id));
    records
}

/// Authority records round-trip every field, saves are upserts, a record never reads across
/// zones, and the children listing returns exactly one level of the zone's tree.
/// `begin_relaxed` (the STS's authority-record writes) commits and rolls back exactly like
/// `begin`, bound to its zone; only the durability wait may differ.
/// `begin_with_caller` answers exactly what `get_application` and `get_authority_record` would
/// in that unit (confined to the unit's zone), and the unit it opens is an ordinary one:
/// writes commit, or vanish when it is dropped.
async fn units_that_read_their_caller(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let a = app(run, &z.id, "caller", run.at(1));
    let foreign = app(run, &other.id, "foreign", run.at(1));
    let record = authority_record(run, &z.id, None, run.at(2));
    let foreign_record = authority_record(run, &other.id, None, run.at(2));
    let mut uow = begin_all(store).await;
    ok(uow.save_application(&a).await, "save_application");
    ok(uow.save_application(&foreign).await, "save_application");
    ok(
        uow.save_authority_record(&record).await,
        "save_authority_record",
    );
    ok(
        uow.save_authority_record(&foreign_record).await,
        "save_authority_record",
    );
    commit(uow, "caller fixtures").await;

    let (mut uow, rows) = ok(
        store
            .begin_with_caller(&z.id, &a.id, Some(&record.id))
            .await,
        "begin_with_caller",
    );
    assert_eq!(
        rows.application,
        Some(a.clone()),
        "the caller's application"
    );
    assert_eq!(rows.record, Some(record.clone()), "the caller's record");
    let written = authority_record(run, &z.id, Some(&record.id), run.at(3));
    ok(
        uow.save_authority_record(&written).await,
        "write in the unit",
    );
    commit(uow, "a unit opened with its caller's rows").await;

    let (mut uow, rows) = ok(
        store.begin_with_caller(&z.id, &a.id, None).await,
        "begin_with_caller without a record",
    );
    assert_eq!(rows.application, Some(a.clone()));
    assert_eq!(rows.record, None, "no record asked for, none read");
    let dropped = authority_record(run, &z.id, None, run.at(4));
    ok(
        uow.save_authority_record(&dropped).await,
        "write in the unit",
    );
    drop(uow);
    tokio::task::yield_now().await;

    let (_uow, rows) = ok(
        store
            .begin_with_caller(&z.id, &foreign.id, Some(&foreign_record.id))
            .await,
        "begin_with_caller naming another zone's rows",
    );
    assert_eq!(
        rows.application, None,
        "another zone's application is not read"
    );
    assert_eq!(rows.record, None, "another zone's record is not read");
    drop(_uow);
    let unknown = run.id("app", ApplicationId::parse);
    let (_uow, rows) = ok(
        store
            .begin_with_caller(&z.id, &unknown, Some("no-such-record"))
            .await,
        "begin_with_caller naming nothing",
    );
    assert_eq!(rows.application, None);
    assert_eq!(rows.record, None);
    drop(_uow);

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.get_authority_record(&z.id, &written.id).await,
            "get_authority_record"
        ),
        Some(written),
        "a write in a unit opened with its caller commits"
    );
    assert_eq!(
        ok(
            uow.get_authority_record(&z.id, &dropped.id).await,
            "get_authority_record"
        ),
        None,
        "a dropped unit opened with its caller writes nothing"
    );
}

async fn relaxed_units(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let kept = authority_record(run, &z.id, None, run.at(1));
    let dropped = authority_record(run, &z.id, None, run.at(2));
    let scope = ZoneScope::Zone(z.id.clone());

    let mut uow = ok(store.begin_relaxed(&scope).await, "begin_relaxed");
    ok(uow.save_authority_record(&kept).await, "relaxed save");
    commit(uow, "relaxed unit").await;
    let mut uow = ok(store.begin_relaxed(&scope).await, "begin_relaxed");
    ok(uow.save_authority_record(&dropped).await, "relaxed save");
    drop(uow);
    // A dropped unit's rollback may finish in the background (Postgres); the memory store is
    // serialised. Either way a later unit must see exactly the committed record.
    tokio::task::yield_now().await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.get_authority_record(&z.id, &kept.id).await,
            "get_authority_record"
        ),
        Some(kept.clone()),
        "a relaxed commit is visible like any other"
    );
    assert_eq!(
        ok(
            uow.get_authority_record(&z.id, &dropped.id).await,
            "get_authority_record"
        ),
        None,
        "a relaxed unit dropped without commit writes nothing"
    );
    drop(uow);

    // Minted records: concurrent writers (which an adapter may commit together) each get
    // their own answer; a taken id is refused and changes nothing.
    let minted: Vec<AuthorityRecord> = (0..6)
        .map(|i| authority_record(run, &z.id, None, run.at(3 + i)))
        .collect();
    let (a, b, c, d, e, f) = tokio::join!(
        store.insert_minted_record(&minted[0]),
        store.insert_minted_record(&minted[1]),
        store.insert_minted_record(&minted[2]),
        store.insert_minted_record(&minted[3]),
        store.insert_minted_record(&minted[4]),
        store.insert_minted_record(&minted[5]),
    );
    for result in [a, b, c, d, e, f] {
        ok(result, "insert_minted_record");
    }
    let mut retaken = minted[0].clone();
    retaken.subject_id = run.text("someone-else");
    match store.insert_minted_record(&retaken).await {
        Err(StoreError::Conflict(_)) => {}
        other => panic!("a taken record id must be refused, got {other:?}"),
    }
    let mut uow = begin_all(store).await;
    for r in &minted {
        assert_eq!(
            ok(
                uow.get_authority_record(&z.id, &r.id).await,
                "get_authority_record"
            ),
            Some(r.clone()),
            "every concurrently minted record is stored as sent"
        );
    }
}

async fn authority_records(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let root = authority_record(run, &z.id, None, run.at(1));
    let mut first = authority_record(run, &z.id, Some(&root.id), run.at(2));
    first.session_type = SessionType::User;
    first.claims_json = Some(json!({"iss": "https://idp.example", "n": [1, 2.5, null]}));
    first.revoked_at = Some(run.at(3));
    first.revoked_reason = Some("subject_revoked".into());
    first.status = RecordStatus::Revoked;
    let second = authority_record(run, &z.id, Some(&root.id), run.at(4));
    let grandchild = authority_record(run, &z.id, Some(&first.id), run.at(5));
    // Same parent id, other zone: never a child of the zone's root.
    let foreign = authority_record(run, &other.id, Some(&root.id), run.at(6));

    let mut uow = begin_all(store).await;
    for r in [&root, &first, &second, &grandchild, &foreign] {
        ok(uow.save_authority_record(r).await, "save_authority_record");
    }
    commit(uow, "authority records").await;

    let mut uow = begin_all(store).await;
    for r in [&root, &first, &second, &grandchild] {
        assert_eq!(
            ok(
                uow.get_authority_record(&z.id, &r.id).await,
                "get_authority_record"
            ),
            Some(r.clone()),
            "an authority record round-trips every field"
        );
        assert_eq!(
            ok(
                uow.get_authority_record(&other.id, &r.id).await,
                "get_authority_record"
            ),
            None,
            "an authority record of another zone reads as missing"
        );
    }
    assert_eq!(
        by_id(ok(
            uow.list_authority_record_children(&z.id, &root.id).await,
            "list_authority_record_children"
        )),
        by_id(vec![first.clone(), second.clone()]),
        "children are one level of the zone's tree: no grandchildren, no other zone's rows"
    );
    assert_eq!(
        ok(
            uow.list_authority_record_children(&other.id, &root.id)
                .await,
            "list_authority_record_children"
        ),
        vec![foreign.clone()],
        "the listing is confined to the zone it names"
    );
    assert!(
        ok(
            uow.list_authority_record_children(&z.id, &second.id).await,
            "list_authority_record_children"
        )
        .is_empty(),
        "a leaf has no children"
    );

    let mut revoked = second.clone();
    revoked.status = RecordStatus::Revoked;
    revoked.revoked_at = Some(run.at(7));
    revoked.revoked_reason = Some("session_revoked".into());
    ok(
        uow.save_authority_record(&revoked).await,
        "save_authority_record again",
    );
    let mut cleared = first.clone();
    cleared.claims_json = None;
    cleared.revoked_at = None;
    cleared.revoked_reason = None;
    ok(
        uow.save_authority_record(&cleared).await,
        "save_authority_record cleared",
    );
    commit(uow, "authority record upserts").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.get_authority_record(&z.id, &second.id).await,
            "get_authority_record"
        ),
        Some(revoked),
        "saving again replaces the record"
    );
    assert_eq!(
        ok(
            uow.get_authority_record(&z.id, &first.id).await,
            "get_authority_record"
        ),
        Some(cleared),
        "saving None clears optional fields"
    );
    drop(uow);

    let mut scoped = begin(store, &ZoneScope::Zone(other.id.clone())).await;
    assert_eq!(
        ok(
            scoped.get_authority_record(&z.id, &root.id).await,
            "get_authority_record"
        ),
        None,
        "a unit scoped to another zone cannot read the record even naming its zone"
    );
    assert!(
        ok(
            scoped.list_authority_record_children(&z.id, &root.id).await,
            "list_authority_record_children"
        )
        .is_empty(),
        "a unit scoped to another zone lists no children of this zone"
    );
    assert!(
        scoped
            .save_authority_record(&authority_record(run, &z.id, None, run.at(8)))
            .await
            .is_err(),
        "a unit scoped to another zone cannot write into this zone"
    );
}

/// Agent Sessions and Delegation edges round-trip every field, saves are upserts, and neither
/// reads across zones.
async fn agent_sessions_and_delegation_edges(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let root = agent_session(run, &z.id, run.at(1));
    let mut child = agent_session(run, &z.id, run.at(2));
    child.parent_id = Some(root.id.clone());
    child.lifecycle = Lifecycle::Service;
    child.labels = vec!["planner".into(), "reader".into()];
    child.depth = 1;
    child.ttl_seconds = Some(3_600);
    child.last_heartbeat_at = Some(run.at(3));
    child.heartbeat_deadline_at = Some(run.at(4));
    child.lease_generation = 7;
    child.child_count = 2;
    child.metadata = json!({"purpose": "contract", "nested": {"k": [true, 1]}})
        .as_object()
        .cloned()
        .unwrap_or_default();
    child.status_reason = Some("lease_expired".into());
    child.ended_at = Some(run.at(5));
    child.status = "expired".into();
    child.updated_at = run.at(6);

    let plain = delegation_edge(run, &z.id, run.at(7));
    let mut narrowed = delegation_edge(run, &z.id, run.at(8));
    narrowed.source_session_id = root.id.clone();
    narrowed.target_session_id = child.id.clone();
    narrowed.parent_edge_id = Some(plain.id.clone());
    narrowed.resource_id = Some(run.text("res"));
    narrowed.scopes = vec!["read".into(), "write".into()];
    narrowed.constraints_json = json!({"max_hops": 2, "resources": ["resource://x"]})
        .as_object()
        .cloned()
        .unwrap_or_default();
    narrowed.status = "revoked".into();
    narrowed.edge_version = 3;
    narrowed.revoked_at = Some(run.at(9));

    let mut uow = begin_all(store).await;
    for s in [&root, &child] {
        ok(uow.save_agent_session(s).await, "save_agent_session");
    }
    for e in [&plain, &narrowed] {
        ok(uow.save_delegation_edge(e).await, "save_delegation_edge");
    }
    commit(uow, "agent graph").await;

    let mut uow = begin_all(store).await;
    for s in [&root, &child] {
        assert_eq!(
            ok(
                uow.get_agent_session(&z.id, &s.id).await,
                "get_agent_session"
            ),
            Some(s.clone()),
            "an agent Session round-trips every field"
        );
        assert_eq!(
            ok(
                uow.get_agent_session(&other.id, &s.id).await,
                "get_agent_session"
            ),
            None,
            "an agent Session of another zone reads as missing"
        );
    }
    let mut both = ok(
        uow.get_agent_sessions(&z.id, &[&child.id, "missing", &root.id, &child.id])
            .await,
        "get_agent_sessions",
    );
    both.sort_by(|a, b| a.id.cmp(&b.id));
    let mut expected = vec![root.clone(), child.clone()];
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        both, expected,
        "get_agent_sessions answers each stored Session once, every field, none missing"
    );
    assert_eq!(
        ok(
            uow.get_agent_sessions(&other.id, &[&root.id, &child.id])
                .await,
            "get_agent_sessions"
        ),
        Vec::<AgentSession>::new(),
        "get_agent_sessions reads nothing of another zone"
    );
    for e in [&plain, &narrowed] {
        assert_eq!(
            ok(
                uow.get_delegation_edge(&z.id, &e.id).await,
                "get_delegation_edge"
            ),
            Some(e.clone()),
            "a Delegation edge round-trips every field"
        );
        assert_eq!(
            ok(
                uow.get_delegation_edge(&other.id, &e.id).await,
                "get_delegation_edge"
            ),
            None,
            "a Delegation edge of another zone reads as missing"
        );
    }

    let mut renewed = root.clone();
    renewed.lease_generation = 1;
    renewed.child_count = 1;
    renewed.updated_at = run.at(10);
    ok(
        uow.save_agent_session(&renewed).await,
        "save_agent_session again",
    );
    let mut bumped = plain.clone();
    bumped.edge_version = 2;
    bumped.scopes = vec!["read".into()];
    ok(
        uow.save_delegation_edge(&bumped).await,
        "save_delegation_edge again",
    );
    commit(uow, "agent graph upserts").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.get_agent_session(&z.id, &root.id).await,
            "get_agent_session"
        ),
        Some(renewed),
        "saving a Session again replaces it"
    );
    assert_eq!(
        ok(
            uow.get_delegation_edge(&z.id, &plain.id).await,
            "get_delegation_edge"
        ),
        Some(bumped),
        "saving an edge again replaces it"
    );
    drop(uow);

    let mut scoped = begin(store, &ZoneScope::Zone(other.id.clone())).await;
    assert_eq!(
        ok(
            scoped.get_agent_session(&z.id, &root.id).await,
            "get_agent_session"
        ),
        None,
        "a unit scoped to another zone cannot read the Session even naming its zone"
    );
    assert_eq!(
        ok(
            scoped.get_delegation_edge(&z.id, &plain.id).await,
            "get_delegation_edge"
        ),
        None,
        "a unit scoped to another zone cannot read the edge even naming its zone"
    );
    assert!(
        scoped
            .save_agent_session(&agent_session(run, &z.id, run.at(11)))
            .await
            .is_err(),
        "a unit scoped to another zone cannot write a Session into this zone"
    );
    assert!(
        scoped
            .save_delegation_edge(&delegation_edge(run, &z.id, run.at(11)))
            .await
            .is_err(),
        "a unit scoped to another zone cannot write an edge into this zone"
    );
}

async fn epoch(store: &dyn Store, zone: &ZoneId) -> i64 {
    let mut uow = begin_all(store).await;
    ok(
        uow.delegation_graph_epoch(zone).await,
        "delegation_graph_epoch",
    )
}

/// The delegation graph epoch starts at 0 and counts bumps per zone, each zone on its own;
/// concurrent bumps are never lost.
async fn delegation_graph_epochs(store: &dyn Store, run: &Run) {
    let a = committed_zone(store, run).await;
    let b = committed_zone(store, run).await;
    assert_eq!(
        epoch(store, &a.id).await,
        0,
        "a zone never bumped is at epoch 0"
    );

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.bump_delegation_graph_epoch(&a.id).await, "bump"),
        1,
        "first bump"
    );
    assert_eq!(
        ok(
            uow.delegation_graph_epoch(&a.id).await,
            "delegation_graph_epoch"
        ),
        1,
        "a unit reads its own bump"
    );
    assert_eq!(
        ok(uow.bump_delegation_graph_epoch(&a.id).await, "bump"),
        2,
        "second bump"
    );
    commit(uow, "two bumps").await;
    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.bump_delegation_graph_epoch(&a.id).await, "bump"),
        3,
        "third bump"
    );
    commit(uow, "third bump").await;

    assert_eq!(epoch(store, &a.id).await, 3, "bumps are committed");
    assert_eq!(
        epoch(store, &b.id).await,
        0,
        "another zone's epoch is untouched"
    );
    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(uow.bump_delegation_graph_epoch(&b.id).await, "bump"),
        1,
        "each zone counts from 1"
    );
    commit(uow, "bump b").await;
    assert_eq!(epoch(store, &a.id).await, 3, "bumping b leaves a alone");

    let bump = |zone: ZoneId| async move {
        let mut uow = begin_all(store).await;
        let value = ok(
            uow.bump_delegation_graph_epoch(&zone).await,
            "concurrent bump",
        );
        commit(uow, "concurrent bump").await;
        value
    };
    let (x, y) = tokio::join!(bump(a.id.clone()), bump(a.id.clone()));
    let mut seen = [x, y];
    seen.sort_unstable();
    assert_eq!(seen, [4, 5], "concurrent bumps each get their own value");
    assert_eq!(epoch(store, &a.id).await, 5, "no concurrent bump is lost");

    let mut scoped = begin(store, &ZoneScope::Zone(b.id.clone())).await;
    assert_eq!(
        ok(
            scoped.delegation_graph_epoch(&a.id).await,
            "delegation_graph_epoch"
        ),
        0,
        "a unit scoped to another zone does not see the epoch"
    );
    assert!(
        scoped.bump_delegation_graph_epoch(&a.id).await.is_err(),
        "a unit scoped to another zone cannot bump it"
    );
    drop(scoped);
    assert_eq!(
        epoch(store, &a.id).await,
        5,
        "the refused bump changed nothing"
    );
}

/// Signing keys list newest version first up to the limit, per zone; a second key with a
/// zone's existing version is `Conflict("zone_signing_keys_version")` and changes nothing.
async fn signing_keys(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let other = committed_zone(store, run).await;
    let v1 = signing_key(run, &z.id, 1, run.at(1));
    let v2 = signing_key(run, &z.id, 2, run.at(2));
    let v3 = signing_key(run, &z.id, 3, run.at(3));

    let mut uow = begin_all(store).await;
    assert!(
        ok(
            uow.latest_signing_keys(&z.id, 5).await,
            "latest_signing_keys"
        )
        .is_empty(),
        "a zone without keys lists none"
    );
    // Inserted out of order: the listing orders by version, not by insertion.
    for k in [&v2, &v3, &v1] {
        ok(uow.insert_signing_key(k).await, "insert_signing_key");
    }
    commit(uow, "signing keys").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.latest_signing_keys(&z.id, 2).await,
            "latest_signing_keys"
        ),
        vec![v3.clone(), v2.clone()],
        "the newest `limit` keys, highest version first"
    );
    assert_eq!(
        ok(
            uow.latest_signing_keys(&z.id, 10).await,
            "latest_signing_keys"
        ),
        vec![v3.clone(), v2.clone(), v1.clone()],
        "every key when the limit is larger, every field round-tripped"
    );
    assert!(
        ok(
            uow.latest_signing_keys(&other.id, 10).await,
            "latest_signing_keys"
        )
        .is_empty(),
        "another zone's keys are not listed"
    );

    assert_conflict(
        uow.insert_signing_key(&signing_key(run, &z.id, 2, run.at(4)))
            .await,
        "zone_signing_keys_version",
        "a second key with an existing version",
    );
    let theirs = signing_key(run, &other.id, 1, run.at(5));
    ok(
        uow.insert_signing_key(&theirs).await,
        "versions are per zone: another zone may use version 1",
    );
    commit(uow, "after the refused key").await;

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.latest_signing_keys(&z.id, 10).await,
            "latest_signing_keys"
        ),
        vec![v3.clone(), v2.clone(), v1.clone()],
        "the refused key changed nothing"
    );
    assert_eq!(
        ok(
            uow.latest_signing_keys(&other.id, 10).await,
            "latest_signing_keys"
        ),
        vec![theirs],
        "the rest of the unit of work committed"
    );
    drop(uow);

    let mut scoped = begin(store, &ZoneScope::Zone(other.id.clone())).await;
    assert!(
        ok(
            scoped.latest_signing_keys(&z.id, 10).await,
            "latest_signing_keys"
        )
        .is_empty(),
        "a unit scoped to another zone lists none of this zone's keys"
    );
    assert!(
        scoped
            .insert_signing_key(&signing_key(run, &z.id, 9, run.at(6)))
            .await
            .is_err(),
        "a unit scoped to another zone cannot add a key to this zone"
    );
}

/// Dropping a unit of work discards its authority-graph writes like any other.
async fn authority_graph_writes_roll_back_on_drop(store: &dyn Store, run: &Run) {
    let z = committed_zone(store, run).await;
    let record = authority_record(run, &z.id, None, run.at(1));
    let session = agent_session(run, &z.id, run.at(2));
    let edge = delegation_edge(run, &z.id, run.at(3));
    let key = signing_key(run, &z.id, 1, run.at(4));

    let mut uow = begin_all(store).await;
    ok(
        uow.save_authority_record(&record).await,
        "save_authority_record",
    );
    ok(uow.save_agent_session(&session).await, "save_agent_session");
    ok(
        uow.save_delegation_edge(&edge).await,
        "save_delegation_edge",
    );
    ok(uow.insert_signing_key(&key).await, "insert_signing_key");
    assert_eq!(
        ok(uow.bump_delegation_graph_epoch(&z.id).await, "bump"),
        1,
        "bump"
    );
    drop(uow);

    let mut uow = begin_all(store).await;
    assert_eq!(
        ok(
            uow.get_authority_record(&z.id, &record.id).await,
            "get_authority_record"
        ),
        None,
        "dropped authority record"
    );
    assert_eq!(
        ok(
            uow.get_agent_session(&z.id, &session.id).await,
            "get_agent_session"
        ),
        None,
        "dropped Session"
    );
    assert_eq!(
        ok(
            uow.get_delegation_edge(&z.id, &edge.id).await,
            "get_delegation_edge"
        ),
        None,
        "dropped edge"
    );
    assert!(
        ok(
            uow.latest_signing_keys(&z.id, 10).await,
            "latest_signing_keys"
        )
        .is_empty(),
        "dropped signing key"
    );
    assert_eq!(
        ok(
            uow.delegation_graph_epoch(&z.id).await,
            "delegation_graph_epoch"
        ),
        0,
        "dropped bump"
    );
    // The version and the epoch are free again.
    ok(
        uow.insert_signing_key(&key).await,
        "insert the dropped key again",
    );
    assert_eq!(
        ok(uow.bump_delegation_graph_epoch(&z.id).await, "bump"),
        1,
        "bump again"
    );
    commit(uow, "after the rollback").await;
}

// Cases kept in their own file; declared last so the fixtures and macros above are in scope.
mod approvals;
mod coordination;
mod revocation;
mod subject_issuers;
