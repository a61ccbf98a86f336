//! Wharf's table operations as nf_tables netlink messages: the few
//! expressions its rules are made of, in the kernel's own terms
//! (`linux/netfilter/nf_tables.h`). Nothing is read from the kernel to
//! write a change, which is what makes a sync cost what it changes.

use std::net::{IpAddr, SocketAddr};

use wharf_api::ipfamily::IpFamily;

use crate::claims::FrontendKey;
use crate::model::Protocol;
use crate::netlink::Batch;
use crate::nftables::ops::{BaseChain, Op, TableOp};
use crate::nftables::rules::{Rule, AFFINITY_ENTRIES, MASQUERADE_BIT, TABLE};

const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

// Messages.
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

// Table, chain, rule, set and element attributes.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_TIMEOUT: u16 = 11;
const NFTA_SET_USERDATA: u16 = 13;
/// Set user data for `nft list` (libnftnl's TLV: type
/// NFTNL_UDATA_SET_KEYBYTEORDER, length 4, BYTEORDER_HOST_ENDIAN): numgen's
/// keys are host-order integers, printed wrong without it.
const KEY_IN_HOST_ORDER: [u8; 6] = {
    let order = 1u32.to_ne_bytes();
    [0, 4, order[0], order[1], order[2], order[3]]
};
const NFTA_SET_DESC_SIZE: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

/// Elements per set element message: an element of a verdict map takes at
/// most about 250 bytes (chain names are bounded at 200), so 200 of them
/// stay well inside one attribute's 65,535.
const ELEMENTS_PER_MESSAGE: usize = 200;
const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_TIMEOUT: u32 = 0x10;
const NFT_SET_EVAL: u32 = 0x20;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
/// nft's data type numbers, which `nft list` prints keys by; a
/// concatenation puts each 6 bits apart.
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;

const NF_ACCEPT: u32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;

// Registers: the verdict, then 4-byte data registers from NFT_REG32_00.
const REG_VERDICT: u32 = 0;
const REG32_00: u32 = 8;
const REG_1: u32 = 1;
const REG_2: u32 = 2;

// Expressions.
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFT_META_MARK: u32 = 3;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_LOOKUP_DREG: u16 = 3;
const NFTA_LOOKUP_SET_ID: u16 = 4;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFT_NG_RANDOM: u32 = 1;
const NFTA_DYNSET_SET_NAME: u16 = 1;
const NFTA_DYNSET_OP: u16 = 3;
const NFTA_DYNSET_SREG_KEY: u16 = 4;
const NFT_DYNSET_OP_UPDATE: u32 = 1;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFT_NAT_DNAT: u32 = 1;
const NFTA_MASQ_FLAGS: u16 = 1;
const NF_NAT_RANGE_PROTO_RANDOM_FULLY: u32 = 0x10;
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;
const NFT_REJECT_ICMP_UNREACH: u32 = 0;
const NFT_REJECT_TCP_RST: u32 = 1;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMPV6_PORT_UNREACH: u8 = 4;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_SADDR: u32 = 1;
const RTN_LOCAL: u32 = 2;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFT_CT_STATE: u32 = 0;
const CT_STATE_NEW: u32 = 8;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// What differs between the two tables: the family's number, where its
/// header keeps the addresses and how long they are, its address type.
#[derive(Clone, Copy)]
struct Family {
    proto: u8,
    saddr: u32,
    daddr: u32,
    len: u32,
    addr_type: u32,
    port_unreachable: u8,
}

const V4: Family =
    Family { proto: NFPROTO_IPV4, saddr: 12, daddr: 16, len: 4, addr_type: TYPE_IPADDR, port_unreachable: ICMP_PORT_UNREACH };
const V6: Family =
    Family { proto: NFPROTO_IPV6, saddr: 8, daddr: 24, len: 16, addr_type: TYPE_IP6ADDR, port_unreachable: ICMPV6_PORT_UNREACH };

fn family(f: IpFamily) -> Family {
    match f {
        IpFamily::V4 => V4,
        IpFamily::V6 => V6,
    }
}

impl Family {
    /// Registers an address fills (4 bytes each).
    fn address_registers(self) -> u32 {
        self.len / 4
    }

    /// A frontend key: address, protocol and port, each padded to its
    /// registers; the concatenation's type and length.
    fn key_type(self) -> u32 {
        (self.addr_type << 12) | (TYPE_INET_PROTOCOL << 6) | TYPE_INET_SERVICE
    }

    fn key_len(self) -> u32 {
        self.len + 8
    }
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn hook_number(hook: &str) -> u32 {
    match hook {
        "prerouting" => 0,
        "input" => 1,
        "forward" => 2,
        "output" => 3,
        _ => 4, // postrouting
    }
}

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

/// A frontend as a map key: address, protocol and port, each padded to
/// its 4-byte registers.
fn frontend_key((addr, protocol): &FrontendKey) -> Vec<u8> {
    let mut key = octets(addr.ip());
    key.extend_from_slice(&[protocol_number(*protocol), 0, 0, 0]);
    key.extend_from_slice(&addr.port().to_be_bytes());
    key.extend_from_slice(&[0, 0]);
    key
}

/// A batch being written for one family's table.
struct Messages<'a> {
    b: &'a mut Batch,
    f: Family,
}

impl Messages<'_> {
    /// Starts a message to the family's table.
    fn start(&mut self, kind: u16, flags: u16) {
        self.b.message(kind, flags, self.f.proto);
    }
}

impl std::ops::Deref for Messages<'_> {
    type Target = Batch;
    fn deref(&self) -> &Batch {
        self.b
    }
}

impl std::ops::DerefMut for Messages<'_> {
    fn deref_mut(&mut self) -> &mut Batch {
        self.b
    }
}

/// Writes `ops` into `batch` as one message each (a rule with an
/// anonymous map takes three); returns, per message, the index of its op.
pub fn ops(batch: &mut Batch, ops: &[TableOp]) -> Vec<usize> {
    let mut owners = Vec::with_capacity(ops.len());
    let mut set_ids = 0;
    for (index, op) in ops.iter().enumerate() {
        let before = batch.len();
        op_messages(&mut Messages { b: batch, f: family(op.family) }, &op.op, &mut set_ids);
        owners.extend(std::iter::repeat_n(index, batch.len() - before));
    }
    owners
}

/// `set_ids` numbers the sets a batch makes: the kernel wants an id on
/// every new set, and finds an anonymous one by it.
fn op_messages(b: &mut Messages, op: &Op, set_ids: &mut u32) {
    match op {
        Op::AddTable => table(b, NFT_MSG_NEWTABLE, NLM_F_CREATE),
        Op::DeleteTable => table(b, NFT_MSG_DELTABLE, 0),
        Op::AddChain { name, base } => add_chain(b, name, *base),
        Op::FlushChain(name) => {
            // A rule deletion naming only the chain deletes all its rules.
            b.start(NFT_MSG_DELRULE, 0);
            b.str(NFTA_RULE_TABLE, TABLE);
            b.str(NFTA_RULE_CHAIN, name);
            b.close_message();
        }
        Op::DeleteChain(name) => {
            b.start(NFT_MSG_DELCHAIN, 0);
            b.str(NFTA_CHAIN_TABLE, TABLE);
            b.str(NFTA_CHAIN_NAME, name);
            b.close_message();
        }
        Op::AddRule { chain, rule } => add_rule(b, chain, rule, set_ids),
        Op::AddMap(name) => {
            let (key_type, key_len) = (b.f.key_type(), b.f.key_len());
            set_header(b, name, NFT_SET_MAP, key_type, key_len, set_ids);
            b.u32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
            b.close_message();
        }
        Op::AddSet { name, timeout } => {
            let (addr_type, len) = (b.f.addr_type, b.f.len);
            set_header(b, name, NFT_SET_TIMEOUT | NFT_SET_EVAL, addr_type, len, set_ids);
            let desc = b.nest(NFTA_SET_DESC);
            b.u32(NFTA_SET_DESC_SIZE, AFFINITY_ENTRIES);
            b.end(desc);
            b.u64(NFTA_SET_TIMEOUT, timeout.as_millis().clamp(1000, u128::from(u64::MAX)) as u64);
            b.close_message();
        }
        Op::DeleteSet(name) => {
            b.start(NFT_MSG_DELSET, 0);
            b.str(NFTA_SET_TABLE, TABLE);
            b.str(NFTA_SET_NAME, name);
            b.close_message();
        }
        Op::AddElement { key, verdict } => {
            let key = frontend_key(key);
            elements(b, NFT_MSG_NEWSETELEM, verdict.map(), None, |b| element(b, &key, Some((NFT_GOTO, verdict.chain()))));
        }
        Op::DeleteElement { map, key } => {
            let key = frontend_key(key);
            elements(b, NFT_MSG_DELSETELEM, map, None, |b| element(b, &key, None));
        }
    }
}

fn table(b: &mut Messages, kind: u16, flags: u16) {
    b.start(kind, flags);
    b.str(NFTA_TABLE_NAME, TABLE);
    b.close_message();
}

fn add_chain(b: &mut Messages, name: &str, base: Option<BaseChain>) {
    b.start(NFT_MSG_NEWCHAIN, NLM_F_CREATE);
    b.str(NFTA_CHAIN_TABLE, TABLE);
    b.str(NFTA_CHAIN_NAME, name);
    if let Some(base) = base {
        let (kind, hook, priority) = base.hook();
        let nest = b.nest(NFTA_CHAIN_HOOK);
        b.u32(NFTA_HOOK_HOOKNUM, hook_number(hook));
        b.u32(NFTA_HOOK_PRIORITY, priority as u32);
        b.end(nest);
        b.u32(NFTA_CHAIN_POLICY, NF_ACCEPT);
        b.str(NFTA_CHAIN_TYPE, kind);
    }
    b.close_message();
}

/// Starts a set message up to its key and id (the caller adds the rest);
/// returns the id.
fn set_header(b: &mut Messages, name: &str, flags: u32, key_type: u32, key_len: u32, set_ids: &mut u32) -> u32 {
    *set_ids += 1;
    b.start(NFT_MSG_NEWSET, NLM_F_CREATE);
    b.str(NFTA_SET_TABLE, TABLE);
    b.str(NFTA_SET_NAME, name);
    b.u32(NFTA_SET_FLAGS, flags);
    b.u32(NFTA_SET_KEY_TYPE, key_type);
    b.u32(NFTA_SET_KEY_LEN, key_len);
    b.u32(NFTA_SET_ID, *set_ids);
    *set_ids
}

/// A set element message; `write` adds the elements.
fn elements(b: &mut Messages, kind: u16, set: &str, set_id: Option<u32>, write: impl FnOnce(&mut Batch)) {
    b.start(kind, if kind == NFT_MSG_NEWSETELEM { NLM_F_CREATE } else { 0 });
    b.str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
    b.str(NFTA_SET_ELEM_LIST_SET, set);
    if let Some(id) = set_id {
        b.u32(NFTA_SET_ELEM_LIST_SET_ID, id);
    }
    let list = b.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    write(b.b);
    b.end(list);
    b.close_message();
}

fn element(b: &mut Batch, key: &[u8], verdict: Option<(i32, &str)>) {
    let elem = b.nest(NFTA_LIST_ELEM);
    let k = b.nest(NFTA_SET_ELEM_KEY);
    b.bytes(NFTA_DATA_VALUE, key);
    b.end(k);
    if let Some((code, chain)) = verdict {
        let data = b.nest(NFTA_SET_ELEM_DATA);
        verdict_data(b, code, chain);
        b.end(data);
    }
    b.end(elem);
}

fn verdict_data(b: &mut Batch, code: i32, chain: &str) {
    let v = b.nest(NFTA_DATA_VERDICT);
    b.u32(NFTA_VERDICT_CODE, code as u32);
    b.str(NFTA_VERDICT_CHAIN, chain);
    b.end(v);
}

fn add_rule(b: &mut Messages, chain: &str, rule: &Rule, set_ids: &mut u32) {
    // `numgen ... vmap { ... }` looks up an anonymous map made in the
    // same batch, found by its id (the kernel names it).
    let anonymous = match rule {
        Rule::Spread(targets) => {
            let id = set_header(b, "__map%d", NFT_SET_ANONYMOUS | NFT_SET_CONSTANT | NFT_SET_MAP, TYPE_INTEGER, 4, set_ids);
            b.u32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT);
            b.bytes(NFTA_SET_USERDATA, &KEY_IN_HOST_ORDER);
            b.close_message();
            // In messages of a bounded number: an element list is one
            // attribute, whose length netlink keeps in 16 bits.
            for (chunk, group) in targets.chunks(ELEMENTS_PER_MESSAGE).enumerate() {
                elements(b, NFT_MSG_NEWSETELEM, "__map%d", Some(id), |b| {
                    for (i, target) in group.iter().enumerate() {
                        let index = (chunk * ELEMENTS_PER_MESSAGE + i) as u32;
                        element(b, &index.to_ne_bytes(), Some((NFT_GOTO, target)));
                    }
                });
            }
            Some(id)
        }
        _ => None,
    };
    b.start(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
    b.str(NFTA_RULE_TABLE, TABLE);
    b.str(NFTA_RULE_CHAIN, chain);
    let list = b.nest(NFTA_RULE_EXPRESSIONS);
    let f = b.f;
    expressions(&mut Exprs(b.b), f, rule, anonymous);
    b.end(list);
    b.close_message();
}

/// The expressions of a rule, written one after another.
struct Exprs<'a>(&'a mut Batch);

impl Exprs<'_> {
    fn expr(&mut self, name: &str, body: impl FnOnce(&mut Batch)) {
        let b = &mut *self.0;
        let elem = b.nest(NFTA_LIST_ELEM);
        b.str(NFTA_EXPR_NAME, name);
        let data = b.nest(NFTA_EXPR_DATA);
        body(b);
        b.end(data);
        b.end(elem);
    }

    fn payload(&mut self, base: u32, offset: u32, len: u32, dreg: u32) {
        self.expr("payload", |b| {
            b.u32(NFTA_PAYLOAD_DREG, dreg);
            b.u32(NFTA_PAYLOAD_BASE, base);
            b.u32(NFTA_PAYLOAD_OFFSET, offset);
            b.u32(NFTA_PAYLOAD_LEN, len);
        });
    }

    fn meta(&mut self, key: u32, dreg: u32) {
        self.expr("meta", |b| {
            b.u32(NFTA_META_DREG, dreg);
            b.u32(NFTA_META_KEY, key);
        });
    }

    fn cmp(&mut self, op: u32, sreg: u32, value: &[u8]) {
        self.expr("cmp", |b| {
            b.u32(NFTA_CMP_SREG, sreg);
            b.u32(NFTA_CMP_OP, op);
            let data = b.nest(NFTA_CMP_DATA);
            b.bytes(NFTA_DATA_VALUE, value);
            b.end(data);
        });
    }

    /// `reg = (reg & mask) ^ xor` on a 4-byte host-order value.
    fn bitwise(&mut self, reg: u32, mask: u32, xor: u32) {
        self.expr("bitwise", |b| {
            b.u32(NFTA_BITWISE_SREG, reg);
            b.u32(NFTA_BITWISE_DREG, reg);
            b.u32(NFTA_BITWISE_LEN, 4);
            for (kind, value) in [(NFTA_BITWISE_MASK, mask), (NFTA_BITWISE_XOR, xor)] {
                let nest = b.nest(kind);
                b.bytes(NFTA_DATA_VALUE, &value.to_ne_bytes());
                b.end(nest);
            }
        });
    }

    fn lookup(&mut self, set: &str, set_id: Option<u32>, sreg: u32, dreg: Option<u32>) {
        self.expr("lookup", |b| {
            b.str(NFTA_LOOKUP_SET, set);
            b.u32(NFTA_LOOKUP_SREG, sreg);
            if let Some(dreg) = dreg {
                b.u32(NFTA_LOOKUP_DREG, dreg);
            }
            if let Some(id) = set_id {
                b.u32(NFTA_LOOKUP_SET_ID, id);
            }
        });
    }

    fn verdict(&mut self, code: i32, chain: &str) {
        self.expr("immediate", |b| {
            b.u32(NFTA_IMMEDIATE_DREG, REG_VERDICT);
            let data = b.nest(NFTA_IMMEDIATE_DATA);
            verdict_data(b, code, chain);
            b.end(data);
        });
    }

    fn value(&mut self, dreg: u32, value: &[u8]) {
        self.expr("immediate", |b| {
            b.u32(NFTA_IMMEDIATE_DREG, dreg);
            let data = b.nest(NFTA_IMMEDIATE_DATA);
            b.bytes(NFTA_DATA_VALUE, value);
            b.end(data);
        });
    }

    /// `meta mark set meta mark | BIT`
    fn set_mark_bit(&mut self) {
        self.meta(NFT_META_MARK, REG_1);
        self.bitwise(REG_1, !MASQUERADE_BIT, MASQUERADE_BIT);
        self.expr("meta", |b| {
            b.u32(NFTA_META_KEY, NFT_META_MARK);
            b.u32(NFTA_META_SREG, REG_1);
        });
    }

    fn l4proto_is(&mut self, protocol: u8) {
        self.meta(NFT_META_L4PROTO, REG_1);
        self.cmp(NFT_CMP_EQ, REG_1, &[protocol]);
    }

    fn reject(&mut self, kind: u32, code: Option<u8>) {
        self.expr("reject", |b| {
            b.u32(NFTA_REJECT_TYPE, kind);
            if let Some(code) = code {
                b.bytes(NFTA_REJECT_ICMP_CODE, &[code]);
            }
        });
    }
}

fn expressions(e: &mut Exprs, f: Family, rule: &Rule, anonymous: Option<u32>) {
    match rule {
        Rule::Dispatch(map, _) => {
            // daddr . meta l4proto . th dport, in consecutive registers.
            let l4 = REG32_00 + f.address_registers();
            e.payload(NFT_PAYLOAD_NETWORK_HEADER, f.daddr, f.len, REG32_00);
            e.meta(NFT_META_L4PROTO, l4);
            e.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2, l4 + 1);
            e.lookup(map, None, REG32_00, Some(REG_VERDICT));
        }
        Rule::Jump(chain) => e.verdict(NFT_JUMP, chain),
        Rule::JumpIfNew(chain) => {
            e.expr("ct", |b| {
                b.u32(NFTA_CT_DREG, REG_1);
                b.u32(NFTA_CT_KEY, NFT_CT_STATE);
            });
            e.bitwise(REG_1, CT_STATE_NEW, 0);
            e.cmp(NFT_CMP_NEQ, REG_1, &0u32.to_ne_bytes());
            e.verdict(NFT_JUMP, chain);
        }
        Rule::Goto(chain) => e.verdict(NFT_GOTO, chain),
        Rule::MasqueradeMarked => {
            e.meta(NFT_META_MARK, REG_1);
            e.bitwise(REG_1, MASQUERADE_BIT, 0);
            e.cmp(NFT_CMP_EQ, REG_1, &MASQUERADE_BIT.to_ne_bytes());
            e.meta(NFT_META_MARK, REG_1);
            e.bitwise(REG_1, u32::MAX, MASQUERADE_BIT);
            e.expr("meta", |b| {
                b.u32(NFTA_META_KEY, NFT_META_MARK);
                b.u32(NFTA_META_SREG, REG_1);
            });
            e.expr("masq", |b| b.u32(NFTA_MASQ_FLAGS, NF_NAT_RANGE_PROTO_RANDOM_FULLY));
        }
        Rule::RejectTcp => {
            e.l4proto_is(IPPROTO_TCP);
            e.reject(NFT_REJECT_TCP_RST, None);
        }
        Rule::Reject => e.reject(NFT_REJECT_ICMP_UNREACH, Some(f.port_unreachable)),
        Rule::MarkRemote => {
            e.expr("fib", |b| {
                b.u32(NFTA_FIB_DREG, REG_1);
                b.u32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE);
                b.u32(NFTA_FIB_FLAGS, NFTA_FIB_F_SADDR);
            });
            e.cmp(NFT_CMP_NEQ, REG_1, &RTN_LOCAL.to_ne_bytes());
            e.set_mark_bit();
        }
        Rule::MarkHairpin(ip) => {
            e.payload(NFT_PAYLOAD_NETWORK_HEADER, f.saddr, f.len, REG_1);
            e.cmp(NFT_CMP_EQ, REG_1, &octets(*ip));
            e.set_mark_bit();
        }
        Rule::Sticky { set, chain, .. } => {
            e.payload(NFT_PAYLOAD_NETWORK_HEADER, f.saddr, f.len, REG_1);
            e.lookup(set, None, REG_1, None);
            e.verdict(NFT_GOTO, chain);
        }
        Rule::Remember(set, _) => {
            e.payload(NFT_PAYLOAD_NETWORK_HEADER, f.saddr, f.len, REG_1);
            e.expr("dynset", |b| {
                b.str(NFTA_DYNSET_SET_NAME, set);
                b.u32(NFTA_DYNSET_OP, NFT_DYNSET_OP_UPDATE);
                b.u32(NFTA_DYNSET_SREG_KEY, REG_1);
            });
        }
        Rule::Dnat(protocol, to) => dnat(e, f, *protocol, to),
        Rule::Spread(targets) => {
            e.expr("numgen", |b| {
                b.u32(NFTA_NG_DREG, REG_1);
                b.u32(NFTA_NG_MODULUS, targets.len() as u32);
                b.u32(NFTA_NG_TYPE, NFT_NG_RANDOM);
            });
            e.lookup("__map%d", anonymous, REG_1, Some(REG_VERDICT));
        }
    }
}

fn dnat(e: &mut Exprs, f: Family, protocol: Protocol, to: &SocketAddr) {
    e.l4proto_is(protocol_number(protocol));
    e.value(REG_1, &octets(to.ip()));
    e.value(REG_2, &to.port().to_be_bytes());
    e.expr("nat", |b| {
        b.u32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
        b.u32(NFTA_NAT_FAMILY, u32::from(f.proto));
        b.u32(NFTA_NAT_REG_ADDR_MIN, REG_1);
        b.u32(NFTA_NAT_REG_PROTO_MIN, REG_2);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::messages;

    #[test]
    fn a_frontend_key_is_padded_registers() {
        let key = frontend_key(&("127.96.0.20:80".parse().unwrap(), Protocol::Udp));
        assert_eq!(key, [127, 96, 0, 20, 17, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(key.len() as u32, V4.key_len());
        let key = frontend_key(&("[fd00::1]:80".parse().unwrap(), Protocol::Tcp));
        assert_eq!(&key[15..], [1, 6, 0, 0, 0, 0, 80, 0, 0]);
        assert_eq!(key.len() as u32, V6.key_len());
    }

    #[test]
    fn a_spread_over_many_endpoints_fits_netlink_in_several_element_messages() {
        let targets: Vec<String> = (0..1000).map(|i| format!("ep-{i:08x}-{}", "x".repeat(180))).collect();
        let ops = [Op::AddRule { chain: "svc".into(), rule: Rule::Spread(targets) }.on(IpFamily::V6)];
        let mut batch = Batch::default();
        let owners = super::ops(&mut batch, &ops);
        // The anonymous set, five element messages, the rule.
        assert_eq!(owners, [0; 7]);
        assert_eq!(messages(batch).len(), 9, "begin and end around them");
    }

    #[test]
    fn a_spread_rule_makes_its_anonymous_map_first_and_every_message_maps_to_its_op() {
        let ops = [
            Op::AddChain { name: "svc".into(), base: None },
            Op::AddRule { chain: "svc".into(), rule: Rule::Spread(vec!["ep-a".into(), "ep-b".into()]) },
            Op::FlushChain("svc".into()),
        ]
        .map(|op| op.on(IpFamily::V4));
        let mut batch = Batch::default();
        let owners = super::ops(&mut batch, &ops);
        assert_eq!(owners, [0, 1, 1, 1, 2]);
        let kinds: Vec<u16> = messages(batch).iter().map(|m| m.0 & 0xff).collect();
        // begin, chain, anonymous set, its elements, the rule, flush, end
        assert_eq!(kinds, [0x10, NFT_MSG_NEWCHAIN, NFT_MSG_NEWSET, NFT_MSG_NEWSETELEM, NFT_MSG_NEWRULE, NFT_MSG_DELRULE, 0x11]);
    }
}
