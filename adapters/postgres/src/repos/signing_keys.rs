//! Zone signing keys: sealed ES256 private keys, one version per rotation (`spec/sts.md §5`).

use async_trait::async_trait;
use caracal_core::authority::ZoneSigningKey;
use caracal_core::ids::ZoneId;
use caracal_core::ports::store::SigningKeyRepo;
use caracal_core::StoreError;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::convert::{id, ts};
use crate::schema::zone_signing_keys as t;
use crate::unit_of_work::{op, write_op, PgUnitOfWork};

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = t, check_for_backend(diesel::pg::Pg))]
pub(crate) struct SigningKeyRow {
    id: String,
    zone_id: String,
    version: i32,
    envelope: Vec<u8>,
    created_at: DateTime<Utc>,
}

impl From<&ZoneSigningKey> for SigningKeyRow {
    fn from(k: &ZoneSigningKey) -> Self {
        Self {
            id: k.id.clone(),
            zone_id: k.zone_id.to_string(),
            version: k.version,
            envelope: k.envelope.clone(),
            created_at: k.created_at.as_datetime(),
        }
    }
}

impl TryFrom<SigningKeyRow> for ZoneSigningKey {
    type Error = StoreError;

    fn try_from(r: SigningKeyRow) -> Result<Self, StoreError> {
        Ok(ZoneSigningKey {
            zone_id: id(ZoneId::parse, &r.zone_id, "zone_signing_keys.zone_id")?,
            id: r.id,
            version: r.version,
            envelope: r.envelope,
            created_at: ts(r.created_at),
        })
    }
}

#[async_trait]
impl SigningKeyRepo for PgUnitOfWork {
    /// A plain insert: keys are append-only, and a concurrent rotation that picked the same
    /// version fails on `zone_signing_keys_version` instead of overwriting the other key.
    async fn insert_signing_key(&mut self, key: &ZoneSigningKey) -> Result<(), StoreError> {
        let row = SigningKeyRow::from(key);
        write_op!(self, |conn| diesel::insert_into(t::table)
            .values(&row)
            .execute(conn))?;
        Ok(())
    }

    async fn latest_signing_keys(
        &mut self,
        zone: &ZoneId,
        limit: u32,
    ) -> Result<Vec<ZoneSigningKey>, StoreError> {
        let rows: Vec<SigningKeyRow> = op!(self, |conn| t::table
            .filter(t::zone_id.eq(zone.as_str()))
            .select(SigningKeyRow::as_select())
            .order(t::version.desc())
            .limit(i64::from(limit))
            .load(conn))?;
        rows.into_iter().map(ZoneSigningKey::try_from).collect()
    }
}
