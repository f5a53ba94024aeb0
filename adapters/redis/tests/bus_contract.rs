//! The event-bus contract against a real Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`).
//!
//! Outside CI an unreachable Redis skips the run with a message; in CI (`CI` set) it fails, since
//! CI must prove the production adapter honours the same contract as the memory bus.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use caracal_core::contract::events;
use caracal_core::ports::events::EventBus;
use caracal_redis::RedisBus;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// A suffix no other run shares, so concurrent runs against one Redis never read each other's
/// entries.
fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}

/// `url` with any `user:password@` part masked, so a CI log never shows the Redis password.
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***{}", &url[at..]),
        _ => url.to_string(),
    }
}

/// The bus under test, or `None` (after saying why) when Redis is unreachable outside CI.
async fn bus_or_skip() -> Option<RedisBus> {
    let raw_url = std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_string());
    let url = redacted(&raw_url);
    let reachable = match RedisBus::connect(&raw_url) {
        Ok(bus) => bus.ping().await.map(|()| bus),
        Err(e) => Err(e),
    };
    match reachable {
        Ok(bus) => Some(bus),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI must run the Redis contract, but Redis is unreachable at {url}: {e}")
        }
        Err(e) => {
            println!("skipping: Redis unreachable at {url}: {e}");
            None
        }
    }
}

async fn delete_streams(bus: &RedisBus, streams: &[String]) {
    let mut conn = bus.pool().get().await.expect("a connection for cleanup");
    let _: i64 = redis::cmd("DEL")
        .arg(streams)
        .query_async(&mut conn)
        .await
        .expect("DEL of the contract streams");
}

/// Runs `check` in its own task, deletes `streams` whatever happened, then re-raises a failed
/// assertion: leftover streams would otherwise pile up in a shared Redis after every red run.
async fn with_cleanup<F>(bus: &RedisBus, streams: Vec<String>, check: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(check).await;
    delete_streams(bus, &streams).await;
    if let Err(failure) = outcome {
        match failure.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("contract task did not finish: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_bus_honours_the_event_bus_contract() {
    let Some(bus) = bus_or_skip().await else {
        return;
    };
    let bus = Arc::new(bus);
    let unique = unique_suffix();
    let streams = events::streams_used(&unique);
    let check = {
        let bus = Arc::clone(&bus);
        async move { events::run_all(bus.as_ref(), &unique).await }
    };
    with_cleanup(&bus, streams, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_blocking_read_does_not_stall_the_next_commands() {
    let Some(bus) = bus_or_skip().await else {
        return;
    };
    let bus = Arc::new(bus);
    let stream = events::stream_name("cancelled-read", &unique_suffix());
    let check = {
        let bus = Arc::clone(&bus);
        let stream = stream.clone();
        async move { cancelled_blocking_read(&bus, &stream).await }
    };
    with_cleanup(&bus, vec![stream], check).await;
}

/// Redis answers nothing else on a connection while a blocking read waits, so the connection of
/// an abandoned read must not return to the pool: the next publish would queue behind it.
async fn cancelled_blocking_read(bus: &RedisBus, stream: &str) {
    bus.ensure_group(stream, "g").await.expect("ensure group");
    let abandoned = tokio::time::timeout(
        Duration::from_millis(100),
        bus.read_group(stream, "g", "c", 10, 10_000),
    )
    .await;
    assert!(
        abandoned.is_err(),
        "the read should still have been blocked"
    );
    let started = Instant::now();
    let id = bus
        .publish(stream, &[("k".to_string(), "v".to_string())])
        .await
        .expect("publish");
    bus.ping().await.expect("ping");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "commands after a cancelled blocking read must not queue behind it ({:?})",
        started.elapsed()
    );
    let got = bus.read_group(stream, "g", "c", 10, 0).await.expect("read");
    let got_ids: Vec<&str> = got.iter().map(|d| d.entry_id.as_str()).collect();
    assert_eq!(
        got_ids,
        vec![id.as_str()],
        "the entry published after the cancel"
    );
}
