//! Every Caracal port in memory: the embedded dev mode and fast tests. Semantics match the
//! Postgres and Redis adapters where it matters (the contract suites in `caracal-core` run
//! against both), but nothing survives the process.

#![forbid(unsafe_code)]

pub mod store;
pub mod system;

pub use store::MemoryStore;
pub use system::{FixedClock, SystemClock, UuidV7Ids};

pub mod bus;
pub use bus::MemoryBus;

pub mod limits;
pub use limits::MemoryRateLimiter;

pub mod expiring;
pub use expiring::MemoryExpiringKeys;

pub mod audit;
pub use audit::MemoryLedger;

pub mod versions;
pub use versions::MemoryAuthorityVersions;
