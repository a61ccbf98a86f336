//! The userspace data plane: a listener per frontend, carrying TCP
//! connections and UDP flows to the endpoints a service port may use.
//! Endpoint changes swap the backend sets under running listeners;
//! listeners start and stop only when frontends change.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use wharf_kube::ObjectKey;

use crate::balancer::{self, ActiveGuard, Affinity, Backend};
use crate::metrics::{PortMetrics, ProxyMetrics};
use crate::model::{Frontend, Protocol, Scope, ServicePort, ServicePortName};
use crate::{copy, udp};

/// How long connecting to one endpoint may take before trying another.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Endpoints tried per connection at most.
const CONNECT_ATTEMPTS: usize = 3;

/// A backend as one port's listeners share it, with its drain signal.
pub struct PortBackend {
    pub backend: Arc<Backend>,
    /// Flips to true when open connections must close (drain timeout).
    closed: watch::Sender<bool>,
}

/// The live state of one service port on this node.
pub struct PortState {
    pub name: ServicePortName,
    label: String,
    sets: RwLock<BackendSets>,
    all: RwLock<HashMap<SocketAddr, Arc<PortBackend>>>,
    affinity: RwLock<Option<Arc<Affinity>>>,
    metrics: PortMetrics,
}

#[derive(Default, Clone)]
struct BackendSets {
    internal: Arc<Vec<Arc<Backend>>>,
    external: Arc<Vec<Arc<Backend>>>,
}

impl PortState {
    fn new(name: ServicePortName, metrics: &ProxyMetrics) -> Arc<Self> {
        let label = name.to_string();
        Arc::new(PortState {
            metrics: PortMetrics::new(metrics, &label),
            label,
            name,
            sets: RwLock::default(),
            all: RwLock::default(),
            affinity: RwLock::default(),
        })
    }

    pub fn backends(&self, scope: Scope) -> Arc<Vec<Arc<Backend>>> {
        let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
        match scope {
            Scope::Internal => sets.internal.clone(),
            Scope::External => sets.external.clone(),
        }
    }

    fn closed_signal(&self, addr: SocketAddr) -> Option<watch::Receiver<bool>> {
        self.all.read().unwrap_or_else(|p| p.into_inner()).get(&addr).map(|b| b.closed.subscribe())
    }

    pub fn affinity(&self) -> Option<Arc<Affinity>> {
        self.affinity.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn metrics(&self) -> &PortMetrics {
        &self.metrics
    }

    fn is_usable(&self, addr: SocketAddr) -> bool {
        let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
        sets.internal.iter().chain(sets.external.iter()).any(|b| b.addr == addr)
    }

    /// Installs the usable endpoints of `port` on node `node`. Endpoints
    /// that leave get no new connections at once; their open connections
    /// are closed after `drain` unless they came back meanwhile (never,
    /// if `drain` is zero).
    fn update(self: &Arc<Self>, port: &ServicePort, node: &str, drain: Duration, runtime: &Handle) {
        let mut all = self.all.write().unwrap_or_else(|p| p.into_inner());
        let mut get = |addr: SocketAddr| {
            all.entry(addr)
                .or_insert_with(|| {
                    Arc::new(PortBackend { backend: Backend::new(addr, self.metrics.chosen(addr)), closed: watch::channel(false).0 })
                })
                .backend
                .clone()
        };
        let internal: Vec<Arc<Backend>> = port.usable(Scope::Internal, node).iter().map(|e| get(e.addr)).collect();
        let external: Vec<Arc<Backend>> = port.usable(Scope::External, node).iter().map(|e| get(e.addr)).collect();
        let keep: HashSet<SocketAddr> = internal.iter().chain(&external).map(|b| b.addr).collect();
        let leaving: Vec<SocketAddr> = all.keys().filter(|a| !keep.contains(a)).copied().collect();
        if drain.is_zero() {
            all.retain(|a, _| keep.contains(a));
        }
        drop(all);
        *self.sets.write().unwrap_or_else(|p| p.into_inner()) = BackendSets { internal: Arc::new(internal), external: Arc::new(external) };
        let mut affinity = self.affinity.write().unwrap_or_else(|p| p.into_inner());
        match (port.affinity, affinity.is_some()) {
            (Some(timeout), false) => *affinity = Some(Arc::new(Affinity::new(timeout))),
            (None, true) => *affinity = None,
            _ => {}
        }
        drop(affinity);
        if !drain.is_zero() {
            for addr in leaving {
                let state = self.clone();
                runtime.spawn(async move {
                    tokio::time::sleep(drain).await;
                    if !state.is_usable(addr) {
                        let gone = state.all.write().unwrap_or_else(|p| p.into_inner()).remove(&addr);
                        if let Some(gone) = gone {
                            let _ = gone.closed.send(true);
                        }
                    }
                });
            }
        }
    }

    /// Chooses an endpoint for `client`: its affinity if any, else by
    /// least connections of two random choices, skipping `tried`.
    pub fn choose(&self, scope: Scope, client: std::net::IpAddr, tried: &[SocketAddr]) -> Option<Arc<Backend>> {
        let backends = self.backends(scope);
        if tried.is_empty() {
            if let Some(sticky) = self.affinity().and_then(|a| a.lookup(client, &backends)) {
                return Some(sticky);
            }
        }
        balancer::pick(&backends, tried)
    }
}

/// Refuses a connection with a reset: nothing to send it to.
fn reset(client: TcpStream) {
    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
    drop(client);
}

async fn connect(state: &PortState, scope: Scope, client: SocketAddr) -> Option<(TcpStream, Arc<Backend>)> {
    let mut tried = Vec::new();
    while tried.len() < CONNECT_ATTEMPTS {
        let backend = state.choose(scope, client.ip(), &tried)?;
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend.addr)).await {
            Ok(Ok(stream)) => return Some((stream, backend)),
            _ => {
                state.metrics.connect_failed.inc();
                tried.push(backend.addr);
            }
        }
    }
    None
}

async fn serve_tcp(state: Arc<PortState>, scope: Scope, mut client: TcpStream, peer: SocketAddr) {
    // TCP_NODELAY comes with the listening socket.
    let Some((mut upstream, backend)) = connect(&state, scope, peer).await else {
        state.metrics.no_endpoint.inc();
        reset(client);
        return;
    };
    let _ = upstream.set_nodelay(true);
    if let Some(affinity) = state.affinity() {
        affinity.remember(peer.ip(), backend.addr);
    }
    backend.chosen.inc();
    state.metrics.active.inc();
    let _guard = ActiveGuard::new(backend.clone());
    let mut closed = state.closed_signal(backend.addr);
    let drained = async {
        match closed.as_mut() {
            Some(rx) => {
                let _ = rx.wait_for(|c| *c).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        (up, down) = copy::bidirectional(&mut client, &mut upstream) => {
            state.metrics.to_endpoint.inc_by(up);
            state.metrics.to_client.inc_by(down);
        }
        _ = drained => {
            state.metrics.drained.inc();
        }
    }
    state.metrics.active.dec();
}

async fn tcp_listener(listener: TcpListener, state: Arc<PortState>, scope: Scope, connections: TaskTracker) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                connections.spawn(serve_tcp(state.clone(), scope, client, peer));
            }
            Err(e) => {
                tracing::warn!(service = %state.label, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One of a frontend's listeners; each worker has its own, and the kernel
/// spreads connections over them (SO_REUSEPORT).
fn bind_tcp(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Inherited by every accepted connection: one system call less each.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

struct Listener {
    port: ServicePortName,
    scope: Scope,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Listener {
    fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    fn running(&self) -> bool {
        self.tasks.iter().all(|t| !t.is_finished())
    }
}

/// All listeners of this node and the ports they serve.
pub struct Dataplane {
    /// One single-threaded runtime per worker thread: a connection lives
    /// on the worker that accepted it, with no cross-thread hand-offs.
    workers: Vec<Handle>,
    node: String,
    drain: Duration,
    udp_idle: Duration,
    metrics: ProxyMetrics,
    ports: HashMap<ServicePortName, Arc<PortState>>,
    listeners: HashMap<(SocketAddr, Protocol), Listener>,
    /// Frontends of each service, to retire them when the service changes.
    by_service: HashMap<ObjectKey, Vec<(SocketAddr, Protocol)>>,
    /// Every proxied TCP connection, so that shutdown can wait for them.
    connections: TaskTracker,
}

impl Dataplane {
    pub fn new(workers: Vec<Handle>, node: String, drain: Duration, udp_idle: Duration, metrics: ProxyMetrics) -> Self {
        Self {
            workers,
            node,
            drain,
            udp_idle,
            metrics,
            ports: HashMap::new(),
            listeners: HashMap::new(),
            by_service: HashMap::new(),
            connections: TaskTracker::new(),
        }
    }

    /// The open connections (for shutdown).
    pub fn connections(&self) -> TaskTracker {
        self.connections.clone()
    }

    /// Stops every listener; open connections go on.
    pub fn stop_listening(&mut self) {
        for (_, listener) in self.listeners.drain() {
            listener.stop();
        }
        self.by_service.clear();
    }

    fn first_worker(&self) -> &Handle {
        &self.workers[0]
    }

    pub fn port(&self, name: &ServicePortName) -> Option<Arc<PortState>> {
        self.ports.get(name).cloned()
    }

    /// Brings one service's listeners and endpoints to `ports`.
    pub fn apply(&mut self, service: ObjectKey, ports: &[ServicePort]) {
        let mut wanted: Vec<(SocketAddr, Protocol)> = Vec::new();
        for port in ports {
            let state = self.ports.entry(port.name.clone()).or_insert_with(|| PortState::new(port.name.clone(), &self.metrics)).clone();
            state.update(port, &self.node, self.drain, self.first_worker());
            for frontend in &port.frontends {
                wanted.push((frontend.addr, frontend.protocol));
                self.ensure_listener(frontend, &state);
            }
        }
        let names: HashSet<&ServicePortName> = ports.iter().map(|p| &p.name).collect();
        let previous = self.by_service.remove(&service).unwrap_or_default();
        for key in previous.into_iter().filter(|k| !wanted.contains(k)) {
            if let Some(l) = self.listeners.remove(&key) {
                l.stop();
            }
        }
        self.ports.retain(|name, _| (name.namespace != service.namespace || name.service != service.name) || names.contains(name));
        if !wanted.is_empty() {
            self.by_service.insert(service, wanted);
        }
    }

    fn ensure_listener(&mut self, frontend: &Frontend, state: &Arc<PortState>) {
        let key = (frontend.addr, frontend.protocol);
        if let Some(existing) = self.listeners.get(&key) {
            if existing.port == state.name && existing.scope == frontend.scope && existing.running() {
                return;
            }
            existing.stop();
        }
        match self.start_listener(frontend, state) {
            Ok(tasks) => {
                self.listeners.insert(key, Listener { port: state.name.clone(), scope: frontend.scope, tasks });
            }
            Err(e) => tracing::warn!(service = %state.label, addr = %frontend.addr, error = %e, "cannot listen"),
        }
    }

    fn start_listener(&self, frontend: &Frontend, state: &Arc<PortState>) -> std::io::Result<Vec<tokio::task::JoinHandle<()>>> {
        match frontend.protocol {
            Protocol::Tcp => {
                let mut tasks = Vec::new();
                for worker in &self.workers {
                    let listener = bind_tcp(frontend.addr)?;
                    let _entered = worker.enter();
                    let listener = TcpListener::from_std(listener)?;
                    tasks.push(worker.spawn(tcp_listener(listener, state.clone(), frontend.scope, self.connections.clone())));
                }
                Ok(tasks)
            }
            Protocol::Udp => {
                let socket = std::net::UdpSocket::bind(frontend.addr)?;
                socket.set_nonblocking(true)?;
                let worker = self.first_worker();
                let _entered = worker.enter();
                let socket = Arc::new(UdpSocket::from_std(socket)?);
                Ok(vec![worker.spawn(udp::frontend(socket, state.clone(), frontend.scope, self.udp_idle))])
            }
        }
    }
}
