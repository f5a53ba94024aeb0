//! The API service (:3000): the management plane. Routes parse input, call one use case in
//! `caracal_core::manage`, and render the result in the wire shapes the admin SDK reads.

#![forbid(unsafe_code)]

mod audit;
pub mod config;
mod gate;
mod reply;
mod routes;
mod views;
pub mod worker;

use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::web;
use caracal_core::manage::Management;
use caracal_core::ports::audit::AuditLedger;
use caracal_core::ports::{EventBus, OutboxQueue, RateLimiter, Store};
use caracal_http::metrics::HttpCounters;

pub use config::ApiConfig;

/// Everything the routes share.
#[derive(Clone)]
pub struct ApiState {
    /// The management use cases.
    pub management: Management,
    /// The outbox queue (for `/ready` and `/metrics`).
    pub outbox: Arc<dyn OutboxQueue>,
    /// The event bus (for `/ready`).
    pub bus: Arc<dyn EventBus>,
    /// The store (for `/ready` and the admin audit reads).
    pub store: Arc<dyn Store>,
    /// The audit ledger the Audit service writes: zone audit reads and the retention setting.
    pub audit: Arc<dyn AuditLedger>,
    /// Request counters.
    pub counters: Arc<HttpCounters>,
    /// `/v1` rate-limit counters.
    pub limiter: Arc<dyn RateLimiter>,
    /// Tunables.
    pub config: Arc<ApiConfig>,
}

/// Mounts the API service's routes and middleware on an actix app.
pub fn configure(state: ApiState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(state))
            .service(
                web::scope("/v1")
                    .wrap(from_fn(gate::admin_gate))
                    .configure(routes::configure),
            )
            .configure(routes::health::configure);
    }
}

/// Wraps an app-level service with the middleware every API response gets (request ids and
/// counters), and the unknown-route fallback.
#[macro_export]
macro_rules! api_app {
    ($state:expr) => {
        actix_web::App::new()
            .configure($crate::configure($state))
            .default_service(actix_web::web::to(caracal_http::not_found_route))
            .wrap(actix_web::middleware::from_fn($crate::count_responses))
            .wrap(actix_web::middleware::from_fn(
                caracal_http::request_id::assign,
            ))
    };
}

/// Counts responses by status class for `/metrics`.
pub async fn count_responses(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let counters = req
        .app_data::<web::Data<ApiState>>()
        .map(|s| Arc::clone(&s.counters));
    let res = next.call(req).await?;
    if let Some(counters) = counters {
        counters.observe(res.status().as_u16());
    }
    Ok(res)
}
