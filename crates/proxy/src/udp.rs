//! UDP through a service: a flow table from client address to endpoint.
//! Each flow has its own upstream socket, so replies find their client;
//! a flow whose endpoint is no longer usable is re-steered on its next
//! packet, and idle flows expire.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

use crate::balancer::Backend;
use crate::dataplane::PortState;
use crate::model::Scope;

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
    let replies = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        while let Ok(n) = reply_socket.recv(&mut buf).await {
            to_client.inc_by(n as u64);
            let _ = frontend.send_to(&buf[..n], client).await;
        }
    });
    backend.chosen.inc();
    Ok(Flow { backend, upstream, last: Instant::now(), replies })
}

pub async fn frontend(socket: Arc<UdpSocket>, state: Arc<PortState>, scope: Scope, idle: Duration) {
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut buf = vec![0u8; 65535];
    let mut sweep = tokio::time::interval(idle.max(Duration::from_secs(1)) / 2);
    let to_endpoint = state.metrics().to_endpoint.clone();
    loop {
        let (n, client) = tokio::select! {
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(_) => continue,
            },
            _ = sweep.tick() => {
                flows.retain(|_, f| f.last.elapsed() < idle);
                continue;
            }
        };
        let usable = state.backends(scope);
        let steer = match flows.get(&client) {
            Some(flow) => !usable.iter().any(|b| b.addr == flow.backend.addr),
            None => true,
        };
        if steer {
            flows.remove(&client);
            let Some(backend) = state.choose(scope, client.ip(), &[]) else {
                state.metrics().no_endpoint.inc();
                continue;
            };
            if let Some(affinity) = state.affinity() {
                affinity.remember(client.ip(), backend.addr);
            }
            match open_flow(socket.clone(), client, backend, &state).await {
                Ok(flow) => {
                    flows.insert(client, flow);
                }
                Err(_) => {
                    state.metrics().connect_failed.inc();
                    continue;
                }
            }
        }
        if let Some(flow) = flows.get_mut(&client) {
            flow.last = Instant::now();
            to_endpoint.inc_by(n as u64);
            let _ = flow.upstream.send(&buf[..n]).await;
        }
    }
}
