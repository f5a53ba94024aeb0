//! `cargo xtask bench`, the Coordinator part (issue #4).
//!
//! Starts the release binary (`caracal serve all`) on a fresh Postgres database and Redis,
//! seeds a zone through the admin API, mints a `use=session` mandate with the lifecycle scope at
//! the STS (what the SDK presents to the Coordinator), then measures over HTTP on keep-alive
//! loopback connections:
//! - Session create + close cycles (`POST …/agents` then `DELETE …/agents/:id`): latency of one
//!   cycle on one connection, and cycles per second with one connection per core and with
//!   [`MANY_CONNECTIONS`] (upstream publishes 192 cycles/s; the target is ≥ 2,000/s);
//! - Delegation create (`POST …/delegations` between two live task Sessions) latency on one
//!   connection (upstream publishes 17.5 ms p50; the target is ≤ 2 ms).
//!
//! Baselines from the same run: `GET /health` on the Coordinator and a durable one-row Postgres
//! commit (every creation commits once).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::bench::{
    self, autovacuum_standin, connect_healthy, free_port, hex_key, json_field, measure_with,
    percentile, psql, row, us, Cleanup, Conn, Stats, ROUNDS,
};
use crate::bench_sts::{cpu_time, mint, postgres_probe, seed};

/// Cycles per throughput round, shared out over the connections.
const CYCLES_PER_ROUND: usize = 1_000;
/// Connections of the second throughput measurement.
const MANY_CONNECTIONS: usize = 16;

/// One value of an `application/x-www-form-urlencoded` body whose values need no decoding
/// (ids and plain words).
fn form_value<'a>(form: &'a str, name: &str) -> Result<&'a str, String> {
    form.split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        .ok_or_else(|| format!("form without {name}"))
}

/// Starts a task Session and closes it; answers 200 when both steps did what they should.
fn cycle(
    conn: &mut Conn,
    token: &str,
    zone: &str,
    start_body: &str,
) -> Result<(u16, String), String> {
    let (status, text) = conn.request(
        "POST",
        &format!("/zones/{zone}/agents"),
        Some(token),
        Some(start_body),
    )?;
    if status != 201 {
        return Ok((status, text));
    }
    let id = json_field(&text, "agent_session_id")
        .ok_or_else(|| format!("start answered without agent_session_id: {text}"))?
        .to_owned();
    let (status, text) = conn.request(
        "DELETE",
        &format!("/zones/{zone}/agents/{id}"),
        Some(token),
        None,
    )?;
    if status != 204 {
        return Ok((status, text));
    }
    Ok((200, String::new()))
}

struct Throughput {
    connections: usize,
    /// Cycles per second per round, sorted.
    rates: Vec<f64>,
    /// Server CPU microseconds per cycle per round, sorted.
    cpu_per_cycle: Vec<f64>,
}

fn throughput(
    conns: &mut [Conn],
    token: &str,
    zone: &str,
    start_body: &str,
    per_conn: usize,
    server: u32,
) -> Result<Throughput, String> {
    let mut rates = Vec::with_capacity(ROUNDS);
    let mut cpu_per_cycle = Vec::with_capacity(ROUNDS);
    for round in 0..=ROUNDS {
        let cpu = cpu_time(server)?;
        let started = Instant::now();
        let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
            let workers: Vec<_> = conns
                .iter_mut()
                .map(|conn| {
                    scope.spawn(move || {
                        for _ in 0..per_conn {
                            let (status, text) = cycle(conn, token, zone, start_body)?;
                            if status != 200 {
                                return Err(format!("cycle answered {status}: {text}"));
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
        for result in results {
            result?;
        }
        if round > 0 {
            let total = (conns.len() * per_conn) as f64;
            rates.push(total / elapsed.as_secs_f64());
            cpu_per_cycle.push(us(used) / total);
        }
    }
    rates.sort_by(f64::total_cmp);
    cpu_per_cycle.sort_by(f64::total_cmp);
    Ok(Throughput {
        connections: conns.len(),
        rates,
        cpu_per_cycle,
    })
}

/// Session cycles and Delegation creation over HTTP on Postgres + Redis, release binary.
pub fn http(binary: &Path) -> Result<(), String> {
    let api_port = free_port()?;
    let sts_port = free_port()?;
    let coordinator_port = free_port()?;
    let token = format!("cat_bench_{}", &hex_key()[..24]);
    let database = format!("caracal_bench_coordinator_{}", std::process::id());
    let scratch =
        std::env::temp_dir().join(format!("caracal-bench-coordinator-{}", std::process::id()));
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
        .env("ISSUER_URL", format!("http://127.0.0.1:{sts_port}"))
        .env("AUDIT_REPLAY_DIR", scratch.join("audit-replay"))
        .env("RUST_LOG", "warn")
        // The limits stay on (their Redis counters are part of the measured path) but high
        // enough that a closed-loop benchmark never trips them; closed Sessions stop counting
        // against the live-Session caps, the Delegation endpoints stay live throughout.
        .env("API_V1_RATE_LIMIT_PER_MIN", "1000000000")
        .env("STS_MINT_RATE_LIMIT_PER_MIN", "100000000")
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
    println!("seeding a zone through the admin API and minting a lifecycle mandate…");
    let form = seed(&mut api, &token)?;
    drop(api);
    let zone = form_value(&form, "zone_id")?.to_owned();
    let app = form_value(&form, "application_id")?.to_owned();
    let (status, text) = mint(&mut sts, &form)?;
    if status != 200 {
        return Err(format!("the lifecycle mint answered {status}: {text}"));
    }
    let mandate = json_field(&text, "access_token")
        .ok_or("mint without access_token")?
        .to_owned();
    drop(sts);

    let start_body = format!(r#"{{"application_id":"{app}","ttl_seconds":600}}"#);
    // Warm the tables up to a realistic shape, then let the planner see it, as autovacuum
    // would in a deployment (and again before each throughput phase).
    for _ in 0..bench::WARMUP {
        let (status, text) = cycle(&mut coordinator, &mandate, &zone, &start_body)?;
        if status != 200 {
            return Err(format!("warm-up cycle answered {status}: {text}"));
        }
    }
    let vacuumed = autovacuum_standin(&database)?;
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into());
    println!(
        "measuring latency: {ROUNDS} rounds × {} requests on one connection, after {} warm-up requests…",
        bench::PER_ROUND,
        bench::WARMUP
    );
    let health = measure_with(&mut coordinator, "GET /health", |c| {
        c.request("GET", "/health", None, None)
    })?;
    let cycles = measure_with(&mut coordinator, "Session create + close", |c| {
        cycle(c, &mandate, &zone, &start_body)
    })?;

    // Two long-lived endpoints; every measured request adds one more edge between them.
    let mut endpoints = Vec::new();
    for _ in 0..2 {
        let (status, text) = coordinator.request(
            "POST",
            &format!("/zones/{zone}/agents"),
            Some(&mandate),
            Some(&format!(
                r#"{{"application_id":"{app}","ttl_seconds":86400}}"#
            )),
        )?;
        if status != 201 {
            return Err(format!("start answered {status}: {text}"));
        }
        endpoints.push(
            json_field(&text, "agent_session_id")
                .ok_or("start without agent_session_id")?
                .to_owned(),
        );
    }
    let delegation_body = format!(
        r#"{{"source_session_id":"{}","target_session_id":"{}","issuer_application_id":"{app}","receiver_application_id":"{app}","resource_id":"resource://bench-svc","scopes":["svc:read"],"ttl_seconds":3600}}"#,
        endpoints[0], endpoints[1]
    );
    autovacuum_standin(&database)?;
    let delegations = measure_with(&mut coordinator, "Delegation create", |c| {
        let (status, text) = c.request(
            "POST",
            &format!("/zones/{zone}/delegations"),
            Some(&mandate),
            Some(&delegation_body),
        )?;
        Ok((if status == 201 { 200 } else { status }, text))
    })?;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut runs = Vec::new();
    let mut conns = vec![coordinator];
    for connections in [cores, MANY_CONNECTIONS.max(cores)] {
        let per_conn = (CYCLES_PER_ROUND / connections).max(1);
        println!(
            "measuring throughput: {connections} connections, {ROUNDS} rounds × {} cycles, after a warm-up round…",
            per_conn * connections
        );
        while conns.len() < connections {
            conns.push(Conn::open(coordinator_port)?);
        }
        autovacuum_standin(&database)?;
        runs.push(throughput(
            &mut conns,
            &mandate,
            &zone,
            &start_body,
            per_conn,
            server,
        )?);
    }
    drop(conns);
    println!("measuring Postgres round trips…");
    let (pg_rtt, commits) = postgres_probe(&database)?;
    drop(cleanup);

    report(
        &health,
        &cycles,
        &delegations,
        &runs,
        &pg_rtt,
        &commits,
        cores,
        &load,
        vacuumed,
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn report(
    health: &Stats,
    cycles: &Stats,
    delegations: &Stats,
    runs: &[Throughput],
    pg_rtt: &[std::time::Duration],
    commits: &[std::time::Duration],
    cores: usize,
    load: &str,
    vacuumed: bool,
) {
    let mid = ROUNDS / 2;
    println!(
        "\nmachine: {}; load average {load} when measuring began",
        bench::machine()
    );
    println!(
        "`caracal serve all`, release build, Postgres + Redis on loopback; closed loop, keep-alive"
    );
    if vacuumed {
        println!(
            "this Postgres runs with autovacuum off: the bench ran VACUUM ANALYZE after the warm-up and before each phase, as autovacuum would have"
        );
    }
    println!();
    println!("| request (one connection) | p50 (spread across rounds) | p95 (spread) | p99 |");
    println!("| --- | --- | --- | --- |");
    println!(
        "{}",
        row("GET /health on the Coordinator (baseline)", health)
    );
    println!("{}", row("Session create + close (two requests)", cycles));
    println!(
        "{}",
        row("POST …/delegations (Delegation create)", delegations)
    );
    println!("\n| round trip (same run, client side) | median (p10–p90) |");
    println!("| --- | --- |");
    for (name, samples) in [
        ("Postgres `SELECT 1` (psql)", pg_rtt),
        ("Postgres durable one-row commit (psql)", commits),
    ] {
        println!(
            "| {name} | {:.0} µs ({:.0}–{:.0}) |",
            us(percentile(samples, 0.5)),
            us(percentile(samples, 0.1)),
            us(percentile(samples, 0.9)),
        );
    }
    println!(
        "\n| connections | Session create+close cycles/s (spread across rounds) | cycles/s per core | server CPU per cycle (spread) |"
    );
    println!("| --- | --- | --- | --- |");
    for run in runs {
        println!(
            "| {} | {:.0} ({:.0}–{:.0}) | {:.0} | {:.0} µs ({:.0}–{:.0}) |",
            run.connections,
            run.rates[mid],
            run.rates[0],
            run.rates[ROUNDS - 1],
            run.rates[mid] / cores as f64,
            run.cpu_per_cycle[mid],
            run.cpu_per_cycle[0],
            run.cpu_per_cycle[ROUNDS - 1],
        );
    }
    let commit = us(percentile(commits, 0.5)).max(1.0);
    if let Some(first) = runs.first() {
        println!(
            "\ncycles/s with {} connections: {:.0} = {:.1}× upstream's 192 (target ≥ 2,000); with {}: {:.0} ({:.1}×)",
            first.connections,
            first.rates[mid],
            first.rates[mid] / 192.0,
            runs.last().map_or(0, |r| r.connections),
            runs.last().map_or(0.0, |r| r.rates[mid]),
            runs.last().map_or(0.0, |r| r.rates[mid] / 192.0),
        );
    }
    println!(
        "Delegation create p50 {:.2} ms = {:.1}× faster than upstream's 17.5 ms (target ≤ 2 ms); {:.1}× the /health baseline and {:.1}× a durable Postgres commit of this run",
        us(delegations.p50[mid]) / 1e3,
        17_500.0 / us(delegations.p50[mid]).max(1.0),
        us(delegations.p50[mid]) / us(health.p50[mid]).max(1.0),
        us(delegations.p50[mid]) / commit,
    );
    println!(
        "one cycle p50 {:.2} ms = {:.1}× a durable Postgres commit (a cycle commits twice)",
        us(cycles.p50[mid]) / 1e3,
        us(cycles.p50[mid]) / commit,
    );
}
