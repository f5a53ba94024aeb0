//! Which destination addresses egress may reach (`spec/sts.md §9`).
//!
//! Three classes, from most to least reachable:
//! - **public**: anything not listed below;
//! - **private**: 10/8, 172.16/12, 192.168/16, 100.64/10 (carrier-grade NAT), fc00::/7 (unique
//!   local) and the deprecated site-local fec0::/10, plus the local-use NAT64 prefix
//!   64:ff9b:1::/48 (a translator inside the operator's network). Reachable only for hosts an
//!   operator lists in `CARACAL_PRIVATE_EGRESS_HOSTS`;
//! - **forbidden**: unspecified (0.0.0.0/8, ::), loopback (127/8, ::1), link-local
//!   (169.254/16 — cloud metadata lives there — and fe80::/10), multicast (224/4, ff00::/8) and
//!   the reserved 240/4 including broadcast. Never reachable: no legitimate key set is served
//!   from them, and they are where an SSRF finds the host's own services.
//!
//! IPv6 forms that carry an IPv4 address are judged by that address too, and the stricter class
//! wins, so an IPv4 target cannot be smuggled in through IPv4-mapped (::ffff:0:0/96),
//! IPv4-compatible (::/96), NAT64 (64:ff9b::/96 and 64:ff9b:1::/48), 6to4 (2002::/16) or Teredo
//! (2001::/32, server and client) spellings.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How reachable an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddressClass {
    /// Reachable.
    Public,
    /// Reachable only for allowlisted hosts.
    Private,
    /// Never reachable.
    Forbidden,
}

/// The class of `ip`.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, ..] = ip.octets();
    match (a, b) {
        (0, _) | (127, _) | (169, 254) => AddressClass::Forbidden,
        (224..=255, _) => AddressClass::Forbidden,
        (10, _) | (192, 168) => AddressClass::Private,
        (172, 16..=31) | (100, 64..=127) => AddressClass::Private,
        _ => AddressClass::Public,
    }
}

fn v4_at(ip: Ipv6Addr, byte: usize) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[byte], o[byte + 1], o[byte + 2], o[byte + 3])
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let s = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() {
        return AddressClass::Forbidden;
    }
    // The address's own range.
    let own = match s[0] {
        0xff00..=0xffff => AddressClass::Forbidden,
        0xfe80..=0xfebf => AddressClass::Forbidden,
        0xfec0..=0xfeff => AddressClass::Private,
        0xfc00..=0xfdff => AddressClass::Private,
        0x0064 if s[1] == 0xff9b && s[2] == 0x0001 => AddressClass::Private,
        _ => AddressClass::Public,
    };
    // An embedded IPv4 address, judged as itself.
    let embedded = match s {
        // IPv4-mapped and IPv4-compatible (:: and ::1 were handled above).
        [0, 0, 0, 0, 0, 0xffff, ..] | [0, 0, 0, 0, 0, 0, ..] => Some(classify_v4(v4_at(ip, 12))),
        // NAT64: the well-known /96 and the local-use /48 (RFC 6052, RFC 8215).
        [0x0064, 0xff9b, 0, 0, 0, 0, ..] | [0x0064, 0xff9b, 0x0001, ..] => {
            Some(classify_v4(v4_at(ip, 12)))
        }
        // 6to4: the site's IPv4 address follows the prefix.
        [0x2002, ..] => Some(classify_v4(v4_at(ip, 2))),
        // Teredo: the server in bits 32..64, the client obfuscated (inverted) in the last 32.
        [0x2001, 0x0000, ..] => {
            let client = Ipv4Addr::from(!u32::from(v4_at(ip, 12)));
            Some(classify_v4(v4_at(ip, 4)).max(classify_v4(client)))
        }
        _ => None,
    };
    embedded.map_or(own, |e| e.max(own))
}

/// Whether egress may connect to `ip` for a host that is (`allowlisted`) or is not in
/// `CARACAL_PRIVATE_EGRESS_HOSTS`.
pub fn allowed(ip: IpAddr, allowlisted: bool) -> bool {
    match classify(ip) {
        AddressClass::Public => true,
        AddressClass::Private => allowlisted,
        AddressClass::Forbidden => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> AddressClass {
        classify(text.parse().expect("an address"))
    }

    #[test]
    fn ipv4_ranges() {
        use AddressClass::*;
        let cases = [
            // Public, including the edges of every blocked range.
            ("8.8.8.8", Public),
            ("1.1.1.1", Public),
            ("9.255.255.255", Public),
            ("11.0.0.0", Public),
            ("172.15.255.255", Public),
            ("172.32.0.0", Public),
            ("192.167.255.255", Public),
            ("192.169.0.0", Public),
            ("100.63.255.255", Public),
            ("100.128.0.0", Public),
            ("126.255.255.255", Public),
            ("128.0.0.0", Public),
            ("169.253.255.255", Public),
            ("169.255.0.0", Public),
            ("223.255.255.255", Public),
            // Private.
            ("10.0.0.0", Private),
            ("10.255.255.255", Private),
            ("172.16.0.0", Private),
            ("172.31.255.255", Private),
            ("192.168.0.1", Private),
            ("100.64.0.0", Private),
            ("100.127.255.255", Private),
            // Forbidden.
            ("0.0.0.0", Forbidden),
            ("0.1.2.3", Forbidden),
            ("127.0.0.1", Forbidden),
            ("127.255.255.254", Forbidden),
            ("169.254.169.254", Forbidden),
            ("169.254.0.0", Forbidden),
            ("224.0.0.1", Forbidden),
            ("239.255.255.250", Forbidden),
            ("240.0.0.1", Forbidden),
            ("255.255.255.255", Forbidden),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv6_ranges() {
        use AddressClass::*;
        let cases = [
            ("2606:4700:4700::1111", Public),
            ("2001:db8::1", Public),
            ("2001:4860::8888", Public),
            ("fbff:ffff::1", Public),
            ("fe00::1", Public),
            ("fc00::1", Private),
            ("fd12:3456:789a::1", Private),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Private),
            ("fec0::1", Private),
            ("::", Forbidden),
            ("::1", Forbidden),
            ("fe80::1", Forbidden),
            ("febf:ffff::1", Forbidden),
            ("ff02::1", Forbidden),
            ("ff05::1:3", Forbidden),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn embedded_ipv4_is_judged_as_itself() {
        use AddressClass::*;
        let cases = [
            // IPv4-mapped.
            ("::ffff:127.0.0.1", Forbidden),
            ("::ffff:169.254.169.254", Forbidden),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:8.8.8.8", Public),
            // IPv4-compatible (deprecated, still routable by some stacks).
            ("::127.0.0.1", Forbidden),
            ("::10.1.2.3", Private),
            ("::8.8.8.8", Public),
            // NAT64, well-known prefix: the translator would dial the embedded address.
            ("64:ff9b::127.0.0.1", Forbidden),
            ("64:ff9b::a9fe:a9fe", Forbidden),
            ("64:ff9b::192.168.1.1", Private),
            ("64:ff9b::8.8.8.8", Public),
            // NAT64, local-use prefix: private itself, forbidden when the target is.
            ("64:ff9b:1::8.8.8.8", Private),
            ("64:ff9b:1::127.0.0.1", Forbidden),
            // 6to4.
            ("2002:7f00:1::1", Forbidden),
            ("2002:a9fe:a9fe::1", Forbidden),
            ("2002:c0a8:101::1", Private),
            ("2002:808:808::1", Public),
            // Teredo: server 65.54.227.120 (public), client obfuscated.
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", Forbidden), // client 127.0.0.1
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", Private),   // client 10.0.0.1
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", Public),    // client 8.8.8.8
            ("2001:0:7f00:1:8000:63bf:f7f7:f7f7", Forbidden),    // server 127.0.0.1
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), want, "{ip}");
        }
    }

    #[test]
    fn allowlisting_opens_private_ranges_only() {
        for ip in ["10.0.0.5", "fd00::5", "100.64.1.1"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(!allowed(ip, false), "{ip} needs the allowlist");
            assert!(allowed(ip, true), "{ip} is reachable when allowlisted");
        }
        for ip in [
            "127.0.0.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "224.0.0.1",
            "0.0.0.0",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(!allowed(ip, true), "{ip} is never reachable");
        }
        assert!(allowed("93.184.216.34".parse().expect("ip"), false));
    }
}
