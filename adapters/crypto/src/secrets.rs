//! Random bearer secrets (`SecretGenerator`): client secrets (`cs_…`) and tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use caracal_core::ports::SecretGenerator;
use ring::rand::{SecureRandom, SystemRandom};

const SECRET_BYTES: usize = 32;

/// The production `SecretGenerator`: 256 bits from the operating system's CSPRNG, base64url
/// without padding (43 characters) so the value is safe in URLs, headers and form bodies.
#[derive(Debug, Clone)]
pub struct RandomSecrets {
    rng: SystemRandom,
}

impl RandomSecrets {
    /// A generator backed by `ring::rand::SystemRandom`.
    pub fn new() -> Self {
        Self {
            rng: SystemRandom::new(),
        }
    }
}

impl Default for RandomSecrets {
    fn default() -> Self {
        Self::new()
    }
}

impl SecretGenerator for RandomSecrets {
    fn generate(&self, prefix: &str) -> String {
        let mut bytes = [0u8; SECRET_BYTES];
        // The port is infallible. If the OS random source is broken there is no safe secret
        // to return, and handing out a predictable credential is worse than failing the
        // request, so this panics (fail closed). It does not depend on any input.
        self.rng
            .fill(&mut bytes)
            .expect("system random source failed");
        let secret = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes));
        crate::wipe::wipe(&mut bytes);
        secret
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn prefix_then_43_base64url_characters() {
        let secret = RandomSecrets::new().generate("cs_");
        let body = secret.strip_prefix("cs_").expect("prefix kept");
        assert_eq!(body.len(), 43);
        assert!(
            body.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{secret}"
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(body).expect("base64url").len(), 32);
        assert_eq!(RandomSecrets::new().generate("").len(), 43);
    }

    #[test]
    fn secrets_are_unique() {
        let generator = RandomSecrets::new();
        let secrets: HashSet<String> = (0..1000).map(|_| generator.generate("tok_")).collect();
        assert_eq!(secrets.len(), 1000);
    }
}
