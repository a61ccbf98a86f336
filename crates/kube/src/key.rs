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

    /// An object's key, its namespace the one shared copy (`shared_str`):
    /// most keys made are kept, by a table or a view.
    pub fn of_meta(meta: &ObjectMeta) -> Self {
        let (namespace, name) = meta_parts(meta);
        Self::new(crate::shared_str::shared(namespace), name)
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

/// An object's uid as a view keeps it: the 16 bytes of a UUID in its
/// usual lowercase form (as every API server writes them), else the text.
/// A pod's uid as text is a 36-byte allocation more per pod per view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uid {
    Uuid(uuid::Uuid),
    Text(Box<str>),
}

impl Uid {
    pub fn new(uid: &str) -> Self {
        match uuid::Uuid::try_parse(uid) {
            Ok(parsed) if *parsed.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()) == *uid => Uid::Uuid(parsed),
            _ => Uid::Text(uid.into()),
        }
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uid::Uuid(uuid) => uuid.hyphenated().fmt(f),
            Uid::Text(text) => f.write_str(text),
        }
    }
}

/// Namespace and name in `meta`, empty where missing.
pub fn meta_parts(meta: &ObjectMeta) -> (&str, &str) {
    (meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default())
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
    /// Namespace and name, borrowed: what a table hashes and compares
    /// while looking one up.
    fn key_parts(&self) -> (&str, &str);
    /// As [`version_of`].
    fn version(&self) -> Option<u64>;
    /// Takes the key strings of `held`, the version of this object a table
    /// already holds (found by this key, so the keys are equal): the
    /// indexes that name the object keep the first copy, and each update's
    /// own copy would be one more per object.
    fn share_key(&mut self, _held: &Self) {}
}

/// Implements [`Keyed`] for compact views that carry their object's key
/// and version as fields `key: ObjectKey` and `version: Option<u64>` (or
/// `Option<NonZeroU64>`, 8 bytes: no object's version is 0).
#[macro_export]
macro_rules! keyed_view {
    ($($view:ty),+ $(,)?) => {$(
        impl $crate::Keyed for $view {
            fn key(&self) -> $crate::ObjectKey {
                self.key.clone()
            }

            fn key_parts(&self) -> (&str, &str) {
                (&self.key.namespace, &self.key.name)
            }

            fn version(&self) -> Option<u64> {
                self.version.map(u64::from)
            }

            fn share_key(&mut self, held: &Self) {
                self.key = held.key.clone();
            }
        }
    )+};
}

impl<K: Resource> Keyed for K {
    fn key(&self) -> ObjectKey {
        ObjectKey::of(self)
    }

    fn key_parts(&self) -> (&str, &str) {
        meta_parts(self.meta())
    }

    fn version(&self) -> Option<u64> {
        version_of(self)
    }
}

#[cfg(test)]
mod tests {
    use super::Uid;

    #[test]
    fn a_uid_reads_back_as_written() {
        let usual = "0b5f3c1e-8d2a-4e6f-9a7b-1c2d3e4f5a6b";
        assert!(matches!(Uid::new(usual), Uid::Uuid(_)));
        // Forms a UUID parser accepts but that are not written that way
        // are kept as text, so they read back unchanged.
        for uid in [usual, "0B5F3C1E-8D2A-4E6F-9A7B-1C2D3E4F5A6B", "0b5f3c1e8d2a4e6f9a7b1c2d3e4f5a6b", "pod-uid-1", ""] {
            assert_eq!(Uid::new(uid).to_string(), uid);
        }
        assert!(matches!(Uid::new("0b5f3c1e8d2a4e6f9a7b1c2d3e4f5a6b"), Uid::Text(_)));
    }
}
