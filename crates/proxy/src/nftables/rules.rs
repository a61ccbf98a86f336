//! The nftables rules of the kernel data plane, laid out as kube-proxy's
//! nftables mode lays them out (pure: text in, no kernel here).
//!
//! One table, `ip wharf`. A verdict map `service-ips` sends (destination,
//! protocol, port) to one chain per service port and scope; that chain
//! picks an endpoint chain by `numgen random` (after any ClientIP
//! affinity) and the endpoint chain DNATs. Frontends without a usable
//! endpoint are in `no-endpoint-services` instead, whose filter chains run
//! before NAT and reject new connections at once. The nat chains hook
//! `output` (the node's own processes) and `prerouting` (other network
//! namespaces and hosts).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::claims::FrontendKey;
use crate::model::{Endpoint, Frontend, Protocol, Scope, ServicePort};

pub const TABLE: &str = "wharf";
pub const SERVICE_IPS: &str = "service-ips";
pub const NO_ENDPOINTS: &str = "no-endpoint-services";
const REJECT_CHAIN: &str = "reject-chain";
/// The packet mark bit that asks `nat-postrouting` to masquerade.
const MASQUERADE_BIT: u32 = 0x8000;
/// nftables' own limit on chain and set names is 256 bytes.
const NAME_LIMIT: usize = 200;
/// Clients remembered per endpoint for ClientIP affinity.
pub const AFFINITY_ENTRIES: usize = 65_535;

/// Where a frontend's packets go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// To this service chain.
    Serve(String),
    /// No usable endpoint: rejected.
    Reject,
}

impl Verdict {
    pub fn map(&self) -> &'static str {
        match self {
            Verdict::Serve(_) => SERVICE_IPS,
            Verdict::Reject => NO_ENDPOINTS,
        }
    }

    pub fn text(&self) -> String {
        match self {
            Verdict::Serve(chain) => format!("goto {chain}"),
            Verdict::Reject => format!("goto {REJECT_CHAIN}"),
        }
    }
}

/// Everything one service renders to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Chain name → its rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Affinity set name → its timeout.
    pub sets: BTreeMap<String, Duration>,
    pub elements: BTreeMap<FrontendKey, Verdict>,
    /// The endpoints each frontend sends to: conntrack keeps flows to one
    /// that leaves going there until they are deleted.
    pub targets: BTreeMap<FrontendKey, Vec<SocketAddr>>,
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// A map key: `ip . proto . port`.
pub fn element_key((addr, proto): &FrontendKey) -> String {
    format!("{} . {} . {}", addr.ip(), protocol(*proto), addr.port())
}

/// FNV-1a: names must be the same for the same object in every run.
fn stable_hash(text: &str) -> u32 {
    let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    (hash ^ (hash >> 32)) as u32
}

/// `kind-HASH-readable`: unique by the hash, readable in `nft list`,
/// only characters nft takes in a bare name.
fn object_name(kind: &str, identity: &str) -> String {
    let readable: String =
        identity.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.') { c } else { '_' }).collect();
    let mut name = format!("{kind}-{:08x}-{readable}", stable_hash(identity));
    name.truncate(NAME_LIMIT);
    name
}

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Internal => "int",
        Scope::External => "ext",
    }
}

/// The commands that make the table with its hooks and maps, empty of
/// services.
pub fn base() -> Vec<String> {
    let t = format!("ip {TABLE}");
    let key = "type ipv4_addr . inet_proto . inet_service : verdict ;";
    let mut out = vec![
        format!("add table {t}"),
        format!("add map {t} {SERVICE_IPS} {{ {key} }}"),
        format!("add map {t} {NO_ENDPOINTS} {{ {key} }}"),
        format!("add chain {t} services"),
        format!("add rule {t} services ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
        format!("add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; policy accept ; }}"),
        format!(
            "add rule {t} nat-postrouting meta mark & {MASQUERADE_BIT:#x} == {MASQUERADE_BIT:#x} \
             meta mark set meta mark xor {MASQUERADE_BIT:#x} masquerade fully-random"
        ),
        format!("add chain {t} {REJECT_CHAIN}"),
        format!("add rule {t} {REJECT_CHAIN} meta l4proto tcp reject with tcp reset"),
        format!("add rule {t} {REJECT_CHAIN} reject"),
        format!("add chain {t} endpoints-check"),
        format!("add rule {t} endpoints-check ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINTS}"),
    ];
    // DNAT at dstnat priority; the reject check before it (-110), on the
    // destination the client asked for.
    for (hook, chain) in [("output", "nat-output"), ("prerouting", "nat-prerouting")] {
        out.push(format!("add chain {t} {chain} {{ type nat hook {hook} priority -100 ; policy accept ; }}"));
        out.push(format!("add rule {t} {chain} jump services"));
    }
    for (hook, chain) in [("input", "filter-input"), ("forward", "filter-forward"), ("output", "filter-output")] {
        out.push(format!("add chain {t} {chain} {{ type filter hook {hook} priority -110 ; policy accept ; }}"));
        out.push(format!("add rule {t} {chain} ct state new jump endpoints-check"));
    }
    out
}

fn ipv4(addr: &SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V4(_))
}

/// The rules of one service: each port with the frontends this node
/// serves it on (IPv4 only: the table is `ip`).
pub fn render<'a>(ports: impl IntoIterator<Item = (&'a ServicePort, Vec<&'a Frontend>)>, node: &str) -> ServiceRules {
    let mut rules = ServiceRules::default();
    for (port, frontends) in ports {
        for scope in [Scope::Internal, Scope::External] {
            let served: Vec<FrontendKey> =
                frontends.iter().filter(|f| f.scope == scope && ipv4(&f.addr)).map(|f| (f.addr, f.protocol)).collect();
            if served.is_empty() {
                continue;
            }
            let usable: Vec<&Endpoint> = port.usable(scope, node).into_iter().filter(|e| ipv4(&e.addr)).collect();
            let verdict = if usable.is_empty() { Verdict::Reject } else { Verdict::Serve(service_chain(&mut rules, port, scope, &usable)) };
            for key in &served {
                rules.targets.insert(*key, usable.iter().map(|e| e.addr).collect());
            }
            rules.elements.extend(served.into_iter().map(|key| (key, verdict.clone())));
        }
    }
    rules
}

/// Adds the chain of one port and scope and its endpoints' chains.
fn service_chain(rules: &mut ServiceRules, port: &ServicePort, scope: Scope, usable: &[&Endpoint]) -> String {
    let protocol = protocol(port.frontends.first().map_or(Protocol::Tcp, |f| f.protocol));
    let identity = format!("{}/{}/{protocol}", port.name, scope_name(scope));
    let chain = object_name("svc", &identity);
    let mut body = Vec::new();
    if scope == Scope::External && !port.external_local {
        // Traffic from elsewhere goes out with this node's address, so the
        // reply comes back through it; a Local policy keeps the client's.
        body.push(format!("fib saddr type != local meta mark set meta mark or {MASQUERADE_BIT:#x}"));
    }
    let mut targets = Vec::new();
    for endpoint in usable {
        let ep_identity = format!("{}/{protocol}__{}", port.name, endpoint.addr);
        let ep_chain = object_name("ep", &ep_identity);
        let mut ep_body = Vec::new();
        let ip = endpoint.addr.ip();
        if !ip.is_loopback() {
            // Hairpin: an endpoint reaching itself through the service.
            ep_body.push(format!("ip saddr {ip} meta mark set meta mark or {MASQUERADE_BIT:#x}"));
        }
        if let Some(timeout) = port.affinity {
            let set = object_name("aff", &format!("{ep_identity}/{}s", timeout.as_secs()));
            body.push(format!("ip saddr @{set} goto {ep_chain}"));
            ep_body.push(format!("update @{set} {{ ip saddr }}"));
            rules.sets.insert(set, timeout);
        }
        ep_body.push(format!("meta l4proto {protocol} dnat to {}", endpoint.addr));
        rules.chains.insert(ep_chain.clone(), ep_body);
        targets.push(ep_chain);
    }
    match targets.as_slice() {
        [only] => body.push(format!("goto {only}")),
        _ => {
            let mut vmap = String::new();
            for (i, target) in targets.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(vmap, "{sep}{i} : goto {target}");
            }
            body.push(format!("numgen random mod {} vmap {{ {vmap} }}", targets.len()));
        }
    }
    rules.chains.insert(chain.clone(), body);
    chain
}

/// The command that makes an affinity set.
pub fn add_set(name: &str, timeout: Duration) -> String {
    format!(
        "add set ip {TABLE} {name} {{ type ipv4_addr ; flags dynamic,timeout ; size {AFFINITY_ENTRIES} ; timeout {}s ; }}",
        timeout.as_secs().max(1)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServicePortName;

    fn endpoint(addr: &str, ready: bool, node: &str) -> Endpoint {
        Endpoint { addr: addr.parse().unwrap(), ready, serving: ready, terminating: false, node: Some(node.into()) }
    }

    fn port(endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            name: ServicePortName { namespace: "default".into(), service: "web".into(), port: "http".into() },
            frontends: vec![
                Frontend { addr: "127.96.0.20:80".parse().unwrap(), protocol: Protocol::Tcp, scope: Scope::Internal },
                Frontend { addr: "198.18.0.1:30080".parse().unwrap(), protocol: Protocol::Tcp, scope: Scope::External },
            ],
            endpoints,
            affinity: None,
            internal_local: false,
            external_local: false,
        }
    }

    fn rendered(port: &ServicePort) -> ServiceRules {
        render([(port, port.frontends.iter().collect())], "node-a")
    }

    #[test]
    fn a_port_renders_a_chain_per_scope_balancing_over_ready_endpoints() {
        let p = port(vec![
            endpoint("127.0.0.2:8080", true, "node-a"),
            endpoint("198.18.1.2:8080", true, "node-b"),
            endpoint("127.0.0.3:8080", false, "node-a"),
        ]);
        let rules = rendered(&p);
        let int = &rules.elements[&("127.96.0.20:80".parse().unwrap(), Protocol::Tcp)];
        let Verdict::Serve(chain) = int else { panic!("served") };
        assert!(chain.starts_with("svc-") && chain.ends_with("-default/web_http/int/tcp"), "{chain}");
        let body = &rules.chains[chain];
        assert_eq!(body.len(), 1);
        assert!(body[0].starts_with("numgen random mod 2 vmap { 0 : goto ep-"), "{body:?}");
        // Endpoint chains are shared by both scopes: 2 of them, and a
        // service chain per scope.
        assert_eq!(rules.chains.len(), 4);
        let remote = rules.chains.iter().find(|(n, _)| n.ends_with("198.18.1.2_8080")).unwrap().1;
        assert_eq!(remote, &["ip saddr 198.18.1.2 meta mark set meta mark or 0x8000", "meta l4proto tcp dnat to 198.18.1.2:8080"]);
        let ext = rules.chains.iter().find(|(n, _)| n.ends_with("/ext/tcp")).unwrap().1;
        assert!(ext[0].starts_with("fib saddr type != local meta mark set"), "{ext:?}");
    }

    #[test]
    fn local_policy_keeps_the_client_address_and_rejects_without_a_local_endpoint() {
        let mut p = port(vec![endpoint("198.18.1.2:8080", true, "node-b")]);
        p.external_local = true;
        let rules = rendered(&p);
        assert_eq!(rules.elements[&("198.18.0.1:30080".parse().unwrap(), Protocol::Tcp)], Verdict::Reject);
        assert!(matches!(rules.elements[&("127.96.0.20:80".parse().unwrap(), Protocol::Tcp)], Verdict::Serve(_)));
        assert!(rules.chains.keys().all(|n| !n.contains("/ext/")));
        let no_endpoints = rendered(&port(vec![endpoint("127.0.0.2:8080", false, "node-a")]));
        assert!(no_endpoints.elements.values().all(|v| *v == Verdict::Reject));
        assert!(no_endpoints.chains.is_empty());
    }

    #[test]
    fn affinity_remembers_the_client_per_endpoint() {
        let mut p = port(vec![endpoint("127.0.0.2:8080", true, "node-a")]);
        p.affinity = Some(Duration::from_secs(60));
        p.frontends.truncate(1);
        let rules = rendered(&p);
        let (set, timeout) = rules.sets.iter().next().unwrap();
        assert_eq!(*timeout, Duration::from_secs(60));
        let svc = rules.chains.iter().find(|(n, _)| n.starts_with("svc-")).unwrap().1;
        assert!(svc[0].starts_with(&format!("ip saddr @{set} goto ep-")), "{svc:?}");
        let ep = rules.chains.iter().find(|(n, _)| n.starts_with("ep-")).unwrap().1;
        assert_eq!(ep[0], format!("update @{set} {{ ip saddr }}"));
    }

    #[test]
    fn names_are_stable_bounded_and_bare() {
        let long = "a".repeat(300) + " ;{}";
        let name = object_name("svc", &long);
        assert_eq!(name, object_name("svc", &long));
        assert!(name.len() <= NAME_LIMIT);
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || "/-_.".contains(c)), "{name}");
        assert_ne!(object_name("svc", "a"), object_name("svc", "b"));
    }
}
