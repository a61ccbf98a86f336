//! What the controller keeps of the slices and Endpoints it owns: their
//! metadata (for the next write's resourceVersion, and to tell whose they
//! are) and a hash of their content, which is all a plan compares against.
//! A slice's decoded endpoints cost about 400 bytes each; a digest keeps
//! a tag of the pod's name and 8 bytes. Its metadata is kept as its JSON
//! text, packed (`KeptMeta`): decoded, an `ObjectMeta` with a few labels
//! and an owner is about 1.5 KB in a dozen allocations; as text, about
//! 400 bytes in one; packed against the store's dictionary, about 130.
//!
//! The hash is SipHash (std's `DefaultHasher`, fixed keys) of the value's
//! JSON form, fed as it is written, so nothing is allocated.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::num::NonZeroU64;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use wharf_kube::key::{version_in, Keyed, ObjectKey};
use wharf_kube::shared_str;
use wharf_packed::Value;

/// A digest is kept by the same reflector as any object: its key and
/// version are its metadata's.
macro_rules! keyed_by_meta {
    ($($ty:ty),*) => {$(
        impl Keyed for $ty {
            fn key(&self) -> ObjectKey {
                self.meta.key.clone()
            }

            fn key_parts(&self) -> (&str, &str) {
                (&self.meta.key.namespace, &self.meta.key.name)
            }

            fn version(&self) -> Option<u64> {
                self.meta.version
            }

            fn share_key(&mut self, held: &Self) {
                self.meta.key = held.meta.key.clone();
            }
        }
    )*};
}
keyed_by_meta!(SliceDigest, EndpointsDigest);

/// An owned object's metadata as a digest keeps it: its key and version
/// apart, for the tables that find it, and everything else but its managed
/// fields as packed JSON text (`wharf_packed`), unpacked and decoded when
/// the controller plans a change to the object or writes it (a few
/// microseconds; the write costs far more).
#[derive(Clone, Debug, PartialEq)]
pub struct KeptMeta {
    pub key: ObjectKey,
    pub version: Option<u64>,
    rest: Value,
}

impl From<ObjectMeta> for KeptMeta {
    fn from(mut meta: ObjectMeta) -> Self {
        let key = ObjectKey::of_meta(&meta);
        // A version that is not a number as wharf and etcd write them
        // ("7", not "007") is kept as text, in the rest: it is written back
        // exactly as it came.
        let version = version_in(&meta).filter(|v| meta.resource_version.as_deref() == Some(v.to_string().as_str()));
        meta.name = None;
        meta.namespace = None;
        meta.managed_fields = None;
        if version.is_some() {
            meta.resource_version = None;
        }
        // ObjectMeta always serializes.
        let rest = wharf_packed::pack(&serde_json::to_vec(&meta).unwrap_or_default());
        Self { key, version, rest }
    }
}

/// The one field of a metadata's JSON that most reads want.
#[derive(Deserialize)]
struct LabelsOnly {
    labels: Option<BTreeMap<String, String>>,
}

impl KeptMeta {
    /// The whole metadata again, as it arrived but for its managed fields.
    pub fn object_meta(&self) -> ObjectMeta {
        // The text was written from an ObjectMeta just above.
        let mut meta: ObjectMeta = serde_json::from_slice(&self.rest.bytes()).unwrap_or_default();
        meta.name = Some(self.key.name.to_string());
        meta.namespace = (!self.key.namespace.is_empty()).then(|| self.key.namespace.to_string());
        if let Some(version) = self.version {
            meta.resource_version = Some(version.to_string());
        }
        meta
    }

    /// The resourceVersion to write the object back at.
    pub fn resource_version(&self) -> Option<String> {
        match self.version {
            Some(version) => Some(version.to_string()),
            None => self.object_meta().resource_version,
        }
    }

    pub fn labels(&self) -> Option<BTreeMap<String, String>> {
        serde_json::from_slice::<LabelsOnly>(&self.rest.bytes()).ok()?.labels
    }

    pub fn label_is(&self, key: &str, value: &str) -> bool {
        self.labels().is_some_and(|labels| labels.get(key).is_some_and(|v| v == value))
    }
}

/// A hash of `value`'s JSON form.
pub fn content_hash<T: Serialize + ?Sized>(value: &T) -> u64 {
    struct Feed(DefaultHasher);
    impl std::io::Write for Feed {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.write(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut feed = Feed(DefaultHasher::new());
    // Writing into a hasher cannot fail, and k8s-openapi types always
    // serialize.
    let _ = serde_json::to_writer(&mut feed, value);
    feed.0.finish()
}

/// A port set as a comparable key (slices are grouped by it).
pub fn port_key(ports: &[EndpointPort]) -> String {
    serde_json::to_string(ports).unwrap_or_default()
}

/// The pod an endpoint stands for.
fn endpoint_pod(ep: &Endpoint) -> Option<&str> {
    ep.target_ref.as_ref()?.name.as_deref()
}

/// A pod's name as a digest keeps it: a hash, 8 bytes where the name was a
/// 16-byte pointer and an allocation, for each of 100,000 endpoints. It
/// only tells placement which slice a pod's endpoint is in: two names
/// with one tag would cost a move between slices, never an endpoint (each
/// wanted endpoint is placed once, and `hash` covers the whole endpoint).
pub fn pod_tag(name: &str) -> NonZeroU64 {
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    NonZeroU64::new(hasher.finish()).unwrap_or(NonZeroU64::MIN)
}

/// One endpoint as a slice digest keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointDigest {
    pub pod: Option<NonZeroU64>,
    pub hash: u64,
}

impl From<&Endpoint> for EndpointDigest {
    fn from(ep: &Endpoint) -> Self {
        Self { pod: endpoint_pod(ep).map(pod_tag), hash: content_hash(ep) }
    }
}

/// A managed EndpointSlice as the controller keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceDigest {
    /// The slice's metadata without its managed fields: an update starts
    /// from it, so nothing the controller does not set is lost.
    pub meta: KeptMeta,
    /// Its address type and the `port_key` of its ports, each one copy
    /// shared by the slices that have the same (`shared_str`): nearly
    /// every service names the same few ports.
    pub address_type: Arc<str>,
    pub ports: Arc<str>,
    /// Its endpoints in order.
    pub endpoints: Vec<EndpointDigest>,
}

impl From<EndpointSlice> for SliceDigest {
    fn from(slice: EndpointSlice) -> Self {
        Self {
            meta: slice.metadata.into(),
            address_type: shared_str::shared(&slice.address_type),
            ports: shared_str::shared(&port_key(slice.ports.as_deref().unwrap_or_default())),
            endpoints: slice.endpoints.iter().map(EndpointDigest::from).collect(),
        }
    }
}

impl SliceDigest {
    /// Whether the slice holds exactly `endpoints`, in this order.
    pub fn holds(&self, endpoints: &[Endpoint]) -> bool {
        self.endpoints.len() == endpoints.len() && self.endpoints.iter().zip(endpoints).all(|(kept, ep)| *kept == EndpointDigest::from(ep))
    }
}

/// An Endpoints object as the controller keeps it: metadata, and a hash
/// of its subsets.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointsDigest {
    pub meta: KeptMeta,
    pub subsets: u64,
}

impl From<Endpoints> for EndpointsDigest {
    fn from(ep: Endpoints) -> Self {
        Self { meta: ep.metadata.into(), subsets: content_hash(&ep.subsets) }
    }
}

impl EndpointsDigest {
    /// Whether writing `ep` would change nothing the controller sets.
    pub fn matches(&self, ep: &Endpoints) -> bool {
        if self.subsets != content_hash(&ep.subsets) {
            return false;
        }
        let kept = self.meta.object_meta();
        kept.labels == ep.metadata.labels && kept.annotations == ep.metadata.annotations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(ready: bool) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-x", "namespace": "d", "resourceVersion": "7",
                         "managedFields": [{"manager": "m", "operation": "Update"}]},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}, "targetRef": {"kind": "Pod", "name": "a"}}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]
        }))
        .unwrap()
    }

    #[test]
    fn a_slice_digest_tells_its_own_endpoints_from_changed_ones() {
        let original = slice(true);
        let digest = SliceDigest::from(original.clone());
        assert!(digest.holds(&original.endpoints));
        assert!(!digest.holds(&slice(false).endpoints), "a changed condition is a change");
        assert!(!digest.holds(&[]), "a removed endpoint is a change");
        assert_eq!(digest.endpoints[0].pod, Some(pod_tag("a")));
        assert_ne!(pod_tag("a"), pod_tag("b"));
        assert_eq!(std::mem::size_of::<EndpointDigest>(), 16, "one per endpoint the controller wrote");
        assert_eq!(*digest.ports, port_key(original.ports.as_deref().unwrap()));
        let again = SliceDigest::from(original.clone());
        assert!(
            Arc::ptr_eq(&digest.ports, &again.ports) && Arc::ptr_eq(&digest.address_type, &again.address_type),
            "slices share their ports"
        );
        let meta = digest.meta.object_meta();
        assert_eq!((meta.name.as_deref(), meta.namespace.as_deref()), (Some("web-x"), Some("d")));
        assert_eq!((digest.meta.version, meta.resource_version.as_deref()), (Some(7), Some("7")));
        assert!(meta.managed_fields.is_none(), "managed fields are not kept");
    }

    #[test]
    fn kept_metadata_gives_back_all_but_its_managed_fields() {
        let original: ObjectMeta = serde_json::from_value(json!({
            "name": "web-x", "namespace": "d", "uid": "u-1", "resourceVersion": "42", "generation": 3,
            "creationTimestamp": "2026-12-05T10:00:00Z", "generateName": "web-",
            "labels": {"kubernetes.io/service-name": "web", "team": "a"},
            "annotations": {"note": "kept"}, "finalizers": ["example.com/hold"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "s-1", "controller": true}],
            "managedFields": [{"manager": "m", "operation": "Update"}]
        }))
        .unwrap();
        let kept = KeptMeta::from(original.clone());
        assert_eq!((kept.key.clone(), kept.version), (ObjectKey::new("d", "web-x"), Some(42)));
        assert_eq!(kept.object_meta(), ObjectMeta { managed_fields: None, ..original.clone() });
        assert_eq!(kept.labels(), original.labels);
        assert!(kept.label_is("team", "a") && !kept.label_is("team", "b") && !kept.label_is("absent", "a"));
        // Another server's resourceVersion, not a number, survives as text.
        for foreign in ["abc", "007"] {
            let kept = KeptMeta::from(ObjectMeta { resource_version: Some(foreign.into()), ..original.clone() });
            assert_eq!(kept.version, None, "{foreign}");
            assert_eq!(kept.object_meta().resource_version.as_deref(), Some(foreign));
            assert_eq!(kept.resource_version().as_deref(), Some(foreign));
        }
    }

    #[test]
    fn kept_metadata_is_packed() {
        let written: ObjectMeta = serde_json::from_value(json!({
            "creationTimestamp": "2026-12-06T03:05:38Z", "generateName": "svc-1-", "name": "svc-1-76vjs", "namespace": "default",
            "labels": {"app": "app-1", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io", "kubernetes.io/service-name": "svc-1"},
            "ownerReferences": [{"apiVersion": "v1", "blockOwnerDeletion": true, "controller": true, "kind": "Service", "name": "svc-1",
                                 "uid": "c109d8d6-53a4-49ec-8edc-fe12ce16c006"}],
            "resourceVersion": "940", "uid": "63b02b7f-389c-40b2-b0f7-19377f8e7c39"
        }))
        .unwrap();
        let kept = KeptMeta::from(written.clone());
        assert_eq!(kept.object_meta(), written);
        // Two per service (its slice and its Endpoints), 10,000 services.
        let text = serde_json::to_vec(&written).unwrap().len();
        assert!(kept.rest.held() * 3 < text, "{} bytes kept of {text}", kept.rest.held());
    }

    #[test]
    fn an_endpoints_digest_matches_only_the_same_content() {
        let ep = |ip: &str| -> Endpoints {
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "d", "labels": {"a": "b"}},
                "subsets": [{"addresses": [{"ip": ip}], "ports": [{"port": 80}]}]
            }))
            .unwrap()
        };
        let digest = EndpointsDigest::from(ep("127.0.0.1"));
        assert!(digest.matches(&ep("127.0.0.1")));
        assert!(!digest.matches(&ep("127.0.0.2")));
        let mut relabeled = ep("127.0.0.1");
        relabeled.metadata.labels = None;
        assert!(!digest.matches(&relabeled));
    }

    #[test]
    fn the_hash_is_stable_and_does_not_depend_on_how_the_json_is_cut() {
        let big = json!({"x": "y".repeat(100_000)});
        assert_eq!(content_hash(&big), content_hash(&big.clone()));
        assert_ne!(content_hash(&json!(1)), content_hash(&json!(2)));
    }
}
