//! HTTPS serving: TLS with the cluster's serving certificate, HTTP/1.1 and
//! HTTP/2, bearer-token authentication, and the routes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::discovery;
use crate::error::ApiError;
use crate::http::{header_str, json_response, typed_response};
use crate::pki::Credentials;
use crate::{authn, authz, handlers, openapi, review, App};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("TLS setup: {0}")]
    Tls(String),
}

pub struct ApiServerConfig {
    pub listen: SocketAddr,
    pub limits: crate::limits::ApiLimits,
    /// Served under `/ui` behind the API's authentication (the dashboard).
    pub ui: Option<Router>,
}

pub struct RunningApiServer {
    pub local_addr: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

fn tls_config(creds: &Credentials, app: &App) -> Result<rustls::ServerConfig, ServeError> {
    let tls = |e: &dyn std::fmt::Display| ServeError::Tls(e.to_string());
    let certs = rustls_pemfile::certs(&mut creds.serving_cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| tls(&e))?;
    let key = rustls_pemfile::private_key(&mut creds.serving_key_pem.as_bytes())
        .map_err(|e| tls(&e))?
        .ok_or_else(|| ServeError::Tls("no private key in serving key file".into()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(app.auth.authenticator.tls_verifier())
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Requests being served, mutating and not, as kube-apiserver's
/// max-in-flight filter counts them (watches are long-running: exempt).
#[derive(Clone)]
struct InFlight {
    reads: wharf_limits::Slots,
    writes: wharf_limits::Slots,
}

impl InFlight {
    fn new(limits: crate::limits::ApiLimits) -> Self {
        Self {
            reads: wharf_limits::Slots::new("api_requests_in_flight", limits.requests_in_flight),
            writes: wharf_limits::Slots::new("api_mutating_requests_in_flight", limits.mutating_in_flight),
        }
    }
}

async fn limit_in_flight(State(in_flight): State<InFlight>, request: Request, next: Next) -> Response {
    let is_watch = request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    if is_watch {
        return next.run(request).await;
    }
    let slots = if request.method() == axum::http::Method::GET { &in_flight.reads } else { &in_flight.writes };
    let Some(_slot) = slots.take(format_args!("answered {} {} with 429", request.method(), request.uri().path())) else {
        return ApiError::TooManyRequests.into_response();
    };
    next.run(request).await
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

fn openapi_document(doc: Option<bytes::Bytes>) -> Response {
    match doc {
        Some(doc) => ([(header::CONTENT_TYPE, "application/json")], doc).into_response(),
        None => ApiError::NoRoute.into_response(),
    }
}

/// JSON only: kubectl asks for protobuf and, refused, computes its apply
/// patches from its compiled-in types (see `openapi.rs`).
fn openapi_v2(headers: &HeaderMap) -> Response {
    let accept = header_str(headers, header::ACCEPT);
    if accept.contains("protobuf") && !accept.contains("json") {
        return (StatusCode::NOT_ACCEPTABLE, "only application/json is served").into_response();
    }
    openapi_document(Some(openapi::v2()))
}

fn router(app: App, limits: crate::limits::ApiLimits, ui: Option<Router>) -> Router {
    let in_flight = InFlight::new(limits);
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
        .route("/openapi/v2", get(|headers: HeaderMap| async move { openapi_v2(&headers) }))
        .route("/openapi/v3", get(|| async { json_response(StatusCode::OK, &openapi::index()) }))
        .route("/openapi/v3/{*path}", get(|Path(p): Path<String>| async move { openapi_document(openapi::group_version(&p)) }))
        .route("/api/v1/namespaces/{namespace}/pods/{name}/exec", get(crate::remote::exec).post(crate::remote::exec))
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/portforward",
            get(crate::portforward::portforward).post(crate::portforward::portforward),
        )
        .route("/apis/wharf.dev/v1/nodes/{node}/tunnel", get(crate::remote::tunnel))
        .route("/apis/wharf.dev/v1/nodes/{node}/sessions/{id}", get(crate::remote::session))
        .route("/apis/wharf.dev/v1/nodecertificaterequests", post(crate::nodecert::create))
        .route("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", post(review::self_subject_access))
        .route("/apis/authorization.k8s.io/v1/subjectaccessreviews", post(review::subject_access))
        .route("/apis/authorization.k8s.io/v1/namespaces/{namespace}/localsubjectaccessreviews", post(review::local_subject_access))
        .route("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", post(review::self_subject_rules))
        .route("/apis/authentication.k8s.io/v1/selfsubjectreviews", post(review::self_subject))
        .nest_service("/ui", ui.unwrap_or_else(|| Router::new().fallback(|| async { ApiError::NoRoute.into_response() })))
        .fallback(handlers::resource)
        .layer(middleware::from_fn_with_state(in_flight, limit_in_flight))
        .layer(middleware::from_fn_with_state(app.clone(), authz::authorize))
        .layer(middleware::from_fn_with_state(app.clone(), authn::authenticate))
        .layer(middleware::from_fn_with_state(app.clone(), crate::metrics::observe))
        .layer(DefaultBodyLimit::max(crate::limits::MAX_REQUEST_BODY_BYTES))
        .with_state(app)
}

/// How long requests in flight may take to finish once shutdown begins.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds the listener and serves until `app.shutdown` is cancelled; then
/// stops accepting, ends watches, lets requests in flight finish (for up to
/// `SHUTDOWN_GRACE`) and the task ends.
pub async fn serve(config: ApiServerConfig, app: App, creds: &Credentials) -> Result<RunningApiServer, ServeError> {
    let acceptor = TlsAcceptor::from(Arc::new(tls_config(creds, &app)?));
    let listener = TcpListener::bind(config.listen).await.map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let token = app.shutdown.clone();
    let limits = config.limits;
    let auth = app.auth.clone();
    let router = router(app, limits, config.ui);
    let task = tokio::spawn(async move {
        // Nothing is authorized from half a policy: the connections wait in
        // the backlog until the RBAC objects are all in.
        tokio::select! {
            _ = token.cancelled() => return,
            _ = auth.policy.synced() => {}
        }
        let graceful = GracefulShutdown::new();
        let connections = wharf_limits::Slots::new("api_connections", limits.connections);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = token.cancelled() => break,
                accepted = wharf_limits::accept(&listener, "API server") => accepted,
            };
            let Some(slot) = connections.take(format_args!("closed an API connection from {peer}")) else { continue };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let router = router.clone();
            let auth = auth.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _slot = slot;
                let tls = match tokio::time::timeout(crate::limits::TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        wharf_limits::reached(
                            "api_tls_handshake",
                            format!("{:?}", crate::limits::TLS_HANDSHAKE_TIMEOUT),
                            &format!("dropped {peer}"),
                        );
                        return;
                    }
                };
                let identity = auth.authenticator.peer(peer, tls.get_ref().1.peer_certificates());
                let service = TowerToHyperService::new(router.map_request(move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(identity.clone());
                    request
                }));
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http1().timer(TokioTimer::new()).header_read_timeout(crate::limits::HEADER_READ_TIMEOUT);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .keep_alive_interval(crate::limits::H2_PING_INTERVAL)
                    .keep_alive_timeout(crate::limits::H2_PING_TIMEOUT);
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
