//! The Coordinator's configuration (`spec/coordinator-gateway.md` A14, with the knobs of A4, A7
//! and A11), read once at start-up and validated before any store is touched; every error
//! names the variable.
//!
//! Variable names are upstream's, except where one process runs several services: the listen
//! address is `COORDINATOR_HOST`/`COORDINATOR_PORT` (upstream's bare `HOST`/`PORT` would be
//! ambiguous next to `API_PORT` and `STS_PORT`). Secrets may instead be given as a file path in
//! `<NAME>_FILE` (container secrets); setting both is an error.

use std::time::Duration;

use caracal_core::coordinator::CoordinatorConfig;
use caracal_http::config::{ConfigError, Env};

/// The SDK's `LIFECYCLE_SCOPE`: the scope every runtime SDK call to the Coordinator carries.
pub const DEFAULT_LIFECYCLE_SCOPE: &str = "agent:lifecycle";

/// Tunables of the Coordinator service.
#[derive(Debug, Clone)]
pub struct CoordinatorServiceConfig {
    /// `COORDINATOR_HOST` (`127.0.0.1`; `0.0.0.0` when `CARACAL_MODE` is `rc` or `stable`).
    pub host: String,
    /// `COORDINATOR_PORT` (4000).
    pub port: u16,
    /// `ISSUER_URL`: the STS issuer; mandates must carry it as `iss` and in `aud`.
    pub issuer: String,
    /// `STS_URL`: where the verification keys are fetched when the STS runs in another
    /// process (`caracal serve coordinator`); unused when it runs in this one.
    pub sts_url: Option<String>,
    /// `AGENT_COORDINATOR_SCOPE` (`agent:lifecycle`).
    pub lifecycle_scope: String,
    /// `CARACAL_COORDINATOR_TOKEN`: the operator token (absent: no operator access).
    pub operator_token: Option<String>,
    /// `METRICS_BEARER`: when set, `/metrics` also requires `Authorization: Bearer <it>`.
    pub metrics_bearer: Option<String>,
    /// `CARACAL_MODE` is `rc` or `stable`: a published deployment.
    pub published: bool,
    /// `COORDINATOR_BODY_LIMIT_BYTES` (262144, at least 1024).
    pub body_limit: usize,
    /// `COORDINATOR_RATE_LIMIT_PER_MIN` (600; 0 disables): requests per client IP.
    pub global_limit_per_min: u64,
    /// `READY_RATE_LIMIT_PER_MIN` (120; 0 disables): `/ready` calls per client IP.
    pub ready_limit_per_min: u64,
    /// `VERIFY_RATE_LIMIT_PER_MIN` (60; 0 disables): `/v1/verify` calls per client IP.
    pub verify_limit_per_min: u64,
    /// `INVOCATION_RATE_LIMIT_PER_MIN` (120; 0 disables): invocation changes per zone and
    /// calling application.
    pub invocation_limit_per_min: u64,
    /// `TRUST_PROXY` (false): take the client IP from `X-Forwarded-For`.
    pub trust_proxy: bool,
    /// `JWKS_CACHE_MAX` (256): zones whose STS key sets are cached.
    pub jwks_cache_max: usize,
    /// `REQUEST_TIMEOUT_MS` (30000): time allowed to receive a request's head.
    pub request_timeout: Duration,
    /// `KEEP_ALIVE_TIMEOUT_MS` (75000): idle keep-alive connections are held this long.
    pub keep_alive: Duration,
    /// `TTL_SWEEP_INTERVAL_MS` (60000).
    pub ttl_sweep_every: Duration,
    /// `SERVICE_LEASE_SWEEP_INTERVAL_MS` (30000).
    pub lease_sweep_every: Duration,
    /// `DEADLINE_SWEEP_INTERVAL_MS` (5000).
    pub deadline_sweep_every: Duration,
    /// `RETENTION_CLEANUP_INTERVAL_MS` (900000).
    pub retention_every: Duration,
    /// `OUTBOX_INTERVAL_MS` (1000): the outbox dispatcher's poll, when this process runs one.
    pub outbox_every: Duration,
    /// `IDEMPOTENCY_HMAC_KEY` (hex, at least 32 bytes; the wiring decides when it is required).
    pub idempotency_key: Option<String>,
    /// `IDEMPOTENCY_HMAC_KEY_PREVIOUS`: still honoured on lookups during a rotation.
    pub idempotency_key_previous: Option<String>,
    /// The use cases' tunables.
    pub core: CoordinatorConfig,
}

/// Why an issuer URL is unusable, if it is (the STS applies the same rule to `ISSUER_URL`).
fn issuer_problem(url: &str) -> Option<&'static str> {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Some("must be an absolute http(s) URL");
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() {
        return Some("must name a host");
    }
    if authority.contains('@') {
        return Some("must not carry userinfo");
    }
    if url.contains('?') || url.contains('#') {
        return Some("must not carry a query or fragment");
    }
    None
}

fn millis(env: &Env<'_>, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
    let ms: u64 = env.parsed(name, default)?;
    if ms == 0 {
        return Err(ConfigError::Invalid {
            name,
            reason: "must be a positive number of milliseconds".into(),
        });
    }
    Ok(Duration::from_millis(ms))
}

fn at_least<T>(env: &Env<'_>, name: &'static str, default: T, min: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    T::Err: std::fmt::Display,
{
    let v: T = env.parsed(name, default)?;
    if v < min {
        return Err(ConfigError::Invalid {
            name,
            reason: format!("must be at least {min}"),
        });
    }
    Ok(v)
}

impl CoordinatorServiceConfig {
    /// Reads the configuration. `dev` (the one-process sandbox) supplies the issuer default
    /// the STS uses there, `http://127.0.0.1:<STS_PORT>`.
    pub fn from_env(env: &Env<'_>, dev: bool) -> Result<Self, ConfigError> {
        let published = matches!(
            env.optional("CARACAL_MODE").as_deref(),
            Some("rc" | "stable")
        );
        let issuer = match env.optional("ISSUER_URL") {
            Some(url) => url,
            None if dev => {
                let sts_port: u16 = env.parsed("STS_PORT", 8080)?;
                format!("http://127.0.0.1:{sts_port}")
            }
            None => return Err(ConfigError::Missing("ISSUER_URL")),
        };
        if let Some(problem) = issuer_problem(&issuer) {
            return Err(ConfigError::Invalid {
                name: "ISSUER_URL",
                reason: problem.to_string(),
            });
        }
        let lifecycle_scope = env
            .optional("AGENT_COORDINATOR_SCOPE")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| DEFAULT_LIFECYCLE_SCOPE.to_owned());
        if lifecycle_scope.contains(char::is_whitespace) {
            return Err(ConfigError::Invalid {
                name: "AGENT_COORDINATOR_SCOPE",
                reason: "must be a single scope".into(),
            });
        }
        let positive = |name: &'static str, default: u64| at_least(env, name, default, 1u64);
        let defaults = CoordinatorConfig::default();
        let core = CoordinatorConfig {
            max_agents_per_zone: positive("MAX_AGENTS_PER_ZONE", defaults.max_agents_per_zone)?,
            max_agents_per_app: positive("MAX_AGENTS_PER_APP", defaults.max_agents_per_app)?,
            service_lease_seconds: at_least(
                env,
                "SERVICE_AGENT_LEASE_SECONDS",
                defaults.service_lease_seconds,
                1,
            )?,
            idempotency_retention_seconds: at_least(
                env,
                "IDEMPOTENCY_RETENTION_SECONDS",
                defaults.idempotency_retention_seconds,
                3600,
            )?,
            generated_idempotency_retention_seconds: at_least(
                env,
                "GENERATED_IDEMPOTENCY_RETENTION_SECONDS",
                defaults.generated_idempotency_retention_seconds,
                3600,
            )?,
            idempotency_max_receipts_per_scope: at_least(
                env,
                "IDEMPOTENCY_MAX_RECEIPTS_PER_SCOPE",
                defaults.idempotency_max_receipts_per_scope,
                100,
            )?,
            sweeper_batch_size: at_least(
                env,
                "SWEEPER_BATCH_SIZE",
                defaults.sweeper_batch_size,
                1,
            )?,
            graph_retention_seconds: at_least(
                env,
                "DELEGATION_RETENTION_DAYS",
                defaults.graph_retention_seconds / 86_400,
                1,
            )?
            .saturating_mul(86_400),
        };
        Ok(Self {
            host: env
                .optional("COORDINATOR_HOST")
                .unwrap_or_else(|| if published { "0.0.0.0" } else { "127.0.0.1" }.to_owned()),
            port: env.parsed("COORDINATOR_PORT", 4000)?,
            issuer,
            sts_url: env.optional("STS_URL"),
            lifecycle_scope,
            operator_token: env.secret(
                "CARACAL_COORDINATOR_TOKEN",
                "CARACAL_COORDINATOR_TOKEN_FILE",
            )?,
            metrics_bearer: env.secret("METRICS_BEARER", "METRICS_BEARER_FILE")?,
            published,
            body_limit: at_least(env, "COORDINATOR_BODY_LIMIT_BYTES", 262_144usize, 1024)?,
            global_limit_per_min: env.parsed("COORDINATOR_RATE_LIMIT_PER_MIN", 600)?,
            ready_limit_per_min: env.parsed("READY_RATE_LIMIT_PER_MIN", 120)?,
            verify_limit_per_min: env.parsed("VERIFY_RATE_LIMIT_PER_MIN", 60)?,
            invocation_limit_per_min: env.parsed("INVOCATION_RATE_LIMIT_PER_MIN", 120)?,
            trust_proxy: env.flag("TRUST_PROXY", false)?,
            jwks_cache_max: at_least(env, "JWKS_CACHE_MAX", 256usize, 1)?,
            request_timeout: millis(env, "REQUEST_TIMEOUT_MS", 30_000)?,
            keep_alive: millis(env, "KEEP_ALIVE_TIMEOUT_MS", 75_000)?,
            ttl_sweep_every: millis(env, "TTL_SWEEP_INTERVAL_MS", 60_000)?,
            lease_sweep_every: millis(env, "SERVICE_LEASE_SWEEP_INTERVAL_MS", 30_000)?,
            deadline_sweep_every: millis(env, "DEADLINE_SWEEP_INTERVAL_MS", 5_000)?,
            retention_every: millis(env, "RETENTION_CLEANUP_INTERVAL_MS", 900_000)?,
            outbox_every: millis(env, "OUTBOX_INTERVAL_MS", 1_000)?,
            idempotency_key: env.secret("IDEMPOTENCY_HMAC_KEY", "IDEMPOTENCY_HMAC_KEY_FILE")?,
            idempotency_key_previous: env.secret(
                "IDEMPOTENCY_HMAC_KEY_PREVIOUS",
                "IDEMPOTENCY_HMAC_KEY_PREVIOUS_FILE",
            )?,
            core,
        })
    }

    /// A configuration for tests and embedding: upstream defaults, `issuer`, no operator
    /// token, no `STS_URL`.
    pub fn with_issuer(issuer: &str) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 4000,
            issuer: issuer.to_owned(),
            sts_url: None,
            lifecycle_scope: DEFAULT_LIFECYCLE_SCOPE.into(),
            operator_token: None,
            metrics_bearer: None,
            published: false,
            body_limit: 262_144,
            global_limit_per_min: 600,
            ready_limit_per_min: 120,
            verify_limit_per_min: 60,
            invocation_limit_per_min: 120,
            trust_proxy: false,
            jwks_cache_max: 256,
            request_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(75),
            ttl_sweep_every: Duration::from_secs(60),
            lease_sweep_every: Duration::from_secs(30),
            deadline_sweep_every: Duration::from_secs(5),
            retention_every: Duration::from_secs(900),
            outbox_every: Duration::from_secs(1),
            idempotency_key: None,
            idempotency_key_previous: None,
            core: CoordinatorConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_and_the_dev_issuer() {
        let vars = env(&[("STS_PORT", "9090")]);
        let c = CoordinatorServiceConfig::from_env(&Env(&vars), true).expect("config");
        assert_eq!(c.issuer, "http://127.0.0.1:9090");
        assert_eq!(c.port, 4000);
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.lifecycle_scope, "agent:lifecycle");
        assert_eq!(c.body_limit, 262_144);
        assert_eq!(c.core, CoordinatorConfig::default());
        let err = CoordinatorServiceConfig::from_env(&Env(&env(&[])), false).expect_err("refused");
        assert!(err.to_string().contains("ISSUER_URL"));
    }

    #[test]
    fn every_error_names_its_variable() {
        for (name, value) in [
            ("ISSUER_URL", "sts:8080"),
            ("COORDINATOR_PORT", "x"),
            ("COORDINATOR_BODY_LIMIT_BYTES", "10"),
            ("IDEMPOTENCY_RETENTION_SECONDS", "60"),
            ("TTL_SWEEP_INTERVAL_MS", "0"),
            ("AGENT_COORDINATOR_SCOPE", "a b"),
            ("TRUST_PROXY", "maybe"),
            ("JWKS_CACHE_MAX", "0"),
        ] {
            let vars = env(&[("ISSUER_URL", "http://sts:8080"), (name, value)]);
            let err = CoordinatorServiceConfig::from_env(&Env(&vars), false).expect_err("refused");
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn published_mode_listens_everywhere() {
        let vars = env(&[("ISSUER_URL", "https://sts"), ("CARACAL_MODE", "stable")]);
        let c = CoordinatorServiceConfig::from_env(&Env(&vars), false).expect("config");
        assert!(c.published);
        assert_eq!(c.host, "0.0.0.0");
    }

    #[test]
    fn secrets_come_from_files_too() {
        let dir = std::env::temp_dir().join(format!("caracal-coord-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "op-token\n").expect("write");
        let path = file.to_string_lossy().into_owned();
        let vars = env(&[
            ("ISSUER_URL", "http://sts"),
            ("CARACAL_COORDINATOR_TOKEN_FILE", &path),
        ]);
        let c = CoordinatorServiceConfig::from_env(&Env(&vars), false).expect("config");
        assert_eq!(c.operator_token.as_deref(), Some("op-token"));
        let both = env(&[
            ("ISSUER_URL", "http://sts"),
            ("CARACAL_COORDINATOR_TOKEN", "x"),
            ("CARACAL_COORDINATOR_TOKEN_FILE", &path),
        ]);
        assert!(CoordinatorServiceConfig::from_env(&Env(&both), false).is_err());
        let missing = env(&[
            ("ISSUER_URL", "http://sts"),
            ("IDEMPOTENCY_HMAC_KEY_FILE", "/nonexistent/caracal/key"),
        ]);
        let err = CoordinatorServiceConfig::from_env(&Env(&missing), false).expect_err("refused");
        assert!(err.to_string().contains("IDEMPOTENCY_HMAC_KEY_FILE"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
