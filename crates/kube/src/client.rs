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

use std::sync::Arc;
use std::time::Duration;

use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::retry::RetryPolicy;
use kube::client::ConfigExt;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
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
    #[error("client certificate: {0}")]
    Identity(String),
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
    build_on(config, https)
}

/// A client certificate that can be replaced while clients use it: a node
/// renews its own, and its clients' next connections present the new one.
#[derive(Debug)]
pub struct ClientIdentity(std::sync::RwLock<Arc<CertifiedKey>>);

fn certified_key(provider: &CryptoProvider, cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, ClientError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| ClientError::Identity(format!("{what}: {e}"));
    let chain = rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| bad("certificate", &e))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_bytes()).map_err(|e| bad("key", &e))?;
    let key = key.ok_or_else(|| ClientError::Identity("no private key in the PEM".into()))?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, provider).map_err(|e| bad("certificate and key", &e))?))
}

impl ClientIdentity {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Arc<Self>, ClientError> {
        Ok(Arc::new(Self(std::sync::RwLock::new(certified_key(&provider(), cert_pem, key_pem)?))))
    }

    /// Presents `cert_pem` (with `key_pem`) from the next connection on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str) -> Result<(), ClientError> {
        let key = certified_key(&provider(), cert_pem, key_pem)?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
        Ok(())
    }
}

fn provider() -> CryptoProvider {
    CryptoProvider::get_default().map(|p| (**p).clone()).unwrap_or_else(rustls::crypto::aws_lc_rs::default_provider)
}

impl ResolvesClientCert for ClientIdentity {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The first certificate of a PEM text, as DER (kube's `root_cert`).
pub fn pem_to_der(pem: &str) -> Result<Vec<u8>, ClientError> {
    let first = rustls_pemfile::certs(&mut pem.as_bytes()).next();
    let cert = first.ok_or_else(|| ClientError::Identity("no certificate in the PEM".into()))?;
    Ok(cert.map_err(|e| ClientError::Identity(format!("CA: {e}")))?.to_vec())
}

/// A client of `server` (trusting the PEM `ca_pem`) that authenticates
/// with `identity`.
pub fn with_identity(server: &str, ca_pem: &str, identity: Arc<ClientIdentity>) -> Result<kube::Client, ClientError> {
    let uri: http::Uri = server.parse().map_err(|e| ClientError::Identity(format!("server {server:?}: {e}")))?;
    let mut config = kube::Config::new(uri);
    config.root_cert = Some(vec![pem_to_der(ca_pem)?]);
    let mut tls = config.rustls_client_config()?;
    tls.client_auth_cert_resolver = identity;
    // A resumed TLS session carries the certificate of the session it
    // resumes: without resumption every connection presents the current one.
    tls.resumption = rustls::client::Resumption::disabled();
    let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(connector());
    build_on(config, https)
}

/// The most a connection buffers of what it reads (hyper's minimum is 8 KiB).
const READ_BUFFER_CAP: usize = 64 << 10;

fn build_on(config: kube::Config, https: hyper_rustls::HttpsConnector<HttpConnector>) -> Result<kube::Client, ClientError> {
    let mut timed = TimeoutConnector::new(https);
    timed.set_connect_timeout(config.connect_timeout);
    timed.set_read_timeout(config.read_timeout);
    timed.set_write_timeout(config.write_timeout);
    timed.set_reset_reader_on_write(config.reset_reader_on_write);
    // A connection's read buffer grows with what it reads and is kept while
    // the connection lives: at hyper's default cap (408 KiB) each watch that
    // once read a large list held that much for good. Bodies stream, so a
    // small cap costs only more reads of a long list.
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http1_max_buf_size(READ_BUFFER_CAP).build(timed);
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
