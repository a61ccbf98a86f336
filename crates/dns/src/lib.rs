//! Cluster DNS: the Kubernetes DNS-Based Service Discovery records of the
//! cluster zone, answered from an index that watch events keep current,
//! other names forwarded upstream.
//!
//! Layout, after hickory-dns: `index` (where answers come from, fed by
//! `watch`), `freshness` (which cached answers a change stales),
//! `resolve` (the spec's rules, pure), `wire` (the hot-path codec),
//! `server` (UDP and TCP transports), `forward` (upstreams), `metrics`.

pub mod batch;
pub mod encode;
pub mod forward;
pub mod freshness;
pub mod index;
pub mod metrics;
mod pods;
pub mod resolve;
pub mod server;
pub mod watch;
pub mod wire;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

pub use metrics::DnsMetrics;
pub use resolve::ZoneConfig;

#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// UDP and TCP address (`--dns-listen`).
    pub listen: SocketAddr,
    pub zone: ZoneConfig,
    /// Resolvers for other names; empty answers them REFUSED.
    pub upstreams: Vec<SocketAddr>,
    /// UDP worker threads, one socket each.
    pub workers: usize,
    /// Clients whose other names are forwarded (`--dns-recursion-cidrs`).
    pub recursion_from: Vec<ipnet::IpNet>,
    pub tcp: server::TcpLimits,
    /// The node this DNS runs on, where it publishes its state, and how
    /// often at most.
    pub node_name: String,
    pub status_every: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("--dns-listen {addr}: cannot bind: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A running DNS server; it stops when the token given to `start` is
/// cancelled.
pub struct RunningDns {
    pub index: Arc<RwLock<index::Index>>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Binds the sockets (failing with the flag's name), then serves.
pub async fn start(config: DnsConfig, client: kube::Client, metrics: DnsMetrics, token: CancellationToken) -> Result<RunningDns, DnsError> {
    let bind_error = |source| DnsError::Bind { addr: config.listen, source };
    let sockets = (0..config.workers.max(1)).map(|_| server::bind_udp(config.listen)).collect::<Result<Vec<_>, _>>().map_err(bind_error)?;
    let listener = tokio::net::TcpListener::bind(config.listen).await.map_err(bind_error)?;
    let index = Arc::new(RwLock::new(index::Index::default()));
    let forwarder = (!config.upstreams.is_empty()).then(|| Arc::new(forward::Forwarder::new(config.upstreams.clone())));
    let handler = Arc::new(server::Handler {
        index: index.clone(),
        zone: config.zone.clone(),
        forwarder,
        metrics: metrics.clone(),
        recursion_from: config.recursion_from.clone(),
    });
    let runtime = tokio::runtime::Handle::current();
    for (i, socket) in sockets.into_iter().enumerate() {
        let (handler, runtime, token) = (handler.clone(), runtime.clone(), token.clone());
        std::thread::Builder::new()
            .name(format!("wharf-dns-udp-{i}"))
            .spawn(move || server::udp_worker(handler, socket, runtime, token))
            .map_err(bind_error)?;
    }
    let (status_tx, status_rx) = tokio::sync::watch::channel(None);
    let tasks = vec![
        tokio::spawn(server::tcp_server(handler, listener, config.tcp, token.clone())),
        tokio::spawn(wharf_kube::node_status::publish(
            client.clone(),
            config.node_name.clone(),
            wharf_api::node_status::DNS_STATUS,
            status_rx,
            config.status_every,
            token.clone(),
        )),
        tokio::spawn(watch::follow(client, index.clone(), metrics, watch::StatusOut { every: config.status_every, to: status_tx }, token)),
    ];
    Ok(RunningDns { index, tasks })
}
