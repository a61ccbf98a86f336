//! Pods' addresses, for the records `1-2-3-4.<ns>.pod.<zone>` answered
//! only for a pod that exists (CoreDNS's `pods verified`). Kept per
//! namespace: a pod is a hash of its name and its addresses, an address
//! how many pods hold it, so neither repeats the namespace. Against a map
//! keyed by namespace and name and another by namespace and address, this
//! took 5 MiB off `wharf up` at 100,000 pods, and the names' hashes 3 MiB
//! more.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::index::Key;

/// A pod's name, hashed with this process's random key. DNS only needs to
/// tell a namespace's pods apart, to release the addresses a pod had: two
/// names of one namespace that hash alike (about one chance in 4 * 10^9
/// with 100,000 pods in one namespace, and not one a client can aim for,
/// the key being secret) would share one entry. A name of 5 to 40 bytes in a
/// box of its own cost 16 to 48 bytes more a pod. Kept as two 4-byte
/// halves: beside a 4-byte address an entry is 12 bytes, where a `u64`'s
/// alignment padded it to 16 (0.5 MB at 100,000 pods).
type NameHash = [u32; 2];

/// One namespace's pods. Nearly every pod has one IPv4 address: those are
/// kept in 4 bytes, apart from the others (IPv6, dual-stack), and an
/// IPv4 address's count in a map of 8-byte entries. As one map of
/// `IpAddr` sets and one of `IpAddr` counts, a pod cost 32 bytes more
/// (4.5 MB at 100,000 pods).
#[derive(Debug, Default)]
struct Namespace {
    /// Pods whose one address is IPv4.
    one_v4: HashMap<NameHash, Ipv4Addr>,
    /// Every other pod with addresses, its addresses sorted.
    others: HashMap<NameHash, Box<[IpAddr]>>,
    /// Pods holding each address (several share a node's address).
    holders_v4: HashMap<Ipv4Addr, u32>,
    holders_v6: HashMap<Ipv6Addr, u32>,
}

impl Namespace {
    /// Whether pod `name` has exactly `ips` (none: it is not held).
    fn has_exactly(&self, name: NameHash, ips: &[IpAddr]) -> bool {
        match (self.one_v4.get(&name), ips) {
            (Some(held), [IpAddr::V4(ip)]) => held == ip,
            (Some(_), _) => false,
            (None, _) => self.others.get(&name).map_or(&[][..], |held| held) == ips,
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

    /// Forgets pod `name`; returns the addresses it had.
    fn remove(&mut self, name: NameHash) -> Vec<IpAddr> {
        let ips = match self.one_v4.remove(&name) {
            Some(ip) => vec![IpAddr::V4(ip)],
            None => self.others.remove(&name).map_or_else(Vec::new, Vec::from),
        };
        for ip in &ips {
            self.release(*ip);
        }
        ips
    }

    /// The pods held, by name hash.
    fn names(&self) -> Vec<NameHash> {
        self.one_v4.keys().chain(self.others.keys()).copied().collect()
    }
}

/// Every pod's addresses, by namespace.
#[derive(Debug, Default)]
pub struct PodAddresses {
    namespaces: HashMap<Arc<str>, Namespace>,
    names: RandomState,
}

impl PodAddresses {
    pub fn has(&self, ns: &str, ip: IpAddr) -> bool {
        self.namespaces.get(ns).is_some_and(|n| match ip {
            IpAddr::V4(ip) => n.holders_v4.contains_key(&ip),
            IpAddr::V6(ip) => n.holders_v6.contains_key(&ip),
        })
    }

    fn name_hash(&self, name: &str) -> NameHash {
        let hash = self.names.hash_one(name);
        [hash as u32, (hash >> 32) as u32]
    }

    /// Sets the addresses of pod `key` (sorted, without duplicates; none:
    /// it has none). Returns the addresses it had, or None if nothing changed.
    pub fn set(&mut self, key: &Key, ips: &[IpAddr]) -> Option<Vec<IpAddr>> {
        let name = self.name_hash(&key.name);
        if self.namespaces.get(&key.namespace).map_or(ips.is_empty(), |n| n.has_exactly(name, ips)) {
            return None;
        }
        let had = self.remove_hashed(&key.namespace, name);
        if !ips.is_empty() {
            let namespace = self.namespaces.entry(key.namespace.clone()).or_default();
            for ip in ips {
                namespace.hold(*ip);
            }
            match *ips {
                [IpAddr::V4(one)] => {
                    namespace.one_v4.insert(name, one);
                }
                _ => {
                    namespace.others.insert(name, ips.into());
                }
            }
        }
        Some(had)
    }

    /// Forgets pod `key`; returns the addresses it had.
    pub fn remove(&mut self, key: &Key) -> Vec<IpAddr> {
        self.remove_hashed(&key.namespace, self.name_hash(&key.name))
    }

    fn remove_hashed(&mut self, ns: &str, name: NameHash) -> Vec<IpAddr> {
        let Some(namespace) = self.namespaces.get_mut(ns) else { return Vec::new() };
        let ips = namespace.remove(name);
        if namespace.is_empty() {
            self.namespaces.remove(ns);
        }
        ips
    }

    /// Forgets every pod not in `listed` (a relist ended); returns the
    /// addresses each namespace's forgotten pods had.
    pub fn retain_listed(&mut self, listed: &HashSet<Key>) -> Vec<(Arc<str>, Vec<IpAddr>)> {
        let mut kept: HashMap<&str, HashSet<NameHash>> = HashMap::new();
        for key in listed {
            kept.entry(&*key.namespace).or_default().insert(self.name_hash(&key.name));
        }
        let mut released = Vec::new();
        for (ns, namespace) in &mut self.namespaces {
            let names = kept.get(&**ns);
            let gone: Vec<IpAddr> =
                namespace.names().into_iter().filter(|n| !names.is_some_and(|k| k.contains(n))).flat_map(|n| namespace.remove(n)).collect();
            if !gone.is_empty() {
                released.push((ns.clone(), gone));
            }
        }
        self.namespaces.retain(|_, n| !n.is_empty());
        released
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.namespaces.values().map(|n| n.one_v4.len() + n.others.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_pod_with_one_ipv4_address_is_a_12_byte_entry() {
        assert_eq!(std::mem::size_of::<(NameHash, Ipv4Addr)>(), 12);
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
        assert_eq!(pods.len(), 1, "only the other namespace's pod is left");
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
        assert_eq!(pods.len(), 1, "held once, in one of the maps");
        assert_eq!(Arc::strong_count(&a.name), 1, "the table keeps no copy of the name");
        assert_eq!(pods.remove(&a), vec![other_v4]);
        assert!(!pods.has("ns", other_v4) && pods.is_empty());
    }

    #[test]
    fn a_relist_forgets_the_pods_it_did_not_list_and_releases_their_addresses() {
        let mut pods = PodAddresses::default();
        let (kept, gone, gone_elsewhere) = (Key::new("ns", "kept"), Key::new("ns", "gone"), Key::new("other", "gone"));
        let (shared, own, far) = (ip("127.0.0.1"), ip("fd00::2"), ip("127.0.0.3"));
        pods.set(&kept, &[shared]);
        pods.set(&gone, &[shared, own]);
        pods.set(&gone_elsewhere, &[far]);
        // `gone` is listed in another namespace only: still gone from `ns`.
        let listed: HashSet<Key> = [kept.clone(), Key::new("new", "unknown"), Key::new("elsewhere", "gone")].into();
        let mut released = pods.retain_listed(&listed);
        released.sort();
        assert_eq!(released, vec![(Arc::from("ns"), vec![shared, own]), (Arc::from("other"), vec![far])]);
        assert!(pods.has("ns", shared), "the listed pod still holds the shared address");
        assert!(!pods.has("ns", own) && !pods.has("other", far));
        assert_eq!(pods.len(), 1);
        assert_eq!(pods.set(&kept, &[shared]), None, "the listed pod is as it was");
    }
}
