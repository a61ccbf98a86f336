//! HTTPS serving: TLS with the cluster's serving certificate, HTTP/1.1 and
//! HTTP/2, bearer-token authentication, and the routes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::discovery;
use crate::error::ApiError;
use crate::http::{header_str, json_response, typed_response};
use crate::pki::Credentials;
use crate::{handlers, App};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS setup: {0}")]
    Tls(String),
}

pub struct ApiServerConfig {
    pub listen: SocketAddr,
}

pub struct RunningApiServer {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

fn tls_config(creds: &Credentials) -> Result<rustls::ServerConfig, ServeError> {
    let tls = |e: &dyn std::fmt::Display| ServeError::Tls(e.to_string());
    let certs = rustls_pemfile::certs(&mut creds.serving_cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| tls(&e))?;
    let key = rustls_pemfile::private_key(&mut creds.serving_key_pem.as_bytes())
        .map_err(|e| tls(&e))?
        .ok_or_else(|| ServeError::Tls("no private key in serving key file".into()))?;
    let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Paths anyone may read, as kube-apiserver's `system:public-info-viewer`.
fn is_public(path: &str) -> bool {
    matches!(path, "/version" | "/healthz" | "/livez" | "/readyz")
}

const UNAUTHENTICATED_BODY_LIMIT: usize = 1 << 20;
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

fn token_matches(given: &str, expected: &str) -> bool {
    // Constant time in the token's length, so timing reveals nothing.
    given.len() == expected.len() && given.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

async fn authenticate(State(app): State<App>, request: Request, next: Next) -> Response {
    let given = header_str(request.headers(), header::AUTHORIZATION).strip_prefix("Bearer ").unwrap_or_default().trim();
    if is_public(request.uri().path()) || token_matches(given, &app.token) {
        next.run(request).await
    } else {
        // Read (a bounded amount of) the body first: an HTTP/2 stream reset
        // while the client is still sending makes some clients lose the 401.
        let _ = axum::body::to_bytes(request.into_body(), UNAUTHENTICATED_BODY_LIMIT).await;
        ApiError::Unauthorized.into_response()
    }
}

fn discovery_response(headers: &HeaderMap, core: bool) -> Response {
    if discovery::wants_aggregated(header_str(headers, header::ACCEPT)) {
        typed_response(StatusCode::OK, discovery::AGGREGATED_CONTENT_TYPE, &discovery::aggregated(core))
    } else if core {
        json_response(StatusCode::OK, &discovery::legacy_core())
    } else {
        json_response(StatusCode::OK, &discovery::legacy_groups())
    }
}

fn found(doc: Option<serde_json::Value>) -> Response {
    match doc {
        Some(doc) => json_response(StatusCode::OK, &doc),
        None => ApiError::NoRoute.into_response(),
    }
}

fn router(app: App) -> Router {
    Router::new()
        .route("/version", get(|| async { json_response(StatusCode::OK, &discovery::version()) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/api", get(|headers: HeaderMap| async move { discovery_response(&headers, true) }))
        .route("/apis", get(|headers: HeaderMap| async move { discovery_response(&headers, false) }))
        .route("/api/{version}", get(|Path(v): Path<String>| async move { found(discovery::resource_list("", &v)) }))
        .route(
            "/apis/{group}/{version}",
            get(|Path((g, v)): Path<(String, String)>| async move { found(discovery::resource_list(&g, &v)) }),
        )
        .route("/openapi/v3", get(|| async { json_response(StatusCode::OK, &discovery::openapi_index()) }))
        .route("/openapi/v3/{*path}", get(|Path(p): Path<String>| async move { found(discovery::openapi_group_version(&p)) }))
        .fallback(handlers::resource)
        .layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .layer(middleware::from_fn_with_state(app.clone(), crate::metrics::observe))
        .with_state(app)
}

/// How long requests in flight may take to finish once shutdown begins.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds the listener and serves until `app.shutdown` is cancelled; then
/// stops accepting, ends watches, lets requests in flight finish (for up to
/// `SHUTDOWN_GRACE`) and the task ends.
pub async fn serve(config: ApiServerConfig, app: App, creds: &Credentials) -> Result<RunningApiServer, ServeError> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(creds)?));
    let listener = TcpListener::bind(config.listen).await.map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let token = app.shutdown.clone();
    let router = router(app);
    let task = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
            let accepted = tokio::select! {
                _ = token.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let service = TowerToHyperService::new(router.clone());
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                };
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).into_owned();
                if let Err(e) = watcher.watch(connection).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await.is_err() {
            tracing::warn!("API requests still in flight after {SHUTDOWN_GRACE:?}; closing them");
        }
    });
    Ok(RunningApiServer { local_addr, task })
}
