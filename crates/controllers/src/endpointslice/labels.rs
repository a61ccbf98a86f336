//! Labels or a selector as the controller's views keep them: all pairs in
//! one allocation, shared by the objects that have the same (a
//! Deployment's pods). As boxed pairs they were one allocation for the
//! list and two per pair, for every pod.

use std::collections::BTreeMap;
use std::sync::Arc;

use wharf_kube::shared_str::Interner;

/// Pairs sorted by key, each written as its key's and its value's length
/// (u32, little endian), then the key and the value. A thin pointer, 8
/// bytes in every pod's view: the box behind it is one per distinct set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Labels(Arc<Box<[u8]>>);

static LABEL_SETS: Interner<Box<[u8]>> = Interner::new();

impl Labels {
    /// From pairs in key order, as a `BTreeMap` gives them.
    pub fn from_sorted<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut bytes = Vec::new();
        for (key, value) in pairs {
            // Longer than 4 GiB cannot arrive (bodies are bounded far lower).
            let (Ok(key_len), Ok(value_len)) = (u32::try_from(key.len()), u32::try_from(value.len())) else { continue };
            bytes.extend_from_slice(&key_len.to_le_bytes());
            bytes.extend_from_slice(&value_len.to_le_bytes());
            bytes.extend_from_slice(key.as_bytes());
            bytes.extend_from_slice(value.as_bytes());
        }
        Labels(LABEL_SETS.share(&bytes.into_boxed_slice(), |bytes| Arc::new(Box::clone(bytes))))
    }

    /// An object's labels or a selector, as decoded.
    pub fn of(map: Option<&BTreeMap<String, String>>) -> Self {
        Self::from_sorted(map.into_iter().flatten().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    pub fn iter(&self) -> Iter<'_> {
        Iter { rest: &self.0 }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

pub struct Iter<'a> {
    rest: &'a [u8],
}

/// A length, then that many bytes as text.
fn take_str(bytes: &[u8], len: u32) -> Option<(&str, &[u8])> {
    let (text, rest) = bytes.split_at_checked(usize::try_from(len).ok()?)?;
    Some((std::str::from_utf8(text).ok()?, rest))
}

fn take_len(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_le_bytes(*len), rest))
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let (key_len, rest) = take_len(self.rest)?;
        let (value_len, rest) = take_len(rest)?;
        let (key, rest) = take_str(rest, key_len)?;
        let (value, rest) = take_str(rest, value_len)?;
        self.rest = rest;
        Some((key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_read_back_in_order() {
        let written = [("app", "web"), ("", ""), ("example.com/tier", "front-é")];
        let labels = Labels::from_sorted(written);
        assert_eq!(labels.iter().collect::<Vec<_>>(), written);
        assert_eq!(labels.get("example.com/tier"), Some("front-é"));
        assert_eq!(labels.get(""), Some(""));
        assert_eq!(labels.get("ap"), None);
        assert!(Labels::from_sorted([]).is_empty() && !labels.is_empty());
        assert_ne!(labels, Labels::from_sorted([("app", "web")]));
    }

    #[test]
    fn equal_labels_share_one_copy() {
        let (a, b) = (Labels::from_sorted([("app", "shared-labels-test")]), Labels::from_sorted([("app", "shared-labels-test")]));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert!(!Arc::ptr_eq(&a.0, &Labels::from_sorted([("app", "other-labels-test")]).0));
        assert_eq!(std::mem::size_of::<Labels>(), 8, "one pointer in each pod's view");
    }
}
