//! Redis adapter (deadpool-redis): the event bus on Redis Streams. Its connection pool is public so
//! the other Redis-backed ports (JTI replay guard, rate limits, revocation) share one pool.

#![forbid(unsafe_code)]

pub mod bus;

pub use bus::RedisBus;
pub mod limits;
pub mod shared;

pub use limits::RedisRateLimiter;
pub mod expiring;

pub use expiring::RedisExpiringKeys;
pub mod versions;

pub use versions::RedisAuthorityVersions;
