//! Approval routes (`spec/api.md §3.14`) and their capability rows (§2 rows 2–4), driven over
//! HTTP as the admin SDK drives them. Holds are issued by the STS, so the tests park them
//! directly in the store, in every state a hold can reach.

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::test::{self, TestRequest};
use caracal_api::{api_app, ApiConfig, ApiState};
use caracal_core::approval::{ApprovalHold, ApproverClass, PrivacyMode, HUMAN_APPROVAL};
use caracal_core::ids::ZoneId;
use caracal_core::manage::{Management, ManagementConfig};
use caracal_core::ports::store::{Page, Store, ZoneScope};
use caracal_core::ports::Clock;
use caracal_core::time::Timestamp;
use caracal_crypto::{Argon2idHasher, EnvelopeSealer, HmacSha256, Kek, RandomSecrets};
use caracal_http::metrics::HttpCounters;
use caracal_memory::{MemoryBus, MemoryRateLimiter, MemoryStore, SystemClock, UuidV7Ids};
use serde_json::{json, Map, Value};

const TOKEN: &str = "cat_test_bootstrap_token";
const HOUR_MS: i64 = 3_600_000;

struct Harness {
    store: MemoryStore,
    state: ApiState,
}

async fn harness() -> Harness {
    let store = MemoryStore::new();
    let management = Management::new(
        Arc::new(store.clone()),
        Arc::new(SystemClock),
        Arc::new(UuidV7Ids),
        Arc::new(EnvelopeSealer::new(
            Kek::generate().expect("kek"),
            Vec::new(),
        )),
        // Cheap Argon2 parameters keep tests fast.
        Arc::new(Argon2idHasher::with_params(256, 1, 1).expect("params")),
        Arc::new(RandomSecrets::new()),
        Some(Arc::new(HmacSha256::from_bytes(&[7u8; 32]))),
        ManagementConfig::default(),
    );
    management.seed_bootstrap_token(TOKEN).await.expect("seed");
    let state = ApiState {
        management,
        outbox: Arc::new(store.clone()),
        bus: Arc::new(MemoryBus::new()),
        store: Arc::new(store.clone()),
        audit: Arc::new(caracal_memory::MemoryLedger::new(Arc::new(SystemClock))),
        counters: Arc::new(HttpCounters::default()),
        limiter: Arc::new(MemoryRateLimiter::new()),
        config: Arc::new(ApiConfig::default()),
    };
    Harness { store, state }
}

/// One request with `token`; the body is JSON when given. Returns status and JSON body.
async fn send<S, B>(
    app: &S,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let mut req = TestRequest::default()
        .method(method.parse().expect("method"))
        .uri(path)
        .insert_header(("authorization", format!("Bearer {token}")));
    if let Some(body) = body {
        req = req.set_json(body);
    }
    let res = test::call_service(app, req.to_request()).await;
    let status = res.status().as_u16();
    let bytes = test::read_body(res).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn now() -> Timestamp {
    SystemClock.now()
}

/// A pending operator hold created `age_ms` ago, expiring in an hour.
fn hold(zone: &str, id: &str, principal: &str, age_ms: i64) -> ApprovalHold {
    let created = now().plus_millis(-age_ms);
    let mut metadata = Map::new();
    metadata.insert("requested_scopes".into(), json!(["payments:write"]));
    metadata.insert("resources".into(), json!(["resource://payments"]));
    metadata.insert("agent_labels".into(), json!(["billing"]));
    ApprovalHold {
        id: id.into(),
        zone_id: ZoneId::parse(zone).expect("zone"),
        session_id: format!("ar-{id}"),
        principal_id: principal.into(),
        application_id: Some("app-1".into()),
        approval_type: HUMAN_APPROVAL.into(),
        tier: "high".into(),
        approver_class: ApproverClass::Operator,
        privacy_mode: PrivacyMode::Identified,
        subject_anchor: None,
        binding: format!("{:0>64}", id.len()),
        metadata_json: metadata,
        decision_reason: None,
        created_at: created,
        expires_at: now().plus_millis(HOUR_MS),
        satisfied_at: None,
        rejected_at: None,
        consumed_at: None,
        approver_subject_id: None,
        approver_session_id: None,
        consumed_authority_record_id: None,
    }
}

async fn park(store: &MemoryStore, holds: &[ApprovalHold]) {
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    for h in holds {
        uow.save_approval(h).await.expect("save hold");
    }
    uow.commit().await.expect("commit");
}

async fn stored(store: &MemoryStore, id: &str) -> ApprovalHold {
    let mut uow = store.begin(&ZoneScope::All).await.expect("begin");
    uow.get_approval(id).await.expect("get").expect("hold")
}

async fn zone<S, B>(app: &S, name: &str) -> String
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let (status, body) = send(app, TOKEN, "POST", "/v1/zones", Some(json!({"name": name}))).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().expect("zone id").to_owned()
}

/// Mints an admin token; returns `(id, plaintext)`.
async fn mint<S, B>(app: &S, body: Value) -> (String, String)
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let (status, minted) = send(app, TOKEN, "POST", "/v1/admin-tokens", Some(body)).await;
    assert_eq!(status, 201, "{minted}");
    (
        minted["id"].as_str().expect("id").to_owned(),
        minted["token"].as_str().expect("token").to_owned(),
    )
}

/// The seven holds of the read tests: one per state plus a subject-only pending hold and
/// a decided history for `alice`.
fn zoo(z: &str) -> Vec<ApprovalHold> {
    let pending = hold(z, "h-pending", "alice", 1_000);
    let mut approved = hold(z, "h-approved", "alice", 5_000);
    approved.satisfied_at = Some(now().plus_millis(-4_000));
    approved.approver_subject_id = Some("admin:someone".into());
    let mut rejected = hold(z, "h-rejected", "alice", 6_000);
    rejected.rejected_at = Some(now().plus_millis(-5_500));
    rejected.decision_reason = Some("not today".into());
    let mut expired = hold(z, "h-expired", "bob", 7_000);
    expired.expires_at = now().plus_millis(-1);
    let mut consumed = hold(z, "h-consumed", "bob", 8_000);
    consumed.satisfied_at = Some(now().plus_millis(-7_500));
    consumed.consumed_at = Some(now().plus_millis(-7_000));
    consumed.tier = "critical,high".into();
    let mut subject = hold(z, "h-subject", "user-1", 2_000);
    subject.approver_class = ApproverClass::Subject;
    subject.subject_anchor = Some("user-1".into());
    subject.tier = "critical".into();
    let mut any = hold(z, "h-any", "carol", 3_000);
    any.approver_class = ApproverClass::Any;
    vec![pending, approved, rejected, expired, consumed, subject, any]
}

fn ids(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect()
}

#[actix_web::test]
async fn operators_list_filter_count_and_read_holds() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let z = zone(&app, "Approvals").await;
    let other = zone(&app, "Elsewhere").await;
    park(&h.store, &zoo(&z)).await;
    park(&h.store, &[hold(&other, "h-foreign", "alice", 500)]).await;
    let base = format!("/v1/zones/{z}/approvals");

    let (status, list) = send(&app, TOKEN, "GET", &base, None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        ids(&list),
        [
            "h-pending",
            "h-subject",
            "h-any",
            "h-approved",
            "h-rejected",
            "h-expired",
            "h-consumed"
        ],
        "the zone's holds only, newest first"
    );
    assert_eq!(list["next_cursor"], Value::Null);
    let row = &list["items"][0];
    let mut keys: Vec<&str> = row
        .as_object()
        .expect("row")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut wanted = vec![
        "id",
        "zone_id",
        "session_id",
        "principal_id",
        "application_id",
        "approval_type",
        "tier",
        "approver_class",
        "privacy_mode",
        "subject_anchor",
        "binding",
        "metadata_json",
        "decision_reason",
        "created_at",
        "expires_at",
        "satisfied_at",
        "rejected_at",
        "consumed_at",
        "approver_subject_id",
        "principal_federated",
        "prior_approved",
        "prior_rejected",
        "state",
    ];
    wanted.sort_unstable();
    assert_eq!(keys, wanted, "the row shape of §3.14");
    assert_eq!(row["state"], "pending");
    assert_eq!(row["approval_type"], "human_approval");
    assert_eq!(row["approver_class"], "operator");
    assert_eq!(row["privacy_mode"], "identified");
    assert_eq!(row["metadata_json"]["agent_labels"], json!(["billing"]));
    assert_eq!(row["satisfied_at"], Value::Null);
    assert_eq!(
        (&row["prior_approved"], &row["prior_rejected"]),
        (&json!(1), &json!(1)),
        "alice's earlier holds: one approved, one rejected"
    );
    assert_eq!(row["principal_federated"], false);
    let states: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| r["state"].as_str().expect("state"))
        .collect();
    assert_eq!(
        states,
        ["pending", "pending", "pending", "approved", "rejected", "expired", "consumed"]
    );

    for (query, expected) in [
        ("state=pending", vec!["h-pending", "h-subject", "h-any"]),
        ("state=expired", vec!["h-expired"]),
        ("state=consumed", vec!["h-consumed"]),
        ("tier=critical", vec!["h-subject", "h-consumed"]),
        ("principal=bob", vec!["h-expired", "h-consumed"]),
        ("principal=alice&state=approved", vec!["h-approved"]),
    ] {
        let (status, list) = send(&app, TOKEN, "GET", &format!("{base}?{query}"), None).await;
        assert_eq!(status, 200, "{query}: {list}");
        assert_eq!(ids(&list), expected, "{query}");
    }
    let since = stored(&h.store, "h-subject")
        .await
        .created_at
        .to_iso_millis();
    let until = stored(&h.store, "h-pending")
        .await
        .created_at
        .to_iso_millis();
    let (_, list) = send(
        &app,
        TOKEN,
        "GET",
        &format!("{base}?since={since}&until={until}"),
        None,
    )
    .await;
    assert_eq!(
        ids(&list),
        ["h-subject"],
        "since is inclusive, until exclusive"
    );

    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("{base}?limit=2&cursor={c}"),
            None => format!("{base}?limit=2"),
        };
        let (status, page) = send(&app, TOKEN, "GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        walked.extend(ids(&page).into_iter().map(str::to_owned));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        walked,
        ids(&list_all(&app, &base).await),
        "cursors walk it all"
    );

    for bad in [
        "state=open",
        "since=2026-01-01T00:00:00%2B01:00",
        "until=yesterday",
        "limit=0",
    ] {
        let (status, body) = send(&app, TOKEN, "GET", &format!("{base}?{bad}"), None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_query")),
            "{bad}"
        );
    }

    let (status, counts) = send(&app, TOKEN, "GET", &format!("{base}/counts"), None).await;
    assert_eq!(status, 200, "{counts}");
    assert_eq!(
        counts,
        json!({"pending": 3, "approved": 1, "rejected": 1, "expired": 1, "consumed": 1})
    );

    let (status, one) = send(&app, TOKEN, "GET", &format!("{base}/h-subject"), None).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["approver_class"], "subject");
    assert_eq!(
        one["principal_federated"], true,
        "the principal is the user"
    );
    assert_eq!(one["subject_anchor"], "user-1");
    let (_, rejected) = send(&app, TOKEN, "GET", &format!("{base}/h-rejected"), None).await;
    assert_eq!(rejected["state"], "rejected");
    assert_eq!(rejected["decision_reason"], "not today");
    assert_eq!(
        (&rejected["prior_approved"], &rejected["prior_rejected"]),
        (&json!(0), &json!(0)),
        "nothing of alice's is older"
    );

    for missing in ["nope", "h-foreign"] {
        let (status, body) = send(&app, TOKEN, "GET", &format!("{base}/{missing}"), None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("approval_not_found")),
            "{missing}: another zone's hold is not found through this zone"
        );
    }
    let (status, body) = send(&app, TOKEN, "GET", &format!("{base}/bad%20id"), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_params"))
    );
    let (status, body) = send(&app, TOKEN, "GET", "/v1/zones/no-zone/approvals", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("zone_not_found"))
    );
    let (status, body) = send(
        &app,
        TOKEN,
        "GET",
        "/v1/zones/no-zone/approvals/counts",
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("zone_not_found"))
    );
}

async fn list_all<S, B>(app: &S, base: &str) -> Value
where
    S: Service<actix_http::Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    let (status, list) = send(app, TOKEN, "GET", base, None).await;
    assert_eq!(status, 200, "{list}");
    list
}

#[actix_web::test]
async fn operator_decisions_commit_with_their_evidence() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let z = zone(&app, "Decisions").await;
    park(&h.store, &zoo(&z)).await;
    let (approver_id, approver) = mint(
        &app,
        json!({"name": "approver", "scope": "global", "capability": "approve"}),
    )
    .await;
    let base = format!("/v1/zones/{z}/approvals");

    let (status, body) = send(
        &app,
        &approver,
        "POST",
        &format!("{base}/h-pending/approve"),
        Some(json!({"reason": "change ticket 42"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let approver_subject = format!("admin:{approver_id}");
    assert_eq!(body["id"], "h-pending");
    assert_eq!(body["state"], "approved");
    assert!(body["satisfied_at"].is_string());
    assert_eq!(body["rejected_at"], Value::Null);
    assert_eq!(body["approver_subject_id"], approver_subject.as_str());
    let held = stored(&h.store, "h-pending").await;
    assert_eq!(held.decision_reason.as_deref(), Some("change ticket 42"));
    assert_eq!(
        held.approver_subject_id.as_deref(),
        Some(approver_subject.as_str())
    );
    let (_, read) = send(&app, TOKEN, "GET", &format!("{base}/h-pending"), None).await;
    assert_eq!(
        read["state"], "approved",
        "the decision is what the next read sees"
    );

    let mut uow = h.store.begin(&ZoneScope::All).await.expect("begin");
    let frame = uow
        .find_latest_outbox("caracal.audit.events", &[("id", "h-pending")])
        .await
        .expect("outbox")
        .expect("the decision's audit frame is in the outbox");
    let records = uow
        .list_admin_audit(
            Some(z.as_str()),
            &Page {
                limit: 50,
                after: None,
            },
        )
        .await
        .expect("admin audit");
    drop(uow);
    assert!(
        frame.fields.contains_key("sig"),
        "signed with AUDIT_HMAC_KEY"
    );
    let event: Value = serde_json::from_str(&frame.fields["data"]).expect("event json");
    assert_eq!(event["event_type"], "step_up_decided");
    assert_eq!(event["decision"], "approved");
    assert_eq!(event["request_id"], "h-pending");
    assert_eq!(event["zone_id"], z.as_str());
    let m = &event["metadata_json"];
    assert_eq!(m["challenge_id"], "h-pending");
    assert_eq!(m["tier"], "high");
    assert_eq!(m["approver_class"], "operator");
    assert_eq!(m["privacy_mode"], "identified");
    assert_eq!(m["binding"], held.binding.as_str());
    assert_eq!(m["session_id"], "ar-h-pending");
    assert_eq!(m["approver_plane"], "operator");
    assert_eq!(m["approver_subject_id"], approver_subject.as_str());
    assert_eq!(m["application_id"], "app-1");
    assert_eq!(m["reason"], "change ticket 42");
    assert_eq!(m["agent_labels"], json!(["billing"]));
    assert!(
        m.get("subject_anchor").is_none(),
        "absent when the hold has none"
    );
    let decision_record = records
        .iter()
        .find(|r| r.path == format!("{base}/h-pending/approve"))
        .expect("the decision has an admin audit record");
    assert_eq!(decision_record.status_code, 200);
    assert_eq!(decision_record.entity_type.as_deref(), Some("approvals"));
    assert_eq!(decision_record.entity_id.as_deref(), Some("h-pending"));

    for (hold_id, verb, state) in [
        ("h-pending", "approve", "approved"),
        ("h-pending", "reject", "approved"),
        ("h-approved", "approve", "approved"),
        ("h-rejected", "approve", "rejected"),
        ("h-expired", "approve", "expired"),
        ("h-consumed", "reject", "consumed"),
    ] {
        let (status, body) = send(
            &app,
            &approver,
            "POST",
            &format!("{base}/{hold_id}/{verb}"),
            Some(json!({})),
        )
        .await;
        assert_eq!(status, 409, "{hold_id} {verb}: {body}");
        assert_eq!(
            body,
            json!({"error": "approval_not_decidable", "state": state}),
            "{hold_id} {verb}"
        );
    }

    let (status, body) = send(
        &app,
        &approver,
        "POST",
        &format!("{base}/h-subject/approve"),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("subject_approval_required"))
    );
    assert_eq!(stored(&h.store, "h-subject").await.satisfied_at, None);

    let long = "x".repeat(501);
    for bad in [json!({"reason": long}), json!({"reason": 5}), json!([])] {
        let (status, body) = send(
            &app,
            &approver,
            "POST",
            &format!("{base}/h-any/reject"),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_body")),
            "{bad}"
        );
    }
    assert_eq!(
        stored(&h.store, "h-any").await.rejected_at,
        None,
        "refused input decides nothing"
    );

    // A bare POST, as curl sends it, decides too; `any` admits an operator. The bootstrap
    // token is the one write token that may decide.
    let req = TestRequest::post()
        .uri(&format!("{base}/h-any/reject"))
        .insert_header(("authorization", format!("Bearer {TOKEN}")));
    let res = test::call_service(&app, req.to_request()).await;
    assert_eq!(res.status().as_u16(), 200);
    let body: Value = serde_json::from_slice(&test::read_body(res).await).expect("json");
    assert_eq!(body["state"], "rejected");
    assert!(body["rejected_at"].is_string());
    assert_eq!(body["satisfied_at"], Value::Null);
    let any = stored(&h.store, "h-any").await;
    assert_eq!(any.decision_reason, None);
    assert!(any
        .approver_subject_id
        .as_deref()
        .is_some_and(|s| s.starts_with("admin:")));

    for path in ["nope/approve", "bad%20id/reject"] {
        let (status, body) = send(
            &app,
            &approver,
            "POST",
            &format!("{base}/{path}"),
            Some(json!({})),
        )
        .await;
        let code = if path.starts_with("bad") {
            (400, Some("invalid_params"))
        } else {
            (404, Some("approval_not_found"))
        };
        assert_eq!((status, body["error"].as_str()), code, "{path}");
    }
}

#[actix_web::test]
async fn capability_rows_guard_decisions() {
    let h = harness().await;
    let app = test::init_service(api_app!(h.state.clone())).await;
    let z = zone(&app, "Guarded").await;
    let other = zone(&app, "Other").await;
    park(
        &h.store,
        &[
            hold(&z, "h-1", "alice", 1_000),
            hold(&other, "h-2", "alice", 1_000),
        ],
    )
    .await;
    let (_, reader) = mint(
        &app,
        json!({"name": "reader", "scope": "global", "capability": "read"}),
    )
    .await;
    let (_, writer) = mint(&app, json!({"name": "writer", "scope": "global"})).await;
    let (_, approver) = mint(
        &app,
        json!({"name": "approver", "scope": "global", "capability": "approve"}),
    )
    .await;
    let (_, zoned) = mint(
        &app,
        json!({"name": "zoned", "scope": "zone", "zone_id": z, "capability": "approve"}),
    )
    .await;
    let approve = format!("/v1/zones/{z}/approvals/h-1/approve");

    for (token, method, path, code) in [
        (&reader, "POST", approve.clone(), "admin_token_read_only"),
        (
            &writer,
            "POST",
            approve.clone(),
            "approve_capability_required",
        ),
        (
            &writer,
            "POST",
            format!("/v1/zones/{z}/approvals/h-1/reject"),
            "approve_capability_required",
        ),
        (
            &approver,
            "POST",
            format!("/v1/zones/{z}/applications"),
            "admin_token_approve_only",
        ),
        (
            &zoned,
            "POST",
            format!("/v1/zones/{other}/approvals/h-2/approve"),
            "admin_token_zone_mismatch",
        ),
    ] {
        let (status, body) = send(&app, token, method, &path, Some(json!({}))).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (403, Some(code)),
            "{method} {path}"
        );
    }
    assert_eq!(
        stored(&h.store, "h-1").await.satisfied_at,
        None,
        "refused callers decided nothing"
    );
    assert_eq!(stored(&h.store, "h-2").await.satisfied_at, None);

    for token in [&reader, &writer, &approver, &zoned] {
        for path in [
            format!("/v1/zones/{z}/approvals"),
            format!("/v1/zones/{z}/approvals/counts"),
            format!("/v1/zones/{z}/approvals/h-1"),
        ] {
            let (status, body) = send(&app, token, "GET", &path, None).await;
            assert_eq!(status, 200, "every capability reads {path}: {body}");
        }
    }

    let (status, body) = send(&app, &zoned, "POST", &approve, Some(json!({}))).await;
    assert_eq!(
        status, 200,
        "a zone approve token decides in its zone: {body}"
    );
}
