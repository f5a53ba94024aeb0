//! The builtin secret store: sealed envelopes only (`spec/api.md §6`).

use async_trait::async_trait;
use caracal_core::ids::ZoneId;
use caracal_core::model::SealedSecret;
use caracal_core::ports::store::SecretRepo;
use caracal_core::StoreError;
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::RunQueryDsl;

use crate::convert::id;
use crate::schema::secret_store as t;
use crate::unit_of_work::{op, write_op, PgUnitOfWork};

#[derive(Queryable, Selectable)]
#[diesel(table_name = t, check_for_backend(diesel::pg::Pg))]
struct SecretRow {
    reference: String,
    zone_id: String,
    envelope: Vec<u8>,
    version: i32,
}

#[async_trait]
impl SecretRepo for PgUnitOfWork {
    /// Upstream's put: version 1 on insert, previous version + 1 on replace; the caller's
    /// `version` field is not trusted (spec/api.md §6).
    async fn put_secret(&mut self, secret: &SealedSecret) -> Result<(), StoreError> {
        write_op!(self, |conn| diesel::insert_into(t::table)
            .values((
                t::reference.eq(&secret.reference),
                t::zone_id.eq(secret.zone_id.as_str()),
                t::envelope.eq(&secret.envelope),
                t::version.eq(1),
                t::created_at.eq(diesel::dsl::now),
                t::updated_at.eq(diesel::dsl::now),
            ))
            .on_conflict(t::reference)
            .do_update()
            .set((
                t::zone_id.eq(excluded(t::zone_id)),
                t::envelope.eq(excluded(t::envelope)),
                t::version.eq(t::version + 1),
                t::updated_at.eq(diesel::dsl::now),
            ))
            .execute(conn))?;
        Ok(())
    }

    async fn get_secret(&mut self, reference: &str) -> Result<Option<SealedSecret>, StoreError> {
        let row: Option<SecretRow> = op!(
            self,
            optional
                | conn
                | t::table
                    .find(reference)
                    .select(SecretRow::as_select())
                    .first(conn)
        )?;
        row.map(|r| {
            Ok(SealedSecret {
                zone_id: id(ZoneId::parse, &r.zone_id, "secret_store.zone_id")?,
                reference: r.reference,
                envelope: r.envelope,
                version: r.version,
            })
        })
        .transpose()
    }

    async fn delete_secret(&mut self, reference: &str) -> Result<bool, StoreError> {
        let deleted = write_op!(self, |conn| diesel::delete(t::table.find(reference))
            .execute(conn))?;
        Ok(deleted > 0)
    }
}
