//! `cargo xtask bench`, the Gateway part (issue #5): governed requests under load.
//!
//! A governed request is what the SDK's `application_transport` sends per call: one
//! `use=gateway` mandate minted at the STS (`POST /oauth/2/token` with the application's
//! credential, the target Session and the Delegation), then one request through the Gateway with
//! that mandate and `X-Caracal-Resource`, which the Gateway verifies, burns (`jti`), exchanges
//! at the STS for the provider credential and forwards to the upstream, relaying the upstream's
//! 200.
//!
//! Starts the release binary (`caracal serve all`) on a fresh Postgres database and Redis, and
//! in this process a minimal keep-alive HTTP/1.1 upstream (a thread per connection, a fixed
//! 200 for the provider credential and 401 for anything else, so a governed 200 proves the
//! Gateway swapped the mandate for the credential). Seeds through the admin API a zone, a
//! managed application, a bearer-token provider, a resource whose upstream is the local one and
//! an activated grants policy; provisions like the SDK (a lifecycle mandate, two task Sessions
//! at the Coordinator, a Delegation between them constrained to the resource).
//!
//! Then closed loops on loopback with 1, 4 and 16 workers, each worker with its own keep-alive
//! connections, a fixed number of requests per round ([`ROUNDS`] rounds after a warm-up round):
//! - governed requests (mint + Gateway hop);
//! - baselines in the same run: the same loop straight to the upstream, and through a plain
//!   pass-through proxy (a minimal blocking HTTP/1.1 forwarding proxy in this process: it parses
//!   each request and response head and relays them unchanged over one keep-alive upstream
//!   connection per client connection, i.e. one extra loopback HTTP hop and nothing else).
//!
//! Reported per run: req/s, p50/p95/p99 across all workers' samples, the server's CPU per
//! request (`/proc/<pid>/stat`), the whole machine's busy CPU per request (`/proc/stat`, client,
//! upstream, Postgres and Redis included), and for the governed loop the Postgres transactions
//! and Redis commands per request, with the socket reads the commands arrived in (round trips;
//! `pg_stat_database`, `INFO stats`), and the size of the audit replay spool afterwards
//! (evidence spilled to disk because the publisher fell behind).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::{
    self, connect_healthy, free_port, hex_key, json_field, percentile, psql, us, Cleanup, Conn,
    ROUNDS,
};
use crate::bench_sts::{cpu_time, field, form_escape, json_string, mint};

/// Worker counts (closed loop, one request in flight per worker).
const WORKERS: [usize; 3] = [1, 4, 16];
/// Governed requests per round, shared out over the workers.
const GOVERNED_PER_ROUND: usize = 960;
/// Baseline requests per round (direct and pass-through), shared out over the workers.
const BASELINE_PER_ROUND: usize = 4_800;
/// The path every loop requests.
const PATH: &str = "/v1/items";
/// Upstream's published figures: governed requests per second per vCPU, and p50 range (ms).
const UPSTREAM_PER_VCPU: f64 = 33.0;
const UPSTREAM_P50_MS: (f64, f64) = (17.0, 24.0);
/// The issue's targets: governed requests per second per core, and p50 (ms).
const TARGET_PER_CORE: f64 = 1_000.0;
const TARGET_P50_MS: f64 = 2.0;

const UPSTREAM_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}";
const UPSTREAM_DENIED: &[u8] =
    b"HTTP/1.1 401 Unauthorized\r\ncontent-type: text/plain\r\ncontent-length: 12\r\n\r\nunauthorized";

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", form_escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// One `POST` that must answer `expect`; returns the body.
fn post(
    conn: &mut Conn,
    token: &str,
    path: &str,
    body: &str,
    expect: u16,
) -> Result<String, String> {
    let (status, text) = conn.request("POST", path, Some(token), Some(body))?;
    if status != expect {
        return Err(format!("POST {path} answered {status}: {text}"));
    }
    Ok(text)
}

/// Reads one HTTP/1.1 message head into `head` (request or status line plus headers, with the
/// blank line); returns its `content-length` (0 without one), or `None` at end of stream.
fn read_head(
    reader: &mut BufReader<TcpStream>,
    head: &mut String,
) -> std::io::Result<Option<usize>> {
    head.clear();
    let mut length = 0;
    loop {
        let start = head.len();
        if reader.read_line(head)? == 0 {
            return Ok(None);
        }
        let line = head[start..].trim_end();
        if line.is_empty() {
            if start == 0 {
                // A stray line break between messages.
                head.clear();
                continue;
            }
            return Ok(Some(length));
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
}

/// The local upstream: 200 with a small JSON body when the request carries `credential` as its
/// `Authorization`, 401 otherwise. A thread per connection, keep-alive. Returns its port.
fn start_upstream(credential: String) -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("upstream: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let credential = credential.clone();
            std::thread::spawn(move || {
                let _ = serve_upstream(stream, &credential);
            });
        }
    });
    Ok(port)
}

fn serve_upstream(stream: TcpStream, credential: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    let mut sink = Vec::new();
    while let Some(length) = read_head(&mut reader, &mut head)? {
        sink.resize(length, 0);
        reader.read_exact(&mut sink)?;
        let authorized = head.lines().any(|line| {
            line.split_once(':').is_some_and(|(name, value)| {
                name.eq_ignore_ascii_case("authorization") && value.trim() == credential
            })
        });
        writer.write_all(if authorized {
            UPSTREAM_OK
        } else {
            UPSTREAM_DENIED
        })?;
    }
    Ok(())
}

/// The pass-through baseline: a minimal HTTP/1.1 forwarding proxy to `upstream` (thread per
/// client connection, one keep-alive upstream connection each, heads and bodies relayed
/// unchanged). Returns its port.
fn start_proxy(upstream: u16) -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("proxy: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = serve_proxy(stream, upstream);
            });
        }
    });
    Ok(port)
}

fn serve_proxy(client: TcpStream, upstream: u16) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    server.set_nodelay(true)?;
    let (mut client_out, mut server_out) = (client.try_clone()?, server.try_clone()?);
    let (mut client_in, mut server_in) = (BufReader::new(client), BufReader::new(server));
    let (mut head, mut body, mut out) = (String::new(), Vec::new(), Vec::new());
    // Reads one message (head and body) from `from` and writes it to `to` in one write.
    let mut relay = |from: &mut BufReader<TcpStream>, to: &mut TcpStream| {
        let Some(length) = read_head(from, &mut head)? else {
            return Ok(false);
        };
        body.resize(length, 0);
        from.read_exact(&mut body)?;
        out.clear();
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&body);
        to.write_all(&out)?;
        Ok::<_, std::io::Error>(true)
    };
    while relay(&mut client_in, &mut server_out)? && relay(&mut server_in, &mut client_out)? {}
    Ok(())
}

/// Busy CPU of the whole machine so far (every state but idle and iowait), from `/proc/stat`.
fn machine_busy() -> Result<Duration, String> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| format!("/proc/stat: {e}"))?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .ok_or("unexpected /proc/stat")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    if ticks.len() < 5 {
        return Err("unexpected /proc/stat".into());
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = ticks.iter().take(8).sum::<u64>() - ticks[3] - ticks[4];
    Ok(Duration::from_millis(busy * 10))
}

/// Committed plus rolled-back transactions of `database` so far (`pg_stat_database`; the
/// counters are flushed by each backend at most once a second, hence the pause before reading).
fn pg_transactions(database: &str) -> Result<u64, String> {
    let output = Command::new("psql")
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qtAc",
        ])
        .arg(format!(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '{database}'"
        ))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| "pg_stat_database has no row for the bench database".to_string())
}

/// Bytes under `dir`, recursively: the audit replay spool, where evidence goes when the
/// publisher's buffer is full.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// Commands Redis has processed so far, and the socket reads it took them in: round trips,
/// as pipelined commands arrive in one read (`INFO stats`, every client).
fn redis_commands() -> Result<(u64, u64), String> {
    let stream = TcpStream::connect(("127.0.0.1", 6379)).map_err(|e| format!("redis: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(b"INFO stats\r\n")
        .map_err(|e| format!("redis: {e}"))?;
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| format!("redis: {e}"))?;
    let length: usize = line
        .trim_end()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("redis answered INFO with {line:?}"))?;
    let mut text = vec![0; length];
    reader
        .read_exact(&mut text)
        .map_err(|e| format!("redis: {e}"))?;
    let text = String::from_utf8_lossy(&text);
    let stat = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("INFO stats without {name}"))
    };
    Ok((
        stat("total_commands_processed")?,
        stat("total_reads_processed")?,
    ))
}

/// One closed-loop measurement.
struct Run {
    workers: usize,
    /// Requests per second per round, sorted.
    rates: Vec<f64>,
    /// Per-round percentiles across every worker's samples, each sorted across rounds.
    p50: Vec<Duration>,
    p95: Vec<Duration>,
    p99: Vec<Duration>,
    /// p50 of the first stage (the mint of a governed request) per round, sorted.
    stage_p50: Vec<Duration>,
    /// The server's CPU per request per round (µs), sorted (`None`: no server involved).
    server_cpu: Option<Vec<f64>>,
    /// The machine's busy CPU per request per round (µs), sorted.
    machine_cpu: Vec<f64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.rates[ROUNDS / 2]
    }
    fn p50(&self) -> Duration {
        self.p50[ROUNDS / 2]
    }
}

/// `call` returns the duration of its first stage (zero when it has one).
type Call<'a, S> = &'a (dyn Fn(&mut S) -> Result<Duration, String> + Sync);

/// Closed loop on every worker state at once: a warm-up round, then [`ROUNDS`] rounds of
/// `per_worker` calls per worker.
fn closed_loop<S: Send>(
    states: &mut [S],
    per_worker: usize,
    server: Option<u32>,
    call: Call<'_, S>,
) -> Result<Run, String> {
    let mut run = Run {
        workers: states.len(),
        rates: Vec::new(),
        p50: Vec::new(),
        p95: Vec::new(),
        p99: Vec::new(),
        stage_p50: Vec::new(),
        server_cpu: server.map(|_| Vec::new()),
        machine_cpu: Vec::new(),
    };
    for round in 0..=ROUNDS {
        let server_before = server.map(cpu_time).transpose()?;
        let machine_before = machine_busy()?;
        let started = Instant::now();
        let results: Vec<Result<Vec<(Duration, Duration)>, String>> = std::thread::scope(|scope| {
            let workers: Vec<_> = states
                .iter_mut()
                .map(|state| {
                    scope.spawn(move || {
                        let mut samples = Vec::with_capacity(per_worker);
                        for _ in 0..per_worker {
                            let began = Instant::now();
                            let stage = call(state)?;
                            samples.push((began.elapsed(), stage));
                        }
                        Ok(samples)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err("a client thread panicked".into()))
                })
                .collect()
        });
        let elapsed = started.elapsed();
        let machine = machine_busy()?.saturating_sub(machine_before);
        let server_used = match (server, server_before) {
            (Some(pid), Some(before)) => Some(cpu_time(pid)?.saturating_sub(before)),
            _ => None,
        };
        let mut totals = Vec::with_capacity(states.len() * per_worker);
        let mut stages = Vec::with_capacity(states.len() * per_worker);
        for result in results {
            for (total, stage) in result? {
                totals.push(total);
                stages.push(stage);
            }
        }
        if round == 0 {
            continue;
        }
        let n = totals.len() as f64;
        totals.sort();
        stages.sort();
        run.rates.push(n / elapsed.as_secs_f64());
        run.p50.push(percentile(&totals, 0.50));
        run.p95.push(percentile(&totals, 0.95));
        run.p99.push(percentile(&totals, 0.99));
        run.stage_p50.push(percentile(&stages, 0.50));
        if let (Some(cpu), Some(used)) = (run.server_cpu.as_mut(), server_used) {
            cpu.push(us(used) / n);
        }
        run.machine_cpu.push(us(machine) / n);
    }
    run.rates.sort_by(f64::total_cmp);
    for v in [&mut run.p50, &mut run.p95, &mut run.p99, &mut run.stage_p50] {
        v.sort();
    }
    if let Some(cpu) = run.server_cpu.as_mut() {
        cpu.sort_by(f64::total_cmp);
    }
    run.machine_cpu.sort_by(f64::total_cmp);
    Ok(run)
}

/// A governed request's connections: one to the STS, one to the Gateway.
struct Governed {
    sts: Conn,
    gateway: Conn,
}

/// Everything a governed request needs.
struct Setup {
    mint_form: String,
    resource: String,
}

/// One governed request: the `use=gateway` mint, then the Gateway hop; returns the mint's time.
fn governed(worker: &mut Governed, setup: &Setup) -> Result<Duration, String> {
    let began = Instant::now();
    let (status, text) = mint(&mut worker.sts, &setup.mint_form)?;
    let minted = began.elapsed();
    if status != 200 {
        return Err(format!("the gateway mint answered {status}: {text}"));
    }
    let mandate = json_field(&text, "access_token").ok_or("mint without access_token")?;
    let (status, text) = worker.gateway.request_with(
        "GET",
        PATH,
        Some(mandate),
        &[("x-caracal-resource", &setup.resource)],
    )?;
    if status != 200 {
        return Err(format!("the Gateway answered {status}: {text}"));
    }
    Ok(minted)
}

/// One request with the provider's bearer token to `conn` (the upstream or the proxy).
fn plain(conn: &mut Conn, bearer: &str) -> Result<Duration, String> {
    let (status, text) = conn.request("GET", PATH, Some(bearer), None)?;
    if status != 200 {
        return Err(format!("the baseline answered {status}: {text}"));
    }
    Ok(Duration::ZERO)
}

/// Seeds the zone and provisions the Session pair and Delegation the way the SDK's
/// `application_transport` does; returns what a governed request needs.
fn provision(
    api: &mut Conn,
    sts: &mut Conn,
    coordinator: &mut Conn,
    token: &str,
    upstream: u16,
    provider_secret: &str,
) -> Result<Setup, String> {
    let zone = field(
        &post(api, token, "/v1/zones", r#"{"name":"gateway-bench"}"#, 201)?,
        "id",
    )?;
    let base = format!("/v1/zones/{zone}");
    let provider = field(
        &post(
            api,
            token,
            &format!("{base}/providers"),
            &format!(
                r#"{{"name":"upstream","kind":"bearer_token","config_json":{{"bearer_token":{}}}}}"#,
                json_string(provider_secret)
            ),
            201,
        )?,
        "id",
    )?;
    let resource = "resource://gateway-bench".to_owned();
    let (read, write) = ("gw:read", "gw:write");
    post(
        api,
        token,
        &format!("{base}/resources"),
        &format!(
            r#"{{"name":"gateway bench","identifier":"{resource}","scopes":["{read}","{write}"],"upstream_url":"http://127.0.0.1:{upstream}","credential_provider_id":"{provider}","operation_enforcement":"transport_uniform"}}"#
        ),
        201,
    )?;
    let app = post(
        api,
        token,
        &format!("{base}/applications"),
        r#"{"name":"gateway-bench-agent","registration_method":"managed"}"#,
        201,
    )?;
    let (app, secret) = (field(&app, "id")?, field(&app, "client_secret")?);
    // As the admin SDK's `author_grants_document` writes it: the application id is its own
    // binding key and role.
    let document = format!(
        r#"{{"app_ids":{{"{app}":"{app}"}},"grants":{{"{resource}":{{"application":"{app}","roles":{{"{app}":["{read}"]}}}}}}}}"#
    );
    let policy_version = field(
        &post(
            api,
            token,
            &format!("{base}/policies"),
            &format!(
                r#"{{"name":"grants","content":{}}}"#,
                json_string(&document)
            ),
            201,
        )?,
        "version_id",
    )?;
    let set = field(
        &post(
            api,
            token,
            &format!("{base}/policy-sets"),
            r#"{"name":"gateway-bench"}"#,
            201,
        )?,
        "id",
    )?;
    let version = field(
        &post(
            api,
            token,
            &format!("{base}/policy-sets/{set}/versions"),
            &format!(r#"{{"manifest":[{{"policy_version_id":"{policy_version}"}}]}}"#),
            201,
        )?,
        "version_id",
    )?;
    post(
        api,
        token,
        &format!("{base}/policy-sets/{set}/activate"),
        &format!(r#"{{"version_id":"{version}"}}"#),
        202,
    )?;

    // The SDK's `application_transport`: a lifecycle mandate, two task Sessions, a Delegation
    // from source to target constrained to the resource.
    let grant = "urn:ietf:params:oauth:grant-type:token-exchange";
    let lifecycle = form(&[
        ("grant_type", grant),
        ("zone_id", &zone),
        ("application_id", &app),
        ("client_secret", &secret),
        ("scope", "agent:lifecycle"),
        ("resource", &resource),
    ]);
    let (status, text) = mint(sts, &lifecycle)?;
    if status != 200 {
        return Err(format!("the lifecycle mint answered {status}: {text}"));
    }
    let session_mandate = field(&text, "access_token")?;
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let started = post(
            coordinator,
            &session_mandate,
            &format!("/zones/{zone}/agents"),
            &format!(r#"{{"application_id":"{app}","ttl_seconds":7200,"labels":["{app}"]}}"#),
            201,
        )?;
        sessions.push(field(&started, "agent_session_id")?);
    }
    let edge = field(
        &post(
            coordinator,
            &session_mandate,
            &format!("/zones/{zone}/delegations"),
            &format!(
                r#"{{"issuer_application_id":"{app}","source_session_id":"{}","target_session_id":"{}","receiver_application_id":"{app}","scopes":["{read}"],"constraints":{{"resources":["{resource}"]}},"ttl_seconds":7200}}"#,
                sessions[0], sessions[1]
            ),
            201,
        )?,
        "delegation_edge_id",
    )?;
    let mint_form = form(&[
        ("grant_type", grant),
        ("zone_id", &zone),
        ("application_id", &app),
        ("client_secret", &secret),
        ("scope", read),
        ("resource", &resource),
        ("agent_session_id", &sessions[1]),
        ("delegation_edge_id", &edge),
        ("ttl_seconds", "900"),
    ]);
    Ok(Setup {
        mint_form,
        resource,
    })
}

/// `perf record` of the server while a run is measured, when `BENCH_PERF_DATA` names the
/// output file (`BENCH_PERF_WORKERS`: the worker count to record, 16 by default;
/// `BENCH_PERF_CALL_GRAPH`: perf's `--call-graph` mode, e.g. `dwarf`; none by default).
fn start_perf(server: u32, workers: usize) -> Result<Option<Child>, String> {
    let Ok(output) = std::env::var("BENCH_PERF_DATA") else {
        return Ok(None);
    };
    let wanted = std::env::var("BENCH_PERF_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(16);
    if workers != wanted {
        return Ok(None);
    }
    let mut perf = Command::new("perf");
    perf.args(["record", "-F", "999", "-o", &output, "-p"])
        .arg(server.to_string());
    if let Ok(mode) = std::env::var("BENCH_PERF_CALL_GRAPH") {
        perf.args(["--call-graph", &mode]);
    }
    let child = perf
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("perf: {e}"))?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Some(child))
}

fn stop_perf(perf: Option<Child>) {
    if let Some(mut child) = perf {
        // SIGINT makes perf write its data and exit.
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
}

/// Governed requests and their baselines over HTTP on Postgres + Redis, release binary.
pub fn http(binary: &Path) -> Result<(), String> {
    let api_port = free_port()?;
    let sts_port = free_port()?;
    let coordinator_port = free_port()?;
    let gateway_port = free_port()?;
    let token = format!("cat_bench_{}", &hex_key()[..24]);
    let provider_secret = format!("provider-{}", &hex_key()[..24]);
    let credential = format!("Bearer {provider_secret}");
    let upstream = start_upstream(credential.clone())?;
    let proxy = start_proxy(upstream)?;

    let database = format!("caracal_bench_gateway_{}", std::process::id());
    let scratch =
        std::env::temp_dir().join(format!("caracal-bench-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let mut cleanup = Cleanup {
        child: None,
        database: database.clone(),
        scratch: Some(scratch.clone()),
    };
    psql(&format!("CREATE DATABASE {database}"))?;
    crate::bench::flush_bench_redis()?;
    let child = Command::new(binary)
        .args(["serve", "all"])
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:5432/{database}"),
        )
        .env("REDIS_URL", crate::bench::bench_redis_url())
        .env("SECRET_STORE_KEK", hex_key())
        .env("GATEWAY_STS_HMAC_KEY", hex_key())
        .env("AUDIT_HMAC_KEY", hex_key())
        .env("STREAMS_HMAC_KEY", hex_key())
        .env("IDEMPOTENCY_HMAC_KEY", hex_key())
        .env("CARACAL_ADMIN_TOKEN", &token)
        .env("API_PORT", api_port.to_string())
        .env("STS_HOST", "127.0.0.1")
        .env("STS_PORT", sts_port.to_string())
        .env("COORDINATOR_PORT", coordinator_port.to_string())
        .env("GATEWAY_HOST", "127.0.0.1")
        .env("GATEWAY_PORT", gateway_port.to_string())
        .env("ISSUER_URL", format!("http://127.0.0.1:{sts_port}"))
        .env("AUDIT_REPLAY_DIR", scratch.join("audit-replay"))
        // The upstream is on loopback, which `serve` refuses by default.
        .env("UPSTREAM_ALLOW_LOOPBACK", "true")
        .env("RUST_LOG", "warn")
        // The limits stay on (their Redis counters are part of the measured path) but high
        // enough that a closed-loop benchmark never trips them.
        .env("API_V1_RATE_LIMIT_PER_MIN", "1000000000")
        .env("STS_MINT_RATE_LIMIT_PER_MIN", "1000000000")
        .env("COORDINATOR_RATE_LIMIT_PER_MIN", "1000000000")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    cleanup.child = Some(child);
    let server = cleanup
        .child
        .as_ref()
        .map(|c| c.id())
        .ok_or("server not running")?;

    let mut api = connect_healthy(api_port)?;
    let mut sts = connect_healthy(sts_port)?;
    let mut coordinator = connect_healthy(coordinator_port)?;
    drop(connect_healthy(gateway_port)?);
    println!("seeding a zone through the admin API and provisioning a Session pair and a Delegation like the SDK…");
    let setup = provision(
        &mut api,
        &mut sts,
        &mut coordinator,
        &token,
        upstream,
        &provider_secret,
    )?;
    drop((api, coordinator));

    // The first governed request pays the credential check, key and policy loads.
    let mut first = Governed {
        sts,
        gateway: Conn::open(gateway_port)?,
    };
    let cold = Instant::now();
    governed(&mut first, &setup)?;
    let cold = cold.elapsed();
    drop(first);

    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    let governed_call = |w: &mut Governed| governed(w, &setup);
    let plain_call = |c: &mut Conn| plain(c, &provider_secret);

    let mut direct_runs = Vec::new();
    let mut proxy_runs = Vec::new();
    let mut governed_runs = Vec::new();
    let mut round_trips = Vec::new();
    for workers in WORKERS {
        let per_worker = (BASELINE_PER_ROUND / workers).max(1);
        println!(
            "{workers} workers: direct and pass-through, {ROUNDS} rounds × {} requests after a warm-up round…",
            per_worker * workers
        );
        let mut conns = (0..workers)
            .map(|_| Conn::open(upstream))
            .collect::<Result<Vec<_>, _>>()?;
        direct_runs.push(closed_loop(&mut conns, per_worker, None, &plain_call)?);
        let mut conns = (0..workers)
            .map(|_| Conn::open(proxy))
            .collect::<Result<Vec<_>, _>>()?;
        proxy_runs.push(closed_loop(&mut conns, per_worker, None, &plain_call)?);

        let per_worker = (GOVERNED_PER_ROUND / workers).max(1);
        println!(
            "{workers} workers: governed, {ROUNDS} rounds × {} requests after a warm-up round…",
            per_worker * workers
        );
        let mut states = (0..workers)
            .map(|_| {
                Ok(Governed {
                    sts: Conn::open(sts_port)?,
                    gateway: Conn::open(gateway_port)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        // What autovacuum would have done by now, when this Postgres runs without it.
        let vacuumed = crate::bench::autovacuum_standin(&database)?;
        if vacuumed {
            println!("  (autovacuum is off here: ran VACUUM ANALYZE first, as it would have)");
        }
        let transactions = pg_transactions(&database)?;
        let commands = redis_commands()?;
        let perf = start_perf(server, workers)?;
        let run = closed_loop(&mut states, per_worker, Some(server), &governed_call);
        stop_perf(perf);
        let run = run?;
        // pg_stat_database lags by up to a second.
        std::thread::sleep(Duration::from_millis(1_200));
        let requests = ((ROUNDS + 1) * per_worker * workers) as f64;
        let (commands_after, reads_after) = redis_commands()?;
        round_trips.push(RoundTrips {
            pg_transactions: pg_transactions(&database)?.saturating_sub(transactions) as f64
                / requests,
            redis_commands: commands_after.saturating_sub(commands.0) as f64 / requests,
            redis_reads: reads_after.saturating_sub(commands.1) as f64 / requests,
            spool: dir_bytes(&scratch.join("audit-replay")),
        });
        governed_runs.push(run);
    }
    drop(cleanup);

    report(&Report {
        direct: direct_runs,
        proxy: proxy_runs,
        governed: governed_runs,
        round_trips,
        cold,
        load,
    });
    Ok(())
}

/// What one governed run cost outside the server, per governed request.
struct RoundTrips {
    pg_transactions: f64,
    redis_commands: f64,
    /// Socket reads Redis made: round trips, counting a pipeline once.
    redis_reads: f64,
    /// The audit spool's size after the run, in bytes.
    spool: u64,
}

struct Report {
    direct: Vec<Run>,
    proxy: Vec<Run>,
    governed: Vec<Run>,
    /// Per worker count.
    round_trips: Vec<RoundTrips>,
    cold: Duration,
    load: String,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn line(name: &str, run: &Run, cores: usize) -> String {
    let mid = ROUNDS / 2;
    let server = run
        .server_cpu
        .as_ref()
        .map_or("—".to_owned(), |c| format!("{:.0} µs", c[mid]));
    format!(
        "| {name} | {} | {:.0} ({:.0}–{:.0}) | {:.0} | {:.2} ms ({:.2}–{:.2}) | {:.2} ms | {:.2} ms | {server} | {:.0} µs |",
        run.workers,
        run.rates[mid],
        run.rates[0],
        run.rates[ROUNDS - 1],
        run.rates[mid] / cores as f64,
        ms(run.p50[mid]),
        ms(run.p50[0]),
        ms(run.p50[ROUNDS - 1]),
        ms(run.p95[mid]),
        ms(run.p99[mid]),
        run.machine_cpu[mid],
    )
}

fn report(r: &Report) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mid = ROUNDS / 2;
    println!(
        "\nmachine: {}; load average {} when measuring began",
        bench::machine(),
        r.load
    );
    println!(
        "`caracal serve all`, release build, Postgres + Redis on loopback; closed loop, keep-alive; load generator, upstream and pass-through proxy in the xtask process on the same cores"
    );
    println!("first (cold) governed request: {:.1} ms\n", ms(r.cold));
    println!("| path | workers | req/s (spread across rounds) | req/s per core | p50 (spread) | p95 | p99 | caracal CPU per request | machine CPU per request |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (i, _) in WORKERS.iter().enumerate() {
        println!("{}", line("direct to the upstream", &r.direct[i], cores));
        println!("{}", line("pass-through proxy", &r.proxy[i], cores));
        println!(
            "{}",
            line("governed (mint + Gateway hop)", &r.governed[i], cores)
        );
    }
    println!("\n| workers | governed p50: mint | governed p50: Gateway hop (total p50 − mint p50) | Postgres transactions per governed request | Redis commands (round trips) per governed request | audit spool after the run | governed ÷ direct: req/s | p50 | governed ÷ pass-through: req/s | p50 |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (i, run) in r.governed.iter().enumerate() {
        let trips = &r.round_trips[i];
        let (direct, proxy) = (&r.direct[i], &r.proxy[i]);
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.2} | {:.1} ({:.1}) | {:.1} MB | {:.3} | {:.1}× | {:.3} | {:.1}× |",
            run.workers,
            ms(run.stage_p50[mid]),
            ms(run.p50()) - ms(run.stage_p50[mid]),
            trips.pg_transactions,
            trips.redis_commands,
            trips.redis_reads,
            trips.spool as f64 / 1e6,
            run.rate() / direct.rate(),
            ms(run.p50()) / ms(direct.p50()).max(1e-3),
            run.rate() / proxy.rate(),
            ms(run.p50()) / ms(proxy.p50()).max(1e-3),
        );
    }
    println!();
    for run in &r.governed {
        let per_core = run.rate() / cores as f64;
        let per_cpu_second = run
            .server_cpu
            .as_ref()
            .map_or(0.0, |c| 1e6 / c[mid].max(1.0));
        println!(
            "{} workers: {:.0} governed req/s per core = {:.1}× upstream's {UPSTREAM_PER_VCPU:.0}/vCPU ({:.2} of the ≥ {TARGET_PER_CORE:.0}/core target; {per_cpu_second:.0} per caracal CPU-second); p50 {:.2} ms, upstream's {:.0}–{:.0} ms ÷ this = {:.1}–{:.1} (target ≤ {TARGET_P50_MS:.0} ms: {})",
            run.workers,
            per_core,
            per_core / UPSTREAM_PER_VCPU,
            per_core / TARGET_PER_CORE,
            ms(run.p50()),
            UPSTREAM_P50_MS.0,
            UPSTREAM_P50_MS.1,
            UPSTREAM_P50_MS.0 / ms(run.p50()).max(1e-3),
            UPSTREAM_P50_MS.1 / ms(run.p50()).max(1e-3),
            if ms(run.p50()) <= TARGET_P50_MS { "met" } else { "missed" },
        );
    }
}
