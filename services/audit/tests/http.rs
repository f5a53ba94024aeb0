//! The Audit service's HTTP surface in process (`spec/audit-streams-storage.md §6.6–6.7`):
//! operator-token gating, search paging and its Go field names, the DLQ routes, health,
//! readiness and metrics, as an operator's client sees them.

mod support;

use std::sync::atomic::Ordering;

use actix_web::body::MessageBody;
use actix_web::dev::Service;
use actix_web::test::{self, TestRequest};
use caracal_audit::audit_app;
use caracal_audit::stats::poll_stream_stats;
use caracal_core::ports::events::EventBus;
use serde_json::{json, Value};
use support::*;

const TOKEN: &str = "aat_operator_token_for_tests";

struct Reply {
    status: u16,
    content_type: String,
    www_authenticate: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn call(w: &World, req: TestRequest) -> Reply {
    let app = test::init_service(audit_app!(w.state.clone())).await;
    let res = app.call(req.to_request()).await.expect("call");
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = res.status().as_u16();
    let content_type = header("content-type").unwrap_or_default();
    let www_authenticate = header("www-authenticate");
    let bytes = res.into_body().try_into_bytes().unwrap_or_default();
    Reply {
        status,
        content_type,
        www_authenticate,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn get(uri: &str) -> TestRequest {
    TestRequest::get()
        .uri(uri)
        .insert_header(("authorization", format!("Bearer {TOKEN}")))
}

async fn operator_world() -> World {
    World::new(|c| c.admin_token = Some(TOKEN.to_owned())).await
}

#[actix_web::test]
async fn operator_routes_do_not_exist_without_a_token() {
    let w = World::new(|_| {}).await;
    for req in [
        get("/api/audit/search?zone_id=z"),
        get("/api/audit/dlq"),
        get("/api/audit/dlq/1-0"),
        TestRequest::post().uri("/api/audit/dlq/replay"),
    ] {
        let reply = call(&w, req).await;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.body, "404 page not found\n");
        assert_eq!(reply.content_type, "text/plain; charset=utf-8");
    }
}

#[actix_web::test]
async fn operator_routes_require_the_token_bearer_or_bare() {
    let w = operator_world().await;
    for auth in [
        None,
        Some("Bearer wrong".to_owned()),
        Some(format!("Basic {TOKEN}")),
    ] {
        let mut req = TestRequest::get().uri("/api/audit/dlq");
        if let Some(auth) = auth {
            req = req.insert_header(("authorization", auth));
        }
        let reply = call(&w, req).await;
        assert_eq!(reply.status, 401);
        assert_eq!(reply.body, "unauthorized\n");
        assert_eq!(
            reply.www_authenticate.as_deref(),
            Some("Bearer realm=\"caracal-audit\"")
        );
    }
    let bare = TestRequest::get()
        .uri("/api/audit/dlq")
        .insert_header(("authorization", TOKEN));
    assert_eq!(call(&w, bare).await.status, 200);
    assert_eq!(call(&w, get("/api/audit/dlq")).await.status, 200);
}

#[actix_web::test]
async fn search_answers_the_spec_example_in_go_field_names() {
    let w = operator_world().await;
    let data = r#"{"id":"e1","zone_id":"zone_a","event_type":"token_exchange","request_id":"r1","decision":"allow","evaluation_status":"complete","determining_policies_json":[],"diagnostics_json":[],"occurred_at":"2026-05-21T12:00:00.123456789Z"}"#;
    let sig = w.mac.sign_hex(data.as_bytes());
    assert_eq!(
        sig, "350fde97fa2751d3f12407dfe38a5a66082c0c1ef8640fd14aea363281253b78",
        "the spec's frame signature"
    );
    w.publish_event("e1", data).await;
    w.ingest().await;
    let reply = call(
        &w,
        get("/api/audit/search?zone_id=zone_a&since=2026-05-21T00:00:00Z&until=2026-05-22T00:00:00Z"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    let row = &body["events"][0];
    assert_eq!(
        row["Event"],
        json!({"id":"e1","zone_id":"zone_a","event_type":"token_exchange","request_id":"r1",
               "decision":"allow","evaluation_status":"complete","determining_policies_json":[],
               "diagnostics_json":[],"occurred_at":"2026-05-21T12:00:00.123456Z"})
    );
    assert_eq!(
        row["ContentSHA256"],
        "7086267f2ffd35554c784a3d3938a8a5a5391e87069cf8c6a2f8b00025658fda"
    );
    assert_eq!(
        row["ChainHMAC"],
        "e8b943c9953f1d4d2953dde5c087290aa1ea4ea29eedffb553b8dc6f92f1af73"
    );
    assert_eq!(row["PrevContentSHA256"], "");
    assert_eq!(row["ChainSeq"], 1);
    assert!(row["IngestedAt"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(body["next_cursor"], "1");
}

#[actix_web::test]
async fn search_pages_by_chain_seq_and_filters() {
    let w = operator_world().await;
    for n in 1..=5 {
        let id = format!("e{n}");
        let decision = if n == 3 { "deny" } else { "allow" };
        w.publish_event(
            &id,
            &event(
                &id,
                "zone_a",
                &minutes_ago(10 - n),
                decision,
                &format!("r{n}"),
            ),
        )
        .await;
    }
    w.publish_event(
        "old",
        &event("old", "zone_a", &minutes_ago(2 * 24 * 60), "allow", "r0"),
    )
    .await;
    w.publish_event(
        "other",
        &event("other", "zone_b", &minutes_ago(1), "allow", "r1"),
    )
    .await;
    w.ingest().await;
    let page = |uri: String| {
        let w = &w;
        async move {
            let body = call(w, get(&uri)).await.json();
            let seqs: Vec<i64> = body["events"]
                .as_array()
                .map(|rows| rows.iter().filter_map(|r| r["ChainSeq"].as_i64()).collect())
                .unwrap_or_default();
            (seqs, body["next_cursor"].clone(), body["events"].is_null())
        }
    };
    assert_eq!(
        page("/api/audit/search?zone_id=zone_a&limit=2".into()).await,
        (vec![1, 2], json!("2"), false)
    );
    assert_eq!(
        page("/api/audit/search?zone_id=zone_a&limit=2&cursor=2".into()).await,
        (vec![3, 4], json!("4"), false)
    );
    assert_eq!(
        page("/api/audit/search?zone_id=zone_a&limit=2&cursor=4".into()).await,
        (vec![5], json!("5"), false),
        "the old event (seq 6) is outside the default 24 h window"
    );
    assert_eq!(
        page("/api/audit/search?zone_id=zone_a&cursor=6".into()).await,
        (vec![], json!(""), true),
        "an empty page is events: null"
    );
    let since = minutes_ago(3 * 24 * 60);
    assert_eq!(
        page(format!(
            "/api/audit/search?zone_id=zone_a&cursor=5&since={}",
            since.replace('+', "%2B")
        ))
        .await
        .0,
        vec![6],
        "since widens the window"
    );
    assert_eq!(
        page("/api/audit/search?zone_id=zone_a&cursor=5&since=yesterday".into())
            .await
            .0,
        Vec::<i64>::new(),
        "an unparsable since is ignored"
    );
    assert_eq!(
        page("/api/audit/search?zone_id=zone_a&decision=deny".into())
            .await
            .0,
        vec![3]
    );
    assert_eq!(
        page("/api/audit/search?zone_id=zone_a&request_id=r4&limit=-1&cursor=x".into())
            .await
            .0,
        vec![4],
        "bad limit and cursor fall back to their defaults"
    );
    let missing = call(&w, get("/api/audit/search")).await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (400, "zone_id is required\n")
    );
}

/// Three dead letters: two forgeries, then a storage failure.
async fn dead_letters(w: &World) -> Vec<String> {
    let data = event("forged", "zone_a", &minutes_ago(1), "allow", "r1");
    w.publish(vec![
        ("id".into(), "forged".into()),
        ("data".into(), data.clone()),
    ])
    .await;
    w.publish(vec![("data".into(), data)]).await;
    w.ingest().await;
    w.ledger.fail_transiently(Some("connection refused"));
    w.publish_event("e1", &event("e1", "zone_a", &minutes_ago(1), "allow", "r1"))
        .await;
    w.ingest().await;
    for _ in 0..7 {
        w.reap().await;
    }
    w.ledger.fail_transiently(None);
    w.dead_letters()
        .await
        .into_iter()
        .map(|d| d.entry_id)
        .collect()
}

#[actix_web::test]
async fn the_dlq_lists_with_an_inclusive_cursor() {
    let w = operator_world().await;
    let empty = call(&w, get("/api/audit/dlq")).await.json();
    assert_eq!(empty, json!({"entries": [], "next_cursor": ""}));
    let ids = dead_letters(&w).await;
    assert_eq!(ids.len(), 3);
    let first = call(&w, get("/api/audit/dlq?limit=2")).await.json();
    let listed: Vec<&str> = first["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(
        listed,
        ids[..2].iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(first["next_cursor"], ids[1].as_str());
    let entry = &first["entries"][0];
    assert_eq!(entry["reason"], "hmac_verify_failed");
    assert_eq!(entry["source_id"], "forged");
    assert_eq!(entry["event_id"], "forged");
    assert_eq!(entry["zone_id"], "zone_a");
    assert_eq!(entry["replayable"], false);
    assert!(
        entry.get("fields").is_none(),
        "fields are for the detail route"
    );
    let second = call(&w, get(&format!("/api/audit/dlq?start={}", ids[1])))
        .await
        .json();
    assert_eq!(
        second["entries"][0]["id"],
        ids[1].as_str(),
        "start is inclusive"
    );
    assert_eq!(second["entries"][1]["replayable"], true);
    for bad in ["0", "-3", "ten"] {
        let reply = call(&w, get(&format!("/api/audit/dlq?limit={bad}"))).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (400, "limit must be a positive integer\n"),
            "limit={bad}"
        );
    }
}

#[actix_web::test]
async fn a_dlq_entry_shows_its_source_event_and_fields() {
    let w = operator_world().await;
    let ids = dead_letters(&w).await;
    let detail = call(&w, get(&format!("/api/audit/dlq/{}", ids[2]))).await;
    assert_eq!(detail.status, 200);
    let body = detail.json();
    assert_eq!(body["id"], ids[2].as_str());
    assert_eq!(body["source_event"]["id"], "e1");
    assert_eq!(
        body["fields"]["reason"],
        "transient_exceeded_max_deliveries:connection refused"
    );
    assert!(body["fields"]["src_sig"].is_string());
    for missing in ["1-1", "not-an-id"] {
        let reply = call(&w, get(&format!("/api/audit/dlq/{missing}"))).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (404, "404 page not found\n")
        );
    }
}

#[actix_web::test]
async fn replay_sends_replayable_head_entries_back_through_ingestion() {
    let w = operator_world().await;
    let ids = dead_letters(&w).await;
    let replay = |limit: &str| {
        TestRequest::post()
            .uri(&format!("/api/audit/dlq/replay{limit}"))
            .insert_header(("authorization", format!("Bearer {TOKEN}")))
    };
    let bad = call(&w, replay("?limit=0")).await;
    assert_eq!(bad.status, 400);
    let head = call(&w, replay("?limit=2")).await.json();
    assert_eq!(
        head,
        json!({"scanned": 2, "replayed": 0, "skipped": 2}),
        "forgeries at the head are skipped and stay"
    );
    let all = call(&w, replay("")).await.json();
    assert_eq!(all, json!({"scanned": 3, "replayed": 1, "skipped": 2}));
    let left: Vec<String> = w
        .dead_letters()
        .await
        .into_iter()
        .map(|d| d.entry_id)
        .collect();
    assert_eq!(left, ids[..2].to_vec(), "the replayed entry left the DLQ");
    assert_eq!(
        w.ingest().await.acked,
        1,
        "and came back on the audit stream"
    );
    let stored: Vec<String> = w
        .rows("zone_a")
        .await
        .into_iter()
        .map(|r| r.event.id)
        .collect();
    assert_eq!(stored, vec!["e1"], "its signature still verifies");
}

#[actix_web::test]
async fn health_follows_the_consumer() {
    let w = World::new(|_| {}).await;
    let reply = call(&w, TestRequest::get().uri("/health")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(
        reply.json(),
        json!({"ok": false, "ready": false, "reason": "consumer_unhealthy"})
    );
    w.state.consumer.set(true);
    let reply = call(&w, TestRequest::get().uri("/health")).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, ""));
}

/// `ready`, or the reason `/ready` gives.
async fn readiness(w: &World) -> String {
    let reply = call(w, TestRequest::get().uri("/ready")).await;
    match reply.status {
        200 => {
            assert_eq!(reply.json(), json!({"ready": true}));
            "ready".to_owned()
        }
        503 => reply.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        other => panic!("unexpected status {other}"),
    }
}

#[actix_web::test]
async fn readiness_names_the_first_failing_check() {
    let w = World::new(|c| {
        c.ready_dlq_max = 1;
        c.ready_lag_max = 1;
    })
    .await;
    w.ledger.ping_down.store(true, Ordering::SeqCst);
    assert_eq!(
        readiness(&w).await,
        "consumer_unhealthy",
        "the consumer comes first"
    );
    w.state.consumer.set(true);
    assert_eq!(readiness(&w).await, "postgres_unreachable");
    w.ledger.ping_down.store(false, Ordering::SeqCst);
    assert_eq!(readiness(&w).await, "ready");
    // Two dead letters (over a max of 1) and two entries pending (over a max of 1).
    w.publish(vec![("x".into(), "1".into())]).await;
    w.publish(vec![("x".into(), "2".into())]).await;
    w.ingest().await;
    for n in 0..2 {
        w.publish_event(&format!("p{n}"), "{}").await;
    }
    w.bus
        .read_group(EVENTS, GROUP, "audit-worker-9", 10, 0)
        .await
        .expect("read");
    assert_eq!(
        readiness(&w).await,
        "ready",
        "figures are 0 until the first poll"
    );
    poll_stream_stats(
        w.bus.as_ref(),
        &w.state.config.streams,
        w.state.ports.clock.as_ref(),
        &w.state.metrics,
    )
    .await
    .expect("poll");
    assert_eq!(w.state.metrics.dlq_size.get(), 2);
    assert_eq!(w.state.metrics.consumer_lag.get(), 2);
    assert_eq!(readiness(&w).await, "audit_dlq_threshold");
    w.bus
        .delete(
            DLQ,
            &w.dead_letters().await[..1]
                .iter()
                .map(|d| d.entry_id.clone())
                .collect::<Vec<_>>(),
        )
        .await
        .expect("delete");
    poll_stream_stats(
        w.bus.as_ref(),
        &w.state.config.streams,
        w.state.ports.clock.as_ref(),
        &w.state.metrics,
    )
    .await
    .expect("poll");
    assert_eq!(readiness(&w).await, "audit_lag_threshold");
}

#[actix_web::test]
async fn metrics_are_open_in_dev_and_need_the_bearer_when_set() {
    let w = World::new(|_| {}).await;
    w.publish(vec![("x".into(), "1".into())]).await;
    w.ingest().await;
    let text = call(&w, TestRequest::get().uri("/metrics")).await;
    assert_eq!(text.status, 200);
    assert_eq!(
        text.content_type,
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(
        text.body.contains("\ncaracal_audit_dlq_total 1\n"),
        "{}",
        text.body
    );
    assert!(text.body.contains("\ncaracal_audit_parse_errors_total 1\n"));
    let json = call(&w, TestRequest::get().uri("/metrics.json"))
        .await
        .json();
    assert_eq!(json["dlq_total"], 1);
    assert_eq!(json["consumer_pel_oldest_secs"], 0);

    let published = World::new(|c| c.published = true).await;
    let reply = call(&published, TestRequest::get().uri("/metrics")).await;
    assert_eq!((reply.status, reply.body.as_str()), (401, "unauthorized\n"));

    let guarded = World::new(|c| c.metrics_bearer = Some("mb".into())).await;
    let wrong = TestRequest::get()
        .uri("/metrics.json")
        .insert_header(("authorization", "mb"));
    assert_eq!(
        call(&guarded, wrong).await.status,
        401,
        "the exact Bearer form only"
    );
    let right = TestRequest::get()
        .uri("/metrics.json")
        .insert_header(("authorization", "Bearer mb"));
    assert_eq!(call(&guarded, right).await.status, 200);
}

#[actix_web::test]
async fn unknown_routes_and_methods_get_the_stock_404() {
    let w = operator_world().await;
    for req in [
        TestRequest::get().uri("/nope"),
        TestRequest::post().uri("/health"),
        get("/api/audit/dlq/replay"),
    ] {
        let reply = call(&w, req).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (404, "404 page not found\n")
        );
    }
}
