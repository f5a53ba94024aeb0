//! Sessions (`spec/coordinator-gateway.md` A6), under `/zones/{zone_id}/agents`.

use actix_web::{web, HttpRequest, HttpResponse};

use super::open;
use crate::gate::{idempotency_headers, Access};
use crate::CoordinatorState;

type State = web::Data<CoordinatorState>;

/// `POST …/agents` (A6.1).
pub async fn start(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::Runtime, []);
    let idem = idempotency_headers(&req);
    let result = state
        .coordinator
        .start_session(&call.principal, &call.zone, &idem, call.body())
        .await;
    state.stats.observe_creation(!idem.keys.is_empty(), &result);
    call.respond(&result).await
}

/// `GET …/agents` (A6.6).
pub async fn list(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::RuntimeOrOperator, []);
    let result = state
        .coordinator
        .list_sessions(&call.principal, &call.zone, call.query())
        .await;
    call.respond(&result).await
}

/// `GET …/agents/{id}` (A6.6).
pub async fn get(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::RuntimeOrOperator, ["id"]);
    let result = state
        .coordinator
        .get_session(&call.principal, &call.zone, call.param("id"))
        .await;
    call.respond(&result).await
}

/// `DELETE …/agents/{id}?reason=` (A6.5): 204 on success.
pub async fn terminate(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::RuntimeOrOperator, ["id"]);
    let reason = match call.query_value("reason") {
        Ok(reason) => reason,
        Err(e) => return call.fail(&e).await,
    };
    let result = state
        .coordinator
        .terminate_session(
            &call.principal,
            &call.zone,
            call.param("id"),
            reason,
            call.body_opt(),
        )
        .await;
    call.respond(&result).await
}

/// `POST …/agents/{id}/heartbeat` (A6.3).
pub async fn heartbeat(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::Runtime, ["id"]);
    let result = state
        .coordinator
        .heartbeat_session(&call.principal, &call.zone, call.param("id"), call.body())
        .await;
    call.respond(&result).await
}

/// `POST …/agents/{id}/lease` (A6.4).
pub async fn lease(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::Runtime, ["id"]);
    let result = state
        .coordinator
        .lease_session(&call.principal, &call.zone, call.param("id"))
        .await;
    call.respond(&result).await
}

/// `GET …/agents/{id}/children` (A6.6).
pub async fn children(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::RuntimeOrOperator, ["id"]);
    let result = state
        .coordinator
        .list_child_sessions(&call.principal, &call.zone, call.param("id"), call.query())
        .await;
    call.respond(&result).await
}

/// `PATCH …/agents/{id}/suspend` (A6.6).
pub async fn suspend(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::RuntimeOrOperator, ["id"]);
    let result = state
        .coordinator
        .suspend_session(&call.principal, &call.zone, call.param("id"))
        .await;
    call.respond(&result).await
}

/// `PATCH …/agents/{id}/resume` (A6.6).
pub async fn resume(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::RuntimeOrOperator, ["id"]);
    let result = state
        .coordinator
        .resume_session(&call.principal, &call.zone, call.param("id"))
        .await;
    call.respond(&result).await
}

/// `GET …/agents/{id}/effective-authority` (A8.4).
pub async fn effective_authority(
    req: HttpRequest,
    payload: web::Payload,
    state: State,
) -> HttpResponse {
    let call = open!(req, payload, state, Access::RuntimeOrOperator, ["id"]);
    let result = state
        .coordinator
        .effective_authority(&call.principal, &call.zone, call.param("id"))
        .await;
    call.respond(&result).await
}
