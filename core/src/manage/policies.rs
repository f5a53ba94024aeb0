//! Policies (`spec/api.md §3.6`): named series of immutable, content-hashed data documents.

use serde::Deserialize;

use crate::attribution::Attribution;
use crate::digest::sha256_hex;
use crate::error::{Error, ErrorKind, Result, StoreError};
use crate::ids::{PolicyId, PolicyVersionId, ZoneId};
use crate::model::{Policy, PolicyVersion};
use crate::naming::is_reserved_name;
use crate::policy_document::{self, DataDocument, SCHEMA_VERSION};
use crate::ports::store::{Page, UnitOfWork};

use super::{reserved_namespace, Caller, Management};

/// `POST …/policies` body.
#[derive(Debug, Clone, Deserialize)]
pub struct NewPolicy {
    /// Name, 1..=200.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// The data document.
    pub content: String,
}

/// A created policy and its first version.
#[derive(Debug, Clone)]
pub struct CreatedPolicy {
    /// The policy.
    pub policy: Policy,
    /// Version 1.
    pub version: PolicyVersion,
}

/// The `422 invalid_rego` rejection with the validator's code as description.
pub fn invalid_rego(code: &str) -> Error {
    Error::new(ErrorKind::Unprocessable, "invalid_rego").describe(code.to_owned())
}

/// Validates a document as `/v1/policies/validate` and every write do.
pub fn validate_document(content: &str) -> Result<DataDocument> {
    policy_document::parse(content).map_err(|e| invalid_rego(&e.code))
}

fn name_conflict(err: StoreError) -> Error {
    match err {
        StoreError::Conflict(_) => {
            Error::conflict("policy_name_conflict", "an active policy has this name")
        }
        other => other.into(),
    }
}

impl Management {
    /// Lists active policies.
    pub async fn list_policies(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<Policy>> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        Ok(uow.list_policies(zone, page).await?)
    }

    async fn live_policy(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        zone: &ZoneId,
        id: &PolicyId,
    ) -> Result<Policy> {
        match uow.get_policy(zone, id).await? {
            Some(p) if p.archived_at.is_none() => Ok(p),
            _ => Err(Error::not_found("policy_not_found")),
        }
    }

    /// A policy and all its versions, newest first.
    pub async fn get_policy(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &PolicyId,
    ) -> Result<(Policy, Vec<PolicyVersion>)> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let policy = self.live_policy(&mut uow, zone, id).await?;
        let versions = uow.list_policy_versions(zone, id).await?;
        Ok((policy, versions))
    }

    fn new_version(
        &self,
        caller: &Caller,
        policy: &Policy,
        version: i32,
        content: String,
    ) -> Result<PolicyVersion> {
        Ok(PolicyVersion {
            id: PolicyVersionId::parse(&self.ids.new_id())?,
            policy_id: policy.id.clone(),
            zone_id: policy.zone_id.clone(),
            version,
            content_sha256: sha256_hex(content.as_bytes()),
            content,
            schema_version: SCHEMA_VERSION.into(),
            created_by: caller.attribution(),
            created_via_operator: caller.via_operator,
            created_at: self.clock.now(),
            archived_at: None,
        })
    }

    /// Creates a policy with version 1.
    pub async fn create_policy(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        input: NewPolicy,
    ) -> Result<CreatedPolicy> {
        let name = input.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(invalid_body("name", "name must be 1 to 200 characters"));
        }
        if input.content.is_empty() {
            return Err(invalid_body("content", "content must not be empty"));
        }
        if is_reserved_name(&name) && !caller.actor.is_bootstrap() {
            return Err(reserved_namespace());
        }
        validate_document(&input.content)?;
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        if uow.find_policy_by_name(zone, &name).await?.is_some() {
            return Err(Error::conflict(
                "policy_name_conflict",
                "an active policy has this name",
            ));
        }
        let now = self.clock.now();
        let policy = Policy {
            id: PolicyId::parse(&self.ids.new_id())?,
            zone_id: zone.clone(),
            name,
            description: input.description,
            attr: Attribution::created(&caller.attribution(), caller.via_operator, now),
            archived_at: None,
        };
        let version = self.new_version(caller, &policy, 1, input.content)?;
        uow.save_policy(&policy).await.map_err(name_conflict)?;
        uow.save_policy_version(&version).await?;
        uow.commit().await?;
        Ok(CreatedPolicy { policy, version })
    }

    /// Adds a version (always a new one, even for identical content).
    pub async fn add_policy_version(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &PolicyId,
        content: String,
    ) -> Result<PolicyVersion> {
        super::retry_lost_race(
            || self.add_policy_version_once(caller, zone, id, content.clone()),
            |e| e.code == "version_conflict",
        )
        .await
    }

    async fn add_policy_version_once(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &PolicyId,
        content: String,
    ) -> Result<PolicyVersion> {
        if content.is_empty() {
            return Err(invalid_body("content", "content must not be empty"));
        }
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let policy = self.live_policy(&mut uow, zone, id).await?;
        validate_document(&content)?;
        let next = uow
            .list_policy_versions(zone, id)
            .await?
            .first()
            .map(|v| v.version + 1)
            .unwrap_or(1);
        let version = self.new_version(caller, &policy, next, content)?;
        uow.save_policy_version(&version)
            .await
            .map_err(version_conflict)?;
        uow.commit().await?;
        Ok(version)
    }

    /// Archives a policy and its versions.
    pub async fn delete_policy(&self, caller: &Caller, zone: &ZoneId, id: &PolicyId) -> Result<()> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let mut policy = self.live_policy(&mut uow, zone, id).await?;
        let now = self.clock.now();
        policy.archived_at = Some(now);
        policy
            .attr
            .touch(&caller.attribution(), caller.via_operator, now);
        uow.save_policy(&policy).await?;
        for mut version in uow.list_policy_versions(zone, id).await? {
            if version.archived_at.is_none() {
                version.archived_at = Some(now);
                uow.save_policy_version(&version).await?;
            }
        }
        uow.commit().await?;
        Ok(())
    }
}

/// `400 invalid_body` in the framework's validation shape (`details.issues`).
pub fn invalid_body(path: &str, message: &str) -> Error {
    Error::new(ErrorKind::Invalid, "invalid_body")
        .describe("Request body failed validation")
        .with_extra(serde_json::json!({
            "details": { "issues": [ { "path": [path], "message": message } ] }
        }))
}

/// A version number taken by a concurrent writer.
pub(crate) fn version_conflict(err: StoreError) -> Error {
    match err {
        StoreError::Conflict(_) => Error::conflict(
            "version_conflict",
            "a concurrent writer took this version number",
        ),
        other => other.into(),
    }
}
