//! Wiring: configuration → adapters → services. The one place that decides which adapter
//! implements which port.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpServer;
use caracal_api::{api_app, ApiConfig, ApiState};
use caracal_core::dispatch::Dispatcher;
use caracal_core::manage::{Management, ManagementConfig};
use caracal_core::policy::PolicyCache;
use caracal_core::ports::{
    Clock, Es256, EventBus, ExpiringKeys, IdGenerator, MessageAuthenticator, OutboxQueue,
    RateLimiter, Store,
};
use caracal_core::sts::keys::ZoneKeys;
use caracal_core::sts::{Sts, StsConfig, StsPorts};
use caracal_crypto::{Argon2idHasher, EnvelopeSealer, HmacSha256, Kek, RandomSecrets, RingEs256};
use caracal_evidence::{AuditPublisher, PublisherConfig};
use caracal_http::config::{ConfigError, Env, ProcessEnv};
use caracal_http::metrics::HttpCounters;
use caracal_memory::{
    MemoryBus, MemoryExpiringKeys, MemoryRateLimiter, MemoryStore, SystemClock, UuidV7Ids,
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

fn keys(env: &Env<'_>, dev: bool) -> Result<Keys, String> {
    let kek = match env.optional("SECRET_STORE_KEK") {
        Some(hex) => {
            Kek::from_hex(&hex).map_err(|e| format!("SECRET_STORE_KEK is invalid: {e}"))?
        }
        None if dev => Kek::generate().map_err(|e| format!("cannot generate a dev KEK: {e}"))?,
        None => return Err(ConfigError::Missing("SECRET_STORE_KEK").to_string()),
    };
    let previous = match env.optional("SECRET_STORE_KEK_PREVIOUS") {
        Some(hex) => vec![Kek::from_hex(&hex)
            .map_err(|e| format!("SECRET_STORE_KEK_PREVIOUS is invalid: {e}"))?],
        None => Vec::new(),
    };
    let hmac = |name: &'static str| -> Result<Option<Arc<dyn MessageAuthenticator>>, String> {
        match env.optional(name) {
            Some(hex) => {
                let key = HmacSha256::from_hex(&hex, 32)
                    .map_err(|e| format!("{name} is invalid: {e}"))?;
                Ok(Some(Arc::new(key)))
            }
            None => Ok(None),
        }
    };
    let gateway = match hmac("GATEWAY_STS_HMAC_KEY")? {
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
        streams: hmac("STREAMS_HMAC_KEY")?,
        audit: hmac("AUDIT_HMAC_KEY")?,
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
    store: Arc<dyn Store>,
    queue: Arc<dyn OutboxQueue>,
    bus: Arc<dyn EventBus>,
    limiter: Arc<dyn RateLimiter>,
    keys: Keys,
    config: ApiConfig,
    admin_token: String,
) -> Result<(), String> {
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
    /// `AUDIT_REPLAY_DIR` (none in memory mode: the in-process bus cannot be unreachable).
    replay_dir: Option<PathBuf>,
}

/// Which services a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Services {
    /// The API only.
    Api,
    /// The STS only.
    Sts,
    /// Everything built so far.
    All,
}

/// Runs the STS until Ctrl-C / SIGTERM.
async fn run_sts(adapters: Adapters, keys: Keys, config: StsServiceConfig) -> Result<(), String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ids: Arc<dyn IdGenerator> = Arc::new(UuidV7Ids);
    let es256: Arc<dyn Es256> = Arc::new(RingEs256::new());
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
    let zone_keys = Arc::new(ZoneKeys::new(
        Arc::clone(&adapters.store),
        keys.sealer.clone(),
        Arc::clone(&es256),
        Arc::clone(&ids),
        Arc::clone(&clock),
    ));
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
    for topic in [Topic::Policy, Topic::Keys] {
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
    let server = HttpServer::new(move || sts_app!(state.clone()))
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

/// Runs the chosen services side by side until shutdown; the first failure ends the process.
async fn run(
    services: Services,
    adapters: Adapters,
    keys: Keys,
    env: &Env<'_>,
    dev: bool,
    admin_token: Option<String>,
) -> Result<(), String> {
    let api = match services {
        Services::Sts => None,
        _ => {
            let config = ApiConfig::from_env(env).map_err(|e| e.to_string())?;
            let token = admin_token
                .ok_or_else(|| ConfigError::Missing("CARACAL_ADMIN_TOKEN").to_string())?;
            Some(run_api(
                Arc::clone(&adapters.store),
                Arc::clone(&adapters.queue),
                Arc::clone(&adapters.bus),
                Arc::clone(&adapters.limiter),
                keys.clone(),
                config,
                token,
            ))
        }
    };
    let sts = match services {
        Services::Api => None,
        _ => {
            let config = StsServiceConfig::from_env(env, dev).map_err(|e| e.to_string())?;
            Some(run_sts(adapters, keys, config))
        }
    };
    match (api, sts) {
        (Some(api), Some(sts)) => tokio::try_join!(api, sts).map(|_| ()),
        (Some(api), None) => api.await,
        (None, Some(sts)) => sts.await,
        (None, None) => Ok(()),
    }
}

/// `caracal dev`: every service built so far, in one process, on memory adapters.
pub async fn dev() -> Result<(), String> {
    let source = ProcessEnv;
    let env = Env(&source);
    if env.optional("DATABASE_URL").is_some() || env.optional("REDIS_URL").is_some() {
        eprintln!("caracal: dev mode uses the in-memory store; DATABASE_URL/REDIS_URL are ignored (use `caracal serve all`)");
    }
    let keys = keys(&env, true)?;
    let admin_token = match env.optional("CARACAL_ADMIN_TOKEN") {
        Some(token) => token,
        None => {
            let token =
                caracal_core::ports::SecretGenerator::generate(&RandomSecrets::new(), "cat_");
            eprintln!("caracal: generated an admin token for this dev session:\n\n    export CARACAL_ADMIN_TOKEN={token}\n");
            token
        }
    };
    eprintln!("caracal: dev mode — in-memory store and bus, throwaway keys; nothing survives exit");
    let store = MemoryStore::new();
    let adapters = Adapters {
        store: Arc::new(store.clone()),
        queue: Arc::new(store),
        bus: Arc::new(MemoryBus::new()),
        limiter: Arc::new(MemoryRateLimiter::new()),
        expiring: Arc::new(MemoryExpiringKeys::new(Arc::new(SystemClock))),
        replay_dir: None,
    };
    run(Services::All, adapters, keys, &env, true, Some(admin_token)).await
}

/// `caracal serve api|sts|all`: Postgres + Redis. The memory store is refused here because its
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
    let admin_token = match services {
        Services::Sts => None,
        _ => Some(
            env.required("CARACAL_ADMIN_TOKEN")
                .map_err(|e| e.to_string())?,
        ),
    };
    if services != Services::Sts {
        ApiConfig::from_env(&env).map_err(|e| e.to_string())?;
    }
    if services != Services::Api {
        StsServiceConfig::from_env(&env, false).map_err(|e| e.to_string())?;
    }
    let keys = keys(&env, false)?;
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
    let adapters = Adapters {
        store: Arc::new(store.clone()),
        queue: Arc::new(store),
        limiter: Arc::new(caracal_redis::RedisRateLimiter::new(bus.pool().clone())),
        expiring: Arc::new(caracal_redis::RedisExpiringKeys::new(bus.pool().clone())),
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
