//! Keeping a table current from a watch. `Relister` turns watcher events
//! into operations on any [`Table`]: applies and deletes as they come, and
//! a relist buffered and applied together when it ends, as kube-runtime's
//! reflector does with `InitApply` and `InitDone`, so that objects that
//! vanished during a watch gap come out as deletions and no table is ever
//! seen half-relisted.
//!
//! Each consumer keeps what it needs as its table (the DNS index keeps
//! addresses, not pods). [`Reflector`] is the table of whole objects that
//! controllers use: it reports each change with the state it replaced, and
//! takes the results of the controller's own writes, which it knows before
//! their watch events arrive: a late or repeated echo of a write is
//! recognized by its resourceVersion and changes nothing, and a deletion it
//! made cannot be undone by an older event.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use hashbrown::hash_table::Entry;

use kube::runtime::watcher::Event;

use crate::key::{Keyed, ObjectKey};
use crate::keyed_table::KeyedTable;

/// What a watch of kind `K` keeps current.
pub trait Table<K> {
    fn apply(&mut self, obj: K);
    fn delete(&mut self, key: &ObjectKey);
    /// Deletes what it holds that a finished relist did not list (a table
    /// that lists its keys: [`delete_missing`]; one that keeps only a hash
    /// of each name deletes by the hashes of `listed`).
    fn delete_unlisted(&mut self, listed: &HashSet<ObjectKey>);
    fn relist_started(&mut self) {}
    /// A relist was applied: the table now matches the store.
    fn relist_done(&mut self) {}
}

/// Applies watcher events of one kind to a table.
pub struct Relister<K> {
    relist: Option<Vec<K>>,
}

impl<K> Default for Relister<K> {
    fn default() -> Self {
        Self { relist: None }
    }
}

impl<K: Keyed> Relister<K> {
    pub fn handle(&mut self, table: &mut impl Table<K>, event: Event<K>) {
        match event {
            Event::Apply(obj) => table.apply(obj),
            Event::Delete(obj) => table.delete(&obj.key()),
            Event::Init => {
                self.relist = Some(Vec::new());
                table.relist_started();
            }
            Event::InitApply(obj) => self.relist.get_or_insert_with(Vec::new).push(obj),
            Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let keys: HashSet<ObjectKey> = listed.iter().map(Keyed::key).collect();
                for obj in listed {
                    table.apply(obj);
                }
                table.delete_unlisted(&keys);
                table.relist_done();
            }
        }
    }
}

/// `Table::delete_unlisted` of a table that can list the keys it `held`.
pub fn delete_missing<K, T: Table<K>>(table: &mut T, held: Vec<ObjectKey>, listed: &HashSet<ObjectKey>) {
    for key in held.into_iter().filter(|k| !listed.contains(k)) {
        table.delete(&key);
    }
}

/// One change to a [`Reflector`].
#[derive(Debug)]
pub enum Change<K> {
    /// New or changed; `old` is the state it replaced.
    Applied { old: Option<Arc<K>>, new: Arc<K> },
    /// Gone; the last state known.
    Deleted(Arc<K>),
}

impl<K: Keyed> Change<K> {
    /// The object as it is now, or as it was last when deleted.
    pub fn object(&self) -> &K {
        match self {
            Change::Applied { new, .. } => new,
            Change::Deleted(old) => old,
        }
    }

    pub fn key(&self) -> ObjectKey {
        match self {
            Change::Applied { new, .. } => new.key(),
            Change::Deleted(old) => old.key(),
        }
    }
}

/// Whole objects of one kind, and the changes not yet taken by its owner.
pub struct Reflector<K> {
    items: KeyedTable<Arc<K>>,
    changes: Vec<Change<K>>,
    relisting: bool,
    /// Objects this side wrote since the relist began: the list may predate
    /// them, so their absence from it is no deletion.
    recorded_during_relist: HashSet<ObjectKey>,
    /// Objects this side deleted, with their last version.
    tombstones: HashMap<ObjectKey, u64>,
    synced: bool,
}

impl<K> Default for Reflector<K> {
    fn default() -> Self {
        Self {
            items: KeyedTable::default(),
            changes: Vec::new(),
            relisting: false,
            recorded_during_relist: HashSet::new(),
            tombstones: HashMap::new(),
            synced: false,
        }
    }
}

/// Whether `new` is newer than `known`; without versions, assume so.
fn newer(new: Option<u64>, known: Option<u64>) -> bool {
    match (new, known) {
        (Some(n), Some(k)) => n > k,
        _ => true,
    }
}

impl<K: Keyed> Reflector<K> {
    /// True once the first complete list has been applied.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Arc<K>> {
        self.items.get(key)
    }

    /// As `get`, by namespace and name.
    pub fn get_parts(&self, namespace: &str, name: &str) -> Option<&Arc<K>> {
        self.items.get_parts(namespace, name)
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Arc<K>> {
        self.items.remove(key)
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<K>> {
        self.items.values()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The changes since the last call, in order.
    pub fn take_changes(&mut self) -> Vec<Change<K>> {
        std::mem::take(&mut self.changes)
    }

    /// Records the object a write of this side returned; the change is
    /// returned, not queued.
    pub fn record(&mut self, obj: K) -> Option<Change<K>> {
        if self.relisting {
            self.recorded_during_relist.insert(obj.key());
        }
        self.upsert(obj)
    }

    /// Records this side's deletion of an object last seen at `version`.
    pub fn forget(&mut self, key: &ObjectKey, version: Option<u64>) -> Option<Arc<K>> {
        if let Some(v) = version {
            self.tombstones.insert(key.clone(), v);
        }
        self.recorded_during_relist.remove(key);
        self.remove(key)
    }

    fn upsert(&mut self, mut obj: K) -> Option<Change<K>> {
        let version = obj.version();
        if !self.tombstones.is_empty() {
            let key = obj.key();
            if let Some(&gone) = self.tombstones.get(&key) {
                if !newer(version, Some(gone)) {
                    return None;
                }
                self.tombstones.remove(&key);
            }
        }
        let (namespace, name) = obj.key_parts();
        let entry = self.items.entry(namespace, name);
        // The object is shared only once it is taken: the echo of an own
        // write, which every write has, is dropped as it is.
        let (new, old) = match entry {
            Entry::Occupied(held) if !newer(version, held.get().version()) => return None,
            Entry::Occupied(mut held) => {
                obj.share_key(held.get());
                let new = Arc::new(obj);
                let old = std::mem::replace(held.get_mut(), new.clone());
                (new, Some(old))
            }
            Entry::Vacant(slot) => {
                let new = Arc::new(obj);
                slot.insert(new.clone());
                (new, None)
            }
        };
        Some(Change::Applied { old, new })
    }
}

impl<K: Keyed> Table<K> for Reflector<K> {
    fn apply(&mut self, obj: K) {
        if let Some(change) = self.upsert(obj) {
            self.changes.push(change);
        }
    }

    fn delete(&mut self, key: &ObjectKey) {
        self.tombstones.remove(key);
        if let Some(old) = self.remove(key) {
            self.changes.push(Change::Deleted(old));
        }
    }

    fn delete_unlisted(&mut self, listed: &HashSet<ObjectKey>) {
        let held = self.items.values().map(|item| item.key()).filter(|k| !self.recorded_during_relist.contains(k)).collect();
        delete_missing(self, held, listed);
    }

    fn relist_started(&mut self) {
        self.relisting = true;
        self.recorded_during_relist.clear();
    }

    fn relist_done(&mut self) {
        self.relisting = false;
        self.recorded_during_relist.clear();
        self.tombstones.clear();
        self.synced = true;
    }
}

/// A reflector fed by its own relister: the usual pair for one watch.
pub struct Watched<K> {
    pub reflector: Reflector<K>,
    relister: Relister<K>,
}

impl<K> Default for Watched<K> {
    fn default() -> Self {
        Self { reflector: Reflector::default(), relister: Relister::default() }
    }
}

impl<K: Keyed> Watched<K> {
    /// Applies one watcher event; returns what changed.
    pub fn handle(&mut self, event: Event<K>) -> Vec<Change<K>> {
        self.relister.handle(&mut self.reflector, event);
        self.reflector.take_changes()
    }
}
