//! What a service's endpoints should be (pure): its pods' endpoints with
//! their conditions and each pod's own resolution of named target ports,
//! grouped by port set, placed into slices of at most 100 endpoints with
//! the least churn, and the legacy Endpoints object in step.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU64;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort as LegacyPort, EndpointSubset, Endpoints, ObjectReference, Pod};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use wharf_api::ipfamily::IpFamily;

use wharf_kube::key::{version_of, ObjectKey, Uid};
use wharf_kube::shared_str::Interner;
use wharf_kube::Keyed;

use super::digest::{pod_tag, port_key, EndpointsDigest, SliceDigest};
use super::labels::Labels;
use super::service::{ServiceInfo, Target};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Set on the Endpoints this controller writes, as Kubernetes' endpoints
/// controller does: they are its own, and the mirroring controller skips them.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// Kubernetes' default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Legacy Endpoints are truncated here, as Kubernetes does since 1.22.
const MAX_LEGACY_ADDRESSES: usize = 1000;
const OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";

/// What placement reads of a pod, and nothing more: a controller keeps one
/// per pod, so a pod costs a few hundred bytes instead of the 5 KiB a
/// decoded `Pod` takes.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    /// Its name, shared with the tables that index the pod.
    name: Arc<str>,
    /// Its namespace and labels, shared with the pods that have both alike.
    scope: Arc<NamespaceLabels>,
    /// Its uid when it is a UUID, as API servers write them: inline. Nil
    /// when it has none, or a uid of another form, which `rare` holds.
    uid: uuid::Uuid,
    /// Its resourceVersion. Nothing else of the pod's metadata is kept (a
    /// whole `ObjectMeta` is 360 bytes before anything is in it).
    pub version: Option<NonZeroU64>,
    /// Its address of each family, if it has one: as Kubernetes'
    /// controller does, a pod without an address of a slice's type is left
    /// out of that slice. `0.0.0.0` stands for none: it is never an
    /// endpoint's address, and an `Option` is 4 bytes more. An IPv6
    /// address is apart, as few clusters have them: inline, it took the
    /// view past 96 bytes (with its allocation, 112, one size class of the
    /// allocator lower than 128).
    ipv4: Ipv4Addr,
    ipv6: Option<Box<Ipv6Addr>>,
    pub ready: bool,
    /// Succeeded or Failed: no longer an endpoint.
    pub finished: bool,
    pub terminating: bool,
    /// Shared by the pods of a node, behind one pointer.
    node_name: Option<Arc<Box<str>>>,
    /// What few pods have, apart: one pointer for the pods without. Shared
    /// by the pods that have the same (a Deployment's pods name the same
    /// ports).
    rare: Option<Arc<RareFields>>,
}

/// The hostname and subdomain a pod may ask for, and its named container
/// ports (name, number): all a service's named `targetPort` resolves
/// against; a number needs no lookup.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct RareFields {
    /// A uid that is not a UUID in its usual form (or is nil).
    uid: Option<Box<str>>,
    hostname: Option<Box<str>>,
    subdomain: Option<Box<str>>,
    named_ports: Box<[(Box<str>, i32)]>,
}

/// A pod's namespace and its labels (in one allocation, `labels.rs`: a
/// `BTreeMap` would take a 540-byte node for a single label): one copy
/// for the pods that have both alike, a Deployment's, behind one pointer
/// where the two took 24 bytes in every pod's view.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct NamespaceLabels {
    namespace: Arc<str>,
    labels: Labels,
}

static NAMESPACE_LABELS: Interner<NamespaceLabels> = Interner::new();

// A `PodInfo` is kept by the same reflector as any object.
impl Keyed for PodInfo {
    fn key(&self) -> ObjectKey {
        ObjectKey { namespace: self.scope.namespace.clone(), name: self.name.clone() }
    }

    fn key_parts(&self) -> (&str, &str) {
        (&self.scope.namespace, &self.name)
    }

    fn version(&self) -> Option<u64> {
        self.version.map(u64::from)
    }

    fn share_key(&mut self, held: &Self) {
        self.name = held.name.clone();
    }
}

impl PodInfo {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &Arc<str> {
        &self.scope.namespace
    }

    pub fn labels(&self) -> &Labels {
        &self.scope.labels
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.scope.labels.get(key)
    }

    pub fn ip(&self, family: IpFamily) -> Option<IpAddr> {
        match family {
            IpFamily::V4 => (!self.ipv4.is_unspecified()).then_some(IpAddr::V4(self.ipv4)),
            IpFamily::V6 => self.ipv6.as_deref().map(|ip| IpAddr::V6(*ip)),
        }
    }

    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref().map(|name| &**name)
    }

    pub fn uid(&self) -> Option<String> {
        if !self.uid.is_nil() {
            return Some(self.uid.hyphenated().to_string());
        }
        self.rare.as_ref()?.uid.as_deref().map(String::from)
    }

    pub fn hostname(&self) -> Option<&str> {
        self.rare.as_ref()?.hostname.as_deref()
    }

    pub fn subdomain(&self) -> Option<&str> {
        self.rare.as_ref()?.subdomain.as_deref()
    }

    fn named_ports(&self) -> &[(Box<str>, i32)] {
        self.rare.as_ref().map_or(&[], |rare| &rare.named_ports)
    }
}

/// A pod's addresses: the first of each family in `status.podIPs`, else
/// `status.podIP`. Kept parsed, so a slice carries an address in its
/// canonical form (the same address, whatever case or zeros the pod wrote).
/// An unspecified address (`0.0.0.0`, `::`) is none: no one can reach it.
fn pod_ips_of(status: Option<&k8s_openapi::api::core::v1::PodStatus>) -> (Ipv4Addr, Option<Box<Ipv6Addr>>) {
    let listed = status.into_iter().flat_map(|s| s.pod_ips.iter().flatten().map(|p| &p.ip).chain(s.pod_ip.as_ref()));
    let (mut v4, mut v6) = (Ipv4Addr::UNSPECIFIED, None);
    for ip in listed.filter_map(|ip| ip.parse::<IpAddr>().ok()).filter(|ip| !ip.is_unspecified()) {
        match ip {
            IpAddr::V4(ip) if v4.is_unspecified() => v4 = ip,
            IpAddr::V6(ip) if v6.is_none() => v6 = Some(Box::new(ip)),
            IpAddr::V4(_) | IpAddr::V6(_) => {}
        }
    }
    (v4, v6)
}

static NODE_NAMES: Interner<Box<str>> = Interner::new();

/// The one copy of a node's name that its pods' views share.
fn shared_node_name(name: &str) -> Arc<Box<str>> {
    NODE_NAMES.share(&Box::<str>::from(name), |name| Arc::new(name.clone()))
}

/// A pod's uid as its view keeps it: a UUID inline, anything else as text.
fn uid_of(uid: Option<&str>) -> (uuid::Uuid, Option<Box<str>>) {
    match uid.map(Uid::new) {
        Some(Uid::Uuid(uuid)) if !uuid.is_nil() => (uuid, None),
        Some(other) => (uuid::Uuid::nil(), Some(other.to_string().into())),
        None => (uuid::Uuid::nil(), None),
    }
}

static RARE_FIELDS: Interner<RareFields> = Interner::new();

/// The fields few pods set, or None; the one shared copy of them.
fn rare_fields(spec: Option<&k8s_openapi::api::core::v1::PodSpec>, uid: Option<Box<str>>) -> Option<Arc<RareFields>> {
    let spec = spec?;
    let rare = RareFields {
        uid,
        hostname: spec.hostname.as_deref().map(Box::from),
        subdomain: spec.subdomain.as_deref().map(Box::from),
        named_ports: spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| Some((p.name.as_deref()?.into(), p.container_port)))
            .collect(),
    };
    if rare == RareFields::default() {
        return None;
    }
    // A pod's own hostname (a StatefulSet's) or uid is shared by no other
    // pod: only what a Deployment's pods have alike goes through the table.
    if rare.hostname.is_some() || rare.uid.is_some() {
        return Some(Arc::new(rare));
    }
    Some(RARE_FIELDS.share(&rare, |rare| Arc::new(rare.clone())))
}

impl From<Pod> for PodInfo {
    fn from(pod: Pod) -> Self {
        Self::from(&pod)
    }
}

impl From<&Pod> for PodInfo {
    fn from(pod: &Pod) -> Self {
        let status = pod.status.as_ref();
        let spec = pod.spec.as_ref();
        let m = &pod.metadata;
        let (ipv4, ipv6) = pod_ips_of(status);
        let (uid, text_uid) = uid_of(m.uid.as_deref());
        let ObjectKey { namespace, name } = ObjectKey::of(pod);
        let scope = NamespaceLabels { namespace, labels: Labels::of(m.labels.as_ref()) };
        PodInfo {
            name,
            scope: NAMESPACE_LABELS.share(&scope, |scope| Arc::new(scope.clone())),
            uid,
            version: version_of(pod).and_then(NonZeroU64::new),
            ipv4,
            ipv6,
            ready: status.and_then(|s| s.conditions.as_ref()).into_iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True"),
            finished: matches!(status.and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")),
            terminating: m.deletion_timestamp.is_some(),
            node_name: spec.and_then(|s| s.node_name.as_deref()).map(shared_node_name),
            rare: rare_fields(spec, text_uid),
        }
    }
}

/// The container port `target` names or numbers, for this pod.
fn resolve_port(pod: &PodInfo, target: &Target) -> Option<i32> {
    match target {
        Target::Number(n) => Some(*n),
        Target::Name(name) => pod.named_ports().iter().find(|(n, _)| **n == **name).map(|(_, port)| *port),
    }
}

/// The pod's ports for the service: one per service port whose target
/// resolves for this pod.
fn pod_ports(svc: &ServiceInfo, pod: &PodInfo) -> Vec<EndpointPort> {
    let mut ports: Vec<EndpointPort> = svc
        .ports
        .iter()
        .filter_map(|p| {
            Some(EndpointPort {
                name: Some(p.name.to_string()),
                port: Some(resolve_port(pod, &p.target)?),
                protocol: Some(p.protocol.to_string()),
                app_protocol: p.app_protocol.as_deref().map(String::from),
            })
        })
        .collect();
    ports.sort_by(|a, b| a.name.cmp(&b.name).then(a.protocol.cmp(&b.protocol)));
    ports
}

/// One pod's endpoint for the service's `family` slices, or None if it
/// has no address of that family yet or has finished.
fn pod_endpoint(svc: &ServiceInfo, pod: &PodInfo, family: IpFamily) -> Option<Endpoint> {
    let ip = pod.ip(family)?.to_string();
    if pod.finished {
        return None;
    }
    let publish = svc.publish_not_ready_addresses;
    let hostname = pod.hostname().filter(|_| pod.subdomain() == Some(svc.name())).map(String::from);
    Some(Endpoint {
        addresses: vec![ip],
        conditions: Some(EndpointConditions {
            ready: Some(publish || (pod.ready && !pod.terminating)),
            serving: Some(pod.ready),
            terminating: Some(pod.terminating),
        }),
        hostname,
        node_name: pod.node_name().map(String::from),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(pod.namespace().to_string()),
            name: Some(pod.name().to_string()),
            uid: pod.uid(),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Desired endpoints grouped by port set, each group ordered by pod name.
pub type Desired = BTreeMap<String, (Vec<EndpointPort>, BTreeMap<String, Endpoint>)>;

pub fn desired_endpoints<'a>(svc: &ServiceInfo, pods: impl IntoIterator<Item = &'a PodInfo>, family: IpFamily) -> Desired {
    let mut groups: Desired = BTreeMap::new();
    for pod in pods {
        let Some(endpoint) = pod_endpoint(svc, pod, family) else { continue };
        let ports = pod_ports(svc, pod);
        let name = pod.name().to_string();
        groups.entry(port_key(&ports)).or_insert_with(|| (ports, BTreeMap::new())).1.insert(name, endpoint);
    }
    groups
}

/// The slice writes that bring `existing` to `desired`.
#[derive(Debug, Default)]
pub struct SlicePlan {
    pub create: Vec<EndpointSlice>,
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<Arc<SliceDigest>>,
}

impl SlicePlan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }

    /// This plan and `other`, as one.
    pub fn merge(mut self, other: SlicePlan) -> SlicePlan {
        self.create.extend(other.create);
        self.update.extend(other.update);
        self.delete.extend(other.delete);
        self
    }
}

/// A service's own labels, as a map to add to.
fn labels_of(svc: &ServiceInfo) -> BTreeMap<String, String> {
    svc.labels().iter().map(|(k, v)| (k.into(), v.into())).collect()
}

fn slice_labels(svc: &ServiceInfo) -> BTreeMap<String, String> {
    let mut labels = labels_of(svc);
    labels.insert(SERVICE_NAME_LABEL.into(), svc.name().into());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels
}

fn owner(svc: &ServiceInfo) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.name().into(),
        uid: svc.uid(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Places endpoints of one family with the least churn, as the Kubernetes
/// controller does: keep each endpoint in the slice it is in, fill slices
/// that are changing anyway, then slices with room, then new slices.
/// `existing` are the service's slices of that family.
pub fn plan_slices(svc: &ServiceInfo, mut desired: Desired, existing: &[Arc<SliceDigest>], max: usize, family: IpFamily) -> SlicePlan {
    let labels = slice_labels(svc);
    let owners = vec![owner(svc)];
    let mut plan = SlicePlan::default();
    let mut kept: Vec<Kept> = Vec::new();
    // Slices keep their pods' tags, not names (`pod_tag`). A pod is in one
    // group of the desired endpoints at most: its ports decide which.
    let names: HashMap<NonZeroU64, String> =
        desired.values().flat_map(|(_, wanted)| wanted.keys()).map(|name| (pod_tag(name), name.clone())).collect();
    for slice in existing {
        let Some((ports, wanted)) = desired.get_mut(&*slice.ports) else {
            plan.delete.push(slice.clone());
            continue;
        };
        let endpoints: Vec<Endpoint> = slice.endpoints.iter().filter_map(|ep| wanted.remove(names.get(&ep.pod?)?)).collect();
        let changed = !slice.holds(&endpoints) || {
            let meta = slice.meta.object_meta();
            meta.labels.as_ref() != Some(&labels) || meta.owner_references.as_ref() != Some(&owners)
        };
        kept.push(Kept { slice: slice.clone(), ports: ports.clone(), endpoints, changed });
    }
    for (key, (ports, wanted)) in desired {
        let mut rest: VecDeque<Endpoint> = wanted.into_values().collect();
        // Slices being written anyway first, then the fullest with room.
        let mut order: Vec<usize> = (0..kept.len()).filter(|&i| *kept[i].slice.ports == *key).collect();
        order.sort_by_key(|&i| (!kept[i].changed, std::cmp::Reverse(kept[i].endpoints.len())));
        for i in order {
            while kept[i].endpoints.len() < max {
                let Some(ep) = rest.pop_front() else { break };
                kept[i].endpoints.push(ep);
                kept[i].changed = true;
            }
        }
        while !rest.is_empty() {
            let take = rest.len().min(max);
            plan.create.push(EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(format!("{}-", svc.name())),
                    namespace: Some(svc.namespace().into()),
                    labels: Some(labels.clone()),
                    owner_references: Some(owners.clone()),
                    ..Default::default()
                },
                address_type: family.as_str().into(),
                endpoints: rest.drain(..take).collect(),
                ports: Some(ports.clone()),
            });
        }
    }
    for Kept { slice, ports, endpoints, changed } in kept {
        if endpoints.is_empty() {
            plan.delete.push(slice);
        } else if changed {
            plan.update.push(EndpointSlice {
                metadata: ObjectMeta { labels: Some(labels.clone()), owner_references: Some(owners.clone()), ..slice.meta.object_meta() },
                address_type: slice.address_type.to_string(),
                endpoints,
                ports: Some(ports),
            });
        }
    }
    plan
}

/// An existing slice while a plan fills it: the endpoints it will hold,
/// and whether that differs from what it holds now.
struct Kept {
    slice: Arc<SliceDigest>,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
    changed: bool,
}

/// Marks the Endpoints this controller writes. Not skip-mirror alone:
/// the API server's own `kubernetes` Endpoints carry that too, and are not
/// this controller's to delete.
pub const ENDPOINTS_MANAGED_BY_LABEL: &str = "endpoints.wharf.dev/managed-by";
const ENDPOINTS_MANAGER: &str = "endpointslice-controller";

fn endpoints_labels(svc: &ServiceInfo) -> BTreeMap<String, String> {
    let mut labels = labels_of(svc);
    labels.insert(SKIP_MIRROR_LABEL.into(), "true".into());
    labels.insert(ENDPOINTS_MANAGED_BY_LABEL.into(), ENDPOINTS_MANAGER.into());
    labels
}

/// Whether this controller wrote an Endpoints object.
pub fn is_managed_endpoints(ep: &EndpointsDigest) -> bool {
    ep.meta.label_is(ENDPOINTS_MANAGED_BY_LABEL, ENDPOINTS_MANAGER)
}

/// The legacy Endpoints object for the same endpoints: one subset per
/// port set, ready addresses and not-ready ones; terminating pods are left
/// out, as the Kubernetes endpoints controller does.
pub fn legacy_endpoints(svc: &ServiceInfo, desired: &Desired) -> Endpoints {
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
            if cond.ready == Some(true) {
                ready.push(address)
            } else {
                not_ready.push(address)
            }
        }
        if ready.is_empty() && not_ready.is_empty() {
            continue;
        }
        let by_ip = |a: &EndpointAddress, b: &EndpointAddress| {
            a.ip.cmp(&b.ip).then(a.target_ref.as_ref().map(|t| &t.name).cmp(&b.target_ref.as_ref().map(|t| &t.name)))
        };
        ready.sort_by(by_ip);
        not_ready.sort_by(by_ip);
        let ports: Vec<LegacyPort> = ports
            .iter()
            .map(|p| LegacyPort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: p.port.unwrap_or(0),
                protocol: p.protocol.clone(),
                app_protocol: p.app_protocol.clone(),
            })
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
            name: Some(svc.name().into()),
            namespace: Some(svc.namespace().into()),
            labels: Some(endpoints_labels(svc)),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use serde_json::json;

    fn service(target: serde_json::Value) -> ServiceInfo {
        service_object(target).into()
    }

    fn service_object(target: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "d", "uid": "svc-uid", "labels": {"app": "web"}},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": target}]}
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: &str, port: i32, ready: bool, terminating: bool) -> PodInfo {
        let mut meta = json!({"name": name, "namespace": "d", "uid": format!("uid-{name}"), "labels": {"app": "web"}});
        if terminating {
            meta["deletionTimestamp"] = json!("2030-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({
            "metadata": meta,
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": port}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .map(|p: Pod| PodInfo::from(&p))
        .unwrap()
    }

    #[test]
    fn a_pod_view_keeps_what_an_endpoint_names() {
        let uid = "0b5f3c1e-8d2a-4e6f-9a7b-1c2d3e4f5a6b";
        let plain: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "d", "uid": uid, "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"podIPs": [{"ip": "fd00::1"}, {"ip": "127.0.0.9"}], "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let view = PodInfo::from(&plain);
        assert!(view.rare.is_none(), "a pod without hostname or named ports carries no extra allocation");
        let mut named = plain.clone();
        named.spec.as_mut().unwrap().containers[0].ports =
            serde_json::from_value(json!([{"name": "http", "containerPort": 8080}])).unwrap();
        let (first, second) = (PodInfo::from(&named), PodInfo::from(&named));
        assert!(Arc::ptr_eq(first.rare.as_ref().unwrap(), second.rare.as_ref().unwrap()), "pods that name the same ports share them");
        named.spec.as_mut().unwrap().hostname = Some("web-0".into());
        let (first, second) = (PodInfo::from(&named), PodInfo::from(&named));
        assert_eq!(first.hostname(), Some("web-0"));
        assert!(!Arc::ptr_eq(first.rare.as_ref().unwrap(), second.rare.as_ref().unwrap()), "a pod's own hostname is not interned");
        assert_eq!(view.ip(IpFamily::V4), Some("127.0.0.9".parse().unwrap()));
        assert_eq!(view.ip(IpFamily::V6), Some("fd00::1".parse().unwrap()));
        let svc = service(json!(80));
        let endpoint = pod_endpoint(&svc, &view, IpFamily::V4).unwrap();
        assert_eq!(endpoint.addresses, ["127.0.0.9"]);
        assert_eq!(endpoint.target_ref.unwrap().uid.as_deref(), Some(uid));
        assert_eq!(endpoint.node_name.as_deref(), Some("n1"));
        let other = PodInfo::from(&plain);
        assert!(Arc::ptr_eq(view.node_name.as_ref().unwrap(), other.node_name.as_ref().unwrap()), "pods of a node share its name");

        let mut named = plain.clone();
        let spec = named.spec.as_mut().unwrap();
        (spec.hostname, spec.subdomain) = (Some("h".into()), Some("web".into()));
        let named = PodInfo::from(&named);
        assert_eq!((named.hostname(), named.subdomain()), (Some("h"), Some("web")));
        assert_eq!(pod_endpoint(&svc, &named, IpFamily::V6).unwrap().hostname.as_deref(), Some("h"));
    }

    #[test]
    fn a_pod_view_keeps_any_uid_and_no_unspecified_address_in_80_bytes() {
        let view = |uid: &str, version: &str, ips: &[&str]| {
            let ips: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "d", "uid": uid, "resourceVersion": version},
                "spec": {"containers": [{"name": "c"}]},
                "status": {"podIPs": ips}
            }))
            .unwrap();
            PodInfo::from(&pod)
        };
        let usual = "0b5f3c1e-8d2a-4e6f-9a7b-1c2d3e4f5a6b";
        for uid in [usual, "0B5F3C1E-8D2A-4E6F-9A7B-1C2D3E4F5A6B", "00000000-0000-0000-0000-000000000000", "pod-uid-1", ""] {
            assert_eq!(view(uid, "1", &[]).uid().as_deref(), Some(uid));
        }
        assert!(view(usual, "1", &[]).rare.is_none(), "a UUID is kept inline");
        let unset: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert_eq!(PodInfo::from(&unset).uid(), None);

        use wharf_kube::Keyed;
        assert_eq!((view(usual, "42", &[]).version(), view(usual, "0", &[]).version()), (Some(42), None));

        let unspecified = view(usual, "1", &["::", "0.0.0.0"]);
        assert_eq!((unspecified.ip(IpFamily::V4), unspecified.ip(IpFamily::V6)), (None, None), "no one can reach these");
        let after = view(usual, "1", &["::", "0.0.0.0", "fd00::2", "127.0.0.3", "fd00::3"]);
        assert_eq!(after.ip(IpFamily::V6), Some("fd00::2".parse().unwrap()), "the first address of a family that is one");
        assert_eq!(after.ip(IpFamily::V4), Some("127.0.0.3".parse().unwrap()));

        // One per pod, behind an `Arc`: 80 bytes and the counts fill the
        // allocator's 96-byte class (it was 96, the 112-byte class, with
        // the namespace and the labels apart in every view).
        assert!(std::mem::size_of::<PodInfo>() <= 80, "{}", std::mem::size_of::<PodInfo>());
        let (one, other) = (view(usual, "1", &[]), view("1b5f3c1e-8d2a-4e6f-9a7b-1c2d3e4f5a6b", "2", &[]));
        assert!(Arc::ptr_eq(&one.scope, &other.scope), "pods of one namespace with the same labels share them");
        assert_eq!((one.namespace().as_ref(), one.key()), ("d", ObjectKey::new("d", "p")));
    }

    #[test]
    fn named_ports_resolve_per_pod_into_separate_slices() {
        let svc = service(json!("http"));
        let pods = [pod("a", "127.0.0.1", 8080, true, false), pod("b", "127.0.0.1", 8081, true, false)];
        let desired = desired_endpoints(&svc, &pods, IpFamily::V4);
        assert_eq!(desired.len(), 2);
        let plan = plan_slices(&svc, desired.clone(), &[], 100, IpFamily::V4);
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
        let pods = [
            pod("ready", "127.0.0.1", 80, true, false),
            pod("unready", "127.0.0.2", 80, false, false),
            pod("leaving", "127.0.0.3", 80, true, true),
        ];
        let desired = desired_endpoints(&svc, &pods, IpFamily::V4);
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
        let pods: Vec<PodInfo> = (0..250).map(|i| pod(&format!("p{i:03}"), "127.0.0.1", 80, true, false)).collect();
        let plan = plan_slices(&svc, desired_endpoints(&svc, &pods, IpFamily::V4), &[], 100, IpFamily::V4);
        let sizes: Vec<usize> = plan.create.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        // Pretend they were written, then flip one pod's readiness.
        let existing: Vec<Arc<SliceDigest>> = plan
            .create
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                s.metadata.name = Some(format!("web-{i}"));
                Arc::new(SliceDigest::from(s))
            })
            .collect();
        let mut pods = pods;
        pods[150] = pod("p150", "127.0.0.1", 80, false, false);
        let plan = plan_slices(&svc, desired_endpoints(&svc, &pods, IpFamily::V4), &existing, 100, IpFamily::V4);
        assert!(plan.create.is_empty() && plan.delete.is_empty());
        assert_eq!(plan.update.len(), 1);
        assert_eq!(plan.update[0].metadata.name.as_deref(), Some("web-1"));
        // Removing every pod deletes every slice.
        let plan = plan_slices(&svc, desired_endpoints(&svc, &[], IpFamily::V4), &existing, 100, IpFamily::V4);
        assert_eq!(plan.delete.len(), 3);
    }

    #[test]
    fn pods_whose_tags_collide_still_get_one_endpoint_each() {
        let svc = service(json!(80));
        let pods: Vec<PodInfo> = ["a", "b", "c"].iter().map(|name| pod(name, "127.0.0.1", 80, true, false)).collect();
        let mut written = plan_slices(&svc, desired_endpoints(&svc, &pods[..2], IpFamily::V4), &[], 100, IpFamily::V4).create.remove(0);
        written.metadata.name = Some("web-0".into());
        let mut digest = SliceDigest::from(written);
        // As if "b"'s name hashed to "a"'s tag.
        digest.endpoints[1].pod = digest.endpoints[0].pod;
        let plan = plan_slices(&svc, desired_endpoints(&svc, &pods, IpFamily::V4), &[Arc::new(digest)], 100, IpFamily::V4);
        let mut placed: Vec<String> = plan
            .update
            .iter()
            .chain(&plan.create)
            .flat_map(|s| &s.endpoints)
            .map(|e| e.target_ref.as_ref().unwrap().name.clone().unwrap())
            .collect();
        placed.sort();
        assert_eq!(placed, ["a", "b", "c"], "each wanted endpoint placed once, whatever the tags say");
        assert!(plan.create.is_empty() && plan.delete.is_empty(), "the slice has room: it is updated in place");
    }

    #[test]
    fn publish_not_ready_addresses_marks_all_ready() {
        let mut svc = service_object(json!(80));
        svc.spec.as_mut().unwrap().publish_not_ready_addresses = Some(true);
        let svc = ServiceInfo::from(svc);
        let desired = desired_endpoints(&svc, &[pod("u", "127.0.0.2", 80, false, false)], IpFamily::V4);
        let (_, eps) = desired.values().next().unwrap();
        assert_eq!(eps["u"].conditions.as_ref().unwrap().ready, Some(true));
    }

    #[test]
    fn a_pod_without_a_usable_address_is_left_out_not_fatal() {
        let svc = service(json!(80));
        let pods =
            [pod("good", "127.0.0.1", 80, true, false), pod("bad", "127.1.256.1", 80, true, false), pod("v6", "::1", 80, true, false)];
        let desired = desired_endpoints(&svc, &pods, IpFamily::V4);
        let names: Vec<&String> = desired.values().flat_map(|(_, eps)| eps.keys()).collect();
        assert_eq!(names, ["good"]);
    }

    #[test]
    fn each_family_gets_slices_of_its_own_address_type() {
        let mut svc = service_object(json!(8080));
        svc.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        let svc = ServiceInfo::from(svc);
        assert_eq!(svc.families(), [IpFamily::V6, IpFamily::V4]);
        let dual: Pod = serde_json::from_value(json!({
            "metadata": {"name": "d", "namespace": "d", "uid": "uid-d", "labels": {"app": "web"}},
            "status": {"phase": "Running", "podIP": "127.0.0.9", "podIPs": [{"ip": "127.0.0.9"}, {"ip": "fd00::9"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let pods = [PodInfo::from(&dual), pod("only4", "127.0.0.8", 80, true, false)];
        let v6 = plan_slices(&svc, desired_endpoints(&svc, &pods, IpFamily::V6), &[], 100, IpFamily::V6);
        assert_eq!(v6.create.len(), 1);
        assert_eq!(v6.create[0].address_type, "IPv6");
        let addresses: Vec<&str> = v6.create[0].endpoints.iter().map(|e| e.addresses[0].as_str()).collect();
        assert_eq!(addresses, ["fd00::9"], "a pod without an IPv6 address is left out");
        let v4 = plan_slices(&svc, desired_endpoints(&svc, &pods, IpFamily::V4), &[], 100, IpFamily::V4);
        assert_eq!((v4.create[0].address_type.as_str(), v4.create[0].endpoints.len()), ("IPv4", 2));
        assert_eq!(service(json!(80)).families(), [IpFamily::V4], "IPv4 where none is set");
    }
}
