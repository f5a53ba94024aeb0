//! Caracal's domain core: identifiers, the management aggregates and their rules, and the ports
//! through which the domain reaches storage, streams, keys and time. This crate does no I/O.

#![forbid(unsafe_code)]

pub mod approval;
pub mod attribution;
pub mod audit;
pub mod authority;
pub mod coordinator;
pub mod digest;
pub mod dispatch;
pub mod error;
pub mod expiry_cache;
pub mod gateway;
pub mod ids;
pub mod manage;
pub mod mandate;
pub mod model;
pub mod naming;
pub mod pagination;
pub mod patch;
pub mod policy;
pub mod policy_document;
pub mod ports;
pub mod provider_config;
pub mod sts;
pub mod time;

pub use error::{CryptoError, Error, ErrorKind, Result, StoreError};

/// Port contract suites, written once and run against every adapter (memory always; Postgres and
/// Redis when their URLs are set, and always in CI).
#[cfg(feature = "contract")]
pub mod contract;
