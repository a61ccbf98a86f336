//! Answers from the index, by the Kubernetes DNS-Based Service Discovery
//! specification and CoreDNS's behaviour: which records a name has, and
//! where NXDOMAIN, NODATA and the synthesized SOA go. Pure: no I/O.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ipnet::IpNet;
use wharf_api::ipfamily::ServiceCidrs;

use crate::freshness::Scope;
use crate::index::{undashed, EndpointEntry, Index, ServiceKind};

/// The schema version `dns-version.<zone>` reports.
pub const SCHEMA_VERSION: &str = "1.1.0";
/// TTL of the `dns-version` record, as in the specification's example.
const VERSION_TTL: u32 = 28800;
/// Links of an ExternalName chain inside the zone that are followed.
pub const MAX_CNAME_CHAIN: usize = 8;

#[derive(Clone, Debug)]
pub struct ZoneConfig {
    /// The cluster domain, lower case, without trailing dot.
    pub domain: String,
    pub ttl: u32,
    /// The DNS server's own service IP, the NS glue.
    pub dns_ip: IpAddr,
    /// The service ranges: the reverse zones the server is authoritative for.
    pub service_cidrs: ServiceCidrs,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Answer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

#[derive(Debug, PartialEq)]
pub enum Resolution {
    /// Authoritative: the cluster zone or a reverse name it owns.
    Local(Answer),
    /// Not the cluster's name: ask the upstream resolvers.
    Forward,
}

fn name(s: &str) -> Option<Name> {
    let fqdn = if s.ends_with('.') { s.to_string() } else { format!("{s}.") };
    Name::from_ascii(fqdn).ok()
}

fn record(owner: &str, ttl: u32, rdata: RData) -> Option<Record> {
    Some(Record::from_rdata(name(owner)?, ttl, rdata))
}

fn srv_weight(count: usize) -> u16 {
    u16::try_from(100 / count.max(1)).unwrap_or(100)
}

/// Parses `d.c.b.a.in-addr.arpa` into a.b.c.d, and the 32 nibbles of an
/// `ip6.arpa` name into its IPv6 address.
fn reverse_address(qname: &str) -> Option<IpAddr> {
    if let Some(rest) = qname.strip_suffix(".in-addr.arpa") {
        let octets: Vec<u8> = rest.split('.').map(|o| o.parse().ok()).collect::<Option<_>>()?;
        let [d, c, b, a] = octets.as_slice() else { return None };
        return Some(IpAddr::V4(Ipv4Addr::new(*a, *b, *c, *d)));
    }
    let rest = qname.strip_suffix(".ip6.arpa")?;
    let nibbles: Vec<u32> =
        rest.split('.').map(|n| if n.len() == 1 { n.chars().next()?.to_digit(16) } else { None }).collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let bits = nibbles.iter().rev().fold(0u128, |acc, n| (acc << 4) | u128::from(*n));
    Some(IpAddr::V6(Ipv6Addr::from(bits)))
}

/// The reverse zone covering a service range, on an octet (IPv4) or
/// nibble (IPv6) boundary.
fn reverse_apex(cidr: &IpNet) -> String {
    match cidr {
        IpNet::V4(v4) => {
            let whole = usize::from(v4.prefix_len() / 8).max(1);
            let mut parts: Vec<String> = v4.network().octets()[..whole].iter().rev().map(u8::to_string).collect();
            parts.push("in-addr.arpa".into());
            parts.join(".")
        }
        IpNet::V6(v6) => {
            let whole = usize::from(v6.prefix_len() / 4).max(1);
            let hex = format!("{:032x}", u128::from(v6.network()));
            let mut parts: Vec<String> = hex[..whole].chars().rev().map(String::from).collect();
            parts.push("ip6.arpa".into());
            parts.join(".")
        }
    }
}

struct Zone<'a> {
    index: &'a Index,
    cfg: &'a ZoneConfig,
    qname: &'a str,
    qtype: RecordType,
    /// Whether an ExternalName's in-zone target is followed (only at the
    /// start of a chain: the chain walks the links itself).
    chase: bool,
    /// The parts of the index the answer was built from, so far.
    scopes: &'a RefCell<Vec<Scope>>,
}

/// The part of the index that answers a name in the zone (labels below
/// the cluster domain), if any: names of other shapes have fixed answers.
fn scope_of(labels: &[&str]) -> Option<Scope> {
    match labels {
        [] => Some(Scope::apex()),
        [ns, "svc" | "pod"] => Some(Scope::namespace(ns)),
        [svc, ns, "svc"] | [_, svc, ns, "svc"] | [_, _, svc, ns, "svc"] => Some(Scope::service(ns, svc)),
        [pod, ns, "pod"] => Some(Scope::pod(ns, pod)),
        _ => None,
    }
}

impl Zone<'_> {
    fn soa(&self, apex: &str) -> Vec<Record> {
        let mname = name(&format!("ns.dns.{apex}"));
        let rname = name(&format!("hostmaster.{apex}"));
        let (Some(mname), Some(rname)) = (mname, rname) else { return Vec::new() };
        let soa = SOA::new(mname, rname, self.index.serial, 7200, 1800, 86400, self.cfg.ttl);
        record(apex, self.cfg.ttl, RData::SOA(soa)).into_iter().collect()
    }

    fn negative(&self, rcode: ResponseCode, apex: &str) -> Answer {
        Answer { rcode, authority: self.soa(apex), ..Default::default() }
    }

    fn nxdomain(&self) -> Answer {
        self.negative(ResponseCode::NXDomain, &self.cfg.domain)
    }

    fn nodata(&self) -> Answer {
        self.negative(ResponseCode::NoError, &self.cfg.domain)
    }

    /// Records of one type at the query name; NODATA when there are none.
    fn answer(&self, records: Vec<Record>, additional: Vec<Record>) -> Answer {
        if records.is_empty() {
            return self.nodata();
        }
        Answer { rcode: ResponseCode::NoError, answers: records, additional, ..Default::default() }
    }

    /// An A or AAAA record for `ip`.
    fn address(&self, owner: &str, ip: IpAddr) -> Option<Record> {
        match ip {
            IpAddr::V4(v4) => record(owner, self.cfg.ttl, RData::A(A(v4))),
            IpAddr::V6(v6) => record(owner, self.cfg.ttl, RData::AAAA(AAAA(v6))),
        }
    }

    /// Whether the query asks for addresses (A or AAAA).
    fn asks_addresses(&self) -> bool {
        matches!(self.qtype, RecordType::A | RecordType::AAAA)
    }

    /// The records of those of `ips` whose family the query asks for
    /// (A: IPv4, AAAA: IPv6), sorted and without repeats.
    fn addresses(&self, owner: &str, ips: impl IntoIterator<Item = IpAddr>) -> Vec<Record> {
        let mut ips: Vec<IpAddr> = ips
            .into_iter()
            .filter(|ip| matches!((ip, self.qtype), (IpAddr::V4(_), RecordType::A) | (IpAddr::V6(_), RecordType::AAAA)))
            .collect();
        ips.sort();
        ips.dedup();
        ips.into_iter().filter_map(|ip| self.address(owner, ip)).collect()
    }

    fn resolve(&self) -> Answer {
        if !self.index.is_synced() {
            return self.negative(ResponseCode::ServFail, &self.cfg.domain);
        }
        let domain = &self.cfg.domain;
        let relative = if self.qname == domain { "" } else { &self.qname[..self.qname.len() - domain.len() - 1] };
        let labels: Vec<&str> = if relative.is_empty() { Vec::new() } else { relative.split('.').collect() };
        self.scopes.borrow_mut().extend(scope_of(&labels));
        match labels.as_slice() {
            [] => self.apex(),
            ["dns-version"] => match self.qtype {
                RecordType::TXT => {
                    let txt = record(self.qname, VERSION_TTL, RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()])));
                    self.answer(txt.into_iter().collect(), Vec::new())
                }
                _ => self.nodata(),
            },
            ["dns"] | ["svc"] | ["pod"] => self.nodata(),
            ["ns", "dns"] => self.answer(self.addresses(self.qname, [self.cfg.dns_ip]), Vec::new()),
            [ns, "svc"] | [ns, "pod"] if self.index.has_namespace(ns) => self.nodata(),
            [svc, ns, "svc"] => self.service(ns, svc),
            [host, svc, ns, "svc"] => self.endpoint(ns, svc, host),
            [port, proto, svc, ns, "svc"] => self.srv_port(ns, svc, port, proto),
            [pod, ns, "pod"] => self.pod(ns, pod),
            _ => self.nxdomain(),
        }
    }

    fn apex(&self) -> Answer {
        let domain = &self.cfg.domain;
        match self.qtype {
            RecordType::SOA => self.answer(self.soa(domain), Vec::new()),
            RecordType::NS => {
                let target = format!("ns.dns.{domain}");
                let ns = name(&target).and_then(|t| record(domain, self.cfg.ttl, RData::NS(NS(t))));
                self.answer(ns.into_iter().collect(), self.address(&target, self.cfg.dns_ip).into_iter().collect())
            }
            _ => self.nodata(),
        }
    }

    fn fqdn(&self, svc: &str, ns: &str) -> String {
        format!("{svc}.{ns}.svc.{}", self.cfg.domain)
    }

    fn ready_endpoints(&self, ns: &str, svc: &str) -> Vec<EndpointEntry> {
        self.index.endpoints(ns, svc).into_iter().filter(|e| e.ready).collect()
    }

    fn service(&self, ns: &str, svc: &str) -> Answer {
        let Some(entry) = self.index.service(ns, svc) else { return self.nxdomain() };
        let fqdn = self.fqdn(svc, ns);
        match &entry.kind {
            ServiceKind::ClusterIp(ips) => match self.qtype {
                _ if self.asks_addresses() => self.answer(self.addresses(self.qname, ips.iter().copied()), Vec::new()),
                RecordType::SRV => {
                    let srv = entry.ports.iter().filter_map(|(_, _, port)| {
                        let target = name(&fqdn)?;
                        record(self.qname, self.cfg.ttl, RData::SRV(SRV::new(0, 100, *port, target)))
                    });
                    self.answer(srv.collect(), ips.iter().filter_map(|ip| self.address(&fqdn, *ip)).collect())
                }
                _ => self.nodata(),
            },
            ServiceKind::Headless => {
                let ready = self.ready_endpoints(ns, svc);
                if ready.is_empty() {
                    return self.nxdomain();
                }
                match self.qtype {
                    _ if self.asks_addresses() => self.answer(self.addresses(self.qname, ready.iter().map(|e| e.ip)), Vec::new()),
                    RecordType::SRV => self.headless_srv(ns, svc, &ready, None),
                    _ => self.nodata(),
                }
            }
            ServiceKind::ExternalName(target) if self.chase => self.external_name(target),
            ServiceKind::ExternalName(target) => {
                Answer { rcode: ResponseCode::NoError, answers: self.cname(target).into_iter().collect(), ..Default::default() }
            }
        }
    }

    /// SRV records for a headless service's ready endpoints, all named
    /// ports or one (`only` = (name, protocol)).
    fn headless_srv(&self, ns: &str, svc: &str, ready: &[EndpointEntry], only: Option<(&str, &str)>) -> Answer {
        let fqdn = self.fqdn(svc, ns);
        let ports: Vec<_> =
            self.index.endpoint_ports(ns, svc).into_iter().filter(|(n, p, _)| only.is_none_or(|(on, op)| **n == *on && *p == op)).collect();
        let weight = srv_weight(ready.len());
        let mut answers = Vec::new();
        let mut additional = Vec::new();
        for ep in ready {
            let target = format!("{}.{fqdn}", ep.hostname());
            for (_, _, port) in &ports {
                if let Some(t) = name(&target) {
                    answers.extend(record(self.qname, self.cfg.ttl, RData::SRV(SRV::new(0, weight, *port, t))));
                }
            }
            additional.extend(self.address(&target, ep.ip));
        }
        self.answer(answers, additional)
    }

    fn cname(&self, target: &str) -> Option<Record> {
        name(target).and_then(|t| record(self.qname, self.cfg.ttl, RData::CNAME(CNAME(t))))
    }

    /// An ExternalName service: its CNAME, and where the target is inside
    /// the cluster zone, the chain followed as CoreDNS does. The chain is
    /// followed step by step (never by recursion) for at most
    /// `MAX_CNAME_CHAIN` links and stops at a name it has seen: a loop is
    /// answered with the chain so far.
    fn external_name(&self, target: &str) -> Answer {
        let Some(first) = self.cname(target) else { return self.nodata() };
        let mut answers = vec![first];
        if self.qtype == RecordType::CNAME {
            return Answer { rcode: ResponseCode::NoError, answers, ..Default::default() };
        }
        let suffix = format!(".{}", self.cfg.domain);
        let mut seen = vec![self.qname.to_string()];
        let mut next = target.to_string();
        while next.ends_with(&suffix) && !seen.contains(&next) && seen.len() <= MAX_CNAME_CHAIN {
            let step = Zone { qname: &next, chase: false, ..*self }.resolve();
            let hop = step.answers.iter().find_map(|r| match &r.data {
                RData::CNAME(CNAME(t)) => Some(t.to_ascii().trim_end_matches('.').to_lowercase()),
                _ => None,
            });
            answers.extend(step.answers);
            seen.push(std::mem::take(&mut next));
            match hop {
                Some(hop) => next = hop,
                None => break,
            }
        }
        Answer { rcode: ResponseCode::NoError, answers, ..Default::default() }
    }

    fn endpoint(&self, ns: &str, svc: &str, host: &str) -> Answer {
        if host.starts_with('_') {
            // `_port._proto` prefixes are empty non-terminals of a named port.
            let known = self.index.service(ns, svc).is_some_and(|s| s.ports.iter().any(|(n, _, _)| format!("_{n}") == host));
            return if known { self.nodata() } else { self.nxdomain() };
        }
        if !matches!(self.index.service(ns, svc).map(|s| &s.kind), Some(ServiceKind::Headless)) {
            return self.nxdomain();
        }
        let matching: Vec<EndpointEntry> = self.ready_endpoints(ns, svc).into_iter().filter(|e| e.answers_to(host)).collect();
        if matching.is_empty() {
            return self.nxdomain();
        }
        self.answer(self.addresses(self.qname, matching.iter().map(|e| e.ip)), Vec::new())
    }

    fn srv_port(&self, ns: &str, svc: &str, port: &str, proto: &str) -> Answer {
        let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_')) else { return self.nxdomain() };
        if !matches!(proto, "tcp" | "udp" | "sctp") {
            return self.nxdomain();
        }
        let Some(entry) = self.index.service(ns, svc) else { return self.nxdomain() };
        let Some((_, _, number)) = entry.ports.iter().find(|(n, p, _)| **n == *port && *p == proto) else {
            return self.nxdomain();
        };
        if self.qtype != RecordType::SRV {
            return self.nodata();
        }
        match &entry.kind {
            ServiceKind::ClusterIp(ips) => {
                let fqdn = self.fqdn(svc, ns);
                let srv = name(&fqdn).and_then(|t| record(self.qname, self.cfg.ttl, RData::SRV(SRV::new(0, 100, *number, t))));
                self.answer(srv.into_iter().collect(), ips.iter().filter_map(|ip| self.address(&fqdn, *ip)).collect())
            }
            ServiceKind::Headless => {
                let ready = self.ready_endpoints(ns, svc);
                if ready.is_empty() {
                    return self.nxdomain();
                }
                self.headless_srv(ns, svc, &ready, Some((port, proto)))
            }
            ServiceKind::ExternalName(_) => self.nodata(),
        }
    }

    fn pod(&self, ns: &str, pod: &str) -> Answer {
        let Some(ip) = undashed(pod).filter(|ip| self.index.has_pod_ip(ns, *ip)) else { return self.nxdomain() };
        self.answer(self.addresses(self.qname, [ip]), Vec::new())
    }

    fn reverse(&self, ip: IpAddr) -> Option<Answer> {
        self.scopes.borrow_mut().push(Scope::address(ip));
        let mut targets: Vec<String> = self.index.services_with_ip(ip).map(|k| self.fqdn(&k.name, &k.namespace)).collect();
        targets.extend(
            self.index.headless_with_endpoint(ip).into_iter().map(|(k, host)| format!("{host}.{}", self.fqdn(&k.name, &k.namespace))),
        );
        targets.sort();
        targets.dedup();
        let range = self.cfg.service_cidrs.iter().find(|n| n.contains(&ip));
        let apex = range.map_or_else(|| reverse_apex(&IpNet::from(ip)), |r| reverse_apex(&r));
        if targets.is_empty() {
            // Authoritative for the service ranges only; other IPs go upstream.
            return range.map(|_| self.negative(ResponseCode::NXDomain, &apex));
        }
        if self.qtype != RecordType::PTR {
            return Some(self.negative(ResponseCode::NoError, &apex));
        }
        let ptrs = targets.iter().filter_map(|t| record(self.qname, self.cfg.ttl, RData::PTR(PTR(name(t)?))));
        Some(self.answer(ptrs.collect(), Vec::new()))
    }
}

/// Resolves a lower-case name without trailing dot. `scopes` receives the
/// parts of the index the answer was built from (see `freshness`).
pub fn resolve(index: &Index, cfg: &ZoneConfig, qname: &str, qtype: RecordType, scopes: &mut Vec<Scope>) -> Resolution {
    let cell = RefCell::new(std::mem::take(scopes));
    let resolution = resolve_in(&Zone { index, cfg, qname, qtype, chase: true, scopes: &cell });
    *scopes = cell.into_inner();
    resolution
}

fn resolve_in(zone: &Zone) -> Resolution {
    let (index, cfg, qname) = (zone.index, zone.cfg, zone.qname);
    if qname == cfg.domain || qname.ends_with(&format!(".{}", cfg.domain)) {
        return Resolution::Local(zone.resolve());
    }
    if let Some(ip) = reverse_address(qname) {
        if !index.is_synced() {
            return Resolution::Local(zone.negative(ResponseCode::ServFail, &reverse_apex(&cfg.service_cidrs.primary())));
        }
        if let Some(answer) = zone.reverse(ip) {
            return Resolution::Local(answer);
        }
    }
    Resolution::Forward
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::SOURCES;
    use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    fn cfg() -> ZoneConfig {
        ZoneConfig {
            domain: "cluster.local".into(),
            ttl: 5,
            dns_ip: "127.96.0.10".parse().unwrap(),
            service_cidrs: "127.96.0.0/12,fd77:6861:7266:96::/108".parse().unwrap(),
        }
    }

    fn index() -> Index {
        let mut idx = Index::default();
        for s in SOURCES {
            idx.mark_synced(s);
        }
        idx.apply_namespace(&serde_json::from_value::<Namespace>(json!({"metadata": {"name": "testns"}})).unwrap());
        let svc = |v| serde_json::from_value::<Service>(v).unwrap();
        idx.apply_service(&svc(json!({"metadata": {"name": "svc1", "namespace": "testns"},
            "spec": {"clusterIP": "127.96.0.100", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})));
        idx.apply_service(&svc(json!({"metadata": {"name": "hdls1", "namespace": "testns"},
            "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}})));
        idx.apply_service(&svc(json!({"metadata": {"name": "empty", "namespace": "testns"},
            "spec": {"clusterIP": "None"}})));
        idx.apply_service(&svc(json!({"metadata": {"name": "ext", "namespace": "testns"},
            "spec": {"type": "ExternalName", "externalName": "svc1.testns.svc.cluster.local"}})));
        idx.apply_slice(
            &serde_json::from_value::<EndpointSlice>(json!({
            "metadata": {"name": "hdls1-abc", "namespace": "testns", "labels": {"kubernetes.io/service-name": "hdls1"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["172.0.0.2"], "conditions": {"ready": true}},
                {"addresses": ["172.0.0.3"], "hostname": "web-0", "conditions": {"ready": true}},
                {"addresses": ["172.0.0.4"], "conditions": {"ready": false}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}))
            .unwrap(),
        );
        idx.apply_pod(
            &serde_json::from_value::<Pod>(json!({"metadata": {"name": "p", "namespace": "testns"},
            "status": {"podIP": "10.240.0.1"}}))
            .unwrap(),
        );
        idx
    }

    fn ask(idx: &Index, q: &str, t: RecordType) -> Answer {
        match resolve(idx, &cfg(), q, t, &mut Vec::new()) {
            Resolution::Local(a) => a,
            Resolution::Forward => panic!("{q} was forwarded"),
        }
    }

    fn rdata(a: &Answer) -> Vec<String> {
        a.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn cluster_ip_service() {
        let idx = index();
        let a = ask(&idx, "svc1.testns.svc.cluster.local", RecordType::A);
        assert_eq!((a.rcode, rdata(&a)), (ResponseCode::NoError, vec!["127.96.0.100".to_string()]));
        let aaaa = ask(&idx, "svc1.testns.svc.cluster.local", RecordType::AAAA);
        assert!(aaaa.answers.is_empty() && aaaa.rcode == ResponseCode::NoError && aaaa.authority.len() == 1);
        let srv = ask(&idx, "_http._tcp.svc1.testns.svc.cluster.local", RecordType::SRV);
        assert_eq!(rdata(&srv), ["0 100 80 svc1.testns.svc.cluster.local."]);
        assert_eq!(srv.additional.len(), 1);
        assert_eq!(ask(&idx, "_http._udp.svc1.testns.svc.cluster.local", RecordType::SRV).rcode, ResponseCode::NXDomain);
        assert_eq!(ask(&idx, "_http._bogus.svc1.testns.svc.cluster.local", RecordType::SRV).rcode, ResponseCode::NXDomain);
        let ptr = ask(&idx, "100.0.96.127.in-addr.arpa", RecordType::PTR);
        assert_eq!(rdata(&ptr), ["svc1.testns.svc.cluster.local."]);
    }

    #[test]
    fn headless_service() {
        let idx = index();
        let a = ask(&idx, "hdls1.testns.svc.cluster.local", RecordType::A);
        assert_eq!(rdata(&a), ["172.0.0.2", "172.0.0.3"]);
        assert_eq!(rdata(&ask(&idx, "web-0.hdls1.testns.svc.cluster.local", RecordType::A)), ["172.0.0.3"]);
        assert_eq!(rdata(&ask(&idx, "172-0-0-2.hdls1.testns.svc.cluster.local", RecordType::A)), ["172.0.0.2"]);
        assert_eq!(ask(&idx, "172-0-0-4.hdls1.testns.svc.cluster.local", RecordType::A).rcode, ResponseCode::NXDomain);
        let srv = ask(&idx, "_http._tcp.hdls1.testns.svc.cluster.local", RecordType::SRV);
        assert_eq!(rdata(&srv), ["0 50 8080 172-0-0-2.hdls1.testns.svc.cluster.local.", "0 50 8080 web-0.hdls1.testns.svc.cluster.local."]);
        assert_eq!(srv.additional.len(), 2);
        assert_eq!(ask(&idx, "empty.testns.svc.cluster.local", RecordType::A).rcode, ResponseCode::NXDomain);
        assert_eq!(rdata(&ask(&idx, "3.0.0.172.in-addr.arpa", RecordType::PTR)), ["web-0.hdls1.testns.svc.cluster.local."]);
    }

    #[test]
    fn negative_answers_follow_coredns() {
        let idx = index();
        for (q, t, rcode) in [
            ("svc0.testns.svc.cluster.local", RecordType::A, ResponseCode::NXDomain),
            ("svc1.nsnoexist.svc.cluster.local", RecordType::A, ResponseCode::NXDomain),
            ("testns.svc.cluster.local", RecordType::A, ResponseCode::NoError),
            ("svc.cluster.local", RecordType::A, ResponseCode::NoError),
            ("pod.cluster.local", RecordType::A, ResponseCode::NoError),
            ("cluster.local", RecordType::A, ResponseCode::NoError),
            ("bogus.hdls1.testns.svc.cluster.local", RecordType::A, ResponseCode::NXDomain),
            ("api.example.com.default.svc.cluster.local", RecordType::A, ResponseCode::NXDomain),
            ("*.testns.svc.cluster.local", RecordType::A, ResponseCode::NXDomain),
            ("101.0.96.127.in-addr.arpa", RecordType::PTR, ResponseCode::NXDomain),
        ] {
            let a = ask(&idx, q, t);
            assert_eq!(a.rcode, rcode, "{q}");
            assert!(a.answers.is_empty(), "{q}");
            assert_eq!(a.authority.len(), 1, "{q} needs the SOA");
        }
        assert_eq!(resolve(&idx, &cfg(), "example.com", RecordType::A, &mut Vec::new()), Resolution::Forward);
        assert_eq!(resolve(&idx, &cfg(), "1.1.168.192.in-addr.arpa", RecordType::PTR, &mut Vec::new()), Resolution::Forward);
    }

    #[test]
    fn apex_version_pods_external_names() {
        let idx = index();
        let soa = ask(&idx, "cluster.local", RecordType::SOA);
        assert!(rdata(&soa)[0].starts_with("ns.dns.cluster.local. hostmaster.cluster.local."), "{:?}", rdata(&soa));
        let ns = ask(&idx, "cluster.local", RecordType::NS);
        assert_eq!((rdata(&ns), ns.additional.len()), (vec!["ns.dns.cluster.local.".to_string()], 1));
        assert_eq!(rdata(&ask(&idx, "dns-version.cluster.local", RecordType::TXT)), ["1.1.0"]);
        assert_eq!(rdata(&ask(&idx, "10-240-0-1.testns.pod.cluster.local", RecordType::A)), ["10.240.0.1"]);
        assert_eq!(ask(&idx, "10-240-0-2.testns.pod.cluster.local", RecordType::A).rcode, ResponseCode::NXDomain);
        let ext = ask(&idx, "ext.testns.svc.cluster.local", RecordType::A);
        assert_eq!(rdata(&ext), ["svc1.testns.svc.cluster.local.", "127.96.0.100"]);
    }

    #[test]
    fn servfail_before_sync() {
        let idx = Index::default();
        assert_eq!(ask(&idx, "svc0.testns.svc.cluster.local", RecordType::A).rcode, ResponseCode::ServFail);
    }

    #[test]
    fn external_name_loops_and_long_chains_are_answered_with_the_chain() {
        let mut idx = index();
        let ext = |name: &str, target: &str| {
            serde_json::from_value::<Service>(json!({"metadata": {"name": name, "namespace": "testns"},
                "spec": {"type": "ExternalName", "externalName": format!("{target}.testns.svc.cluster.local")}}))
            .unwrap()
        };
        idx.apply_service(&ext("ping", "pong"));
        idx.apply_service(&ext("pong", "ping"));
        let a = ask(&idx, "ping.testns.svc.cluster.local", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(rdata(&a), ["pong.testns.svc.cluster.local.", "ping.testns.svc.cluster.local."]);
        // A chain longer than the limit stops at the limit; one ending in a
        // service resolves through every link.
        for i in 0..20 {
            idx.apply_service(&ext(&format!("c{i}"), &format!("c{}", i + 1)));
        }
        let long = ask(&idx, "c0.testns.svc.cluster.local", RecordType::A);
        assert_eq!(long.answers.len(), MAX_CNAME_CHAIN + 1);
        idx.apply_service(&ext("to-svc", "ext"));
        let chain = ask(&idx, "to-svc.testns.svc.cluster.local", RecordType::A);
        assert_eq!(rdata(&chain), ["ext.testns.svc.cluster.local.", "svc1.testns.svc.cluster.local.", "127.96.0.100"]);
    }

    fn scopes(idx: &Index, q: &str, t: RecordType) -> Vec<Scope> {
        let mut scopes = Vec::new();
        resolve(idx, &cfg(), q, t, &mut scopes);
        scopes
    }

    #[test]
    fn answers_name_the_parts_of_the_index_they_read() {
        let idx = index();
        let svc1 = Scope::service("testns", "svc1");
        assert_eq!(scopes(&idx, "svc1.testns.svc.cluster.local", RecordType::A), [svc1]);
        assert_eq!(scopes(&idx, "_http._tcp.svc1.testns.svc.cluster.local", RecordType::SRV), [svc1]);
        assert_eq!(scopes(&idx, "web-0.hdls1.testns.svc.cluster.local", RecordType::A), [Scope::service("testns", "hdls1")]);
        // An ExternalName answer followed its target: it depends on both.
        assert_eq!(scopes(&idx, "ext.testns.svc.cluster.local", RecordType::A), [Scope::service("testns", "ext"), svc1]);
        assert_eq!(scopes(&idx, "10-240-0-1.testns.pod.cluster.local", RecordType::A), [Scope::pod("testns", "10-240-0-1")]);
        assert_eq!(scopes(&idx, "testns.svc.cluster.local", RecordType::A), [Scope::namespace("testns")]);
        assert_eq!(scopes(&idx, "nothere.svc.cluster.local", RecordType::A), [Scope::namespace("nothere")]);
        assert_eq!(scopes(&idx, "cluster.local", RecordType::SOA), [Scope::apex()]);
        let ip: IpAddr = "127.96.0.100".parse().unwrap();
        assert_eq!(scopes(&idx, "100.0.96.127.in-addr.arpa", RecordType::PTR), [Scope::address(ip)]);
    }

    #[test]
    fn a_change_marks_the_scopes_whose_answers_it_changes() {
        let mut idx = index();
        let (svc1, hdls1) = (Scope::service("testns", "svc1"), Scope::service("testns", "hdls1"));
        let endpoint: IpAddr = "172.0.0.3".parse().unwrap();
        let built = |idx: &Index| {
            [svc1, hdls1, Scope::address(endpoint), Scope::address("127.96.0.100".parse().unwrap())].map(|s| idx.freshness.stamp(&[s]))
        };
        let before = built(&idx);
        // An endpoint of hdls1 goes unready: hdls1's names and the
        // endpoint's PTR change, svc1's answers do not.
        idx.apply_slice(
            &serde_json::from_value::<EndpointSlice>(json!({
            "metadata": {"name": "hdls1-abc", "namespace": "testns", "labels": {"kubernetes.io/service-name": "hdls1"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["172.0.0.3"], "hostname": "web-0", "conditions": {"ready": false}}]}))
            .unwrap(),
        );
        let fresh = before.map(|s| idx.freshness.is_fresh(&s));
        assert_eq!(fresh, [true, false, false, true]);
        let before = built(&idx);
        idx.delete_service(&crate::index::Key::new("testns", "svc1"));
        assert_eq!(before.map(|s| idx.freshness.is_fresh(&s)), [false, true, true, false]);
    }

    /// A dual-stack service, a headless one with an IPv4 and an IPv6
    /// slice, and a pod with both addresses.
    fn dual_index() -> Index {
        let mut idx = Index::default();
        for s in SOURCES {
            idx.mark_synced(s);
        }
        idx.apply_service(
            &serde_json::from_value::<Service>(json!({"metadata": {"name": "web", "namespace": "ns"},
            "spec": {"clusterIP": "127.96.0.50", "clusterIPs": ["127.96.0.50", "fd77:6861:7266:96::32"],
                     "ipFamilies": ["IPv4", "IPv6"], "ports": [{"name": "http", "port": 80}]}}))
            .unwrap(),
        );
        idx.apply_service(
            &serde_json::from_value::<Service>(json!({"metadata": {"name": "db", "namespace": "ns"},
            "spec": {"clusterIP": "None", "ports": [{"name": "sql", "port": 5432}]}}))
            .unwrap(),
        );
        for (name, family, ip) in [("db-4", "IPv4", "127.0.0.5"), ("db-6", "IPv6", "fd00::5")] {
            idx.apply_slice(
                &serde_json::from_value::<EndpointSlice>(json!({
                "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": family,
                "endpoints": [{"addresses": [ip], "hostname": "db-0", "conditions": {"ready": true}}],
                "ports": [{"name": "sql", "port": 5432, "protocol": "TCP"}]}))
                .unwrap(),
            );
        }
        idx.apply_pod(
            &serde_json::from_value::<Pod>(json!({"metadata": {"name": "p", "namespace": "ns"},
            "status": {"podIP": "127.0.0.7", "podIPs": [{"ip": "127.0.0.7"}, {"ip": "fd00::7"}]}}))
            .unwrap(),
        );
        idx
    }

    fn ask_rdata(idx: &Index, q: &str, t: RecordType) -> (ResponseCode, Vec<String>) {
        let a = ask(idx, q, t);
        (a.rcode, rdata(&a))
    }

    #[test]
    fn a_and_aaaa_come_from_each_family() {
        let idx = dual_index();
        assert_eq!(ask_rdata(&idx, "web.ns.svc.cluster.local", RecordType::A).1, ["127.96.0.50"]);
        assert_eq!(ask_rdata(&idx, "web.ns.svc.cluster.local", RecordType::AAAA).1, ["fd77:6861:7266:96::32"]);
        assert_eq!(ask_rdata(&idx, "db.ns.svc.cluster.local", RecordType::A).1, ["127.0.0.5"]);
        assert_eq!(ask_rdata(&idx, "db.ns.svc.cluster.local", RecordType::AAAA).1, ["fd00::5"]);
        assert_eq!(ask_rdata(&idx, "db-0.db.ns.svc.cluster.local", RecordType::AAAA).1, ["fd00::5"]);
        assert_eq!(ask_rdata(&idx, "fd00--7.ns.pod.cluster.local", RecordType::AAAA).1, ["fd00::7"]);
        assert_eq!(ask_rdata(&idx, "127-0-0-7.ns.pod.cluster.local", RecordType::A).1, ["127.0.0.7"]);
        // Only the canonical dashed form names a pod.
        assert_eq!(ask_rdata(&idx, "fd00-0-0-0-0-0-0-7.ns.pod.cluster.local", RecordType::AAAA).0, ResponseCode::NXDomain);
        assert_eq!(ask_rdata(&idx, "fd00--7.ns.pod.cluster.local", RecordType::A), (ResponseCode::NoError, vec![]));
    }

    #[test]
    fn ip6_arpa_names_answer_for_cluster_ips_and_endpoints() {
        let idx = dual_index();
        let service = "2.3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.6.6.2.7.1.6.8.6.7.7.d.f.ip6.arpa";
        assert_eq!(ask_rdata(&idx, service, RecordType::PTR).1, ["web.ns.svc.cluster.local."]);
        let endpoint = "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa";
        assert_eq!(ask_rdata(&idx, endpoint, RecordType::PTR).1, ["db-0.db.ns.svc.cluster.local."]);
        // In the service range but unknown: NXDOMAIN from the range's zone.
        let free = "9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.6.6.2.7.1.6.8.6.7.7.d.f.ip6.arpa";
        assert_eq!(ask_rdata(&idx, free, RecordType::PTR).0, ResponseCode::NXDomain);
        // Elsewhere and unknown: not the cluster's to answer.
        let other = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa";
        assert_eq!(resolve(&idx, &cfg(), other, RecordType::PTR, &mut Vec::new()), Resolution::Forward);
        assert_eq!(
            reverse_apex(&"fd77:6861:7266:96::/108".parse().unwrap()),
            "0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.6.6.2.7.1.6.8.6.7.7.d.f.ip6.arpa"
        );
        assert_eq!(reverse_address("1.2.ip6.arpa"), None);
        assert_eq!(reverse_address(&format!("{}ip6.arpa", "g.".repeat(32))), None);
    }
}
