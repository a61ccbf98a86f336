//! One copy of the short strings that many objects repeat (namespaces,
//! node names): at 100,000 pods in a few namespaces, every view of a pod
//! would otherwise hold its own copy of the same few words.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// The table is pruned of strings no one else holds when it reaches this
/// size, then again at twice what is still held: its size stays within
/// twice the strings in use (plus this floor), whatever names pass through.
const PRUNE_FLOOR: usize = 1024;

struct Table {
    strings: HashSet<Arc<str>>,
    prune_at: usize,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// The shared copy of `s`.
pub fn shared(s: &str) -> Arc<str> {
    let mut guard = TABLE.lock().unwrap_or_else(|p| p.into_inner());
    let table = guard.get_or_insert_with(|| Table { strings: HashSet::new(), prune_at: PRUNE_FLOOR });
    if let Some(held) = table.strings.get(s) {
        return held.clone();
    }
    if table.strings.len() >= table.prune_at {
        table.strings.retain(|held| Arc::strong_count(held) > 1);
        table.prune_at = (table.strings.len() * 2).max(PRUNE_FLOOR);
    }
    let held: Arc<str> = Arc::from(s);
    table.strings.insert(held.clone());
    held
}

#[cfg(test)]
fn table_len() -> usize {
    TABLE.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map_or(0, |t| t.strings.len())
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
        assert!(table_len() <= 2 * PRUNE_FLOOR, "table holds {}", table_len());
        assert!(Arc::ptr_eq(&kept, &shared("shared-str-test-kept")));
    }
}
