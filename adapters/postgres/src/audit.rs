//! The audit ledger on Postgres (`spec/audit-streams-storage.md §6.3–6.5`, migration
//! `2026-11-24-000008_audit`): [`PgLedger`] implements [`AuditLedger`] over the store's pool.
//!
//! Roles. Evidence is written as `caracal_audit`, which may SELECT and INSERT it and nothing
//! else; retention runs as that role too, through the two SECURITY DEFINER partition functions;
//! the retention setting is written as `caracal_app`, the API's role. Reads run as the
//! connecting role with `caracal.zone_id = '*'`, always with an explicit zone predicate: under
//! row-level security the planner may not use a non-leakproof expression (`hashtext`, `@>`)
//! as an index condition, and the zone and label indexes are such expressions.
//!
//! Storage. The three JSON fields are stored packed ([`caracal_core::audit::pack`]): the
//! ledger packs the canonical jsonb text the chain hashed (refusing text that is not
//! canonical, which could not come back byte for byte) and reads unpack it to the same text, so
//! the chain verifies exactly as if jsonb were stored. Ids the reads look up (`id`,
//! `request_id`, and metadata's `application_id`, `agent_session_id`, `session_id`) are `uuid`
//! columns when the value is a canonical lowercase uuid and verbatim `*_text` columns
//! otherwise; a filter goes to the one column its value can be in, and the list orders ids by
//! their text either way. `agent_labels` is extracted into the labels it matches, for a GIN
//! index. The migration's header explains the storage budget and each choice's measured cost.
//!
//! Appends. One transaction per batch: the advisory lock of every zone in the batch (in key
//! order, so two batches never wait on each other in a cycle), then each zone's head and the
//! stored events with the batch's (`id`, `occurred_at`) keys, read after the locks are held;
//! the chain is linked in memory with [`ChainHead::link`]; all new rows go in one `INSERT …
//! SELECT FROM unnest(…)`. The statements of each step are pipelined, so a batch costs four
//! round trips whatever its size.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use caracal_core::audit::json::Json;
use caracal_core::audit::pack::{self, uuid_bytes};
use caracal_core::audit::{Anchor, CanonicalEvent, ChainHead, IncomingEvent, StoredEvent};
use caracal_core::digest::hex;
use caracal_core::ports::audit::{
    AppendOutcome, AuditLedger, IngestAlert, LedgerError, ListQuery, RetentionReport,
    RetentionSetting, SearchQuery,
};
use caracal_core::ports::MessageAuthenticator;
use caracal_core::StoreError;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use diesel::pg::Pg;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Array, BigInt, Bool, Bytea, Integer, Nullable, Text, Timestamptz};
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, RunQueryDsl};

use crate::store::{PgStore, APP_ROLE};
use crate::unit_of_work::PgUnitOfWork;

/// The role evidence is written as (`§7.3`): SELECT and INSERT on evidence, no UPDATE or DELETE.
const AUDIT_ROLE: &str = "caracal_audit";

/// Month partitions are named `audit_events_yYYYYmMM` (`§6.5`).
const PARTITION_PREFIX: &str = "audit_events_y";

/// The Postgres audit ledger. Cloning is cheap and shares the store's pool.
#[derive(Clone, Debug)]
pub struct PgLedger {
    store: PgStore,
}

impl PgLedger {
    /// A ledger on `store`'s pool. The connecting role must own the schema (it ran the
    /// migrations) or be a member of `caracal_audit` and `caracal_app`.
    pub fn new(store: PgStore) -> PgLedger {
        PgLedger { store }
    }

    /// Opens a transaction with `caracal.zone_id = '*'`, as `role` when given: one round trip.
    async fn begin(&self, role: Option<&'static str>) -> Result<PgUnitOfWork, LedgerError> {
        let conn = self.store.acquire().await.map_err(store_failure)?;
        let mut uow = PgUnitOfWork::new(conn);
        // Both settings are transaction-local: they never outlive this transaction on the
        // pooled connection. `role` is one of this module's constants, never input.
        let sql = match role {
            Some(role) => format!(
                "BEGIN; SELECT set_config('role', '{role}', true), set_config('caracal.zone_id', '*', true)"
            ),
            None => "BEGIN; SELECT set_config('caracal.zone_id', '*', true)".to_owned(),
        };
        let conn = uow.begin_op().map_err(store_failure)?;
        let begun = AnsiTransactionManager::begin_transaction_sql(conn, &sql).await;
        uow.end_op();
        begun.map_err(ledger_error)?;
        Ok(uow)
    }

    /// Runs one read query in its own transaction and decodes its rows.
    async fn read_events(
        &self,
        query: diesel::query_builder::BoxedSqlQuery<'static, Pg, diesel::query_builder::SqlQuery>,
    ) -> Result<Vec<StoredEvent>, LedgerError> {
        let mut uow = self.begin(None).await?;
        let conn = uow.begin_op().map_err(store_failure)?;
        let rows = query.load::<EventRow>(conn).await;
        uow.end_op();
        let rows = rows.map_err(ledger_error)?;
        uow.finish().await.map_err(store_failure)?;
        rows.into_iter().map(EventRow::into_stored).collect()
    }
}

// -------------------------------------------------------------------------------------------
// Errors
// -------------------------------------------------------------------------------------------

/// Maps a database failure the way the ingestor retries (`§6.2`): transient for serialization
/// failures (40001), deadlocks (40P01), shutdowns and restarts (57P01–57P03), connection
/// failures (08xxx, or no SQLSTATE at all: the socket broke), too many connections (53300),
/// configuration limits (53400) and cancelled statements (timeouts); permanent otherwise.
///
/// diesel-async keeps only a coarse error kind, not the SQLSTATE, so the codes diesel does not
/// name are recognised by the server's message text (Postgres' English messages, which is
/// what a server with the default `lc_messages` sends).
pub(crate) fn ledger_error(err: DieselError) -> LedgerError {
    let transient = match &err {
        DieselError::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::ClosedConnection => true,
            _ => transient_message(info.message()),
        },
        DieselError::BrokenTransactionManager
        | DieselError::RollbackErrorOnCommit { .. }
        | DieselError::AlreadyInTransaction
        | DieselError::NotInTransaction => true,
        _ => false,
    };
    if transient {
        LedgerError::Transient(err.to_string())
    } else {
        LedgerError::Permanent(err.to_string())
    }
}

/// Server messages of the transient SQLSTATEs diesel does not classify.
fn transient_message(message: &str) -> bool {
    const PATTERNS: [&str; 13] = [
        // 40P01 deadlock_detected
        "deadlock detected",
        // 57P01 admin_shutdown
        "terminating connection due to administrator command",
        // 57P02 crash_shutdown
        "terminating connection because of crash of another server process",
        // 57P03 cannot_connect_now
        "the database system is starting up",
        "the database system is shutting down",
        "the database system is in recovery mode",
        "the database system is not yet accepting connections",
        "the database system is not accepting connections",
        // 53300 too_many_connections
        "too many clients already",
        "too many connections",
        "remaining connection slots are reserved",
        // 53400 configuration_limit_exceeded (e.g. max_locks_per_transaction)
        "configuration limit exceeded",
        // 57014 query_canceled / 55P03 lock_not_available: statement and lock timeouts
        "canceling statement due to",
    ];
    let message = message.to_ascii_lowercase();
    PATTERNS.iter().any(|p| message.contains(p))
        || (message.contains("connection") && message.contains("closed"))
}

/// A pool or transaction failure of the store: unavailability is worth retrying.
fn store_failure(err: StoreError) -> LedgerError {
    match err {
        StoreError::Unavailable(detail) => LedgerError::Transient(detail),
        other => LedgerError::Permanent(other.to_string()),
    }
}

// -------------------------------------------------------------------------------------------
// Column encodings
// -------------------------------------------------------------------------------------------

/// Unix microseconds as a column instant.
fn instant(micros: i64) -> Result<DateTime<Utc>, LedgerError> {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .ok_or_else(|| LedgerError::Permanent(format!("instant out of range: {micros} µs")))
}

/// The earliest instant Postgres' timestamptz holds (4714-11-24 BC, UTC).
const PG_MIN_MICROS: i64 = -210_866_803_200_000_000;

/// A query bound: `Some` when Postgres can represent it; `None` when it lies beyond every
/// storable instant on its side (the bound then excludes nothing).
fn pg_instant(micros: i64) -> Option<DateTime<Utc>> {
    if micros <= PG_MIN_MICROS {
        return None;
    }
    DateTime::<Utc>::from_timestamp_micros(micros)
}

/// Decodes lowercase hex (even length), the form every hash and HMAC here is written in.
fn lower_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// A SHA-256 / HMAC-SHA256 in hex as its 32 bytes.
fn digest_bytes(text: &str, what: &str) -> Result<Vec<u8>, LedgerError> {
    match lower_hex(text) {
        Some(bytes) if bytes.len() == 32 => Ok(bytes),
        _ => Err(LedgerError::Permanent(format!(
            "{what} is not a lowercase hex SHA-256: {text:?}"
        ))),
    }
}

/// `""` as NULL (`§6.3` treats them alike; NULL costs a bit instead of a byte).
fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// A uuid-or-text value as its two columns: `(uuid form, text form)`, at most one `Some`. The
/// uuid form is the canonical lowercase text (cast to `uuid` in SQL, which prints it back the
/// same); anything else, however uuid-like, is kept verbatim as text.
fn uuid_or_text(value: Option<&str>) -> (Option<String>, Option<String>) {
    match value {
        Some(v) if uuid_bytes(v).is_some() => (Some(v.to_owned()), None),
        Some(v) => (None, Some(v.to_owned())),
        None => (None, None),
    }
}

/// One JSON field, parsed and packed. Its text must be canonical jsonb text — what the chain
/// hashed and what unpacking prints — or the stored row could not reproduce it.
fn packed_json(text: Option<&str>, what: &str) -> Result<Option<(Json, Vec<u8>)>, LedgerError> {
    let Some(text) = text else {
        return Ok(None);
    };
    let refuse = |why: String| LedgerError::Permanent(format!("{what}: {why}"));
    let json = Json::parse(text).map_err(|e| refuse(e.to_string()))?;
    if json.jsonb_text() != text {
        return Err(refuse(format!("not canonical jsonb text: {text:?}")));
    }
    let packed = pack::pack(&json).map_err(|e| refuse(e.to_string()))?;
    Ok(Some((json, packed)))
}

/// A packed JSON column back to its jsonb text.
fn unpacked_json(
    bytes: Option<Vec<u8>>,
    what: &str,
    id: &str,
) -> Result<Option<String>, LedgerError> {
    bytes
        .map(|bytes| {
            pack::unpack(&bytes)
                .map(|json| json.jsonb_text())
                .map_err(|e| LedgerError::Permanent(format!("stored {what} of event {id}: {e}")))
        })
        .transpose()
}

/// The labels `metadata_json.agent_labels` matches, as the list filter defines them: every
/// string of an array; every key of an object, and `key:value` for each string member. Sorted,
/// without repeats; `None` when there are none (the column and its index stay empty).
fn label_set(metadata: &Json) -> Option<Vec<String>> {
    let mut labels: Vec<String> = match metadata.get("agent_labels") {
        Some(Json::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect(),
        Some(Json::Object(members)) => members
            .iter()
            .flat_map(|(key, value)| {
                let pair = value.as_str().map(|v| format!("{key}:{v}"));
                std::iter::once(key.clone()).chain(pair)
            })
            .collect(),
        _ => Vec::new(),
    };
    labels.sort();
    labels.dedup();
    (!labels.is_empty()).then_some(labels)
}

/// A stored event row (the uuid-or-text columns as their text; JSON packed).
#[derive(diesel::QueryableByName)]
struct EventRow {
    #[diesel(sql_type = Timestamptz)]
    occurred_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    ingested_at: DateTime<Utc>,
    #[diesel(sql_type = BigInt)]
    chain_seq: i64,
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    zone_id: String,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Nullable<Text>)]
    request_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    decision: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    policy_set_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    policy_set_version_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    manifest_sha: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    evaluation_status: Option<String>,
    #[diesel(sql_type = Nullable<Bytea>)]
    determining_policies_json: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Bytea>)]
    diagnostics_json: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Bytea>)]
    metadata_json: Option<Vec<u8>>,
    #[diesel(sql_type = Bytea)]
    content_sha256: Vec<u8>,
    #[diesel(sql_type = Nullable<Bytea>)]
    prev_content_sha256: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Bytea>)]
    chain_hmac: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Bytea>)]
    ingest_signature: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Text>)]
    ingest_signature_text: Option<String>,
}

/// The select list of [`EventRow`].
const EVENT_COLUMNS: &str = "occurred_at, ingested_at, chain_seq, \
    coalesce(id_text, id::text) AS id, zone_id, event_type, \
    coalesce(request_id_text, request_id::text) AS request_id, decision, policy_set_id, \
    policy_set_version_id, manifest_sha, evaluation_status, determining_policies_json, \
    diagnostics_json, metadata_json, content_sha256, prev_content_sha256, chain_hmac, \
    ingest_signature, ingest_signature_text";

/// The event id as text, in the order the API's list pages by (bytewise, like the ids).
const ID_TEXT: &str = "(coalesce(id_text, id::text) COLLATE \"C\")";

impl EventRow {
    fn into_stored(self) -> Result<StoredEvent, LedgerError> {
        if self.content_sha256.len() != 32 {
            return Err(LedgerError::Permanent(format!(
                "stored content_sha256 of {} has {} bytes",
                self.id,
                self.content_sha256.len()
            )));
        }
        let determining_policies_json = unpacked_json(
            self.determining_policies_json,
            "determining_policies_json",
            &self.id,
        )?;
        let diagnostics_json = unpacked_json(self.diagnostics_json, "diagnostics_json", &self.id)?;
        let metadata_json = unpacked_json(self.metadata_json, "metadata_json", &self.id)?;
        Ok(StoredEvent {
            event: CanonicalEvent {
                id: self.id,
                zone_id: self.zone_id,
                event_type: self.event_type,
                request_id: self.request_id.unwrap_or_default(),
                decision: self.decision.unwrap_or_default(),
                policy_set_id: self.policy_set_id.unwrap_or_default(),
                policy_set_version_id: self.policy_set_version_id.unwrap_or_default(),
                manifest_sha: self.manifest_sha.unwrap_or_default(),
                evaluation_status: self.evaluation_status.unwrap_or_default(),
                determining_policies_json,
                diagnostics_json,
                metadata_json,
                occurred_at_micros: self.occurred_at.timestamp_micros(),
            },
            ingested_at_micros: self.ingested_at.timestamp_micros(),
            content_sha256: hex(&self.content_sha256),
            prev_content_sha256: self.prev_content_sha256.as_deref().map(hex),
            chain_hmac: self.chain_hmac.as_deref().map(hex).unwrap_or_default(),
            chain_seq: self.chain_seq,
            ingest_signature: self
                .ingest_signature
                .as_deref()
                .map(hex)
                .or(self.ingest_signature_text),
        })
    }
}

/// A zone's newest stored row and newest anchor (either may be missing).
#[derive(diesel::QueryableByName)]
struct HeadRow {
    #[diesel(sql_type = Text)]
    zone_id: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    row_seq: Option<i64>,
    #[diesel(sql_type = Nullable<Bytea>)]
    row_sha: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<BigInt>)]
    anchor_seq: Option<i64>,
    #[diesel(sql_type = Nullable<Bytea>)]
    anchor_sha: Option<Vec<u8>>,
}

impl HeadRow {
    /// The head the zone's next row links to: the newer of its last row and its last anchor
    /// (retention may have dropped the partition that held the last row).
    fn head(&self) -> ChainHead {
        let row = self.row_seq.zip(self.row_sha.as_deref());
        let anchor = self.anchor_seq.zip(self.anchor_sha.as_deref());
        let newest = match (row, anchor) {
            (Some(r), Some(a)) => Some(if a.0 > r.0 { a } else { r }),
            (r, a) => r.or(a),
        };
        match newest {
            Some((seq, sha)) => ChainHead {
                seq,
                content_sha256: hex(sha),
            },
            None => ChainHead::default(),
        }
    }
}

/// A stored event's dedup key and hash.
#[derive(diesel::QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Timestamptz)]
    occurred_at: DateTime<Utc>,
    #[diesel(sql_type = Bytea)]
    content_sha256: Vec<u8>,
}

/// Takes every zone's chain lock, one zone at a time in lock-key order: the subquery is
/// sorted and not flattened (DISTINCT), so the locks are requested in that order.
const LOCK_ZONES: &str = "SELECT pg_advisory_xact_lock(k) \
    FROM (SELECT DISTINCT hashtext(z) AS k FROM unnest($1::text[]) AS z ORDER BY 1) AS keys";

/// Each zone's newest row (through `audit_events_zone_seq`) and newest anchor.
const ZONE_HEADS: &str = "SELECT z.zone_id, h.chain_seq AS row_seq, h.content_sha256 AS row_sha, \
        a.chain_seq AS anchor_seq, a.content_sha256 AS anchor_sha \
    FROM unnest($1::text[]) AS z(zone_id) \
    LEFT JOIN LATERAL (SELECT e.chain_seq, e.content_sha256 FROM audit_events e \
        WHERE hashtext(e.zone_id) = hashtext(z.zone_id) AND e.zone_id = z.zone_id \
        ORDER BY e.chain_seq DESC LIMIT 1) AS h ON true \
    LEFT JOIN LATERAL (SELECT c.chain_seq, c.content_sha256 FROM audit_chain_anchors c \
        WHERE c.zone_id = z.zone_id ORDER BY c.chain_seq DESC LIMIT 1) AS a ON true";

/// Stored events with any of the batch's (`id`, `occurred_at`) keys, through the key index of
/// each id form: $1/$2 the uuid ids, $3/$4 the others.
const STORED_KEYS: &str = "SELECT e.id::text AS id, e.occurred_at, e.content_sha256 \
    FROM unnest($1::text[]::uuid[], $2::timestamptz[]) AS k(id, occurred_at) \
    JOIN audit_events e ON e.id = k.id AND e.occurred_at = k.occurred_at \
    UNION ALL \
    SELECT e.id_text::text, e.occurred_at, e.content_sha256 \
    FROM unnest($3::text[], $4::timestamptz[]) AS k(id, occurred_at) \
    JOIN audit_events e ON e.id_text = k.id AND e.occurred_at = k.occurred_at \
    WHERE e.id_text IS NOT NULL";

/// Every new row of a batch in one statement. `ON CONFLICT DO NOTHING` (on either key index)
/// only matters when another zone's batch stored the same key concurrently (the zone locks do
/// not cover that): the caller sees fewer rows than it sent and retries. Label sets arrive as
/// JSON arrays (an array of arrays cannot be unnested row by row).
const INSERT_ROWS: &str = "INSERT INTO audit_events (occurred_at, chain_seq, id, id_text, \
        zone_id, event_type, request_id, request_id_text, decision, policy_set_id, \
        policy_set_version_id, manifest_sha, evaluation_status, determining_policies_json, \
        diagnostics_json, metadata_json, application_id, application_id_text, agent_session_id, \
        agent_session_id_text, session_id, session_id_text, agent_labels, content_sha256, \
        prev_content_sha256, chain_hmac, ingest_signature, ingest_signature_text) \
    SELECT r.occurred_at, r.chain_seq, r.id::uuid, r.id_text, r.zone_id, r.event_type, \
        r.request_id::uuid, r.request_id_text, r.decision, r.policy_set_id, \
        r.policy_set_version_id, r.manifest_sha, r.evaluation_status, r.determining, \
        r.diagnostics, r.metadata, r.application_id::uuid, r.application_id_text, \
        r.agent_session_id::uuid, r.agent_session_id_text, r.session_id::uuid, \
        r.session_id_text, \
        CASE WHEN r.labels IS NOT NULL THEN ARRAY(SELECT l.label \
            FROM jsonb_array_elements_text(r.labels::jsonb) WITH ORDINALITY AS l(label, n) \
            ORDER BY l.n) END, \
        r.content, r.prev, r.hmac, r.sig, r.sig_text \
    FROM unnest($1::timestamptz[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], \
        $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], \
        $14::bytea[], $15::bytea[], $16::bytea[], $17::text[], $18::text[], $19::text[], \
        $20::text[], $21::text[], $22::text[], $23::text[], $24::bytea[], $25::bytea[], \
        $26::bytea[], $27::bytea[], $28::text[]) \
        AS r(occurred_at, chain_seq, id, id_text, zone_id, event_type, request_id, \
        request_id_text, decision, policy_set_id, policy_set_version_id, manifest_sha, \
        evaluation_status, determining, diagnostics, metadata, application_id, \
        application_id_text, agent_session_id, agent_session_id_text, session_id, \
        session_id_text, labels, content, prev, hmac, sig, sig_text) \
    ON CONFLICT DO NOTHING";

/// The new rows of a batch, column by column (the shape `INSERT_ROWS` binds).
#[derive(Default)]
struct Columns {
    occurred_at: Vec<DateTime<Utc>>,
    chain_seq: Vec<i64>,
    id: Vec<Option<String>>,
    id_text: Vec<Option<String>>,
    zone_id: Vec<String>,
    event_type: Vec<String>,
    request_id: Vec<Option<String>>,
    request_id_text: Vec<Option<String>>,
    decision: Vec<Option<String>>,
    policy_set_id: Vec<Option<String>>,
    policy_set_version_id: Vec<Option<String>>,
    manifest_sha: Vec<Option<String>>,
    evaluation_status: Vec<Option<String>>,
    determining: Vec<Option<Vec<u8>>>,
    diagnostics: Vec<Option<Vec<u8>>>,
    metadata: Vec<Option<Vec<u8>>>,
    application_id: Vec<Option<String>>,
    application_id_text: Vec<Option<String>>,
    agent_session_id: Vec<Option<String>>,
    agent_session_id_text: Vec<Option<String>>,
    session_id: Vec<Option<String>>,
    session_id_text: Vec<Option<String>>,
    labels: Vec<Option<String>>,
    content: Vec<Vec<u8>>,
    prev: Vec<Option<Vec<u8>>>,
    hmac: Vec<Option<Vec<u8>>>,
    sig: Vec<Option<Vec<u8>>>,
    sig_text: Vec<Option<String>>,
}

impl Columns {
    fn push(
        &mut self,
        incoming: &IncomingEvent,
        occurred_at: DateTime<Utc>,
        link: caracal_core::audit::Link,
    ) -> Result<(), LedgerError> {
        let e = &incoming.event;
        let determining = packed_json(
            e.determining_policies_json.as_deref(),
            "determining_policies_json",
        )?;
        let diagnostics = packed_json(e.diagnostics_json.as_deref(), "diagnostics_json")?;
        let metadata = packed_json(e.metadata_json.as_deref(), "metadata_json")?;
        let meta = metadata.as_ref().map(|(json, _)| json);
        let meta_str = |key: &str| meta.and_then(|m| m.get(key)).and_then(Json::as_str);
        self.occurred_at.push(occurred_at);
        self.chain_seq.push(link.seq);
        let (id, id_text) = uuid_or_text(Some(&e.id));
        self.id.push(id);
        self.id_text.push(id_text);
        self.zone_id.push(e.zone_id.clone());
        self.event_type.push(e.event_type.clone());
        let (request_id, request_id_text) =
            uuid_or_text(Some(e.request_id.as_str()).filter(|r| !r.is_empty()));
        self.request_id.push(request_id);
        self.request_id_text.push(request_id_text);
        self.decision.push(non_empty(&e.decision));
        self.policy_set_id.push(non_empty(&e.policy_set_id));
        self.policy_set_version_id
            .push(non_empty(&e.policy_set_version_id));
        self.manifest_sha.push(non_empty(&e.manifest_sha));
        self.evaluation_status.push(non_empty(&e.evaluation_status));
        let labels = match meta.and_then(label_set) {
            Some(labels) => Some(serde_json::to_string(&labels).map_err(|err| {
                LedgerError::Permanent(format!("agent_labels of event {}: {err}", e.id))
            })?),
            None => None,
        };
        self.labels.push(labels);
        for (key, uuids, texts) in [
            (
                "application_id",
                &mut self.application_id,
                &mut self.application_id_text,
            ),
            (
                "agent_session_id",
                &mut self.agent_session_id,
                &mut self.agent_session_id_text,
            ),
            (
                "session_id",
                &mut self.session_id,
                &mut self.session_id_text,
            ),
        ] {
            let (uuid, text) = uuid_or_text(meta_str(key));
            uuids.push(uuid);
            texts.push(text);
        }
        self.determining.push(determining.map(|(_, packed)| packed));
        self.diagnostics.push(diagnostics.map(|(_, packed)| packed));
        self.metadata.push(metadata.map(|(_, packed)| packed));
        self.content
            .push(digest_bytes(&link.content_sha256, "content_sha256")?);
        self.prev.push(match &link.prev_content_sha256 {
            Some(prev) => Some(digest_bytes(prev, "prev_content_sha256")?),
            None => None,
        });
        self.hmac.push(if link.chain_hmac.is_empty() {
            None
        } else {
            Some(digest_bytes(&link.chain_hmac, "chain_hmac")?)
        });
        // The producer's sig, exactly: decoded when decoding is lossless, else as text.
        match incoming.sig.as_deref() {
            Some(sig) => match lower_hex(sig) {
                Some(bytes) => {
                    self.sig.push(Some(bytes));
                    self.sig_text.push(None);
                }
                None => {
                    self.sig.push(None);
                    self.sig_text.push(Some(sig.to_owned()));
                }
            },
            None => {
                self.sig.push(None);
                self.sig_text.push(None);
            }
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.id.len()
    }

    fn is_empty(&self) -> bool {
        self.id.is_empty()
    }
}

// -------------------------------------------------------------------------------------------
// Dynamic reads
// -------------------------------------------------------------------------------------------

type Boxed = diesel::query_builder::BoxedSqlQuery<'static, Pg, diesel::query_builder::SqlQuery>;

/// A query assembled from optional filters, numbering its placeholders as it goes.
struct Builder {
    query: Boxed,
    next: usize,
}

impl Builder {
    fn new(head: &str) -> Builder {
        Builder {
            query: diesel::sql_query(head).into_boxed(),
            next: 1,
        }
    }

    /// The next placeholder, `$n`.
    fn param(&mut self) -> String {
        let p = format!("${}", self.next);
        self.next += 1;
        p
    }

    fn sql(&mut self, text: &str) {
        let query = std::mem::replace(&mut self.query, diesel::sql_query("").into_boxed());
        self.query = query.sql(text);
    }

    fn text(&mut self, value: String) {
        let query = std::mem::replace(&mut self.query, diesel::sql_query("").into_boxed());
        self.query = query.bind::<Text, _>(value);
    }

    /// ` AND <zone predicate>`: through the hashtext index, rechecked on the text.
    fn zone(&mut self, zone: &str) {
        let p = self.param();
        self.sql(&format!(
            " AND hashtext(zone_id) = hashtext({p}::text) AND zone_id = {p}"
        ));
        self.text(zone.to_owned());
    }

    /// ` AND column = value`, where `""` is stored as NULL.
    fn equals(&mut self, column: &str, value: &str) {
        if value.is_empty() {
            self.sql(&format!(" AND {column} IS NULL"));
        } else {
            let p = self.param();
            self.sql(&format!(" AND {column} = {p}"));
            self.text(value.to_owned());
        }
    }

    /// ` AND occurred_at <op> instant`.
    fn instant(&mut self, op: &str, at: DateTime<Utc>) {
        let p = self.param();
        self.sql(&format!(" AND occurred_at {op} {p}"));
        let query = std::mem::replace(&mut self.query, diesel::sql_query("").into_boxed());
        self.query = query.bind::<Timestamptz, _>(at);
    }

    /// ` AND <uuid-or-text column> = value`: the uuid column when the value is a canonical
    /// uuid, else `<column>_text` (a value is only ever stored in that one place).
    fn uuid_or_text(&mut self, column: &str, value: &str) {
        let p = self.param();
        match uuid_or_text(Some(value)) {
            (Some(uuid), _) => {
                self.sql(&format!(" AND {column} = {p}::uuid"));
                self.text(uuid);
            }
            (_, text) => {
                self.sql(&format!(" AND {column}_text = {p}"));
                self.text(text.unwrap_or_default());
            }
        }
    }

    /// ` AND request_id = value`, where `""` (absent) is stored as NULL in both forms.
    fn request_id(&mut self, value: &str) {
        if value.is_empty() {
            self.sql(" AND request_id IS NULL AND request_id_text IS NULL");
        } else {
            self.uuid_or_text("request_id", value);
        }
    }

    fn bigint(&mut self, value: i64) -> String {
        let p = self.param();
        let query = std::mem::replace(&mut self.query, diesel::sql_query("").into_boxed());
        self.query = query.bind::<BigInt, _>(value);
        p
    }
}

/// Months as `year * 12 + month0`.
fn month_index(at: DateTime<Utc>) -> i64 {
    i64::from(at.year()) * 12 + i64::from(at.month0())
}

/// The first instant of a month index.
fn month_start(index: i64) -> Option<DateTime<Utc>> {
    let year = i32::try_from(index.div_euclid(12)).ok()?;
    let month = u32::try_from(index.rem_euclid(12)).ok()? + 1;
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single()
}

/// The month index of a partition name `audit_events_yYYYYmMM`.
fn partition_month(name: &str) -> Option<i64> {
    let rest = name.strip_prefix(PARTITION_PREFIX)?;
    let (year, month) = rest.split_once('m')?;
    let (year, month): (i64, i64) = (year.parse().ok()?, month.parse().ok()?);
    (1..=12).contains(&month).then_some(year * 12 + month - 1)
}

#[derive(diesel::QueryableByName)]
struct Created {
    #[diesel(sql_type = Bool)]
    created: bool,
}

#[derive(diesel::QueryableByName)]
struct PartitionName {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(diesel::QueryableByName)]
struct Dropped {
    #[diesel(sql_type = BigInt)]
    rows_dropped: i64,
    #[diesel(sql_type = BigInt)]
    anchors: i64,
}

#[derive(diesel::QueryableByName)]
struct AnchorRow {
    #[diesel(sql_type = Text)]
    zone_id: String,
    #[diesel(sql_type = BigInt)]
    chain_seq: i64,
    #[diesel(sql_type = Bytea)]
    content_sha256: Vec<u8>,
}

#[derive(diesel::QueryableByName)]
struct ZoneRow {
    #[diesel(sql_type = Text)]
    zone_id: String,
}

#[derive(diesel::QueryableByName)]
struct SettingRow {
    #[diesel(sql_type = Integer)]
    retention_days: i32,
    #[diesel(sql_type = Nullable<Text>)]
    updated_by: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    updated_at: DateTime<Utc>,
}

/// Runs one statement on a unit of work's connection, keeping the in-flight mark right:
/// `run!(uow, |conn| future)`.
macro_rules! run {
    ($uow:expr, |$conn:ident| $body:expr) => {{
        let $conn = $uow.begin_op().map_err(store_failure)?;
        let result = $body.await;
        $uow.end_op();
        result.map_err(ledger_error)
    }};
}

#[async_trait]
impl AuditLedger for PgLedger {
    async fn append(
        &self,
        events: &[IncomingEvent],
        mac: Option<&dyn MessageAuthenticator>,
    ) -> Result<Vec<AppendOutcome>, LedgerError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let occurred: Vec<DateTime<Utc>> = events
            .iter()
            .map(|e| instant(e.event.occurred_at_micros))
            .collect::<Result<_, _>>()?;
        let zones: Vec<String> = events
            .iter()
            .map(|e| e.event.zone_id.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // The batch's keys, split by id form (each form has its own key index).
        let (mut uuid_keys, mut text_keys) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for (incoming, at) in events.iter().zip(&occurred) {
            let id = incoming.event.id.clone();
            let keys = if uuid_bytes(&id).is_some() {
                &mut uuid_keys
            } else {
                &mut text_keys
            };
            keys.0.push(id);
            keys.1.push(*at);
        }

        // Reads run as the connecting role (the hashtext index is not usable under RLS); the
        // write switches to caracal_audit below.
        let mut uow = self.begin(None).await?;
        let conn: &AsyncPgConnection = uow.begin_op().map_err(store_failure)?;
        // Pipelined, executed in order: the heads and keys are read only once every lock is
        // held, each statement with its own snapshot (READ COMMITTED).
        let locked = diesel::sql_query(LOCK_ZONES)
            .bind::<Array<Text>, _>(zones.clone())
            .execute(&mut &*conn);
        let heads = diesel::sql_query(ZONE_HEADS)
            .bind::<Array<Text>, _>(zones)
            .load::<HeadRow>(&mut &*conn);
        let stored = diesel::sql_query(STORED_KEYS)
            .bind::<Array<Text>, _>(uuid_keys.0)
            .bind::<Array<Timestamptz>, _>(uuid_keys.1)
            .bind::<Array<Text>, _>(text_keys.0)
            .bind::<Array<Timestamptz>, _>(text_keys.1)
            .load::<KeyRow>(&mut &*conn);
        let read = tokio::try_join!(locked, heads, stored);
        uow.end_op();
        let (_, heads, stored) = read.map_err(ledger_error)?;

        let mut heads: HashMap<String, ChainHead> = heads
            .into_iter()
            .map(|h| (h.zone_id.clone(), h.head()))
            .collect();
        // Every key already taken, stored or earlier in this batch, with its content hash.
        let mut taken: HashMap<(String, i64), String> = stored
            .into_iter()
            .map(|k| {
                (
                    (k.id, k.occurred_at.timestamp_micros()),
                    hex(&k.content_sha256),
                )
            })
            .collect();
        let mut outcomes = Vec::with_capacity(events.len());
        let mut rows = Columns::default();
        for (incoming, at) in events.iter().zip(occurred) {
            let key = (incoming.event.id.clone(), incoming.event.occurred_at_micros);
            if let Some(stored) = taken.get(&key) {
                outcomes.push(AppendOutcome::already_stored(
                    stored,
                    &incoming.content_sha256,
                ));
                continue;
            }
            let link = heads
                .entry(incoming.event.zone_id.clone())
                .or_default()
                .link(&incoming.content_sha256, mac);
            outcomes.push(AppendOutcome::Inserted {
                chain_seq: link.seq,
            });
            rows.push(incoming, at, link)?;
            taken.insert(key, incoming.content_sha256.clone());
        }

        if !rows.is_empty() {
            let expected = rows.len();
            let conn: &AsyncPgConnection = uow.begin_op().map_err(store_failure)?;
            let role =
                diesel::sql_query(format!("SELECT set_config('role', '{AUDIT_ROLE}', true)"))
                    .execute(&mut &*conn);
            let insert = diesel::sql_query(INSERT_ROWS)
                .bind::<Array<Timestamptz>, _>(rows.occurred_at)
                .bind::<Array<BigInt>, _>(rows.chain_seq)
                .bind::<Array<Nullable<Text>>, _>(rows.id)
                .bind::<Array<Nullable<Text>>, _>(rows.id_text)
                .bind::<Array<Text>, _>(rows.zone_id)
                .bind::<Array<Text>, _>(rows.event_type)
                .bind::<Array<Nullable<Text>>, _>(rows.request_id)
                .bind::<Array<Nullable<Text>>, _>(rows.request_id_text)
                .bind::<Array<Nullable<Text>>, _>(rows.decision)
                .bind::<Array<Nullable<Text>>, _>(rows.policy_set_id)
                .bind::<Array<Nullable<Text>>, _>(rows.policy_set_version_id)
                .bind::<Array<Nullable<Text>>, _>(rows.manifest_sha)
                .bind::<Array<Nullable<Text>>, _>(rows.evaluation_status)
                .bind::<Array<Nullable<Bytea>>, _>(rows.determining)
                .bind::<Array<Nullable<Bytea>>, _>(rows.diagnostics)
                .bind::<Array<Nullable<Bytea>>, _>(rows.metadata)
                .bind::<Array<Nullable<Text>>, _>(rows.application_id)
                .bind::<Array<Nullable<Text>>, _>(rows.application_id_text)
                .bind::<Array<Nullable<Text>>, _>(rows.agent_session_id)
                .bind::<Array<Nullable<Text>>, _>(rows.agent_session_id_text)
                .bind::<Array<Nullable<Text>>, _>(rows.session_id)
                .bind::<Array<Nullable<Text>>, _>(rows.session_id_text)
                .bind::<Array<Nullable<Text>>, _>(rows.labels)
                .bind::<Array<Bytea>, _>(rows.content)
                .bind::<Array<Nullable<Bytea>>, _>(rows.prev)
                .bind::<Array<Nullable<Bytea>>, _>(rows.hmac)
                .bind::<Array<Nullable<Bytea>>, _>(rows.sig)
                .bind::<Array<Nullable<Text>>, _>(rows.sig_text)
                .execute(&mut &*conn);
            let written = tokio::try_join!(role, insert);
            uow.end_op();
            let (_, inserted) = written.map_err(ledger_error)?;
            if inserted != expected {
                // Dropping `uow` rolls the whole batch back.
                return Err(LedgerError::Transient(format!(
                    "{} of {expected} events were stored concurrently by another batch; retry",
                    expected - inserted
                )));
            }
        }
        uow.finish().await.map_err(store_failure)?;
        Ok(outcomes)
    }

    async fn record_alert(&self, alert: &IngestAlert) -> Result<(), LedgerError> {
        let observed_at = instant(alert.observed_at_micros)?;
        let mut uow = self.begin(Some(AUDIT_ROLE)).await?;
        run!(uow, |conn| diesel::sql_query(
            "INSERT INTO audit_ingest_alerts (event_id, zone_id, kind, detail, observed_at) \
             VALUES ($1, $2, $3, $4, $5)"
        )
        .bind::<Text, _>(&alert.event_id)
        .bind::<Text, _>(&alert.zone_id)
        .bind::<Text, _>(&alert.kind)
        .bind::<Text, _>(&alert.detail)
        .bind::<Timestamptz, _>(observed_at)
        .execute(conn))?;
        uow.finish().await.map_err(store_failure)
    }

    async fn search(&self, query: &SearchQuery) -> Result<Vec<StoredEvent>, LedgerError> {
        let mut q = Builder::new(&format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events WHERE true"
        ));
        q.zone(&query.zone_id);
        match pg_instant(query.since_micros) {
            Some(since) => q.instant(">=", since),
            None if query.since_micros > PG_MIN_MICROS => return Ok(Vec::new()),
            None => {}
        }
        match pg_instant(query.until_micros) {
            Some(until) => q.instant("<", until),
            None if query.until_micros <= PG_MIN_MICROS => return Ok(Vec::new()),
            None => {}
        }
        if let Some(decision) = &query.decision {
            q.equals("decision", decision);
        }
        if let Some(request) = &query.request_id {
            q.request_id(request);
        }
        let after = q.bigint(query.after_seq);
        q.sql(&format!(" AND chain_seq > {after} ORDER BY chain_seq"));
        let limit = q.bigint(i64::from(query.limit));
        q.sql(&format!(" LIMIT {limit}"));
        self.read_events(q.query).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<StoredEvent>, LedgerError> {
        let mut q = Builder::new(&format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events WHERE true"
        ));
        q.zone(&query.zone_id);
        if let Some(since) = query.since_micros {
            match pg_instant(since) {
                Some(at) => q.instant(">=", at),
                None if since > PG_MIN_MICROS => return Ok(Vec::new()),
                None => {}
            }
        }
        if let Some(until) = query.until_micros {
            match pg_instant(until) {
                Some(at) => q.instant("<", at),
                None if until <= PG_MIN_MICROS => return Ok(Vec::new()),
                None => {}
            }
        }
        if let Some(request) = &query.request_id {
            q.request_id(request);
        }
        if let Some(decision) = &query.decision {
            q.equals("decision", decision);
        }
        if !query.event_types.is_empty() {
            let p = q.param();
            q.sql(&format!(" AND event_type = ANY({p}::text[])"));
            let query_so_far = std::mem::replace(&mut q.query, diesel::sql_query("").into_boxed());
            q.query = query_so_far.bind::<Array<Text>, _>(query.event_types.clone());
        }
        for (key, value) in [
            ("application_id", &query.application_id),
            ("agent_session_id", &query.agent_session_id),
            ("session_id", &query.authority_record_id),
        ] {
            if let Some(value) = value {
                q.uuid_or_text(key, value);
            }
        }
        if let Some(label) = &query.label {
            // The labels were extracted on write in the filter's own terms (`label_set`).
            let p = q.param();
            q.sql(&format!(" AND agent_labels @> ARRAY[{p}::text]"));
            q.text(label.clone());
        }
        if let Some((at_micros, id)) = &query.before {
            match pg_instant(*at_micros) {
                Some(at) => {
                    // Written so the (zone, occurred_at) index bounds the scan.
                    let t = q.param();
                    let query_so_far =
                        std::mem::replace(&mut q.query, diesel::sql_query("").into_boxed());
                    q.query = query_so_far.bind::<Timestamptz, _>(at);
                    let i = q.param();
                    q.sql(&format!(
                        " AND occurred_at <= {t} AND (occurred_at < {t} OR {ID_TEXT} < {i})"
                    ));
                    q.text(id.clone());
                }
                None if *at_micros <= PG_MIN_MICROS => return Ok(Vec::new()),
                None => {}
            }
        }
        q.sql(&format!(" ORDER BY occurred_at DESC, {ID_TEXT} DESC"));
        let limit = q.bigint(i64::from(query.limit));
        q.sql(&format!(" LIMIT {limit}"));
        self.read_events(q.query).await
    }

    async fn by_request(
        &self,
        zone_id: &str,
        request_id: &str,
    ) -> Result<Vec<StoredEvent>, LedgerError> {
        let mut q = Builder::new(&format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events WHERE true"
        ));
        q.request_id(request_id);
        let p = q.param();
        q.sql(&format!(
            " AND zone_id = {p} ORDER BY occurred_at, chain_seq"
        ));
        q.text(zone_id.to_owned());
        self.read_events(q.query).await
    }

    async fn zones(&self) -> Result<Vec<String>, LedgerError> {
        let mut uow = self.begin(None).await?;
        let rows: Vec<ZoneRow> = run!(uow, |conn| diesel::sql_query(
            "SELECT zone_id FROM audit_events GROUP BY zone_id \
             UNION SELECT zone_id FROM audit_chain_anchors ORDER BY 1"
        )
        .load::<ZoneRow>(conn))?;
        uow.finish().await.map_err(store_failure)?;
        Ok(rows.into_iter().map(|r| r.zone_id).collect())
    }

    async fn chain_page(
        &self,
        zone_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, LedgerError> {
        let mut q = Builder::new(&format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events WHERE true"
        ));
        q.zone(zone_id);
        let after = q.bigint(after_seq);
        q.sql(&format!(" AND chain_seq > {after} ORDER BY chain_seq"));
        let limit = q.bigint(i64::from(limit));
        q.sql(&format!(" LIMIT {limit}"));
        self.read_events(q.query).await
    }

    async fn anchors(&self, zone_id: &str) -> Result<Vec<Anchor>, LedgerError> {
        let mut uow = self.begin(None).await?;
        let rows: Vec<AnchorRow> = run!(uow, |conn| diesel::sql_query(
            "SELECT zone_id, chain_seq, content_sha256 FROM audit_chain_anchors \
             WHERE zone_id = $1 ORDER BY chain_seq"
        )
        .bind::<Text, _>(zone_id)
        .load::<AnchorRow>(conn))?;
        uow.finish().await.map_err(store_failure)?;
        Ok(rows
            .into_iter()
            .map(|r| Anchor {
                zone_id: r.zone_id,
                seq: r.chain_seq,
                content_sha256: hex(&r.content_sha256),
            })
            .collect())
    }

    async fn apply_retention(
        &self,
        now_micros: i64,
        retention_days: u32,
    ) -> Result<RetentionReport, LedgerError> {
        let now = instant(now_micros)?;
        let mut report = RetentionReport::default();

        // The current month and the next three.
        let first = month_index(now);
        let mut uow = self.begin(Some(AUDIT_ROLE)).await?;
        for month in first..=first + 3 {
            let start = month_start(month)
                .ok_or_else(|| LedgerError::Permanent(format!("month {month} is out of range")))?;
            let row: Created = run!(uow, |conn| diesel::sql_query(
                "SELECT audit_partition_ensure($1) AS created"
            )
            .bind::<Timestamptz, _>(start)
            .get_result::<Created>(conn))?;
            report.created += u64::from(row.created);
        }
        let partitions: Vec<PartitionName> = run!(uow, |conn| diesel::sql_query(
            "SELECT c.relname::text AS name FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'audit_events'::regclass \
               AND c.relname ~ '^audit_events_y[0-9]{4}m[0-9]{2}$' ORDER BY 1"
        )
        .load::<PartitionName>(conn))?;
        uow.finish().await.map_err(store_failure)?;

        // Each month that ended at or before the cutoff, oldest first, one transaction each:
        // a drop holds the parent's exclusive lock only for its own month.
        let cutoff = now_micros.saturating_sub(i64::from(retention_days) * 86_400_000_000);
        for partition in partitions {
            let Some(month) = partition_month(&partition.name) else {
                continue;
            };
            let ended = month_start(month + 1).map(|end| end.timestamp_micros());
            if ended.is_none_or(|end| end > cutoff) {
                continue;
            }
            let mut uow = self.begin(Some(AUDIT_ROLE)).await?;
            let dropped: Dropped = run!(uow, |conn| diesel::sql_query(
                "SELECT rows_dropped, anchors FROM audit_partition_drop($1)"
            )
            .bind::<Text, _>(&partition.name)
            .get_result::<Dropped>(conn))?;
            uow.finish().await.map_err(store_failure)?;
            report.dropped += 1;
            report.rows_dropped += u64::try_from(dropped.rows_dropped).unwrap_or(0);
            report.anchors += u64::try_from(dropped.anchors).unwrap_or(0);
        }
        Ok(report)
    }

    async fn retention_setting(&self) -> Result<Option<RetentionSetting>, LedgerError> {
        let mut uow = self.begin(None).await?;
        let rows: Vec<SettingRow> = run!(uow, |conn| diesel::sql_query(
            "SELECT retention_days, updated_by, updated_at FROM audit_retention"
        )
        .load::<SettingRow>(conn))?;
        uow.finish().await.map_err(store_failure)?;
        rows.into_iter()
            .next()
            .map(|row| {
                Ok(RetentionSetting {
                    retention_days: u32::try_from(row.retention_days).map_err(|_| {
                        LedgerError::Permanent(format!(
                            "stored retention_days {} is negative",
                            row.retention_days
                        ))
                    })?,
                    updated_by: row.updated_by,
                    updated_at_micros: row.updated_at.timestamp_micros(),
                })
            })
            .transpose()
    }

    async fn set_retention_setting(&self, setting: &RetentionSetting) -> Result<(), LedgerError> {
        let days = i32::try_from(setting.retention_days).map_err(|_| {
            LedgerError::Permanent(format!(
                "retention_days {} is out of range",
                setting.retention_days
            ))
        })?;
        let updated_at = instant(setting.updated_at_micros)?;
        // The API's role writes the setting (§6.5); the Audit role may only read it.
        let mut uow = self.begin(Some(APP_ROLE)).await?;
        run!(uow, |conn| diesel::sql_query(
            "INSERT INTO audit_retention (singleton, retention_days, updated_by, updated_at) \
             VALUES (true, $1, $2, $3) \
             ON CONFLICT (singleton) DO UPDATE SET retention_days = EXCLUDED.retention_days, \
                 updated_by = EXCLUDED.updated_by, updated_at = EXCLUDED.updated_at"
        )
        .bind::<Integer, _>(days)
        .bind::<Nullable<Text>, _>(setting.updated_by.as_deref())
        .bind::<Timestamptz, _>(updated_at)
        .execute(conn))?;
        uow.finish().await.map_err(store_failure)
    }

    async fn ping(&self) -> Result<(), LedgerError> {
        let mut conn = self.store.acquire().await.map_err(store_failure)?;
        diesel::sql_query("SELECT 1")
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(ledger_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db_error(kind: DatabaseErrorKind, message: &str) -> DieselError {
        DieselError::DatabaseError(kind, Box::new(message.to_owned()))
    }

    #[test]
    fn transient_failures_are_told_apart_from_permanent_ones() {
        for transient in [
            db_error(
                DatabaseErrorKind::SerializationFailure,
                "could not serialize access",
            ),
            db_error(
                DatabaseErrorKind::UnableToSendCommand,
                "connection reset by peer",
            ),
            db_error(DatabaseErrorKind::ClosedConnection, "closed"),
            db_error(DatabaseErrorKind::Unknown, "deadlock detected"),
            db_error(
                DatabaseErrorKind::Unknown,
                "terminating connection due to administrator command",
            ),
            db_error(
                DatabaseErrorKind::Unknown,
                "terminating connection because of crash of another server process",
            ),
            db_error(
                DatabaseErrorKind::Unknown,
                "the database system is shutting down",
            ),
            db_error(
                DatabaseErrorKind::Unknown,
                "sorry, too many clients already",
            ),
            db_error(
                DatabaseErrorKind::Unknown,
                "canceling statement due to statement timeout",
            ),
            DieselError::BrokenTransactionManager,
        ] {
            assert!(
                matches!(ledger_error(transient), LedgerError::Transient(_)),
                "transient"
            );
        }
        for permanent in [
            db_error(
                DatabaseErrorKind::Unknown,
                "permission denied for table audit_events",
            ),
            db_error(
                DatabaseErrorKind::CheckViolation,
                "violates check constraint",
            ),
            db_error(DatabaseErrorKind::UniqueViolation, "duplicate key value"),
            db_error(
                DatabaseErrorKind::Unknown,
                "invalid input syntax for type json",
            ),
            DieselError::NotFound,
        ] {
            assert!(
                matches!(ledger_error(permanent), LedgerError::Permanent(_)),
                "permanent"
            );
        }
        assert_eq!(
            store_failure(StoreError::Unavailable("pool".into())),
            LedgerError::Transient("pool".into())
        );
    }

    #[test]
    fn hex_decoding_is_exact() {
        assert_eq!(lower_hex("00ff10"), Some(vec![0x00, 0xff, 0x10]));
        assert_eq!(lower_hex(""), Some(vec![]));
        for lossy in ["0", "0F", "zz", "abc", "é1"] {
            assert_eq!(lower_hex(lossy), None, "{lossy}");
        }
        assert!(digest_bytes(&"ab".repeat(32), "x").is_ok());
        assert!(digest_bytes(&"ab".repeat(31), "x").is_err());
    }

    #[test]
    fn uuid_or_text_puts_each_value_in_exactly_one_column() {
        let lower = "0197a000-0000-7000-8000-00000000000a";
        assert_eq!(uuid_or_text(Some(lower)), (Some(lower.to_owned()), None));
        for text in [
            "0197A000-0000-7000-8000-00000000000A",
            "0197a00000007000800000000000000a",
            "{0197a000-0000-7000-8000-00000000000a}",
            "e1",
            "",
        ] {
            assert_eq!(uuid_or_text(Some(text)), (None, Some(text.to_owned())));
        }
        assert_eq!(uuid_or_text(None), (None, None));
    }

    #[test]
    fn label_sets_hold_what_the_label_filter_matches() {
        let labels = |metadata: &str| label_set(&Json::parse(metadata).expect("JSON"));
        assert_eq!(
            labels(r#"{"agent_labels":["prod","team:x","prod",3,null]}"#),
            Some(vec!["prod".to_owned(), "team:x".to_owned()])
        );
        assert_eq!(
            labels(r#"{"agent_labels":{"team":"y","canary":true,"a:b":"c"}}"#),
            Some(vec![
                "a:b".to_owned(),
                "a:b:c".to_owned(),
                "canary".to_owned(),
                "team".to_owned(),
                "team:y".to_owned(),
            ])
        );
        for none in [
            r#"{"agent_labels":[]}"#,
            r#"{"agent_labels":{}}"#,
            r#"{"agent_labels":"prod"}"#,
            r#"{"agent_labels":[1,2]}"#,
            r#"{"labels":["prod"]}"#,
            r#"["prod"]"#,
        ] {
            assert_eq!(labels(none), None, "{none}");
        }
    }

    #[test]
    fn only_canonical_json_text_is_packed_and_it_unpacks_to_the_same_text() {
        let text = r#"{"a": 1, "bb": [true, null, "0197a000-0000-7000-8000-00000000000a"]}"#;
        let (_, packed) = packed_json(Some(text), "metadata_json")
            .expect("canonical")
            .expect("present");
        assert_eq!(
            unpacked_json(Some(packed), "metadata_json", "e").expect("unpacks"),
            Some(text.to_owned())
        );
        assert_eq!(packed_json(None, "metadata_json"), Ok(None));
        for not_canonical in [r#"{"bb": 1, "a": 2}"#, r#"{"a":1}"#, "1e2", "[1,2]", "nope"] {
            assert!(
                matches!(
                    packed_json(Some(not_canonical), "metadata_json"),
                    Err(LedgerError::Permanent(_))
                ),
                "{not_canonical}"
            );
        }
        assert!(matches!(
            unpacked_json(Some(vec![0x01, 0x0a, 0x01]), "metadata_json", "e"),
            Err(LedgerError::Permanent(_))
        ));
    }

    #[test]
    fn partition_names_map_to_months() {
        assert_eq!(
            partition_month("audit_events_y2026m05"),
            Some(2026 * 12 + 4)
        );
        assert_eq!(partition_month("audit_events_y2026m13"), None);
        assert_eq!(partition_month("audit_events_default"), None);
        let may = month_start(2026 * 12 + 4).expect("month");
        assert_eq!(may.to_rfc3339(), "2026-05-01T00:00:00+00:00");
        assert_eq!(month_index(may), 2026 * 12 + 4);
    }
}
