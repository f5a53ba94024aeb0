//! `/health`, `/ready`, `/metrics`, `/stats` (`spec/coordinator-gateway.md` A13).

use std::fmt::Write;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::digest::constant_time_eq;
use caracal_http::request_id_of;
use serde_json::{json, Map, Value};

use crate::gate::{client_ip, operator_refusal, over_limit, rate_limited};
use crate::reply;
use crate::CoordinatorState;

type State = web::Data<CoordinatorState>;

/// Each readiness probe gets at most this long.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// `{"ok":true}`; exempt from every limit.
pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"ok": true}))
}

fn unready(error: &str, dependency: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .json(json!({"ok": false, "error": error, "dependency": dependency}))
}

/// `GET /ready`: the store answers, no outbox row is dead, Redis answers; in that order of
/// precedence. Rate limited per IP (`READY_RATE_LIMIT_PER_MIN`).
pub async fn ready(req: HttpRequest, state: State) -> HttpResponse {
    let key = format!(
        "coordinator:ready_rl:{}",
        client_ip(&req, state.config.trust_proxy)
    );
    match over_limit(&state, &key, state.config.ready_limit_per_min).await {
        Ok(false) => {}
        Ok(true) => return reply::error(&rate_limited(), &request_id_of(&req)),
        Err(e) => return reply::error(&e, &request_id_of(&req)),
    }
    let store = tokio::time::timeout(READY_CHECK_TIMEOUT, async {
        state.coordinator.store().ping().await?;
        state.outbox.outbox_counts().await
    });
    let redis = tokio::time::timeout(READY_CHECK_TIMEOUT, state.bus.ping());
    let (store, redis) = tokio::join!(store, redis);
    match store {
        Ok(Ok((_, 0))) => {}
        Ok(Ok((_, dead))) => {
            tracing::error!(dead, "coordinator not ready: dead outbox rows");
            return unready("outbox_dead", "outbox");
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "coordinator not ready: store unreachable");
            return unready("postgres_unreachable", "postgres");
        }
        Err(_) => return unready("postgres_unreachable", "postgres"),
    }
    match redis {
        Ok(Ok(())) => HttpResponse::Ok().json(json!({"ok": true})),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "coordinator not ready: redis unreachable");
            unready("redis_unreachable", "redis")
        }
        Err(_) => unready("redis_unreachable", "redis"),
    }
}

/// `METRICS_BEARER`, when set, must be the bearer too; a published deployment without one
/// never serves metrics.
fn metrics_bearer_ok(req: &HttpRequest, state: &CoordinatorState) -> bool {
    match &state.config.metrics_bearer {
        Some(bearer) => {
            let given = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            constant_time_eq(given.as_bytes(), format!("Bearer {bearer}").as_bytes())
        }
        None => !state.config.published,
    }
}

fn counter(out: &mut String, name: &str, help: &str, kind: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// `GET /metrics` (operator token; Prometheus text).
pub async fn metrics(req: HttpRequest, state: State) -> HttpResponse {
    if let Some(refusal) = operator_refusal(&req, &state) {
        return refusal;
    }
    if !metrics_bearer_ok(&req, &state) {
        return HttpResponse::build(StatusCode::UNAUTHORIZED)
            .json(json!({"error": "unauthorized"}));
    }
    let outbox = match state.outbox.outbox_counts().await {
        Ok(counts) => counts,
        Err(e) => return reply::error(&e.into(), &request_id_of(&req)),
    };
    let snapshot = state.stats.snapshot();
    let mut out = String::new();
    state.counters.render("coordinator", &mut out);
    counter(
        &mut out,
        "caracal_outbox_total",
        "Outbox rows by status.",
        "gauge",
        &[
            ("{status=\"pending\"}".into(), outbox.0),
            ("{status=\"dead\"}".into(), outbox.1),
        ],
    );
    counter(
        &mut out,
        "caracal_idempotency_requests_total",
        "Coordinator idempotency outcomes.",
        "counter",
        &snapshot
            .idempotency
            .iter()
            .map(|(outcome, n)| (format!("{{outcome=\"{outcome}\"}}"), *n))
            .collect::<Vec<_>>(),
    );
    for (job, runs) in snapshot.jobs {
        counter(
            &mut out,
            &format!("caracal_{job}_runs_total"),
            "Background job passes.",
            "counter",
            &[(String::new(), runs)],
        );
    }
    counter(
        &mut out,
        "caracal_retention_rows_total",
        "Rows the retention job expired or deleted.",
        "counter",
        &[(String::new(), snapshot.retention_deleted)],
    );
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}

/// `GET /stats`: the same numbers as JSON (operator token).
pub async fn stats(req: HttpRequest, state: State) -> HttpResponse {
    if let Some(refusal) = operator_refusal(&req, &state) {
        return refusal;
    }
    let outbox = match state.outbox.outbox_counts().await {
        Ok(counts) => counts,
        Err(e) => return reply::error(&e.into(), &request_id_of(&req)),
    };
    let snapshot = state.stats.snapshot();
    let outcomes: Map<String, Value> = snapshot
        .idempotency
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    let mut body = Map::new();
    body.insert(
        "outbox".into(),
        json!({"pending": outbox.0, "dead": outbox.1}),
    );
    body.insert("idempotency".into(), json!({ "outcomes": outcomes }));
    for (job, runs) in snapshot.jobs {
        body.insert(job.to_owned(), json!({ "runs": runs }));
    }
    if let Some(Value::Object(retention)) = body.get_mut("retention_cleaner") {
        retention.insert("rows".into(), Value::from(snapshot.retention_deleted));
    }
    HttpResponse::Ok().json(Value::Object(body))
}
