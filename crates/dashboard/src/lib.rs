//! The dashboard: pages embedded in the binary and served under `/ui` on
//! the API port (no CDN: works offline), behind the API's authentication.
//! The pages read the Kubernetes API directly with the user's token
//! (list, then watch: live without reloads); this crate adds what the API
//! does not have: login sessions (`login`) and the `wharf why` chain as
//! JSON (`chain`).

pub mod assets;
pub mod chain;
pub mod login;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

/// What the dashboard needs to know about the cluster it shows.
pub struct DashboardConfig {
    pub sessions: Arc<wharf_auth::sessions::Sessions>,
    /// The API server's own URL (`https://host:port`), known once it
    /// listens; the chain is gathered through it as the logged-in user.
    pub api_url: Arc<OnceLock<String>>,
    /// The cluster CA, to trust that URL.
    pub ca_pem: String,
    pub cluster_domain: String,
    /// The cluster DNS to ask for names (else the `kube-dns` service IP).
    pub dns: Option<SocketAddr>,
}

/// The routes, relative to `/ui`.
pub fn router(config: DashboardConfig) -> Router {
    let config = Arc::new(config);
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .route("/api/login-codes", post(login::issue_code))
        .route("/api/sessions", post(login::start_session).delete(login::end_session))
        .route("/api/chain/{namespace}/{name}", get(chain::chain))
        .fallback(get(assets::redirect_home))
        .with_state(config)
}

/// A failure as the API words it: a `Status` with its code and reason.
fn failure(code: StatusCode, message: &str) -> Response {
    let reason = match code {
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
        _ => "",
    };
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

/// The request's bearer token, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty())
}
