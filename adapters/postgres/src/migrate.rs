//! Schema migrations, embedded in the binary and run without libpq: diesel's migration harness
//! drives an `AsyncConnectionWrapper` around the same tokio-postgres connection the store uses.

use caracal_core::StoreError;
use diesel::Connection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::AsyncPgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

/// Every migration under `migrations/`, compiled in.
const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Advisory-lock key that serialises migration runs against one database, so replicas starting
/// together do not apply the same migration twice. (Advisory locks are per database.)
const MIGRATION_LOCK_KEY: i64 = 0x6361_7261_6361_6c00; // "caracal\0"

/// Applies every pending migration to `database_url` and returns the versions it applied, oldest
/// first (empty when the schema was already current).
///
/// The wrapper blocks on the Tokio runtime, so it runs on a blocking thread; call this from
/// inside a Tokio runtime.
pub async fn migrate(database_url: &str) -> Result<Vec<String>, StoreError> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || run_pending(&url))
        .await
        .map_err(|err| StoreError::Unavailable(format!("migration task failed: {err}")))?
}

fn run_pending(url: &str) -> Result<Vec<String>, StoreError> {
    use diesel::RunQueryDsl;

    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(url)
        .map_err(|err| StoreError::Unavailable(format!("cannot connect to migrate: {err}")))?;
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(&mut conn)
        .map_err(|err| StoreError::Unavailable(format!("cannot take the migration lock: {err}")))?;
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|versions| versions.iter().map(ToString::to_string).collect())
        .map_err(|err| StoreError::Unavailable(format!("migration failed: {err}")));
    // The session lock also ends with the connection; unlocking explicitly is a courtesy.
    let _ = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<diesel::sql_types::BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(&mut conn);
    applied
}
