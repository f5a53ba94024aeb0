//! The ingest pipeline over a real Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`), on
//! streams named for this run: delivery counts come from Redis' own pending list after each
//! claim, and the start-up drain re-reads Redis' history of this consumer.
//!
//! Outside CI an unreachable Redis skips the run with a message; in CI (`CI` set) it fails.

mod support;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use caracal_audit::StreamNames;
use caracal_core::ports::events::EventBus;
use caracal_memory::SystemClock;
use caracal_redis::RedisBus;
use support::*;

async fn redis_or_skip() -> Option<RedisBus> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let reachable = match RedisBus::connect(&url) {
        Ok(bus) => bus.ping().await.map(|()| bus),
        Err(e) => Err(e),
    };
    match reachable {
        Ok(bus) => Some(bus),
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI needs Redis: {e}"),
        Err(e) => {
            println!("skipping: Redis unreachable: {e}");
            None
        }
    }
}

/// Streams of this run only, so nothing touches the real `caracal.audit.events`.
fn run_streams(case: &str) -> StreamNames {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let base = format!("caracal.test.audit.{case}.{}-{nanos}", std::process::id());
    StreamNames {
        events: base.clone(),
        dlq: format!("{base}.dlq"),
        group: "audit-ingestor".into(),
    }
}

/// Runs `check` and deletes the run's streams whatever happened.
async fn with_cleanup<F>(redis: &RedisBus, streams: &StreamNames, check: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(check).await;
    let mut conn = redis.pool().get().await.expect("connection");
    let _: i64 = redis::cmd("DEL")
        .arg(&streams.events)
        .arg(&streams.dlq)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    if let Err(failure) = outcome {
        match failure.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task did not finish: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_reach_the_delivery_limit_on_redis() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let streams = run_streams("transient");
    let bus: Arc<dyn EventBus> = Arc::new(redis.clone());
    let names = streams.clone();
    let check = async move {
        let w = World::on_bus(bus, Arc::new(SystemClock), |c| c.streams = names).await;
        w.ledger.fail_transiently(Some("40P01 deadlock detected"));
        w.publish_event("e1", &event("e1", "zone_a", &minutes_ago(1), "allow", "r1"))
            .await;
        assert_eq!(w.ingest().await.pending, 1);
        for delivery in 2..8 {
            assert_eq!(w.reap().await.pending, 1, "delivery {delivery}");
        }
        assert_eq!(w.reap().await.dead_lettered, 1, "delivery 8");
        assert_eq!(w.pending_count().await, 0);
        let dlq = w.dead_letters().await;
        assert_eq!(
            field(&dlq[0].fields, "reason"),
            Some("transient_exceeded_max_deliveries:40P01 deadlock detected")
        );
    };
    with_cleanup(&redis, &streams, check).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_and_the_reaper_work_on_redis() {
    let Some(redis) = redis_or_skip().await else {
        return;
    };
    let streams = run_streams("drain");
    let bus: Arc<dyn EventBus> = Arc::new(redis.clone());
    let names = streams.clone();
    let check = async move {
        let w = World::on_bus(Arc::clone(&bus), Arc::new(SystemClock), |c| {
            c.streams = names.clone();
            c.consumer = "audit-worker-0".into();
        })
        .await;
        for n in 1..=3 {
            let id = format!("e{n}");
            w.publish_event(&id, &event(&id, "zone_a", &minutes_ago(1), "allow", "r1"))
                .await;
        }
        let taken = bus
            .read_group(&names.events, &names.group, "audit-worker-0", 2, 0)
            .await
            .expect("read");
        assert_eq!(taken.len(), 2);
        let orphan = bus
            .read_group(&names.events, &names.group, "audit-worker-1", 10, 0)
            .await
            .expect("read");
        assert_eq!(orphan.len(), 1);
        assert_eq!(w.ingestor().drain_own_pending().await.expect("drain"), 2);
        assert_eq!(
            w.pending_count().await,
            1,
            "the other consumer's entry remains"
        );
        assert_eq!(w.reap().await.acked, 1, "the reaper takes it over");
        let ids: Vec<String> = w
            .rows("zone_a")
            .await
            .into_iter()
            .map(|r| r.event.id)
            .collect();
        assert_eq!(ids, vec!["e1", "e2", "e3"]);
        assert_eq!(w.pending_count().await, 0);
    };
    with_cleanup(&redis, &streams, check).await;
}
