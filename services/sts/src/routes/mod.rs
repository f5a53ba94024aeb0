//! Route table. Every resource answers a wrong method with a plain-text 405.

mod approvals;
mod health;
mod internal;
mod jwks;
mod token;

pub use token::in_process;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

use crate::reply::plain;

async fn method_not_allowed() -> HttpResponse {
    plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    let resource = |path: &str| web::resource(path).default_service(web::to(method_not_allowed));
    cfg.service(resource("/oauth/2/token").route(web::post().to(token::token)))
        .service(resource("/.well-known/jwks.json").route(web::get().to(jwks::jwks)))
        .service(resource("/approvals/{id}").route(web::get().to(approvals::status)))
        .service(resource("/approvals/{id}/decision").route(web::post().to(approvals::decide)))
        .service(resource("/health").route(web::get().to(health::health)))
        .service(resource("/ready").route(web::get().to(health::ready)))
        .service(resource("/metrics").route(web::get().to(health::metrics)))
        .service(resource("/metrics.json").route(web::get().to(health::metrics_json)))
        .service(resource("/internal/policy/simulate").route(web::post().to(internal::simulate)))
        .service(
            resource("/internal/policy/status/{zone_id}").route(web::get().to(internal::status)),
        )
        .service(
            resource("/internal/zones/{zone_id}/signing-key/rotate")
                .route(web::post().to(internal::rotate)),
        );
}
