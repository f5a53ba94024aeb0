//! Service tests: the Gateway in process on memory adapters, between a scripted STS and a
//! recording upstream. Each test asserts what a caller or the upstream would notice.

use std::time::Duration;

use caracal_core::dispatch::stream_signature;
use caracal_core::gateway::anchors::AnchorKind;
use caracal_core::ports::{EventBus, MessageAuthenticator};
use caracal_core::sts::gateway_sig::canonical;
use caracal_crypto::HmacSha256;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;
use support::*;

#[tokio::test]
async fn an_allowed_call_reaches_the_upstream_with_the_credential_only() {
    let h = harness().await;
    let mandate = h.mandate(json!({}));
    let response = h
        .get("/items/list?b=2&a=1")
        .header("authorization", format!("Bearer {mandate}"))
        .header("x-caracal-resource", RESOURCE)
        .header("x-caracal-extra", "internal")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-request-id", "caller-req-1")
        .header("cookie", "c=1")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["x-request-id"], "caller-req-1");
    assert_eq!(headers["x-upstream"], "yes");
    assert!(headers.get("server").is_none(), "Server is not relayed");
    assert_eq!(headers["trailer"], "X-Caracal-Revoked");
    let left: i64 = headers["x-caracal-token-expires-in"]
        .to_str()
        .expect("text")
        .parse()
        .expect("number");
    assert!((590..=600).contains(&left), "{left}");
    assert_eq!(response.text().await.expect("body"), "ok");

    let seen = h.upstream_seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 1);
    let call = &seen[0];
    assert_eq!(call.method, "GET");
    assert_eq!(call.target, "/base/items/list?a=1&b=2");
    assert_eq!(call.header("authorization"), Some("Bearer upstream-secret"));
    assert_eq!(call.header("x-request-id"), Some("caller-req-1"));
    assert_eq!(call.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(call.header("cookie"), Some("c=1"));
    for (name, value) in &call.headers {
        assert!(!name.starts_with("x-caracal-"), "{name} leaked");
        assert!(!value.contains(&mandate), "{name} carries the mandate");
    }

    // The exchange was signed over the exact body, with the gateway's request id.
    let exchanges = h.sts_exchanges();
    assert_eq!(exchanges.len(), 1);
    let ex = &exchanges[0];
    assert_eq!(ex.target, "/oauth/2/token");
    assert_eq!(ex.header("x-request-id"), Some("caller-req-1"));
    assert_eq!(ex.header("user-agent"), Some("caracal-gateway"));
    let body = String::from_utf8(ex.body.clone()).expect("utf8");
    assert!(body.contains("gateway_request_id=caller-req-1"), "{body}");
    assert!(body.contains("request_path=%2Fitems%2Flist"), "{body}");
    let ts = ex.header("x-caracal-gateway-timestamp").expect("ts");
    let nonce = ex.header("x-caracal-gateway-request").expect("nonce");
    assert_eq!(nonce.len(), 64);
    let mac = HmacSha256::from_bytes(&GATEWAY_KEY);
    let expected = canonical(ts, nonce, "POST", "/oauth/2/token", &ex.body);
    assert!(mac.verify_hex(
        expected.as_bytes(),
        ex.header("x-caracal-gateway-signature").expect("sig")
    ));

    // One resource-request event, once the body ended.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let events = h.audit.of_type("gateway_resource_request");
    assert_eq!(events.len(), 1, "{events:?}");
    let meta = events[0].metadata_json.as_ref().expect("metadata");
    assert_eq!(meta["upstream_status"], 200);
    assert_eq!(meta["response_bytes"], 2);
    assert_eq!(events[0].decision, "allow");
    assert_eq!(events[0].evaluation_status, "executed");
}

#[tokio::test]
async fn refusals_come_in_order_and_reach_neither_sts_nor_upstream() {
    let h = harness().await;
    let good = h.mandate(json!({}));
    let send = |builder: reqwest::RequestBuilder| async move {
        let r = builder.send().await.expect("send");
        let status = r.status().as_u16();
        let id = r.headers().get("x-request-id").is_some();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let body = r.text().await.expect("body");
        assert!(id, "every response carries X-Request-Id");
        assert_eq!(ct.as_deref(), Some("application/json"));
        let (error, description) = error_of(&body);
        (status, error, description)
    };
    // 1: no bearer
    assert_eq!(
        send(h.get("/x").header("x-caracal-resource", RESOURCE)).await,
        (401, "invalid_token".into(), "missing bearer token".into())
    );
    // 2: too large
    let huge = "a".repeat(5000);
    assert_eq!(
        send(
            h.get("/x")
                .header("authorization", format!("Bearer {huge}"))
        )
        .await,
        (401, "invalid_token".into(), "bearer token too large".into())
    );
    // 3: malformed
    assert_eq!(
        send(h.get("/x").header("authorization", "Bearer not.a.jwt")).await,
        (401, "invalid_token".into(), "malformed bearer token".into())
    );
    // 4: expiring
    let soon = h.mandate(json!({"exp": chrono_now() + 10}));
    assert_eq!(
        send(
            h.get("/x")
                .header("authorization", format!("Bearer {soon}"))
        )
        .await
        .1,
        "credential_expired_not_renewable"
    );
    // 5: caller-supplied client id (checked before the resource header)
    assert_eq!(
        send(
            h.get("/x")
                .header("authorization", format!("Bearer {good}"))
                .header("x-caracal-client-id", "me")
        )
        .await,
        (
            400,
            "invalid_token".into(),
            "client identity derives from the bearer token".into()
        )
    );
    // 6: no resource header
    assert_eq!(
        send(
            h.get("/x")
                .header("authorization", format!("Bearer {good}"))
        )
        .await,
        (
            400,
            "invalid_token".into(),
            "missing routing headers".into()
        )
    );
    // 9: traversal
    assert_eq!(
        send(
            h.get("/a/%252e%252e/b")
                .header("authorization", format!("Bearer {good}"))
                .header("x-caracal-resource", RESOURCE)
        )
        .await,
        (
            400,
            "invalid_token".into(),
            "path traversal not permitted".into()
        )
    );
    // 10: a forged signature
    let mut forged = good.clone();
    forged.truncate(forged.len() - 4);
    forged.push_str("AAAA");
    assert_eq!(
        send(
            h.get("/x")
                .header("authorization", format!("Bearer {forged}"))
                .header("x-caracal-resource", RESOURCE)
        )
        .await,
        (
            401,
            "invalid_token".into(),
            "bearer signature invalid".into()
        )
    );
    // 10: no kid
    let no_kid = h.sign(
        &json!({"alg": "ES256", "typ": "JWT"}),
        &json!({"exp": chrono_now() + 600, "zone_id": ZONE, "client_id": APP}),
    );
    assert_eq!(
        send(
            h.get("/x")
                .header("authorization", format!("Bearer {no_kid}"))
                .header("x-caracal-resource", RESOURCE)
        )
        .await
        .2,
        "bearer signature invalid"
    );
    assert_eq!(h.upstream_count(), 0);
    assert!(h.sts_exchanges().is_empty());
    let metrics = h.gateway.metrics();
    assert_eq!(metrics.denied.load(std::sync::atomic::Ordering::Relaxed), 9);
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs() as i64
}

#[tokio::test]
async fn a_replayed_mandate_is_refused_and_audited() {
    let h = harness().await;
    let mandate = h.mandate(json!({"jti": "jti-once"}));
    let (first, _, _) = h.call("/x", &mandate).await;
    assert_eq!(first, 200);
    let (second, _, body) = h.call("/x", &mandate).await;
    assert_eq!(second, 401);
    assert_eq!(
        error_of(&body),
        ("invalid_token".into(), "token replay detected".into())
    );
    assert_eq!(h.upstream_count(), 1, "the upstream saw one request");
    assert_eq!(h.sts_exchanges().len(), 1);
    let replays = h.audit.of_type("replay_detected");
    assert_eq!(replays.len(), 1);
    assert_eq!(replays[0].decision, "deny");
    assert_eq!(
        replays[0].metadata_json.as_ref().expect("meta")["jti"],
        "jti-once"
    );
}

#[tokio::test]
async fn session_mandates_are_not_burned() {
    let h = harness().await;
    let mandate = h.mandate(json!({"use": "session", "jti": "jti-session"}));
    assert_eq!(h.call("/x", &mandate).await.0, 200);
    assert_eq!(h.call("/x", &mandate).await.0, 200);
}

#[tokio::test]
async fn revoked_anchors_are_refused_and_the_stream_revokes() {
    let h = harness().await;
    let now = chrono_now() * 1000;
    h.gateway
        .anchors()
        .revoke(AnchorKind::Session, "sess-revoked", now);
    let mandate = h.mandate(json!({"agent_session_id": "sess-revoked"}));
    let (status, _, body) = h.call("/x", &mandate).await;
    assert_eq!(status, 401);
    assert_eq!(error_of(&body).1, "session revoked");

    // A signed stream message revokes an edge; a forged one is dropped.
    let stream = "caracal.sessions.revoke";
    let mac = HmacSha256::from_bytes(&STREAMS_KEY);
    let forged = vec![
        ("delegation_edge_id".to_owned(), "edge-forged".to_owned()),
        ("_sig".to_owned(), "00".repeat(32)),
    ];
    h.bus.publish(stream, &forged).await.expect("publish");
    let mut fields = vec![("delegation_edge_id".to_owned(), "edge-9".to_owned())];
    let sig = stream_signature(&mac, stream, &fields);
    fields.push(("_sig".to_owned(), sig));
    h.bus.publish(stream, &fields).await.expect("publish");
    let mandate = h.mandate(json!({"delegation_edge_id": "edge-9"}));
    let mut refused = false;
    for _ in 0..50 {
        if h.gateway
            .anchors()
            .is_revoked(&caracal_core::gateway::anchors::RequestAnchors {
                delegation_edge_id: "edge-9",
                ..Default::default()
            })
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the stream message reached the anchors");
    assert_eq!(h.call("/x", &mandate).await.0, 401);
    assert!(!h
        .gateway
        .anchors()
        .is_revoked(&caracal_core::gateway::anchors::RequestAnchors {
            delegation_edge_id: "edge-forged",
            ..Default::default()
        }));
    assert_eq!(h.upstream_count(), 0);
}

#[tokio::test]
async fn the_circuit_opens_after_three_sts_failures() {
    let h = harness().await;
    h.script.set_default(503, "<html>down</html>");
    for _ in 0..3 {
        let (status, _, body) = h.call("/x", &h.mandate(json!({}))).await;
        assert_eq!(status, 503);
        assert_eq!(
            error_of(&body),
            ("sts_unavailable".into(), "Service Unavailable".into())
        );
    }
    let (status, _, body) = h.call("/x", &h.mandate(json!({}))).await;
    assert_eq!(status, 503);
    assert_eq!(
        error_of(&body),
        ("sts_unavailable".into(), "sts unavailable".into())
    );
    assert_eq!(h.sts_exchanges().len(), 3, "the open circuit fast-fails");
    assert_eq!(h.upstream_count(), 0);
}

#[tokio::test]
async fn sts_errors_are_relayed_with_the_gateway_request_id() {
    let h = harness().await;
    h.script.push(
        403,
        r#"{"error":"access_denied","error_description":"policy denied"}"#,
    );
    let response = h
        .get("/x")
        .header("authorization", format!("Bearer {}", h.mandate(json!({}))))
        .header("x-caracal-resource", RESOURCE)
        .header("x-request-id", "rid-403")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.expect("json");
    assert_eq!(
        body,
        json!({"error": "access_denied", "error_description": "policy denied", "requestId": "rid-403"})
    );
    h.script
        .push(200, &directive_answer(serde_json::Value::Null));
    let (status, _, body) = h.call("/x", &h.mandate(json!({}))).await;
    assert_eq!(status, 403);
    assert_eq!(error_of(&body).1, "resource upstream not configured");
}

#[tokio::test]
async fn the_host_guard_refuses_before_dialling() {
    let h = harness().await;
    h.script.push(
        200,
        &directive_answer(json!({"url": "http://169.254.169.254/latest", "auth_mode": "none"})),
    );
    let (status, _, body) = h.call("/x", &h.mandate(json!({}))).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            502,
            ("internal_error".into(), "upstream not addressable".into())
        )
    );
    let mut directive = default_directive(h.upstream);
    directive["allowed_token_hosts"] = json!(["api.example.com"]);
    h.script.push(200, &directive_answer(directive));
    let (status, _, body) = h.call("/x", &h.mandate(json!({}))).await;
    assert_eq!(status, 502);
    assert_eq!(
        error_of(&body).1,
        "provider credential not allowed for upstream host"
    );
    let mut directive = default_directive(h.upstream);
    directive["auth_header"] = json!("Host");
    h.script.push(200, &directive_answer(directive));
    let (status, _, body) = h.call("/x", &h.mandate(json!({}))).await;
    assert_eq!(
        (status, error_of(&body).1),
        (400, "upstream request build failed".into())
    );
    assert_eq!(h.upstream_count(), 0);
    let failed = h.audit.of_type("gateway_resource_request");
    assert_eq!(failed.len(), 3);
    assert!(failed.iter().all(|e| e.evaluation_status == "build_failed"));
}

#[tokio::test]
async fn names_resolving_only_to_refused_addresses_are_not_dialled() {
    let h = harness_with(|c| c.host_policy.allow_loopback = false).await;
    let port = h.upstream.port();
    h.script.push(
        200,
        &directive_answer(
            json!({"url": format!("http://localhost:{port}/base"), "auth_mode": "none"}),
        ),
    );
    let (status, _, body) = h.call("/x", &h.mandate(json!({}))).await;
    assert_eq!(
        (status, error_of(&body).1),
        (502, "upstream not addressable".into())
    );
    h.script.push(
        200,
        &directive_answer(
            json!({"url": format!("http://127.0.0.1:{port}/base"), "auth_mode": "none"}),
        ),
    );
    let (status, _, body) = h.call("/x", &h.mandate(json!({}))).await;
    assert_eq!(
        (status, error_of(&body).1),
        (502, "upstream not addressable".into())
    );
    assert_eq!(h.upstream_count(), 0);
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let h = harness_with(|c| c.max_request_bytes = 16).await;
    let response = h
        .http
        .post(format!("{}/x", h.url))
        .header("authorization", format!("Bearer {}", h.mandate(json!({}))))
        .header("x-caracal-resource", RESOURCE)
        .body(vec![b'a'; 64])
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 413);
    let body = response.text().await.expect("body");
    assert_eq!(
        error_of(&body),
        ("payload_too_large".into(), "request body too large".into())
    );
    assert_eq!(h.upstream_count(), 0);
}

/// Reads a raw HTTP/1.1 exchange on `conn` until the server closes it.
async fn read_all(conn: &mut tokio::net::TcpStream, sofar: &mut Vec<u8>) {
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => sofar.extend_from_slice(&buf[..n]),
        }
    }
}

async fn stream_then_revoke(h: &Harness, te_trailers: bool) -> String {
    let mandate = h.mandate(json!({"agent_session_id": format!("sess-{te_trailers}")}));
    let mut conn = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    let te = if te_trailers { "te: trailers\r\n" } else { "" };
    let request = format!(
        "GET /stream HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n{te}authorization: Bearer {mandate}\r\nx-caracal-resource: {RESOURCE}\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.expect("write");
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(&data).contains("event 2") {
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    }
    let started = std::time::Instant::now();
    h.gateway.anchors().revoke(
        AnchorKind::Session,
        &format!("sess-{te_trailers}"),
        chrono_now() * 1000,
    );
    read_all(&mut conn, &mut data).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stream was cut, not run to its end"
    );
    String::from_utf8_lossy(&data).into_owned()
}

#[tokio::test]
async fn a_stream_is_cut_with_the_trailer_when_revoked() {
    let h = harness().await;
    let raw = stream_then_revoke(&h, true).await;
    let (head, body) = raw.split_once("\r\n\r\n").expect("head");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("trailer: x-caracal-revoked"), "{head}");
    // The chunked body ends with the zero chunk followed by the trailer field.
    assert!(
        body.contains("\r\n0\r\nx-caracal-revoked: true\r\n\r\n"),
        "{body:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let events = h.audit.of_type("gateway_resource_request");
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].metadata_json.as_ref().expect("meta")["revocation_interrupted"],
        true
    );
}

#[tokio::test]
async fn without_te_trailers_the_stream_still_stops_but_without_the_trailer() {
    let h = harness().await;
    let raw = stream_then_revoke(&h, false).await;
    let body = raw.split_once("\r\n\r\n").expect("head").1;
    assert!(body.ends_with("\r\n0\r\n\r\n"), "{body:?}");
    assert!(!body.contains("x-caracal-revoked"));
}

#[tokio::test]
async fn health_ready_metrics_and_reload() {
    let h = harness_with(|c| {
        c.metrics_bearer = Some("mb".into());
        c.admin_token = Some("adm".into());
    })
    .await;
    let health = h
        .http
        .post(format!("{}/health", h.url))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    assert!(health.headers().get("x-request-id").is_some());
    let ready = h.get("/ready").send().await.expect("ready");
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<serde_json::Value>().await.expect("json"),
        json!({"ok": true, "ready": true})
    );
    let denied = h.get("/metrics").send().await.expect("metrics");
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.text().await.expect("text"), "unauthorized");
    let text = h
        .get("/metrics")
        .header("authorization", "Bearer mb")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(text.contains("caracal_gateway_requests_total 0"), "{text}");
    assert!(text.contains("caracal_gateway_revocation_snapshot_fresh 1"));
    let json: serde_json::Value = h
        .get("/metrics.json")
        .header("authorization", "Bearer mb")
        .send()
        .await
        .expect("json")
        .json()
        .await
        .expect("json");
    assert_eq!(json["revocation_snapshot_fresh"], 1);
    let hidden = h
        .http
        .post(format!("{}/internal/revocations/reload", h.url))
        .header("authorization", "Bearer wrong")
        .send()
        .await
        .expect("reload");
    assert_eq!(hidden.status(), 404);
    let reload = h
        .http
        .post(format!("{}/internal/revocations/reload", h.url))
        .header("authorization", "Bearer adm")
        .send()
        .await
        .expect("reload");
    assert_eq!(reload.status(), 200);
    assert_eq!(
        reload.json::<serde_json::Value>().await.expect("json"),
        json!({"ok": true, "revocations": 0})
    );
}

#[tokio::test]
async fn upstream_failures_map_to_gateway_errors() {
    let h = harness().await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    h.script.push(
        200,
        &directive_answer(json!({"url": format!("http://127.0.0.1:{port}/"), "auth_mode": "none"})),
    );
    let (status, _, body) = h.call("/x", &h.mandate(json!({}))).await;
    assert_eq!(
        (status, error_of(&body)),
        (
            502,
            ("internal_error".into(), "upstream unreachable".into())
        )
    );
    let events = h.audit.of_type("gateway_resource_request");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].evaluation_status, "upstream_error");
}

#[tokio::test]
async fn oversized_streamed_bodies_are_refused() {
    let h = harness_with(|c| c.max_request_bytes = 16).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(vec![b'a'; 10]), Ok(vec![b'b'; 10])];
    let response = h
        .http
        .post(format!("{}/x", h.url))
        .header("authorization", format!("Bearer {}", h.mandate(json!({}))))
        .header("x-caracal-resource", RESOURCE)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 413);
    assert_eq!(
        error_of(&response.text().await.expect("body")).1,
        "request body too large"
    );
}

#[tokio::test]
async fn the_callers_copy_of_the_credential_header_never_reaches_the_upstream() {
    let h = harness().await;
    h.script.push(
        200,
        &directive_answer(json!({
            "url": format!("http://{}/base", h.upstream),
            "auth_mode": "none",
            "auth_header": "X-Api-Key",
        })),
    );
    let response = h
        .get("/keyed")
        .header("authorization", format!("Bearer {}", h.mandate(json!({}))))
        .header("x-caracal-resource", RESOURCE)
        .header("x-api-key", "caller-supplied")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let seen = h.upstream_seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-api-key"), None, "{:?}", seen[0].headers);
    assert_eq!(seen[0].header("authorization"), None);
}

/// A client that closes its connection while the upstream is still thinking: the request's
/// future is dropped, nobody is left to answer, and the evidence records it as upstream does,
/// `gateway_status` 499 (client closed) with `evaluation_status` `upstream_error`.
#[tokio::test]
async fn a_client_that_leaves_before_the_answer_is_recorded_as_499() {
    let h = harness().await;
    // An upstream that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
            let _ = accepted_tx.send(()).await;
        }
    });
    h.script.push(
        200,
        &directive_answer(json!({"url": format!("http://127.0.0.1:{port}/"), "auth_mode": "none"})),
    );
    let mandate = h.mandate(json!({}));
    let mut conn = tokio::net::TcpStream::connect(h.addr)
        .await
        .expect("connect");
    let request = format!(
        "GET /slow HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {mandate}\r\nx-caracal-resource: {RESOURCE}\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.expect("write");
    tokio::time::timeout(Duration::from_secs(10), accepted.recv())
        .await
        .expect("the Gateway dialled the upstream in time");
    assert!(
        h.audit.of_type("gateway_resource_request").is_empty(),
        "nothing is recorded while the upstream is still thinking"
    );
    drop(conn);
    let started = std::time::Instant::now();
    let events = loop {
        let events = h.audit.of_type("gateway_resource_request");
        if !events.is_empty() {
            break events;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no event after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.evaluation_status, "upstream_error");
    let metadata = event.metadata_json.as_ref().expect("metadata");
    assert_eq!(metadata["gateway_status"], 499);
    assert_eq!(metadata["error_kind"], "transport_error");
    assert_eq!(metadata["response_bytes"], 0);
    assert!(metadata.get("upstream_status").is_none());
}
