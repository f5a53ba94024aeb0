//! [`EventBus`] over Redis Streams: `XADD … MAXLEN ~ 100000` (audit evidence untrimmed),
//! consumer groups created from the start of the stream, `XREADGROUP … >` and `… <id>`,
//! `XAUTOCLAIM`, `XPENDING`, `XLEN`, `XRANGE`, `XDEL` and `XACK`.
//!
//! Stream and group names go to Redis exactly as given: they are a wire contract shared with the
//! upstream services (`caracal.audit.events`, `audit-ingestor`, …), so there is no prefixing.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use caracal_core::ports::events::{trims_on_publish, BusError, Delivery, EventBus, PendingEntry};
use deadpool_redis::{Connection, Manager, Pool, Runtime};
use redis::{AsyncConnectionConfig, Cmd, Value};

/// `MAXLEN ~` on every publish, as the upstream outbox dispatchers (api.md §4,
/// `OUTBOX_STREAM_MAXLEN`): streams stay bounded even if a consumer group stalls. Audit
/// evidence is never trimmed ([`trims_on_publish`]).
pub const STREAM_MAX_LEN: u64 = 100_000;

/// The arguments of one `XADD` after the command name: the stream, `MAXLEN ~ 100000` unless
/// the stream holds audit evidence, an auto id, then the fields in order.
fn xadd_args<'a>(cmd: &'a mut Cmd, stream: &str, fields: &[(String, String)]) -> &'a mut Cmd {
    cmd.arg(stream);
    if trims_on_publish(stream) {
        cmd.arg("MAXLEN").arg("~").arg(STREAM_MAX_LEN);
    }
    cmd.arg("*");
    for (name, value) in fields {
        cmd.arg(name).arg(value);
    }
    cmd
}

/// How long opening a connection may take before the bus counts as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a non-blocking command may wait for its reply. Blocking reads get this on top of
/// their `block_ms`.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a caller waits for a free pooled connection, so an exhausted pool surfaces as an
/// error (the audit path then spools) instead of hanging a request.
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The event bus on Redis Streams, over a deadpool-redis pool.
///
/// Cheap to clone (the pool is reference-counted). Blocking reads hold one pooled connection for
/// up to `block_ms`, since Redis answers nothing else on a connection while it blocks; size the
/// pool for the number of concurrent consumers plus the producers.
#[derive(Clone)]
pub struct RedisBus {
    pool: Pool,
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password: show the pool's shape only.
        f.debug_struct("RedisBus")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl RedisBus {
    /// Builds a pool for `url` (`redis://[:password@]host:port[/db]`, as `REDIS_URL`).
    ///
    /// Connections open lazily: a bad URL fails here, an unreachable server only at the first
    /// command (call [`EventBus::ping`] to check). Commands time out after a few seconds rather
    /// than hang a request on a stalled Redis.
    pub fn connect(url: &str) -> Result<RedisBus, BusError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        // The error text never includes the URL, which may hold the password.
        let manager = Manager::new_with_config(url, config)
            .map_err(|e| unavailable("invalid Redis URL", e))?;
        let pool = Pool::builder(manager)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(RESPONSE_TIMEOUT))
            .build()
            .map_err(|e| unavailable("building the Redis pool", e))?;
        Ok(RedisBus::from_pool(pool))
    }

    /// Wraps an existing pool, e.g. one shared with the other Redis-backed ports. Its
    /// connections' own timeouts apply, except that blocking reads extend theirs by `block_ms`.
    pub fn from_pool(pool: Pool) -> RedisBus {
        RedisBus { pool }
    }

    /// The underlying pool, for the other Redis-backed ports (replay guard, rate limits,
    /// revocation) so one process keeps one set of connections.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn connection(&self) -> Result<Connection, BusError> {
        self.pool
            .get()
            .await
            .map_err(|e| unavailable("no Redis connection", e))
    }
}

fn unavailable(context: &str, error: impl fmt::Display) -> BusError {
    BusError::Unavailable(format!("{context}: {error}"))
}

/// Returns a pooled connection to the pool only once a blocking command on it has completed.
///
/// Redis answers nothing else on a connection until its blocking command ends, so a connection
/// whose `XREADGROUP … BLOCK` failed or was cancelled (the caller dropped the future) must not be
/// handed to the next caller: it is taken out of the pool and closed instead.
struct BlockingLease {
    conn: Option<Connection>,
    completed: bool,
}

impl Drop for BlockingLease {
    fn drop(&mut self) {
        if !self.completed {
            if let Some(conn) = self.conn.take() {
                drop(Connection::take(conn));
            }
        }
    }
}

#[async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, stream: &str, fields: &[(String, String)]) -> Result<String, BusError> {
        if fields.is_empty() {
            return Err(BusError::Unavailable(
                "an entry needs at least one field (as XADD)".into(),
            ));
        }
        let mut cmd = redis::cmd("XADD");
        xadd_args(&mut cmd, stream, fields);
        let mut conn = self.connection().await?;
        let reply: Value = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("XADD failed", e))?;
        text(reply).ok_or_else(|| BusError::Unavailable("XADD replied without an entry id".into()))
    }

    /// One `MULTI … EXEC` of `XADD`s: one round trip for the whole batch, and all or none of
    /// it appended.
    async fn publish_batch(
        &self,
        stream: &str,
        entries: &[Vec<(String, String)>],
    ) -> (usize, Option<BusError>) {
        if entries.is_empty() {
            return (0, None);
        }
        if entries.iter().any(Vec::is_empty) {
            return (
                0,
                Some(BusError::Unavailable(
                    "an entry needs at least one field (as XADD)".into(),
                )),
            );
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for fields in entries {
            let mut cmd = redis::cmd("XADD");
            xadd_args(&mut cmd, stream, fields);
            pipe.add_command(cmd);
        }
        let mut conn = match self.connection().await {
            Ok(conn) => conn,
            Err(e) => return (0, Some(e)),
        };
        match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Ok(ids) if ids.len() == entries.len() => (entries.len(), None),
            Ok(ids) => (
                0,
                Some(BusError::Unavailable(format!(
                    "MULTI/EXEC of {} XADDs answered {} replies",
                    entries.len(),
                    ids.len()
                ))),
            ),
            Err(e) => (0, Some(unavailable("XADD batch failed", e))),
        }
    }

    async fn ensure_group(&self, stream: &str, group: &str) -> Result<(), BusError> {
        let mut conn = self.connection().await?;
        let created: Result<Value, redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(_) => Ok(()),
            // Another replica (or an earlier start) created it: the group and its cursor stand.
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(unavailable("XGROUP CREATE failed", e)),
        }
    }

    async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block_ms: u64,
    ) -> Result<Vec<Delivery>, BusError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(group).arg(consumer);
        // COUNT 0 would mean "no limit" to Redis too; leaving it out says so plainly.
        if count > 0 {
            cmd.arg("COUNT").arg(count);
        }
        // BLOCK 0 makes Redis wait forever; the port's 0 means "do not wait", so no BLOCK at all.
        if block_ms > 0 {
            cmd.arg("BLOCK").arg(block_ms);
        }
        cmd.arg("STREAMS").arg(stream).arg(">");

        let reply: Value = if block_ms == 0 {
            let mut conn = self.connection().await?;
            cmd.query_async(&mut conn)
                .await
                .map_err(|e| unavailable("XREADGROUP failed", e))?
        } else {
            let mut lease = BlockingLease {
                conn: Some(self.connection().await?),
                completed: false,
            };
            let Some(pooled) = lease.conn.as_ref() else {
                return Err(BusError::Unavailable("Redis connection lost".into()));
            };
            // A clone shares the socket but has its own reply timeout, so the pooled
            // connection keeps the short one for the next caller.
            let mut blocking = (**pooled).clone();
            blocking.set_response_timeout(
                Duration::from_millis(block_ms).saturating_add(RESPONSE_TIMEOUT),
            );
            let reply = cmd
                .query_async(&mut blocking)
                .await
                .map_err(|e| unavailable("XREADGROUP failed", e))?;
            lease.completed = true;
            reply
        };
        deliveries(reply)
    }

    async fn claim_idle(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        // COUNT 0 is an error to Redis; claiming nothing is simply done.
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.connection().await?;
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(group)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("XAUTOCLAIM failed", e))?;
        claimed(reply)
    }

    async fn read_own_pending(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        after_id: &str,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP").arg(group).arg(consumer);
        if count > 0 {
            cmd.arg("COUNT").arg(count);
        }
        // With an explicit id Redis reads the consumer's history and never blocks.
        cmd.arg("STREAMS").arg(stream).arg(after_id);
        let mut conn = self.connection().await?;
        let reply: Value = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("XREADGROUP of pending entries failed", e))?;
        deliveries(reply)
    }

    async fn pending(
        &self,
        stream: &str,
        group: &str,
        start: &str,
        end: &str,
        count: usize,
        consumer: Option<&str>,
    ) -> Result<Vec<PendingEntry>, BusError> {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(stream).arg(group).arg(start).arg(end).arg(count);
        if let Some(consumer) = consumer {
            cmd.arg(consumer);
        }
        let mut conn = self.connection().await?;
        // COUNT 0 still checks the group exists, as the memory bus does.
        let reply: Value = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("XPENDING failed", e))?;
        pending_entries(reply)
    }

    async fn pending_count(&self, stream: &str, group: &str) -> Result<u64, BusError> {
        let mut conn = self.connection().await?;
        let reply: Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("XPENDING failed", e))?;
        match reply {
            Value::Array(parts) => parts
                .into_iter()
                .next()
                .and_then(integer)
                .ok_or_else(|| malformed("XPENDING summary without a count")),
            _ => Err(malformed("XPENDING summary is not an array")),
        }
    }

    async fn stream_len(&self, stream: &str) -> Result<u64, BusError> {
        let mut conn = self.connection().await?;
        let reply: Value = redis::cmd("XLEN")
            .arg(stream)
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("XLEN failed", e))?;
        integer(reply).ok_or_else(|| malformed("XLEN reply is not an integer"))
    }

    async fn range(
        &self,
        stream: &str,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<Delivery>, BusError> {
        // COUNT 0 would mean "no limit" to some Redis versions; asking for nothing is done.
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.connection().await?;
        let reply: Value = redis::cmd("XRANGE")
            .arg(stream)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("XRANGE failed", e))?;
        let Value::Array(entries) = reply else {
            return Err(malformed("XRANGE reply is not an array"));
        };
        entries.into_iter().map(delivery).collect()
    }

    async fn delete(&self, stream: &str, entry_ids: &[String]) -> Result<u64, BusError> {
        // XDEL with no ids is a syntax error to Redis; deleting nothing is simply done.
        if entry_ids.is_empty() {
            return Ok(0);
        }
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(stream);
        for id in entry_ids {
            cmd.arg(id);
        }
        let mut conn = self.connection().await?;
        let reply: Value = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("XDEL failed", e))?;
        integer(reply).ok_or_else(|| malformed("XDEL reply is not an integer"))
    }

    async fn ack(&self, stream: &str, group: &str, entry_ids: &[String]) -> Result<(), BusError> {
        // XACK with no ids is a syntax error to Redis; acknowledging nothing is simply done.
        if entry_ids.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XACK");
        cmd.arg(stream).arg(group);
        for id in entry_ids {
            cmd.arg(id);
        }
        let mut conn = self.connection().await?;
        let _acked: Value = cmd
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("XACK failed", e))?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), BusError> {
        let mut conn = self.connection().await?;
        let _pong: Value = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable("PING failed", e))?;
        Ok(())
    }
}

/// A reply value as text, if it is a string of valid UTF-8 (fields are `String`s in the port;
/// lossy decoding would silently break `_sig` verification downstream).
fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        Value::VerbatimString { text, .. } => Some(text),
        _ => None,
    }
}

fn malformed(what: &str) -> BusError {
    BusError::Unavailable(format!("unexpected stream command reply: {what}"))
}

/// A non-negative integer reply.
fn integer(value: Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// Decodes an extended `XPENDING` reply: a list of `[id, consumer, idle-ms, deliveries]`.
fn pending_entries(reply: Value) -> Result<Vec<PendingEntry>, BusError> {
    let rows = match reply {
        Value::Array(rows) => rows,
        Value::Nil => Vec::new(),
        _ => return Err(malformed("XPENDING reply is not an array")),
    };
    rows.into_iter()
        .map(|row| {
            let Value::Array(parts) = row else {
                return Err(malformed("XPENDING row is not an array"));
            };
            let [id, consumer, idle, deliveries] = <[Value; 4]>::try_from(parts)
                .map_err(|_| malformed("XPENDING row does not have four parts"))?;
            Ok(PendingEntry {
                entry_id: text(id).ok_or_else(|| malformed("XPENDING id is not text"))?,
                consumer: text(consumer)
                    .ok_or_else(|| malformed("XPENDING consumer is not text"))?,
                idle_ms: integer(idle).ok_or_else(|| malformed("XPENDING idle time"))?,
                deliveries: integer(deliveries)
                    .ok_or_else(|| malformed("XPENDING delivery count"))?,
            })
        })
        .collect()
}

/// Decodes an `XREADGROUP` reply for one stream: nil when nothing came; otherwise, per stream, a
/// list of `[id, [name, value, …]]` entries, as an array of `[stream, entries]` pairs (RESP2) or
/// a map from stream to entries (RESP3).
fn deliveries(reply: Value) -> Result<Vec<Delivery>, BusError> {
    let per_stream: Vec<Value> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|pair| match pair {
                Value::Array(mut pair) if pair.len() == 2 => Ok(pair.swap_remove(1)),
                _ => Err(malformed("stream item is not a [name, entries] pair")),
            })
            .collect::<Result<_, _>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => return Err(malformed("neither nil, an array nor a map")),
    };
    let mut out = Vec::new();
    for entries in per_stream {
        let Value::Array(entries) = entries else {
            return Err(malformed("entries are not an array"));
        };
        for entry in entries {
            out.push(delivery(entry)?);
        }
    }
    Ok(out)
}

/// Decodes an `XAUTOCLAIM` reply: `[next-id, entries, deleted-ids]` (Redis 7; 6.2 has no third
/// element), entries being `[id, [name, value, …]]` or nil for one deleted meanwhile (6.2).
/// Only the claimed entries matter; the cursor and the deleted ids are ignored.
fn claimed(reply: Value) -> Result<Vec<Delivery>, BusError> {
    let Value::Array(parts) = reply else {
        return Err(malformed("XAUTOCLAIM reply is not an array"));
    };
    let mut parts = parts.into_iter();
    let entries = match parts.nth(1) {
        Some(Value::Array(entries)) => entries,
        Some(Value::Nil) | None => Vec::new(),
        Some(_) => return Err(malformed("XAUTOCLAIM entries are not an array")),
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        match entry {
            Value::Nil => {}
            Value::Array(ref parts) if parts.is_empty() => {}
            entry => out.push(delivery(entry)?),
        }
    }
    Ok(out)
}

fn delivery(entry: Value) -> Result<Delivery, BusError> {
    let Value::Array(parts) = entry else {
        return Err(malformed("entry is not an array"));
    };
    let mut parts = parts.into_iter();
    let entry_id = parts
        .next()
        .and_then(text)
        .ok_or_else(|| malformed("entry id missing or not text"))?;
    let flat = match parts.next() {
        Some(Value::Array(flat)) => flat,
        // An entry trimmed while pending comes back with nil fields.
        Some(Value::Nil) | None => Vec::new(),
        Some(Value::Map(pairs)) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        Some(_) => return Err(malformed("entry fields are not a list")),
    };
    if flat.len() % 2 != 0 {
        return Err(malformed("odd number of field names and values"));
    }
    let mut fields = Vec::with_capacity(flat.len() / 2);
    let mut flat = flat.into_iter();
    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
        let name = text(name).ok_or_else(|| malformed("field name is not UTF-8 text"))?;
        let value = text(value).ok_or_else(|| malformed("field value is not UTF-8 text"))?;
        fields.push((name, value));
    }
    Ok(Delivery { entry_id, fields })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn nil_reply_means_nothing_delivered() {
        assert_eq!(deliveries(Value::Nil).ok(), Some(Vec::new()));
    }

    #[test]
    fn resp2_and_resp3_replies_decode_alike() {
        let entries = Value::Array(vec![Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("b"), bulk("2"), bulk("a"), bulk("")]),
        ])]);
        let expected = vec![Delivery {
            entry_id: "1-0".into(),
            fields: vec![("b".into(), "2".into()), ("a".into(), String::new())],
        }];
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk("s"), entries)]);
        assert_eq!(deliveries(resp2).ok(), Some(expected.clone()));
        assert_eq!(deliveries(resp3).ok(), Some(expected));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let odd = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("k")]),
            ])]),
        ])]);
        assert!(deliveries(odd).is_err());
        let not_utf8 = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("k"), Value::BulkString(vec![0xff])]),
            ])]),
        ])]);
        assert!(deliveries(not_utf8).is_err());
        assert!(deliveries(Value::Int(3)).is_err());
    }

    #[test]
    fn autoclaim_replies_skip_deleted_entries() {
        let reply = Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![
                Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("k"), bulk("v")])]),
                Value::Nil,
                Value::Array(vec![bulk("3-0"), Value::Array(vec![bulk("a"), bulk("")])]),
            ]),
            Value::Array(vec![bulk("2-0")]),
        ]);
        assert_eq!(
            claimed(reply).ok(),
            Some(vec![
                Delivery {
                    entry_id: "1-0".into(),
                    fields: vec![("k".into(), "v".into())],
                },
                Delivery {
                    entry_id: "3-0".into(),
                    fields: vec![("a".into(), String::new())],
                },
            ])
        );
        let redis_6 = Value::Array(vec![bulk("0-0"), Value::Array(Vec::new())]);
        assert_eq!(claimed(redis_6).ok(), Some(Vec::new()));
        assert!(claimed(Value::Int(1)).is_err());
        assert!(claimed(Value::Array(vec![bulk("0-0"), Value::Int(1)])).is_err());
    }

    fn args(cmd: &Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<cursor>".to_string(),
            })
            .collect()
    }

    #[test]
    fn audit_evidence_is_published_without_maxlen() {
        let fields = vec![("data".to_string(), "{}".to_string())];
        for stream in ["caracal.audit.events", "caracal.audit.events.dlq"] {
            let mut cmd = redis::cmd("XADD");
            xadd_args(&mut cmd, stream, &fields);
            assert_eq!(args(&cmd), ["XADD", stream, "*", "data", "{}"], "{stream}");
        }
        let mut cmd = redis::cmd("XADD");
        xadd_args(&mut cmd, "caracal.sessions.revoke", &fields);
        assert_eq!(
            args(&cmd),
            [
                "XADD",
                "caracal.sessions.revoke",
                "MAXLEN",
                "~",
                "100000",
                "*",
                "data",
                "{}"
            ]
        );
    }

    #[test]
    fn pending_rows_decode_and_malformed_ones_are_errors() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("1-0"),
            bulk("worker"),
            Value::Int(1500),
            Value::Int(3),
        ])]);
        assert_eq!(
            pending_entries(reply).ok(),
            Some(vec![PendingEntry {
                entry_id: "1-0".into(),
                consumer: "worker".into(),
                idle_ms: 1500,
                deliveries: 3,
            }])
        );
        let short = Value::Array(vec![Value::Array(vec![bulk("1-0"), bulk("w")])]);
        assert!(pending_entries(short).is_err());
        assert!(pending_entries(Value::Int(1)).is_err());
    }

    #[test]
    fn a_bad_url_is_refused_without_echoing_it() {
        let err = RedisBus::connect("nota://user:s3cret@host").err();
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(!message.is_empty(), "a non-Redis URL must be refused");
        assert!(
            !message.contains("s3cret"),
            "the password leaked: {message}"
        );
    }
}
