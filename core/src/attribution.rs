//! Who created and last changed a record, and when (`ATTR` in `spec/api.md`).

use serde::Serialize;

use crate::time::Timestamp;

/// The `created_by … updated_at` block every management row carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attribution {
    /// Actor that created the row (`admin:<token id>` or a verified `x-caracal-authorized-by`).
    pub created_by: String,
    /// Whether the creation was co-authored by the operator.
    pub created_via_operator: bool,
    /// Actor of the last change.
    pub updated_by: String,
    /// Whether the last change was co-authored by the operator.
    pub updated_via_operator: bool,
    /// Creation instant.
    pub created_at: Timestamp,
    /// Last change instant.
    pub updated_at: Timestamp,
}

impl Attribution {
    /// Attribution for a row created now by `actor`.
    pub fn created(actor: &str, via_operator: bool, at: Timestamp) -> Self {
        Self {
            created_by: actor.to_owned(),
            created_via_operator: via_operator,
            updated_by: actor.to_owned(),
            updated_via_operator: via_operator,
            created_at: at,
            updated_at: at,
        }
    }

    /// Records a change by `actor` at `at`.
    pub fn touch(&mut self, actor: &str, via_operator: bool, at: Timestamp) {
        self.updated_by = actor.to_owned();
        self.updated_via_operator = via_operator;
        self.updated_at = at;
    }
}
