//! The Postgres unit of work: one pooled connection holding one open transaction, bound to a
//! zone by row-level security (`spec/api.md §5`).
//!
//! Rollback on drop. A `PgUnitOfWork` dropped without `commit` must never hand a connection with
//! an open transaction back to the pool: the next borrower would run inside it, and the locks it
//! holds (row locks, the admin-audit advisory lock) would stay taken while the connection idles.
//! diesel-async's pool only notices an open transaction when the connection is next checked out,
//! which is too late for the locks. So `Drop`:
//!
//! * if an operation was cut off mid-flight (its future dropped), the connection's protocol
//!   state is unknown: the connection is detached from the pool and closed; Postgres aborts the
//!   transaction of a session that ends;
//! * otherwise, inside a Tokio runtime, a task rolls back and then returns the connection to the
//!   pool (or closes it if the rollback fails or leaves a transaction open);
//! * outside any runtime, the connection is detached and closed.
//!
//! Until that task has run, the connection is out of the pool, so no one can borrow it half-way.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use caracal_core::StoreError;
use diesel::connection::{TransactionDepthChange, TransactionManagerStatus};
use diesel::QueryResult;
use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, TransactionManager};

use crate::repos::agent_graph::{AgentSessionRow, DelegationEdgeRow};
use crate::repos::outbox::OutboxRow;

/// A pooled connection.
pub(crate) type Pooled = Object<AsyncPgConnection>;

/// One transaction over every repository (the `UnitOfWork` port), on one pooled connection.
///
/// Obtained from [`crate::PgStore`] (`Store::begin`). Every write commits together on `commit`;
/// dropping it without `commit` rolls everything back (see the module documentation for how
/// that is guaranteed).
pub struct PgUnitOfWork {
    conn: Option<Pooled>,
    /// Set while a statement is in flight; still set at drop time means the future running it
    /// was cancelled and the connection state is unknown.
    in_flight: bool,
    /// Writes run without a savepoint (`UnitOfWork::abandon_on_write_error`).
    pub(crate) unguarded_writes: bool,
    /// An unguarded write failed: the transaction is aborted; nothing may run or commit.
    pub(crate) poisoned: bool,
    /// Writes and locks of an unguarded unit held back to travel with its next statement.
    pending: Vec<Deferred>,
}

/// A write or lock whose only answer is success or failure, held back by an unguarded unit
/// (`UnitOfWork::abandon_on_write_error`) and sent with the unit's next statement or its
/// `COMMIT`, pipelined on the connection: the server runs them in the order they were made,
/// before that statement, so every later read sees them and every later statement runs under
/// the locks; only the client stops waiting for each answer on its own. A deferred write that
/// fails poisons the unit, and its error is what that next operation (or the commit) returns.
pub(crate) enum Deferred {
    /// `UnitLocks::lock`.
    Lock(String),
    /// `UnitLocks::lock_both`.
    LockBoth(String, String),
    /// `AgentGraphRepo::save_agent_session`.
    Session(AgentSessionRow),
    /// `AgentGraphRepo::save_delegation_edge`.
    Edge(DelegationEdgeRow),
    /// `OutboxRepo::enqueue_outbox`.
    Outbox(OutboxRow),
}

type Sent<'a> = Pin<Box<dyn Future<Output = QueryResult<()>> + Send + 'a>>;

impl Deferred {
    /// The statement's future on a shared connection; it sends the statement when first
    /// polled (after preparing it, if the connection has not yet).
    fn send<'a>(&'a self, conn: &'a AsyncPgConnection) -> Sent<'a> {
        match self {
            Deferred::Lock(name) => Box::pin(crate::store::lock_on(conn, name)),
            Deferred::LockBoth(first, second) => {
                Box::pin(crate::store::lock_both_on(conn, first, second))
            }
            Deferred::Session(row) => {
                Box::pin(crate::repos::agent_graph::save_session_on(conn, row))
            }
            Deferred::Edge(row) => Box::pin(crate::repos::agent_graph::save_edge_on(conn, row)),
            Deferred::Outbox(row) => Box::pin(crate::repos::outbox::enqueue_on(conn, row)),
        }
    }
}

/// Sends every deferred statement in order and waits for all of their answers; the error of
/// the first one that failed, if any (later ones then fail only because the transaction is
/// aborted).
pub(crate) async fn run_deferred(
    conn: &AsyncPgConnection,
    pending: &[Deferred],
) -> QueryResult<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let mut flights: Vec<Option<Sent<'_>>> = pending.iter().map(|d| Some(d.send(conn))).collect();
    let mut first_error: Option<(usize, diesel::result::Error)> = None;
    std::future::poll_fn(|cx| {
        let mut done = true;
        // Polled in order every time: the first poll sends them in order.
        for (i, slot) in flights.iter_mut().enumerate() {
            let Some(flight) = slot else { continue };
            match flight.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    if let Err(err) = result {
                        if first_error.as_ref().is_none_or(|(at, _)| i < *at) {
                            first_error = Some((i, err));
                        }
                    }
                    *slot = None;
                }
                Poll::Pending => done = false,
            }
        }
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    match first_error {
        Some((_, err)) => Err(err),
        None => Ok(()),
    }
}

impl PgUnitOfWork {
    /// Wraps a connection on which the caller is about to open a transaction. From here on,
    /// dropping the value cleans the connection up.
    pub(crate) fn new(conn: Pooled) -> Self {
        Self {
            conn: Some(conn),
            in_flight: false,
            unguarded_writes: false,
            poisoned: false,
            pending: Vec::new(),
        }
    }

    /// Holds `write` back until the unit's next statement (see [`Deferred`]). Only unguarded
    /// units defer; the caller checks [`Self::defers`] first.
    pub(crate) fn defer(&mut self, write: Deferred) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::Unavailable(
                "unit of work abandoned after a refused write".into(),
            ));
        }
        if self.conn.is_none() {
            return Err(StoreError::Unavailable(
                "unit of work already finished".into(),
            ));
        }
        self.pending.push(write);
        Ok(())
    }

    /// Whether writes and locks of this unit are deferred (it is unguarded).
    pub(crate) fn defers(&self) -> bool {
        self.unguarded_writes
    }

    /// The deferred writes, handed to the statement about to run (the `op!` macros).
    pub(crate) fn take_pending(&mut self) -> Vec<Deferred> {
        std::mem::take(&mut self.pending)
    }

    /// The outcome of a statement that ran after `flushed` (the deferred writes it carried):
    /// a failed deferred write poisons the unit and is the error reported.
    pub(crate) fn settle<T>(
        &mut self,
        flushed: QueryResult<()>,
        result: QueryResult<T>,
    ) -> Result<T, StoreError> {
        if let Err(err) = flushed {
            self.poisoned = true;
            return Err(crate::error::store_error(err));
        }
        result.map_err(crate::error::store_error)
    }

    /// The connection, marking an operation as started. Pair with [`Self::end_op`] after the
    /// operation's future completed (the `op!` macros do).
    pub(crate) fn begin_op(&mut self) -> Result<&mut AsyncPgConnection, StoreError> {
        if !self.pending.is_empty() {
            // Every statement must carry the deferred writes ahead of it (the `op!` macros
            // take them first); running one without would reorder the unit's statements.
            return Err(StoreError::Unavailable(
                "deferred writes were not sent before a statement".into(),
            ));
        }
        if self.poisoned {
            return Err(StoreError::Unavailable(
                "unit of work abandoned after a refused write".into(),
            ));
        }
        self.in_flight = true;
        match self.conn.as_mut() {
            Some(conn) => Ok(&mut **conn),
            None => Err(StoreError::Unavailable(
                "unit of work already finished".into(),
            )),
        }
    }

    /// Marks the current operation as completed.
    pub(crate) fn end_op(&mut self) {
        self.in_flight = false;
    }

    /// Commits the transaction. The connection goes back to the pool only after a successful
    /// commit; after a failed (or cancelled) commit it is closed, whatever state it is in.
    pub(crate) async fn finish(&mut self) -> Result<(), StoreError> {
        let conn = self
            .conn
            .take()
            .ok_or_else(|| StoreError::Unavailable("unit of work already finished".into()))?;
        if self.in_flight {
            discard(conn);
            return Err(StoreError::Unavailable(
                "unit of work was interrupted mid-operation; rolled back".into(),
            ));
        }
        if self.poisoned {
            // Postgres answers COMMIT on an aborted transaction with a rollback, not an
            // error; say so instead of reporting success.
            self.conn = Some(conn);
            return Err(StoreError::Unavailable(
                "unit of work abandoned after a refused write; rolled back".into(),
            ));
        }
        let mut guard = CloseOnDrop(Some(conn));
        let pending = std::mem::take(&mut self.pending);
        if !pending.is_empty() {
            return commit_with(guard, &pending).await;
        }
        let committed = match guard.0.as_mut() {
            Some(conn) => AnsiTransactionManager::commit_transaction(&mut **conn).await,
            None => return Err(StoreError::Unavailable("connection lost".into())),
        };
        match committed {
            Ok(()) => {
                // Dropping the object returns the (now idle) connection to the pool.
                drop(guard.0.take());
                Ok(())
            }
            Err(err) => Err(crate::error::store_error(err)),
        }
    }
}

/// Sends the deferred writes and `COMMIT` together. Postgres ends the transaction either way:
/// it commits when every write succeeded, and rolls back (answering `COMMIT` with a rollback,
/// not an error) when one failed, whose error is then returned. The connection goes back to
/// the pool idle, or is closed when the `COMMIT` itself failed.
async fn commit_with(mut guard: CloseOnDrop, pending: &[Deferred]) -> Result<(), StoreError> {
    let Some(conn) = guard.0.as_mut() else {
        return Err(StoreError::Unavailable("connection lost".into()));
    };
    let (flushed, committed) = {
        let shared: &AsyncPgConnection = conn;
        let mut held = shared;
        // COMMIT as a (kept) prepared statement, not a simple query: statements queue for the
        // connection's statement cache in the order they were made, and a deferred write still
        // being prepared holds it, so the COMMIT cannot overtake the write. A simple query
        // bypasses that queue and could (the write would then run after the transaction,
        // outside it and its zone binding).
        let commit = crate::prepared::keep_prepared(diesel::sql_query("COMMIT"));
        tokio::join!(
            biased;
            run_deferred(shared, pending),
            diesel_async::RunQueryDsl::execute(commit, &mut held)
        )
    };
    committed.map_err(crate::error::store_error)?;
    // The transaction is over: record it as `commit_transaction` would.
    note_depth(conn, TransactionDepthChange::DecreaseDepth)?;
    flushed.map_err(crate::error::store_error)?;
    // Back to the pool, idle.
    drop(guard.0.take());
    Ok(())
}

impl Drop for PgUnitOfWork {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.in_flight {
            discard(conn);
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(roll_back_and_release(conn));
            }
            Err(_) => discard(conn),
        }
    }
}

/// Rolls the transaction back and returns the connection to the pool, or closes the connection
/// when that cannot be done cleanly (including when this task is itself cancelled).
async fn roll_back_and_release(conn: Pooled) {
    let mut guard = CloseOnDrop(Some(conn));
    let Some(conn) = guard.0.as_mut() else {
        return;
    };
    if let Err(err) = AnsiTransactionManager::rollback_transaction(&mut **conn).await {
        tracing::warn!(error = %err, "rollback of an abandoned unit of work failed; closing its connection");
        return;
    }
    let idle = matches!(
        AnsiTransactionManager::transaction_manager_status_mut(&mut **conn).transaction_depth(),
        Ok(None)
    );
    if idle {
        // Back to the pool, with no transaction open.
        drop(guard.0.take());
    }
}

/// Records on the connection's transaction manager a `BEGIN` or `COMMIT` that was sent
/// pipelined rather than through it, as `begin_transaction_sql` / `commit_transaction` would, so
/// commit, rollback and the drop guard see the connection's real state.
pub(crate) fn note_depth(
    conn: &mut AsyncPgConnection,
    change: TransactionDepthChange,
) -> Result<(), StoreError> {
    match AnsiTransactionManager::transaction_manager_status_mut(conn) {
        TransactionManagerStatus::Valid(status) => status
            .change_transaction_depth(change)
            .map_err(crate::error::store_error),
        TransactionManagerStatus::InError => Err(StoreError::Unavailable(
            "connection broken while opening or closing a transaction".into(),
        )),
    }
}

/// Closes a connection instead of returning it to the pool.
pub(crate) struct CloseOnDrop(pub(crate) Option<Pooled>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            discard(conn);
        }
    }
}

/// Detaches a connection from the pool and closes it. Ending the session makes Postgres abort
/// any transaction it still had open, releasing its locks at once.
pub(crate) fn discard(conn: Pooled) {
    drop(Object::take(conn));
}

/// Runs one read on the unit of work's connection: `op!(uow, |conn| future)`, or
/// `op!(uow, optional |conn| future)` to read a missing row as `None`. Tracks the
/// operation as in flight so that a cancelled future is noticed at drop time.
///
/// The statement carries the unit's deferred writes ahead of it (pipelined: one round trip for
/// all of them); `$conn` is a `&mut &AsyncPgConnection`, which every Diesel query runs on.
macro_rules! op {
    ($uow:expr, optional |$conn:ident| $body:expr) => {
        $crate::unit_of_work::op!($uow, |$conn| async {
            diesel::OptionalExtension::optional($body.await)
        })
    };
    ($uow:expr, |$conn:ident| $body:expr) => {{
        let pending = $uow.take_pending();
        let shared: &diesel_async::AsyncPgConnection = $uow.begin_op()?;
        let mut held = shared;
        let $conn = &mut held;
        let (flushed, result) = tokio::join!(
            biased;
            $crate::unit_of_work::run_deferred(shared, &pending),
            $body
        );
        $uow.end_op();
        $uow.settle(flushed, result)
    }};
}
pub(crate) use op;

/// Runs one write inside a savepoint: `write_op!(uow, |conn| future)`. A write the database
/// refuses (a uniqueness rule, row-level security) is rolled back to the savepoint, so the unit
/// of work stays usable after a `Conflict`, exactly like the in-memory adapter, instead of
/// poisoning the whole transaction. A unit whose caller gave that up
/// (`UnitOfWork::abandon_on_write_error`) runs the write bare and is poisoned by its failure:
/// later operations and the commit fail, and the drop rolls everything back.
macro_rules! write_op {
    ($uow:expr, |$conn:ident| $body:expr) => {{
        if $uow.unguarded_writes {
            // The caller abandons the unit on failure: no savepoint, and a failure poisons it.
            let result = $crate::unit_of_work::op!($uow, |$conn| $body);
            if result.is_err() {
                $uow.poisoned = true;
            }
            result
        } else {
            let $conn = $uow.begin_op()?;
            let result = async {
                <diesel_async::AnsiTransactionManager as diesel_async::TransactionManager<
                    diesel_async::AsyncPgConnection,
                >>::begin_transaction(&mut *$conn)
                .await?;
                match $body.await {
                    Ok(value) => {
                        <diesel_async::AnsiTransactionManager as diesel_async::TransactionManager<
                            diesel_async::AsyncPgConnection,
                        >>::commit_transaction(&mut *$conn)
                        .await?;
                        Ok(value)
                    }
                    Err(err) => {
                        // A failed rollback leaves the transaction aborted: later statements and
                        // the commit fail, and the connection is closed instead of pooled.
                        let _ = <diesel_async::AnsiTransactionManager as diesel_async::TransactionManager<
                            diesel_async::AsyncPgConnection,
                        >>::rollback_transaction(&mut *$conn)
                        .await;
                        Err(err)
                    }
                }
            }
            .await;
            $uow.end_op();
            result.map_err($crate::error::store_error)
        }
    }};
}
pub(crate) use write_op;

/// Adds keyset pagination to a boxed query: rows strictly after `page.after` in
/// `(created_at DESC, id DESC)` order, at most `page.limit` of them (`spec/api.md §1`). The
/// condition is written `created_at <= t AND (created_at < t OR id < i)` so the
/// `(…, created_at DESC, id DESC)` indexes can serve it.
macro_rules! keyset {
    ($query:expr, $page:expr, $created_at:expr, $id:expr) => {{
        let mut query = $query;
        if let Some(after) = &$page.after {
            let at = after.created_at.as_datetime();
            query = query.filter(
                $created_at
                    .le(at)
                    .and($created_at.lt(at).or($id.lt(after.id.clone()))),
            );
        }
        query
            .order(($created_at.desc(), $id.desc()))
            .limit(i64::from($page.limit))
    }};
}
pub(crate) use keyset;

/// One statement in a transaction of its own, the three sent as one pipelined flight:
/// `one_statement_tx!(store, scope, as_app_role, relaxed, |conn| future)`, with `$conn` a
/// `&mut &AsyncPgConnection`. The opening batch (`PgStore::opening`) is a simple query and
/// goes first; the statement and a kept prepared `COMMIT` queue for the connection's statement
/// cache behind it, so the server runs them in order (a statement that fails aborts the
/// transaction, and the `COMMIT` rolls it back). One round trip instead of three. The
/// connection goes back to the pool only after a successful commit; any failure closes it.
macro_rules! one_statement_tx {
    ($store:expr, $scope:expr, $as_app_role:expr, $relaxed:expr, |$conn:ident| $body:expr) => {{
        let begin = $store.opening($scope, $as_app_role, $relaxed)?;
        let mut guard = $crate::unit_of_work::CloseOnDrop(Some($store.acquire().await?));
        let outcome = match guard.0.as_mut() {
            None => Err(caracal_core::StoreError::Unavailable("connection lost".into())),
            Some(conn) => {
                let shared: &diesel_async::AsyncPgConnection = conn;
                let (mut opener, mut held, mut closer) = (shared, shared, shared);
                let $conn = &mut held;
                let (begun, result, committed) = tokio::join!(
                    biased;
                    diesel_async::SimpleAsyncConnection::batch_execute(&mut opener, &begin),
                    $body,
                    diesel_async::RunQueryDsl::execute(
                        $crate::prepared::keep_prepared(diesel::sql_query("COMMIT")),
                        &mut closer
                    )
                );
                match (begun, result, committed) {
                    (Err(e), _, _) | (Ok(_), Err(e), _) | (Ok(_), Ok(_), Err(e)) => {
                        Err($crate::error::store_error(e))
                    }
                    (Ok(()), Ok(value), Ok(_)) => Ok(value),
                }
            }
        };
        if outcome.is_ok() {
            // Committed and idle: back to the pool.
            drop(guard.0.take());
        }
        outcome
    }};
}
pub(crate) use one_statement_tx;
