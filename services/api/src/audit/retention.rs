//! `GET/PUT /v1/audit-retention` (`spec/api.md §3.15`, `spec/audit-streams-storage.md §6.5`):
//! the platform-wide window the Audit service keeps events for. `AUDIT_RETENTION_DAYS` is the
//! deployment's ceiling: operators may shorten the window below it, never extend it.

use caracal_core::error::{Error, Result};
use caracal_core::ports::audit::RetentionSetting;
use caracal_core::time::Timestamp;
use serde_json::{json, Value};

fn invalid_body() -> Error {
    Error::invalid(
        "invalid_body",
        "body must be exactly {\"retention_days\": <integer >= 1>}",
    )
}

/// Reads a `PUT` body: an object with exactly `retention_days`, an integer of at least 1, and
/// no more than `max_days` (`400 retention_above_limit` with `max_days`).
pub fn requested_days(body: &Value, max_days: u32) -> Result<u32> {
    let Some(map) = body.as_object() else {
        return Err(invalid_body());
    };
    if map.len() != 1 {
        return Err(invalid_body());
    }
    let days = match map.get("retention_days") {
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(whole), _) => whole as f64,
            (None, Some(f)) if f.fract() == 0.0 => f,
            _ => return Err(invalid_body()),
        },
        _ => return Err(invalid_body()),
    };
    if days < 1.0 {
        return Err(invalid_body());
    }
    if days > f64::from(max_days) {
        return Err(Error::invalid(
            "retention_above_limit",
            format!("retention_days cannot exceed AUDIT_RETENTION_DAYS ({max_days})"),
        )
        .with_extra(json!({ "max_days": max_days })));
    }
    Ok(days as u32)
}

/// The wire shape. An unset window reads as the ceiling, and a stored one above a since-lowered
/// ceiling reads as the ceiling, because that is what the Audit service applies.
pub fn view(setting: Option<&RetentionSetting>, max_days: u32) -> Value {
    match setting {
        None => json!({
            "retention_days": max_days,
            "max_days": max_days,
            "updated_by": null,
            "updated_at": null,
        }),
        Some(s) => json!({
            "retention_days": s.retention_days.min(max_days),
            "max_days": max_days,
            "updated_by": s.updated_by,
            "updated_at": Timestamp::from_unix_micros(s.updated_at_micros),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_strict() {
        assert_eq!(
            requested_days(&json!({"retention_days": 30}), 365).ok(),
            Some(30)
        );
        assert_eq!(
            requested_days(&json!({"retention_days": 30.0}), 365).ok(),
            Some(30)
        );
        assert_eq!(
            requested_days(&json!({"retention_days": 365}), 365).ok(),
            Some(365)
        );
        for bad in [
            json!(null),
            json!([30]),
            json!({}),
            json!({"retention_days": 0}),
            json!({"retention_days": -5}),
            json!({"retention_days": 1.5}),
            json!({"retention_days": "30"}),
            json!({"retention_days": 30, "extra": true}),
        ] {
            assert_eq!(
                requested_days(&bad, 365).err().map(|e| e.code),
                Some("invalid_body"),
                "{bad}"
            );
        }
        let above = requested_days(&json!({"retention_days": 366}), 365).err();
        assert_eq!(
            above.as_ref().map(|e| e.code),
            Some("retention_above_limit")
        );
        assert_eq!(above.and_then(|e| e.extra), Some(json!({"max_days": 365})));
    }
}
