//! Postgres adapter for Caracal's storage ports, on diesel-async and tokio-postgres (no libpq).
//!
//! * [`PgStore`] implements `Store` (zone-bound units of work) and `OutboxQueue` (the outbox
//!   dispatcher's claims).
//! * [`PgUnitOfWork`] is one transaction on one pooled connection, running as the `caracal_app`
//!   role with `caracal.zone_id` set, so row-level security confines it to its zone
//!   (`spec/api.md §5`). Dropping it without `commit` rolls back.
//! * [`PgLedger`] implements `AuditLedger`: the append-only, hash-chained audit evidence,
//!   written as the `caracal_audit` role.
//! * [`migrate`] applies the embedded migrations in `migrations/`.
//!
//! The behaviour every adapter must share is pinned by `caracal_core::contract::store`, which
//! this crate's tests run against a real server.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod audit;
mod convert;
mod error;
mod migrate;
mod minted;
mod prepared;
mod queue;
mod repos;
mod schema;
mod store;
mod unit_of_work;

pub use audit::PgLedger;
pub use migrate::migrate;
pub use store::PgStore;
pub use unit_of_work::PgUnitOfWork;
