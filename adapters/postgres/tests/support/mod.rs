//! A throwaway database per test: created through the server's `postgres` database, migrated,
//! and dropped when the guard goes out of scope, including when the test panics.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// The server the tests use: `DATABASE_URL`, else the local trust-auth default.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced (query parameters kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let authority_start = head.find("://").map_or(0, |i| i + 3);
    let base = match head[authority_start..].find('/') {
        Some(slash) => &head[..authority_start + slash],
        None => head,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

fn random_hex() -> String {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    format!("{:016x}", hasher.finish())
}

async fn admin_connection(admin_url: &str) -> Result<AsyncPgConnection, String> {
    match tokio::time::timeout(
        Duration::from_secs(5),
        AsyncPgConnection::establish(admin_url),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("connection timed out after 5s".to_owned()),
    }
}

/// One test's database. Dropping it drops the database (forcibly: pooled connections of the
/// store under test may still be open).
pub struct TestDb {
    /// URL of the test database.
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDb {
    /// Creates and migrates a fresh database, or returns `None` (after saying so) when the
    /// server is unreachable outside CI. In CI (`CI` set) an unreachable server fails the test:
    /// CI must run these.
    pub async fn create() -> Option<TestDb> {
        let admin_url = with_database(&server_url(), "postgres");
        let mut admin = match admin_connection(&admin_url).await {
            Ok(conn) => conn,
            Err(err) => {
                if std::env::var_os("CI").is_some() {
                    panic!("Postgres unreachable at {admin_url} in CI: {err}");
                }
                println!("skipping: Postgres unreachable at {admin_url}: {err}");
                return None;
            }
        };
        let name = format!("caracal_t_{}", random_hex());
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|err| panic!("CREATE DATABASE {name}: {err}"));
        let db = TestDb {
            url: with_database(&server_url(), &name),
            admin_url,
            name,
        };
        let applied = caracal_postgres::migrate(&db.url)
            .await
            .unwrap_or_else(|err| panic!("migrating {}: {err}", db.name));
        assert!(
            !applied.is_empty(),
            "a fresh database gets the baseline migration"
        );
        Some(db)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop may run inside the test's runtime (which cannot be blocked on) or while
        // unwinding: do the work on a separate thread with its own small runtime.
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                match admin_connection(&admin_url).await {
                    Ok(mut admin) => {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        if let Err(err) = diesel::sql_query(sql).execute(&mut admin).await {
                            eprintln!("could not drop test database {name}: {err}");
                        }
                    }
                    Err(err) => eprintln!("could not drop test database {name}: {err}"),
                }
            });
        });
        let _ = dropper.join();
    }
}

#[test]
fn database_names_are_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://u:p@h:5432/app?sslmode=disable", "x"),
        "postgres://u:p@h:5432/x?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    assert_eq!(with_database("postgres://h/", "x"), "postgres://h/x");
}
