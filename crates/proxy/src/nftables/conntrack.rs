//! Forgetting flows to endpoints that left: their conntrack entries are
//! deleted over netlink (ctnetlink), so a UDP flow's next datagram is
//! balanced again and a TCP connection's next segment is reset. One dump
//! of the conntrack table serves every flow of a sync, then one delete
//! message per entry that matches, all in one send.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::claims::FrontendKey;
use crate::model::Protocol;
use crate::netlink::{Attributes, Batch, NetlinkError, Socket};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_DUMP: u16 = 0x300;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// One direction of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tuple {
    src: SocketAddr,
    dst: SocketAddr,
    protocol: u8,
}

/// A conntrack entry: its original direction (what a delete names), its
/// zone, and where replies come from.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    orig: Tuple,
    reply_src: SocketAddr,
    zone: Option<u16>,
}

fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

fn family(addr: &SocketAddr) -> u8 {
    if addr.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

/// Deletes the entries of flows that went to each frontend and were
/// DNATed to its endpoint; returns how many it deleted.
pub fn forget(socket: &mut Socket, flows: &[(FrontendKey, SocketAddr)]) -> Result<usize, NetlinkError> {
    let wanted: HashSet<(SocketAddr, u8, SocketAddr)> =
        flows.iter().map(|((frontend, protocol), endpoint)| (*frontend, protocol_number(*protocol), *endpoint)).collect();
    let families: HashSet<u8> = flows.iter().map(|((frontend, _), _)| family(frontend)).collect();
    let mut doomed = Vec::new();
    for family in families {
        let mut request = Batch::plain(NFNL_SUBSYS_CTNETLINK);
        request.message(IPCTNL_MSG_CT_GET, NLM_F_DUMP, family);
        request.close_message();
        socket.dump(request, |body| {
            if let Some(entry) = parse_entry(body).filter(|e| wanted.contains(&(e.orig.dst, e.orig.protocol, e.reply_src))) {
                doomed.push(entry);
            }
        })?;
    }
    if doomed.is_empty() {
        return Ok(0);
    }
    let mut deletes = Batch::plain(NFNL_SUBSYS_CTNETLINK);
    for entry in &doomed {
        write_delete(&mut deletes, entry);
    }
    // An entry may have ended on its own since the dump: not an error.
    let errors = socket.send_each(deletes)?;
    let failed: Vec<_> = errors.iter().filter(|e| e.raw_os_error() != Some(libc::ENOENT)).collect();
    if let Some(first) = failed.first() {
        tracing::warn!(error = %first, failed = failed.len(), "conntrack refused to delete flows to a removed endpoint");
    }
    Ok(doomed.len() - errors.len())
}

fn write_delete(b: &mut Batch, entry: &Entry) {
    b.message(IPCTNL_MSG_CT_DELETE, 0, family(&entry.orig.src));
    let tuple = b.nest(CTA_TUPLE_ORIG);
    let ip = b.nest(CTA_TUPLE_IP);
    match (entry.orig.src.ip(), entry.orig.dst.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            b.bytes(CTA_IP_V4_SRC, &src.octets());
            b.bytes(CTA_IP_V4_DST, &dst.octets());
        }
        (src, dst) => {
            b.bytes(CTA_IP_V6_SRC, &v6(src).octets());
            b.bytes(CTA_IP_V6_DST, &v6(dst).octets());
        }
    }
    b.end(ip);
    let proto = b.nest(CTA_TUPLE_PROTO);
    b.bytes(CTA_PROTO_NUM, &[entry.orig.protocol]);
    b.bytes(CTA_PROTO_SRC_PORT, &entry.orig.src.port().to_be_bytes());
    b.bytes(CTA_PROTO_DST_PORT, &entry.orig.dst.port().to_be_bytes());
    b.end(proto);
    b.end(tuple);
    if let Some(zone) = entry.zone {
        b.bytes(CTA_ZONE, &zone.to_be_bytes());
    }
    b.close_message();
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
    }
}

fn parse_entry(body: &[u8]) -> Option<Entry> {
    let (mut orig, mut reply, mut zone) = (None, None, None);
    for (kind, value) in Attributes(body) {
        match kind {
            CTA_TUPLE_ORIG => orig = parse_tuple(value),
            CTA_TUPLE_REPLY => reply = parse_tuple(value),
            CTA_ZONE => zone = Some(u16::from_be_bytes(value.try_into().ok()?)).filter(|z| *z != 0),
            _ => {}
        }
    }
    Some(Entry { orig: orig?, reply_src: reply?.src, zone })
}

fn parse_tuple(tuple: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut protocol, mut sport, mut dport) = (None, None, None, None, None);
    for (kind, value) in Attributes(tuple) {
        match kind {
            CTA_TUPLE_IP => {
                for (kind, value) in Attributes(value) {
                    let ip = match value.len() {
                        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?)),
                        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(value).ok()?)),
                        _ => return None,
                    };
                    match kind {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = Some(ip),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = Some(ip),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (kind, value) in Attributes(value) {
                    match kind {
                        CTA_PROTO_NUM => protocol = value.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = Some(u16::from_be_bytes(value.try_into().ok()?)),
                        CTA_PROTO_DST_PORT => dport = Some(u16::from_be_bytes(value.try_into().ok()?)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple { src: SocketAddr::new(src?, sport?), dst: SocketAddr::new(dst?, dport?), protocol: protocol? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::messages;

    fn entry(src: &str, dst: &str, reply_src: &str) -> Entry {
        let (src, dst) = (src.parse().unwrap(), dst.parse().unwrap());
        Entry { orig: Tuple { src, dst, protocol: IPPROTO_UDP }, reply_src: reply_src.parse().unwrap(), zone: Some(7) }
    }

    /// An entry as the kernel dumps it: both tuples (the reply one is the
    /// original turned around after DNAT).
    fn dumped(e: &Entry) -> Vec<u8> {
        let mut b = Batch::plain(NFNL_SUBSYS_CTNETLINK);
        write_delete(&mut b, e);
        let reply =
            Entry { orig: Tuple { src: e.reply_src, dst: e.orig.src, protocol: e.orig.protocol }, reply_src: e.orig.src, zone: None };
        let mut r = Batch::plain(NFNL_SUBSYS_CTNETLINK);
        write_delete(&mut r, &reply);
        let mut body = messages(b).remove(0).2;
        let mut reply_tuple = messages(r).remove(0).2;
        // The same nest, as the reply tuple.
        reply_tuple[2..4].copy_from_slice(&(CTA_TUPLE_REPLY | 0x8000).to_ne_bytes());
        body.extend(reply_tuple);
        body
    }

    #[test]
    fn a_dumped_entry_reads_back_with_its_zone_and_reply_source() {
        let e = entry("127.0.0.1:40000", "127.96.0.30:53", "127.0.0.2:5353");
        assert_eq!(parse_entry(&dumped(&e)), Some(e));
        let v6 = Entry { zone: None, ..entry("[fd00::1]:40000", "[fd00:96::30]:53", "[fd00::2]:5353") };
        assert_eq!(parse_entry(&dumped(&v6)), Some(v6));
    }

    #[test]
    fn cut_or_malformed_entries_are_skipped() {
        let whole = dumped(&entry("127.0.0.1:40000", "127.96.0.30:53", "127.0.0.2:5353"));
        for cut in 0..whole.len() {
            let _ = parse_entry(&whole[..cut]);
        }
        assert_eq!(parse_entry(&[]), None);
    }
}
