//! One mapping from diesel and pool failures to the domain's `StoreError`, so every repository
//! reports the same failure the same way.

use caracal_core::StoreError;
use diesel::result::{DatabaseErrorKind, Error};

/// Maps a diesel failure.
///
/// * a uniqueness (or foreign-key) rule → `Conflict(<constraint name>)`: the name is the rule the
///   domain maps to its own error (the index names in the migration match the in-memory adapter);
/// * a check or not-null rule → `Corrupt`: the domain handed over a value its own types should
///   have excluded, which is a bug rather than a conflict;
/// * a value that cannot be decoded → `Corrupt`;
/// * everything else (connection lost, aborted transaction, row-level-security refusal,
///   permission denied) → `Unavailable`: the unit of work did not run.
pub(crate) fn store_error(err: Error) -> StoreError {
    match err {
        Error::DatabaseError(
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::ExclusionViolation
            | DatabaseErrorKind::RestrictViolation,
            info,
        ) => StoreError::Conflict(info.constraint_name().unwrap_or("unnamed").to_owned()),
        Error::DatabaseError(
            kind @ (DatabaseErrorKind::CheckViolation | DatabaseErrorKind::NotNullViolation),
            info,
        ) => StoreError::Corrupt(format!(
            "write refused by {:?} rule {}: {}",
            kind,
            info.constraint_name().unwrap_or("unnamed"),
            info.message()
        )),
        Error::DeserializationError(detail) => {
            StoreError::Corrupt(format!("undecodable column: {detail}"))
        }
        Error::SerializationError(detail) => {
            StoreError::Corrupt(format!("unencodable value: {detail}"))
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// A decode failure of one stored column.
pub(crate) fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {detail}"))
}
