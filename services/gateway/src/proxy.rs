//! The proxy: B3's ordered pipeline, steps 0–18, then the relay (B12). Each step either
//! passes or answers with its own refusal; nothing reaches the upstream before step 18, and
//! nothing on this path touches Postgres (keys, anchors and the breaker are in memory; the
//! `jti` registry and the audit stream are Redis).

use std::net::SocketAddr;
use std::time::Instant;

use caracal_core::gateway::evidence::{replay_detected, subject_fingerprint, Replay};
use caracal_core::gateway::exchange::{counts_against_circuit, ExchangeRequest, Exchanged};
use caracal_core::gateway::headers::{self, Credential, Header, OutboundContext};
use caracal_core::gateway::host::{parse_upstream, token_host_allowed, Upstream};
use caracal_core::gateway::path::{join_path, merge_query};
use caracal_core::gateway::preflight::{preflight, Admitted, Inbound};
use caracal_core::gateway::Denial;
use caracal_core::ids::ZoneId;
use caracal_core::mandate::verify::verify_signature_only;
use caracal_core::sts::evidence::rfc3339_nanos;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::audit::{Completion, Recorder};
use crate::reply::{self, Reply};
use crate::upstream::{caused_by, Limited, NotAddressable, OwnedAnchors, Relay, TooLarge};
use crate::Gateway;

/// Refusals this module words itself (the rest come from core).
fn stale() -> Denial {
    Denial::new(
        503,
        "sts_unavailable",
        "revocation state unavailable",
        "revocation_stale",
    )
}

fn bad_signature() -> Denial {
    Denial::new(
        401,
        "invalid_token",
        "bearer signature invalid",
        "signature",
    )
}

fn replayed() -> Denial {
    Denial::new(401, "invalid_token", "token replay detected", "jti_replay")
}

fn revoked() -> Denial {
    Denial::new(401, "invalid_token", "session revoked", "revoked")
}

fn circuit_open() -> Denial {
    Denial::new(
        503,
        "sts_unavailable",
        "sts unavailable",
        "sts_circuit_fast_fail",
    )
}

fn not_addressable() -> Denial {
    Denial::new(
        502,
        "internal_error",
        "upstream not addressable",
        "upstream_errors",
    )
}

fn host_not_allowed() -> Denial {
    Denial::new(
        502,
        "internal_error",
        "provider credential not allowed for upstream host",
        "upstream_errors",
    )
}

fn build_failed() -> Denial {
    Denial::new(
        400,
        "internal_error",
        "upstream request build failed",
        "upstream_errors",
    )
}

/// Percent-decodes the request path once, as Go's server hands `URL.Path` to handlers. A
/// path that does not decode (bad escape, not UTF-8) is returned raw: step 9 decodes it again
/// and refuses it.
fn decode_path(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => return raw.to_owned(),
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| raw.to_owned())
}

/// A random W3C `traceparent` for requests without a valid one.
fn fresh_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace}-{}-01", &span[..16])
}

/// The trace id of a `traceparent` value (`00-<trace>-<span>-<flags>`).
fn trace_id(traceparent: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(traceparent).ok()?;
    let id = text.split('-').nth(1)?;
    (id.len() == 32).then(|| id.to_owned())
}

fn header_text(request: &Request<Incoming>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// `http`'s `Host` for an [`Upstream`], with the path and query joined (B9).
fn upstream_url(
    upstream: &Upstream,
    request_path: &str,
    client_query: &str,
    credential: &Credential,
) -> Result<reqwest::Url, Denial> {
    let mut url = reqwest::Url::parse(&format!(
        "{}://{}/",
        upstream.scheme,
        upstream.host_header()
    ))
    .map_err(|_| build_failed())?;
    url.set_path(&join_path(&upstream.base_path, request_path));
    let mut own = upstream.query.clone();
    if let Credential::Query { name, value, .. } = credential {
        // The credential joins the upstream's own parameters, which win over the client's, so
        // a caller cannot smuggle in a competing value.
        let encoded: String = url::form_urlencoded_pair(name, value);
        if !own.is_empty() {
            own.push('&');
        }
        own.push_str(&encoded);
    }
    let query = merge_query(&own, client_query);
    url.set_query((!query.is_empty()).then_some(query.as_str()));
    Ok(url)
}

mod url {
    /// `name=value`, both escaped as a query component.
    pub fn form_urlencoded_pair(name: &str, value: &str) -> String {
        let mut out = String::new();
        escape(&mut out, name);
        out.push('=');
        escape(&mut out, value);
        out
    }

    fn escape(out: &mut String, value: &str) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        for &b in value.as_bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    out.push(char::from(b))
                }
                _ => {
                    out.push('%');
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 0x0f)]));
                }
            }
        }
    }
}

impl Gateway {
    /// Counts and renders a refusal of steps 0–14.
    fn refuse(&self, denial: &Denial, request_id: &str, local: bool) -> Reply {
        self.metrics.inc(&self.metrics.denied);
        if local {
            self.metrics.denial(denial.metric);
        }
        reply::denial(denial, request_id)
    }

    /// Steps 0–18 for one request.
    pub(crate) async fn proxy(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        request_id: &str,
    ) -> Reply {
        let started = Instant::now();
        self.metrics.inc(&self.metrics.requests);
        let now = self.ports.clock.now();
        let now_ms = now.unix_micros() / 1_000;
        let now_unix = now.unix_seconds();

        // 0: the revocation state must be fresh, or nothing is admitted.
        if !self.anchors.fresh(now_ms) {
            return self.refuse(&stale(), request_id, true);
        }

        // 1–9: the raw request.
        let path = decode_path(request.uri().path());
        let authorization = header_text(&request, "authorization");
        let client_id = header_text(&request, "x-caracal-client-id");
        let resource = header_text(&request, "x-caracal-resource");
        let inbound = Inbound {
            authorization: authorization.as_deref(),
            client_id_header: client_id.as_deref(),
            resource_header: resource.as_deref(),
            path: &path,
        };
        let admitted = match preflight(&inbound, now_unix) {
            Ok(admitted) => admitted,
            Err(denial) => return self.refuse(&denial, request_id, true),
        };
        let Admitted {
            bearer,
            claims,
            resource,
        } = &admitted;

        // 10: the signature, against the zone's keys.
        let signature_ok = match ZoneId::parse(&claims.zone_id) {
            Err(_) => false,
            Ok(_) if claims.kid.is_empty() => false,
            Ok(zone) => match self.ports.keys.verifying_keys(&zone, &claims.kid).await {
                Ok(keys) => verify_signature_only(bearer, &keys, self.ports.es256.as_ref()).is_ok(),
                Err(e) => {
                    tracing::warn!(zone = %claims.zone_id, error = %e, "verification keys unavailable");
                    false
                }
            },
        };
        if !signature_ok {
            return self.refuse(&bad_signature(), request_id, true);
        }

        // 11: single use, burned before revocation and STS checks.
        if !claims.jti.is_empty() && claims.token_use != "session" && claims.exp > now_unix {
            let ttl = u64::try_from(claims.exp - now_unix).unwrap_or(1);
            let key = format!("seen:jti:{}", claims.jti);
            let first = match self
                .ports
                .expiring
                .set_if_absent(&key, request_id, ttl)
                .await
            {
                Ok(first) => first,
                Err(e) if self.config.jti_fail_open => {
                    tracing::warn!(error = %e, "jti registry unavailable; admitting (JTI_FAIL_OPEN)");
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "jti registry unavailable; refusing");
                    return self.refuse(&replayed(), request_id, true);
                }
            };
            if !first {
                self.ports.audit.emit(replay_detected(&Replay {
                    id: &self.ports.ids.new_id(),
                    zone_id: &claims.zone_id,
                    request_id,
                    jti: &claims.jti,
                    resource,
                    client_id: &claims.client_id,
                    bearer,
                    occurred_at: &rfc3339_nanos(now),
                }));
                return self.refuse(&replayed(), request_id, true);
            }
        }

        // 12: the anchors.
        let anchors = OwnedAnchors {
            sid: claims.sid.clone(),
            root_sid: claims.root_sid.clone(),
            agent_session_id: claims.agent_session_id.clone(),
            delegation_edge_id: claims.delegation_edge_id.clone(),
        };
        if self.anchors.is_revoked(&anchors.borrowed()) {
            return self.refuse(&revoked(), request_id, true);
        }

        // 13: the breaker.
        if !self.breaker.allow(now_ms) {
            return self.refuse(&circuit_open(), request_id, false);
        }

        // 14: the signed exchange.
        let method = request.method().as_str().to_owned();
        let exchange_started = Instant::now();
        let exchanged = self
            .sts
            .exchange(
                &ExchangeRequest {
                    bearer,
                    zone_id: &claims.zone_id,
                    application_id: &claims.client_id,
                    resource,
                    method: &method,
                    path: &path,
                    request_id,
                },
                now_unix,
            )
            .await;
        self.metrics
            .sts_latency(u64::try_from(exchange_started.elapsed().as_millis()).unwrap_or(u64::MAX));
        let counted = matches!(&exchanged, Err(d) if counts_against_circuit(d));
        self.breaker.record(counted, self.now_ms());
        let Exchanged {
            access_token,
            directive,
        } = match exchanged {
            Ok(exchanged) => exchanged,
            Err(denial) => {
                self.metrics.inc(&self.metrics.sts_exchange_errors);
                return self.refuse(&denial, request_id, false);
            }
        };

        // Past the STS: every outcome is evidence.
        let mut completion = Completion::new(
            Recorder {
                sink: self.ports.audit.clone(),
                ids: self.ports.ids.clone(),
                clock: self.ports.clock.clone(),
                metrics: self.metrics.clone(),
            },
            &claims.zone_id,
            request_id,
            &claims.client_id,
            resource,
            &subject_fingerprint(bearer),
            &method,
            started,
        );
        completion.note("subject_kind", &claims.sub_type);
        completion.note("auth_mode", &directive.auth_mode);
        completion.note("provider_id", &directive.provider_id);
        completion.note("connection_id", &directive.connection_id);
        let fail = |completion: Completion, denial: Denial, status: &str, kind: &str| {
            self.metrics.inc(&self.metrics.upstream_errors);
            self.metrics.inc(&self.metrics.denied);
            completion.failed(status, denial.status, kind);
            reply::denial(&denial, request_id)
        };

        // 15: the host guard.
        let upstream = match parse_upstream(&directive.url, &self.config.host_policy) {
            Ok(upstream) => upstream,
            Err(denial) => {
                return fail(
                    completion,
                    denial,
                    "build_failed",
                    "upstream_not_addressable",
                )
            }
        };
        completion.note("upstream_host", &upstream.host);

        // 16: where the provider credential may go.
        if !token_host_allowed(&directive.allowed_token_hosts, &upstream.host) {
            return fail(
                completion,
                host_not_allowed(),
                "build_failed",
                "provider_host_not_allowed",
            );
        }

        // 17: the credential, the headers, the URL.
        let built = self.build(
            &request,
            peer,
            request_id,
            &upstream,
            &path,
            &directive,
            &access_token,
        );
        let (url, headers) = match built {
            Ok(built) => built,
            Err(denial) => return fail(completion, denial, "build_failed", "request_build_failed"),
        };
        if let Some(trace) = headers
            .get("traceparent")
            .and_then(|v| trace_id(v.as_bytes()))
        {
            completion.note("trace_id", &trace);
        }

        // 18: the forward.
        let declared = request
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.config.max_request_bytes) {
            return fail(completion, too_large(), "upstream_error", "transport_error");
        }
        let request_method = request.method().clone();
        let body = request.into_body();
        let mut outbound = reqwest::Request::new(request_method, url);
        *outbound.headers_mut() = headers;
        if !http_body::Body::is_end_stream(&body) {
            let limited = Limited::new(body, self.config.max_request_bytes);
            *outbound.body_mut() = Some(reqwest::Body::wrap_stream(limited));
        }
        let sent = tokio::time::timeout(
            self.config.upstream_timeout,
            self.upstream.execute(outbound),
        )
        .await;
        let response = match sent {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                let (denial, kind) = if caused_by::<TooLarge>(&e) {
                    (too_large(), "transport_error")
                } else if caused_by::<NotAddressable>(&e) {
                    (not_addressable(), "upstream_not_addressable")
                } else if e.is_timeout() {
                    (upstream_timeout(), "transport_error")
                } else {
                    tracing::debug!(error = %e, "upstream unreachable");
                    (unreachable(), "transport_error")
                };
                return fail(completion, denial, "upstream_error", kind);
            }
            Err(_) => {
                return fail(
                    completion,
                    upstream_timeout(),
                    "upstream_error",
                    "transport_error",
                )
            }
        };

        // The relay.
        let status = response.status();
        completion.upstream_status(status.as_u16());
        let relayed: Vec<Header> = response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        let mut reply = Reply::new(reply::empty());
        *reply.status_mut() = status;
        for (name, value) in headers::response(&relayed) {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(&value),
            ) {
                reply.headers_mut().append(name, value);
            }
        }
        let expires_in = claims
            .exp
            .saturating_sub(self.ports.clock.now().unix_seconds())
            .max(0);
        reply
            .headers_mut()
            .insert("x-caracal-token-expires-in", HeaderValue::from(expires_in));
        reply.headers_mut().insert(
            http::header::TRAILER,
            HeaderValue::from_static("X-Caracal-Revoked"),
        );
        self.metrics.inc(&self.metrics.allowed);
        let relay = Relay::new(
            response,
            std::sync::Arc::clone(&self.anchors),
            anchors,
            self.config.stream_idle_timeout,
            completion,
        );
        *reply.body_mut() = relay.boxed_unsync();
        reply
    }

    /// Step 17: the upstream URL and headers, with the credential placed.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        request: &Request<Incoming>,
        peer: SocketAddr,
        request_id: &str,
        upstream: &Upstream,
        path: &str,
        directive: &caracal_core::gateway::exchange::Directive,
        access_token: &str,
    ) -> Result<(reqwest::Url, http::HeaderMap), Denial> {
        let credential = headers::credential(directive, access_token)?;
        let url = upstream_url(
            upstream,
            path,
            request.uri().query().unwrap_or(""),
            &credential,
        )?;
        let inbound: Vec<Header> = request
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect();
        let host = upstream.host_header();
        let traceparent = fresh_traceparent();
        let mut outbound = headers::outbound(
            &inbound,
            &OutboundContext {
                request_id,
                peer_ip: peer.ip(),
                trust_proxy: self.config.trust_proxy,
                tls: self.config.tls.is_some(),
                upstream_host: &host,
                fresh_traceparent: &traceparent,
            },
        );
        // B8: the caller's copy of the credential header goes in every mode, including `none`
        // and query placement, where `apply` has no header of its own to put in its place.
        let credential_header = if directive.auth_header.is_empty() {
            "authorization"
        } else {
            directive.auth_header.as_str()
        };
        outbound.retain(|(name, _)| !name.eq_ignore_ascii_case(credential_header));
        credential.apply(&mut outbound);
        let mut map = http::HeaderMap::with_capacity(outbound.len());
        for (name, value) in outbound {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| build_failed())?;
            let value = HeaderValue::from_bytes(&value).map_err(|_| build_failed())?;
            map.append(name, value);
        }
        Ok((url, map))
    }
}

fn too_large() -> Denial {
    Denial::new(
        413,
        "payload_too_large",
        "request body too large",
        "upstream_errors",
    )
}

fn upstream_timeout() -> Denial {
    Denial::new(504, "internal_error", "upstream timeout", "upstream_errors")
}

fn unreachable() -> Denial {
    Denial::new(
        502,
        "internal_error",
        "upstream unreachable",
        "upstream_errors",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_decode_once() {
        assert_eq!(decode_path("/a%20b"), "/a b");
        assert_eq!(decode_path("/a%252e"), "/a%2e");
        assert_eq!(decode_path("/bad%zz"), "/bad%zz");
        assert_eq!(decode_path("/%ff"), "/%ff");
        assert_eq!(decode_path("/plain"), "/plain");
    }

    #[test]
    fn traceparents() {
        let t = fresh_traceparent();
        assert_eq!(t.len(), 55, "{t}");
        assert!(t.starts_with("00-") && t.ends_with("-01"));
        assert_eq!(trace_id(t.as_bytes()).map(|s| s.len()), Some(32));
        assert_eq!(trace_id(b"garbage"), None);
    }

    #[test]
    fn query_pairs_escape() {
        assert_eq!(
            url::form_urlencoded_pair("api key", "a/b=c"),
            "api%20key=a%2Fb%3Dc"
        );
    }
}
