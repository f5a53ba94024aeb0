//! The audit evidence publisher of the STS and the Gateway (`spec/sts.md §13`,
//! `spec/audit-streams-storage.md §3.3–5`): an [`AuditSink`](caracal_core::ports::AuditSink)
//! that signs each decision, `XADD`s it to `caracal.audit.events` through the
//! [`EventBus`](caracal_core::ports::EventBus) port, and keeps it in a local replay spool while
//! the stream is unreachable, so no decision goes unrecorded and none is published twice by
//! this side.
//!
//! - [`publisher`]: the buffer, the batching task, live/spool routing, shutdown, health.
//! - `frame`: the stream entry and its spool line.
//! - `spool`: the replay directory, its locking protocol and the writer.
//! - `replay`: reading spooled files back with crash-safe progress.

#![warn(missing_docs)]

mod frame;
pub mod publisher;
mod replay;
mod spool;

pub use publisher::{metric_samples, AuditPublisher, PublisherConfig, AUDIT_STREAM};
