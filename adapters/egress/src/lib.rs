//! Outbound HTTP from the services. Mostly HTTPS to destinations an administrator chose: today,
//! federated issuers' key sets (`spec/sts.md §9`). Every such request is HTTPS only, bounded
//! (5 s, 256 KiB, no redirects) and passes the SSRF guard: resolved addresses are checked at
//! dial time, private ranges need the host in `CARACAL_PRIVATE_EGRESS_HOSTS`, loopback,
//! link-local, multicast and unspecified are never reached, and IPv6 spellings of IPv4
//! addresses are judged by the address they carry.
//!
//! The one exception is [`StsMandateKeys`]: mandate verification keys fetched from the
//! operator's own STS (`STS_URL`) by a Coordinator or Gateway that runs without the STS in its
//! process. That address is deployment configuration, not tenant input, so it may be plain
//! `http` and is not guarded; it is bounded the same way.
//!
//! A crate of its own because it carries the TLS client stack (rustls, webpki roots, hyper)
//! that no other adapter needs, and because every future egress of the STS (provider token
//! endpoints, discovery) must go through this one guarded client.

#![warn(missing_docs)]

pub mod address;
mod guard;
mod jwks;
mod sts_keys;

pub use guard::{Blocked, EgressPolicy};
pub use jwks::{EgressConfig, HttpsIssuerKeys, FETCH_TIMEOUT, MAX_DOCUMENT_BYTES};
pub use sts_keys::{parse_key_set, StsKeysConfig, StsMandateKeys};
