//! Retention (`spec/audit-streams-storage.md §6.5`): at start and every 6 h, month partitions
//! are made to exist ahead and the months older than the retention window are dropped, with
//! the window the smaller of `AUDIT_RETENTION_DAYS` and the API-managed setting.
//!
//! Upstream runs this on one replica only, behind a Postgres advisory-lock lease. Here every
//! replica runs it: a pass is one [`AuditLedger::apply_retention`] call, which creates only
//! missing partitions and drops only months that still exist, so a second pass over the same
//! cutoff changes nothing. Two passes at the same moment are safe as long as the ledger
//! serializes them (the Postgres ledger under its retention advisory lock).

use std::sync::Arc;
use std::time::Duration;

use caracal_core::ports::audit::{AuditLedger, LedgerError, RetentionReport};
use caracal_core::ports::Clock;
use tokio::sync::watch;

use crate::ingest::pause;
use crate::metrics::AuditMetrics;

/// The retention window: `max_days`, lowered by the API's setting when one is stored.
pub async fn retention_days(ledger: &dyn AuditLedger, max_days: u32) -> Result<u32, LedgerError> {
    Ok(match ledger.retention_setting().await? {
        Some(setting) => setting.retention_days.clamp(1, max_days.max(1)),
        None => max_days,
    })
}

/// One pass.
pub async fn retention_pass(
    ledger: &dyn AuditLedger,
    clock: &dyn Clock,
    max_days: u32,
    metrics: &AuditMetrics,
) -> Result<RetentionReport, LedgerError> {
    let days = retention_days(ledger, max_days).await?;
    let report = ledger
        .apply_retention(clock.now().unix_micros(), days)
        .await?;
    metrics.retention_created.add(report.created);
    metrics.retention_dropped.add(report.dropped);
    Ok(report)
}

/// Runs a pass now and then every `every` until `shutdown`; a failed pass is logged and
/// tried again at the next tick.
pub async fn run_retention(
    ledger: Arc<dyn AuditLedger>,
    clock: Arc<dyn Clock>,
    metrics: Arc<AuditMetrics>,
    max_days: u32,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match retention_pass(ledger.as_ref(), clock.as_ref(), max_days, &metrics).await {
            Ok(report) if report.dropped > 0 || report.created > 0 => tracing::info!(
                days = max_days,
                created = report.created,
                dropped = report.dropped,
                rows = report.rows_dropped,
                anchors = report.anchors,
                "audit retention pass"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "audit retention pass failed"),
        }
        if pause(every, &mut shutdown).await {
            return;
        }
    }
}
