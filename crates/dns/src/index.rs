//! The cluster's DNS data, kept current by watch events: services,
//! their endpoints (from EndpointSlices), pod IPs and namespaces. Every
//! change marks the scopes it touched in `freshness`, which tells the
//! answer caches which of their answers are stale.
//!
//! Only headless services' slices are answered (A, SRV, PTR), so a slice
//! of a service known to have a cluster IP or an external name is not
//! kept: most services have a cluster IP, and their slices were most of
//! the index. The service remembers that it had one dropped; should it come
//! back headless, even after a deletion, the slices are read again
//! (`take_slice_relist`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::freshness::{Freshness, Scope};
use crate::pods::PodAddresses;
use wharf_kube::few::{self, FewSet};
use wharf_kube::{Keyed, KeyedTable};

pub use wharf_kube::ObjectKey as Key;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    /// Its cluster IPs, one per family.
    ClusterIp(Box<[IpAddr]>),
    Headless,
    ExternalName(String),
}

/// A named port: (name, protocol in lower case, number).
pub type NamedPort = (Box<str>, &'static str, u16);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Its own key: the index finds it by this (`KeyedTable`), a slot of
    /// the table one pointer.
    key: Key,
    pub kind: ServiceKind,
    /// At their exact length: a collected vector keeps room for four.
    pub ports: Box<[NamedPort]>,
    /// A slice of it was not kept, as it was not headless.
    slices_dropped: bool,
}

/// Found by its key only: DNS keeps no version (nothing it holds is
/// compared by one).
impl Keyed for ServiceEntry {
    fn key(&self) -> Key {
        self.key.clone()
    }

    fn key_parts(&self) -> (&str, &str) {
        (&self.key.namespace, &self.key.name)
    }

    fn version(&self) -> Option<u64> {
        None
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointEntry {
    pub ip: IpAddr,
    /// The hostname the endpoint was given, lower case; without one, it is
    /// named by its dashed IP, made when asked (most endpoints have none).
    /// Boxed twice for a thin pointer: an entry is 32 bytes, not 40.
    given_name: Option<Box<Box<str>>>,
    pub ready: bool,
}

impl EndpointEntry {
    /// Whether `host` names it: its hostname, or without one its dashed IP.
    pub fn answers_to(&self, host: &str) -> bool {
        match &self.given_name {
            Some(name) => ***name == *host,
            None => is_dashed(self.ip, host),
        }
    }

    /// The endpoint's hostname, or its dashed IP.
    pub fn hostname(&self) -> Cow<'_, str> {
        match &self.given_name {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(dashed(self.ip)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SliceEntry {
    /// Its service's name, shared with the key of `slices_of`.
    service: Arc<str>,
    endpoints: Box<[EndpointEntry]>,
    ports: Box<[NamedPort]>,
}

impl SliceEntry {
    /// The key of its service, given its own: the strings are shared.
    fn owner(&self, key: &Key) -> Key {
        Key { namespace: key.namespace.clone(), name: self.service.clone() }
    }
}

#[derive(Default)]
pub struct Index {
    services: KeyedTable<Box<ServiceEntry>>,
    slices: HashMap<Key, SliceEntry>,
    slices_of: HashMap<Key, FewSet<Arc<str>>>,
    by_cluster_ip: HashMap<IpAddr, FewSet<Key>>,
    /// The slices that hold each endpoint address (PTR of headless services).
    by_endpoint_ip: HashMap<IpAddr, FewSet<Key>>,
    /// A service turned headless after slices of it were dropped: the
    /// slices must be read again.
    slice_relist_wanted: bool,
    /// Services deleted after slices of theirs were dropped, until the
    /// slices are read again (those slices may outlive them).
    dropped_of_deleted: DroppedOfDeleted,
    /// Each pod's IPs, one per family.
    pods: PodAddresses,
    namespaces: HashSet<String>,
    /// What changed when, for the answer caches.
    pub freshness: Freshness,
    /// Unix time of the last change (the SOA serial).
    pub serial: u32,
    synced: HashSet<&'static str>,
}

/// The most deleted services `DroppedOfDeleted` names one by one.
const MAX_DELETED_NAMED: usize = 4096;

/// Deleted services whose slices were dropped: by name up to
/// `MAX_DELETED_NAMED`, then all at once (any headless service that
/// appears then has the slices read again).
#[derive(Default)]
struct DroppedOfDeleted {
    named: HashSet<Key>,
    overflowed: bool,
}

impl DroppedOfDeleted {
    fn insert(&mut self, key: Key) {
        if self.named.len() < MAX_DELETED_NAMED {
            self.named.insert(key);
        } else {
            (self.named, self.overflowed) = (HashSet::new(), true);
        }
    }

    /// Whether slices of `key` may have been dropped; it is forgotten.
    fn take(&mut self, key: &Key) -> bool {
        self.named.remove(key) || self.overflowed
    }
}

/// The watches whose initial lists must be complete before the index
/// answers negatively.
pub const SOURCES: [&str; 4] = ["services", "endpointslices", "pods", "namespaces"];

/// An address as a DNS label: `1-2-3-4`, or for IPv6 its canonical text
/// with dashes for colons (`fd00--1`), as CoreDNS writes them.
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// Whether `label` is `dashed(ip)`, compared as the address is written
/// out, without making the dashed name.
pub fn is_dashed(ip: IpAddr, label: &str) -> bool {
    /// What of the label is still to match; None once it did not.
    struct Rest<'a>(Option<&'a [u8]>);
    impl std::fmt::Write for Rest<'_> {
        fn write_str(&mut self, written: &str) -> std::fmt::Result {
            for byte in written.bytes().map(|b| if b == b'.' || b == b':' { b'-' } else { b }) {
                self.0 = self.0.and_then(|rest| rest.split_first()).filter(|(first, _)| **first == byte).map(|(_, rest)| rest);
            }
            self.0.map(|_| ()).ok_or(std::fmt::Error)
        }
    }
    let mut rest = Rest(Some(label.as_bytes()));
    std::fmt::Write::write_fmt(&mut rest, format_args!("{ip}")).is_ok() && rest.0.is_some_and(<[u8]>::is_empty)
}

/// The address a dashed label stands for, if it is one written
/// canonically.
pub fn undashed(label: &str) -> Option<IpAddr> {
    let ip = label.replace('-', ".").parse::<IpAddr>().or_else(|_| label.replace('-', ":").parse::<IpAddr>()).ok()?;
    (dashed(ip) == label).then_some(ip)
}

/// A protocol as SRV names write it; the API admits no others.
fn lower_protocol(protocol: &str) -> Option<&'static str> {
    ["tcp", "udp", "sctp"].into_iter().find(|p| p.eq_ignore_ascii_case(protocol))
}

fn named_ports<'a>(ports: impl Iterator<Item = (Option<&'a String>, Option<&'a String>, Option<i32>)>) -> Box<[NamedPort]> {
    ports
        .filter_map(|(name, protocol, port)| {
            let name = name.filter(|n| !n.is_empty())?;
            let port = u16::try_from(port?).ok()?;
            Some((name.to_lowercase().into(), lower_protocol(protocol.map_or("TCP", String::as_str))?, port))
        })
        .collect()
}

/// What a slice's answers touch: its service's names and the reverse
/// names of its endpoints.
fn slice_scopes(ns: &str, slice: &SliceEntry) -> Vec<Scope> {
    let mut scopes = vec![Scope::service(ns, &slice.service)];
    scopes.extend(slice.endpoints.iter().map(|e| Scope::address(e.ip)));
    scopes
}

impl Index {
    /// Marks `scopes` changed (and the apex, whose SOA serial moves).
    fn changed(&mut self, scopes: impl IntoIterator<Item = Scope>) {
        for scope in scopes {
            self.freshness.changed(scope);
        }
        self.freshness.changed(Scope::apex());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        self.serial = u32::try_from(now).unwrap_or(u32::MAX);
    }

    /// A relist of `source` is applied.
    pub fn mark_synced(&mut self, source: &'static str) {
        if source == "endpointslices" {
            // Every slice of a deleted service was read again.
            self.dropped_of_deleted = DroppedOfDeleted::default();
        }
        self.synced.insert(source);
        self.freshness.all_changed();
        self.changed([]);
    }

    pub fn is_synced(&self) -> bool {
        SOURCES.iter().all(|s| self.synced.contains(s))
    }

    /// Services known.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn service(&self, ns: &str, name: &str) -> Option<&ServiceEntry> {
        self.services.get_parts(ns, name).map(|entry| &**entry)
    }

    pub fn has_namespace(&self, ns: &str) -> bool {
        self.namespaces.contains(ns)
    }

    pub fn services_with_ip(&self, ip: IpAddr) -> impl Iterator<Item = &Key> {
        self.by_cluster_ip.get(&ip).into_iter().flatten()
    }

    pub fn has_pod_ip(&self, ns: &str, ip: IpAddr) -> bool {
        self.pods.has(ns, ip)
    }

    /// Endpoints of a service from all its slices, de-duplicated by IP and
    /// hostname, in a stable order.
    pub fn endpoints(&self, ns: &str, service: &str) -> Vec<EndpointEntry> {
        let key = Key::new(ns, service);
        let mut seen = BTreeMap::new();
        for slice in self.slices_of.get(&key).into_iter().flatten() {
            if let Some(entry) = self.slices.get(&Key::new(ns, slice.clone())) {
                for ep in &entry.endpoints {
                    seen.entry((ep.ip, ep.hostname().into_owned())).or_insert_with(|| ep.clone());
                }
            }
        }
        seen.into_values().collect()
    }

    /// Named ports of a service's endpoints (headless SRV uses these).
    pub fn endpoint_ports(&self, ns: &str, service: &str) -> Vec<NamedPort> {
        let key = Key::new(ns, service);
        let mut ports: Vec<NamedPort> = self
            .slices_of
            .get(&key)
            .into_iter()
            .flatten()
            .filter_map(|s| self.slices.get(&Key::new(ns, s.clone())))
            .flat_map(|s| s.ports.iter().cloned())
            .collect();
        ports.sort();
        ports.dedup();
        ports
    }

    /// Headless services with an endpoint at `ip`, with its hostname.
    pub fn headless_with_endpoint(&self, ip: IpAddr) -> Vec<(Key, String)> {
        let mut out = Vec::new();
        for (key, slice) in self.by_endpoint_ip.get(&ip).into_iter().flatten().filter_map(|k| Some((k, self.slices.get(k)?))) {
            let svc_key = slice.owner(key);
            if !matches!(self.services.get(&svc_key).map(|s| &s.kind), Some(ServiceKind::Headless)) {
                continue;
            }
            for ep in slice.endpoints.iter().filter(|e| e.ip == ip && e.ready) {
                out.push((svc_key.clone(), ep.hostname().into_owned()));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    pub fn apply_service(&mut self, svc: &Service) {
        let key = Key::of(svc);
        let Some(spec) = &svc.spec else { return };
        let kind = if spec.type_.as_deref() == Some("ExternalName") {
            ServiceKind::ExternalName(spec.external_name.clone().unwrap_or_default().trim_end_matches('.').to_lowercase())
        } else {
            let ips: Box<[IpAddr]> = wharf_api::service::cluster_ips(spec).into_iter().filter_map(|ip| ip.parse().ok()).collect();
            if ips.is_empty() {
                ServiceKind::Headless
            } else {
                ServiceKind::ClusterIp(ips)
            }
        };
        let ports = named_ports(spec.ports.iter().flatten().map(|p| (p.name.as_ref(), p.protocol.as_ref(), Some(p.port))));
        // A held service keeps the copy of the name it was first kept with
        // (its slices hold it). Slices dropped while it was not headless, or
        // while a service of its name that was deleted was not, are still in
        // the cluster.
        let (key, slices_dropped) = match self.services.get(&key) {
            Some(held) if held.kind == kind && held.ports == ports => return,
            Some(held) => (held.key.clone(), held.slices_dropped),
            None => {
                let dropped = self.dropped_of_deleted.take(&key);
                (key, dropped)
            }
        };
        let mut entry = ServiceEntry { key: key.clone(), kind, ports, slices_dropped };
        self.remove_service(&key);
        if entry.kind == ServiceKind::Headless {
            self.slice_relist_wanted |= entry.slices_dropped;
            entry.slices_dropped = false;
        } else {
            // Its answers need none of its slices.
            let kept: Vec<Key> = self.slice_keys_of(&key).collect();
            for slice_key in &kept {
                self.remove_slice(slice_key);
            }
            entry.slices_dropped |= !kept.is_empty();
        }
        if let ServiceKind::ClusterIp(ips) = &entry.kind {
            for ip in ips {
                self.by_cluster_ip.entry(*ip).or_default().insert(key.clone());
            }
        }
        let scopes = self.service_scopes(&key, &entry);
        self.services.insert(Box::new(entry));
        self.changed(scopes);
    }

    /// The keys of the slices kept of `service`.
    fn slice_keys_of<'a>(&'a self, service: &'a Key) -> impl Iterator<Item = Key> + 'a {
        let names = self.slices_of.get(service).into_iter().flatten();
        names.map(|name| Key { namespace: service.namespace.clone(), name: name.clone() })
    }

    /// Whether slices of `service` are kept: it is headless, or not known
    /// yet. Of any other, the service remembers that one was dropped.
    fn keeps_slices_of(&mut self, service: &Key) -> bool {
        match self.services.get_mut(service) {
            Some(entry) if entry.kind != ServiceKind::Headless => {
                entry.slices_dropped = true;
                false
            }
            _ => true,
        }
    }

    /// Whether a slice's service has asked for its slices to be read
    /// again since the last call.
    pub fn take_slice_relist(&mut self) -> bool {
        std::mem::take(&mut self.slice_relist_wanted)
    }

    fn insert_slice(&mut self, key: Key, slice: SliceEntry) {
        for ep in &slice.endpoints {
            self.by_endpoint_ip.entry(ep.ip).or_default().insert(key.clone());
        }
        self.slices_of.entry(slice.owner(&key)).or_default().insert(key.name.clone());
        self.slices.insert(key, slice);
    }

    fn remove_slice(&mut self, key: &Key) -> Option<SliceEntry> {
        let slice = self.slices.remove(key)?;
        for ep in &slice.endpoints {
            few::remove_from(&mut self.by_endpoint_ip, &ep.ip, key);
        }
        few::remove_from(&mut self.slices_of, &slice.owner(key), &*key.name);
        Some(slice)
    }

    /// What a service's answers touch: its names, the reverse name of its
    /// cluster IP, and those of its endpoints (PTRs of headless services).
    fn service_scopes(&self, key: &Key, entry: &ServiceEntry) -> Vec<Scope> {
        let mut scopes = vec![Scope::service(&key.namespace, &key.name)];
        if let ServiceKind::ClusterIp(ips) = &entry.kind {
            scopes.extend(ips.iter().map(|ip| Scope::address(*ip)));
        }
        scopes.extend(self.endpoints(&key.namespace, &key.name).iter().map(|e| Scope::address(e.ip)));
        scopes
    }

    pub fn delete_service(&mut self, key: &Key) {
        if self.remove_service(key).is_some_and(|old| old.slices_dropped) {
            self.dropped_of_deleted.insert(key.clone());
        }
    }

    fn remove_service(&mut self, key: &Key) -> Option<Box<ServiceEntry>> {
        let old = self.services.remove(key)?;
        if let ServiceKind::ClusterIp(ips) = &old.kind {
            for ip in ips {
                few::remove_from(&mut self.by_cluster_ip, ip, key);
            }
        }
        let scopes = self.service_scopes(key, &old);
        self.changed(scopes);
        Some(old)
    }

    pub fn apply_slice(&mut self, slice: &EndpointSlice) {
        let key = Key::of(slice);
        let service: Option<Arc<str>> =
            slice.metadata.labels.as_ref().and_then(|l| l.get("kubernetes.io/service-name")).map(|s| s.as_str().into());
        let Some(service) = service.filter(|_| matches!(slice.address_type.as_str(), "IPv4" | "IPv6")) else {
            self.delete_slice(&key);
            return;
        };
        // The name as the service's own key holds it: one copy.
        let owner = Key { namespace: key.namespace.clone(), name: service };
        if !self.keeps_slices_of(&owner) {
            self.delete_slice(&key);
            return;
        }
        let service = self.services.get(&owner).map_or(owner.name, |held| held.key.name.clone());
        let endpoints = slice
            .endpoints
            .iter()
            .flat_map(|e| {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                let given_name: Option<Box<Box<str>>> = e.hostname.as_deref().map(|h| Box::new(h.to_lowercase().into()));
                e.addresses.iter().filter_map(move |a| {
                    let ip: IpAddr = a.parse().ok()?;
                    Some(EndpointEntry { ip, given_name: given_name.clone(), ready })
                })
            })
            .collect();
        let ports = named_ports(slice.ports.iter().flatten().map(|p| (p.name.as_ref(), p.protocol.as_ref(), p.port)));
        let entry = SliceEntry { service, endpoints, ports };
        if self.slices.get(&key) == Some(&entry) {
            return;
        }
        self.delete_slice(&key);
        let scopes = slice_scopes(&key.namespace, &entry);
        self.insert_slice(key, entry);
        self.changed(scopes);
    }

    pub fn delete_slice(&mut self, key: &Key) {
        if let Some(old) = self.remove_slice(key) {
            self.changed(slice_scopes(&key.namespace, &old));
        }
    }

    pub fn apply_pod(&mut self, pod: &Pod) {
        let key = Key::of(pod);
        let status = pod.status.as_ref();
        let listed = status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().map(|p| p.ip.as_str());
        let mut ips: Vec<IpAddr> = listed.chain(status.and_then(|s| s.pod_ip.as_deref())).filter_map(|ip| ip.parse().ok()).collect();
        ips.sort();
        ips.dedup();
        if let Some(had) = self.pods.set(&key, &ips) {
            self.pods_changed(&key.namespace, had.into_iter().chain(ips));
        }
    }

    pub fn delete_pod(&mut self, key: &Key) {
        let had = self.pods.remove(key);
        self.pods_changed(&key.namespace, had);
    }

    fn pods_changed(&mut self, ns: &str, ips: impl IntoIterator<Item = IpAddr>) {
        let scopes: Vec<Scope> = ips.into_iter().map(|ip| Scope::pod(ns, &dashed(ip))).collect();
        if !scopes.is_empty() {
            self.changed(scopes);
        }
    }

    pub fn apply_namespace(&mut self, ns: &Namespace) {
        if let Some(name) = &ns.metadata.name {
            if self.namespaces.insert(name.clone()) {
                self.changed([Scope::namespace(name)]);
            }
        }
    }

    pub fn delete_namespace(&mut self, name: &str) {
        if self.namespaces.remove(name) {
            self.changed([Scope::namespace(name)]);
        }
    }

    /// Keys of everything of one source, for relists; none of pods, which
    /// are kept by a hash of their name (`delete_unlisted_pods`).
    pub fn keys(&self, source: &str) -> Vec<Key> {
        match source {
            "services" => self.services.keys(),
            "endpointslices" => self.slices.keys().cloned().collect(),
            "namespaces" => self.namespaces.iter().map(|n| Key::new("", n.as_str())).collect(),
            _ => Vec::new(),
        }
    }

    /// Forgets the pods a relist did not list.
    pub fn delete_unlisted_pods(&mut self, listed: &HashSet<Key>) {
        for (ns, had) in self.pods.retain_listed(listed) {
            self.pods_changed(&ns, had);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ips: &[&str]) -> Pod {
        let ips: Vec<_> = ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p", "namespace": "ns"}, "status": {"podIPs": ips}})).unwrap()
    }

    fn service(name: &str, cluster_ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "namespace": "ns"}, "spec": {"clusterIP": cluster_ip}}))
            .unwrap()
    }

    fn slice(name: &str, service: &str, ip: &str) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "hostname": "h", "conditions": {"ready": true}}]
        }))
        .unwrap()
    }

    /// What the index answers of a headless service's endpoint at `ip`,
    /// and how many endpoints it holds of the slice, if it holds it.
    fn held(idx: &Index, ip: &str, slice: &str) -> (Vec<(Key, String)>, Option<usize>) {
        let entry = idx.slices.get(&Key::new("ns", slice));
        (idx.headless_with_endpoint(ip.parse().unwrap()), entry.map(|e| e.endpoints.len()))
    }

    #[test]
    fn only_slices_of_headless_or_unknown_services_are_kept() {
        let mut idx = Index::default();
        let web = Key::new("ns", "web");
        // Before its service is known, a slice is kept.
        idx.apply_slice(&slice("web-a", "web", "198.18.0.1"));
        assert_eq!(held(&idx, "198.18.0.1", "web-a"), (vec![], Some(1)));
        // A cluster IP: the slices go, nothing answered changes.
        idx.apply_service(&service("web", "127.96.0.1"));
        assert_eq!(held(&idx, "198.18.0.1", "web-a"), (vec![], None));
        assert!(idx.endpoints("ns", "web").is_empty() && idx.by_endpoint_ip.is_empty() && idx.slices_of.is_empty());
        idx.apply_slice(&slice("web-b", "web", "198.18.0.2"));
        assert_eq!(held(&idx, "198.18.0.2", "web-b"), (vec![], None), "nor is a new slice of it");
        idx.apply_service(&service("web", "127.96.0.2"));
        assert!(!idx.take_slice_relist(), "nothing to read while it has a cluster IP");

        // Turned headless: its slices must be read again.
        idx.apply_service(&service("web", "None"));
        assert!(idx.take_slice_relist());
        assert!(!idx.take_slice_relist(), "asked once");
        // The relist gives them back.
        idx.apply_slice(&slice("web-a", "web", "198.18.0.1"));
        assert_eq!(held(&idx, "198.18.0.1", "web-a"), (vec![(web.clone(), "h".to_string())], Some(1)));

        // A headless service's slices are kept from the start, found by address.
        idx.apply_service(&service("db", "None"));
        idx.apply_slice(&slice("db-a", "db", "198.18.0.1"));
        let both = vec![(Key::new("ns", "db"), "h".to_string()), (web, "h".to_string())];
        assert_eq!(held(&idx, "198.18.0.1", "db-a"), (both, Some(1)));
        idx.delete_slice(&Key::new("ns", "db-a"));
        idx.delete_slice(&Key::new("ns", "web-a"));
        assert!(idx.by_endpoint_ip.is_empty() && idx.headless_with_endpoint("198.18.0.1".parse().unwrap()).is_empty());
        assert!(!idx.take_slice_relist(), "a headless service whose slices were all kept reads none again");
    }

    #[test]
    fn slices_dropped_for_a_deleted_service_are_read_again_for_its_successor() {
        let mut idx = Index::default();
        let web = Key::new("ns", "web");
        idx.apply_service(&service("web", "127.96.0.1"));
        idx.apply_slice(&slice("web-a", "web", "198.18.0.1"));
        // Deleted, and back headless: its slices may still be in the cluster.
        idx.delete_service(&web);
        idx.apply_service(&service("web", "None"));
        assert!(idx.take_slice_relist());
        // Deleted, back with a cluster IP, then headless.
        idx.apply_service(&service("web", "127.96.0.1"));
        idx.apply_slice(&slice("web-a", "web", "198.18.0.1"));
        idx.delete_service(&web);
        idx.apply_service(&service("web", "127.96.0.3"));
        idx.apply_service(&service("web", "None"));
        assert!(idx.take_slice_relist());
        // A relist of the slices forgets the deleted services.
        idx.apply_service(&service("web", "127.96.0.1"));
        idx.apply_slice(&slice("web-a", "web", "198.18.0.1"));
        idx.delete_service(&web);
        idx.mark_synced("endpointslices");
        idx.apply_service(&service("web", "None"));
        assert!(!idx.take_slice_relist());
    }

    #[test]
    fn deleted_services_are_named_up_to_a_bound_then_counted_as_all() {
        let mut dropped = DroppedOfDeleted::default();
        for i in 0..=MAX_DELETED_NAMED {
            dropped.insert(Key::new("ns", format!("s{i}")));
        }
        assert!(dropped.named.len() <= MAX_DELETED_NAMED);
        assert!(dropped.take(&Key::new("ns", "never-deleted")), "past the bound, any service may have had its slices dropped");
        let mut few = DroppedOfDeleted::default();
        few.insert(Key::new("ns", "a"));
        assert!(few.take(&Key::new("ns", "a")) && !few.take(&Key::new("ns", "a")) && !few.take(&Key::new("ns", "b")));
    }

    #[test]
    fn a_slice_names_its_service_with_the_services_own_copy() {
        let mut idx = Index::default();
        idx.apply_service(&service("web", "None"));
        idx.apply_slice(&slice("web-a", "web", "198.18.0.1"));
        idx.apply_service(&service("web", "None"));
        let changed: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns"}, "spec": {"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap();
        idx.apply_service(&changed);
        assert_eq!(idx.service("ns", "web").map(|s| s.ports.len()), Some(1), "the change was applied");
        let held = &idx.services.get(&Key::new("ns", "web")).unwrap().key;
        assert!(Arc::ptr_eq(&idx.slices[&Key::new("ns", "web-a")].service, &held.name), "one copy of the name, not one per slice");
    }

    #[test]
    fn a_dashed_name_is_compared_as_it_would_be_written() {
        for ip in ["127.0.0.7", "fd00::7", "::ffff:1.2.3.4", "::"] {
            let ip: IpAddr = ip.parse().unwrap();
            let name = dashed(ip);
            assert!(is_dashed(ip, &name), "{name}");
            assert!(!is_dashed(ip, &name[..name.len() - 1]) && !is_dashed(ip, &format!("{name}-")) && !is_dashed(ip, ""));
        }
        assert!(!is_dashed("127.0.0.7".parse().unwrap(), "127-0-0-8"));
    }

    #[test]
    fn an_endpoint_answers_to_its_given_name_or_its_dashed_ip() {
        let ip: IpAddr = "127.0.0.7".parse().unwrap();
        let named = EndpointEntry { ip, given_name: Some(Box::new("web-0".into())), ready: true };
        let unnamed = EndpointEntry { given_name: None, ..named.clone() };
        assert!(named.answers_to("web-0") && !named.answers_to("127-0-0-7") && named.hostname() == "web-0");
        assert!(unnamed.answers_to("127-0-0-7") && !unnamed.answers_to("web-0") && unnamed.hostname() == "127-0-0-7");
        // One per endpoint of every slice: 100,000 of them at 100,000 endpoints.
        assert!(std::mem::size_of::<EndpointEntry>() <= 32, "an endpoint entry is {} bytes", std::mem::size_of::<EndpointEntry>());
    }

    #[test]
    fn a_pod_answers_at_its_current_addresses_only() {
        let mut idx = Index::default();
        let (a, b, v6): (IpAddr, IpAddr, IpAddr) = ("127.0.0.7".parse().unwrap(), "127.0.0.8".parse().unwrap(), "fd00::7".parse().unwrap());
        idx.apply_pod(&pod(&["127.0.0.7"]));
        assert!(idx.has_pod_ip("ns", a) && !idx.has_pod_ip("other", a));
        idx.apply_pod(&pod(&["127.0.0.8", "fd00::7"]));
        assert!(!idx.has_pod_ip("ns", a) && idx.has_pod_ip("ns", b) && idx.has_pod_ip("ns", v6));
        idx.apply_pod(&pod(&["fd00::7"]));
        assert!(!idx.has_pod_ip("ns", b) && idx.has_pod_ip("ns", v6));
        idx.delete_pod(&Key::new("ns", "p"));
        assert!(!idx.has_pod_ip("ns", v6) && idx.pods.is_empty());
    }
}
