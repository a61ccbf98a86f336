//! Batched UDP I/O: `recvmmsg` and `sendmmsg` move up to `BATCH`
//! datagrams per system call, which is most of what a UDP DNS server
//! spends its time on. The only unsafe code of the DNS server is here:
//! the kernel reads and writes the header arrays this struct owns.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

pub const BATCH: usize = 32;
/// Queries larger than this are not DNS over UDP as clients send it.
pub const RECV_SIZE: usize = 4096;

pub struct Batch {
    buffers: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    received: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            buffers: vec![0; BATCH * RECV_SIZE],
            // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
            addrs: vec![unsafe { zeroed() }; BATCH],
            addr_lens: vec![0; BATCH],
            lens: vec![0; BATCH],
            truncated: vec![false; BATCH],
            received: 0,
        }
    }
}

impl Batch {
    /// Blocks until at least one datagram arrives, then takes what is
    /// queued, up to `BATCH`. Returns how many.
    pub fn receive(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        let fd: RawFd = socket.as_raw_fd();
        let mut iovecs: Vec<libc::iovec> =
            self.buffers.chunks_mut(RECV_SIZE).map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: RECV_SIZE }).collect();
        // SAFETY: mmsghdr is plain old data; all-zero is valid.
        let mut headers: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; BATCH];
        for (i, h) in headers.iter_mut().enumerate() {
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points into buffers owned by `self` or this
        // frame (`iovecs`), which outlive the call; lengths match them.
        let n = unsafe { libc::recvmmsg(fd, headers.as_mut_ptr(), BATCH as libc::c_uint, libc::MSG_WAITFORONE, std::ptr::null_mut()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in headers.iter().take(n).enumerate() {
            self.lens[i] = h.msg_len as usize;
            self.addr_lens[i] = h.msg_hdr.msg_namelen;
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        self.received = n;
        Ok(n)
    }

    /// The `i`th received datagram; None if it did not fit the buffer.
    pub fn packet(&self, i: usize) -> Option<&[u8]> {
        (!self.truncated[i]).then(|| &self.buffers[i * RECV_SIZE..i * RECV_SIZE + self.lens[i]])
    }

    /// The sender of the `i`th datagram.
    pub fn peer(&self, i: usize) -> Option<SocketAddr> {
        let storage = &self.addrs[i];
        match i32::from(storage.ss_family) {
            libc::AF_INET if self.addr_lens[i] as usize >= size_of::<libc::sockaddr_in>() => {
                // SAFETY: the kernel wrote a sockaddr_in (family and length checked).
                let sin: &libc::sockaddr_in = unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
            }
            libc::AF_INET6 if self.addr_lens[i] as usize >= size_of::<libc::sockaddr_in6>() => {
                // SAFETY: the kernel wrote a sockaddr_in6 (family and length checked).
                let sin6: &libc::sockaddr_in6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
                let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), sin6.sin6_flowinfo, sin6.sin6_scope_id)))
            }
            _ => None,
        }
    }

    /// Sends `replies` (slot of the query it answers, bytes) back to the
    /// senders of those slots.
    pub fn send(&mut self, socket: &impl AsRawFd, replies: &[(usize, &[u8])]) -> io::Result<()> {
        let fd = socket.as_raw_fd();
        let mut iovecs: Vec<libc::iovec> =
            replies.iter().map(|(_, r)| libc::iovec { iov_base: r.as_ptr() as *mut libc::c_void, iov_len: r.len() }).collect();
        // SAFETY: mmsghdr is plain old data; all-zero is valid.
        let mut headers: Vec<libc::mmsghdr> = vec![unsafe { zeroed() }; replies.len()];
        for (j, ((slot, _), h)) in replies.iter().zip(headers.iter_mut()).enumerate() {
            h.msg_hdr.msg_name = (&mut self.addrs[*slot] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.addr_lens[*slot];
            h.msg_hdr.msg_iov = &mut iovecs[j];
            h.msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0;
        while sent < headers.len() {
            // SAFETY: headers point at `self.addrs`, `iovecs` and the reply
            // slices, all alive for the call; the count stays in bounds.
            let n = unsafe { libc::sendmmsg(fd, headers[sent..].as_mut_ptr(), (headers.len() - sent) as libc::c_uint, 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // A datagram that cannot go (peer gone) is skipped, not fatal.
                sent += 1;
                continue;
            }
            sent += n as usize;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_the_kernel() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            client.send_to(&[i; 3], server.local_addr().unwrap()).unwrap();
        }
        let mut batch = Batch::default();
        let mut got = 0;
        while got < 5 {
            let n = batch.receive(&server).unwrap();
            let replies: Vec<(usize, Vec<u8>)> = (0..n).map(|i| (i, batch.packet(i).unwrap().iter().map(|b| b + 100).collect())).collect();
            for i in 0..n {
                assert_eq!(batch.peer(i), Some(client.local_addr().unwrap()));
            }
            let refs: Vec<(usize, &[u8])> = replies.iter().map(|(i, r)| (*i, r.as_slice())).collect();
            batch.send(&server, &refs).unwrap();
            got += n;
        }
        let mut buf = [0u8; 16];
        for i in 0..5u8 {
            let (n, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[i + 100; 3]);
        }
    }
}
