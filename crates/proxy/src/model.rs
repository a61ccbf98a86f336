//! What should be forwarded where, computed from Services and
//! EndpointSlices alone (no sockets here): every frontend address a
//! service answers on, and the endpoints each may use. The data plane
//! (userspace sockets today, kernel rules later) only carries it out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use wharf_api::ipfamily::{IpFamily, ListedFamilies, NodeIps};
use wharf_kube::key::{version_in, Uid};
use wharf_kube::{shared_str, ObjectKey};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }

    fn parse(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None, // SCTP is not proxied
        }
    }
}

/// A service port as seen from outside: (namespace, service, port name).
/// Shared text: the port state, its claims and its table key each hold one
/// (namespace and service are the service key's own).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: Arc<str>,
    pub service: Arc<str>,
    pub port: Arc<str>,
}

impl std::fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// Which of a service's traffic policies governs a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Cluster IP: `internalTrafficPolicy`.
    Internal,
    /// Node port, load balancer, external IP: `externalTrafficPolicy`.
    External,
}

/// One address a service port listens on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    pub scope: Scope,
}

/// Which endpoints a frontend's traffic may use: those its policy scope
/// allows, of its own address family (an IPv6 cluster IP goes to IPv6
/// endpoints, as kube-proxy's per-family proxiers do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lane {
    pub scope: Scope,
    pub family: IpFamily,
}

impl Lane {
    pub const ALL: [Lane; 4] = [
        Lane { scope: Scope::Internal, family: IpFamily::V4 },
        Lane { scope: Scope::Internal, family: IpFamily::V6 },
        Lane { scope: Scope::External, family: IpFamily::V4 },
        Lane { scope: Scope::External, family: IpFamily::V6 },
    ];

    /// Its place in `ALL`.
    pub fn index(self) -> usize {
        let scope = match self.scope {
            Scope::Internal => 0,
            Scope::External => 2,
        };
        scope + usize::from(self.family == IpFamily::V6)
    }
}

impl Frontend {
    pub fn lane(&self) -> Lane {
        Lane { scope: self.scope, family: IpFamily::of(&self.addr.ip()) }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Shared with the slice view it came from.
    pub node: Option<Arc<str>>,
}

/// Everything the data plane needs for one service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub frontends: Vec<Frontend>,
    pub endpoints: Vec<Endpoint>,
    /// ClientIP affinity timeout, if affinity is on.
    pub affinity: Option<Duration>,
    pub internal_local: bool,
    pub external_local: bool,
}

impl ServicePort {
    /// The endpoints traffic in `scope` may use on node `node`, as
    /// kube-proxy chooses them: ready ones, else serving and terminating
    /// ones; with a Local policy only those on this node.
    pub fn usable(&self, scope: Scope, node: &str) -> Vec<&Endpoint> {
        self.usable_where(scope, node, |_| true)
    }

    fn usable_where(&self, scope: Scope, node: &str, keep: impl Fn(&Endpoint) -> bool) -> Vec<&Endpoint> {
        let local = match scope {
            Scope::Internal => self.internal_local,
            Scope::External => self.external_local,
        };
        let candidates: Vec<&Endpoint> = self.endpoints.iter().filter(|e| keep(e) && (!local || e.node.as_deref() == Some(node))).collect();
        let ready: Vec<&Endpoint> = candidates.iter().copied().filter(|e| e.ready).collect();
        if !ready.is_empty() {
            return ready;
        }
        candidates.into_iter().filter(|e| e.serving && e.terminating).collect()
    }

    /// The endpoints traffic in `lane` may use on node `node`: the same
    /// choice, among the endpoints of the lane's family.
    pub fn usable_in(&self, lane: Lane, node: &str) -> Vec<&Endpoint> {
        self.usable_where(lane.scope, node, |e| IpFamily::of(&e.addr.ip()) == lane.family)
    }

    /// Ready endpoints on `node` (the health check's count).
    pub fn local_ready(&self, node: &str) -> usize {
        self.endpoints.iter().filter(|e| e.ready && e.node.as_deref() == Some(node)).count()
    }
}

/// What the node needs to know to place frontends.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub name: String,
    /// Node ports are on these, one per family.
    pub ips: NodeIps,
    /// Frontends someone else serves (the cluster DNS on its service IP).
    pub reserved: BTreeSet<(SocketAddr, Protocol)>,
    /// Whether an address is local to this node (for external IPs).
    pub is_local: fn(IpAddr) -> bool,
}

/// A Service as the proxy keeps it: what its frontends and policies are
/// made of, its age (the older service keeps a contested frontend) and
/// what an event about it names. A decoded Service is over a kilobyte even
/// without the parts the proxy never reads; at 10,000 services that is
/// 10 MB for one table.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceView {
    pub key: ObjectKey,
    uid: Option<Uid>,
    version: Option<NonZeroU64>,
    pub created: Option<Time>,
    /// ExternalName: a DNS alias, nothing to proxy.
    external_name: bool,
    cluster_ips: Box<[IpAddr]>,
    /// `spec.ipFamilies`.
    families: ListedFamilies,
    /// Load-balancer ingress addresses (type LoadBalancer only) and
    /// external IPs: one list, empty for most services.
    external: Box<[ExternalIp]>,
    /// The ClientIP affinity timeout in seconds (the API bounds it to a
    /// day), if affinity is on.
    affinity: Option<NonZeroU32>,
    ports: Box<[PortSpec]>,
    internal_local: bool,
    external_local: bool,
    /// `healthCheckNodePort`, served only with `externalTrafficPolicy: Local`.
    pub health_check_port: Option<u16>,
}

/// An address outside the cluster's ranges that a service answers on.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ExternalIp {
    /// A load-balancer ingress address: served on every node.
    LoadBalancer(IpAddr),
    /// `spec.externalIPs`: served where the address is local.
    External(IpAddr),
}

/// One port of a service the proxy can carry.
#[derive(Clone, Debug, PartialEq)]
struct PortSpec {
    name: Arc<str>,
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
}

/// Kubernetes' ClientIP affinity timeout when none is given: three hours.
const DEFAULT_AFFINITY_SECONDS: NonZeroU32 = NonZeroU32::new(10_800).unwrap();

fn addresses<'a>(ips: impl IntoIterator<Item = &'a str>) -> Box<[IpAddr]> {
    ips.into_iter().filter_map(|ip| ip.parse().ok()).collect()
}

impl From<Service> for ServiceView {
    fn from(svc: Service) -> Self {
        let spec = svc.spec.unwrap_or_default();
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        let ingress = svc.status.and_then(|s| s.load_balancer).and_then(|lb| lb.ingress).unwrap_or_default();
        let lb_ips = if ty == "LoadBalancer" { addresses(ingress.iter().filter_map(|i| i.ip.as_deref())) } else { Box::default() };
        let external_ips = addresses(spec.external_ips.iter().flatten().map(String::as_str));
        let external = lb_ips.iter().map(|ip| ExternalIp::LoadBalancer(*ip)).chain(external_ips.iter().map(|ip| ExternalIp::External(*ip)));
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            let secs =
                spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds).unwrap_or(10800);
            u32::try_from(secs).ok().and_then(NonZeroU32::new).unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(PortSpec {
                    // Port names repeat across services ("http"): one copy.
                    name: shared_str::shared(p.name.as_deref().unwrap_or_default()),
                    protocol: Protocol::parse(p.protocol.as_deref())?,
                    port: u16::try_from(p.port).ok()?,
                    node_port: p.node_port.and_then(|n| u16::try_from(n).ok()).filter(|n| *n != 0),
                })
            })
            .collect();
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        ServiceView {
            key: ObjectKey::of_meta(&svc.metadata),
            uid: svc.metadata.uid.as_deref().map(Uid::new),
            version: version_in(&svc.metadata).and_then(NonZeroU64::new),
            created: svc.metadata.creation_timestamp,
            external_name: ty == "ExternalName",
            cluster_ips: addresses(wharf_api::service::cluster_ips(&spec)),
            families: ListedFamilies::of(&spec),
            external: external.collect(),
            affinity,
            ports,
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local,
            health_check_port: spec.health_check_node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0 && external_local),
        }
    }
}

wharf_kube::keyed_view!(ServiceView, SliceView);

impl ServiceView {
    /// The Service, as an event about it names it.
    pub fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(self.key.namespace.to_string()),
            name: Some(self.key.name.to_string()),
            uid: self.uid.as_ref().map(Uid::to_string),
            resource_version: self.version.map(|v| v.to_string()),
            ..Default::default()
        }
    }
}

/// The frontends and policies of a service's ports; endpoints are left
/// empty for [`attach_endpoints`].
pub fn service_ports(svc: &ServiceView, node: &NodeView) -> Vec<ServicePort> {
    if svc.external_name {
        return Vec::new();
    }
    // Node ports on the node's address of each family the service has.
    let node_ips: Vec<IpAddr> = svc.families.or(IpFamily::of(&node.ips.primary())).filter_map(|f| node.ips.get(f)).collect();
    let external: Vec<IpAddr> = svc
        .external
        .iter()
        .filter_map(|ip| match *ip {
            ExternalIp::LoadBalancer(ip) => Some(ip),
            ExternalIp::External(ip) => (node.is_local)(ip).then_some(ip),
        })
        .collect();
    let mut out = Vec::new();
    for p in svc.ports.iter() {
        let mut frontends = Vec::new();
        let mut add = |ip: IpAddr, port: u16, scope| {
            let addr = SocketAddr::new(ip, port);
            if !node.reserved.contains(&(addr, p.protocol)) {
                frontends.push(Frontend { addr, protocol: p.protocol, scope });
            }
        };
        for ip in svc.cluster_ips.iter() {
            add(*ip, p.port, Scope::Internal);
        }
        if let Some(node_port) = p.node_port {
            for ip in &node_ips {
                add(*ip, node_port, Scope::External);
            }
        }
        for ip in &external {
            add(*ip, p.port, Scope::External);
        }
        if frontends.is_empty() {
            continue;
        }
        out.push(ServicePort {
            name: ServicePortName { namespace: svc.key.namespace.clone(), service: svc.key.name.clone(), port: p.name.clone() },
            frontends,
            endpoints: Vec::new(),
            affinity: svc.affinity.map(|secs| Duration::from_secs(secs.get().into())),
            internal_local: svc.internal_local,
            external_local: svc.external_local,
        });
    }
    out
}

/// An EndpointSlice as the proxy keeps it: which it is and whose, its
/// ports and, per endpoint, its first address, conditions and node. A
/// decoded slice costs about 450 bytes an endpoint; this costs 12 (IPv4)
/// or 24 (IPv6). Its lists are boxed slices: a collected `Vec` keeps up to
/// twice the room. With its box, 128 bytes: the allocator's class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceView {
    pub key: ObjectKey,
    version: Option<NonZeroU64>,
    /// The name of the service it belongs to (`kubernetes.io/service-name`),
    /// in its own namespace.
    owner: Option<Arc<str>>,
    /// (name, protocol, number) of each port it can carry.
    ports: Box<[(Arc<str>, Protocol, u16)]>,
    /// Each endpoint's first address: the API calls an endpoint's
    /// addresses fungible and lets a consumer use only the first, as
    /// kube-proxy does.
    addresses: Addresses,
    /// Each endpoint's conditions and node, in the order of `addresses`.
    endpoints: Box<[EndpointState]>,
    /// The nodes its endpoints name, each once.
    nodes: Box<[Arc<str>]>,
}

/// A slice's addresses, all of its one family: an IPv4 address takes 4
/// bytes, where an `IpAddr` takes 17.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Addresses {
    V4(Box<[Ipv4Addr]>),
    V6(Box<[Ipv6Addr]>),
}

impl Addresses {
    fn get(&self, i: usize) -> Option<IpAddr> {
        match self {
            Addresses::V4(all) => all.get(i).copied().map(IpAddr::V4),
            Addresses::V6(all) => all.get(i).copied().map(IpAddr::V6),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EndpointState {
    ready: bool,
    serving: bool,
    terminating: bool,
    /// Its node, as an index into the slice's `nodes`: 4 bytes, where the
    /// node's shared name was a 16-byte pointer in every endpoint. A slice
    /// holds at most 1,000 endpoints (validation), so the index fits.
    node: Option<u16>,
}

impl SliceView {
    /// The service it belongs to.
    pub fn owner(&self) -> Option<ObjectKey> {
        Some(ObjectKey { namespace: self.key.namespace.clone(), name: self.owner.clone()? })
    }

    /// Names its service with `held`'s copy of the name.
    pub fn share_owner(&mut self, held: &ObjectKey) {
        if self.owner.as_deref() == Some(&*held.name) {
            self.owner = Some(held.name.clone());
        }
    }

    /// Each endpoint's address and state.
    fn endpoints(&self) -> impl Iterator<Item = (IpAddr, &EndpointState)> + '_ {
        self.endpoints.iter().enumerate().filter_map(|(i, state)| Some((self.addresses.get(i)?, state)))
    }
}

impl From<EndpointSlice> for SliceView {
    fn from(slice: EndpointSlice) -> Self {
        let meta = &slice.metadata;
        let key = ObjectKey::of_meta(meta);
        let owner = meta.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")).map(|name| Arc::from(name.as_str()));
        let mut view = SliceView {
            key,
            version: version_in(meta).and_then(NonZeroU64::new),
            owner,
            ports: Box::default(),
            addresses: Addresses::V4(Box::default()),
            endpoints: Box::default(),
            nodes: Box::default(),
        };
        let v6 = match slice.address_type.as_str() {
            "IPv4" => false,
            "IPv6" => true,
            _ => return view, // FQDN slices carry nothing a proxy can dial
        };
        view.ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|sp| {
                let number = sp.port.and_then(|n| u16::try_from(n).ok())?;
                Some((shared_str::shared(sp.name.as_deref().unwrap_or_default()), Protocol::parse(sp.protocol.as_deref())?, number))
            })
            .collect();
        let mut nodes: Vec<Arc<str>> = Vec::new();
        let mut node_index: HashMap<&str, u16> = HashMap::new();
        let (mut v4s, mut v6s, mut endpoints) = (Vec::new(), Vec::new(), Vec::new());
        for ep in &slice.endpoints {
            match ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) {
                Some(IpAddr::V4(address)) if !v6 => v4s.push(address),
                Some(IpAddr::V6(address)) if v6 => v6s.push(address),
                _ => continue, // none, or of the other family: not the slice's
            }
            let node = ep.node_name.as_deref().and_then(|name| match node_index.get(name) {
                Some(&i) => Some(i),
                None => {
                    let i = u16::try_from(nodes.len()).ok()?;
                    nodes.push(shared_str::shared(name));
                    node_index.insert(name, i);
                    Some(i)
                }
            });
            let cond = ep.conditions.as_ref();
            let (ready, serving, terminating) =
                (cond.and_then(|c| c.ready), cond.and_then(|c| c.serving), cond.and_then(|c| c.terminating));
            endpoints.push(EndpointState {
                // Unset conditions mean ready (and so serving), as in the API.
                ready: ready.unwrap_or(true),
                serving: serving.or(ready).unwrap_or(true),
                terminating: terminating.unwrap_or(false),
                node,
            });
        }
        view.addresses = if v6 { Addresses::V6(v6s.into()) } else { Addresses::V4(v4s.into()) };
        view.endpoints = endpoints.into();
        view.nodes = nodes.into();
        view
    }
}

/// Fills each service port's endpoints from the service's slices: the
/// slice port with the same name and protocol gives the number, per slice.
pub fn attach_endpoints<'a>(
    ports: &mut [ServicePort],
    slices: impl IntoIterator<Item = &'a SliceView>,
    protocol_of: impl Fn(&ServicePort) -> Protocol,
) {
    let mut found: BTreeMap<usize, BTreeSet<Endpoint>> = BTreeMap::new();
    for slice in slices {
        for (i, port) in ports.iter().enumerate() {
            let protocol = protocol_of(port);
            let matching = slice.ports.iter().find(|(name, p, _)| **name == *port.name.port && *p == protocol);
            let Some(&(_, _, number)) = matching else { continue };
            for (address, ep) in slice.endpoints() {
                found.entry(i).or_default().insert(Endpoint {
                    addr: SocketAddr::new(address, number),
                    ready: ep.ready,
                    serving: ep.serving,
                    terminating: ep.terminating,
                    node: ep.node.and_then(|i| slice.nodes.get(usize::from(i))).cloned(),
                });
            }
        }
    }
    for (i, port) in ports.iter_mut().enumerate() {
        port.endpoints = found.remove(&i).map(|s| s.into_iter().collect()).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use wharf_kube::Keyed;

    fn node() -> NodeView {
        NodeView { name: "n1".into(), ips: "127.0.0.1,::1".parse().unwrap(), reserved: BTreeSet::new(), is_local: |ip| ip.is_loopback() }
    }

    fn fleet() -> ServiceView {
        serde_json::from_value::<Service>(json!({
            "metadata": {"name": "fleet", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "127.96.0.50", "externalTrafficPolicy": "Local",
                "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}},
                "ports": [{"name": "http", "port": 443, "nodePort": 31525, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "127.240.0.1"}]}}
        }))
        .unwrap()
        .into()
    }

    fn slice(eps: serde_json::Value, port: i32) -> SliceView {
        let slice: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}))
        .unwrap();
        SliceView::from(slice)
    }

    #[test]
    fn a_service_view_keeps_identity_age_and_health_check_port() {
        let svc = |policy: &str| -> ServiceView {
            serde_json::from_value::<Service>(json!({
                "metadata": {"name": "web", "namespace": "d", "uid": "u1", "resourceVersion": "42", "creationTimestamp": "2026-01-01T00:00:00Z",
                    "labels": {"app": "web"}, "annotations": {"note": "never read"}},
                "spec": {"type": "LoadBalancer", "selector": {"app": "web"}, "clusterIP": "127.96.0.9", "externalTrafficPolicy": policy,
                    "healthCheckNodePort": 32000, "ports": [{"port": 80, "nodePort": 31000}]}
            }))
            .unwrap()
            .into()
        };
        let local = svc("Local");
        assert_eq!((local.key(), local.version(), local.health_check_port), (ObjectKey::new("d", "web"), Some(42), Some(32000)));
        assert!(local.created.is_some());
        let reference = local.reference();
        assert_eq!(
            (reference.kind.as_deref(), reference.namespace.as_deref(), reference.name.as_deref(), reference.uid.as_deref()),
            (Some("Service"), Some("d"), Some("web"), Some("u1"))
        );
        assert_eq!(svc("Cluster").health_check_port, None, "served only for externalTrafficPolicy: Local");
        // One per service: 200 bytes (the allocator's 224-byte class, and a
        // list of families apart) before its families, outside addresses
        // and affinity were made compact.
        assert!(std::mem::size_of::<ServiceView>() <= 160, "a service view is {} bytes", std::mem::size_of::<ServiceView>());
    }

    #[test]
    fn a_slice_view_knows_its_service() {
        let slice: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "web-x", "namespace": "d", "resourceVersion": "9",
            "labels": {"kubernetes.io/service-name": "web"}}, "addressType": "FQDN", "endpoints": []}))
        .unwrap();
        let view = SliceView::from(slice);
        assert_eq!((view.key(), view.version(), view.owner()), (ObjectKey::new("d", "web-x"), Some(9), Some(ObjectKey::new("d", "web"))));
        assert!(view.ports.is_empty() && view.endpoints.is_empty(), "an FQDN slice carries nothing to dial");
    }

    #[test]
    fn an_endpoint_is_dialled_at_its_first_address() {
        let mut ports = service_ports(&fleet(), &node());
        let s = slice(
            json!([
                {"addresses": ["127.0.0.7", "127.0.0.8"], "nodeName": "n1"},
                {"addresses": ["not-an-ip"], "nodeName": "n1"},
                {"addresses": [], "nodeName": "n1"}
            ]),
            8080,
        );
        attach_endpoints(&mut ports, [&s], |p| p.frontends[0].protocol);
        let all: Vec<String> = ports[0].usable(Scope::Internal, "n1").iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(all, ["127.0.0.7:8080"], "the others are fungible with the first (kube-proxy dials only it)");
    }

    #[test]
    fn each_endpoint_keeps_its_own_node() {
        let mut ports = service_ports(&fleet(), &node());
        let s = slice(
            json!([
                {"addresses": ["127.0.0.1"], "nodeName": "n1"},
                {"addresses": ["127.0.0.2"], "nodeName": "n2"},
                {"addresses": ["127.0.0.3"]},
                {"addresses": ["127.0.0.4"], "nodeName": "n1"}
            ]),
            8080,
        );
        assert_eq!(s.nodes.len(), 2, "each node named once");
        attach_endpoints(&mut ports, [&s], |p| p.frontends[0].protocol);
        let nodes: Vec<(String, Option<&str>)> = ports[0].endpoints.iter().map(|e| (e.addr.to_string(), e.node.as_deref())).collect();
        assert_eq!(
            nodes,
            [
                ("127.0.0.1:8080".to_string(), Some("n1")),
                ("127.0.0.2:8080".to_string(), Some("n2")),
                ("127.0.0.3:8080".to_string(), None),
                ("127.0.0.4:8080".to_string(), Some("n1"))
            ]
        );
        // 24 bytes an endpoint when each held an `IpAddr`; the view grew
        // by the addresses' family, its owner shrank to a name.
        assert!(matches!(&s.addresses, Addresses::V4(all) if all.len() == 4), "IPv4 addresses at 4 bytes each");
        assert!(std::mem::size_of::<EndpointState>() <= 8, "an endpoint's state is {} bytes", std::mem::size_of::<EndpointState>());
        assert!(std::mem::size_of::<SliceView>() <= 128, "a slice view is {} bytes", std::mem::size_of::<SliceView>());
    }

    #[test]
    fn an_ipv6_slice_dials_its_ipv6_addresses_only() {
        let mut ports = service_ports(&fleet(), &node());
        let s: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "s"}, "addressType": "IPv6",
            "endpoints": [{"addresses": ["fd00::7"], "nodeName": "n1"}, {"addresses": ["127.0.0.8"], "nodeName": "n1"}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}))
        .unwrap();
        let s = SliceView::from(s);
        assert!(matches!(&s.addresses, Addresses::V6(all) if all.len() == 1), "an address of the other family is not the slice's");
        attach_endpoints(&mut ports, [&s], |p| p.frontends[0].protocol);
        let all: Vec<(String, Option<&str>)> = ports[0].endpoints.iter().map(|e| (e.addr.to_string(), e.node.as_deref())).collect();
        assert_eq!(all, [("[fd00::7]:8080".to_string(), Some("n1"))]);
    }

    #[test]
    fn frontends_of_every_kind() {
        let ports = service_ports(&fleet(), &node());
        assert_eq!(ports.len(), 1);
        let addrs: Vec<String> = ports[0].frontends.iter().map(|f| format!("{} {:?}", f.addr, f.scope)).collect();
        assert_eq!(addrs, ["127.96.0.50:443 Internal", "127.0.0.1:31525 External", "127.240.0.1:443 External"]);
        assert_eq!(ports[0].affinity, Some(Duration::from_secs(30)));
        assert!(ports[0].external_local && !ports[0].internal_local);
    }

    #[test]
    fn named_ports_resolve_per_slice_and_policies_filter() {
        let mut ports = service_ports(&fleet(), &node());
        let a = slice(json!([{"addresses": ["127.0.0.1"], "nodeName": "n1", "conditions": {"ready": true}}]), 8080);
        let b = slice(json!([{"addresses": ["127.0.0.2"], "nodeName": "n2", "conditions": {"ready": true}}]), 8081);
        attach_endpoints(&mut ports, [&a, &b], |p| p.frontends[0].protocol);
        let p = &ports[0];
        let all: Vec<String> = p.usable(Scope::Internal, "n1").iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(all, ["127.0.0.1:8080", "127.0.0.2:8081"]);
        let local: Vec<String> = p.usable(Scope::External, "n1").iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(local, ["127.0.0.1:8080"]);
        assert!(p.usable(Scope::External, "n3").is_empty());
        assert_eq!(p.local_ready("n1"), 1);
    }

    #[test]
    fn terminating_endpoints_are_the_fallback() {
        let mut ports = service_ports(&fleet(), &node());
        let s = slice(
            json!([
            {"addresses": ["127.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["127.0.0.4"], "conditions": {"ready": false, "serving": false, "terminating": false}}]),
            80,
        );
        attach_endpoints(&mut ports, [&s], |p| p.frontends[0].protocol);
        let usable: Vec<String> = ports[0].usable(Scope::Internal, "n1").iter().map(|e| e.addr.to_string()).collect();
        assert_eq!(usable, ["127.0.0.3:80"]);
    }

    #[test]
    fn reserved_frontends_and_external_names_are_skipped() {
        let mut n = node();
        n.reserved.insert(("127.96.0.10:53".parse().unwrap(), Protocol::Udp));
        let dns: Service = serde_json::from_value(json!({"metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {"clusterIP": "127.96.0.10", "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "metrics", "port": 9153}]}})).unwrap();
        let ports = service_ports(&dns.into(), &n);
        assert_eq!(ports.len(), 1);
        assert_eq!(&*ports[0].name.port, "metrics");
        let ext: Service = serde_json::from_value(
            json!({"metadata": {"name": "e", "namespace": "d"}, "spec": {"type": "ExternalName", "externalName": "x.example"}}),
        )
        .unwrap();
        assert!(service_ports(&ext.into(), &n).is_empty());
    }
}
