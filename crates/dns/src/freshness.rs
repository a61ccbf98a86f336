//! Which cached answers a change makes stale. Every answer is built from
//! a few parts of the index (its scopes: one service and its endpoints,
//! one pod IP, one reverse address, one namespace). A change bumps only
//! the scopes it touched, so under endpoint churn the answers for every
//! other name stay cached.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use rustc_hash::FxHasher;

/// A part of the index an answer was built from, as a hash. Two scopes
/// that collide only make each other's answers expire together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Scope(u64);

fn scope(tag: u8, parts: impl Hash) -> Scope {
    let mut hasher = FxHasher::default();
    (tag, parts).hash(&mut hasher);
    Scope(hasher.finish())
}

impl Scope {
    /// Everything named under `<service>.<ns>.svc`.
    pub fn service(ns: &str, name: &str) -> Scope {
        scope(1, (ns, name))
    }

    /// `<dashed ip>.<ns>.pod`.
    pub fn pod(ns: &str, dashed_ip: &str) -> Scope {
        scope(2, (ns, dashed_ip))
    }

    /// The reverse name of an address.
    pub fn address(ip: IpAddr) -> Scope {
        scope(3, ip)
    }

    /// `<ns>.svc` and `<ns>.pod`.
    pub fn namespace(ns: &str) -> Scope {
        scope(4, ns)
    }

    /// The zone apex (its SOA carries the serial of the last change).
    pub fn apex() -> Scope {
        scope(5, ())
    }
}

/// Slots of the stamp table, a power of two. A scope's stamp is kept in
/// the slot its hash picks: the table is allocated once and never grows
/// with the objects that ever changed (a map of scopes took 17 bytes per
/// scope, up to half a million), and never has to be reset. Two scopes in
/// one slot only make each other's answers expire together.
pub const SLOTS: usize = 1 << 18;

/// When each slot last changed. A cached answer is fresh while the epoch
/// and the stamps of all its scopes' slots are what they were when it was
/// built.
#[derive(Debug)]
pub struct Freshness {
    epoch: u64,
    /// Changes counted per slot; only counts that differ matter, so they
    /// may wrap (4 billion changes to one slot within one answer's life).
    stamps: Box<[u32]>,
}

impl Default for Freshness {
    fn default() -> Self {
        // 1 MiB, all of it in use once a few thousand scopes have changed.
        Self { epoch: 0, stamps: vec![0; SLOTS].into_boxed_slice() }
    }
}

/// An answer's scopes' slots with their stamps when it was built.
#[derive(Clone, Debug, Default)]
pub struct Stamp {
    epoch: u64,
    slots: Vec<(u32, u32)>,
}

impl Scope {
    /// Its slot: the hash's high bits after a multiply, which mixes the
    /// low bits that FxHash leaves weak.
    fn slot(self) -> usize {
        (self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
    }
}

impl Freshness {
    /// Every cached answer is stale (the index went from unsynced to
    /// synced).
    pub fn all_changed(&mut self) {
        self.epoch += 1;
    }

    pub fn changed(&mut self, scope: Scope) {
        let stamp = &mut self.stamps[scope.slot()];
        *stamp = stamp.wrapping_add(1);
    }

    /// The stamp of an answer built now from `scopes`.
    pub fn stamp(&self, scopes: &[Scope]) -> Stamp {
        let slots = scopes.iter().map(|s| s.slot()).map(|slot| (slot as u32, self.stamps[slot])).collect();
        Stamp { epoch: self.epoch, slots }
    }

    pub fn is_fresh(&self, stamp: &Stamp) -> bool {
        stamp.epoch == self.epoch && stamp.slots.iter().all(|&(slot, at)| self.stamps.get(slot as usize) == Some(&at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_stales_only_answers_built_from_its_scope() {
        let mut f = Freshness::default();
        let (a, b) = (Scope::service("ns", "a"), Scope::service("ns", "b"));
        let built_a = f.stamp(&[a]);
        let built_b = f.stamp(&[b]);
        let built_both = f.stamp(&[b, a]);
        f.changed(a);
        assert!(!f.is_fresh(&built_a));
        assert!(f.is_fresh(&built_b));
        assert!(!f.is_fresh(&built_both), "an answer that followed a chain through a is stale too");
        assert!(f.is_fresh(&f.stamp(&[a])));
    }

    #[test]
    fn all_changed_stales_everything() {
        let mut f = Freshness::default();
        let a = Scope::pod("ns", "1-2-3-4");
        let before = f.stamp(&[a]);
        f.changed(a);
        let after = f.stamp(&[a]);
        f.all_changed();
        assert!(!f.is_fresh(&before) && !f.is_fresh(&after));
        assert!(f.is_fresh(&f.stamp(&[a])));
    }

    #[test]
    fn the_stamp_table_never_grows_and_a_shared_slot_only_expires_early() {
        let mut f = Freshness::default();
        let names: Vec<String> = (0..4 * SLOTS).map(|i| i.to_string()).collect();
        let first = Scope::service("ns", &names[0]);
        let built = f.stamp(&[first]);
        // Many more scopes than slots: one shares the first's slot.
        let sharing = names[1..].iter().map(|n| Scope::service("ns", n)).find(|s| s.slot() == first.slot()).unwrap();
        for name in &names[1..] {
            f.changed(Scope::service("ns", name));
        }
        assert_eq!(f.stamps.len(), SLOTS);
        assert!(!f.is_fresh(&built), "a change in a shared slot stales the other scope's answers too");
        let rebuilt = f.stamp(&[first]);
        f.changed(sharing);
        assert!(!f.is_fresh(&rebuilt));
        // Scopes spread over the slots: four names a slot on average, not a few slots for all.
        let used: std::collections::HashSet<usize> = names.iter().map(|n| Scope::service("ns", n).slot()).collect();
        assert!(used.len() > SLOTS * 9 / 10, "{} of {SLOTS} slots used", used.len());
    }
}
