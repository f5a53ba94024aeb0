//! Outbound HTTPS to destinations an administrator chose: today, federated issuers' key sets
//! (`spec/sts.md §9`). Every request is HTTPS only, bounded (5 s, 256 KiB, no redirects) and
//! passes the SSRF guard: resolved addresses are checked at dial time, private ranges need the
//! host in `CARACAL_PRIVATE_EGRESS_HOSTS`, loopback, link-local, multicast and unspecified are
//! never reached, and IPv6 spellings of IPv4 addresses are judged by the address they carry.
//!
//! A crate of its own because it carries the TLS client stack (rustls, webpki roots, hyper)
//! that no other adapter needs, and because every future egress of the STS (provider token
//! endpoints, discovery) must go through this one guarded client.

#![warn(missing_docs)]

pub mod address;
mod guard;
mod jwks;

pub use guard::{Blocked, EgressPolicy};
pub use jwks::{EgressConfig, HttpsIssuerKeys, FETCH_TIMEOUT, MAX_DOCUMENT_BYTES};
