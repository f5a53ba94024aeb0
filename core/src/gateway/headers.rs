//! B10 header rewriting in both directions and B8 credential placement.

use std::net::IpAddr;

use super::exchange::Directive;
use super::Denial;

/// A header as bytes (names lowercase on output).
pub type Header = (String, Vec<u8>);

/// What the outbound rewrite needs besides the inbound headers.
#[derive(Debug, Clone, Copy)]
pub struct OutboundContext<'a> {
    /// The Gateway's request id (sent as `X-Request-Id`).
    pub request_id: &'a str,
    /// The TCP peer.
    pub peer_ip: IpAddr,
    /// `TRUST_PROXY`: take `X-Forwarded-For`'s first entry and `X-Forwarded-Proto` from the
    /// caller.
    pub trust_proxy: bool,
    /// Whether the caller reached the Gateway over TLS.
    pub tls: bool,
    /// `Host` for the upstream (`host[:port]` as in its URL).
    pub upstream_host: &'a str,
    /// A fresh `00-<32 hex>-<16 hex>-01` used when the inbound `traceparent` is missing or
    /// invalid.
    pub fresh_traceparent: &'a str,
}

/// The outbound headers (B10): hop-by-hop (and `Connection`-listed) dropped, `baggage`
/// members keyed `caracal.*` dropped (header removed when empty), every `X-Caracal-*`,
/// `X-Forwarded-*`, `Forwarded`, `X-Real-Ip` and the inbound `Authorization` dropped,
/// `X-Request-Id`, `traceparent`, `X-Forwarded-For/Proto/Host` and `Host` set. The
/// credential is added separately ([`Credential::apply`]).
pub fn outbound(inbound: &[Header], ctx: &OutboundContext<'_>) -> Vec<Header> {
    let listed = connection_listed(inbound);
    let mut out: Vec<Header> = Vec::with_capacity(inbound.len() + 6);
    for (name, value) in inbound {
        let name = name.to_ascii_lowercase();
        if is_hop_by_hop(&name)
            || listed.contains(&name)
            || name.starts_with("x-caracal-")
            || name.starts_with("x-forwarded-")
            || matches!(
                name.as_str(),
                "forwarded"
                    | "x-real-ip"
                    | "authorization"
                    | "host"
                    | "x-request-id"
                    | "traceparent"
            )
        {
            continue;
        }
        if name == "baggage" {
            if let Some(kept) = filter_baggage(value) {
                out.push((name, kept));
            }
            continue;
        }
        out.push((name, value.clone()));
    }

    out.push(("x-request-id".into(), ctx.request_id.as_bytes().to_vec()));

    // Inbound values the rewrite reads; a name the caller marked hop-by-hop is not read.
    let read = |lower: &str| {
        if listed.iter().any(|name| name == lower) {
            None
        } else {
            first(inbound, lower)
        }
    };
    let traceparent = read("traceparent")
        .and_then(|value| std::str::from_utf8(value).ok())
        .map(|value| value.trim_matches(|c| c == ' ' || c == '\t'))
        .filter(|value| valid_traceparent(value))
        .unwrap_or(ctx.fresh_traceparent);
    out.push(("traceparent".into(), traceparent.as_bytes().to_vec()));

    let forwarded_for = ctx
        .trust_proxy
        .then(|| read("x-forwarded-for"))
        .flatten()
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(|value| value.split(',').next())
        .and_then(|entry| entry.trim().parse::<IpAddr>().ok())
        .unwrap_or(ctx.peer_ip);
    out.push((
        "x-forwarded-for".into(),
        forwarded_for.to_string().into_bytes(),
    ));

    let inbound_proto = ctx
        .trust_proxy
        .then(|| read("x-forwarded-proto"))
        .flatten()
        .and_then(|value| std::str::from_utf8(value).ok())
        .map(|value| value.trim().to_ascii_lowercase())
        .filter(|value| value == "http" || value == "https");
    let proto = inbound_proto.unwrap_or_else(|| if ctx.tls { "https" } else { "http" }.into());
    out.push(("x-forwarded-proto".into(), proto.into_bytes()));

    if let Some(host) = read("host") {
        out.push(("x-forwarded-host".into(), host.to_vec()));
    }
    out.push(("host".into(), ctx.upstream_host.as_bytes().to_vec()));
    out
}

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy ones), lowercase.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_hop_by_hop(lower: &str) -> bool {
    HOP_BY_HOP.contains(&lower)
}

/// The lowercase names listed in every `Connection` header.
fn connection_listed(headers: &[Header]) -> Vec<String> {
    headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, value)| value.split(|b| *b == b','))
        .map(|item| String::from_utf8_lossy(item.trim_ascii()).to_ascii_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

/// The first value of the header `lower` (compared case-insensitively).
fn first<'h>(headers: &'h [Header], lower: &str) -> Option<&'h [u8]> {
    headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(lower))
        .map(|(_, value)| value.as_slice())
}

/// A `baggage` value without its `caracal.*` members (keys compared case-insensitively) and
/// empty members; `None` when nothing remains.
fn filter_baggage(value: &[u8]) -> Option<Vec<u8>> {
    let kept: Vec<&[u8]> = value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|member| !member.is_empty())
        .filter(|member| {
            let end = member
                .iter()
                .position(|b| *b == b'=' || *b == b';')
                .unwrap_or(member.len());
            let key = member[..end].trim_ascii();
            !(key.len() >= 8 && key[..8].eq_ignore_ascii_case(b"caracal."))
        })
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join(&b","[..]))
    }
}

/// A W3C `traceparent`: `version-traceid-parentid-flags`, lowercase hex, version not `ff`, ids
/// not all zeros; exactly four fields for version `00`, at least four for later versions.
fn valid_traceparent(value: &str) -> bool {
    let fields: Vec<&str> = value.split('-').collect();
    if fields.len() < 4 {
        return false;
    }
    let lower_hex = |field: &str, len: usize| {
        field.len() == len
            && field
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |field: &str| field.bytes().any(|b| b != b'0');
    let (version, trace_id, parent_id, flags) = (fields[0], fields[1], fields[2], fields[3]);
    lower_hex(version, 2)
        && version != "ff"
        && (version != "00" || fields.len() == 4)
        && lower_hex(trace_id, 32)
        && nonzero(trace_id)
        && lower_hex(parent_id, 16)
        && nonzero(parent_id)
        && lower_hex(flags, 2)
}

/// Where the provider credential goes (B8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// `auth_mode = none`.
    Nothing,
    /// A header (`name` lowercase) with `value`; `identity` is the `X-Caracal-Identity` value
    /// when the directive forwards the Caracal identity.
    Header {
        /// Header name.
        name: String,
        /// Header value.
        value: String,
        /// `X-Caracal-Identity`, when forwarded.
        identity: Option<String>,
    },
    /// A query parameter (`provider_apikey` with `auth_location = query`).
    Query {
        /// Parameter name.
        name: String,
        /// Parameter value.
        value: String,
        /// `X-Caracal-Identity`, when forwarded.
        identity: Option<String>,
    },
}

impl Credential {
    /// Removes the credential header name from `headers` and appends the credential header
    /// and `x-caracal-identity` as planned (a `Query` credential only adds the identity
    /// header; the caller puts the parameter in the query).
    pub fn apply(&self, headers: &mut Vec<Header>) {
        let identity = match self {
            Self::Nothing => return,
            Self::Header {
                name,
                value,
                identity,
            } => {
                headers.retain(|(existing, _)| !existing.eq_ignore_ascii_case(name));
                headers.push((name.to_ascii_lowercase(), value.as_bytes().to_vec()));
                identity
            }
            Self::Query { identity, .. } => identity,
        };
        if let Some(identity) = identity {
            headers.retain(|(existing, _)| !existing.eq_ignore_ascii_case(IDENTITY_HEADER));
            headers.push((IDENTITY_HEADER.into(), identity.as_bytes().to_vec()));
        }
    }
}

/// The header carrying the Caracal identity to the upstream in provider modes.
const IDENTITY_HEADER: &str = "x-caracal-identity";

/// Names the credential may never use (B8), besides the `x-caracal-`, `x-forwarded-` and
/// `proxy-` prefixes.
const RESERVED_CREDENTIAL_HEADERS: &[&str] = &[
    "baggage",
    "connection",
    "content-encoding",
    "content-length",
    "content-type",
    "expect",
    "forwarded",
    "host",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "traceparent",
    "tracestate",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "via",
    "x-real-ip",
    "x-request-id",
];

fn build_failed() -> Denial {
    Denial::new(
        400,
        "internal_error",
        "upstream request build failed",
        "upstream_errors",
    )
}

/// An RFC 9110 token.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A header value that can be sent as is: no control characters but tab.
fn is_header_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// `<scheme> <token>`, or the bare token without a scheme.
fn with_scheme(scheme: &str, token: &str) -> String {
    if scheme.is_empty() {
        token.to_owned()
    } else {
        format!("{scheme} {token}")
    }
}

/// The credential for `directive` and the resource mandate `access_token` (B8), or the
/// step-17 build failure (`400 internal_error` "upstream request build failed") for a bad
/// header name, a missing query parameter name, a missing provider token or an unknown mode.
pub fn credential(directive: &Directive, access_token: &str) -> Result<Credential, Denial> {
    let name = if directive.auth_header.is_empty() {
        "authorization".to_owned()
    } else {
        directive.auth_header.to_ascii_lowercase()
    };
    if !is_token(&name)
        || name.starts_with("x-caracal-")
        || name.starts_with("x-forwarded-")
        || name.starts_with("proxy-")
        || RESERVED_CREDENTIAL_HEADERS.contains(&name.as_str())
    {
        return Err(build_failed());
    }

    let provider_token = || {
        directive
            .provider_token
            .as_deref()
            .filter(|token| !token.trim().is_empty())
            .ok_or_else(build_failed)
    };
    let identity = directive
        .forward_caracal_identity
        .then(|| access_token.to_owned());
    let credential = match directive.auth_mode.as_str() {
        "none" => Credential::Nothing,
        "" | "caracal_jwt" => {
            let scheme = if directive.auth_scheme.is_empty() {
                "Bearer"
            } else {
                directive.auth_scheme.as_str()
            };
            Credential::Header {
                name,
                value: format!("{scheme} {access_token}"),
                identity: None,
            }
        }
        "provider_oauth" => Credential::Header {
            name,
            value: with_scheme(&directive.auth_scheme, provider_token()?),
            identity,
        },
        "provider_apikey" if directive.auth_location.eq_ignore_ascii_case("query") => {
            if directive.query_param_name.is_empty() {
                return Err(build_failed());
            }
            Credential::Query {
                name: directive.query_param_name.clone(),
                value: provider_token()?.to_owned(),
                identity,
            }
        }
        "provider_apikey" => Credential::Header {
            name,
            value: with_scheme(&directive.auth_scheme, provider_token()?),
            identity,
        },
        _ => return Err(build_failed()),
    };

    let sendable = match &credential {
        Credential::Nothing => true,
        Credential::Header {
            value, identity, ..
        } => is_header_value(value) && identity.as_deref().is_none_or(is_header_value),
        Credential::Query { identity, .. } => identity.as_deref().is_none_or(is_header_value),
    };
    if sendable {
        Ok(credential)
    } else {
        Err(build_failed())
    }
}

/// The response headers relayed to the caller (B10): hop-by-hop, `X-Caracal-Identity`,
/// `Server`, `X-Powered-By`, `X-AspNet-Version`, `X-AspNetMvc-Version`, `Refresh` dropped;
/// `Location`/`Content-Location` kept only when relative.
pub fn response(upstream: &[Header]) -> Vec<Header> {
    let listed = connection_listed(upstream);
    upstream
        .iter()
        .filter_map(|(name, value)| {
            let name = name.to_ascii_lowercase();
            let dropped = is_hop_by_hop(&name)
                || listed.contains(&name)
                || matches!(
                    name.as_str(),
                    "x-caracal-identity"
                        | "server"
                        | "x-powered-by"
                        | "x-aspnet-version"
                        | "x-aspnetmvc-version"
                        | "refresh"
                )
                || ((name == "location" || name == "content-location") && !is_relative(value));
            (!dropped).then(|| (name, value.clone()))
        })
        .collect()
}

/// A relative reference: no scheme and not network-path (`//host`). Backslashes count as
/// slashes (browsers read `/\host` as `//host`), and a value that is not UTF-8 or carries
/// control characters is not trusted as relative.
fn is_relative(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    if text.chars().any(char::is_control) {
        return false;
    }
    let text = text.trim();
    let mut chars = text.chars();
    let slash = |c: Option<char>| matches!(c, Some('/' | '\\'));
    if slash(chars.next()) && slash(chars.next()) {
        return false;
    }
    !has_scheme(text)
}

/// Whether `text` starts with an RFC 3986 scheme (`ALPHA *(ALPHA / DIGIT / + / - / .)` and
/// `:`).
fn has_scheme(text: &str) -> bool {
    let Some(colon) = text.find(':') else {
        return false;
    };
    let scheme = &text[..colon];
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const FRESH: &str = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01";
    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn h(name: &str, value: &str) -> Header {
        (name.to_owned(), value.as_bytes().to_vec())
    }

    fn ctx() -> OutboundContext<'static> {
        OutboundContext {
            request_id: "gw-req-1",
            peer_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            trust_proxy: false,
            tls: false,
            upstream_host: "api.example.com:8443",
            fresh_traceparent: FRESH,
        }
    }

    fn get<'h>(headers: &'h [Header], name: &str) -> Vec<&'h str> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| std::str::from_utf8(v).expect("utf-8"))
            .collect()
    }

    fn names(headers: &[Header]) -> Vec<&str> {
        headers.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn outbound_drops_and_sets() {
        let inbound = vec![
            h("Host", "gateway.local:8081"),
            h("Authorization", "Bearer mandate"),
            h("Connection", "keep-alive, X-Secret , Upgrade"),
            h("Keep-Alive", "timeout=5"),
            h("Proxy-Connection", "keep-alive"),
            h("Proxy-Authenticate", "Basic"),
            h("Proxy-Authorization", "Basic abc"),
            h("TE", "trailers"),
            h("Trailer", "X-Checksum"),
            h("Transfer-Encoding", "chunked"),
            h("Upgrade", "websocket"),
            h("X-Secret", "listed in Connection"),
            h("X-Caracal-Resource", "resource://x"),
            h("X-Caracal-Client-ID", ""),
            h("x-caracal-identity", "spoofed"),
            h("X-Forwarded-For", "1.2.3.4"),
            h("X-Forwarded-Proto", "https"),
            h("X-Forwarded-Host", "evil"),
            h("X-Forwarded-Prefix", "/x"),
            h("Forwarded", "for=1.2.3.4"),
            h("X-Real-IP", "1.2.3.4"),
            h("X-Request-Id", "caller-id"),
            h("Cookie", "a=1"),
            h("Content-Type", "application/json"),
            h("Content-Length", "12"),
            h("tracestate", "vendor=x"),
            h("Accept", "*/*"),
            h("cookie", "b=2"),
        ];
        let out = outbound(&inbound, &ctx());
        assert_eq!(
            names(&out),
            vec![
                "cookie",
                "content-type",
                "content-length",
                "tracestate",
                "accept",
                "cookie",
                "x-request-id",
                "traceparent",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "host",
            ]
        );
        assert_eq!(get(&out, "cookie"), vec!["a=1", "b=2"]);
        assert_eq!(get(&out, "content-length"), vec!["12"]);
        assert_eq!(get(&out, "x-request-id"), vec!["gw-req-1"]);
        assert_eq!(get(&out, "traceparent"), vec![FRESH]);
        assert_eq!(get(&out, "x-forwarded-for"), vec!["203.0.113.7"]);
        assert_eq!(get(&out, "x-forwarded-proto"), vec!["http"]);
        assert_eq!(get(&out, "x-forwarded-host"), vec!["gateway.local:8081"]);
        assert_eq!(get(&out, "host"), vec!["api.example.com:8443"]);
    }

    #[test]
    fn outbound_without_host_omits_forwarded_host() {
        let out = outbound(&[h("accept", "*/*")], &ctx());
        assert!(get(&out, "x-forwarded-host").is_empty());
        assert_eq!(get(&out, "host"), vec!["api.example.com:8443"]);
    }

    #[test]
    fn outbound_keeps_binary_values() {
        let inbound = vec![("X-Blob".to_owned(), vec![0xff, 0xfe, b'a'])];
        let out = outbound(&inbound, &ctx());
        assert_eq!(out[0], ("x-blob".to_owned(), vec![0xff, 0xfe, b'a']));
    }

    #[test]
    fn baggage_loses_caracal_members() {
        let cases = [
            (
                "caracal.agent_session=s1,userId=alice,caracal.delegation_edge=e1",
                Some("userId=alice"),
            ),
            (
                " a=1;prop=x , Caracal.Zone=z ,, b=2 ",
                Some("a=1;prop=x,b=2"),
            ),
            ("caracal.agent_session=s1", None),
            ("caracal.x=1, caracal.y=2", None),
            ("caracal.flag;p=1", None),
            ("caracalx=1,caracal=2", Some("caracalx=1,caracal=2")),
            ("k=caracal.value", Some("k=caracal.value")),
            (" , ", None),
        ];
        for (value, expected) in cases {
            let out = outbound(&[h("Baggage", value)], &ctx());
            let got = get(&out, "baggage");
            match expected {
                Some(kept) => assert_eq!(got, vec![kept], "{value}"),
                None => assert!(got.is_empty(), "{value}"),
            }
        }
        // Each baggage header on its own.
        let out = outbound(
            &[h("baggage", "caracal.a=1"), h("baggage", "b=2,caracal.c=3")],
            &ctx(),
        );
        assert_eq!(get(&out, "baggage"), vec!["b=2"]);
    }

    #[test]
    fn traceparent_is_kept_only_when_valid() {
        let zero_trace = format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32));
        let zero_parent = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", "0".repeat(16));
        let valid = [
            VALID,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-a-b",
        ];
        for value in valid {
            let out = outbound(&[h("TraceParent", value)], &ctx());
            assert_eq!(get(&out, "traceparent"), vec![value], "{value}");
        }
        let padded = format!(" {VALID} ");
        let out = outbound(&[h("traceparent", &padded)], &ctx());
        assert_eq!(get(&out, "traceparent"), vec![VALID]);

        let invalid = [
            "",
            "garbage",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            &zero_trace,
            &zero_parent,
        ];
        for value in invalid {
            let out = outbound(&[h("traceparent", value)], &ctx());
            assert_eq!(get(&out, "traceparent"), vec![FRESH], "{value}");
        }
        let out = outbound(&[("traceparent".into(), vec![0xff])], &ctx());
        assert_eq!(get(&out, "traceparent"), vec![FRESH]);
        // Missing, or listed as hop-by-hop by the caller.
        let out = outbound(&[], &ctx());
        assert_eq!(get(&out, "traceparent"), vec![FRESH]);
        let out = outbound(
            &[h("connection", "traceparent"), h("traceparent", VALID)],
            &ctx(),
        );
        assert_eq!(get(&out, "traceparent"), vec![FRESH]);
    }

    #[test]
    fn forwarded_for_and_proto_follow_trust_proxy() {
        let inbound = vec![
            h("X-Forwarded-For", " 198.51.100.9 , 10.0.0.1"),
            h("X-Forwarded-Proto", "HTTPS"),
        ];
        let out = outbound(&inbound, &ctx());
        assert_eq!(get(&out, "x-forwarded-for"), vec!["203.0.113.7"]);
        assert_eq!(get(&out, "x-forwarded-proto"), vec!["http"]);

        let trusted = OutboundContext {
            trust_proxy: true,
            ..ctx()
        };
        let out = outbound(&inbound, &trusted);
        assert_eq!(get(&out, "x-forwarded-for"), vec!["198.51.100.9"]);
        assert_eq!(get(&out, "x-forwarded-proto"), vec!["https"]);

        let inbound = vec![
            h("X-Forwarded-For", "2001:db8::7"),
            h("X-Forwarded-Proto", "http"),
        ];
        let out = outbound(&inbound, &trusted);
        assert_eq!(get(&out, "x-forwarded-for"), vec!["2001:db8::7"]);
        assert_eq!(get(&out, "x-forwarded-proto"), vec!["http"]);

        // Not an IP / not http(s): fall back to the peer and the connection.
        let tls_trusted = OutboundContext {
            tls: true,
            peer_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            ..trusted
        };
        for (xff, proto) in [("unknown, 1.2.3.4", "ftp"), ("", "ws"), ("1.2.3.4:80", "")] {
            let inbound = vec![h("X-Forwarded-For", xff), h("X-Forwarded-Proto", proto)];
            let out = outbound(&inbound, &tls_trusted);
            assert_eq!(get(&out, "x-forwarded-for"), vec!["::1"], "{xff}");
            assert_eq!(get(&out, "x-forwarded-proto"), vec!["https"], "{proto}");
        }
        let out = outbound(&[], &tls_trusted);
        assert_eq!(get(&out, "x-forwarded-proto"), vec!["https"]);
    }

    fn directive(mode: &str) -> Directive {
        Directive {
            url: "https://api.example.com".into(),
            auth_mode: mode.into(),
            ..Directive::default()
        }
    }

    fn build_failed() -> Denial {
        Denial::new(
            400,
            "internal_error",
            "upstream request build failed",
            "upstream_errors",
        )
    }

    fn header(name: &str, value: &str, identity: Option<&str>) -> Credential {
        Credential::Header {
            name: name.into(),
            value: value.into(),
            identity: identity.map(str::to_owned),
        }
    }

    #[test]
    fn caracal_jwt_is_the_default() {
        for mode in ["", "caracal_jwt"] {
            assert_eq!(
                credential(&directive(mode), "res.jwt"),
                Ok(header("authorization", "Bearer res.jwt", None))
            );
        }
        let custom = Directive {
            auth_header: "X-Upstream-Auth".into(),
            auth_scheme: "JWT".into(),
            // Only provider modes forward the identity.
            forward_caracal_identity: true,
            ..directive("caracal_jwt")
        };
        assert_eq!(
            credential(&custom, "res.jwt"),
            Ok(header("x-upstream-auth", "JWT res.jwt", None))
        );
    }

    #[test]
    fn none_sends_nothing() {
        let none = Directive {
            forward_caracal_identity: true,
            ..directive("none")
        };
        assert_eq!(credential(&none, "res.jwt"), Ok(Credential::Nothing));
    }

    #[test]
    fn provider_oauth() {
        let oauth = Directive {
            auth_scheme: "Bearer".into(),
            provider_token: Some("gho_123".into()),
            ..directive("provider_oauth")
        };
        assert_eq!(
            credential(&oauth, "res.jwt"),
            Ok(header("authorization", "Bearer gho_123", None))
        );
        let bare = Directive {
            auth_scheme: String::new(),
            forward_caracal_identity: true,
            ..oauth.clone()
        };
        assert_eq!(
            credential(&bare, "res.jwt"),
            Ok(header("authorization", "gho_123", Some("res.jwt")))
        );
        for token in [None, Some(String::new()), Some("  ".into())] {
            let missing = Directive {
                provider_token: token,
                ..oauth.clone()
            };
            assert_eq!(credential(&missing, "res.jwt"), Err(build_failed()));
        }
    }

    #[test]
    fn provider_apikey_in_a_header_or_the_query() {
        let in_header = Directive {
            auth_header: "X-Api-Key".into(),
            provider_token: Some("key-1".into()),
            ..directive("provider_apikey")
        };
        assert_eq!(
            credential(&in_header, "res.jwt"),
            Ok(header("x-api-key", "key-1", None))
        );
        let with_scheme = Directive {
            auth_location: "header".into(),
            auth_scheme: "Token".into(),
            forward_caracal_identity: true,
            ..in_header.clone()
        };
        assert_eq!(
            credential(&with_scheme, "res.jwt"),
            Ok(header("x-api-key", "Token key-1", Some("res.jwt")))
        );
        let in_query = Directive {
            auth_location: "query".into(),
            query_param_name: "api_key".into(),
            forward_caracal_identity: true,
            ..in_header.clone()
        };
        assert_eq!(
            credential(&in_query, "res.jwt"),
            Ok(Credential::Query {
                name: "api_key".into(),
                value: "key-1".into(),
                identity: Some("res.jwt".into()),
            })
        );
        let no_param = Directive {
            query_param_name: String::new(),
            ..in_query.clone()
        };
        assert_eq!(credential(&no_param, "res.jwt"), Err(build_failed()));
        let no_token = Directive {
            provider_token: None,
            ..in_query
        };
        assert_eq!(credential(&no_token, "res.jwt"), Err(build_failed()));
        let no_token = Directive {
            provider_token: Some(String::new()),
            ..in_header
        };
        assert_eq!(credential(&no_token, "res.jwt"), Err(build_failed()));
    }

    #[test]
    fn unknown_modes_fail_the_build() {
        for mode in ["basic", "CARACAL_JWT", "provider", " none"] {
            let unknown = Directive {
                provider_token: Some("t".into()),
                ..directive(mode)
            };
            assert_eq!(
                credential(&unknown, "res.jwt"),
                Err(build_failed()),
                "{mode}"
            );
        }
    }

    #[test]
    fn reserved_or_malformed_header_names_fail_the_build() {
        for name in [
            "X-Caracal-Identity",
            "x-caracal-anything",
            "X-Forwarded-For",
            "x-forwarded-whatever",
            "Proxy-Authorization",
            "proxy-custom",
            "Baggage",
            "Connection",
            "Content-Encoding",
            "Content-Length",
            "Content-Type",
            "Expect",
            "Forwarded",
            "HOST",
            "Keep-Alive",
            "Proxy-Authenticate",
            "TE",
            "traceparent",
            "tracestate",
            "Trailer",
            "Transfer-Encoding",
            "Upgrade",
            "Via",
            "X-Real-IP",
            "X-Request-Id",
            "X Api Key",
            "X-Api-Key:",
            "x-api\nkey",
            "ключ",
            "(key)",
        ] {
            for mode in ["caracal_jwt", "provider_oauth", "none"] {
                let bad = Directive {
                    auth_header: name.into(),
                    provider_token: Some("t".into()),
                    ..directive(mode)
                };
                assert_eq!(credential(&bad, "res.jwt"), Err(build_failed()), "{name}");
            }
        }
        for name in ["X-API-Key", "api_key", "x!#$%&'*+-.^_`|~1"] {
            let fine = Directive {
                auth_header: name.into(),
                ..directive("caracal_jwt")
            };
            assert!(credential(&fine, "res.jwt").is_ok(), "{name}");
        }
    }

    #[test]
    fn unsendable_values_fail_the_build() {
        let injected = Directive {
            provider_token: Some("t\r\nX-Evil: 1".into()),
            ..directive("provider_oauth")
        };
        assert_eq!(credential(&injected, "res.jwt"), Err(build_failed()));
        assert_eq!(
            credential(&directive("caracal_jwt"), "a\nb"),
            Err(build_failed())
        );
    }

    #[test]
    fn apply_replaces_the_credential_header() {
        let mut headers = vec![
            h("accept", "*/*"),
            h("X-Api-Key", "caller's"),
            h("x-api-key", "again"),
            h("x-caracal-identity", "stale"),
        ];
        header("x-api-key", "key-1", Some("res.jwt")).apply(&mut headers);
        assert_eq!(
            headers,
            vec![
                h("accept", "*/*"),
                h("x-api-key", "key-1"),
                h("x-caracal-identity", "res.jwt"),
            ]
        );

        let mut headers = vec![h("authorization", "Bearer caller")];
        header("Authorization", "Bearer res.jwt", None).apply(&mut headers);
        assert_eq!(headers, vec![h("authorization", "Bearer res.jwt")]);

        let mut headers = vec![h("accept", "*/*")];
        Credential::Query {
            name: "api_key".into(),
            value: "key-1".into(),
            identity: Some("res.jwt".into()),
        }
        .apply(&mut headers);
        assert_eq!(
            headers,
            vec![h("accept", "*/*"), h("x-caracal-identity", "res.jwt")]
        );

        let mut headers = vec![h("accept", "*/*")];
        Credential::Query {
            name: "api_key".into(),
            value: "key-1".into(),
            identity: None,
        }
        .apply(&mut headers);
        Credential::Nothing.apply(&mut headers);
        assert_eq!(headers, vec![h("accept", "*/*")]);
    }

    #[test]
    fn response_drops_what_the_caller_must_not_see() {
        let upstream = vec![
            h("Content-Type", "application/json"),
            h("Connection", "close, X-Internal"),
            h("X-Internal", "secret"),
            h("Keep-Alive", "timeout=5"),
            h("Transfer-Encoding", "chunked"),
            h("Trailer", "X-Checksum"),
            h("Upgrade", "h2c"),
            h("Proxy-Authenticate", "Basic"),
            h("X-Caracal-Identity", "res.jwt"),
            h("Server", "nginx/1.2"),
            h("X-Powered-By", "PHP"),
            h("X-AspNet-Version", "4.0"),
            h("X-AspNetMvc-Version", "5.2"),
            h("Refresh", "0; url=https://evil"),
            h("Set-Cookie", "s=1"),
            h("Cache-Control", "no-store"),
            h("Content-Length", "2"),
        ];
        let out = response(&upstream);
        assert_eq!(
            out,
            vec![
                h("content-type", "application/json"),
                h("set-cookie", "s=1"),
                h("cache-control", "no-store"),
                h("content-length", "2"),
            ]
        );
    }

    #[test]
    fn response_keeps_only_relative_locations() {
        for relative in [
            "/next",
            "next?page=2",
            "./a:b",
            "../up",
            "?q=1",
            "#frag",
            "",
            "/a//b",
        ] {
            for name in ["Location", "Content-Location"] {
                let out = response(&[h(name, relative)]);
                assert_eq!(
                    out,
                    vec![(name.to_ascii_lowercase(), relative.as_bytes().to_vec())],
                    "{relative}"
                );
            }
        }
        for absolute in [
            "https://evil.example/",
            "HTTP://evil.example/",
            "//evil.example/x",
            " //evil.example/x",
            "/\\evil.example",
            "\\\\evil.example",
            "javascript:alert(1)",
            "mailto:a@b",
            "a+b-c.d:rest",
            "/x\ty",
        ] {
            for name in ["location", "content-location"] {
                assert!(response(&[h(name, absolute)]).is_empty(), "{absolute}");
            }
        }
        assert!(response(&[("location".into(), vec![b'/', 0xff])]).is_empty());
    }
}
