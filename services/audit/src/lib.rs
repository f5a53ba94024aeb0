//! The Audit service (:9090): the HTTP shell and background workers over `caracal_core::audit`
//! (`spec/audit-streams-storage.md §6`).
//!
//! Workers: the ingest consumer (start-up drain, then reads of new entries), the reaper
//! (reclaims idle entries with their delivery counts), the stream-figure poll behind `/ready`
//! and the gauges, and retention. Routes: `/health`, `/ready`, `/metrics`, `/metrics.json`,
//! and the operator routes `/api/audit/search` and `/api/audit/dlq…` behind
//! `AUDIT_ADMIN_TOKEN`. The upstream service is written in Go; its plain-text error bodies and
//! stock 404 are kept, since operators' scripts read them.

#![forbid(unsafe_code)]

pub mod config;
pub mod ingest;
pub mod metrics;
pub mod retention;
mod routes;
pub mod stats;

use std::sync::Arc;

use actix_web::web;
use caracal_core::ports::audit::AuditLedger;
use caracal_core::ports::events::EventBus;
use caracal_core::ports::{Clock, MessageAuthenticator};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{AuditConfig, StreamNames};
pub use ingest::{ConsumerHealth, Ingestor, Tally};
pub use metrics::AuditMetrics;
pub use routes::stock_not_found;

/// The adapters the service runs on.
#[derive(Clone)]
pub struct AuditPorts {
    /// Where evidence is stored.
    pub ledger: Arc<dyn AuditLedger>,
    /// The stream bus.
    pub bus: Arc<dyn EventBus>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// `AUDIT_HMAC_KEY` (none: signatures are not checked and `chain_hmac` is empty).
    pub mac: Option<Arc<dyn MessageAuthenticator>>,
}

/// Everything the routes and workers share.
#[derive(Clone)]
pub struct AuditState {
    /// The adapters.
    pub ports: AuditPorts,
    /// Counters and gauges.
    pub metrics: Arc<AuditMetrics>,
    /// The consumer's health.
    pub consumer: Arc<ConsumerHealth>,
    /// Tunables.
    pub config: Arc<AuditConfig>,
}

impl AuditState {
    /// A fresh state: no counts, consumer not yet healthy.
    pub fn new(ports: AuditPorts, config: AuditConfig) -> AuditState {
        AuditState {
            ports,
            metrics: Arc::new(AuditMetrics::default()),
            consumer: Arc::new(ConsumerHealth::default()),
            config: Arc::new(config),
        }
    }

    /// This replica's consumer of the audit stream.
    pub fn ingestor(&self) -> Ingestor {
        Ingestor {
            bus: Arc::clone(&self.ports.bus),
            ledger: Arc::clone(&self.ports.ledger),
            mac: self.ports.mac.clone(),
            clock: Arc::clone(&self.ports.clock),
            metrics: Arc::clone(&self.metrics),
            streams: self.config.streams.clone(),
            consumer: self.config.consumer.clone(),
            max_deliveries: self.config.max_deliveries,
            claim_idle: self.config.claim_idle,
        }
    }
}

/// Starts the consumer, the reaper, the stream-figure poll and retention; each stops when
/// `shutdown` turns true.
pub fn spawn_workers(state: &AuditState, shutdown: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let ingestor = Arc::new(state.ingestor());
    let config = &state.config;
    vec![
        tokio::spawn(ingest::run_consumer(
            Arc::clone(&ingestor),
            Arc::clone(&state.consumer),
            config.read_block,
            shutdown.clone(),
        )),
        tokio::spawn(ingest::run_reaper(ingestor, shutdown.clone())),
        tokio::spawn(stats::run_stats(
            Arc::clone(&state.ports.bus),
            config.streams.clone(),
            Arc::clone(&state.ports.clock),
            Arc::clone(&state.metrics),
            Arc::clone(&state.consumer),
            config.stats_every,
            shutdown.clone(),
        )),
        tokio::spawn(retention::run_retention(
            Arc::clone(&state.ports.ledger),
            Arc::clone(&state.ports.clock),
            Arc::clone(&state.metrics),
            config.retention_days,
            config.retention_every,
            shutdown.clone(),
        )),
    ]
}

/// Mounts the Audit service's routes on an actix app.
pub fn configure(state: AuditState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(state))
            .configure(routes::configure);
    }
}

/// The Audit app: routes, Go's stock 404 for anything else, and request ids.
#[macro_export]
macro_rules! audit_app {
    ($state:expr) => {
        actix_web::App::new()
            .configure($crate::configure($state))
            .default_service(actix_web::web::to($crate::stock_not_found))
            .wrap(actix_web::middleware::from_fn(
                caracal_http::request_id::assign,
            ))
    };
}
