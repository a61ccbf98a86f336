//! Logging in: `wharf dashboard` asks (as its user) for a one-time code
//! and prints a URL holding it in the fragment (never sent to a server or
//! a log); the page trades the code for a session token, which the API
//! accepts as a bearer token for `SESSION_LIFETIME`. Pasting any token
//! the API accepts works too.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use wharf_auth::sessions::SessionError;
use wharf_auth::User;

use crate::{bearer, failure, DashboardConfig};

/// Why a caller may not turn its credential into a session: a session
/// must never outlive or stand in for something else than the caller's
/// own long-lived credential.
fn refusal(user: &User, headers: &HeaderMap) -> Option<&'static str> {
    if bearer(headers).is_some_and(|t| t.starts_with(wharf_auth::sessions::SESSION_PREFIX)) {
        return Some("a dashboard session cannot mint another: run `wharf dashboard` with your own credentials");
    }
    if headers.keys().any(|k| k.as_str().starts_with("impersonate-")) {
        return Some("no login codes for an impersonated user");
    }
    if user.groups.iter().any(|g| g == wharf_auth::bootstrap::GROUP) {
        return Some("bootstrap tokens join nodes; they do not log in to the dashboard");
    }
    None
}

/// `POST /ui/api/login-codes`: a code for the caller.
pub async fn issue_code(State(config): State<Arc<DashboardConfig>>, user: Option<Extension<User>>, headers: HeaderMap) -> Response {
    let Some(Extension(user)) = user.filter(|u| u.0.groups.iter().any(|g| g == wharf_auth::user::AUTHENTICATED)) else {
        return failure(StatusCode::UNAUTHORIZED, "log in to get a dashboard login code");
    };
    if let Some(why) = refusal(&user, &headers) {
        return failure(StatusCode::FORBIDDEN, why);
    }
    match config.sessions.issue_code(user, Instant::now()) {
        Ok(code) => (StatusCode::CREATED, Json(serde_json::json!({ "code": code, "path": format!("/ui/#code={code}") }))).into_response(),
        Err(e) => failure(StatusCode::TOO_MANY_REQUESTS, &e.to_string()),
    }
}

#[derive(Deserialize)]
pub struct Redeem {
    code: String,
}

/// `POST /ui/api/sessions {"code": ...}`: a session token, once per code.
pub async fn start_session(State(config): State<Arc<DashboardConfig>>, body: Option<Json<Redeem>>) -> Response {
    let Some(Json(redeem)) = body else { return failure(StatusCode::BAD_REQUEST, "expected {\"code\": \"...\"}") };
    match config.sessions.redeem(&redeem.code, Instant::now()) {
        Ok(token) => (StatusCode::CREATED, Json(serde_json::json!({ "token": token }))).into_response(),
        Err(SessionError::UnknownCode) => {
            failure(StatusCode::UNAUTHORIZED, "this login code is unknown, used or expired: run `wharf dashboard` again")
        }
        Err(e) => failure(StatusCode::TOO_MANY_REQUESTS, &e.to_string()),
    }
}

/// `DELETE /ui/api/sessions`: ends the caller's session (logout).
pub async fn end_session(State(config): State<Arc<DashboardConfig>>, headers: HeaderMap) -> StatusCode {
    if let Some(token) = bearer(&headers) {
        config.sessions.end(token);
    }
    StatusCode::NO_CONTENT
}
