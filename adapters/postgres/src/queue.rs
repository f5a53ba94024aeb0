//! The dispatcher's side of the transactional outbox (`spec/api.md §4`): claim due rows with
//! `FOR UPDATE SKIP LOCKED`, then record delivery, retry or death.
//!
//! These run outside any request as the connecting role with `caracal.zone_id = '*'`: the
//! dispatcher drains every zone, and `event_outbox` is not under row-level security.

use async_trait::async_trait;
use caracal_core::ids::OutboxId;
use caracal_core::model::OutboxMessage;
use caracal_core::ports::store::{OutboxQueue, ZoneScope};
use caracal_core::time::Timestamp;
use caracal_core::StoreError;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Timestamptz};
use diesel_async::RunQueryDsl;

use crate::prepared::keep_prepared;
use crate::repos::outbox::OutboxRow;
use crate::schema::event_outbox as t;
use crate::store::PgStore;
use crate::unit_of_work::one_statement_tx;

/// Claims due rows in one statement. The CTE picks due, undelivered, unlocked rows in due order
/// and locks them, skipping rows another dispatcher has locked, so two concurrent claims never
/// return the same row; a row another dispatcher claimed and committed after this statement's
/// snapshot is re-checked against its latest version when locked, and dropped (its
/// `locked_until` is now in the future). `MATERIALIZED`
/// keeps Postgres from inlining the CTE and evaluating the locking scan more than once.
const CLAIM_DUE: &str = "\
WITH due AS MATERIALIZED (
    SELECT id FROM event_outbox
    WHERE dispatched_at IS NULL
      AND available_at IS NOT NULL
      AND available_at <= $1
      AND (locked_until IS NULL OR locked_until <= $1)
    ORDER BY available_at, id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE event_outbox AS o
SET locked_until = $2, attempts = o.attempts + 1
FROM due
WHERE o.id = due.id
RETURNING o.*";

/// Undelivered rows by state: pending (live) and dead (`available_at` NULL). Both partial
/// indexes of the migration (`event_outbox_due`, `event_outbox_dead`) serve it.
const OUTBOX_COUNTS: &str = "\
SELECT count(*) FILTER (WHERE available_at IS NOT NULL) AS pending,
       count(*) FILTER (WHERE available_at IS NULL) AS dead
FROM event_outbox
WHERE dispatched_at IS NULL";

#[derive(QueryableByName)]
struct OutboxCounts {
    #[diesel(sql_type = BigInt)]
    pending: i64,
    #[diesel(sql_type = BigInt)]
    dead: i64,
}

// Each dispatcher step is one statement in a short transaction of its own, as the connecting
// role with `caracal.zone_id = '*'`, sent with its BEGIN and COMMIT in one pipelined flight
// (`one_statement_tx!`). Claims and delivery marks commit without waiting for the WAL flush:
// losing one to a crash only makes a row be claimed and published again, which at-least-once
// delivery already allows (consumers deduplicate by `outbox_id` / `dedupe_key`). Failure
// marks stay durable: a dead letter must not come back to life.

#[async_trait]
impl OutboxQueue for PgStore {
    async fn claim_due(
        &self,
        now: Timestamp,
        lock_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let rows: Vec<OutboxRow> =
            one_statement_tx!(self, &ZoneScope::All, false, true, |conn| keep_prepared(
                diesel::sql_query(CLAIM_DUE)
                    .bind::<Timestamptz, _>(now.as_datetime())
                    .bind::<Timestamptz, _>(lock_until.as_datetime())
                    .bind::<BigInt, _>(i64::from(limit))
            )
            .load::<OutboxRow>(conn))?;
        let mut claimed = rows
            .into_iter()
            .map(OutboxMessage::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        // RETURNING has no order; hand rows back in the order they were claimed.
        claimed
            .sort_by(|a, b| (a.available_at, a.id.as_str()).cmp(&(b.available_at, b.id.as_str())));
        Ok(claimed)
    }

    async fn mark_dispatched(&self, id: &OutboxId, at: Timestamp) -> Result<(), StoreError> {
        one_statement_tx!(self, &ZoneScope::All, false, true, |conn| keep_prepared(
            diesel::update(t::table.find(id.as_str())).set((
                t::dispatched_at.eq(Some(at.as_datetime())),
                t::locked_until.eq(None::<chrono::DateTime<chrono::Utc>>),
                t::last_error.eq(None::<String>),
            ))
        )
        .execute(conn))?;
        Ok(())
    }

    /// One UPDATE for the batch, committed without waiting for the WAL flush (see above).
    async fn mark_all_dispatched(&self, ids: &[OutboxId], at: Timestamp) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = ids.iter().map(OutboxId::as_str).collect();
        // The ids travel as one array (`= ANY($1)`), so the statement text is the same for
        // every batch size.
        one_statement_tx!(self, &ZoneScope::All, false, true, |conn| keep_prepared(
            diesel::update(t::table.filter(t::id.eq_any(&ids))).set((
                t::dispatched_at.eq(Some(at.as_datetime())),
                t::locked_until.eq(None::<chrono::DateTime<chrono::Utc>>),
                t::last_error.eq(None::<String>),
            ))
        )
        .execute(conn))?;
        Ok(())
    }

    async fn mark_failed(
        &self,
        id: &OutboxId,
        error: &str,
        retry_at: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        // `retry_at = None` stores available_at NULL: dead, never claimed again, counted by
        // `outbox_counts().1` (and by /ready's outbox_dead_messages check, spec/api.md §1).
        one_statement_tx!(self, &ZoneScope::All, false, false, |conn| keep_prepared(
            diesel::update(t::table.find(id.as_str())).set((
                t::available_at.eq(retry_at.map(|at| at.as_datetime())),
                t::locked_until.eq(None::<chrono::DateTime<chrono::Utc>>),
                t::last_error.eq(Some(error)),
            ))
        )
        .execute(conn))?;
        Ok(())
    }

    async fn outbox_counts(&self) -> Result<(u64, u64), StoreError> {
        // One statement, so both numbers come from one snapshot.
        let counts: OutboxCounts =
            one_statement_tx!(self, &ZoneScope::All, false, false, |conn| {
                keep_prepared(diesel::sql_query(OUTBOX_COUNTS)).get_result(conn)
            })?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok((count(counts.pending), count(counts.dead)))
    }
}
