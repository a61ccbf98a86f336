//! The kernel data plane: the proxy model as nftables rules (`rules`),
//! kept in the kernel by netlink transactions (`ops` → `encode` →
//! `netlink`, run by `writer`). A sync touches only the chains, sets and
//! map elements of the service that changed, in one atomic transaction;
//! one that fails is followed by a rewrite of the whole table from what
//! the proxy knows, so the kernel never stays out of step. Starting
//! replaces a table left by a crash; stopping deletes it.
//!
//! Why netlink written here and not the `nft` binary or a crate: `nft`
//! reads the whole table into its cache before any command, 33 ms at
//! 10,000 services, so a one-endpoint change cost what the table holds;
//! a netlink batch carries only the change. The Rust nf_tables crates do
//! not cover what these rules need (`numgen`, dynamic sets; rustables is
//! also GPL-3.0, nftnl needs the C libnftnl), and the rules are a dozen
//! fixed shapes, so `encode` writes those and nothing more.

mod conntrack;
mod encode;
#[cfg(test)]
mod kernel_tests;
pub mod ops;
pub mod rules;
pub mod writer;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wharf_api::ipfamily::IpFamily;
use wharf_kube::ObjectKey;

use crate::claims::{Applied, Claim, Claims, FrontendKey, Owner};
use crate::model::{Protocol, ServicePort};
use ops::{Op, TableOp};
use rules::{ServiceRules, Verdict};
pub use writer::NftError;
use writer::{run_once, Job, Writer};

fn family_of(key: &FrontendKey) -> IpFamily {
    IpFamily::of(&key.0.ip())
}

/// The operations that replace the tables of `families` with empty ones
/// (stale tables from a crash go with the same transaction).
fn fresh_tables(families: &[IpFamily]) -> Vec<TableOp> {
    let mut ops = Vec::new();
    for &family in families {
        ops.extend([Op::AddTable, Op::DeleteTable].into_iter().chain(rules::base(family)).map(|op| op.on(family)));
    }
    ops
}

pub struct Nftables {
    node: String,
    /// The families with a table: `ip wharf`, and `ip6 wharf` where the
    /// cluster has an IPv6 service range (no IPv6 netfilter is asked of a
    /// kernel otherwise).
    families: Vec<IpFamily>,
    claims: Claims,
    /// What each service's rules are in each family's table.
    services: HashMap<(ObjectKey, IpFamily), ServiceRules>,
    /// The map element of each frontend, and the service that set it.
    elements: HashMap<FrontendKey, (Verdict, ObjectKey)>,
    /// Operations of the changes since the last commit.
    pending: Vec<TableOp>,
    /// Flows to forget after the next commit: (frontend, endpoint).
    stale_flows: Vec<(FrontendKey, SocketAddr)>,
    /// TCP connections to an endpoint that left, closed at their deadline
    /// unless it came back (`--drain-timeout`; zero keeps them).
    draining: Vec<(Instant, FrontendKey, SocketAddr)>,
    drain: Duration,
    writer: Writer,
}

impl Nftables {
    /// Replaces wharf's tables with empty ones; fails where nftables
    /// cannot be used (no CAP_NET_ADMIN, no nf_tables).
    /// The primary family's table must work; another family's that does
    /// not (a kernel without IPv6 netfilter) is left out, and its
    /// frontends are reported as not served.
    pub fn start(node: String, wanted: Vec<IpFamily>, drain: Duration) -> Result<Self, NftError> {
        let mut families = Vec::new();
        for (i, family) in wanted.into_iter().enumerate() {
            match run_once(&fresh_tables(&[family])) {
                Ok(()) => families.push(family),
                Err(e) if i == 0 => return Err(e),
                Err(e) => tracing::warn!(?family, error = %e, "no nftables table for this family: its frontends are not served"),
            }
        }
        let writer = Writer::start().map_err(|e| NftError::Netlink(e.into()))?;
        Ok(Self {
            node,
            families,
            claims: Claims::default(),
            services: HashMap::new(),
            elements: HashMap::new(),
            pending: Vec::new(),
            stale_flows: Vec::new(),
            draining: Vec::new(),
            drain,
            writer,
        })
    }

    /// Deletes wharf's tables: nothing is forwarded by the kernel any more.
    pub fn stop(&mut self) {
        self.writer.finish();
        let deletes: Vec<TableOp> = self.families.iter().map(|f| Op::DeleteTable.on(*f)).collect();
        if let Err(e) = run_once(&deletes) {
            tracing::warn!(error = %e, "cannot delete the nftables tables");
        }
        self.claims.clear();
        self.services.clear();
        self.elements.clear();
    }

    /// Service ports with rules.
    pub fn service_ports(&self) -> usize {
        self.services.values().map(|s| s.chains.keys().filter(|c| c.starts_with("svc-")).count()).sum()
    }

    /// Frontends in the kernel's maps.
    pub fn frontends(&self) -> usize {
        self.elements.len()
    }

    /// Brings one service's rules to `ports` at the next `commit`.
    pub fn apply(&mut self, owner: Owner, ports: &[ServicePort]) -> Applied {
        let mut applied = Applied::default();
        let mut wanted = Vec::new();
        let mut granted = Vec::new();
        for port in ports {
            let mut served = Vec::new();
            for frontend in &port.frontends {
                match self.claims.claim(&owner, &port.name, frontend) {
                    Claim::Refused(conflict) => applied.conflicts.push(conflict),
                    Claim::Held | Claim::Granted { .. } if !self.families.contains(&IpFamily::of(&frontend.addr.ip())) => {
                        let why = "no nftables table of this family: the cluster has no service range of it";
                        applied.bind_failures.push(((frontend.addr, frontend.protocol), why.into()));
                        wanted.push((frontend.addr, frontend.protocol));
                    }
                    Claim::Held | Claim::Granted { .. } => {
                        served.push(frontend);
                        wanted.push((frontend.addr, frontend.protocol));
                    }
                }
            }
            granted.push((port, served));
        }
        let released = self.claims.settle(&owner.service, wanted, &mut applied);
        for family in self.families.clone() {
            let new = rules::render(granted.iter().map(|(port, served)| (*port, served.clone())), &self.node, family);
            self.apply_family(&owner.service, family, new, &released);
        }
        applied
    }

    /// Brings one service's rules in one family's table to `new`.
    fn apply_family(&mut self, service: &ObjectKey, family: IpFamily, new: ServiceRules, released: &[FrontendKey]) {
        let released: Vec<FrontendKey> = released.iter().filter(|k| family_of(k) == family).copied().collect();
        let old = self.services.remove(&(service.clone(), family)).unwrap_or_default();
        let commands = self.transaction(service, &old, &new, &released);
        self.pending.extend(commands.into_iter().map(|op| op.on(family)));
        for (frontend, before) in &old.targets {
            let now = new.targets.get(frontend);
            for gone in before.iter().filter(|e| now.is_none_or(|n| !n.contains(e))) {
                match frontend.1 {
                    Protocol::Udp => self.stale_flows.push((*frontend, *gone)),
                    Protocol::Tcp if !self.drain.is_zero() => self.draining.push((Instant::now() + self.drain, *frontend, *gone)),
                    Protocol::Tcp => {}
                }
            }
        }
        self.record(service, &old, &new, &released);
        if !new.chains.is_empty() || !new.elements.is_empty() {
            self.services.insert((service.clone(), family), new);
        }
    }

    /// Hands every change since the last commit to the writer as one
    /// job (a burst of changes, the first full list included, is one
    /// transaction, more if they queue behind a running one); after a failed
    /// transaction, a rewrite of the whole table instead.
    pub fn commit(&mut self) {
        if self.writer.take_failure() {
            self.pending.clear();
            self.rewrite();
            return;
        }
        let ops = std::mem::take(&mut self.pending);
        let forget = std::mem::take(&mut self.stale_flows);
        if !ops.is_empty() || !forget.is_empty() {
            self.writer.send(Job { ops, replaces_all: false, forget });
        }
    }

    /// Closes the TCP connections whose drain ended, to endpoints that did
    /// not come back.
    pub fn expire_drains(&mut self) {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.draining).into_iter().partition(|(at, _, _)| *at <= now);
        self.draining = waiting;
        let forget: Vec<_> = due.into_iter().filter(|(_, f, e)| !self.sends_to(f, *e)).map(|(_, f, e)| (f, e)).collect();
        if !forget.is_empty() {
            self.writer.send(Job { ops: Vec::new(), replaces_all: false, forget });
        }
        // A failed transaction is retried here too, when no change comes.
        self.commit();
    }

    /// Whether `frontend` balances over `endpoint` now.
    fn sends_to(&self, frontend: &FrontendKey, endpoint: SocketAddr) -> bool {
        let owner = self.elements.get(frontend).map(|(_, owner)| (owner.clone(), family_of(frontend)));
        let targets = owner.and_then(|o| self.services.get(&o)).and_then(|s| s.targets.get(frontend));
        targets.is_some_and(|t| t.contains(&endpoint))
    }

    /// The operations that take the kernel from `old` to `new` for
    /// `service`: chains flushed before anything they point to goes.
    fn transaction(&self, service: &ObjectKey, old: &ServiceRules, new: &ServiceRules, released: &[FrontendKey]) -> Vec<Op> {
        let mut ops = Vec::new();
        let chains: BTreeSet<&String> = old.chains.keys().chain(new.chains.keys()).collect();
        let changed_chains: Vec<&String> = chains.into_iter().filter(|c| old.chains.get(*c) != new.chains.get(*c)).collect();
        for chain in &changed_chains {
            ops.push(Op::AddChain { name: (*chain).clone(), base: None });
            ops.push(Op::FlushChain((*chain).clone()));
        }
        let mut additions = Vec::new();
        let keys: BTreeSet<&FrontendKey> = old.elements.keys().chain(new.elements.keys()).chain(released).collect();
        for key in keys {
            let current = self.elements.get(key);
            let desired = new.elements.get(key);
            if current.map(|(v, _)| v) == desired {
                continue;
            }
            if let Some((verdict, setter)) = current {
                // Another service's element stays unless this one replaces it.
                if setter == service || desired.is_some() {
                    ops.push(Op::DeleteElement { map: verdict.map(), key: *key });
                }
            }
            if let Some(verdict) = desired {
                additions.push(Op::AddElement { key: *key, verdict: verdict.clone() });
            }
        }
        for chain in old.chains.keys().filter(|c| !new.chains.contains_key(*c)) {
            ops.push(Op::DeleteChain(chain.clone()));
        }
        for set in old.sets.keys().filter(|s| !new.sets.contains_key(*s)) {
            ops.push(Op::DeleteSet(set.clone()));
        }
        for (set, timeout) in new.sets.iter().filter(|(s, _)| !old.sets.contains_key(*s)) {
            ops.push(Op::AddSet { name: set.clone(), timeout: *timeout });
        }
        for chain in changed_chains.into_iter().filter(|c| new.chains.contains_key(*c)) {
            ops.extend(new.chains[chain].iter().map(|rule| Op::AddRule { chain: chain.clone(), rule: rule.clone() }));
        }
        ops.extend(additions);
        ops
    }

    /// Remembers which map elements `service` now sets in one family's
    /// table: what it set before (`old`) or released, and no longer sets,
    /// goes. Only those keys are looked at, not every element.
    fn record(&mut self, service: &ObjectKey, old: &ServiceRules, new: &ServiceRules, released: &[FrontendKey]) {
        for key in old.elements.keys().chain(released) {
            let gone = !new.elements.contains_key(key) || released.contains(key);
            if gone && self.elements.get(key).is_some_and(|(_, setter)| setter == service) {
                self.elements.remove(key);
            }
        }
        for (key, verdict) in &new.elements {
            self.elements.insert(*key, (verdict.clone(), service.clone()));
        }
    }

    /// Replaces the table with everything the proxy knows, in one
    /// transaction; if even that fails, the next commit or tick tries
    /// again.
    fn rewrite(&mut self) {
        let mut ops = fresh_tables(&self.families);
        for ((_, family), rules) in &self.services {
            let on = |op: Op| op.on(*family);
            ops.extend(rules.sets.iter().map(|(set, timeout)| on(Op::AddSet { name: set.clone(), timeout: *timeout })));
            ops.extend(rules.chains.keys().map(|chain| on(Op::AddChain { name: chain.clone(), base: None })));
        }
        for ((_, family), rules) in &self.services {
            for (chain, body) in &rules.chains {
                ops.extend(body.iter().map(|rule| Op::AddRule { chain: chain.clone(), rule: rule.clone() }.on(*family)));
            }
        }
        for (key, (verdict, _)) in &self.elements {
            ops.push(Op::AddElement { key: *key, verdict: verdict.clone() }.on(family_of(key)));
        }
        let forget = std::mem::take(&mut self.stale_flows);
        self.writer.send(Job { ops, replaces_all: true, forget });
    }
}
