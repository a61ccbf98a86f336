//! The one way wharf's parts build a Kubernetes client: kube's own stack
//! (connect and write timeouts, retries of 429/503/504 with backoff, bearer
//! auth, a tracing span per request) on a connector with TCP_NODELAY and
//! TCP keepalive.
//!
//! Why not `kube::Client::try_from`: its connector leaves Nagle on, and a
//! request whose body goes out in a second TLS record then waits for the
//! server's delayed ACK (about 40 ms per write, measured here on every
//! create); and without keepalive a watch whose server vanished without a
//! FIN waits for data that never comes.

use std::time::Duration;

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::retry::RetryPolicy;
use kube::client::ConfigExt;
use tower::retry::RetryLayer;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

/// A connection idle this long is probed; after `KEEPALIVE_PROBES` probes
/// `KEEPALIVE_INTERVAL` apart go unanswered it is closed (about 19 s).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
pub const KEEPALIVE_PROBES: u32 = 3;
/// Data unacknowledged for this long closes the connection (TCP_USER_TIMEOUT).
pub const USER_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("building the client: {0}")]
    Build(#[from] kube::Error),
}

/// Turns on keepalive and the user timeout on a TCP connection to an API
/// server, so a peer that disappears silently is noticed in seconds.
pub fn tune_socket(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_INTERVAL).with_retries(KEEPALIVE_PROBES);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

fn connector() -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(KEEPALIVE_IDLE));
    http.set_keepalive_interval(Some(KEEPALIVE_INTERVAL));
    http.set_keepalive_retries(Some(KEEPALIVE_PROBES));
    http
}

/// A client for `config`, with kube's layers on wharf's connector.
pub fn build(config: kube::Config) -> Result<kube::Client, ClientError> {
    let https = config.rustls_https_connector_with_connector(connector())?;
    let mut timed = TimeoutConnector::new(https);
    timed.set_connect_timeout(config.connect_timeout);
    timed.set_read_timeout(config.read_timeout);
    timed.set_write_timeout(config.write_timeout);
    timed.set_reset_reader_on_write(config.reset_reader_on_write);
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(timed);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| RetryLayer::new(RetryPolicy::server_retry())))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .layer(TraceLayer::new_for_http().make_span_with(
            |req: &http::Request<kube::client::Body>| tracing::debug_span!("HTTP", http.method = %req.method(), http.url = %req.uri()),
        ))
        .map_err(tower::BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// A client from a kubeconfig's text.
pub async fn from_kubeconfig_text(text: &str) -> Result<kube::Client, ClientError> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(text)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    build(config)
}

/// A client from a kubeconfig whose server address is replaced by `server`
/// (an agent reaches its API servers through a local failover port).
pub async fn from_kubeconfig_text_at(text: &str, server: &str) -> Result<kube::Client, ClientError> {
    let mut kubeconfig = kube::config::Kubeconfig::from_yaml(text)?;
    for cluster in &mut kubeconfig.clusters {
        if let Some(c) = cluster.cluster.as_mut() {
            c.server = Some(server.to_string());
        }
    }
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    build(config)
}
