//! The decision result (`spec/sts.md §10.4`): `allow` or `deny`, the determining policy and the
//! diagnostics, both audited verbatim.

use serde_json::{json, Value};

/// The contract's answer for one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Whether the mint (or use) is allowed.
    pub allow: bool,
    /// `[{"policy": "<name>"}]` on allow, `[]` on deny.
    pub determining_policies: Vec<Value>,
    /// Deny: `[{"reason": R}]`. Mint allows: the step-up and risk entries.
    pub diagnostics: Vec<Value>,
}

impl Decision {
    /// A deny naming one reason.
    pub fn deny(reason: &str) -> Self {
        Self {
            allow: false,
            determining_policies: Vec::new(),
            diagnostics: vec![json!({ "reason": reason })],
        }
    }

    /// An allow determined by `policy`.
    pub fn allow(policy: String, diagnostics: Vec<Value>) -> Self {
        Self {
            allow: true,
            determining_policies: vec![json!({ "policy": policy })],
            diagnostics,
        }
    }

    /// The result document:
    /// `{"decision","evaluation_status":"complete","determining_policies","diagnostics"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "decision": if self.allow { "allow" } else { "deny" },
            "evaluation_status": "complete",
            "determining_policies": self.determining_policies,
            "diagnostics": self.diagnostics,
        })
    }

    /// The first diagnostic's `reason` (what the STS records for a deny).
    pub fn deny_reason(&self) -> Option<&str> {
        self.diagnostics
            .iter()
            .find_map(|d| d.get("reason").and_then(Value::as_str))
    }

    /// The determining policy's name.
    pub fn policy_name(&self) -> Option<&str> {
        self.determining_policies
            .first()
            .and_then(|p| p.get("policy"))
            .and_then(Value::as_str)
    }

    /// The approval declarations of a `step_up_required` diagnostic, when the mint is gated.
    pub fn step_up_tiers(&self) -> Option<&Vec<Value>> {
        self.diagnostics.iter().find_map(|d| {
            d.get("step_up_required")
                .and_then(|s| s.get("tiers"))
                .and_then(Value::as_array)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_helpers() {
        let deny = Decision::deny("no_rule_matched");
        assert_eq!(
            deny.to_json(),
            json!({"decision":"deny","evaluation_status":"complete","determining_policies":[],"diagnostics":[{"reason":"no_rule_matched"}]})
        );
        assert_eq!(deny.deny_reason(), Some("no_rule_matched"));
        assert_eq!(deny.policy_name(), None);
        let allow = Decision::allow(
            "caracal-a-mint".into(),
            vec![json!({"step_up_required":{"type":"human_approval","tiers":[{"tier":"high"}]}})],
        );
        assert_eq!(allow.policy_name(), Some("caracal-a-mint"));
        assert_eq!(allow.step_up_tiers(), Some(&vec![json!({"tier":"high"})]));
        assert_eq!(allow.deny_reason(), None);
    }
}
