//! The production [`IssuerKeys`]: one HTTPS GET per fetch, bounded in time and size, through
//! the SSRF guard.

use std::error::Error as StdError;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use caracal_core::ports::{FetchError, IssuerKeys};
use reqwest::redirect::Policy;
use reqwest::{Certificate, Client, StatusCode, Url};
use serde_json::Value;

use crate::guard::{Blocked, EgressPolicy, GuardedResolver};

/// Whole-request deadline (connect, TLS, headers and body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest key set document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Egress settings, as the operator gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressConfig {
    /// `CARACAL_PRIVATE_EGRESS_HOSTS`: comma-separated hosts allowed onto private ranges.
    pub private_hosts: Option<String>,
    /// `CARACAL_TLS_EXTRA_CA_FILE`: PEM bundle of roots trusted besides the built-in ones.
    pub extra_ca_file: Option<String>,
}

/// Fetches issuer key sets over HTTPS.
#[derive(Debug, Clone)]
pub struct HttpsIssuerKeys {
    /// The client, or why none could be built: egress then fails closed on every fetch rather
    /// than quietly trusting fewer (or more) roots than the operator configured.
    client: Result<Client, String>,
    policy: Arc<EgressPolicy>,
}

fn load_roots(path: &str) -> Result<Vec<Certificate>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("CARACAL_TLS_EXTRA_CA_FILE {path} cannot be read: {e}"))?;
    let roots = Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("CARACAL_TLS_EXTRA_CA_FILE {path} is not a PEM bundle: {e}"))?;
    if roots.is_empty() {
        return Err(format!(
            "CARACAL_TLS_EXTRA_CA_FILE {path} holds no certificates"
        ));
    }
    Ok(roots)
}

fn build_client(config: &EgressConfig, policy: &Arc<EgressPolicy>) -> Result<Client, String> {
    let mut builder = Client::builder()
        .https_only(true)
        .redirect(Policy::none())
        // A proxy would resolve and dial the destination itself, out of the guard's reach.
        .no_proxy()
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .user_agent(concat!("caracal-sts/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(GuardedResolver {
            policy: Arc::clone(policy),
        }));
    if let Some(path) = config.extra_ca_file.as_deref() {
        for root in load_roots(path)? {
            builder = builder.add_root_certificate(root);
        }
    }
    builder
        .build()
        .map_err(|e| format!("the egress HTTP client cannot be built: {e}"))
}

impl HttpsIssuerKeys {
    /// The fetcher for `config`. A CA file that cannot be read or parsed is logged here and
    /// makes every fetch fail with [`FetchError::Unavailable`].
    pub fn new(config: &EgressConfig) -> Self {
        let policy = Arc::new(EgressPolicy::new(config.private_hosts.as_deref()));
        let client = build_client(config, &policy);
        if let Err(problem) = &client {
            tracing::error!(%problem, "egress to issuer key sets is disabled (fails closed)");
        }
        Self { client, policy }
    }

    /// Why egress is disabled, if it is.
    pub fn problem(&self) -> Option<&str> {
        self.client.as_ref().err().map(String::as_str)
    }
}

/// Whether an error (or anything it wraps) is a refusal by the guard.
fn blocked_in<'e>(err: &'e (dyn StdError + 'static)) -> Option<&'e Blocked> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(blocked) = e.downcast_ref::<Blocked>() {
            return Some(blocked);
        }
        current = e.source();
    }
    None
}

fn transport(err: reqwest::Error) -> FetchError {
    if let Some(blocked) = blocked_in(&err) {
        return FetchError::Blocked(blocked.0.clone());
    }
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text = format!("{text}: {e}");
        source = e.source();
    }
    FetchError::Transport(text)
}

/// The URL, if it is one egress may request: absolute `https` with a host and no credentials.
fn target(jwks_url: &str) -> Result<Url, FetchError> {
    let url = Url::parse(jwks_url).map_err(|e| FetchError::NotHttps(e.to_string()))?;
    if url.scheme() != "https" {
        return Err(FetchError::NotHttps(format!(
            "scheme {} is not https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(FetchError::NotHttps("no host".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::NotHttps("credentials in the URL".into()));
    }
    Ok(url)
}

#[async_trait]
impl IssuerKeys for HttpsIssuerKeys {
    async fn fetch(&self, jwks_url: &str) -> Result<Value, FetchError> {
        let client = self
            .client
            .as_ref()
            .map_err(|problem| FetchError::Unavailable(problem.clone()))?;
        let url = target(jwks_url)?;
        // The URL parser has already normalised numeric hosts (`0x7f.1`, `2130706433`) to
        // dotted IPv4, and IPv6 literals come bracketed.
        let host = url.host_str().unwrap_or("");
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            self.policy
                .check(host, ip)
                .map_err(|b| FetchError::Blocked(b.0))?;
        }
        let mut response = client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(transport)?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(FetchError::TooLarge(MAX_DOCUMENT_BYTES));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge(MAX_DOCUMENT_BYTES));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| FetchError::Malformed(e.to_string()))
    }
}
