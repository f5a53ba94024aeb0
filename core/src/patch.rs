//! Tri-state fields for PATCH bodies: absent (leave alone), `null` (clear), or a value.

use serde::{Deserialize, Deserializer};

/// A PATCH field.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Patch<T> {
    /// Not in the body: leave the stored value alone.
    #[default]
    Absent,
    /// Explicit `null`: clear the stored value.
    Null,
    /// A new value.
    Value(T),
}

impl<T> Patch<T> {
    /// Whether the field was present in the body at all.
    pub fn is_present(&self) -> bool {
        !matches!(self, Patch::Absent)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only reached when the key is present (pair with `#[serde(default)]`).
        Ok(match Option::<T>::deserialize(d)? {
            None => Patch::Null,
            Some(value) => Patch::Value(value),
        })
    }
}
