//! Time and identity generation: the only sources of "now" and of new ids in the domain.

use crate::time::Timestamp;

/// The one clock.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Timestamp;
}

/// The one id generator.
pub trait IdGenerator: Send + Sync {
    /// A fresh UUIDv7 string (time-ordered, as upstream generates).
    fn new_id(&self) -> String;
    /// A fresh random UUIDv4 string, for ids that are capabilities (an approval hold's id
    /// grants its long-poll): no timestamp bits, all 122 bits random.
    fn new_random_id(&self) -> String;
}
