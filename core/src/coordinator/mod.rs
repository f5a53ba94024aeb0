//! The Coordinator's use cases (`spec/coordinator-gateway.md` Part A): governed Sessions (task
//! TTL, service leases with generation fencing, parent/child trees), the Delegation graph
//! (edges that only ever narrow authority), idempotent creation, agent services and
//! invocations, and the sweepers that expire what outlives its time.
//!
//! The HTTP shell (`services/coordinator`) authenticates the caller into a [`Principal`],
//! parses the body into a `serde_json::Value`, and calls one use case here. Every use case
//! validates its own input (typed errors, nothing written on failure), runs in one unit of
//! work, writes its outbox rows in that same unit, and answers a [`Reply`]: the status and
//! JSON body to send. Wire errors are [`crate::Error`]s whose `code` is the Coordinator's
//! `error` string; `description` becomes the body's `message`, and `extra` members are merged
//! into the body.

pub mod auth;
pub mod delegations;
pub mod graph;
pub mod idempotency;
pub mod invocations;
pub mod records;
pub mod sessions;
pub mod sweep;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::ids::{OutboxId, ZoneId};
use crate::mandate::VerifiedMandates;
use crate::model::OutboxMessage;
use crate::ports::{
    AuthorityVersions, Clock, IdGenerator, MessageAuthenticator, Store, UnitOfWork, ZoneScope,
};
use crate::time::Timestamp;

/// The stream of Session lifecycle events (A12).
pub const TOPIC_AGENTS_LIFECYCLE: &str = "caracal.agents.lifecycle";
/// The stream telling the STS and Gateways which authority records to revoke (A12).
pub const TOPIC_SESSIONS_REVOKE: &str = "caracal.sessions.revoke";
/// The stream of Delegation graph changes (A12).
pub const TOPIC_DELEGATIONS_INVALIDATE: &str = "caracal.delegations.invalidate";
/// The stream of invocation lifecycle events (A12).
pub const TOPIC_INVOCATIONS_LIFECYCLE: &str = "caracal.invocations.lifecycle";

/// The scope `coordinator.admin` (A3).
pub const ADMIN_SCOPE: &str = "coordinator.admin";
/// The operator principal's `sub` and `client_id` (A2 step 3).
pub const OPERATOR_SUBJECT: &str = "caracal-operator";
/// Deepest Session tree and longest graph walk (A6.1, A8.2).
pub const MAX_DEPTH: i32 = 10;
/// Children one Session may have (A6.1).
pub const MAX_CHILDREN: i32 = 10;
/// Labels per Session (A6.1).
pub const MAX_LABELS: usize = 32;
/// Characters per label (A6.1).
pub const MAX_LABEL_CHARS: usize = 64;
/// Task Session lifetime when none is given, in seconds (A6.1).
pub const DEFAULT_TASK_TTL_SECONDS: i64 = 3600;
/// Longest Session or Delegation TTL, in seconds.
pub const MAX_TTL_SECONDS: i64 = 86_400;

/// Tunables read from the environment by the shell (A14, A7, A11). Defaults are upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// `MAX_AGENTS_PER_ZONE`: live Sessions per zone.
    pub max_agents_per_zone: u64,
    /// `MAX_AGENTS_PER_APP`: live Sessions per application.
    pub max_agents_per_app: u64,
    /// `SERVICE_AGENT_LEASE_SECONDS`: how long a heartbeat keeps a service Session live.
    pub service_lease_seconds: i64,
    /// `IDEMPOTENCY_RETENTION_SECONDS`.
    pub idempotency_retention_seconds: i64,
    /// `GENERATED_IDEMPOTENCY_RETENTION_SECONDS` (`Idempotency-Key-Kind: generated`).
    pub generated_idempotency_retention_seconds: i64,
    /// `IDEMPOTENCY_MAX_RECEIPTS_PER_SCOPE`.
    pub idempotency_max_receipts_per_scope: u64,
    /// `SWEEPER_BATCH_SIZE`: rows per sweeper pass.
    pub sweeper_batch_size: u32,
    /// How long ended Sessions and edges are kept before retention deletes them, in seconds
    /// (90 days).
    pub graph_retention_seconds: i64,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            max_agents_per_zone: 50,
            max_agents_per_app: 200,
            service_lease_seconds: 120,
            idempotency_retention_seconds: 7 * 86_400,
            generated_idempotency_retention_seconds: 86_400,
            idempotency_max_receipts_per_scope: 10_000,
            sweeper_batch_size: 500,
            graph_retention_seconds: 90 * 86_400,
        }
    }
}

/// Who is calling, as authentication established it (A2, A3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The mandate's `sub` (`caracal-operator` for the operator token).
    pub sub: String,
    /// The mandate's `client_id`: the calling application (`caracal-operator` for the
    /// operator token).
    pub client_id: String,
    /// Granted scopes, split on spaces.
    pub scopes: Vec<String>,
    /// The zone the credential is bound to (always the path's zone once authenticated).
    pub zone: ZoneId,
    /// The mandate's authority record (`sid`), when it carries one.
    pub sid: Option<String>,
    /// Whether this is the operator token rather than a mandate.
    pub operator: bool,
    /// Whether A2 step 8 (the application and authority record still stand) is still to be
    /// checked, and by whom: see [`IdentityGate`].
    pub identity: IdentityGate,
}

/// A2 step 8, deferred into the request's own unit of work.
///
/// Checking the calling application and authority record in a transaction of its own costs a
/// request two extra round trips (its `BEGIN` and `ROLLBACK`). A mandate's principal therefore
/// leaves authentication with the check pending; the first unit a use case opens with
/// [`Coordinator::begin_for`] runs it before anything else, so nothing is read for or written by
/// an identity that no longer stands. A refusal that came before any unit (bad input, a
/// missing scope) must still lose to `401 identity_revoked`, as when the check ran first: the
/// shell calls [`Coordinator::settle_identity`] before sending any answer, which runs the check
/// on its own when no unit did. The default is "nothing to check" (the operator token, and
/// principals tests build by hand).
#[derive(Debug, Clone, Default)]
pub struct IdentityGate(Option<Arc<std::sync::atomic::AtomicBool>>);

impl IdentityGate {
    /// A check still to run.
    pub fn pending() -> Self {
        Self(Some(Arc::new(std::sync::atomic::AtomicBool::new(false))))
    }

    /// Whether the check is still to run.
    pub fn is_pending(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|done| !done.load(std::sync::atomic::Ordering::Acquire))
    }

    fn mark_done(&self) {
        if let Some(done) = &self.0 {
            done.store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

/// Two principals are the same caller whatever their checks' progress.
impl PartialEq for IdentityGate {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for IdentityGate {}

impl Principal {
    /// The operator token's principal for `zone` (A2 step 3).
    pub fn operator(zone: ZoneId, lifecycle_scope: &str) -> Self {
        Self {
            sub: OPERATOR_SUBJECT.to_owned(),
            client_id: OPERATOR_SUBJECT.to_owned(),
            scopes: vec![lifecycle_scope.to_owned(), ADMIN_SCOPE.to_owned()],
            zone,
            sid: None,
            operator: true,
            identity: IdentityGate::default(),
        }
    }

    /// Holds exactly this scope.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Holds `coordinator.admin`.
    pub fn is_admin(&self) -> bool {
        self.has_scope(ADMIN_SCOPE)
    }

    /// The calling application is `application_id`.
    pub fn owns(&self, application_id: &str) -> bool {
        self.client_id == application_id
    }

    /// Holds `<prefix>:<application_id>` (for example `coordinator.spawn_for:app1`).
    pub fn has_scope_for(&self, prefix: &str, application_id: &str) -> bool {
        self.scopes.iter().any(|s| {
            s.strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix(':'))
                .is_some_and(|app| app == application_id)
        })
    }

    /// Owner, admin, or `coordinator.spawn_for:<app>`: may start, end, suspend, resume,
    /// heartbeat and lease Sessions of `application_id` (A3).
    pub fn may_manage_sessions_of(&self, application_id: &str) -> bool {
        self.is_admin()
            || self.owns(application_id)
            || self.has_scope_for("coordinator.spawn_for", application_id)
    }
}

/// What a use case answers: the HTTP status and JSON body, and whether it is a replay of a
/// stored idempotent response (`Idempotency-Replayed: true`). A `Null` body with status 204
/// is sent empty.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body (`Value::Null` for 204).
    pub body: Value,
    /// The body was replayed from an idempotency receipt.
    pub replayed: bool,
}

impl Reply {
    /// `200` with a body.
    pub fn ok(body: Value) -> Self {
        Self {
            status: 200,
            body,
            replayed: false,
        }
    }

    /// `201` with a body.
    pub fn created(body: Value) -> Self {
        Self {
            status: 201,
            body,
            replayed: false,
        }
    }

    /// `204`, no body.
    pub fn no_content() -> Self {
        Self {
            status: 204,
            body: Value::Null,
            replayed: false,
        }
    }
}

/// The `Idempotency-Key` headers of a creation request, as the shell read them. Validation
/// (A7) happens in the use case, in the order the contract gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdempotencyHeaders {
    /// Every `Idempotency-Key` header value, in order (more than one is an error).
    pub keys: Vec<String>,
    /// `Idempotency-Key-Kind: generated` was sent.
    pub generated: bool,
}

/// The Coordinator: every use case of Part A over the ports.
pub struct Coordinator {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) ids: Arc<dyn IdGenerator>,
    /// HMAC over idempotency keys (`IDEMPOTENCY_HMAC_KEY`), so receipts never hold a key.
    pub(crate) idempotency_mac: Arc<dyn MessageAuthenticator>,
    /// The previous idempotency key (`IDEMPOTENCY_HMAC_KEY_PREVIOUS`), still honoured on
    /// lookups during a rotation.
    pub(crate) idempotency_mac_previous: Option<Arc<dyn MessageAuthenticator>>,
    /// Advanced after every commit that takes authority away, so the STS's cached delegation
    /// rows stop being trusted before the change is answered.
    pub(crate) versions: Arc<dyn AuthorityVersions>,
    /// Bearer mandates that verified a moment ago (shared by every clone).
    pub(crate) verified: Arc<VerifiedMandates>,
    pub(crate) config: CoordinatorConfig,
}

impl Coordinator {
    /// A Coordinator over these ports.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdGenerator>,
        idempotency_mac: Arc<dyn MessageAuthenticator>,
        idempotency_mac_previous: Option<Arc<dyn MessageAuthenticator>>,
        versions: Arc<dyn AuthorityVersions>,
        config: CoordinatorConfig,
    ) -> Self {
        Self {
            store,
            clock,
            ids,
            idempotency_mac,
            idempotency_mac_previous,
            versions,
            verified: Arc::new(VerifiedMandates::new()),
            config,
        }
    }

    /// The same Coordinator over another store: same clock, ids, keys and tunables. The shell
    /// gives each HTTP worker thread its own connection pool this way (see `caracal`'s wiring).
    pub fn with_store(&self, store: Arc<dyn Store>) -> Self {
        Self {
            store,
            clock: Arc::clone(&self.clock),
            ids: Arc::clone(&self.ids),
            idempotency_mac: Arc::clone(&self.idempotency_mac),
            idempotency_mac_previous: self.idempotency_mac_previous.clone(),
            versions: Arc::clone(&self.versions),
            verified: Arc::clone(&self.verified),
            config: self.config.clone(),
        }
    }

    /// The tunables in force.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// The store (the shell's `/ready` pings it).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Starts a unit of work confined to the zone.
    ///
    /// Coordinator units never go on after a refused write (every write error ends the
    /// request or the sweep pass), so they waive the adapter's per-write recovery.
    pub(crate) async fn begin(&self, zone: &ZoneId) -> Result<Box<dyn UnitOfWork>> {
        let mut uow = self.store.begin(&ZoneScope::Zone(zone.clone())).await?;
        uow.abandon_on_write_error();
        Ok(uow)
    }

    /// Starts a unit of work for `p`'s request, running `p`'s pending identity check (A2 step 8)
    /// in it first: a `401 identity_revoked` leaves before the use case reads anything.
    pub(crate) async fn begin_for(
        &self,
        p: &Principal,
        zone: &ZoneId,
    ) -> Result<Box<dyn UnitOfWork>> {
        Ok(self.begin_with_identity(p, zone).await?.0)
    }

    /// [`Coordinator::begin_for`], also answering the rows the identity check read when it ran
    /// in this unit (a start reuses them instead of reading the same two rows again).
    pub(crate) async fn begin_with_identity(
        &self,
        p: &Principal,
        zone: &ZoneId,
    ) -> Result<(Box<dyn UnitOfWork>, Option<auth::IdentityRows>)> {
        if !p.identity.is_pending() {
            return Ok((self.begin(zone).await?, None));
        }
        let (mut uow, rows) = self
            .begin_checking_identity(zone, &p.client_id, p.sid.as_deref())
            .await?;
        uow.abandon_on_write_error();
        p.identity.mark_done();
        Ok((uow, Some(rows)))
    }

    /// Runs `p`'s identity check (A2 step 8) in a unit of its own if no unit of the request ran
    /// it; a no-op otherwise. The shell calls this before sending any answer.
    pub async fn settle_identity(&self, p: &Principal) -> Result<()> {
        if p.identity.is_pending() {
            self.begin_checking_identity(&p.zone, &p.client_id, p.sid.as_deref())
                .await?;
            p.identity.mark_done();
        }
        Ok(())
    }

    /// Commits a unit that took authority away in `zones` (ended, suspended or revoked
    /// something a delegated mint relies on), then advances each zone's authority version
    /// before the caller answers: the next mint in those zones reads the store again. A failed
    /// advance cannot undo the commit; it is logged, and the STS's cached rows expire on their
    /// own within `sts::ROW_CACHE_MS`.
    pub(crate) async fn commit_narrowing<'z>(
        &self,
        uow: Box<dyn UnitOfWork>,
        zones: impl IntoIterator<Item = &'z ZoneId>,
    ) -> Result<()> {
        uow.commit().await?;
        for zone in zones {
            if let Err(e) = self.versions.advance(zone).await {
                tracing::warn!(zone = %zone, error = %e, "authority version not advanced after a committed revocation; cached delegation rows expire on their own");
            }
        }
        Ok(())
    }

    /// Starts a unit of work over every zone (sweepers).
    pub(crate) async fn begin_all(&self) -> Result<Box<dyn UnitOfWork>> {
        let mut uow = self.store.begin(&ZoneScope::All).await?;
        uow.abandon_on_write_error();
        Ok(uow)
    }

    /// Enqueues one outbox row on `topic` in `uow`: fields `dedupe_key` plus `fields` (the
    /// dispatcher adds `outbox_id` and `_sig`). `None` values are dropped (A12).
    pub(crate) async fn enqueue(
        &self,
        uow: &mut dyn UnitOfWork,
        topic: &str,
        dedupe_key: String,
        fields: &[(&str, Option<String>)],
    ) -> Result<()> {
        let now = self.clock.now();
        let mut map = BTreeMap::new();
        map.insert("dedupe_key".to_owned(), dedupe_key);
        for (k, v) in fields {
            if let Some(v) = v {
                map.insert((*k).to_owned(), v.clone());
            }
        }
        let message = OutboxMessage {
            id: OutboxId::parse(&self.ids.new_id())?,
            stream: topic.to_owned(),
            fields: map,
            attempts: 0,
            available_at: Some(now),
            locked_until: None,
            last_error: None,
            dispatched_at: None,
            request_id: None,
            created_at: now,
        };
        uow.enqueue_outbox(&message).await?;
        Ok(())
    }
}

/// A timestamp on the wire: ISO-8601 UTC with milliseconds and `Z` (A1).
pub fn wire_time(at: Timestamp) -> Value {
    Value::String(at.to_iso_millis())
}

/// An optional timestamp on the wire (`null` when absent).
pub fn wire_time_opt(at: Option<Timestamp>) -> Value {
    at.map_or(Value::Null, wire_time)
}

/// A path id (`^[A-Za-z0-9_.\-:]{1,128}$`, A1), else `400 invalid_params`.
pub fn path_id(text: &str) -> Result<&str> {
    let ok = !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b':'));
    if ok {
        Ok(text)
    } else {
        Err(Error::new(ErrorKind::Invalid, "invalid_params"))
    }
}

/// `400 invalid_body` with one issue per offending field (A1): the body carries
/// `error_description: "Request body failed validation"` and
/// `details: {"issues":[{"path":[…],"message":…}]}`; the shell adds `requestId`.
pub fn invalid_body(issues: Vec<(Vec<Value>, String)>) -> Error {
    let issues: Vec<Value> = issues
        .into_iter()
        .map(|(path, message)| {
            let mut m = Map::new();
            m.insert("path".into(), Value::Array(path));
            m.insert("message".into(), Value::String(message));
            Value::Object(m)
        })
        .collect();
    let mut extra = Map::new();
    extra.insert("details".into(), serde_json::json!({ "issues": issues }));
    let mut e = Error::new(ErrorKind::Invalid, "invalid_body");
    e.extra = Some(Value::Object(extra));
    e
}

/// `400 invalid_body` for one field.
pub fn invalid_field(field: &str, message: impl Into<String>) -> Error {
    invalid_body(vec![(
        vec![Value::String(field.to_owned())],
        message.into(),
    )])
}
