//! Properties of the contract over generated zones and requests: narrowing never widens, and
//! confinement and restrictions only ever take authority away. A seeded generator keeps the
//! runs reproducible without a property-testing dependency.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::*;
use crate::policy_document::DataDocument;

/// xorshift64*: deterministic, good enough to spread small choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn subset<'a>(&mut self, pool: &[&'a str]) -> Vec<&'a str> {
        pool.iter().copied().filter(|_| self.chance(50)).collect()
    }

    fn pick<'a>(&mut self, pool: &[&'a str]) -> &'a str {
        pool[self.below(pool.len())]
    }
}

const SCOPES: [&str; 5] = ["a:read", "a:write", "b:read", "b:write", "agent:lifecycle"];
const LABELS: [&str; 5] = ["reader", "writer", "ops-1", "contractor-7", "auditor"];
const PREFIXES: [&str; 6] = ["", "r", "w", "ops-", "contractor-", "zz"];

fn confinement_rule(rng: &mut Rng) -> Value {
    json!({"label_prefix": rng.pick(&PREFIXES), "scopes": rng.subset(&SCOPES)})
}

fn zone(rng: &mut Rng) -> Map<String, Value> {
    let mut roles = Map::new();
    for label in LABELS {
        if rng.chance(60) {
            roles.insert(label.into(), json!(rng.subset(&SCOPES)));
        }
    }
    let application = rng.pick(&["app", "alias", "other"]);
    let mut data = Map::new();
    data.insert(
        "app_ids".into(),
        json!({"app": "app-1", "alias": "app-1", "other": "app-2"}),
    );
    data.insert(
        "grants".into(),
        json!({"resource://r": {"application": application, "roles": roles}}),
    );
    let rules: Vec<Value> = (0..rng.below(3)).map(|_| confinement_rule(rng)).collect();
    data.insert("confinement".into(), Value::Array(rules));
    // One tier per scope, so no generated zone is a Rego conflict.
    let risk: Vec<Value> = SCOPES
        .iter()
        .filter(|_| rng.chance(30))
        .map(|scope| json!({"scope": scope, "tier": "high"}))
        .collect();
    data.insert("risk".into(), Value::Array(risk));
    if rng.chance(30) {
        data.insert("approval_tiers".into(), json!([{"tier": "high"}]));
    }
    data
}

fn request(rng: &mut Rng) -> DecisionInput {
    let scopes = rng.subset(&SCOPES);
    let mut edge = rng.subset(&SCOPES);
    if rng.chance(50) {
        // Often a narrowing edge, so the later gates get exercised too.
        edge.extend(scopes.iter().copied());
    }
    let labels = rng.subset(&LABELS);
    let shape = rng.below(10);
    let mut value = json!({
        "principal": {"type": if shape == 0 { "Workload" } else { "Application" },
                      "id": rng.pick(&["app-1", "app-2"]), "zone_id": "z1", "labels": labels},
        "resource": {"type": "Resource", "id": "res", "identifier": "resource://r", "scopes": []},
        "action": {"id": if shape == 0 { "CredentialInjection" } else { "TokenExchange" }},
        "context": {"actor_claims": {}, "challenge_resolved": false, "requested_scopes": scopes}
    });
    if shape >= 2 {
        value["delegation_edge"] = json!({"id": "d-1", "scopes": edge});
        value["context"]["agent_session_id"] = json!("s-1");
        value["context"]["delegation_edge_id"] = json!("d-1");
    }
    if shape == 1 {
        value["context"]["requested_scopes"] = json!([]);
        value["context"]["subject_claims"] = json!({"delegation_edge_id": "d-1",
            "scope": rng.subset(&SCOPES).join(" "), "target": ["resource://r"]});
    }
    serde_json::from_value(value).expect("generated input decodes")
}

fn compile(data: &Map<String, Value>) -> PolicyBundle {
    let document = DataDocument {
        package: "caracal.authz".into(),
        values: data.clone().into_iter().collect(),
    };
    PolicyBundle::compile(&[document]).expect("generated zone compiles")
}

const CASES: u64 = 3_000;

#[test]
fn a_delegated_mint_never_widens_beyond_edge_and_role() {
    let mut rng = Rng(0x5eed_0001);
    let mut allowed = 0;
    for _ in 0..CASES {
        let data = zone(&mut rng);
        let input = request(&mut rng);
        let Ok(decision) = compile(&data).decide(&input) else {
            continue;
        };
        if !decision
            .policy_name()
            .is_some_and(|p| p.ends_with("-mint") && p != "caracal-workload-mint")
        {
            continue;
        }
        allowed += 1;
        let requested: BTreeSet<&str> = input
            .context
            .requested_scopes
            .iter()
            .map(String::as_str)
            .collect();
        let edge: BTreeSet<&str> = input
            .delegation_edge
            .as_ref()
            .map(|e| e.scopes().iter().map(String::as_str).collect())
            .unwrap_or_default();
        assert!(requested.is_subset(&edge), "{requested:?} ⊄ edge {edge:?}");
        let roles = &data["grants"]["resource://r"]["roles"];
        let covered = input.principal.labels().iter().any(|label| {
            roles[label.as_str()].as_array().is_some_and(|granted| {
                requested
                    .iter()
                    .all(|s| granted.iter().any(|g| g.as_str() == Some(s)))
            })
        });
        assert!(covered, "no role covers {requested:?}");
        assert!(!requested.contains("agent:lifecycle"));
    }
    assert!(allowed > 50, "the generator reached only {allowed} allows");
}

#[test]
fn confinement_and_restrictions_only_take_authority_away() {
    let mut rng = Rng(0x5eed_0002);
    let mut narrowed = 0;
    for _ in 0..CASES {
        let data = zone(&mut rng);
        let input = request(&mut rng);
        let Ok(before) = compile(&data).decide(&input) else {
            continue;
        };

        let mut confined = data.clone();
        if let Some(Value::Array(rules)) = confined.get_mut("confinement") {
            rules.push(confinement_rule(&mut rng));
        }
        if let Ok(after) = compile(&confined).decide(&input) {
            assert!(
                !after.allow || before.allow,
                "a confinement rule turned a deny into an allow"
            );
            if before.allow && !after.allow {
                narrowed += 1;
            }
        }

        let mut restricted = data.clone();
        restricted.insert("restrict".into(), json!([format!("r{}", rng.next())]));
        let after = compile(&restricted)
            .decide(&input)
            .expect("restricted decides");
        assert_eq!(after.deny_reason(), Some("restriction_active"));
    }
    assert!(narrowed > 0, "no generated confinement ever bit");
}
