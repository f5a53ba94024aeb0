//! Upstream directives (`spec/sts.md §6`): what the Gateway needs to call a granted resource —
//! where, and with which credential placed how. Only Gateway-authenticated exchanges receive
//! them; provider secrets are unsealed here, at the last moment, and never logged.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind};
use crate::model::{Provider, Resource};

/// `502 http_request_failed` naming the resource.
pub fn unavailable(resource: &str, reason: &str) -> Error {
    Error::new(ErrorKind::BadGateway, "http_request_failed").describe(format!(
        "upstream credential for resource {resource} is unavailable: {reason}"
    ))
}

fn public_str<'a>(provider: &'a Provider, key: &str) -> Option<&'a str> {
    provider
        .config_json
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn secret<'a>(
    secrets: &'a BTreeMap<String, String>,
    key: &str,
    resource: &str,
) -> Result<&'a str, Error> {
    secrets
        .get(key)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| unavailable(resource, "credential_not_provisioned"))
}

/// Builds the directive for one granted resource. `provider` is the resource's credential
/// provider (if any) and `secrets` its unsealed secret document.
pub fn build(
    resource: &Resource,
    provider: Option<&Provider>,
    secrets: &BTreeMap<String, String>,
) -> Result<Value, Error> {
    let identifier = resource.identifier.as_str();
    let Some(url) = resource.upstream_url.as_deref().filter(|u| !u.is_empty()) else {
        return Err(unavailable(identifier, "resource has no upstream_url"));
    };
    let mut d = Map::new();
    d.insert("url".into(), Value::from(url));
    let Some(provider) = provider else {
        d.insert("auth_mode".into(), Value::from("caracal_jwt"));
        return Ok(Value::Object(d));
    };
    let mode = match provider.kind.as_str() {
        "caracal_mandate" => "caracal_jwt",
        "none" => "none",
        "api_key" => "provider_apikey",
        "bearer_token" | "http_basic" => "provider_oauth",
        _ => return Err(unavailable(identifier, "provider_unavailable")),
    };
    d.insert("auth_mode".into(), Value::from(mode));
    match provider.kind.as_str() {
        "api_key" => {
            let location = public_str(provider, "auth_location").unwrap_or("header");
            if location == "query" {
                d.insert("auth_location".into(), Value::from("query"));
                if let Some(name) = public_str(provider, "query_param_name") {
                    d.insert("query_param_name".into(), Value::from(name));
                }
            } else {
                d.insert(
                    "auth_header".into(),
                    Value::from(public_str(provider, "header_name").unwrap_or("Authorization")),
                );
                if let Some(scheme) = public_str(provider, "auth_scheme") {
                    d.insert("auth_scheme".into(), Value::from(scheme));
                }
            }
            d.insert(
                "provider_token".into(),
                Value::from(secret(secrets, "api_key", identifier)?),
            );
        }
        "bearer_token" => {
            d.insert(
                "auth_header".into(),
                Value::from(public_str(provider, "auth_header").unwrap_or("Authorization")),
            );
            d.insert(
                "auth_scheme".into(),
                Value::from(public_str(provider, "auth_scheme").unwrap_or("Bearer")),
            );
            d.insert(
                "provider_token".into(),
                Value::from(secret(secrets, "bearer_token", identifier)?),
            );
        }
        "http_basic" => {
            let user = public_str(provider, "username").unwrap_or("");
            let password = secret(secrets, "password", identifier)?;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            d.insert("auth_header".into(), Value::from("Authorization"));
            d.insert("auth_scheme".into(), Value::from("Basic"));
            d.insert("provider_token".into(), Value::from(token));
        }
        _ => {}
    }
    if let Some(hosts) = provider
        .config_json
        .get("allowed_token_hosts")
        .and_then(Value::as_array)
    {
        let hosts: Vec<Value> = hosts
            .iter()
            .filter_map(Value::as_str)
            .map(|h| Value::from(h.to_ascii_lowercase()))
            .collect();
        if !hosts.is_empty() {
            d.insert("allowed_token_hosts".into(), Value::Array(hosts));
        }
    }
    if provider.config_json.get("forward_caracal_identity") == Some(&Value::Bool(true)) {
        d.insert("forward_caracal_identity".into(), Value::Bool(true));
    }
    d.insert("provider_id".into(), Value::from(provider.id.as_str()));
    Ok(Value::Object(d))
}
