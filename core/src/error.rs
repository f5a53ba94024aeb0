//! Domain errors. Each carries the wire error code the contract names (`zone_not_found`,
//! `invalid_provider_config`, …) and the kind of failure; `adapters/http` maps the kind to a
//! status once, so handlers never pick status codes.

use serde_json::Value;

/// What kind of failure this is, independent of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input is malformed or breaks a rule (400).
    Invalid,
    /// The caller's credential was not accepted (401).
    Unauthenticated,
    /// The credential was accepted but this action is not allowed (403).
    Forbidden,
    /// The addressed thing does not exist for this caller (404).
    NotFound,
    /// The request conflicts with current state (409).
    Conflict,
    /// The body exceeds the route's limit (413).
    PayloadTooLarge,
    /// The body's media type is not the one the route takes (415).
    UnsupportedMediaType,
    /// The input is well formed but semantically unacceptable (422).
    Unprocessable,
    /// Too many requests (429).
    RateLimited,
    /// A dependency (secret backend, upstream) failed (502).
    BadGateway,
    /// The service cannot serve this now (503).
    Unavailable,
    /// A bug or an unexpected store failure (500).
    Internal,
}

/// A failure of a use case, named in the contract's own words.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct Error {
    /// The failure class.
    pub kind: ErrorKind,
    /// The wire `error` code.
    pub code: &'static str,
    /// Human-readable `error_description`, when the contract has one.
    pub description: Option<String>,
    /// Extra members merged into the error body (`details`, `state`, `max_days`, …).
    pub extra: Option<Value>,
    /// Server-side detail for the log (the underlying store, crypto or limiter failure). Never
    /// sent to the caller.
    pub detail: Option<String>,
}

impl Error {
    /// A failure of the given kind and code.
    pub fn new(kind: ErrorKind, code: &'static str) -> Self {
        Self {
            kind,
            code,
            description: None,
            extra: None,
            detail: None,
        }
    }

    /// `400` with a description.
    pub fn invalid(code: &'static str, description: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, code).describe(description)
    }

    /// `404` for the named thing.
    pub fn not_found(code: &'static str) -> Self {
        Self::new(ErrorKind::NotFound, code)
    }

    /// `409` with a description.
    pub fn conflict(code: &'static str, description: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code).describe(description)
    }

    /// `403` with a description.
    pub fn forbidden(code: &'static str, description: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, code).describe(description)
    }

    /// `500`: something that should not happen; what happened stays server-side.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, "internal_error").with_detail(detail)
    }

    /// Adds server-side detail (logged, never sent).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds an `error_description`.
    pub fn describe(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Adds members to the error body (an object whose keys are merged in).
    pub fn with_extra(mut self, extra: Value) -> Self {
        self.extra = Some(extra);
        self
    }
}

/// A storage failure as the domain sees it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or the transaction failed to run.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule held by the store itself rejected the write (the name of the rule).
    #[error("store conflict on {0}")]
    Conflict(String),
    /// A stored value could not be decoded into the domain type.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(detail) => {
                Error::new(ErrorKind::Unavailable, "store_unavailable").with_detail(detail)
            }
            StoreError::Conflict(rule) => Error::conflict(
                "conflict",
                format!("a uniqueness rule was violated: {rule}"),
            ),
            StoreError::Corrupt(detail) => Error::internal(detail),
        }
    }
}

/// A failure inside a cryptographic port.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CryptoError {
    /// The envelope was sealed under a key this keyring does not hold.
    #[error("sealed under a different KEK")]
    UnknownKey,
    /// The envelope or its associated data was altered, or it is not an envelope.
    #[error("envelope failed to open")]
    Tampered,
    /// The secret backend failed.
    #[error("secret backend unavailable: {0}")]
    Backend(String),
    /// A key document (PEM or DER) is not a well-formed key of the expected kind.
    #[error("malformed key: {0}")]
    MalformedKey(&'static str),
}

impl From<CryptoError> for Error {
    fn from(err: CryptoError) -> Self {
        Error::new(ErrorKind::BadGateway, "secret_backend_unavailable").with_detail(err.to_string())
    }
}

impl From<crate::ports::LimiterError> for Error {
    /// Rate limits are a security control: when they cannot be counted, the request is refused.
    fn from(err: crate::ports::LimiterError) -> Self {
        Error::new(ErrorKind::Unavailable, "rate_limiter_unavailable").with_detail(err.0)
    }
}

/// Shorthand for use-case results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
