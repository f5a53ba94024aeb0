//! `cargo xtask bench`, the STS part (issue #3).
//!
//! [`micro`] runs the in-process micro-benchmarks (`services/caracal/benches/sts.rs`: policy
//! decision, ES256, a whole mint on memory adapters) and keeps the figures the HTTP benchmark is
//! compared with. [`http`] starts the release binary (`caracal serve all`) on a fresh Postgres
//! database and Redis, seeds a zone through the admin API (provider, resource, application,
//! grants policy, activated policy set), then runs bootstrap mints (`POST /oauth/2/token`) in a
//! closed loop on keep-alive loopback connections: latency on one connection, throughput with
//! one connection per core and with [`MANY_CONNECTIONS`], with the server's CPU time and context
//! switches per mint read from `/proc`. Redis and Postgres round trips measured in the same run
//! are the baselines. The client runs on the same cores as the server, as the API benchmark's
//! does.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::{
    self, connect_healthy, free_port, hex_key, json_field, measure_with, percentile, psql, row, us,
    Cleanup, Conn, Stats, ROUNDS,
};

/// Mints per throughput round, shared out over the connections.
const THROUGHPUT_PER_ROUND: usize = 1_000;
/// Connections of the second throughput measurement: with this many mints in flight, the
/// per-round-trip costs that concurrency amortises (thread wake-ups, WAL flushes Postgres can
/// group) shrink, and the difference from the one-per-core figure shows how large they are.
const MANY_CONNECTIONS: usize = 16;

/// Figures from the micro-benchmarks, for same-run ratios.
pub struct Micro {
    /// Median of a bare ring `EcdsaKeyPair::sign`, one core.
    pub bare_sign_ns: f64,
    /// Median of an in-process bootstrap mint (`Sts::token`, memory adapters), one core.
    pub inprocess_mint_ns: f64,
}

/// Runs `cargo bench -p caracal --bench sts`, echoing its report and keeping the figures it
/// marks for us (`xtask-figure <name> <value>`).
pub fn micro(mut cargo: Command) -> Result<Micro, String> {
    println!("\n== STS micro-benchmarks (issue #3) ==");
    let mut child = cargo
        .args(["bench", "-p", "caracal", "--bench", "sts"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start cargo bench: {e}"))?;
    let stdout = child.stdout.take().ok_or("cargo bench has no stdout")?;
    let (mut bare_sign_ns, mut inprocess_mint_ns) = (None, None);
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| format!("reading cargo bench: {e}"))?;
        let Some(figure) = line.strip_prefix("xtask-figure ") else {
            println!("{line}");
            continue;
        };
        let mut parts = figure.split_whitespace();
        let (name, value) = (parts.next(), parts.next().and_then(|v| v.parse().ok()));
        match name {
            Some("bare_ring_sign_ns") => bare_sign_ns = value,
            Some("inprocess_mint_ns") => inprocess_mint_ns = value,
            _ => {}
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("cargo bench -p caracal --bench sts failed".into());
    }
    Ok(Micro {
        bare_sign_ns: bare_sign_ns.ok_or("the micro-benchmarks reported no bare sign figure")?,
        inprocess_mint_ns: inprocess_mint_ns
            .ok_or("the micro-benchmarks reported no in-process mint figure")?,
    })
}

/// A JSON string literal.
pub(crate) fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `application/x-www-form-urlencoded` value encoding, as the official clients send it.
pub(crate) fn form_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// One admin API call that must answer `expect`; returns the body.
fn admin(
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

pub(crate) fn field(body: &str, name: &str) -> Result<String, String> {
    json_field(body, name)
        .map(str::to_owned)
        .ok_or_else(|| format!("response without {name}: {body}"))
}

/// Seeds, through the admin API, a zone where one application may mint a bootstrap mandate;
/// returns the token endpoint's form body for it.
pub fn seed(conn: &mut Conn, token: &str) -> Result<String, String> {
    let zone = field(
        &admin(conn, token, "/v1/zones", r#"{"name":"sts-bench"}"#, 201)?,
        "id",
    )?;
    let base = format!("/v1/zones/{zone}");
    let provider = field(
        &admin(
            conn,
            token,
            &format!("{base}/providers"),
            r#"{"name":"upstream","kind":"bearer_token","config_json":{"bearer_token":"x"}}"#,
            201,
        )?,
        "id",
    )?;
    let identifier = "resource://bench-svc";
    admin(
        conn,
        token,
        &format!("{base}/resources"),
        &format!(
            r#"{{"name":"bench service","identifier":"{identifier}","scopes":["svc:read","svc:write"],"upstream_url":"https://upstream.example.test","credential_provider_id":"{provider}","operation_enforcement":"transport_uniform"}}"#
        ),
        201,
    )?;
    let app = admin(
        conn,
        token,
        &format!("{base}/applications"),
        r#"{"name":"bench-agent","registration_method":"managed"}"#,
        201,
    )?;
    let (app_id, secret) = (field(&app, "id")?, field(&app, "client_secret")?);
    let document = format!(
        r#"{{"app_ids":{{"bench":"{app_id}"}},"grants":{{"{identifier}":{{"application":"bench","roles":{{"reader":["svc:read"]}}}}}}}}"#
    );
    let policy_version = field(
        &admin(
            conn,
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
        &admin(
            conn,
            token,
            &format!("{base}/policy-sets"),
            r#"{"name":"bench"}"#,
            201,
        )?,
        "id",
    )?;
    let version = field(
        &admin(
            conn,
            token,
            &format!("{base}/policy-sets/{set}/versions"),
            &format!(r#"{{"manifest":[{{"policy_version_id":"{policy_version}"}}]}}"#),
            201,
        )?,
        "version_id",
    )?;
    admin(
        conn,
        token,
        &format!("{base}/policy-sets/{set}/activate"),
        &format!(r#"{{"version_id":"{version}"}}"#),
        202,
    )?;
    Ok([
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("zone_id", zone.as_str()),
        ("application_id", app_id.as_str()),
        ("client_secret", secret.as_str()),
        ("scope", "agent:lifecycle"),
        ("resource", identifier),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", form_escape(v)))
    .collect::<Vec<_>>()
    .join("&"))
}

/// Round trips the mint makes, measured from the client side on the bench database: a
/// `SELECT 1` (one Postgres round trip) and a durable one-row commit (autocommit `INSERT`, the
/// one write every mint makes: its authority record), each timed by psql's `\timing`. Sorted.
pub fn postgres_probe(database: &str) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    const EACH: usize = 200;
    let mut script = String::from("CREATE TABLE commit_probe (x int);\n\\timing on\n");
    for _ in 0..EACH {
        script.push_str("SELECT 1;\n");
    }
    for i in 0..EACH {
        script.push_str(&format!("INSERT INTO commit_probe VALUES ({i});\n"));
    }
    script.push_str("\\timing off\nDROP TABLE commit_probe;\n");
    let mut child = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            database,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("psql: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| format!("psql: {e}"))?;
    }
    let output = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
    let times: Vec<Duration> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Time: "))
        .filter_map(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| Duration::from_secs_f64(ms / 1e3))
        .collect();
    if !output.status.success() || times.len() != 2 * EACH {
        return Err(format!(
            "the Postgres probe timed {} of {} statements",
            times.len(),
            2 * EACH
        ));
    }
    let (mut selects, mut commits) = (times[..EACH].to_vec(), times[EACH..].to_vec());
    selects.sort();
    commits.sort();
    Ok((selects, commits))
}

/// Redis round trips (`PING` on one connection, RESP by hand), after a warm-up. Sorted.
fn redis_probe() -> Result<Vec<Duration>, String> {
    let stream = TcpStream::connect(("127.0.0.1", 6379)).map_err(|e| format!("redis: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut samples = Vec::with_capacity(2_000);
    let mut line = String::new();
    for i in 0..2_300 {
        let started = Instant::now();
        reader
            .get_mut()
            .write_all(b"PING\r\n")
            .map_err(|e| format!("redis: {e}"))?;
        line.clear();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("redis: {e}"))?;
        if line != "+PONG\r\n" {
            return Err(format!("redis answered PING with {line:?}"));
        }
        if i >= 300 {
            samples.push(started.elapsed());
        }
    }
    samples.sort();
    Ok(samples)
}

/// One bootstrap mint; anything but a 200 with a token is an error.
pub fn mint(conn: &mut Conn, body: &str) -> Result<(u16, String), String> {
    let (status, text) = conn.post_form("/oauth/2/token", body)?;
    if status == 200 && !text.contains("\"access_token\"") {
        return Err(format!("mint answered 200 without a token: {text}"));
    }
    Ok((status, text))
}

/// CPU time a process has used so far (user + system), from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("unexpected /proc/{pid}/stat"))
    };
    // USER_HZ is 100 on every Linux the project targets.
    Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// Context switches of every thread of a process so far (voluntary and involuntary), from
/// `/proc/<pid>/task/*/status`: how often the server's threads sleep and wake.
fn context_switches(pid: u32) -> Result<u64, String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| format!("cannot list /proc/{pid}/task: {e}"))?;
    let mut total = 0;
    for task in tasks.flatten() {
        // A thread may end between the listing and the read; it no longer counts.
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total)
}

/// One throughput measurement: mints per second of wall time, the server's CPU per mint and
/// its context switches per mint, each per round, sorted.
struct Throughput {
    connections: usize,
    rates: Vec<f64>,
    cpu_per_mint: Vec<Duration>,
    switches_per_mint: Vec<f64>,
}

/// Closed-loop mints on every connection at once, [`ROUNDS`] rounds of `per_conn` mints per
/// connection (after one warm-up round), with the server's CPU time read around each round.
fn throughput(
    conns: &mut [Conn],
    body: &str,
    per_conn: usize,
    server: u32,
) -> Result<Throughput, String> {
    let mut rates = Vec::with_capacity(ROUNDS);
    let mut cpu_per_mint = Vec::with_capacity(ROUNDS);
    let mut switches_per_mint = Vec::with_capacity(ROUNDS);
    for round in 0..=ROUNDS {
        let cpu = cpu_time(server)?;
        let switches = context_switches(server)?;
        let started = Instant::now();
        let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
            let workers: Vec<_> = conns
                .iter_mut()
                .map(|conn| {
                    scope.spawn(move || {
                        for _ in 0..per_conn {
                            let (status, text) = mint(conn, body)?;
                            if status != 200 {
                                return Err(format!("mint answered {status}: {text}"));
                            }
                        }
                        Ok(())
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
        let used = cpu_time(server)?.saturating_sub(cpu);
        let switched = context_switches(server)?.saturating_sub(switches);
        for result in results {
            result?;
        }
        if round > 0 {
            let total = conns.len() * per_conn;
            rates.push(total as f64 / elapsed.as_secs_f64());
            cpu_per_mint.push(used / total as u32);
            switches_per_mint.push(switched as f64 / total as f64);
        }
    }
    rates.sort_by(f64::total_cmp);
    cpu_per_mint.sort();
    switches_per_mint.sort_by(f64::total_cmp);
    Ok(Throughput {
        connections: conns.len(),
        rates,
        cpu_per_mint,
        switches_per_mint,
    })
}

/// Mint latency and throughput over HTTP on Postgres + Redis, with the release binary.
pub fn http(binary: &Path, micro: &Micro) -> Result<(), String> {
    let api_port = free_port()?;
    let sts_port = free_port()?;
    let token = format!("cat_bench_{}", &hex_key()[..24]);
    let database = format!("caracal_bench_sts_{}", std::process::id());
    let scratch = std::env::temp_dir().join(format!("caracal-bench-sts-{}", std::process::id()));
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
        .env("COORDINATOR_PORT", free_port()?.to_string())
        .env("ISSUER_URL", format!("http://127.0.0.1:{sts_port}"))
        .env("AUDIT_REPLAY_DIR", scratch.join("audit-replay"))
        .env("RUST_LOG", "warn")
        // The limits stay on (their Redis counters are part of the measured path) but high
        // enough that a closed-loop benchmark never trips them.
        .env("API_V1_RATE_LIMIT_PER_MIN", "1000000000")
        .env("STS_MINT_RATE_LIMIT_PER_MIN", "100000000")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    cleanup.child = Some(child);

    let mut api = connect_healthy(api_port)?;
    let mut sts = connect_healthy(sts_port)?;
    println!("seeding a mint zone through the admin API…");
    let body = seed(&mut api, &token)?;
    drop(api);

    // The first mint pays Argon2id verification, the zone key's creation and the policy load.
    let cold = Instant::now();
    let (status, text) = mint(&mut sts, &body)?;
    let cold = cold.elapsed();
    if status != 200 {
        return Err(format!("the first mint answered {status}: {text}"));
    }

    println!(
        "measuring latency: {ROUNDS} rounds × {} requests on one connection, after {} warm-up requests…",
        bench::PER_ROUND,
        bench::WARMUP
    );
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    let health = measure_with(&mut sts, "GET /health", |c| {
        c.request("GET", "/health", None, None)
    })?;
    let server = cleanup
        .child
        .as_ref()
        .map(|c| c.id())
        .ok_or("server not running")?;
    let switches = context_switches(server)?;
    let mints = measure_with(&mut sts, "POST /oauth/2/token", |c| mint(c, &body))?;
    let serial_switches = context_switches(server)?.saturating_sub(switches) as f64
        / (bench::WARMUP + ROUNDS * bench::PER_ROUND) as f64;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut runs = Vec::new();
    let mut conns = vec![sts];
    for connections in [cores, MANY_CONNECTIONS.max(cores)] {
        let per_conn = (THROUGHPUT_PER_ROUND / connections).max(1);
        println!(
            "measuring throughput: {connections} connections, {ROUNDS} rounds × {} mints, after a warm-up round…",
            per_conn * connections
        );
        while conns.len() < connections {
            conns.push(Conn::open(sts_port)?);
        }
        runs.push(throughput(&mut conns, &body, per_conn, server)?);
    }
    drop(conns);
    println!("measuring Redis and Postgres round trips…");
    let redis_rtt = redis_probe()?;
    let (pg_rtt, commits) = postgres_probe(&database)?;
    drop(cleanup);
    report(
        &Report {
            health,
            mints,
            runs,
            serial_switches,
            redis_rtt,
            pg_rtt,
            commits,
            cores,
            cold,
            load,
        },
        micro,
    );
    Ok(())
}

/// Everything the HTTP benchmark measured.
struct Report {
    health: Stats,
    mints: Stats,
    runs: Vec<Throughput>,
    /// Server context switches per mint on one connection.
    serial_switches: f64,
    redis_rtt: Vec<Duration>,
    pg_rtt: Vec<Duration>,
    commits: Vec<Duration>,
    cores: usize,
    cold: Duration,
    /// The one-minute load average when the measurements began.
    load: String,
}

fn report(r: &Report, micro: &Micro) {
    let Report {
        health,
        mints,
        runs,
        serial_switches,
        redis_rtt,
        pg_rtt,
        commits,
        cores,
        cold,
        load,
    } = r;
    let cores = *cores;
    let mid = ROUNDS / 2;
    println!(
        "\nmachine: {}; load average {load} when measuring began",
        bench::machine()
    );
    println!(
        "`caracal serve all`, release build, Postgres + Redis on loopback; closed loop, keep-alive"
    );
    println!("first (cold) mint: {:.1} ms\n", cold.as_secs_f64() * 1e3);
    println!("| request (one connection) | p50 (spread across rounds) | p95 (spread) | p99 |");
    println!("| --- | --- | --- | --- |");
    println!("{}", row("GET /health on the STS (baseline)", health));
    println!("{}", row("POST /oauth/2/token (bootstrap mint)", mints));
    println!("\n| round trip (same run, client side) | median (p10–p90) | p95 | p99 |");
    println!("| --- | --- | --- | --- |");
    for (name, samples) in [
        ("Redis `PING`", redis_rtt),
        ("Postgres `SELECT 1` (psql)", pg_rtt),
        ("Postgres durable one-row commit (psql)", commits),
    ] {
        println!(
            "| {name} | {:.0} µs ({:.0}–{:.0}) | {:.0} µs | {:.0} µs |",
            us(percentile(samples, 0.5)),
            us(percentile(samples, 0.1)),
            us(percentile(samples, 0.9)),
            us(percentile(samples, 0.95)),
            us(percentile(samples, 0.99)),
        );
    }
    let signs_per_sec = 1e9 / micro.bare_sign_ns;
    println!(
        "\n| connections | mints/s (spread across rounds) | mints/s per core | server CPU per mint (spread) | mints per server CPU-second | server context switches per mint |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for run in runs {
        let cpu = run.cpu_per_mint[mid];
        println!(
            "| {} | {:.0} ({:.0}–{:.0}) | {:.0} | {:.0} µs ({:.0}–{:.0}) | {:.0} | {:.0} |",
            run.connections,
            run.rates[mid],
            run.rates[0],
            run.rates[ROUNDS - 1],
            run.rates[mid] / cores as f64,
            us(cpu),
            us(run.cpu_per_mint[0]),
            us(run.cpu_per_mint[ROUNDS - 1]),
            1e6 / us(cpu).max(1.0),
            run.switches_per_mint[mid],
        );
    }
    if let Some(first) = runs.first() {
        let per_core = first.rates[mid] / cores as f64;
        println!(
            "\nbare ring sign loop of this run: {signs_per_sec:.0} signs/s on one core; with {} connections, mints/s per core ÷ signs/s = {:.4} (one mint per {:.0} signatures' time)",
            first.connections,
            per_core / signs_per_sec,
            signs_per_sec / per_core,
        );
        let cpu = us(first.cpu_per_mint[mid]);
        println!(
            "by the server's CPU: {cpu:.0} µs per mint = {:.1} bare signs ({:.1}× the in-process mint of {:.1} µs)",
            cpu / (micro.bare_sign_ns / 1e3),
            cpu / (micro.inprocess_mint_ns / 1e3),
            micro.inprocess_mint_ns / 1e3,
        );
    }
    println!(
        "one connection: the server's threads switch {serial_switches:.0} times per mint (sleep and wake around each Redis and Postgres round trip)"
    );
    let outside = us(mints.p50[mid]) - micro.inprocess_mint_ns / 1e3;
    println!(
        "one-connection p50 = {:.1}× the in-process mint and {:.1}× the STS /health baseline; the {:.0} µs outside the exchange's own work is {:.0}× a Redis PING and {:.0}× a Postgres SELECT 1 of this run",
        us(mints.p50[mid]) / (micro.inprocess_mint_ns / 1e3),
        us(mints.p50[mid]) / us(health.p50[mid]).max(1.0),
        outside,
        outside / us(percentile(redis_rtt, 0.5)).max(1.0),
        outside / us(percentile(pg_rtt, 0.5)).max(1.0),
    );
}
