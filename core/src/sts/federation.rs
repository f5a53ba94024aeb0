//! Federated users (`spec/sts.md §9`, exchange class d of §3.5): an application relays its end
//! user's `id_token` from an issuer the zone trusts, and gets back that user's `use=session`
//! mandate, the identity anchor for attribution, approvals and revocation.
//!
//! The application vouches for nothing beyond relaying the token: the zone's subject issuer row
//! is the trust decision, the issuer's signature is the identity proof, and the subject is
//! recorded verbatim. The mandate carries no scope, no target and no Session or delegation
//! claims: it authorizes nothing by itself.
//!
//! Key sets come through the [`IssuerKeys`] port and are cached for ten minutes per issuer row
//! and URL. An expired entry is never served: if the refetch fails, the exchange fails. Without
//! a fetcher (no egress wired) every federation is refused with a 401 that says so.

mod id_token;
mod key_set;
mod subject;

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::authority::{AuthorityRecord, RecordStatus, SessionType};
use crate::error::{Error, ErrorKind};
use crate::expiry_cache::ExpiryCache;
use crate::ids::{SubjectIssuerId, ZoneId};
use crate::mandate::{MandateClaims, MandateUse, SubType};
use crate::model::{Application, SubjectIssuer};
use crate::ports::{AuditEvent, IssuerKeys, ZoneScope};
use crate::time::Timestamp;

use self::key_set::KeySet;
use super::client_auth::invalid_client;
use super::exchange::{issuance_failed, Minted};
use super::form::{self, TokenRequest};
use super::Sts;

/// How long a fetched key set is trusted: a rotated issuer key is picked up within this, and a
/// stale document is never trusted past it.
const KEY_SET_TTL_MS: i64 = 10 * 60 * 1000;
/// Bound on cached key sets (20 issuers per zone across many zones).
const KEY_SET_CACHE_MAX: usize = 4_096;
/// §9 TTL: 900 s unless asked, at most 3600 s (a direct exchange's cap, §3.8).
const DEFAULT_TTL: i64 = 900;
const TTL_CAP: i64 = 3_600;
/// The determining policy of every federation allow.
const POLICY: &str = "caracal-subject-federation";

/// What a federation exchange may carry besides the identity token and the client's own
/// credentials: nothing.
const ONLY_THE_TOKEN: &str = "a subject federation exchange carries only the identity token: no \
    resources, scopes, actor, session, delegation, or challenge parameters";

/// The STS's federation state: the key-set fetcher, if egress is wired, and its cache.
pub(crate) struct Federation {
    fetcher: Option<Arc<dyn IssuerKeys>>,
    key_sets: ExpiryCache<(SubjectIssuerId, String), Arc<KeySet>>,
}

impl Federation {
    /// The same fetcher with an empty key-set cache of its own.
    pub(crate) fn fresh(&self) -> Self {
        Self {
            fetcher: self.fetcher.clone(),
            ..Self::default()
        }
    }
}

impl Default for Federation {
    fn default() -> Self {
        Self {
            fetcher: None,
            key_sets: ExpiryCache::new(KEY_SET_CACHE_MAX),
        }
    }
}

/// Why an identity token was refused: `reason` follows `invalid subject_token: ` in the
/// response; `detail` (a fetch failure's specifics) stays in the log and the audit evidence.
struct Rejection {
    reason: String,
    detail: Option<String>,
}

impl Rejection {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            detail: None,
        }
    }
}

impl Sts {
    /// Attaches the fetcher of external issuer key sets, enabling federation (§9).
    pub fn with_issuer_keys(mut self, keys: Arc<dyn IssuerKeys>) -> Self {
        self.federation.fetcher = Some(keys);
        self
    }

    /// Exchange class d: `req` carries an `id_token` subject and `app` has authenticated in
    /// `zone`.
    pub(crate) async fn federate(
        &self,
        req: &TokenRequest,
        app: &Application,
        zone: &ZoneId,
        gateway: bool,
        request_id: &str,
        now: Timestamp,
    ) -> Result<Minted, Error> {
        // Federation authenticates the application with its client secret. A Gateway envelope
        // skips that check and the Gateway never relays identity tokens, so such a request is
        // refused as unauthenticated rather than minting a user session on the envelope alone.
        if gateway {
            return Err(invalid_client());
        }
        let evidence = Evidence {
            sts: self,
            zone,
            app,
            request_id,
        };
        let extra = !req.resources.is_empty()
            || !req.scope.is_empty()
            || [
                &req.session_id,
                &req.agent_session_id,
                &req.delegation_edge_id,
                &req.approval_id,
            ]
            .iter()
            .any(|v| !v.is_empty());
        if extra {
            evidence.deny("subject_federation_invalid", None);
            return Err(form::malformed(ONLY_THE_TOKEN));
        }
        let token = req.subject.as_ref().map_or("", |s| s.token.as_str());
        let (sub, issuer) = match self.verify_id_token(zone, token, now).await? {
            Ok(verified) => verified,
            Err(rejection) => {
                let mut reason = rejection.reason.clone();
                if let Some(detail) = &rejection.detail {
                    reason = format!("{reason}: {detail}");
                }
                evidence.deny("subject_federation_rejected", Some(&reason));
                let mut err = Error::new(ErrorKind::Unauthenticated, "invalid_token")
                    .describe(format!("invalid subject_token: {}", rejection.reason));
                if let Some(detail) = rejection.detail {
                    err = err.with_detail(detail);
                }
                return Err(err);
            }
        };
        let ttl = match req.ttl_seconds {
            None => DEFAULT_TTL,
            Some(t) if t < 0 => return Err(form::malformed("ttl_seconds must be positive")),
            Some(t) if t > TTL_CAP => {
                return Err(form::malformed("ttl_seconds exceeds token TTL cap"))
            }
            Some(t) => t,
        };

        let sid = self.ids.new_id();
        let iat = now.unix_seconds();
        let record = AuthorityRecord {
            id: sid.clone(),
            zone_id: zone.clone(),
            session_type: SessionType::User,
            subject_id: sub.clone(),
            client_id: app.id.to_string(),
            parent_id: None,
            status: RecordStatus::Active,
            expires_at: Timestamp::from_unix_micros((iat + ttl) * 1_000_000),
            authenticated_at: now,
            // The issuer rides on the record so an operator can tell where a subject came from
            // without correlating audit events.
            claims_json: Some(json!({ "iss": issuer.issuer })),
            revoked_at: None,
            revoked_reason: None,
            created_at: now,
        };
        let mut uow = self.store.begin(&ZoneScope::Zone(zone.clone())).await?;
        uow.save_authority_record(&record).await.map_err(|e| {
            issuance_failed("authority record creation failed").with_detail(e.to_string())
        })?;
        uow.commit().await.map_err(|e| {
            issuance_failed("authority record creation failed").with_detail(e.to_string())
        })?;
        evidence.allow(&issuer.issuer, &sid);

        let claims = MandateClaims {
            iss: self.config.issuer.clone(),
            sub,
            aud: vec![self.config.issuer.clone()],
            exp: iat + ttl,
            iat,
            jti: self.ids.new_id(),
            zone_id: zone.to_string(),
            client_id: app.id.to_string(),
            scope: String::new(),
            sid: sid.clone(),
            root_sid: sid,
            use_: MandateUse::Session,
            sub_type: SubType::User,
            target: Vec::new(),
            agent_session_id: None,
            delegation_edge_id: None,
            source_session_id: None,
            target_session_id: None,
            delegation_path: Vec::new(),
            delegation_chain: Vec::new(),
            hop_count: 0,
            delegation_graph_epoch: 0,
        };
        let access_token = self.issue(zone, &claims, request_id).await?;
        Ok(Minted {
            access_token,
            expires_in: ttl,
            scope: String::new(),
            target_resources: Vec::new(),
            upstreams: None,
        })
    }

    /// The token's verified subject and the issuer row that vouched for it, or why not. The
    /// outer error is a failure of the STS itself (the store), not of the token.
    async fn verify_id_token(
        &self,
        zone: &ZoneId,
        token: &str,
        now: Timestamp,
    ) -> Result<Result<(String, SubjectIssuer), Rejection>, Error> {
        let unverified = match id_token::parse(token) {
            Ok(u) => u,
            Err(reason) => return Ok(Err(Rejection::new(reason))),
        };
        let Some(iss) = unverified.issuer() else {
            return Ok(Err(Rejection::new("subject token carries no issuer")));
        };
        // The lookup's unit of work ends before the key set is fetched: no transaction (and, on
        // the memory store, no store lock) is held across egress.
        let issuer = {
            let mut uow = self.store.begin(&ZoneScope::Zone(zone.clone())).await?;
            uow.find_subject_issuer(zone, iss).await?
        };
        let Some(issuer) = issuer else {
            return Ok(Err(Rejection::new(format!(
                "issuer {iss:?} is not trusted by this zone"
            ))));
        };
        let keys = match self.issuer_key_set(&issuer, now).await {
            Ok(keys) => keys,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let expect = id_token::Expect {
            issuer: &issuer.issuer,
            audience: &issuer.audience,
        };
        Ok(
            match unverified.verify(&keys, &expect, now.unix_seconds()) {
                Ok(sub) => Ok((sub, issuer)),
                Err(reason) => Err(Rejection::new(reason)),
            },
        )
    }

    /// The issuer's usable keys: cached, or fetched now.
    async fn issuer_key_set(
        &self,
        issuer: &SubjectIssuer,
        now: Timestamp,
    ) -> Result<Arc<KeySet>, Rejection> {
        let key = (issuer.id.clone(), issuer.jwks_url.clone());
        if let Some(keys) = self.federation.key_sets.get(&key, now) {
            return Ok(keys);
        }
        let Some(fetcher) = &self.federation.fetcher else {
            return Err(Rejection::new(
                "issuer key set unavailable: this STS has no egress for issuer key sets",
            ));
        };
        let document = fetcher
            .fetch(&issuer.jwks_url)
            .await
            .map_err(|e| Rejection {
                reason: "issuer key set unavailable".into(),
                detail: Some(e.to_string()),
            })?;
        let keys = Arc::new(key_set::parse(&document).map_err(Rejection::new)?);
        self.federation
            .key_sets
            .put(key, Arc::clone(&keys), now.plus_millis(KEY_SET_TTL_MS), now);
        Ok(keys)
    }
}

/// What every audit event of one federation exchange shares.
struct Evidence<'a> {
    sts: &'a Sts,
    zone: &'a ZoneId,
    app: &'a Application,
    request_id: &'a str,
}

impl Evidence<'_> {
    fn event(&self, decision: &str, status: &str, extra: &[(&str, Value)]) -> AuditEvent {
        let mut metadata = Map::new();
        metadata.insert("application_id".into(), json!(self.app.id.as_str()));
        metadata.insert("application_name".into(), json!(self.app.name));
        metadata.insert(
            "application_registration_method".into(),
            json!(self.app.registration_method.as_str()),
        );
        for (name, value) in extra {
            metadata.insert((*name).to_owned(), value.clone());
        }
        AuditEvent {
            id: self.sts.ids.new_id(),
            zone_id: self.zone.to_string(),
            event_type: "token_exchange".into(),
            request_id: self.request_id.to_owned(),
            decision: decision.into(),
            policy_set_version_id: None,
            manifest_sha: None,
            evaluation_status: status.into(),
            determining_policies_json: None,
            diagnostics_json: None,
            metadata_json: Some(metadata),
            occurred_at: super::evidence::rfc3339_nanos(self.sts.clock.now()),
        }
    }

    /// A pre-policy deny: the reason class is the evaluation status, both arrays null.
    fn deny(&self, status: &str, reason: Option<&str>) {
        let extra: Vec<(&str, Value)> = reason.map(|r| ("reason", json!(r))).into_iter().collect();
        self.sts.emit(self.event("deny", status, &extra));
    }

    /// The fixed allow of a verified federation.
    fn allow(&self, issuer: &str, session_id: &str) {
        let mut event = self.event(
            "allow",
            "complete",
            &[
                ("federated_user_issuer", json!(issuer)),
                ("session_id", json!(session_id)),
                ("subject_kind", json!("user")),
            ],
        );
        event.determining_policies_json = Some(vec![json!({ "policy": POLICY })]);
        event.diagnostics_json = Some(Vec::new());
        self.sts.emit(event);
    }
}

#[cfg(test)]
mod tests;
