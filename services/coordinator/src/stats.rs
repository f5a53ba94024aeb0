//! Process counters behind `/metrics` and `/stats` (`spec/coordinator-gateway.md` A13):
//! idempotent-creation outcomes (read off the creation routes' results) and background job
//! runs.

use std::sync::atomic::{AtomicU64, Ordering};

use caracal_core::coordinator::Reply;
use caracal_core::Error;

/// The counters. Relaxed atomics: each is an independent monotonic count.
#[derive(Debug, Default)]
pub struct Stats {
    idempotency_created: AtomicU64,
    idempotency_replayed: AtomicU64,
    idempotency_conflicts: AtomicU64,
    idempotency_invalid: AtomicU64,
    ttl_sweeper_runs: AtomicU64,
    service_lease_sweeper_runs: AtomicU64,
    deadline_enforcer_runs: AtomicU64,
    retention_cleaner_runs: AtomicU64,
    retention_deleted: AtomicU64,
}

/// A background job, for its run counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Task Session TTL expiry.
    TtlSweeper,
    /// Service Session lease expiry.
    ServiceLeaseSweeper,
    /// Overdue invocation attempts.
    DeadlineEnforcer,
    /// Edge expiry and the deletion of old rows.
    RetentionCleaner,
}

impl Job {
    /// The job's name in logs and metric names.
    pub fn name(self) -> &'static str {
        match self {
            Self::TtlSweeper => "ttl_sweeper",
            Self::ServiceLeaseSweeper => "service_lease_sweeper",
            Self::DeadlineEnforcer => "deadline_enforcer",
            Self::RetentionCleaner => "retention_cleaner",
        }
    }
}

/// A snapshot of every counter, in render order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `(outcome, count)` of idempotent creations.
    pub idempotency: [(&'static str, u64); 4],
    /// `(job, runs)`.
    pub jobs: [(&'static str, u64); 4],
    /// Rows the retention job deleted or expired.
    pub retention_deleted: u64,
}

impl Stats {
    /// Counts the outcome of an idempotent creation: `keyed` says whether the request carried
    /// a key (a keyless creation is not an idempotency outcome).
    pub fn observe_creation(&self, keyed: bool, result: &Result<Reply, Error>) {
        let counter = match result {
            Ok(r) if r.replayed => &self.idempotency_replayed,
            Ok(_) if keyed => &self.idempotency_created,
            Ok(_) => return,
            Err(e) => match e.code {
                "idempotency_key_conflict" => &self.idempotency_conflicts,
                "idempotency_key_invalid" | "idempotency_key_multiple" => &self.idempotency_invalid,
                _ => return,
            },
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one completed run of `job`, which changed `rows`.
    pub fn observe_run(&self, job: Job, rows: u64) {
        let counter = match job {
            Job::TtlSweeper => &self.ttl_sweeper_runs,
            Job::ServiceLeaseSweeper => &self.service_lease_sweeper_runs,
            Job::DeadlineEnforcer => &self.deadline_enforcer_runs,
            Job::RetentionCleaner => {
                self.retention_deleted.fetch_add(rows, Ordering::Relaxed);
                &self.retention_cleaner_runs
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter now.
    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            idempotency: [
                ("created", get(&self.idempotency_created)),
                ("replayed", get(&self.idempotency_replayed)),
                ("conflicts", get(&self.idempotency_conflicts)),
                ("invalid", get(&self.idempotency_invalid)),
            ],
            jobs: [
                (Job::TtlSweeper.name(), get(&self.ttl_sweeper_runs)),
                (
                    Job::ServiceLeaseSweeper.name(),
                    get(&self.service_lease_sweeper_runs),
                ),
                (
                    Job::DeadlineEnforcer.name(),
                    get(&self.deadline_enforcer_runs),
                ),
                (
                    Job::RetentionCleaner.name(),
                    get(&self.retention_cleaner_runs),
                ),
            ],
            retention_deleted: get(&self.retention_deleted),
        }
    }
}
