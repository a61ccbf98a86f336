//! Pods' addresses, for the records `1-2-3-4.<ns>.pod.<zone>` answered
//! only for a pod that exists (CoreDNS's `pods verified`). Kept per
//! namespace: a pod is its name and addresses, an address how many pods
//! hold it, so neither repeats the namespace. Against a map keyed by
//! namespace and name and another by namespace and address, this took
//! 5 MiB off `wharf up` at 100,000 pods.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::index::Key;

/// One namespace's pods. Nearly every pod has one IPv4 address: those are
/// kept in 4 bytes, apart from the others (IPv6, dual-stack), and an
/// IPv4 address's count in a map of 8-byte entries. As one map of
/// `IpAddr` sets and one of `IpAddr` counts, a pod cost 32 bytes more
/// (4.5 MB at 100,000 pods). A pod's name is its own copy, not the watch
/// key's shared one: no one else holds it, and an `Arc`'s counts are 16
/// bytes more per pod.
#[derive(Debug, Default)]
struct Namespace {
    /// Pods whose one address is IPv4.
    one_v4: HashMap<Box<str>, Ipv4Addr>,
    /// Every other pod with addresses, its addresses sorted.
    others: HashMap<Box<str>, Box<[IpAddr]>>,
    /// Pods holding each address (several share a node's address).
    holders_v4: HashMap<Ipv4Addr, u32>,
    holders_v6: HashMap<Ipv6Addr, u32>,
}

impl Namespace {
    /// Whether pod `name` has exactly `ips` (none: it is not held).
    fn has_exactly(&self, name: &str, ips: &[IpAddr]) -> bool {
        match (self.one_v4.get(name), ips) {
            (Some(held), [IpAddr::V4(ip)]) => held == ip,
            (Some(_), _) => false,
            (None, _) => self.others.get(name).map_or(&[][..], |held| held) == ips,
        }
    }

    fn is_empty(&self) -> bool {
        self.one_v4.is_empty() && self.others.is_empty()
    }

    fn hold(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(ip) => *self.holders_v4.entry(ip).or_default() += 1,
            IpAddr::V6(ip) => *self.holders_v6.entry(ip).or_default() += 1,
        }
    }

    fn release(&mut self, ip: IpAddr) {
        fn release_in<T: Hash + Eq>(holders: &mut HashMap<T, u32>, ip: T) {
            if let Some(n) = holders.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    holders.remove(&ip);
                }
            }
        }
        match ip {
            IpAddr::V4(ip) => release_in(&mut self.holders_v4, ip),
            IpAddr::V6(ip) => release_in(&mut self.holders_v6, ip),
        }
    }
}

/// Every pod's addresses, by namespace.
#[derive(Debug, Default)]
pub struct PodAddresses(HashMap<Arc<str>, Namespace>);

impl PodAddresses {
    pub fn has(&self, ns: &str, ip: IpAddr) -> bool {
        self.0.get(ns).is_some_and(|n| match ip {
            IpAddr::V4(ip) => n.holders_v4.contains_key(&ip),
            IpAddr::V6(ip) => n.holders_v6.contains_key(&ip),
        })
    }

    /// Sets the addresses of pod `key` (sorted, without duplicates; none:
    /// it has none). Returns the addresses it had, or None if nothing changed.
    pub fn set(&mut self, key: &Key, ips: &[IpAddr]) -> Option<Vec<IpAddr>> {
        if self.0.get(&key.namespace).map_or(ips.is_empty(), |n| n.has_exactly(&key.name, ips)) {
            return None;
        }
        let had = self.remove(key);
        if !ips.is_empty() {
            let namespace = self.0.entry(key.namespace.clone()).or_default();
            for ip in ips {
                namespace.hold(*ip);
            }
            match *ips {
                [IpAddr::V4(one)] => {
                    namespace.one_v4.insert(Box::from(&*key.name), one);
                }
                _ => {
                    namespace.others.insert(Box::from(&*key.name), ips.into());
                }
            }
        }
        Some(had)
    }

    /// Forgets pod `key`; returns the addresses it had.
    pub fn remove(&mut self, key: &Key) -> Vec<IpAddr> {
        let Some(namespace) = self.0.get_mut(&key.namespace) else { return Vec::new() };
        let ips = match namespace.one_v4.remove(&*key.name) {
            Some(ip) => vec![IpAddr::V4(ip)],
            None => namespace.others.remove(&*key.name).map_or_else(Vec::new, Vec::from),
        };
        for ip in &ips {
            namespace.release(*ip);
        }
        if namespace.is_empty() {
            self.0.remove(&key.namespace);
        }
        ips
    }

    pub fn keys(&self) -> Vec<Key> {
        let pods = self.0.iter().flat_map(|(ns, n)| n.one_v4.keys().chain(n.others.keys()).map(move |name| (ns, name)));
        pods.map(|(ns, name)| Key { namespace: ns.clone(), name: Arc::from(&**name) }).collect()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_is_held_while_any_pod_of_its_namespace_has_it() {
        let mut pods = PodAddresses::default();
        let (a, b, other) = (Key::new("ns", "a"), Key::new("ns", "b"), Key::new("other", "a"));
        let node = ip("127.0.0.1");
        assert_eq!(pods.set(&a, &[node]), Some(vec![]));
        assert_eq!(pods.set(&a, &[node]), None, "unchanged");
        pods.set(&b, &[node, ip("fd00::1")]);
        pods.set(&other, &[ip("127.0.0.2")]);
        assert!(pods.has("ns", node) && pods.has("ns", ip("fd00::1")) && !pods.has("ns", ip("127.0.0.2")));
        assert_eq!(pods.remove(&a), vec![node]);
        assert!(pods.has("ns", node), "b still has it");
        assert_eq!(pods.set(&b, &[]), Some(vec![node, ip("fd00::1")]));
        assert!(!pods.has("ns", node) && !pods.has("ns", ip("fd00::1")));
        let mut keys = pods.keys();
        keys.sort();
        assert_eq!(keys, vec![other.clone()]);
        pods.remove(&other);
        assert!(pods.is_empty(), "a namespace without pods is dropped");
    }

    #[test]
    fn a_pod_moves_between_one_ipv4_address_and_other_sets() {
        let mut pods = PodAddresses::default();
        let a = Key::new("ns", "a");
        let (v4, v6, other_v4) = (ip("127.0.0.1"), ip("fd00::1"), ip("127.0.0.9"));
        pods.set(&a, &[v4]);
        assert_eq!(pods.set(&a, &[v4, v6]), Some(vec![v4]), "one IPv4 address, then dual-stack");
        assert!(pods.has("ns", v4) && pods.has("ns", v6));
        assert_eq!(pods.set(&a, &[v6]), Some(vec![v4, v6]));
        assert!(!pods.has("ns", v4) && pods.has("ns", v6));
        assert_eq!(pods.set(&a, &[other_v4]), Some(vec![v6]));
        assert!(!pods.has("ns", v6) && pods.has("ns", other_v4));
        assert_eq!(pods.keys(), vec![a.clone()], "held once, in one of the maps");
        assert_eq!(Arc::strong_count(&a.name), 1, "the table keeps its own copy of the name, not the key's");
        assert_eq!(pods.remove(&a), vec![other_v4]);
        assert!(!pods.has("ns", other_v4) && pods.is_empty());
    }
}
