//! The Coordinator's background jobs (`spec/coordinator-gateway.md` A11): the task TTL
//! sweeper, the service lease sweeper, the invocation deadline enforcer and the retention
//! cleaner, each on its own interval until shutdown. Every pass is one use case that takes its
//! own advisory lock, so several replicas (or a `serve all` next to a `serve coordinator`) run
//! them safely side by side. The outbox dispatcher is the API's (`caracal_api::worker`).

use std::sync::Arc;
use std::time::Duration;

use caracal_core::coordinator::Coordinator;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::stats::{Job, Stats};
use crate::CoordinatorServiceConfig;

async fn pass(coordinator: &Coordinator, job: Job) -> caracal_core::Result<u64> {
    match job {
        Job::TtlSweeper => coordinator.sweep_task_ttl().await,
        Job::ServiceLeaseSweeper => coordinator.sweep_service_leases().await,
        Job::DeadlineEnforcer => coordinator.sweep_invocation_deadlines().await,
        Job::RetentionCleaner => coordinator.sweep_retention().await,
    }
}

/// Runs `job` now and then every `every` until `shutdown` flips to true. A failed pass is
/// logged and retried on the next tick.
pub async fn run_job(
    coordinator: Arc<Coordinator>,
    stats: Arc<Stats>,
    job: Job,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        match pass(&coordinator, job).await {
            Ok(rows) => {
                stats.observe_run(job, rows);
                if rows > 0 {
                    tracing::info!(job = job.name(), rows, "coordinator job pass");
                }
            }
            Err(e) => tracing::warn!(
                job = job.name(),
                code = e.code,
                detail = e.detail.as_deref().unwrap_or(""),
                "coordinator job pass failed"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Spawns every job on its configured interval.
pub fn spawn_jobs(
    coordinator: &Arc<Coordinator>,
    stats: &Arc<Stats>,
    config: &CoordinatorServiceConfig,
    shutdown: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    [
        (Job::TtlSweeper, config.ttl_sweep_every),
        (Job::ServiceLeaseSweeper, config.lease_sweep_every),
        (Job::DeadlineEnforcer, config.deadline_sweep_every),
        (Job::RetentionCleaner, config.retention_every),
    ]
    .into_iter()
    .map(|(job, every)| {
        tokio::spawn(run_job(
            Arc::clone(coordinator),
            Arc::clone(stats),
            job,
            every,
            shutdown.clone(),
        ))
    })
    .collect()
}
