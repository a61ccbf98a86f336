//! `GET /ui/api/chain/{namespace}/{name}`: the `wharf why` report of one
//! service as JSON, gathered through the API as the logged-in user (with
//! the user's own token), so the dashboard shows only what the user may
//! read.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;

use crate::{bearer, failure, DashboardConfig};

/// A kubeconfig for `server` with `token`: the one client builder,
/// `wharf_kube::client`, takes it from there.
fn kubeconfig(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "dashboard",
        "clusters": [{"name": "wharf", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "user", "user": {"token": token}}],
        "contexts": [{"name": "dashboard", "context": {"cluster": "wharf", "user": "user"}}],
    })
    .to_string()
}

pub async fn chain(
    State(config): State<Arc<DashboardConfig>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = bearer(&headers) else {
        return failure(StatusCode::UNAUTHORIZED, "the chain needs a bearer token");
    };
    let invalid = [("namespace", &namespace), ("name", &name)]
        .into_iter()
        .find_map(|(field, value)| wharf_api::names::dns1123_label(value).first().map(|why| format!("{field} {value:?}: {why}")));
    if let Some(why) = invalid {
        return failure(StatusCode::BAD_REQUEST, &why);
    }
    let Some(server) = config.api_url.get() else {
        return failure(StatusCode::SERVICE_UNAVAILABLE, "the API server is starting");
    };
    let client = match wharf_kube::client::from_kubeconfig_text(&kubeconfig(server, &config.ca_pem, token)).await {
        Ok(client) => client,
        Err(e) => return failure(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    match wharf_why::fetch::gather(&client, &namespace, &name, &config.cluster_domain, config.dns).await {
        Ok(inputs) => Json(wharf_why::explain(&inputs)).into_response(),
        Err(wharf_why::fetch::FetchError::Api(kube::Error::Api(status))) => {
            let code = StatusCode::from_u16(status.code).unwrap_or(StatusCode::BAD_GATEWAY);
            failure(code, &status.message)
        }
        Err(e) => {
            tracing::warn!(%namespace, %name, error = %e, "gathering a service's chain failed");
            failure(StatusCode::BAD_GATEWAY, &e.to_string())
        }
    }
}
