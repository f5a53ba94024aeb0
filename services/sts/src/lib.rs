//! The STS service (:8080): the token endpoint, per-zone JWKS, the internal policy and key
//! routes, health and metrics. Handlers parse, call one use case of `caracal_core::sts` or
//! `caracal_core::policy`, and render the OAuth-style envelope
//! `{"error","error_description","requestId"}`.

#![forbid(unsafe_code)]

pub mod config;
mod reply;
mod routes;
pub mod worker;

use std::sync::Arc;

use actix_web::web;
use caracal_core::ports::{AuditSink, EventBus, Store};
use caracal_core::sts::Sts;
use caracal_http::metrics::HttpCounters;

pub use config::StsServiceConfig;
pub use routes::in_process as exchange_in_process;

/// Everything the routes share.
#[derive(Clone)]
pub struct StsState {
    /// The STS use cases.
    pub sts: Arc<Sts>,
    /// The store (for `/ready`).
    pub store: Arc<dyn Store>,
    /// The event bus (for `/ready`).
    pub bus: Arc<dyn EventBus>,
    /// The audit sink (for `/ready` and `/metrics`).
    pub audit: Arc<dyn AuditSink>,
    /// Request counters.
    pub counters: Arc<HttpCounters>,
    /// Tunables.
    pub config: Arc<StsServiceConfig>,
}

/// Mounts the STS routes on an actix app.
pub fn configure(state: StsState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(state))
            .configure(routes::configure);
    }
}

/// The STS app: routes, plain-text 404/405 fallbacks, response counters.
#[macro_export]
macro_rules! sts_app {
    ($state:expr) => {
        actix_web::App::new()
            .configure($crate::configure($state))
            .default_service(actix_web::web::to($crate::plain_not_found))
            .wrap(actix_web::middleware::from_fn($crate::count_responses))
    };
}

/// Unknown paths: a plain-text 404, as upstream's Go mux answers.
pub async fn plain_not_found() -> actix_web::HttpResponse {
    actix_web::HttpResponse::NotFound()
        .content_type("text/plain; charset=utf-8")
        .body("404 page not found\n")
}

/// Counts responses by status class for `/metrics`.
pub async fn count_responses(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let counters = req
        .app_data::<web::Data<StsState>>()
        .map(|s| Arc::clone(&s.counters));
    let res = next.call(req).await?;
    if let Some(counters) = counters {
        counters.observe(res.status().as_u16());
    }
    Ok(res)
}
