//! `/v1` routes. Each handler: parse path, query and body → call one use case → render.

use std::collections::HashMap;

use actix_web::web;
use caracal_core::error::Error;
use caracal_core::pagination::page_request;
use caracal_core::ports::store::{Liveness, Page};

pub mod admin_tokens;
pub mod applications;
pub mod approvals;
pub mod audit;
pub mod audit_retention;
pub mod grants;
pub mod health;
pub mod policies;
pub mod policy_sets;
pub mod providers;
pub mod resources;
pub mod subject_issuers;
pub mod zones;

/// Query parameters as strings.
pub type Query = web::Query<HashMap<String, String>>;

/// `limit` and `cursor`.
pub fn page(query: &Query) -> Result<Page, Error> {
    page_request(
        query.get("limit").map(String::as_str),
        query.get("cursor").map(String::as_str),
    )
}

/// `status=active|archived` (default active).
pub fn liveness(query: &Query) -> Result<Liveness, Error> {
    match query.get("status").map(String::as_str) {
        None | Some("") | Some("active") => Ok(Liveness::Active),
        Some("archived") => Ok(Liveness::Archived),
        Some(_) => Err(Error::invalid(
            "invalid_query",
            "status must be active or archived",
        )),
    }
}

/// Mounts every `/v1` route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    zones::configure(cfg);
    applications::configure(cfg);
    providers::configure(cfg);
    resources::configure(cfg);
    policies::configure(cfg);
    policy_sets::configure(cfg);
    grants::configure(cfg);
    subject_issuers::configure(cfg);
    admin_tokens::configure(cfg);
    approvals::configure(cfg);
    audit::configure(cfg);
    audit_retention::configure(cfg);
}
