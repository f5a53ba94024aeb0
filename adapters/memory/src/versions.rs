//! In-process authority versions (memory mode: one process, so a local map is the truth).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use caracal_core::ids::ZoneId;
use caracal_core::ports::{AuthorityVersions, VersionsError};

/// One counter per zone, in a map.
#[derive(Debug, Default)]
pub struct MemoryAuthorityVersions {
    zones: Mutex<HashMap<ZoneId, u64>>,
}

impl MemoryAuthorityVersions {
    /// Every zone at version 0.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ZoneId, u64>> {
        // Each mutation is one map call: a poisoned map is still consistent.
        self.zones.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl AuthorityVersions for MemoryAuthorityVersions {
    async fn current(&self, zone: &ZoneId) -> Result<u64, VersionsError> {
        Ok(self.lock().get(zone).copied().unwrap_or(0))
    }

    async fn advance(&self, zone: &ZoneId) -> Result<(), VersionsError> {
        let mut zones = self.lock();
        let version = zones.entry(zone.clone()).or_insert(0);
        *version = version.saturating_add(1);
        Ok(())
    }
}
