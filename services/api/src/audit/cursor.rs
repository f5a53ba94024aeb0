//! The opaque keyset cursor of the audit lists: base64url of `{"ts","id"}` like every
//! collection cursor (`spec/api.md §1`), at full microsecond precision.
//!
//! Decision-event ids are chosen by producers (any non-empty string survives ingestion), so
//! unlike [`caracal_core::pagination::decode_cursor`] the id is not held to the path-id
//! alphabet: a page ending on such an event must still lead to the next one.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use caracal_core::error::Error;
use caracal_core::time::Timestamp;
use serde::Deserialize;

#[derive(Deserialize)]
struct Body {
    ts: String,
    id: String,
}

fn invalid_cursor() -> Error {
    Error::invalid("invalid_cursor", "cursor is malformed")
}

/// The cursor that continues after the row (`at`, `id`).
pub fn encode(at: Timestamp, id: &str) -> String {
    caracal_core::pagination::encode_cursor(at, id)
}

/// Decodes a cursor into the (`occurred_at`, `id`) the next page starts strictly below.
/// Padded base64url is accepted too, as upstream's decoder accepts it.
pub fn decode(text: &str) -> Result<(Timestamp, String), Error> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .map_err(|_| invalid_cursor())?;
    let body: Body = serde_json::from_slice(&bytes).map_err(|_| invalid_cursor())?;
    if body.id.is_empty() {
        return Err(invalid_cursor());
    }
    let at = Timestamp::parse_utc_z(&body.ts).ok_or_else(invalid_cursor)?;
    Ok((at, body.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_producer_id_at_full_precision() {
        let at = Timestamp::from_unix_micros(1_779_364_800_123_456);
        for id in ["0197-uuid", "id with spaces/and?query", "é"] {
            assert_eq!(
                decode(&encode(at, id)).ok(),
                Some((at, id.to_owned())),
                "{id}"
            );
        }
    }

    #[test]
    fn garbage_is_invalid_cursor() {
        let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
        for bad in [
            "!!".to_owned(),
            b64("[]"),
            b64(r#"{"ts":"2026-05-21T12:00:00Z"}"#),
            b64(r#"{"ts":"2026-05-21T12:00:00Z","id":""}"#),
            b64(r#"{"ts":"yesterday","id":"a"}"#),
            b64(r#"{"ts":"2026-05-21T12:00:00+02:00","id":"a"}"#),
        ] {
            assert_eq!(decode(&bad).err().map(|e| e.code), Some("invalid_cursor"));
        }
        // Upstream's own cursors (milliseconds, padded or not) still decode.
        let upstream = URL_SAFE.encode(r#"{"ts":"2026-05-21T12:00:00.123Z","id":"e1"}"#);
        assert!(decode(&upstream).is_ok());
    }
}
