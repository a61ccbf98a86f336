//! An in-memory copy of watched objects, updated by watch events and by
//! the controller's own writes (whose results it knows first). A write's
//! late or duplicate echo in the watch stream is recognized by its
//! resourceVersion and changes nothing, so it triggers no work.

use std::collections::HashMap;
use std::sync::Arc;

use kube::Resource;

/// Namespace and name.
pub type ObjectKey = (String, String);

pub fn key_of<K: Resource>(obj: &K) -> ObjectKey {
    let meta = obj.meta();
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

fn version_of<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta().resource_version.as_deref().and_then(|rv| rv.parse().ok())
}

pub struct Cache<K> {
    items: HashMap<ObjectKey, Arc<K>>,
    /// Objects this controller deleted, with their last version, so that
    /// an older event cannot bring them back.
    tombstones: HashMap<ObjectKey, u64>,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Self { items: HashMap::new(), tombstones: HashMap::new() }
    }
}

/// What an applied object did to the cache.
pub enum Applied<K> {
    /// New or changed; the previous state if there was one.
    Changed(Option<Arc<K>>),
    /// Already known at this or a newer version.
    Stale,
}

impl<K: Resource> Cache<K> {
    pub fn get(&self, key: &ObjectKey) -> Option<&Arc<K>> {
        self.items.get(key)
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<K>> {
        self.items.values()
    }

    pub fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.items.keys()
    }

    /// Records an object seen in a watch or returned by a write.
    pub fn apply(&mut self, obj: K) -> Applied<K> {
        let key = key_of(&obj);
        let version = version_of(&obj);
        let newer_than = |known: Option<u64>| match (version, known) {
            (Some(v), Some(k)) => v > k,
            _ => true,
        };
        if let Some(&gone) = self.tombstones.get(&key) {
            if !newer_than(Some(gone)) {
                return Applied::Stale;
            }
            self.tombstones.remove(&key);
        }
        if let Some(existing) = self.items.get(&key) {
            if !newer_than(version_of(existing.as_ref())) {
                return Applied::Stale;
            }
        }
        Applied::Changed(self.items.insert(key, Arc::new(obj)))
    }

    /// Records a deletion seen in a watch.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<Arc<K>> {
        self.tombstones.remove(key);
        self.items.remove(key)
    }

    /// Records this controller's own deletion of an object last seen at
    /// `version`.
    pub fn forget(&mut self, key: &ObjectKey, version: Option<u64>) {
        self.items.remove(key);
        if let Some(v) = version {
            self.tombstones.insert(key.clone(), v);
        }
    }

    /// Keeps only the keys in `live` (after a relist), returning what went.
    pub fn retain_keys(&mut self, live: &std::collections::HashSet<ObjectKey>) -> Vec<Arc<K>> {
        let gone: Vec<ObjectKey> = self.items.keys().filter(|k| !live.contains(*k)).cloned().collect();
        gone.iter().filter_map(|k| self.items.remove(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;

    fn svc(name: &str, rv: &str) -> Service {
        let mut s = Service::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("d".into());
        s.metadata.resource_version = Some(rv.into());
        s
    }

    #[test]
    fn echoes_and_old_events_are_stale() {
        let mut cache = Cache::default();
        assert!(matches!(cache.apply(svc("a", "5")), Applied::Changed(None)));
        assert!(matches!(cache.apply(svc("a", "5")), Applied::Stale));
        assert!(matches!(cache.apply(svc("a", "4")), Applied::Stale));
        assert!(matches!(cache.apply(svc("a", "6")), Applied::Changed(Some(_))));
        cache.forget(&("d".into(), "a".into()), Some(6));
        assert!(matches!(cache.apply(svc("a", "6")), Applied::Stale));
        assert!(cache.get(&("d".into(), "a".into())).is_none());
        assert!(matches!(cache.apply(svc("a", "9")), Applied::Changed(None)));
    }
}
