//! STS micro-benchmarks (issue #3), run by `cargo xtask bench` (or
//! `cargo bench -p caracal --bench sts`):
//!
//! 1. a policy decision on a zone of 100 grants (`PolicyBundle::decide`);
//! 2. ES256 sign and verify through the `Es256` port (`RingEs256`), and a bare ring
//!    `EcdsaKeyPair::sign` loop, the physical floor every mint pays once;
//! 3. a whole bootstrap mint in process (`Sts::token`) on the memory adapters, with the zone
//!    seeded through the management use cases (real Argon2id secret hash, provider, resource,
//!    policy, policy set version, activation), and the audit publisher's cost per event (HMAC
//!    signing and publication to an in-memory bus), which it does off the request path.
//!
//! Each benchmark runs a warm-up, then [`ROUNDS`] rounds of a fixed number of operations; a
//! round's figure is its mean time per operation. The report gives the median round and the
//! p10–p90 spread across rounds. Figures are printed, never asserted. Lines starting with
//! `xtask-figure` carry the figures `cargo xtask bench` compares the HTTP benchmark with.
//!
//! No criterion: the project keeps its dependency tree lean, and this needs only a clock and
//! `black_box`.

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use caracal_core::ids::ZoneId;
use caracal_core::manage::{Caller, Management, ManagementConfig};
use caracal_core::policy::fixtures::bench_fixture_100_grants;
use caracal_core::policy::{DecisionInput, PolicyCache};
use caracal_core::ports::{
    AuditEvent, AuditSink, Clock, Es256, IdGenerator, MessageAuthenticator, SinkHealth, Store,
};
use caracal_core::sts::gateway_sig::SignedHeaders;
use caracal_core::sts::keys::ZoneKeys;
use caracal_core::sts::{Sts, StsConfig, StsPorts};
use caracal_crypto::{Argon2idHasher, EnvelopeSealer, HmacSha256, Kek, RandomSecrets, RingEs256};
use caracal_evidence::{AuditPublisher, PublisherConfig};
use caracal_memory::{
    MemoryAuthorityVersions, MemoryBus, MemoryExpiringKeys, MemoryRateLimiter, MemoryStore,
    SystemClock, UuidV7Ids,
};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// Rounds per benchmark: 21 puts p10 and p90 on the 3rd and 19th round.
const ROUNDS: usize = 21;

/// The benchmark's admin token (memory store, this process only).
const ADMIN_TOKEN: &str = "cat_bench_bootstrap_token";

/// Setup failures end the benchmark with a message; they are defects of this file or of the
/// code it drives, never a measurement.
type Setup<T> = Result<T, String>;

fn fail<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// Per-operation times of each round, in nanoseconds, sorted.
struct Spread(Vec<f64>);

impl Spread {
    fn new(mut rounds: Vec<f64>) -> Self {
        rounds.sort_by(f64::total_cmp);
        Self(rounds)
    }

    fn at(&self, p: f64) -> f64 {
        let idx = ((self.0.len() - 1) as f64 * p).round() as usize;
        self.0[idx.min(self.0.len() - 1)]
    }

    fn median(&self) -> f64 {
        self.at(0.5)
    }

    fn per_second(&self) -> f64 {
        1e9 / self.median()
    }

    /// `17.2 µs (16.9–17.8)`.
    fn cell(&self) -> String {
        format!(
            "{} ({}–{})",
            micros(self.median()),
            micros_bare(self.at(0.1)),
            micros_bare(self.at(0.9))
        )
    }
}

fn micros(ns: f64) -> String {
    format!("{} µs", micros_bare(ns))
}

fn micros_bare(ns: f64) -> String {
    let us = ns / 1_000.0;
    if us < 100.0 {
        format!("{us:.1}")
    } else {
        format!("{us:.0}")
    }
}

/// Times `per_round` calls of `op` per round, after a warm-up of a quarter round.
fn time_rounds(per_round: usize, mut op: impl FnMut()) -> Spread {
    for _ in 0..per_round / 4 {
        op();
    }
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..per_round {
            op();
        }
        rounds.push(started.elapsed().as_nanos() as f64 / per_round as f64);
    }
    Spread::new(rounds)
}

/// The exchange's audit sink in the mint benchmark: counts events and keeps the first, so the
/// publisher's own cost is measured separately on real events (its work is batched off the
/// request path, so it belongs in a per-event figure, not in a mint's latency).
#[derive(Default)]
struct RecordingSink {
    count: AtomicU64,
    first: Mutex<Option<AuditEvent>>,
}

impl AuditSink for RecordingSink {
    fn emit(&self, event: AuditEvent) {
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            *self.first.lock().unwrap_or_else(|p| p.into_inner()) = Some(event);
        }
    }

    fn health(&self) -> SinkHealth {
        SinkHealth {
            replay_available: true,
            ..SinkHealth::default()
        }
    }
}

/// A zone an application can mint a bootstrap mandate in, on memory adapters.
struct World {
    store: MemoryStore,
    sealer: Arc<EnvelopeSealer>,
    audit_mac: Arc<dyn MessageAuthenticator>,
    zone: ZoneId,
    application_id: String,
    client_secret: String,
    resource_id: String,
    identifier: String,
}

/// Seeds zone, provider, resource, application and an activated grants policy through the
/// management use cases, as the API's handlers would.
async fn seed() -> Setup<World> {
    let store = MemoryStore::new();
    let kek = Kek::generate().map_err(fail("KEK"))?;
    let sealer = Arc::new(EnvelopeSealer::new(kek, Vec::new()));
    let audit_mac: Arc<dyn MessageAuthenticator> =
        Arc::new(HmacSha256::generate().map_err(|_| "audit HMAC key".to_string())?);
    let management = Management::new(
        Arc::new(store.clone()),
        Arc::new(SystemClock),
        Arc::new(UuidV7Ids),
        sealer.clone(),
        // Production parameters: the stored client secret hash is the one the STS verifies.
        Arc::new(Argon2idHasher::new()),
        Arc::new(RandomSecrets::new()),
        Some(audit_mac.clone()),
        ManagementConfig::default(),
    );
    management
        .seed_bootstrap_token(ADMIN_TOKEN)
        .await
        .map_err(fail("seed admin token"))?;
    let actor = management
        .authenticate(Some(&format!("Bearer {ADMIN_TOKEN}")))
        .await
        .map_err(fail("admin token"))?;
    let caller = Caller {
        actor,
        request_id: "bench-seed".into(),
        via_operator: false,
    };
    // The inputs are the API's request bodies, decoded exactly as its handlers decode them.
    fn body<T: serde::de::DeserializeOwned>(value: Value) -> Setup<T> {
        serde_json::from_value(value).map_err(fail("request body"))
    }

    let zone = management
        .create_zone(&caller, body(json!({"name": "bench"}))?)
        .await
        .map_err(fail("create zone"))?
        .id;
    let provider = management
        .create_provider(
            &caller,
            &zone,
            body(json!({"name": "upstream", "kind": "bearer_token",
                        "config_json": {"bearer_token": "upstream-secret"}}))?,
        )
        .await
        .map_err(fail("create provider"))?;
    let identifier = "resource://bench-svc".to_owned();
    let resource = management
        .create_resource(
            &caller,
            &zone,
            body(json!({
                "name": "bench service",
                "identifier": identifier,
                "scopes": ["svc:read", "svc:write"],
                "upstream_url": "https://upstream.example.test",
                "credential_provider_id": provider.id.to_string(),
                "operation_enforcement": "transport_uniform",
            }))?,
        )
        .await
        .map_err(fail("create resource"))?;
    let app = management
        .create_application(
            &caller,
            &zone,
            body(json!({"name": "bench-agent", "registration_method": "managed"}))?,
        )
        .await
        .map_err(fail("create application"))?;
    let document = json!({
        "app_ids": {"bench": app.application.id.to_string()},
        "grants": {identifier.clone(): {"application": "bench",
                                        "roles": {"reader": ["svc:read"]}}},
    });
    let policy = management
        .create_policy(
            &caller,
            &zone,
            body(json!({"name": "grants", "content": document.to_string()}))?,
        )
        .await
        .map_err(fail("create policy"))?;
    let set = management
        .create_policy_set(&caller, &zone, body(json!({"name": "bench"}))?)
        .await
        .map_err(fail("create policy set"))?;
    let version = management
        .add_policy_set_version(
            &caller,
            &zone,
            &set.id,
            body(json!([{"policy_version_id": policy.version.id.to_string()}]))?,
        )
        .await
        .map_err(fail("add policy set version"))?;
    management
        .activate_policy_set(&caller, &zone, &set.id, version.id.as_str())
        .await
        .map_err(fail("activate policy set"))?;
    Ok(World {
        store,
        sealer,
        audit_mac,
        zone,
        application_id: app.application.id.to_string(),
        client_secret: app.client_secret,
        resource_id: resource.id.to_string(),
        identifier,
    })
}

/// The STS as `caracal serve` wires it, on the memory adapters and the given audit sink.
fn sts(world: &World, audit: Arc<dyn AuditSink>) -> Setup<Sts> {
    let store: Arc<dyn Store> = Arc::new(world.store.clone());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ids: Arc<dyn IdGenerator> = Arc::new(UuidV7Ids);
    let es256: Arc<dyn Es256> = Arc::new(RingEs256::new());
    let concurrency = NonZeroUsize::new(2).ok_or("concurrency")?;
    let keys = Arc::new(ZoneKeys::new(
        Arc::clone(&store),
        world.sealer.clone(),
        Arc::clone(&es256),
        Arc::clone(&ids),
        Arc::clone(&clock),
    ));
    let policies = Arc::new(PolicyCache::new(Arc::clone(&store), Arc::clone(&clock)));
    Ok(Sts::new(
        StsPorts {
            store,
            clock: Arc::clone(&clock),
            ids,
            hasher: Arc::new(Argon2idHasher::new().with_concurrency_limit(concurrency)),
            sealer: world.sealer.clone(),
            es256,
            limiter: Arc::new(MemoryRateLimiter::new()),
            expiring: Arc::new(MemoryExpiringKeys::new(clock)),
            audit,
            versions: Arc::new(MemoryAuthorityVersions::new()),
            gateway_mac: None,
        },
        keys,
        policies,
        StsConfig {
            issuer: "http://127.0.0.1:8080".into(),
            control_audience: "caracal-control".into(),
            // The default (1000 per minute per zone, resource and application) would turn
            // the closed loop into a measurement of refusals.
            mint_limit_per_min: 1_000_000_000,
        },
    ))
}

/// `application/x-www-form-urlencoded`, as the official clients encode it.
fn form_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn bootstrap_body(world: &World) -> String {
    [
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("zone_id", world.zone.as_str()),
        ("application_id", &world.application_id),
        ("client_secret", &world.client_secret),
        ("scope", "agent:lifecycle"),
        ("resource", &world.identifier),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", form_escape(v)))
    .collect::<Vec<_>>()
    .join("&")
}

async fn mint(sts: &Sts, body: &[u8]) -> Setup<String> {
    sts.token(caracal_core::sts::exchange::TokenCall {
        body,
        gateway: SignedHeaders::default(),
        path: "/oauth/2/token",
        request_id: "bench",
    })
    .await
    .map(|m| m.access_token)
    .map_err(|e| format!("mint refused: {e}"))
}

/// Mints measured per round, after [`MINT_WARMUP`] warm-up mints.
const MINTS_PER_ROUND: usize = 50;
/// Warm-up mints per round; the first pays Argon2id, the zone key and the policy load.
const MINT_WARMUP: usize = 3;
/// Positions at each end of a round compared to show what a stored record costs a mint.
const ROUND_EDGE: usize = 10;

/// What the mint benchmark measured.
struct Mints {
    /// Each round's mean per mint.
    rounds: Spread,
    /// Every measured mint's latency, sorted.
    calls: Vec<Duration>,
    /// Audit events per mint.
    events_per_mint: f64,
    /// One real event, for the publisher benchmark.
    event: AuditEvent,
    /// Extra time a mint takes per authority record already in the memory store.
    per_stored_record: Duration,
}

/// Bootstrap mints, [`ROUNDS`] rounds of [`MINTS_PER_ROUND`], each round on a freshly seeded
/// world: the memory store copies its whole state on a unit of work's first write, so every
/// mint's authority record makes later mints dearer, and a long run would measure that copy
/// instead of the exchange.
async fn time_mints() -> Setup<Mints> {
    let mut rounds = Vec::with_capacity(ROUNDS);
    let mut calls = Vec::with_capacity(ROUNDS * MINTS_PER_ROUND);
    let (mut early, mut late) = (Vec::new(), Vec::new());
    let (mut events, mut event) = (0, None);
    for _ in 0..ROUNDS {
        let world = seed().await?;
        let body = bootstrap_body(&world);
        let sink = Arc::new(RecordingSink::default());
        let sts = sts(&world, sink.clone())?;
        for _ in 0..MINT_WARMUP {
            mint(&sts, body.as_bytes()).await?;
        }
        let started = Instant::now();
        for i in 0..MINTS_PER_ROUND {
            let call = Instant::now();
            black_box(mint(&sts, body.as_bytes()).await?);
            let took = call.elapsed();
            calls.push(took);
            if i < ROUND_EDGE {
                early.push(took);
            } else if i >= MINTS_PER_ROUND - ROUND_EDGE {
                late.push(took);
            }
        }
        rounds.push(started.elapsed().as_nanos() as f64 / MINTS_PER_ROUND as f64);
        events += sink.count.load(Ordering::Relaxed);
        if event.is_none() {
            event = sink.first.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }
    calls.sort();
    early.sort();
    late.sort();
    let growth = percentile(&late, 0.5).saturating_sub(percentile(&early, 0.5));
    Ok(Mints {
        rounds: Spread::new(rounds),
        calls,
        events_per_mint: events as f64 / (ROUNDS * (MINT_WARMUP + MINTS_PER_ROUND)) as f64,
        event: event.ok_or("the exchange emitted no audit event")?,
        per_stored_record: growth / (MINTS_PER_ROUND - ROUND_EDGE) as u32,
    })
}

/// Events per publisher round: one batch of the default size.
const EVENTS_PER_ROUND: usize = 1_000;

/// The audit publisher's cost per event (HMAC signing, serialisation, publication to an
/// in-memory bus, in batches of 1000): each round starts a publisher, emits a round of copies
/// of a real exchange event, and stops it, which drains and publishes everything emitted.
async fn time_publisher(event: &AuditEvent, mac: Arc<dyn MessageAuthenticator>) -> Setup<Spread> {
    let ids = UuidV7Ids;
    let mut rounds = Vec::with_capacity(ROUNDS);
    for round in 0..=ROUNDS {
        let bus = Arc::new(MemoryBus::new());
        let publisher = AuditPublisher::start(bus, Some(mac.clone()), PublisherConfig::default());
        let batch: Vec<AuditEvent> = (0..EVENTS_PER_ROUND)
            .map(|_| AuditEvent {
                id: ids.new_id(),
                ..event.clone()
            })
            .collect();
        let started = Instant::now();
        for event in batch {
            publisher.emit(event);
        }
        publisher.shutdown().await;
        let took = started.elapsed();
        let health = publisher.health();
        if health.dropped > 0 || health.sink_errors > 0 {
            return Err("the audit publisher dropped or failed events".into());
        }
        // Round 0 warms up.
        if round > 0 {
            rounds.push(took.as_nanos() as f64 / EVENTS_PER_ROUND as f64);
        }
    }
    Ok(Spread::new(rounds))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The decision input of this world's bootstrap mint, as the exchange builds it.
fn bootstrap_input(world: &World) -> Setup<DecisionInput> {
    serde_json::from_value(json!({
        "schema_version": "2026-05-20",
        "principal": {"type": "Application", "id": world.application_id,
                      "zone_id": world.zone.as_str(), "registration_method": "managed"},
        "resource": {"type": "Resource", "id": world.resource_id,
                     "identifier": world.identifier, "scopes": ["svc:read", "svc:write"]},
        "action": {"id": "TokenExchange"},
        "context": {"actor_claims": {"caracal_client_id": world.application_id},
                    "trace_id": "bench", "challenge_resolved": false,
                    "requested_scopes": ["agent:lifecycle"]}
    }))
    .map_err(fail("bootstrap decision input"))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    // Other work on the machine shows up as spread; the load average says how much there was.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    format!("{cores} cores, {cpu}; load average {load} at start")
}

fn run() -> Setup<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(fail("runtime"))?;
    runtime.block_on(async_main())
}

async fn async_main() -> Setup<()> {
    println!(
        "STS micro-benchmarks (issue #3): {} rounds each, release build",
        ROUNDS
    );
    println!("machine: {}", machine());
    println!("seeding a zone through the management use cases (Argon2id at production cost)…");
    let world = seed().await?;
    let body = bootstrap_body(&world);
    let sts0 = sts(&world, Arc::new(RecordingSink::default()))?;
    // The first mint pays Argon2id verification, the zone key's creation and the policy load.
    let cold = Instant::now();
    let token = mint(&sts0, body.as_bytes()).await?;
    let cold = cold.elapsed();

    // 1. Policy decision, 100-grant zone.
    let (bundle, input) = bench_fixture_100_grants();
    let decision = bundle.decide(&input).map_err(fail("fixture decision"))?;
    if !decision.allow {
        return Err("the 100-grant fixture no longer allows its mint".into());
    }
    let decide_100 = time_rounds(1_000, || {
        black_box(bundle.decide(black_box(&input)).map(|d| d.allow).ok());
    });
    // The bench zone's own bootstrap decision, for the mint's breakdown.
    let loaded = sts0
        .policies
        .bundle(&world.zone)
        .await
        .map_err(fail("policy bundle"))?;
    let boot_input = bootstrap_input(&world)?;
    if !loaded
        .bundle
        .decide(&boot_input)
        .map_err(fail("bootstrap decision"))?
        .allow
    {
        return Err("the bench zone's bootstrap decision is not an allow".into());
    }
    let decide_boot = time_rounds(1_000, || {
        black_box(
            loaded
                .bundle
                .decide(black_box(&boot_input))
                .map(|d| d.allow)
                .ok(),
        );
    });

    // 2. ES256 on the signing input of the mandate just minted (header.payload).
    let message = token
        .rsplit_once('.')
        .map(|(signed, _)| signed.as_bytes().to_vec())
        .ok_or("minted token is not a compact JWS")?;
    let (_, signer) = sts0
        .keys
        .signer(&world.zone)
        .await
        .map_err(fail("zone signer"))?;
    let es256 = RingEs256::new();
    let sign_port = time_rounds(1_000, || {
        black_box(signer.sign(black_box(&message)).ok());
    });
    let signature = signer.sign(&message).map_err(fail("sign"))?;
    let point = signer.public_point().to_vec();
    if !es256.verify(&point, &message, &signature) {
        return Err("ES256 signature does not verify".into());
    }
    let verify_port = time_rounds(500, || {
        black_box(es256.verify(black_box(&point), black_box(&message), &signature));
    });
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| "ring key generation".to_string())?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .map_err(|_| "ring key load".to_string())?;
    let sign_bare = time_rounds(1_000, || {
        black_box(pair.sign(&rng, black_box(&message)).ok());
    });

    // 3. Whole bootstrap mints in process, and the audit publisher's share per event.
    let mints = time_mints().await?;
    let publish = time_publisher(&mints.event, world.audit_mac.clone()).await?;

    println!(
        "\nmandate signing input: {} bytes; first (cold) mint: {:.1} ms",
        message.len(),
        cold.as_secs_f64() * 1e3
    );
    println!("\n| operation | median (p10–p90 across rounds) | per second (one core) |");
    println!("| --- | --- | --- |");
    let rows: [(&str, &Spread); 7] = [
        ("policy decision, 100-grant zone (fixture)", &decide_100),
        (
            "policy decision, bench zone bootstrap (1 grant)",
            &decide_boot,
        ),
        ("ES256 sign (`RingEs256` via the port)", &sign_port),
        ("ES256 verify (`RingEs256` via the port)", &verify_port),
        ("bare ring `EcdsaKeyPair::sign` (floor)", &sign_bare),
        ("bootstrap mint, in process (`Sts::token`)", &mints.rounds),
        ("audit event, publisher (sign + publish)", &publish),
    ];
    for (name, spread) in rows {
        println!(
            "| {name} | {} | {:.0} |",
            spread.cell(),
            spread.per_second()
        );
    }
    let mint = mints.rounds.median();
    let audit = mints.events_per_mint * publish.median();
    println!(
        "\nsingle mints: p50 {}, p99 {}; {:.1} audit events per mint; each authority record already in the memory store adds {} ns to a mint (it copies its state on a unit's first write)",
        micros(percentile(&mints.calls, 0.5).as_nanos() as f64),
        micros(percentile(&mints.calls, 0.99).as_nanos() as f64),
        mints.events_per_mint,
        mints.per_stored_record.as_nanos(),
    );
    println!(
        "decision (100 grants): {} median against upstream OPA's 1.04 ms mean ({:.0}× faster); target ≤ 20 µs",
        micros(decide_100.median()),
        1_040_000.0 / decide_100.median()
    );
    println!(
        "mint: {:.1}× a bare ring sign; with its audit publication {} of CPU ({:.0} mints/s per core). Of a mint: sign {:.0}%, decision {:.0}%, the rest (form, caches, limiter, store, claims, JSON, evidence) {:.0}%",
        mint / sign_bare.median(),
        micros(mint + audit),
        1e9 / (mint + audit),
        100.0 * sign_port.median() / mint,
        100.0 * decide_boot.median() / mint,
        100.0 * (mint - sign_port.median() - decide_boot.median()).max(0.0) / mint,
    );
    // Read by `cargo xtask bench` for the same-run ratios of the HTTP benchmark.
    println!("xtask-figure bare_ring_sign_ns {:.1}", sign_bare.median());
    println!("xtask-figure inprocess_mint_ns {:.1}", mint);
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sts bench failed: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
