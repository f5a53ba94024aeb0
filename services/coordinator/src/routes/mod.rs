//! Route table (`spec/coordinator-gateway.md` A5). A wrong method on a known path answers the
//! framework's 404, as upstream's router does.

mod delegations;
mod health;
mod invocations;
mod sessions;
mod verify;

use actix_web::web;

/// Opens a [`crate::gate::Call`] or returns its refusal from the handler.
macro_rules! open {
    ($req:expr, $payload:expr, $state:expr, $access:expr, [$($param:literal),*]) => {
        match $crate::gate::Call::open(&$req, $payload, &$state, $access, &[$($param),*]).await {
            Ok(call) => call,
            Err(response) => return response,
        }
    };
}
pub(crate) use open;

fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(caracal_http::not_found_route))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    const Z: &str = "/zones/{zone_id}";
    let at = |tail: &str| format!("{Z}{tail}");
    cfg.service(resource("/health").route(web::get().to(health::health)))
        .service(resource("/ready").route(web::get().to(health::ready)))
        .service(resource("/metrics").route(web::get().to(health::metrics)))
        .service(resource("/stats").route(web::get().to(health::stats)))
        .service(resource("/v1/verify").route(web::post().to(verify::verify)))
        // Sessions.
        .service(
            resource(&at("/agents"))
                .route(web::post().to(sessions::start))
                .route(web::get().to(sessions::list)),
        )
        .service(
            resource(&at("/agents/{id}"))
                .route(web::get().to(sessions::get))
                .route(web::delete().to(sessions::terminate)),
        )
        .service(resource(&at("/agents/{id}/heartbeat")).route(web::post().to(sessions::heartbeat)))
        .service(resource(&at("/agents/{id}/lease")).route(web::post().to(sessions::lease)))
        .service(resource(&at("/agents/{id}/children")).route(web::get().to(sessions::children)))
        .service(resource(&at("/agents/{id}/suspend")).route(web::patch().to(sessions::suspend)))
        .service(resource(&at("/agents/{id}/resume")).route(web::patch().to(sessions::resume)))
        .service(
            resource(&at("/agents/{id}/effective-authority"))
                .route(web::get().to(sessions::effective_authority)),
        )
        // Delegations: the fixed segments first, so `active`, `inbound` and `outbound` are
        // never read as edge ids.
        .service(resource(&at("/delegations")).route(web::post().to(delegations::create)))
        .service(resource(&at("/delegations/active")).route(web::get().to(delegations::active)))
        .service(
            resource(&at("/delegations/inbound/{session_id}"))
                .route(web::get().to(delegations::inbound)),
        )
        .service(
            resource(&at("/delegations/inbound/{session_id}/{id}"))
                .route(web::get().to(delegations::inbound_one)),
        )
        .service(
            resource(&at("/delegations/outbound/{session_id}"))
                .route(web::get().to(delegations::outbound)),
        )
        .service(
            resource(&at("/delegations/{id}/revoke")).route(web::patch().to(delegations::revoke)),
        )
        .service(
            resource(&at("/delegations/{id}/traverse")).route(web::get().to(delegations::traverse)),
        )
        .service(
            resource(&at("/delegations/{id}/impact")).route(web::get().to(delegations::impact)),
        )
        // Agent services and invocations.
        .service(
            resource(&at("/agent-services"))
                .route(web::post().to(invocations::register_service))
                .route(web::get().to(invocations::list_services)),
        )
        .service(
            resource(&at("/invocations"))
                .route(web::post().to(invocations::create))
                .route(web::get().to(invocations::list)),
        )
        .service(resource(&at("/invocations/{id}")).route(web::get().to(invocations::get)))
        .service(
            resource(&at("/invocations/{id}/start")).route(web::patch().to(invocations::start)),
        )
        .service(
            resource(&at("/invocations/{id}/cancel")).route(web::patch().to(invocations::cancel)),
        )
        .service(
            resource(&at("/invocations/{id}/complete"))
                .route(web::patch().to(invocations::complete)),
        );
}
