//! `cargo xtask bench`: the STS micro-benchmarks (`bench_sts::micro`), then latency of the API's
//! hot read path over real HTTP on Postgres, against a baseline measured in the same run on the
//! same server (`/health`), so the ratio says what the route costs beyond the HTTP stack, then
//! the STS's mints over HTTP (`bench_sts::http`), the Coordinator (`bench_coordinator::http`) and
//! governed requests through the Gateway with their direct and pass-through baselines
//! (`bench_governed::http`, part `governed`).
//!
//! The client is a minimal keep-alive HTTP/1.1 client on one loopback connection (closed loop,
//! one request in flight), so every sample is the latency a sequential SDK caller would see.
//! Bounded: a fixed number of requests per round, then the server is stopped and its database
//! dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bench_coordinator, bench_sts};

// Declared here rather than in `main.rs` so the part registers in this file alone.
#[path = "bench_governed.rs"]
mod bench_governed;

/// Applications seeded into the benchmark zone.
const APPLICATIONS: usize = 50;
/// Rounds per measurement; the report gives the median round and the spread across rounds.
pub const ROUNDS: usize = 5;
/// Requests per round.
pub const PER_ROUND: usize = 1_000;
/// Warm-up requests before measuring (pool, caches, branch predictors).
pub const WARMUP: usize = 300;

/// `application/json`, the API's request bodies.
const JSON: &str = "application/json";

pub struct Conn {
    reader: BufReader<TcpStream>,
    host: String,
}

impl Conn {
    pub fn open(port: u16) -> Result<Self, String> {
        let stream =
            TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            reader: BufReader::new(stream),
            host: format!("127.0.0.1:{port}"),
        })
    }

    /// Sends one request with a JSON body (if any) and reads the whole response; returns
    /// (status, body).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Result<(u16, String), String> {
        self.send(method, path, token, JSON, body.unwrap_or(""), &[])
    }

    /// Like [`Conn::request`] without a body, with extra request headers (name, value).
    pub fn request_with(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String), String> {
        self.send(method, path, token, JSON, "", headers)
    }

    /// `POST` of an `application/x-www-form-urlencoded` body (the STS token endpoint).
    pub fn post_form(&mut self, path: &str, body: &str) -> Result<(u16, String), String> {
        self.send(
            "POST",
            path,
            None,
            "application/x-www-form-urlencoded",
            body,
            &[],
        )
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String), String> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.host);
        if let Some(token) = token {
            head.push_str(&format!("authorization: Bearer {token}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!(
                "content-type: {content_type}\r\ncontent-length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let stream = self.reader.get_mut();
        stream
            .write_all(head.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        stream
            .write_all(body.as_bytes())
            .map_err(|e| format!("write: {e}"))?;

        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("read: {e}"))?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut length = None;
        loop {
            line.clear();
            self.reader
                .read_line(&mut line)
                .map_err(|e| format!("read: {e}"))?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        // 204 and 304 carry no body and need no length.
        let length = match length {
            Some(length) => length,
            None if status == 204 || status == 304 => 0,
            None => return Err("response without content-length".into()),
        };
        let mut buf = vec![0; length];
        self.reader
            .read_exact(&mut buf)
            .map_err(|e| format!("read body: {e}"))?;
        Ok((status, String::from_utf8_lossy(&buf).into_owned()))
    }
}

pub fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

pub fn psql(sql: &str) -> Result<(), String> {
    psql_in("postgres", sql).map(|_| ())
}

/// Runs `sql` in `database` (psql, tuples only, unaligned); answers its output.
fn psql_in(database: &str, sql: &str) -> Result<String, String> {
    let output = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            database,
            "-qtAc",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if !output.status.success() {
        return Err(format!("psql failed: {sql}"));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What a production Postgres's autovacuum would have done by now, done by hand when this
/// server runs without it (the CI machine kind sets `autovacuum = off`): `VACUUM ANALYZE` of
/// `database`. Without it the planner works from the statistics of empty tables for the whole
/// run and dead row versions pile up, which measures a database no deployment runs. Returns
/// whether it ran, for the report.
pub fn autovacuum_standin(database: &str) -> Result<bool, String> {
    if psql_in(database, "SHOW autovacuum")?.trim() == "on" {
        return Ok(false);
    }
    psql_in(database, "VACUUM ANALYZE")?;
    Ok(true)
}

/// Stops the server, drops the database and removes the scratch directory however the bench
/// ends.
pub struct Cleanup {
    pub child: Option<Child>,
    pub database: String,
    pub scratch: Option<PathBuf>,
}

/// The Redis database the benches' servers use: not the one `cargo xtask up` and the SDK
/// suite use, and emptied before and after each bench, so the hundreds of thousands of stream
/// entries and single-use keys a run writes never reach another run or a test.
pub const BENCH_REDIS_DB: u8 = 15;

/// `REDIS_URL` for a bench's server.
pub fn bench_redis_url() -> String {
    format!("redis://127.0.0.1:6379/{BENCH_REDIS_DB}")
}

/// Empties [`BENCH_REDIS_DB`].
pub fn flush_bench_redis() -> Result<(), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", 6379)).map_err(|e| format!("redis: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("SELECT {BENCH_REDIS_DB}\r\nFLUSHDB\r\n").as_bytes())
        .map_err(|e| format!("redis: {e}"))?;
    let mut reader = BufReader::new(stream);
    for _ in 0..2 {
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(|e| format!("redis: {e}"))?;
        if !line.starts_with("+OK") {
            return Err(format!("redis answered {line:?}"));
        }
    }
    Ok(())
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.database
        ));
        let _ = flush_bench_redis();
        if let Some(dir) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn hex_key() -> String {
    // 32 bytes from the OS; a benchmark key only needs to be valid, not secret.
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn json_field<'a>(body: &'a str, field: &str) -> Option<&'a str> {
    let key = format!("\"{field}\":\"");
    let start = body.find(&key)? + key.len();
    let end = body[start..].find('"')?;
    Some(&body[start..start + end])
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// A connection to a server that answers `GET /health` with 200, waiting up to 30 s for it.
pub fn connect_healthy(port: u16) -> Result<Conn, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Conn::open(port) {
            if c.request("GET", "/health", None, None)
                .is_ok_and(|(s, _)| s == 200)
            {
                return Ok(c);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the server on port {port} did not become healthy within 30 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Per-round percentiles, each sorted across rounds.
pub struct Stats {
    pub p50: Vec<Duration>,
    pub p95: Vec<Duration>,
    pub p99: Vec<Duration>,
}

fn measure(conn: &mut Conn, path: &str, token: &str) -> Result<Stats, String> {
    measure_with(conn, &format!("GET {path}"), |c| {
        c.request("GET", path, Some(token), None)
    })
}

/// Closed-loop latency of `call` on one connection: [`WARMUP`] calls, then [`ROUNDS`] rounds
/// of [`PER_ROUND`]; any answer but 200 ends the benchmark.
pub fn measure_with(
    conn: &mut Conn,
    what: &str,
    mut call: impl FnMut(&mut Conn) -> Result<(u16, String), String>,
) -> Result<Stats, String> {
    for _ in 0..WARMUP {
        let (status, body) = call(conn)?;
        if status != 200 {
            return Err(format!("{what} answered {status}: {body}"));
        }
    }
    let mut stats = Stats {
        p50: Vec::new(),
        p95: Vec::new(),
        p99: Vec::new(),
    };
    for _ in 0..ROUNDS {
        let mut samples = Vec::with_capacity(PER_ROUND);
        for _ in 0..PER_ROUND {
            let started = Instant::now();
            let (status, body) = call(conn)?;
            samples.push(started.elapsed());
            if status != 200 {
                return Err(format!("{what} answered {status}: {body}"));
            }
        }
        samples.sort();
        stats.p50.push(percentile(&samples, 0.50));
        stats.p95.push(percentile(&samples, 0.95));
        stats.p99.push(percentile(&samples, 0.99));
    }
    if std::env::var_os("BENCH_ROUNDS").is_some() {
        // The rounds in the order they ran (a drift shows here; the report sorts them).
        let p50s: Vec<String> = stats.p50.iter().map(|d| format!("{:.0}", us(*d))).collect();
        eprintln!("{what}: p50 per round, in order (µs): {}", p50s.join(", "));
    }
    for v in [&mut stats.p50, &mut stats.p95, &mut stats.p99] {
        v.sort();
    }
    Ok(stats)
}

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub fn row(name: &str, s: &Stats) -> String {
    let mid = ROUNDS / 2;
    format!(
        "| {name} | {:.0} µs ({:.0}–{:.0}) | {:.0} µs ({:.0}–{:.0}) | {:.0} µs |",
        us(s.p50[mid]),
        us(s.p50[0]),
        us(s.p50[ROUNDS - 1]),
        us(s.p95[mid]),
        us(s.p95[0]),
        us(s.p95[ROUNDS - 1]),
        us(s.p99[mid]),
    )
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

/// Runs every benchmark: the STS micro-benchmarks, then the API and the STS over HTTP with the
/// release binary under `target_dir`. `cargo` makes a cargo command run from the workspace root.
pub fn run(cargo: &dyn Fn() -> Command, target_dir: &Path, parts: &[String]) -> Result<(), String> {
    const PARTS: [&str; 5] = ["api", "sts", "coordinator", "governed", "audit"];
    if let Some(unknown) = parts.iter().find(|p| !PARTS.contains(&p.as_str())) {
        return Err(format!(
            "unknown bench part `{unknown}`; the parts are {}",
            PARTS.join(", ")
        ));
    }
    let wanted = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    println!("building the release binary…");
    let status = cargo()
        .args(["build", "--release", "-p", "caracal"])
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("cargo build --release failed".into());
    }
    let binary = target_dir.join("release").join("caracal");
    if wanted("api") {
        println!("\n== API over HTTP (issue #2) ==");
        api(&binary)?;
    }
    if wanted("sts") {
        let micro = bench_sts::micro(cargo())?;
        println!("\n== STS over HTTP (issue #3) ==");
        bench_sts::http(&binary, &micro)?;
    }
    if wanted("coordinator") {
        println!("\n== Coordinator over HTTP (issue #4) ==");
        bench_coordinator::http(&binary)?;
    }
    if wanted("governed") {
        println!("\n== Gateway: governed requests over HTTP (issue #5) ==");
        bench_governed::http(&binary)?;
    }
    if wanted("audit") {
        println!("\n== Audit: ingest, storage and search on Postgres + Redis (issue #6) ==");
        let status = cargo()
            .args(["bench", "-p", "caracal-audit", "--bench", "ingest"])
            .status()
            .map_err(|e| format!("cannot start cargo bench: {e}"))?;
        if !status.success() {
            return Err("cargo bench -p caracal-audit --bench ingest failed".into());
        }
    }
    Ok(())
}

/// List-applications latency on Postgres + Redis against `/health` on the same server.
fn api(binary: &Path) -> Result<(), String> {
    let port = free_port()?;
    let token = format!("cat_bench_{}", &hex_key()[..24]);
    let database = format!("caracal_bench_{}", std::process::id());
    psql(&format!("CREATE DATABASE {database}"))?;
    crate::bench::flush_bench_redis()?;
    let mut cleanup = Cleanup {
        child: None,
        database: database.clone(),
        scratch: None,
    };
    let child = Command::new(binary)
        .args(["serve", "api"])
        .env(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:5432/{database}"),
        )
        .env("REDIS_URL", bench_redis_url())
        .env("SECRET_STORE_KEK", hex_key())
        .env("CARACAL_ADMIN_TOKEN", &token)
        .env("API_PORT", port.to_string())
        .env("RUST_LOG", "warn")
        // The limits stay on (their Redis counters are part of the measured path) but high
        // enough that a closed-loop benchmark never trips them.
        .env("API_V1_RATE_LIMIT_PER_MIN", "1000000000")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    cleanup.child = Some(child);

    let mut conn = connect_healthy(port)?;

    let (status, zone) = conn.request(
        "POST",
        "/v1/zones",
        Some(&token),
        Some(r#"{"name":"bench"}"#),
    )?;
    if status != 201 {
        return Err(format!("create zone answered {status}: {zone}"));
    }
    let zone = json_field(&zone, "id").ok_or("zone id missing")?.to_owned();
    println!("seeding {APPLICATIONS} applications…");
    for i in 0..APPLICATIONS {
        let body = format!(
            r#"{{"name":"bench-app-{i}","registration_method":"managed","traits":["tier:{i}"]}}"#
        );
        let (status, text) = conn.request(
            "POST",
            &format!("/v1/zones/{zone}/applications"),
            Some(&token),
            Some(&body),
        )?;
        if status != 201 {
            return Err(format!("create application answered {status}: {text}"));
        }
    }
    let list = format!("/v1/zones/{zone}/applications");
    println!(
        "measuring: {ROUNDS} rounds × {PER_ROUND} requests each, after {WARMUP} warm-up requests…"
    );
    let health = measure(&mut conn, "/health", &token)?;
    let apps = measure(&mut conn, &list, &token)?;
    let mid = ROUNDS / 2;
    println!("\nmachine: {}", machine());
    println!("one keep-alive loopback connection, one request in flight, release build, Postgres + Redis\n");
    println!("| request | p50 (spread across rounds) | p95 (spread) | p99 |");
    println!("| --- | --- | --- | --- |");
    println!("{}", row("GET /health (baseline)", &health));
    println!(
        "{}",
        row(
            &format!("GET list applications ({APPLICATIONS} rows)"),
            &apps
        )
    );
    println!(
        "\nlist-applications p50 = {:.2} ms ({:.1}× the /health baseline); upstream publishes 4 ms p50, target ≤ 1 ms",
        us(apps.p50[mid]) / 1000.0,
        us(apps.p50[mid]) / us(health.p50[mid]).max(1.0),
    );
    drop(cleanup);
    Ok(())
}
