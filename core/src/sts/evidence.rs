//! How the STS hands decisions to the audit sink.

use chrono::SecondsFormat;

use crate::ports::AuditEvent;
use crate::time::Timestamp;

use super::Sts;

/// RFC 3339 UTC with nanoseconds, as upstream's Go `time.RFC3339Nano` renders `occurred_at`
/// (trailing zeros of the fraction are kept at nine digits so events sort as text).
pub fn rfc3339_nanos(at: Timestamp) -> String {
    at.as_datetime().to_rfc3339_opts(SecondsFormat::Nanos, true)
}

impl Sts {
    /// Queues one event; the sink never blocks and never fails the request.
    pub(crate) fn emit(&self, event: AuditEvent) {
        self.audit.emit(event);
    }
}
