//! B11 upstream safety: the directive's URL, the hostname allowlist and the addresses that may
//! be dialled. Stricter than upstream by default: loopback and private ranges are refused
//! unless the configuration allows them (`caracal dev` allows loopback).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default_port(&self.scheme) {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

fn default_port(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

/// Step 15: parses the directive's URL (scheme http/https, a host, no userinfo) and checks the
/// hostname against the policy's allowlist and, for an IP literal, [`ip_allowed`]; otherwise
/// `502 internal_error` "upstream not addressable".
///
/// `base_path` is the URL's path percent-decoded (like the request path it is joined with);
/// `query` stays raw.
pub fn parse_upstream(url: &str, policy: &HostPolicy) -> Result<Upstream, Denial> {
    let upstream = parse(url).ok_or_else(not_addressable)?;
    if !policy.allowlist.is_empty()
        && !policy
            .allowlist
            .iter()
            .any(|entry| same_host(entry, &upstream.host))
    {
        return Err(not_addressable());
    }
    if let Ok(ip) = upstream.host.parse::<IpAddr>() {
        if !ip_allowed(policy, ip) {
            return Err(not_addressable());
        }
    }
    Ok(upstream)
}

fn not_addressable() -> Denial {
    Denial::new(
        502,
        "internal_error",
        "upstream not addressable",
        "upstream_errors",
    )
}

/// Hostname equality for allowlists: case-insensitive, ignoring surrounding whitespace, IPv6
/// brackets and a trailing root dot.
fn same_host(entry: &str, host: &str) -> bool {
    let normalize = |text: &str| {
        let text = text.trim();
        let text = text
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(text);
        text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase()
    };
    let entry = normalize(entry);
    !entry.is_empty() && entry == normalize(host)
}

/// `scheme://host[:port][/path][?query][#fragment]`, or `None`.
fn parse(url: &str) -> Option<Upstream> {
    if url.is_empty() || url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return None;
    }
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority_end = before_query.find('/').unwrap_or(before_query.len());
    let (authority, raw_path) = before_query.split_at(authority_end);
    if authority.contains('@') {
        return None;
    }
    let (host, port) = split_authority(authority)?;
    let port = match port {
        None | Some("") => default_port(&scheme),
        Some(digits) => parse_port(digits)?,
    };
    let host = parse_host(host)?;
    let base_path = String::from_utf8(percent_decode(raw_path)?).ok()?;
    Some(Upstream {
        scheme,
        host,
        port,
        base_path,
        query: query.to_owned(),
    })
}

/// The host (brackets kept) and the text after its `:`, if any.
fn split_authority(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let close = authority.find(']')?;
        let (host, after) = authority.split_at(close + 1);
        return match after {
            "" => Some((host, None)),
            _ => Some((host, Some(after.strip_prefix(':')?))),
        };
    }
    match authority.split_once(':') {
        None => Some((authority, None)),
        Some((_, port)) if port.contains(':') => None,
        Some((host, port)) => Some((host, Some(port))),
    }
}

fn parse_port(digits: &str) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u16>().ok().filter(|port| *port != 0)
}

/// The host, lowercase and without brackets: a bracketed IPv6 literal (no zone), a dotted-quad
/// IPv4 literal, or a DNS name of letters, digits, `-`, `_` and `.`. A name whose last label
/// looks numeric must be a valid dotted quad, so forms resolvers read as addresses
/// (`2130706433`, `0x7f.1`, `127.1`) never pass as names.
fn parse_host(host: &str) -> Option<String> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        let ip: Ipv6Addr = inner.parse().ok()?;
        return Some(ip.to_string());
    }
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some(ip.to_string());
    }
    let valid_chars = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid_chars || host.starts_with('.') || host.contains("..") {
        return None;
    }
    let last = host
        .strip_suffix('.')
        .unwrap_or(host)
        .rsplit('.')
        .next()
        .unwrap_or_default();
    if last.is_empty() {
        return None;
    }
    let lower = last.to_ascii_lowercase();
    let numeric = last.bytes().all(|b| b.is_ascii_digit())
        || (lower.starts_with("0x") && lower[2..].bytes().all(|b| b.is_ascii_hexdigit()));
    if numeric {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// Percent-decoding of a URL path; `None` on a bad escape.
fn percent_decode(raw: &str) -> Option<Vec<u8>> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Whether an address may be dialled: never unspecified, link-local (169.254/16 including the
/// metadata address, fe80::/10), multicast or broadcast; loopback and private ranges only when
/// allowed; IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible and NAT64 (`64:ff9b::/96`) forms
/// judged by their embedded IPv4 address.
///
/// Beyond that list, and stricter: IPv4-translated addresses (`::ffff:0:a.b.c.d`) are judged by
/// their IPv4 address too; the local-use NAT64 prefix `64:ff9b:1::/48` (RFC 8215) and the
/// deprecated site-local `fec0::/10` count as private (and the former never reaches a blocked
/// IPv4 address).
pub fn ip_allowed(policy: &HostPolicy, ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_allowed(policy, v4),
        IpAddr::V6(v6) => v6_allowed(policy, v6),
    }
}

fn v4_allowed(policy: &HostPolicy, ip: Ipv4Addr) -> bool {
    let [a, b, _, _] = ip.octets();
    if a == 0 // 0.0.0.0/8, "this network", includes the unspecified address
        || ip.is_broadcast()
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (224..=239).contains(&a)
    {
        return false;
    }
    if a == 127 {
        return policy.allow_loopback;
    }
    let private = a == 10
        || (a == 172 && (16..=31).contains(&b))
        || (a == 192 && b == 168)
        || (a == 100 && (64..=127).contains(&b));
    if private {
        return policy.allow_private;
    }
    true
}

fn v6_allowed(policy: &HostPolicy, ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    if ip.is_unspecified() {
        return false;
    }
    if ip.is_loopback() {
        return policy.allow_loopback;
    }
    if let Some(v4) = embedded_v4(ip) {
        return v4_allowed(policy, v4);
    }
    if segments[..3] == [0x64, 0xff9b, 1] {
        // Local-use NAT64 (RFC 8215): internal by definition, and never to a blocked IPv4.
        let [.., a, b, c, d] = ip.octets();
        return policy.allow_private && v4_allowed(policy, Ipv4Addr::new(a, b, c, d));
    }
    let first = segments[0];
    let multicast = first & 0xff00 == 0xff00; // ff00::/8
    let link_local = first & 0xffc0 == 0xfe80; // fe80::/10
    if multicast || link_local {
        return false;
    }
    let unique_local = first & 0xfe00 == 0xfc00; // fc00::/7
    let site_local = first & 0xffc0 == 0xfec0; // fec0::/10, deprecated
    if unique_local || site_local {
        return policy.allow_private;
    }
    true
}

/// The IPv4 address carried by an IPv4-mapped (`::ffff:0:0/96`), IPv4-translated
/// (`::ffff:0:0:0/96`), IPv4-compatible (`::/96`; `::` and `::1` are handled before) or NAT64
/// (`64:ff9b::/96`) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let [.., a, b, c, d] = ip.octets();
    let mapped = s[..6] == [0, 0, 0, 0, 0, 0xffff];
    let translated = s[..6] == [0, 0, 0, 0, 0xffff, 0];
    let compatible = s[..6] == [0; 6];
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    (mapped || translated || compatible || nat64).then_some(Ipv4Addr::new(a, b, c, d))
}

/// Step 16: a non-empty `allowed_token_hosts` must contain `host` (case-insensitive).
pub fn token_host_allowed(allowed: &[String], host: &str) -> bool {
    allowed.is_empty() || allowed.iter().any(|entry| same_host(entry, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> HostPolicy {
        HostPolicy {
            allowlist: vec![],
            allow_loopback: true,
            allow_private: true,
        }
    }

    fn strict() -> HostPolicy {
        HostPolicy::default()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip literal")
    }

    fn parsed(url: &str) -> Upstream {
        parse_upstream(url, &open()).expect("addressable")
    }

    fn refused(url: &str, policy: &HostPolicy) {
        assert_eq!(
            parse_upstream(url, policy),
            Err(Denial::new(
                502,
                "internal_error",
                "upstream not addressable",
                "upstream_errors"
            )),
            "{url}"
        );
    }

    #[test]
    fn parses_scheme_host_port_path_and_query() {
        assert_eq!(
            parsed("https://API.Example.com/v1/base?key=1&b=2#frag"),
            Upstream {
                scheme: "https".into(),
                host: "api.example.com".into(),
                port: 443,
                base_path: "/v1/base".into(),
                query: "key=1&b=2".into(),
            }
        );
        assert_eq!(
            parsed("HTTP://example.com:8080"),
            Upstream {
                scheme: "http".into(),
                host: "example.com".into(),
                port: 8080,
                base_path: String::new(),
                query: String::new(),
            }
        );
        let u = parsed("http://example.com?x=1");
        assert_eq!(
            (u.port, u.base_path.as_str(), u.query.as_str()),
            (80, "", "x=1")
        );
        let u = parsed("http://example.com:/a%20b/#x?y");
        assert_eq!(
            (u.port, u.base_path.as_str(), u.query.as_str()),
            (80, "/a b/", "")
        );
        let u = parsed("https://[2001:DB8::1]:8443/p");
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 8443));
        let u = parsed("https://[2001:db8::1]/p");
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 443));
        assert_eq!(parsed("http://10.0.0.1:9000/").host, "10.0.0.1");
        assert_eq!(
            parsed("http://my_service.internal/").host,
            "my_service.internal"
        );
    }

    #[test]
    fn malformed_urls_are_not_addressable() {
        for url in [
            "",
            "example.com/path",
            "ftp://example.com/",
            "file:///etc/passwd",
            "http:example.com",
            "http://",
            "http:///path",
            "http://:80/",
            "http://user@example.com/",
            "http://user:pass@example.com/",
            "http://example.com@evil.com/",
            "http://example.com:0/",
            "http://example.com:65536/",
            "http://example.com:80a/",
            "http://example.com:-1/",
            "http://a:1:2/",
            "http://2001:db8::1/",
            "http://[2001:db8::1/",
            "http://[2001:db8::1]x/",
            "http://[fe80::1%25eth0]/",
            "http://[not-ip]/",
            "http://exa mple.com/",
            "http://example.com/a b",
            "http://example.com/\n",
            "http://ex%61mple.com/",
            "http://exämple.com/",
            "http://.example.com/",
            "http://example..com/",
            "http://example.com/%zz",
            "http://example.com/%ff",
            // Numeric forms a resolver would read as addresses.
            "http://2130706433/",
            "http://127.1/",
            "http://0x7f.1/",
            "http://0x7f000001/",
            "http://127.000.0.1/",
            "http://1.2.3.4./",
        ] {
            refused(url, &open());
        }
    }

    #[test]
    fn allowlist_is_exact_and_case_insensitive() {
        let policy = HostPolicy {
            allowlist: vec!["API.example.com".into(), " [2001:db8::1] ".into()],
            ..open()
        };
        assert!(parse_upstream("https://api.example.com/x", &policy).is_ok());
        assert!(parse_upstream("https://api.EXAMPLE.com./x", &policy).is_ok());
        assert!(parse_upstream("https://[2001:db8::1]/", &policy).is_ok());
        refused("https://example.com/", &policy);
        refused("https://evil.api.example.com/", &policy);
        refused("https://api.example.com.evil.com/", &policy);
    }

    #[test]
    fn ip_literals_are_checked_hostnames_are_not() {
        refused("http://169.254.169.254/latest/meta-data", &open());
        refused("http://[fe80::1]/", &open());
        refused("http://[::ffff:169.254.169.254]/", &open());
        refused("http://[64:ff9b::a9fe:a9fe]/", &open());
        refused("http://0.0.0.0/", &open());
        refused("http://127.0.0.1:8080/", &strict());
        refused("http://[::1]/", &strict());
        refused("http://10.1.2.3/", &strict());
        assert!(parse_upstream("http://127.0.0.1:8080/", &open()).is_ok());
        assert!(parse_upstream("https://93.184.216.34/", &strict()).is_ok());
        // Names are re-checked after resolution, at dial time.
        assert!(parse_upstream("http://localhost/", &strict()).is_ok());
    }

    #[test]
    fn blocked_everywhere() {
        for addr in [
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "169.254.169.254",
            "169.254.0.1",
            "224.0.0.1",
            "239.255.255.250",
            "::",
            "fe80::1",
            "febf::1",
            "ff02::1",
            "ff01::1",
            "ff0e::1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::ffff:224.0.0.1",
            "::ffff:0:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::169.254.169.254",
            "64:ff9b::224.0.0.1",
            "64:ff9b::0.0.0.0",
            "64:ff9b:1::a9fe:a9fe",
        ] {
            assert!(!ip_allowed(&open(), ip(addr)), "{addr}");
            assert!(!ip_allowed(&strict(), ip(addr)), "{addr}");
        }
    }

    #[test]
    fn loopback_is_gated() {
        let loopback_only = HostPolicy {
            allow_loopback: true,
            ..strict()
        };
        for addr in [
            "127.0.0.1",
            "127.255.0.9",
            "::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::127.0.0.1",
        ] {
            assert!(!ip_allowed(&strict(), ip(addr)), "{addr}");
            assert!(ip_allowed(&loopback_only, ip(addr)), "{addr}");
        }
        assert!(!ip_allowed(&loopback_only, ip("10.0.0.1")));
    }

    #[test]
    fn private_ranges_are_gated() {
        let private_only = HostPolicy {
            allow_private: true,
            ..strict()
        };
        for addr in [
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "::ffff:10.0.0.1",
            "::ffff:192.168.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b:1::10.0.0.1",
            "64:ff9b:1::8.8.8.8",
        ] {
            assert!(!ip_allowed(&strict(), ip(addr)), "{addr}");
            assert!(ip_allowed(&private_only, ip(addr)), "{addr}");
        }
        assert!(!ip_allowed(&private_only, ip("127.0.0.1")));
    }

    #[test]
    fn public_addresses_are_allowed() {
        for addr in [
            "8.8.8.8",
            "93.184.216.34",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.0.1",
            "192.169.0.1",
            "2001:4860:4860::8888",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "fe00::1",
        ] {
            assert!(ip_allowed(&strict(), ip(addr)), "{addr}");
        }
    }

    #[test]
    fn host_header_omits_default_ports() {
        let upstream = |scheme: &str, host: &str, port: u16| Upstream {
            scheme: scheme.into(),
            host: host.into(),
            port,
            base_path: String::new(),
            query: String::new(),
        };
        assert_eq!(
            upstream("https", "api.example.com", 443).host_header(),
            "api.example.com"
        );
        assert_eq!(
            upstream("http", "api.example.com", 80).host_header(),
            "api.example.com"
        );
        assert_eq!(
            upstream("https", "api.example.com", 80).host_header(),
            "api.example.com:80"
        );
        assert_eq!(
            upstream("http", "10.0.0.1", 8080).host_header(),
            "10.0.0.1:8080"
        );
        assert_eq!(
            upstream("https", "2001:db8::1", 443).host_header(),
            "[2001:db8::1]"
        );
        assert_eq!(upstream("http", "::1", 8080).host_header(), "[::1]:8080");
        assert_eq!(parsed("https://[::1]:8443/").host_header(), "[::1]:8443");
    }

    #[test]
    fn token_hosts() {
        assert!(token_host_allowed(&[], "anything.example"));
        let allowed = vec!["API.Provider.com".to_owned(), "other.example".to_owned()];
        assert!(token_host_allowed(&allowed, "api.provider.com"));
        assert!(token_host_allowed(&allowed, "OTHER.example"));
        assert!(!token_host_allowed(&allowed, "evil.com"));
        assert!(!token_host_allowed(&allowed, "api.provider.com.evil.com"));
        assert!(!token_host_allowed(&allowed, ""));
    }
}
