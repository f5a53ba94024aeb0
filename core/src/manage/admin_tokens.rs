//! Admin tokens (`spec/api.md §2`, "Admin tokens"): global callers mint zone-scoped or
//! read-only tokens, list them (never the plaintext), and revoke them.

use serde::Deserialize;

use crate::digest::sha256_hex;
use crate::error::{Error, Result};
use crate::ids::{AdminTokenId, ZoneId};
use crate::model::{AdminToken, Capability, TokenScope};
use crate::ports::store::{Page, ZoneScope};

use super::{Caller, Management};

/// `POST /v1/admin-tokens` body (strict).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAdminToken {
    /// Display name, 1..=120.
    pub name: String,
    /// `global` or `zone`.
    pub scope: String,
    /// Required iff scope is `zone`.
    pub zone_id: Option<String>,
    /// `read`, `write` (default) or `approve`.
    pub capability: Option<String>,
}

/// A minted token with its plaintext, shown once.
#[derive(Debug, Clone)]
pub struct MintedToken {
    /// The stored row.
    pub token: AdminToken,
    /// The plaintext bearer token.
    pub plaintext: String,
}

fn invalid(description: &str) -> Error {
    Error::invalid("invalid_admin_token_request", description.to_owned())
}

impl Management {
    /// Token management is for global callers only.
    fn require_global(&self, caller: &Caller) -> Result<()> {
        if caller.actor.is_global() {
            Ok(())
        } else {
            Err(Error::forbidden(
                "admin_token_management_requires_global",
                "managing admin tokens needs a global admin token",
            ))
        }
    }

    /// Mints a token; the plaintext is returned once and only its hashes are stored.
    pub async fn create_admin_token(
        &self,
        caller: &Caller,
        input: NewAdminToken,
    ) -> Result<MintedToken> {
        self.require_global(caller)?;
        let name = input.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 120 {
            return Err(invalid("name must be 1 to 120 characters"));
        }
        let scope = match input.scope.as_str() {
            "global" => TokenScope::Global,
            "zone" => TokenScope::Zone,
            _ => return Err(invalid("scope must be global or zone")),
        };
        let capability = match input.capability.as_deref() {
            None | Some("write") => Capability::Write,
            Some("read") => Capability::Read,
            Some("approve") => Capability::Approve,
            Some(_) => return Err(invalid("capability must be read, write or approve")),
        };
        let zone_id = match (scope, input.zone_id.as_deref()) {
            (TokenScope::Zone, None) => {
                return Err(Error::invalid(
                    "zone_id_required",
                    "a zone token needs zone_id",
                ))
            }
            (TokenScope::Global, Some(_)) => {
                return Err(Error::invalid(
                    "zone_id_not_allowed_for_global",
                    "a global token has no zone_id",
                ))
            }
            (TokenScope::Zone, Some(z)) => {
                Some(ZoneId::parse(z).map_err(|_| Error::not_found("zone_not_found"))?)
            }
            (TokenScope::Global, None) => None,
        };
        let mut uow = self.store.begin(&ZoneScope::All).await?;
        if let Some(zone) = &zone_id {
            self.live_zone(&mut uow, zone).await?;
        }
        let plaintext = self.secrets.generate("cat_");
        let token = AdminToken {
            id: AdminTokenId::parse(&self.ids.new_id())?,
            name,
            token_sha256: sha256_hex(plaintext.as_bytes()),
            token_hash: self.hasher.hash(&plaintext).await?,
            scope,
            zone_id,
            capability,
            created_by: caller.attribution(),
            created_at: self.clock.now(),
            last_used_at: None,
            revoked_at: None,
        };
        uow.save_admin_token(&token).await?;
        uow.commit().await?;
        Ok(MintedToken { token, plaintext })
    }

    /// Lists every token, revoked ones included.
    pub async fn list_admin_tokens(&self, caller: &Caller, page: &Page) -> Result<Vec<AdminToken>> {
        self.require_global(caller)?;
        let mut uow = self.store.begin(&ZoneScope::All).await?;
        Ok(uow.list_admin_tokens(page).await?)
    }

    /// Revokes a token. This process stops accepting it at once; other replicas within the
    /// verified-token cache lifetime (5 s).
    pub async fn revoke_admin_token(&self, caller: &Caller, id: &str) -> Result<()> {
        self.require_global(caller)?;
        let id = AdminTokenId::parse(id)
            .map_err(|_| Error::invalid("invalid_admin_token_id", "admin token id is malformed"))?;
        let mut uow = self.store.begin(&ZoneScope::All).await?;
        let mut token = uow
            .get_admin_token(&id)
            .await?
            .filter(|t| t.revoked_at.is_none())
            .ok_or_else(|| Error::not_found("admin_token_not_found"))?;
        token.revoked_at = Some(self.clock.now());
        uow.save_admin_token(&token).await?;
        uow.commit().await?;
        self.token_cache.evict(&token.token_sha256);
        Ok(())
    }
}
