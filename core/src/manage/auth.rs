//! Admin authentication and authorization (`spec/api.md §2`).
//!
//! A bearer token is looked up by its SHA-256 among unrevoked rows, then verified with Argon2id.
//! Successful verifications are cached for five seconds keyed by the token's SHA-256 *and* the
//! stored hash, so steady-state requests skip Argon2 and a revocation lands within five seconds.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::digest::sha256_hex;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{AdminTokenId, ZoneId};
use crate::model::{AdminToken, Capability, TokenScope};
use crate::naming::{is_reserved_name, is_reserved_zone_slug};
use crate::ports::store::ZoneScope;
use crate::time::Timestamp;

use super::{Actor, Management};

/// How long a verified token is trusted without asking the store again.
const CACHE_TTL_MS: i64 = 5_000;
/// Bound on cached tokens, so a flood of distinct valid tokens cannot grow memory.
const CACHE_MAX: usize = 4_096;

/// Verified tokens by SHA-256.
#[derive(Debug, Default)]
pub(crate) struct TokenCache(Mutex<HashMap<String, (Actor, Timestamp)>>);

impl TokenCache {
    fn get(&self, sha: &str, now: Timestamp) -> Option<Actor> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(sha)
            .filter(|(_, until)| *until > now)
            .map(|(actor, _)| actor.clone())
    }

    /// Forgets a token at once (revocation in this process).
    pub(crate) fn evict(&self, sha: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(sha);
    }

    fn put(&self, sha: String, actor: Actor, until: Timestamp) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CACHE_MAX {
            map.retain(|_, (_, t)| *t > until.plus_millis(-CACHE_TTL_MS));
            if map.len() >= CACHE_MAX {
                map.clear();
            }
        }
        map.insert(sha, (actor, until));
    }
}

fn invalid_token() -> Error {
    Error::new(ErrorKind::Unauthenticated, "invalid_admin_token")
}

/// Extracts the token from an `Authorization` header value: exact `Bearer ` prefix, remainder
/// trimmed, 1..=4096 bytes.
pub fn bearer_token(header: Option<&str>) -> Result<&str> {
    let token = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(invalid_token)?;
    if token.is_empty() || token.len() > 4096 {
        return Err(invalid_token());
    }
    Ok(token)
}

fn actor_of(token: &AdminToken) -> Actor {
    Actor {
        token_id: token.id.to_string(),
        name: token.name.clone(),
        scope: token.scope,
        zone_id: token.zone_id.clone(),
        capability: token.capability,
        created_by: token.created_by.clone(),
    }
}

impl Management {
    /// Authenticates an `Authorization` header value.
    pub async fn authenticate(&self, header: Option<&str>) -> Result<Actor> {
        let token = bearer_token(header)?;
        let sha = sha256_hex(token.as_bytes());
        let now = self.clock.now();
        if let Some(actor) = self.token_cache.get(&sha, now) {
            return Ok(actor);
        }
        let mut uow = self.store.begin(&ZoneScope::All).await?;
        let row = uow.find_admin_token_by_sha256(&sha).await?;
        drop(uow);
        let row = row.ok_or_else(invalid_token)?;
        if !self.hasher.verify(token, &row.token_hash).await? {
            return Err(invalid_token());
        }
        let actor = actor_of(&row);
        self.token_cache
            .put(sha, actor.clone(), now.plus_millis(CACHE_TTL_MS));
        Ok(actor)
    }

    /// Whether the zone a path names is in the reserved namespace (mutations there are for the
    /// bootstrap actor only). An unknown or malformed zone is not reserved; the route answers it.
    pub async fn zone_is_reserved(&self, zone: &str) -> Result<bool> {
        let Ok(id) = ZoneId::parse(zone) else {
            return Ok(false);
        };
        let mut uow = self.store.begin(&ZoneScope::All).await?;
        Ok(uow
            .get_zone(&id)
            .await?
            .is_some_and(|z| zone_is_reserved(&z.name, &z.slug)))
    }

    /// Seeds `CARACAL_ADMIN_TOKEN` as the global write `bootstrap` token created by
    /// `env-bootstrap`, revoking older bootstrap rows so a rotated env token retires the old one.
    pub async fn seed_bootstrap_token(&self, token: &str) -> Result<()> {
        if token.trim().is_empty() || token.len() > 4096 || token.trim() != token {
            return Err(Error::invalid(
                "invalid_admin_token",
                "CARACAL_ADMIN_TOKEN must be 1..4096 bytes without surrounding spaces",
            ));
        }
        let sha = sha256_hex(token.as_bytes());
        let now = self.clock.now();
        let mut uow = self.store.begin(&ZoneScope::All).await?;
        let existing = uow.find_admin_token_by_sha256(&sha).await?;
        let current = match existing {
            Some(row) if row.created_by == "env-bootstrap" => row.id,
            Some(_) => {
                return Err(Error::conflict(
                    "admin_token_conflict",
                    "CARACAL_ADMIN_TOKEN equals a non-bootstrap admin token",
                ))
            }
            None => {
                let row = AdminToken {
                    id: AdminTokenId::parse(&self.ids.new_id())?,
                    name: "bootstrap".into(),
                    token_sha256: sha,
                    token_hash: self.hasher.hash(token).await?,
                    scope: TokenScope::Global,
                    zone_id: None,
                    capability: Capability::Write,
                    created_by: "env-bootstrap".into(),
                    created_at: now,
                    last_used_at: None,
                    revoked_at: None,
                };
                uow.save_admin_token(&row).await?;
                row.id
            }
        };
        for mut old in uow.list_admin_tokens_created_by("env-bootstrap").await? {
            if old.id != current {
                old.revoked_at = Some(now);
                uow.save_admin_token(&old).await?;
            }
        }
        uow.commit().await?;
        Ok(())
    }
}

/// The parts of a request the authorization table looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestShape<'a> {
    /// HTTP method, upper case.
    pub method: &'a str,
    /// Path without query.
    pub path: &'a str,
}

impl RequestShape<'_> {
    fn read_only(&self) -> bool {
        matches!(self.method, "GET" | "HEAD")
            || (self.method == "POST" && self.path == "/v1/policies/validate")
    }

    fn global_read_path(&self) -> bool {
        (self.method == "POST" && self.path == "/v1/policies/validate")
            || (matches!(self.method, "GET" | "HEAD")
                && (self.path == "/v1/policy-templates"
                    || self.path.starts_with("/v1/policy-templates/")))
    }

    /// `POST /v1/zones/{z}/approvals/{id}/(approve|reject)` with both segments non-empty: an
    /// empty one is no decision route, so it must not open row 3's exemption.
    fn approval_decision(&self) -> bool {
        if self.method != "POST" {
            return false;
        }
        let parts: Vec<&str> = self.path.split('/').collect();
        parts.len() == 7
            && parts[0].is_empty()
            && parts[1] == "v1"
            && parts[2] == "zones"
            && !parts[3].is_empty()
            && parts[4] == "approvals"
            && !parts[5].is_empty()
            && matches!(parts[6], "approve" | "reject")
    }

    /// The zone named by `/v1/zones/{z}…`, if any.
    pub fn path_zone(&self) -> Option<&str> {
        let rest = self.path.strip_prefix("/v1/zones/")?;
        let zone = rest.split(['/', '?']).next().unwrap_or("");
        (!zone.is_empty()).then_some(zone)
    }
}

/// Applies rows 2–6 of the check order to an authenticated actor. `zone_reserved` says whether
/// the path's zone is in the reserved namespace (looked up by the caller only for mutating zone
/// paths).
pub fn authorize(actor: &Actor, request: RequestShape<'_>, zone_reserved: bool) -> Result<()> {
    let read_only = request.read_only();
    if actor.capability == Capability::Read && !read_only {
        return Err(Error::forbidden(
            "admin_token_read_only",
            "this admin token is read-only",
        ));
    }
    if actor.capability == Capability::Approve && !read_only && !request.approval_decision() {
        return Err(Error::forbidden(
            "admin_token_approve_only",
            "this admin token may only decide approvals",
        ));
    }
    if request.approval_decision() && actor.capability == Capability::Write && !actor.is_bootstrap()
    {
        return Err(Error::forbidden(
            "approve_capability_required",
            "approval decisions need an approve-capability token",
        ));
    }
    if actor.scope == TokenScope::Zone && !request.global_read_path() {
        let token_zone = actor.zone_id.as_ref().map(ZoneId::as_str);
        if request.path_zone().is_none() || request.path_zone() != token_zone {
            return Err(Error::forbidden(
                "admin_token_zone_mismatch",
                "this admin token is scoped to another zone",
            ));
        }
    }
    if !read_only && zone_reserved && !actor.is_bootstrap() {
        return Err(Error::forbidden(
            "system_zone_read_only",
            "system zones are read-only",
        ));
    }
    Ok(())
}

/// Whether a zone is in the reserved namespace.
pub fn zone_is_reserved(name: &str, slug: &str) -> bool {
    is_reserved_name(name) || is_reserved_zone_slug(slug)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(scope: TokenScope, zone: Option<&str>, capability: Capability) -> Actor {
        Actor {
            token_id: "t".into(),
            name: "t".into(),
            scope,
            zone_id: zone.and_then(|z| ZoneId::parse(z).ok()),
            capability,
            created_by: "admin:x".into(),
        }
    }

    fn code(actor: &Actor, method: &str, path: &str) -> Option<&'static str> {
        authorize(actor, RequestShape { method, path }, false)
            .err()
            .map(|e| e.code)
    }

    #[test]
    fn bearer_parsing_is_strict() {
        assert!(bearer_token(Some("Bearer abc")).is_ok());
        assert!(bearer_token(Some("bearer abc")).is_err());
        assert!(bearer_token(Some("Bearer    ")).is_err());
        assert!(bearer_token(None).is_err());
        assert!(bearer_token(Some(&format!("Bearer {}", "a".repeat(4097)))).is_err());
    }

    #[test]
    fn check_order_rows() {
        let reader = actor(TokenScope::Global, None, Capability::Read);
        assert_eq!(
            code(&reader, "POST", "/v1/zones"),
            Some("admin_token_read_only")
        );
        assert_eq!(code(&reader, "POST", "/v1/policies/validate"), None);
        let approver = actor(TokenScope::Global, None, Capability::Approve);
        assert_eq!(
            code(&approver, "PATCH", "/v1/zones/z"),
            Some("admin_token_approve_only")
        );
        assert_eq!(
            code(&approver, "POST", "/v1/zones/z/approvals/a/approve"),
            None
        );
        let writer = actor(TokenScope::Global, None, Capability::Write);
        assert_eq!(
            code(&writer, "POST", "/v1/zones/z/approvals/a/approve"),
            Some("approve_capability_required")
        );
        let zoned = actor(TokenScope::Zone, Some("z1"), Capability::Write);
        assert_eq!(
            code(&zoned, "GET", "/v1/zones"),
            Some("admin_token_zone_mismatch")
        );
        assert_eq!(
            code(&zoned, "GET", "/v1/zones/z2/applications"),
            Some("admin_token_zone_mismatch")
        );
        assert_eq!(code(&zoned, "GET", "/v1/zones/z1/applications"), None);
        assert_eq!(code(&zoned, "GET", "/v1/policy-templates"), None);
        let err = authorize(
            &writer,
            RequestShape {
                method: "PATCH",
                path: "/v1/zones/z",
            },
            true,
        );
        assert_eq!(err.err().map(|e| e.code), Some("system_zone_read_only"));
    }

    /// Rows 2–4 on the approval routes (`spec/api.md §3.14`).
    #[test]
    fn approval_rows() {
        let approve = "/v1/zones/z1/approvals/h1/approve";
        let reject = "/v1/zones/z1/approvals/h1/reject";
        let reader = actor(TokenScope::Global, None, Capability::Read);
        assert_eq!(
            code(&reader, "POST", approve),
            Some("admin_token_read_only"),
            "row 2 comes first: a read-only token never decides"
        );
        assert_eq!(code(&reader, "GET", "/v1/zones/z1/approvals"), None);
        assert_eq!(code(&reader, "GET", "/v1/zones/z1/approvals/counts"), None);

        let approver = actor(TokenScope::Global, None, Capability::Approve);
        for path in [approve, reject] {
            assert_eq!(code(&approver, "POST", path), None, "{path}");
        }
        assert_eq!(code(&approver, "GET", "/v1/zones/z1/approvals/h1"), None);
        for (method, path) in [
            ("POST", "/v1/zones/z1/approvals/h1/cancel"),
            ("POST", "/v1/zones/z1/approvals//approve"),
            ("POST", "/v1/zones//approvals/h1/approve"),
            ("POST", "/v1/zones/z1/approvals/h1/approve/extra"),
            ("POST", "/v2/zones/z1/approvals/h1/approve"),
            ("DELETE", "/v1/zones/z1/approvals/h1"),
            ("POST", "/v1/zones/z1/applications"),
        ] {
            assert_eq!(
                code(&approver, method, path),
                Some("admin_token_approve_only"),
                "{method} {path}"
            );
        }

        let writer = actor(TokenScope::Global, None, Capability::Write);
        assert_eq!(
            code(&writer, "POST", reject),
            Some("approve_capability_required")
        );
        assert_eq!(
            code(&writer, "GET", "/v1/zones/z1/approvals"),
            None,
            "writers still read approvals"
        );
        let mut bootstrap = writer.clone();
        bootstrap.created_by = "env-bootstrap".into();
        assert_eq!(
            code(&bootstrap, "POST", approve),
            None,
            "the bootstrap write token may decide"
        );

        let zoned = actor(TokenScope::Zone, Some("z1"), Capability::Approve);
        assert_eq!(code(&zoned, "POST", approve), None);
        assert_eq!(
            code(&zoned, "POST", "/v1/zones/z2/approvals/h1/approve"),
            Some("admin_token_zone_mismatch"),
            "an approve token is still bound to its zone"
        );
    }
}
