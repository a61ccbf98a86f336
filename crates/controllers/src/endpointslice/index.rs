//! The controller's view of the cluster: services, pods, its own slices and
//! Endpoints (each a reflector), plus the indexes that keep a change cheap:
//! services by each term of their selector, pods by each of their labels,
//! slices by the service they belong to. Applying a change returns the
//! services it concerns; planning one service reads only its members.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Endpoints;
use kube::runtime::watcher::Event;
use wharf_kube::few::{self, FewSet};
use wharf_kube::{Change, Keyed, ObjectKey, Watched};

use super::digest::{EndpointsDigest, SliceDigest};
use super::labels::Labels;
use super::plan::{self, PodInfo, SlicePlan, MANAGED_BY, MANAGED_BY_LABEL, MAX_ENDPOINTS_PER_SLICE, SERVICE_NAME_LABEL};
use super::service::ServiceInfo;

/// (namespace, label key, label value)
type SelectorTerm = (Arc<str>, Box<str>, Box<str>);

/// The services whose selector holds each term, and the pods whose labels
/// do, by name: the term holds the namespace (a key would repeat it, 16
/// bytes more for each pod under each of its labels). One entry serves
/// both: every term a service selects on is a label of its pods, and two
/// maps kept each such term twice (its key, its strings, its slot: 1 MB at
/// 10,000 services). A term only pods carry (`pod-template-hash`) holds an
/// empty set of services, 16 bytes. Most terms name one service (its
/// selector) or one pod (a StatefulSet pod's name): `FewSet`s.
#[derive(Default)]
struct Postings(HashMap<SelectorTerm, Members>);

#[derive(Default)]
struct Members {
    services: FewSet<Arc<str>>,
    pods: FewSet<Arc<str>>,
}

/// Which side of a term's members.
#[derive(Clone, Copy)]
enum Side {
    Services,
    Pods,
}

impl Members {
    fn side(&self, side: Side) -> &FewSet<Arc<str>> {
        match side {
            Side::Services => &self.services,
            Side::Pods => &self.pods,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut FewSet<Arc<str>> {
        match side {
            Side::Services => &mut self.services,
            Side::Pods => &mut self.pods,
        }
    }
}

impl Postings {
    fn update<'a>(&mut self, side: Side, key: &ObjectKey, labels: impl IntoIterator<Item = (&'a str, &'a str)>, add: bool) {
        for (k, v) in labels {
            let term = (key.namespace.clone(), k.into(), v.into());
            if add {
                self.0.entry(term).or_default().side_mut(side).insert(key.name.clone());
            } else if let Some(members) = self.0.get_mut(&term) {
                members.side_mut(side).remove(&*key.name);
                if members.services.is_empty() && members.pods.is_empty() {
                    self.0.remove(&term);
                }
            }
        }
    }

    fn get(&self, side: Side, ns: &str, k: &str, v: &str) -> Option<&FewSet<Arc<str>>> {
        self.0.get(&(Arc::from(ns), k.into(), v.into())).map(|members| members.side(side))
    }
}

/// A service's selector terms as postings take them.
fn selector_terms(svc: Option<&ServiceInfo>) -> impl Iterator<Item = (&str, &str)> {
    svc.and_then(ServiceInfo::selector).into_iter().flat_map(Labels::iter)
}

fn labels_match(selector: &Labels, pod: &PodInfo) -> bool {
    selector.iter().all(|(k, v)| pod.label(k) == Some(v))
}

/// A pod's labels as postings take them.
fn pod_labels(pod: Option<&PodInfo>) -> impl Iterator<Item = (&str, &str)> {
    pod.into_iter().flat_map(|p| p.labels().iter())
}

/// The service a managed slice belongs to.
pub fn service_of_slice(slice: &SliceDigest) -> Option<ObjectKey> {
    let labels = slice.meta.labels()?;
    (labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)).then_some(())?;
    Some(ObjectKey::new(slice.meta.key.namespace.clone(), labels.get(SERVICE_NAME_LABEL)?.as_str()))
}

/// One change from any of the watches (transient: each value moves
/// once from its watch to the index).
#[allow(clippy::large_enum_variant)]
pub enum Update {
    Service(Event<ServiceInfo>),
    Pod(Event<PodInfo>),
    Slice(Event<SliceDigest>),
    Endpoints(Event<EndpointsDigest>),
}

#[derive(Default)]
pub struct Index {
    pub services: Watched<ServiceInfo>,
    pub pods: Watched<PodInfo>,
    pub slices: Watched<SliceDigest>,
    pub endpoints: Watched<EndpointsDigest>,
    postings: Postings,
    /// A service's slices, by name: a managed slice is in its service's
    /// namespace.
    slices_of: HashMap<ObjectKey, FewSet<Arc<str>>>,
}

/// What a reconcile decided, computed under the index lock and carried
/// out without it.
pub struct Work {
    pub key: ObjectKey,
    pub slices: SlicePlan,
    pub endpoints: Option<EndpointsWrite>,
}

impl Work {
    pub fn is_empty(&self) -> bool {
        self.slices.is_empty() && self.endpoints.is_none()
    }
}

pub enum EndpointsWrite {
    /// Create (no version) or replace (at this version).
    Put(Box<Endpoints>, Option<String>),
    Delete(Option<u64>),
}

impl Index {
    /// Whether every watch has delivered its first complete list.
    pub fn is_synced(&self) -> bool {
        self.services.reflector.is_synced()
            && self.pods.reflector.is_synced()
            && self.slices.reflector.is_synced()
            && self.endpoints.reflector.is_synced()
    }

    /// Applies one watch event; returns the services whose endpoints it may
    /// change.
    pub fn update(&mut self, update: Update) -> Vec<ObjectKey> {
        let mut marked = Vec::new();
        match update {
            Update::Service(e) => {
                for change in self.services.handle(e) {
                    self.service_changed(&change);
                    marked.push(change.key());
                }
            }
            Update::Pod(e) => {
                for change in self.pods.handle(e) {
                    self.pod_changed(&change, &mut marked);
                }
            }
            Update::Slice(e) => {
                for change in self.slices.handle(e) {
                    marked.extend(self.slice_changed(&change));
                }
            }
            Update::Endpoints(e) => {
                for change in self.endpoints.handle(e) {
                    marked.push(change.key());
                }
            }
        }
        marked
    }

    fn service_changed(&mut self, change: &Change<ServiceInfo>) {
        let key = change.key();
        let (old, new) = match change {
            Change::Applied { old, new } => (old.as_deref(), Some(new.as_ref())),
            Change::Deleted(old) => (Some(old.as_ref()), None),
        };
        self.postings.update(Side::Services, &key, selector_terms(old), false);
        self.postings.update(Side::Services, &key, selector_terms(new), true);
    }

    fn pod_changed(&mut self, change: &Change<PodInfo>, marked: &mut Vec<ObjectKey>) {
        let key = change.key();
        let (old, new) = match change {
            Change::Applied { old, new } => (old.as_deref(), Some(new.as_ref())),
            Change::Deleted(old) => (Some(old.as_ref()), None),
        };
        for pod in [old, new].into_iter().flatten() {
            self.services_selecting(pod, marked);
        }
        if old.map(PodInfo::labels) != new.map(PodInfo::labels) {
            self.postings.update(Side::Pods, &key, pod_labels(old), false);
            self.postings.update(Side::Pods, &key, pod_labels(new), true);
        }
    }

    /// Services whose selector the pod's labels may satisfy.
    fn services_selecting(&self, pod: &PodInfo, out: &mut Vec<ObjectKey>) {
        let ns = pod.namespace();
        let mut seen = HashSet::new();
        for (k, v) in pod.labels() {
            for svc in self.postings.get(Side::Services, ns, k, v).into_iter().flatten() {
                if seen.insert(svc) {
                    out.push(ObjectKey::new(ns.clone(), svc.clone()));
                }
            }
        }
    }

    fn slice_changed(&mut self, change: &Change<SliceDigest>) -> Vec<ObjectKey> {
        let key = change.key();
        let (old, new) = match change {
            Change::Applied { old, new } => (old.as_deref().and_then(service_of_slice), service_of_slice(new)),
            Change::Deleted(old) => (service_of_slice(old), None),
        };
        if let Some(owner) = &old {
            few::remove_from(&mut self.slices_of, owner, &*key.name);
        }
        if let Some(owner) = &new {
            self.slices_of.entry(owner.clone()).or_default().insert(key.name);
        }
        old.into_iter().chain(new).collect()
    }

    /// Records a slice this controller wrote.
    pub fn record_slice(&mut self, slice: SliceDigest) {
        if let Some(change) = self.slices.reflector.record(slice) {
            self.slice_changed(&change);
        }
    }

    /// Records this controller's deletion of a slice.
    pub fn forget_slice(&mut self, key: &ObjectKey, version: Option<u64>) {
        if let Some(old) = self.slices.reflector.forget(key, version) {
            self.slice_changed(&Change::Deleted(old));
        }
    }

    /// The pods a selector matches: the smallest posting list, filtered.
    fn members(&self, ns: &str, selector: &Labels) -> Vec<Arc<PodInfo>> {
        let smallest = selector.iter().map(|(k, v)| self.postings.get(Side::Pods, ns, k, v)).min_by_key(|s| s.map_or(0, FewSet::len));
        let Some(Some(names)) = smallest else { return Vec::new() };
        names
            .into_iter()
            .filter_map(|name| self.pods.reflector.get_parts(ns, name))
            .filter(|p| labels_match(selector, p))
            .cloned()
            .collect()
    }

    /// Every service this controller may have work for: those with a
    /// selector, those with slices, and those with Endpoints it wrote.
    pub fn all_keys(&self) -> HashSet<ObjectKey> {
        let mut keys: HashSet<ObjectKey> = self.services.reflector.values().filter(|s| s.selector().is_some()).map(|s| s.key()).collect();
        keys.extend(self.slices_of.keys().cloned());
        keys.extend(self.endpoints.reflector.values().filter(|e| plan::is_managed_endpoints(e)).map(|e| e.key()));
        keys
    }

    /// Decides what to write for one service.
    pub fn plan(&self, key: &ObjectKey) -> Work {
        let existing: Vec<Arc<SliceDigest>> = self
            .slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|name| self.slices.reflector.get_parts(&key.namespace, name).cloned())
            .collect();
        let current_ep = self.endpoints.reflector.get(key);
        let service = self.services.reflector.get(key);
        let Some((svc, sel)) = service.and_then(|s| s.selector().map(|sel| (s, sel))) else {
            // Deleted, or no selector: the user owns its endpoints.
            let endpoints = current_ep.filter(|e| plan::is_managed_endpoints(e)).map(|e| EndpointsWrite::Delete(e.version()));
            return Work { key: key.clone(), slices: SlicePlan { delete: existing, ..Default::default() }, endpoints };
        };
        let members = self.members(&key.namespace, sel);
        // One set of slices per family; the legacy Endpoints carry the
        // primary family's, as Kubernetes' endpoints controller does.
        let families = svc.families();
        let mut legacy = None;
        let mut slices = SlicePlan {
            delete: existing.iter().filter(|s| !families.iter().any(|f| f.as_str() == &*s.address_type)).cloned().collect(),
            ..Default::default()
        };
        for family in families {
            let desired = plan::desired_endpoints(svc, members.iter().map(|p| p.as_ref()), family);
            legacy.get_or_insert_with(|| plan::legacy_endpoints(svc, &desired));
            let of_family: Vec<Arc<SliceDigest>> = existing.iter().filter(|s| &*s.address_type == family.as_str()).cloned().collect();
            slices = slices.merge(plan::plan_slices(svc, desired, &of_family, MAX_ENDPOINTS_PER_SLICE, family));
        }
        let legacy = legacy.unwrap_or_else(|| plan::legacy_endpoints(svc, &Default::default()));
        let endpoints = match current_ep {
            Some(cur) if cur.matches(&legacy) => None,
            Some(cur) => Some(EndpointsWrite::Put(Box::new(legacy), cur.meta.resource_version())),
            None => Some(EndpointsWrite::Put(Box::new(legacy), None)),
        };
        Work { key: key.clone(), slices, endpoints }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Pod, Service};
    use serde_json::json;

    fn service(ns: &str) -> ServiceInfo {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web", "tier": "front"}, "ports": [{"port": 80}]}
        }))
        .unwrap();
        svc.into()
    }

    fn pod(ns: &str, name: &str, labels: serde_json::Value) -> PodInfo {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns, "labels": labels}})).unwrap();
        PodInfo::from(&pod)
    }

    fn names(pods: Vec<Arc<PodInfo>>) -> Vec<String> {
        let mut names: Vec<String> = pods.iter().map(|p| p.key().to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn postings_find_a_selectors_pods_in_its_own_namespace_only() {
        let mut index = Index::default();
        let both = json!({"app": "web", "tier": "front"});
        for ns in ["a", "b"] {
            assert_eq!(index.update(Update::Service(Event::Apply(service(ns)))), [ObjectKey::new(ns, "web")]);
            index.update(Update::Pod(Event::Apply(pod(ns, "p", both.clone()))));
        }
        index.update(Update::Pod(Event::Apply(pod("a", "q", json!({"app": "web"})))));
        let marked = index.update(Update::Pod(Event::Apply(pod("a", "r", both.clone()))));
        assert_eq!(marked, [ObjectKey::new("a", "web")], "a pod marks the services of its own namespace");
        let selector = service("a").selector().cloned().unwrap();
        assert_eq!(names(index.members("a", &selector)), ["a/p", "a/r"]);
        assert_eq!(names(index.members("b", &selector)), ["b/p"]);

        // Relabeled out, then deleted: gone from the postings.
        index.update(Update::Pod(Event::Apply(pod("a", "r", json!({"app": "web", "tier": "back"})))));
        index.update(Update::Pod(Event::Delete(pod("a", "p", both))));
        assert!(index.members("a", &selector).is_empty());
        assert_eq!(names(index.members("b", &selector)), ["b/p"]);
    }

    #[test]
    fn a_term_is_one_entry_for_its_services_and_pods_until_neither_has_it() {
        let mut index = Index::default();
        let terms = |index: &Index| index.postings.0.len();
        index.update(Update::Service(Event::Apply(service("a"))));
        assert_eq!(terms(&index), 2, "app=web and tier=front");
        index.update(Update::Pod(Event::Apply(pod("a", "p", json!({"app": "web", "tier": "front", "hash": "1"})))));
        assert_eq!(terms(&index), 3, "the service's two terms are shared; the pod adds hash=1");
        index.update(Update::Service(Event::Delete(service("a"))));
        assert_eq!(terms(&index), 3, "the pod still has all three");
        assert!(index.postings.get(Side::Services, "a", "app", "web").is_some_and(FewSet::is_empty));
        index.update(Update::Pod(Event::Delete(pod("a", "p", json!({})))));
        assert_eq!(terms(&index), 0, "a term neither side has is gone");
    }
}
