//! Shared actix-web pieces every Caracal service uses: the one mapping from domain errors to
//! HTTP, request ids, JSON bodies with limits, typed environment configuration, and the
//! Prometheus text renderer.

#![forbid(unsafe_code)]

pub mod body;
pub mod config;
pub mod error;
pub mod metrics;
pub mod request_id;

pub use error::{framework_error, not_found_route, ApiError};
pub use request_id::{request_id_of, RequestId};
