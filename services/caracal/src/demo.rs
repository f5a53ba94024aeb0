//! `caracal dev --demo`: a ready-to-call sandbox. Next to the dev services it starts a local
//! echo upstream on 127.0.0.1, seeds a demo zone through the API's own HTTP surface (the same
//! calls an operator's admin SDK makes, authenticated with the dev admin token), and prints the
//! `CARACAL_*` variables, a Python snippet and curl lines that reach the echo through the Gateway.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use caracal_core::gateway::host::HostPolicy;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

/// The demo resource's identifier.
pub const RESOURCE: &str = "resource://demo-echo";
/// The scopes the resource declares.
pub const SCOPES: [&str; 2] = ["demo:read", "demo:write"];
/// The scope the demo application is granted.
pub const GRANTED: &str = "demo:read";
/// The credential the demo provider holds; the Gateway injects it, the agent never sees it.
pub const UPSTREAM_KEY: &str = "demo-upstream-key";

/// How long the demo waits for the services to answer `/health` before giving up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long it waits for the policy activation to leave the outbox (best effort).
const ACTIVATION_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request body the echo reads back.
const ECHO_BODY_LIMIT: usize = 64 * 1024;

/// Where this dev process's services answer, and the admin token that seeds the zone.
pub struct Sandbox {
    pub api_url: String,
    pub sts_url: String,
    pub coordinator_url: String,
    pub gateway_url: String,
    pub admin_token: String,
}

/// What the seeding created.
struct Seeded {
    zone_id: String,
    application_id: String,
    client_secret: String,
}

/// Runs `servers` (the dev services) and, alongside, the demo: echo upstream, seeding, and the
/// printed instructions. A seeding failure ends the process with its message; so does a server
/// failure, whichever comes first.
pub async fn alongside<F>(servers: F, sandbox: Sandbox) -> Result<(), String>
where
    F: Future<Output = Result<(), String>>,
{
    let mut servers = std::pin::pin!(servers);
    tokio::select! {
        // The services stopped (a port in use, Ctrl-C) before the demo was ready.
        result = &mut servers => return result,
        seeded = start(&sandbox) => seeded.map_err(|e| format!("--demo: {e}"))?,
    }
    servers.await
}

/// Refuses a Gateway configuration that could never reach the demo's echo on 127.0.0.1, before
/// anything starts (the snippet would otherwise fail with a host-policy refusal).
pub fn check_gateway(policy: &HostPolicy) -> Result<(), String> {
    if !policy.allow_loopback {
        return Err("--demo: the echo upstream listens on 127.0.0.1, which UPSTREAM_ALLOW_LOOPBACK=false forbids the Gateway to reach; unset it".into());
    }
    if !policy.allowlist.is_empty()
        && !policy
            .allowlist
            .iter()
            .any(|host| host.eq_ignore_ascii_case("127.0.0.1"))
    {
        return Err("--demo: the echo upstream listens on 127.0.0.1, which UPSTREAM_HOST_ALLOWLIST leaves out; add it or unset the allowlist".into());
    }
    Ok(())
}

/// Starts the echo upstream, waits for the services, seeds the zone and prints how to call it.
async fn start(sandbox: &Sandbox) -> Result<(), String> {
    let upstream = start_echo().await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    wait_ready(&http, sandbox).await?;
    let admin = Admin {
        http,
        api_url: sandbox.api_url.clone(),
        token: sandbox.admin_token.clone(),
    };
    let seeded = seed(&admin, &upstream).await?;
    // One write, so log lines cannot interleave with the block; a closed stdout (`| head`) is
    // the reader's choice, not a reason to stop the sandbox.
    let block = instructions(sandbox, &seeded, &upstream);
    let _ = writeln!(std::io::stdout().lock(), "{block}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The echo upstream.

/// Binds 127.0.0.1 on a free port and serves the echo there until the process ends; returns
/// its URL.
async fn start_echo() -> Result<String, String> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| format!("cannot start the echo upstream on 127.0.0.1: {e}"))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot read the echo upstream's address: {e}"))?;
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "demo echo upstream: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let served = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(echo))
                    .await;
                if let Err(err) = served {
                    tracing::debug!(error = %err, "demo echo upstream: connection ended");
                }
            });
        }
    });
    Ok(format!("http://{address}"))
}

/// Answers every request with JSON describing it: method, path, query, the headers that arrived
/// (never `x-caracal-*`: the Gateway strips those, and the echo would not repeat them anyway)
/// and the body.
async fn echo(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, ECHO_BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({ "echo": true, "error": "the demo echo reads at most 64 KiB of body" }),
            ))
        }
    };
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let name = name.as_str();
        if name.starts_with("x-caracal-") {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name) {
            Some(Value::String(seen)) => {
                seen.push_str(", ");
                seen.push_str(&value);
            }
            _ => {
                headers.insert(name.to_owned(), Value::String(value));
            }
        }
    }
    let answer = json!({
        "echo": true,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    Ok(json_response(StatusCode::OK, &answer))
}

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

// ---------------------------------------------------------------------------------------------
// Seeding, through the API.

/// Polls every service's `/health` until all answer 200.
async fn wait_ready(http: &reqwest::Client, sandbox: &Sandbox) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    for (name, base) in [
        ("API", &sandbox.api_url),
        ("STS", &sandbox.sts_url),
        ("Coordinator", &sandbox.coordinator_url),
        ("Gateway", &sandbox.gateway_url),
    ] {
        let url = format!("{base}/health");
        loop {
            let answer = http.get(&url).timeout(Duration::from_secs(2)).send().await;
            let last = match answer {
                Ok(res) if res.status().is_success() => break,
                Ok(res) => format!("HTTP {}", res.status()),
                Err(err) => err.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "the {name} did not answer {url} within {}s (last: {last})",
                    READY_TIMEOUT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The admin API, called with the dev admin token.
struct Admin {
    http: reqwest::Client,
    api_url: String,
    token: String,
}

impl Admin {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.api_url))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {path} failed: {e}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("{method} {path}: cannot read the answer: {e}"))?;
        if !status.is_success() {
            return Err(format!("{method} {path} answered HTTP {status}: {text}"));
        }
        serde_json::from_str(&text)
            .map_err(|e| format!("{method} {path} answered invalid JSON ({e}): {text}"))
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(reqwest::Method::GET, path, None).await
    }
}

/// A string field of an API answer.
fn field(answer: &Value, name: &str, what: &str) -> Result<String, String> {
    answer
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("the {what} answer has no {name:?}: {answer}"))
}

/// Creates the zone, application, provider, resource and the active grant policy set.
async fn seed(admin: &Admin, upstream: &str) -> Result<Seeded, String> {
    let zone = admin
        .post("/v1/zones", &json!({ "name": "demo", "slug": "demo" }))
        .await?;
    let zone_id = field(&zone, "id", "zone")?;
    let base = format!("/v1/zones/{zone_id}");

    let application = admin
        .post(
            &format!("{base}/applications"),
            &json!({ "name": "demo-agent", "registration_method": "managed" }),
        )
        .await?;
    let application_id = field(&application, "id", "application")?;
    let client_secret = field(&application, "client_secret", "application")?;

    let provider = admin
        .post(
            &format!("{base}/providers"),
            &json!({
                "name": "demo upstream key",
                "kind": "bearer_token",
                "config_json": { "bearer_token": UPSTREAM_KEY },
            }),
        )
        .await?;
    let provider_id = field(&provider, "id", "provider")?;

    admin
        .post(
            &format!("{base}/resources"),
            &json!({
                "name": "demo echo",
                "identifier": RESOURCE,
                "scopes": SCOPES,
                "operation_enforcement": "transport_uniform",
                "credential_provider_id": provider_id,
                "upstream_url": upstream,
            }),
        )
        .await?;

    let policy = admin
        .post(
            &format!("{base}/policies"),
            &json!({
                "name": "demo grants",
                "content": grants_document(&application_id, RESOURCE, &[GRANTED]),
            }),
        )
        .await?;
    let policy_version = field(&policy, "version_id", "policy")?;
    let policy_set = admin
        .post(&format!("{base}/policy-sets"), &json!({ "name": "demo" }))
        .await?;
    let set_id = field(&policy_set, "id", "policy set")?;
    let version = admin
        .post(
            &format!("{base}/policy-sets/{set_id}/versions"),
            &json!({ "manifest": [{ "policy_version_id": policy_version }] }),
        )
        .await?;
    let version_id = field(&version, "version_id", "policy set version")?;
    let activated = admin
        .post(
            &format!("{base}/policy-sets/{set_id}/activate"),
            &json!({ "version_id": version_id }),
        )
        .await?;
    if let Ok(status_url) = field(&activated, "status_url", "activation") {
        wait_dispatched(admin, &status_url).await;
    }
    Ok(Seeded {
        zone_id,
        application_id,
        client_secret,
    })
}

/// Waits, briefly, for the activation to leave the outbox, so the first mint after the printout
/// sees the policy everywhere. The STS also reads the active set on a miss, so this is a
/// courtesy, not a requirement: a timeout is not an error.
async fn wait_dispatched(admin: &Admin, status_url: &str) {
    let deadline = Instant::now() + ACTIVATION_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(status) = admin.get(status_url).await {
            let state = status.pointer("/outbox/state").and_then(Value::as_str);
            if matches!(state, Some("dispatched" | "dead" | "mismatch")) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The zone's grant data document for one application granted `scopes` on `resource`, rendered
/// exactly as the admin SDK's `author_grants_document` renders a single grant (the application
/// id is its own role; canonical, compact JSON with sorted keys and scopes).
fn grants_document(application_id: &str, resource: &str, scopes: &[&str]) -> String {
    let mut scopes: Vec<&str> = scopes.to_vec();
    scopes.sort_unstable();
    scopes.dedup();
    let mut app_ids = Map::new();
    app_ids.insert(application_id.to_owned(), json!(application_id));
    let mut roles = Map::new();
    roles.insert(application_id.to_owned(), json!(scopes));
    let mut entry = Map::new();
    entry.insert("application".to_owned(), json!(application_id));
    entry.insert("roles".to_owned(), Value::Object(roles));
    let mut grants = Map::new();
    grants.insert(resource.to_owned(), Value::Object(entry));
    format!(
        "# caracal:data-document\npackage caracal.authz\nimport rego.v1\napp_ids := {}\ngrants := {}\n",
        Value::Object(app_ids),
        Value::Object(grants),
    )
}

// ---------------------------------------------------------------------------------------------
// The printout.

/// The Python snippet: the runtime SDK reads the exported variables, mints a mandate per request
/// and sends it to the Gateway, which calls the echo with the provider's credential.
const SNIPPET: &str = r#"# ---- demo.py ----
import asyncio
import json

from caracalai import Caracal

RESOURCE = "resource://demo-echo"


async def main() -> None:
    caracal = Caracal()  # reads the CARACAL_* variables exported above
    try:
        target = caracal.gateway_request(RESOURCE, "/hello?from=demo")
        async with caracal.application_transport(RESOURCE, scopes=["demo:read"]) as http:
            answer = await http.get(target.url, headers=target.headers)
        print(answer.status_code)
        print(json.dumps(answer.json(), indent=2))
    finally:
        await caracal.aclose()


asyncio.run(main())
# ---- end demo.py ----"#;

fn instructions(sandbox: &Sandbox, seeded: &Seeded, upstream: &str) -> String {
    let Sandbox {
        api_url,
        sts_url,
        coordinator_url,
        gateway_url,
        ..
    } = sandbox;
    let Seeded {
        zone_id,
        application_id,
        client_secret,
    } = seeded;
    let scopes = SCOPES.join(" ");
    format!(
        "\
caracal: demo ready: zone \"demo\" ({zone_id}), application demo-agent ({application_id}) granted
{GRANTED} on {RESOURCE} (scopes {scopes}); its upstream is the echo at {upstream},
and the Gateway calls it with `Authorization: Bearer {UPSTREAM_KEY}`, a credential the agent never holds.

caracal: the runtime SDK's variables for the demo application:

    export CARACAL_STS_URL={sts_url}
    export CARACAL_COORDINATOR_URL={coordinator_url}
    export CARACAL_GATEWAY_URL={gateway_url}
    export CARACAL_ZONE_ID={zone_id}
    export CARACAL_APPLICATION_ID={application_id}
    export CARACAL_APP_CLIENT_SECRET={client_secret}
    export CARACAL_APP_RESOURCES={RESOURCE}

caracal: save this as demo.py and run `python demo.py` in that shell (pip install caracalai-sdk);
it prints the echo's answer, with the credential the Gateway injected:

{SNIPPET}

caracal: or poke at it with curl:

    curl -s -o /dev/null -w '%{{http_code}}\\n' {gateway_url}/health   # 200: the Gateway is up
    curl -s -H \"Authorization: Bearer $CARACAL_ADMIN_TOKEN\" {api_url}/v1/zones/{zone_id}/resources
    curl -s -H 'X-Caracal-Resource: {RESOURCE}' {gateway_url}/hello   # no mandate: refused
    curl -s {upstream}/hello   # the echo itself: no credential without the Gateway
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_document_matches_the_admin_sdk() {
        // author_grants_document([ResourceGrant(application_id="app-1",
        //     resource_identifier="resource://demo-echo", scopes=["demo:write", "demo:read"])])
        let expected = "# caracal:data-document\npackage caracal.authz\nimport rego.v1\n\
            app_ids := {\"app-1\":\"app-1\"}\n\
            grants := {\"resource://demo-echo\":{\"application\":\"app-1\",\"roles\":{\"app-1\":[\"demo:read\",\"demo:write\"]}}}\n";
        assert_eq!(
            grants_document("app-1", RESOURCE, &["demo:write", "demo:read"]),
            expected
        );
    }

    #[test]
    fn the_snippet_is_unindented_python_between_markers() {
        assert!(SNIPPET.starts_with("# ---- demo.py ----\n"));
        assert!(SNIPPET.ends_with("# ---- end demo.py ----"));
        assert!(SNIPPET.contains(RESOURCE));
        assert!(SNIPPET.contains(GRANTED));
    }
}
