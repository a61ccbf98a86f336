//! The identity of an object within its kind: namespace and name, as
//! kube-runtime's `ObjectRef` without the kind (every table here is per kind).

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Empty for cluster-scoped objects.
    pub namespace: std::sync::Arc<str>,
    pub name: std::sync::Arc<str>,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<std::sync::Arc<str>>, name: impl Into<std::sync::Arc<str>>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    pub fn of<K: Resource>(obj: &K) -> Self {
        Self::of_meta(obj.meta())
    }

    pub fn of_meta(meta: &ObjectMeta) -> Self {
        Self::new(meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// An object's resourceVersion as a number, where it is one (wharf's and
/// etcd's are); None means "unknown order".
pub fn version_of<K: Resource>(obj: &K) -> Option<u64> {
    version_in(obj.meta())
}

/// As [`version_of`], from the metadata alone.
pub fn version_in(meta: &ObjectMeta) -> Option<u64> {
    meta.resource_version.as_deref().and_then(|rv| rv.parse().ok())
}

/// What a table needs of an object: which one it is, and how new. Every
/// Kubernetes object has both in its metadata; a controller's compact
/// stand-in for one (`PodInfo`, a slice digest) implements it itself.
pub trait Keyed {
    fn key(&self) -> ObjectKey;
    /// As [`version_of`].
    fn version(&self) -> Option<u64>;
}

/// Implements [`Keyed`] for compact views that carry their object's key
/// and version as fields `key: ObjectKey` and `version: Option<u64>`.
#[macro_export]
macro_rules! keyed_view {
    ($($view:ty),+ $(,)?) => {$(
        impl $crate::Keyed for $view {
            fn key(&self) -> $crate::ObjectKey {
                self.key.clone()
            }

            fn version(&self) -> Option<u64> {
                self.version
            }
        }
    )+};
}

impl<K: Resource> Keyed for K {
    fn key(&self) -> ObjectKey {
        ObjectKey::of(self)
    }

    fn version(&self) -> Option<u64> {
        version_of(self)
    }
}
