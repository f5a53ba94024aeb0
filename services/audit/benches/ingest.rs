//! Audit benchmarks (issue #6), run by `cargo xtask bench audit` (or
//! `cargo bench -p caracal-audit --bench ingest`), on Postgres (`DATABASE_URL`'s server, a fresh
//! database) and Redis (`REDIS_URL`, streams named for this run):
//!
//! 1. **Ingest**: [`ROUNDS`] rounds of [`PER_ROUND`] signed, realistic events (half Gateway
//!    `gateway_resource_request`, half STS `token_exchange`, five zones) published to a stream
//!    first, then consumed by the Audit service's own ingestor (`read_once` batches of 100:
//!    signature check, canonical form, one ledger transaction per batch, ack). Baseline in the
//!    same run: the same entries read and acknowledged through a second consumer group without
//!    storing them — the stream's own floor.
//! 2. **Storage**: bytes per stored event including every index (`pg_total_relation_size` over
//!    the month partitions ÷ rows), after the last round.
//! 3. **Search**: `AuditLedger::search` (the `/api/audit/search` query) and `AuditLedger::list`
//!    (the API's `/v1/zones/{z}/audit`), 50-row pages, p50 and p90 over repeated queries, after
//!    the first round and again after the last, so a growing table shows as a changing figure.
//!
//! Figures are printed, never asserted. Events are generated here, not by a running STS or
//! Gateway: the figure is the Audit service's cost, not the producers'.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use caracal_audit::{AuditConfig, AuditPorts, AuditState, StreamNames};
use caracal_core::ports::audit::{AuditLedger, ListQuery, SearchQuery};
use caracal_core::ports::events::EventBus;
use caracal_core::ports::MessageAuthenticator;
use caracal_crypto::HmacSha256;
use caracal_memory::SystemClock;
use caracal_postgres::{PgLedger, PgStore};
use caracal_redis::RedisBus;
use serde_json::json;

const ROUNDS: usize = 5;
const PER_ROUND: usize = 20_000;
const ZONES: u64 = 5;
const SEARCH_REPEATS: usize = 200;

type Setup<T> = Result<T, String>;

fn uuid(kind: u64, i: u64) -> String {
    let h = caracal_core::digest::sha256_hex(format!("{kind}-{i}").as_bytes());
    format!(
        "0197{}-{}-7{}-8{}-{}",
        &h[0..4],
        &h[4..8],
        &h[8..11],
        &h[11..14],
        &h[14..26]
    )
}

/// One event with the fields and metadata members our producers write: a Gateway
/// `gateway_resource_request` (even `n`; `services/gateway/src/{audit,proxy}.rs`) or an STS
/// `token_exchange` (odd `n`; `core/src/sts/exchange.rs`), every other one of those through a
/// two-hop Delegation.
fn event(n: u64, occurred_at: &str) -> serde_json::Value {
    let zone = uuid(0, n % ZONES);
    let app = uuid(1, n % 20);
    if n.is_multiple_of(2) {
        json!({
            "id": uuid(10, n), "zone_id": zone, "event_type": "gateway_resource_request",
            "request_id": uuid(11, n / 2), "decision": "allow", "evaluation_status": "executed",
            "determining_policies_json": [], "diagnostics_json": [],
            "metadata_json": {
                "application_id": app, "resource": "resource://billing",
                "subject_fingerprint": &caracal_core::digest::sha256_hex(&n.to_be_bytes())[..16],
                "method": "GET", "subject_kind": "application", "auth_mode": "bearer_token",
                "provider_id": uuid(2, n % 10), "upstream_host": "billing.example.com",
                "upstream_status": 200, "result_class": "success", "gateway_status": 200,
                "latency_ms": n % 97, "response_bytes": 1000 + n % 4000,
            },
            "occurred_at": occurred_at,
        })
    } else {
        let mut metadata = json!({
            "application_id": app, "application_name": "billing-agent",
            "application_registration_method": "managed", "resource": "resource://billing",
            "requested_scopes": ["invoices:read"], "session_id": uuid(3, n % 3000),
            "agent_session_id": uuid(4, n % 2000),
            "requested": {"method": "GET", "path": "/v1/invoices"},
        });
        if n % 4 == 1 {
            if let Some(m) = metadata.as_object_mut() {
                m.insert("delegation_edge_id".into(), uuid(5, n % 2000).into());
                m.insert("agent_lifecycle".into(), "task".into());
                m.insert("agent_labels".into(), json!(["team:payments"]));
                m.insert("agent_depth".into(), 1.into());
                m.insert("agent_parent_id".into(), uuid(6, n % 500).into());
                m.insert(
                    "delegation_chain".into(),
                    json!([
                        {"application_id": uuid(1, (n + 1) % 20), "agent_session_id": uuid(6, n % 500)},
                        {"application_id": app, "agent_session_id": uuid(4, n % 2000),
                         "delegation_edge_id": uuid(5, n % 2000)},
                    ]),
                );
                m.insert("delegation_hop_count".into(), 1.into());
                m.insert("delegation_graph_epoch".into(), (n % 50).into());
            }
        }
        json!({
            "id": uuid(10, n), "zone_id": zone, "event_type": "token_exchange",
            "request_id": uuid(11, n / 2), "decision": if n.is_multiple_of(7) { "deny" } else { "allow" },
            "policy_set_version_id": uuid(7, 1),
            "manifest_sha": caracal_core::digest::sha256_hex(b"manifest"),
            "evaluation_status": "complete",
            "determining_policies_json": [{"policy": "caracal.authz.allow_grant"}],
            "diagnostics_json": [],
            "metadata_json": metadata,
            "occurred_at": occurred_at,
        })
    }
}

fn psql(database: &str, sql: &str) -> Setup<String> {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            database,
            "-At",
            "-c",
            sql,
        ])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn median_spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    (
        percentile(&values, 0.5),
        values.first().copied().unwrap_or(0.0),
        values.last().copied().unwrap_or(0.0),
    )
}

async fn publish_round(bus: &RedisBus, stream: &str, mac: &HmacSha256, start: u64) -> Setup<()> {
    let base = chrono::Utc::now();
    let mut entries = Vec::with_capacity(1000);
    for n in start..start + PER_ROUND as u64 {
        // Each event its own instant, as producers stamp them (a shared timestamp would turn
        // every time-ordered read into a sort of the whole round).
        let at = (base + chrono::Duration::microseconds((n - start) as i64 * 50))
            .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let data = event(n, &at).to_string();
        let sig = mac.sign_hex(data.as_bytes());
        entries.push(vec![
            ("id".to_string(), uuid(10, n)),
            ("data".to_string(), data),
            ("sig".to_string(), sig),
        ]);
        if entries.len() == 1000 {
            let (sent, err) = bus.publish_batch(stream, &entries).await;
            if let Some(e) = err {
                return Err(format!("publish: {e} after {sent}"));
            }
            entries.clear();
        }
    }
    if !entries.is_empty() {
        let (_, err) = bus.publish_batch(stream, &entries).await;
        if let Some(e) = err {
            return Err(format!("publish: {e}"));
        }
    }
    Ok(())
}

/// Reads and acknowledges `count` entries through `group` without storing them.
async fn consume_only(bus: &RedisBus, stream: &str, group: &str, count: usize) -> Setup<Duration> {
    let started = Instant::now();
    let mut seen = 0;
    while seen < count {
        let batch = bus
            .read_group(stream, group, "bench-floor", 100, 100)
            .await
            .map_err(|e| e.to_string())?;
        let ids: Vec<String> = batch.iter().map(|d| d.entry_id.clone()).collect();
        seen += ids.len();
        if !ids.is_empty() {
            bus.ack(stream, group, &ids)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(started.elapsed())
}

async fn search_figures(ledger: &PgLedger, zone: &str) -> Setup<[(f64, f64); 4]> {
    let base = SearchQuery {
        zone_id: zone.to_string(),
        since_micros: i64::MIN,
        until_micros: i64::MAX,
        decision: None,
        request_id: None,
        after_seq: 0,
        limit: 50,
    };
    let rows = ledger
        .search(&SearchQuery {
            limit: 1000,
            ..base.clone()
        })
        .await
        .map_err(|e| e.to_string())?;
    let request_id = rows
        .get(rows.len() / 2)
        .map(|r| r.event.request_id.clone())
        .unwrap_or_default();
    let max_seq = rows.last().map(|r| r.chain_seq).unwrap_or(0);
    let list_base = ListQuery {
        zone_id: zone.to_string(),
        limit: 50,
        ..ListQuery::default()
    };
    let mut samples: [Vec<f64>; 4] = Default::default();
    for i in 0..SEARCH_REPEATS {
        let t = Instant::now();
        ledger
            .search(&SearchQuery {
                after_seq: (i as i64 * 37) % max_seq.max(1),
                ..base.clone()
            })
            .await
            .map_err(|e| e.to_string())?;
        samples[0].push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        ledger
            .search(&SearchQuery {
                request_id: Some(request_id.clone()),
                ..base.clone()
            })
            .await
            .map_err(|e| e.to_string())?;
        samples[1].push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        ledger.list(&list_base).await.map_err(|e| e.to_string())?;
        samples[2].push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        ledger
            .list(&ListQuery {
                application_id: Some(uuid(1, (i % 20) as u64)),
                ..list_base.clone()
            })
            .await
            .map_err(|e| e.to_string())?;
        samples[3].push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut out = [(0.0, 0.0); 4];
    for (slot, mut s) in out.iter_mut().zip(samples) {
        s.sort_by(|a, b| a.total_cmp(b));
        *slot = (percentile(&s, 0.5), percentile(&s, 0.9));
    }
    Ok(out)
}

fn print_search(label: &str, rows: u64, figures: &[(f64, f64); 4]) {
    let names = [
        "search: 50 rows by chain_seq from a cursor",
        "search: by request_id",
        "API list: newest 50",
        "API list: newest 50 of one application",
    ];
    for (name, (p50, p90)) in names.iter().zip(figures) {
        println!("| {label} ({rows} rows stored) | {name} | {p50:.2} ms | {p90:.2} ms |");
    }
}

async fn run(database: &str) -> Setup<()> {
    let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    caracal_postgres::migrate(&url)
        .await
        .map_err(|e| format!("migrate: {e}"))?;
    let store = PgStore::connect(&url, 8).map_err(|e| e.to_string())?;
    let ledger = Arc::new(PgLedger::new(store));
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let bus = Arc::new(RedisBus::connect(&redis_url).map_err(|e| e.to_string())?);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let streams = StreamNames {
        events: format!("caracal.bench.audit.{}-{nanos}", std::process::id()),
        dlq: format!("caracal.bench.audit.{}-{nanos}.dlq", std::process::id()),
        group: "audit-ingestor".into(),
    };
    let mac = HmacSha256::from_bytes(&nanos.to_be_bytes().repeat(2));
    let mut config = AuditConfig::defaults();
    config.streams = streams.clone();
    let state = AuditState::new(
        AuditPorts {
            ledger: ledger.clone(),
            bus: bus.clone(),
            clock: Arc::new(SystemClock),
            mac: Some(Arc::new(mac.clone())),
        },
        config,
    );
    let ingestor = state.ingestor();
    ingestor.ensure_group().await.map_err(|e| e.to_string())?;
    bus.ensure_group(&streams.events, "bench-floor")
        .await
        .map_err(|e| e.to_string())?;

    let zone = uuid(0, 0);
    let mut ingest_rates = Vec::new();
    let mut floor_rates = Vec::new();
    let mut early_search = None;
    for round in 0..ROUNDS {
        publish_round(&bus, &streams.events, &mac, (round * PER_ROUND) as u64).await?;
        let floor = consume_only(&bus, &streams.events, "bench-floor", PER_ROUND).await?;
        floor_rates.push(PER_ROUND as f64 / floor.as_secs_f64());
        let started = Instant::now();
        let mut acked = 0;
        let mut dead = 0;
        while acked < PER_ROUND {
            let tally = ingestor
                .read_once(Duration::from_millis(100))
                .await
                .map_err(|e| e.to_string())?;
            acked += tally.acked;
            dead += tally.dead_lettered;
            if tally.pending > 0 {
                return Err(format!("{} entries failed transiently", tally.pending));
            }
        }
        let elapsed = started.elapsed();
        if dead > 0 {
            return Err(format!("{dead} events were dead-lettered"));
        }
        ingest_rates.push(PER_ROUND as f64 / elapsed.as_secs_f64());
        println!(
            "round {}: ingested {PER_ROUND} in {:.2} s ({:.0} events/s); consume-only floor {:.0}/s",
            round + 1,
            elapsed.as_secs_f64(),
            ingest_rates[round],
            floor_rates[round]
        );
        if round == 0 {
            // Fresh statistics, as before the final measurement: both see what autovacuum
            // would have given the planner.
            psql(database, "VACUUM ANALYZE audit_events")?;
            early_search = Some(search_figures(&ledger, &zone).await?);
        }
    }
    let stored: u64 = psql(database, "SELECT count(*) FROM audit_events")?
        .parse()
        .map_err(|e| format!("count: {e}"))?;
    let expected = (ROUNDS * PER_ROUND) as u64;
    if stored != expected {
        return Err(format!("stored {stored} rows, expected {expected}"));
    }
    psql(database, "VACUUM ANALYZE audit_events")?;
    let bytes: f64 = psql(
        database,
        "SELECT sum(pg_total_relation_size(i.inhrelid)) FROM pg_inherits i \
         WHERE i.inhparent = 'audit_events'::regclass",
    )?
    .parse()
    .map_err(|e| format!("size: {e}"))?;
    let heap: f64 = psql(
        database,
        "SELECT sum(pg_relation_size(i.inhrelid) + coalesce(pg_total_relation_size(c.reltoastrelid), 0)) \
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'audit_events'::regclass",
    )?
    .parse()
    .map_err(|e| format!("heap size: {e}"))?;
    let late_search = search_figures(&ledger, &zone).await?;
    let _ = Command::new("redis-cli")
        .args(["-u", &redis_url, "DEL", &streams.events, &streams.dlq])
        .output();

    let (ingest, ingest_lo, ingest_hi) = median_spread(ingest_rates);
    let (floor, floor_lo, floor_hi) = median_spread(floor_rates);
    println!("\n| measure | median | spread (min–max over {ROUNDS} rounds) |");
    println!("| --- | --- | --- |");
    println!("| ingest, events/s (batches of 100, one transaction each) | {ingest:.0} | {ingest_lo:.0}–{ingest_hi:.0} |");
    println!("| baseline: read + ack only, events/s | {floor:.0} | {floor_lo:.0}–{floor_hi:.0} |");
    println!("| ingest ÷ baseline | {:.2} | |", ingest / floor);
    println!(
        "\nstorage: {stored} events, {:.0} bytes per event including indexes ({:.0} table + TOAST, {:.0} indexes); upstream publishes 1,843",
        bytes / stored as f64,
        heap / stored as f64,
        (bytes - heap) / stored as f64
    );
    println!("\n| table | query | p50 | p90 |");
    println!("| --- | --- | --- | --- |");
    if let Some(early) = early_search {
        print_search("after round 1", PER_ROUND as u64, &early);
    }
    print_search("after the last round", stored, &late_search);
    println!("(one zone holds a fifth of the rows; {SEARCH_REPEATS} queries each)");
    Ok(())
}

fn main() {
    let database = format!("caracal_bench_audit_{}", std::process::id());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = psql("postgres", &format!("CREATE DATABASE {database}"))
        .and_then(|_| runtime.block_on(run(&database)));
    let _ = psql(
        "postgres",
        &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
    );
    if let Err(e) = result {
        eprintln!("audit bench failed: {e}");
        std::process::exit(1);
    }
}
