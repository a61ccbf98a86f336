//! A set that nearly always holds one item or a handful (the services
//! behind a cluster IP, the slices of a service, the services of a
//! selector term) but may hold many (the pods of a label). Up to `FEW`
//! items it is a boxed slice at its exact length: one small allocation,
//! where a hash set's smallest table is about 150 bytes, and a linear
//! lookup that at these sizes beats hashing. Past `FEW` it becomes a hash
//! set, so a large set (100,000 pods under one label, or a hostile service
//! with thousands of slices) never makes an insert or a removal linear.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};

/// Items kept in a vector; one more and the set is hashed. A service's
/// pods under its label are typically a few dozen: as a vector, 32 keys are
/// 1 KB, as a hash set about twice that; a linear scan of 32 short keys
/// costs less than hashing one.
const FEW: usize = 32;

#[derive(Debug)]
pub struct FewSet<T>(Repr<T>);

/// 16 bytes, in every slot of the tables that hold sets (a vector, with
/// its capacity, was 24: 0.7 MB over the tables of 10,000 services).
#[derive(Debug)]
enum Repr<T> {
    /// A slice, not a vector: it is always at its exact length anyway.
    Few(Box<[T]>),
    /// Boxed: a hash set is 48 bytes.
    #[allow(clippy::box_collection)]
    Many(Box<HashSet<T>>),
}

impl<T> Default for FewSet<T> {
    fn default() -> Self {
        FewSet(Repr::Few(Box::default()))
    }
}

impl<T: Eq + Hash> FewSet<T> {
    pub fn insert(&mut self, item: T) {
        match &mut self.0 {
            Repr::Few(items) if items.contains(&item) => {}
            Repr::Few(items) if items.len() < FEW => {
                // One reallocation to the new length (a vector's first
                // growth makes room for four; most sets keep one).
                let mut grown = Vec::from(std::mem::take(items));
                grown.reserve_exact(1);
                grown.push(item);
                *items = grown.into_boxed_slice();
            }
            Repr::Few(items) => {
                let mut many: HashSet<T> = std::mem::take(items).into_vec().into_iter().collect();
                many.insert(item);
                self.0 = Repr::Many(Box::new(many));
            }
            Repr::Many(many) => {
                many.insert(item);
            }
        }
    }

    /// Removes `item`; a set that shrank to half of `FEW` is a vector
    /// again, so a label that once had 100,000 pods does not keep their
    /// table.
    pub fn remove<Q: Eq + Hash + ?Sized>(&mut self, item: &Q)
    where
        T: Borrow<Q>,
    {
        match &mut self.0 {
            Repr::Few(items) => {
                // A set holds an item once; its order is none.
                if let Some(at) = items.iter().position(|held| held.borrow() == item) {
                    let mut kept = Vec::from(std::mem::take(items));
                    kept.swap_remove(at);
                    *items = kept.into_boxed_slice();
                }
            }
            Repr::Many(many) => {
                many.remove(item);
                if many.len() <= FEW / 2 {
                    self.0 = Repr::Few(many.drain().collect());
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        match &self.0 {
            Repr::Few(items) => items.len(),
            Repr::Many(many) => many.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes `item` from the set of `key` in `map`, and the set once empty.
pub fn remove_from<K, T, Q, S>(map: &mut HashMap<K, FewSet<T>, S>, key: &K, item: &Q)
where
    K: Eq + Hash,
    T: Eq + Hash + Borrow<Q>,
    Q: Eq + Hash + ?Sized,
    S: BuildHasher,
{
    if let Some(set) = map.get_mut(key) {
        set.remove(item);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// The items of a `FewSet`, in no particular order.
pub struct Iter<'a, T>(IterRepr<'a, T>);

enum IterRepr<'a, T> {
    Few(std::slice::Iter<'a, T>),
    Many(std::collections::hash_set::Iter<'a, T>),
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        match &mut self.0 {
            IterRepr::Few(items) => items.next(),
            IterRepr::Many(items) => items.next(),
        }
    }
}

impl<'a, T> IntoIterator for &'a FewSet<T> {
    type Item = &'a T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        Iter(match &self.0 {
            Repr::Few(items) => IterRepr::Few(items.iter()),
            Repr::Many(many) => IterRepr::Many(many.iter()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(set: &FewSet<String>) -> Vec<&str> {
        let mut items: Vec<&str> = set.into_iter().map(String::as_str).collect();
        items.sort();
        items
    }

    #[test]
    fn holds_each_item_once_until_removed() {
        let mut set = FewSet::default();
        for item in ["a", "b", "a"] {
            set.insert(item.to_owned());
        }
        assert_eq!(sorted(&set), ["a", "b"]);
        set.remove("a");
        assert_eq!(sorted(&set), ["b"]);
        set.remove("b");
        assert!(set.is_empty());
    }

    #[test]
    fn a_set_of_one_holds_room_for_one_and_a_large_one_is_hashed() {
        assert_eq!(std::mem::size_of::<FewSet<u64>>(), 16);
        assert_eq!(std::mem::size_of::<FewSet<std::sync::Arc<str>>>(), 16);
        let mut set = FewSet::default();
        set.insert(0u64);
        assert!(matches!(&set.0, Repr::Few(items) if items.len() == 1));
        for item in 0..10_000 {
            set.insert(item);
        }
        assert!(matches!(set.0, Repr::Many(_)), "past {FEW} items the set is hashed");
        assert_eq!((set.len(), set.into_iter().count()), (10_000, 10_000));
        for item in 0..10_000 - 1 {
            set.remove(&item);
        }
        assert!(matches!(&set.0, Repr::Few(items) if items.len() == 1), "a shrunk set holds a slice again");
        assert_eq!(set.into_iter().collect::<Vec<_>>(), [&9_999]);
    }

    #[test]
    fn an_emptied_set_leaves_its_map() {
        let mut map: HashMap<&str, FewSet<u32>> = HashMap::new();
        map.entry("a").or_default().insert(1);
        map.entry("a").or_default().insert(2);
        remove_from(&mut map, &"a", &1);
        assert_eq!(map["a"].len(), 1);
        remove_from(&mut map, &"a", &2);
        remove_from(&mut map, &"absent", &2);
        assert!(map.is_empty());
    }
}
