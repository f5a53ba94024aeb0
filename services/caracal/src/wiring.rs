//! Wiring: configuration → adapters → services. The one place that decides which adapter
//! implements which port.

use std::sync::Arc;
use std::time::Duration;

use actix_web::HttpServer;
use caracal_api::{api_app, ApiConfig, ApiState};
use caracal_core::dispatch::Dispatcher;
use caracal_core::manage::{Management, ManagementConfig};
use caracal_core::ports::{Clock, EventBus, MessageAuthenticator, OutboxQueue, RateLimiter, Store};
use caracal_crypto::{Argon2idHasher, EnvelopeSealer, HmacSha256, Kek, RandomSecrets};
use caracal_http::config::{ConfigError, Env, ProcessEnv};
use caracal_http::metrics::HttpCounters;
use caracal_memory::{MemoryBus, MemoryRateLimiter, MemoryStore, SystemClock, UuidV7Ids};
use tokio::sync::watch;

/// The keys every mode needs.
struct Keys {
    sealer: Arc<EnvelopeSealer>,
    streams: Option<Arc<dyn MessageAuthenticator>>,
    audit: Option<Arc<dyn MessageAuthenticator>>,
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
    Ok(Keys {
        sealer: Arc::new(EnvelopeSealer::new(kek, previous)),
        streams: hmac("STREAMS_HMAC_KEY")?,
        audit: hmac("AUDIT_HMAC_KEY")?,
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

/// `caracal dev`: every service built so far, in one process, on memory adapters.
pub async fn dev() -> Result<(), String> {
    let source = ProcessEnv;
    let env = Env(&source);
    if env.optional("DATABASE_URL").is_some() || env.optional("REDIS_URL").is_some() {
        eprintln!("caracal: dev mode uses the in-memory store; DATABASE_URL/REDIS_URL are ignored (use `caracal serve all`)");
    }
    let config = ApiConfig::from_env(&env).map_err(|e| e.to_string())?;
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
    run_api(
        Arc::new(store.clone()),
        Arc::new(store),
        Arc::new(MemoryBus::new()),
        Arc::new(MemoryRateLimiter::new()),
        keys,
        config,
        admin_token,
    )
    .await
}

/// `caracal serve api|all`: Postgres + Redis. The memory store is refused here because its
/// state cannot be shared with other processes.
pub async fn serve() -> Result<(), String> {
    let source = ProcessEnv;
    let env = Env(&source);
    let database_url = env.required("DATABASE_URL").map_err(|e| {
        format!("{e}; `caracal serve` needs Postgres + Redis because in-memory state cannot be shared across processes (use `caracal dev` for a single-process sandbox)")
    })?;
    let redis_url = env.required("REDIS_URL").map_err(|e| e.to_string())?;
    let admin_token = env
        .required("CARACAL_ADMIN_TOKEN")
        .map_err(|e| e.to_string())?;
    let config = ApiConfig::from_env(&env).map_err(|e| e.to_string())?;
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
    let limiter = caracal_redis::RedisRateLimiter::new(bus.pool().clone());
    run_api(
        Arc::new(store.clone()),
        Arc::new(store),
        Arc::new(bus),
        Arc::new(limiter),
        keys,
        config,
        admin_token,
    )
    .await
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
