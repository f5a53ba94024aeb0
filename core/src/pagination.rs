//! Keyset pagination (`spec/api.md §1`): `limit` 1..=500 (default 200), an opaque cursor, and
//! `next_cursor` set iff the page is full.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::ports::store::{After, Page};
use crate::time::Timestamp;

/// Default page size for collection lists.
pub const DEFAULT_LIMIT: u32 = 200;
/// Largest page size a caller may ask for.
pub const MAX_LIMIT: u32 = 500;

#[derive(Serialize, Deserialize)]
struct CursorBody {
    ts: String,
    id: String,
}

/// Builds a page request from the raw `limit` and `cursor` query values.
pub fn page_request(limit: Option<&str>, cursor: Option<&str>) -> Result<Page, Error> {
    let limit = match limit {
        None | Some("") => DEFAULT_LIMIT,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(Error::invalid(
                    "invalid_query",
                    "limit must be an integer from 1 to 500",
                ))
            }
        },
    };
    let after = match cursor {
        None | Some("") => None,
        Some(text) => Some(decode_cursor(text)?),
    };
    Ok(Page { limit, after })
}

/// Decodes an opaque cursor. Full-precision timestamps keep rows sharing a millisecond apart.
pub fn decode_cursor(text: &str) -> Result<After, Error> {
    let bad = || Error::invalid("invalid_cursor", "cursor is malformed");
    if text.len() > 512 {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    let body: CursorBody = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let created_at = Timestamp::parse_utc_z(&body.ts).ok_or_else(bad)?;
    if !crate::ids::is_path_id(&body.id) {
        return Err(bad());
    }
    Ok(After {
        created_at,
        id: body.id,
    })
}

/// Encodes the cursor that continues after a row.
pub fn encode_cursor(created_at: Timestamp, id: &str) -> String {
    let body = CursorBody {
        ts: created_at.to_iso_micros(),
        id: id.to_owned(),
    };
    // Serialising two strings cannot fail.
    let json = serde_json::to_vec(&body).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// The `next_cursor` for a page: set iff the page came back full.
pub fn next_cursor<T>(
    rows: &[T],
    page: &Page,
    key: impl Fn(&T) -> (Timestamp, String),
) -> Option<String> {
    if rows.len() as u32 == page.limit {
        rows.last().map(|row| {
            let (at, id) = key(row);
            encode_cursor(at, &id)
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_with_microseconds() {
        let at = Timestamp::from_unix_micros(1_700_000_000_123_456);
        let after = decode_cursor(&encode_cursor(at, "abc")).map(|a| (a.created_at, a.id));
        assert_eq!(after.ok(), Some((at, "abc".to_owned())));
    }

    #[test]
    fn bad_limits_and_cursors_are_typed_errors() {
        assert_eq!(
            page_request(Some("0"), None).err().map(|e| e.code),
            Some("invalid_query")
        );
        assert_eq!(
            page_request(Some("501"), None).err().map(|e| e.code),
            Some("invalid_query")
        );
        assert_eq!(
            page_request(Some("x"), None).err().map(|e| e.code),
            Some("invalid_query")
        );
        assert_eq!(
            page_request(None, Some("!!")).err().map(|e| e.code),
            Some("invalid_cursor")
        );
        assert_eq!(page_request(None, None).map(|p| p.limit).ok(), Some(200));
    }
}
