//! The userspace data plane: a listener per frontend, carrying TCP
//! connections and UDP flows to the endpoints a service port may use.
//! Endpoint changes swap the backend sets under running listeners;
//! listeners start and stop only when frontends change.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Duration;

use tokio::net::{TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;
use wharf_api::node_status::EndpointTraffic;
use wharf_kube::ObjectKey;

use crate::accept::{self, Acceptor, Listening};
use crate::balancer::{self, ActiveGuard, Affinity, Backend};
pub use crate::claims::{Applied, Conflict, Owner};
use crate::claims::{Claim, Claims, FrontendKey};
use crate::metrics::{PortMetrics, ProxyMetrics};
use crate::model::{Frontend, Lane, Protocol, ServicePort, ServicePortName};
use crate::{copy, udp};

/// How long connecting to one endpoint may take before trying another.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Endpoints tried per connection at most.
const CONNECT_ATTEMPTS: usize = 3;

/// The live state of one service port on this node.
pub struct PortState {
    sets: RwLock<BackendSets>,
    /// Backends out of every lane that wait out the drain timeout, their
    /// open connections going on meanwhile: none but while a change
    /// drains. (A set of every backend held each address a second time.)
    leaving: Mutex<Vec<Arc<Backend>>>,
    affinity: RwLock<Option<Arc<Affinity>>>,
    /// Its name, and its series once it has any.
    metrics: PortMetrics,
}

/// The backends of each lane (scope and family), by `Lane::index`: read
/// for every connection and datagram.
#[derive(Clone)]
struct BackendSets([Backends; 4]);

impl Default for BackendSets {
    fn default() -> Self {
        BackendSets(std::array::from_fn(|_| NO_BACKENDS.clone()))
    }
}

/// One lane's backends. Most lanes of most ports are empty (a port has
/// one family, and few endpoints are on this node): those share one.
type Backends = Arc<[Arc<Backend>]>;

static NO_BACKENDS: LazyLock<Backends> = LazyLock::new(|| Arc::new([]));

fn backends_of(set: Vec<Arc<Backend>>) -> Backends {
    if set.is_empty() {
        NO_BACKENDS.clone()
    } else {
        set.into()
    }
}

/// The lanes' sets, a set equal to an earlier lane's sharing its copy: under
/// the Cluster traffic policies, external traffic reaches the same
/// endpoints as internal, and a copy would be 8 bytes more an endpoint.
fn shared_lanes(mut sets: [Backends; 4]) -> [Backends; 4] {
    let same = |a: &Backends, b: &Backends| a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| Arc::ptr_eq(x, y));
    for later in 1..sets.len() {
        if let Some(earlier) = (0..later).find(|&earlier| same(&sets[earlier], &sets[later])) {
            sets[later] = sets[earlier].clone();
        }
    }
    sets
}

impl PortState {
    fn new(name: ServicePortName, metrics: &Arc<ProxyMetrics>) -> Arc<Self> {
        Arc::new(PortState {
            metrics: PortMetrics::new(metrics, name),
            sets: RwLock::default(),
            leaving: Mutex::default(),
            affinity: RwLock::default(),
        })
    }

    /// Drops this port's metric series: the port is gone.
    fn forget_metrics(&self) {
        let endpoints: Vec<SocketAddr> = self.held(&self.leaving()).into_keys().collect();
        self.metrics.forget(endpoints);
    }

    fn leaving(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Backend>>> {
        self.leaving.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every backend this port holds, by address: those of its lanes and
    /// those `leaving`.
    fn held(&self, leaving: &[Arc<Backend>]) -> HashMap<SocketAddr, Arc<Backend>> {
        let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
        sets.0.iter().flat_map(|set| set.iter()).chain(leaving).map(|backend| (backend.addr(), backend.clone())).collect()
    }

    pub fn backends(&self, lane: Lane) -> Backends {
        let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
        sets.0[lane.index()].clone()
    }

    pub fn affinity(&self) -> Option<Arc<Affinity>> {
        self.affinity.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn name(&self) -> &ServicePortName {
        self.metrics.name()
    }

    /// `namespace/service:port`, as logs and metrics name it.
    pub fn label(&self) -> String {
        self.name().to_string()
    }

    pub fn metrics(&self) -> &PortMetrics {
        &self.metrics
    }

    fn is_usable(&self, addr: SocketAddr) -> bool {
        let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
        sets.0.iter().flat_map(|set| set.iter()).any(|b| b.addr() == addr)
    }

    /// Installs the usable endpoints of `port` on node `node`. Endpoints
    /// that leave get no new connections at once; their open connections
    /// are closed after `drain` unless they came back meanwhile (never,
    /// if `drain` is zero).
    fn update(self: &Arc<Self>, port: &ServicePort, node: &str, drain: Duration, affinity_entries: usize, runtime: &Handle) {
        // Held throughout, as by a drain timer: what leaves and what comes
        // back are decided against one state of the lanes.
        let mut leaving = self.leaving();
        let was_leaving: HashSet<SocketAddr> = leaving.iter().map(|b| b.addr()).collect();
        // A backend that stays, or comes back while draining, is the one
        // held: its connection count and counters go on.
        let mut held = self.held(&leaving);
        let mut get = |addr: SocketAddr| held.entry(addr).or_insert_with(|| Backend::new(addr)).clone();
        let sets = shared_lanes(Lane::ALL.map(|lane| backends_of(port.usable_in(lane, node).iter().map(|e| get(e.addr)).collect())));
        // What is held and in no lane now has left.
        for backend in sets.iter().flat_map(|set| set.iter()) {
            held.remove(&backend.addr());
        }
        let gone: Vec<Arc<Backend>> = held.into_values().collect();
        *self.sets.write().unwrap_or_else(|p| p.into_inner()) = BackendSets(sets);
        if drain.is_zero() {
            for backend in &gone {
                self.metrics.forget_endpoint(backend.addr());
            }
            leaving.clear();
        } else {
            for backend in gone.iter().filter(|b| !was_leaving.contains(&b.addr())) {
                let (state, addr) = (self.clone(), backend.addr());
                runtime.spawn(async move {
                    tokio::time::sleep(drain).await;
                    state.drained(addr);
                });
            }
            *leaving = gone;
        }
        drop(leaving);
        let mut affinity = self.affinity.write().unwrap_or_else(|p| p.into_inner());
        match (port.affinity, affinity.is_some()) {
            (Some(timeout), false) => *affinity = Some(Arc::new(Affinity::new(timeout, affinity_entries))),
            (None, true) => *affinity = None,
            _ => {}
        }
    }

    /// The drain timeout of the endpoint at `addr` has passed: unless it
    /// came back, its open connections close.
    fn drained(&self, addr: SocketAddr) {
        let mut leaving = self.leaving();
        if self.is_usable(addr) {
            return;
        }
        let Some(at) = leaving.iter().position(|b| b.addr() == addr) else { return };
        let gone = leaving.swap_remove(at);
        drop(leaving);
        self.metrics.forget_endpoint(addr);
        gone.close();
    }

    /// The traffic of this port's endpoints that have carried any.
    fn traffic(&self, into: &mut Vec<EndpointTraffic>) {
        for backend in self.held(&self.leaving()).values() {
            let Some(counters) = backend.counters_if_used() else { continue };
            let last_error = counters.last_error();
            into.push(EndpointTraffic {
                service_port: self.label(),
                endpoint: backend.addr().to_string(),
                connections: counters.connections.get(),
                active: counters.active.get(),
                bytes_to_endpoint: counters.to_endpoint.get(),
                bytes_to_client: counters.to_client.get(),
                connect_errors: counters.connect_errors.get(),
                last_error_at: last_error.as_ref().map(|(_, at)| at.to_string()),
                last_error: last_error.map(|(error, _)| error),
            });
        }
    }

    /// Chooses an endpoint for `client`: its affinity if any, else by
    /// least connections of two random choices, skipping `tried`.
    pub fn choose(&self, lane: Lane, client: std::net::IpAddr, tried: &[SocketAddr]) -> Option<Arc<Backend>> {
        let backends = self.backends(lane);
        if tried.is_empty() {
            if let Some(sticky) = self.affinity().and_then(|a| a.lookup(client, &backends)) {
                return Some(sticky);
            }
        }
        balancer::pick(&backends, tried)
    }
}

/// Refuses a connection with a reset: nothing to send it to.
fn reset(client: impl std::os::fd::AsFd) {
    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
    drop(client);
}

async fn connect(state: &PortState, lane: Lane, client: SocketAddr) -> Option<(TcpStream, Arc<Backend>)> {
    let mut tried = Vec::new();
    while tried.len() < CONNECT_ATTEMPTS {
        let backend = state.choose(lane, client.ip(), &tried)?;
        let failure = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend.addr())).await {
            Ok(Ok(stream)) => return Some((stream, backend)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
        };
        state.metrics.series().connect_failed.inc();
        backend.counters(&state.metrics).connect_failed(failure);
        tried.push(backend.addr());
    }
    None
}

async fn serve_tcp(state: Arc<PortState>, lane: Lane, mut client: TcpStream, peer: SocketAddr, timeouts: copy::Timeouts) {
    let series = state.metrics.series();
    // TCP_NODELAY comes with the listening socket.
    let Some((mut upstream, backend)) = connect(&state, lane, peer).await else {
        series.no_endpoint.inc();
        reset(client);
        return;
    };
    let _ = upstream.set_nodelay(true);
    if let Some(affinity) = state.affinity() {
        affinity.remember(peer.ip(), backend.addr());
    }
    let counters = backend.counters(&state.metrics);
    counters.connections.inc();
    counters.active.inc();
    series.active.inc();
    let _guard = ActiveGuard::new(backend.clone());
    let closed = backend.closed(&state.metrics);
    let drained = closed.cancelled();
    tokio::select! {
        copied = copy::bidirectional(&mut client, &mut upstream, timeouts) => {
            series.to_endpoint.inc_by(copied.sent);
            series.to_client.inc_by(copied.received);
            counters.to_endpoint.inc_by(copied.sent);
            counters.to_client.inc_by(copied.received);
            if let Some(cut) = copied.cut {
                series.cut(cut).inc();
            }
        }
        _ = drained => {
            series.drained.inc();
        }
    }
    series.active.dec();
    counters.active.dec();
}

/// The bounds of the data plane.
#[derive(Clone, Copy, Debug)]
pub struct ProxyLimits {
    /// Open connections to a removed endpoint are closed after this; zero
    /// keeps them until they end.
    pub drain: Duration,
    /// UDP flows without traffic for this long are forgotten.
    pub udp_idle: Duration,
    pub tcp: copy::Timeouts,
    /// Proxied TCP connections open at once, over all frontends.
    pub connections: usize,
    /// ... and through one frontend.
    pub connections_per_frontend: usize,
    /// UDP flows (each with its own upstream socket) at once, over all
    /// frontends; the oldest flow of a frontend makes room for a new one.
    pub udp_flows: usize,
    /// ClientIP affinity entries per service port (oldest evicted).
    pub affinity_entries: usize,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        Self {
            drain: Duration::from_secs(300),
            udp_idle: Duration::from_secs(60),
            tcp: copy::Timeouts::default(),
            connections: 4096,
            connections_per_frontend: 1024,
            udp_flows: 4096,
            affinity_entries: 65_536,
        }
    }
}

/// What the connections of one TCP frontend share.
struct TcpFrontend {
    state: Arc<PortState>,
    lane: Lane,
    own: wharf_limits::Slots,
    /// One copy for every frontend: 80 bytes a frontend less.
    all: Arc<TcpShared>,
}

/// What the connections of every TCP frontend share.
struct TcpShared {
    slots: wharf_limits::Slots,
    timeouts: copy::Timeouts,
    connections: TaskTracker,
    /// Workers to hand connections to, in turn.
    workers: Arc<[Handle]>,
    next: AtomicUsize,
}

impl accept::Accepted for TcpFrontend {
    /// Hands an accepted connection to the next worker in turn.
    fn accepted(&self, client: std::net::TcpStream, peer: SocketAddr) {
        let shared = &*self.all;
        let (Some(own), Some(all)) = (self.own.take(format_args!("reset {peer}")), shared.slots.take(format_args!("reset {peer}"))) else {
            reset(client);
            return;
        };
        let (state, lane, timeouts) = (self.state.clone(), self.lane, shared.timeouts);
        let worker = &shared.workers[shared.next.fetch_add(1, Ordering::Relaxed) % shared.workers.len()];
        shared.connections.spawn_on(
            async move {
                let _slots = (own, all);
                match TcpStream::from_std(client) {
                    Ok(client) => serve_tcp(state, lane, client, peer, timeouts).await,
                    Err(e) => tracing::warn!(error = %e, "service proxy: taking a connection on a worker failed"),
                }
            },
            worker,
        );
    }
}

/// A frontend's one listening socket. One socket per frontend, not one
/// per worker: open files grow with frontends alone (see ARCHITECTURE.md).
fn bind_tcp(addr: SocketAddr, freebind: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = frontend_socket(addr, socket2::Type::STREAM, freebind)?;
    socket.set_reuse_address(true)?;
    // Inherited by every accepted connection: one system call less each.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

fn bind_udp(addr: SocketAddr, freebind: bool) -> std::io::Result<std::net::UdpSocket> {
    let socket = frontend_socket(addr, socket2::Type::DGRAM, freebind)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A non-blocking socket for a frontend. An IPv6 cluster IP is on no
/// interface, only in a `local` route on `lo` (see `localroute`), and
/// Linux binds such an IPv6 address only with IPV6_FREEBIND (`freebind`;
/// an IPv4 one in 127/8 needs nothing). Without the route the bind fails
/// and the frontend is reported as not served.
fn frontend_socket(addr: SocketAddr, kind: socket2::Type, freebind: bool) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), kind, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(freebind)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// A frontend's listening socket: a TCP one in its worker's acceptor, a
/// UDP one with its task.
enum Listener {
    Tcp { worker: usize, listening: Listening },
    Udp(tokio::task::JoinHandle<()>),
}

impl Listener {
    fn is_running(&self) -> bool {
        match self {
            Listener::Tcp { .. } => true,
            Listener::Udp(task) => !task.is_finished(),
        }
    }

    fn stop(self, acceptors: &[Acceptor<TcpFrontend>]) {
        match self {
            Listener::Tcp { worker, listening } => acceptors[worker].remove(listening),
            Listener::Udp(task) => task.abort(),
        }
    }
}

/// All listeners of this node and the ports they serve.
pub struct Dataplane {
    /// One single-threaded runtime per worker thread.
    workers: Arc<[Handle]>,
    node: String,
    limits: ProxyLimits,
    metrics: Arc<ProxyMetrics>,
    /// Each service's ports: an update looks at its own, never at every
    /// service's.
    ports: HashMap<ObjectKey, Box<[Arc<PortState>]>>,
    claims: Claims,
    /// Each worker's TCP listeners (`accept.rs`).
    acceptors: Vec<Acceptor<TcpFrontend>>,
    listeners: HashMap<FrontendKey, Listener>,
    /// What every TCP frontend's connections share (the tracker of
    /// every proxied connection, for shutdown to wait for them).
    tcp: Arc<TcpShared>,
    udp_flows: wharf_limits::Slots,
    /// Ranges made local on `lo`: their addresses bind with IPV6_FREEBIND.
    local_ranges: Vec<ipnet::IpNet>,
}

impl Dataplane {
    pub fn new(
        workers: Vec<Handle>,
        node: String,
        limits: ProxyLimits,
        metrics: ProxyMetrics,
        local_ranges: Vec<ipnet::IpNet>,
    ) -> std::io::Result<Self> {
        let acceptors = workers.iter().map(|worker| Acceptor::start(worker, "service proxy")).collect::<std::io::Result<_>>()?;
        let workers: Arc<[Handle]> = workers.into();
        let tcp = Arc::new(TcpShared {
            slots: wharf_limits::Slots::new("proxy_connections", limits.connections),
            timeouts: limits.tcp,
            connections: TaskTracker::new(),
            workers: workers.clone(),
            next: AtomicUsize::new(0),
        });
        Ok(Self {
            acceptors,
            local_ranges,
            workers,
            tcp,
            node,
            limits,
            metrics: Arc::new(metrics),
            ports: HashMap::new(),
            claims: Claims::default(),
            listeners: HashMap::new(),
            udp_flows: wharf_limits::Slots::new("proxy_udp_flows", limits.udp_flows),
        })
    }

    /// The open connections (for shutdown).
    pub fn connections(&self) -> TaskTracker {
        self.tcp.connections.clone()
    }

    /// Stops every listener; open connections go on.
    pub fn stop_listening(&mut self) {
        for (_, listener) in self.listeners.drain() {
            listener.stop(&self.acceptors);
        }
        self.claims.clear();
    }

    fn freebind(&self, addr: SocketAddr) -> bool {
        self.local_ranges.iter().any(|r| r.contains(&addr.ip()))
    }

    /// Listening sockets open (one per frontend).
    pub fn listening(&self) -> usize {
        self.listeners.len()
    }

    /// The worker a frontend's listener is on: spread by address.
    fn worker_for(&self, addr: SocketAddr) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&addr, &mut hasher);
        (std::hash::Hasher::finish(&hasher) % self.workers.len() as u64) as usize
    }

    /// Every endpoint's traffic on this node (those that carried any).
    pub fn traffic(&self) -> Vec<EndpointTraffic> {
        let mut traffic = Vec::new();
        for port in self.ports.values().flatten() {
            port.traffic(&mut traffic);
        }
        traffic
    }

    /// Service ports known.
    pub fn service_ports(&self) -> usize {
        self.ports.values().map(|ports| ports.len()).sum()
    }

    /// Brings one service's listeners and endpoints to `ports`.
    pub fn apply(&mut self, owner: Owner, ports: &[ServicePort]) -> Applied {
        let mut applied = Applied::default();
        let mut wanted: Vec<FrontendKey> = Vec::new();
        let previous = self.ports.remove(&owner.service).unwrap_or_default();
        let mut states: Vec<Arc<PortState>> = Vec::with_capacity(ports.len());
        for port in ports {
            let state = match states.iter().chain(previous.iter()).find(|state| *state.name() == port.name) {
                Some(held) => held.clone(),
                None => PortState::new(port.name.clone(), &self.metrics),
            };
            if !states.iter().any(|held| Arc::ptr_eq(held, &state)) {
                states.push(state.clone());
            }
            state.update(port, &self.node, self.limits.drain, self.limits.affinity_entries, &self.workers[0]);
            for frontend in &port.frontends {
                let key = (frontend.addr, frontend.protocol);
                match self.claims.claim(&owner, &port.name, frontend) {
                    Claim::Refused(conflict) => {
                        applied.conflicts.push(conflict);
                        continue;
                    }
                    Claim::Held if self.listeners.get(&key).is_some_and(Listener::is_running) => {}
                    Claim::Held | Claim::Granted { .. } => {
                        if let Some(listener) = self.listeners.remove(&key) {
                            listener.stop(&self.acceptors);
                        }
                        match self.start_listener(frontend, &state) {
                            Ok(listener) => {
                                self.listeners.insert(key, listener);
                            }
                            Err(e) => {
                                tracing::warn!(service = %state.label(), addr = %frontend.addr, error = %e, "cannot listen");
                                applied.bind_failures.push((key, e.to_string()));
                            }
                        }
                    }
                }
                wanted.push(key);
            }
        }
        for key in self.claims.settle(&owner.service, wanted, &mut applied) {
            if let Some(listener) = self.listeners.remove(&key) {
                listener.stop(&self.acceptors);
            }
        }
        for gone in previous.iter().filter(|held| !states.iter().any(|state| Arc::ptr_eq(state, held))) {
            gone.forget_metrics();
        }
        if !states.is_empty() {
            self.ports.insert(owner.service, states.into_boxed_slice());
        }
        applied
    }

    fn start_listener(&self, frontend: &Frontend, state: &Arc<PortState>) -> std::io::Result<Listener> {
        let worker = self.worker_for(frontend.addr);
        match frontend.protocol {
            Protocol::Tcp => {
                let socket = bind_tcp(frontend.addr, self.freebind(frontend.addr))?;
                let to = Arc::new(TcpFrontend {
                    state: state.clone(),
                    lane: frontend.lane(),
                    own: wharf_limits::Slots::new("proxy_connections_per_frontend", self.limits.connections_per_frontend),
                    all: self.tcp.clone(),
                });
                Ok(Listener::Tcp { worker, listening: self.acceptors[worker].add(socket, to)? })
            }
            Protocol::Udp => {
                let handle = &self.workers[worker];
                let _entered = handle.enter();
                let socket = Arc::new(UdpSocket::from_std(bind_udp(frontend.addr, self.freebind(frontend.addr))?)?);
                let flows = udp::Flows::new(self.limits.udp_idle, self.udp_flows.clone());
                Ok(Listener::Udp(handle.spawn(udp::frontend(socket, state.clone(), frontend.lane(), flows))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, ServicePort};

    #[tokio::test]
    async fn a_port_costs_little_until_it_carries_traffic() {
        let metrics = Arc::new(ProxyMetrics::default());
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let name = ServicePortName { namespace: "default".into(), service: "web".into(), port: "http".into() };
        let state = PortState::new(name.clone(), &metrics);
        // 360 bytes when each port kept its own copy of the metric families.
        // It was 256 (272, the 320-byte class) with a set of every backend,
        // 224 (240: the 256-byte class) with its name and its label apart.
        // Now 216 with its Arc's counts: the 224-byte class.
        assert!(std::mem::size_of::<PortState>() <= 208, "{} bytes", std::mem::size_of::<PortState>());
        // One per endpoint: 72 bytes when its counters and drain signal were
        // kept apart, 56 with a whole `SocketAddr`, 40 with a `OnceLock`.
        assert!(std::mem::size_of::<Backend>() <= 32, "{} bytes", std::mem::size_of::<Backend>());
        let endpoint =
            Endpoint { addr: "127.0.0.9:80".parse().unwrap(), ready: true, serving: true, terminating: false, node: Some("n2".into()) };
        let port =
            ServicePort { name, frontends: vec![], endpoints: vec![endpoint], affinity: None, internal_local: false, external_local: true };
        state.update(&port, "n1", Duration::ZERO, 16, &Handle::current());

        let addrs = |lane: Lane| state.backends(lane).iter().map(|b| b.addr()).collect::<Vec<_>>();
        assert_eq!(addrs(Lane::ALL[0]), vec![port.endpoints[0].addr], "cluster-wide IPv4 traffic reaches the endpoint");
        for lane in &Lane::ALL[1..] {
            assert!(Arc::ptr_eq(&state.backends(*lane), &NO_BACKENDS), "an empty lane shares the one empty set: {lane:?}");
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(!text.contains("default/web:http"), "no series before traffic: {text}");
        assert_eq!(state.label(), "default/web:http");

        // Cluster-wide external traffic too: both lanes hold one set.
        let cluster = ServicePort { external_local: false, ..port };
        state.update(&cluster, "n1", Duration::ZERO, 16, &Handle::current());
        let (internal, external) = (state.backends(Lane::ALL[0]), state.backends(Lane::ALL[2]));
        assert_eq!(addrs(Lane::ALL[2]), vec![cluster.endpoints[0].addr]);
        assert!(Arc::ptr_eq(&internal, &external), "equal lanes share one set");
    }

    #[tokio::test]
    async fn a_service_update_keeps_its_own_ports_and_touches_no_other() {
        let mut dataplane =
            Dataplane::new(vec![Handle::current()], "n1".into(), ProxyLimits::default(), ProxyMetrics::default(), vec![]).unwrap();
        let owner = |service: &str| Owner { service: ObjectKey::new("default", service), created: None };
        let port = |service: &str, port: &str| ServicePort {
            name: ServicePortName { namespace: "default".into(), service: service.into(), port: port.into() },
            frontends: vec![],
            endpoints: vec![],
            affinity: None,
            internal_local: false,
            external_local: false,
        };
        dataplane.apply(owner("web"), &[port("web", "http"), port("web", "metrics")]);
        dataplane.apply(owner("db"), &[port("db", "sql")]);
        let held = |dataplane: &Dataplane, service: &str| dataplane.ports[&ObjectKey::new("default", service)].to_vec();
        let (http, sql) = (held(&dataplane, "web")[0].clone(), held(&dataplane, "db")[0].clone());
        assert_eq!(dataplane.service_ports(), 3);

        dataplane.apply(owner("web"), &[port("web", "http")]);
        assert_eq!(dataplane.service_ports(), 2, "the port the service no longer has is gone");
        assert!(Arc::ptr_eq(&held(&dataplane, "web")[0], &http), "the port it keeps is the state held: its counters go on");
        assert!(Arc::ptr_eq(&held(&dataplane, "db")[0], &sql), "another service's port is untouched");
        dataplane.apply(owner("web"), &[]);
        assert!(!dataplane.ports.contains_key(&ObjectKey::new("default", "web")) && dataplane.service_ports() == 1);
    }

    #[tokio::test]
    async fn a_leaving_endpoint_drains_unless_it_comes_back() {
        let metrics = Arc::new(ProxyMetrics::default());
        let name = ServicePortName { namespace: "default".into(), service: "web".into(), port: "http".into() };
        let state = PortState::new(name.clone(), &metrics);
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 9], port));
        let port_of = |ports: &[u16]| ServicePort {
            name: name.clone(),
            frontends: vec![],
            endpoints: ports
                .iter()
                .map(|p| Endpoint { addr: at(*p), ready: true, serving: true, terminating: false, node: None })
                .collect(),
            affinity: None,
            internal_local: false,
            external_local: false,
        };
        let (lane, drain) = (Lane::ALL[0], Duration::from_millis(100));
        let update = |ports: &[u16]| state.update(&port_of(ports), "n1", drain, 16, &Handle::current());
        update(&[1, 2]);
        let backend = |addr| state.backends(lane).iter().find(|b| b.addr() == addr).cloned().unwrap();
        let (one, two) = (backend(at(1)), backend(at(2)));
        let (one_closed, two_closed) = (one.closed(state.metrics()), two.closed(state.metrics()));

        update(&[]);
        assert!(state.backends(lane).is_empty(), "no new connections to a leaving endpoint");
        assert_eq!(state.held(&state.leaving()).len(), 2, "both drain");
        update(&[1]);
        assert!(Arc::ptr_eq(&backend(at(1)), &one), "one that comes back is the backend held: its connections count on");
        assert_eq!(state.leaving().len(), 1);
        update(&[1]);
        tokio::time::sleep(drain * 3).await;
        assert!(two_closed.is_cancelled(), "the drain timeout passed: its connections close");
        assert!(!one_closed.is_cancelled(), "it came back: its connections go on");
        assert!(state.leaving().is_empty(), "a drained backend is let go");
    }
}
