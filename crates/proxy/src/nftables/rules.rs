//! The nftables rules of the kernel data plane, laid out as kube-proxy's
//! nftables mode lays them out (pure: text in, no kernel here).
//!
//! One table per family, `ip wharf` and `ip6 wharf`, alike but for the
//! addresses they match. A verdict map `service-ips` sends (destination,
//! protocol, port) to one chain per service port and scope; that chain
//! picks an endpoint chain by `numgen random` (after any ClientIP
//! affinity) and the endpoint chain DNATs. Frontends without a usable
//! endpoint are in `no-endpoint-services` instead, whose filter chains run
//! before NAT and reject new connections at once. The nat chains hook
//! `output` (the node's own processes) and `prerouting` (other network
//! namespaces and hosts).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::claims::FrontendKey;
use crate::model::{Endpoint, Frontend, Lane, Protocol, Scope, ServicePort};
use crate::nftables::ops::{BaseChain, Op};
use wharf_api::ipfamily::IpFamily;

pub const TABLE: &str = "wharf";
pub const SERVICE_IPS: &str = "service-ips";
pub const NO_ENDPOINTS: &str = "no-endpoint-services";
pub const REJECT_CHAIN: &str = "reject-chain";
/// The packet mark bit that asks `nat-postrouting` to masquerade.
pub const MASQUERADE_BIT: u32 = 0x8000;
/// nftables' own limit on chain and set names is 256 bytes.
const NAME_LIMIT: usize = 200;
/// Clients remembered per endpoint for ClientIP affinity.
pub const AFFINITY_ENTRIES: u32 = 65_535;

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

    /// The chain the verdict goes to.
    pub fn chain(&self) -> &str {
        match self {
            Verdict::Serve(chain) => chain,
            Verdict::Reject => REJECT_CHAIN,
        }
    }
}

/// One rule of wharf's table: the few shapes it is made of. `Display`
/// writes each as `nft list` shows it; `encode` writes it for the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `ip daddr . meta l4proto . th dport vmap @MAP` (`ip6 daddr` for IPv6)
    Dispatch(&'static str, IpFamily),
    /// `jump CHAIN`
    Jump(String),
    /// `ct state new jump CHAIN`
    JumpIfNew(String),
    /// `goto CHAIN`
    Goto(String),
    /// `meta mark & BIT == BIT meta mark set meta mark ^ BIT masquerade fully-random`
    MasqueradeMarked,
    /// `reject with tcp reset` (TCP only)
    RejectTcp,
    /// `reject` (ICMP port unreachable)
    Reject,
    /// `fib saddr type != local meta mark set meta mark | BIT`: a client
    /// from elsewhere, whose reply must come back through this node.
    MarkRemote,
    /// `ip saddr ADDR meta mark set meta mark | BIT`: an endpoint reaching
    /// itself through its service (hairpin).
    MarkHairpin(IpAddr),
    /// `ip saddr @SET goto CHAIN`
    Sticky { set: String, chain: String, family: IpFamily },
    /// `update @SET { ip saddr }`
    Remember(String, IpFamily),
    /// `meta l4proto PROTO dnat to ADDR`
    Dnat(Protocol, SocketAddr),
    /// `numgen random mod N vmap { 0 : goto A, 1 : goto B, ... }`
    Spread(Vec<String>),
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bit = MASQUERADE_BIT;
        match self {
            Rule::Dispatch(map, family) => write!(f, "{} daddr . meta l4proto . th dport vmap @{map}", header(*family)),
            Rule::Jump(chain) => write!(f, "jump {chain}"),
            Rule::JumpIfNew(chain) => write!(f, "ct state new jump {chain}"),
            Rule::Goto(chain) => write!(f, "goto {chain}"),
            Rule::MasqueradeMarked => {
                write!(f, "meta mark & {bit:#010x} == {bit:#010x} meta mark set meta mark ^ {bit:#010x} masquerade fully-random")
            }
            Rule::RejectTcp => write!(f, "reject with tcp reset"),
            Rule::Reject => write!(f, "reject"),
            Rule::MarkRemote => write!(f, "fib saddr type != local meta mark set meta mark | {bit:#010x}"),
            Rule::MarkHairpin(ip) => write!(f, "{} saddr {ip} meta mark set meta mark | {bit:#010x}", header(IpFamily::of(ip))),
            Rule::Sticky { set, chain, family } => write!(f, "{} saddr @{set} goto {chain}", header(*family)),
            Rule::Remember(set, family) => write!(f, "update @{set} {{ {} saddr }}", header(*family)),
            Rule::Dnat(protocol, to) => write!(f, "meta l4proto {} dnat to {to}", protocol_name(*protocol)),
            Rule::Spread(chains) => {
                write!(f, "numgen random mod {} vmap {{ ", chains.len())?;
                for (i, chain) in chains.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{i} : goto {chain}")?;
                }
                write!(f, " }}")
            }
        }
    }
}

/// Everything one service renders to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Chain name → its rules.
    pub chains: BTreeMap<String, Vec<Rule>>,
    /// Affinity set name → its timeout.
    pub sets: BTreeMap<String, Duration>,
    pub elements: BTreeMap<FrontendKey, Verdict>,
    /// The endpoints each frontend sends to: conntrack keeps flows to one
    /// that leaves going there until they are deleted.
    pub targets: BTreeMap<FrontendKey, Vec<SocketAddr>>,
}

/// The family's table (`ip`, `ip6`), and the header its rules match.
pub fn header(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip",
        IpFamily::V6 => "ip6",
    }
}

pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
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

fn rule(chain: &str, rule: Rule) -> Op {
    Op::AddRule { chain: chain.to_string(), rule }
}

/// The operations that make a family's table with its hooks and maps,
/// empty of services.
pub fn base(family: IpFamily) -> Vec<Op> {
    let mut out = vec![
        Op::AddTable,
        Op::AddMap(SERVICE_IPS),
        Op::AddMap(NO_ENDPOINTS),
        Op::AddChain { name: "services".into(), base: None },
        rule("services", Rule::Dispatch(SERVICE_IPS, family)),
        Op::AddChain { name: "nat-postrouting".into(), base: Some(BaseChain::NatPostrouting) },
        rule("nat-postrouting", Rule::MasqueradeMarked),
        Op::AddChain { name: REJECT_CHAIN.into(), base: None },
        rule(REJECT_CHAIN, Rule::RejectTcp),
        rule(REJECT_CHAIN, Rule::Reject),
        Op::AddChain { name: "endpoints-check".into(), base: None },
        rule("endpoints-check", Rule::Dispatch(NO_ENDPOINTS, family)),
    ];
    // DNAT at dstnat priority; the reject check before it (-110), on the
    // destination the client asked for.
    for (base, chain) in [(BaseChain::NatOutput, "nat-output"), (BaseChain::NatPrerouting, "nat-prerouting")] {
        out.push(Op::AddChain { name: chain.into(), base: Some(base) });
        out.push(rule(chain, Rule::Jump("services".into())));
    }
    for (base, chain) in
        [(BaseChain::FilterInput, "filter-input"), (BaseChain::FilterForward, "filter-forward"), (BaseChain::FilterOutput, "filter-output")]
    {
        out.push(Op::AddChain { name: chain.into(), base: Some(base) });
        out.push(rule(chain, Rule::JumpIfNew("endpoints-check".into())));
    }
    out
}

/// The rules of one service in `family`'s table: each port with the
/// frontends of that family this node serves it on, balanced over the
/// endpoints of that family.
pub fn render<'a>(ports: impl IntoIterator<Item = (&'a ServicePort, Vec<&'a Frontend>)>, node: &str, family: IpFamily) -> ServiceRules {
    let mut rules = ServiceRules::default();
    for (port, frontends) in ports {
        for scope in [Scope::Internal, Scope::External] {
            let lane = Lane { scope, family };
            let served: Vec<FrontendKey> = frontends.iter().filter(|f| f.lane() == lane).map(|f| (f.addr, f.protocol)).collect();
            if served.is_empty() {
                continue;
            }
            let usable = port.usable_in(lane, node);
            let verdict = if usable.is_empty() { Verdict::Reject } else { Verdict::Serve(service_chain(&mut rules, port, lane, &usable)) };
            for key in &served {
                rules.targets.insert(*key, usable.iter().map(|e| e.addr).collect());
            }
            rules.elements.extend(served.into_iter().map(|key| (key, verdict.clone())));
        }
    }
    rules
}

/// Adds the chain of one port and scope and its endpoints' chains.
fn service_chain(rules: &mut ServiceRules, port: &ServicePort, lane: Lane, usable: &[&Endpoint]) -> String {
    let scope = lane.scope;
    let protocol = port.frontends.first().map_or(Protocol::Tcp, |f| f.protocol);
    let proto = protocol_name(protocol);
    let identity = format!("{}/{}/{proto}", port.name, scope_name(scope));
    let chain = object_name("svc", &identity);
    let mut body = Vec::new();
    if scope == Scope::External && !port.external_local {
        // Traffic from elsewhere goes out with this node's address, so the
        // reply comes back through it; a Local policy keeps the client's.
        body.push(Rule::MarkRemote);
    }
    let mut targets = Vec::new();
    for endpoint in usable {
        let to = endpoint.addr;
        let ep_identity = format!("{}/{proto}__{}", port.name, endpoint.addr);
        let ep_chain = object_name("ep", &ep_identity);
        let mut ep_body = Vec::new();
        if !to.ip().is_loopback() {
            ep_body.push(Rule::MarkHairpin(to.ip()));
        }
        if let Some(timeout) = port.affinity {
            let set = object_name("aff", &format!("{ep_identity}/{}s", timeout.as_secs()));
            body.push(Rule::Sticky { set: set.clone(), chain: ep_chain.clone(), family: lane.family });
            ep_body.push(Rule::Remember(set.clone(), lane.family));
            rules.sets.insert(set, timeout);
        }
        ep_body.push(Rule::Dnat(protocol, to));
        rules.chains.insert(ep_chain.clone(), ep_body);
        targets.push(ep_chain);
    }
    match <[String; 1]>::try_from(targets) {
        Ok([only]) => body.push(Rule::Goto(only)),
        Err(targets) => body.push(Rule::Spread(targets)),
    }
    rules.chains.insert(chain.clone(), body);
    chain
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
        render([(port, port.frontends.iter().collect())], "node-a", IpFamily::V4)
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
        assert!(body[0].to_string().starts_with("numgen random mod 2 vmap { 0 : goto ep-"), "{body:?}");
        // Endpoint chains are shared by both scopes: 2 of them, and a
        // service chain per scope.
        assert_eq!(rules.chains.len(), 4);
        let remote = rules.chains.iter().find(|(n, _)| n.ends_with("198.18.1.2_8080")).unwrap().1;
        let remote: Vec<String> = remote.iter().map(Rule::to_string).collect();
        assert_eq!(remote, ["ip saddr 198.18.1.2 meta mark set meta mark | 0x00008000", "meta l4proto tcp dnat to 198.18.1.2:8080"]);
        let ext = rules.chains.iter().find(|(n, _)| n.ends_with("/ext/tcp")).unwrap().1;
        assert_eq!(ext[0], Rule::MarkRemote);
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
        assert!(svc[0].to_string().starts_with(&format!("ip saddr @{set} goto ep-")), "{svc:?}");
        let ep = rules.chains.iter().find(|(n, _)| n.starts_with("ep-")).unwrap().1;
        assert_eq!(ep[0], Rule::Remember(set.clone(), IpFamily::V4));
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
