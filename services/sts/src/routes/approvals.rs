//! `GET /approvals/{id}?wait=N` (`spec/sts.md §8`): the SDK's long-poll for a decision. The
//! hold is re-read every 250 ms until it leaves `pending` or the wait (at most 25 s) ends, so
//! a decision made by any replica or by the API is seen without a notification channel.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use caracal_core::sts::form::malformed;

use crate::reply::error;
use crate::StsState;

/// Longest wait the route honours.
const MAX_WAIT_SECONDS: u64 = 25;
/// How often a waiting request re-reads the hold.
const POLL: Duration = Duration::from_millis(250);

fn wait_of(req: &HttpRequest) -> Result<u64, ()> {
    let mut wait = 0;
    for pair in req.query_string().split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "wait" {
            wait = value.parse::<u64>().map_err(|_| ())?;
        }
    }
    Ok(wait.min(MAX_WAIT_SECONDS))
}

pub async fn status(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<StsState>,
) -> HttpResponse {
    let Ok(wait) = wait_of(&req) else {
        return error(&malformed("invalid wait"), None);
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let body = match state.sts.approval_state(&id).await {
            Ok(body) => body,
            Err(e) => return error(&e, None),
        };
        if body["state"] != "pending" || tokio::time::Instant::now() >= deadline {
            return HttpResponse::Ok().json(body);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `POST /approvals/{id}/decision`: a subject approver's decision, authenticated by a user
/// session mandate. A missing bearer is answered with the challenge header.
pub async fn decide(
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: web::Data<StsState>,
) -> HttpResponse {
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    if caracal_core::sts::approvals::is_uuid(&id) && bearer.is_none() {
        let mut res = error(
            &caracal_core::Error::new(caracal_core::ErrorKind::Unauthenticated, "invalid_token")
                .describe("session mandate required"),
            None,
        );
        res.headers_mut().insert(
            actix_web::http::header::WWW_AUTHENTICATE,
            actix_web::http::header::HeaderValue::from_static("Bearer realm=\"caracal-sts\""),
        );
        return res;
    }
    let body = match crate::reply::read_body(payload).await {
        Ok(body) => body,
        Err(_) => return error(&malformed("malformed request body"), None),
    };
    let request_id = uuid::Uuid::now_v7().to_string();
    match state
        .sts
        .decide_approval(&id, bearer, &body, &request_id)
        .await
    {
        Ok(body) => HttpResponse::Ok().json(body),
        Err(e) => error(&e, None),
    }
}
