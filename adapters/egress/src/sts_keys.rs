//! Mandate verification keys fetched from the STS (`spec/coordinator-gateway.md` A2): the
//! [`ZoneKeySource`] of a Coordinator or Gateway that runs without the STS in its process.
//!
//! One `GET {STS_URL}/.well-known/jwks.json?zone_id=<zone>` per refresh, cached per zone:
//! - at most `JWKS_CACHE_MAX` zones (least recently used evicted), because the zone is read
//!   from an unverified token and must not grow memory without bound;
//! - a set is trusted for at most 10 minutes: past that it is fetched again and, if the STS
//!   cannot answer, tokens are refused (a sustained outage fails closed instead of verifying
//!   against keys that may have been rotated out);
//! - a token whose `kid` is not in a fresh set refetches at most once per zone every 30 s, so
//!   a rotation elsewhere is picked up at once while made-up kids cannot flood the STS;
//! - concurrent misses of one zone share one request.
//!
//! The STS URL is the operator's own configuration, not an address a tenant chose, so plain
//! `http` is allowed (a cluster-internal hop) and the SSRF guard of issuer fetches does not
//! apply. A zone the STS has no key for (`404`) is cached as an empty set under the same
//! cooldown, so random zone ids cannot turn into one STS request each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use caracal_core::error::{Error, ErrorKind};
use caracal_core::ids::ZoneId;
use caracal_core::mandate::{VerifyingKey, VerifyingKeys};
use caracal_core::ports::ZoneKeySource;
use reqwest::redirect::Policy;
use reqwest::{Client, StatusCode, Url};
use serde_json::Value;

use crate::jwks::MAX_DOCUMENT_BYTES;

/// Tunables of the cache (A2's values by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StsKeysConfig {
    /// `JWKS_CACHE_MAX`: zones kept (256).
    pub cache_max: usize,
    /// Longest a fetched set is used (600 s).
    pub max_age: Duration,
    /// Shortest spacing of refetches caused by an unknown `kid`, per zone (30 s).
    pub cooldown: Duration,
    /// Whole-request deadline (5 s).
    pub timeout: Duration,
}

impl Default for StsKeysConfig {
    fn default() -> Self {
        Self {
            cache_max: 256,
            max_age: Duration::from_secs(600),
            cooldown: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
        }
    }
}

/// One zone's cache slot.
struct Slot {
    /// The last fetched set and when it was fetched.
    keys: Option<(VerifyingKeys, Instant)>,
    /// Completed fetch attempts, so waiters can tell that a fetch finished while they waited.
    attempts: u64,
    /// Why the last attempt failed, if it did.
    last_error: Option<String>,
    /// Serializes fetches of this zone (single flight).
    gate: Arc<tokio::sync::Mutex<()>>,
    /// Last use, for LRU eviction.
    used: u64,
}

#[derive(Default)]
struct Cache {
    slots: HashMap<ZoneId, Slot>,
    tick: u64,
}

/// What the cache says about a request.
enum Decision {
    /// Answer with this set.
    Use(VerifyingKeys),
    /// Fetch (the set is missing, stale, or lacks the kid and the cooldown allows a refetch).
    Fetch,
}

/// The zone verification keys of STS mandates, fetched over HTTP from `STS_URL`.
pub struct StsMandateKeys {
    client: Client,
    base: Url,
    config: StsKeysConfig,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for StsMandateKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StsMandateKeys")
            .field("base", &self.base.as_str())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn unavailable(reason: String) -> Error {
    Error::new(ErrorKind::Unavailable, "mandate_keys_unavailable").with_detail(reason)
}

impl StsMandateKeys {
    /// A client of the STS at `sts_url` (an absolute `http(s)` URL with a host, no
    /// credentials, query or fragment; a path prefix is kept). The error names the problem.
    pub fn new(sts_url: &str, config: StsKeysConfig) -> Result<Self, String> {
        let base = Url::parse(sts_url.trim_end_matches('/'))
            .map_err(|e| format!("STS_URL is not a URL: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err("STS_URL must be an http(s) URL".into());
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err("STS_URL must name a host".into());
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err("STS_URL must not carry credentials".into());
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err("STS_URL must not carry a query or fragment".into());
        }
        if config.cache_max == 0 {
            return Err("JWKS_CACHE_MAX must be positive".into());
        }
        let client = Client::builder()
            .redirect(Policy::none())
            .no_proxy()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("caracal/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("the STS key client cannot be built: {e}"))?;
        Ok(Self {
            client,
            base,
            config,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// The JWKS URL of a zone.
    fn url(&self, zone: &ZoneId) -> Url {
        let mut url = self.base.clone();
        let path = format!("{}/.well-known/jwks.json", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.query_pairs_mut().append_pair("zone_id", zone.as_str());
        url
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn decide(&self, slot: &Slot, kid: &str, now: Instant) -> Decision {
        match &slot.keys {
            Some((keys, at)) if now.duration_since(*at) < self.config.max_age => {
                if keys.contains(kid) || now.duration_since(*at) < self.config.cooldown {
                    Decision::Use(keys.clone())
                } else {
                    Decision::Fetch
                }
            }
            _ => Decision::Fetch,
        }
    }

    /// The zone's slot (created on first use, evicting the least recently used beyond the
    /// cap), its decision, gate and attempt count.
    fn consult(&self, zone: &ZoneId, kid: &str) -> (Decision, Arc<tokio::sync::Mutex<()>>, u64) {
        let now = Instant::now();
        let mut cache = self.lock();
        cache.tick += 1;
        let tick = cache.tick;
        if !cache.slots.contains_key(zone) {
            while cache.slots.len() >= self.config.cache_max {
                let Some(oldest) = cache
                    .slots
                    .iter()
                    .min_by_key(|(_, s)| s.used)
                    .map(|(z, _)| z.clone())
                else {
                    break;
                };
                cache.slots.remove(&oldest);
            }
            cache.slots.insert(
                zone.clone(),
                Slot {
                    keys: None,
                    attempts: 0,
                    last_error: None,
                    gate: Arc::new(tokio::sync::Mutex::new(())),
                    used: tick,
                },
            );
        }
        let Some(slot) = cache.slots.get_mut(zone) else {
            // Just inserted under the same lock.
            return (Decision::Fetch, Arc::new(tokio::sync::Mutex::new(())), 0);
        };
        slot.used = tick;
        let decision = self.decide(slot, kid, now);
        (decision, Arc::clone(&slot.gate), slot.attempts)
    }

    /// Records a fetch outcome in the zone's slot (re-created if it was evicted meanwhile).
    fn record(&self, zone: &ZoneId, outcome: &Result<VerifyingKeys, String>) {
        let mut cache = self.lock();
        cache.tick += 1;
        let tick = cache.tick;
        let slot = cache.slots.entry(zone.clone()).or_insert_with(|| Slot {
            keys: None,
            attempts: 0,
            last_error: None,
            gate: Arc::new(tokio::sync::Mutex::new(())),
            used: tick,
        });
        slot.attempts += 1;
        slot.used = tick;
        match outcome {
            Ok(keys) => {
                slot.keys = Some((keys.clone(), Instant::now()));
                slot.last_error = None;
            }
            Err(reason) => slot.last_error = Some(reason.clone()),
        }
    }

    /// One request to the STS.
    async fn fetch(&self, zone: &ZoneId) -> Result<VerifyingKeys, String> {
        let mut response = self
            .client
            .get(self.url(zone))
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("STS key request failed: {e}"))?;
        match response.status() {
            StatusCode::OK => {}
            // The zone has never minted: nothing can verify yet.
            StatusCode::NOT_FOUND => return Ok(VerifyingKeys::default()),
            other => {
                return Err(format!(
                    "STS key request returned status {}",
                    other.as_u16()
                ))
            }
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("STS key response failed: {e}"))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("STS key set exceeds {MAX_DOCUMENT_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let document: Value =
            serde_json::from_slice(&body).map_err(|e| format!("STS key set is not JSON: {e}"))?;
        parse_key_set(&document)
    }
}

/// The ES256 verification keys of a JWKS document, in document order (newest first, as the
/// STS writes them). Entries that are not P-256 signing keys with 32-byte coordinates are
/// skipped; a document without a `keys` array is an error.
pub fn parse_key_set(document: &Value) -> Result<VerifyingKeys, String> {
    let entries = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("STS key set has no keys array")?;
    let text =
        |entry: &Value, name: &str| entry.get(name).and_then(Value::as_str).map(str::to_owned);
    let coordinate = |entry: &Value, name: &str| {
        text(entry, name)
            .and_then(|b64| URL_SAFE_NO_PAD.decode(b64).ok())
            .filter(|bytes| bytes.len() == 32)
    };
    let mut keys = Vec::new();
    for entry in entries {
        let usable = text(entry, "kty").as_deref() == Some("EC")
            && text(entry, "crv").as_deref() == Some("P-256")
            && text(entry, "use").is_none_or(|u| u == "sig")
            && text(entry, "alg").is_none_or(|a| a == "ES256");
        let (Some(kid), Some(x), Some(y)) = (
            text(entry, "kid").filter(|k| !k.is_empty()),
            coordinate(entry, "x"),
            coordinate(entry, "y"),
        ) else {
            continue;
        };
        if usable {
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            keys.push(VerifyingKey::new(kid, point));
        }
    }
    Ok(VerifyingKeys::new(keys))
}

#[async_trait]
impl ZoneKeySource for StsMandateKeys {
    async fn verifying_keys(
        &self,
        zone: &ZoneId,
        kid: &str,
    ) -> caracal_core::Result<VerifyingKeys> {
        let (decision, gate, seen) = self.consult(zone, kid);
        if let Decision::Use(keys) = decision {
            return Ok(keys);
        }
        let _flight = gate.lock().await;
        // Another request may have fetched while this one waited: use its outcome.
        let (decision, _, attempts) = self.consult(zone, kid);
        if let Decision::Use(keys) = decision {
            return Ok(keys);
        }
        if attempts != seen {
            let failure = self
                .lock()
                .slots
                .get(zone)
                .and_then(|s| s.last_error.clone());
            if let Some(reason) = failure {
                return Err(unavailable(reason));
            }
        }
        let outcome = self.fetch(zone).await;
        self.record(zone, &outcome);
        outcome.map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use caracal_core::mandate::{JwkSet, VerifyingKey};
    use caracal_core::ports::Es256;
    use caracal_crypto::RingEs256;

    use super::*;

    /// A throwaway HTTP/1.1 server on loopback answering every request with `(status, body)`
    /// from `answer`, counting requests and remembering the last request line.
    struct Server {
        url: String,
        hits: Arc<AtomicUsize>,
        last_line: Arc<Mutex<String>>,
    }

    fn serve(answer: impl Fn(usize) -> (u16, String) + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let hits = Arc::new(AtomicUsize::new(0));
        let last_line = Arc::new(Mutex::new(String::new()));
        let (h, l) = (Arc::clone(&hits), Arc::clone(&last_line));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).map_or(true, |n| n == 0) || header == "\r\n" {
                        break;
                    }
                }
                let n = h.fetch_add(1, Ordering::SeqCst);
                *l.lock().expect("lock") = line.trim().to_owned();
                let (status, body) = answer(n);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Server {
            url,
            hits,
            last_line,
        }
    }

    fn point() -> Vec<u8> {
        let es = RingEs256::new();
        let pem = es.generate_pem().expect("pem");
        es.load_signer(&pem)
            .expect("signer")
            .public_point()
            .to_vec()
    }

    fn document(keys: &[(&str, &[u8])]) -> String {
        let set = VerifyingKeys::new(
            keys.iter()
                .map(|(kid, p)| VerifyingKey::new(*kid, p.to_vec()))
                .collect(),
        );
        JwkSet::from_keys(&set).to_value().to_string()
    }

    fn zone(id: &str) -> ZoneId {
        ZoneId::parse(id).expect("zone")
    }

    fn fast(cooldown_ms: u64, max_age_ms: u64) -> StsKeysConfig {
        StsKeysConfig {
            cache_max: 2,
            max_age: Duration::from_millis(max_age_ms),
            cooldown: Duration::from_millis(cooldown_ms),
            timeout: Duration::from_secs(2),
        }
    }

    #[tokio::test]
    async fn fetches_the_zone_set_once_and_serves_it_from_cache() {
        let p = point();
        let doc = document(&[("k2", &p), ("k1", &p)]);
        let server = serve(move |_| (200, doc.clone()));
        let keys = StsMandateKeys::new(&format!("{}/sts/", server.url), StsKeysConfig::default())
            .expect("client");
        let set = keys.verifying_keys(&zone("z1"), "k1").await.expect("keys");
        assert_eq!(set.len(), 2);
        assert_eq!(set.get("k1"), Some(p.as_slice()));
        assert_eq!(
            server.last_line.lock().expect("lock").as_str(),
            "GET /sts/.well-known/jwks.json?zone_id=z1 HTTP/1.1"
        );
        for _ in 0..3 {
            keys.verifying_keys(&zone("z1"), "k2")
                .await
                .expect("cached");
        }
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unknown_kid_refetches_at_most_once_per_cooldown() {
        let p = point();
        let first = document(&[("k1", &p)]);
        let rotated = document(&[("k2", &p), ("k1", &p)]);
        let server = serve(move |n| {
            (
                200,
                if n == 0 {
                    first.clone()
                } else {
                    rotated.clone()
                },
            )
        });
        let keys = StsMandateKeys::new(&server.url, fast(300, 60_000)).expect("client");
        keys.verifying_keys(&zone("z1"), "k1").await.expect("keys");
        // Inside the cooldown: the cached set, without k2, and no request.
        let set = keys.verifying_keys(&zone("z1"), "k2").await.expect("keys");
        assert!(!set.contains("k2"));
        assert_eq!(server.hits.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let set = keys.verifying_keys(&zone("z1"), "k2").await.expect("keys");
        assert!(
            set.contains("k2"),
            "a rotation is picked up after the cooldown"
        );
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
        // Made-up kids right after do not reach the STS.
        for kid in ["x", "y", "z"] {
            keys.verifying_keys(&zone("z1"), kid).await.expect("keys");
        }
        assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_stale_set_is_refetched_and_an_outage_fails_closed() {
        let p = point();
        let doc = document(&[("k1", &p)]);
        let server = serve(move |n| {
            if n == 0 {
                (200, doc.clone())
            } else {
                (503, "{}".into())
            }
        });
        let keys = StsMandateKeys::new(&server.url, fast(0, 100)).expect("client");
        keys.verifying_keys(&zone("z1"), "k1").await.expect("keys");
        tokio::time::sleep(Duration::from_millis(150)).await;
        let err = keys
            .verifying_keys(&zone("z1"), "k1")
            .await
            .expect_err("stale and unreachable");
        assert_eq!(err.kind, ErrorKind::Unavailable);
        assert!(err.detail.unwrap_or_default().contains("503"));
    }

    #[tokio::test]
    async fn an_unknown_zone_is_an_empty_set_and_unreachable_sts_an_error() {
        let server = serve(|_| (404, r#"{"error":"resource_not_found"}"#.into()));
        let keys = StsMandateKeys::new(&server.url, fast(60_000, 60_000)).expect("client");
        let set = keys
            .verifying_keys(&zone("nope"), "k")
            .await
            .expect("empty");
        assert!(set.is_empty());
        keys.verifying_keys(&zone("nope"), "k")
            .await
            .expect("empty");
        assert_eq!(
            server.hits.load(Ordering::SeqCst),
            1,
            "negative answers are cached"
        );

        let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead = format!("http://{}", closed.local_addr().expect("addr"));
        drop(closed);
        let keys = StsMandateKeys::new(&dead, fast(0, 60_000)).expect("client");
        assert!(keys.verifying_keys(&zone("z1"), "k").await.is_err());
    }

    #[tokio::test]
    async fn the_cache_holds_at_most_the_configured_zones() {
        let p = point();
        let doc = document(&[("k1", &p)]);
        let server = serve(move |_| (200, doc.clone()));
        let keys = StsMandateKeys::new(&server.url, fast(60_000, 60_000)).expect("client");
        for z in ["a", "b", "c"] {
            keys.verifying_keys(&zone(z), "k1").await.expect("keys");
        }
        assert_eq!(keys.lock().slots.len(), 2);
        // "a" was the least recently used: evicted, so it is fetched again.
        keys.verifying_keys(&zone("a"), "k1").await.expect("keys");
        assert_eq!(server.hits.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn urls_are_checked_and_documents_parsed_strictly() {
        for bad in [
            "sts:8080",
            "ftp://sts",
            "http://u:p@sts",
            "http://sts?x=1",
            "http://",
        ] {
            assert!(
                StsMandateKeys::new(bad, StsKeysConfig::default()).is_err(),
                "{bad}"
            );
        }
        assert!(parse_key_set(&serde_json::json!({"nokeys": []})).is_err());
        let p = point();
        let mut doc: Value = serde_json::from_str(&document(&[("k1", &p)])).expect("json");
        let good = doc["keys"][0].clone();
        let mut rsa = good.clone();
        rsa["kty"] = "RSA".into();
        let mut short = good.clone();
        short["x"] = "AAAA".into();
        let mut enc = good.clone();
        enc["use"] = "enc".into();
        doc["keys"] = Value::Array(vec![rsa, short, enc, good]);
        let set = parse_key_set(&doc).expect("parsed");
        assert_eq!(set.len(), 1);
        assert_eq!(set.get("k1"), Some(p.as_slice()));
    }
}
