//! Grants (`spec/api.md §3.9`) and policy templates (§3.8).

use serde::Deserialize;

use crate::attribution::Attribution;
use crate::error::{Error, Result};
use crate::ids::{ApplicationId, GrantId, ResourceId, ZoneId};
use crate::model::{Application, Grant, Provider, Resource};
use crate::ports::store::{After, Page};

use super::policies::invalid_body;
use super::{Caller, Management};

/// `POST …/grants` body.
#[derive(Debug, Clone, Deserialize)]
pub struct NewGrant {
    /// Grantee application (unarchived, unexpired).
    pub application_id: String,
    /// Grantee subject.
    pub user_id: String,
    /// Resource row id.
    pub resource_id: String,
    /// Scopes: 1..=64, each `^[a-z0-9:_./-]+$` and ≤ 200 chars, all declared by the resource.
    pub scopes: Vec<String>,
}

/// List filters; every given filter must match.
#[derive(Debug, Clone, Default)]
pub struct GrantFilter {
    /// By application.
    pub application_id: Option<String>,
    /// By subject.
    pub user_id: Option<String>,
    /// By resource row.
    pub resource_id: Option<String>,
    /// By the resource's provider.
    pub provider_id: Option<String>,
    /// `active` or `revoked`.
    pub status: Option<String>,
    /// Must hold all of these scopes.
    pub scopes: Vec<String>,
}

/// A grant with the names list rows carry.
#[derive(Debug, Clone)]
pub struct GrantRow {
    /// The grant.
    pub grant: Grant,
    /// Its application, if it still exists.
    pub application: Option<Application>,
    /// Its resource, if it still exists.
    pub resource: Option<Resource>,
    /// The resource's provider, if any.
    pub provider: Option<Provider>,
}

fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope.len() <= 200
        && scope
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b":_./-".contains(&b))
}

impl Management {
    /// Creates an active grant.
    pub async fn create_grant(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        input: NewGrant,
    ) -> Result<Grant> {
        if input.user_id.trim().is_empty() || input.user_id.len() > 512 {
            return Err(invalid_body(
                "user_id",
                "user_id must be 1 to 512 characters",
            ));
        }
        if input.scopes.is_empty()
            || input.scopes.len() > 64
            || !input.scopes.iter().all(|s| valid_scope(s))
        {
            return Err(invalid_body(
                "scopes",
                "scopes must be 1 to 64 values matching ^[a-z0-9:_./-]+$",
            ));
        }
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let now = self.clock.now();
        let application_id = ApplicationId::parse(&input.application_id)
            .map_err(|_| Error::not_found("application_not_found"))?;
        let application = uow
            .get_application(zone, &application_id)
            .await?
            .filter(|a| a.archived_at.is_none() && a.expires_at.is_none_or(|t| t > now))
            .ok_or_else(|| Error::not_found("application_not_found"))?;
        let resource_id = ResourceId::parse(&input.resource_id)
            .map_err(|_| Error::not_found("resource_not_found"))?;
        let resource = uow
            .get_resource(zone, &resource_id)
            .await?
            .filter(|r| r.archived_at.is_none())
            .ok_or_else(|| Error::not_found("resource_not_found"))?;
        if resource.identifier == self.config.control_audience {
            return Err(Error::forbidden(
                "control_resource_not_grantable",
                "the Control resource cannot be granted",
            ));
        }
        if let Some(extra) = input.scopes.iter().find(|s| !resource.scopes.contains(s)) {
            return Err(Error::forbidden(
                "grant_scopes_exceed_resource",
                format!("{extra} is not a scope of the resource"),
            ));
        }
        let grant = Grant {
            id: GrantId::parse(&self.ids.new_id())?,
            zone_id: zone.clone(),
            application_id: application.id,
            user_id: input.user_id.trim().to_owned(),
            resource_id: resource.id,
            scopes: input.scopes,
            status: "active".into(),
            attr: Attribution::created(&caller.attribution(), caller.via_operator, now),
        };
        uow.save_grant(&grant).await?;
        uow.commit().await?;
        Ok(grant)
    }

    /// Lists grants matching every filter, keyset-paginated over the matches.
    pub async fn list_grants(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        filter: &GrantFilter,
        page: &Page,
    ) -> Result<Vec<GrantRow>> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let mut out = Vec::new();
        let mut cursor = Page {
            limit: 500,
            after: page.after.clone(),
        };
        loop {
            let batch = uow.list_grants(zone, &cursor).await?;
            let full = batch.len() as u32 == cursor.limit;
            cursor.after = batch.last().map(|g| After {
                created_at: g.attr.created_at,
                id: g.id.to_string(),
            });
            for grant in batch {
                let matches = filter
                    .application_id
                    .as_deref()
                    .is_none_or(|a| grant.application_id.as_str() == a)
                    && filter.user_id.as_deref().is_none_or(|u| grant.user_id == u)
                    && filter
                        .resource_id
                        .as_deref()
                        .is_none_or(|r| grant.resource_id.as_str() == r)
                    && filter.status.as_deref().is_none_or(|s| grant.status == s)
                    && filter.scopes.iter().all(|s| grant.scopes.contains(s));
                if !matches {
                    continue;
                }
                let application = uow.get_application(zone, &grant.application_id).await?;
                let resource = uow.get_resource(zone, &grant.resource_id).await?;
                let provider = match resource
                    .as_ref()
                    .and_then(|r| r.credential_provider_id.as_deref())
                {
                    Some(p) => match crate::ids::ProviderId::parse(p) {
                        Ok(pid) => uow.get_provider(zone, &pid).await?,
                        Err(_) => None,
                    },
                    None => None,
                };
                if let Some(wanted) = filter.provider_id.as_deref() {
                    if provider.as_ref().map(|p| p.id.as_str()) != Some(wanted) {
                        continue;
                    }
                }
                out.push(GrantRow {
                    grant,
                    application,
                    resource,
                    provider,
                });
                if out.len() as u32 == page.limit {
                    return Ok(out);
                }
            }
            if !full {
                return Ok(out);
            }
        }
    }

    /// One grant.
    pub async fn get_grant(&self, caller: &Caller, zone: &ZoneId, id: &GrantId) -> Result<Grant> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        uow.get_grant(zone, id)
            .await?
            .ok_or_else(|| Error::not_found("grant_not_found"))
    }

    /// Revokes a grant; revoking twice is not an error.
    pub async fn revoke_grant(&self, caller: &Caller, zone: &ZoneId, id: &GrantId) -> Result<()> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let mut grant = uow
            .get_grant(zone, id)
            .await?
            .ok_or_else(|| Error::not_found("grant_not_found"))?;
        if grant.status != "revoked" {
            grant.status = "revoked".into();
            grant
                .attr
                .touch(&caller.attribution(), caller.via_operator, self.clock.now());
            uow.save_grant(&grant).await?;
        }
        uow.commit().await?;
        Ok(())
    }
}

/// One built-in policy template.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    /// Stable id.
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// What it is for.
    pub description: &'static str,
    /// A valid data document.
    pub content: &'static str,
}

/// The built-in templates: each a valid data document for one of the contract's data names.
pub const TEMPLATES: [Template; 4] = [
    Template {
        id: "application-bindings",
        name: "Application bindings",
        description: "Bind application ids to the key the decision contract matches them by.",
        content: "# caracal:data-document\npackage caracal.authz\nimport rego.v1\n\napp_ids := {\"<application-id>\": \"<application-id>\"}\n",
    },
    Template {
        id: "resource-grants",
        name: "Resource grants",
        description: "Grant each role of an owning application a set of scopes on a resource.",
        content: "# caracal:data-document\npackage caracal.authz\nimport rego.v1\n\napp_ids := {\"<application-id>\": \"<application-id>\"}\ngrants := {\"resource://<name>\": {\"application\": \"<application-id>\", \"roles\": {\"<role>\": [\"<scope>\"]}}}\n",
    },
    Template {
        id: "label-confinement",
        name: "Label confinement",
        description: "Confine agents carrying a label to a subset of resources and scopes.",
        content: "# caracal:data-document\npackage caracal.authz\nimport rego.v1\n\nconfinement := {\"<label>\": {\"resource://<name>\": [\"<scope>\"]}}\n",
    },
    Template {
        id: "zone-restriction",
        name: "Zone restriction",
        description: "Remove scopes from every mint in the zone, whatever the grants say.",
        content: "# caracal:data-document\npackage caracal.authz\nimport rego.v1\n\nrestrict := {\"resource://<name>\": [\"<scope>\"]}\n",
    },
];

#[cfg(test)]
mod tests {
    #[test]
    fn every_template_is_a_valid_data_document() {
        for template in super::TEMPLATES {
            assert!(
                crate::policy_document::parse(template.content).is_ok(),
                "{}",
                template.id
            );
        }
    }
}
