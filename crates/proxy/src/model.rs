//! What should be forwarded where, computed from Services and
//! EndpointSlices alone (no sockets here): every frontend address a
//! service answers on, and the endpoints each may use. The data plane
//! (userspace sockets today, kernel rules later) only carries it out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use wharf_api::ipfamily::{IpFamily, NodeIps};

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
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub service: String,
    pub port: String,
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
    pub node: Option<String>,
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

/// The frontends and policies of a service's ports; endpoints are left
/// empty for [`attach_endpoints`].
pub fn service_ports(svc: &Service, node: &NodeView) -> Vec<ServicePort> {
    let Some(spec) = &svc.spec else { return Vec::new() };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if ty == "ExternalName" {
        return Vec::new();
    }
    let cluster_ips: Vec<IpAddr> = wharf_api::service::cluster_ips(spec).into_iter().filter_map(|ip| ip.parse().ok()).collect();
    // Node ports on the node's address of each family the service has.
    let families: Vec<IpFamily> = match spec.ip_families.as_deref() {
        Some(listed) if !listed.is_empty() => listed.iter().filter_map(|f| IpFamily::parse(f)).collect(),
        _ => vec![IpFamily::of(&node.ips.primary())],
    };
    let node_ips: Vec<IpAddr> = families.iter().filter_map(|f| node.ips.get(*f)).collect();
    let lb_ips: Vec<IpAddr> = if ty == "LoadBalancer" {
        svc.status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect()
    } else {
        Vec::new()
    };
    let external_ips: Vec<IpAddr> =
        spec.external_ips.iter().flatten().filter_map(|ip| ip.parse().ok()).filter(|ip| (node.is_local)(*ip)).collect();
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let secs =
            spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds).unwrap_or(10800);
        Duration::from_secs(u64::try_from(secs).unwrap_or(10800))
    });
    let name = |port: &str| ServicePortName {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        service: svc.metadata.name.clone().unwrap_or_default(),
        port: port.to_string(),
    };
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else { continue };
        let Ok(port) = u16::try_from(p.port) else { continue };
        let mut frontends = Vec::new();
        let mut add = |ip: IpAddr, port: u16, scope| {
            let addr = SocketAddr::new(ip, port);
            if !node.reserved.contains(&(addr, protocol)) {
                frontends.push(Frontend { addr, protocol, scope });
            }
        };
        for ip in &cluster_ips {
            add(*ip, port, Scope::Internal);
        }
        if let Some(node_port) = p.node_port.and_then(|n| u16::try_from(n).ok()).filter(|n| *n != 0) {
            for ip in &node_ips {
                add(*ip, node_port, Scope::External);
            }
        }
        for ip in lb_ips.iter().chain(&external_ips) {
            add(*ip, port, Scope::External);
        }
        if frontends.is_empty() {
            continue;
        }
        out.push(ServicePort {
            name: name(p.name.as_deref().unwrap_or_default()),
            frontends,
            endpoints: Vec::new(),
            affinity,
            internal_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_local: spec.external_traffic_policy.as_deref() == Some("Local"),
        });
    }
    out
}

/// An EndpointSlice as the proxy keeps it: its ports and, per endpoint,
/// the addresses, conditions and node. A decoded slice costs about 450
/// bytes an endpoint; this costs under 100.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SliceView {
    /// (name, protocol, number) of each port it can carry.
    ports: Vec<(String, Protocol, u16)>,
    endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SliceEndpoint {
    addresses: Box<[IpAddr]>,
    ready: bool,
    serving: bool,
    terminating: bool,
    node: Option<Box<str>>,
}

impl From<&EndpointSlice> for SliceView {
    fn from(slice: &EndpointSlice) -> Self {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            return Self::default(); // FQDN slices carry nothing a proxy can dial
        }
        let ports = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|sp| {
                let number = sp.port.and_then(|n| u16::try_from(n).ok())?;
                Some((sp.name.clone().unwrap_or_default(), Protocol::parse(sp.protocol.as_deref())?, number))
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .map(|ep| {
                let cond = ep.conditions.clone().unwrap_or_default();
                SliceEndpoint {
                    addresses: ep.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                    // Unset conditions mean ready (and so serving), as in the API.
                    ready: cond.ready.unwrap_or(true),
                    serving: cond.serving.or(cond.ready).unwrap_or(true),
                    terminating: cond.terminating.unwrap_or(false),
                    node: ep.node_name.as_deref().map(Box::from),
                }
            })
            .collect();
        Self { ports, endpoints }
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
            let matching = slice.ports.iter().find(|(name, p, _)| *name == port.name.port && *p == protocol);
            let Some(&(_, _, number)) = matching else { continue };
            for ep in &slice.endpoints {
                for &ip in &ep.addresses {
                    found.entry(i).or_default().insert(Endpoint {
                        addr: SocketAddr::new(ip, number),
                        ready: ep.ready,
                        serving: ep.serving,
                        terminating: ep.terminating,
                        node: ep.node.as_deref().map(String::from),
                    });
                }
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

    fn node() -> NodeView {
        NodeView { name: "n1".into(), ips: "127.0.0.1,::1".parse().unwrap(), reserved: BTreeSet::new(), is_local: |ip| ip.is_loopback() }
    }

    fn fleet() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "fleet", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "clusterIP": "127.96.0.50", "externalTrafficPolicy": "Local",
                "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}},
                "ports": [{"name": "http", "port": 443, "nodePort": 31525, "protocol": "TCP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "127.240.0.1"}]}}
        }))
        .unwrap()
    }

    fn slice(eps: serde_json::Value, port: i32) -> SliceView {
        let slice: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": "s"}, "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}))
        .unwrap();
        SliceView::from(&slice)
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
        let ports = service_ports(&dns, &n);
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].name.port, "metrics");
        let ext: Service = serde_json::from_value(
            json!({"metadata": {"name": "e", "namespace": "d"}, "spec": {"type": "ExternalName", "externalName": "x.example"}}),
        )
        .unwrap();
        assert!(service_ports(&ext, &n).is_empty());
    }
}
