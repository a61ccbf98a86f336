//! The EndpointSlice controller (and the legacy Endpoints it keeps in
//! step): for every Service with a selector, the ready, not-ready and
//! terminating pods it selects, with each pod's own resolution of named
//! target ports, in slices of at most 100 endpoints.
//!
//! Event-driven: a pod change marks only the services whose selector
//! terms it carries (an index by selector label), a reconcile reads only
//! the service's members, and only slices whose content changed are
//! written.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort as LegacyPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::sync::Notify;

use crate::cache::{key_of, Applied, Cache, ObjectKey};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Kubernetes' default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Legacy Endpoints are truncated here, as Kubernetes does since 1.22.
const MAX_LEGACY_ADDRESSES: usize = 1000;
const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// Reconciles running at once.
const WORKERS: usize = 8;

// ---- what a service's endpoints should be (pure) ----

pub fn is_pod_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.conditions.as_ref()).into_iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The container port `target` names or numbers, for this pod.
fn resolve_port(pod: &Pod, target: &IntOrString) -> Option<i32> {
    match target {
        IntOrString::Int(n) => Some(*n),
        IntOrString::String(name) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port),
    }
}

/// The pod's ports for the service: one per service port whose target
/// resolves for this pod.
fn pod_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    let spec = svc.spec.as_ref();
    let mut ports: Vec<EndpointPort> = spec
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
            Some(EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(resolve_port(pod, &target)?),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
        })
        .collect();
    ports.sort_by(|a, b| a.name.cmp(&b.name).then(a.protocol.cmp(&b.protocol)));
    ports
}

/// A port set as a comparable key.
fn port_key(ports: &[EndpointPort]) -> String {
    serde_json::to_string(ports).unwrap_or_default()
}

/// One pod's endpoint for the service, or None if it has no address yet
/// or has finished.
fn pod_endpoint(svc: &Service, pod: &Pod) -> Option<Endpoint> {
    let status = pod.status.as_ref()?;
    let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let spec = pod.spec.as_ref();
    let serving = is_pod_ready(pod);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let publish = svc.spec.as_ref().and_then(|s| s.publish_not_ready_addresses).unwrap_or(false);
    let svc_name = svc.metadata.name.as_deref();
    let hostname = spec.and_then(|s| s.hostname.clone()).filter(|_| spec.and_then(|s| s.subdomain.as_deref()) == svc_name);
    Some(Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(publish || (serving && !terminating)),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname,
        node_name: spec.and_then(|s| s.node_name.clone()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Desired endpoints grouped by port set, each group ordered by pod name.
pub type Desired = BTreeMap<String, (Vec<EndpointPort>, BTreeMap<String, Endpoint>)>;

pub fn desired_endpoints<'a>(svc: &Service, pods: impl IntoIterator<Item = &'a Pod>) -> Desired {
    let mut groups: Desired = BTreeMap::new();
    for pod in pods {
        let Some(endpoint) = pod_endpoint(svc, pod) else { continue };
        let ports = pod_ports(svc, pod);
        let name = pod.metadata.name.clone().unwrap_or_default();
        groups.entry(port_key(&ports)).or_insert_with(|| (ports, BTreeMap::new())).1.insert(name, endpoint);
    }
    groups
}

fn endpoint_pod(ep: &Endpoint) -> Option<&str> {
    ep.target_ref.as_ref()?.name.as_deref()
}

/// The slice writes that bring `existing` to `desired`.
#[derive(Debug, Default)]
pub struct SlicePlan {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<Arc<EndpointSlice>>,
}

fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = svc.metadata.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), svc.metadata.name.clone().unwrap_or_default());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels
}

fn owner(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Places endpoints with the least churn, as the Kubernetes controller
/// does: keep each endpoint in the slice it is in, fill slices that are
/// changing anyway, then slices with room, then new slices.
pub fn plan_slices(svc: &Service, mut desired: Desired, existing: &[Arc<EndpointSlice>], max: usize) -> SlicePlan {
    let labels = slice_labels(svc);
    let owners = vec![owner(svc)];
    let mut plan = SlicePlan::default();
    // Working copies of the existing slices: (original, endpoints, changed).
    let mut kept: Vec<(Arc<EndpointSlice>, Vec<Endpoint>, bool)> = Vec::new();
    for slice in existing {
        let key = port_key(slice.ports.as_deref().unwrap_or_default());
        let Some((_, wanted)) = desired.get_mut(&key) else {
            plan.delete.push(slice.clone());
            continue;
        };
        let mut endpoints = Vec::new();
        for ep in &slice.endpoints {
            if let Some(new) = endpoint_pod(ep).and_then(|pod| wanted.remove(pod)) {
                endpoints.push(new);
            }
        }
        let changed = endpoints != slice.endpoints
            || slice.metadata.labels.as_ref() != Some(&labels)
            || slice.metadata.owner_references.as_ref() != Some(&owners);
        kept.push((slice.clone(), endpoints, changed));
    }
    for (key, (ports, wanted)) in desired {
        let mut rest: VecDeque<Endpoint> = wanted.into_values().collect();
        let same_ports = |s: &EndpointSlice| port_key(s.ports.as_deref().unwrap_or_default()) == key;
        // Slices being written anyway first, then the fullest with room.
        let mut order: Vec<usize> = (0..kept.len()).filter(|&i| same_ports(&kept[i].0)).collect();
        order.sort_by_key(|&i| (!kept[i].2, std::cmp::Reverse(kept[i].1.len())));
        for i in order {
            while kept[i].1.len() < max {
                let Some(ep) = rest.pop_front() else { break };
                kept[i].1.push(ep);
                kept[i].2 = true;
            }
        }
        while !rest.is_empty() {
            let take = rest.len().min(max);
            plan.create.push(EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}-", svc.metadata.name.as_deref().unwrap_or_default())),
                    namespace: svc.metadata.namespace.clone(),
                    labels: Some(labels.clone()),
                    owner_references: Some(owners.clone()),
                    ..Default::default()
                },
                address_type: "IPv4".into(),
                endpoints: rest.drain(..take).collect(),
                ports: Some(ports.clone()),
            });
        }
    }
    for (slice, endpoints, changed) in kept {
        if endpoints.is_empty() {
            plan.delete.push(slice);
        } else if changed {
            let mut updated = (*slice).clone();
            updated.endpoints = endpoints;
            updated.metadata.labels = Some(labels.clone());
            updated.metadata.owner_references = Some(owners.clone());
            plan.update.push(updated);
        }
    }
    plan
}

/// The legacy Endpoints object for the same endpoints: one subset per
/// port set, ready addresses and not-ready ones; terminating pods are left
/// out, as the Kubernetes endpoints controller does.
pub fn legacy_endpoints(svc: &Service, desired: &Desired) -> Endpoints {
    let mut subsets = Vec::new();
    let mut total = 0;
    for (ports, endpoints) in desired.values() {
        let mut ready = Vec::new();
        let mut not_ready = Vec::new();
        for ep in endpoints.values() {
            let cond = ep.conditions.clone().unwrap_or_default();
            if cond.terminating == Some(true) && cond.ready != Some(true) {
                continue;
            }
            if total >= MAX_LEGACY_ADDRESSES {
                break;
            }
            total += 1;
            let address = EndpointAddress {
                ip: ep.addresses[0].clone(),
                hostname: ep.hostname.clone(),
                node_name: ep.node_name.clone(),
                target_ref: ep.target_ref.clone(),
            };
            if cond.ready == Some(true) { ready.push(address) } else { not_ready.push(address) }
        }
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        let by_ip = |a: &EndpointAddress, b: &EndpointAddress| a.ip.cmp(&b.ip).then(a.target_ref.as_ref().map(|t| &t.name).cmp(&b.target_ref.as_ref().map(|t| &t.name)));
        ready.sort_by(by_ip);
        not_ready.sort_by(by_ip);
        let ports: Vec<LegacyPort> = ports
            .iter()
            .map(|p| LegacyPort { name: p.name.clone().filter(|n| !n.is_empty()), port: p.port.unwrap_or(0), protocol: p.protocol.clone(), app_protocol: p.app_protocol.clone() })
            .collect();
        subsets.push(EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: (!ports.is_empty()).then_some(ports),
        });
    }
    let mut annotations = BTreeMap::new();
    let all: usize = desired.values().map(|(_, e)| e.len()).sum();
    if all > MAX_LEGACY_ADDRESSES {
        annotations.insert(OVER_CAPACITY.to_string(), "truncated".to_string());
    }
    Endpoints {
        metadata: ObjectMeta {
            name: svc.metadata.name.clone(),
            namespace: svc.metadata.namespace.clone(),
            labels: svc.metadata.labels.clone(),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

// ---- the controller ----

fn selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec.as_ref()?.selector.as_ref().filter(|s| !s.is_empty())
}

fn labels_match(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    selector.iter().all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// (namespace, label key, label value)
type SelectorTerm = (String, String, String);

#[derive(Default)]
struct Index {
    services: Cache<Service>,
    pods: Cache<Pod>,
    slices: Cache<EndpointSlice>,
    endpoints: Cache<Endpoints>,
    /// Services by each term of their selector.
    by_term: HashMap<SelectorTerm, HashSet<ObjectKey>>,
    /// Pods by each of their labels.
    pods_by_label: HashMap<SelectorTerm, HashSet<ObjectKey>>,
    /// Managed slices by the service they belong to.
    slices_of: HashMap<ObjectKey, HashSet<ObjectKey>>,
    /// Endpoints objects this controller owns (their service has a selector).
    managed_endpoints: HashSet<ObjectKey>,
    dirty: VecDeque<ObjectKey>,
    queued: HashSet<ObjectKey>,
    running: HashSet<ObjectKey>,
    /// Seen objects during a relist, by kind.
    relisting: HashMap<&'static str, HashSet<ObjectKey>>,
}

fn terms<'a>(ns: &'a str, labels: Option<&'a BTreeMap<String, String>>) -> impl Iterator<Item = SelectorTerm> + 'a {
    labels.into_iter().flatten().map(move |(k, v)| (ns.to_string(), k.clone(), v.clone()))
}

impl Index {
    fn mark(&mut self, key: ObjectKey) {
        if self.queued.insert(key.clone()) {
            self.dirty.push_back(key);
        }
    }

    fn index_service(&mut self, svc: &Service, add: bool) {
        let key = key_of(svc);
        for term in terms(&key.0, selector(svc)) {
            let set = self.by_term.entry(term.clone()).or_default();
            if add {
                set.insert(key.clone());
            } else {
                set.remove(&key);
                if set.is_empty() {
                    self.by_term.remove(&term);
                }
            }
        }
    }

    fn index_pod(&mut self, pod: &Pod, add: bool) {
        let key = key_of(pod);
        for term in terms(&key.0, pod.metadata.labels.as_ref()) {
            let set = self.pods_by_label.entry(term.clone()).or_default();
            if add {
                set.insert(key.clone());
            } else {
                set.remove(&key);
                if set.is_empty() {
                    self.pods_by_label.remove(&term);
                }
            }
        }
    }

    /// Services whose selector may match a pod with these labels.
    fn mark_services_of(&mut self, pod: &Pod) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let candidates: HashSet<ObjectKey> =
            terms(&ns, pod.metadata.labels.as_ref()).filter_map(|t| self.by_term.get(&t)).flatten().cloned().collect();
        for key in candidates {
            self.mark(key);
        }
    }

    /// The pods a selector matches: the smallest posting list, filtered.
    fn members(&self, ns: &str, selector: &BTreeMap<String, String>) -> Vec<Arc<Pod>> {
        let smallest = terms(ns, Some(selector)).map(|t| self.pods_by_label.get(&t)).min_by_key(|s| s.map_or(0, HashSet::len));
        let Some(Some(keys)) = smallest else { return Vec::new() };
        keys.iter().filter_map(|k| self.pods.get(k)).filter(|p| labels_match(selector, p)).cloned().collect()
    }

    fn service_of_slice(slice: &EndpointSlice) -> Option<ObjectKey> {
        let labels = slice.metadata.labels.as_ref()?;
        (labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)).then_some(())?;
        Some((slice.metadata.namespace.clone().unwrap_or_default(), labels.get(SERVICE_NAME_LABEL)?.clone()))
    }

    fn apply_service(&mut self, svc: Service) {
        let key = key_of(&svc);
        self.index_service(&svc, true);
        if let Applied::Changed(prev) = self.services.apply(svc) {
            if let Some(prev) = prev {
                self.index_service(&prev, false);
            }
            // Re-add the current terms (the previous removal may share them).
            if let Some(cur) = self.services.get(&key).cloned() {
                self.index_service(&cur, true);
            }
            self.mark(key);
        }
    }

    fn delete_service(&mut self, key: &ObjectKey) {
        if let Some(prev) = self.services.remove(key) {
            self.index_service(&prev, false);
        }
        self.mark(key.clone());
    }

    fn apply_pod(&mut self, pod: Pod) {
        let key = key_of(&pod);
        if let Applied::Changed(prev) = self.pods.apply(pod) {
            if let Some(prev) = prev {
                self.mark_services_of(&prev);
                self.index_pod(&prev, false);
            }
            if let Some(cur) = self.pods.get(&key).cloned() {
                self.index_pod(&cur, true);
                self.mark_services_of(&cur);
            }
        }
    }

    fn delete_pod(&mut self, key: &ObjectKey) {
        if let Some(prev) = self.pods.remove(key) {
            self.index_pod(&prev, false);
            self.mark_services_of(&prev);
        }
    }

    fn apply_slice(&mut self, slice: EndpointSlice) {
        let Some(owner) = Self::service_of_slice(&slice) else { return };
        let key = key_of(&slice);
        if let Applied::Changed(_) = self.slices.apply(slice) {
            self.slices_of.entry(owner.clone()).or_default().insert(key);
            self.mark(owner);
        }
    }

    fn delete_slice(&mut self, key: &ObjectKey) {
        if let Some(prev) = self.slices.remove(key) {
            if let Some(owner) = Self::service_of_slice(&prev) {
                if let Some(set) = self.slices_of.get_mut(&owner) {
                    set.remove(key);
                }
                self.mark(owner);
            }
        }
    }

    fn apply_endpoints(&mut self, ep: Endpoints) {
        let key = key_of(&ep);
        if let Applied::Changed(_) = self.endpoints.apply(ep) {
            if self.services.get(&key).is_some_and(|s| selector(s).is_some()) {
                self.mark(key);
            }
        }
    }

    fn delete_endpoints(&mut self, key: &ObjectKey) {
        if self.endpoints.remove(key).is_some() && self.managed_endpoints.contains(key) {
            self.mark(key.clone());
        }
    }
}

/// One change from any of the watches.
enum Change {
    Service(Event<Service>),
    Pod(Event<Pod>),
    Slice(Event<EndpointSlice>),
    Endpoints(Event<Endpoints>),
}

/// What a reconcile decided, computed under the index lock and carried
/// out without it.
struct Work {
    key: ObjectKey,
    slices: SlicePlan,
    endpoints: Option<EndpointsWrite>,
}

enum EndpointsWrite {
    Put(Endpoints, Option<String>),
    Delete(Option<u64>),
}

#[derive(Clone)]
pub struct EndpointSliceController {
    client: kube::Client,
    index: Arc<Mutex<Index>>,
    wake: Arc<Notify>,
}

impl EndpointSliceController {
    pub fn new(client: kube::Client) -> Self {
        Self { client, index: Default::default(), wake: Arc::new(Notify::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs until the watches end (never, unless the task is dropped).
    pub async fn run(self) {
        let workers: Vec<_> = (0..WORKERS).map(|_| tokio::spawn(self.clone().work())).collect();
        let cfg = watcher::Config::default();
        let slices_cfg = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        let changes = stream::select_all([
            watcher::watcher(Api::<Service>::all(self.client.clone()), cfg.clone()).default_backoff().map(|e| e.map(Change::Service)).boxed(),
            watcher::watcher(Api::<Pod>::all(self.client.clone()), cfg.clone()).default_backoff().map(|e| e.map(Change::Pod)).boxed(),
            watcher::watcher(Api::<EndpointSlice>::all(self.client.clone()), slices_cfg).default_backoff().map(|e| e.map(Change::Slice)).boxed(),
            watcher::watcher(Api::<Endpoints>::all(self.client.clone()), cfg).default_backoff().map(|e| e.map(Change::Endpoints)).boxed(),
        ]);
        futures::pin_mut!(changes);
        while let Some(change) = changes.next().await {
            match change {
                Ok(change) => self.apply(change),
                Err(e) => tracing::warn!(error = %e, "endpointslice controller watch error; retrying"),
            }
        }
        for w in workers {
            w.abort();
        }
    }

    fn apply(&self, change: Change) {
        let mut index = self.lock();
        match change {
            Change::Service(e) => relist_aware(&mut index, "services", e, Index::apply_service, Index::delete_service, |i| &i.services),
            Change::Pod(e) => relist_aware(&mut index, "pods", e, Index::apply_pod, Index::delete_pod, |i| &i.pods),
            Change::Slice(e) => relist_aware(&mut index, "slices", e, Index::apply_slice, Index::delete_slice, |i| &i.slices),
            Change::Endpoints(e) => relist_aware(&mut index, "endpoints", e, Index::apply_endpoints, Index::delete_endpoints, |i| &i.endpoints),
        }
        let pending = !index.dirty.is_empty();
        drop(index);
        if pending {
            self.wake.notify_waiters();
        }
    }

    async fn work(self) {
        loop {
            let work = {
                let mut index = self.lock();
                let position = index.dirty.iter().position(|k| !index.running.contains(k));
                position.and_then(|i| index.dirty.remove(i)).map(|key| {
                    index.queued.remove(&key);
                    index.running.insert(key.clone());
                    plan(&mut index, key)
                })
            };
            let Some(work) = work else {
                let notified = self.wake.notified();
                tokio::pin!(notified);
                // Registered before the re-check, so no wakeup is lost.
                notified.as_mut().enable();
                let ready = {
                    let index = self.lock();
                    index.dirty.iter().any(|k| !index.running.contains(k))
                };
                if !ready {
                    let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
                }
                continue;
            };
            let key = work.key.clone();
            let ok = self.execute(work).await;
            {
                let mut index = self.lock();
                index.running.remove(&key);
                if !ok {
                    index.mark(key);
                }
            }
            if !ok {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            self.wake.notify_waiters();
        }
    }

    /// Carries out a plan; false if it must be retried.
    async fn execute(&self, work: Work) -> bool {
        let ns = work.key.0.clone();
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), &ns);
        let mut ok = true;
        for slice in work.slices.create {
            match slices.create(&PostParams::default(), &slice).await {
                Ok(created) => self.record_slice(created),
                Err(e) => ok = log_failure(&work.key, "creating a slice", e),
            }
        }
        for slice in work.slices.update {
            let name = slice.metadata.name.clone().unwrap_or_default();
            match slices.replace(&name, &PostParams::default(), &slice).await {
                Ok(updated) => self.record_slice(updated),
                Err(e) => ok = log_failure(&work.key, "updating a slice", e),
            }
        }
        for slice in work.slices.delete {
            let key = key_of(slice.as_ref());
            match gone(slices.delete(&key.1, &DeleteParams::default()).await) {
                Ok(()) => {
                    let version = slice.metadata.resource_version.as_deref().and_then(|v| v.parse().ok());
                    let mut index = self.lock();
                    index.slices.forget(&key, version);
                    if let Some(set) = index.slices_of.get_mut(&work.key) {
                        set.remove(&key);
                    }
                }
                Err(e) => ok = log_failure(&work.key, "deleting a slice", e),
            }
        }
        let endpoints: Api<Endpoints> = Api::namespaced(self.client.clone(), &ns);
        match work.endpoints {
            Some(EndpointsWrite::Put(mut ep, version)) => {
                let result = match version {
                    Some(rv) => {
                        ep.metadata.resource_version = Some(rv);
                        endpoints.replace(&work.key.1, &PostParams::default(), &ep).await
                    }
                    None => endpoints.create(&PostParams::default(), &ep).await,
                };
                match result {
                    Ok(written) => {
                        let mut index = self.lock();
                        index.managed_endpoints.insert(work.key.clone());
                        let _ = index.endpoints.apply(written);
                    }
                    Err(e) => ok = log_failure(&work.key, "writing Endpoints", e),
                }
            }
            Some(EndpointsWrite::Delete(version)) => match gone(endpoints.delete(&work.key.1, &DeleteParams::default()).await) {
                Ok(()) => {
                    let mut index = self.lock();
                    index.endpoints.forget(&work.key, version);
                    index.managed_endpoints.remove(&work.key);
                }
                Err(e) => ok = log_failure(&work.key, "deleting Endpoints", e),
            },
            None => {}
        }
        ok
    }

    fn record_slice(&self, slice: EndpointSlice) {
        let mut index = self.lock();
        let key = key_of(&slice);
        if let Some(owner) = Index::service_of_slice(&slice) {
            index.slices_of.entry(owner).or_default().insert(key);
        }
        let _ = index.slices.apply(slice);
    }
}

/// A delete's result, where "already gone" counts as done.
fn gone<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        other => other.map(|_| ()),
    }
}

fn log_failure(service: &ObjectKey, what: &str, e: kube::Error) -> bool {
    tracing::debug!(namespace = %service.0, service = %service.1, error = %e, "{what} failed; will retry");
    false
}

/// Applies a watcher event, turning a relist's disappearances into deletes.
fn relist_aware<K: kube::Resource>(
    index: &mut Index,
    kind: &'static str,
    event: Event<K>,
    apply: fn(&mut Index, K),
    delete: fn(&mut Index, &ObjectKey),
    cache: fn(&Index) -> &Cache<K>,
) {
    match event {
        Event::Apply(obj) => apply(index, obj),
        Event::Delete(obj) => delete(index, &key_of(&obj)),
        Event::Init => {
            index.relisting.insert(kind, HashSet::new());
        }
        Event::InitApply(obj) => {
            index.relisting.entry(kind).or_default().insert(key_of(&obj));
            apply(index, obj);
        }
        Event::InitDone => {
            let seen = index.relisting.remove(kind).unwrap_or_default();
            let gone: Vec<ObjectKey> = cache(index).keys().filter(|k| !seen.contains(*k)).cloned().collect();
            for key in gone {
                delete(index, &key);
            }
        }
    }
}

/// Decides what to write for one service, from the index.
fn plan(index: &mut Index, key: ObjectKey) -> Work {
    let existing: Vec<Arc<EndpointSlice>> = index
        .slices_of
        .get(&key)
        .into_iter()
        .flatten()
        .filter_map(|k| index.slices.get(k).cloned())
        .collect();
    let current_ep = index.endpoints.get(&key).cloned();
    let service = index.services.get(&key).cloned();
    let Some((svc, sel)) = service.as_ref().and_then(|s| selector(s).map(|sel| (s, sel.clone()))) else {
        // Deleted, or no selector: the user owns its endpoints.
        let endpoints = (index.managed_endpoints.contains(&key) && current_ep.is_some()).then(|| {
            EndpointsWrite::Delete(current_ep.as_ref().and_then(|e| e.metadata.resource_version.as_deref()?.parse().ok()))
        });
        return Work { key, slices: SlicePlan { delete: existing, ..Default::default() }, endpoints };
    };
    let members = index.members(&key.0, &sel);
    let desired = desired_endpoints(svc, members.iter().map(|p| p.as_ref()));
    let legacy = legacy_endpoints(svc, &desired);
    let slices = plan_slices(svc, desired, &existing, MAX_ENDPOINTS_PER_SLICE);
    let endpoints = match &current_ep {
        Some(cur) if cur.subsets == legacy.subsets && cur.metadata.labels == legacy.metadata.labels && cur.metadata.annotations == legacy.metadata.annotations => {
            index.managed_endpoints.insert(key.clone());
            None
        }
        Some(cur) => Some(EndpointsWrite::Put(legacy, cur.metadata.resource_version.clone())),
        None => Some(EndpointsWrite::Put(legacy, None)),
    };
    Work { key, slices, endpoints }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(target: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "d", "uid": "svc-uid", "labels": {"app": "web"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": target}]}
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: &str, port: i32, ready: bool, terminating: bool) -> Pod {
        let mut meta = json!({"name": name, "namespace": "d", "uid": format!("uid-{name}"), "labels": {"app": "web"}});
        if terminating {
            meta["deletionTimestamp"] = json!("2030-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    #[test]
    fn named_ports_resolve_per_pod_into_separate_slices() {
        let svc = service(json!("http"));
        let pods = [pod("a", "127.0.0.1", 8080, true, false), pod("b", "127.0.0.1", 8081, true, false)];
        let desired = desired_endpoints(&svc, &pods);
        assert_eq!(desired.len(), 2);
        let plan = plan_slices(&svc, desired.clone(), &[], 100);
        assert_eq!(plan.create.len(), 2);
        let ports: Vec<i32> = plan.create.iter().map(|s| s.ports.as_ref().unwrap()[0].port.unwrap()).collect();
        assert_eq!(ports, [8080, 8081]);
        assert_eq!(plan.create[0].metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL], "web");
        assert_eq!(plan.create[0].metadata.owner_references.as_ref().unwrap()[0].uid, "svc-uid");
        let legacy = legacy_endpoints(&svc, &desired);
        assert_eq!(legacy.subsets.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn conditions_follow_readiness_and_termination() {
        let svc = service(json!(80));
        let pods = [pod("ready", "127.0.0.1", 80, true, false), pod("unready", "127.0.0.2", 80, false, false), pod("leaving", "127.0.0.3", 80, true, true)];
        let desired = desired_endpoints(&svc, &pods);
        let (_, eps) = desired.values().next().unwrap();
        let cond = |n: &str| eps[n].conditions.clone().unwrap();
        assert_eq!((cond("ready").ready, cond("ready").serving, cond("ready").terminating), (Some(true), Some(true), Some(false)));
        assert_eq!((cond("unready").ready, cond("unready").serving), (Some(false), Some(false)));
        assert_eq!((cond("leaving").ready, cond("leaving").serving, cond("leaving").terminating), (Some(false), Some(true), Some(true)));
        let legacy = legacy_endpoints(&svc, &desired);
        let subset = &legacy.subsets.unwrap()[0];
        assert_eq!(subset.addresses.as_ref().unwrap().len(), 1);
        assert_eq!(subset.not_ready_addresses.as_ref().unwrap()[0].ip, "127.0.0.2");
    }

    #[test]
    fn more_than_a_slice_splits_and_a_change_touches_one_slice() {
        let svc = service(json!(80));
        let pods: Vec<Pod> = (0..250).map(|i| pod(&format!("p{i:03}"), "127.0.0.1", 80, true, false)).collect();
        let plan = plan_slices(&svc, desired_endpoints(&svc, &pods), &[], 100);
        let sizes: Vec<usize> = plan.create.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        // Pretend they were written, then flip one pod's readiness.
        let existing: Vec<Arc<EndpointSlice>> = plan
            .create
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                s.metadata.name = Some(format!("web-{i}"));
                Arc::new(s)
            })
            .collect();
        let mut pods = pods;
        pods[150] = pod("p150", "127.0.0.1", 80, false, false);
        let plan = plan_slices(&svc, desired_endpoints(&svc, &pods), &existing, 100);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.update.len(), 1);
        assert_eq!(plan.update[0].metadata.name.as_deref(), Some("web-1"));
        // Removing every pod deletes every slice.
        let plan = plan_slices(&svc, desired_endpoints(&svc, &[]), &existing, 100);
        assert_eq!(plan.delete.len(), 3);
    }

    #[test]
    fn publish_not_ready_addresses_marks_all_ready() {
        let mut svc = service(json!(80));
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let desired = desired_endpoints(&svc, &[pod("u", "127.0.0.2", 80, false, false)]);
        let (_, eps) = desired.values().next().unwrap();
        assert_eq!(eps["u"].conditions.as_ref().unwrap().ready, Some(true));
    }
}
