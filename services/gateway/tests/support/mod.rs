//! The Gateway in process on memory adapters, between a scripted fake STS and a recording fake
//! upstream (both small hyper servers on port 0), with real ES256 mandates.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use caracal_core::ids::ZoneId;
use caracal_core::mandate::{VerifyingKey, VerifyingKeys};
use caracal_core::ports::{
    AuditEvent, AuditSink, Clock, Es256, Es256Signer, MessageAuthenticator, SinkHealth,
    ZoneKeySource,
};
use caracal_crypto::{HmacSha256, RingEs256};
use caracal_gateway::{Gateway, GatewayConfig, GatewayPorts, ServerTls};
use caracal_memory::{MemoryBus, MemoryExpiringKeys, MemoryStore, SystemClock, UuidV7Ids};
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const ZONE: &str = "zone-1";
pub const APP: &str = "app-1";
pub const RESOURCE: &str = "resource://svc";
pub const KID: &str = "k1";
pub const GATEWAY_KEY: [u8; 32] = [7u8; 32];
pub const STREAMS_KEY: [u8; 32] = [5u8; 32];

pub type TestBody = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into()).boxed_unsync()
}

/// What a fake server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Response<TestBody> + Send + Sync>;

/// Serves `handler` on 127.0.0.1:0, recording every request.
pub async fn fake_server(handler: Handler) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = Arc::clone(&handler);
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let handler = Arc::clone(&handler);
                    let log = Arc::clone(&log);
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes().to_vec())
                            .unwrap_or_default();
                        let seen = Seen {
                            method: parts.method.to_string(),
                            target: parts
                                .uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            headers: parts
                                .headers
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().to_owned(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect(),
                            body,
                        };
                        let response = handler(&seen);
                        log.lock().expect("log").push(seen);
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A body that yields `data: event <i>` every 50 ms for ten seconds.
pub fn slow_stream() -> TestBody {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for i in 0..200 {
            let chunk = Frame::data(Bytes::from(format!("data: event {i}\n\n")));
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    StreamBody::new(stream).boxed_unsync()
}

/// Bytes of the upstream's `/big` answer.
pub const BIG: usize = 16 * 1024 * 1024;

/// A body of unknown length that yields 64 KiB chunks as fast as they are read, for a long time.
pub fn flood() -> TestBody {
    let chunk = Bytes::from(vec![b'f'; 64 * 1024]);
    let frames = (0..16_384).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

/// The upstream: `/stream` streams slowly as server-sent events, `/big` answers [`BIG`] bytes
/// with a `Content-Length`, `/flood` streams fast without one, anything else answers `ok`.
pub async fn upstream() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    fake_server(Arc::new(|seen: &Seen| {
        if seen.target.starts_with("/base/stream") {
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("server", "upstream/1.0")
                .body(slow_stream())
                .expect("response")
        } else if seen.target.starts_with("/base/big") {
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(full(vec![b'b'; BIG]))
                .expect("response")
        } else if seen.target.starts_with("/base/flood") {
            Response::builder()
                .header("content-type", "application/octet-stream")
                .body(flood())
                .expect("response")
        } else {
            Response::builder()
                .status(200)
                .header("content-type", "text/plain")
                .header("server", "upstream/1.0")
                .header("x-upstream", "yes")
                .body(full("ok"))
                .expect("response")
        }
    }))
    .await
}

/// The STS's scripted answers: queued ones first, then `default`.
#[derive(Clone)]
pub struct Script {
    pub queue: Arc<Mutex<VecDeque<(u16, String)>>>,
    pub default: Arc<Mutex<(u16, String)>>,
}

impl Script {
    pub fn push(&self, status: u16, body: &str) {
        self.queue
            .lock()
            .expect("queue")
            .push_back((status, body.to_owned()));
    }

    pub fn set_default(&self, status: u16, body: &str) {
        *self.default.lock().expect("default") = (status, body.to_owned());
    }
}

/// A successful exchange answer pointing `RESOURCE` at `directive`.
pub fn directive_answer(directive: Value) -> String {
    json!({
        "access_token": "resource-mandate-token",
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "expires_in": 60,
        "upstreams": { RESOURCE: directive },
    })
    .to_string()
}

pub async fn fake_sts(default: (u16, String)) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>, Script) {
    let script = Script {
        queue: Arc::new(Mutex::new(VecDeque::new())),
        default: Arc::new(Mutex::new(default)),
    };
    let answers = script.clone();
    let (addr, seen) = fake_server(Arc::new(move |seen: &Seen| {
        if seen.target == "/health" {
            return Response::new(full(""));
        }
        let (status, body) = answers
            .queue
            .lock()
            .expect("queue")
            .pop_front()
            .unwrap_or_else(|| answers.default.lock().expect("default").clone());
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(full(body))
            .expect("response")
    }))
    .await;
    (addr, seen, script)
}

/// Zone keys that always answer with one key.
pub struct StaticKeys(pub VerifyingKeys);

#[async_trait]
impl ZoneKeySource for StaticKeys {
    async fn verifying_keys(
        &self,
        _zone: &ZoneId,
        _kid: &str,
    ) -> caracal_core::Result<VerifyingKeys> {
        Ok(self.0.clone())
    }
}

/// Audit events, kept.
#[derive(Default)]
pub struct Recorded(pub Mutex<Vec<AuditEvent>>);

impl AuditSink for Recorded {
    fn emit(&self, event: AuditEvent) {
        self.0.lock().expect("audit").push(event);
    }

    fn health(&self) -> SinkHealth {
        SinkHealth {
            replay_available: true,
            ..SinkHealth::default()
        }
    }
}

impl Recorded {
    pub fn of_type(&self, event_type: &str) -> Vec<AuditEvent> {
        self.0
            .lock()
            .expect("audit")
            .iter()
            .filter(|e| e.event_type == event_type)
            .cloned()
            .collect()
    }
}

pub struct Harness {
    pub gateway: Arc<Gateway>,
    pub url: String,
    pub addr: SocketAddr,
    pub upstream: SocketAddr,
    pub upstream_seen: Arc<Mutex<Vec<Seen>>>,
    pub sts_seen: Arc<Mutex<Vec<Seen>>>,
    pub script: Script,
    pub signer: Arc<dyn Es256Signer>,
    pub audit: Arc<Recorded>,
    pub bus: Arc<MemoryBus>,
    pub store: MemoryStore,
    pub http: reqwest::Client,
    stop: watch::Sender<bool>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The default directive: the upstream's `/base`, provider OAuth credential.
pub fn default_directive(upstream: SocketAddr) -> Value {
    json!({
        "url": format!("http://{upstream}/base"),
        "auth_mode": "provider_oauth",
        "auth_header": "Authorization",
        "auth_scheme": "Bearer",
        "provider_token": "upstream-secret",
        "provider_id": "prov-1",
    })
}

pub async fn harness() -> Harness {
    harness_with(|_| {}).await
}

pub async fn harness_with(tune: impl FnOnce(&mut GatewayConfig)) -> Harness {
    harness_on(None, tune).await
}

/// A harness whose mandate keys come from `keys` (default: the harness's signer's).
pub async fn harness_on(
    keys: Option<Arc<dyn ZoneKeySource>>,
    tune: impl FnOnce(&mut GatewayConfig),
) -> Harness {
    harness_beside(keys, None, tune).await
}

/// A harness whose Gateway has `local` as the STS of its process (the scripted STS still
/// listens at `STS_URL` for exchanges `local` declines).
pub async fn harness_beside(
    keys: Option<Arc<dyn ZoneKeySource>>,
    local: Option<Arc<dyn caracal_gateway::LocalSts>>,
    tune: impl FnOnce(&mut GatewayConfig),
) -> Harness {
    let (upstream, upstream_seen) = upstream().await;
    let (sts, sts_seen, script) =
        fake_sts((200, directive_answer(default_directive(upstream)))).await;
    let es256 = RingEs256::new();
    let pem = es256.generate_pem().expect("pem");
    let signer = es256.load_signer(&pem).expect("signer");
    let signer_keys =
        VerifyingKeys::new(vec![VerifyingKey::new(KID, signer.public_point().to_vec())]);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let audit = Arc::new(Recorded::default());
    let bus = Arc::new(MemoryBus::new());
    let store = MemoryStore::new();
    let mut config = GatewayConfig::for_sts(&format!("http://{sts}"));
    tune(&mut config);
    let tls = config.tls.is_some();
    let gateway = Gateway::new(
        GatewayPorts {
            store: Arc::new(store.clone()),
            bus: bus.clone(),
            expiring: Arc::new(MemoryExpiringKeys::new(Arc::clone(&clock))),
            keys: keys.unwrap_or_else(|| Arc::new(StaticKeys(signer_keys))),
            es256: Arc::new(es256),
            audit: audit.clone(),
            clock,
            ids: Arc::new(UuidV7Ids),
            sts_mac: Arc::new(HmacSha256::from_bytes(&GATEWAY_KEY)),
            streams_mac: Some(
                Arc::new(HmacSha256::from_bytes(&STREAMS_KEY)) as Arc<dyn MessageAuthenticator>
            ),
            local_sts: local,
        },
        config,
    )
    .await
    .expect("gateway");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(caracal_gateway::run(
        Arc::clone(&gateway),
        listener,
        stop_rx,
    ));
    Harness {
        gateway,
        url: format!("{}://{addr}", if tls { "https" } else { "http" }),
        addr,
        upstream,
        upstream_seen,
        sts_seen,
        script,
        signer,
        audit,
        bus,
        store,
        http: client(tls),
        stop,
    }
}

/// A test fixture's path (`tests/fixtures/<name>`).
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The Gateway's TLS settings from the self-signed fixture (`localhost`, `127.0.0.1`).
pub fn tls_fixture() -> ServerTls {
    ServerTls::from_pem_files(&fixture("tls-cert.pem"), &fixture("tls-key.pem")).expect("fixture")
}

/// A client for the Gateway; with `tls`, one that trusts the fixture certificate only.
pub fn client(tls: bool) -> reqwest::Client {
    let builder = reqwest::Client::builder().no_proxy();
    let builder = if tls {
        let pem = std::fs::read(fixture("tls-cert.pem")).expect("fixture");
        builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("certificate"))
    } else {
        builder
    };
    builder.build().expect("client")
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

impl Harness {
    /// A `use=gateway` mandate with `overrides` merged into the default claims.
    pub fn mandate(&self, overrides: Value) -> String {
        let now = SystemClock.now().unix_seconds();
        let mut claims = json!({
            "iss": "http://sts.test",
            "aud": ["http://sts.test"],
            "exp": now + 600,
            "iat": now,
            "zone_id": ZONE,
            "client_id": APP,
            "jti": uuid::Uuid::new_v4().to_string(),
            "use": "gateway",
            "sid": format!("rec-{}", uuid::Uuid::new_v4()),
            "root_sid": "rec-root",
            "agent_session_id": "sess-1",
            "delegation_edge_id": "edge-1",
            "sub_type": "agent",
        });
        if let (Some(map), Some(extra)) = (claims.as_object_mut(), overrides.as_object()) {
            for (k, v) in extra {
                map.insert(k.clone(), v.clone());
            }
        }
        self.sign(&json!({"alg": "ES256", "typ": "JWT", "kid": KID}), &claims)
    }

    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = self.signer.sign(input.as_bytes()).expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.url))
    }

    /// A proxied GET with `mandate` for `RESOURCE`.
    pub async fn call(
        &self,
        path: &str,
        mandate: &str,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let response = self
            .get(path)
            .header("authorization", format!("Bearer {mandate}"))
            .header("x-caracal-resource", RESOURCE)
            .send()
            .await
            .expect("send");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.text().await.expect("body");
        (status, headers, body)
    }

    pub fn upstream_count(&self) -> usize {
        self.upstream_seen.lock().expect("seen").len()
    }

    pub fn sts_exchanges(&self) -> Vec<Seen> {
        self.sts_seen
            .lock()
            .expect("seen")
            .iter()
            .filter(|s| s.target != "/health")
            .cloned()
            .collect()
    }
}

/// `(status, error, error_description)` of a JSON error body.
pub fn error_of(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    (
        v["error"].as_str().unwrap_or_default().to_owned(),
        v["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}
