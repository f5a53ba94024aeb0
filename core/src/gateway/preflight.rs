//! B2/B3 steps 1–9: what is checked on the raw request before any key, Redis or STS work, in
//! the contract's order, each with its status and error. Claims are only *peeked* here (the
//! payload is decoded without verifying the signature); they are trusted for routing only.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use super::path::traversal_free;
use super::Denial;

/// Step 2: the longest accepted bearer, in bytes.
pub const MAX_BEARER_BYTES: usize = 4096;
/// Step 4: a mandate must have at least this many seconds left.
pub const PREFLIGHT_WINDOW_SECONDS: i64 = 35;

/// The unverified claims the Gateway routes by (B2). Missing string claims are empty; `kid`
/// comes from the JOSE header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peeked {
    /// `exp` (non-zero when admitted).
    pub exp: i64,
    /// `zone_id` (`^[A-Za-z0-9._:-]{1,128}$` when admitted).
    pub zone_id: String,
    /// `client_id` (same alphabet when admitted).
    pub client_id: String,
    /// `jti`.
    pub jti: String,
    /// `use`.
    pub token_use: String,
    /// `sid`.
    pub sid: String,
    /// `root_sid`.
    pub root_sid: String,
    /// `agent_session_id`.
    pub agent_session_id: String,
    /// `delegation_edge_id`.
    pub delegation_edge_id: String,
    /// `sub_type`.
    pub sub_type: String,
    /// The JOSE header's `kid` (may be empty: step 10 then refuses the signature).
    pub kid: String,
}

/// The parts of the inbound request preflight reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inbound<'a> {
    /// The `Authorization` header, if present (raw value).
    pub authorization: Option<&'a str>,
    /// `X-Caracal-Client-ID`, if present.
    pub client_id_header: Option<&'a str>,
    /// `X-Caracal-Resource`, if present.
    pub resource_header: Option<&'a str>,
    /// The percent-decoded request path (what B9 checks).
    pub path: &'a str,
}

/// A request that passed steps 1–9.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The bearer, trimmed, without its scheme.
    pub bearer: String,
    /// Its peeked claims.
    pub claims: Peeked,
    /// `X-Caracal-Resource`, trimmed.
    pub resource: String,
}

/// Steps 1–9 of B3, in order (1 bearer present, 2 size, 3 form + `exp`, 4 preflight window,
/// 5 no caller client id, 6 resource header, 7 `zone_id`, 8 `client_id`, 9 traversal), at
/// `now_unix`. The first failing step's [`Denial`] is returned.
pub fn preflight(inbound: &Inbound<'_>, now_unix: i64) -> Result<Admitted, Denial> {
    // 1. A bearer.
    let bearer = inbound
        .authorization
        .and_then(bearer_token)
        .ok_or_else(|| invalid(401, "missing bearer token", "missing_auth"))?;
    // 2. Its size.
    if bearer.len() > MAX_BEARER_BYTES {
        return Err(invalid(401, "bearer token too large", "bad_bearer"));
    }
    // 3. Compact form, a JSON payload with a non-zero `exp`.
    let claims =
        peek(bearer).ok_or_else(|| invalid(401, "malformed bearer token", "bad_bearer"))?;
    // 4. Enough time left to finish the exchange and the upstream call.
    if claims.exp.saturating_sub(now_unix) < PREFLIGHT_WINDOW_SECONDS {
        return Err(Denial::new(
            401,
            "credential_expired_not_renewable",
            "credential expiring within pre-flight window",
            "expiring",
        ));
    }
    // 5. The client identity comes from the token, never from the caller.
    if inbound
        .client_id_header
        .is_some_and(|value| !value.trim().is_empty())
    {
        return Err(invalid(
            400,
            "client identity derives from the bearer token",
            "bad_routing",
        ));
    }
    // 6. The resource to route to.
    let resource = inbound
        .resource_header
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .ok_or_else(|| invalid(400, "missing routing headers", "bad_routing"))?;
    // 7, 8. Zone and client, well formed.
    if !valid_id(&claims.zone_id) {
        return Err(invalid(401, "missing token zone", "bad_bearer"));
    }
    if !valid_id(&claims.client_id) {
        return Err(invalid(401, "missing token client", "bad_bearer"));
    }
    // 9. No traversal in the path.
    if !traversal_free(inbound.path) {
        return Err(invalid(
            400,
            "path traversal not permitted",
            "path_traversal",
        ));
    }
    Ok(Admitted {
        bearer: bearer.to_owned(),
        claims,
        resource: resource.to_owned(),
    })
}

fn invalid(status: u16, description: &str, metric: &'static str) -> Denial {
    Denial::new(status, "invalid_token", description, metric)
}

/// The trimmed token after a case-insensitive `Bearer ` prefix, when non-empty.
fn bearer_token(authorization: &str) -> Option<&str> {
    let authorization = authorization.trim_start();
    let prefix = authorization.get(..BEARER_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(BEARER_PREFIX) {
        return None;
    }
    let token = authorization[BEARER_PREFIX.len()..].trim();
    (!token.is_empty()).then_some(token)
}

const BEARER_PREFIX: &str = "Bearer ";

/// `^[A-Za-z0-9._:-]{1,128}$`.
fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The unverified claims of a compact JWS: three segments, a header that is a base64url JSON
/// object, a payload that is a base64url JSON object with a non-zero integer `exp`. String
/// claims of another type read as empty (the zone and client then fail steps 7 and 8; the STS
/// judges the rest).
fn peek(token: &str) -> Option<Peeked> {
    let mut segments = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return None;
    };
    let header = json_object(header)?;
    let claims = json_object(payload)?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .filter(|exp| *exp != 0)?;
    let text = |map: &Map<String, Value>, name: &str| {
        map.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Some(Peeked {
        exp,
        zone_id: text(&claims, "zone_id"),
        client_id: text(&claims, "client_id"),
        jti: text(&claims, "jti"),
        token_use: text(&claims, "use"),
        sid: text(&claims, "sid"),
        root_sid: text(&claims, "root_sid"),
        agent_session_id: text(&claims, "agent_session_id"),
        delegation_edge_id: text(&claims, "delegation_edge_id"),
        sub_type: text(&claims, "sub_type"),
        kid: text(&header, "kid"),
    })
}

/// An unpadded base64url segment holding a JSON object.
fn json_object(segment: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    match serde_json::from_slice::<Value>(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_790_000_000;

    fn b64(text: &str) -> String {
        URL_SAFE_NO_PAD.encode(text)
    }

    fn token_with(header: &str, payload: &Value) -> String {
        format!(
            "{}.{}.{}",
            b64(header),
            b64(&payload.to_string()),
            b64("signature")
        )
    }

    fn payload() -> Value {
        json!({
            "exp": NOW + 300,
            "zone_id": "z1",
            "client_id": "app-1",
            "jti": "j-1",
            "use": "gateway",
            "sid": "ar-1",
            "root_sid": "ar-0",
            "agent_session_id": "s-1",
            "delegation_edge_id": "e-1",
            "sub_type": "application",
        })
    }

    fn token(payload: &Value) -> String {
        token_with(r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#, payload)
    }

    struct Request {
        authorization: Option<String>,
        client_id: Option<&'static str>,
        resource: Option<&'static str>,
        path: &'static str,
    }

    impl Request {
        fn good() -> Self {
            Self {
                authorization: Some(format!("Bearer {}", token(&payload()))),
                client_id: None,
                resource: Some("resource://pipernet"),
                path: "/v1/items",
            }
        }

        fn with_payload(payload: &Value) -> Self {
            Self {
                authorization: Some(format!("Bearer {}", token(payload))),
                ..Self::good()
            }
        }

        fn run(&self) -> Result<Admitted, Denial> {
            preflight(
                &Inbound {
                    authorization: self.authorization.as_deref(),
                    client_id_header: self.client_id,
                    resource_header: self.resource,
                    path: self.path,
                },
                NOW,
            )
        }
    }

    fn denied(request: &Request) -> (u16, String, String, &'static str) {
        let denial = request.run().expect_err("denied");
        (
            denial.status,
            denial.error,
            denial.description,
            denial.metric,
        )
    }

    fn expect(request: &Request, status: u16, description: &str, metric: &'static str) {
        let error = if metric == "expiring" {
            "credential_expired_not_renewable"
        } else {
            "invalid_token"
        };
        assert_eq!(
            denied(request),
            (status, error.to_owned(), description.to_owned(), metric)
        );
    }

    #[test]
    fn a_good_request_is_admitted_with_its_peeked_claims() {
        let admitted = Request::good().run().expect("admitted");
        assert_eq!(admitted.bearer, token(&payload()));
        assert_eq!(admitted.resource, "resource://pipernet");
        assert_eq!(
            admitted.claims,
            Peeked {
                exp: NOW + 300,
                zone_id: "z1".into(),
                client_id: "app-1".into(),
                jti: "j-1".into(),
                token_use: "gateway".into(),
                sid: "ar-1".into(),
                root_sid: "ar-0".into(),
                agent_session_id: "s-1".into(),
                delegation_edge_id: "e-1".into(),
                sub_type: "application".into(),
                kid: "k1".into(),
            }
        );
    }

    #[test]
    fn bearer_prefix_is_case_insensitive_and_values_are_trimmed() {
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            let request = Request {
                authorization: Some(format!("{scheme}   {}  ", token(&payload()))),
                client_id: Some("   "),
                resource: Some("  resource://pipernet \t"),
                ..Request::good()
            };
            let admitted = request.run().expect("admitted");
            assert_eq!(admitted.bearer, token(&payload()));
            assert_eq!(admitted.resource, "resource://pipernet");
        }
    }

    #[test]
    fn unknown_string_claims_and_a_missing_kid_are_empty() {
        let mut claims = json!({"exp": NOW + 300, "zone_id": "z1", "client_id": "c"});
        claims["jti"] = 7.into();
        let request = Request {
            authorization: Some(format!(
                "Bearer {}",
                token_with(r#"{"alg":"ES256"}"#, &claims)
            )),
            ..Request::good()
        };
        let peeked = request.run().expect("admitted").claims;
        assert_eq!((peeked.jti.as_str(), peeked.kid.as_str()), ("", ""));
        assert_eq!(peeked.token_use, "");
    }

    #[test]
    fn step_1_missing_bearer() {
        for authorization in [
            None,
            Some(String::new()),
            Some("Bearer".into()),
            Some("Bearer    ".into()),
            Some("Basic dXNlcjpwYXNz".into()),
            Some(token(&payload())),
            Some(format!("Bearer\t{}", token(&payload()))),
            Some(format!("Token {}", token(&payload()))),
            Some("Beär x".into()),
        ] {
            let request = Request {
                authorization,
                ..Request::good()
            };
            expect(&request, 401, "missing bearer token", "missing_auth");
        }
    }

    #[test]
    fn step_2_too_large() {
        let mut claims = payload();
        claims["pad"] = "x".repeat(MAX_BEARER_BYTES).into();
        expect(
            &Request::with_payload(&claims),
            401,
            "bearer token too large",
            "bad_bearer",
        );
        // Exactly at the limit is fine as far as step 2 goes (and the token then fails step 3).
        let request = Request {
            authorization: Some(format!("Bearer {}", "a".repeat(MAX_BEARER_BYTES))),
            ..Request::good()
        };
        expect(&request, 401, "malformed bearer token", "bad_bearer");
    }

    #[test]
    fn step_3_malformed() {
        let good = token(&payload());
        let parts: Vec<&str> = good.split('.').collect();
        let mut no_exp = payload();
        no_exp.as_object_mut().expect("object").remove("exp");
        let mut zero_exp = payload();
        zero_exp["exp"] = 0.into();
        let mut text_exp = payload();
        text_exp["exp"] = "soon".into();
        let mut float_exp = payload();
        float_exp["exp"] = 1.79e9.into();
        let header = r#"{"alg":"ES256","kid":"k1"}"#;
        for bearer in [
            parts[..2].join("."),
            format!("{good}.x"),
            "a.b".to_owned(),
            "...".to_owned(),
            format!("{}.{}=.{}", parts[0], parts[1], parts[2]),
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            format!("!!.{}.{}", parts[1], parts[2]),
            format!("{}.{}.{}", b64("not json"), parts[1], parts[2]),
            format!("{}.{}.{}", b64("[1]"), parts[1], parts[2]),
            format!("{}.{}.{}", parts[0], b64("not json"), parts[2]),
            format!("{}.{}.{}", parts[0], b64("[]"), parts[2]),
            format!("{}.{}.{}", parts[0], b64("42"), parts[2]),
            token_with(header, &no_exp),
            token_with(header, &zero_exp),
            token_with(header, &text_exp),
            token_with(header, &float_exp),
        ] {
            let request = Request {
                authorization: Some(format!("Bearer {bearer}")),
                ..Request::good()
            };
            expect(&request, 401, "malformed bearer token", "bad_bearer");
        }
        // The signature segment is not decoded here (step 10's job).
        let request = Request {
            authorization: Some(format!("Bearer {}.{}.!!", parts[0], parts[1])),
            ..Request::good()
        };
        assert!(request.run().is_ok());
    }

    #[test]
    fn step_4_preflight_window() {
        for left in [34, 0, -10] {
            let mut claims = payload();
            claims["exp"] = (NOW + left).into();
            expect(
                &Request::with_payload(&claims),
                401,
                "credential expiring within pre-flight window",
                "expiring",
            );
        }
        let mut claims = payload();
        claims["exp"] = (NOW + 35).into();
        assert!(Request::with_payload(&claims).run().is_ok());
        claims["exp"] = i64::MIN.into();
        expect(
            &Request::with_payload(&claims),
            401,
            "credential expiring within pre-flight window",
            "expiring",
        );
    }

    #[test]
    fn step_5_caller_client_id() {
        let request = Request {
            client_id: Some("app-2"),
            ..Request::good()
        };
        expect(
            &request,
            400,
            "client identity derives from the bearer token",
            "bad_routing",
        );
        for blank in ["", "  "] {
            let request = Request {
                client_id: Some(blank),
                ..Request::good()
            };
            assert!(request.run().is_ok());
        }
    }

    #[test]
    fn step_6_resource_header() {
        for resource in [None, Some(""), Some("   ")] {
            let request = Request {
                resource,
                ..Request::good()
            };
            expect(&request, 400, "missing routing headers", "bad_routing");
        }
    }

    #[test]
    fn steps_7_and_8_zone_and_client() {
        let bad_ids: Vec<Value> = vec![
            Value::Null,
            "".into(),
            "z 1".into(),
            "z/1".into(),
            "zé".into(),
            "x".repeat(129).into(),
            7.into(),
        ];
        for bad in &bad_ids {
            let mut claims = payload();
            claims["zone_id"] = bad.clone();
            expect(
                &Request::with_payload(&claims),
                401,
                "missing token zone",
                "bad_bearer",
            );
            let mut claims = payload();
            claims["client_id"] = bad.clone();
            expect(
                &Request::with_payload(&claims),
                401,
                "missing token client",
                "bad_bearer",
            );
        }
        let mut claims = payload();
        claims.as_object_mut().expect("object").remove("zone_id");
        expect(
            &Request::with_payload(&claims),
            401,
            "missing token zone",
            "bad_bearer",
        );
        let mut claims = payload();
        claims["zone_id"] = "Zone_1.a:b-c".into();
        claims["client_id"] = "x".repeat(128).into();
        assert!(Request::with_payload(&claims).run().is_ok());
    }

    #[test]
    fn step_9_traversal() {
        for path in ["/../x", "/a/%2e%2e/b", "/a/%252e%252e/b", "/a\\b", "/a%5cb"] {
            let request = Request {
                path,
                ..Request::good()
            };
            expect(
                &request,
                400,
                "path traversal not permitted",
                "path_traversal",
            );
        }
    }

    #[test]
    fn the_earliest_failing_step_wins() {
        let mut expiring_no_zone = payload();
        expiring_no_zone["exp"] = (NOW + 1).into();
        expiring_no_zone["zone_id"] = "".into();
        let mut no_zone_no_client = payload();
        no_zone_no_client["zone_id"] = "".into();
        no_zone_no_client["client_id"] = "".into();

        // Every step fails: step 1.
        let all_bad = Request {
            authorization: None,
            client_id: Some("app-2"),
            resource: None,
            path: "/../x",
        };
        expect(&all_bad, 401, "missing bearer token", "missing_auth");
        // From step 3 on.
        let request = Request {
            authorization: Some("Bearer a.b".into()),
            ..all_bad
        };
        expect(&request, 401, "malformed bearer token", "bad_bearer");
        // From step 4 on.
        let request = Request {
            authorization: Request::with_payload(&expiring_no_zone).authorization,
            ..request
        };
        expect(
            &request,
            401,
            "credential expiring within pre-flight window",
            "expiring",
        );
        // From step 5 on.
        let request = Request {
            authorization: Request::with_payload(&no_zone_no_client).authorization,
            ..request
        };
        expect(
            &request,
            400,
            "client identity derives from the bearer token",
            "bad_routing",
        );
        // From step 6 on.
        let request = Request {
            client_id: None,
            ..request
        };
        expect(&request, 400, "missing routing headers", "bad_routing");
        // From step 7 on.
        let request = Request {
            resource: Some("r"),
            ..request
        };
        expect(&request, 401, "missing token zone", "bad_bearer");
        // From step 8 on.
        let mut no_client = payload();
        no_client["client_id"] = "".into();
        let request = Request {
            authorization: Request::with_payload(&no_client).authorization,
            ..request
        };
        expect(&request, 401, "missing token client", "bad_bearer");
        // Step 9 alone.
        let request = Request {
            authorization: Request::good().authorization,
            ..request
        };
        expect(
            &request,
            400,
            "path traversal not permitted",
            "path_traversal",
        );
    }
}
