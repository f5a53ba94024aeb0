//! Audit evidence as the Audit service stores it (`spec/audit-streams-storage.md §4, §6`): the
//! canonical event form, the per-zone hash chain and its verifier, what the ingestor does with
//! each stream entry, and the dead-letter queue's entries. Producers' side (the event a service
//! emits) is [`crate::ports::AuditEvent`].

pub mod chain;
pub mod dlq;
pub mod event;
pub mod ingest;
pub mod json;
pub mod pack;
pub mod verify;

pub use chain::{Anchor, Break, BreakKind, ChainHead, Link, StoredEvent, ZoneVerifier};
pub use event::{parse_entry, CanonicalEvent, IncomingEvent, Rejection};
pub use ingest::{after_append, Action};
pub use verify::{verify_ledger, ZoneReport};
