//! `/health`, `/ready`, `/metrics`, `/metrics.json` (`spec/sts.md §15`).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use caracal_http::metrics::gauge;
use serde_json::json;

use crate::reply::plain;
use crate::StsState;

/// The whole readiness check gets at most this long.
const READY_BUDGET: Duration = Duration::from_secs(2);

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().finish()
}

fn unready(reason: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(json!({"ok": false, "ready": false, "reason": reason}))
}

pub async fn ready(state: web::Data<StsState>) -> HttpResponse {
    let health = state.audit.health();
    if health.dropped > 0 {
        return unready("audit_evidence_lost");
    }
    if !health.replay_available {
        return unready("audit_replay_unavailable");
    }
    let checks = async {
        if state.store.ping().await.is_err() {
            return Some("postgres_unreachable");
        }
        if state.bus.ping().await.is_err() {
            return Some("redis_unreachable");
        }
        None
    };
    match tokio::time::timeout(READY_BUDGET, checks).await {
        Ok(None) => HttpResponse::Ok().json(json!({"ok": true, "ready": true})),
        Ok(Some(reason)) => unready(reason),
        Err(_) => unready("postgres_unreachable"),
    }
}

fn allowed(req: &HttpRequest, state: &StsState) -> bool {
    match &state.config.metrics_bearer {
        Some(bearer) => {
            let given = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            caracal_core::digest::constant_time_eq(
                given.as_bytes(),
                format!("Bearer {bearer}").as_bytes(),
            )
        }
        None => state.config.dev,
    }
}

pub async fn metrics(req: HttpRequest, state: web::Data<StsState>) -> HttpResponse {
    if !allowed(&req, &state) {
        return plain(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let h = state.audit.health();
    let mut out = String::new();
    state.counters.render("sts", &mut out);
    for (name, help, value) in [
        (
            "caracal_sts_audit_emitted_total",
            "Audit events emitted since start.",
            h.emitted,
        ),
        (
            "caracal_sts_audit_dropped_total",
            "Audit events lost (neither stream nor spool).",
            h.dropped,
        ),
        (
            "caracal_sts_audit_replay_pending",
            "Audit events waiting in replay files.",
            h.replay_pending,
        ),
        (
            "caracal_sts_audit_replay_files",
            "Audit replay files on disk.",
            h.replay_files,
        ),
        (
            "caracal_sts_audit_replay_replayed_total",
            "Audit events replayed from files.",
            h.replayed,
        ),
        (
            "caracal_sts_audit_sink_errors_total",
            "Failed audit stream publishes.",
            h.sink_errors,
        ),
    ] {
        gauge(&mut out, name, help, value);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}

pub async fn metrics_json(req: HttpRequest, state: web::Data<StsState>) -> HttpResponse {
    if !allowed(&req, &state) {
        return plain(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let h = state.audit.health();
    HttpResponse::Ok().json(json!({
        "sts": {
            "audit_emitted": h.emitted,
            "audit_dropped": h.dropped,
            "audit_replay_pending": h.replay_pending,
            "audit_replay_files": h.replay_files,
            "audit_replay_replayed": h.replayed,
            "audit_sink_errors": h.sink_errors,
        },
        "opa": {
            "decision_contract_version": caracal_core::policy::DECISION_CONTRACT_VERSION,
            "decision_contract_sha256": caracal_core::policy::decision_contract_sha256(),
        },
        "audit_dropped": h.dropped,
    }))
}
