//! Read-time redaction of audit JSON (`spec/api.md §3.13`, upstream `redact.ts`): values under
//! sensitive keys, at any depth and in any letter case, are replaced before they leave the
//! API. Producers should never put secrets in metadata; this is the backstop when one does.
//! Metadata `session_id` is an authority-record id and so always reads redacted, as upstream.

use serde_json::{Map, Value};

/// What a redacted value reads as.
pub const REDACTED: &str = "[redacted]";

const SENSITIVE_KEYS: [&str; 17] = [
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "authorization",
    "cookie",
    "set_cookie",
    "client_secret",
    "private_key",
    "session",
    "session_id",
    "assertion",
];

fn sensitive(key: &str) -> bool {
    SENSITIVE_KEYS.iter().any(|k| k.eq_ignore_ascii_case(key))
}

/// A copy of `value` with every sensitive key's value replaced by `"[redacted]"`.
pub fn redact(value: &Value) -> Value {
    match value {
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if sensitive(k) {
                        Value::String(REDACTED.into())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect::<Map<String, Value>>(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sensitive_keys_are_redacted_at_any_depth_and_case() {
        let raw = json!({
            "application_id": "app",
            "session_id": "ar-1",
            "Authorization": {"nested": "whole value goes"},
            "delegation_chain": [{"Token": "t", "hop": 1}],
            "outer": {"inner": {"API_KEY": "k", "keep": [1, null]}},
        });
        assert_eq!(
            redact(&raw),
            json!({
                "application_id": "app",
                "session_id": REDACTED,
                "Authorization": REDACTED,
                "delegation_chain": [{"Token": REDACTED, "hop": 1}],
                "outer": {"inner": {"API_KEY": REDACTED, "keep": [1, null]}},
            })
        );
        assert_eq!(redact(&json!("token")), json!("token"), "only keys count");
    }
}
