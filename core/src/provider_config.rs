//! Provider configuration rules (`spec/api.md §3.4`): which public keys and which secret keys
//! each kind takes. A submitted `config_json` is split into the public part (stored and
//! returned) and the secret part (sealed, never returned). Every violation is
//! `400 invalid_provider_config` with a description naming the key.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::Error;

/// The provider kinds Caracal 1.0 accepts, exactly.
pub const KINDS: [&str; 7] = [
    "none",
    "caracal_mandate",
    "oauth2_authorization_code",
    "oauth2_client_credentials",
    "api_key",
    "bearer_token",
    "http_basic",
];

/// Keys that are secrets for some kind.
const SECRET_KEYS: [&str; 5] = [
    "api_key",
    "bearer_token",
    "password",
    "client_secret",
    "private_key",
];

/// A config split into what may be shown and what must be sealed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SplitConfig {
    /// Public keys, normalised (defaults written back).
    pub public: Map<String, Value>,
    /// Secret keys and their trimmed values.
    pub secrets: BTreeMap<String, String>,
}

fn invalid(description: impl Into<String>) -> Error {
    Error::invalid("invalid_provider_config", description)
}

/// Whether a kind is OAuth (its secret requirements can be met by already-sealed keys).
pub fn is_oauth(kind: &str) -> bool {
    kind.starts_with("oauth2_")
}

/// Header names that must never carry a provider credential: they would collide with proxy
/// behaviour or with Caracal's own headers.
fn forbidden_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    const HOP: [&str; 12] = [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
        "forwarded",
        "x-real-ip",
        "proxy-authorization",
        "proxy-authenticate",
    ];
    HOP.contains(&lower.as_str())
        || lower.starts_with("x-caracal-")
        || lower.starts_with("x-forwarded-")
        || lower.starts_with("proxy-")
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn string_of<'a>(key: &str, value: &'a Value) -> Result<&'a str, Error> {
    value
        .as_str()
        .ok_or_else(|| invalid(format!("{key} must be a string")))
}

fn https_url(key: &str, value: &Value) -> Result<String, Error> {
    let text = string_of(key, value)?.trim();
    let rest = text
        .strip_prefix("https://")
        .ok_or_else(|| invalid(format!("{key} must be an https URL")))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || text.chars().any(char::is_whitespace) {
        return Err(invalid(format!(
            "{key} must be an https URL without credentials"
        )));
    }
    Ok(text.to_owned())
}

fn host_of_https(url: &str) -> String {
    let rest = url.trim_start_matches("https://");
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(authority);
    host.to_ascii_lowercase()
}

fn is_hostname(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Validates `config_json` for `kind`. `secrets_required` is false for a PATCH of public config
/// (then secrets are optional, and for OAuth kinds may already be sealed: `sealed_keys`).
pub fn validate(
    kind: &str,
    config: &Map<String, Value>,
    secrets_required: bool,
    sealed_keys: &[String],
) -> Result<SplitConfig, Error> {
    if !KINDS.contains(&kind) {
        return Err(Error::invalid(
            "invalid_provider",
            format!("unknown provider kind {kind}"),
        ));
    }
    let allowed_public: &[&str] = match kind {
        "none" | "caracal_mandate" => &[],
        "api_key" => &[
            "auth_location",
            "header_name",
            "query_param_name",
            "auth_scheme",
            "allowed_token_hosts",
            "forward_caracal_identity",
            "allow_runtime_injection",
        ],
        "bearer_token" => &[
            "allowed_token_hosts",
            "auth_header",
            "auth_scheme",
            "forward_caracal_identity",
            "allow_runtime_injection",
        ],
        "http_basic" => &[
            "username",
            "allowed_token_hosts",
            "forward_caracal_identity",
        ],
        "oauth2_client_credentials" => &[
            "token_endpoint",
            "client_id",
            "scopes",
            "client_auth_method",
            "grant_type",
            "assertion_subject",
            "assertion_audience",
            "audience",
            "resource",
            "allowed_token_hosts",
            "token_params",
            "key_id",
            "certificate",
            "auth_header",
            "auth_scheme",
            "forward_caracal_identity",
            "allow_runtime_injection",
        ],
        _ => &[
            "authorization_endpoint",
            "token_endpoint",
            "redirect_uri",
            "client_id",
            "scopes",
            "client_auth_method",
            "revocation_endpoint",
            "allowed_token_hosts",
            "authorization_params",
            "token_params",
            "auth_header",
            "auth_scheme",
            "forward_caracal_identity",
        ],
    };
    let allowed_secret: &[&str] = match kind {
        "api_key" => &["api_key"],
        "bearer_token" => &["bearer_token"],
        "http_basic" => &["password"],
        "oauth2_client_credentials" => &["client_secret", "private_key"],
        "oauth2_authorization_code" => &["client_secret"],
        _ => &[],
    };

    let mut split = SplitConfig::default();
    for (key, value) in config {
        if allowed_secret.contains(&key.as_str()) {
            let text = string_of(key, value)?.trim();
            if text.is_empty() {
                return Err(invalid(format!("{key} must not be empty")));
            }
            if key != "private_key" && text.chars().any(char::is_control) {
                return Err(invalid(format!(
                    "{key} must not contain control characters"
                )));
            }
            split.secrets.insert(key.clone(), text.to_owned());
        } else if allowed_public.contains(&key.as_str()) {
            split.public.insert(key.clone(), value.clone());
        } else if SECRET_KEYS.contains(&key.as_str()) {
            return Err(invalid(format!("{key} is not a secret of kind {kind}")));
        } else {
            return Err(invalid(format!("unknown key {key} for kind {kind}")));
        }
    }

    for key in ["forward_caracal_identity", "allow_runtime_injection"] {
        if let Some(value) = split.public.get(key) {
            if !value.is_boolean() {
                return Err(invalid(format!("{key} must be a boolean")));
            }
        }
    }
    if let Some(value) = split.public.get("allowed_token_hosts").cloned() {
        let hosts = value
            .as_array()
            .ok_or_else(|| invalid("allowed_token_hosts must be an array of hostnames"))?;
        let mut normalised = Vec::with_capacity(hosts.len());
        for host in hosts {
            let host = string_of("allowed_token_hosts", host)?
                .trim()
                .to_ascii_lowercase();
            if !is_hostname(&host) {
                return Err(invalid(format!(
                    "allowed_token_hosts entry {host} is not a hostname"
                )));
            }
            normalised.push(Value::String(host));
        }
        split
            .public
            .insert("allowed_token_hosts".into(), Value::Array(normalised));
    }
    if let Some(scheme) = split.public.get("auth_scheme") {
        let scheme = string_of("auth_scheme", scheme)?;
        let ok = scheme
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(invalid("auth_scheme must match ^[A-Za-z][A-Za-z0-9-]*$"));
        }
    }
    for key in ["header_name", "auth_header"] {
        if let Some(value) = split.public.get(key) {
            let name = string_of(key, value)?;
            if name.is_empty() || !name.chars().all(is_token_char) {
                return Err(invalid(format!("{key} is not a valid header name")));
            }
            if forbidden_header(name) {
                return Err(invalid(format!("{key} {name} is reserved")));
            }
        }
    }

    match kind {
        "api_key" => validate_api_key(&mut split, secrets_required)?,
        "bearer_token" => {
            require_secret(&split, "bearer_token", secrets_required)?;
            reject_prefixed(&split, "bearer_token", "Bearer")?;
        }
        "http_basic" => {
            match split.public.get("username") {
                Some(Value::String(u)) if !u.trim().is_empty() => {}
                _ => return Err(invalid("username is required")),
            }
            require_secret(&split, "password", secrets_required)?;
        }
        "oauth2_client_credentials" => {
            validate_client_credentials(&mut split, secrets_required, sealed_keys)?
        }
        "oauth2_authorization_code" => {
            validate_authorization_code(&mut split, secrets_required, sealed_keys)?
        }
        _ => {}
    }
    for key in ["token_params", "authorization_params"] {
        if let Some(value) = split.public.get(key) {
            let params = value
                .as_object()
                .ok_or_else(|| invalid(format!("{key} must be an object of strings")))?;
            const RESERVED: [&str; 10] = [
                "grant_type",
                "client_id",
                "client_secret",
                "code",
                "redirect_uri",
                "code_verifier",
                "refresh_token",
                "client_assertion",
                "client_assertion_type",
                "state",
            ];
            for (name, v) in params {
                if RESERVED.contains(&name.as_str()) || !v.is_string() {
                    return Err(invalid(format!("{key}.{name} is reserved or not a string")));
                }
            }
        }
    }
    Ok(split)
}

fn require_secret(split: &SplitConfig, key: &str, required: bool) -> Result<(), Error> {
    if required && !split.secrets.contains_key(key) {
        return Err(invalid(format!("{key} is required")));
    }
    Ok(())
}

/// A credential already carrying its scheme would be sent as `Bearer Bearer …`.
fn reject_prefixed(split: &SplitConfig, key: &str, default_scheme: &str) -> Result<(), Error> {
    let scheme = split
        .public
        .get("auth_scheme")
        .and_then(Value::as_str)
        .unwrap_or(default_scheme);
    if let Some(secret) = split.secrets.get(key) {
        let prefix = format!("{} ", scheme.to_ascii_lowercase());
        if secret.to_ascii_lowercase().starts_with(&prefix) {
            return Err(invalid(format!(
                "{key} must not include the '{scheme} ' prefix"
            )));
        }
    }
    Ok(())
}

fn validate_api_key(split: &mut SplitConfig, required: bool) -> Result<(), Error> {
    let location = match split.public.get("auth_location") {
        None => "header".to_owned(),
        Some(v) => string_of("auth_location", v)?.to_owned(),
    };
    match location.as_str() {
        "header" => {
            if !split.public.contains_key("header_name") {
                return Err(invalid(
                    "header_name is required when auth_location is header",
                ));
            }
            if split.public.contains_key("query_param_name") {
                return Err(invalid("query_param_name is only for auth_location query"));
            }
        }
        "query" => {
            let name = split
                .public
                .get("query_param_name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    invalid("query_param_name is required when auth_location is query")
                })?;
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._~-".contains(c));
            if !ok {
                return Err(invalid("query_param_name must match ^[A-Za-z0-9._~-]+$"));
            }
            if split.public.contains_key("auth_scheme") || split.public.contains_key("header_name")
            {
                return Err(invalid(
                    "auth_scheme and header_name are only for auth_location header",
                ));
            }
        }
        _ => return Err(invalid("auth_location must be header or query")),
    }
    split
        .public
        .insert("auth_location".into(), Value::String(location));
    require_secret(split, "api_key", required)?;
    if split.public.contains_key("auth_scheme") {
        reject_prefixed(split, "api_key", "")?;
    }
    Ok(())
}

fn validate_client_credentials(
    split: &mut SplitConfig,
    required: bool,
    sealed: &[String],
) -> Result<(), Error> {
    let endpoint = https_url(
        "token_endpoint",
        split
            .public
            .get("token_endpoint")
            .ok_or_else(|| invalid("token_endpoint is required"))?,
    )?;
    require_string(split, "client_id")?;
    let grant_type = match split.public.get("grant_type") {
        None => "client_credentials".to_owned(),
        Some(v) => string_of("grant_type", v)?.to_owned(),
    };
    if !matches!(grant_type.as_str(), "client_credentials" | "jwt_bearer") {
        return Err(invalid(
            "grant_type must be client_credentials or jwt_bearer",
        ));
    }
    let jwt_bearer = grant_type == "jwt_bearer";
    let method = match split.public.get("client_auth_method") {
        None if jwt_bearer => "none".to_owned(),
        None => "client_secret_basic".to_owned(),
        Some(v) => string_of("client_auth_method", v)?.to_owned(),
    };
    if !matches!(
        method.as_str(),
        "client_secret_basic" | "client_secret_post" | "private_key_jwt" | "none"
    ) {
        return Err(invalid("client_auth_method is not supported"));
    }
    if !jwt_bearer
        && (split.public.contains_key("assertion_subject")
            || split.public.contains_key("assertion_audience"))
    {
        return Err(invalid(
            "assertion_subject and assertion_audience are only for jwt_bearer",
        ));
    }
    if jwt_bearer
        && (split.public.contains_key("audience") || split.public.contains_key("resource"))
    {
        return Err(invalid(
            "audience and resource are not allowed for jwt_bearer",
        ));
    }
    if method != "private_key_jwt" && split.public.contains_key("certificate") {
        return Err(invalid("certificate is only for private_key_jwt"));
    }
    let has = |key: &str| {
        split.secrets.contains_key(key) || (!required && sealed.iter().any(|k| k == key))
    };
    if method == "private_key_jwt" {
        if split.secrets.contains_key("client_secret") {
            return Err(invalid("client_secret is not allowed with private_key_jwt"));
        }
    } else if method != "none" && !has("client_secret") {
        return Err(invalid("client_secret is required"));
    }
    if (method == "private_key_jwt" || jwt_bearer) && !has("private_key") {
        return Err(invalid("private_key is required"));
    }
    if let Some(key) = split.secrets.get("private_key") {
        if !key.contains("-----BEGIN") {
            return Err(invalid("private_key must be PEM"));
        }
    }
    split
        .public
        .insert("grant_type".into(), Value::String(grant_type));
    split
        .public
        .insert("client_auth_method".into(), Value::String(method));
    if !split.public.contains_key("allowed_token_hosts") {
        split.public.insert(
            "allowed_token_hosts".into(),
            Value::Array(vec![Value::String(host_of_https(&endpoint))]),
        );
    }
    Ok(())
}

fn validate_authorization_code(
    split: &mut SplitConfig,
    required: bool,
    sealed: &[String],
) -> Result<(), Error> {
    for key in ["authorization_endpoint", "token_endpoint"] {
        https_url(
            key,
            split
                .public
                .get(key)
                .ok_or_else(|| invalid(format!("{key} is required")))?,
        )?;
    }
    let redirect = require_string(split, "redirect_uri")?;
    if !redirect.contains("://") {
        return Err(invalid("redirect_uri must be an absolute URL"));
    }
    require_string(split, "client_id")?;
    let method = match split.public.get("client_auth_method") {
        None => "client_secret_basic".to_owned(),
        Some(v) => string_of("client_auth_method", v)?.to_owned(),
    };
    if !matches!(
        method.as_str(),
        "client_secret_basic" | "client_secret_post" | "none"
    ) {
        return Err(invalid(
            "client_auth_method is not supported for authorization code",
        ));
    }
    let has_secret = split.secrets.contains_key("client_secret")
        || (!required && sealed.iter().any(|k| k == "client_secret"));
    if method != "none" && !has_secret {
        return Err(invalid("client_secret is required"));
    }
    if let Some(value) = split.public.get("revocation_endpoint") {
        let url = https_url("revocation_endpoint", value)?;
        if let Some(Value::Array(hosts)) = split.public.get("allowed_token_hosts") {
            let host = host_of_https(&url);
            if !hosts.iter().any(|h| h.as_str() == Some(host.as_str())) {
                return Err(invalid(
                    "revocation_endpoint host must be in allowed_token_hosts",
                ));
            }
        }
    }
    split
        .public
        .insert("client_auth_method".into(), Value::String(method));
    Ok(())
}

fn require_string(split: &SplitConfig, key: &str) -> Result<String, Error> {
    match split.public.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        _ => Err(invalid(format!("{key} is required"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn api_key_splits_secret_and_writes_back_location() {
        let split = validate(
            "api_key",
            &obj(json!({"header_name":"X-Api-Key","api_key":" k "})),
            true,
            &[],
        )
        .expect("valid api_key config");
        assert_eq!(split.secrets.get("api_key").map(String::as_str), Some("k"));
        assert_eq!(split.public.get("auth_location"), Some(&json!("header")));
        assert!(!split.public.contains_key("api_key"));
    }

    #[test]
    fn rejections_are_invalid_provider_config() {
        let cases = [
            ("api_key", json!({"header_name":"X-Api-Key"})),
            (
                "api_key",
                json!({"header_name":"X-Api-Key","api_key":"k","bogus":1}),
            ),
            (
                "api_key",
                json!({"header_name":"X-Caracal-Token","api_key":"k"}),
            ),
            (
                "api_key",
                json!({"header_name":"X-Api-Key","api_key":"   "}),
            ),
            ("bearer_token", json!({"bearer_token":"Bearer abc"})),
            ("http_basic", json!({"password":"p"})),
            ("none", json!({"api_key":"k"})),
            (
                "oauth2_client_credentials",
                json!({"token_endpoint":"http://x","client_id":"c","client_secret":"s"}),
            ),
            (
                "api_key",
                json!({"header_name":"X-Api-Key","api_key":"k","forward_caracal_identity":"yes"}),
            ),
        ];
        for (kind, config) in cases {
            let err = validate(kind, &obj(config.clone()), true, &[])
                .err()
                .map(|e| e.code);
            assert_eq!(err, Some("invalid_provider_config"), "{kind} {config}");
        }
    }

    #[test]
    fn client_credentials_defaults_and_sealed_keys() {
        let config = obj(json!({"token_endpoint":"https://idp.example.com/token","client_id":"c"}));
        assert!(validate("oauth2_client_credentials", &config, true, &[]).is_err());
        let split = validate(
            "oauth2_client_credentials",
            &config,
            false,
            &["client_secret".into()],
        )
        .expect("sealed secret satisfies a public-config patch");
        assert_eq!(
            split.public.get("allowed_token_hosts"),
            Some(&json!(["idp.example.com"]))
        );
        assert_eq!(
            split.public.get("client_auth_method"),
            Some(&json!("client_secret_basic"))
        );
    }
}
