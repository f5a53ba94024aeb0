//! Wiring: configuration → adapters → services. The one place that decides which adapter
//! implements which port.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpServer;
use caracal_api::{api_app, ApiConfig, ApiState};
use caracal_audit::{audit_app, AuditConfig, AuditPorts, AuditState};
use caracal_coordinator::{
    coordinator_app, CoordinatorServiceConfig, CoordinatorState, Stats as CoordinatorStats,
};
use caracal_core::coordinator::Coordinator;
use caracal_core::dispatch::Dispatcher;
use caracal_core::manage::{Management, ManagementConfig};
use caracal_core::policy::PolicyCache;
use caracal_core::ports::audit::AuditLedger;
use caracal_core::ports::{
    AuthorityVersions, Clock, Es256, EventBus, ExpiringKeys, IdGenerator, MessageAuthenticator,
    OutboxQueue, RateLimiter, Store, ZoneKeySource,
};
use caracal_core::sts::keys::ZoneKeys;
use caracal_core::sts::{Sts, StsConfig, StsPorts};
use caracal_crypto::{
    Argon2idHasher, EnvelopeSealer, HmacSha256, Kek, RandomSecrets, RememberingEs256, RingEs256,
};
use caracal_evidence::{AuditPublisher, PublisherConfig};
use caracal_gateway::{Gateway, GatewayConfig, GatewayPorts};
use caracal_http::config::{ConfigError, Env, ProcessEnv};
use caracal_http::metrics::HttpCounters;
use caracal_memory::{
    MemoryAuthorityVersions, MemoryBus, MemoryExpiringKeys, MemoryLedger, MemoryRateLimiter,
    MemoryStore, SystemClock, UuidV7Ids,
};
use caracal_sts::worker::Topic;
use caracal_sts::{sts_app, StsServiceConfig, StsState};
use tokio::sync::watch;

/// The keys every mode needs.
#[derive(Clone)]
struct Keys {
    sealer: Arc<EnvelopeSealer>,
    streams: Option<Arc<dyn MessageAuthenticator>>,
    audit: Option<Arc<dyn MessageAuthenticator>>,
    /// `GATEWAY_STS_HMAC_KEY`: signs Gateway → STS exchanges and the API's policy calls.
    gateway: Option<Arc<dyn MessageAuthenticator>>,
}

/// The keys of this process. `sealing` says whether a service here opens sealed secrets (the
/// API and the STS do; a lone Coordinator never does, so it needs no `SECRET_STORE_KEK`).
fn keys(env: &Env<'_>, dev: bool, sealing: bool) -> Result<Keys, String> {
    let kek = match env.optional("SECRET_STORE_KEK") {
        Some(hex) => {
            Kek::from_hex(&hex).map_err(|e| format!("SECRET_STORE_KEK is invalid: {e}"))?
        }
        None if dev || !sealing => {
            Kek::generate().map_err(|e| format!("cannot generate a dev KEK: {e}"))?
        }
        None => return Err(ConfigError::Missing("SECRET_STORE_KEK").to_string()),
    };
    let previous = match env.optional("SECRET_STORE_KEK_PREVIOUS") {
        Some(hex) => vec![Kek::from_hex(&hex)
            .map_err(|e| format!("SECRET_STORE_KEK_PREVIOUS is invalid: {e}"))?],
        None => Vec::new(),
    };
    // Each key may also come from a file (`<NAME>_FILE`, container secrets).
    let hmac = |name: &'static str,
                file_name: &'static str|
     -> Result<Option<Arc<dyn MessageAuthenticator>>, String> {
        match env.secret(name, file_name).map_err(|e| e.to_string())? {
            Some(hex) => {
                let key = HmacSha256::from_hex(&hex, 32)
                    .map_err(|e| format!("{name} is invalid: {e}"))?;
                Ok(Some(Arc::new(key)))
            }
            None => Ok(None),
        }
    };
    let gateway = match hmac("GATEWAY_STS_HMAC_KEY", "GATEWAY_STS_HMAC_KEY_FILE")? {
        Some(key) => Some(key),
        // Dev mode runs every service in one process: a throwaway key lets them sign to each
        // other without the operator inventing one.
        None if dev => Some(Arc::new(
            HmacSha256::generate()
                .map_err(|_| "cannot generate a dev GATEWAY_STS_HMAC_KEY".to_string())?,
        ) as Arc<dyn MessageAuthenticator>),
        None => None,
    };
    Ok(Keys {
        sealer: Arc::new(EnvelopeSealer::new(kek, previous)),
        streams: hmac("STREAMS_HMAC_KEY", "STREAMS_HMAC_KEY_FILE")?,
        audit: hmac("AUDIT_HMAC_KEY", "AUDIT_HMAC_KEY_FILE")?,
        gateway,
    })
}

fn management(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    keys: &Keys,
    config: &ApiConfig,
) -> Management {
    Management::new(
        store,
        clock,
        Arc::new(UuidV7Ids),
        keys.sealer.clone(),
        Arc::new(Argon2idHasher::new()),
        Arc::new(RandomSecrets::new()),
        keys.audit.clone(),
        ManagementConfig {
            control_audience: config.control_audience.clone(),
            max_resources_per_zone: config.max_resources_per_zone,
        },
    )
}

/// Runs the API on the given adapters until Ctrl-C / SIGTERM.
async fn run_api(
    adapters: Adapters,
    keys: Keys,
    config: ApiConfig,
    admin_token: String,
) -> Result<(), String> {
    let Adapters {
        store,
        queue,
        bus,
        limiter,
        ledger,
        ..
    } = adapters;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let management = management(Arc::clone(&store), Arc::clone(&clock), &keys, &config);
    management
        .seed_bootstrap_token(&admin_token)
        .await
        .map_err(|e| format!("cannot seed CARACAL_ADMIN_TOKEN: {e}"))?;
    let dispatcher = Dispatcher {
        queue: Arc::clone(&queue),
        bus: Arc::clone(&bus),
        signer: keys.streams.clone(),
        clock,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = tokio::spawn(caracal_api::worker::run_dispatcher(
        dispatcher,
        Duration::from_millis(config.outbox_poll_ms),
        stop_rx.clone(),
    ));
    let gc = tokio::spawn(caracal_api::worker::run_dcr_gc(
        management.clone(),
        Duration::from_secs(60),
        stop_rx,
    ));
    let state = ApiState {
        management,
        outbox: queue,
        bus,
        store,
        audit: ledger,
        counters: Arc::new(HttpCounters::default()),
        limiter,
        config: Arc::new(config.clone()),
    };
    let server = HttpServer::new(move || api_app!(state.clone()))
        .bind((config.host.as_str(), config.port))
        .map_err(|e| {
            format!(
                "cannot listen on {}:{} (API_HOST/API_PORT): {e}",
                config.host, config.port
            )
        })?
        .shutdown_timeout(10)
        .run();
    eprintln!(
        "caracal: api listening on http://{}:{}",
        config.host, config.port
    );
    let result = server.await.map_err(|e| format!("api server failed: {e}"));
    let _ = stop_tx.send(true);
    let _ = worker.await;
    let _ = gc.await;
    result
}

/// The adapters one process runs on, chosen once by mode.
#[derive(Clone)]
struct Adapters {
    store: Arc<dyn Store>,
    queue: Arc<dyn OutboxQueue>,
    bus: Arc<dyn EventBus>,
    limiter: Arc<dyn RateLimiter>,
    expiring: Arc<dyn ExpiringKeys>,
    /// Per-zone authority versions: the Coordinator and the STS's revocations advance them,
    /// the STS's delegated mints read them (one process in memory mode, Redis otherwise).
    versions: Arc<dyn AuthorityVersions>,
    /// The audit ledger: the Audit service appends, the API reads (one instance per process,
    /// so in `dev` the API sees what the in-process Audit service stored).
    ledger: Arc<dyn AuditLedger>,
    /// `AUDIT_REPLAY_DIR` (none in memory mode: the in-process bus cannot be unreachable).
    replay_dir: Option<PathBuf>,
    /// A fresh pool per HTTP worker thread (Postgres mode). A pooled connection's I/O task runs
    /// on the thread that opened it; with one pool shared by every worker, each statement hops
    /// between threads twice (an eventfd wake-up each way). A pool made and first used on a
    /// worker keeps a request and its statements on one thread. `None`: share `store`.
    worker_store: Option<WorkerStore>,
}

/// Makes one HTTP worker's own store.
type WorkerStore = Arc<dyn Fn() -> Arc<dyn Store> + Send + Sync>;

/// Which services a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Services {
    /// The API only.
    Api,
    /// The STS only.
    Sts,
    /// The Coordinator only (verification keys fetched from `STS_URL`).
    Coordinator,
    /// The Gateway only (mandate keys and exchanges at `STS_URL`).
    Gateway,
    /// The Audit service only.
    Audit,
    /// Everything built so far.
    All,
}

impl Services {
    fn api(self) -> bool {
        matches!(self, Self::Api | Self::All)
    }

    fn sts(self) -> bool {
        matches!(self, Self::Sts | Self::All)
    }

    fn coordinator(self) -> bool {
        matches!(self, Self::Coordinator | Self::All)
    }

    fn audit(self) -> bool {
        matches!(self, Self::Audit | Self::All)
    }

    fn gateway(self) -> bool {
        matches!(self, Self::Gateway | Self::All)
    }
}

/// The zone signing keys of an in-process STS. The Coordinator in the same process verifies
/// mandates with this very instance, so a rotation or an invalidation is seen by both at once.
fn zone_keys(adapters: &Adapters, keys: &Keys, es256: &Arc<dyn Es256>) -> Arc<ZoneKeys> {
    Arc::new(ZoneKeys::new(
        Arc::clone(&adapters.store),
        keys.sealer.clone(),
        Arc::clone(es256),
        Arc::new(UuidV7Ids),
        Arc::new(SystemClock),
    ))
}

/// Runs the STS until Ctrl-C / SIGTERM.
async fn run_sts(
    adapters: Adapters,
    keys: Keys,
    config: StsServiceConfig,
    es256: Arc<dyn Es256>,
    zone_keys: Arc<ZoneKeys>,
    beside: Option<Arc<InProcessSts>>,
) -> Result<(), String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ids: Arc<dyn IdGenerator> = Arc::new(UuidV7Ids);
    let concurrency = NonZeroUsize::new(config.secret_verify_concurrency)
        .ok_or("STS_SECRET_VERIFY_CONCURRENCY must be positive")?;
    let hasher = Argon2idHasher::new().with_concurrency_limit(concurrency);
    let audit = AuditPublisher::start(
        Arc::clone(&adapters.bus),
        keys.audit.clone(),
        PublisherConfig {
            replay_dir: adapters.replay_dir.clone(),
            ..PublisherConfig::default()
        },
    );
    let policies = Arc::new(PolicyCache::new(
        Arc::clone(&adapters.store),
        Arc::clone(&clock),
    ));
    let sts = Sts::new(
        StsPorts {
            store: Arc::clone(&adapters.store),
            clock,
            ids,
            hasher: Arc::new(hasher),
            sealer: keys.sealer.clone(),
            es256,
            limiter: Arc::clone(&adapters.limiter),
            expiring: Arc::clone(&adapters.expiring),
            audit: audit.clone(),
            gateway_mac: keys.gateway.clone(),
            versions: Arc::clone(&adapters.versions),
        },
        zone_keys,
        policies,
        StsConfig {
            issuer: config.issuer.clone(),
            control_audience: config.control_audience.clone(),
            mint_limit_per_min: config.mint_limit_per_min,
        },
    );
    // Federated users (spec/sts.md §9): issuer key sets through the SSRF-guarded client. An
    // unreadable extra CA file is logged there and fails every fetch (egress fails closed).
    let egress = caracal_egress::EgressConfig {
        private_hosts: Env(&ProcessEnv).optional("CARACAL_PRIVATE_EGRESS_HOSTS"),
        extra_ca_file: Env(&ProcessEnv).optional("CARACAL_TLS_EXTRA_CA_FILE"),
    };
    let sts =
        Arc::new(sts.with_issuer_keys(Arc::new(caracal_egress::HttpsIssuerKeys::new(&egress))));
    let (stop_tx, stop_rx) = watch::channel(false);
    let consumer = format!("sts-{}", std::process::id());
    let mut workers = Vec::new();
    for topic in [Topic::Policy, Topic::Keys, Topic::SessionsRevoke] {
        workers.push(tokio::spawn(caracal_sts::worker::run_invalidations(
            Arc::clone(&sts),
            Arc::clone(&adapters.bus),
            keys.streams.clone(),
            topic,
            consumer.clone(),
            stop_rx.clone(),
        )));
    }
    workers.push(tokio::spawn(caracal_sts::worker::run_policy_poll(
        Arc::clone(&sts),
        Duration::from_secs(config.policy_poll_seconds),
        stop_rx,
    )));
    let state = StsState {
        sts,
        store: adapters.store,
        bus: adapters.bus,
        audit: audit.clone(),
        counters: Arc::new(HttpCounters::default()),
        config: Arc::new(config.clone()),
    };
    if let Some(beside) = &beside {
        // From now on the Gateway of this process hands its exchanges over directly.
        let _ = beside.0.set(state.clone());
    }
    let worker_store = adapters.worker_store.clone();
    let server = HttpServer::new(move || {
        let mut state = state.clone();
        if let Some(make) = &worker_store {
            state.sts = Arc::new(state.sts.with_store(make()));
        }
        sts_app!(state)
    })
    .bind((config.host.as_str(), config.port))
    .map_err(|e| {
        format!(
            "cannot listen on {}:{} (STS_HOST/STS_PORT): {e}",
            config.host, config.port
        )
    })?
    .shutdown_timeout(10)
    .run();
    eprintln!(
        "caracal: sts listening on http://{}:{} (issuer {})",
        config.host, config.port, config.issuer
    );
    let result = server.await.map_err(|e| format!("sts server failed: {e}"));
    let _ = stop_tx.send(true);
    for worker in workers {
        let _ = worker.await;
    }
    audit.shutdown().await;
    result
}

/// The current idempotency MAC and, during a rotation, the previous one.
type IdempotencyMacs = (
    Arc<dyn MessageAuthenticator>,
    Option<Arc<dyn MessageAuthenticator>>,
);

/// The Coordinator's idempotency MACs (`IDEMPOTENCY_HMAC_KEY`, `_PREVIOUS`): hex, at least 32
/// bytes. Receipts outlive the process in Postgres mode (and are shared by every replica), so
/// the key is required there; a per-process key would silently turn every retry after a
/// restart into a second creation. Dev mode's store dies with the process, so a throwaway key
/// is generated when none is given.
fn idempotency_macs(
    config: &CoordinatorServiceConfig,
    dev: bool,
) -> Result<IdempotencyMacs, String> {
    let current: Arc<dyn MessageAuthenticator> = match &config.idempotency_key {
        Some(hex) => Arc::new(
            HmacSha256::from_hex(hex, 32)
                .map_err(|e| format!("IDEMPOTENCY_HMAC_KEY is invalid: {e}"))?,
        ),
        None if dev => Arc::new(
            HmacSha256::generate()
                .map_err(|_| "cannot generate a dev IDEMPOTENCY_HMAC_KEY".to_string())?,
        ),
        None => {
            return Err(format!(
                "{}; the Coordinator's idempotency receipts outlive the process on Postgres (generate one with `openssl rand -hex 32`)",
                ConfigError::Missing("IDEMPOTENCY_HMAC_KEY")
            ))
        }
    };
    let previous: Option<Arc<dyn MessageAuthenticator>> = match &config.idempotency_key_previous {
        Some(hex) => {
            Some(Arc::new(HmacSha256::from_hex(hex, 32).map_err(|e| {
                format!("IDEMPOTENCY_HMAC_KEY_PREVIOUS is invalid: {e}")
            })?))
        }
        None => None,
    };
    Ok((current, previous))
}

/// The verification keys of a Coordinator that runs without the STS: fetched from `STS_URL`.
fn remote_mandate_keys(
    config: &CoordinatorServiceConfig,
) -> Result<Arc<dyn ZoneKeySource>, String> {
    let url = config.sts_url.as_deref().ok_or_else(|| {
        format!(
            "{}; `caracal serve coordinator` fetches mandate verification keys from the STS",
            ConfigError::Missing("STS_URL")
        )
    })?;
    let keys = caracal_egress::StsMandateKeys::new(
        url,
        caracal_egress::StsKeysConfig {
            cache_max: config.jwks_cache_max,
            ..caracal_egress::StsKeysConfig::default()
        },
    )?;
    Ok(Arc::new(keys))
}

/// What `caracal` prints for the SDK: where the Coordinator and the STS answer.
fn client_url(host: &str, port: u16) -> String {
    let host = match host {
        "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
        other => other,
    };
    format!("http://{host}:{port}")
}

/// Where clients reach the Gateway: `https` when it terminates TLS (`TLS_CERT_FILE`).
fn gateway_url(config: &GatewayConfig) -> String {
    let url = client_url(&config.host, config.port);
    match config.tls {
        Some(_) => url.replacen("http://", "https://", 1),
        None => url,
    }
}

/// Runs the Coordinator until Ctrl-C / SIGTERM, with its background jobs, and the outbox
/// dispatcher when `dispatch` (no API in this process runs one; two are safe anyway, since
/// claims lock rows).
async fn run_coordinator(
    adapters: Adapters,
    keys: Keys,
    config: CoordinatorServiceConfig,
    mandate_keys: Arc<dyn ZoneKeySource>,
    es256: Arc<dyn Es256>,
    dev: bool,
    dispatch: bool,
) -> Result<(), String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (idempotency, idempotency_previous) = idempotency_macs(&config, dev)?;
    let coordinator = Arc::new(Coordinator::new(
        Arc::clone(&adapters.store),
        Arc::clone(&clock),
        Arc::new(UuidV7Ids),
        idempotency,
        idempotency_previous,
        Arc::clone(&adapters.versions),
        config.core.clone(),
    ));
    let stats = Arc::new(CoordinatorStats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers =
        caracal_coordinator::worker::spawn_jobs(&coordinator, &stats, &config, &stop_rx);
    if dispatch {
        let dispatcher = Dispatcher {
            queue: Arc::clone(&adapters.queue),
            bus: Arc::clone(&adapters.bus),
            signer: keys.streams.clone(),
            clock: Arc::clone(&clock),
        };
        workers.push(tokio::spawn(caracal_api::worker::run_dispatcher(
            dispatcher,
            config.outbox_every,
            stop_rx,
        )));
    }
    let state = CoordinatorState {
        coordinator,
        keys: mandate_keys,
        es256,
        limiter: adapters.limiter,
        outbox: adapters.queue,
        bus: adapters.bus,
        clock,
        counters: Arc::new(HttpCounters::default()),
        stats,
        config: Arc::new(config.clone()),
    };
    let worker_store = adapters.worker_store.clone();
    let server = HttpServer::new(move || {
        let mut state = state.clone();
        if let Some(make) = &worker_store {
            state.coordinator = Arc::new(state.coordinator.with_store(make()));
        }
        coordinator_app!(state)
    })
    .keep_alive(config.keep_alive)
    .client_request_timeout(config.request_timeout)
    .bind((config.host.as_str(), config.port))
    .map_err(|e| {
        format!(
            "cannot listen on {}:{} (COORDINATOR_HOST/COORDINATOR_PORT): {e}",
            config.host, config.port
        )
    })?
    .shutdown_timeout(10)
    .run();
    eprintln!(
        "caracal: coordinator listening on {} (issuer {})",
        client_url(&config.host, config.port),
        config.issuer
    );
    let result = server
        .await
        .map_err(|e| format!("coordinator server failed: {e}"));
    let _ = stop_tx.send(true);
    for worker in workers {
        let _ = worker.await;
    }
    result
}

/// Turns true on Ctrl-C or SIGTERM. The actix servers watch the signals themselves; the
/// Gateway (hyper) is stopped through this.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate => {}
        }
        let _ = tx.send(true);
    });
    rx
}

/// The Gateway's exchange key: `GATEWAY_STS_HMAC_KEY` (generated in dev). Only signed
/// exchanges return upstream directives, so a Gateway without it could serve nothing.
fn gateway_mac(keys: &Keys) -> Result<Arc<dyn MessageAuthenticator>, String> {
    keys.gateway.clone().ok_or_else(|| {
        format!(
            "{}; the Gateway signs every STS exchange with it (generate one with `openssl rand -hex 32` and give the STS the same value)",
            ConfigError::Missing("GATEWAY_STS_HMAC_KEY")
        )
    })
}

/// The Gateway's configuration: `STS_URL` is the in-process STS when one runs here.
fn gateway_config(
    env: &Env<'_>,
    dev: bool,
    local_sts: Option<&StsServiceConfig>,
) -> Result<GatewayConfig, String> {
    let mut config = GatewayConfig::from_env(env, dev).map_err(|e| e.to_string())?;
    match local_sts {
        Some(sts) => config.sts_url = Some(client_url(&sts.host, sts.port)),
        None if config.sts_url.is_none() => {
            return Err(format!(
                "{}; `caracal serve gateway` exchanges every mandate at the STS",
                ConfigError::Missing("STS_URL")
            ))
        }
        None => {}
    }
    Ok(config)
}

/// Checks published-mode secrets of the Gateway (B16): signed streams and signed evidence.
fn gateway_published_keys(config: &GatewayConfig, keys: &Keys) -> Result<(), String> {
    if config.published {
        if keys.streams.is_none() {
            return Err(ConfigError::Missing("STREAMS_HMAC_KEY").to_string());
        }
        if keys.audit.is_none() {
            return Err(ConfigError::Missing("AUDIT_HMAC_KEY").to_string());
        }
    }
    Ok(())
}

/// The STS of this process, for the Gateway beside it: set once the STS's state exists; until
/// then the Gateway exchanges over HTTP.
#[derive(Default)]
struct InProcessSts(std::sync::OnceLock<StsState>);

#[async_trait::async_trait]
impl caracal_gateway::LocalSts for InProcessSts {
    async fn exchange(
        &self,
        body: &[u8],
        envelope: &caracal_core::gateway::exchange::Envelope,
        request_id: &str,
    ) -> Option<(u16, Vec<u8>)> {
        let state = self.0.get()?;
        let envelope = caracal_core::sts::gateway_sig::SignedHeaders {
            timestamp: Some(&envelope.timestamp),
            nonce: Some(&envelope.nonce),
            signature: Some(&envelope.signature),
        };
        Some(caracal_sts::exchange_in_process(state, body, envelope, request_id).await)
    }
}

/// Runs the Gateway until Ctrl-C / SIGTERM.
async fn run_gateway(
    adapters: Adapters,
    keys: Keys,
    config: GatewayConfig,
    mandate_keys: Arc<dyn ZoneKeySource>,
    es256: Arc<dyn Es256>,
    shared_replay_dir: bool,
    local_sts: Option<Arc<dyn caracal_gateway::LocalSts>>,
) -> Result<(), String> {
    let sts_mac = gateway_mac(&keys)?;
    // One replay directory per publisher: next to an in-process STS the Gateway spools into
    // its own subdirectory.
    let replay_dir = match (&adapters.replay_dir, shared_replay_dir) {
        (Some(dir), true) => Some(dir.join("gateway")),
        (dir, _) => dir.clone(),
    };
    let audit = AuditPublisher::start(
        Arc::clone(&adapters.bus),
        keys.audit.clone(),
        PublisherConfig {
            replay_dir,
            ..PublisherConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {}:{} (GATEWAY_HOST/GATEWAY_PORT): {e}",
                config.host, config.port
            )
        })?;
    let url = gateway_url(&config);
    let sts_url = config.sts_url.clone().unwrap_or_default();
    let gateway = Gateway::new(
        GatewayPorts {
            store: Arc::clone(&adapters.store),
            bus: Arc::clone(&adapters.bus),
            expiring: Arc::clone(&adapters.expiring),
            keys: mandate_keys,
            es256,
            audit: audit.clone(),
            clock: Arc::new(SystemClock),
            ids: Arc::new(UuidV7Ids),
            sts_mac,
            streams_mac: keys.streams.clone(),
            local_sts,
        },
        config,
    )
    .await?;
    eprintln!("caracal: gateway listening on {url} (STS {sts_url})");
    let result = caracal_gateway::run(gateway, listener, shutdown_signal()).await;
    audit.shutdown().await;
    result
}

/// The Audit service's configuration, with its published-mode key: evidence must be verified
/// and chained under `AUDIT_HMAC_KEY` in `rc`/`stable` (`spec/audit-streams-storage.md §6.1`).
fn audit_config(env: &Env<'_>, keys: &Keys) -> Result<AuditConfig, String> {
    let config = AuditConfig::from_env(env).map_err(|e| e.to_string())?;
    if config.published && keys.audit.is_none() {
        return Err(format!(
            "{}; the Audit service verifies producers' signatures and keys the hash chain with it",
            ConfigError::Missing("AUDIT_HMAC_KEY")
        ));
    }
    Ok(config)
}

/// Runs the Audit service until Ctrl-C / SIGTERM: its ingest consumer, reaper, stream-figure
/// poll and retention, and its routes.
async fn run_audit(adapters: Adapters, keys: Keys, config: AuditConfig) -> Result<(), String> {
    let state = AuditState::new(
        AuditPorts {
            ledger: Arc::clone(&adapters.ledger),
            bus: Arc::clone(&adapters.bus),
            clock: Arc::new(SystemClock),
            mac: keys.audit.clone(),
        },
        config.clone(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = caracal_audit::spawn_workers(&state, &stop_rx);
    let server = HttpServer::new(move || audit_app!(state.clone()))
        .bind((config.host.as_str(), config.port))
        .map_err(|e| {
            format!(
                "cannot listen on {}:{} (AUDIT_HOST/AUDIT_PORT): {e}",
                config.host, config.port
            )
        })?
        .shutdown_timeout(10)
        .run();
    eprintln!(
        "caracal: audit listening on {} (consumer {} of {})",
        client_url(&config.host, config.port),
        config.consumer,
        config.streams.events
    );
    let result = server
        .await
        .map_err(|e| format!("audit server failed: {e}"));
    let _ = stop_tx.send(true);
    for worker in workers {
        let _ = worker.await;
    }
    result
}

/// Runs the chosen services side by side until shutdown; the first failure ends the process.
async fn run(
    services: Services,
    adapters: Adapters,
    keys: Keys,
    env: &Env<'_>,
    dev: bool,
    admin_token: Option<String>,
) -> Result<(), String> {
    // One verifier for every service of the process: the Gateway's check of a gateway mandate
    // and the STS's check of the same token in the exchange then cost one ES256 verification.
    let es256: Arc<dyn Es256> = Arc::new(RememberingEs256::new(RingEs256::new()));
    let zone_keys = services.sts().then(|| zone_keys(&adapters, &keys, &es256));
    // A Gateway beside the STS hands it the signed exchange directly.
    let beside = (services.sts() && services.gateway()).then(|| Arc::new(InProcessSts::default()));
    let api = match services.api() {
        false => None,
        true => {
            let config = ApiConfig::from_env(env).map_err(|e| e.to_string())?;
            let token = admin_token
                .ok_or_else(|| ConfigError::Missing("CARACAL_ADMIN_TOKEN").to_string())?;
            Some(run_api(adapters.clone(), keys.clone(), config, token))
        }
    };
    let coordinator = match services.coordinator() {
        false => None,
        true => {
            let config = CoordinatorServiceConfig::from_env(env, dev).map_err(|e| e.to_string())?;
            let mandate_keys: Arc<dyn ZoneKeySource> = match &zone_keys {
                Some(local) => Arc::clone(local) as Arc<dyn ZoneKeySource>,
                None => remote_mandate_keys(&config)?,
            };
            Some(run_coordinator(
                adapters.clone(),
                keys.clone(),
                config,
                mandate_keys,
                Arc::clone(&es256),
                dev,
                !services.api(),
            ))
        }
    };
    let sts_config = match services.sts() {
        false => None,
        true => Some(StsServiceConfig::from_env(env, dev).map_err(|e| e.to_string())?),
    };
    let gateway = match services.gateway() {
        false => None,
        true => {
            let config = gateway_config(env, dev, sts_config.as_ref())?;
            gateway_published_keys(&config, &keys)?;
            let mandate_keys: Arc<dyn ZoneKeySource> = match &zone_keys {
                Some(local) => Arc::clone(local) as Arc<dyn ZoneKeySource>,
                None => Arc::new(caracal_egress::StsMandateKeys::new(
                    config.sts_url.as_deref().unwrap_or_default(),
                    caracal_egress::StsKeysConfig {
                        cache_max: env
                            .parsed("JWKS_CACHE_MAX", 256usize)
                            .map_err(|e| e.to_string())?
                            .max(1),
                        ..caracal_egress::StsKeysConfig::default()
                    },
                )?),
            };
            Some(run_gateway(
                adapters.clone(),
                keys.clone(),
                config,
                mandate_keys,
                Arc::clone(&es256),
                services.sts(),
                beside
                    .clone()
                    .map(|b| b as Arc<dyn caracal_gateway::LocalSts>),
            ))
        }
    };
    let audit = match services.audit() {
        false => None,
        true => Some(run_audit(
            adapters.clone(),
            keys.clone(),
            audit_config(env, &keys)?,
        )),
    };
    let sts = match (zone_keys, sts_config) {
        (Some(zone_keys), Some(config)) => {
            Some(run_sts(adapters, keys, config, es256, zone_keys, beside))
        }
        _ => None,
    };
    let api = async {
        match api {
            Some(api) => api.await,
            None => Ok(()),
        }
    };
    let sts = async {
        match sts {
            Some(sts) => sts.await,
            None => Ok(()),
        }
    };
    let coordinator = async {
        match coordinator {
            Some(coordinator) => coordinator.await,
            None => Ok(()),
        }
    };
    let gateway = async {
        match gateway {
            Some(gateway) => gateway.await,
            None => Ok(()),
        }
    };
    let audit = async {
        match audit {
            Some(audit) => audit.await,
            None => Ok(()),
        }
    };
    tokio::try_join!(api, sts, coordinator, gateway, audit).map(|_| ())
}

/// `caracal dev`: every service built so far, in one process, on memory adapters. With `demo`
/// (`caracal dev --demo`), a seeded demo zone and a local echo upstream too.
pub async fn dev(demo: bool) -> Result<(), String> {
    let source = ProcessEnv;
    let env = Env(&source);
    if env.optional("DATABASE_URL").is_some() || env.optional("REDIS_URL").is_some() {
        eprintln!("caracal: dev mode uses the in-memory store; DATABASE_URL/REDIS_URL are ignored (use `caracal serve all`)");
    }
    let keys = keys(&env, true, true)?;
    let admin_token = match env.optional("CARACAL_ADMIN_TOKEN") {
        Some(token) => token,
        None => {
            let token =
                caracal_core::ports::SecretGenerator::generate(&RandomSecrets::new(), "cat_");
            eprintln!("caracal: generated an admin token for this dev session:\n\n    export CARACAL_ADMIN_TOKEN={token}\n");
            token
        }
    };
    let coordinator = CoordinatorServiceConfig::from_env(&env, true).map_err(|e| e.to_string())?;
    let sts = StsServiceConfig::from_env(&env, true).map_err(|e| e.to_string())?;
    let gateway = gateway_config(&env, true, Some(&sts))?;
    eprintln!(
        "caracal: point the SDK at this sandbox:\n\n    export CARACAL_COORDINATOR_URL={}\n    export CARACAL_STS_URL={}\n    export CARACAL_GATEWAY_URL={}\n",
        client_url(&coordinator.host, coordinator.port),
        client_url(&sts.host, sts.port),
        gateway_url(&gateway),
    );
    if gateway.host_policy.allow_loopback {
        eprintln!("caracal: dev mode — the Gateway allows loopback upstreams (127.0.0.0/8, ::1); set UPSTREAM_ALLOW_LOOPBACK=false to refuse them");
    }
    eprintln!("caracal: dev mode — in-memory store and bus, throwaway keys; nothing survives exit");
    let store = MemoryStore::new();
    let adapters = Adapters {
        worker_store: None,
        store: Arc::new(store.clone()),
        queue: Arc::new(store),
        bus: Arc::new(MemoryBus::new()),
        limiter: Arc::new(MemoryRateLimiter::new()),
        expiring: Arc::new(MemoryExpiringKeys::new(Arc::new(SystemClock))),
        versions: Arc::new(MemoryAuthorityVersions::new()),
        ledger: Arc::new(MemoryLedger::new(Arc::new(SystemClock))),
        replay_dir: None,
    };
    if !demo {
        return run(Services::All, adapters, keys, &env, true, Some(admin_token)).await;
    }
    crate::demo::check_gateway(&gateway.host_policy)?;
    let api = ApiConfig::from_env(&env).map_err(|e| e.to_string())?;
    let sandbox = crate::demo::Sandbox {
        api_url: client_url(&api.host, api.port),
        sts_url: client_url(&sts.host, sts.port),
        coordinator_url: client_url(&coordinator.host, coordinator.port),
        gateway_url: gateway_url(&gateway),
        admin_token: admin_token.clone(),
    };
    let servers = run(Services::All, adapters, keys, &env, true, Some(admin_token));
    crate::demo::alongside(servers, sandbox).await
}

/// `caracal serve api|sts|coordinator|gateway|all`: Postgres + Redis. The memory store is refused here because its
/// state cannot be shared with other processes.
pub async fn serve(services: Services) -> Result<(), String> {
    let source = ProcessEnv;
    let env = Env(&source);
    let database_url = env.required("DATABASE_URL").map_err(|e| {
        format!("{e}; `caracal serve` needs Postgres + Redis because in-memory state cannot be shared across processes (use `caracal dev` for a single-process sandbox)")
    })?;
    let redis_url = env.required("REDIS_URL").map_err(|e| e.to_string())?;
    // Every service's configuration is checked before the database is touched, so a missing
    // variable is named instead of surfacing as a later connection failure.
    let admin_token = match services.api() {
        false => None,
        true => Some(
            env.required("CARACAL_ADMIN_TOKEN")
                .map_err(|e| e.to_string())?,
        ),
    };
    if services.api() {
        ApiConfig::from_env(&env).map_err(|e| e.to_string())?;
    }
    if services.sts() {
        StsServiceConfig::from_env(&env, false).map_err(|e| e.to_string())?;
    }
    if services.gateway() {
        let local_sts = match services.sts() {
            true => Some(StsServiceConfig::from_env(&env, false).map_err(|e| e.to_string())?),
            false => None,
        };
        gateway_config(&env, false, local_sts.as_ref())?;
    }
    if services.coordinator() {
        let config = CoordinatorServiceConfig::from_env(&env, false).map_err(|e| e.to_string())?;
        idempotency_macs(&config, false)?;
        if !services.sts() {
            remote_mandate_keys(&config)?;
        }
    }
    let keys = keys(&env, false, services.api() || services.sts())?;
    if services.audit() {
        audit_config(&env, &keys)?;
    }
    if services.gateway() {
        gateway_mac(&keys)?;
    }
    let applied = caracal_postgres::migrate(&database_url)
        .await
        .map_err(|e| format!("migrations failed (DATABASE_URL): {e}"))?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied migrations");
    }
    let pool_size = env
        .parsed("DATABASE_POOL_SIZE", 16usize)
        .map_err(|e| e.to_string())?;
    let store = caracal_postgres::PgStore::connect(&database_url, pool_size)
        .map_err(|e| format!("cannot use DATABASE_URL: {e}"))?;
    let bus = caracal_redis::RedisBus::connect(&redis_url)
        .map_err(|e| format!("cannot use REDIS_URL: {e}"))?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_worker = pool_size.div_ceil(workers).max(2);
    let worker_url = database_url.clone();
    let fallback = store.clone();
    // The request paths that take worker pools (STS, Coordinator) are index lookups by design;
    // their units plan that way even on tables analysed while empty (`preferring_index_scans`).
    let worker_store: WorkerStore = Arc::new(move || -> Arc<dyn Store> {
        match caracal_postgres::PgStore::connect(&worker_url, per_worker) {
            Ok(store) => Arc::new(store.preferring_index_scans()),
            // Building a pool opens nothing, and the same URL already built one: this cannot
            // fail in practice; if it does, the worker shares the process pool.
            Err(err) => {
                tracing::warn!(error = %err, "cannot build a worker pool; sharing the process pool");
                Arc::new(fallback.clone())
            }
        }
    });
    // One connection per thread for the request path's short commands, shared by the three
    // ports, so the checks a request sends together travel together.
    let request_path = caracal_redis::shared::SharedConnection::new(bus.pool().clone());
    let adapters = Adapters {
        worker_store: Some(worker_store),
        store: Arc::new(store.clone()),
        // The Audit service appends, the API reads and sets retention: one ledger per process.
        ledger: Arc::new(caracal_postgres::PgLedger::new(store.clone())),
        queue: Arc::new(store),
        limiter: Arc::new(caracal_redis::RedisRateLimiter::on(request_path.clone())),
        expiring: Arc::new(caracal_redis::RedisExpiringKeys::on(request_path.clone())),
        versions: Arc::new(caracal_redis::RedisAuthorityVersions::on(request_path)),
        bus: Arc::new(bus),
        replay_dir: Some(PathBuf::from(
            env.optional("AUDIT_REPLAY_DIR")
                .unwrap_or_else(|| "/var/lib/caracal/audit-replay".into()),
        )),
    };
    run(services, adapters, keys, &env, false, admin_token).await
}

/// `caracal migrate`.
pub async fn migrate() -> Result<(), String> {
    let source = ProcessEnv;
    let env = Env(&source);
    let database_url = env.required("DATABASE_URL").map_err(|e| e.to_string())?;
    let applied = caracal_postgres::migrate(&database_url)
        .await
        .map_err(|e| format!("migrations failed: {e}"))?;
    if applied.is_empty() {
        println!("caracal: database is up to date");
    } else {
        for name in applied {
            println!("caracal: applied {name}");
        }
    }
    Ok(())
}
