//! The Gateway's configuration (`spec/coordinator-gateway.md` B13, B16), read once at start-up
//! and validated before anything listens; every error names the variable.
//!
//! Names are upstream's, except the listen address: `GATEWAY_HOST`/`GATEWAY_PORT` (as
//! `COORDINATOR_HOST`/`COORDINATOR_PORT`), because one process may run every service and a
//! bare `HOST`/`PORT` would be ambiguous. Durations are Go durations (`5s`, `500ms`, `1m30s`);
//! a bare number counts as seconds. Secrets may be given as a file path in `<NAME>_FILE`;
//! `TLS_CERT_FILE` and `TLS_KEY_FILE` already are paths, so they have no `_FILE` form.
//!
//! One default is stricter than upstream's: upstream addresses on loopback and private ranges
//! are refused unless `UPSTREAM_ALLOW_LOOPBACK` / `UPSTREAM_ALLOW_PRIVATE` say otherwise
//! (`caracal dev` allows loopback, so its local echo upstream works).

use std::time::Duration;

use caracal_core::gateway::host::HostPolicy;
use caracal_http::config::{ConfigError, Env};

use crate::deadline::Limits;
use crate::tls::ServerTls;

/// Tunables of the Gateway service.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `GATEWAY_HOST` (`127.0.0.1`; `0.0.0.0` when `CARACAL_MODE` is `rc` or `stable`).
    pub host: String,
    /// `GATEWAY_PORT` (8081).
    pub port: u16,
    /// `STS_URL` without a trailing slash: where exchanges are posted. The wiring fills it with
    /// the in-process STS's address in `caracal dev` and `caracal serve all`.
    pub sts_url: Option<String>,
    /// `CARACAL_MODE` is `rc` or `stable`.
    pub published: bool,
    /// The one-process sandbox: metrics open without a bearer, `JTI_FAIL_OPEN` allowed,
    /// loopback upstreams allowed by default.
    pub dev: bool,
    /// `MAX_REQUEST_BYTES` (10 MiB): the largest request body forwarded.
    pub max_request_bytes: u64,
    /// `STS_TIMEOUT` (5 s): the whole exchange.
    pub sts_timeout: Duration,
    /// `UPSTREAM_TIMEOUT` (30 s): until the upstream's response head.
    pub upstream_timeout: Duration,
    /// `STREAM_IDLE_TIMEOUT` (60 s): the longest wait for the next upstream body chunk, and,
    /// for a streamed answer (B12), for the client to take each chunk.
    pub stream_idle_timeout: Duration,
    /// `READ_HEADER_TIMEOUT` (5 s): a request head must arrive within this of its first byte
    /// (of the connection's start, for its first request; TLS handshakes too).
    pub read_header_timeout: Duration,
    /// `READ_TIMEOUT` (45 s): from a request's first byte, its head and body must arrive and
    /// its answer must be ready within this; more than `STS_TIMEOUT + UPSTREAM_TIMEOUT`.
    pub read_timeout: Duration,
    /// `IDLE_TIMEOUT` (120 s): how long a keep-alive connection waits for its next request.
    pub idle_timeout: Duration,
    /// `WRITE_TIMEOUT` (60 s): an answer of known length must be written within this; a stream
    /// gets `STREAM_IDLE_TIMEOUT` per chunk instead.
    pub write_timeout: Duration,
    /// `TLS_CERT_FILE` + `TLS_KEY_FILE`: serve HTTPS only (absent: plain HTTP).
    pub tls: Option<ServerTls>,
    /// `UPSTREAM_HOST_ALLOWLIST`, `UPSTREAM_ALLOW_LOOPBACK`, `UPSTREAM_ALLOW_PRIVATE`.
    pub host_policy: HostPolicy,
    /// `TRUST_PROXY` (false): take `X-Forwarded-For`/`-Proto` from the caller.
    pub trust_proxy: bool,
    /// `JTI_FAIL_OPEN` (false; dev only): a JTI store error admits the request.
    pub jti_fail_open: bool,
    /// `CARACAL_ADMIN_TOKEN`: opens `POST /internal/revocations/reload` (absent: 404).
    pub admin_token: Option<String>,
    /// `METRICS_BEARER`: `/metrics` requires `Authorization: Bearer <it>` (absent: open in dev
    /// only).
    pub metrics_bearer: Option<String>,
    /// This host's name, for the revocation consumer group (`gateway-revocation:<hostname>`):
    /// `HOSTNAME`, else `/etc/hostname`, else `localhost`.
    pub hostname: String,
}

/// Bytes of `MAX_REQUEST_BYTES` by default (10 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 10 * 1024 * 1024;

/// Parses a Go duration (`300ms`, `5s`, `1m30s`, `1.5h`) or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{text:?} lacks a unit (ns, us, ms, s, m, h)"))?;
        if number_len == 0 {
            return Err(format!("{text:?} is not a duration"));
        }
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("{text:?} is not a duration"))?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("unknown unit {other:?} in {text:?}")),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 365.0 * 86_400.0 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// `READ_TIMEOUT` by default (45 s).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(45);
/// `IDLE_TIMEOUT` by default (120 s).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// `WRITE_TIMEOUT` by default (60 s).
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

fn duration(env: &Env<'_>, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    let value = match env.optional(name) {
        None => return Ok(default),
        Some(raw) => {
            parse_duration(&raw).map_err(|reason| ConfigError::Invalid { name, reason })?
        }
    };
    if value.is_zero() {
        return Err(ConfigError::Invalid {
            name,
            reason: "must be positive".into(),
        });
    }
    Ok(value)
}

/// Why an `STS_URL` is unusable, if it is: an absolute http(s) URL with a host and no
/// userinfo, query or fragment; `https` when published, except for a cluster-internal host
/// (single label, `localhost`, `127.0.0.1`, `::1`).
fn sts_url_problem(url: &str, published: bool) -> Option<&'static str> {
    let (https, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => match url.strip_prefix("http://") {
            Some(rest) => (false, rest),
            None => return Some("must be an absolute http(s) URL"),
        },
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
    if published && !https {
        let host = if let Some(v6) = authority.strip_prefix('[') {
            v6.split(']').next().unwrap_or("")
        } else {
            authority.split(':').next().unwrap_or("")
        };
        let internal = matches!(host, "localhost" | "127.0.0.1" | "::1") || !host.contains('.');
        if !internal {
            return Some("must use https when CARACAL_MODE is rc or stable");
        }
    }
    None
}

/// `TLS_CERT_FILE` and `TLS_KEY_FILE`: both or neither; both are loaded here, so a bad file
/// stops start-up.
fn tls(env: &Env<'_>) -> Result<Option<ServerTls>, ConfigError> {
    match (env.optional("TLS_CERT_FILE"), env.optional("TLS_KEY_FILE")) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::Missing("TLS_KEY_FILE")),
        (None, Some(_)) => Err(ConfigError::Missing("TLS_CERT_FILE")),
        (Some(cert), Some(key)) => ServerTls::from_pem_files(cert.trim(), key.trim()).map(Some),
    }
}

fn hostname(env: &Env<'_>) -> String {
    let name = env.optional("HOSTNAME").or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    });
    name.map(|n| n.trim().to_owned())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl GatewayConfig {
    /// Reads the configuration; `dev` is the one-process sandbox.
    pub fn from_env(env: &Env<'_>, dev: bool) -> Result<Self, ConfigError> {
        let published = matches!(
            env.optional("CARACAL_MODE").as_deref(),
            Some("rc" | "stable")
        );
        let sts_url = env
            .optional("STS_URL")
            .map(|u| u.trim().trim_end_matches('/').to_owned());
        if let Some(url) = &sts_url {
            if let Some(problem) = sts_url_problem(url, published) {
                return Err(ConfigError::Invalid {
                    name: "STS_URL",
                    reason: problem.into(),
                });
            }
        }
        let max_request_bytes: u64 = env.parsed("MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES)?;
        if max_request_bytes == 0 {
            return Err(ConfigError::Invalid {
                name: "MAX_REQUEST_BYTES",
                reason: "must be positive".into(),
            });
        }
        let jti_fail_open = env.flag("JTI_FAIL_OPEN", false)?;
        if jti_fail_open && !dev {
            return Err(ConfigError::Invalid {
                name: "JTI_FAIL_OPEN",
                reason:
                    "is only allowed in `caracal dev`: a replay store outage must refuse mandates"
                        .into(),
            });
        }
        let allowlist = env
            .optional("UPSTREAM_HOST_ALLOWLIST")
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let config = Self {
            host: env
                .optional("GATEWAY_HOST")
                .unwrap_or_else(|| if published { "0.0.0.0" } else { "127.0.0.1" }.to_owned()),
            port: env.parsed("GATEWAY_PORT", 8081)?,
            sts_url,
            published,
            dev,
            max_request_bytes,
            sts_timeout: duration(env, "STS_TIMEOUT", Duration::from_secs(5))?,
            upstream_timeout: duration(env, "UPSTREAM_TIMEOUT", Duration::from_secs(30))?,
            stream_idle_timeout: duration(env, "STREAM_IDLE_TIMEOUT", Duration::from_secs(60))?,
            read_header_timeout: duration(env, "READ_HEADER_TIMEOUT", Duration::from_secs(5))?,
            read_timeout: duration(env, "READ_TIMEOUT", DEFAULT_READ_TIMEOUT)?,
            idle_timeout: duration(env, "IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT)?,
            write_timeout: duration(env, "WRITE_TIMEOUT", DEFAULT_WRITE_TIMEOUT)?,
            tls: tls(env)?,
            host_policy: HostPolicy {
                allowlist,
                allow_loopback: env.flag("UPSTREAM_ALLOW_LOOPBACK", dev)?,
                allow_private: env.flag("UPSTREAM_ALLOW_PRIVATE", false)?,
            },
            trust_proxy: env.flag("TRUST_PROXY", false)?,
            jti_fail_open,
            admin_token: env.secret("CARACAL_ADMIN_TOKEN", "CARACAL_ADMIN_TOKEN_FILE")?,
            metrics_bearer: env.secret("METRICS_BEARER", "METRICS_BEARER_FILE")?,
            hostname: hostname(env),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks what holds between settings. `READ_TIMEOUT` must exceed `STS_TIMEOUT +
    /// UPSTREAM_TIMEOUT` (B13): a request's answer is due within `READ_TIMEOUT` of its first
    /// byte, and a proxied one may legitimately spend both of those before it is ready.
    /// Upstream refuses to start on this too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let budget = self.sts_timeout.saturating_add(self.upstream_timeout);
        if self.read_timeout <= budget {
            return Err(ConfigError::Invalid {
                name: "READ_TIMEOUT",
                reason: format!(
                    "{:?} must exceed STS_TIMEOUT + UPSTREAM_TIMEOUT ({:?} + {:?} = {:?})",
                    self.read_timeout, self.sts_timeout, self.upstream_timeout, budget
                ),
            });
        }
        Ok(())
    }

    /// The connection limits these settings give.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            read_header: self.read_header_timeout,
            read: self.read_timeout,
            idle: self.idle_timeout,
            write: self.write_timeout,
            stream_idle: self.stream_idle_timeout,
        }
    }

    /// A configuration for tests and embedding: the defaults, `sts_url`, loopback upstreams
    /// allowed, dev mode off, no TLS.
    pub fn for_sts(sts_url: &str) -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 0,
            sts_url: Some(sts_url.trim_end_matches('/').to_owned()),
            published: false,
            dev: false,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            sts_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(60),
            read_header_timeout: Duration::from_secs(5),
            read_timeout: DEFAULT_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            tls: None,
            host_policy: HostPolicy {
                allowlist: Vec::new(),
                allow_loopback: true,
                allow_private: false,
            },
            trust_proxy: false,
            jti_fail_open: false,
            admin_token: None,
            metrics_bearer: None,
            hostname: "localhost".into(),
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
    fn defaults() {
        let c = GatewayConfig::from_env(&Env(&env(&[])), false).expect("config");
        assert_eq!(c.port, 8081);
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.sts_url, None);
        assert_eq!(c.max_request_bytes, 10 * 1024 * 1024);
        assert_eq!(c.sts_timeout, Duration::from_secs(5));
        assert_eq!(c.upstream_timeout, Duration::from_secs(30));
        assert_eq!(c.stream_idle_timeout, Duration::from_secs(60));
        assert_eq!(c.read_header_timeout, Duration::from_secs(5));
        assert_eq!(c.read_timeout, Duration::from_secs(45));
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.write_timeout, Duration::from_secs(60));
        assert!(c.tls.is_none());
        assert!(!c.host_policy.allow_loopback, "stricter than upstream");
        assert!(!c.host_policy.allow_private);
        assert!(!c.trust_proxy && !c.jti_fail_open);
        let dev = GatewayConfig::from_env(&Env(&env(&[])), true).expect("config");
        assert!(dev.host_policy.allow_loopback, "dev allows loopback");
    }

    #[test]
    fn values_are_read() {
        let vars = env(&[
            ("GATEWAY_PORT", "9181"),
            ("STS_URL", "http://sts:8080/"),
            ("STS_TIMEOUT", "1500ms"),
            ("UPSTREAM_TIMEOUT", "1m30s"),
            ("STREAM_IDLE_TIMEOUT", "10"),
            ("READ_HEADER_TIMEOUT", "750ms"),
            ("READ_TIMEOUT", "2m"),
            ("IDLE_TIMEOUT", "1h"),
            ("WRITE_TIMEOUT", "90"),
            (
                "UPSTREAM_HOST_ALLOWLIST",
                " API.Example.com. ,, svc.internal",
            ),
            ("UPSTREAM_ALLOW_PRIVATE", "true"),
            ("MAX_REQUEST_BYTES", "1024"),
        ]);
        let c = GatewayConfig::from_env(&Env(&vars), false).expect("config");
        assert_eq!(c.port, 9181);
        assert_eq!(c.sts_url.as_deref(), Some("http://sts:8080"));
        assert_eq!(c.sts_timeout, Duration::from_millis(1500));
        assert_eq!(c.upstream_timeout, Duration::from_secs(90));
        assert_eq!(c.stream_idle_timeout, Duration::from_secs(10));
        assert_eq!(c.read_header_timeout, Duration::from_millis(750));
        assert_eq!(c.read_timeout, Duration::from_secs(120));
        assert_eq!(c.idle_timeout, Duration::from_secs(3600));
        assert_eq!(c.write_timeout, Duration::from_secs(90));
        assert_eq!(
            c.host_policy.allowlist,
            vec!["api.example.com".to_owned(), "svc.internal".to_owned()]
        );
        assert!(c.host_policy.allow_private);
        assert_eq!(c.max_request_bytes, 1024);
    }

    #[test]
    fn every_error_names_its_variable() {
        for (name, value) in [
            ("GATEWAY_PORT", "x"),
            ("STS_URL", "sts:8080"),
            ("STS_TIMEOUT", "5 parsecs"),
            ("UPSTREAM_TIMEOUT", "0s"),
            ("STREAM_IDLE_TIMEOUT", "-1s"),
            ("READ_HEADER_TIMEOUT", "s"),
            ("READ_TIMEOUT", "0s"),
            ("READ_TIMEOUT", "soon"),
            ("IDLE_TIMEOUT", "0"),
            ("IDLE_TIMEOUT", "2 minutes"),
            ("WRITE_TIMEOUT", "-5s"),
            ("WRITE_TIMEOUT", "1d"),
            ("MAX_REQUEST_BYTES", "0"),
            ("TRUST_PROXY", "maybe"),
            ("UPSTREAM_ALLOW_LOOPBACK", "yes please"),
            ("UPSTREAM_ALLOW_PRIVATE", "2"),
            ("JTI_FAIL_OPEN", "true"),
        ] {
            let vars = env(&[(name, value)]);
            let err = GatewayConfig::from_env(&Env(&vars), false).expect_err(name);
            assert!(err.to_string().contains(name), "{name}: {err}");
        }
    }

    #[test]
    fn read_timeout_must_exceed_the_sts_and_upstream_budget() {
        for vars in [
            env(&[("READ_TIMEOUT", "35s")]),
            env(&[("READ_TIMEOUT", "10s")]),
            env(&[("UPSTREAM_TIMEOUT", "40s")]),
            env(&[("STS_TIMEOUT", "15s")]),
        ] {
            let err = GatewayConfig::from_env(&Env(&vars), false).expect_err("too small");
            let text = err.to_string();
            assert!(text.starts_with("READ_TIMEOUT"), "{text}");
            assert!(text.contains("STS_TIMEOUT + UPSTREAM_TIMEOUT"), "{text}");
        }
        for vars in [
            env(&[("READ_TIMEOUT", "35001ms")]),
            env(&[
                ("STS_TIMEOUT", "1s"),
                ("UPSTREAM_TIMEOUT", "1s"),
                ("READ_TIMEOUT", "3s"),
            ]),
            env(&[("UPSTREAM_TIMEOUT", "60s"), ("READ_TIMEOUT", "70s")]),
        ] {
            GatewayConfig::from_env(&Env(&vars), false).expect("consistent");
        }
        let mut config = GatewayConfig::for_sts("http://sts");
        config.read_timeout = Duration::from_secs(1);
        assert!(config.validate().is_err(), "embedded configurations too");
    }

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let cert = fixture("tls-cert.pem");
        let key = fixture("tls-key.pem");
        let err = GatewayConfig::from_env(&Env(&env(&[("TLS_CERT_FILE", &cert)])), false)
            .expect_err("cert alone");
        assert_eq!(err.to_string(), "TLS_KEY_FILE is required but not set");
        let err = GatewayConfig::from_env(&Env(&env(&[("TLS_KEY_FILE", &key)])), false)
            .expect_err("key alone");
        assert_eq!(err.to_string(), "TLS_CERT_FILE is required but not set");
        let both = env(&[("TLS_CERT_FILE", &cert), ("TLS_KEY_FILE", &key)]);
        let c = GatewayConfig::from_env(&Env(&both), false).expect("both");
        let tls = c.tls.expect("tls on");
        assert!(format!("{tls:?}").contains("tls-cert.pem"));
    }

    #[test]
    fn unusable_tls_files_stop_start_up_naming_the_variable() {
        use caracal_core::ports::Es256;

        let dir = std::env::temp_dir().join(format!("caracal-gw-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            path.to_string_lossy().into_owned()
        };
        let cert = fixture("tls-cert.pem");
        let key = fixture("tls-key.pem");
        let cert_text = std::fs::read_to_string(&cert).expect("cert");
        let key_text = std::fs::read_to_string(&key).expect("key");
        let missing = dir.join("absent.pem").to_string_lossy().into_owned();
        let garbage = write("garbage.pem", "not a certificate\n");
        let truncated = write(
            "truncated.pem",
            &cert_text[..cert_text.find("-----END").expect("end")],
        );
        let key_only = write("key-only.pem", &key_text);
        let cert_only = write("cert-only.pem", &cert_text);
        let other_key = write(
            "other-key.pem",
            &caracal_crypto::RingEs256::new()
                .generate_pem()
                .expect("fresh key"),
        );
        for (cert_file, key_file, named, says) in [
            (&missing, &key, "TLS_CERT_FILE", "cannot read"),
            (&garbage, &key, "TLS_CERT_FILE", "no PEM CERTIFICATE"),
            (
                &truncated,
                &key,
                "TLS_CERT_FILE",
                "CERTIFICATE` PEM block has no END",
            ),
            (&key_only, &key, "TLS_CERT_FILE", "no PEM CERTIFICATE"),
            (&cert, &missing, "TLS_KEY_FILE", "cannot read"),
            (&cert, &garbage, "TLS_KEY_FILE", "holds no PEM private key"),
            (
                &cert,
                &cert_only,
                "TLS_KEY_FILE",
                "holds no PEM private key",
            ),
            (
                &cert,
                &other_key,
                "TLS_KEY_FILE",
                "is not the key of the first",
            ),
        ] {
            let vars = env(&[("TLS_CERT_FILE", cert_file), ("TLS_KEY_FILE", key_file)]);
            let err = GatewayConfig::from_env(&Env(&vars), false).expect_err(named);
            let text = err.to_string();
            assert!(text.starts_with(named), "{cert_file} {key_file}: {text}");
            assert!(text.contains(says), "{cert_file} {key_file}: {text}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn jti_fail_open_only_in_dev() {
        let vars = env(&[("JTI_FAIL_OPEN", "true")]);
        assert!(GatewayConfig::from_env(&Env(&vars), false).is_err());
        let c = GatewayConfig::from_env(&Env(&vars), true).expect("dev");
        assert!(c.jti_fail_open);
    }

    #[test]
    fn published_mode() {
        let vars = env(&[
            ("CARACAL_MODE", "stable"),
            ("STS_URL", "http://sts.example.com"),
        ]);
        let err = GatewayConfig::from_env(&Env(&vars), false).expect_err("plain http");
        assert!(err.to_string().contains("STS_URL"), "{err}");
        for internal in [
            "http://sts:8080",
            "http://localhost:8080",
            "http://127.0.0.1",
            "http://[::1]:8080",
        ] {
            let vars = env(&[("CARACAL_MODE", "rc"), ("STS_URL", internal)]);
            let c = GatewayConfig::from_env(&Env(&vars), false).expect(internal);
            assert_eq!(c.host, "0.0.0.0");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h1m1s"), Ok(Duration::from_secs(3661)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").is_ok());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn secrets_come_from_files_too() {
        let dir = std::env::temp_dir().join(format!("caracal-gw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("bearer");
        std::fs::write(&file, "metrics-secret\n").expect("write");
        let path = file.to_string_lossy().into_owned();
        let vars = env(&[("METRICS_BEARER_FILE", &path)]);
        let c = GatewayConfig::from_env(&Env(&vars), false).expect("config");
        assert_eq!(c.metrics_bearer.as_deref(), Some("metrics-secret"));
        let both = env(&[("METRICS_BEARER", "x"), ("METRICS_BEARER_FILE", &path)]);
        assert!(GatewayConfig::from_env(&Env(&both), false).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
