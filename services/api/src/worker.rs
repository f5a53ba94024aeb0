//! The outbox dispatcher loop: one pass every `OUTBOX_POLL_MS`, immediately again while passes
//! find work, until shutdown.

use std::time::Duration;

use caracal_core::dispatch::Dispatcher;
use tokio::sync::watch;

/// Runs until `shutdown` flips to true.
pub async fn run_dispatcher(
    dispatcher: Dispatcher,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let busy = match dispatcher.pass().await {
            Ok(report) => {
                if report.retried + report.dead > 0 {
                    tracing::warn!(?report, "outbox publish failures");
                }
                report.published + report.retried + report.dead > 0
            }
            Err(err) => {
                tracing::warn!(error = %err, "outbox pass failed");
                false
            }
        };
        if busy {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// How long after expiry a DCR application is archived.
const DCR_GRACE_MS: i64 = 24 * 60 * 60 * 1000;

/// Archives expired DCR applications every `tick` until shutdown.
pub async fn run_dcr_gc(
    management: caracal_core::manage::Management,
    tick: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match management
            .archive_expired_dcr_applications(DCR_GRACE_MS)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(archived = n, "archived expired DCR applications"),
            Err(err) => tracing::warn!(error = %err, "DCR garbage collection failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
