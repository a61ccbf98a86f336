//! IPv6 service ranges made local on `lo`, as 127/8 is for IPv4: a
//! `local` route (`ip -6 route add local RANGE dev lo`), so that
//! connections to an IPv6 cluster IP reach this node's proxy. Added over
//! rtnetlink where wharf may (CAP_NET_ADMIN), and removed at a clean
//! stop if wharf added it; where it may not, IPv6 frontends are reported
//! as not served.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::netlink::{Batch, NetlinkError, Socket};

const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const RT_TABLE_LOCAL: u8 = 255;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;

/// The ranges made local, and which of them wharf added (and removes).
#[derive(Debug, Default)]
pub struct LocalRanges {
    local: Vec<IpNet>,
    added: Vec<IpNet>,
}

impl LocalRanges {
    /// Makes each IPv6 range of `ranges` local on `lo`. A range whose
    /// route cannot be added is left out, and why is logged.
    pub fn make(ranges: impl IntoIterator<Item = IpNet>) -> LocalRanges {
        let mut made = LocalRanges::default();
        for range in ranges.into_iter().filter(|r| matches!(r, IpNet::V6(_))) {
            match change(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, range) {
                Ok(()) => {
                    tracing::info!(%range, "IPv6 service range made local on lo");
                    made.added.push(range);
                    made.local.push(range);
                }
                Err(NetlinkError::Refused { error, .. }) if error.raw_os_error() == Some(libc::EEXIST) => made.local.push(range),
                Err(e) => tracing::warn!(%range, error = %e,
                    "cannot make the IPv6 service range local on lo (needs CAP_NET_ADMIN): its cluster IPs are not served on this node"),
            }
        }
        made
    }

    /// The ranges made local.
    pub fn ranges(&self) -> Vec<IpNet> {
        self.local.clone()
    }

    /// Whether `ip` is in a range made local (a frontend there binds with
    /// IPV6_FREEBIND, since the address is on no interface).
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.local.iter().any(|r| r.contains(ip))
    }

    /// Removes the routes wharf added (also when dropped).
    pub fn remove(&mut self) {
        for range in self.added.drain(..) {
            if let Err(e) = change(RTM_DELROUTE, 0, range) {
                tracing::warn!(%range, error = %e, "cannot remove the local route of the IPv6 service range");
            }
        }
        self.local.clear();
    }
}

impl Drop for LocalRanges {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Adds or deletes the local route of `range` on `lo`.
fn change(kind: u16, flags: u16, range: IpNet) -> Result<(), NetlinkError> {
    let IpNet::V6(v6) = range else { return Ok(()) };
    // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if lo == 0 {
        return Err(NetlinkError::Io(io::Error::last_os_error()));
    }
    let rtmsg = [libc::AF_INET6 as u8, v6.prefix_len(), 0, 0, RT_TABLE_LOCAL, RTPROT_STATIC, RT_SCOPE_HOST, RTN_LOCAL, 0, 0, 0, 0];
    let mut message = Batch::route();
    message.route_message(kind, NLM_F_ACK | flags, &rtmsg);
    message.bytes(RTA_DST, &v6.network().octets());
    // Route attributes are in host byte order.
    message.bytes(RTA_OIF, &lo.to_ne_bytes());
    message.close_message();
    Socket::open_protocol(libc::NETLINK_ROUTE)?.send(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_range_is_made_local_then_removed_in_a_namespace_of_its_own() {
        let (during, after) = std::thread::spawn(|| {
            // SAFETY: unshare(2) changes only this thread's namespaces.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "tests run as root");
            assert!(Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip").success());
            let range: IpNet = "fd77:6861:7266:1::/112".parse().unwrap();
            let routes = || {
                let out = Command::new("ip").args(["-6", "route", "show", "table", "local"]).output().expect("ip");
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let made = LocalRanges::make([range, "127.0.0.0/8".parse().unwrap()]);
            assert!(made.contains(&"fd77:6861:7266:1::5".parse().unwrap()));
            assert!(!made.contains(&"fd77:6861:7266:2::5".parse().unwrap()));
            // A socket binds an address of the range and takes a connection.
            let addr: std::net::SocketAddr = "[fd77:6861:7266:1::5]:8080".parse().unwrap();
            let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
            socket.set_freebind_v6(true).unwrap();
            socket.bind(&addr.into()).unwrap();
            socket.listen(1).unwrap();
            std::net::TcpStream::connect(addr).expect("a connection to the local range");
            let during = routes();
            // Made twice: the second finds it there and will not remove it.
            drop(LocalRanges::make([range]));
            assert!(routes().contains("fd77:6861:7266:1::/112"), "removed by one that did not add it");
            drop(made);
            (during, routes())
        })
        .join()
        .unwrap();
        assert!(during.contains("local fd77:6861:7266:1::/112 dev lo"), "{during}");
        assert!(!after.contains("fd77:6861:7266:1::/112"), "{after}");
    }
}
