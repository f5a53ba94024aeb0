//! The Gateway → STS signed envelope (`spec/sts.md §6`, §11): an HMAC-SHA256 over
//! `"<unix>\n<nonce>\n<METHOD>\n<escaped path>\n<hex sha256(body)>"` with the shared
//! `GATEWAY_STS_HMAC_KEY`, a ±60 s freshness window and a nonce that is accepted once across
//! every replica. Without a configured key every signed request fails: a missing key must
//! never mean "trust the headers".

use std::sync::Arc;

use crate::digest::sha256_hex;
use crate::ports::{ExpiringKeys, MessageAuthenticator};

/// Accepted clock difference between Gateway and STS.
const FRESHNESS_SECONDS: i64 = 60;
/// How long a nonce stays claimed (covers the whole freshness window on both sides).
const NONCE_TTL_SECONDS: u64 = 120;

/// The three headers as received.
#[derive(Debug, Clone, Default)]
pub struct SignedHeaders<'a> {
    /// `X-Caracal-Gateway-Timestamp`.
    pub timestamp: Option<&'a str>,
    /// `X-Caracal-Gateway-Request`.
    pub nonce: Option<&'a str>,
    /// `X-Caracal-Gateway-Signature`.
    pub signature: Option<&'a str>,
}

impl SignedHeaders<'_> {
    /// Whether any of the headers is present (then the request claims Gateway authentication
    /// and must verify).
    pub fn any(&self) -> bool {
        self.timestamp.is_some() || self.nonce.is_some() || self.signature.is_some()
    }
}

/// The canonical string both sides sign.
pub fn canonical(unix: &str, nonce: &str, method: &str, path: &str, body: &[u8]) -> String {
    format!(
        "{unix}\n{nonce}\n{}\n{path}\n{}",
        method.to_ascii_uppercase(),
        sha256_hex(body)
    )
}

/// Verifies Gateway envelopes.
#[derive(Clone)]
pub struct GatewayVerifier {
    mac: Option<Arc<dyn MessageAuthenticator>>,
    nonces: Arc<dyn ExpiringKeys>,
}

impl GatewayVerifier {
    /// A verifier; `mac` is `None` when no key is configured (every envelope then fails).
    pub fn new(mac: Option<Arc<dyn MessageAuthenticator>>, nonces: Arc<dyn ExpiringKeys>) -> Self {
        Self { mac, nonces }
    }

    /// Signs a request the way the Gateway does (used by our own Gateway and by tests).
    pub fn sign(
        &self,
        unix: i64,
        nonce: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Option<String> {
        let mac = self.mac.as_ref()?;
        Some(mac.sign_hex(canonical(&unix.to_string(), nonce, method, path, body).as_bytes()))
    }

    /// Whether the envelope is authentic, fresh at `now_unix` and its nonce unused. The nonce
    /// is claimed only after the signature verifies, so forged requests cannot burn nonces.
    pub async fn verify(
        &self,
        headers: &SignedHeaders<'_>,
        method: &str,
        path: &str,
        body: &[u8],
        now_unix: i64,
    ) -> bool {
        match self.authentic(headers, method, path, body, now_unix) {
            Some(nonce) => self.claim_nonce(nonce).await,
            None => false,
        }
    }

    /// The envelope's nonce when its signature verifies and it is fresh at `now_unix`; the
    /// nonce is not claimed yet ([`GatewayVerifier::claim_nonce`] does that, and an envelope
    /// whose claim fails must be refused as if it had not verified).
    pub fn authentic<'h>(
        &self,
        headers: &SignedHeaders<'h>,
        method: &str,
        path: &str,
        body: &[u8],
        now_unix: i64,
    ) -> Option<&'h str> {
        let mac = self.mac.as_ref()?;
        let (Some(ts), Some(nonce), Some(sig)) =
            (headers.timestamp, headers.nonce, headers.signature)
        else {
            return None;
        };
        if nonce.is_empty() {
            return None;
        }
        let unix = ts.parse::<i64>().ok()?;
        if (now_unix - unix).abs() > FRESHNESS_SECONDS {
            return None;
        }
        mac.verify_hex(canonical(ts, nonce, method, path, body).as_bytes(), sig)
            .then_some(nonce)
    }

    /// Claims an authentic envelope's nonce across every replica: `true` for the first claim
    /// only (an unreachable registry is `false`: fail closed).
    pub async fn claim_nonce(&self, nonce: &str) -> bool {
        matches!(
            self.nonces
                .set_if_absent(
                    &format!("caracal:sts:gw-nonce:{nonce}"),
                    "1",
                    NONCE_TTL_SECONDS
                )
                .await,
            Ok(true)
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::ports::ExpiringKeysError;

    /// A keyed digest stand-in: the tag is sha256(key ‖ message).
    struct FakeMac(&'static str);

    impl MessageAuthenticator for FakeMac {
        fn sign_hex(&self, message: &[u8]) -> String {
            sha256_hex(&[self.0.as_bytes(), message].concat())
        }
        fn verify_hex(&self, message: &[u8], tag_hex: &str) -> bool {
            self.sign_hex(message) == tag_hex
        }
    }

    #[derive(Default)]
    struct Seen(Mutex<HashSet<String>>);

    #[async_trait]
    impl ExpiringKeys for Seen {
        async fn set_if_absent(
            &self,
            key: &str,
            _: &str,
            _: u64,
        ) -> Result<bool, ExpiringKeysError> {
            Ok(self.0.lock().expect("lock").insert(key.to_owned()))
        }
        async fn exists(&self, key: &str) -> Result<bool, ExpiringKeysError> {
            Ok(self.0.lock().expect("lock").contains(key))
        }
    }

    fn verifier(key: Option<&'static str>) -> GatewayVerifier {
        GatewayVerifier::new(
            key.map(|k| Arc::new(FakeMac(k)) as Arc<dyn MessageAuthenticator>),
            Arc::new(Seen::default()),
        )
    }

    async fn check(
        v: &GatewayVerifier,
        ts: i64,
        nonce: &str,
        sig: &str,
        body: &[u8],
        now: i64,
    ) -> bool {
        let ts = ts.to_string();
        let headers = SignedHeaders {
            timestamp: Some(&ts),
            nonce: Some(nonce),
            signature: Some(sig),
        };
        v.verify(&headers, "post", "/oauth/2/token", body, now)
            .await
    }

    #[tokio::test]
    async fn authentic_fresh_envelopes_pass_once() {
        let v = verifier(Some("k"));
        let sig = v
            .sign(1_000, "n1", "POST", "/oauth/2/token", b"a=1")
            .expect("key");
        assert!(check(&v, 1_000, "n1", &sig, b"a=1", 1_030).await);
        assert!(
            !check(&v, 1_000, "n1", &sig, b"a=1", 1_030).await,
            "a nonce is accepted once"
        );
    }

    #[tokio::test]
    async fn forged_stale_or_keyless_envelopes_fail() {
        let v = verifier(Some("k"));
        let sig = v
            .sign(1_000, "n2", "POST", "/oauth/2/token", b"a=1")
            .expect("key");
        assert!(
            !check(&v, 1_000, "n2", &sig, b"a=2", 1_000).await,
            "body is signed"
        );
        assert!(
            !check(&v, 1_000, "n2", &sig, b"a=1", 1_061).await,
            "too old"
        );
        assert!(
            !check(&v, 1_000, "n2", &sig, b"a=1", 939).await,
            "too far ahead"
        );
        let other = verifier(Some("other")).sign(1_000, "n2", "POST", "/oauth/2/token", b"a=1");
        assert!(!check(&v, 1_000, "n2", &other.expect("key"), b"a=1", 1_000).await);
        assert!(
            check(&v, 1_000, "n2", &sig, b"a=1", 1_000).await,
            "forgeries did not burn the nonce"
        );
        let keyless = verifier(None);
        assert!(
            !check(&keyless, 1_000, "n3", &sig, b"a=1", 1_000).await,
            "no key, no trust"
        );
        let partial = SignedHeaders {
            timestamp: Some("1000"),
            nonce: None,
            signature: Some(&sig),
        };
        assert!(partial.any());
        assert!(
            !v.verify(&partial, "POST", "/oauth/2/token", b"a=1", 1_000)
                .await
        );
    }
}
