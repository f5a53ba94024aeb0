//! One multiplexed connection shared by the short commands on the request path (rate-limit
//! counters, single-use keys). A pool checkout costs a `PING` round trip every time (the
//! pool's recycle check); a multiplexed connection pipelines concurrent commands from every
//! task over one socket instead, so each command is exactly one round trip. Blocking reads
//! (`XREADGROUP … BLOCK`) keep using pooled connections: they would stall the shared one.

use std::sync::Arc;

use deadpool_redis::{Connection, Pool};
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

/// A lazily opened connection, replaced after a failure.
#[derive(Clone)]
pub struct SharedConnection {
    pool: Pool,
    current: Arc<Mutex<Option<MultiplexedConnection>>>,
}

impl SharedConnection {
    /// Shares connections taken out of `pool` (so they honour its URL and timeouts).
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            current: Arc::new(Mutex::new(None)),
        }
    }

    /// The shared connection, opening one if there is none.
    pub async fn get(&self) -> Result<MultiplexedConnection, String> {
        let mut slot = self.current.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let pooled = self.pool.get().await.map_err(|e| e.to_string())?;
        // Taken out of the pool for good: the pool will open another when it needs one.
        let conn = Connection::take(pooled);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Forgets the current connection after a command on it failed, so the next caller opens
    /// a fresh one instead of reusing a broken socket.
    pub async fn reset(&self) {
        *self.current.lock().await = None;
    }

    /// Runs `f` on the shared connection; an error resets it.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.get().await?;
        match f(conn).await {
            Ok(value) => Ok(value),
            Err(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    self.reset().await;
                }
                Err(e.to_string())
            }
        }
    }
}
