//! The service proxy: carries TCP and UDP traffic for cluster IPs, node
//! ports, load-balancer addresses and external IPs to the endpoints a
//! service may use, driven by Service and EndpointSlice watches.
//!
//! `model` decides what should be forwarded where (pure); `claims` who
//! serves a contested frontend; `forwarding` picks the data plane that
//! carries it out: `dataplane`, userspace sockets (`copy`: splice for bulk
//! data, `udp`: flow table, `balancer` chooses endpoints), or `nftables`,
//! kernel rules. `health` answers health check node ports in both.

mod accept;
pub mod balancer;
pub mod claims;
pub mod copy;
pub mod dataplane;
pub mod forwarding;
pub mod health;
pub mod localroute;
pub mod metrics;
pub mod model;
mod netlink;
pub mod nftables;
pub mod udp;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{stream, FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::Event;
use tokio_util::sync::CancellationToken;
use wharf_kube::few::{self, FewSet};
use wharf_kube::{watch, Keyed, KeyedTable, ObjectKey, Relister, Table};

pub use forwarding::ProxyMode;
pub use metrics::ProxyMetrics;
use model::{NodeView, Protocol, ServiceView, SliceView};
use wharf_api::ipfamily::{IpFamily, NodeIps, ServiceCidrs};
use wharf_api::node_status::{FailingFrontend, FailureReason, ProxyStatus, PROXY_STATUS};

#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub node_name: String,
    /// Node ports are on these (one per family); health checks on the first.
    pub node_ips: NodeIps,
    /// The service ranges: IPv6 ones are made local on `lo` where wharf may.
    pub service_cidrs: ServiceCidrs,
    pub limits: dataplane::ProxyLimits,
    /// Threads of the data plane.
    pub workers: usize,
    /// Frontends another part of wharf serves (the cluster DNS).
    pub reserved: BTreeSet<(SocketAddr, Protocol)>,
    /// How often the proxy's state is published on its Node (at most).
    pub status_every: Duration,
    pub mode: ProxyMode,
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
            std::thread::Builder::new().name(format!("wharf-proxy-{i}")).spawn(move || runtime.block_on(std::future::pending::<()>()))?;
            Ok(handle)
        })
        .collect()
}

/// The Services and EndpointSlices the proxy follows, with the services
/// each change touched; the table of both watches.
///
/// Views are boxed and found by their own key: a slot is one pointer.
#[derive(Default)]
struct Model {
    services: KeyedTable<Box<ServiceView>>,
    slices: KeyedTable<Box<SliceView>>,
    /// Each service's slices, by name (their namespace is the service's).
    slices_of: HashMap<ObjectKey, FewSet<Arc<str>>>,
    touched: HashSet<ObjectKey>,
    synced: HashSet<&'static str>,
}

impl Model {
    fn is_synced(&self) -> bool {
        self.synced.len() == 2
    }

    fn remove_slice(&mut self, key: &ObjectKey) -> Option<Box<SliceView>> {
        let slice = self.slices.remove(key)?;
        if let Some(owner) = slice.owner() {
            few::remove_from(&mut self.slices_of, &owner, &*key.name);
            self.touched.insert(owner);
        }
        Some(slice)
    }

    fn slices_for<'a>(&'a self, key: &ObjectKey) -> impl Iterator<Item = &'a SliceView> + 'a {
        let (names, namespace) = (self.slices_of.get(key).into_iter().flatten(), key.namespace.clone());
        names.filter_map(move |name| self.slices.get_parts(&namespace, name).map(|slice| &**slice))
    }
}

impl Table<ServiceView> for Model {
    fn apply(&mut self, mut svc: ServiceView) {
        if let Some(held) = self.services.get(&svc.key) {
            svc.share_key(held);
        }
        let key = svc.key.clone();
        self.services.insert(Box::new(svc));
        self.touched.insert(key);
    }
    fn delete(&mut self, key: &ObjectKey) {
        if self.services.remove(key).is_some() {
            self.touched.insert(key.clone());
        }
    }
    fn delete_unlisted(&mut self, listed: &HashSet<ObjectKey>) {
        let held = self.services.keys();
        wharf_kube::delete_missing::<ServiceView, _>(self, held, listed);
    }
    fn relist_done(&mut self) {
        self.synced.insert("services");
    }
}

impl Table<SliceView> for Model {
    fn apply(&mut self, mut slice: SliceView) {
        if let Some(held) = self.remove_slice(&slice.key) {
            slice.share_key(&held);
        }
        let key = slice.key.clone();
        let Some(owner) = slice.owner() else { return };
        // The owner's name as the service's own key holds it.
        let owner = self.services.get(&owner).map_or(owner, |held| held.key.clone());
        slice.share_owner(&owner);
        self.slices_of.entry(owner.clone()).or_default().insert(key.name.clone());
        self.touched.insert(owner);
        self.slices.insert(Box::new(slice));
    }
    fn delete(&mut self, key: &ObjectKey) {
        self.remove_slice(key);
    }
    fn delete_unlisted(&mut self, listed: &HashSet<ObjectKey>) {
        let held = self.slices.keys();
        wharf_kube::delete_missing::<SliceView, _>(self, held, listed);
    }
    fn relist_done(&mut self) {
        self.synced.insert("slices");
    }
}

struct State {
    config: ProxyConfig,
    node: NodeView,
    model: Model,
    dataplane: forwarding::Forwarding,
    health: HashMap<ObjectKey, (u16, Arc<health::HealthState>, tokio::task::JoinHandle<()>)>,
    runtime: tokio::runtime::Handle,
    events: wharf_kube::events::Recorder,
    /// Frontends of each service this node does not serve, and why.
    failing: HashMap<ObjectKey, Vec<FailingFrontend>>,
}

impl State {
    /// Recomputes one service and hands it to the data plane; then the
    /// services waiting for a frontend it let go.
    fn sync(&mut self, key: &ObjectKey) {
        let mut pending = vec![key.clone()];
        // Bounded: each retry is a service waiting for a released frontend.
        let mut budget = self.model.services.len() + 1;
        while let Some(key) = pending.pop() {
            budget = budget.saturating_sub(1);
            let applied = self.sync_one(&key);
            self.remember_failures(&key, &applied);
            self.report(&applied.conflicts);
            self.report_bind_failures(&key, &applied.bind_failures);
            if budget > 0 {
                pending.extend(applied.retry);
            }
        }
    }

    fn remember_failures(&mut self, key: &ObjectKey, applied: &claims::Applied) {
        let frontend = |(addr, protocol): &(SocketAddr, Protocol)| format!("{addr}/{}", protocol.as_str());
        let conflicts =
            applied.conflicts.iter().map(|c| (frontend(&c.frontend), FailureReason::Conflict, format!("already served by {}", c.owner)));
        let unbound = applied.bind_failures.iter().map(|(f, why)| (frontend(f), FailureReason::BindFailed, why.clone()));
        let failing: Vec<FailingFrontend> = conflicts
            .chain(unbound)
            .map(|(frontend, reason, error)| FailingFrontend { service: key.to_string(), frontend, reason, error })
            .collect();
        if failing.is_empty() {
            self.failing.remove(key);
        } else {
            self.failing.insert(key.clone(), failing);
        }
    }

    /// What this node publishes about its proxy.
    fn status(&self) -> ProxyStatus {
        let mut status = ProxyStatus {
            mode: self.dataplane.mode().into(),
            synced: self.model.is_synced(),
            service_ports: self.dataplane.service_ports(),
            frontends: self.dataplane.frontends(),
            failing: self.failing.values().flatten().cloned().collect(),
            endpoints: self.dataplane.traffic(),
            truncated: false,
        };
        status.bound();
        status
    }

    fn sync_one(&mut self, key: &ObjectKey) -> claims::Applied {
        let Some(svc) = self.model.services.get(key) else {
            if let Some((_, _, task)) = self.health.remove(key) {
                task.abort();
            }
            return self.dataplane.apply(claims::Owner { service: key.clone(), created: None }, &[]);
        };
        let owner = claims::Owner { service: key.clone(), created: svc.created.clone() };
        let mut ports = model::service_ports(svc, &self.node);
        model::attach_endpoints(&mut ports, self.model.slices_for(key), |p| p.frontends[0].protocol);
        let applied = self.dataplane.apply(owner, &ports);
        self.sync_health(key, &ports);
        applied
    }

    /// A frontend is kept by its first owner; the newcomer is told, once.
    fn report(&self, conflicts: &[claims::Conflict]) {
        for conflict in conflicts {
            let (addr, protocol) = conflict.frontend;
            let message = format!("{addr}/{protocol:?} is already served by {}; this service is not served there", conflict.owner);
            tracing::warn!(service = %conflict.refused, frontend = %addr, owner = %conflict.owner, "frontend conflict: {message}");
            if let Some(svc) = self.model.services.get(&conflict.refused) {
                self.events.warn(svc.reference(), "FrontendConflict", message);
            }
        }
    }

    /// A frontend this node cannot listen on is told on the Service, so
    /// `kubectl describe` and `wharf why` show it.
    fn report_bind_failures(&self, key: &ObjectKey, failures: &[((std::net::SocketAddr, model::Protocol), String)]) {
        let Some(svc) = self.model.services.get(key) else { return };
        for ((addr, protocol), why) in failures {
            let message = format!("node {} cannot listen on {addr}/{protocol:?}: {why}", self.config.node_name);
            self.events.warn(svc.reference(), "FrontendBindFailed", message);
        }
    }

    fn sync_health(&mut self, key: &ObjectKey, ports: &[model::ServicePort]) {
        let hc_port = self.model.services.get(key).and_then(|s| s.health_check_port);
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
                    namespace: key.namespace.to_string(),
                    name: key.name.to_string(),
                    local_endpoints: std::sync::atomic::AtomicUsize::new(local),
                });
                let task = self.runtime.spawn(health::serve(SocketAddr::new(self.config.node_ips.primary(), port), state.clone()));
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

/// Watch events taken at once before the data plane is synced.
const BURST: usize = 1024;

// Transient: each value moves once from its watch to its table.
#[allow(clippy::large_enum_variant)]
enum Update {
    Service(Event<ServiceView>),
    Slice(Event<SliceView>),
}

/// Runs the proxy until `token` is cancelled; then stops accepting and
/// lets open connections finish for up to `grace`.
pub async fn run(
    client: kube::Client,
    config: ProxyConfig,
    metrics: ProxyMetrics,
    token: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let workers = data_workers(config.workers)?;
    let runtime = workers[0].clone();
    let node = NodeView {
        name: config.node_name.clone(),
        ips: config.node_ips.clone(),
        reserved: config.reserved.clone(),
        is_local: is_local_address,
    };
    // Removed again when this goes out of scope, on every way out.
    let local_ranges = localroute::LocalRanges::make(config.service_cidrs.iter());
    let userspace = dataplane::Dataplane::new(workers, config.node_name.clone(), config.limits, metrics, local_ranges.ranges())?;
    let connections = userspace.connections();
    let families = config.service_cidrs.iter().map(|range| IpFamily::of(&range.addr())).collect();
    let (dataplane, why) = forwarding::Forwarding::choose(config.mode, &config.node_name, families, config.limits.drain, userspace)?;
    tracing::info!(mode = dataplane.mode(), why, "service proxy data plane");
    let events = wharf_kube::events::Recorder::new(client.clone(), "wharf-proxy", config.node_name.clone());
    let (status_tx, status_rx) = tokio::sync::watch::channel(None);
    let publisher = tokio::spawn(wharf_kube::node_status::publish(
        client.clone(),
        config.node_name.clone(),
        PROXY_STATUS,
        status_rx,
        config.status_every,
        token.child_token(),
    ));
    let mut status_tick = tokio::time::interval(config.status_every);
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut state =
        State { config, node, model: Model::default(), dataplane, health: HashMap::new(), runtime, events, failing: HashMap::new() };
    let updates = stream::select_all([
        watch::watch_all::<Service>(&client).map(|e| Update::Service(watch::kept(e))).boxed(),
        watch::watch_all::<EndpointSlice>(&client).map(|e| Update::Slice(watch::kept(e))).boxed(),
    ]);
    futures::pin_mut!(updates);
    let (mut services, mut slices) = (Relister::<ServiceView>::default(), Relister::<SliceView>::default());
    loop {
        let update = tokio::select! {
            _ = token.cancelled() => break,
            Some(update) = updates.next() => update,
            _ = status_tick.tick() => {
                state.dataplane.tick();
                wharf_kube::node_status::offer(&status_tx, &state.status());
                continue;
            }
        };
        // A burst is taken whole (bounded), so the kernel plane gets it as
        // one transaction.
        let mut next = Some(update);
        let mut taken = 0;
        while let Some(update) = next.take() {
            match update {
                Update::Service(e) => services.handle(&mut state.model, e),
                Update::Slice(e) => slices.handle(&mut state.model, e),
            }
            taken += 1;
            if taken < BURST {
                next = updates.next().now_or_never().flatten();
            }
        }
        // Nothing is served from half a picture: services wait for slices.
        if state.model.is_synced() {
            for key in std::mem::take(&mut state.model.touched) {
                state.sync(&key);
            }
            state.dataplane.commit();
        }
    }
    publisher.abort();
    state.dataplane.stop();
    drop(local_ranges);
    for (_, _, task) in state.health.values() {
        task.abort();
    }
    connections.close();
    if tokio::time::timeout(grace, connections.wait()).await.is_err() {
        tracing::warn!(open = connections.len(), ?grace, "proxied connections still open after the shutdown grace; closing them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service() -> ServiceView {
        let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web", "namespace": "d", "resourceVersion": "1"},
            "spec": {"clusterIP": "127.96.0.9", "ports": [{"name": "http", "port": 80}]}}))
        .unwrap();
        svc.into()
    }

    fn slice(version: &str) -> SliceView {
        let slice: EndpointSlice =
            serde_json::from_value(json!({"metadata": {"name": "web-a", "namespace": "d", "resourceVersion": version,
            "labels": {"kubernetes.io/service-name": "web"}}, "addressType": "IPv4", "endpoints": []}))
            .unwrap();
        slice.into()
    }

    #[test]
    fn the_model_keeps_one_copy_of_each_name_across_updates() {
        let mut model = Model::default();
        model.apply(service());
        model.apply(slice("2"));
        let first = model.slices.get(&ObjectKey::new("d", "web-a")).unwrap().key.clone();
        let first_service = model.services.get(&ObjectKey::new("d", "web")).unwrap().key.clone();
        model.apply(service());
        model.apply(slice("3"));
        let svc = model.services.get(&first_service).unwrap();
        assert!(Arc::ptr_eq(&svc.key.name, &first_service.name), "an updated service keeps its first copy of its name");
        let slice = model.slices.get(&first).unwrap();
        assert!(Arc::ptr_eq(&slice.key.name, &first.name), "an updated slice keeps its first copy of its name");
        let owner = slice.owner().unwrap();
        assert!(Arc::ptr_eq(&owner.name, &svc.key.name), "a slice names its service with the service's own copy");
        assert_eq!((model.services.len(), model.slices.len()), (1, 1));
    }
}
