//! UDP through a service: a flow table from client address to endpoint.
//! Each flow has its own upstream socket, so replies find their client;
//! a flow whose endpoint is no longer usable is re-steered on its next
//! packet, and idle flows expire.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::OwnedSemaphorePermit;

use crate::balancer::Backend;
use crate::dataplane::PortState;
use crate::model::Lane;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

thread_local! {
    /// Where a datagram lands first: one buffer per thread, so that a
    /// waiting frontend or flow holds none of its own (64 KiB each, times
    /// every UDP service port and every flow).
    static LANDING: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_DATAGRAM].into_boxed_slice());
}

/// The next datagram on `socket`, received by `try_recv` into the thread's
/// landing buffer and copied out at its own length, with what `try_recv`
/// says of its sender.
async fn receive<T>(socket: &UdpSocket, try_recv: impl Fn(&UdpSocket, &mut [u8]) -> io::Result<(usize, T)>) -> io::Result<(Vec<u8>, T)> {
    loop {
        socket.readable().await?;
        let received = LANDING.with_borrow_mut(|buf| try_recv(socket, buf).map(|(n, from)| (buf[..n].to_vec(), from)));
        match received {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

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
    let bind: SocketAddr = if backend.addr().is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let upstream = Arc::new(UdpSocket::bind(bind).await?);
    upstream.connect(backend.addr()).await?;
    let reply_socket = upstream.clone();
    let to_client = state.metrics().series().to_client.clone();
    let counters = backend.counters(state.metrics());
    let endpoint_to_client = counters.to_client.clone();
    let replies = tokio::spawn(async move {
        while let Ok((reply, ())) = receive(&reply_socket, |s, buf| s.try_recv(buf).map(|n| (n, ()))).await {
            to_client.inc_by(reply.len() as u64);
            endpoint_to_client.inc_by(reply.len() as u64);
            let _ = frontend.send_to(&reply, client).await;
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
        if let Some(slot) = self.slots.take(format_args!("evicting flows for {client}")) {
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
        self.slots.take(format_args!("dropped a packet from {client}"))
    }
}

/// How long a frontend waits after a failed receive before the next.
const RECV_BACKOFF: Duration = Duration::from_millis(10);

pub async fn frontend(socket: Arc<UdpSocket>, state: Arc<PortState>, lane: Lane, mut flows: Flows) {
    let mut sweep = tokio::time::interval(flows.idle.max(Duration::from_secs(1)) / 2);
    loop {
        let (datagram, client) = tokio::select! {
            received = receive(&socket, |s, buf| s.try_recv_from(buf)) => match received {
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
            Some((flow, _)) => !usable.iter().any(|b| b.addr() == flow.backend.addr()),
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
                state.metrics().series().no_endpoint.inc();
                continue;
            };
            if let Some(affinity) = state.affinity() {
                affinity.remember(client.ip(), backend.addr());
            }
            match open_flow(socket.clone(), client, backend.clone(), &state).await {
                Ok(flow) => {
                    flows.table.insert(client, (flow, slot));
                }
                Err(e) => {
                    state.metrics().series().connect_failed.inc();
                    backend.counters(state.metrics()).connect_failed(e.to_string());
                    continue;
                }
            }
        }
        if let Some((flow, _)) = flows.table.get_mut(&client) {
            flow.last = Instant::now();
            let n = datagram.len() as u64;
            state.metrics().series().to_endpoint.inc_by(n);
            flow.backend.counters(state.metrics()).to_endpoint.inc_by(n);
            let _ = flow.upstream.send(&datagram).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn datagrams_come_out_whole_at_their_own_length() {
        let (a, b) = (UdpSocket::bind("127.0.0.1:0").await.unwrap(), UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let largest = vec![7u8; 65_507];
        a.send_to(&largest, b.local_addr().unwrap()).await.unwrap();
        a.send_to(b"hi", b.local_addr().unwrap()).await.unwrap();
        let (got, from) = receive(&b, |s, buf| s.try_recv_from(buf)).await.unwrap();
        assert_eq!((got.len(), from), (largest.len(), a.local_addr().unwrap()));
        assert!(got == largest);
        let (got, _) = receive(&b, |s, buf| s.try_recv_from(buf)).await.unwrap();
        assert_eq!((got.as_slice(), got.capacity()), (&b"hi"[..], 2), "a copy of its own size, not a landing buffer");
    }
}
