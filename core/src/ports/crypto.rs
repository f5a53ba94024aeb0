//! Cryptographic ports. Adapters implement them with ring and argon2; tests can swap them.

use async_trait::async_trait;

use crate::error::CryptoError;

/// Envelope encryption of secrets at rest: a fresh data key per value, wrapped by the KEK.
pub trait SecretSealer: Send + Sync {
    /// Seals `plaintext`, binding it to `aad` (the secret's location or purpose) so an
    /// envelope moved to another reference fails to open.
    fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError>;
    /// Opens an envelope sealed under any key of the keyring with the same `aad`.
    fn open(&self, aad: &str, envelope: &[u8]) -> Result<Vec<u8>, CryptoError>;
}

/// Slow password hashing for client secrets and admin tokens (Argon2id).
#[async_trait]
pub trait PasswordHasher: Send + Sync {
    /// Hashes a secret into `argon2id$<salt b64>$<hash b64>` (`spec/api.md §3.2`).
    async fn hash(&self, secret: &str) -> Result<String, CryptoError>;
    /// Whether `secret` matches a stored hash; malformed stored values are `Ok(false)`.
    async fn verify(&self, secret: &str, stored: &str) -> Result<bool, CryptoError>;
}

/// Random secrets for clients and tokens.
pub trait SecretGenerator: Send + Sync {
    /// `prefix` + base64url (no padding) of 32 bytes from a CSPRNG.
    fn generate(&self, prefix: &str) -> String;
}

/// Keyed message authentication (HMAC-SHA256) for a configured key.
pub trait MessageAuthenticator: Send + Sync {
    /// Lowercase hex HMAC-SHA256 of `message`.
    fn sign_hex(&self, message: &[u8]) -> String;
    /// Constant-time check of a hex tag.
    fn verify_hex(&self, message: &[u8], tag_hex: &str) -> bool;
}
