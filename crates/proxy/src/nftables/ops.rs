//! One change to one of wharf's tables (`ip wharf`, `ip6 wharf`): what a
//! transaction is made of. `encode` writes it for the kernel; `Display`
//! writes it as the `nft` command that would do the same, for logs and
//! tests.

use std::fmt;
use std::time::Duration;

use wharf_api::ipfamily::IpFamily;

use crate::claims::FrontendKey;
use crate::nftables::rules::{header, protocol_name, Rule, Verdict, AFFINITY_ENTRIES, TABLE};

/// The hooks wharf's base chains sit on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseChain {
    NatOutput,
    NatPrerouting,
    NatPostrouting,
    FilterInput,
    FilterForward,
    FilterOutput,
}

impl BaseChain {
    /// Chain type, hook and priority.
    pub fn hook(self) -> (&'static str, &'static str, i32) {
        match self {
            // DNAT at dstnat priority; the reject check before it (-110).
            BaseChain::NatOutput => ("nat", "output", -100),
            BaseChain::NatPrerouting => ("nat", "prerouting", -100),
            BaseChain::NatPostrouting => ("nat", "postrouting", 100),
            BaseChain::FilterInput => ("filter", "input", -110),
            BaseChain::FilterForward => ("filter", "forward", -110),
            BaseChain::FilterOutput => ("filter", "output", -110),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Creates the table if missing.
    AddTable,
    DeleteTable,
    /// Creates the chain if missing.
    AddChain {
        name: String,
        base: Option<BaseChain>,
    },
    /// Deletes every rule of the chain.
    FlushChain(String),
    DeleteChain(String),
    /// Appends a rule.
    AddRule {
        chain: String,
        rule: Rule,
    },
    /// A verdict map keyed by (address, protocol, port).
    AddMap(&'static str),
    /// A ClientIP affinity set: source addresses that expire.
    AddSet {
        name: String,
        timeout: Duration,
    },
    DeleteSet(String),
    AddElement {
        key: FrontendKey,
        verdict: Verdict,
    },
    DeleteElement {
        map: &'static str,
        key: FrontendKey,
    },
}

/// An operation on the table of one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableOp {
    pub family: IpFamily,
    pub op: Op,
}

impl Op {
    /// This operation on `family`'s table.
    pub fn on(self, family: IpFamily) -> TableOp {
        TableOp { family, op: self }
    }
}

/// A map key as nft writes it: `ip . proto . port`.
struct Key<'a>(&'a FrontendKey);

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (addr, protocol) = self.0;
        write!(f, "{} . {} . {}", addr.ip(), protocol_name(*protocol), addr.port())
    }
}

impl fmt::Display for TableOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = format!("{} {TABLE}", header(self.family));
        let key_type = match self.family {
            IpFamily::V4 => "ipv4_addr",
            IpFamily::V6 => "ipv6_addr",
        };
        match &self.op {
            Op::AddTable => write!(f, "add table {t}"),
            Op::DeleteTable => write!(f, "delete table {t}"),
            Op::AddChain { name, base: None } => write!(f, "add chain {t} {name}"),
            Op::AddChain { name, base: Some(base) } => {
                let (kind, hook, priority) = base.hook();
                write!(f, "add chain {t} {name} {{ type {kind} hook {hook} priority {priority} ; policy accept ; }}")
            }
            Op::FlushChain(name) => write!(f, "flush chain {t} {name}"),
            Op::DeleteChain(name) => write!(f, "delete chain {t} {name}"),
            Op::AddRule { chain, rule } => write!(f, "add rule {t} {chain} {rule}"),
            Op::AddMap(name) => write!(f, "add map {t} {name} {{ type {key_type} . inet_proto . inet_service : verdict ; }}"),
            Op::AddSet { name, timeout } => write!(
                f,
                "add set {t} {name} {{ type {key_type} ; flags dynamic,timeout ; size {AFFINITY_ENTRIES} ; timeout {}s ; }}",
                timeout.as_secs().max(1)
            ),
            Op::DeleteSet(name) => write!(f, "delete set {t} {name}"),
            Op::AddElement { key, verdict } => write!(f, "add element {t} {} {{ {} : goto {} }}", verdict.map(), Key(key), verdict.chain()),
            Op::DeleteElement { map, key } => write!(f, "delete element {t} {map} {{ {} }}", Key(key)),
        }
    }
}
