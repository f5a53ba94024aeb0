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
use diesel_async::RunQueryDsl;
use tokio::sync::oneshot;

use crate::prepared::keep_prepared;
use crate::repos::authority_records::AuthorityRecordRow;
use crate::schema::authority_records as t;
use crate::store::PgStore;
use crate::unit_of_work::one_statement_tx;

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
    /// multi-row insert, pipelined with its opening and `COMMIT` (`one_statement_tx!`): the
    /// ids it inserted.
    async fn write_records(
        &self,
        zone: &ZoneId,
        records: &[&AuthorityRecord],
    ) -> Result<HashSet<String>, StoreError> {
        let rows: Vec<AuthorityRecordRow> = records
            .iter()
            .map(|r| AuthorityRecordRow::from(*r))
            .collect();
        let insert = diesel::insert_into(t::table)
            .values(&rows)
            .on_conflict(t::id)
            .do_nothing()
            .returning(t::id);
        let scope = ZoneScope::Zone(zone.clone());
        // Diesel prepares a multi-row insert afresh every time (a parse round trip); the
        // usual small groups keep theirs, one statement per size (the row has no DEFAULTs).
        let inserted: Vec<String> = one_statement_tx!(self, &scope, true, true, |conn| async {
            if rows.len() <= KEPT_GROUP {
                keep_prepared(insert).get_results::<String>(conn).await
            } else {
                insert.get_results::<String>(conn).await
            }
        })?;
        Ok(inserted.into_iter().collect())
    }
}
