//! Keeping statements prepared that Diesel would prepare afresh every time.
//!
//! Diesel caches a prepared statement per connection only when the query says it is safe to.
//! Upserts (`ON CONFLICT … DO UPDATE`), `UPDATE … SET`, inserts with a `DEFAULT` column and
//! `sql_query` all say it is not, because their SQL text can vary between executions while
//! their Rust type stays the same, and the cache can be keyed by that type. diesel-async then
//! prepares a new named statement for each execution: a `Parse` round trip before every
//! `Bind`/`Execute`, two round trips instead of one. On the Coordinator's hot path that was
//! three extra round trips per Session create + close.
//!
//! [`keep_prepared`] wraps such a query so that it is cached by its SQL text and bind types
//! instead of its type: a query whose text varies gets one cache entry per text. Use it only
//! where the number of distinct texts is small and fixed (a row type's `NULL`/`DEFAULT`
//! patterns, a constant `sql_query`); never for text that grows with the data, such as
//! multi-row `VALUES` lists, whose entries would pile up for the life of the connection.

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::QueryResult;

/// A query cached by its SQL text (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeepPrepared<Q>(Q);

/// Wraps `query` so that its prepared statement is kept per SQL text.
pub(crate) fn keep_prepared<Q>(query: Q) -> KeepPrepared<Q> {
    KeepPrepared(query)
}

impl<Q> QueryId for KeepPrepared<Q> {
    type QueryId = ();
    // No static id: the statement cache falls back to keying by SQL text and bind types.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for KeepPrepared<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

impl<Q: Query> Query for KeepPrepared<Q> {
    type SqlType = Q::SqlType;
}

#[cfg(test)]
mod tests {
    use diesel::sql_types::{Integer, Text};
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

    use super::keep_prepared;

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    const UPSERT: &str = "INSERT INTO kept (id, v) VALUES ($1, $2) \
                          ON CONFLICT (id) DO UPDATE SET v = excluded.v";

    /// A connection to the test server (`DATABASE_URL`, else the local default), or `None`
    /// after saying why when it is unreachable outside CI; in CI that fails the test.
    async fn connect() -> Option<AsyncPgConnection> {
        let url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        match AsyncPgConnection::establish(&url).await {
            Ok(conn) => Some(conn),
            Err(err) if std::env::var_os("CI").is_none() => {
                println!("skipping: Postgres unreachable at {url}: {err}");
                None
            }
            Err(err) => panic!("Postgres unreachable at {url} in CI: {err}"),
        }
    }

    async fn prepared_upserts(conn: &mut AsyncPgConnection) -> i64 {
        let row: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE 'INSERT INTO kept%'",
        )
        .get_result(conn)
        .await
        .expect("pg_prepared_statements");
        row.n
    }

    /// A wrapped upsert is prepared once per connection and reused; the same statement
    /// unwrapped is prepared afresh and closed each time (nothing stays prepared).
    #[tokio::test]
    async fn a_wrapped_statement_stays_prepared() {
        let Some(mut conn) = connect().await else {
            return;
        };
        // A temporary table: private to this session, gone when it ends.
        diesel::sql_query("CREATE TEMP TABLE kept (id integer PRIMARY KEY, v text)")
            .execute(&mut conn)
            .await
            .expect("temp table");
        for i in 0..3 {
            diesel::sql_query(UPSERT)
                .bind::<Integer, _>(i % 2)
                .bind::<Text, _>("plain")
                .execute(&mut conn)
                .await
                .expect("plain upsert");
        }
        assert_eq!(prepared_upserts(&mut conn).await, 0);
        for i in 0..3 {
            keep_prepared(
                diesel::sql_query(UPSERT)
                    .bind::<Integer, _>(i % 2)
                    .bind::<Text, _>("kept"),
            )
            .execute(&mut conn)
            .await
            .expect("kept upsert");
        }
        assert_eq!(prepared_upserts(&mut conn).await, 1);
    }

    #[derive(diesel::QueryableByName)]
    struct Rows {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    /// What pipelining on one connection relies on (`PgStore::begin_with_caller` and the
    /// deferred writes of a unit of work): futures polled in the order they were made send
    /// their statements in that order, even when an earlier statement still has to be
    /// prepared and a later one is already prepared. diesel-async holds the connection's
    /// statement cache lock while it prepares, and a fair lock hands it on in order.
    #[tokio::test]
    async fn pipelined_statements_run_in_the_order_they_were_made() {
        let Some(mut conn) = connect().await else {
            return;
        };
        diesel::sql_query("CREATE TEMP TABLE piped (id integer)")
            .execute(&mut conn)
            .await
            .expect("temp table");
        let count = || keep_prepared(diesel::sql_query("SELECT count(*) AS n FROM piped"));
        // The count is prepared and cached before the pipelined flights.
        let warm: Rows = count().get_result(&mut conn).await.expect("count");
        assert_eq!(warm.n, 0);
        for (round, fresh_text) in [
            "INSERT INTO piped VALUES ($1)",
            "INSERT INTO piped (id) VALUES ($1)",
        ]
        .into_iter()
        .enumerate()
        {
            let shared: &AsyncPgConnection = &conn;
            let (mut c1, mut c2, mut c3) = (shared, shared, shared);
            let round = i64::try_from(round).expect("small");
            // Round 0: a statement prepared afresh (never cached); round 1: one prepared and
            // cached on first use. Either way it must run before the cached count.
            let insert = async move {
                if round == 0 {
                    diesel::sql_query(fresh_text)
                        .bind::<Integer, _>(1)
                        .execute(&mut c1)
                        .await
                } else {
                    keep_prepared(diesel::sql_query(fresh_text).bind::<Integer, _>(2))
                        .execute(&mut c1)
                        .await
                }
            };
            let counted = count().get_result::<Rows>(&mut c2);
            let again =
                keep_prepared(diesel::sql_query(fresh_text).bind::<Integer, _>(3)).execute(&mut c3);
            let (inserted, counted, again) = tokio::join!(biased; insert, counted, again);
            assert_eq!(inserted.expect("insert"), 1);
            again.expect("second insert");
            assert_eq!(
                counted.expect("count").n,
                2 * round + 1,
                "the count ran after the insert made before it, not before"
            );
        }
    }
}
