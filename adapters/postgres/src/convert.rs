//! Small conversions between column values and domain values. Decoding never panics: a value the
//! domain type refuses becomes `StoreError::Corrupt` naming the column.

use caracal_core::attribution::Attribution;
use caracal_core::time::Timestamp;
use caracal_core::StoreError;
use chrono::{DateTime, Utc};

use crate::error::corrupt;

/// A column instant as a domain timestamp (both are microsecond precision, so this is exact).
pub(crate) fn ts(at: DateTime<Utc>) -> Timestamp {
    Timestamp::from_datetime(at)
}

/// An optional column instant.
pub(crate) fn opt_ts(at: Option<DateTime<Utc>>) -> Option<Timestamp> {
    at.map(ts)
}

/// An optional domain instant as a column value.
pub(crate) fn opt_dt(at: Option<Timestamp>) -> Option<DateTime<Utc>> {
    at.map(|t| t.as_datetime())
}

/// Parses a stored identifier with its newtype's parser.
pub(crate) fn id<T>(
    parse: fn(&str) -> Result<T, caracal_core::Error>,
    text: &str,
    column: &str,
) -> Result<T, StoreError> {
    parse(text).map_err(|_| corrupt(column, format!("malformed identifier {text:?}")))
}

/// The six `ATTR` columns as the domain's attribution block.
pub(crate) fn attribution(
    created_by: String,
    created_via_operator: bool,
    updated_by: String,
    updated_via_operator: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
) -> Attribution {
    Attribution {
        created_by,
        created_via_operator,
        updated_by,
        updated_via_operator,
        created_at: ts(created_at),
        updated_at: ts(updated_at),
    }
}

/// A page size as the `LIMIT` value.
pub(crate) fn limit(limit: u32) -> i64 {
    i64::from(limit)
}

/// A `count(*)` as the domain's unsigned count (a negative count is a broken database).
pub(crate) fn count(n: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| corrupt(what, n))
}
