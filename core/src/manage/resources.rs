//! Resources (`spec/api.md §3.5`): the audiences the STS mints for and the Gateway routes.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::attribution::Attribution;
use crate::error::{Error, Result, StoreError};
use crate::ids::{ProviderId, ResourceId, ResourceIdentifier, ZoneId};
use crate::model::{Operation, Resource};
use crate::naming::{is_reserved_name, is_reserved_resource_identifier, slugify};
use crate::patch::Patch;
use crate::ports::store::{Liveness, Page, UnitOfWork};

use super::{non_blank, reserved_namespace, Caller, Management};

/// `POST …/resources` body; the PATCH body is the same with every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceInput {
    /// Display name 1..=200.
    #[serde(default)]
    pub name: Option<String>,
    /// Identifier 1..=512.
    #[serde(default)]
    pub identifier: Option<String>,
    /// Upstream base URL (http or https), or null.
    #[serde(default)]
    pub upstream_url: Patch<String>,
    /// Scopes, 1..=64 strings of 1..=200.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Provider id, or null.
    #[serde(default)]
    pub credential_provider_id: Patch<String>,
    /// Operation map.
    #[serde(default)]
    pub operations: Option<Vec<OperationInput>>,
    /// `enforced` or `transport_uniform`.
    #[serde(default)]
    pub operation_enforcement: Option<String>,
    /// Verification probe (only meaningful for `caracal_mandate` providers).
    #[serde(default)]
    pub check: Option<bool>,
}

/// One operation as submitted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationInput {
    /// HTTP method.
    pub method: String,
    /// Absolute path.
    pub path: String,
    /// Scope.
    pub scope: String,
}

fn invalid(description: impl Into<String>) -> Error {
    Error::invalid("invalid_resource", description)
}

fn validate_scopes(scopes: &[String]) -> Result<()> {
    if scopes.is_empty() || scopes.len() > 64 {
        return Err(invalid("scopes must hold 1 to 64 entries"));
    }
    if scopes
        .iter()
        .any(|s| s.is_empty() || s.chars().count() > 200)
    {
        return Err(invalid("each scope must be 1 to 200 characters"));
    }
    Ok(())
}

fn validate_upstream(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| invalid("upstream_url must be an http(s) URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty()
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
        || url.len() > 2048
    {
        return Err(invalid("upstream_url must be an http(s) URL"));
    }
    Ok(())
}

/// Normalises operations: method upper-cased, fields trimmed, paths absolute, scopes declared,
/// no two operations on the same `METHOD path`.
fn normalise_operations(ops: &[OperationInput], scopes: &[String]) -> Result<Vec<Operation>> {
    if ops.len() > 256 {
        return Err(invalid("at most 256 operations"));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let method = op.method.trim().to_ascii_uppercase();
        let path = op.path.trim().to_owned();
        let scope = op.scope.trim().to_owned();
        if method.is_empty() || path.is_empty() {
            return Err(Error::invalid(
                "operation_method_and_path_required",
                "operations need a method and a path",
            ));
        }
        if method.len() > 16 || path.len() > 512 || scope.is_empty() || scope.len() > 200 {
            return Err(invalid("operation fields are out of bounds"));
        }
        if !path.starts_with('/') {
            return Err(Error::invalid(
                "operation_path_must_be_absolute",
                format!("{path} is not absolute"),
            ));
        }
        if !scopes.contains(&scope) {
            return Err(Error::invalid(
                "operation_scope_not_in_resource_scopes",
                format!("{scope} is not a scope of this resource"),
            ));
        }
        if !seen.insert((method.clone(), path.clone())) {
            return Err(Error::invalid(
                "operation_duplicate",
                format!("{method} {path} is declared twice"),
            ));
        }
        out.push(Operation {
            method,
            path,
            scope,
        });
    }
    Ok(out)
}

fn identifier_conflict(err: StoreError) -> Error {
    match err {
        StoreError::Conflict(_) => Error::conflict(
            "resource_identifier_conflict",
            "an active resource has this identifier",
        ),
        other => other.into(),
    }
}

impl Management {
    fn is_control_resource(&self, identifier: &str) -> bool {
        identifier == self.config.control_audience
    }

    /// Lists resources; the Control resource is hidden from zone-scoped tokens.
    pub async fn list_resources(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        liveness: Liveness,
        page: &Page,
    ) -> Result<Vec<Resource>> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let mut rows = uow.list_resources(zone, liveness, page).await?;
        if !caller.actor.is_global() {
            rows.retain(|r| !self.is_control_resource(&r.identifier));
        }
        Ok(rows)
    }

    async fn live_resource(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        caller: &Caller,
        zone: &ZoneId,
        id: &ResourceId,
    ) -> Result<Resource> {
        match uow.get_resource(zone, id).await? {
            Some(r)
                if r.archived_at.is_none()
                    && (caller.actor.is_global() || !self.is_control_resource(&r.identifier)) =>
            {
                Ok(r)
            }
            _ => Err(Error::not_found("resource_not_found")),
        }
    }

    /// One resource.
    pub async fn get_resource(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &ResourceId,
    ) -> Result<Resource> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        self.live_resource(&mut uow, caller, zone, id).await
    }

    /// The routing rules of a Gateway resource: provider exists, then a provider is bound, then
    /// an upstream is set. The Control resource is exempt (it is served by the API itself).
    async fn check_routing(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        zone: &ZoneId,
        resource: &Resource,
    ) -> Result<()> {
        if let Some(provider) = &resource.credential_provider_id {
            let id =
                ProviderId::parse(provider).map_err(|_| Error::not_found("provider_not_found"))?;
            self.live_provider(uow, zone, &id).await?;
        }
        if self.is_control_resource(&resource.identifier) {
            return Ok(());
        }
        if resource.credential_provider_id.is_none() {
            return Err(Error::invalid(
                "credential_provider_required",
                "a Gateway resource needs credential_provider_id",
            ));
        }
        if resource.upstream_url.is_none() {
            return Err(Error::invalid(
                "upstream_url_required",
                "a Gateway resource needs upstream_url",
            ));
        }
        Ok(())
    }

    fn check_identifier(&self, caller: &Caller, identifier: &str) -> Result<()> {
        ResourceIdentifier::parse(identifier, &self.config.control_audience)?;
        if is_reserved_resource_identifier(identifier) && !caller.actor.is_bootstrap() {
            return Err(reserved_namespace());
        }
        if self.is_control_resource(identifier) && !caller.actor.is_global() {
            return Err(Error::conflict(
                "protected_resource",
                "the Control resource needs a global admin token",
            ));
        }
        Ok(())
    }

    /// Creates a resource.
    pub async fn create_resource(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        input: ResourceInput,
    ) -> Result<Resource> {
        let generated = non_blank(input.identifier.as_deref()).is_none();
        super::retry_lost_race(
            || self.create_resource_once(caller, zone, input.clone()),
            |e| generated && e.code == "resource_identifier_conflict",
        )
        .await
    }

    async fn create_resource_once(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        input: ResourceInput,
    ) -> Result<Resource> {
        let name = non_blank(input.name.as_deref());
        let identifier = non_blank(input.identifier.as_deref());
        if name.is_none() && identifier.is_none() {
            return Err(invalid("name or identifier is required"));
        }
        if name.as_ref().is_some_and(|n| n.chars().count() > 200) {
            return Err(invalid("name must be 1 to 200 characters"));
        }
        if name.as_deref().is_some_and(is_reserved_name) && !caller.actor.is_bootstrap() {
            return Err(reserved_namespace());
        }
        let scopes = input
            .scopes
            .clone()
            .ok_or_else(|| invalid("scopes is required"))?;
        validate_scopes(&scopes)?;
        let upstream_url = match input.upstream_url {
            Patch::Value(url) => {
                validate_upstream(&url)?;
                Some(url)
            }
            _ => None,
        };
        let operations = normalise_operations(input.operations.as_deref().unwrap_or(&[]), &scopes)?;
        let enforcement = input
            .operation_enforcement
            .clone()
            .unwrap_or_else(|| "enforced".into());
        if !matches!(enforcement.as_str(), "enforced" | "transport_uniform") {
            return Err(invalid(
                "operation_enforcement must be enforced or transport_uniform",
            ));
        }
        if let Some(identifier) = &identifier {
            self.check_identifier(caller, identifier)?;
        }
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let identifier = match identifier {
            Some(identifier) => identifier,
            None => {
                let name = name.clone().unwrap_or_default();
                let base = if name.starts_with("resource://") {
                    name
                } else {
                    format!("resource://{}", slugify(&name, "resource"))
                };
                let mut candidate = base.clone();
                let mut n = 2;
                while uow
                    .find_resource_by_identifier(zone, &candidate)
                    .await?
                    .is_some()
                {
                    candidate = format!("{base}-{n}");
                    n += 1;
                }
                self.check_identifier(caller, &candidate)?;
                candidate
            }
        };
        if uow
            .find_resource_by_identifier(zone, &identifier)
            .await?
            .is_some()
        {
            return Err(Error::conflict(
                "resource_identifier_conflict",
                "an active resource has this identifier",
            ));
        }
        if uow.count_active_resources(zone).await? >= self.config.max_resources_per_zone {
            return Err(Error::conflict(
                "resource_quota_exceeded",
                "the zone holds the maximum number of resources",
            ));
        }
        let now = self.clock.now();
        let resource = Resource {
            id: ResourceId::parse(&self.ids.new_id())?,
            zone_id: zone.clone(),
            name: name.unwrap_or_else(|| identifier.clone()),
            identifier,
            upstream_url,
            scopes,
            credential_provider_id: match input.credential_provider_id {
                Patch::Value(p) => Some(p),
                _ => None,
            },
            operations,
            operation_enforcement: enforcement,
            attr: Attribution::created(&caller.attribution(), caller.via_operator, now),
            archived_at: None,
        };
        self.check_routing(&mut uow, zone, &resource).await?;
        self.check_resource_probe(&mut uow, zone, &resource, input.check)
            .await?;
        uow.save_resource(&resource)
            .await
            .map_err(identifier_conflict)?;
        uow.commit().await?;
        Ok(resource)
    }

    /// `check: true` asks for a live probe of a `caracal_mandate` upstream; this server does not
    /// probe yet, so the request is refused rather than silently ignored (docs/compat.md).
    async fn check_resource_probe(
        &self,
        _uow: &mut Box<dyn UnitOfWork>,
        _zone: &ZoneId,
        _resource: &Resource,
        check: Option<bool>,
    ) -> Result<()> {
        if check == Some(true) {
            return Err(Error::invalid(
                "resource_verification_unsupported",
                "resource verification probes are not available on this server",
            ));
        }
        Ok(())
    }

    /// Updates a resource; routing and operation rules are checked on the effective result.
    pub async fn patch_resource(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &ResourceId,
        patch: ResourceInput,
    ) -> Result<Resource> {
        let any = patch.name.is_some()
            || patch.identifier.is_some()
            || patch.upstream_url.is_present()
            || patch.scopes.is_some()
            || patch.credential_provider_id.is_present()
            || patch.operations.is_some()
            || patch.operation_enforcement.is_some();
        if !any {
            return Err(Error::invalid(
                "no_fields",
                "the body names no field to change",
            ));
        }
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let mut resource = self.live_resource(&mut uow, caller, zone, id).await?;
        if self.is_control_resource(&resource.identifier) && !caller.actor.is_global() {
            return Err(Error::conflict(
                "protected_resource",
                "the Control resource needs a global admin token",
            ));
        }
        if let Some(name) = patch.name {
            let name = name.trim().to_owned();
            if name.is_empty() || name.chars().count() > 200 {
                return Err(invalid("name must be 1 to 200 characters"));
            }
            if is_reserved_name(&name) && !caller.actor.is_bootstrap() {
                return Err(reserved_namespace());
            }
            resource.name = name;
        }
        if let Some(identifier) = patch.identifier {
            let identifier = identifier.trim().to_owned();
            self.check_identifier(caller, &identifier)?;
            if identifier != resource.identifier {
                if uow
                    .find_resource_by_identifier(zone, &identifier)
                    .await?
                    .is_some()
                {
                    return Err(Error::conflict(
                        "resource_identifier_conflict",
                        "an active resource has this identifier",
                    ));
                }
                resource.identifier = identifier;
            }
        }
        match patch.upstream_url {
            Patch::Value(url) => {
                validate_upstream(&url)?;
                resource.upstream_url = Some(url);
            }
            Patch::Null => resource.upstream_url = None,
            Patch::Absent => {}
        }
        if let Some(scopes) = patch.scopes {
            validate_scopes(&scopes)?;
            resource.scopes = scopes;
        }
        match patch.credential_provider_id {
            Patch::Value(p) => resource.credential_provider_id = Some(p),
            Patch::Null => resource.credential_provider_id = None,
            Patch::Absent => {}
        }
        if let Some(enforcement) = patch.operation_enforcement {
            if !matches!(enforcement.as_str(), "enforced" | "transport_uniform") {
                return Err(invalid(
                    "operation_enforcement must be enforced or transport_uniform",
                ));
            }
            resource.operation_enforcement = enforcement;
        }
        let ops: Vec<OperationInput> = match patch.operations {
            Some(ops) => ops,
            None => resource
                .operations
                .iter()
                .map(|o| OperationInput {
                    method: o.method.clone(),
                    path: o.path.clone(),
                    scope: o.scope.clone(),
                })
                .collect(),
        };
        resource.operations = normalise_operations(&ops, &resource.scopes)?;
        self.check_routing(&mut uow, zone, &resource).await?;
        resource
            .attr
            .touch(&caller.attribution(), caller.via_operator, self.clock.now());
        uow.save_resource(&resource)
            .await
            .map_err(identifier_conflict)?;
        uow.commit().await?;
        Ok(resource)
    }

    /// Archives a resource; the Control resource is never deletable.
    pub async fn delete_resource(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &ResourceId,
    ) -> Result<()> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let mut resource = self.live_resource(&mut uow, caller, zone, id).await?;
        if self.is_control_resource(&resource.identifier) {
            return Err(Error::conflict(
                "protected_resource",
                "the Control resource cannot be deleted",
            ));
        }
        let now = self.clock.now();
        resource.archived_at = Some(now);
        resource
            .attr
            .touch(&caller.attribution(), caller.via_operator, now);
        uow.save_resource(&resource).await?;
        uow.commit().await?;
        Ok(())
    }
}
