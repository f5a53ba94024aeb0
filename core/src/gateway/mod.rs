//! The Gateway's decisions (`spec/coordinator-gateway.md` Part B), free of I/O: which requests
//! are refused before anything leaves the Gateway and with which error, how the signed STS
//! exchange is built and its answer read, which headers reach the upstream and the caller, which
//! hosts may be dialled, the STS circuit breaker, the revocation anchor sets, and the audit
//! events. The `caracal-gateway` service wires these to HTTP, Redis and the STS.
//!
//! - [`preflight`]: B2/B3 steps 1–9 on the raw request (bearer, claim peeks, routing headers,
//!   traversal).
//! - [`path`]: B9 traversal, path join and query merge.
//! - [`headers`]: B10 request and response header rewriting and B8 credential placement.
//! - [`host`]: B11 upstream URL and address safety.
//! - [`exchange`]: B7 form, signature and STS answer; the B8 upstream directive.
//! - [`circuit`]: the B7 circuit breaker.
//! - [`anchors`]: B6 revocation anchor sets.
//! - [`evidence`]: B5/B14 audit events.

pub mod anchors;
pub mod circuit;
pub mod evidence;
pub mod exchange;
pub mod headers;
pub mod host;
pub mod path;
pub mod preflight;

/// A refusal (B3, B4): the HTTP status, the wire `error` and `error_description`, and the
/// metric stem it is counted under (B15: `denials_<stem>` for preflight refusals, else the
/// stem named by the step, e.g. `sts_exchange_errors`, `upstream_errors`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status.
    pub status: u16,
    /// The `error` member.
    pub error: String,
    /// The `error_description` member.
    pub description: String,
    /// Metric stem.
    pub metric: &'static str,
}

impl Denial {
    /// A denial.
    pub fn new(
        status: u16,
        error: impl Into<String>,
        description: impl Into<String>,
        metric: &'static str,
    ) -> Self {
        Self {
            status,
            error: error.into(),
            description: description.into(),
            metric,
        }
    }
}
