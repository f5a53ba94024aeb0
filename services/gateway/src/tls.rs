//! Inbound TLS termination (B16): `TLS_CERT_FILE` + `TLS_KEY_FILE`, read once at start-up.
//!
//! rustls with the ring provider (the one reqwest already uses outbound), TLS 1.2 and 1.3 only
//! (rustls implements nothing older), ALPN `http/1.1` because the server speaks HTTP/1.1 only:
//! a client that offers ALPN without `http/1.1` is refused during the handshake rather than
//! left to guess. No client certificates. A certificate is not reloaded while running; rotate
//! it by restarting, as upstream's `ListenAndServeTLS` also requires.

use std::sync::Arc;

use caracal_http::config::ConfigError;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The one application protocol served over TLS.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A loaded server certificate and key, ready to accept connections.
#[derive(Clone)]
pub struct ServerTls {
    cert_file: String,
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never appears in logs or panics; the file it came from is enough.
        f.debug_struct("ServerTls")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

fn invalid(name: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { name, reason }
}

/// A PEM parse failure in words (the parser's own messages print byte arrays).
fn pem_problem(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a `{}` PEM block has no END line",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed PEM line `{}`", String::from_utf8_lossy(line))
        }
        pem::Error::Base64Decode(e) => format!("a PEM block is not valid base64 ({e})"),
        other => other.to_string(),
    }
}

impl ServerTls {
    /// Loads the PEM certificate chain at `cert_file` (leaf first) and the PEM private key at
    /// `key_file` (PKCS#8, PKCS#1 or SEC1). Every failure names the variable that pointed at
    /// the file: unreadable, not PEM, no certificate, no key, an unsupported key type, or a
    /// key that does not belong to the leaf certificate.
    pub fn from_pem_files(cert_file: &str, key_file: &str) -> Result<Self, ConfigError> {
        let cert_pem = std::fs::read(cert_file)
            .map_err(|e| invalid("TLS_CERT_FILE", format!("cannot read {cert_file}: {e}")))?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                let problem = pem_problem(&e);
                invalid(
                    "TLS_CERT_FILE",
                    format!("{cert_file} is not valid PEM: {problem}"),
                )
            })?;
        if chain.is_empty() {
            return Err(invalid(
                "TLS_CERT_FILE",
                format!("{cert_file} holds no PEM CERTIFICATE block"),
            ));
        }
        let key_pem = std::fs::read(key_file)
            .map_err(|e| invalid("TLS_KEY_FILE", format!("cannot read {key_file}: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            let reason = match e {
                pem::Error::NoItemsFound => format!(
                    "{key_file} holds no PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)"
                ),
                e => format!("{key_file} is not valid PEM: {}", pem_problem(&e)),
            };
            invalid("TLS_KEY_FILE", reason)
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            // Cannot fail with ring and both versions built in; named for completeness.
            .map_err(|e| invalid("TLS_CERT_FILE", format!("TLS setup failed: {e}")))?
            .with_no_client_auth()
            // rustls checks here that the key parses and matches the leaf's public key.
            .with_single_cert(chain, key)
            .map_err(|e| {
                let reason = match e {
                    rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                        format!("{key_file} is not the key of the first certificate in {cert_file}")
                    }
                    e => format!("{key_file} cannot be used with {cert_file}: {e}"),
                };
                invalid("TLS_KEY_FILE", reason)
            })?;
        config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Ok(Self {
            cert_file: cert_file.to_owned(),
            config: Arc::new(config),
        })
    }

    /// Accepts TLS connections with this certificate.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.config))
    }
}
