//! ring/argon2 implementations of the crypto ports: envelope sealer, Argon2id, HMAC, secrets.
//!
//! Everything that touches key material lives here so `core` stays free of I/O and of concrete
//! algorithms; services wire these types into `Arc<dyn Port>` once at start-up.

#![warn(missing_docs)]

mod envelope;
mod hex;
mod hmac;
mod kek;
mod password;
mod secrets;
mod wipe;

pub use envelope::EnvelopeSealer;
pub use hmac::{HmacSha256, KeyError};
pub use kek::{Kek, KekError, KEK_ID_LEN};
pub use password::{Argon2idHasher, HasherParamsError};
pub use secrets::RandomSecrets;
