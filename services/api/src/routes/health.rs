//! `/health`, `/ready`, `/metrics` (`spec/api.md §1`).

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use caracal_http::metrics::gauge;
use serde_json::json;

use crate::ApiState;

/// Each readiness check gets at most this long.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "ok": true }))
}

fn unready(error: &str, dependency: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .json(json!({ "ok": false, "error": error, "dependency": dependency }))
}

async fn ready(state: web::Data<ApiState>) -> HttpResponse {
    match tokio::time::timeout(CHECK_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => {}
        _ => return unready("postgres_unreachable", "postgres"),
    }
    match tokio::time::timeout(CHECK_TIMEOUT, state.bus.ping()).await {
        Ok(Ok(())) => {}
        _ => return unready("redis_unreachable", "redis"),
    }
    match tokio::time::timeout(CHECK_TIMEOUT, state.outbox.outbox_counts()).await {
        Ok(Ok((_, dead))) if dead > state.config.ready_outbox_dead_max => {
            HttpResponse::ServiceUnavailable().json(json!({
                "ok": false,
                "error": "outbox_dead_messages",
                "deadCount": dead,
                "limit": state.config.ready_outbox_dead_max,
            }))
        }
        Ok(Ok(_)) => HttpResponse::Ok().json(json!({ "ok": true })),
        _ => unready("outbox_unreachable", "outbox"),
    }
}

async fn metrics(req: HttpRequest, state: web::Data<ApiState>) -> HttpResponse {
    if let Some(bearer) = &state.config.metrics_bearer {
        let given = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let expected = format!("Bearer {bearer}");
        // Constant-time compare: the bearer is a secret.
        let ok = given.is_some_and(|g| {
            caracal_core::digest::constant_time_eq(g.as_bytes(), expected.as_bytes())
        });
        if !ok {
            return HttpResponse::Unauthorized().json(json!({ "error": "invalid_metrics_token" }));
        }
    }
    let mut out = String::new();
    state.counters.render("api", &mut out);
    if let Ok((pending, dead)) = state.outbox.outbox_counts().await {
        gauge(
            &mut out,
            "caracal_outbox_pending",
            "Outbox rows waiting to be published.",
            pending,
        );
        gauge(
            &mut out,
            "caracal_outbox_dead",
            "Outbox rows that exhausted their attempts.",
            dead,
        );
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}

/// Mounts the service routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics));
}
