//! Delegations (`spec/coordinator-gateway.md` A8), under `/zones/{zone_id}/delegations`.

use actix_web::{web, HttpRequest, HttpResponse};

use super::open;
use crate::gate::{idempotency_headers, Access};
use crate::CoordinatorState;

type State = web::Data<CoordinatorState>;

/// `POST …/delegations` (A8.1).
pub async fn create(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::Runtime, []);
    let idem = idempotency_headers(&req);
    let result = state
        .coordinator
        .create_delegation(&call.principal, &call.zone, &idem, call.body())
        .await;
    state.stats.observe_creation(!idem.keys.is_empty(), &result);
    call.respond(&result).await
}

/// `PATCH …/delegations/{id}/revoke` (A8.5).
pub async fn revoke(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::RuntimeOrOperator, ["id"]);
    let result = state
        .coordinator
        .revoke_delegation(&call.principal, &call.zone, call.param("id"))
        .await;
    call.respond(&result).await
}

/// `GET …/delegations/inbound/{session_id}` (A8.4).
pub async fn inbound(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(
        req,
        payload,
        state,
        Access::RuntimeOrOperator,
        ["session_id"]
    );
    let result = state
        .coordinator
        .list_inbound_delegations(
            &call.principal,
            &call.zone,
            call.param("session_id"),
            call.query(),
        )
        .await;
    call.respond(&result).await
}

/// `GET …/delegations/inbound/{session_id}/{id}` (A8.4).
pub async fn inbound_one(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(
        req,
        payload,
        state,
        Access::RuntimeOrOperator,
        ["session_id", "id"]
    );
    let result = state
        .coordinator
        .get_inbound_delegation(
            &call.principal,
            &call.zone,
            call.param("session_id"),
            call.param("id"),
        )
        .await;
    call.respond(&result).await
}

/// `GET …/delegations/outbound/{session_id}` (A8.4).
pub async fn outbound(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(
        req,
        payload,
        state,
        Access::RuntimeOrOperator,
        ["session_id"]
    );
    let result = state
        .coordinator
        .list_outbound_delegations(
            &call.principal,
            &call.zone,
            call.param("session_id"),
            call.query(),
        )
        .await;
    call.respond(&result).await
}

/// `GET …/delegations/active` (A8.4).
pub async fn active(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::RuntimeOrOperator, []);
    let result = state
        .coordinator
        .list_active_delegations(&call.principal, &call.zone, call.query())
        .await;
    call.respond(&result).await
}

/// `GET …/delegations/{id}/traverse` (A8.4; admin).
pub async fn traverse(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::RuntimeOrOperator, ["id"]);
    let result = state
        .coordinator
        .traverse_delegation(&call.principal, &call.zone, call.param("id"))
        .await;
    call.respond(&result).await
}

/// `GET …/delegations/{id}/impact` (A8.4; admin).
pub async fn impact(req: HttpRequest, payload: web::Payload, state: State) -> HttpResponse {
    let call = open!(req, payload, state, Access::RuntimeOrOperator, ["id"]);
    let result = state
        .coordinator
        .delegation_impact(&call.principal, &call.zone, call.param("id"))
        .await;
    call.respond(&result).await
}
