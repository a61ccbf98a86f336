//! The service proxy: carries TCP and UDP traffic for cluster IPs, node
//! ports, load-balancer addresses and external IPs to the endpoints a
//! service may use, driven by Service and EndpointSlice watches.
//!
//! `model` decides what should be forwarded where (pure); `dataplane`
//! carries it out with userspace sockets (`copy`: splice for bulk data,
//! `udp`: flow table), `balancer` chooses endpoints, `health` answers
//! health check node ports. A kernel data plane (nftables) can take
//! `model`'s output later without changing anything above it.

pub mod balancer;
pub mod copy;
pub mod dataplane;
pub mod health;
pub mod metrics;
pub mod model;
pub mod udp;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;

pub use metrics::ProxyMetrics;
use model::{NodeView, Protocol};

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub node_name: String,
    pub node_ip: IpAddr,
    /// Open connections to a removed endpoint are closed after this; zero
    /// keeps them until they end.
    pub drain_timeout: Duration,
    /// UDP flows without traffic for this long are forgotten.
    pub udp_idle: Duration,
    /// Threads of the data plane.
    pub workers: usize,
    /// Frontends another part of wharf serves (the cluster DNS).
    pub reserved: BTreeSet<(SocketAddr, Protocol)>,
}

/// Whether `ip` is an address of this host (binding to it works).
pub fn is_local_address(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// The data plane's worker threads, each running its own single-threaded
/// runtime (thread per core, as HAProxy and nginx run), apart from the
/// control plane; they live as long as the process.
fn data_workers(workers: usize) -> std::io::Result<Vec<tokio::runtime::Handle>> {
    (0..workers.max(1))
        .map(|i| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name(format!("wharf-proxy-{i}"))
                .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
            Ok(handle)
        })
        .collect()
}

type Key = (String, String);

fn key_of<K: kube::Resource>(obj: &K) -> Key {
    let m = obj.meta();
    (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default())
}

fn slice_owner(slice: &EndpointSlice) -> Option<Key> {
    let name = slice.metadata.labels.as_ref()?.get("kubernetes.io/service-name")?;
    Some((slice.metadata.namespace.clone().unwrap_or_default(), name.clone()))
}

struct State {
    config: ProxyConfig,
    node: NodeView,
    services: HashMap<Key, Service>,
    slices: HashMap<Key, HashMap<String, EndpointSlice>>,
    dataplane: dataplane::Dataplane,
    health: HashMap<Key, (u16, Arc<health::HealthState>, tokio::task::JoinHandle<()>)>,
    runtime: tokio::runtime::Handle,
}

impl State {
    /// Recomputes one service and hands it to the data plane.
    fn sync(&mut self, key: &Key) {
        let Some(svc) = self.services.get(key) else {
            self.dataplane.apply(key.clone(), &[]);
            if let Some((_, _, task)) = self.health.remove(key) {
                task.abort();
            }
            return;
        };
        let mut ports = model::service_ports(svc, &self.node);
        let slices = self.slices.get(key).into_iter().flat_map(|m| m.values());
        model::attach_endpoints(&mut ports, slices, |p| p.frontends[0].protocol);
        self.dataplane.apply(key.clone(), &ports);
        self.sync_health(key, &ports);
    }

    fn sync_health(&mut self, key: &Key, ports: &[model::ServicePort]) {
        let spec = self.services.get(key).and_then(|s| s.spec.as_ref());
        let hc_port = spec
            .filter(|s| s.external_traffic_policy.as_deref() == Some("Local"))
            .and_then(|s| s.health_check_node_port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let local: usize = ports.first().map_or(0, |p| p.local_ready(&self.config.node_name));
        match (hc_port, self.health.get(key)) {
            (Some(port), Some((current, state, _))) if *current == port => {
                state.local_endpoints.store(local, Ordering::Relaxed);
            }
            (Some(port), _) => {
                if let Some((_, _, task)) = self.health.remove(key) {
                    task.abort();
                }
                let state = Arc::new(health::HealthState {
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                    local_endpoints: std::sync::atomic::AtomicUsize::new(local),
                });
                let task = self.runtime.spawn(health::serve(SocketAddr::new(self.config.node_ip, port), state.clone()));
                self.health.insert(key.clone(), (port, state, task));
            }
            (None, _) => {
                if let Some((_, _, task)) = self.health.remove(key) {
                    task.abort();
                }
            }
        }
    }
}

enum Change {
    Service(Event<Service>),
    Slice(Event<EndpointSlice>),
}

/// Runs the proxy until the watches end (never, unless dropped).
pub async fn run(client: kube::Client, config: ProxyConfig, metrics: ProxyMetrics) -> std::io::Result<()> {
    let workers = data_workers(config.workers)?;
    let runtime = workers[0].clone();
    let node = NodeView { name: config.node_name.clone(), ip: config.node_ip, reserved: config.reserved.clone(), is_local: is_local_address };
    let dataplane = dataplane::Dataplane::new(workers, config.node_name.clone(), config.drain_timeout, config.udp_idle, metrics);
    let mut state = State { config, node, services: HashMap::new(), slices: HashMap::new(), dataplane, health: HashMap::new(), runtime };
    let cfg = watcher::Config::default();
    let changes = stream::select_all([
        watcher::watcher(Api::<Service>::all(client.clone()), cfg.clone()).default_backoff().map(|e| e.map(Change::Service)).boxed(),
        watcher::watcher(Api::<EndpointSlice>::all(client), cfg).default_backoff().map(|e| e.map(Change::Slice)).boxed(),
    ]);
    futures::pin_mut!(changes);
    let mut relisting: HashMap<&'static str, HashSet<Key>> = HashMap::new();
    while let Some(change) = changes.next().await {
        let touched: Vec<Key> = match change {
            Err(e) => {
                tracing::warn!(error = %e, "proxy watch error; retrying");
                continue;
            }
            Ok(Change::Service(event)) => match event {
                Event::Apply(svc) | Event::InitApply(svc) => {
                    let key = key_of(&svc);
                    relisting.entry("services").or_default().insert(key.clone());
                    state.services.insert(key.clone(), svc);
                    vec![key]
                }
                Event::Delete(svc) => {
                    let key = key_of(&svc);
                    state.services.remove(&key);
                    vec![key]
                }
                Event::Init => {
                    relisting.insert("services", HashSet::new());
                    Vec::new()
                }
                Event::InitDone => {
                    let seen = relisting.remove("services").unwrap_or_default();
                    let gone: Vec<Key> = state.services.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                    for k in &gone {
                        state.services.remove(k);
                    }
                    gone
                }
            },
            Ok(Change::Slice(event)) => match event {
                Event::Apply(slice) | Event::InitApply(slice) => {
                    let Some(owner) = slice_owner(&slice) else { continue };
                    let name = slice.metadata.name.clone().unwrap_or_default();
                    relisting.entry("slices").or_default().insert((owner.0.clone(), name.clone()));
                    state.slices.entry(owner.clone()).or_default().insert(name, slice);
                    vec![owner]
                }
                Event::Delete(slice) => {
                    let Some(owner) = slice_owner(&slice) else { continue };
                    if let Some(m) = state.slices.get_mut(&owner) {
                        m.remove(slice.metadata.name.as_deref().unwrap_or_default());
                    }
                    vec![owner]
                }
                Event::Init => {
                    relisting.insert("slices", HashSet::new());
                    Vec::new()
                }
                Event::InitDone => {
                    let seen = relisting.remove("slices").unwrap_or_default();
                    let mut owners = Vec::new();
                    for (owner, m) in state.slices.iter_mut() {
                        let before = m.len();
                        m.retain(|name, _| seen.contains(&(owner.0.clone(), name.clone())));
                        if m.len() != before {
                            owners.push(owner.clone());
                        }
                    }
                    owners
                }
            },
        };
        for key in touched {
            state.sync(&key);
        }
    }
    Ok(())
}
