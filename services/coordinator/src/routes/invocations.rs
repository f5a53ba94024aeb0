//! Agent services and invocations (`spec/coordinator-gateway.md` A9). Invocation changes count
//! against `INVOCATION_RATE_LIMIT_PER_MIN` per zone and calling application (A4) before the
//! use case runs.

use actix_web::{web, HttpRequest, HttpResponse};

use super::open;
use crate::gate::Access;
use crate::CoordinatorState;

type State = web::Data<CoordinatorState>;

/// `POST …/agent-services`.
pub async fn register_service(
    req: HttpRequest,
    payload: web::Payload,
    state: State,
) -> HttpResponse {
    let call = open!(req, payload, state, Access::Runtime, []);
    let result = state
        .coordinator
        .register_agent_service(&call.principal, &call.zone, call.body())
        .await;
    call.respond(&result).await
}

/// `GET …/agent-services`.
pub async fn list_services(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::RuntimeOrOperator, []);
    let result = state
        .coordinator
        .list_agent_services(&call.principal, &call.zone, call.query())
        .await;
    call.respond(&result).await
}

/// `POST …/invocations`.
pub async fn create(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::Runtime, []);
    if let Err(e) = call.invocation_limit(&state).await {
        return call.fail(&e).await;
    }
    let result = state
        .coordinator
        .create_invocation(&call.principal, &call.zone, call.body())
        .await;
    state.stats.observe_creation(true, &result);
    call.respond(&result).await
}

/// `GET …/invocations`.
pub async fn list(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::RuntimeOrOperator, []);
    let result = state
        .coordinator
        .list_invocations(&call.principal, &call.zone, call.query())
        .await;
    call.respond(&result).await
}

/// `GET …/invocations/{id}`.
pub async fn get(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::Runtime, ["id"]);
    let result = state
        .coordinator
        .get_invocation(&call.principal, &call.zone, call.param("id"))
        .await;
    call.respond(&result).await
}

/// `PATCH …/invocations/{id}/start`.
pub async fn start(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::Runtime, ["id"]);
    if let Err(e) = call.invocation_limit(&state).await {
        return call.fail(&e).await;
    }
    let result = state
        .coordinator
        .start_invocation(&call.principal, &call.zone, call.param("id"))
        .await;
    call.respond(&result).await
}

/// `PATCH …/invocations/{id}/cancel`.
pub async fn cancel(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::Runtime, ["id"]);
    if let Err(e) = call.invocation_limit(&state).await {
        return call.fail(&e).await;
    }
    let result = state
        .coordinator
        .cancel_invocation(
            &call.principal,
            &call.zone,
            call.param("id"),
            call.body_opt(),
        )
        .await;
    call.respond(&result).await
}

/// `PATCH …/invocations/{id}/complete`.
pub async fn complete(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::Runtime, ["id"]);
    if let Err(e) = call.invocation_limit(&state).await {
        return call.fail(&e).await;
    }
    let result = state
        .coordinator
        .complete_invocation(&call.principal, &call.zone, call.param("id"), call.body())
        .await;
    call.respond(&result).await
}
