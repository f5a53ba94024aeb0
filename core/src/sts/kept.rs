//! The version-checked rows of a delegated mint (`KeptRows`): the delegation rows and the
//! authority records a warm mint and the Gateway's exchange would otherwise read from the store
//! on every request. See `ports::versions` for the ordering that makes them safe to keep, and
//! `KeptRows` for the rules: kept rows only ever allow; a denial is decided again on rows read
//! fresh.

use std::sync::Arc;

use super::exchange::LazyUnit;
use super::references::{self, Delegation, DelegationRequest};
use super::{Sts, ROW_CACHE_MS};
use crate::authority::AuthorityRecord;
use crate::error::Error;
use crate::ids::ZoneId;
use crate::time::Timestamp;

impl Sts {
    /// The zone's authority version, read before any row it will guard. `None` when the
    /// versions cannot be read: the request then neither uses nor keeps rows.
    pub(crate) async fn authority_version(&self, zone: &ZoneId) -> Option<u64> {
        self.versions.current(zone).await.ok()
    }

    /// §3.6's delegation checks on kept rows when `version` still vouches for them, else on
    /// rows read now (kept for the next request when they grant).
    pub(crate) async fn delegation(
        &self,
        reads: &mut LazyUnit<'_>,
        zone: &ZoneId,
        request: &DelegationRequest<'_>,
        version: Option<u64>,
        now: Timestamp,
    ) -> Result<Delegation, Error> {
        if request.agent_session_id.is_empty() {
            return Err(references::denied("delegation requires a target Session"));
        }
        let key = (
            zone.clone(),
            request.edge_id.to_owned(),
            request.agent_session_id.to_owned(),
        );
        if let Some(version) = version {
            if let Some((kept_at, rows)) = self.kept.delegations.get(&key, now) {
                if kept_at == version {
                    if let Ok(granted) = references::evaluate_delegation(&rows, zone, request, now)
                    {
                        return Ok(granted);
                    }
                }
            }
        }
        let rows = references::load_delegation(
            reads.get().await?,
            zone,
            request.edge_id,
            request.agent_session_id,
        )
        .await?;
        let granted = references::evaluate_delegation(&rows, zone, request, now)?;
        if let Some(version) = version {
            self.kept.delegations.put(
                key,
                (version, Arc::new(rows)),
                now.plus_millis(ROW_CACHE_MS),
                now,
            );
        }
        Ok(granted)
    }

    /// The authority record `id`: kept when `version` vouches for it and it is still live,
    /// else read now (and kept when live).
    pub(crate) async fn authority_record(
        &self,
        reads: &mut LazyUnit<'_>,
        zone: &ZoneId,
        id: &str,
        version: Option<u64>,
        now: Timestamp,
    ) -> Result<Option<AuthorityRecord>, Error> {
        let key = (zone.clone(), id.to_owned());
        if let Some(version) = version {
            if let Some((kept_at, record)) = self.kept.records.get(&key, now) {
                if kept_at == version && record.is_live(now) {
                    return Ok(Some(record));
                }
            }
        }
        let record = reads.get().await?.get_authority_record(zone, id).await?;
        if let (Some(version), Some(r)) = (version, &record) {
            self.keep_record(r, version, now);
        }
        Ok(record)
    }

    /// Keeps a live record under `version`, which must have been read before the record could
    /// change: before it was loaded, or, for a record this STS just committed, before the
    /// commit (nothing can revoke a record that does not exist yet).
    pub(crate) fn keep_record(&self, record: &AuthorityRecord, version: u64, now: Timestamp) {
        if record.is_live(now) {
            self.kept.records.put(
                (record.zone_id.clone(), record.id.clone()),
                (version, record.clone()),
                now.plus_millis(ROW_CACHE_MS).min(record.expires_at),
                now,
            );
        }
    }
}
