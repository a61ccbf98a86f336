//! A set that nearly always holds one item or a handful (the services
//! behind a cluster IP, the slices of a service, in the DNS index and the
//! proxy model), kept in a vector: one
//! small allocation, where a hash set's smallest table is about 150 bytes.
//! Lookups are linear, which at these sizes is faster than hashing.

use std::borrow::Borrow;

#[derive(Debug)]
pub struct FewSet<T>(Vec<T>);

impl<T> Default for FewSet<T> {
    fn default() -> Self {
        FewSet(Vec::new())
    }
}

impl<T: PartialEq> FewSet<T> {
    pub fn insert(&mut self, item: T) {
        if !self.0.contains(&item) {
            self.0.push(item);
        }
    }

    pub fn remove<Q: PartialEq + ?Sized>(&mut self, item: &Q)
    where
        T: Borrow<Q>,
    {
        self.0.retain(|held| held.borrow() != item);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a, T> IntoIterator for &'a FewSet<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_each_item_once_until_removed() {
        let mut set = FewSet::default();
        for item in ["a", "b", "a"] {
            set.insert(item.to_owned());
        }
        assert_eq!(set.into_iter().collect::<Vec<_>>(), ["a", "b"]);
        set.remove("a");
        assert_eq!(set.into_iter().collect::<Vec<_>>(), ["b"]);
        set.remove("b");
        assert!(set.is_empty());
    }
}
