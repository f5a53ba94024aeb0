//! The Coordinator service (:4000): the HTTP shell over `caracal_core::coordinator`
//! (`spec/coordinator-gateway.md` Part A).
//!
//! A request passes, in order: the request-id middleware (adopts a well-formed `x-request-id`,
//! echoes it on every response), the per-IP rate limit (A4), routing, then in the handler the
//! body (read under the limit and parsed: failures are framework errors, as upstream's parser
//! runs before its auth hook), authentication (A2: the operator token on the routes that take
//! it, else an STS `use=session` mandate), path ids, and one use case. Handlers parse, call,
//! and render; every rule lives in core.

#![forbid(unsafe_code)]

pub mod config;
mod gate;
mod reply;
mod routes;
pub mod stats;
pub mod worker;

use std::sync::Arc;

use actix_web::web;
use caracal_core::coordinator::Coordinator;
use caracal_core::ports::{Clock, Es256, EventBus, OutboxQueue, RateLimiter, ZoneKeySource};
use caracal_http::metrics::HttpCounters;

pub use config::CoordinatorServiceConfig;
pub use gate::rate_limit;
pub use stats::Stats;

/// Everything the routes share.
#[derive(Clone)]
pub struct CoordinatorState {
    /// The use cases (and, through them, the store).
    pub coordinator: Arc<Coordinator>,
    /// Mandate verification keys (the in-process STS's, or fetched from `STS_URL`).
    pub keys: Arc<dyn ZoneKeySource>,
    /// ES256 verification.
    pub es256: Arc<dyn Es256>,
    /// Rate-limit counters (A4).
    pub limiter: Arc<dyn RateLimiter>,
    /// The outbox (for `/ready` and `/metrics`).
    pub outbox: Arc<dyn OutboxQueue>,
    /// The event bus (for `/ready`: it is the Redis the limits and streams use).
    pub bus: Arc<dyn EventBus>,
    /// The clock the rate-limit windows are read from.
    pub clock: Arc<dyn Clock>,
    /// Response counters.
    pub counters: Arc<HttpCounters>,
    /// Idempotency and job counters.
    pub stats: Arc<Stats>,
    /// Tunables.
    pub config: Arc<CoordinatorServiceConfig>,
}

/// Mounts the Coordinator's routes on an actix app.
pub fn configure(state: CoordinatorState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(state))
            .configure(routes::configure);
    }
}

/// The Coordinator app: routes, the framework's 404 for unknown routes, the per-IP rate
/// limit, response counters, and request ids (outermost, so every response carries one).
#[macro_export]
macro_rules! coordinator_app {
    ($state:expr) => {
        actix_web::App::new()
            .configure($crate::configure($state))
            .default_service(actix_web::web::to(caracal_http::not_found_route))
            .wrap(actix_web::middleware::from_fn($crate::rate_limit))
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
        .app_data::<web::Data<CoordinatorState>>()
        .map(|s| Arc::clone(&s.counters));
    let res = next.call(req).await?;
    if let Some(counters) = counters {
        counters.observe(res.status().as_u16());
    }
    Ok(res)
}
