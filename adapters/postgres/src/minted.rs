//! Group commit for the STS's authority records (`Store::insert_minted_record`): every mint
//! writes one, and each cost a transaction of three round trips of its own. Concurrent mints
//! on one store now share one transaction per zone: the relaxed zone-bound `BEGIN` batch, one
//! multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING id` (kept prepared by the connection
//! for groups of up to 16, one statement per size), `COMMIT`. Alone, a mint costs what it did; sixteen at once
//! cost a few transactions instead of sixteen.
//!
//! The three go out as one pipelined burst. (An earlier attempt reordered them: a statement
//! sent as a simple query, as `COMMIT` usually is, does not queue behind statements still
//! being prepared. Here `COMMIT` is a kept prepared statement and queues in order.)
//!
//! The first caller to take the turn writes every record of its zone queued so far; callers
//! that queued meanwhile wait for the turn and find their record written (or write the next
//! group). A caller answers only after the transaction holding its record committed, so the
//! outcome is the same as a unit of its own, just shared. The write runs in a task of its own:
//! a cancelled request cannot cut off a group that other requests wait on.

use std::collections::HashSet;
use std::sync::Mutex;

use caracal_core::authority::AuthorityRecord;
use caracal_core::ids::ZoneId;
use caracal_core::ports::ZoneScope;
use caracal_core::StoreError;
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use tokio::sync::oneshot;

use crate::prepared::keep_prepared;
use crate::repos::authority_records::AuthorityRecordRow;
use crate::schema::authority_records as t;
use crate::store::{begin_sql, PgStore};
use crate::unit_of_work::CloseOnDrop;

/// Most records in one transaction (and so the number of distinct multi-row statements the
/// connection's statement cache can hold for this writer).
const MAX_GROUP: usize = 128;

/// Largest group whose insert stays prepared on the connection (one statement per size up to
/// this).
const KEPT_GROUP: usize = 16;

/// A record waiting for its group's commit.
struct Queued {
    record: AuthorityRecord,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The queue and the turn of one store (one connection pool).
#[derive(Default)]
pub(crate) struct MintedWriter {
    queue: Mutex<Vec<Queued>>,
    turn: tokio::sync::Mutex<()>,
}

impl MintedWriter {
    fn take_group(&self, zone: &ZoneId) -> Vec<Queued> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut group = Vec::new();
        let mut rest = Vec::with_capacity(queue.len());
        for q in queue.drain(..) {
            if q.record.zone_id == *zone && group.len() < MAX_GROUP {
                group.push(q);
            } else {
                rest.push(q);
            }
        }
        *queue = rest;
        group
    }
}

impl PgStore {
    /// Queues `record`, writes its group when this caller's turn comes, and answers with the
    /// outcome of the transaction that held it.
    pub(crate) async fn insert_minted(&self, record: &AuthorityRecord) -> Result<(), StoreError> {
        let zone = record.zone_id.clone();
        let (done, outcome) = oneshot::channel();
        self.minted()
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Queued {
                record: record.clone(),
                done,
            });
        {
            let _turn = self.minted().turn.lock().await;
            let group = self.minted().take_group(&zone);
            if !group.is_empty() {
                let store = self.clone();
                // Awaited, but run as a task: if this request is cancelled the group still
                // commits and every waiter hears the outcome.
                let _ = tokio::spawn(async move { store.write_group(zone, group).await }).await;
            }
        }
        outcome.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the authority-record writer stopped before answering".into(),
            ))
        })
    }

    async fn write_group(&self, zone: ZoneId, group: Vec<Queued>) {
        let records: Vec<&AuthorityRecord> = group.iter().map(|q| &q.record).collect();
        let result = self.write_records(&zone, &records).await;
        for q in group {
            let outcome = match &result {
                Ok(inserted) if inserted.contains(&q.record.id) => Ok(()),
                Ok(_) => Err(StoreError::Conflict("authority_records_pkey".into())),
                Err(e) => Err(e.clone()),
            };
            let _ = q.done.send(outcome);
        }
    }

    /// One relaxed transaction bound to `zone` (as `begin_relaxed` opens it) holding one
    /// multi-row insert: the ids it inserted. The opening batch, the insert and the `COMMIT`
    /// go out together, pipelined: one round trip. The server runs them in order (the insert
    /// and the `COMMIT` queue for the connection's statement cache behind the `BEGIN` batch,
    /// which is sent first); an insert that fails aborts the transaction, whose `COMMIT` then
    /// rolls it back. Any failure closes the connection rather than pooling it.
    async fn write_records(
        &self,
        zone: &ZoneId,
        records: &[&AuthorityRecord],
    ) -> Result<HashSet<String>, StoreError> {
        let rows: Vec<AuthorityRecordRow> = records
            .iter()
            .map(|r| AuthorityRecordRow::from(*r))
            .collect();
        let begin = begin_sql(&ZoneScope::Zone(zone.clone()), true, true)?;
        let mut guard = CloseOnDrop(Some(self.acquire().await?));
        let Some(conn) = guard.0.as_mut() else {
            return Err(StoreError::Unavailable("connection lost".into()));
        };
        let shared: &AsyncPgConnection = conn;
        let (mut c1, mut c2, mut c3) = (shared, shared, shared);
        let insert = diesel::insert_into(t::table)
            .values(&rows)
            .on_conflict(t::id)
            .do_nothing()
            .returning(t::id);
        // Diesel prepares a multi-row insert afresh every time (a parse round trip); the
        // usual small groups keep theirs, one statement per size (the row has no DEFAULTs).
        let inserting = async {
            if rows.len() <= KEPT_GROUP {
                keep_prepared(insert).get_results::<String>(&mut c2).await
            } else {
                insert.get_results::<String>(&mut c2).await
            }
        };
        let (begun, inserted, committed) = tokio::join!(
            biased;
            c1.batch_execute(&begin),
            inserting,
            keep_prepared(diesel::sql_query("COMMIT")).execute(&mut c3)
        );
        begun.map_err(crate::error::store_error)?;
        let inserted = inserted.map_err(crate::error::store_error)?;
        committed.map_err(crate::error::store_error)?;
        // Committed and idle: back to the pool.
        drop(guard.0.take());
        Ok(inserted.into_iter().collect())
    }
}
