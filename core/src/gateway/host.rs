//! B11 upstream safety: the directive's URL, the hostname allowlist and the addresses that may
//! be dialled. Stricter than upstream by default: loopback and private ranges are refused
//! unless the configuration allows them (`caracal dev` allows loopback).

use std::net::IpAddr;

use super::Denial;

/// What may be dialled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPolicy {
    /// `UPSTREAM_HOST_ALLOWLIST`: when non-empty, the hostname must equal one of these
    /// (case-insensitive).
    pub allowlist: Vec<String>,
    /// Allow 127/8 and ::1.
    pub allow_loopback: bool,
    /// Allow RFC 1918, 100.64/10 and fc00::/7.
    pub allow_private: bool,
}

/// A parsed upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: String,
    /// Hostname or IP literal (no brackets), lowercase.
    pub host: String,
    /// Explicit or default port.
    pub port: u16,
    /// The URL's path (may be empty).
    pub base_path: String,
    /// The URL's raw query, without `?` (may be empty).
    pub query: String,
}

impl Upstream {
    /// `Host` header value: `host` or `host:port` when the port is not the scheme's default
    /// (IPv6 literals bracketed).
    pub fn host_header(&self) -> String {
        todo!("issue #5: host header")
    }
}

/// Step 15: parses the directive's URL (scheme http/https, a host, no userinfo) and checks the
/// hostname against the policy's allowlist and, for an IP literal, [`ip_allowed`]; otherwise
/// `502 internal_error` "upstream not addressable".
pub fn parse_upstream(url: &str, policy: &HostPolicy) -> Result<Upstream, Denial> {
    let _ = (url, policy);
    todo!("issue #5: parse_upstream")
}

/// Whether an address may be dialled: never unspecified, link-local (169.254/16 including the
/// metadata address, fe80::/10), multicast or broadcast; loopback and private ranges only when
/// allowed; IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible and NAT64 (`64:ff9b::/96`) forms
/// judged by their embedded IPv4 address.
pub fn ip_allowed(policy: &HostPolicy, ip: IpAddr) -> bool {
    let _ = (policy, ip);
    todo!("issue #5: ip_allowed")
}

/// Step 16: a non-empty `allowed_token_hosts` must contain `host` (case-insensitive).
pub fn token_host_allowed(allowed: &[String], host: &str) -> bool {
    let _ = (allowed, host);
    todo!("issue #5: token hosts")
}
