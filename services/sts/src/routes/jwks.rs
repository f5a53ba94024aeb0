//! `GET /.well-known/jwks.json?zone_id=Z` (`spec/sts.md §5`).

use actix_web::{web, HttpResponse};
use caracal_core::ids::ZoneId;
use caracal_core::sts::form::malformed;
use serde::Deserialize;

use crate::reply::error;
use crate::StsState;

#[derive(Deserialize)]
pub struct Query {
    zone_id: Option<String>,
}

pub async fn jwks(query: web::Query<Query>, state: web::Data<StsState>) -> HttpResponse {
    let zone = query.zone_id.as_deref().map(str::trim).unwrap_or("");
    if zone.is_empty() {
        return error(&malformed("zone_id required"), None);
    }
    let Ok(zone) = ZoneId::parse(zone) else {
        return error(
            &caracal_core::Error::not_found("resource_not_found")
                .describe("zone signing key not found"),
            None,
        );
    };
    match state.sts.keys.jwks(&zone).await {
        Ok(doc) => HttpResponse::Ok()
            .insert_header(("cache-control", "public, max-age=300, must-revalidate"))
            .insert_header(("x-content-type-options", "nosniff"))
            .json(doc),
        Err(e) => error(&e, None),
    }
}
