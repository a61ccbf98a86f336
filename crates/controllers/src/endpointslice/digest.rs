//! What the controller keeps of the slices and Endpoints it owns: their
//! metadata (for the next write's resourceVersion, and to tell whose they
//! are) and a hash of their content, which is all a plan compares against.
//! A slice's decoded endpoints cost about 400 bytes each; a digest keeps
//! the pod's name and 8 bytes.
//!
//! The hash is SipHash (std's `DefaultHasher`, fixed keys) of the value's
//! JSON form, fed as it is written, so nothing is allocated.

use std::hash::{DefaultHasher, Hasher};

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use wharf_kube::key::{meta_parts, version_in, Keyed, ObjectKey};

/// A digest is kept by the same reflector as any object: its key and
/// version are its metadata's.
macro_rules! keyed_by_meta {
    ($($ty:ty),*) => {$(
        impl Keyed for $ty {
            fn key(&self) -> ObjectKey {
                ObjectKey::of_meta(&self.meta)
            }

            fn key_parts(&self) -> (&str, &str) {
                meta_parts(&self.meta)
            }

            fn version(&self) -> Option<u64> {
                version_in(&self.meta)
            }
        }
    )*};
}
keyed_by_meta!(SliceDigest, EndpointsDigest);

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

/// One endpoint as a slice digest keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointDigest {
    pub pod: Option<String>,
    pub hash: u64,
}

impl From<&Endpoint> for EndpointDigest {
    fn from(ep: &Endpoint) -> Self {
        Self { pod: endpoint_pod(ep).map(str::to_string), hash: content_hash(ep) }
    }
}

/// A managed EndpointSlice as the controller keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceDigest {
    /// The slice's metadata without its managed fields: an update starts
    /// from it, so nothing the controller does not set is lost.
    pub meta: ObjectMeta,
    pub address_type: String,
    /// `port_key` of its ports.
    pub ports: String,
    /// Its endpoints in order.
    pub endpoints: Vec<EndpointDigest>,
}

impl From<EndpointSlice> for SliceDigest {
    fn from(slice: EndpointSlice) -> Self {
        let mut meta = slice.metadata;
        meta.managed_fields = None;
        Self {
            meta,
            address_type: slice.address_type,
            ports: port_key(slice.ports.as_deref().unwrap_or_default()),
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
    pub meta: ObjectMeta,
    pub subsets: u64,
}

impl From<Endpoints> for EndpointsDigest {
    fn from(ep: Endpoints) -> Self {
        let mut meta = ep.metadata;
        meta.managed_fields = None;
        Self { meta, subsets: content_hash(&ep.subsets) }
    }
}

impl EndpointsDigest {
    /// Whether writing `ep` would change nothing the controller sets.
    pub fn matches(&self, ep: &Endpoints) -> bool {
        self.subsets == content_hash(&ep.subsets)
            && self.meta.labels == ep.metadata.labels
            && self.meta.annotations == ep.metadata.annotations
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
        assert_eq!(digest.endpoints[0].pod.as_deref(), Some("a"));
        assert_eq!(digest.ports, port_key(original.ports.as_deref().unwrap()));
        assert_eq!(digest.meta.resource_version.as_deref(), Some("7"));
        assert!(digest.meta.managed_fields.is_none(), "managed fields are not kept");
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
