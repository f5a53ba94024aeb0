//! Ports: the traits through which the domain reaches storage, streams, keys and time.

pub mod audit;
pub mod clock;
pub mod crypto;
pub mod events;
pub mod evidence;
pub mod expiring;
pub mod jwks;
pub mod limits;
pub mod store;
pub mod versions;
pub mod zone_keys;

pub use audit::{
    AppendOutcome, AuditLedger, IngestAlert, LedgerError, ListQuery, RetentionReport,
    RetentionSetting, SearchQuery,
};
pub use clock::{Clock, IdGenerator};
pub use crypto::{
    Es256, Es256Signer, MessageAuthenticator, PasswordHasher, SecretGenerator, SecretSealer,
};
pub use events::{BusError, Delivery, EventBus};
pub use evidence::{AuditEvent, AuditSink, SinkHealth};
pub use expiring::{ExpiringKeys, ExpiringKeysError};
pub use jwks::{FetchError, IssuerKeys};
pub use limits::{LimiterError, RateLimiter};
pub use store::*;
pub use versions::{AuthorityVersions, VersionsError};
pub use zone_keys::ZoneKeySource;
