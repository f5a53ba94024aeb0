//! Route table (`spec/audit-streams-storage.md §6.6`) and the Go-style plain-text replies.

mod dlq;
mod health;
mod search;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::digest::constant_time_eq;

use crate::AuditState;

/// A path answering `GET` (or `POST`) only; any other method gets the stock 404, like an
/// unknown path.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(stock_not_found))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/health").route(web::get().to(health::health)))
        .service(resource("/ready").route(web::get().to(health::ready)))
        .service(resource("/metrics").route(web::get().to(health::metrics)))
        .service(resource("/metrics.json").route(web::get().to(health::metrics_json)))
        .service(resource("/api/audit/search").route(web::get().to(search::search)))
        .service(resource("/api/audit/dlq").route(web::get().to(dlq::list)))
        // Before `{id}`, so `replay` is never read as an entry id.
        .service(resource("/api/audit/dlq/replay").route(web::post().to(dlq::replay)))
        .service(resource("/api/audit/dlq/{id}").route(web::get().to(dlq::detail)));
}

/// Go's `http.Error`: the message and a newline, as plain text.
pub(crate) fn text(status: StatusCode, message: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .insert_header(("x-content-type-options", "nosniff"))
        .body(format!("{message}\n"))
}

/// Go's stock `404 page not found` (unknown routes, and every operator route when no
/// `AUDIT_ADMIN_TOKEN` is set).
pub async fn stock_not_found() -> HttpResponse {
    text(StatusCode::NOT_FOUND, "404 page not found")
}

/// The operator-token check of `/api/audit/*`: 404 when no token is configured (the routes do
/// not exist), 401 with a challenge when the caller's (with or without `Bearer `) differs.
pub(crate) fn admin_refusal(req: &HttpRequest, state: &AuditState) -> Option<HttpResponse> {
    let Some(token) = &state.config.admin_token else {
        return Some(text(StatusCode::NOT_FOUND, "404 page not found"));
    };
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let given = given.strip_prefix("Bearer ").unwrap_or(given);
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return None;
    }
    let mut refusal = text(StatusCode::UNAUTHORIZED, "unauthorized");
    refusal.headers_mut().insert(
        actix_web::http::header::WWW_AUTHENTICATE,
        actix_web::http::header::HeaderValue::from_static("Bearer realm=\"caracal-audit\""),
    );
    Some(refusal)
}

/// The first value of query parameter `name`, as Go's `Query().Get` (empty when absent).
pub(crate) fn query_value(req: &HttpRequest, name: &str) -> String {
    web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_default()
}
