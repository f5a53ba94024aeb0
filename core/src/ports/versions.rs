//! Per-zone authority versions: a counter every replica can read in one round trip, advanced
//! after each committed change that takes authority away (a Session ends or is suspended, a
//! Delegation is revoked or expired, an authority record is revoked). The STS keeps the rows
//! behind a delegated mint in memory and trusts them only while the zone's version is the one
//! it read before loading them, so the mint after a revocation always reads the store again.
//! Redis `GET`/`INCR` in production, in-process in memory mode.
//!
//! The order is the contract: a writer advances *after* its commit, a reader reads the version
//! *before* its loads. A reader that loaded between the commit and the advance files its rows
//! under the old version, which the advance has already made stale.

use async_trait::async_trait;
use thiserror::Error;

use crate::ids::ZoneId;

/// The counter store could not answer; readers then go to the store, writers log and rely on
/// the readers' bounded cache lifetime.
#[derive(Debug, Clone, Error)]
#[error("authority versions unavailable: {0}")]
pub struct VersionsError(pub String);

/// One monotonically increasing counter per zone.
#[async_trait]
pub trait AuthorityVersions: Send + Sync {
    /// The zone's current version (0 before the first advance).
    async fn current(&self, zone: &ZoneId) -> Result<u64, VersionsError>;
    /// Moves the zone's version forward.
    async fn advance(&self, zone: &ZoneId) -> Result<(), VersionsError>;
}
