//! Offline chain verification (`caracal audit verify`): recompute every stored row's content
//! hash and link, zone by zone, from the ledger's rows and retention anchors, and name the
//! first broken link of each zone.

use super::chain::{Break, ZoneVerifier};
use crate::ports::audit::{AuditLedger, LedgerError};
use crate::ports::MessageAuthenticator;

/// Rows read per round trip.
pub const PAGE: u32 = 1000;

/// The result for one zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneReport {
    /// Zone.
    pub zone_id: String,
    /// Rows checked (up to and including the first broken one).
    pub rows: u64,
    /// Retention anchors the chain may continue from.
    pub anchors: u64,
    /// Highest `chain_seq` verified.
    pub head_seq: i64,
    /// The first broken link, if any.
    pub broken: Option<Break>,
}

/// Verifies `zones` (every zone of the ledger when `None`). With `mac`, every row's
/// `chain_hmac` is checked too; without it only hashes and links are (a forger who rewrites a
/// whole suffix consistently is then not detected — say so to the operator).
pub async fn verify_ledger(
    ledger: &dyn AuditLedger,
    zones: Option<&[String]>,
    mac: Option<&dyn MessageAuthenticator>,
) -> Result<Vec<ZoneReport>, LedgerError> {
    let zones = match zones {
        Some(list) => list.to_vec(),
        None => ledger.zones().await?,
    };
    let mut reports = Vec::with_capacity(zones.len());
    for zone in zones {
        let anchors = ledger.anchors(&zone).await?;
        let mut verifier = ZoneVerifier::new(&zone, &anchors);
        let mut after = 0;
        'pages: loop {
            let page = ledger.chain_page(&zone, after, PAGE).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.chain_seq;
            for row in &page {
                if verifier.check(row, mac).is_some() {
                    break 'pages;
                }
            }
        }
        reports.push(ZoneReport {
            zone_id: zone,
            rows: verifier.checked(),
            anchors: anchors.len() as u64,
            head_seq: verifier.head().seq,
            broken: verifier.broken().cloned(),
        });
    }
    Ok(reports)
}
