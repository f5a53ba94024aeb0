//! B1: the Gateway's own endpoints, and everything else to the proxy. Every response carries
//! `X-Request-Id`.

use std::net::SocketAddr;

use caracal_core::digest::constant_time_eq;
use http::{Method, Request};
use hyper::body::Incoming;
use serde_json::json;

use crate::metrics::Gauges;
use crate::reply::{self, Reply};
use crate::sts::StsHealth;
use crate::Gateway;

impl Gateway {
    /// Answers one request.
    pub(crate) async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Reply {
        let request_id = reply::request_id(request.headers());
        let response = match request.uri().path() {
            "/health" => reply::status_only(200),
            "/ready" => self.ready().await,
            "/metrics" => self.metrics_text(&request),
            "/metrics.json" => self.metrics_json(&request),
            "/internal/revocations/reload" if request.method() == Method::POST => {
                self.reload(&request).await
            }
            _ => self.proxy(request, peer, &request_id).await,
        };
        reply::with_request_id(response, &request_id)
    }

    /// `/ready`: Redis, the snapshot, the audit sink, the STS, in B1's order of reasons.
    async fn ready(&self) -> Reply {
        let unready = |reason: &str| {
            reply::json(503, &json!({"ok": false, "ready": false, "reason": reason}))
        };
        if self.ports.bus.ping().await.is_err() {
            return unready("redis_unreachable");
        }
        if !self.anchors.fresh(self.now_ms()) {
            return unready("revocation_snapshot_stale");
        }
        let audit = self.ports.audit.health();
        if audit.dropped > 0 {
            return unready("audit_evidence_lost");
        }
        if !audit.replay_available {
            return unready("audit_replay_unavailable");
        }
        match self.sts.health().await {
            StsHealth::Up => reply::json(200, &json!({"ok": true, "ready": true})),
            StsHealth::Unavailable => unready("sts_unavailable"),
            StsHealth::Unreachable => unready("sts_unreachable"),
        }
    }

    /// `Bearer METRICS_BEARER`; without one configured, open in dev only.
    fn metrics_allowed(&self, request: &Request<Incoming>) -> bool {
        match &self.config.metrics_bearer {
            Some(bearer) => {
                let given = request
                    .headers()
                    .get("authorization")
                    .map(|v| v.as_bytes())
                    .unwrap_or(b"");
                constant_time_eq(given, format!("Bearer {bearer}").as_bytes())
            }
            None => self.config.dev,
        }
    }

    fn gauges(&self) -> Gauges {
        let now = self.now_ms();
        let (opened, fast_failed) = self.breaker.counters();
        Gauges {
            sts_circuit_open: self.breaker.is_open(now),
            sts_circuit_opened: opened,
            sts_circuit_fast_fail: fast_failed,
            revocations_active: self.anchors.len() as u64,
            snapshot_age_seconds: self
                .anchors
                .snapshot_age_ms(now)
                .map(|ms| u64::try_from(ms / 1_000).unwrap_or(0)),
            snapshot_fresh: self.anchors.fresh(now),
            audit: self.ports.audit.health(),
            db_pool: self.ports.store.pool_usage(),
        }
    }

    fn metrics_text(&self, request: &Request<Incoming>) -> Reply {
        if !self.metrics_allowed(request) {
            return reply::plain(401, "unauthorized");
        }
        let mut response = Reply::new(reply::full(self.metrics.prometheus(&self.gauges())));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    }

    fn metrics_json(&self, request: &Request<Incoming>) -> Reply {
        if !self.metrics_allowed(request) {
            return reply::plain(401, "unauthorized");
        }
        reply::json(200, &self.metrics.json(&self.gauges()))
    }

    /// `POST /internal/revocations/reload`: `Bearer CARACAL_ADMIN_TOKEN`; without a token
    /// configured, or with a wrong one, the route does not exist (404).
    async fn reload(&self, request: &Request<Incoming>) -> Reply {
        let authorized = self.config.admin_token.as_ref().is_some_and(|token| {
            let given = request
                .headers()
                .get("authorization")
                .map(|v| v.as_bytes())
                .unwrap_or(b"");
            constant_time_eq(given, format!("Bearer {token}").as_bytes())
        });
        if !authorized {
            return reply::plain(404, "404 page not found");
        }
        match self.revocations().reload().await {
            Ok(held) => reply::json(200, &json!({"ok": true, "revocations": held})),
            Err(e) => {
                tracing::warn!(error = %e, "manual revocation reload failed");
                reply::json(
                    503,
                    &json!({"ok": false, "reason": "revocation_reload_failed"}),
                )
            }
        }
    }
}
