//! The audit read surfaces (`spec/api.md §3.13`, and `/v1/audit-retention` in §3.15): the
//! filters parsed the way upstream's routes parse them, read-time redaction, the explain
//! document, the `fields`/CSV exports, and the retention setting.
//!
//! Decision events come from the [`AuditLedger`](caracal_core::ports::audit::AuditLedger) the
//! Audit service writes; admin audit records come from the store's `admin_audit_events` chain.

pub mod admin;
pub mod cursor;
pub mod explain;
pub mod export;
pub mod query;
pub mod redact;
pub mod retention;

use caracal_core::error::{Error, ErrorKind};
use caracal_core::ports::audit::LedgerError;

/// A ledger failure as the API answers it: a transient one is the store being unavailable
/// (`503`, worth the SDK's GET retry); anything else is a server fault.
pub fn ledger_error(err: LedgerError) -> Error {
    match err {
        LedgerError::Transient(detail) => {
            Error::new(ErrorKind::Unavailable, "store_unavailable").with_detail(detail)
        }
        LedgerError::Permanent(detail) => Error::internal(detail),
    }
}
