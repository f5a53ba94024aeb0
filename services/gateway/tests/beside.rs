//! A Gateway with an STS in its own process (`caracal serve all`, `caracal dev`): the signed
//! exchange is handed over directly, with the same body, envelope, timeout and reading of the
//! answer as over HTTP, and goes over HTTP while the local STS cannot take it yet.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use caracal_core::gateway::exchange::Envelope;
use caracal_core::ports::MessageAuthenticator;
use caracal_core::sts::gateway_sig::canonical;
use caracal_crypto::HmacSha256;
use caracal_gateway::LocalSts;
use serde_json::json;

mod support;
use support::*;

/// What a local STS was handed.
#[derive(Clone)]
struct Handed {
    body: Vec<u8>,
    timestamp: String,
    nonce: String,
    signature: String,
    request_id: String,
}

/// A local STS that answers what it is told to (or declines: not ready), after `delay`.
struct Beside {
    answer: Mutex<Option<(u16, String)>>,
    delay: Duration,
    handed: Mutex<Vec<Handed>>,
}

impl Beside {
    fn new(delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            answer: Mutex::new(None),
            delay,
            handed: Mutex::new(Vec::new()),
        })
    }

    fn answer(&self, status: u16, body: String) {
        *self.answer.lock().expect("answer") = Some((status, body));
    }

    fn handed(&self) -> Vec<Handed> {
        self.handed.lock().expect("handed").clone()
    }
}

#[async_trait::async_trait]
impl LocalSts for Beside {
    async fn exchange(
        &self,
        body: &[u8],
        envelope: &Envelope,
        request_id: &str,
    ) -> Option<(u16, Vec<u8>)> {
        self.handed.lock().expect("handed").push(Handed {
            body: body.to_vec(),
            timestamp: envelope.timestamp.clone(),
            nonce: envelope.nonce.clone(),
            signature: envelope.signature.clone(),
            request_id: request_id.to_owned(),
        });
        tokio::time::sleep(self.delay).await;
        let answer = self.answer.lock().expect("answer").clone();
        answer.map(|(status, body)| (status, body.into_bytes()))
    }
}

async fn call(h: &Harness, request_id: &str) -> (u16, String) {
    let response = h
        .get("/items")
        .header("authorization", format!("Bearer {}", h.mandate(json!({}))))
        .header("x-caracal-resource", RESOURCE)
        .header("x-request-id", request_id)
        .send()
        .await
        .expect("send");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test]
async fn the_local_sts_takes_the_signed_exchange_without_http() {
    let beside = Beside::new(Duration::ZERO);
    let h = harness_beside(None, Some(Arc::clone(&beside) as Arc<dyn LocalSts>), |_| {}).await;
    beside.answer(200, directive_answer(default_directive(h.upstream)));
    let (status, body) = call(&h, "beside-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "ok");
    assert!(h.sts_exchanges().is_empty(), "nothing went over HTTP");
    let seen = h.upstream_seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer upstream-secret")
    );

    // Handed over as it would have been sent: the form body, signed under the exchange key.
    let handed = beside.handed();
    assert_eq!(handed.len(), 1);
    let ex = &handed[0];
    assert_eq!(ex.request_id, "beside-1");
    let form = String::from_utf8(ex.body.clone()).expect("utf8");
    assert!(form.contains("gateway_request_id=beside-1"), "{form}");
    assert_eq!(ex.nonce.len(), 64);
    let expected = canonical(&ex.timestamp, &ex.nonce, "POST", "/oauth/2/token", &ex.body);
    assert!(HmacSha256::from_bytes(&GATEWAY_KEY).verify_hex(expected.as_bytes(), &ex.signature));

    // Its refusals are read as the STS's answers over HTTP are.
    beside.answer(
        403,
        json!({"error": "access_denied", "error_description": "policy denied"}).to_string(),
    );
    let (status, body) = call(&h, "beside-2").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        h.upstream_seen.lock().expect("seen").len(),
        1,
        "the upstream saw nothing more"
    );
}

#[tokio::test]
async fn a_local_sts_not_ready_yet_leaves_the_exchange_to_http() {
    let beside = Beside::new(Duration::ZERO);
    let h = harness_beside(None, Some(Arc::clone(&beside) as Arc<dyn LocalSts>), |_| {}).await;
    let (status, body) = call(&h, "not-ready").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(beside.handed().len(), 1, "asked first");
    assert_eq!(h.sts_exchanges().len(), 1, "then over HTTP");
}

#[tokio::test]
async fn a_slow_local_sts_meets_sts_timeout() {
    let beside = Beside::new(Duration::from_secs(5));
    let h = harness_beside(None, Some(Arc::clone(&beside) as Arc<dyn LocalSts>), |c| {
        c.sts_timeout = Duration::from_millis(200)
    })
    .await;
    beside.answer(200, directive_answer(default_directive(h.upstream)));
    let (status, body) = call(&h, "slow").await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(error_of(&body).0, "sts_unavailable", "{body}");
    assert!(h.sts_exchanges().is_empty());
    assert!(h.upstream_seen.lock().expect("seen").is_empty());
}
