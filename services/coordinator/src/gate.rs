//! What every Coordinator route does before its use case: the per-IP rate limit (A4, a
//! middleware in front of routing), and per request the body, authentication (A2) and path
//! ids, in upstream's order (body parsing precedes its auth hook; params are parsed in the
//! handler, after auth).

use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::coordinator::auth::{bearer_token, operator_token_required};
use caracal_core::coordinator::{path_id, Coordinator, IdempotencyHeaders, Principal, Reply};
use caracal_core::digest::constant_time_eq;
use caracal_core::error::{Error, ErrorKind};
use caracal_core::ids::ZoneId;
use caracal_http::request_id_of;
use serde_json::{json, Value};

use crate::reply;
use crate::CoordinatorState;

/// Which credentials a route takes (A5's "Auth" column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// An STS `use=session` mandate only.
    Runtime,
    /// A mandate, or the operator token (A5's "op").
    RuntimeOrOperator,
}

/// `429 {"error":"rate_limited"}` (A4: no `Retry-After`).
pub fn rate_limited() -> Error {
    Error::new(ErrorKind::RateLimited, "rate_limited")
}

/// The client's address: the peer, or the first `X-Forwarded-For` hop behind a trusted proxy.
pub fn client_ip(req: &HttpRequest, trust_proxy: bool) -> String {
    if trust_proxy {
        if let Some(first) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| v.parse::<std::net::IpAddr>().is_ok())
        {
            return first.to_owned();
        }
    }
    req.peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Counts one hit on `key` in the current minute; `true` when over `per_min` (0 disables the
/// limit). A limiter that cannot count refuses the request (limits are a security control).
pub async fn over_limit(state: &CoordinatorState, key: &str, per_min: u64) -> Result<bool, Error> {
    if per_min == 0 {
        return Ok(false);
    }
    let minute = state.clock.now().unix_seconds().div_euclid(60);
    let count = state.limiter.hit(key, minute).await.map_err(Error::from)?;
    Ok(count > per_min)
}

/// Middleware: `coordinator:global_rl:{ip}` on every request except exactly `GET /health`
/// (A4), before authentication.
pub async fn rate_limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let exempt = req.uri().path_and_query().map(|p| p.as_str()) == Some("/health");
    let state = req.app_data::<web::Data<CoordinatorState>>().cloned();
    if let (false, Some(state)) = (exempt, state) {
        let ip = client_ip(req.request(), state.config.trust_proxy);
        let key = format!("coordinator:global_rl:{ip}");
        let refusal = match over_limit(&state, &key, state.config.global_limit_per_min).await {
            Ok(false) => None,
            Ok(true) => Some(rate_limited()),
            Err(e) => Some(e),
        };
        if let Some(err) = refusal {
            let id = request_id_of(req.request());
            let (http_req, _) = req.into_parts();
            return Ok(ServiceResponse::new(http_req, reply::error(&err, &id)));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// An authenticated request, ready for its use case.
pub struct Call {
    /// The request id (echoed, and named in some error bodies).
    pub request_id: String,
    /// The caller.
    pub principal: Principal,
    /// The path's zone, equal to the caller's.
    pub zone: ZoneId,
    body: Option<Value>,
    params: Vec<(&'static str, String)>,
    query: Vec<(String, String)>,
    /// Settles the principal's deferred identity check before any answer goes out.
    coordinator: Arc<Coordinator>,
}

impl Call {
    /// Reads the body, authenticates the caller for `access` against the path's zone, and
    /// checks the path ids named in `params`. The `Err` is the response to send.
    pub async fn open(
        req: &HttpRequest,
        payload: web::Payload,
        state: &CoordinatorState,
        access: Access,
        params: &[&'static str],
    ) -> Result<Call, HttpResponse> {
        let request_id = request_id_of(req);
        let body = reply::read_json(req, payload, state.config.body_limit)
            .await
            .map_err(|status| reply::framework(status, &request_id))?;
        let fail = |e: Error| reply::error(&e, &request_id);
        let path_zone = req.match_info().get("zone_id").unwrap_or("");
        let principal = authenticate(req, state, access, path_zone)
            .await
            .map_err(fail)?;
        let zone = principal.zone.clone();
        let coordinator = Arc::clone(&state.coordinator);
        let checked_query = (|| {
            let mut checked = Vec::with_capacity(params.len());
            for name in params {
                let value = req.match_info().get(name).unwrap_or("");
                checked.push((*name, path_id(value)?.to_owned()));
            }
            let query = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
                .map(web::Query::into_inner)
                .map_err(|_| Error::invalid("invalid_query", "query string is malformed"))?;
            Ok::<_, Error>((checked, query))
        })();
        let (checked, query) = match checked_query {
            Ok(parts) => parts,
            Err(e) => {
                // A revoked identity hears 401 before it hears about its path or query.
                let e = match coordinator.settle_identity(&principal).await {
                    Ok(()) => e,
                    Err(revoked) => revoked,
                };
                return Err(fail(e));
            }
        };
        Ok(Call {
            request_id,
            principal,
            zone,
            body,
            params: checked,
            query,
            coordinator,
        })
    }

    /// A checked path id (empty if the route did not name it in `params`).
    pub fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// The JSON body; `null` when there was none.
    pub fn body(&self) -> &Value {
        self.body.as_ref().unwrap_or(&Value::Null)
    }

    /// The JSON body, if one was sent.
    pub fn body_opt(&self) -> Option<&Value> {
        self.body.as_ref()
    }

    /// The query string's pairs, in order.
    pub fn query(&self) -> &[(String, String)] {
        &self.query
    }

    /// The single value of a query parameter: `None` when absent, `400 invalid_query` when
    /// repeated.
    pub fn query_value(&self, name: &str) -> Result<Option<&str>, Error> {
        let mut values = self.query.iter().filter(|(k, _)| k == name);
        let first = values.next().map(|(_, v)| v.as_str());
        if values.next().is_some() {
            return Err(Error::invalid(
                "invalid_query",
                format!("{name} must be given once"),
            ));
        }
        Ok(first)
    }

    /// Renders a use case's outcome, after the caller's identity check (A2 step 8) if no unit
    /// of work ran it: a refusal that came before any store read must still lose to
    /// `401 identity_revoked`.
    pub async fn respond(&self, result: &Result<Reply, Error>) -> HttpResponse {
        if let Err(revoked) = self.coordinator.settle_identity(&self.principal).await {
            return reply::error(&revoked, &self.request_id);
        }
        reply::outcome(result, &self.request_id)
    }

    /// Renders a refusal, after the caller's identity check as [`Call::respond`] does.
    pub async fn fail(&self, err: &Error) -> HttpResponse {
        if let Err(revoked) = self.coordinator.settle_identity(&self.principal).await {
            return reply::error(&revoked, &self.request_id);
        }
        reply::error(err, &self.request_id)
    }

    /// `coordinator:invocation_rl:{zone}:{client_id}` (A4), for invocation changes.
    pub async fn invocation_limit(&self, state: &CoordinatorState) -> Result<(), Error> {
        let key = format!(
            "coordinator:invocation_rl:{}:{}",
            self.zone.as_str(),
            self.principal.client_id
        );
        if over_limit(state, &key, state.config.invocation_limit_per_min).await? {
            return Err(rate_limited());
        }
        Ok(())
    }
}

fn operator_matches(state: &CoordinatorState, token: &str) -> bool {
    state
        .config
        .operator_token
        .as_deref()
        .is_some_and(|op| constant_time_eq(token.as_bytes(), op.as_bytes()))
}

/// A2: the bearer's form, then the operator token where the route takes it (with the path's
/// zone, which must be a path id), else the mandate (steps 5–8, in core).
async fn authenticate(
    req: &HttpRequest,
    state: &CoordinatorState,
    access: Access,
    path_zone: &str,
) -> Result<Principal, Error> {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let token = bearer_token(header)?;
    if access == Access::RuntimeOrOperator && operator_matches(state, token) {
        if let Ok(zone) = ZoneId::parse(path_zone) {
            return Ok(Principal::operator(zone, &state.config.lifecycle_scope));
        }
    }
    state
        .coordinator
        .authenticate_deferred(
            token,
            state.keys.as_ref(),
            state.es256.as_ref(),
            &state.config.issuer,
            path_zone,
            &state.config.lifecycle_scope,
        )
        .await
}

/// A2 steps 2–4 for `/metrics` and `/stats`: a bearer, equal to the operator token, else
/// `403 operator_token_required`. `Some` is the refusal to send.
pub fn operator_refusal(req: &HttpRequest, state: &CoordinatorState) -> Option<HttpResponse> {
    let header = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    let refusal = match bearer_token(header) {
        Err(e) => e,
        Ok(token) if operator_matches(state, token) => return None,
        Ok(_) => operator_token_required(),
    };
    Some(reply::error(&refusal, &request_id_of(req)))
}

/// The `Idempotency-Key` headers as sent: every value (bytes read as Latin-1, as upstream's
/// HTTP stack reads them, so a non-ASCII byte reaches the key rules instead of vanishing) and
/// whether `Idempotency-Key-Kind: generated` was sent.
pub fn idempotency_headers(req: &HttpRequest) -> IdempotencyHeaders {
    let keys = req
        .headers()
        .get_all("idempotency-key")
        .map(|v| v.as_bytes().iter().map(|b| char::from(*b)).collect())
        .collect();
    let generated = req
        .headers()
        .get("idempotency-key-kind")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "generated");
    IdempotencyHeaders { keys, generated }
}

/// `429` in `/v1/verify`'s own envelope.
pub fn verify_rate_limited() -> HttpResponse {
    HttpResponse::build(StatusCode::TOO_MANY_REQUESTS)
        .json(json!({"valid": false, "error": "rate_limited"}))
}
