//! `cargo xtask up` / `cargo xtask down`: every service as its own `caracal serve <svc>` process
//! on Postgres + Redis, the way a deployment runs them, with one command and no Docker.
//!
//! The cluster lives in a state directory (`CARACAL_CLUSTER_DIR`, default
//! `<target>/caracal-cluster`, mode 0700): `keys.env` holds the secrets generated on the first
//! `up` (mode 0600) and reused by every later one, so what was sealed under `SECRET_STORE_KEK`
//! stays readable across restarts; `<svc>.log` is a service's output, `<svc>.pid` its process
//! while it runs, `audit-replay/<svc>` its audit spool and `cluster.env` the `export` lines of
//! the running cluster.
//!
//! The services are started detached (own process group, stdin closed, output to their log), so
//! they outlive the xtask process; `down` finds them again through the pid files.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One service of the cluster: `caracal serve <name>`, listening on `<prefix>_HOST`:`<prefix>_PORT`.
struct Service {
    /// The `caracal serve` argument, and the stem of the service's log and pid files.
    name: &'static str,
    /// How the summary names it.
    label: &'static str,
    /// The prefix of its listen-address variables (`API` → `API_HOST` / `API_PORT`).
    prefix: &'static str,
    default_port: u16,
    /// The variable the SDKs (and the printed `export` lines) use for its URL.
    url_var: &'static str,
}

/// The services `up` starts, in this order. A new service is one line here (every service gets
/// the whole environment, so the others learn its address from `<PREFIX>_HOST/PORT`).
const SERVICES: &[Service] = &[
    Service {
        name: "api",
        label: "API",
        prefix: "API",
        default_port: 3000,
        url_var: "CARACAL_API_URL",
    },
    Service {
        name: "sts",
        label: "STS",
        prefix: "STS",
        default_port: 8080,
        url_var: "CARACAL_STS_URL",
    },
    Service {
        name: "coordinator",
        label: "Coordinator",
        prefix: "COORDINATOR",
        default_port: 4000,
        url_var: "CARACAL_COORDINATOR_URL",
    },
    Service {
        name: "gateway",
        label: "Gateway",
        prefix: "GATEWAY",
        default_port: 8081,
        url_var: "CARACAL_GATEWAY_URL",
    },
    Service {
        name: "audit",
        label: "Audit",
        prefix: "AUDIT",
        default_port: 9090,
        url_var: "CARACAL_AUDIT_URL",
    },
];

/// How a generated secret looks.
enum Secret {
    /// 32 random bytes as 64 hex characters (the KEK and the HMAC keys).
    Hex,
    /// A bearer token: the prefix, then 24 random bytes in hex.
    Token(&'static str),
}

/// The secrets `keys.env` holds, generated once per state directory. A name missing from an
/// existing file (added here later) is generated then; an existing value is never replaced.
const SECRETS: &[(&str, Secret)] = &[
    ("CARACAL_ADMIN_TOKEN", Secret::Token("cat_")),
    ("SECRET_STORE_KEK", Secret::Hex),
    ("STREAMS_HMAC_KEY", Secret::Hex),
    ("AUDIT_HMAC_KEY", Secret::Hex),
    ("GATEWAY_STS_HMAC_KEY", Secret::Hex),
    ("IDEMPOTENCY_HMAC_KEY", Secret::Hex),
    ("CARACAL_COORDINATOR_TOKEN", Secret::Token("cct_")),
    ("STS_ADMIN_TOKEN", Secret::Token("sat_")),
    ("AUDIT_ADMIN_TOKEN", Secret::Token("aat_")),
];

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/caracal_local";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// How long the services together get to answer `/health` after they are started.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `down` waits after SIGTERM before it sends SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of a service's log shown when it fails to come up.
const LOG_TAIL_LINES: usize = 40;

/// The state directory: `CARACAL_CLUSTER_DIR`, else `<target>/caracal-cluster`.
fn state_dir(target_dir: &Path) -> Result<PathBuf, String> {
    match std::env::var_os("CARACAL_CLUSTER_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                Ok(dir)
            } else {
                Ok(std::env::current_dir()
                    .map_err(|e| format!("cannot read the current directory: {e}"))?
                    .join(dir))
            }
        }
        None => Ok(target_dir.join("caracal-cluster")),
    }
}

/// `cargo xtask up [--release]`.
pub fn up(cargo: &dyn Fn() -> Command, target_dir: &Path, args: &[String]) -> Result<(), String> {
    let mut release = false;
    for arg in args {
        match arg.as_str() {
            "--release" => release = true,
            other => {
                return Err(format!(
                    "unknown argument `{other}` to `up`; it takes only `--release`"
                ))
            }
        }
    }
    let state = state_dir(target_dir)?;
    make_private_dir(&state)?;

    let running = running_services(&state)?;
    if !running.is_empty() {
        return Err(format!(
            "a cluster is already running from {} ({}); `cargo xtask down` stops it",
            state.display(),
            describe_pids(&running)
        ));
    }

    let database_url = env_or("DATABASE_URL", DEFAULT_DATABASE_URL);
    let redis_url = env_or("REDIS_URL", DEFAULT_REDIS_URL);
    let listeners = listen_addresses()?;
    // Fail fast, before a build, on what the build cannot fix.
    check_ports_free(&listeners)?;
    check_redis(&redis_url)?;

    let profile = if release { "release" } else { "debug" };
    println!("building caracal ({profile})…");
    let mut build = cargo();
    build.args(["build", "--package", "caracal"]);
    if release {
        build.arg("--release");
    }
    let status = build
        .status()
        .map_err(|e| format!("cannot run cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build --package caracal failed ({status})"));
    }
    let binary = target_dir
        .join(profile)
        .join(format!("caracal{}", std::env::consts::EXE_SUFFIX));
    if !binary.is_file() {
        return Err(format!(
            "{} was not produced by the build",
            binary.display()
        ));
    }

    ensure_database(&database_url)?;
    let keys = load_or_generate_keys(&state.join("keys.env"))?;

    let env = service_env(&database_url, &redis_url, &listeners, &keys);
    println!("applying migrations…");
    let status = Command::new(&binary)
        .arg("migrate")
        .envs(&env)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {} migrate: {e}", binary.display()))?;
    if !status.success() {
        return Err(format!(
            "`caracal migrate` failed ({status}); is Postgres reachable at DATABASE_URL?"
        ));
    }

    // Another process may have taken a port while we built.
    check_ports_free(&listeners)?;
    let mut started: Vec<(&Service, Child)> = Vec::new();
    for (service, listen) in SERVICES.iter().zip(&listeners) {
        match spawn(&binary, service, listen, &env, &state) {
            Ok(child) => started.push((service, child)),
            Err(error) => {
                stop_started(&state, &mut started);
                return Err(error);
            }
        }
    }
    if let Err(error) = wait_healthy(&state, &mut started, &listeners) {
        stop_started(&state, &mut started);
        return Err(error);
    }

    let mut exports = vec![];
    println!(
        "\ncaracal cluster is up ({profile} build; state, keys and logs in {}):\n",
        state.display()
    );
    for (service, listen) in SERVICES.iter().zip(&listeners) {
        let pid = started
            .iter()
            .find(|(s, _)| s.name == service.name)
            .map(|(_, child)| child.id())
            .unwrap_or_default();
        println!(
            "  {:<12} {:<28} pid {pid:<8} log {}",
            service.label,
            listen.url(),
            log_path(&state, service.name).display()
        );
        exports.push(format!("export {}={}", service.url_var, listen.url()));
    }
    let admin_token = keys
        .get("CARACAL_ADMIN_TOKEN")
        .map(String::as_str)
        .unwrap_or_default();
    println!("\n  admin token  {admin_token}");
    exports.push(format!("export CARACAL_ADMIN_TOKEN={admin_token}"));
    let exports = exports.join("\n") + "\n";
    write_private(&state.join("cluster.env"), &exports)?;
    println!(
        "\npoint the SDKs at it (also in {}):\n\n{exports}\n`cargo xtask down` stops it.",
        state.join("cluster.env").display()
    );
    Ok(())
}

/// `cargo xtask down`: SIGTERM every recorded service, SIGKILL what is left after 10 s.
pub fn down(target_dir: &Path, args: &[String]) -> Result<(), String> {
    if let Some(arg) = args.first() {
        return Err(format!("unknown argument `{arg}` to `down`; it takes none"));
    }
    let state = state_dir(target_dir)?;
    let running = running_services(&state)?;
    if running.is_empty() {
        println!("no caracal cluster is running from {}", state.display());
        let _ = fs::remove_file(state.join("cluster.env"));
        return Ok(());
    }
    println!("stopping {}…", describe_pids(&running));
    let killed = stop(&running);
    for (name, _) in &running {
        let _ = fs::remove_file(pid_path(&state, name));
    }
    let _ = fs::remove_file(state.join("cluster.env"));
    let left: Vec<_> = running
        .iter()
        .filter(|(_, pid)| alive(*pid))
        .cloned()
        .collect();
    if !left.is_empty() {
        return Err(format!(
            "still running after SIGKILL: {}",
            describe_pids(&left)
        ));
    }
    if killed.is_empty() {
        println!("stopped");
    } else {
        println!(
            "stopped ({} ignored SIGTERM for {} s and were killed)",
            killed.join(", "),
            STOP_GRACE.as_secs()
        );
    }
    Ok(())
}

/// Where one service listens, and the URL a client on this machine reaches it at.
struct Listen {
    host: String,
    port: u16,
}

impl Listen {
    fn url(&self) -> String {
        let host = match self.host.as_str() {
            "0.0.0.0" | "::" | "[::]" => "127.0.0.1",
            host => host,
        };
        if host.contains(':') && !host.starts_with('[') {
            format!("http://[{host}]:{}", self.port)
        } else {
            format!("http://{host}:{}", self.port)
        }
    }

    /// The host as `TcpListener::bind` and `connect` take it.
    fn bind_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }
}

/// Every service's listen address: `<PREFIX>_HOST` (default 127.0.0.1) and `<PREFIX>_PORT`
/// (default: the service's standard port).
fn listen_addresses() -> Result<Vec<Listen>, String> {
    let mut listens: Vec<Listen> = Vec::new();
    for service in SERVICES {
        let port_var = format!("{}_PORT", service.prefix);
        let port = match std::env::var(&port_var).ok().filter(|v| !v.is_empty()) {
            Some(value) => value
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{port_var}={value:?} is not a port number (1-65535)"))?,
            None => service.default_port,
        };
        let host = env_or(&format!("{}_HOST", service.prefix), "127.0.0.1");
        if let Some((other, _)) = SERVICES
            .iter()
            .zip(&listens)
            .find(|(_, listen)| listen.port == port)
        {
            return Err(format!(
                "{port_var}={port} is also the {} port; give each service its own",
                other.label
            ));
        }
        listens.push(Listen { host, port });
    }
    Ok(listens)
}

fn check_ports_free(listeners: &[Listen]) -> Result<(), String> {
    for (service, listen) in SERVICES.iter().zip(listeners) {
        if let Err(error) = TcpListener::bind((listen.bind_host(), listen.port)) {
            return Err(format!(
                "cannot use port {} for the {} ({}:{}): {error}; stop what holds it or choose another with {}_PORT=…",
                listen.port,
                service.label,
                listen.host,
                listen.port,
                service.prefix
            ));
        }
    }
    Ok(())
}

/// A clear message when Redis is down, instead of every service failing one by one.
fn check_redis(redis_url: &str) -> Result<(), String> {
    let Some(rest) = redis_url
        .strip_prefix("redis://")
        .or_else(|| redis_url.strip_prefix("rediss://"))
    else {
        return Ok(()); // a unix socket or a scheme we do not parse: the services will say
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let address = if host_port.is_empty() {
        "127.0.0.1:6379".to_owned()
    } else if host_port.ends_with(']') || !host_port.contains(':') {
        format!("{host_port}:6379")
    } else {
        host_port.to_owned()
    };
    let reachable = address
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(3)).is_ok());
    if reachable {
        Ok(())
    } else {
        Err(format!(
            "Redis at {address} (REDIS_URL) is unreachable; start it or set REDIS_URL"
        ))
    }
}

/// Creates the database DATABASE_URL names if it does not exist, with `psql` against the
/// server's `postgres` database. Without `psql` the database must already exist.
fn ensure_database(database_url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|s| database_url.strip_prefix(s).map(|rest| (*s, rest)))
    else {
        println!("DATABASE_URL is not a postgres:// URL; not creating its database");
        return Ok(());
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (name, query) = match path.split_once('?') {
        Some((name, query)) => (name, format!("?{query}")),
        None => (path, String::new()),
    };
    let host = authority.rsplit('@').next().unwrap_or(authority);
    if name.is_empty() {
        return Ok(());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        println!(
            "not creating database {name:?} (only [A-Za-z0-9_-] names are created); it must exist"
        );
        return Ok(());
    }
    let maintenance = format!("{scheme}{authority}/postgres{query}");
    let exists = match psql(
        &maintenance,
        &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
    ) {
        Ok(out) => out.trim() == "1",
        Err(PsqlError::Missing) => {
            println!("psql is not installed; assuming database {name} exists on {host}");
            return Ok(());
        }
        Err(PsqlError::Failed(message)) => {
            return Err(format!(
                "cannot reach Postgres at {host} (DATABASE_URL): {message}"
            ))
        }
    };
    if exists {
        return Ok(());
    }
    psql(&maintenance, &format!("CREATE DATABASE \"{name}\"")).map_err(|e| match e {
        PsqlError::Missing => "psql disappeared".to_owned(),
        PsqlError::Failed(message) => format!("cannot create database {name} on {host}: {message}"),
    })?;
    println!("created database {name} on {host}");
    Ok(())
}

enum PsqlError {
    Missing,
    Failed(String),
}

fn psql(url: &str, sql: &str) -> Result<String, PsqlError> {
    let output = Command::new("psql")
        .args(["-X", "-qtA", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => PsqlError::Missing,
            _ => PsqlError::Failed(format!("cannot run psql: {e}")),
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(PsqlError::Failed(
            String::from_utf8_lossy(&output.stderr)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        ))
    }
}

/// Reads `keys.env`, generating (and saving) whatever it lacks.
fn load_or_generate_keys(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let mut keys = BTreeMap::new();
    match fs::read_to_string(path) {
        Ok(text) => {
            for line in text.lines() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (name, value) = line
                    .split_once('=')
                    .ok_or_else(|| format!("{}: malformed line {line:?}", path.display()))?;
                keys.insert(name.trim().to_owned(), value.trim().to_owned());
            }
            let mode = fs::metadata(path)
                .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                println!("{} was readable by others; making it 0600", path.display());
                fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                    .map_err(|e| format!("cannot chmod {}: {e}", path.display()))?;
            }
        }
        Err(error) if error.kind() == ErrorKind::NotFound => {}
        Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
    }
    let mut generated = Vec::new();
    for (name, kind) in SECRETS {
        if keys.contains_key(*name) {
            continue;
        }
        let value = match kind {
            Secret::Hex => random_hex(32)?,
            Secret::Token(prefix) => format!("{prefix}{}", random_hex(24)?),
        };
        keys.insert((*name).to_owned(), value);
        generated.push(*name);
    }
    if !generated.is_empty() {
        let mut text = String::from(
            "# Secrets of the local caracal cluster (`cargo xtask up`), generated once and reused.\n\
             # SECRET_STORE_KEK opens every sealed secret in the database: losing it loses them.\n",
        );
        for (name, value) in &keys {
            text.push_str(&format!("{name}={value}\n"));
        }
        write_private(path, &text)?;
        println!("generated {} into {}", generated.join(", "), path.display());
    }
    Ok(keys)
}

/// The environment every service gets on top of this process's own: the database, Redis, the
/// secrets, every service's address, the issuer and where the STS is. (`spawn` adds the
/// service's own `AUDIT_REPLAY_DIR`.)
fn service_env(
    database_url: &str,
    redis_url: &str,
    listeners: &[Listen],
    keys: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = keys.clone();
    env.insert("DATABASE_URL".into(), database_url.into());
    env.insert("REDIS_URL".into(), redis_url.into());
    let mut sts_url = String::new();
    for (service, listen) in SERVICES.iter().zip(listeners) {
        env.insert(format!("{}_HOST", service.prefix), listen.host.clone());
        env.insert(format!("{}_PORT", service.prefix), listen.port.to_string());
        if service.name == "sts" {
            sts_url = listen.url();
        }
    }
    env.insert("ISSUER_URL".into(), sts_url.clone());
    env.insert("STS_URL".into(), sts_url);
    // A local cluster is for development: its upstreams usually run on this machine too.
    env.insert(
        "UPSTREAM_ALLOW_LOOPBACK".into(),
        env_or("UPSTREAM_ALLOW_LOOPBACK", "true"),
    );
    env
}

fn spawn(
    binary: &Path,
    service: &Service,
    listen: &Listen,
    env: &BTreeMap<String, String>,
    state: &Path,
) -> Result<Child, String> {
    let log = log_path(state, service.name);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    writeln!(
        file,
        "\n===== cargo xtask up: caracal serve {} on {} (unix time {stamp}) =====",
        service.name,
        listen.url()
    )
    .map_err(|e| format!("cannot write {}: {e}", log.display()))?;
    let stderr = file
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    // One replay spool per publisher.
    let replay = state.join("audit-replay").join(service.name);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&replay)
        .map_err(|e| format!("cannot create {}: {e}", replay.display()))?;
    let child = Command::new(binary)
        .args(["serve", service.name])
        .envs(env)
        .env("AUDIT_REPLAY_DIR", &replay)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(stderr)
        // Its own process group: a Ctrl-C in the terminal that ran `up` does not reach it, and
        // it outlives this process.
        .process_group(0)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {} serve {}: {e}",
                binary.display(),
                service.name
            )
        })?;
    write_private(&pid_path(state, service.name), &format!("{}\n", child.id()))?;
    Ok(child)
}

/// Waits until every started service answers `GET /health` with 200, or one exits, or time runs
/// out; the error carries the failing service's log tail.
fn wait_healthy(
    state: &Path,
    started: &mut [(&Service, Child)],
    listeners: &[Listen],
) -> Result<(), String> {
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    let mut pending: Vec<usize> = (0..started.len()).collect();
    let mut last: BTreeMap<usize, String> = BTreeMap::new();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for index in pending {
            let (service, child) = &mut started[index];
            let listen = &listeners[index];
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "caracal serve {} exited ({status}) before answering /health; the end of {}:\n{}",
                    service.name,
                    log_path(state, service.name).display(),
                    log_tail(&log_path(state, service.name))
                ));
            }
            match health(listen) {
                Ok(200) => println!("{} is healthy at {}", service.label, listen.url()),
                Ok(status) => {
                    last.insert(index, format!("HTTP {status}"));
                    still.push(index);
                }
                Err(error) => {
                    last.insert(index, error);
                    still.push(index);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let index = pending[0];
            let service = started[index].0;
            return Err(format!(
                "the {} did not answer GET {}/health with 200 within {} s (last: {}); the end of {}:\n{}",
                service.label,
                listeners[index].url(),
                HEALTH_TIMEOUT.as_secs(),
                last.get(&index).map(String::as_str).unwrap_or("no answer"),
                log_path(state, service.name).display(),
                log_tail(&log_path(state, service.name))
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One `GET /health`; returns the status code.
fn health(listen: &Listen) -> Result<u16, String> {
    let address = (listen.bind_host(), listen.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", listen.host))?
        .next()
        .ok_or_else(|| format!("{} resolves to nothing", listen.host))?;
    let timeout = Duration::from_secs(2);
    let mut stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nhost: {}:{}\r\nconnection: close\r\n\r\n",
        listen.host, listen.port
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(format!("read: {e}")),
        }
        if head[..read].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..read]);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))
}

/// Stops what this `up` started (it failed part-way), reaps it and removes its pid files.
fn stop_started(state: &Path, started: &mut Vec<(&Service, Child)>) {
    let pids: Vec<(String, u32)> = started
        .iter()
        .map(|(s, child)| (s.name.to_owned(), child.id()))
        .collect();
    if !pids.is_empty() {
        println!("stopping what was started: {}", describe_pids(&pids));
    }
    stop(&pids);
    for (service, mut child) in started.drain(..) {
        let _ = child.kill();
        let _ = child.wait();
        let _ = fs::remove_file(pid_path(state, service.name));
    }
}

/// SIGTERM, up to [`STOP_GRACE`] for the processes to go, then SIGKILL. Returns the names of
/// the services that had to be killed.
fn stop(pids: &[(String, u32)]) -> Vec<String> {
    for (_, pid) in pids {
        signal("TERM", *pid);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline && pids.iter().any(|(_, pid)| alive(*pid)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut killed = Vec::new();
    for (name, pid) in pids {
        if alive(*pid) {
            signal("KILL", *pid);
            killed.push(name.clone());
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && pids.iter().any(|(_, pid)| alive(*pid)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    killed
}

fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The services whose pid file names a live `caracal` process; stale pid files are removed.
fn running_services(state: &Path) -> Result<Vec<(String, u32)>, String> {
    let entries = match fs::read_dir(state) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(format!("cannot read {}: {error}", state.display())),
    };
    let mut running = Vec::new();
    // Every pid file, not only SERVICES': a service dropped from the list still gets stopped.
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("pid") {
            continue;
        }
        let Some(name) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        let pid = fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        match pid {
            Some(pid) if alive(pid) && is_caracal(pid) => running.push((name, pid)),
            _ => {
                let _ = fs::remove_file(&path);
            }
        }
    }
    running.sort_by_key(|(name, _)| {
        SERVICES
            .iter()
            .position(|s| s.name == name)
            .unwrap_or(usize::MAX)
    });
    Ok(running)
}

/// Whether `pid` is a running process. A zombie (exited, not yet reaped by whoever inherited
/// it) counts as gone.
fn alive(pid: u32) -> bool {
    if Path::new("/proc/self/stat").exists() {
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // The state follows the parenthesised command name, which may itself hold ") ".
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("");
        return !matches!(state, "Z" | "X" | "x");
    }
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `pid` runs `caracal serve` (so a pid reused after a reboot is never signalled).
/// Without /proc it cannot tell and trusts the pid file.
fn is_caracal(pid: u32) -> bool {
    if !Path::new("/proc/self/cmdline").exists() {
        return true;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0).map(String::from_utf8_lossy);
    let program = args.next().unwrap_or_default();
    let is_binary = Path::new(program.as_ref())
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("caracal"));
    is_binary && args.next().is_some_and(|a| a == "serve")
}

fn describe_pids(pids: &[(String, u32)]) -> String {
    pids.iter()
        .map(|(name, pid)| format!("{name} pid {pid}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn log_path(state: &Path, name: &str) -> PathBuf {
    state.join(format!("{name}.log"))
}

fn pid_path(state: &Path, name: &str) -> PathBuf {
    state.join(format!("{name}.pid"))
}

/// The last [`LOG_TAIL_LINES`] lines of a log.
fn log_tail(path: &Path) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return format!("({} cannot be read)", path.display());
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(length.saturating_sub(16_384)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..]
        .iter()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn make_private_dir(dir: &Path) -> Result<(), String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // An existing directory keeps its mode under `create`; the keys inside need it private.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot chmod {}: {e}", dir.display()))
}

/// Writes a file only its owner can read, replacing it atomically.
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    let temporary = path.with_extension("tmp");
    let _ = fs::remove_file(&temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(|e| format!("cannot create {}: {e}", temporary.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", temporary.display()))?;
    fs::rename(&temporary, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}
