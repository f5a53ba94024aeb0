//! Timestamps as Caracal puts them on the wire: ISO-8601 UTC with milliseconds and a `Z`.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A UTC instant with microsecond precision, the precision Postgres stores, so the memory and
/// Postgres adapters hold exactly the same values and keyset cursors agree between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(DateTime<Utc>);

impl Timestamp {
    /// Wraps a chrono instant, truncating it to whole microseconds.
    pub fn from_datetime(at: DateTime<Utc>) -> Self {
        let micros = at.timestamp_micros();
        Self::from_unix_micros(micros)
    }

    /// Builds an instant from microseconds since the Unix epoch.
    pub fn from_unix_micros(micros: i64) -> Self {
        let secs = micros.div_euclid(1_000_000);
        let nanos = (micros.rem_euclid(1_000_000) * 1_000) as u32;
        // Every i64 microsecond count within chrono's range maps to an instant; values outside it
        // cannot come from our clock or our database, so clamp rather than panic.
        Self(
            Utc.timestamp_opt(secs, nanos)
                .single()
                .unwrap_or(DateTime::<Utc>::MIN_UTC),
        )
    }

    /// Microseconds since the Unix epoch.
    pub fn unix_micros(&self) -> i64 {
        self.0.timestamp_micros()
    }

    /// Whole seconds since the Unix epoch.
    pub fn unix_seconds(&self) -> i64 {
        self.0.timestamp()
    }

    /// The chrono value, for adapters that store it.
    pub fn as_datetime(&self) -> DateTime<Utc> {
        self.0
    }

    /// This instant moved by a signed number of milliseconds.
    pub fn plus_millis(&self, millis: i64) -> Self {
        Self::from_unix_micros(
            self.unix_micros()
                .saturating_add(millis.saturating_mul(1_000)),
        )
    }

    /// The wire form: `2026-05-20T10:11:12.123Z` (milliseconds, as upstream renders).
    pub fn to_iso_millis(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// Full-precision form used inside opaque cursors, so paging never skips rows that share a
    /// millisecond (an upstream defect noted in `spec/api.md §1`).
    pub fn to_iso_micros(&self) -> String {
        self.0.to_rfc3339_opts(SecondsFormat::Micros, true)
    }

    /// Parses an ISO-8601 timestamp that ends in `Z`; offsets are refused, as upstream does for
    /// query and body datetimes (`spec/api.md §1`).
    pub fn parse_utc_z(text: &str) -> Option<Self> {
        if !text.ends_with('Z') {
            return None;
        }
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|at| Self::from_datetime(at.with_timezone(&Utc)))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_iso_millis())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse_utc_z(&text).ok_or_else(|| {
            serde::de::Error::custom("expected an ISO-8601 UTC timestamp ending in Z")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_milliseconds_with_z() {
        let at = Timestamp::from_unix_micros(1_700_000_000_123_456);
        assert_eq!(at.to_iso_millis(), "2023-11-14T22:13:20.123Z");
        assert_eq!(at.to_iso_micros(), "2023-11-14T22:13:20.123456Z");
    }

    #[test]
    fn parses_only_z_suffixed_times() {
        assert!(Timestamp::parse_utc_z("2023-11-14T22:13:20.123Z").is_some());
        assert!(Timestamp::parse_utc_z("2023-11-14T22:13:20.123+01:00").is_none());
        assert!(Timestamp::parse_utc_z("yesterday").is_none());
        let round = Timestamp::parse_utc_z("2023-11-14T22:13:20.123456Z").map(|t| t.unix_micros());
        assert_eq!(round, Some(1_700_000_000_123_456));
    }
}
