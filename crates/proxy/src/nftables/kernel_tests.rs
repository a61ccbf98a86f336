//! The netlink encoding against the kernel and `nft` itself: operations
//! go in over netlink, and `nft list` must read back the rules they mean.
//! Each test runs on a thread in a network namespace of its own (root).

use std::process::Command;
use std::time::Duration;

use wharf_api::ipfamily::IpFamily;

use super::ops::{Op, TableOp};
use super::rules::{self, Rule, Verdict};
use super::writer::{run_once, NftError};
use crate::model::Protocol;

/// Runs `body` on a thread in a new network namespace.
fn in_own_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare(2) changes only this thread's namespaces.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(ret, 0, "a network namespace of its own (tests run as root): {}", std::io::Error::last_os_error());
        body()
    });
    match thread.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn nft_list() -> String {
    nft_list_family("ip")
}

fn nft_list_family(family: &str) -> String {
    let out = Command::new("nft").args(["list", "table", family, "wharf"]).output().expect("nft (installed by the test command)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn add_rule(chain: &str, rule: Rule) -> Op {
    Op::AddRule { chain: chain.into(), rule }
}

const SVC: &str = "svc-1-default/web_http/int/tcp";

fn frontend(text: &str, protocol: Protocol) -> crate::claims::FrontendKey {
    (text.parse().expect("a socket address"), protocol)
}

fn v4(ops: impl IntoIterator<Item = Op>) -> Vec<TableOp> {
    ops.into_iter().map(|op| op.on(IpFamily::V4)).collect()
}

/// The base table of `family` and one service with every rule shape:
/// (an endpoint, a local endpoint, two frontends) of that family.
fn a_service_of(family: IpFamily, [endpoint, local, served, rejected]: [&str; 4]) -> Vec<TableOp> {
    let address = |text: &str| text.parse().expect("a socket address");
    let endpoint: std::net::SocketAddr = address(endpoint);
    let mut ops = vec![Op::AddTable, Op::DeleteTable];
    ops.extend(rules::base(family));
    ops.push(Op::AddSet { name: "aff-1".into(), timeout: Duration::from_secs(10800) });
    for chain in [SVC, "ep-a", "ep-b"] {
        ops.push(Op::AddChain { name: chain.into(), base: None });
    }
    ops.extend([
        add_rule(SVC, Rule::MarkRemote),
        add_rule(SVC, Rule::Sticky { set: "aff-1".into(), chain: "ep-a".into(), family }),
        add_rule(SVC, Rule::Spread(vec!["ep-a".into(), "ep-b".into()])),
        add_rule("ep-a", Rule::MarkHairpin(endpoint.ip())),
        add_rule("ep-a", Rule::Remember("aff-1".into(), family)),
        add_rule("ep-a", Rule::Dnat(Protocol::Tcp, endpoint)),
        add_rule("ep-b", Rule::Dnat(Protocol::Udp, address(local))),
        Op::AddElement { key: frontend(served, Protocol::Tcp), verdict: Verdict::Serve(SVC.into()) },
        Op::AddElement { key: frontend(rejected, Protocol::Udp), verdict: Verdict::Reject },
    ]);
    ops.into_iter().map(|op| op.on(family)).collect()
}

fn a_service() -> Vec<TableOp> {
    a_service_of(IpFamily::V4, ["198.18.1.2:8080", "127.0.0.2:53", "127.96.0.20:80", "127.96.0.21:53"])
}

/// Every rule of `ops` and every one of `texts` is in `listing`.
fn assert_listed(listing: &str, ops: &[TableOp], texts: &[&str]) {
    for op in ops {
        if let Op::AddRule { rule, .. } = &op.op {
            assert!(listing.contains(&rule.to_string()), "`{rule}` is not in\n{listing}");
        }
    }
    for text in texts {
        assert!(listing.contains(text), "`{text}` is not in\n{listing}");
    }
}

#[test]
fn every_rule_shape_reads_back_as_nft_writes_it() {
    let listing = in_own_netns(|| {
        run_once(&a_service()).expect("the transaction");
        nft_list()
    });
    assert_listed(
        &listing,
        &a_service(),
        &[
            "type ipv4_addr . inet_proto . inet_service : verdict",
            &format!("elements = {{ 127.96.0.20 . tcp . 80 : goto {SVC} }}"),
            "elements = { 127.96.0.21 . udp . 53 : goto reject-chain }",
            "flags dynamic,timeout",
            "timeout 3h",
            "size 65535",
            "type nat hook output priority -100; policy accept;",
            "type nat hook prerouting priority dstnat; policy accept;",
            "type nat hook postrouting priority srcnat; policy accept;",
            "type filter hook forward priority -110; policy accept;",
        ],
    );
}

#[test]
fn a_change_removes_exactly_what_it_names() {
    let listing = in_own_netns(|| {
        run_once(&a_service()).expect("the service");
        // What points at a chain or set goes before it does.
        run_once(&v4([
            Op::FlushChain(SVC.into()),
            Op::FlushChain("ep-a".into()),
            Op::DeleteChain("ep-b".into()),
            Op::DeleteSet("aff-1".into()),
            Op::DeleteElement { map: rules::NO_ENDPOINTS, key: frontend("127.96.0.21:53", Protocol::Udp) },
            add_rule(SVC, Rule::Goto("ep-a".into())),
        ]))
        .expect("the change");
        nft_list()
    });
    assert!(!listing.contains("ep-b") && !listing.contains("aff-1") && !listing.contains("127.96.0.21"), "{listing}");
    assert!(!listing.contains("198.18.1.2"), "ep-a was flushed:\n{listing}");
    assert!(listing.contains(&format!("127.96.0.20 . tcp . 80 : goto {SVC}")), "{listing}");
    assert!(listing.contains("goto ep-a\n"), "{listing}");
}

#[test]
fn a_refused_transaction_changes_nothing_and_names_the_operation() {
    let (error, listing) = in_own_netns(|| {
        run_once(&a_service()).expect("the service");
        let error =
            run_once(&v4([Op::AddChain { name: "new".into(), base: None }, Op::DeleteChain("missing".into()), Op::FlushChain(SVC.into())]))
                .expect_err("deleting a missing chain");
        (error, nft_list())
    });
    let NftError::Refused { op, .. } = &error else { panic!("refused: {error}") };
    assert_eq!(op, "delete chain ip wharf missing", "{error}");
    assert!(error.to_string().contains("No such file or directory"), "{error}");
    assert!(!listing.contains("chain new") && listing.contains("numgen random mod 2"), "{listing}");
}

#[test]
fn the_ipv6_table_reads_back_as_nft_writes_it() {
    let ops = || a_service_of(IpFamily::V6, ["[fd00:18::2]:8080", "[::1]:53", "[fd77::20]:80", "[fd77::21]:53"]);
    let (v6, v4) = in_own_netns(move || {
        run_once(&ops()).expect("the transaction");
        (nft_list_family("ip6"), Command::new("nft").args(["list", "table", "ip", "wharf"]).output().expect("nft").status.success())
    });
    assert!(!v4, "the IPv6 operations touched the IPv4 table");
    assert_listed(
        &v6,
        &ops(),
        &[
            "type ipv6_addr . inet_proto . inet_service : verdict",
            &format!("elements = {{ fd77::20 . tcp . 80 : goto {SVC} }}"),
            "elements = { fd77::21 . udp . 53 : goto reject-chain }",
            "type ipv6_addr",
            "ip6 daddr . meta l4proto . th dport vmap @service-ips",
        ],
    );
}
