//! The Audit service's configuration (`spec/audit-streams-storage.md §6.1`), read once at
//! start-up; every error names the variable.
//!
//! Names are upstream's, except the listen address: `AUDIT_HOST`/`AUDIT_PORT` (9090), since one
//! process may run every service and a bare `PORT` would be ambiguous. Upstream refuses any
//! port but 9090; here any port is accepted, as for the other services. `AUDIT_HMAC_KEY` is
//! read with the other keys by the wiring (which requires it in published modes).

use std::time::Duration;

use caracal_core::audit::dlq::{AUDIT_STREAM, DLQ_STREAM, INGEST_GROUP};
use caracal_http::config::{ConfigError, Env};

/// The streams and group the service works on: upstream's names, fixed in production; tests
/// against a shared Redis give their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamNames {
    /// Evidence (`caracal.audit.events`).
    pub events: String,
    /// Dead letters (`caracal.audit.events.dlq`).
    pub dlq: String,
    /// The ingest consumer group (`audit-ingestor`).
    pub group: String,
}

impl Default for StreamNames {
    fn default() -> Self {
        StreamNames {
            events: AUDIT_STREAM.to_owned(),
            dlq: DLQ_STREAM.to_owned(),
            group: INGEST_GROUP.to_owned(),
        }
    }
}

/// Tunables of the Audit service.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// `AUDIT_HOST` (`127.0.0.1`; `0.0.0.0` when `CARACAL_MODE` is `rc` or `stable`).
    pub host: String,
    /// `AUDIT_PORT` (9090).
    pub port: u16,
    /// `CARACAL_MODE` is `rc` or `stable`: a published deployment.
    pub published: bool,
    /// `AUDIT_ADMIN_TOKEN` (`_FILE`): the operator token of `/api/audit/*` (absent: 404).
    pub admin_token: Option<String>,
    /// `METRICS_BEARER` (`_FILE`): when set, `/metrics` requires `Bearer <it>`; when unset,
    /// metrics are open only outside published modes.
    pub metrics_bearer: Option<String>,
    /// `AUDIT_RETENTION_DAYS` (365, at least 1): the upper limit; the API's setting can only
    /// lower it.
    pub retention_days: u32,
    /// `AUDIT_MAX_DELIVERIES` (8; 0 = no limit): transient failures of a reclaimed entry
    /// dead-letter it at this delivery.
    pub max_deliveries: u64,
    /// `AUDIT_CLAIM_IDLE_SECS` (30, at least 1): the reaper's period and its min-idle time.
    pub claim_idle: Duration,
    /// `AUDIT_READY_DLQ_MAX` (0 = off): `/ready` fails when the DLQ holds more entries.
    pub ready_dlq_max: u64,
    /// `AUDIT_READY_LAG_MAX` (0 = off): `/ready` fails when more entries are pending.
    pub ready_lag_max: u64,
    /// `AUDIT_READY_PEL_OLDEST_SECS_MAX` (0 = off): `/ready` fails when the oldest pending
    /// entry has been idle longer.
    pub ready_pel_oldest_secs_max: u64,
    /// `HOSTNAME` (`audit-worker-0`): this replica's consumer name.
    pub consumer: String,
    /// How often the stream figures behind `/ready` and `/metrics` are read (30 s).
    pub stats_every: Duration,
    /// How often retention runs (6 h).
    pub retention_every: Duration,
    /// How long one read waits for new entries (5 s).
    pub read_block: Duration,
    /// The streams and the group.
    pub streams: StreamNames,
}

impl AuditConfig {
    /// Reads the configuration.
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let published = matches!(
            env.optional("CARACAL_MODE").as_deref(),
            Some("rc" | "stable")
        );
        let retention_days: u32 = env.parsed("AUDIT_RETENTION_DAYS", 365)?;
        if retention_days == 0 {
            return Err(ConfigError::Invalid {
                name: "AUDIT_RETENTION_DAYS",
                reason: "must be at least 1".into(),
            });
        }
        let claim_idle_secs: u64 = env.parsed("AUDIT_CLAIM_IDLE_SECS", 30)?;
        if claim_idle_secs == 0 {
            return Err(ConfigError::Invalid {
                name: "AUDIT_CLAIM_IDLE_SECS",
                reason: "must be at least 1".into(),
            });
        }
        let consumer = env
            .optional("HOSTNAME")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|| "audit-worker-0".to_owned());
        Ok(Self {
            host: env
                .optional("AUDIT_HOST")
                .unwrap_or_else(|| if published { "0.0.0.0" } else { "127.0.0.1" }.to_owned()),
            port: env.parsed("AUDIT_PORT", 9090)?,
            published,
            admin_token: env.secret("AUDIT_ADMIN_TOKEN", "AUDIT_ADMIN_TOKEN_FILE")?,
            metrics_bearer: env.secret("METRICS_BEARER", "METRICS_BEARER_FILE")?,
            retention_days,
            max_deliveries: env.parsed("AUDIT_MAX_DELIVERIES", 8)?,
            claim_idle: Duration::from_secs(claim_idle_secs),
            ready_dlq_max: env.parsed("AUDIT_READY_DLQ_MAX", 0)?,
            ready_lag_max: env.parsed("AUDIT_READY_LAG_MAX", 0)?,
            ready_pel_oldest_secs_max: env.parsed("AUDIT_READY_PEL_OLDEST_SECS_MAX", 0)?,
            consumer,
            ..Self::defaults()
        })
    }

    /// Upstream's defaults, no tokens: for tests and embedding.
    pub fn defaults() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 9090,
            published: false,
            admin_token: None,
            metrics_bearer: None,
            retention_days: 365,
            max_deliveries: 8,
            claim_idle: Duration::from_secs(30),
            ready_dlq_max: 0,
            ready_lag_max: 0,
            ready_pel_oldest_secs_max: 0,
            consumer: "audit-worker-0".into(),
            stats_every: Duration::from_secs(30),
            retention_every: Duration::from_secs(6 * 3600),
            read_block: Duration::from_secs(5),
            streams: StreamNames::default(),
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
    fn defaults_are_upstreams() {
        let c = AuditConfig::from_env(&Env(&env(&[]))).expect("config");
        assert_eq!(c.port, 9090);
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.retention_days, 365);
        assert_eq!(c.max_deliveries, 8);
        assert_eq!(c.claim_idle, Duration::from_secs(30));
        assert_eq!(c.consumer, "audit-worker-0");
        assert_eq!(c.admin_token, None);
        assert_eq!((c.ready_dlq_max, c.ready_lag_max), (0, 0));
        assert_eq!(c.streams.events, "caracal.audit.events");
        assert_eq!(c.streams.dlq, "caracal.audit.events.dlq");
        assert_eq!(c.streams.group, "audit-ingestor");
    }

    #[test]
    fn values_are_read_and_published_mode_listens_everywhere() {
        let vars = env(&[
            ("CARACAL_MODE", "rc"),
            ("AUDIT_PORT", "9191"),
            ("AUDIT_ADMIN_TOKEN", "op"),
            ("AUDIT_MAX_DELIVERIES", "0"),
            ("AUDIT_CLAIM_IDLE_SECS", "5"),
            ("AUDIT_READY_LAG_MAX", "1000"),
            ("HOSTNAME", "audit-7"),
        ]);
        let c = AuditConfig::from_env(&Env(&vars)).expect("config");
        assert!(c.published);
        assert_eq!(c.host, "0.0.0.0");
        assert_eq!(c.port, 9191);
        assert_eq!(c.admin_token.as_deref(), Some("op"));
        assert_eq!(c.max_deliveries, 0);
        assert_eq!(c.claim_idle, Duration::from_secs(5));
        assert_eq!(c.ready_lag_max, 1000);
        assert_eq!(c.consumer, "audit-7");
    }

    #[test]
    fn every_error_names_its_variable() {
        for (name, value) in [
            ("AUDIT_PORT", "x"),
            ("AUDIT_RETENTION_DAYS", "0"),
            ("AUDIT_MAX_DELIVERIES", "-1"),
            ("AUDIT_CLAIM_IDLE_SECS", "0"),
            ("AUDIT_READY_DLQ_MAX", "many"),
            ("AUDIT_READY_PEL_OLDEST_SECS_MAX", "1.5"),
        ] {
            let vars = env(&[(name, value)]);
            let err = AuditConfig::from_env(&Env(&vars)).expect_err("refused");
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
    }
}
