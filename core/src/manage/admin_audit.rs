//! The admin audit log (`spec/api.md §7`): one record per mutating `/v1` call, hash-chained per
//! zone so that a removed or altered record breaks every later link.

use serde_json::{json, Map, Value};

use crate::digest::sha256_hex;
use crate::error::{Error, ErrorKind, Result};
use crate::model::{AdminAuditRecord, TokenScope};
use crate::ports::store::ZoneScope;

use super::{Actor, Management};

/// Collections whose `<collection>/<id>` pair names the audited entity.
const ENTITY_COLLECTIONS: [&str; 15] = [
    "zones",
    "applications",
    "workloads",
    "resources",
    "providers",
    "provider-connections",
    "policies",
    "policy-sets",
    "policy-templates",
    "grants",
    "subject-issuers",
    "subjects",
    "approvals",
    "admin-tokens",
    "operator-conversations",
];

/// Body keys whose presence means a secret was set or rotated (the value is never recorded).
const SECRET_FIELDS: [&str; 10] = [
    "client_secret",
    "secret",
    "password",
    "token",
    "private_key",
    "api_key",
    "assertion",
    "bearer_token",
    "access_token",
    "refresh_token",
];

/// What the HTTP layer knows about one finished mutating request.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// Request id.
    pub request_id: String,
    /// The authenticated actor, if any.
    pub actor: Option<Actor>,
    /// HTTP method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Response status.
    pub status: u16,
    /// The request body, if it was JSON (only key names are kept).
    pub body: Option<Value>,
    /// The `id` of a created row (201 responses).
    pub created_id: Option<String>,
}

/// Dotted key paths of a JSON body, depth ≤ 3, at most 64, sorted.
fn changed_fields(body: &Value) -> Vec<String> {
    fn walk(value: &Value, prefix: &str, depth: usize, out: &mut Vec<String>) {
        if let Value::Object(map) = value {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                if depth < 3
                    && child.is_object()
                    && child.as_object().is_some_and(|m| !m.is_empty())
                {
                    walk(child, &path, depth + 1, out);
                } else {
                    out.push(path);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(body, "", 1, &mut out);
    out.sort();
    out.truncate(64);
    out
}

fn any_secret_key(body: &Value) -> bool {
    match body {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| SECRET_FIELDS.contains(&k.as_str()) || any_secret_key(v)),
        Value::Array(items) => items.iter().any(any_secret_key),
        _ => false,
    }
}

/// `(entity_type, entity_id)`: the innermost `<collection>/<id>` of the path, or for a create the
/// collection and the new id.
fn entity_of(path: &str, created_id: Option<&str>) -> (Option<String>, Option<String>) {
    let parts: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
    let mut found = (None, None);
    for (i, part) in parts.iter().enumerate() {
        if ENTITY_COLLECTIONS.contains(part) {
            match parts.get(i + 1) {
                Some(id) if !id.is_empty() => {
                    found = (Some(part.to_string()), Some(id.to_string()))
                }
                _ => {
                    if let Some(id) = created_id {
                        found = (Some(part.to_string()), Some(id.to_owned()));
                    }
                }
            }
        }
    }
    found
}

fn change_kind(method: &str, path: &str, body: Option<&Value>) -> Option<&'static str> {
    let last = path.rsplit('/').next().unwrap_or("");
    match method {
        "DELETE" => Some("delete"),
        "POST" if last == "rotate-secret" => Some("secret_rotation"),
        "POST" => {
            let parts: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
            // A verb after `<collection>/<id>` (activate, versions, simulate…) is an action.
            let is_sub = parts.len() >= 3
                && ENTITY_COLLECTIONS.contains(&parts[parts.len() - 3])
                && !ENTITY_COLLECTIONS.contains(&last);
            Some(if is_sub { "action" } else { "create" })
        }
        "PUT" | "PATCH" => Some(if body.is_some_and(any_secret_key) {
            "secret_rotation"
        } else {
            "update"
        }),
        _ => None,
    }
}

/// The canonical content of a record: each field then 0x1F, nulls as "", NULs stripped.
fn content_hash(r: &AdminAuditRecord) -> String {
    let status = r.status_code.to_string();
    let payload = r.payload_json.to_string();
    let occurred = r.occurred_at.to_iso_millis();
    let fields: [&str; 14] = [
        &r.id,
        &r.request_id,
        r.actor_id.as_deref().unwrap_or(""),
        r.actor_name.as_deref().unwrap_or(""),
        r.actor_scope.as_deref().unwrap_or(""),
        &r.action,
        &r.method,
        &r.path,
        r.zone_id.as_deref().unwrap_or(""),
        r.entity_type.as_deref().unwrap_or(""),
        r.entity_id.as_deref().unwrap_or(""),
        &status,
        &payload,
        &occurred,
    ];
    let mut canonical = String::new();
    for field in fields {
        canonical.extend(field.chars().filter(|c| *c != '\0'));
        canonical.push('\u{1f}');
    }
    sha256_hex(canonical.as_bytes())
}

impl Management {
    /// Appends the audit record of one finished request to its zone's chain. A failure here
    /// after a successful change is reported to the caller as `audit_unavailable`.
    pub async fn record_admin_audit(&self, entry: AuditEntry) -> Result<AdminAuditRecord> {
        let path_zone = entry
            .path
            .strip_prefix("/v1/zones/")
            .and_then(|rest| rest.split('/').next())
            .filter(|z| !z.is_empty())
            .map(str::to_owned);
        let zone_id = match (&path_zone, entry.method.as_str(), entry.path.as_str()) {
            (None, "POST", "/v1/zones") if entry.status < 400 => entry.created_id.clone(),
            _ => path_zone,
        };
        let (entity_type, entity_id) = entity_of(&entry.path, entry.created_id.as_deref());
        let (rls_mode, guc) = match entry.actor.as_ref().map(Actor::store_scope) {
            Some(ZoneScope::Zone(z)) => ("zone_scoped", z.to_string()),
            _ => ("control_plane_wildcard", "*".to_owned()),
        };
        let mut payload = Map::new();
        payload.insert("rls_mode".into(), json!(rls_mode));
        payload.insert("rls_zone_guc".into(), json!(guc));
        payload.insert("operator".into(), Value::Null);
        if entry.status < 400 {
            let fields = entry.body.as_ref().map(changed_fields).unwrap_or_default();
            let kind = change_kind(&entry.method, &entry.path, entry.body.as_ref());
            let recordable = !(matches!(kind, Some("update")) && fields.is_empty());
            if let (Some(kind), true) = (kind, recordable) {
                payload.insert("change_kind".into(), json!(kind));
                payload.insert("changed_fields".into(), json!(fields));
                if entry.body.as_ref().is_some_and(any_secret_key) || kind == "secret_rotation" {
                    payload.insert("secret_rotated".into(), json!(true));
                }
            }
        }
        let actor = entry.actor.as_ref();
        let mut record = AdminAuditRecord {
            id: self.ids.new_id(),
            request_id: entry.request_id.clone(),
            actor_id: actor.map(|a| a.token_id.clone()),
            actor_name: actor.map(|a| a.name.clone()),
            actor_scope: actor.map(|a| match a.scope {
                TokenScope::Global => "global".to_owned(),
                TokenScope::Zone => "zone".to_owned(),
            }),
            action: format!("{} {}", entry.method, entry.path),
            method: entry.method.clone(),
            path: entry.path.clone(),
            zone_id,
            entity_type,
            entity_id,
            status_code: i32::from(entry.status),
            payload_json: Value::Object(payload),
            occurred_at: self.clock.now(),
            content_sha256: String::new(),
            prev_content_sha256: None,
            chain_seq: 0,
            chain_hmac: None,
        };
        // Audit rows are written by the platform, whatever the caller's zone scope: the chain
        // of a zone must be complete even for requests that failed authorization.
        let mut uow = self.store.begin(&ZoneScope::All).await?;
        let last = uow.last_admin_audit(record.zone_id.as_deref()).await?;
        record.prev_content_sha256 = last.as_ref().map(|l| l.content_sha256.clone());
        record.chain_seq = last.map(|l| l.chain_seq + 1).unwrap_or(1);
        record.content_sha256 = content_hash(&record);
        record.chain_hmac = self.audit_mac.as_ref().map(|mac| {
            let link = format!(
                "{}|{}",
                record.content_sha256,
                record.prev_content_sha256.as_deref().unwrap_or("")
            );
            mac.sign_hex(link.as_bytes())
        });
        uow.append_admin_audit(&record).await?;
        uow.commit().await?;
        Ok(record)
    }
}

/// Recomputes a chain (oldest first) and names the first broken link, if any.
pub fn verify_chain(records: &[AdminAuditRecord]) -> Result<(), String> {
    let mut prev: Option<&AdminAuditRecord> = None;
    for record in records {
        if content_hash(record) != record.content_sha256 {
            return Err(format!("record {} content hash mismatch", record.id));
        }
        let expected_prev = prev.map(|p| p.content_sha256.clone());
        let expected_seq = prev.map(|p| p.chain_seq + 1).unwrap_or(1);
        if record.prev_content_sha256 != expected_prev || record.chain_seq != expected_seq {
            return Err(format!(
                "record {} does not link to its predecessor",
                record.id
            ));
        }
        prev = Some(record);
    }
    Ok(())
}

/// The error the API answers when a change was applied but its audit row was not stored.
pub fn audit_unavailable() -> Error {
    Error::new(ErrorKind::Internal, "audit_unavailable")
        .describe("operation applied but its audit record could not be persisted")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summaries_keep_names_never_values() {
        let body = json!({"name":"x","config_json":{"api_key":"SECRET","header_name":"h"}});
        assert_eq!(
            changed_fields(&body),
            vec!["config_json.api_key", "config_json.header_name", "name"]
        );
        assert!(any_secret_key(&body));
        assert_eq!(
            change_kind("PATCH", "/v1/zones/z/providers/p", Some(&body)),
            Some("secret_rotation")
        );
        assert_eq!(
            change_kind("POST", "/v1/zones/z/applications/a/rotate-secret", None),
            Some("secret_rotation")
        );
        assert_eq!(
            change_kind("POST", "/v1/zones/z/policy-sets/s/activate", None),
            Some("action")
        );
        assert_eq!(
            change_kind("POST", "/v1/zones/z/applications", None),
            Some("create")
        );
    }

    #[test]
    fn entities_are_the_innermost_pair() {
        assert_eq!(
            entity_of("/v1/zones/z/applications/a/rotate-secret", None),
            (Some("applications".into()), Some("a".into()))
        );
        assert_eq!(
            entity_of("/v1/zones/z/resources", Some("r1")),
            (Some("resources".into()), Some("r1".into()))
        );
        assert_eq!(
            entity_of("/v1/zones", Some("z9")),
            (Some("zones".into()), Some("z9".into()))
        );
    }
}
