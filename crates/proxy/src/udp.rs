//! UDP through a service: a flow table from client address to endpoint.
//! Each flow has its own upstream socket, so replies find their client;
//! a flow whose endpoint is no longer usable is re-steered on its next
//! packet, and idle flows expire.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::OwnedSemaphorePermit;

use crate::balancer::Backend;
use crate::dataplane::PortState;
use crate::model::Lane;

struct Flow {
    backend: Arc<Backend>,
    upstream: Arc<UdpSocket>,
    last: Instant,
    replies: tokio::task::JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
    }
}

async fn open_flow(frontend: Arc<UdpSocket>, client: SocketAddr, backend: Arc<Backend>, state: &Arc<PortState>) -> std::io::Result<Flow> {
    let bind: SocketAddr = if backend.addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let upstream = Arc::new(UdpSocket::bind(bind).await?);
    upstream.connect(backend.addr).await?;
    let reply_socket = upstream.clone();
    let to_client = state.metrics().to_client.clone();
    let counters = backend.counters(state.metrics());
    let endpoint_to_client = counters.to_client.clone();
    let replies = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        while let Ok(n) = reply_socket.recv(&mut buf).await {
            to_client.inc_by(n as u64);
            endpoint_to_client.inc_by(n as u64);
            let _ = frontend.send_to(&buf[..n], client).await;
        }
    });
    counters.connections.inc();
    Ok(Flow { backend, upstream, last: Instant::now(), replies })
}

/// One frontend's flows, bounded: each flow holds one of the data plane's
/// UDP flow slots (each flow has its own upstream socket, so the bound is
/// also one of open files). A new client when none is free evicts this
/// frontend's least recently active tenth.
pub struct Flows {
    table: HashMap<SocketAddr, (Flow, OwnedSemaphorePermit)>,
    idle: Duration,
    slots: wharf_limits::Slots,
}

impl Flows {
    pub fn new(idle: Duration, slots: wharf_limits::Slots) -> Self {
        Self { table: HashMap::new(), idle, slots }
    }

    fn sweep(&mut self) {
        let idle = self.idle;
        self.table.retain(|_, (f, _)| f.last.elapsed() < idle);
    }

    /// A slot for a new flow, making room if need be.
    fn slot(&mut self, client: SocketAddr) -> Option<OwnedSemaphorePermit> {
        if let Some(slot) = self.slots.take(&format!("evicting flows for {client}")) {
            return Some(slot);
        }
        self.sweep();
        if !self.table.is_empty() {
            let mut by_age: Vec<(Instant, SocketAddr)> = self.table.iter().map(|(c, (f, _))| (f.last, *c)).collect();
            let evict = (by_age.len() / 10).max(1);
            by_age.select_nth_unstable(evict - 1);
            for (_, c) in &by_age[..evict] {
                self.table.remove(c);
            }
        }
        self.slots.take(&format!("dropped a packet from {client}"))
    }
}

/// How long a frontend waits after a failed receive before the next.
const RECV_BACKOFF: Duration = Duration::from_millis(10);

pub async fn frontend(socket: Arc<UdpSocket>, state: Arc<PortState>, lane: Lane, mut flows: Flows) {
    let mut buf = vec![0u8; 65535];
    let mut sweep = tokio::time::interval(flows.idle.max(Duration::from_secs(1)) / 2);
    let to_endpoint = state.metrics().to_endpoint.clone();
    loop {
        let (n, client) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP frontend receive failed");
                    tokio::time::sleep(RECV_BACKOFF).await;
                    continue;
                }
            },
            _ = sweep.tick() => {
                flows.sweep();
                continue;
            }
        };
        let usable = state.backends(lane);
        let steer = match flows.table.get(&client) {
            Some((flow, _)) => !usable.iter().any(|b| b.addr == flow.backend.addr),
            None => true,
        };
        if steer {
            let slot = match flows.table.remove(&client) {
                Some((_, slot)) => slot,
                None => match flows.slot(client) {
                    Some(slot) => slot,
                    None => continue,
                },
            };
            let Some(backend) = state.choose(lane, client.ip(), &[]) else {
                state.metrics().no_endpoint.inc();
                continue;
            };
            if let Some(affinity) = state.affinity() {
                affinity.remember(client.ip(), backend.addr);
            }
            match open_flow(socket.clone(), client, backend.clone(), &state).await {
                Ok(flow) => {
                    flows.table.insert(client, (flow, slot));
                }
                Err(e) => {
                    state.metrics().connect_failed.inc();
                    backend.counters(state.metrics()).connect_failed(e.to_string());
                    continue;
                }
            }
        }
        if let Some((flow, _)) = flows.table.get_mut(&client) {
            flow.last = Instant::now();
            to_endpoint.inc_by(n as u64);
            flow.backend.counters(state.metrics()).to_endpoint.inc_by(n as u64);
            let _ = flow.upstream.send(&buf[..n]).await;
        }
    }
}
