//! Port contract suites: one per port, run by every adapter's tests.
pub mod audit;
pub mod events;
pub mod expiring;
pub mod limits;
pub mod store;
pub mod versions;
