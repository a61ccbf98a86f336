//! Which cached answers a change makes stale. Every answer is built from
//! a few parts of the index (its scopes: one service and its endpoints,
//! one pod IP, one reverse address, one namespace). A change bumps only
//! the scopes it touched, so under endpoint churn the answers for every
//! other name stay cached.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use rustc_hash::{FxHashMap, FxHasher};

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

/// Scopes remembered before all are forgotten at once (and every cached
/// answer with them): deleted objects' scopes must not pile up forever.
pub const SCOPE_LIMIT: usize = 1 << 19;

/// When each scope last changed. A cached answer is fresh while the epoch
/// and the stamps of all its scopes are what they were when it was built.
#[derive(Debug, Default)]
pub struct Freshness {
    epoch: u64,
    clock: u64,
    stamps: FxHashMap<Scope, u64>,
}

/// An answer's scopes with their stamps when it was built.
#[derive(Clone, Debug, Default)]
pub struct Stamp {
    epoch: u64,
    scopes: Vec<(Scope, u64)>,
}

impl Freshness {
    /// Every cached answer is stale (the index went from unsynced to
    /// synced, or the scope table was reset).
    pub fn all_changed(&mut self) {
        self.epoch += 1;
        self.stamps.clear();
    }

    pub fn changed(&mut self, scope: Scope) {
        if self.stamps.len() >= SCOPE_LIMIT {
            self.all_changed();
        }
        self.clock += 1;
        self.stamps.insert(scope, self.clock);
    }

    fn stamp_of(&self, scope: Scope) -> u64 {
        self.stamps.get(&scope).copied().unwrap_or(0)
    }

    /// The stamp of an answer built now from `scopes`.
    pub fn stamp(&self, scopes: &[Scope]) -> Stamp {
        Stamp { epoch: self.epoch, scopes: scopes.iter().map(|s| (*s, self.stamp_of(*s))).collect() }
    }

    pub fn is_fresh(&self, stamp: &Stamp) -> bool {
        stamp.epoch == self.epoch && stamp.scopes.iter().all(|(s, at)| self.stamp_of(*s) == *at)
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
    fn forgetting_scopes_stales_everything() {
        let mut f = Freshness::default();
        let a = Scope::pod("ns", "1-2-3-4");
        let before = f.stamp(&[a]);
        f.changed(a);
        let after = f.stamp(&[a]);
        // A reset must not bring back the stamp an older answer was built at.
        f.all_changed();
        assert!(!f.is_fresh(&before) && !f.is_fresh(&after));
    }

    #[test]
    fn the_scope_table_stays_bounded() {
        let mut f = Freshness::default();
        for i in 0..SCOPE_LIMIT + 10 {
            f.changed(Scope::service("ns", &i.to_string()));
        }
        assert!(f.stamps.len() <= SCOPE_LIMIT);
    }
}
