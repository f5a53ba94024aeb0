//! The STS's configuration (`spec/sts.md §16`), read once at start-up; every error names the
//! variable.

use caracal_http::config::{ConfigError, Env};

/// Tunables of the STS service.
#[derive(Debug, Clone)]
pub struct StsServiceConfig {
    /// Listen address (`STS_HOST`, default `127.0.0.1`).
    pub host: String,
    /// Listen port (`STS_PORT`, default 8080).
    pub port: u16,
    /// `ISSUER_URL`: absolute http(s) URL with a host, no userinfo, query or fragment.
    pub issuer: String,
    /// `CONTROL_AUDIENCE`.
    pub control_audience: String,
    /// `STS_MINT_RATE_LIMIT_PER_MIN`.
    pub mint_limit_per_min: u64,
    /// `STS_SECRET_VERIFY_CONCURRENCY`.
    pub secret_verify_concurrency: usize,
    /// `OPA_POLL_SECONDS` (1–300).
    pub policy_poll_seconds: u64,
    /// `STS_ADMIN_TOKEN` (rotation route; absent: the route is a plain 404).
    pub admin_token: Option<String>,
    /// `METRICS_BEARER`.
    pub metrics_bearer: Option<String>,
    /// Whether this is dev mode (metrics open without a bearer).
    pub dev: bool,
}

/// Why `ISSUER_URL` is unusable, if it is.
pub fn issuer_problem(url: &str) -> Option<&'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let Some(rest) = rest else {
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

impl StsServiceConfig {
    /// Reads the configuration; `dev` supplies defaults a newcomer needs.
    pub fn from_env(env: &Env<'_>, dev: bool) -> Result<Self, ConfigError> {
        let port: u16 = env.parsed("STS_PORT", 8080)?;
        let issuer = match env.optional("ISSUER_URL") {
            Some(url) => url,
            None if dev => format!("http://127.0.0.1:{port}"),
            None => return Err(ConfigError::Missing("ISSUER_URL")),
        };
        if let Some(problem) = issuer_problem(&issuer) {
            return Err(ConfigError::Invalid {
                name: "ISSUER_URL",
                reason: problem.to_string(),
            });
        }
        let positive = |name: &'static str, default: u64| -> Result<u64, ConfigError> {
            let v: u64 = env.parsed(name, default)?;
            if v == 0 {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "must be a positive integer".into(),
                });
            }
            Ok(v)
        };
        let poll = positive("OPA_POLL_SECONDS", 60)?;
        if poll > 300 {
            return Err(ConfigError::Invalid {
                name: "OPA_POLL_SECONDS",
                reason: "must be between 1 and 300".into(),
            });
        }
        Ok(Self {
            host: env
                .optional("STS_HOST")
                .unwrap_or_else(|| "127.0.0.1".into()),
            port,
            issuer,
            control_audience: env
                .optional("CONTROL_AUDIENCE")
                .unwrap_or_else(|| "caracal-control".into()),
            mint_limit_per_min: positive("STS_MINT_RATE_LIMIT_PER_MIN", 1000)?,
            secret_verify_concurrency: positive("STS_SECRET_VERIFY_CONCURRENCY", 2)? as usize,
            policy_poll_seconds: poll,
            admin_token: env.optional("STS_ADMIN_TOKEN"),
            metrics_bearer: env.optional("METRICS_BEARER"),
            dev,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::issuer_problem;

    #[test]
    fn issuer_rules() {
        assert_eq!(issuer_problem("http://sts:8080"), None);
        assert_eq!(issuer_problem("https://auth.example.com/sts"), None);
        assert!(issuer_problem("sts:8080").is_some());
        assert!(issuer_problem("http://").is_some());
        assert!(issuer_problem("http://u:p@sts").is_some());
        assert!(issuer_problem("http://sts?x=1").is_some());
        assert!(issuer_problem("http://sts#f").is_some());
    }
}
