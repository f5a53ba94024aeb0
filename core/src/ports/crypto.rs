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

/// ES256 (ECDSA P-256 with SHA-256) key handling for mandates (`spec/sts.md §4–5`).
pub trait Es256: Send + Sync {
    /// A fresh P-256 private key as a SEC1 PEM document (`-----BEGIN EC PRIVATE KEY-----`),
    /// the plaintext upstream seals in its secret store.
    fn generate_pem(&self) -> Result<String, CryptoError>;
    /// Loads a SEC1 (or PKCS#8) PEM private key for signing.
    fn load_signer(&self, pem: &str) -> Result<std::sync::Arc<dyn Es256Signer>, CryptoError>;
    /// Whether `signature` (raw R‖S, 64 bytes) is a valid ES256 signature of `message` under
    /// the uncompressed public point `public_point` (`0x04‖X‖Y`, 65 bytes). Never panics on
    /// malformed input: anything unparseable is `false`.
    fn verify(&self, public_point: &[u8], message: &[u8], signature: &[u8]) -> bool;
}

/// A loaded ES256 private key.
pub trait Es256Signer: Send + Sync {
    /// Raw R‖S signature (64 bytes) of `message`.
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CryptoError>;
    /// The uncompressed public point (`0x04‖X‖Y`, 65 bytes).
    fn public_point(&self) -> &[u8];
}
