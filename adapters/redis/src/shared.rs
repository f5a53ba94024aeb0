//! Multiplexed connections shared by the short commands on the request path (rate-limit
//! counters, single-use keys, authority versions). A pool checkout costs a `PING` round trip
//! every time (the pool's recycle check); a multiplexed connection pipelines concurrent
//! commands from every task over one socket instead, so each command is exactly one round
//! trip. Blocking reads (`XREADGROUP … BLOCK`) keep using pooled connections: they would stall
//! a shared one.
//!
//! One connection per thread that sends commands. A multiplexed connection's I/O task runs on
//! the runtime that opened it, and every HTTP worker is a runtime of its own: with one
//! connection per process, each command from another worker woke that runtime's thread and
//! was woken back, two thread hops per command (the Postgres pools are per worker for the
//! same reason).
//!
//! The rate limiter, the single-use keys and the authority versions can share one
//! `SharedConnection` (each adapter's `on`). Commands that one task sends concurrently (the
//! STS joins its independent checks) then queue on the same socket before its I/O task runs:
//! they leave in one write, Redis answers them in one write, and they cost one round trip
//! together instead of one each.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::ThreadId;

use deadpool_redis::Pool;
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

/// Threads that get a connection of their own; any further thread shares one. Far above the
/// threads of a process (its HTTP workers and runtime threads); a bound all the same.
const MAX_THREAD_CONNECTIONS: usize = 64;

/// One lazily opened connection, replaced after a failure.
type Slot = Arc<Mutex<Option<MultiplexedConnection>>>;

/// Lazily opened connections, one per calling thread.
#[derive(Clone)]
pub struct SharedConnection {
    pool: Pool,
    slots: Arc<std::sync::Mutex<HashMap<Option<ThreadId>, Slot>>>,
}

impl SharedConnection {
    /// Shares connections opened with `pool`'s settings (its URL and timeouts), outside its
    /// limit.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            slots: Arc::new(std::sync::Mutex::new(HashMap::new())),
        }
    }

    /// The calling thread's slot (`None` keys the slot the threads past the bound share).
    fn slot(&self) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut key = Some(std::thread::current().id());
        if !slots.contains_key(&key) && slots.len() >= MAX_THREAD_CONNECTIONS {
            key = None;
        }
        Arc::clone(slots.entry(key).or_default())
    }

    /// The slot's connection, opening one if there is none.
    async fn open(&self, slot: &Slot) -> Result<MultiplexedConnection, String> {
        let mut current = slot.lock().await;
        if let Some(conn) = current.as_ref() {
            return Ok(conn.clone());
        }
        // Opened by the pool's manager (so with its URL and timeouts) but outside the pool: a
        // pool whose every connection is parked in a blocking `XREADGROUP` (the stream
        // consumers) would otherwise make the first request wait for one of them to return.
        let conn = deadpool::managed::Manager::create(self.pool.manager())
            .await
            .map_err(|e| e.to_string())?;
        *current = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `f` on the calling thread's connection. An I/O error, a dropped connection or a
    /// timeout forgets that connection, so the next command opens a fresh one instead of
    /// reusing a broken socket.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let slot = self.slot();
        let conn = self.open(&slot).await?;
        match f(conn).await {
            Ok(value) => Ok(value),
            Err(e) => {
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    *slot.lock().await = None;
                }
                Err(e.to_string())
            }
        }
    }
}
