//! The Postgres store: a deadpool pool of `AsyncPgConnection`s and the `Store` entry point that
//! opens zone-bound units of work.

use std::time::Duration;

use async_trait::async_trait;
use caracal_core::authority::AuthorityRecord;
use caracal_core::ids::{ApplicationId, ZoneId};
use caracal_core::model::Application;
use caracal_core::ports::store::{CallerRows, PoolUsage, Store, UnitLocks, UnitOfWork, ZoneScope};
use caracal_core::StoreError;
use diesel::connection::TransactionDepthChange;
use diesel::QueryResult;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::SimpleAsyncConnection;
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, RunQueryDsl};

use crate::repos::applications::application_row;
use crate::repos::authority_records::authority_record_row;
use crate::repos::{hashtext, pg_advisory_xact_lock};
use crate::unit_of_work::{note_depth, op, Deferred, PgUnitOfWork, Pooled};

/// How long a caller waits for a pooled connection (including establishing a new one) before
/// the store reports `Unavailable` instead of hanging a request.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The role every unit of work runs as. It owns nothing, so the `zone_isolation` policies bind
/// it (RLS is ENABLEd, not FORCEd; `spec/api.md §5`).
pub(crate) const APP_ROLE: &str = "caracal_app";

/// Postgres implementation of the storage ports (`Store`, and `OutboxQueue` in `queue.rs`).
///
/// Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool<AsyncPgConnection>,
    /// Group commit of minted authority records (`minted.rs`), shared by the clones.
    minted: std::sync::Arc<crate::minted::MintedWriter>,
    /// Units run with `enable_seqscan = off` ([`PgStore::preferring_index_scans`]).
    prefer_index_scans: bool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PgStore")
            .field("max_size", &status.max_size)
            .field("size", &status.size)
            .finish()
    }
}

impl PgStore {
    /// Builds the pool for `database_url` with at most `max_connections` connections.
    ///
    /// No connection is opened here: connections are established on first use, and a
    /// database that cannot be reached surfaces as `StoreError::Unavailable` from that use (call
    /// [`Store::ping`] to check at start-up). Connections are plain TCP through tokio-postgres
    /// (no libpq, no TLS).
    pub fn connect(database_url: &str, max_connections: usize) -> Result<PgStore, StoreError> {
        // Fast recycling: a pooled connection is checked for an open transaction only, not
        // with a `SELECT 1` round trip on every checkout (one of the round trips of every mint).
        // A connection the server dropped fails its first statement; diesel-async marks it
        // broken and the pool discards it at the next recycle.
        let mut config = ManagerConfig::default();
        config.recycling_method = RecyclingMethod::Fast;
        let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
            database_url,
            config,
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .build()
            .map_err(|err| StoreError::Unavailable(format!("cannot build the pool: {err}")))?;
        Ok(PgStore {
            pool,
            minted: std::sync::Arc::default(),
            prefer_index_scans: false,
        })
    }

    /// This store with every unit of work planning as if sequential scans were prohibitively
    /// expensive (`enable_seqscan = off`, transaction-local), for request paths whose every
    /// query is meant to be an index lookup (the STS's and the Coordinator's).
    ///
    /// Why: a prepared statement keeps its generic plan until the table's statistics change.
    /// One planned while a table looked empty (a young zone, a fresh deployment, an `ANALYZE`
    /// just before a burst) keeps scanning the whole table as it grows, until autovacuum next
    /// analyses it, at most once a minute: measured on Delegation create, whose edge lookups
    /// slowed from 1.4 to 2.0 ms over 5,000 new edges, three full scans per create. The setting
    /// only re-weighs plans: a query with no usable index still scans, as before.
    pub fn preferring_index_scans(mut self) -> Self {
        self.prefer_index_scans = true;
        self
    }

    /// The opening batch of this store's units ([`begin_sql`] with its planner preference).
    pub(crate) fn opening(
        &self,
        scope: &ZoneScope,
        as_app_role: bool,
        relaxed: bool,
    ) -> Result<String, StoreError> {
        let mut sql = begin_sql(scope, as_app_role, relaxed)?;
        if self.prefer_index_scans {
            sql.push_str(", set_config('enable_seqscan', 'off', true)");
        }
        Ok(sql)
    }

    pub(crate) fn minted(&self) -> &crate::minted::MintedWriter {
        &self.minted
    }

    /// A pooled connection, or `Unavailable` after [`ACQUIRE_TIMEOUT`].
    pub(crate) async fn acquire(&self) -> Result<Pooled, StoreError> {
        match tokio::time::timeout(ACQUIRE_TIMEOUT, self.pool.get()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(err)) => Err(StoreError::Unavailable(format!(
                "no database connection: {err}"
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no database connection within {}s",
                ACQUIRE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Opens a transaction with `caracal.zone_id` set for `scope` (`'*'` for every zone). With
    /// `as_app_role` the transaction also switches to `caracal_app`, so row-level security
    /// applies; without it (the outbox dispatcher) it runs as the connecting role.
    ///
    /// Both settings are transaction-local (`set_config(…, true)`, the same as `SET LOCAL`), so
    /// they end with the transaction and a pooled connection never carries them to its next
    /// borrower. `set_config('role', …, true)` is exactly `SET LOCAL ROLE`.
    pub(crate) async fn begin_tx(
        &self,
        scope: &ZoneScope,
        as_app_role: bool,
    ) -> Result<PgUnitOfWork, StoreError> {
        self.begin_tx_with(scope, as_app_role, false).await
    }

    /// [`Self::begin_tx`]; with `relaxed`, the transaction's commit does not wait for its WAL
    /// to reach disk (`synchronous_commit = off`, transaction-local like the other settings).
    pub(crate) async fn begin_tx_with(
        &self,
        scope: &ZoneScope,
        as_app_role: bool,
        relaxed: bool,
    ) -> Result<PgUnitOfWork, StoreError> {
        let sql = self.opening(scope, as_app_role, relaxed)?;
        let conn = self.acquire().await?;
        // From here on, dropping `uow` (an early return below) rolls back and cleans up.
        let mut uow = PgUnitOfWork::new(conn);
        let conn = uow.begin_op()?;
        let begun = AnsiTransactionManager::begin_transaction_sql(conn, &sql).await;
        uow.end_op();
        begun.map_err(crate::error::store_error)?;
        Ok(uow)
    }

    /// [`Store::begin_with_caller`]: the unit's opening batch and the two reads go out
    /// together (pipelined on the connection) and the answers come back in one round trip.
    /// The server still runs them in order, the reads inside the new transaction and under its
    /// zone binding; a read that fails makes the unit fail, and dropping it rolls back.
    async fn begin_reading_caller(
        &self,
        zone: &ZoneId,
        application: &ApplicationId,
        record: Option<&str>,
    ) -> Result<(PgUnitOfWork, CallerRows), StoreError> {
        let sql = self.opening(&ZoneScope::Zone(zone.clone()), true, false)?;
        let conn = self.acquire().await?;
        let mut uow = PgUnitOfWork::new(conn);
        let (begun, app, rec) = {
            let shared: &AsyncPgConnection = uow.begin_op()?;
            let begin = async {
                let mut conn = shared;
                conn.batch_execute(&sql).await
            };
            let app = application_row(shared, zone, application);
            let rec = async {
                match record {
                    Some(id) => authority_record_row(shared, zone, id).await,
                    None => Ok(None),
                }
            };
            // `biased`: polled in this order, so the BEGIN batch is queued on the connection
            // before either read.
            tokio::join!(biased; begin, app, rec)
        };
        uow.end_op();
        begun.map_err(crate::error::store_error)?;
        // The batch opened a transaction: record it (`note_depth`).
        let conn = uow.begin_op()?;
        let noted = note_depth(conn, TransactionDepthChange::IncreaseDepth);
        uow.end_op();
        noted?;
        let application = app
            .map_err(crate::error::store_error)?
            .map(Application::try_from)
            .transpose()?;
        let record = rec
            .map_err(crate::error::store_error)?
            .map(AuthorityRecord::try_from)
            .transpose()?;
        Ok((
            uow,
            CallerRows {
                application,
                record,
            },
        ))
    }
}

/// The batch that opens a unit of work: BEGIN and the transaction-local settings.
fn begin_sql(scope: &ZoneScope, as_app_role: bool, relaxed: bool) -> Result<String, StoreError> {
    let zone = match scope {
        ZoneScope::All => "*",
        ZoneScope::Zone(zone) => zone.as_str(),
    };
    // BEGIN and the RLS binding travel as one simple-query batch: one round trip instead
    // of two on every request. The zone is spliced in as a literal, which is safe only
    // because a `ZoneId` holds nothing but `[A-Za-z0-9_.:-]`; re-check it here rather than
    // trust that invariant at a distance.
    if zone != "*" && !caracal_core::ids::is_path_id(zone) {
        return Err(StoreError::Corrupt(
            "zone id outside the path-id alphabet".into(),
        ));
    }
    let role = if as_app_role {
        format!("set_config('role', '{APP_ROLE}', true), ")
    } else {
        String::new()
    };
    let durability = if relaxed {
        ", set_config('synchronous_commit', 'off', true)"
    } else {
        ""
    };
    Ok(format!(
        "BEGIN; SELECT {role}set_config('caracal.zone_id', '{zone}', true){durability}"
    ))
}

#[async_trait]
impl Store for PgStore {
    /// Opens a transaction as `caracal_app` bound to `scope` by row-level security
    /// (`spec/api.md §5`): a zone-scoped unit of work cannot read or write another zone's rows
    /// even if a query forgets its zone filter.
    async fn begin(&self, scope: &ZoneScope) -> Result<Box<dyn UnitOfWork>, StoreError> {
        Ok(Box::new(self.begin_tx(scope, true).await?))
    }

    /// [`Store::begin`] with `synchronous_commit = off` for this transaction only: the commit
    /// answers once its WAL is written, without waiting for the flush (the WAL writer flushes
    /// within `wal_writer_delay`). Visibility is unchanged; only a server crash can lose it.
    async fn begin_relaxed(&self, scope: &ZoneScope) -> Result<Box<dyn UnitOfWork>, StoreError> {
        Ok(Box::new(self.begin_tx_with(scope, true, true).await?))
    }

    /// Shares one pipelined transaction among concurrent mints (`minted.rs`).
    async fn insert_minted_record(&self, record: &AuthorityRecord) -> Result<(), StoreError> {
        self.insert_minted(record).await
    }

    async fn begin_with_caller(
        &self,
        zone: &ZoneId,
        application: &ApplicationId,
        record: Option<&str>,
    ) -> Result<(Box<dyn UnitOfWork>, CallerRows), StoreError> {
        let (uow, rows) = self.begin_reading_caller(zone, application, record).await?;
        Ok((Box::new(uow), rows))
    }

    /// deadpool's status: connections handed out are the pool's size less the idle ones.
    fn pool_usage(&self) -> Option<PoolUsage> {
        let status = self.pool.status();
        Some(PoolUsage {
            max: status.max_size as u64,
            acquired: status.size.saturating_sub(status.available) as u64,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.acquire().await?;
        diesel::sql_query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(crate::error::store_error)
    }
}

/// `UnitLocks::lock`'s statement on a shared connection. Built with the query builder rather
/// than raw SQL so that Diesel keeps it prepared: one round trip per lock instead of a parse
/// and an execute.
pub(crate) async fn lock_on(mut conn: &AsyncPgConnection, name: &str) -> QueryResult<()> {
    diesel::select(pg_advisory_xact_lock(hashtext(name.to_owned())))
        .execute(&mut conn)
        .await
        .map(drop)
}

/// `UnitLocks::lock_both`'s statement: PostgreSQL evaluates a plain `SELECT`'s target list
/// left to right, so `first` is held before `second` is requested.
pub(crate) async fn lock_both_on(
    mut conn: &AsyncPgConnection,
    first: &str,
    second: &str,
) -> QueryResult<()> {
    diesel::select((
        pg_advisory_xact_lock(hashtext(first.to_owned())),
        pg_advisory_xact_lock(hashtext(second.to_owned())),
    ))
    .execute(&mut conn)
    .await
    .map(drop)
}

#[async_trait]
impl UnitLocks for PgUnitOfWork {
    /// A transaction-scoped advisory lock: released by commit or rollback, never leaked to the
    /// connection's next borrower.
    /// Deferred in an unguarded unit: it travels with the next statement, which the server runs
    /// only once the lock is held (`unit_of_work::Deferred`).
    async fn lock(&mut self, name: &str) -> Result<(), StoreError> {
        if self.defers() {
            return self.defer(Deferred::Lock(name.to_owned()));
        }
        op!(self, |conn| lock_on(conn, name))
    }

    /// Both locks in one prepared statement. PostgreSQL evaluates a plain `SELECT`'s target
    /// list left to right, so `first` is held before `second` is requested, as the port
    /// requires.
    async fn lock_both(&mut self, first: &str, second: &str) -> Result<(), StoreError> {
        if self.defers() {
            return self.defer(Deferred::LockBoth(first.to_owned(), second.to_owned()));
        }
        op!(self, |conn| lock_both_on(conn, first, second))
    }

    /// `pg_try_advisory_xact_lock`: never waits; the lock, when taken, is transaction-scoped
    /// like [`UnitLocks::lock`]'s and shares its key space (`hashtext(name)`), so a `try_lock`
    /// and a `lock` of the same name exclude each other.
    async fn try_lock(&mut self, name: &str) -> Result<bool, StoreError> {
        let row: TryLocked = op!(self, |conn| crate::prepared::keep_prepared(
            diesel::sql_query("SELECT pg_try_advisory_xact_lock(hashtext($1)) AS locked")
                .bind::<diesel::sql_types::Text, _>(name)
        )
        .get_result(conn))?;
        Ok(row.locked)
    }
}

/// Result row of `pg_try_advisory_xact_lock`.
#[derive(diesel::QueryableByName)]
struct TryLocked {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    locked: bool,
}

#[async_trait]
impl UnitOfWork for PgUnitOfWork {
    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        self.finish().await
    }

    fn abandon_on_write_error(&mut self) {
        self.unguarded_writes = true;
    }
}
