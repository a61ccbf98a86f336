//! Cluster IP and node port allocation, and the claims on external IPs.
//! Every allocation is a key in the store, written in the same transaction
//! as its Service, so an IP or port is never held twice and never leaked,
//! and several API servers sharing one store stay consistent (the
//! transaction's compare refuses a taken key).
//!
//! An external IP is a frontend on every node, so it is policed like one
//! (the CVE-2020-8554 pattern): only inside `--external-ip-cidrs` (none by
//! default), never a cluster IP or a load-balancer pool address, and each
//! (address, protocol, port) belongs to one service.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Service;
use wharf_api::field::{FieldError, Value as FieldValue};
use wharf_api::service::{is_headless, needs_cluster_ip, needs_health_check_node_port, needs_node_ports};
use wharf_store::{Compare, Op, Store};

use crate::error::{ApiError, ApiResult};

pub const CLUSTER_IP_PREFIX: &str = "/wharf/allocations/clusterips/";
pub const NODE_PORT_PREFIX: &str = "/wharf/allocations/nodeports/";
pub const EXTERNAL_IP_PREFIX: &str = "/wharf/allocations/externalips/";

/// Random probes before falling back to a scan of the allocated set.
const RANDOM_PROBES: usize = 32;

#[derive(Clone, Debug)]
pub struct Allocator {
    cidr: Ipv4Net,
    node_ports: RangeInclusive<u16>,
    /// Where external IPs may be (`--external-ip-cidrs`).
    external_allowed: Vec<IpNet>,
    /// Where they may never be: the load-balancer pool.
    external_forbidden: Vec<IpNet>,
}

/// The store changes that take (and give back) a Service's allocations.
#[derive(Debug, Default)]
pub struct AllocationPlan {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

fn ip_key(ip: Ipv4Addr) -> String {
    format!("{CLUSTER_IP_PREFIX}{ip}")
}

fn port_key(port: u16) -> String {
    format!("{NODE_PORT_PREFIX}{port}")
}

fn external_key(ip: &str, protocol: &str, port: i32) -> String {
    format!("{EXTERNAL_IP_PREFIX}{ip}/{protocol}/{port}")
}

/// `default/web` from a claim's value (the owner's object key).
fn owner_name(value: &[u8]) -> String {
    let key = String::from_utf8_lossy(value);
    key.trim_start_matches("/registry/services/").to_string()
}

impl Allocator {
    pub fn new(cidr: Ipv4Net, node_ports: RangeInclusive<u16>) -> Self {
        Self { cidr: cidr.trunc(), node_ports, external_allowed: Vec::new(), external_forbidden: Vec::new() }
    }

    /// External IPs may be inside `allowed`, never inside `forbidden`.
    pub fn with_external_ips(mut self, allowed: Vec<IpNet>, forbidden: Vec<IpNet>) -> Self {
        self.external_allowed = allowed;
        self.external_forbidden = forbidden;
        self
    }

    /// Why `ip` may not be an external IP, if it may not.
    fn external_ip_refusal(&self, ip: &str) -> Option<String> {
        let Ok(addr) = ip.parse::<IpAddr>() else { return Some("must be a valid IP address".into()) };
        if let IpAddr::V4(v4) = addr {
            if self.cidr.contains(&v4) {
                return Some(format!("may not be in the service range {}: cluster IPs belong to their services", self.cidr));
            }
        }
        if let Some(pool) = self.external_forbidden.iter().find(|n| n.contains(&addr)) {
            return Some(format!("may not be in the load-balancer pool {pool}"));
        }
        if !self.external_allowed.iter().any(|n| n.contains(&addr)) {
            return Some(if self.external_allowed.is_empty() {
                "externalIPs are not allowed: the server has no --external-ip-cidrs".into()
            } else {
                format!("is outside the allowed ranges (--external-ip-cidrs {})", join(&self.external_allowed))
            });
        }
        None
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The `n`th address of the service range (`1` is the `kubernetes`
    /// service, `10` the cluster DNS).
    pub fn nth_ip(&self, n: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()).wrapping_add(n))
    }

    fn range_size(&self) -> u32 {
        1u32.checked_shl(32 - u32::from(self.cidr.prefix_len())).unwrap_or(u32::MAX)
    }

    /// Offsets of addresses that may be handed out: not the network or
    /// broadcast address.
    fn usable(&self) -> RangeInclusive<u32> {
        1..=self.range_size().saturating_sub(2)
    }

    /// Dynamic allocation prefers addresses above a low band that is kept
    /// for explicitly requested IPs, as Kubernetes does since 1.26.
    fn dynamic_band(&self) -> RangeInclusive<u32> {
        let low = (self.range_size() / 16).clamp(16, 256);
        low.min(*self.usable().end())..=*self.usable().end()
    }

    fn offset_of(&self, ip: Ipv4Addr) -> Option<u32> {
        self.cidr.contains(&ip).then(|| u32::from(ip) - u32::from(self.cidr.network())).filter(|o| self.usable().contains(o))
    }

    /// The keys a stored Service holds.
    pub fn held(&self, svc: &Service) -> HashSet<String> {
        let mut keys = HashSet::new();
        let Some(spec) = &svc.spec else { return keys };
        if let Some(ip) = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok()) {
            if self.offset_of(ip).is_some() {
                keys.insert(ip_key(ip));
            }
        }
        for port in spec.ports.iter().flatten().filter_map(|p| p.node_port) {
            if let Ok(port) = u16::try_from(port) {
                keys.insert(port_key(port));
            }
        }
        if let Some(port) = spec.health_check_node_port.and_then(|p| u16::try_from(p).ok()) {
            keys.insert(port_key(port));
        }
        for ip in spec.external_ips.iter().flatten() {
            for port in spec.ports.iter().flatten() {
                keys.insert(external_key(ip, port.protocol.as_deref().unwrap_or("TCP"), port.port));
            }
        }
        keys
    }

    /// External IPs outside the policy, or served by another service.
    async fn check_external_ips(&self, store: &dyn Store, svc: &Service, held: &HashSet<String>) -> ApiResult<Vec<FieldError>> {
        let mut errs = Vec::new();
        let Some(spec) = &svc.spec else { return Ok(errs) };
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            let field = format!("spec.externalIPs[{i}]");
            if let Some(why) = self.external_ip_refusal(ip) {
                errs.push(FieldError::invalid(field, ip.as_str(), why));
                continue;
            }
            for port in spec.ports.iter().flatten() {
                let protocol = port.protocol.as_deref().unwrap_or("TCP");
                let key = external_key(ip, protocol, port.port);
                if held.contains(&key) {
                    continue;
                }
                if let Some(taken) = store.get(&key).await? {
                    let owner = owner_name(&taken.value);
                    errs.push(FieldError::invalid(
                        field.as_str(),
                        ip.as_str(),
                        format!("{ip}:{}/{protocol} is already served by {owner}", port.port),
                    ));
                }
            }
        }
        Ok(errs)
    }

    /// Fills in the cluster IP and node ports `svc` still needs, checks the
    /// ones it asks for, and returns the store changes that take the new
    /// ones and release what `old` held and `svc` no longer does.
    pub async fn plan(&self, store: &dyn Store, owner: &str, svc: &mut Service, old: Option<&Service>) -> ApiResult<AllocationPlan> {
        let name = svc.metadata.name.clone().unwrap_or_default();
        let before = old.map(|o| self.held(o)).unwrap_or_default();
        let mut errs = Vec::new();
        let mut taken_now = HashSet::new();
        let spec = svc.spec.get_or_insert_with(Default::default);

        if needs_cluster_ip(spec) && !is_headless(spec) {
            match spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty()) {
                Some(requested) => {
                    if let Err(e) = self.check_requested_ip(store, requested, &before).await? {
                        errs.push(e);
                    }
                }
                None => {
                    let ip = self.free_ip(store).await?;
                    spec.cluster_ip = Some(ip.to_string());
                    spec.cluster_ips = Some(vec![ip.to_string()]);
                }
            }
            spec.ip_families = Some(vec!["IPv4".into()]);
            spec.ip_family_policy.get_or_insert_with(|| "SingleStack".into());
        } else if is_headless(spec) {
            spec.cluster_ips = Some(vec!["None".into()]);
            spec.ip_families = Some(vec!["IPv4".into()]);
            spec.ip_family_policy.get_or_insert_with(|| "SingleStack".into());
        }

        if needs_node_ports(spec) {
            let mut used_here = HashSet::new();
            for (i, port) in spec.ports.iter_mut().flatten().enumerate() {
                let field = format!("spec.ports[{i}].nodePort");
                match port.node_port.filter(|p| *p != 0) {
                    Some(requested) => {
                        // One service may use one node port for TCP and UDP.
                        if used_here.insert(requested) {
                            if let Err(e) = self.check_requested_port(store, requested, &field, &before).await? {
                                errs.push(e);
                            }
                        }
                    }
                    None => {
                        let port_number = self.free_port(store, &taken_now).await?;
                        taken_now.insert(port_number);
                        used_here.insert(i32::from(port_number));
                        port.node_port = Some(i32::from(port_number));
                    }
                }
            }
        }
        if needs_health_check_node_port(spec) {
            match spec.health_check_node_port.filter(|p| *p != 0) {
                Some(requested) => {
                    if let Err(e) = self.check_requested_port(store, requested, "spec.healthCheckNodePort", &before).await? {
                        errs.push(e);
                    }
                }
                None => {
                    let port_number = self.free_port(store, &taken_now).await?;
                    spec.health_check_node_port = Some(i32::from(port_number));
                }
            }
        }
        errs.extend(self.check_external_ips(store, svc, &before).await?);
        if !errs.is_empty() {
            return Err(ApiError::invalid(&wharf_api::kinds::SERVICE, &name, errs));
        }

        let after = self.held(svc);
        let mut plan = AllocationPlan::default();
        for key in after.difference(&before) {
            plan.compares.push(Compare::Absent(key.clone()));
            plan.ops.push(Op::Put { key: key.clone(), value: owner.to_string().into() });
        }
        for key in before.difference(&after) {
            plan.ops.push(Op::Delete { key: key.clone() });
        }
        Ok(plan)
    }

    async fn check_requested_ip(&self, store: &dyn Store, requested: &str, held: &HashSet<String>) -> ApiResult<Result<(), FieldError>> {
        let fail = |why: String| {
            FieldError::invalid(
                "spec.clusterIPs",
                FieldValue::Raw(format!("[]string{{{requested:?}}}")),
                format!("failed to allocate IP {requested}: {why}"),
            )
        };
        let Ok(ip) = requested.parse::<Ipv4Addr>() else {
            return Ok(Err(fail("not a valid IPv4 address".into())));
        };
        if self.offset_of(ip).is_none() {
            return Ok(Err(fail(format!("the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}", self.cidr))));
        }
        let key = ip_key(ip);
        if !held.contains(&key) && store.get(&key).await?.is_some() {
            return Ok(Err(fail("provided IP is already allocated".into())));
        }
        Ok(Ok(()))
    }

    async fn check_requested_port(
        &self,
        store: &dyn Store,
        requested: i32,
        field: &str,
        held: &HashSet<String>,
    ) -> ApiResult<Result<(), FieldError>> {
        let in_range = u16::try_from(requested).ok().filter(|p| self.node_ports.contains(p));
        let Some(port) = in_range else {
            return Ok(Err(FieldError::invalid(
                field,
                requested,
                format!(
                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                    self.node_ports.start(),
                    self.node_ports.end()
                ),
            )));
        };
        let key = port_key(port);
        if !held.contains(&key) && store.get(&key).await?.is_some() {
            return Ok(Err(FieldError::invalid(field, requested, "provided port is already allocated")));
        }
        Ok(Ok(()))
    }

    async fn free_ip(&self, store: &dyn Store) -> ApiResult<Ipv4Addr> {
        let band = self.dynamic_band();
        for _ in 0..RANDOM_PROBES {
            let ip = self.nth_ip(rand::random_range(band.clone()));
            if store.get(&ip_key(ip)).await?.is_none() {
                return Ok(ip);
            }
        }
        let (taken, _) = store.list(CLUSTER_IP_PREFIX).await?;
        let taken: HashSet<&str> = taken.iter().map(|kv| &kv.key[CLUSTER_IP_PREFIX.len()..]).collect();
        band.chain(self.usable())
            .map(|offset| self.nth_ip(offset))
            .find(|ip| !taken.contains(ip.to_string().as_str()))
            .ok_or_else(|| ApiError::Internal("failed to allocate a serviceIP: range is full".into()))
    }

    async fn free_port(&self, store: &dyn Store, taken_now: &HashSet<u16>) -> ApiResult<u16> {
        for _ in 0..RANDOM_PROBES {
            let port = rand::random_range(self.node_ports.clone());
            if !taken_now.contains(&port) && store.get(&port_key(port)).await?.is_none() {
                return Ok(port);
            }
        }
        let (taken, _) = store.list(NODE_PORT_PREFIX).await?;
        let taken: HashSet<&str> = taken.iter().map(|kv| &kv.key[NODE_PORT_PREFIX.len()..]).collect();
        self.node_ports
            .clone()
            .find(|p| !taken_now.contains(p) && !taken.contains(p.to_string().as_str()))
            .ok_or_else(|| ApiError::Internal("failed to allocate a nodePort: range is full".into()))
    }
}

fn join(nets: &[IpNet]) -> String {
    nets.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_kubernetes() {
        let a = Allocator::new("127.96.0.0/12".parse().unwrap(), 30000..=32767);
        assert_eq!(a.nth_ip(10), Ipv4Addr::new(127, 96, 0, 10));
        assert_eq!(a.usable(), 1..=(1 << 20) - 2);
        assert_eq!(*a.dynamic_band().start(), 256);
        assert!(a.offset_of(Ipv4Addr::new(127, 96, 0, 0)).is_none());
        assert!(a.offset_of(Ipv4Addr::new(127, 111, 255, 255)).is_none());
        assert!(a.offset_of(Ipv4Addr::new(127, 112, 0, 1)).is_none());
        let small = Allocator::new("127.50.0.0/28".parse().unwrap(), 30000..=30001);
        assert_eq!(small.usable(), 1..=14);
        assert_eq!(small.dynamic_band(), 14..=14);
    }

    #[test]
    fn external_ips_are_refused_outside_the_policy() {
        let a = Allocator::new("127.96.0.0/12".parse().unwrap(), 30000..=32767)
            .with_external_ips(vec!["127.200.0.0/16".parse().unwrap()], vec!["127.200.9.0/24".parse().unwrap()]);
        assert!(a.external_ip_refusal("127.200.1.1").is_none());
        assert!(a.external_ip_refusal("127.96.0.1").unwrap().contains("service range"), "the kubernetes service's IP");
        assert!(a.external_ip_refusal("127.200.9.5").unwrap().contains("load-balancer pool"));
        assert!(a.external_ip_refusal("127.201.0.1").unwrap().contains("outside the allowed ranges"));
        assert!(a.external_ip_refusal("nope").is_some());
        let closed = Allocator::new("127.96.0.0/12".parse().unwrap(), 30000..=32767);
        assert!(closed.external_ip_refusal("127.200.1.1").unwrap().contains("not allowed"));
    }
}
