//! Adopter data (`spec/sts.md §10.3`), merged from a policy set's documents and indexed once per
//! bundle, so a decision only turns the rows its request can reach into facts: the requested
//! resource's grant, the roles named by the principal's labels, the confinement rules whose
//! prefix starts one of those labels, and the risk and approval rows of the requested scopes.
//!
//! The shapes are read the way Rego reads them: a member of the wrong type is simply undefined
//! (a grant without a string `application` is owned by nobody), except for `risk` and
//! `approval_tiers`, whose malformation fails every mint closed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value};

use crate::policy_document::DataDocument;

use super::PolicyError;

/// One resource's grant, as far as the contract can use it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Grant {
    /// The binding key of the owning application, when it is a string.
    pub application: Option<String>,
    /// Role → the string scopes its list (or object values) holds.
    pub roles: HashMap<String, BTreeSet<String>>,
}

/// A confinement rule with a string prefix (a rule without one never matches a label).
#[derive(Debug, Clone)]
pub(crate) struct Confinement {
    /// Position in the document, naming the rule in facts.
    pub index: i64,
    /// The label prefix.
    pub prefix: String,
    /// The string scopes it allows.
    pub scopes: BTreeSet<String>,
}

/// `risk`: either well formed and indexed by scope, or malformed.
#[derive(Debug, Clone)]
pub(crate) enum Risk {
    /// Scope → its tiers (more than one is an evaluation conflict, found by the contract).
    Valid(HashMap<String, BTreeSet<String>>),
    /// Not an array, or an entry without non-empty string `scope` and `tier`.
    Malformed,
}

/// `approval_tiers`: either well formed and indexed by tier, or malformed.
#[derive(Debug, Clone)]
pub(crate) enum Approvals {
    /// The declarations verbatim, and tier → their positions.
    Valid {
        declarations: Vec<Value>,
        by_tier: HashMap<String, Vec<usize>>,
    },
    /// Not an array, or a declaration outside its schema.
    Malformed,
}

/// A zone's data, indexed for decisions.
#[derive(Debug, Clone)]
pub(crate) struct ZoneData {
    /// Binding key → application id (string values only: only those can equal a principal id).
    pub app_ids: HashMap<String, String>,
    /// Resource identifier → grant.
    pub grants: HashMap<String, Grant>,
    /// Rules that can match a label.
    pub confinement: Vec<Confinement>,
    /// Elements of `restrict` (any one freezes the zone).
    pub restriction_entries: i64,
    /// Risk rows.
    pub risk: Risk,
    /// Approval declarations.
    pub approvals: Approvals,
}

/// Merges the documents of one policy set. A name defined twice with different values is a
/// conflict, as OPA reports for two complete rules disagreeing; identical repeats are harmless.
pub(crate) fn merge(documents: &[DataDocument]) -> Result<BTreeMap<String, Value>, PolicyError> {
    let mut merged: BTreeMap<String, Value> = BTreeMap::new();
    for document in documents {
        for (name, value) in &document.values {
            match merged.get(name) {
                Some(existing) if existing != value => {
                    return Err(PolicyError::ConflictingData(name.clone()));
                }
                Some(_) => {}
                None => {
                    merged.insert(name.clone(), value.clone());
                }
            }
        }
    }
    Ok(merged)
}

/// The members of a collection the way Rego's `some x in c` walks it: array elements or object
/// values; nothing for a scalar.
fn members(value: &Value) -> Box<dyn Iterator<Item = &Value> + '_> {
    match value {
        Value::Array(items) => Box::new(items.iter()),
        Value::Object(map) => Box::new(map.values()),
        _ => Box::new(std::iter::empty()),
    }
}

fn strings(value: &Value) -> BTreeSet<String> {
    members(value)
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

fn non_empty_str<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    object
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn index_grants(value: Option<&Value>) -> HashMap<String, Grant> {
    let Some(Value::Object(grants)) = value else {
        return HashMap::new();
    };
    grants
        .iter()
        .filter_map(|(identifier, grant)| {
            let grant = grant.as_object()?;
            let roles = match grant.get("roles") {
                Some(Value::Object(roles)) => roles
                    .iter()
                    .map(|(role, scopes)| (role.clone(), strings(scopes)))
                    .collect(),
                _ => HashMap::new(),
            };
            Some((
                identifier.clone(),
                Grant {
                    application: grant
                        .get("application")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    roles,
                },
            ))
        })
        .collect()
}

fn index_confinement(value: Option<&Value>) -> Vec<Confinement> {
    let Some(value) = value else {
        return Vec::new();
    };
    members(value)
        .enumerate()
        .filter_map(|(index, rule)| {
            let rule = rule.as_object()?;
            Some(Confinement {
                index: i64::try_from(index).ok()?,
                prefix: rule.get("label_prefix")?.as_str()?.to_owned(),
                scopes: rule.get("scopes").map(strings).unwrap_or_default(),
            })
        })
        .collect()
}

fn count_restrictions(value: Option<&Value>) -> i64 {
    let count = match value {
        Some(Value::Array(items)) => items.len(),
        Some(Value::Object(map)) => map.len(),
        _ => 0,
    };
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn index_risk(value: Option<&Value>) -> Risk {
    let rows = match value {
        None => return Risk::Valid(HashMap::new()),
        Some(Value::Array(rows)) => rows,
        Some(_) => return Risk::Malformed,
    };
    let mut by_scope: HashMap<String, BTreeSet<String>> = HashMap::new();
    for row in rows {
        let Some(row) = row.as_object() else {
            return Risk::Malformed;
        };
        let (Some(scope), Some(tier)) = (non_empty_str(row, "scope"), non_empty_str(row, "tier"))
        else {
            return Risk::Malformed;
        };
        by_scope
            .entry(scope.to_owned())
            .or_default()
            .insert(tier.to_owned());
    }
    Risk::Valid(by_scope)
}

/// A declaration's optional members are validated at their defaults when absent: approver
/// `operator`, privacy `identified`, `ttl_seconds` 1800.
fn valid_declaration(declaration: &Map<String, Value>) -> bool {
    let enum_member = |key: &str, allowed: &[&str]| match declaration.get(key) {
        None => true,
        Some(Value::String(v)) => allowed.contains(&v.as_str()),
        Some(_) => false,
    };
    let ttl_ok = match declaration.get("ttl_seconds") {
        None => true,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f.fract() == 0.0 && f > 0.0),
        Some(_) => false,
    };
    non_empty_str(declaration, "tier").is_some()
        && enum_member("approver", &["operator", "subject", "any"])
        && enum_member("privacy", &["identified", "pseudonymous", "anonymous"])
        && ttl_ok
}

fn index_approvals(value: Option<&Value>) -> Approvals {
    let declarations = match value {
        None => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => return Approvals::Malformed,
    };
    let mut by_tier: HashMap<String, Vec<usize>> = HashMap::new();
    for (position, declaration) in declarations.iter().enumerate() {
        let Some(object) = declaration.as_object().filter(|d| valid_declaration(d)) else {
            return Approvals::Malformed;
        };
        if let Some(tier) = non_empty_str(object, "tier") {
            by_tier.entry(tier.to_owned()).or_default().push(position);
        }
    }
    Approvals::Valid {
        declarations,
        by_tier,
    }
}

impl ZoneData {
    /// Indexes merged data.
    pub(crate) fn index(data: &BTreeMap<String, Value>) -> Self {
        let app_ids = match data.get("app_ids") {
            Some(Value::Object(map)) => map
                .iter()
                .filter_map(|(key, id)| Some((key.clone(), id.as_str()?.to_owned())))
                .collect(),
            _ => HashMap::new(),
        };
        Self {
            app_ids,
            grants: index_grants(data.get("grants")),
            confinement: index_confinement(data.get("confinement")),
            restriction_entries: count_restrictions(data.get("restrict")),
            risk: index_risk(data.get("risk")),
            approvals: index_approvals(data.get("approval_tiers")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(value: Value) -> ZoneData {
        let map: BTreeMap<String, Value> = value
            .as_object()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .collect();
        ZoneData::index(&map)
    }

    #[test]
    fn risk_shapes() {
        assert!(matches!(data(json!({})).risk, Risk::Valid(_)));
        assert!(matches!(data(json!({"risk": {}})).risk, Risk::Malformed));
        assert!(matches!(
            data(json!({"risk": [{"scope": "a"}]})).risk,
            Risk::Malformed
        ));
        assert!(matches!(
            data(json!({"risk": [{"scope": "", "tier": "high"}]})).risk,
            Risk::Malformed
        ));
        assert!(matches!(data(json!({"risk": ["a"]})).risk, Risk::Malformed));
        assert!(matches!(
            data(json!({"risk": [{"scope": "a", "tier": "high"}]})).risk,
            Risk::Valid(_)
        ));
    }

    #[test]
    fn approval_shapes() {
        let malformed = [
            json!({"approval_tiers": {}}),
            json!({"approval_tiers": [{}]}),
            json!({"approval_tiers": [{"tier": ""}]}),
            json!({"approval_tiers": [{"tier": "t", "approver": "root"}]}),
            json!({"approval_tiers": [{"tier": "t", "approver": null}]}),
            json!({"approval_tiers": [{"tier": "t", "privacy": "public"}]}),
            json!({"approval_tiers": [{"tier": "t", "ttl_seconds": 0}]}),
            json!({"approval_tiers": [{"tier": "t", "ttl_seconds": 1.5}]}),
            json!({"approval_tiers": [{"tier": "t", "ttl_seconds": "60"}]}),
            json!({"approval_tiers": ["t"]}),
        ];
        for doc in malformed {
            assert!(
                matches!(data(doc.clone()).approvals, Approvals::Malformed),
                "{doc}"
            );
        }
        let valid = json!({"approval_tiers": [
            {"tier": "t"},
            {"tier": "u", "approver": "any", "privacy": "anonymous", "ttl_seconds": 60.0}
        ]});
        assert!(matches!(data(valid).approvals, Approvals::Valid { .. }));
    }

    #[test]
    fn restrict_counts_collections_only() {
        assert_eq!(data(json!({"restrict": ["x"]})).restriction_entries, 1);
        assert_eq!(data(json!({"restrict": {"a": 1}})).restriction_entries, 1);
        assert_eq!(data(json!({"restrict": []})).restriction_entries, 0);
        assert_eq!(data(json!({"restrict": "freeze"})).restriction_entries, 0);
    }

    #[test]
    fn merge_rejects_disagreeing_definitions_only() {
        let doc = |v: Value| DataDocument {
            package: "caracal.authz".into(),
            values: v
                .as_object()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect(),
        };
        let a = doc(json!({"app_ids": {"k": "a"}}));
        let same = doc(json!({"app_ids": {"k": "a"}, "risk": []}));
        let other = doc(json!({"app_ids": {"k": "b"}}));
        assert!(merge(&[a.clone(), same]).is_ok());
        assert!(matches!(
            merge(&[a, other]),
            Err(PolicyError::ConflictingData(name)) if name == "app_ids"
        ));
    }
}
