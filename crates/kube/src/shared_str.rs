//! One copy of the values that many objects repeat (namespaces, node
//! names, the named ports of a Deployment's pods): at 100,000 pods in a few
//! namespaces, every view of a pod would otherwise hold its own copy of the
//! same few words.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// A table is pruned of values no one else holds when it reaches this
/// size, then again at twice what is still held: its size stays within
/// twice the values in use (plus this floor), whatever values pass through.
const PRUNE_FLOOR: usize = 1024;

/// A table of shared values of one type, made on first use.
pub struct Interner<T: ?Sized> {
    table: Mutex<Option<Table<T>>>,
}

struct Table<T: ?Sized> {
    held: HashSet<Arc<T>>,
    prune_at: usize,
}

impl<T: ?Sized + Hash + Eq> Interner<T> {
    pub const fn new() -> Self {
        Interner { table: Mutex::new(None) }
    }

    /// The shared copy of `value`; `make` makes it when there is none.
    pub fn share<Q: ?Sized + Hash + Eq>(&self, value: &Q, make: impl FnOnce(&Q) -> Arc<T>) -> Arc<T>
    where
        Arc<T>: Borrow<Q>,
    {
        let mut guard = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let table = guard.get_or_insert_with(|| Table { held: HashSet::new(), prune_at: PRUNE_FLOOR });
        if let Some(held) = table.held.get(value) {
            return held.clone();
        }
        if table.held.len() >= table.prune_at {
            table.held.retain(|held| Arc::strong_count(held) > 1);
            table.prune_at = (table.held.len() * 2).max(PRUNE_FLOOR);
        }
        let held = make(value);
        table.held.insert(held.clone());
        held
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map_or(0, |t| t.held.len())
    }
}

impl<T: ?Sized + Hash + Eq> Default for Interner<T> {
    fn default() -> Self {
        Self::new()
    }
}

static STRINGS: Interner<str> = Interner::new();

/// The shared copy of `s`.
pub fn shared(s: &str) -> Arc<str> {
    STRINGS.share(s, |s: &str| Arc::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let a = shared("shared-str-test-ns");
        let b = shared(&String::from("shared-str-test-ns"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "shared-str-test-ns");
    }

    #[test]
    fn names_no_one_holds_do_not_accumulate() {
        // A stream of distinct names, each dropped at once, as a hostile
        // client's lookups of random namespaces would be.
        let kept = shared("shared-str-test-kept");
        for i in 0..20 * PRUNE_FLOOR {
            drop(shared(&format!("shared-str-test-gone-{i}")));
        }
        // Other tests may hold a few strings of their own meanwhile.
        assert!(STRINGS.len() <= 2 * PRUNE_FLOOR, "table holds {}", STRINGS.len());
        assert!(Arc::ptr_eq(&kept, &shared("shared-str-test-kept")));
    }
}
