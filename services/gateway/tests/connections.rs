//! Connection-level behaviour (B12, B13, B16): the idle, head, request, write and stream
//! deadlines, and TLS termination. Deadlines are set to fractions of a second; every wait is
//! bounded, and a test only asserts that a connection is closed after its deadline (never that
//! it was closed quickly, beyond telling one deadline from a much longer one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

mod support;
use support::*;

/// Long enough for anything a loaded machine may delay, short of hanging a test run.
const PATIENCE: Duration = Duration::from_secs(15);

const HEALTH: &str = "GET /health HTTP/1.1\r\nhost: gw\r\n\r\n";

fn position(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response with a `Content-Length` (the Gateway's own answers have one).
async fn read_response<S: AsyncRead + Unpin>(conn: &mut S) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = position(&data, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().expect("length"))
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return String::from_utf8_lossy(&data[..end + 4 + length]).into_owned();
            }
        }
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-response: {}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    }
}

/// One request, one response, on a kept-alive connection.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut S, request: &str) -> String {
    conn.write_all(request.as_bytes()).await.expect("write");
    read_response(conn).await
}

/// Nothing happens on `conn` for `period`: no close, no bytes.
async fn still_open_for<S: AsyncRead + Unpin>(conn: &mut S, period: Duration) {
    let mut buf = [0u8; 64];
    if let Ok(read) = tokio::time::timeout(period, conn.read(&mut buf)).await {
        panic!("the connection ended early: {read:?}");
    }
}

/// Waits until the server closes `conn`, returning what it sent meanwhile.
async fn closed<S: AsyncRead + Unpin>(conn: &mut S) -> Vec<u8> {
    let mut data = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let started = Instant::now();
    loop {
        let left = PATIENCE.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Err(_) => panic!("still open after {PATIENCE:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return data,
            Ok(Ok(n)) => data.extend_from_slice(&buf[..n]),
        }
    }
}

/// A client socket with a small receive window, so that a client that stops reading soon
/// leaves the Gateway's writes waiting.
async fn slow_reader(addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("buffer");
    socket.connect(addr).await.expect("connect")
}

/// The `gateway_resource_request` events so far.
fn events(h: &Harness) -> Vec<caracal_core::ports::AuditEvent> {
    h.audit.of_type("gateway_resource_request")
}

async fn first_event(h: &Harness) -> caracal_core::ports::AuditEvent {
    let started = Instant::now();
    loop {
        if let Some(event) = events(h).into_iter().next() {
            return event;
        }
        assert!(started.elapsed() < PATIENCE, "no event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn proxied(h: &Harness, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\nx-caracal-resource: {RESOURCE}\r\n\r\n",
        h.mandate(json!({}))
    )
}

#[tokio::test]
async fn a_fresh_connection_owes_its_first_head_within_read_header_timeout() {
    let h = harness_with(|c| c.read_header_timeout = Duration::from_millis(400)).await;
    let mut silent = TcpStream::connect(h.addr).await.expect("connect");
    still_open_for(&mut silent, Duration::from_millis(200)).await;
    assert!(
        closed(&mut silent).await.is_empty(),
        "closed without an answer"
    );

    let mut partial = TcpStream::connect(h.addr).await.expect("connect");
    partial
        .write_all(b"GET /health HTTP/1.1\r\nhost: gw\r\n")
        .await
        .expect("write");
    assert!(closed(&mut partial).await.is_empty());
}

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_head_timeout_until_idle_timeout() {
    let idle = Duration::from_secs(2);
    let h = harness_with(|c| {
        c.read_header_timeout = Duration::from_millis(200);
        c.idle_timeout = idle;
    })
    .await;
    let mut conn = TcpStream::connect(h.addr).await.expect("connect");
    assert!(exchange(&mut conn, HEALTH)
        .await
        .starts_with("HTTP/1.1 200"));
    // Idle for more than READ_HEADER_TIMEOUT: the connection is still there for the next one.
    still_open_for(&mut conn, Duration::from_millis(600)).await;
    assert!(exchange(&mut conn, HEALTH)
        .await
        .starts_with("HTTP/1.1 200"));
    // Then nothing: it is held for IDLE_TIMEOUT (counted from the flush, a little before the
    // answer is read here), and closed after it.
    still_open_for(&mut conn, idle / 2).await;
    assert!(closed(&mut conn).await.is_empty());
}

#[tokio::test]
async fn a_head_begun_after_idling_must_arrive_within_read_header_timeout() {
    let h = harness_with(|c| {
        c.read_header_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_secs(120);
    })
    .await;
    let mut conn = TcpStream::connect(h.addr).await.expect("connect");
    assert!(exchange(&mut conn, HEALTH)
        .await
        .starts_with("HTTP/1.1 200"));
    still_open_for(&mut conn, Duration::from_millis(400)).await;
    conn.write_all(b"GET /health HTTP/1.1\r\n")
        .await
        .expect("write");
    still_open_for(&mut conn, Duration::from_millis(150)).await;
    // Closed for the head's deadline, long before IDLE_TIMEOUT would have done it.
    assert!(closed(&mut conn).await.is_empty());
}

#[tokio::test]
async fn read_timeout_bounds_a_request_from_its_first_byte() {
    // The head may take 60 s, but the request as a whole only 800 ms.
    let h = harness_with(|c| {
        c.read_header_timeout = Duration::from_secs(60);
        c.read_timeout = Duration::from_millis(800);
        c.sts_timeout = Duration::from_millis(100);
        c.upstream_timeout = Duration::from_millis(200);
    })
    .await;
    let conn = TcpStream::connect(h.addr).await.expect("connect");
    let (mut reader, mut writer) = conn.into_split();
    let trickle = tokio::spawn(async move {
        let _ = writer.write_all(b"GET /health HTTP/1.1\r\n").await;
        for i in 0..600 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer
                .write_all(format!("x-trickle-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    still_open_for(&mut reader, Duration::from_millis(400)).await;
    assert!(
        closed(&mut reader).await.is_empty(),
        "no answer to a cut request"
    );
    trickle.abort();
}

/// Mandate keys that never come: a handler stuck before its answer.
struct Stuck;

#[async_trait::async_trait]
impl caracal_core::ports::ZoneKeySource for Stuck {
    async fn verifying_keys(
        &self,
        _zone: &caracal_core::ids::ZoneId,
        _kid: &str,
    ) -> caracal_core::Result<caracal_core::mandate::VerifyingKeys> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn read_timeout_bounds_a_request_until_its_answer_is_ready() {
    let h = harness_on(Some(Arc::new(Stuck)), |c| {
        c.read_timeout = Duration::from_millis(800);
        c.sts_timeout = Duration::from_millis(100);
        c.upstream_timeout = Duration::from_millis(200);
    })
    .await;
    let mut conn = TcpStream::connect(h.addr).await.expect("connect");
    conn.write_all(proxied(&h, "/items").as_bytes())
        .await
        .expect("write");
    still_open_for(&mut conn, Duration::from_millis(400)).await;
    assert!(closed(&mut conn).await.is_empty(), "no answer once cut");
    assert!(h.sts_exchanges().is_empty());
}

#[tokio::test]
async fn a_trickled_body_is_cut_with_the_request() {
    // Proxied, a body is read while the upstream call runs, so UPSTREAM_TIMEOUT (which
    // READ_TIMEOUT must exceed) ends a trickle first: the caller gets its 504 and the
    // connection, with the rest of the body unread, is closed.
    let h = harness_with(|c| {
        c.read_header_timeout = Duration::from_millis(500);
        c.read_timeout = Duration::from_secs(4);
        c.sts_timeout = Duration::from_secs(2);
        c.upstream_timeout = Duration::from_millis(500);
    })
    .await;
    let conn = TcpStream::connect(h.addr).await.expect("connect");
    let (mut reader, mut writer) = conn.into_split();
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {}\r\nx-caracal-resource: {RESOURCE}\r\ncontent-length: 100000\r\n\r\n",
        h.mandate(json!({}))
    );
    let trickle = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        for _ in 0..1000 {
            if writer.write_all(b"z").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let answer = String::from_utf8_lossy(&closed(&mut reader).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(answer.contains("upstream timeout"), "{answer}");
    trickle.abort();
}

#[tokio::test]
async fn an_answer_of_known_length_must_be_written_within_write_timeout() {
    let write = Duration::from_millis(600);
    let h = harness_with(|c| c.write_timeout = write).await;
    let mut conn = slow_reader(h.addr).await;
    let sent = Instant::now();
    conn.write_all(proxied(&h, "/big").as_bytes())
        .await
        .expect("write");
    let mut head = [0u8; 1024];
    let n = tokio::time::timeout(PATIENCE, conn.read(&mut head))
        .await
        .expect("head in time")
        .expect("read");
    let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains(&format!("content-length: {BIG}")), "{head}");
    // The client reads no further. Nothing gives up before WRITE_TIMEOUT...
    tokio::time::sleep_until((sent + write / 2).into()).await;
    assert!(events(&h).is_empty(), "cut before WRITE_TIMEOUT");
    // ...and after it the connection is closed, the answer short of its length.
    let event = first_event(&h).await;
    let meta = event.metadata_json.as_ref().expect("metadata");
    assert_eq!(meta["error_kind"], "response_copy_failed");
    assert_eq!(meta["upstream_status"], 200);
    let rest = closed(&mut conn).await;
    assert!(n + rest.len() < BIG, "the whole answer arrived");
}

#[tokio::test]
async fn a_stream_outlives_write_timeout_while_its_chunks_keep_coming() {
    // Each chunk renews STREAM_IDLE_TIMEOUT: the stream runs past both limits.
    let h = harness_with(|c| {
        c.write_timeout = Duration::from_millis(300);
        c.stream_idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut conn = TcpStream::connect(h.addr).await.expect("connect");
    conn.write_all(proxied(&h, "/stream").as_bytes())
        .await
        .expect("write");
    let started = Instant::now();
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    // A chunk every 50 ms: well past both limits, the stream is still flowing.
    while started.elapsed() < Duration::from_millis(2500) {
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut buf))
            .await
            .expect("a chunk in time")
            .expect("read");
        assert!(n > 0, "stream cut: {}", String::from_utf8_lossy(&data));
        data.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&data);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("data: event 5"), "{text}");
    assert!(events(&h).is_empty(), "the stream is still running");
}

#[tokio::test]
async fn a_stream_nobody_reads_is_closed_after_stream_idle_timeout() {
    let idle = Duration::from_millis(800);
    let h = harness_with(|c| {
        c.write_timeout = Duration::from_secs(60);
        c.stream_idle_timeout = idle;
    })
    .await;
    let mut conn = slow_reader(h.addr).await;
    let sent = Instant::now();
    conn.write_all(proxied(&h, "/flood").as_bytes())
        .await
        .expect("write");
    let mut head = [0u8; 1024];
    let n = tokio::time::timeout(PATIENCE, conn.read(&mut head))
        .await
        .expect("head in time")
        .expect("read");
    let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    tokio::time::sleep_until((sent + idle / 2).into()).await;
    assert!(events(&h).is_empty(), "cut before STREAM_IDLE_TIMEOUT");
    // Long before WRITE_TIMEOUT (60 s), the stalled stream is given up.
    let event = first_event(&h).await;
    let meta = event.metadata_json.as_ref().expect("metadata");
    assert_eq!(meta["error_kind"], "response_copy_failed");
    closed(&mut conn).await;
}

#[tokio::test]
async fn tls_serves_health_and_proxied_calls() {
    let h = harness_with(|c| c.tls = Some(tls_fixture())).await;
    assert!(h.url.starts_with("https://"));
    let health = h.get("/health").send().await.expect("health over TLS");
    assert_eq!(health.status(), 200);
    let (status, _, body) = h.call("/items", &h.mandate(json!({}))).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let seen = h.upstream_seen.lock().expect("seen").clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
}

fn tls_client(
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(fixture("tls-cert.pem")).expect("cert"))
        .expect("root");
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn tls_1_2_and_1_3_speak_http_1_1_and_nothing_else() {
    let h = harness_with(|c| c.tls = Some(tls_fixture())).await;
    let name = ServerName::try_from("localhost").expect("name");
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let connector = tls_client(&[version], &[b"h2", b"http/1.1"]);
        let tcp = TcpStream::connect(h.addr).await.expect("connect");
        let mut tls = connector
            .connect(name.clone(), tcp)
            .await
            .expect("handshake");
        let (_, session) = tls.get_ref();
        assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(session.protocol_version(), Some(version.version));
        assert!(exchange(&mut tls, HEALTH).await.starts_with("HTTP/1.1 200"));
    }
    // A client that only speaks HTTP/2 is refused during the handshake.
    let connector = tls_client(&[&rustls::version::TLS13], &[b"h2"]);
    let tcp = TcpStream::connect(h.addr).await.expect("connect");
    assert!(connector.connect(name, tcp).await.is_err());
}

#[tokio::test]
async fn plain_http_on_the_tls_port_is_refused() {
    let h = harness_with(|c| c.tls = Some(tls_fixture())).await;
    let mut conn = TcpStream::connect(h.addr).await.expect("connect");
    conn.write_all(proxied(&h, "/items").as_bytes())
        .await
        .expect("write");
    let answer = String::from_utf8_lossy(&closed(&mut conn).await).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with("use an https:// URL instead.\n"),
        "{answer}"
    );
    // Not a request line either: closed without a word.
    let mut conn = TcpStream::connect(h.addr).await.expect("connect");
    conn.write_all(b"\x00\x01\x02garbage").await.expect("write");
    assert!(closed(&mut conn).await.is_empty());
    let plain = client(false)
        .get(format!("http://{}/health", h.addr))
        .send()
        .await
        .expect("an answer");
    assert_eq!(plain.status(), 400);
    assert_eq!(h.upstream_count(), 0);
    assert!(h.sts_exchanges().is_empty());
}

#[tokio::test]
async fn a_tls_handshake_must_finish_within_read_header_timeout() {
    let h = harness_with(|c| {
        c.tls = Some(tls_fixture());
        c.read_header_timeout = Duration::from_millis(400);
    })
    .await;
    let mut silent = TcpStream::connect(h.addr).await.expect("connect");
    still_open_for(&mut silent, Duration::from_millis(200)).await;
    assert!(closed(&mut silent).await.is_empty());
    // A handshake record that never completes.
    let mut stalled = TcpStream::connect(h.addr).await.expect("connect");
    stalled.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    still_open_for(&mut stalled, Duration::from_millis(200)).await;
    assert!(closed(&mut stalled).await.is_empty());
}
