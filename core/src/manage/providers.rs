//! Providers (`spec/api.md §3.4`): public config stored, secrets sealed as one JSON object at
//! `zones/<z>/providers/<p>/secretConfig` and never returned.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::attribution::Attribution;
use crate::error::{Error, Result, StoreError};
use crate::ids::{ProviderId, ZoneId};
use crate::model::{Provider, SealedSecret};
use crate::naming::{
    is_provider_identifier, is_reserved_name, is_reserved_provider_identifier, slugify,
};
use crate::ports::store::{Liveness, Page, UnitOfWork};
use crate::provider_config::{self, is_oauth, SplitConfig};

use super::{bounded_name, non_blank, reserved_namespace, Caller, Management};

/// `POST …/providers` body. Unknown top-level keys are ignored, as upstream does.
#[derive(Debug, Clone, Deserialize)]
pub struct NewProvider {
    /// Display name (defaults to the identifier).
    pub name: Option<String>,
    /// `provider://…` (defaults to a slug of the name).
    pub identifier: Option<String>,
    /// Kind.
    pub kind: String,
    /// Public and secret config in one object.
    pub config_json: Option<Map<String, Value>>,
    /// Run a connectivity check first (OAuth kinds only).
    pub check: Option<bool>,
}

/// `PATCH …/providers/{id}` body.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ProviderPatch {
    /// New name.
    pub name: Option<String>,
    /// New identifier.
    pub identifier: Option<String>,
    /// New kind (then `config_json` is required and validated like a create).
    pub kind: Option<String>,
    /// New config.
    pub config_json: Option<Map<String, Value>>,
}

fn secret_ref(zone: &ZoneId, id: &ProviderId) -> String {
    format!("zones/{zone}/providers/{id}/secretConfig")
}

fn identifier_conflict(err: StoreError) -> Error {
    match err {
        StoreError::Conflict(_) => Error::conflict(
            "provider_identifier_conflict",
            "an active provider has this identifier",
        ),
        other => other.into(),
    }
}

fn check_identifier(identifier: &str, caller: &Caller) -> Result<()> {
    if !is_provider_identifier(identifier) {
        return Err(Error::invalid(
            "invalid_provider_identifier",
            "identifier must match ^provider://[a-z0-9]+(?:-[a-z0-9]+)*$",
        ));
    }
    if is_reserved_provider_identifier(identifier) && !caller.actor.is_bootstrap() {
        return Err(reserved_namespace());
    }
    Ok(())
}

impl Management {
    /// Lists providers.
    pub async fn list_providers(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        liveness: Liveness,
        page: &Page,
    ) -> Result<Vec<Provider>> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        Ok(uow.list_providers(zone, liveness, page).await?)
    }

    pub(crate) async fn live_provider(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        zone: &ZoneId,
        id: &ProviderId,
    ) -> Result<Provider> {
        match uow.get_provider(zone, id).await? {
            Some(p) if p.archived_at.is_none() => Ok(p),
            _ => Err(Error::not_found("provider_not_found")),
        }
    }

    /// One provider.
    pub async fn get_provider(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &ProviderId,
    ) -> Result<Provider> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        self.live_provider(&mut uow, zone, id).await
    }

    async fn seal_provider_secrets(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        provider: &mut Provider,
        secrets: &BTreeMap<String, String>,
    ) -> Result<()> {
        let reference = secret_ref(&provider.zone_id, &provider.id);
        if secrets.is_empty() {
            uow.delete_secret(&reference).await?;
            provider.secret_config_keys.clear();
            return Ok(());
        }
        let document = serde_json::to_vec(secrets).map_err(|e| Error::internal(e.to_string()))?;
        let envelope = self.sealer.seal(&reference, &document)?;
        uow.put_secret(&SealedSecret {
            reference,
            zone_id: provider.zone_id.clone(),
            envelope,
            version: 1,
        })
        .await?;
        provider.secret_config_keys = secrets.keys().cloned().collect();
        Ok(())
    }

    /// Creates a provider, sealing its secrets.
    pub async fn create_provider(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        input: NewProvider,
    ) -> Result<Provider> {
        let generated = non_blank(input.identifier.as_deref()).is_none();
        super::retry_lost_race(
            || self.create_provider_once(caller, zone, input.clone()),
            |e| generated && e.code == "provider_identifier_conflict",
        )
        .await
    }

    async fn create_provider_once(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        input: NewProvider,
    ) -> Result<Provider> {
        let name = non_blank(input.name.as_deref());
        let identifier = non_blank(input.identifier.as_deref());
        if name.is_none() && identifier.is_none() {
            return Err(Error::invalid(
                "invalid_provider",
                "name or identifier is required",
            ));
        }
        if let Some(name) = &name {
            bounded_name(name, 200, "invalid_provider")?;
            if is_reserved_name(name) && !caller.actor.is_bootstrap() {
                return Err(reserved_namespace());
            }
        }
        if let Some(identifier) = &identifier {
            check_identifier(identifier, caller)?;
        }
        let config = input.config_json.unwrap_or_default();
        let split = provider_config::validate(&input.kind, &config, true, &[])?;
        if input.check == Some(true) {
            // A check needs an outbound call to the provider's token endpoint; until the Gateway's
            // egress safety exists we refuse rather than pretend (docs/compat.md).
            return Err(Error::invalid(
                "provider_check_unsupported",
                "connectivity checks are not available on this server",
            ));
        }
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let identifier = match identifier {
            Some(identifier) => {
                if uow
                    .find_provider_by_identifier(zone, &identifier)
                    .await?
                    .is_some()
                {
                    return Err(Error::conflict(
                        "provider_identifier_conflict",
                        "an active provider has this identifier",
                    ));
                }
                identifier
            }
            None => {
                let base_name = name
                    .clone()
                    .unwrap_or_else(|| format!("{} provider", input.kind));
                let base = format!(
                    "provider://{}",
                    slugify(base_name.trim_start_matches("provider://"), "provider")
                );
                let mut candidate = base.clone();
                let mut n = 2;
                while uow
                    .find_provider_by_identifier(zone, &candidate)
                    .await?
                    .is_some()
                {
                    candidate = format!("{base}-{n}");
                    n += 1;
                }
                check_identifier(&candidate, caller)?;
                candidate
            }
        };
        let now = self.clock.now();
        let mut provider = Provider {
            id: ProviderId::parse(&self.ids.new_id())?,
            zone_id: zone.clone(),
            name: name.unwrap_or_else(|| identifier.clone()),
            identifier,
            kind: input.kind.clone(),
            config_json: split.public.clone(),
            secret_config_keys: Vec::new(),
            // OAuth providers created without a check are marked unverified.
            connectivity_failed_at: is_oauth(&input.kind).then_some(now),
            attr: Attribution::created(&caller.attribution(), caller.via_operator, now),
            archived_at: None,
        };
        self.seal_provider_secrets(&mut uow, &mut provider, &split.secrets)
            .await?;
        uow.save_provider(&provider)
            .await
            .map_err(identifier_conflict)?;
        uow.commit().await?;
        Ok(provider)
    }

    /// Updates a provider with the secret semantics the SDK relies on: public config without
    /// `kind` keeps the sealed secrets unless new ones are supplied (then they replace the sealed
    /// document); `kind` + config is validated like a create and drops unsupplied secrets.
    pub async fn patch_provider(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &ProviderId,
        patch: ProviderPatch,
    ) -> Result<Provider> {
        if patch.name.is_none()
            && patch.identifier.is_none()
            && patch.kind.is_none()
            && patch.config_json.is_none()
        {
            return Err(Error::invalid(
                "no_fields",
                "the body names no field to change",
            ));
        }
        if patch.kind.is_some() && patch.config_json.is_none() {
            return Err(Error::invalid(
                "provider_config_required",
                "changing kind needs config_json",
            ));
        }
        let name = patch
            .name
            .as_deref()
            .map(|n| bounded_name(n, 200, "invalid_provider"))
            .transpose()?;
        if name.as_deref().is_some_and(is_reserved_name) && !caller.actor.is_bootstrap() {
            return Err(reserved_namespace());
        }
        if let Some(identifier) = &patch.identifier {
            check_identifier(identifier, caller)?;
        }
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let mut provider = self.live_provider(&mut uow, zone, id).await?;
        let split: Option<(SplitConfig, bool)> = match (&patch.kind, &patch.config_json) {
            (Some(kind), Some(config)) => Some((
                provider_config::validate(kind, config, !is_oauth(kind), &[])?,
                true,
            )),
            (None, Some(config)) => Some((
                provider_config::validate(
                    &provider.kind,
                    config,
                    false,
                    &provider.secret_config_keys,
                )?,
                false,
            )),
            _ => None,
        };
        if let Some(identifier) = patch.identifier {
            if identifier != provider.identifier {
                if uow
                    .find_provider_by_identifier(zone, &identifier)
                    .await?
                    .is_some()
                {
                    return Err(Error::conflict(
                        "provider_identifier_conflict",
                        "an active provider has this identifier",
                    ));
                }
                provider.identifier = identifier;
            }
        }
        if let Some(name) = name {
            provider.name = name;
        }
        if let Some((split, kind_change)) = split {
            provider.config_json = split.public;
            if kind_change {
                if let Some(kind) = patch.kind {
                    if !is_oauth(&kind) {
                        provider.connectivity_failed_at = None;
                    }
                    provider.kind = kind;
                }
                self.seal_provider_secrets(&mut uow, &mut provider, &split.secrets)
                    .await?;
            } else if !split.secrets.is_empty() {
                self.seal_provider_secrets(&mut uow, &mut provider, &split.secrets)
                    .await?;
            }
        }
        provider
            .attr
            .touch(&caller.attribution(), caller.via_operator, self.clock.now());
        uow.save_provider(&provider)
            .await
            .map_err(identifier_conflict)?;
        uow.commit().await?;
        Ok(provider)
    }

    /// Archives a provider and deletes its sealed document.
    pub async fn delete_provider(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &ProviderId,
    ) -> Result<()> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let mut provider = self.live_provider(&mut uow, zone, id).await?;
        let now = self.clock.now();
        provider.archived_at = Some(now);
        provider
            .attr
            .touch(&caller.attribution(), caller.via_operator, now);
        uow.save_provider(&provider).await?;
        uow.delete_secret(&secret_ref(zone, id)).await?;
        uow.commit().await?;
        Ok(())
    }
}
