//! Objects found by their own key (`Keyed::key_parts`): a table whose slot
//! is one pointer. A map keyed by a copy of the key spent 32 bytes more per
//! slot, and a table holds up to twice as many slots as objects.

use std::hash::{BuildHasher, RandomState};
use std::ops::Deref;

use hashbrown::hash_table::{Entry, HashTable};

use crate::key::{Keyed, ObjectKey};

/// Objects behind pointers `P` (`Arc<K>`, `Box<K>`), by their key.
pub struct KeyedTable<P> {
    items: HashTable<P>,
    hasher: RandomState,
}

impl<P> Default for KeyedTable<P> {
    fn default() -> Self {
        Self { items: HashTable::new(), hasher: RandomState::new() }
    }
}

impl<P: Deref<Target: Keyed>> KeyedTable<P> {
    pub fn get(&self, key: &ObjectKey) -> Option<&P> {
        self.get_parts(&key.namespace, &key.name)
    }

    /// As `get`, by namespace and name.
    pub fn get_parts(&self, namespace: &str, name: &str) -> Option<&P> {
        let parts = (namespace, name);
        self.items.find(self.hasher.hash_one(parts), |item| item.key_parts() == parts)
    }

    /// The object of `key`, to change anything but its key.
    pub fn get_mut(&mut self, key: &ObjectKey) -> Option<&mut P> {
        let parts = (&*key.namespace, &*key.name);
        self.items.find_mut(self.hasher.hash_one(parts), |item| item.key_parts() == parts)
    }

    /// The slot of the object named so, held or not.
    pub fn entry(&mut self, namespace: &str, name: &str) -> Entry<'_, P> {
        let (hasher, parts) = (&self.hasher, (namespace, name));
        self.items.entry(hasher.hash_one(parts), |item| item.key_parts() == parts, |item| hasher.hash_one(item.key_parts()))
    }

    /// Holds `item` in place of the object of its key; returns that one.
    pub fn insert(&mut self, item: P) -> Option<P> {
        let (namespace, name) = item.key_parts();
        match self.entry(namespace, name) {
            Entry::Occupied(mut held) => Some(std::mem::replace(held.get_mut(), item)),
            Entry::Vacant(slot) => {
                slot.insert(item);
                None
            }
        }
    }

    pub fn remove(&mut self, key: &ObjectKey) -> Option<P> {
        let parts = (&*key.namespace, &*key.name);
        let found = self.items.find_entry(self.hasher.hash_one(parts), |item| item.key_parts() == parts).ok()?;
        Some(found.remove().0)
    }

    pub fn values(&self) -> impl Iterator<Item = &P> {
        self.items.iter()
    }

    /// The keys of the objects held.
    pub fn keys(&self) -> Vec<ObjectKey> {
        self.items.iter().map(|item| item.key()).collect()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct View {
        key: ObjectKey,
        version: Option<u64>,
    }
    crate::keyed_view!(View);

    fn view(ns: &str, name: &str, version: u64) -> Box<View> {
        Box::new(View { key: ObjectKey::new(ns, name), version: Some(version) })
    }

    #[test]
    fn an_object_is_found_replaced_and_removed_by_its_own_key_in_a_one_pointer_slot() {
        assert_eq!(std::mem::size_of::<Box<View>>(), 8);
        let mut table = KeyedTable::default();
        assert_eq!(table.insert(view("a", "web", 1)), None);
        assert_eq!(table.insert(view("b", "web", 1)), None, "another namespace, another object");
        assert_eq!(table.insert(view("a", "web", 2)), Some(view("a", "web", 1)), "the old one is returned");
        assert_eq!(table.get_parts("a", "web").and_then(|v| v.version), Some(2));
        assert_eq!(table.len(), 2);
        let mut keys = table.keys();
        keys.sort_by(|x, y| x.namespace.cmp(&y.namespace));
        assert_eq!(keys, [ObjectKey::new("a", "web"), ObjectKey::new("b", "web")]);
        assert_eq!(table.remove(&ObjectKey::new("a", "web")), Some(view("a", "web", 2)));
        assert_eq!(table.remove(&ObjectKey::new("a", "web")), None);
        assert!(table.get(&ObjectKey::new("a", "web")).is_none());
        assert_eq!(table.values().count(), 1);
    }
}
