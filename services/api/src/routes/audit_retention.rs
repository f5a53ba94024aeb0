//! `GET/PUT /v1/audit-retention` (`spec/api.md §3.15`): the platform-wide audit retention
//! window. A `PUT` is a mutation like any other, so the gate records its admin audit entry.

use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::ports::audit::RetentionSetting;

use crate::audit::{ledger_error, retention};
use crate::reply::{caller, json_value, Handled};
use crate::ApiState;

async fn get(req: HttpRequest, state: web::Data<ApiState>) -> Handled {
    caller(&req)?;
    let setting = state
        .audit
        .retention_setting()
        .await
        .map_err(ledger_error)?;
    Ok(HttpResponse::Ok().json(retention::view(
        setting.as_ref(),
        state.config.audit_retention_max_days,
    )))
}

async fn put(req: HttpRequest, state: web::Data<ApiState>, payload: web::Payload) -> Handled {
    let caller = caller(&req)?;
    let body = json_value(&req, &state, payload).await?;
    let max_days = state.config.audit_retention_max_days;
    let setting = RetentionSetting {
        retention_days: retention::requested_days(&body, max_days)?,
        updated_by: Some(caller.attribution()),
        updated_at_micros: state.management.clock.now().unix_micros(),
    };
    state
        .audit
        .set_retention_setting(&setting)
        .await
        .map_err(ledger_error)?;
    Ok(HttpResponse::Ok().json(retention::view(Some(&setting), max_days)))
}

/// Mounts the retention routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/audit-retention", web::get().to(get))
        .route("/audit-retention", web::put().to(put));
}
