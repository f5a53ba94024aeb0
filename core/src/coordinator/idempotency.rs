//! Idempotent creation (`spec/coordinator-gateway.md` A7): the `Idempotency-Key` rules, the
//! request fingerprint, and the receipt that replays the first response verbatim.
//!
//! A use case that creates something calls, in its own unit of work and after taking its zone
//! lock (so two racing requests with one key cannot both create):
//! 1. [`validate_headers`] (before any state is read, in the contract's error order),
//! 2. [`Coordinator::replay`] with the fingerprint of its normalized input: a stored receipt
//!    with the same fingerprint is the answer (after the caller checked the created object is
//!    still live), another fingerprint is `409 idempotency_key_conflict`, no receipt means
//!    "go on" (after checking the per-scope cap),
//! 3. after creating, [`Coordinator::remember`] in the same unit of work.

use serde_json::{Map, Value};

use crate::coordinator::records::IdempotencyReceipt;
use crate::coordinator::{Coordinator, IdempotencyHeaders, Reply};
use crate::digest::sha256_hex;
use crate::error::{Error, ErrorKind, Result, StoreError};
use crate::ids::ZoneId;
use crate::ports::UnitOfWork;
use crate::time::Timestamp;

/// Longest key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// Domain separation of the stored key HMAC.
const KEY_CONTEXT: &str = "caracal:coordinator:idempotency:v1\0";

/// A validated `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    key: String,
    generated: bool,
}

impl IdempotencyKey {
    /// Whether the SDK generated it (`Idempotency-Key-Kind: generated`): shorter retention.
    pub fn generated(&self) -> bool {
        self.generated
    }
}

fn key_error(code: &'static str, message: &str) -> Error {
    let mut e = Error::new(ErrorKind::Invalid, code).describe(message);
    // The contract's body for these two is snake_case `message` + `request_id`; the shell adds
    // the request id to every error body.
    e.extra = None;
    e
}

/// Validates the headers (A7): none → `Ok(None)`; more than one value →
/// `400 idempotency_key_multiple`; empty, surrounding whitespace, longer than 255 bytes, or a
/// control character → `400 idempotency_key_invalid`.
pub fn validate_headers(headers: &IdempotencyHeaders) -> Result<Option<IdempotencyKey>> {
    match headers.keys.as_slice() {
        [] => Ok(None),
        [key] => {
            let bad = key.is_empty()
                || key.trim() != key
                || key.len() > MAX_KEY_BYTES
                || key.chars().any(|c| (c as u32) < 0x20 || c as u32 == 0x7f);
            if bad {
                return Err(key_error(
                    "idempotency_key_invalid",
                    "Idempotency-Key must be 1 to 255 bytes without surrounding whitespace or control characters",
                ));
            }
            Ok(Some(IdempotencyKey {
                key: key.clone(),
                generated: headers.generated,
            }))
        }
        _ => Err(key_error(
            "idempotency_key_multiple",
            "Send exactly one Idempotency-Key header",
        )),
    }
}

/// Validates a body-carried key (invocation create): the same rules as the header.
pub fn validate_body_key(key: &str) -> Result<IdempotencyKey> {
    validate_headers(&IdempotencyHeaders {
        keys: vec![key.to_owned()],
        generated: false,
    })
    .and_then(|k| {
        k.ok_or_else(|| key_error("idempotency_key_invalid", "Idempotency-Key is required"))
    })
}

/// Hex SHA-256 of the canonical JSON (object keys sorted, no whitespace) of `value`.
pub fn fingerprint(value: &Value) -> String {
    let mut out = String::new();
    canonical(value, &mut out);
    sha256_hex(out.as_bytes())
}

fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                canonical(&map[*k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The receipt scope: `<operation>:<zone>:<application>` (A7).
pub fn scope(operation: &str, zone: &ZoneId, application_id: &str) -> String {
    format!("{operation}:{}:{application_id}", zone.as_str())
}

/// What a receipt lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Prior {
    /// No receipt: create, then [`Coordinator::remember`].
    None,
    /// A receipt with the same fingerprint: check `object_id` is still live, then answer
    /// [`Prior::reply`] (or `409 idempotency_result_inactive`).
    Same(IdempotencyReceipt),
}

impl Prior {
    /// The stored response, marked as a replay.
    pub fn reply(receipt: &IdempotencyReceipt) -> Reply {
        Reply {
            status: receipt.status,
            body: receipt.body.clone(),
            replayed: true,
        }
    }
}

/// `409 idempotency_result_inactive`: the created object is no longer live, so the stored
/// response would lie.
pub fn result_inactive() -> Error {
    Error::conflict(
        "idempotency_result_inactive",
        "The resource created under this Idempotency-Key is no longer active",
    )
}

impl Coordinator {
    fn key_hashes(&self, key: &IdempotencyKey) -> Vec<String> {
        let message = format!("{KEY_CONTEXT}{}", key.key);
        let mut hashes = vec![self.idempotency_mac.sign_hex(message.as_bytes())];
        if let Some(previous) = &self.idempotency_mac_previous {
            hashes.push(previous.sign_hex(message.as_bytes()));
        }
        hashes
    }

    /// Looks up the key's receipt in `scope` (A7). A receipt with another fingerprint is
    /// `409 idempotency_key_conflict`. Without a receipt, a scope already holding the maximum
    /// of live receipts is `429 idempotency_receipt_limit_exceeded`.
    pub(crate) async fn replay(
        &self,
        uow: &mut dyn UnitOfWork,
        scope: &str,
        key: &IdempotencyKey,
        request_fingerprint: &str,
        now: Timestamp,
    ) -> Result<Prior> {
        if let Prior::Same(receipt) = self
            .committed_twin(uow, scope, key, request_fingerprint, now)
            .await?
        {
            return Ok(Prior::Same(receipt));
        }
        let live = uow.count_idempotency_receipts(scope, now).await?;
        if live >= self.config.idempotency_max_receipts_per_scope {
            return Err(
                Error::new(ErrorKind::RateLimited, "idempotency_receipt_limit_exceeded")
                    .describe("Too many idempotency receipts are live for this scope"),
            );
        }
        Ok(Prior::None)
    }

    /// The receipt stored under the key: `Prior::Same` when it carries this request's
    /// fingerprint, `409 idempotency_key_conflict` when another's, `Prior::None` when there is
    /// none. Read under the zone lock, it also finds a twin that committed while this unit
    /// worked.
    pub(crate) async fn committed_twin(
        &self,
        uow: &mut dyn UnitOfWork,
        scope: &str,
        key: &IdempotencyKey,
        request_fingerprint: &str,
        now: Timestamp,
    ) -> Result<Prior> {
        for hash in self.key_hashes(key) {
            if let Some(receipt) = uow.get_idempotency_receipt(scope, &hash, now).await? {
                if receipt.request_hash != request_fingerprint {
                    return Err(Error::conflict(
                        "idempotency_key_conflict",
                        "Idempotency-Key was already used with a different request",
                    ));
                }
                return Ok(Prior::Same(receipt));
            }
        }
        Ok(Prior::None)
    }

    /// Stores the response of a creation under the key, in the creating unit of work.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn remember(
        &self,
        uow: &mut dyn UnitOfWork,
        zone: &ZoneId,
        scope: &str,
        key: &IdempotencyKey,
        request_fingerprint: &str,
        object_id: &str,
        reply: &Reply,
        now: Timestamp,
    ) -> Result<()> {
        let retention = if key.generated {
            self.config.generated_idempotency_retention_seconds
        } else {
            self.config.idempotency_retention_seconds
        };
        let hash = self.key_hashes(key).swap_remove(0);
        let receipt = IdempotencyReceipt {
            scope: scope.to_owned(),
            key_hash: hash,
            zone_id: zone.clone(),
            request_hash: request_fingerprint.to_owned(),
            object_id: object_id.to_owned(),
            status: reply.status,
            body: reply.body.clone(),
            expires_at: now.plus_millis(retention.saturating_mul(1000)),
            created_at: now,
        };
        match uow.insert_idempotency_receipt(&receipt, now).await {
            Ok(()) => Ok(()),
            // The zone lock makes this unreachable for one key; answer as a conflict rather
            // than a 500 if a caller ever races past it.
            Err(StoreError::Conflict(_)) => Err(Error::conflict(
                "idempotency_key_conflict",
                "Idempotency-Key was used by a concurrent request",
            )),
            Err(e) => Err(e.into()),
        }
    }
}

/// The principal part of a fingerprint (A7: "including principal `{client_id, sub}`").
pub fn principal_fingerprint(client_id: &str, sub: &str) -> Value {
    let mut m = Map::new();
    m.insert("client_id".into(), Value::String(client_id.to_owned()));
    m.insert("sub".into(), Value::String(sub.to_owned()));
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers(keys: &[&str]) -> IdempotencyHeaders {
        IdempotencyHeaders {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            generated: false,
        }
    }

    #[test]
    fn header_rules() {
        assert_eq!(validate_headers(&headers(&[])).expect("accepted"), None);
        assert!(validate_headers(&headers(&["abc"]))
            .expect("accepted")
            .is_some());
        assert!(validate_headers(&headers(&[&"k".repeat(255)]))
            .expect("accepted")
            .is_some());
        for bad in ["", " a", "a ", "a\u{1}b", "a\u{7f}", &"k".repeat(256)] {
            let e = validate_headers(&headers(&[bad])).expect_err("refused");
            assert_eq!(e.code, "idempotency_key_invalid", "{bad:?}");
        }
        let e = validate_headers(&headers(&["a", "b"])).expect_err("refused");
        assert_eq!(e.code, "idempotency_key_multiple");
        // 255 bytes, not characters.
        let e = validate_headers(&headers(&[&"é".repeat(128)])).expect_err("refused");
        assert_eq!(e.code, "idempotency_key_invalid");
    }

    #[test]
    fn fingerprint_ignores_key_order_only() {
        let a = json!({"b": 1, "a": [1, {"y": 2, "x": null}]});
        let b = json!({"a": [1, {"x": null, "y": 2}], "b": 1});
        assert_eq!(fingerprint(&a), fingerprint(&b));
        let c = json!({"a": [{"x": null, "y": 2}, 1], "b": 1});
        assert_ne!(fingerprint(&a), fingerprint(&c));
        assert_ne!(fingerprint(&json!("1")), fingerprint(&json!(1)));
    }
}
