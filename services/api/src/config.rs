//! API service configuration, from the upstream variable names.

use caracal_http::config::{ConfigError, Env};

/// Tunables of the API service.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `API_HOST` (127.0.0.1).
    pub host: String,
    /// `API_PORT` (3000).
    pub port: u16,
    /// `API_BODY_LIMIT_BYTES` (1 MiB).
    pub body_limit: usize,
    /// `API_READY_OUTBOX_DEAD_MAX` (0): dead outbox rows tolerated before `/ready` fails.
    pub ready_outbox_dead_max: u64,
    /// `METRICS_BEARER`: when set, `/metrics` requires it.
    pub metrics_bearer: Option<String>,
    /// `CONTROL_AUDIENCE` (caracal-control).
    pub control_audience: String,
    /// `API_MAX_RESOURCES_PER_ZONE` (100000).
    pub max_resources_per_zone: u64,
    /// `OUTBOX_POLL_MS` (250).
    pub outbox_poll_ms: u64,
    /// `API_V1_RATE_LIMIT_PER_MIN` (600): `/v1` requests per minute, per client IP and per actor.
    pub v1_rate_limit_per_min: u64,
    /// `ADMIN_AUTH_FAIL_LIMIT_PER_MIN` (60): failed authentications per minute per client IP.
    pub auth_fail_limit_per_min: u64,
    /// `TRUST_PROXY` (false): take the client IP from `X-Forwarded-For`.
    pub trust_proxy: bool,
    /// `AUDIT_RETENTION_DAYS` (365): the deployment's ceiling on audit retention; operators
    /// may only shorten the window below it (`PUT /v1/audit-retention`).
    pub audit_retention_max_days: u32,
}

impl ApiConfig {
    /// Reads the configuration; errors name the variable.
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            host: env
                .optional("API_HOST")
                .unwrap_or_else(|| "127.0.0.1".into()),
            port: env.parsed("API_PORT", 3000)?,
            body_limit: env.parsed("API_BODY_LIMIT_BYTES", 1_048_576)?,
            ready_outbox_dead_max: env.parsed("API_READY_OUTBOX_DEAD_MAX", 0)?,
            metrics_bearer: env.optional("METRICS_BEARER"),
            control_audience: env
                .optional("CONTROL_AUDIENCE")
                .unwrap_or_else(|| "caracal-control".into()),
            max_resources_per_zone: env.parsed("API_MAX_RESOURCES_PER_ZONE", 100_000)?,
            outbox_poll_ms: env.parsed("OUTBOX_POLL_MS", 250)?,
            v1_rate_limit_per_min: env.parsed("API_V1_RATE_LIMIT_PER_MIN", 600)?,
            auth_fail_limit_per_min: env.parsed("ADMIN_AUTH_FAIL_LIMIT_PER_MIN", 60)?,
            trust_proxy: env.flag("TRUST_PROXY", false)?,
            audit_retention_max_days: match env.parsed("AUDIT_RETENTION_DAYS", 365u32)? {
                0 => {
                    return Err(ConfigError::Invalid {
                        name: "AUDIT_RETENTION_DAYS",
                        reason: "must be at least 1".into(),
                    })
                }
                days => days,
            },
        })
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 3000,
            body_limit: 1_048_576,
            ready_outbox_dead_max: 0,
            metrics_bearer: None,
            control_audience: "caracal-control".into(),
            max_resources_per_zone: 100_000,
            outbox_poll_ms: 250,
            v1_rate_limit_per_min: 600,
            auth_fail_limit_per_min: 60,
            trust_proxy: false,
            audit_retention_max_days: 365,
        }
    }
}
