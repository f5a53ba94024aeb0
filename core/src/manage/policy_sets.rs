//! Policy sets (`spec/api.md §3.7`): versioned manifests of policy versions, one active per
//! zone; activation publishes `caracal.policy.invalidate` through the outbox.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::attribution::Attribution;
use crate::digest::sha256_hex;
use crate::error::{Error, ErrorKind, Result, StoreError};
use crate::ids::{OutboxId, PolicySetId, PolicySetVersionId, PolicyVersionId, ZoneId};
use crate::model::{OutboxMessage, PolicySet, PolicySetVersion};
use crate::naming::is_reserved_name;
use crate::policy::{compile_modules, simulate, PolicyModule};
use crate::policy_document::SCHEMA_VERSION;
use crate::ports::store::{Page, UnitOfWork};

use super::policies::{invalid_body, validate_document};
use super::{reserved_namespace, Caller, Management};

/// The stream the STS reloads its active policy from.
pub const POLICY_INVALIDATE_STREAM: &str = "caracal.policy.invalidate";

/// `POST …/policy-sets` body.
#[derive(Debug, Clone, Deserialize)]
pub struct NewPolicySet {
    /// Name 1..=200.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
}

/// One manifest entry.
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestEntry {
    /// A policy version of the same zone.
    pub policy_version_id: String,
}

/// The answer to an activation.
#[derive(Debug, Clone)]
pub struct Activation {
    /// The activated version.
    pub version_id: PolicySetVersionId,
    /// The invalidate message enqueued.
    pub outbox_id: OutboxId,
}

/// What `activation-status` reports.
#[derive(Debug, Clone)]
pub struct ActivationStatus {
    /// The set.
    pub set: PolicySet,
    /// The version asked about (or the active one).
    pub version: PolicySetVersion,
    /// Whether that version is the zone's active one.
    pub active: bool,
    /// The invalidate message found, if any.
    pub outbox: Option<OutboxMessage>,
    /// `dispatched|pending|dead|missing|mismatch`.
    pub outbox_state: &'static str,
    /// Propagation summary.
    pub propagation_status: &'static str,
}

fn invalid_contract(description: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unprocessable, "invalid_policy_contract").describe(description)
}

/// A manifest whose documents do not compile together (a name defined twice with different
/// values): the STS would install its deny-all, so the version is refused up front.
fn invalid_bundle(description: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unprocessable, "invalid_policy_bundle").describe(description)
}

/// A value as JavaScript's `String(v)` renders it, for the `input_schema_mismatch:<v>`
/// warning upstream builds that way.
fn js_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::Null => String::new(),
                other => js_string(other),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(_) => "[object Object]".into(),
    }
}

/// The simulation's input warnings (`spec/api.md §3.7`); none without an input. Any of them
/// means the input would not describe a real exchange of this zone (`would_activate` false).
pub fn simulation_warnings(input: Option<&Value>, zone: &ZoneId) -> Vec<String> {
    let Some(input) = input else {
        return Vec::new();
    };
    let mut warnings = Vec::new();
    match input.get("schema_version") {
        Some(Value::String(v)) if v == SCHEMA_VERSION => {}
        None => {}
        Some(other) => warnings.push(format!("input_schema_mismatch:{}", js_string(other))),
    }
    if input.pointer("/principal/zone_id").and_then(Value::as_str) != Some(zone.as_str()) {
        warnings.push("principal_zone_mismatch".to_owned());
    }
    for (key, warning) in [
        ("resource", "missing_resource"),
        ("action", "missing_action"),
        ("context", "missing_context"),
    ] {
        if !matches!(input.get(key), Some(Value::Object(_) | Value::Array(_))) {
            warnings.push(warning.to_owned());
        }
    }
    warnings
}

/// The lock every change of a zone's active policy set takes.
fn activation_lock(zone: &ZoneId) -> String {
    format!("policy-activation:{zone}")
}

/// `manifest_sha256`: hex SHA-256 of the compact manifest JSON.
pub fn manifest_sha256(manifest: &[PolicyVersionId]) -> String {
    let entries: Vec<Value> = manifest
        .iter()
        .map(|id| json!({ "policy_version_id": id }))
        .collect();
    sha256_hex(Value::Array(entries).to_string().as_bytes())
}

impl Management {
    /// Lists active policy sets.
    pub async fn list_policy_sets(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        page: &Page,
    ) -> Result<Vec<PolicySet>> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        Ok(uow.list_policy_sets(zone, page).await?)
    }

    async fn live_set(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        zone: &ZoneId,
        id: &PolicySetId,
    ) -> Result<PolicySet> {
        match uow.get_policy_set(zone, id).await? {
            Some(s) if s.archived_at.is_none() => Ok(s),
            _ => Err(Error::not_found("policy_set_not_found")),
        }
    }

    /// One policy set.
    pub async fn get_policy_set(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &PolicySetId,
    ) -> Result<PolicySet> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        self.live_set(&mut uow, zone, id).await
    }

    /// Creates a policy set.
    pub async fn create_policy_set(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        input: NewPolicySet,
    ) -> Result<PolicySet> {
        let name = input.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(invalid_body("name", "name must be 1 to 200 characters"));
        }
        if is_reserved_name(&name) && !caller.actor.is_bootstrap() {
            return Err(reserved_namespace());
        }
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        if uow.find_policy_set_by_name(zone, &name).await?.is_some() {
            return Err(Error::conflict(
                "policy_set_name_conflict",
                "an active policy set has this name",
            ));
        }
        let now = self.clock.now();
        let set = PolicySet {
            id: PolicySetId::parse(&self.ids.new_id())?,
            zone_id: zone.clone(),
            name,
            description: input.description,
            active_version_id: None,
            attr: Attribution::created(&caller.attribution(), caller.via_operator, now),
            archived_at: None,
        };
        uow.save_policy_set(&set).await.map_err(|e| match e {
            StoreError::Conflict(_) => Error::conflict(
                "policy_set_name_conflict",
                "an active policy set has this name",
            ),
            other => other.into(),
        })?;
        uow.commit().await?;
        Ok(set)
    }

    /// Checks a manifest: 1..=256 distinct, existing, live policy versions of this zone with one
    /// schema version and valid content.
    async fn check_manifest(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        zone: &ZoneId,
        ids: &[String],
    ) -> Result<Vec<PolicyVersionId>> {
        if ids.is_empty() {
            return Err(invalid_contract(
                "manifest must name at least one policy version",
            ));
        }
        if ids.len() > 256 {
            return Err(invalid_contract(
                "manifest may name at most 256 policy versions",
            ));
        }
        let mut seen = BTreeSet::new();
        let mut out = Vec::with_capacity(ids.len());
        let mut schemas = BTreeSet::new();
        for raw in ids {
            if !seen.insert(raw.as_str()) {
                return Err(invalid_contract(format!(
                    "policy version {raw} is listed twice"
                )));
            }
            let id = PolicyVersionId::parse(raw)
                .map_err(|_| invalid_contract(format!("policy version {raw} does not exist")))?;
            let version = uow
                .get_policy_version(zone, &id)
                .await?
                .filter(|v| v.archived_at.is_none())
                .ok_or_else(|| {
                    invalid_contract(format!("policy version {raw} does not exist in this zone"))
                })?;
            validate_document(&version.content).map_err(|e| {
                invalid_contract(format!(
                    "policy version {raw} content is invalid: {}",
                    e.description.unwrap_or_default()
                ))
            })?;
            schemas.insert(version.schema_version.clone());
            out.push(id);
        }
        if schemas.len() > 1 {
            return Err(invalid_contract("manifest mixes schema versions"));
        }
        if schemas.iter().any(|s| s != SCHEMA_VERSION) {
            return Err(invalid_contract(
                "manifest uses an unsupported schema version",
            ));
        }
        Ok(out)
    }

    /// The documents a manifest names, in manifest order.
    async fn manifest_modules(
        &self,
        uow: &mut Box<dyn UnitOfWork>,
        zone: &ZoneId,
        manifest: &[PolicyVersionId],
    ) -> Result<Vec<PolicyModule>> {
        let mut modules = Vec::with_capacity(manifest.len());
        for id in manifest {
            let version = uow.get_policy_version(zone, id).await?.ok_or_else(|| {
                invalid_contract(format!("policy version {id} does not exist in this zone"))
            })?;
            modules.push(PolicyModule {
                id: id.to_string(),
                content: version.content,
            });
        }
        Ok(modules)
    }

    /// Adds a set version from a manifest.
    pub async fn add_policy_set_version(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &PolicySetId,
        manifest: Vec<ManifestEntry>,
    ) -> Result<PolicySetVersion> {
        super::retry_lost_race(
            || self.add_policy_set_version_once(caller, zone, id, manifest.clone()),
            |e| e.code == "version_conflict",
        )
        .await
    }

    async fn add_policy_set_version_once(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &PolicySetId,
        manifest: Vec<ManifestEntry>,
    ) -> Result<PolicySetVersion> {
        let ids: Vec<String> = manifest.into_iter().map(|m| m.policy_version_id).collect();
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let set = self.live_set(&mut uow, zone, id).await?;
        let manifest = self.check_manifest(&mut uow, zone, &ids).await?;
        // Each document is valid alone; together they must compile into one bundle, as the
        // STS compiles them on activation.
        let modules = self.manifest_modules(&mut uow, zone, &manifest).await?;
        compile_modules(&modules).map_err(|e| invalid_bundle(e.to_string()))?;
        let version = PolicySetVersion {
            id: PolicySetVersionId::parse(&self.ids.new_id())?,
            policy_set_id: set.id.clone(),
            zone_id: zone.clone(),
            version: uow.max_policy_set_version(zone, id).await? + 1,
            manifest_sha256: manifest_sha256(&manifest),
            manifest,
            schema_version: SCHEMA_VERSION.into(),
            created_by: caller.attribution(),
            created_via_operator: caller.via_operator,
            created_at: self.clock.now(),
        };
        uow.insert_policy_set_version(&version)
            .await
            .map_err(super::policies::version_conflict)?;
        uow.commit().await?;
        Ok(version)
    }

    /// Versions of a set, newest first.
    pub async fn list_policy_set_versions(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &PolicySetId,
        page: &Page,
    ) -> Result<Vec<PolicySetVersion>> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        self.live_set(&mut uow, zone, id).await?;
        Ok(uow.list_policy_set_versions(zone, id, page).await?)
    }

    /// One set version.
    pub async fn get_policy_set_version(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &PolicySetId,
        version: &PolicySetVersionId,
    ) -> Result<PolicySetVersion> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        self.live_set(&mut uow, zone, id).await?;
        uow.get_policy_set_version(zone, version)
            .await?
            .filter(|v| &v.policy_set_id == id)
            .ok_or_else(|| Error::not_found("policy_set_version_not_found"))
    }

    /// Makes `version` the zone's active policy: other sets are deactivated, this one points at
    /// the version, and the invalidate message commits in the same unit of work.
    pub async fn activate_policy_set(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &PolicySetId,
        version_id: &str,
    ) -> Result<Activation> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        // "One transaction under a zone lock" (spec/api.md §3.7): concurrent activations in a
        // zone run one after the other, so exactly one set ends active.
        uow.lock(&activation_lock(zone)).await?;
        let mut set = self.live_set(&mut uow, zone, id).await?;
        let version = match PolicySetVersionId::parse(version_id) {
            Ok(vid) => uow
                .get_policy_set_version(zone, &vid)
                .await?
                .filter(|v| &v.policy_set_id == id),
            Err(_) => None,
        }
        .ok_or_else(|| Error::not_found("version_not_found"))?;
        for policy_version in &version.manifest {
            let live = uow
                .get_policy_version(zone, policy_version)
                .await?
                .is_some_and(|v| v.archived_at.is_none());
            if !live {
                return Err(Error::conflict(
                    "referenced_policy_version_missing",
                    format!("policy version {policy_version} no longer exists"),
                ));
            }
        }
        let now = self.clock.now();
        for mut other in uow.list_active_policy_sets(zone).await? {
            if other.id != set.id {
                other.active_version_id = None;
                other
                    .attr
                    .touch(&caller.attribution(), caller.via_operator, now);
                uow.save_policy_set(&other).await?;
            }
        }
        set.active_version_id = Some(version.id.clone());
        set.attr
            .touch(&caller.attribution(), caller.via_operator, now);
        uow.save_policy_set(&set).await?;
        let mut fields = BTreeMap::new();
        fields.insert("zone_id".to_owned(), zone.to_string());
        fields.insert("policy_set_id".to_owned(), set.id.to_string());
        fields.insert("policy_set_version_id".to_owned(), version.id.to_string());
        let message = self.outbox(caller, POLICY_INVALIDATE_STREAM, fields)?;
        uow.enqueue_outbox(&message).await?;
        uow.commit().await?;
        Ok(Activation {
            version_id: version.id,
            outbox_id: message.id,
        })
    }

    /// Reports how far an activation has propagated. This server has no STS yet, so the STS
    /// part is always `not_configured` and a dispatched activation waits for it.
    pub async fn activation_status(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &PolicySetId,
        version_id: Option<&str>,
        outbox_id: Option<&str>,
    ) -> Result<ActivationStatus> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        let set = self.live_set(&mut uow, zone, id).await?;
        let version = match version_id {
            Some(raw) => {
                let vid = PolicySetVersionId::parse(raw)
                    .map_err(|_| Error::not_found("policy_set_binding_not_found"))?;
                uow.get_policy_set_version(zone, &vid)
                    .await?
                    .filter(|v| &v.policy_set_id == id)
            }
            None => match &set.active_version_id {
                Some(vid) => uow.get_policy_set_version(zone, vid).await?,
                None => return Err(Error::not_found("active_policy_set_version_not_found")),
            },
        }
        .ok_or_else(|| Error::not_found("policy_set_binding_not_found"))?;
        let active = set.active_version_id.as_ref() == Some(&version.id);
        let expected = [
            ("zone_id", zone.as_str()),
            ("policy_set_id", id.as_str()),
            ("policy_set_version_id", version.id.as_str()),
        ];
        let (outbox, outbox_state) = match outbox_id {
            Some(raw) => {
                let found = match OutboxId::parse(raw) {
                    Ok(oid) => uow.get_outbox(&oid).await?,
                    Err(_) => None,
                };
                match found {
                    None => (None, "missing"),
                    Some(m) => {
                        let matches = m.stream == POLICY_INVALIDATE_STREAM
                            && expected
                                .iter()
                                .all(|(k, v)| m.fields.get(*k).map(String::as_str) == Some(*v));
                        let state = if matches { m.state() } else { "mismatch" };
                        (Some(m), state)
                    }
                }
            }
            None => match uow
                .find_latest_outbox(POLICY_INVALIDATE_STREAM, &expected)
                .await?
            {
                Some(m) => {
                    let state = m.state();
                    (Some(m), state)
                }
                None => (None, "missing"),
            },
        };
        let propagation_status = if !active {
            "waiting_for_activation"
        } else if matches!(outbox_state, "dead" | "mismatch") {
            "failed"
        } else if outbox_state != "dispatched" {
            "waiting_for_outbox"
        } else {
            "waiting_for_sts"
        };
        Ok(ActivationStatus {
            set,
            version,
            active,
            outbox,
            outbox_state,
            propagation_status,
        })
    }

    /// Dry-runs a version against an input: the manifest is checked, the input is checked for
    /// the shape of a real exchange of this zone, and with an input the version is evaluated
    /// by the decision contract in process, the same evaluator the STS decides with. Nothing
    /// about the zone's active policy changes.
    pub async fn simulate_policy_set(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &PolicySetId,
        version_id: &str,
        input: Option<Value>,
    ) -> Result<Value> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        self.live_set(&mut uow, zone, id).await?;
        let version = match PolicySetVersionId::parse(version_id) {
            Ok(vid) => uow
                .get_policy_set_version(zone, &vid)
                .await?
                .filter(|v| &v.policy_set_id == id),
            Err(_) => None,
        }
        .ok_or_else(|| Error::not_found("version_not_found"))?;
        let ids: Vec<String> = version.manifest.iter().map(|v| v.to_string()).collect();
        let manifest = self.check_manifest(&mut uow, zone, &ids).await?;
        let modules = self.manifest_modules(&mut uow, zone, &manifest).await?;
        let mut warnings = simulation_warnings(input.as_ref(), zone);
        let would_activate = warnings.is_empty();
        let (explanation, result) = match &input {
            None => (
                json!({
                    "evaluation": "not_executed",
                    "reason": "simulation validates rollout contract and input shape without mutating active policy bindings",
                }),
                Value::Null,
            ),
            Some(input) => match simulate(&modules, input) {
                Ok(decision) => {
                    let result = decision.to_json();
                    (
                        json!({
                            "evaluation": "executed",
                            "decision": result["decision"],
                            "policy_set_version_id": version.id,
                            "manifest_sha256": version.manifest_sha256,
                            "reason": "the decision contract evaluated the supplied input without mutating active policy bindings",
                        }),
                        result,
                    )
                }
                Err(err) => {
                    warnings.push(format!("sts_simulation_failed:{}", err.code()));
                    (
                        json!({ "evaluation": "failed", "reason": err.to_string() }),
                        Value::Null,
                    )
                }
            },
        };
        let policies: Vec<Value> = version.manifest.iter().map(|v| json!(v)).collect();
        Ok(json!({
            "dry_run": true,
            "would_activate": would_activate,
            "policy_set_id": id,
            "version_id": version.id,
            "schema_version": version.schema_version,
            "input_schema_version": SCHEMA_VERSION,
            "manifest_sha256": version.manifest_sha256,
            "policies": policies,
            "warnings": warnings,
            "explanation": explanation,
            "result": result,
        }))
    }

    /// Archives a set; deleting the active set leaves the zone deny-all and tells the STS.
    pub async fn delete_policy_set(
        &self,
        caller: &Caller,
        zone: &ZoneId,
        id: &PolicySetId,
    ) -> Result<()> {
        let mut uow = self.begin(caller).await?;
        self.live_zone(&mut uow, zone).await?;
        uow.lock(&activation_lock(zone)).await?;
        let mut set = self.live_set(&mut uow, zone, id).await?;
        let was_active = set.active_version_id.take().is_some();
        let now = self.clock.now();
        set.archived_at = Some(now);
        set.attr
            .touch(&caller.attribution(), caller.via_operator, now);
        uow.save_policy_set(&set).await?;
        if was_active {
            let mut fields = BTreeMap::new();
            fields.insert("zone_id".to_owned(), zone.to_string());
            fields.insert("policy_set_id".to_owned(), set.id.to_string());
            let message = self.outbox(caller, POLICY_INVALIDATE_STREAM, fields)?;
            uow.enqueue_outbox(&message).await?;
        }
        uow.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulation_warnings_follow_upstream() {
        let zone = ZoneId::parse("z1").expect("zone");
        assert!(simulation_warnings(None, &zone).is_empty());
        assert!(simulation_warnings(
            Some(
                &json!({"schema_version": "2026-05-20", "principal": {"zone_id": "z1"},
                         "resource": {}, "action": {}, "context": {}})
            ),
            &zone
        )
        .is_empty());
        assert_eq!(
            simulation_warnings(Some(&json!({})), &zone),
            vec![
                "principal_zone_mismatch",
                "missing_resource",
                "missing_action",
                "missing_context"
            ]
        );
        assert_eq!(
            simulation_warnings(
                Some(&json!({"schema_version": 7, "principal": {"zone_id": "z2"},
                             "resource": null, "action": "x", "context": []})),
                &zone
            ),
            vec![
                "input_schema_mismatch:7",
                "principal_zone_mismatch",
                "missing_resource",
                "missing_action"
            ]
        );
        assert_eq!(
            js_string(&json!([1, null, "a", {}])),
            "1,,a,[object Object]"
        );
    }

    #[test]
    fn manifest_digest_is_over_compact_json() {
        let ids = vec![PolicyVersionId::parse("v1").expect("valid id")];
        assert_eq!(
            manifest_sha256(&ids),
            sha256_hex(br#"[{"policy_version_id":"v1"}]"#)
        );
    }
}
