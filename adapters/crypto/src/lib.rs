//! ring/argon2 implementations of the crypto ports: envelope sealer, Argon2id, HMAC, secrets,
//! ES256 signing keys.
//!
//! Everything that touches key material lives here so `core` stays free of I/O and of concrete
//! algorithms; services wire these types into `Arc<dyn Port>` once at start-up.

#![warn(missing_docs)]

mod envelope;
mod es256;
mod hex;
mod hmac;
mod kek;
mod password;
mod pem;
mod remembered;
mod sec1;
mod secrets;
mod wipe;

pub use envelope::EnvelopeSealer;
pub use es256::RingEs256;
pub use hmac::{HmacSha256, KeyError};
pub use kek::{Kek, KekError, KEK_ID_LEN};
pub use password::{Argon2idHasher, HasherParamsError};
pub use remembered::RememberingEs256;
pub use secrets::RandomSecrets;
