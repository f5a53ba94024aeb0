//! Authority-record revocation (`spec/sts.md §14`, stream `caracal.sessions.revoke`): a
//! terminated governed Session, a revoked Delegation, grant or subject names the authority
//! record (`session_id`) whose mandates must stop working; the record and every record
//! derived from it (`parent_id` descendants: the `use=resource` records minted from its
//! mandates) become `revoked`. The STS refuses revoked records as subject tokens and as
//! Session anchors, so the next exchange with any of their mandates fails.

use std::collections::{HashSet, VecDeque};

use super::Sts;
use crate::authority::RecordStatus;
use crate::error::Result;
use crate::ids::ZoneId;

/// The reason written when the message carries none.
pub const DEFAULT_REVOKE_REASON: &str = "session_revoked";

/// Most records one message may revoke: a bound on the walk, far above any real tree (one
/// record per mint).
pub const MAX_REVOKED_PER_MESSAGE: usize = 100_000;

impl Sts {
    /// Revokes `record_id` and its descendants in one unit of work; returns how many records
    /// changed. A record already revoked keeps its first reason and instant but its
    /// descendants are still walked. An unknown record (or zone) is a no-op: the message may
    /// name a record of a deployment that kept no row.
    pub async fn revoke_authority_record(
        &self,
        zone: &ZoneId,
        record_id: &str,
        reason: Option<&str>,
    ) -> Result<u64> {
        let reason = reason
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .unwrap_or(DEFAULT_REVOKE_REASON);
        let now = self.clock.now();
        let mut uow = self
            .store
            .begin(&crate::ports::ZoneScope::Zone(zone.clone()))
            .await?;
        let Some(root) = uow.get_authority_record(zone, record_id).await? else {
            return Ok(0);
        };
        let mut queue = VecDeque::from([root]);
        let mut seen = HashSet::new();
        let mut changed = 0u64;
        while let Some(mut record) = queue.pop_front() {
            if !seen.insert(record.id.clone()) || seen.len() > MAX_REVOKED_PER_MESSAGE {
                continue;
            }
            if record.status == RecordStatus::Active {
                record.status = RecordStatus::Revoked;
                record.revoked_at = Some(now);
                record.revoked_reason = Some(reason.to_owned());
                uow.save_authority_record(&record).await?;
                changed += 1;
            }
            for child in uow.list_authority_record_children(zone, &record.id).await? {
                if !seen.contains(&child.id) {
                    queue.push_back(child);
                }
            }
        }
        uow.commit().await?;
        if changed > 0 {
            // Kept records and delegation rows anchored on these records stop vouching for
            // anything (`sts::kept`). A failed advance cannot undo the commit; kept rows
            // expire on their own within `ROW_CACHE_MS`.
            if let Err(e) = self.versions.advance(zone).await {
                tracing::warn!(zone = %zone, error = %e, "authority version not advanced after a record revocation");
            }
        }
        Ok(changed)
    }
}
