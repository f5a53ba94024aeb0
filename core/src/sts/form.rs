//! The token endpoint's request body (`spec/sts.md §3.1–3.2`): the one OAuth form parser.
//!
//! Parsing follows upstream's Go `url.ParseQuery` so the same bodies are accepted and refused:
//! pairs split on `&`, a `;` anywhere in a pair is an error (Go refuses semicolon separators),
//! `+` is a space, a bad `%` escape is an error, empty pairs are skipped. Values must also be
//! UTF-8 (Go would carry raw bytes through; every field we read is text, so refusing is the
//! safe reading). Then the contract's own rules run in its order: only `resource` may repeat,
//! the unsupported client-authentication fields are refused even when empty, `ttl_seconds`
//! must be an integer.

use crate::error::{Error, ErrorKind};

/// The only grant type.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Subject token type of an STS mandate.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Subject token type of a federated identity token.
pub const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";

/// The request media type (parameters such as `charset` are allowed).
pub const FORM_MEDIA_TYPE: &str = "application/x-www-form-urlencoded";

/// `400 invalid_token` with a description: the STS never answers `invalid_request`.
pub fn malformed(description: impl Into<String>) -> Error {
    Error::new(ErrorKind::Invalid, "invalid_token").describe(description)
}

/// Whether a `Content-Type` header value names the form media type.
pub fn is_form_media_type(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(FORM_MEDIA_TYPE))
}

/// Decoded `name=value` pairs in body order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormPairs(Vec<(String, String)>);

impl FormPairs {
    /// Parses a body as Go's `url.ParseQuery` would; any error is
    /// `400 invalid_token "malformed request body"`.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let mut pairs = Vec::new();
        for part in body.split(|b| *b == b'&') {
            if part.contains(&b';') {
                return Err(malformed("malformed request body"));
            }
            if part.is_empty() {
                continue;
            }
            let (key, value) = match part.iter().position(|b| *b == b'=') {
                Some(at) => (&part[..at], &part[at + 1..]),
                None => (part, &[][..]),
            };
            let key = unescape(key)?;
            let value = unescape(value)?;
            if key.is_empty() {
                continue;
            }
            pairs.push((key, value));
        }
        Ok(Self(pairs))
    }

    /// The pairs, in body order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// Every value of `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of a singleton field, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Some(name)` of the first field other than `allowed_repeat` that appears twice.
    pub fn first_duplicate(&self, allowed_repeat: &[&str]) -> Option<&str> {
        let mut seen = std::collections::HashSet::new();
        self.0
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !allowed_repeat.contains(k))
            .find(|k| !seen.insert(*k))
    }
}

fn unhex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unescape(raw: &[u8]) -> Result<String, Error> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hi = raw.get(i + 1).copied().and_then(unhex);
                let lo = raw.get(i + 2).copied().and_then(unhex);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(malformed("malformed request body")),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| malformed("malformed request body"))
}

/// A token request after the transport rules of §3.1 (steps 4–7 and 9–11). Fields are as
/// sent except where the contract trims them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenRequest {
    /// Trimmed zone id; empty only on the control-key path.
    pub zone_id: String,
    /// Trimmed application id.
    pub application_id: String,
    /// The presented client secret (absent on Gateway-authenticated requests).
    pub client_secret: Option<String>,
    /// Requested resources: trimmed, deduplicated, sorted bytewise.
    pub resources: Vec<String>,
    /// The raw `scope` string (it becomes the minted `scope` claim verbatim).
    pub scope: String,
    /// The subject token and its type, when one is sent.
    pub subject: Option<SubjectToken>,
    /// Authority record id (`sid`).
    pub session_id: String,
    /// Governed Session id.
    pub agent_session_id: String,
    /// Delegation id.
    pub delegation_edge_id: String,
    /// Approval hold being retried.
    pub approval_id: String,
    /// Requested lifetime; `None` for absent or 0 (the default applies).
    pub ttl_seconds: Option<i64>,
    /// Upstream operation method (trusted only when Gateway-authenticated).
    pub request_method: String,
    /// Upstream operation path (trusted only when Gateway-authenticated).
    pub request_path: String,
    /// Gateway request id (must equal `X-Request-Id` when Gateway-authenticated).
    pub gateway_request_id: String,
}

/// What kind of subject token was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    /// An STS mandate.
    AccessToken,
    /// A federated user's identity token.
    IdToken,
}

/// A subject token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectToken {
    /// The compact token.
    pub token: String,
    /// Its declared type.
    pub kind: SubjectKind,
}

impl TokenRequest {
    /// The scope tokens (split on spaces, empty tokens dropped), in request order.
    pub fn scopes(&self) -> Vec<String> {
        split_scopes(&self.scope)
    }
}

/// `scope` split on single spaces with empty tokens dropped, as the contract reads it.
pub fn split_scopes(scope: &str) -> Vec<String> {
    scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The checks that need only the body, before the Gateway signature (§3.1 steps 5–7).
pub fn precheck(form: &FormPairs) -> Result<Option<i64>, Error> {
    if let Some(name) = form.first_duplicate(&["resource"]) {
        return Err(malformed(format!("duplicate form field: {name}")));
    }
    for field in ["actor_token", "client_assertion", "client_assertion_type"] {
        if form.get(field).is_some() {
            return Err(malformed(format!(
                "{field} is not supported: authenticate the application with client_secret, \
                 or use the caller's own client credentials"
            )));
        }
    }
    match form.get("ttl_seconds").map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse::<i64>()
            .map(Some)
            .map_err(|_| malformed("invalid ttl_seconds")),
    }
}

/// The rest of §3.1 (steps 9–11) after the Gateway signature was checked.
pub fn token_request(form: &FormPairs, ttl: Option<i64>) -> Result<TokenRequest, Error> {
    let mut resources = Vec::new();
    for raw in form.all("resource") {
        let value = raw.trim();
        if value.is_empty() {
            return Err(malformed("resource must not be empty"));
        }
        resources.push(value.to_owned());
    }
    resources.sort_unstable();
    resources.dedup();

    if form.get("grant_type") != Some(TOKEN_EXCHANGE_GRANT) {
        return Err(malformed("unsupported grant_type"));
    }
    let token = form.get("subject_token").unwrap_or("");
    let kind = match form.get("subject_token_type").unwrap_or("") {
        "" => None,
        ACCESS_TOKEN_TYPE => Some(SubjectKind::AccessToken),
        ID_TOKEN_TYPE => Some(SubjectKind::IdToken),
        _ => return Err(malformed("unsupported subject_token_type")),
    };
    let subject = match (token.is_empty(), kind) {
        (true, None) => None,
        (false, Some(kind)) => Some(SubjectToken {
            token: token.to_owned(),
            kind,
        }),
        (false, None) => {
            return Err(malformed(
                "subject_token_type is required with subject_token",
            ))
        }
        (true, Some(_)) => {
            return Err(malformed(
                "subject_token is required with subject_token_type",
            ))
        }
    };
    let text = |name: &str| form.get(name).unwrap_or("").trim().to_owned();
    Ok(TokenRequest {
        zone_id: text("zone_id"),
        application_id: text("application_id"),
        client_secret: form.get("client_secret").map(str::to_owned),
        resources,
        scope: form.get("scope").unwrap_or("").to_owned(),
        subject,
        session_id: text("session_id"),
        agent_session_id: text("agent_session_id"),
        delegation_edge_id: text("delegation_edge_id"),
        approval_id: text("approval_id"),
        ttl_seconds: ttl.filter(|t| *t != 0),
        request_method: text("request_method"),
        request_path: form.get("request_path").unwrap_or("").to_owned(),
        gateway_request_id: text("gateway_request_id"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(e: Error) -> String {
        assert_eq!(e.code, "invalid_token");
        e.description.unwrap_or_default()
    }

    fn parse(body: &str) -> Result<TokenRequest, Error> {
        let form = FormPairs::parse(body.as_bytes())?;
        let ttl = precheck(&form)?;
        token_request(&form, ttl)
    }

    const GRANT: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange";

    #[test]
    fn go_parse_query_rules() {
        let form = FormPairs::parse(b"a=1+2&&b=%41&c&=x").expect("parses");
        assert_eq!(
            form.pairs(),
            &[
                ("a".into(), "1 2".into()),
                ("b".into(), "A".into()),
                ("c".into(), "".into())
            ]
        );
        for bad in ["a=%zz", "a=%4", "a=1;b=2", "a%3=1", "a=%ff"] {
            assert_eq!(
                desc(FormPairs::parse(bad.as_bytes()).expect_err(bad)),
                "malformed request body"
            );
        }
    }

    #[test]
    fn resources_are_trimmed_deduplicated_and_sorted() {
        let req = parse(&format!(
            "{GRANT}&resource=+b+&resource=a&resource=b&zone_id=+z+&application_id=app"
        ))
        .expect("parses");
        assert_eq!(req.resources, vec!["a", "b"]);
        assert_eq!(req.zone_id, "z");
        let e = parse(&format!("{GRANT}&resource=+")).expect_err("empty");
        assert_eq!(desc(e), "resource must not be empty");
    }

    #[test]
    fn only_resource_may_repeat() {
        let e = parse(&format!("{GRANT}&scope=a&scope=b")).expect_err("dup");
        assert_eq!(desc(e), "duplicate form field: scope");
        let e = parse(&format!("{GRANT}&x=1&x=2")).expect_err("unknown dup");
        assert_eq!(desc(e), "duplicate form field: x");
    }

    #[test]
    fn client_assertions_are_refused_even_empty() {
        for f in ["actor_token", "client_assertion", "client_assertion_type"] {
            let e = parse(&format!("{GRANT}&{f}=")).expect_err(f);
            assert!(desc(e).starts_with(&format!("{f} is not supported")));
        }
    }

    #[test]
    fn ttl_grant_and_subject_rules() {
        assert_eq!(
            desc(parse(&format!("{GRANT}&ttl_seconds=1.5")).expect_err("ttl")),
            "invalid ttl_seconds"
        );
        assert_eq!(
            parse(&format!("{GRANT}&ttl_seconds=0"))
                .expect("ok")
                .ttl_seconds,
            None
        );
        assert_eq!(
            parse(&format!("{GRANT}&ttl_seconds=-5"))
                .expect("parsed; the sign is checked later")
                .ttl_seconds,
            Some(-5)
        );
        assert_eq!(
            desc(parse("grant_type=password").expect_err("grant")),
            "unsupported grant_type"
        );
        assert_eq!(
            desc(parse(&format!("{GRANT}&subject_token_type=x")).expect_err("type")),
            "unsupported subject_token_type"
        );
        assert_eq!(
            desc(parse(&format!("{GRANT}&subject_token=t")).expect_err("no type")),
            "subject_token_type is required with subject_token"
        );
        assert_eq!(
            desc(
                parse(&format!(
                    "{GRANT}&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Aid_token"
                ))
                .expect_err("no token")
            ),
            "subject_token is required with subject_token_type"
        );
    }

    #[test]
    fn media_type() {
        assert!(is_form_media_type(Some(
            "application/x-www-form-urlencoded; charset=utf-8"
        )));
        assert!(is_form_media_type(Some(
            "Application/X-WWW-Form-Urlencoded"
        )));
        assert!(!is_form_media_type(Some("application/json")));
        assert!(!is_form_media_type(None));
    }
}
