//! A set that nearly always holds one item or a handful (the services
//! behind a cluster IP, the slices of a service, the services of a
//! selector term) but may hold many (the pods of a label). Up to `FEW`
//! items it is a vector at its exact length: one small allocation, where a
//! hash set's smallest table is about 150 bytes, and a linear lookup that
//! at these sizes beats hashing. Past `FEW` it becomes a hash set, so a
//! large set (100,000 pods under one label, or a hostile service with
//! thousands of slices) never makes an insert or a removal linear.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::Hash;

/// Items kept in a vector; one more and the set is hashed.
const FEW: usize = 8;

#[derive(Debug)]
pub enum FewSet<T> {
    Few(Vec<T>),
    /// Boxed: an empty or small set stays the size of a vector.
    Many(Box<HashSet<T>>),
}

impl<T> Default for FewSet<T> {
    fn default() -> Self {
        FewSet::Few(Vec::new())
    }
}

impl<T: Eq + Hash> FewSet<T> {
    pub fn insert(&mut self, item: T) {
        match self {
            FewSet::Few(items) if items.contains(&item) => {}
            FewSet::Few(items) if items.len() < FEW => {
                // A vector's first growth makes room for four; most sets keep one.
                items.reserve_exact(1);
                items.push(item);
            }
            FewSet::Few(items) => {
                let mut many: HashSet<T> = std::mem::take(items).into_iter().collect();
                many.insert(item);
                *self = FewSet::Many(Box::new(many));
            }
            FewSet::Many(many) => {
                many.insert(item);
            }
        }
    }

    pub fn remove<Q: Eq + Hash + ?Sized>(&mut self, item: &Q)
    where
        T: Borrow<Q>,
    {
        match self {
            FewSet::Few(items) => items.retain(|held| held.borrow() != item),
            FewSet::Many(many) => {
                many.remove(item);
                if many.is_empty() {
                    *self = FewSet::default();
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            FewSet::Few(items) => items.len(),
            FewSet::Many(many) => many.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The items of a `FewSet`, in no particular order.
pub enum Iter<'a, T> {
    Few(std::slice::Iter<'a, T>),
    Many(std::collections::hash_set::Iter<'a, T>),
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        match self {
            Iter::Few(items) => items.next(),
            Iter::Many(items) => items.next(),
        }
    }
}

impl<'a, T> IntoIterator for &'a FewSet<T> {
    type Item = &'a T;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        match self {
            FewSet::Few(items) => Iter::Few(items.iter()),
            FewSet::Many(many) => Iter::Many(many.iter()),
        }
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
        assert_eq!(std::mem::size_of::<FewSet<u64>>(), std::mem::size_of::<Vec<u64>>());
        let mut set = FewSet::default();
        set.insert(0u64);
        assert!(matches!(&set, FewSet::Few(items) if items.capacity() == 1));
        for item in 0..10_000 {
            set.insert(item);
        }
        assert!(matches!(set, FewSet::Many(_)), "past {FEW} items the set is hashed");
        assert_eq!((set.len(), set.into_iter().count()), (10_000, 10_000));
        for item in 0..10_000 {
            set.remove(&item);
        }
        assert!(matches!(&set, FewSet::Few(items) if items.is_empty()), "an emptied set holds nothing");
    }
}
