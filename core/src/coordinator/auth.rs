//! Who may call the Coordinator (`spec/coordinator-gateway.md` A2): the bearer's form
//! (step 2), the mandate's signature and registered claims (step 5), then the Coordinator's
//! own rules on a verified mandate (steps 5–8: `use=session`, the lifecycle scope, the path
//! zone, a live application and authority record).
//!
//! The operator token (steps 3–4) is compared by the HTTP shell, which knows the routes it
//! opens; everything about a mandate is decided here. Every refusal of a token that did not
//! verify is the same `401 invalid_token`, whatever failed, so a caller learns nothing about
//! which check it tripped; the reason travels in the error's server-side `detail`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use crate::authority::AuthorityRecord;
use crate::coordinator::{Coordinator, IdentityGate, Principal};
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{is_path_id, ApplicationId, ZoneId};
use crate::mandate::{
    peek_kid, verify_mandate, Expectations, MandateClaims, MandateUse, LEEWAY_SECONDS,
};
use crate::model::Application;
use crate::ports::{CallerRows, Es256, UnitOfWork, ZoneKeySource};

/// Longest bearer accepted, in bytes (A2 step 2). A Coordinator mandate is well under 2 KiB.
pub const MAX_BEARER_BYTES: usize = 4096;

/// Every `use` the signature check lets through; [`check_claims`] then insists on
/// `session`, so a gateway or resource mandate is refused by one rule in one place.
const ANY_USE: &[MandateUse] = &[
    MandateUse::Session,
    MandateUse::Gateway,
    MandateUse::Resource,
];

/// `401 missing_token`: no `Bearer ` credential, an empty one, or one over 4096 bytes.
pub fn missing_token() -> Error {
    Error::new(ErrorKind::Unauthenticated, "missing_token")
}

/// `401 invalid_token`, with the reason kept server-side.
pub fn invalid_token(reason: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unauthenticated, "invalid_token").with_detail(reason)
}

/// `403 operator_token_required`: `/metrics` or `/stats` without the operator token.
pub fn operator_token_required() -> Error {
    Error::new(ErrorKind::Forbidden, "operator_token_required")
}

fn identity_revoked(reason: &str) -> Error {
    Error::new(ErrorKind::Unauthenticated, "identity_revoked").with_detail(reason.to_owned())
}

/// The credential of an `Authorization` header (A2 step 2): it must start with `Bearer `
/// (case-sensitive, as upstream compares it), and the trimmed rest must be non-empty and at
/// most [`MAX_BEARER_BYTES`]; else `401 missing_token`.
pub fn bearer_token(authorization: Option<&str>) -> Result<&str> {
    let token = authorization
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(missing_token)?;
    if token.is_empty() || token.len() > MAX_BEARER_BYTES {
        return Err(missing_token());
    }
    Ok(token)
}

/// The `zone_id` an unverified token claims, if its payload is a JSON object whose `zone_id`
/// is a path id. It only picks which zone's keys to verify with: the verified claims must then
/// name the same zone, so a forged peek cannot select another zone's keys to any effect.
pub fn peek_zone(token: &str) -> Option<ZoneId> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let zone = claims.get("zone_id")?.as_str()?;
    if !is_path_id(zone) {
        return None;
    }
    ZoneId::parse(zone).ok()
}

/// Verifies an STS mandate (A2 step 5): the zone it claims selects the verification keys;
/// ES256 over those keys, `iss` equal to `issuer`, `aud` containing it, the 60 s leeway, and
/// the verified `zone_id` equal to the peeked one. Any failure, including keys that cannot be
/// had, is `401 invalid_token`.
pub async fn verify_bearer(
    token: &str,
    keys: &dyn ZoneKeySource,
    es256: &dyn Es256,
    issuer: &str,
    now_unix: i64,
) -> Result<MandateClaims> {
    let zone = peek_zone(token).ok_or_else(|| invalid_token("token names no usable zone_id"))?;
    let kid = peek_kid(token).map_err(|e| invalid_token(e.to_string()))?;
    let set = keys.verifying_keys(&zone, &kid).await.map_err(|e| {
        invalid_token(format!(
            "verification keys of zone {zone} unavailable: {}",
            e.detail.as_deref().unwrap_or(e.code)
        ))
    })?;
    verify_mandate(
        token,
        &set,
        &Expectations::new(issuer, zone.as_str(), ANY_USE),
        es256,
        now_unix,
    )
    .map_err(|e| invalid_token(e.to_string()))
}

/// The mandate rules of A2 steps 5–7 that need no store, in the contract's order:
/// - `use` other than `session`, or an empty `sub` → `401 invalid_token` (a gateway or resource
///   mandate never opens the Coordinator);
/// - `scope` (space separated) without `lifecycle_scope` → `403 missing_scope`;
/// - `path_zone` (as the route received it, possibly malformed) is not the mandate's zone →
///   `403 zone_mismatch`;
/// - an empty `client_id` → `401 invalid_token`.
///
/// Returns the granted scopes.
pub fn check_claims(
    claims: &MandateClaims,
    path_zone: &str,
    lifecycle_scope: &str,
) -> Result<Vec<String>> {
    if claims.use_ != MandateUse::Session {
        return Err(invalid_token(format!(
            "a {} mandate cannot call the Coordinator",
            claims.use_.as_str()
        )));
    }
    if claims.sub.is_empty() {
        return Err(invalid_token("token has an empty sub"));
    }
    let scopes: Vec<String> = claims.scope.split_whitespace().map(str::to_owned).collect();
    if !scopes.iter().any(|s| s == lifecycle_scope) {
        return Err(Error::new(ErrorKind::Forbidden, "missing_scope"));
    }
    if claims.zone_id != path_zone {
        return Err(Error::new(ErrorKind::Forbidden, "zone_mismatch"));
    }
    if claims.client_id.is_empty() {
        return Err(invalid_token("token has an empty client_id"));
    }
    Ok(scopes)
}

impl Coordinator {
    /// A2 steps 5–8 for a bearer that is not the operator token: [`verify_bearer`] at the
    /// Coordinator's clock, [`check_claims`] against the route's zone as received (a malformed
    /// one is a `zone_mismatch`, after the 401s and `missing_scope`, as upstream orders them),
    /// then step 8 (the application named by `client_id` exists in the zone, not archived or
    /// expired, and the mandate's `sid`, when present, is an active, unexpired authority record
    /// of the zone, else `401 identity_revoked`) at once, in a unit of its own.
    pub async fn authenticate(
        &self,
        token: &str,
        keys: &dyn ZoneKeySource,
        es256: &dyn Es256,
        issuer: &str,
        path_zone: &str,
        lifecycle_scope: &str,
    ) -> Result<Principal> {
        let principal = self
            .authenticate_deferred(token, keys, es256, issuer, path_zone, lifecycle_scope)
            .await?;
        self.settle_identity(&principal).await?;
        Ok(principal)
    }

    /// [`Coordinator::authenticate`] without its store read: the signature, claims and zone
    /// are checked now, step 8 is left pending on the principal ([`IdentityGate`]) for the
    /// request's first unit of work, or [`Coordinator::settle_identity`], to run. The HTTP
    /// shell uses this and settles before every answer.
    pub async fn authenticate_deferred(
        &self,
        token: &str,
        keys: &dyn ZoneKeySource,
        es256: &dyn Es256,
        issuer: &str,
        path_zone: &str,
        lifecycle_scope: &str,
    ) -> Result<Principal> {
        let now = self.clock.now().unix_seconds();
        // A token that verified within the last few seconds is not verified again
        // (`mandate::verified`); what follows is checked on every request.
        let claims = match self.verified.get(token, now) {
            Some(claims) => claims,
            None => {
                let claims = verify_bearer(token, keys, es256, issuer, now).await?;
                self.verified.keep(token, &claims, now, LEEWAY_SECONDS);
                claims
            }
        };
        let scopes = check_claims(&claims, path_zone, lifecycle_scope)?;
        // Equal to the verified zone, which was peeked as a path id: it parses.
        let zone = ZoneId::parse(path_zone)
            .map_err(|_| Error::new(ErrorKind::Forbidden, "zone_mismatch"))?;
        Ok(Principal {
            sub: claims.sub.clone(),
            client_id: claims.client_id.clone(),
            scopes,
            zone,
            sid: (!claims.sid.is_empty()).then(|| claims.sid.clone()),
            operator: false,
            identity: IdentityGate::pending(),
        })
    }

    /// Opens a unit of work for `p`'s request and runs step 8 in it: the calling application
    /// and authority record still stand (both read with the opening of the unit,
    /// `Store::begin_with_caller`). Answers the unit and the rows read, which the caller's use
    /// case may reuse.
    pub(crate) async fn begin_checking_identity(
        &self,
        zone: &ZoneId,
        client_id: &str,
        sid: Option<&str>,
    ) -> Result<(Box<dyn UnitOfWork>, IdentityRows)> {
        let Ok(app_id) = ApplicationId::parse(client_id) else {
            return Err(identity_revoked("client_id is not an application id"));
        };
        let (uow, rows) = self.store.begin_with_caller(zone, &app_id, sid).await?;
        let rows = self.judge_identity(zone, sid, rows)?;
        Ok((uow, rows))
    }

    /// Step 8 on the rows read: the application exists in the zone, not archived or expired;
    /// the record named by `sid` (when there is one) is live in the zone.
    fn judge_identity(
        &self,
        zone: &ZoneId,
        sid: Option<&str>,
        rows: CallerRows,
    ) -> Result<IdentityRows> {
        let now = self.clock.now();
        let application = rows
            .application
            .filter(|app| {
                app.zone_id == *zone
                    && app.archived_at.is_none()
                    && app.expires_at.is_none_or(|at| at > now)
            })
            .ok_or_else(|| identity_revoked("application missing, archived or expired"))?;
        let record = match sid {
            Some(_) => Some(
                rows.record
                    .filter(|r| r.zone_id == *zone && r.is_live(now))
                    .ok_or_else(|| {
                        identity_revoked("authority record missing, revoked or expired")
                    })?,
            ),
            None => None,
        };
        Ok(IdentityRows {
            application,
            record,
        })
    }
}

/// The rows an identity check read in a unit of work, live at the time: the calling
/// application and the mandate's authority record (when it carries a `sid`).
#[derive(Debug, Clone)]
pub(crate) struct IdentityRows {
    /// The calling application.
    pub application: Application,
    /// The mandate's authority record.
    pub record: Option<AuthorityRecord>,
}

/// What `POST /v1/verify` requires of a token (A10), beyond a good signature from the zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyRequest<'a> {
    /// The zone whose keys verify, and which `zone_id` must name.
    pub zone_id: &'a str,
    /// A scope `scope` must contain.
    pub required_scope: Option<&'a str>,
    /// `agent_session_id` must be present.
    pub require_session: bool,
    /// `delegation_edge_id` must be present.
    pub require_delegation: bool,
}

/// Longest delegation chain `/v1/verify` accepts (upstream's default `maxHopCount`, equal to
/// the Coordinator's `MAX_DEPTH`).
pub const MAX_VERIFY_HOPS: u32 = 10;

/// `401 token_invalid`, the one refusal of `/v1/verify`.
fn token_invalid(reason: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unauthenticated, "token_invalid").with_detail(reason)
}

/// Verifies a mandate for a caller that is not the Coordinator itself (A10): ES256 under the
/// requested zone's keys (chosen by the request, never by the token), `iss` and `aud` equal to
/// `issuer`, the 60 s leeway, `use` session or resource, non-empty `jti`, `sub`, `client_id`,
/// `sid` and `root_sid`, then the request's scope, Session and Delegation requirements and at
/// most [`MAX_VERIFY_HOPS`] hops. Any failure is `401 token_invalid`. The answer is the claims
/// in upstream's camelCase shape.
pub async fn verify_for_caller(
    token: &str,
    request: &VerifyRequest<'_>,
    keys: &dyn ZoneKeySource,
    es256: &dyn Es256,
    issuer: &str,
    now_unix: i64,
) -> Result<Value> {
    let zone = ZoneId::parse(request.zone_id).map_err(|_| token_invalid("zone_id is malformed"))?;
    let kid = peek_kid(token).map_err(|e| token_invalid(e.to_string()))?;
    let set = keys
        .verifying_keys(&zone, &kid)
        .await
        .map_err(|e| token_invalid(e.detail.unwrap_or_else(|| e.code.to_owned())))?;
    let claims = verify_mandate(
        token,
        &set,
        &Expectations::new(
            issuer,
            zone.as_str(),
            &[MandateUse::Session, MandateUse::Resource],
        ),
        es256,
        now_unix,
    )
    .map_err(|e| token_invalid(e.to_string()))?;
    for (name, value) in [
        ("jti", &claims.jti),
        ("sub", &claims.sub),
        ("client_id", &claims.client_id),
        ("sid", &claims.sid),
        ("root_sid", &claims.root_sid),
    ] {
        if value.is_empty() {
            return Err(token_invalid(format!("token claim {name} is required")));
        }
    }
    if let Some(scope) = request.required_scope {
        if !claims.scope.split_whitespace().any(|s| s == scope) {
            return Err(token_invalid(format!("token lacks scope {scope}")));
        }
    }
    if request.require_session && claims.agent_session_id.is_none() {
        return Err(token_invalid("token carries no Session"));
    }
    if request.require_delegation && claims.delegation_edge_id.is_none() {
        return Err(token_invalid("token carries no Delegation"));
    }
    if claims.hop_count > MAX_VERIFY_HOPS {
        return Err(token_invalid("token delegation chain is too long"));
    }
    Ok(caller_claims(&claims))
}

/// The claims as `/v1/verify` answers them (upstream's `Claims`): optional members only when
/// the mandate carries them.
fn caller_claims(claims: &MandateClaims) -> Value {
    let mut out = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        out.insert(k.to_owned(), v);
    };
    put("sub", Value::from(claims.sub.as_str()));
    put("zoneId", Value::from(claims.zone_id.as_str()));
    put("clientId", Value::from(claims.client_id.as_str()));
    put("authorityRecordId", Value::from(claims.sid.as_str()));
    put(
        "rootAuthorityRecordId",
        Value::from(claims.root_sid.as_str()),
    );
    put("use", Value::from(claims.use_.as_str()));
    put("subType", Value::from(claims.sub_type.as_str()));
    put("jti", Value::from(claims.jti.as_str()));
    put("issuedAt", Value::from(claims.iat));
    put("expiresAt", Value::from(claims.exp));
    put("scope", Value::from(claims.scope.as_str()));
    if !claims.target.is_empty() {
        put("targetResources", Value::from(claims.target.clone()));
    }
    for (k, v) in [
        ("sessionId", &claims.agent_session_id),
        ("delegationId", &claims.delegation_edge_id),
        ("sourceSessionId", &claims.source_session_id),
        ("targetSessionId", &claims.target_session_id),
    ] {
        if let Some(v) = v {
            put(k, Value::from(v.as_str()));
        }
    }
    if !claims.delegation_path.is_empty() {
        put(
            "delegationPath",
            Value::from(claims.delegation_path.clone()),
        );
    }
    if !claims.delegation_chain.is_empty() {
        let chain = claims
            .delegation_chain
            .iter()
            .map(|hop| {
                let mut h = serde_json::Map::new();
                h.insert(
                    "applicationId".into(),
                    Value::from(hop.application_id.as_str()),
                );
                if let Some(s) = &hop.agent_session_id {
                    h.insert("sessionId".into(), Value::from(s.as_str()));
                }
                if let Some(d) = &hop.delegation_edge_id {
                    h.insert("delegationId".into(), Value::from(d.as_str()));
                }
                Value::Object(h)
            })
            .collect();
        put("delegationChain", Value::Array(chain));
    }
    if claims.delegation_graph_epoch > 0 {
        put("graphEpoch", Value::from(claims.delegation_graph_epoch));
    }
    if claims.hop_count > 0 {
        put("hopCount", Value::from(claims.hop_count));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with(payload: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":"k"}"#),
            URL_SAFE_NO_PAD.encode(payload.as_bytes())
        )
    }

    #[test]
    fn bearer_form() {
        assert_eq!(bearer_token(Some("Bearer abc")).ok(), Some("abc"));
        assert_eq!(bearer_token(Some("Bearer  abc  ")).ok(), Some("abc"));
        for bad in [
            None,
            Some("bearer abc"),
            Some("Bearer "),
            Some("Bearer    "),
            Some("abc"),
        ] {
            assert_eq!(
                bearer_token(bad).expect_err("refused").code,
                "missing_token",
                "{bad:?}"
            );
        }
        let long = format!("Bearer {}", "a".repeat(MAX_BEARER_BYTES + 1));
        assert_eq!(
            bearer_token(Some(&long)).expect_err("refused").code,
            "missing_token"
        );
        let edge = format!("Bearer {}", "a".repeat(MAX_BEARER_BYTES));
        assert!(bearer_token(Some(&edge)).is_ok());
    }

    fn claims() -> MandateClaims {
        MandateClaims {
            iss: "http://sts".into(),
            sub: "app-1".into(),
            aud: vec!["http://sts".into()],
            exp: 2,
            iat: 1,
            jti: "j".into(),
            zone_id: "z1".into(),
            client_id: "app-1".into(),
            scope: "read agent:lifecycle".into(),
            sid: "ar-1".into(),
            root_sid: "ar-1".into(),
            use_: MandateUse::Session,
            sub_type: crate::mandate::SubType::Application,
            target: vec![],
            agent_session_id: None,
            delegation_edge_id: None,
            source_session_id: None,
            target_session_id: None,
            delegation_path: vec![],
            delegation_chain: vec![],
            hop_count: 0,
            delegation_graph_epoch: 0,
        }
    }

    fn code(claims: &MandateClaims, zone: &str) -> &'static str {
        check_claims(claims, zone, "agent:lifecycle").map_or_else(|e| e.code, |_| "ok")
    }

    #[test]
    fn claim_rules_in_contract_order() {
        assert_eq!(
            check_claims(&claims(), "z1", "agent:lifecycle").ok(),
            Some(vec!["read".to_owned(), "agent:lifecycle".to_owned()])
        );
        for use_ in [MandateUse::Gateway, MandateUse::Resource] {
            let mut c = claims();
            c.use_ = use_;
            c.scope = String::new();
            assert_eq!(code(&c, "z2"), "invalid_token", "use comes first");
        }
        let mut c = claims();
        c.sub = String::new();
        assert_eq!(code(&c, "z1"), "invalid_token");
        let mut c = claims();
        c.scope = "agent:lifecycle:extra read".into();
        c.client_id = String::new();
        assert_eq!(
            code(&c, "z2"),
            "missing_scope",
            "scope before zone and client_id"
        );
        assert_eq!(code(&claims(), "z2"), "zone_mismatch");
        assert_eq!(code(&claims(), "z 1"), "zone_mismatch");
        let mut c = claims();
        c.client_id = String::new();
        assert_eq!(code(&c, "z1"), "invalid_token");
        assert_eq!(code(&c, "z2"), "zone_mismatch", "zone before client_id");
    }

    #[test]
    fn zone_peek() {
        assert_eq!(
            peek_zone(&token_with(r#"{"zone_id":"z-1"}"#)).map(|z| z.as_str().to_owned()),
            Some("z-1".to_owned())
        );
        for bad in [
            r#"{"zone_id":"z/1"}"#,
            r#"{"zone_id":""}"#,
            r#"{"zone_id":7}"#,
            r#"{}"#,
            r#"[1]"#,
            "not json",
        ] {
            assert!(peek_zone(&token_with(bad)).is_none(), "{bad}");
        }
        assert!(peek_zone("only-one-segment").is_none());
        assert!(peek_zone("a.!!!.c").is_none());
    }
}
