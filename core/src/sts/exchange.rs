//! `POST /oauth/2/token` (`spec/sts.md §3`): who is asking, with what, for which resources —
//! and, resource by resource, whether the policy allows it. Every decision, allow or deny,
//! becomes an audit event; nothing is minted unless at least one resource was granted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};

use serde_json::{json, Map, Value};

use crate::authority::{AuthorityRecord, RecordStatus, SessionType};
use crate::error::{Error, ErrorKind};
use crate::ids::{ApplicationId, ResourceId, ZoneId};
use crate::mandate::{DelegationHop, MandateClaims, MandateUse, SubType};
use crate::model::{Application, Resource};
use crate::policy::DecisionInput;
use crate::ports::{AuditEvent, ExpiringKeysError, ZoneScope};
use crate::time::Timestamp;
use futures_util::future::{join, join4};

use super::approvals::{HoldKey, Retry};
use super::client_auth::invalid_client;
use super::form::{self, FormPairs, SubjectKind, TokenRequest};
use super::gateway_sig::{GatewayVerifier, SignedHeaders};
use super::references::{self, denied, Delegation};
use super::Sts;

/// Default mandate lifetime.
const DEFAULT_TTL: i64 = 900;
/// Cap without a subject token (bootstrap, delegated, control, federation).
const CAP_DIRECT: i64 = 3_600;
/// Cap with a subject token (Gateway exchange).
const CAP_SUBJECT: i64 = 900;

/// The longest lifetime a mandate minted for `req` can have: what it asks for (or the
/// default), within the cap. The mint only ever shortens it (a Delegation's expiry, a Control
/// key's limit, a re-issued hold), so a `jti` registered for this long covers the mandate.
fn longest_lifetime(req: &TokenRequest, with_subject: bool) -> i64 {
    let cap = if with_subject {
        CAP_SUBJECT
    } else {
        CAP_DIRECT
    };
    req.ttl_seconds.unwrap_or(DEFAULT_TTL).clamp(1, cap)
}
/// The lifecycle scope of a bootstrap exchange.
pub const LIFECYCLE_SCOPE: &str = "agent:lifecycle";

/// One call of the token endpoint, after the transport checks the shell owns (query string,
/// media type, body size).
pub struct TokenCall<'a> {
    /// The raw body.
    pub body: &'a [u8],
    /// The Gateway envelope headers, if any were sent.
    pub gateway: SignedHeaders<'a>,
    /// The escaped request path (signed by the Gateway).
    pub path: &'a str,
    /// The request id (inbound `X-Request-Id` or generated).
    pub request_id: &'a str,
}

/// A minted mandate, ready to render (§3.10).
#[derive(Debug, Clone, PartialEq)]
pub struct Minted {
    /// The compact JWT.
    pub access_token: String,
    /// Lifetime in seconds.
    pub expires_in: i64,
    /// The minted `scope` (empty: omitted).
    pub scope: String,
    /// Canonical identifiers of the granted resources.
    pub target_resources: Vec<String>,
    /// Upstream directives (Gateway-authenticated exchanges only).
    pub upstreams: Option<Map<String, Value>>,
}

impl Minted {
    /// The success body.
    pub fn to_json(&self) -> Value {
        let mut body = Map::new();
        body.insert(
            "access_token".into(),
            Value::from(self.access_token.clone()),
        );
        body.insert("token_type".into(), Value::from("Bearer"));
        body.insert("expires_in".into(), Value::from(self.expires_in));
        if !self.scope.is_empty() {
            body.insert("scope".into(), Value::from(self.scope.clone()));
        }
        body.insert(
            "issued_token_type".into(),
            Value::from(form::ACCESS_TOKEN_TYPE),
        );
        if !self.target_resources.is_empty() {
            body.insert("target_resources".into(), json!(self.target_resources));
        }
        if let Some(upstreams) = &self.upstreams {
            body.insert("upstreams".into(), Value::Object(upstreams.clone()));
        }
        Value::Object(body)
    }
}

/// `403 access_denied "policy denied (<reason>)"` or plain.
fn policy_denied(reason: Option<&str>) -> Error {
    match reason {
        Some(r) => denied(format!("policy denied ({r})")),
        None => denied("policy denied"),
    }
}

fn invalid(description: &str) -> Error {
    form::malformed(description)
}

fn invalid_subject() -> Error {
    Error::new(ErrorKind::Unauthenticated, "invalid_token").describe("invalid subject_token")
}

pub(crate) fn issuance_failed(description: &str) -> Error {
    Error::new(ErrorKind::Internal, "internal_error").describe(description)
}

/// A verified subject mandate and what it fills in.
struct Subject {
    claims: MandateClaims,
    raw: Map<String, Value>,
}

/// Everything the per-resource pipeline needs about the caller.
struct Caller {
    app: Application,
    zone: ZoneId,
    control: bool,
}

/// `401 access_denied "invalid gateway exchange signature"`.
fn bad_envelope() -> Error {
    Error::new(ErrorKind::Unauthenticated, "access_denied")
        .describe("invalid gateway exchange signature")
}

/// An authentic Gateway envelope's nonce, claimed once for the request (`spec/sts.md §6`).
struct Nonce<'a> {
    nonce: &'a str,
    /// 0: not claimed yet; 1: claimed by this request; 2: refused (used before, or the
    /// registry could not answer).
    state: AtomicU8,
}

impl<'a> Nonce<'a> {
    fn new(nonce: &'a str) -> Self {
        Self {
            nonce,
            state: AtomicU8::new(0),
        }
    }

    /// Claims the nonce: `true` when this request is its first use.
    async fn claim(&self, verifier: &GatewayVerifier) -> bool {
        let first = verifier.claim_nonce(self.nonce).await;
        self.state
            .store(if first { 1 } else { 2 }, Ordering::SeqCst);
        first
    }

    /// Whether the nonce was this request's, claiming it now if nothing has yet.
    async fn settle(&self, verifier: &GatewayVerifier) -> bool {
        match self.state.load(Ordering::SeqCst) {
            0 => self.claim(verifier).await,
            1 => true,
            _ => false,
        }
    }
}

/// The registration of the `jti` a request would mint (§3.9).
enum Registration {
    /// Not sent yet.
    Pending {
        client_id: String,
        iat: i64,
        /// Seconds the registration must cover (the longest lifetime the mandate can get).
        lifetime: i64,
    },
    /// What the registry answered.
    Answered(Result<bool, ExpiringKeysError>),
}

impl Registration {
    /// Sends the registration of `jti` (a registration already answered answers the same).
    async fn send(&self, sts: &Sts, jti: &str) -> Result<bool, ExpiringKeysError> {
        match self {
            Registration::Pending {
                client_id,
                iat,
                lifetime,
            } => sts.register_jti(jti, client_id, *iat, *lifetime).await,
            Registration::Answered(answer) => answer.clone(),
        }
    }
}

impl Sts {
    /// Runs the token endpoint from the body on.
    pub async fn token(&self, call: TokenCall<'_>) -> Result<Minted, Error> {
        let form = FormPairs::parse(call.body)?;
        let ttl = form::precheck(&form)?;
        let gateway = call.gateway.any();
        // A Gateway envelope's signature is checked here; its nonce is claimed with the
        // request's other Redis checks (one round trip). Whatever ends the request before those
        // go out claims it first, so a replayed envelope is always refused as one.
        let nonce = if gateway {
            let authentic = self.gateway.authentic(
                &call.gateway,
                "POST",
                call.path,
                call.body,
                self.clock.now().unix_seconds(),
            );
            match authentic {
                Some(nonce)
                    if form.get("gateway_request_id").map(str::trim) == Some(call.request_id) =>
                {
                    Some(Nonce::new(nonce))
                }
                Some(nonce) => {
                    let _ = self.gateway.claim_nonce(nonce).await;
                    return Err(bad_envelope());
                }
                None => return Err(bad_envelope()),
            }
        } else {
            None
        };
        let result = match form::token_request(&form, ttl) {
            Ok(request) => {
                self.exchange(request, gateway, call.request_id, nonce.as_ref())
                    .await
            }
            Err(e) => Err(e),
        };
        match &nonce {
            Some(nonce) if !nonce.settle(&self.gateway).await => Err(bad_envelope()),
            _ => result,
        }
    }

    async fn exchange(
        &self,
        mut req: TokenRequest,
        gateway: bool,
        request_id: &str,
        nonce: Option<&Nonce<'_>>,
    ) -> Result<Minted, Error> {
        let now = self.clock.now();
        let wants_version = req.subject.is_some()
            || !req.session_id.is_empty()
            || !req.delegation_edge_id.is_empty();
        // An application's own mint: the block on repeated authentication failures must be
        // read before its secret is checked, and the zone's authority version (read before any
        // row it vouches for, `sts::kept`) is a read that may go with it, one round trip. The
        // version is of the zone the form names; it is used only if the caller turns out to
        // belong to that zone.
        let (named_zone, early_version) = if gateway {
            (None, None)
        } else {
            let named = ZoneId::parse(&req.zone_id).ok();
            let (blocked, version) = join(self.failures.check(&req.application_id), async {
                match &named {
                    Some(zone) if wants_version => self.authority_version(zone).await,
                    _ => None,
                }
            })
            .await;
            blocked?;
            (named, version)
        };
        let caller = self.authenticate(&req, gateway, now).await?;
        if req
            .subject
            .as_ref()
            .is_some_and(|s| s.kind == SubjectKind::IdToken)
        {
            if let Some(nonce) = nonce {
                if !nonce.settle(&self.gateway).await {
                    return Err(bad_envelope());
                }
            }
            // Federation (§9): the application has proven itself with its secret; the identity
            // token, not the policy, decides the rest.
            return self
                .federate(&req, &caller.app, &caller.zone, gateway, request_id, now)
                .await;
        }
        let zone = caller.zone.clone();
        let requested_scopes = req.scopes();

        // §3.4: the subject mandate.
        let subject = match &req.subject {
            Some(s) => Some(self.verify_subject(&s.token, &zone, gateway).await?),
            None => None,
        };
        // Everything that may open its own unit of work (the policy cache's load) runs before
        // this request's unit begins: the memory store serialises units, and a nested one
        // would wait on its parent forever.
        let bundle = self.policies.bundle(&zone).await?;
        // The `jti` this request would mint is registered (§3.9) together with the request's
        // other Redis calls: on a Gateway exchange with the envelope's nonce, the zone's
        // version and the single use of the presented gateway mandate (§3.5c), one round trip;
        // on an application's own mint (whose caller was only now authenticated) with its
        // first rate-limit hit. Each outcome is judged where it always was, so refusals keep
        // their order; a request refused in between leaves an unused `jti` registered until
        // its lifetime ends.
        let jti = self.ids.new_id();
        let mut registration = Registration::Pending {
            client_id: caller.app.id.to_string(),
            iat: now.unix_seconds(),
            lifetime: longest_lifetime(&req, subject.is_some()),
        };
        let (version, mut consumed) = if gateway {
            let gateway_mandate = subject.as_ref().map(|s| &s.claims);
            let (nonce_claimed, version, consumed, registered) = join4(
                async {
                    match nonce {
                        Some(nonce) => nonce.claim(&self.gateway).await,
                        None => false,
                    }
                },
                async {
                    if wants_version {
                        self.authority_version(&zone).await
                    } else {
                        None
                    }
                },
                async {
                    match gateway_mandate {
                        Some(claims) => Some(self.consume_gateway_mandate(claims, now).await),
                        None => None,
                    }
                },
                registration.send(self, &jti),
            )
            .await;
            if !nonce_claimed {
                return Err(bad_envelope());
            }
            registration = Registration::Answered(registered);
            (version, consumed)
        } else {
            let version = early_version.filter(|_| named_zone.as_ref() == Some(&zone));
            (version, None)
        };
        // Reads open a unit only when one is needed: a warm bootstrap mint reads nothing.
        let mut reads = LazyUnit::new(&self.store, ZoneScope::Zone(zone.clone()));
        if let Some(subject) = &subject {
            let claims = &subject.claims;
            let Some(sid) = Some(claims.sid.clone()).filter(|s| !s.is_empty()) else {
                return Err(Error::forbidden(
                    "invalid_token",
                    "missing token authority record",
                ));
            };
            if !req.session_id.is_empty() && req.session_id != sid {
                return Err(denied("authority record mismatch"));
            }
            let record = self
                .authority_record(&mut reads, &zone, &sid, version, now)
                .await?;
            let Some(record) = record.filter(|r| r.is_live(now)) else {
                return Err(denied("authority record inactive or expired"));
            };
            if record.subject_id != claims.sub {
                return Err(denied("authority record subject mismatch"));
            }
            if claims.client_id != caller.app.id.as_str() {
                return Err(denied("authority record client mismatch"));
            }
            req.session_id = sid;
            if let Some(consumed) = consumed.take() {
                consumed?;
            }
            fill(
                &mut req.agent_session_id,
                claims.agent_session_id.as_deref(),
                "Session mismatch",
            )?;
            fill(
                &mut req.delegation_edge_id,
                claims.delegation_edge_id.as_deref(),
                "delegation edge mismatch",
            )?;
        }

        // §3.6: authority record, Session and Delegation references.
        if !req.session_id.is_empty() && subject.is_none() {
            let record = self
                .authority_record(&mut reads, &zone, &req.session_id, version, now)
                .await?;
            match record {
                Some(r) if r.is_live(now) => {
                    if r.session_type != SessionType::Application
                        || r.subject_id != caller.app.id.as_str()
                    {
                        return Err(denied("authority record not owned by caller"));
                    }
                }
                _ => return Err(denied("authority record inactive or expired")),
            }
        }
        let mut ttl = match req.ttl_seconds {
            None => DEFAULT_TTL,
            Some(t) if t < 0 => return Err(invalid("ttl_seconds must be positive")),
            Some(t) => t,
        };
        let cap = if subject.is_some() {
            CAP_SUBJECT
        } else {
            CAP_DIRECT
        };
        if ttl > cap {
            return Err(invalid("ttl_seconds exceeds token TTL cap"));
        }
        let delegation = if !req.delegation_edge_id.is_empty() {
            let d = self
                .delegation(
                    &mut reads,
                    &zone,
                    &references::DelegationRequest {
                        edge_id: &req.delegation_edge_id,
                        agent_session_id: &req.agent_session_id,
                        caller: caller.app.id.as_str(),
                        requested_scopes: &requested_scopes,
                        ttl_seconds: req.ttl_seconds,
                    },
                    version,
                    now,
                )
                .await?;
            ttl = references::clamp_ttl(ttl, &d, now)?;
            Some(d)
        } else {
            None
        };
        let own_session = if delegation.is_none() && !req.agent_session_id.is_empty() {
            Some(
                references::check_own_session(
                    reads.get().await?,
                    &zone,
                    &req.agent_session_id,
                    caller.app.id.as_str(),
                    now,
                )
                .await?,
            )
        } else {
            None
        };
        let governed = delegation
            .as_ref()
            .map(|d| d.target.clone())
            .or(own_session);
        if caller.control {
            ttl = control_max_ttl(&caller.app).map_or(ttl, |m| ttl.min(m));
        }

        let use_ = if subject.is_some() || caller.control {
            MandateUse::Resource
        } else if !req.agent_session_id.is_empty() && !req.delegation_edge_id.is_empty() {
            MandateUse::Gateway
        } else {
            MandateUse::Session
        };
        if req.resources.is_empty() {
            return Err(invalid("at least one resource is required"));
        }

        // §8: the request's binding, taken from the bundle read before evaluation.
        let hold_key = self.hold_key(
            &req,
            &caller,
            &zone,
            subject.as_ref(),
            governed.as_ref(),
            &requested_scopes,
            &bundle,
        );
        let retry = if req.approval_id.is_empty() {
            None
        } else {
            Some(
                self.resolve_retry(
                    reads.get().await?,
                    &hold_key,
                    &req.approval_id,
                    request_id,
                    now,
                )
                .await?,
            )
        };

        // §3.7: resources in sorted order.
        let mut granted: Vec<Resource> = Vec::new();
        let mut last_reason: Option<String> = None;
        let mut gates: Vec<Value> = Vec::new();
        let ctx = Evidence {
            challenge_resolved: retry.is_some(),
            sts: self,
            zone: &zone,
            request_id,
            caller: &caller,
            req: &req,
            scopes: &requested_scopes,
            delegation: delegation.as_ref(),
            psv: bundle.policy_set_version_id.as_deref(),
            manifest: Some(bundle.manifest_sha256.as_str()),
        };
        for key in &req.resources {
            let resource = self.find_resource(&mut reads, &zone, key, now).await?;
            let Some(resource) = resource else {
                ctx.skip(key, "resource_not_found");
                continue;
            };
            if let Some(r) = self
                .resource_step(
                    &ctx,
                    &resource,
                    gateway,
                    subject.as_ref(),
                    governed.as_ref(),
                    &bundle.bundle,
                    now,
                    &mut last_reason,
                    &mut gates,
                    &mut registration,
                    &jti,
                )
                .await?
            {
                granted.push(r);
            }
        }
        // The loop only read; what follows may write in its own units (the hold), so this
        // unit ends here and the mint opens a fresh one (the memory store serialises units).
        drop(reads);
        let (mut approved, reissue) = match retry {
            Some(Retry::Approved(hold)) => (Some(hold), None),
            Some(Retry::Reissue(hold)) => (None, Some(hold)),
            None => (None, None),
        };
        if !gates.is_empty() && approved.is_none() && reissue.is_none() {
            approved = Some(self.hold_for(&hold_key, &gates, request_id, now).await?);
        }
        if granted.is_empty() {
            return Err(policy_denied(last_reason.as_deref()));
        }
        if subject.is_some() && !gateway {
            return Err(denied("resource exchanges must use the Gateway"));
        }

        // Upstream directives (Gateway only), before anything is written; from the row caches
        // when fresh, so a warm exchange reads nothing here.
        let mut reads = LazyUnit::new(&self.store, ZoneScope::Zone(zone.clone()));
        let upstreams = if gateway {
            let mut map = Map::new();
            for r in &granted {
                map.insert(
                    r.identifier.clone(),
                    self.directive(&mut reads, &ctx, r).await?,
                );
            }
            Some(map)
        } else {
            None
        };

        // §3.9: authority record, claims, jti, signature. A re-issue mints for the record the
        // hold was consumed into and inserts nothing.
        let sid = match reissue
            .as_ref()
            .and_then(|h| h.consumed_authority_record_id.clone())
        {
            Some(existing) => {
                let record = reads
                    .get()
                    .await?
                    .get_authority_record(&zone, &existing)
                    .await?;
                let left = record.filter(|r| r.is_live(now)).map_or(0, |r| {
                    (r.expires_at.unix_micros() - now.unix_micros()) / 1_000_000
                });
                if left <= 0 {
                    return Err(super::approvals::no_longer_valid());
                }
                ttl = ttl.min(left);
                existing
            }
            None => self.ids.new_id(),
        };
        let target: Vec<String> = granted.iter().map(|r| r.identifier.clone()).collect();
        let sub = subject
            .as_ref()
            .map(|s| s.claims.sub.clone())
            .unwrap_or_else(|| caller.app.id.to_string());
        let sub_type = match &subject {
            Some(s) if s.claims.sub_type == SubType::User => SubType::User,
            _ => SubType::Application,
        };
        let root_sid = match (&use_, &subject) {
            (MandateUse::Session, _) => sid.clone(),
            (_, Some(s)) => [&s.claims.root_sid, &s.claims.sid]
                .into_iter()
                .find(|v| !v.is_empty())
                .cloned()
                .unwrap_or_else(|| sid.clone()),
            (_, None) => sid.clone(),
        };
        let iat = now.unix_seconds();
        let record = AuthorityRecord {
            id: sid.clone(),
            zone_id: zone.clone(),
            session_type: if sub_type == SubType::User {
                SessionType::User
            } else {
                SessionType::Application
            },
            subject_id: sub.clone(),
            client_id: caller.app.id.to_string(),
            parent_id: match (&use_, &subject) {
                (MandateUse::Resource, Some(s)) => Some(s.claims.sid.clone()),
                _ => None,
            },
            status: RecordStatus::Active,
            expires_at: Timestamp::from_unix_micros((iat + ttl) * 1_000_000),
            authenticated_at: now,
            claims_json: None,
            revoked_at: None,
            revoked_reason: None,
            created_at: now,
        };
        // The reads end before the write (the memory store serialises units).
        drop(reads);
        let write_failed = |e: crate::StoreError| {
            issuance_failed("authority record creation failed").with_detail(e.to_string())
        };
        match (&reissue, &approved) {
            (Some(hold), _) => self.reissued(hold, request_id),
            // A consumed hold must stay consumed: the record and the hold commit together, and
            // durably. Any refused write ends the request, so no per-write savepoint.
            (None, Some(hold)) => {
                let mut uow = self.store.begin(&ZoneScope::Zone(zone.clone())).await?;
                uow.abandon_on_write_error();
                uow.save_authority_record(&record)
                    .await
                    .map_err(write_failed)?;
                self.consume(&mut uow, &hold.id, &sid, request_id, now)
                    .await?;
                uow.commit().await.map_err(write_failed)?;
            }
            // The record alone may be committed with concurrent mints' and without waiting for
            // the disk (`Store::insert_minted_record`): losing it to a crash only makes its
            // mandates fail wherever records are checked.
            (None, None) => self
                .store
                .insert_minted_record(&record)
                .await
                .map_err(write_failed)?,
        }
        if let (None, Some(version)) = (&reissue, version) {
            if use_ != MandateUse::Resource {
                // Read before the commit, so before the record could be revoked.
                self.keep_record(&record, version, now);
            }
        }

        let scope = if req.scope.is_empty() {
            match (&use_, &subject) {
                (MandateUse::Resource, Some(s)) => s.claims.scope.clone(),
                _ => String::new(),
            }
        } else {
            req.scope.clone()
        };
        let (delegation_edge_id, source_session_id, target_session_id) = match &delegation {
            Some(d) => (
                Some(d.edge.id.clone()),
                Some(d.edge.source_session_id.clone()),
                Some(d.edge.target_session_id.clone()),
            ),
            None => (None, None, None),
        };
        let claims = MandateClaims {
            iss: self.config.issuer.clone(),
            sub,
            aud: if use_ == MandateUse::Resource {
                target.clone()
            } else {
                vec![self.config.issuer.clone()]
            },
            exp: iat + ttl,
            iat,
            jti: jti.clone(),
            zone_id: zone.to_string(),
            client_id: caller.app.id.to_string(),
            scope: scope.clone(),
            sid: sid.clone(),
            root_sid,
            use_,
            sub_type,
            target: target.clone(),
            agent_session_id: Some(req.agent_session_id.clone()).filter(|s| !s.is_empty()),
            delegation_edge_id,
            source_session_id,
            target_session_id,
            delegation_path: delegation
                .as_ref()
                .map(|d| d.path.clone())
                .unwrap_or_default(),
            delegation_chain: delegation
                .as_ref()
                .map(|d| {
                    d.chain
                        .iter()
                        .map(|h| DelegationHop {
                            application_id: h.application_id.clone(),
                            agent_session_id: h.agent_session_id.clone(),
                            delegation_edge_id: h.delegation_edge_id.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            hop_count: delegation.as_ref().map_or(0, |d| d.path.len() as u32),
            delegation_graph_epoch: delegation.as_ref().map_or(0, |d| d.epoch.max(0) as u64),
        };
        let registered = match registration {
            Registration::Answered(registered) => registered,
            pending => pending.send(self, &jti).await,
        };
        let access_token = self
            .sign_registered(&zone, &claims, registered, request_id)
            .await?;
        Ok(Minted {
            access_token,
            expires_in: ttl,
            scope,
            target_resources: target,
            upstreams,
        })
    }

    /// Registers the mandate's `jti` once (§3.9) and signs it with the zone's newest key. A
    /// `jti` collision is an anomaly worth evidence; it and a registry failure both refuse to
    /// issue.
    pub(crate) async fn issue(
        &self,
        zone: &ZoneId,
        claims: &MandateClaims,
        request_id: &str,
    ) -> Result<String, Error> {
        let registered = self
            .register_jti(
                &claims.jti,
                &claims.client_id,
                claims.iat,
                claims.exp - claims.iat,
            )
            .await;
        self.sign_registered(zone, claims, registered, request_id)
            .await
    }

    /// Claims `jti` in the registry for `lifetime` seconds (at least one): `true` when this
    /// call registered it.
    async fn register_jti(
        &self,
        jti: &str,
        client_id: &str,
        iat: i64,
        lifetime: i64,
    ) -> Result<bool, ExpiringKeysError> {
        self.expiring
            .set_if_absent(
                &format!("audit:jti:{jti}"),
                &format!("{client_id}|{iat}"),
                lifetime.max(1) as u64,
            )
            .await
    }

    /// Signs `claims`, whose `jti` registration answered `registered` (and whose lifetime it
    /// covers), with the zone's newest key.
    async fn sign_registered(
        &self,
        zone: &ZoneId,
        claims: &MandateClaims,
        registered: Result<bool, ExpiringKeysError>,
        request_id: &str,
    ) -> Result<String, Error> {
        match registered {
            Ok(true) => {}
            Ok(false) => {
                self.emit(anomaly(
                    zone,
                    request_id,
                    &claims.jti,
                    self.clock.now(),
                    &self.ids.new_id(),
                ));
                return Err(issuance_failed("token issuance failed"));
            }
            Err(e) => {
                return Err(issuance_failed("token issuance failed").with_detail(e.to_string()))
            }
        }
        let (kid, signer) = self.keys.signer(zone).await?;
        crate::mandate::jws::encode(&kid, claims, signer.as_ref())
            .map_err(|e| issuance_failed("token issuance failed").with_detail(e.to_string()))
    }

    /// §3.3: the calling application.
    async fn authenticate(
        &self,
        req: &TokenRequest,
        gateway: bool,
        now: Timestamp,
    ) -> Result<Caller, Error> {
        let Ok(app_id) = ApplicationId::parse(&req.application_id) else {
            return Err(self.auth_failure(req, gateway, now).await);
        };
        if gateway && req.subject.is_none() {
            return Err(invalid_client());
        }
        let secret = req.client_secret.as_deref();
        if req.zone_id.is_empty() {
            // The control-key path: a global lookup allowed only for a control exchange.
            let mut uow = self.store.begin(&ZoneScope::All).await?;
            let app = uow.find_application_any_zone(&app_id).await?;
            drop(uow);
            let eligible = app.as_ref().is_some_and(|a| {
                live_app(a, now)
                    && a.traits.iter().any(|t| t == "control:invoke")
                    && req.subject.is_none()
                    && req.session_id.is_empty()
                    && req.agent_session_id.is_empty()
                    && req.delegation_edge_id.is_empty()
                    && !req.resources.is_empty()
                    && req
                        .resources
                        .iter()
                        .all(|r| *r == self.config.control_audience)
                    && !req.scopes().is_empty()
                    && req.scopes().iter().all(|s| s.starts_with("control:"))
            });
            let app = match app {
                Some(a) if eligible && !gateway => a,
                _ => {
                    let _ = self.secrets.verify(secret.unwrap_or(""), None, now).await;
                    return Err(self.auth_failure(req, gateway, now).await);
                }
            };
            if !self
                .secrets
                .verify(secret.unwrap_or(""), app.client_secret_hash.as_deref(), now)
                .await
            {
                return Err(self.auth_failure(req, gateway, now).await);
            }
            let control = control_key_eligible(&app, req, now);
            return Ok(Caller {
                zone: app.zone_id.clone(),
                app,
                control,
            });
        }
        let Ok(zone) = ZoneId::parse(&req.zone_id) else {
            return Err(self.auth_failure(req, gateway, now).await);
        };
        let app = self.application(&zone, &app_id, now).await?;
        let Some(app) = app.filter(|a| live_app(a, now)) else {
            if !gateway {
                if let Some(actual) = self.zone_of(&app_id, secret, now).await? {
                    return Err(Error::forbidden(
                        "zone_invalid",
                        format!(
                            "application is registered in zone {actual} but the request targeted \
                             zone {zone}; use the application's own zone_id"
                        ),
                    ));
                }
            } else {
                return Err(invalid_client());
            }
            return Err(self.auth_failure(req, gateway, now).await);
        };
        if !gateway
            && !self
                .secrets
                .verify(secret.unwrap_or(""), app.client_secret_hash.as_deref(), now)
                .await
        {
            return Err(self.auth_failure(req, gateway, now).await);
        }
        let control = req.resources.contains(&self.config.control_audience)
            && control_key_eligible(&app, req, now);
        Ok(Caller { app, zone, control })
    }

    /// The error for a failed authentication; non-Gateway failures count toward the block.
    async fn auth_failure(&self, req: &TokenRequest, gateway: bool, now: Timestamp) -> Error {
        if gateway {
            invalid_client()
        } else {
            self.failures.fail(&req.application_id, now).await
        }
    }

    /// Where an application lives when it is not in the requested zone, disclosed only to a
    /// caller holding its secret.
    async fn zone_of(
        &self,
        app_id: &ApplicationId,
        secret: Option<&str>,
        now: Timestamp,
    ) -> Result<Option<ZoneId>, Error> {
        let mut uow = self.store.begin(&ZoneScope::All).await?;
        let app = uow.find_application_any_zone(app_id).await?;
        drop(uow);
        let Some(app) = app.filter(|a| live_app(a, now)) else {
            return Ok(None);
        };
        let ok = self
            .secrets
            .verify(secret.unwrap_or(""), app.client_secret_hash.as_deref(), now)
            .await;
        Ok(ok.then_some(app.zone_id))
    }

    /// §3.4 token checks.
    async fn verify_subject(
        &self,
        token: &str,
        zone: &ZoneId,
        gateway: bool,
    ) -> Result<Subject, Error> {
        let kid = crate::mandate::verify::peek_kid(token)
            .map_err(|e| invalid_subject().with_detail(format!("{e:?}")))?;
        let keys = self
            .keys
            .verification_keys(zone, &kid)
            .await
            .map_err(|e| invalid_subject().with_detail(e.to_string()))?;
        let expected_use = if gateway {
            MandateUse::Gateway
        } else {
            MandateUse::Session
        };
        let uses = [expected_use];
        let expectations =
            crate::mandate::verify::Expectations::new(&self.config.issuer, zone.as_str(), &uses);
        let (claims, raw) = crate::mandate::verify::verify_mandate_raw(
            token,
            &keys,
            &expectations,
            self.es256.as_ref(),
            self.clock.now().unix_seconds(),
        )
        .map_err(|e| invalid_subject().with_detail(format!("{e:?}")))?;
        let Value::Object(raw) = raw else {
            return Err(invalid_subject());
        };
        Ok(Subject { claims, raw })
    }

    /// The application row, from the row cache when fresh.
    async fn application(
        &self,
        zone: &ZoneId,
        id: &ApplicationId,
        now: Timestamp,
    ) -> Result<Option<Application>, Error> {
        let key = (zone.clone(), id.clone());
        if let Some(app) = self.apps.get(&key, now) {
            return Ok(Some(app));
        }
        let mut uow = self.store.begin(&ZoneScope::Zone(zone.clone())).await?;
        let app = uow.get_application(zone, id).await?;
        drop(uow);
        if let Some(app) = &app {
            self.apps
                .put(key, app.clone(), now.plus_millis(super::ROW_CACHE_MS), now);
        }
        Ok(app)
    }

    /// The §8 key and binding of this request.
    #[allow(clippy::too_many_arguments)]
    fn hold_key(
        &self,
        req: &TokenRequest,
        caller: &Caller,
        zone: &ZoneId,
        subject: Option<&Subject>,
        governed: Option<&crate::authority::AgentSession>,
        scopes: &[String],
        bundle: &crate::policy::LoadedBundle,
    ) -> HoldKey {
        let principal = subject
            .map(|s| s.claims.sub.clone())
            .unwrap_or_else(|| caller.app.id.to_string());
        let psv = bundle.policy_set_version_id.clone().unwrap_or_default();
        let contract_sha = crate::policy::decision_contract_sha256();
        let binding = crate::approval::binding(&crate::approval::BindingInput {
            resources: &req.resources,
            scopes,
            principal: &principal,
            authority_record: &req.session_id,
            session: &req.agent_session_id,
            delegation: &req.delegation_edge_id,
            application: caller.app.id.as_str(),
            policy_set_version: &psv,
            policy_manifest: &bundle.manifest_sha256,
            contract_version: crate::policy::DECISION_CONTRACT_VERSION,
            contract_sha,
        });
        let labels = governed.map(|s| s.labels.clone()).unwrap_or_default();
        let mut metadata = Map::new();
        metadata.insert("requested_scopes".into(), json!(scopes));
        metadata.insert("resources".into(), json!(req.resources));
        if !req.agent_session_id.is_empty() {
            metadata.insert("agent_session_id".into(), json!(req.agent_session_id));
        }
        if !labels.is_empty() {
            metadata.insert("agent_labels".into(), json!(labels));
        }
        if !req.delegation_edge_id.is_empty() {
            metadata.insert("delegation_edge_id".into(), json!(req.delegation_edge_id));
        }
        metadata.insert("policy_set_version_id".into(), json!(psv));
        metadata.insert("policy_manifest_sha".into(), json!(bundle.manifest_sha256));
        metadata.insert(
            "decision_contract_version".into(),
            json!(crate::policy::DECISION_CONTRACT_VERSION),
        );
        metadata.insert("decision_contract_sha".into(), json!(contract_sha));
        HoldKey {
            zone: zone.clone(),
            principal,
            session_id: req.session_id.clone(),
            binding,
            application_id: caller.app.id.to_string(),
            agent_session_id: req.agent_session_id.clone(),
            subject_anchor: subject
                .filter(|s| s.claims.sub_type == SubType::User)
                .map(|s| s.claims.sub.clone()),
            metadata,
        }
    }

    /// A `use=gateway` mandate is single-use (`spec/sts.md §3.5c`): the Gateway enforces it
    /// with its own JTI registry, and the STS claims the `jti` too, so a replayed mandate is
    /// refused even if it reaches the exchange by another path.
    async fn consume_gateway_mandate(
        &self,
        claims: &MandateClaims,
        now: Timestamp,
    ) -> Result<(), Error> {
        let ttl = (claims.exp - now.unix_seconds()).max(1) as u64;
        match self
            .expiring
            .set_if_absent(
                &format!("caracal:sts:subject-jti:{}", claims.jti),
                &claims.client_id,
                ttl,
            )
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(invalid_subject().with_detail("gateway mandate already exchanged")),
            Err(e) => Err(issuance_failed("token issuance failed").with_detail(e.to_string())),
        }
    }

    /// A resource of the zone by identifier or row id, unarchived; from the row cache when
    /// fresh.
    async fn find_resource(
        &self,
        reads: &mut LazyUnit<'_>,
        zone: &ZoneId,
        key: &str,
        now: Timestamp,
    ) -> Result<Option<Resource>, Error> {
        let cache_key = (zone.clone(), key.to_owned());
        if let Some(r) = self.resources.get(&cache_key, now) {
            return Ok(Some(r));
        }
        let uow = reads.get().await?;
        let mut found = uow.find_resource_by_identifier(zone, key).await?;
        if found.is_none() {
            if let Ok(id) = ResourceId::parse(key) {
                found = uow
                    .get_resource(zone, &id)
                    .await?
                    .filter(|r| r.archived_at.is_none());
            }
        }
        if let Some(r) = &found {
            self.resources.put(
                cache_key,
                r.clone(),
                now.plus_millis(super::ROW_CACHE_MS),
                now,
            );
        }
        Ok(found)
    }

    #[allow(clippy::too_many_arguments)]
    async fn resource_step(
        &self,
        ctx: &Evidence<'_>,
        resource: &Resource,
        gateway: bool,
        subject: Option<&Subject>,
        governed: Option<&crate::authority::AgentSession>,
        bundle: &crate::policy::PolicyBundle,
        now: Timestamp,
        last_reason: &mut Option<String>,
        gates: &mut Vec<Value>,
        registration: &mut Registration,
        jti: &str,
    ) -> Result<Option<Resource>, Error> {
        let id = resource.identifier.as_str();
        let req = ctx.req;
        // 2. Scopes.
        let mut allowed: Vec<&str> = resource.scopes.iter().map(String::as_str).collect();
        if resource.upstream_url.is_some() {
            allowed.push(LIFECYCLE_SCOPE);
        }
        if !ctx.scopes.iter().all(|s| allowed.contains(&s.as_str())) {
            ctx.skip(id, "scope_mismatch");
            return Ok(None);
        }
        // 3. Delegation confinement.
        if let Some(d) = ctx.delegation {
            let row_ok = d
                .edge
                .resource_id
                .as_deref()
                .is_none_or(|rid| rid == resource.id.as_str());
            let list_ok = d.constraints.resources.is_empty()
                || d.constraints.resources.iter().any(|r| r == id);
            if !row_ok || !list_ok {
                ctx.skip(id, "resource_outside_delegation");
                return Ok(None);
            }
        }
        // 4. Operation floor (Gateway, enforced resources).
        if gateway && resource.operation_enforcement == "enforced" {
            let method = req.request_method.to_ascii_uppercase();
            let presented: Vec<String> = subject
                .map(|s| form::split_scopes(&s.claims.scope))
                .unwrap_or_default();
            let op = resource.operations.iter().find(|o| {
                o.method.to_ascii_uppercase() == method && o.path.trim() == req.request_path
            });
            match op {
                Some(op) if presented.contains(&op.scope) => {}
                Some(op) => {
                    ctx.skip(id, "operation_not_permitted");
                    return Err(Error::forbidden(
                        "operation_not_permitted",
                        format!(
                            "operation {method} {} on resource {id} requires scope {}, which the \
                             presented mandate does not carry",
                            req.request_path, op.scope
                        ),
                    ));
                }
                None => {
                    ctx.skip(id, "operation_not_permitted");
                    return Err(Error::forbidden(
                        "operation_not_permitted",
                        format!(
                            "operation {method} {} is not declared on resource {id}; declare it \
                             on the resource or set operation_enforcement to transport_uniform",
                            req.request_path
                        ),
                    ));
                }
            }
        }
        // 5. Mint rate limit; the first hit carries the `jti` registration along.
        let key = format!("rl:{}:{}:{}", ctx.zone, resource.id, ctx.caller.app.id);
        let window = now.unix_seconds().div_euclid(60);
        let (hit, answered) = match &*registration {
            Registration::Pending { .. } => {
                let (hit, answered) =
                    join(self.limiter.hit(&key, window), registration.send(self, jti)).await;
                (hit, Some(answered))
            }
            Registration::Answered(_) => (self.limiter.hit(&key, window).await, None),
        };
        if let Some(answered) = answered {
            *registration = Registration::Answered(answered);
        }
        match hit {
            Ok(n) if n <= self.config.mint_limit_per_min => {}
            _ => {
                ctx.skip(id, "rate_limited");
                return Ok(None);
            }
        }
        // 6–7. Control key.
        if id == self.config.control_audience {
            if ctx.caller.control {
                ctx.decided(id, true, &[json!({"policy":"control-key"})], &[]);
                return Ok(Some(resource.clone()));
            }
            ctx.skip(id, "control_resource_requires_control_key");
            return Err(denied(
                "the control resource is mintable only by a control key: an application with \
                 the control:invoke trait, no subject token, Session or delegation, and only \
                 control:* scopes it is granted",
            ));
        }
        // 9. Policy.
        let input = self.decision_input(ctx, resource, gateway, subject, governed);
        let decision = bundle.decide(&input).map_err(|e| {
            ctx.policy_error(id, &e.to_string());
            Error::new(ErrorKind::Unavailable, "policy_eval_failed")
                .describe("policy evaluation unavailable")
                .with_detail(e.to_string())
        })?;
        ctx.decided(
            id,
            decision.allow,
            &decision.determining_policies,
            &decision.diagnostics,
        );
        if decision.allow {
            if !ctx.challenge_resolved {
                if let Some(tiers) = decision.step_up_tiers() {
                    gates.extend(tiers.iter().cloned());
                }
            }
            Ok(Some(resource.clone()))
        } else {
            *last_reason = decision.deny_reason().map(str::to_owned);
            Ok(None)
        }
    }

    fn decision_input(
        &self,
        ctx: &Evidence<'_>,
        resource: &Resource,
        gateway: bool,
        subject: Option<&Subject>,
        governed: Option<&crate::authority::AgentSession>,
    ) -> DecisionInput {
        use crate::policy::{
            Action, Context, DelegationEdge, Principal, Resource as PolicyResource, SessionRef,
        };
        let req = ctx.req;
        let app = &ctx.caller.app;
        let present = |v: &str| Some(v.to_owned()).filter(|v| !v.is_empty());
        let mut actor_claims = Map::new();
        actor_claims.insert("caracal_client_id".into(), json!(app.id.as_str()));
        DecisionInput {
            schema_version: crate::policy::INPUT_SCHEMA_VERSION.to_owned(),
            principal: Principal {
                kind: "Application".into(),
                id: app.id.to_string(),
                zone_id: ctx.zone.to_string(),
                registration_method: Some(app.registration_method.as_str().to_owned()),
                agent_session_id: present(&req.agent_session_id),
                lifecycle: governed.map(|s| s.lifecycle.as_str().to_owned()),
                labels: governed.map(|s| s.labels.clone()).filter(|l| !l.is_empty()),
            },
            resource: PolicyResource {
                kind: "Resource".into(),
                id: resource.id.to_string(),
                identifier: resource.identifier.clone(),
                scopes: resource.scopes.clone(),
            },
            action: Action {
                id: "TokenExchange".into(),
                method: gateway.then(|| req.request_method.to_ascii_uppercase()),
                path: gateway.then(|| req.request_path.clone()),
            },
            session: present(&req.session_id).map(|id| SessionRef { id }),
            delegation_edge: ctx.delegation.map(|d| DelegationEdge {
                id: d.edge.id.clone(),
                source_session_id: Some(d.edge.source_session_id.clone()),
                target_session_id: Some(d.edge.target_session_id.clone()),
                issuer_application_id: Some(d.edge.issuer_application_id.clone()),
                receiver_application_id: Some(d.edge.receiver_application_id.clone()),
                resource_id: d.edge.resource_id.clone(),
                scopes: Some(d.edge.scopes.clone()),
                edge_version: Some(d.edge.edge_version),
                path: Some(d.path.clone()),
                graph_epoch: Some(d.epoch),
                constraints_json: Some(Value::Object(d.edge.constraints_json.clone())),
            }),
            context: Context {
                actor_claims,
                subject_claims: subject.map(|s| s.raw.clone()),
                trace_id: present(ctx.request_id),
                session_id: present(&req.session_id),
                agent_session_id: present(&req.agent_session_id),
                delegation_edge_id: present(&req.delegation_edge_id),
                challenge_resolved: ctx.challenge_resolved,
                requested_scopes: ctx.scopes.to_vec(),
            },
        }
    }

    async fn directive(
        &self,
        reads: &mut LazyUnit<'_>,
        ctx: &Evidence<'_>,
        resource: &Resource,
    ) -> Result<Value, Error> {
        let zone = ctx.zone;
        let now = self.clock.now();
        let provider = match &resource.credential_provider_id {
            None => None,
            Some(pid) => {
                let Ok(pid) = crate::ids::ProviderId::parse(pid) else {
                    return Err(super::directive::unavailable(
                        &resource.identifier,
                        "provider_unavailable",
                    ));
                };
                match self.provider(reads, zone, &pid, now).await? {
                    Some(p) if p.archived_at.is_none() => Some(p),
                    _ => {
                        return Err(super::directive::unavailable(
                            &resource.identifier,
                            "provider_unavailable",
                        ))
                    }
                }
            }
        };
        let mut secrets = BTreeMap::new();
        if let Some(p) = &provider {
            if !p.secret_config_keys.is_empty() {
                let reference = format!("zones/{zone}/providers/{}/secretConfig", p.id);
                if let Some(sealed) = self.sealed_secret(reads, &reference, now).await? {
                    let plain = self.sealer.open(&reference, &sealed.envelope)?;
                    secrets = serde_json::from_slice(&plain).map_err(|e| {
                        super::directive::unavailable(
                            &resource.identifier,
                            "credential_not_provisioned",
                        )
                        .with_detail(e.to_string())
                    })?;
                }
            }
        }
        super::directive::build(resource, provider.as_ref(), &secrets)
            .inspect_err(|_| ctx.skip(&resource.identifier, "provider_credential_unavailable"))
    }
}

impl Sts {
    /// A credential provider row, from the row cache when fresh.
    async fn provider(
        &self,
        reads: &mut LazyUnit<'_>,
        zone: &ZoneId,
        id: &crate::ids::ProviderId,
        now: Timestamp,
    ) -> Result<Option<crate::model::Provider>, Error> {
        let key = (zone.clone(), id.to_string());
        if let Some(p) = self.providers.get(&key, now) {
            return Ok(Some(p));
        }
        let found = reads.get().await?.get_provider(zone, id).await?;
        if let Some(p) = &found {
            self.providers
                .put(key, p.clone(), now.plus_millis(super::ROW_CACHE_MS), now);
        }
        Ok(found)
    }

    /// A sealed provider secret, from the row cache when fresh (still sealed: it is opened per
    /// request).
    async fn sealed_secret(
        &self,
        reads: &mut LazyUnit<'_>,
        reference: &str,
        now: Timestamp,
    ) -> Result<Option<crate::model::SealedSecret>, Error> {
        if let Some(sealed) = self.sealed.get(&reference.to_owned(), now) {
            return Ok(Some(sealed));
        }
        let found = reads.get().await?.get_secret(reference).await?;
        if let Some(sealed) = &found {
            self.sealed.put(
                reference.to_owned(),
                sealed.clone(),
                now.plus_millis(super::ROW_CACHE_MS),
                now,
            );
        }
        Ok(found)
    }
}

fn fill(field: &mut String, claim: Option<&str>, mismatch: &str) -> Result<(), Error> {
    let Some(claim) = claim.filter(|c| !c.is_empty()) else {
        return Ok(());
    };
    if field.is_empty() {
        *field = claim.to_owned();
        Ok(())
    } else if field == claim {
        Ok(())
    } else {
        Err(denied(mismatch))
    }
}

fn live_app(app: &Application, now: Timestamp) -> bool {
    app.archived_at.is_none() && app.expires_at.is_none_or(|e| e > now)
}

/// §3.7 step 6: whether this request is a control-key exchange for this application.
fn control_key_eligible(app: &Application, req: &TokenRequest, now: Timestamp) -> bool {
    let has = |t: &str| app.traits.iter().any(|x| x == t);
    if !has("control:invoke") {
        return false;
    }
    for t in &app.traits {
        if let Some(at) = t.strip_prefix("control:expires:") {
            match chrono::DateTime::parse_from_rfc3339(at) {
                Ok(at) if at.timestamp_micros() > now.unix_micros() => {}
                _ => return false,
            }
        }
    }
    let scopes = req.scopes();
    req.subject.is_none()
        && req.session_id.is_empty()
        && req.agent_session_id.is_empty()
        && req.delegation_edge_id.is_empty()
        && !scopes.is_empty()
        && scopes
            .iter()
            .all(|s| s.starts_with("control:") && has(&format!("control:scope:{s}")))
}

/// `control:max-ttl:<s>` (the smallest, when several are set).
fn control_max_ttl(app: &Application) -> Option<i64> {
    app.traits
        .iter()
        .filter_map(|t| t.strip_prefix("control:max-ttl:"))
        .filter_map(|s| s.parse::<i64>().ok())
        .filter(|s| *s > 0)
        .min()
}

fn anomaly(zone: &ZoneId, request_id: &str, jti: &str, now: Timestamp, id: &str) -> AuditEvent {
    let mut metadata = Map::new();
    metadata.insert("reason".into(), json!(format!("jti collision: {jti}")));
    AuditEvent {
        id: id.to_owned(),
        zone_id: zone.to_string(),
        event_type: "jti_collision".into(),
        request_id: request_id.to_owned(),
        decision: "deny".into(),
        policy_set_version_id: None,
        manifest_sha: None,
        evaluation_status: "anomaly".into(),
        determining_policies_json: None,
        diagnostics_json: None,
        metadata_json: Some(metadata),
        occurred_at: super::evidence::rfc3339_nanos(now),
    }
}

/// A unit of work opened on first use, so a request whose reads all hit caches never begins
/// one (a Postgres round trip, and the memory store's single writer slot).
pub(crate) struct LazyUnit<'a> {
    store: &'a std::sync::Arc<dyn crate::ports::Store>,
    scope: ZoneScope,
    unit: Option<Box<dyn crate::ports::UnitOfWork>>,
}

impl<'a> LazyUnit<'a> {
    fn new(store: &'a std::sync::Arc<dyn crate::ports::Store>, scope: ZoneScope) -> Self {
        Self {
            store,
            scope,
            unit: None,
        }
    }

    pub(crate) async fn get(&mut self) -> Result<&mut Box<dyn crate::ports::UnitOfWork>, Error> {
        if self.unit.is_none() {
            self.unit = Some(self.store.begin(&self.scope).await?);
        }
        // Just filled above when it was empty.
        self.unit
            .as_mut()
            .ok_or_else(|| Error::internal("unit of work unavailable"))
    }
}

/// The context every audit event of one request shares.
pub(crate) struct Evidence<'a> {
    /// An approved hold resolved this request: gates are skipped.
    challenge_resolved: bool,
    sts: &'a Sts,
    zone: &'a ZoneId,
    request_id: &'a str,
    caller: &'a Caller,
    req: &'a TokenRequest,
    scopes: &'a [String],
    delegation: Option<&'a Delegation>,
    psv: Option<&'a str>,
    manifest: Option<&'a str>,
}

impl Evidence<'_> {
    fn metadata(&self, resource: &str) -> Map<String, Value> {
        let app = &self.caller.app;
        let mut m = Map::new();
        m.insert("application_id".into(), json!(app.id.as_str()));
        m.insert("application_name".into(), json!(app.name));
        m.insert(
            "application_registration_method".into(),
            json!(app.registration_method.as_str()),
        );
        m.insert("resource".into(), json!(resource));
        m.insert("requested_scopes".into(), json!(self.scopes));
        for (name, value) in [
            ("session_id", &self.req.session_id),
            ("agent_session_id", &self.req.agent_session_id),
            ("delegation_edge_id", &self.req.delegation_edge_id),
        ] {
            if !value.is_empty() {
                m.insert(name.into(), json!(value));
            }
        }
        if !self.req.request_method.is_empty() {
            m.insert(
                "requested".into(),
                json!({"method": self.req.request_method.to_ascii_uppercase(), "path": self.req.request_path}),
            );
        }
        if let Some(d) = self.delegation {
            m.insert("agent_lifecycle".into(), json!(d.target.lifecycle.as_str()));
            m.insert("agent_labels".into(), json!(d.target.labels));
            m.insert("agent_depth".into(), json!(d.target.depth));
            if let Some(p) = &d.target.parent_id {
                m.insert("agent_parent_id".into(), json!(p));
            }
            m.insert(
                "delegation_chain".into(),
                Value::Array(
                    d.chain
                        .iter()
                        .map(|h| {
                            let mut hop = Map::new();
                            hop.insert("application_id".into(), json!(h.application_id));
                            if let Some(s) = &h.agent_session_id {
                                hop.insert("agent_session_id".into(), json!(s));
                            }
                            if let Some(e) = &h.delegation_edge_id {
                                hop.insert("delegation_edge_id".into(), json!(e));
                            }
                            Value::Object(hop)
                        })
                        .collect(),
                ),
            );
            m.insert("delegation_hop_count".into(), json!(d.path.len()));
            m.insert("delegation_graph_epoch".into(), json!(d.epoch));
        }
        m
    }

    fn event(&self, resource: &str, decision: &str, status: &str) -> AuditEvent {
        let now = self.sts.clock.now();
        AuditEvent {
            id: self.sts.ids.new_id(),
            zone_id: self.zone.to_string(),
            event_type: "token_exchange".into(),
            request_id: self.request_id.to_owned(),
            decision: decision.into(),
            policy_set_version_id: self.psv.map(str::to_owned),
            manifest_sha: self.manifest.map(str::to_owned),
            evaluation_status: status.into(),
            determining_policies_json: None,
            diagnostics_json: None,
            metadata_json: Some(self.metadata(resource)),
            occurred_at: super::evidence::rfc3339_nanos(now),
        }
    }

    /// A pre-policy deny: the reason is the evaluation status, both arrays null.
    fn skip(&self, resource: &str, reason: &str) {
        let mut e = self.event(resource, "deny", reason);
        if let Some(m) = e.metadata_json.as_mut() {
            m.insert("reason".into(), json!(reason));
        }
        self.sts.emit(e);
    }

    fn policy_error(&self, resource: &str, error: &str) {
        let mut e = self.event(resource, "deny", "policy_eval_failed");
        e.diagnostics_json = Some(vec![json!({"error": error})]);
        self.sts.emit(e);
    }

    fn decided(&self, resource: &str, allow: bool, determining: &[Value], diagnostics: &[Value]) {
        let mut e = self.event(resource, if allow { "allow" } else { "deny" }, "complete");
        e.determining_policies_json = Some(determining.to_vec());
        e.diagnostics_json = Some(diagnostics.to_vec());
        self.sts.emit(e);
    }
}
