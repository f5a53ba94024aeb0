//! `/health`, `/ready`, `/metrics`, `/metrics.json` (`spec/audit-streams-storage.md §6.6–6.7`).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::digest::constant_time_eq;
use serde_json::json;

use super::text;
use crate::AuditState;

type State = web::Data<AuditState>;

/// Each readiness ping gets at most this long.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

fn unready(reason: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({"ok": false, "ready": false, "reason": reason}))
}

/// `GET /health`: 200 with an empty body once the consumer drained its pending entries and
/// while it reads; 503 `consumer_unhealthy` otherwise.
pub async fn health(state: State) -> HttpResponse {
    if state.consumer.healthy() {
        HttpResponse::Ok().finish()
    } else {
        unready("consumer_unhealthy")
    }
}

/// `GET /ready`: the first failing check, in the spec's order — the consumer, Postgres,
/// Redis, then the DLQ size, the lag and the oldest pending entry against their thresholds
/// (0 = off; fails when strictly greater).
pub async fn ready(state: State) -> HttpResponse {
    if !state.consumer.healthy() {
        return unready("consumer_unhealthy");
    }
    let ledger = tokio::time::timeout(PING_TIMEOUT, state.ports.ledger.ping());
    let bus = tokio::time::timeout(PING_TIMEOUT, state.ports.bus.ping());
    let (ledger, bus) = tokio::join!(ledger, bus);
    if !matches!(ledger, Ok(Ok(()))) {
        return unready("postgres_unreachable");
    }
    if !matches!(bus, Ok(Ok(()))) {
        return unready("redis_unreachable");
    }
    let config = &state.config;
    let metrics = &state.metrics;
    let over = |max: u64, value: u64| max > 0 && value > max;
    if over(config.ready_dlq_max, metrics.dlq_size.get()) {
        return unready("audit_dlq_threshold");
    }
    if over(config.ready_lag_max, metrics.consumer_lag.get()) {
        return unready("audit_lag_threshold");
    }
    if over(
        config.ready_pel_oldest_secs_max,
        metrics.pel_oldest_secs.get(),
    ) {
        return unready("audit_pel_oldest_threshold");
    }
    HttpResponse::Ok().json(json!({"ready": true}))
}

/// `METRICS_BEARER`, when set, must be the exact `Authorization`; without it metrics are open
/// only outside published modes.
fn metrics_refusal(req: &HttpRequest, state: &AuditState) -> Option<HttpResponse> {
    let allowed = match &state.config.metrics_bearer {
        Some(bearer) => {
            let given = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            constant_time_eq(given.as_bytes(), format!("Bearer {bearer}").as_bytes())
        }
        None => !state.config.published,
    };
    (!allowed).then(|| text(StatusCode::UNAUTHORIZED, "unauthorized"))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(req: HttpRequest, state: State) -> HttpResponse {
    if let Some(refusal) = metrics_refusal(&req, &state) {
        return refusal;
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render_text())
}

/// `GET /metrics.json`: the same series as JSON.
pub async fn metrics_json(req: HttpRequest, state: State) -> HttpResponse {
    if let Some(refusal) = metrics_refusal(&req, &state) {
        return refusal;
    }
    HttpResponse::Ok().json(state.metrics.render_json())
}
