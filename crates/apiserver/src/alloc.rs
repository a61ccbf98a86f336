//! Cluster IP and node port allocation. Every allocation is a key in the
//! store, written in the same transaction as its Service, so an IP or port
//! is never held twice and never leaked, and several API servers sharing
//! one store stay consistent (the transaction's compare refuses a taken
//! key).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use wharf_api::field::{FieldError, Value as FieldValue};
use wharf_api::service::{is_headless, needs_cluster_ip, needs_health_check_node_port, needs_node_ports};
use wharf_store::{Compare, Op, Store};

use crate::error::{ApiError, ApiResult};

pub const CLUSTER_IP_PREFIX: &str = "/wharf/allocations/clusterips/";
pub const NODE_PORT_PREFIX: &str = "/wharf/allocations/nodeports/";

/// Random probes before falling back to a scan of the allocated set.
const RANDOM_PROBES: usize = 32;

#[derive(Clone, Debug)]
pub struct Allocator {
    cidr: Ipv4Net,
    node_ports: RangeInclusive<u16>,
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

impl Allocator {
    pub fn new(cidr: Ipv4Net, node_ports: RangeInclusive<u16>) -> Self {
        Self { cidr: cidr.trunc(), node_ports }
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
        keys
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
}
