//! The Gateway's side of the signed STS exchange (B7): one `POST {STS_URL}/oauth/2/token` per
//! request, signed with `GATEWAY_STS_HMAC_KEY`, under `STS_TIMEOUT`, no redirects, retries or
//! caching; and the STS health probe of `/ready`.
//!
//! Next to an STS in the same process ([`LocalSts`]: `caracal serve all`, `caracal dev`) the
//! same signed request is handed to it directly instead of over loopback HTTP: same body, same
//! envelope, same checks on the STS side, same reading of the answer here, same timeout.

use std::time::Duration;

use std::sync::Arc;

use caracal_core::digest::hex;
use caracal_core::gateway::exchange::{
    form_body, interpret, sign, Envelope, ExchangeRequest, Exchanged, StsOutcome, TOKEN_PATH,
};
use caracal_core::gateway::Denial;
use caracal_core::ports::MessageAuthenticator;
use ring::rand::{SecureRandom, SystemRandom};

/// The most of an STS answer that is read (16 KiB; one byte more marks it as too long).
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// `/ready`'s probe budget.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// An STS in the same process: answers a signed exchange with the status and body its
/// `POST /oauth/2/token` would send.
#[async_trait::async_trait]
pub trait LocalSts: Send + Sync {
    /// The answer to `body` under `envelope`, or `None` while the STS cannot take requests yet
    /// (it is still starting): the exchange then goes over HTTP.
    async fn exchange(
        &self,
        body: &[u8],
        envelope: &Envelope,
        request_id: &str,
    ) -> Option<(u16, Vec<u8>)>;
}

/// The exchange client.
pub struct StsClient {
    client: reqwest::Client,
    base: String,
    timeout: Duration,
    mac: Arc<dyn MessageAuthenticator>,
    rng: SystemRandom,
    local: Option<Arc<dyn LocalSts>>,
}

/// Why the STS health probe failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StsHealth {
    /// `GET /health` answered 2xx.
    Up,
    /// It answered with another status.
    Unavailable,
    /// No answer.
    Unreachable,
}

impl StsClient {
    /// A client for the STS at `base` (no trailing slash). The URL is the operator's own
    /// configuration, so plain `http` to a cluster-internal host is fine and no address guard
    /// applies.
    pub fn new(
        base: &str,
        timeout: Duration,
        mac: Arc<dyn MessageAuthenticator>,
        local: Option<Arc<dyn LocalSts>>,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(timeout)
            .user_agent("caracal-gateway")
            .build()
            .map_err(|e| format!("the STS HTTP client cannot be built: {e}"))?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            timeout,
            mac,
            rng: SystemRandom::new(),
            local,
        })
    }

    /// 32 random bytes as 64 lowercase hex.
    fn nonce(&self) -> Result<String, Denial> {
        let mut bytes = [0u8; 32];
        self.rng.fill(&mut bytes).map_err(|_| {
            Denial::new(
                502,
                "sts_unavailable",
                "sts unreachable",
                "sts_exchange_errors",
            )
        })?;
        Ok(hex(&bytes))
    }

    /// Runs the exchange for `request` at `unix` and reads the answer per B7.
    pub async fn exchange(
        &self,
        request: &ExchangeRequest<'_>,
        unix: i64,
    ) -> Result<Exchanged, Denial> {
        let body = form_body(request);
        let envelope = sign(self.mac.as_ref(), unix, &self.nonce()?, body.as_bytes());
        if let Some(local) = &self.local {
            let call = local.exchange(body.as_bytes(), &envelope, request.request_id);
            match tokio::time::timeout(self.timeout, call).await {
                Err(_) => return interpret(StsOutcome::Timeout, request.resource),
                Ok(Some((status, answer))) => {
                    let status_text = reqwest::StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("");
                    return interpret(
                        StsOutcome::Answer {
                            status,
                            status_text,
                            body: &answer[..answer.len().min(MAX_ANSWER_BYTES + 1)],
                        },
                        request.resource,
                    );
                }
                // Not ready yet: over HTTP, as a split deployment would.
                Ok(None) => {}
            }
        }
        let call = async {
            let mut response = self
                .client
                .post(format!("{}{TOKEN_PATH}", self.base))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("accept", "application/json")
                .header("x-request-id", request.request_id)
                .header("x-caracal-gateway-timestamp", &envelope.timestamp)
                .header("x-caracal-gateway-request", &envelope.nonce)
                .header("x-caracal-gateway-signature", &envelope.signature)
                .body(body)
                .send()
                .await?;
            let status = response.status();
            let mut answer = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                answer.extend_from_slice(&chunk);
                if answer.len() > MAX_ANSWER_BYTES {
                    answer.truncate(MAX_ANSWER_BYTES + 1);
                    break;
                }
            }
            Ok::<_, reqwest::Error>((status, answer))
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => interpret(StsOutcome::Timeout, request.resource),
            Ok(Err(e)) if e.is_timeout() => interpret(StsOutcome::Timeout, request.resource),
            Ok(Err(_)) => interpret(StsOutcome::Transport, request.resource),
            Ok(Ok((status, answer))) => interpret(
                StsOutcome::Answer {
                    status: status.as_u16(),
                    status_text: status.canonical_reason().unwrap_or(""),
                    body: &answer,
                },
                request.resource,
            ),
        }
    }

    /// `GET {STS_URL}/health` within 2 s.
    pub async fn health(&self) -> StsHealth {
        let probe = self.client.get(format!("{}/health", self.base)).send();
        match tokio::time::timeout(HEALTH_TIMEOUT, probe).await {
            Ok(Ok(response)) if response.status().is_success() => StsHealth::Up,
            Ok(Ok(_)) => StsHealth::Unavailable,
            _ => StsHealth::Unreachable,
        }
    }
}
