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
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use wharf_api::field::{FieldError, Value as FieldValue};
use wharf_api::ipfamily::{self, nth, IpFamily, ServiceCidrs};
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
    /// One range per family; the first is the primary.
    cidrs: ServiceCidrs,
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

fn ip_key(ip: IpAddr) -> String {
    format!("{CLUSTER_IP_PREFIX}{ip}")
}

fn port_key(port: u16) -> String {
    format!("{NODE_PORT_PREFIX}{port}")
}

fn external_key(ip: &str, protocol: &str, port: i32) -> String {
    format!("{EXTERNAL_IP_PREFIX}{ip}/{protocol}/{port}")
}

/// Addresses in `range`: 2^(host bits), capped where IPv6 ranges are huge.
fn range_size(range: IpNet) -> u128 {
    let host_bits = u32::from(range.max_prefix_len() - range.prefix_len());
    1u128.checked_shl(host_bits).unwrap_or(u128::MAX)
}

/// Offsets that may be handed out: not the network address, nor (IPv4)
/// the broadcast address.
fn usable(range: IpNet) -> RangeInclusive<u128> {
    let last = match range {
        IpNet::V4(_) => range_size(range).saturating_sub(2),
        IpNet::V6(_) => range_size(range).saturating_sub(1),
    };
    1..=last.max(1)
}

/// Dynamic allocation prefers addresses above a low band that is kept for
/// explicitly requested IPs, as Kubernetes does since 1.26.
fn dynamic_band(range: IpNet) -> RangeInclusive<u128> {
    let end = *usable(range).end();
    let low = (range_size(range) / 16).clamp(16, 256);
    low.min(end)..=end
}

/// `default/web` from a claim's value (the owner's object key).
fn owner_name(value: &[u8]) -> String {
    let key = String::from_utf8_lossy(value);
    key.trim_start_matches("/registry/services/").to_string()
}

impl Allocator {
    pub fn new(cidrs: ServiceCidrs, node_ports: RangeInclusive<u16>) -> Self {
        Self { cidrs, node_ports, external_allowed: Vec::new(), external_forbidden: Vec::new() }
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
        if let Some(range) = self.cidrs.iter().find(|n| n.contains(&addr)) {
            return Some(format!("may not be in the service range {range}: cluster IPs belong to their services"));
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

    pub fn cidrs(&self) -> &ServiceCidrs {
        &self.cidrs
    }

    /// The range of `family`, if the cluster has one.
    fn range(&self, family: IpFamily) -> Option<IpNet> {
        self.cidrs.get(family)
    }

    /// Offset of `ip` in its family's range, if it may be handed out (not
    /// the network address, nor an IPv4 range's broadcast address).
    fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        let range = self.range(IpFamily::of(&ip))?;
        let offset = match (ip, range.network()) {
            (IpAddr::V4(ip), IpAddr::V4(net)) => u128::from(u32::from(ip).wrapping_sub(u32::from(net))),
            (IpAddr::V6(ip), IpAddr::V6(net)) => u128::from(ip).wrapping_sub(u128::from(net)),
            _ => return None,
        };
        (range.contains(&ip) && usable(range).contains(&offset)).then_some(offset)
    }

    /// The keys a stored Service holds.
    pub fn held(&self, svc: &Service) -> HashSet<String> {
        let mut keys = HashSet::new();
        let Some(spec) = &svc.spec else { return keys };
        // Whatever range an address came from: one that left the cluster's
        // configuration is still released with its service.
        for ip in spec.cluster_ips.iter().flatten().filter_map(|ip| ip.parse::<IpAddr>().ok()) {
            keys.insert(ip_key(ip));
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
                    let owner = owner_name(&taken.value.bytes());
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

        if needs_cluster_ip(spec) {
            let settled = ipfamily::settle(spec, old.and_then(|o| o.spec.as_ref()), &self.cidrs);
            if !settled.is_empty() {
                return Err(ApiError::invalid(&wharf_api::kinds::SERVICE, &name, settled));
            }
            if is_headless(spec) {
                spec.cluster_ips = Some(vec![wharf_api::service::CLUSTER_IP_NONE.into()]);
            } else {
                errs.extend(self.fill_cluster_ips(store, spec, &before).await?);
            }
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

    /// Gives the service one address per family (`ipFamilies` is
    /// settled), keeping and checking the ones it asked for.
    async fn fill_cluster_ips(
        &self,
        store: &dyn Store,
        spec: &mut k8s_openapi::api::core::v1::ServiceSpec,
        held: &HashSet<String>,
    ) -> ApiResult<Vec<FieldError>> {
        let families: Vec<IpFamily> = spec.ip_families.iter().flatten().filter_map(|f| IpFamily::parse(f)).collect();
        let mut ips = spec.cluster_ips.take().unwrap_or_default();
        ips.resize(families.len().max(ips.len()), String::new());
        let mut errs = Vec::new();
        for (i, family) in families.into_iter().enumerate() {
            if ips[i].is_empty() {
                ips[i] = self.free_ip(store, family).await?.to_string();
            } else if let Err(e) = self.check_requested_ip(store, &ips, i, held).await? {
                errs.push(e);
            }
        }
        spec.cluster_ip = ips.first().cloned();
        spec.cluster_ips = Some(ips);
        Ok(errs)
    }

    async fn check_requested_ip(
        &self,
        store: &dyn Store,
        ips: &[String],
        i: usize,
        held: &HashSet<String>,
    ) -> ApiResult<Result<(), FieldError>> {
        let requested = &ips[i];
        let fail = |why: String| {
            FieldError::invalid("spec.clusterIPs", FieldValue::strings(ips), format!("failed to allocate IP {requested}: {why}"))
        };
        let Ok(ip) = requested.parse::<IpAddr>() else {
            return Ok(Err(fail("not a valid IP address".into())));
        };
        let key = ip_key(ip);
        if held.contains(&key) {
            // Its own already, even from a range since removed.
            return Ok(Ok(()));
        }
        if self.offset_of(ip).is_none() {
            let range = self.range(IpFamily::of(&ip)).map(|r| r.to_string()).unwrap_or_default();
            return Ok(Err(fail(format!("the provided IP ({ip}) is not in the valid range. The range of valid IPs is {range}"))));
        }
        if store.get(&key).await?.is_some() {
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

    async fn free_ip(&self, store: &dyn Store, family: IpFamily) -> ApiResult<IpAddr> {
        let full = || ApiError::Internal("failed to allocate a serviceIP: range is full".into());
        let range = self.range(family).ok_or_else(full)?;
        let band = dynamic_band(range);
        for _ in 0..RANDOM_PROBES {
            let ip = nth(range, rand::random_range(band.clone()));
            if store.get(&ip_key(ip)).await?.is_none() {
                return Ok(ip);
            }
        }
        let (taken, _) = store.list(CLUSTER_IP_PREFIX).await?;
        let taken: HashSet<&str> = taken.iter().map(|kv| &kv.key[CLUSTER_IP_PREFIX.len()..]).collect();
        // The scan is bounded: a range past this many taken is as good as full.
        let scan = (taken.len() as u128).saturating_add(1);
        band.chain(usable(range))
            .take(usize::try_from(scan.saturating_mul(2)).unwrap_or(usize::MAX))
            .map(|offset| nth(range, offset))
            .find(|ip| !taken.contains(ip.to_string().as_str()))
            .ok_or_else(full)
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
        let a = Allocator::new("127.96.0.0/12,fd77:6861:7266:96::/108".parse().unwrap(), 30000..=32767);
        let v4 = a.range(IpFamily::V4).unwrap();
        assert_eq!(usable(v4), 1..=(1 << 20) - 2);
        assert_eq!(*dynamic_band(v4).start(), 256);
        for outside in ["127.96.0.0", "127.111.255.255", "127.112.0.1", "fd77:6861:7266:96::", "fd77:6861:7266:97::1"] {
            assert!(a.offset_of(outside.parse().unwrap()).is_none(), "{outside}");
        }
        assert_eq!(a.offset_of("fd77:6861:7266:96::a".parse().unwrap()), Some(10));
        assert_eq!(usable(a.range(IpFamily::V6).unwrap()), 1..=(1 << 20) - 1);
        let small = "127.50.0.0/28".parse().unwrap();
        assert_eq!(usable(small), 1..=14);
        assert_eq!(dynamic_band(small), 14..=14);
        assert_eq!(range_size("fd00::/0".parse().unwrap()), u128::MAX);
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
