//! Netlink for the proxy's kernel work: the message and attribute framing,
//! and one send with its answers read back. nf_tables batches and
//! conntrack on `NETLINK_NETFILTER` (`nftables`), routes on
//! `NETLINK_ROUTE` (`localroute`). Knows nothing of rules or routes.
//!
//! The kernel runs a batch inside the `sendmsg` call that carries it, so
//! every answer is queued on the socket when the call returns; it answers
//! only failures and the one message that asks for an acknowledgement
//! (the last), so a batch of any size costs one read on success.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_F_NET_BYTEORDER: u16 = 0x4000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
/// Header of a netlink message, then of an nfnetlink one.
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
/// Where answers are read into: a dump's part is at most 32 KiB.
const ANSWER_BUFFER: usize = 64 * 1024;
const READ_TIMEOUT_SECS: libc::time_t = 5;

/// Why a batch did not go in.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused message `index` of the batch (0 = the batch
    /// itself, e.g. its commit).
    #[error("{error}{}", text.as_deref().map(|t| format!(" ({t})")).unwrap_or_default())]
    Refused { index: usize, error: io::Error, text: Option<String> },
    #[error("the kernel did not acknowledge the batch")]
    Unanswered,
    /// An attribute longer than netlink's 16-bit length: not sent.
    #[error("a netlink attribute of {0} bytes is over the 65,535 netlink allows")]
    Oversized(usize),
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The netfilter message header: family, NFNETLINK_V0, resource id.
fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let id = res_id.to_be_bytes();
    [family, 0, id[0], id[1]]
}

/// Netlink messages being written: messages hold attributes, attributes
/// may nest. An nf_tables batch (one transaction), plain messages to
/// another netfilter subsystem (conntrack), or route messages.
pub struct Batch {
    buf: Vec<u8>,
    /// Start of the message being written.
    message: usize,
    /// Messages so far (after the batch begin).
    count: usize,
    /// The netfilter subsystem, whose number is the high byte of each
    /// message type; none for route messages.
    subsystem: Option<u16>,
    /// Framed by batch begin and end.
    transaction: bool,
    /// The longest attribute that did not fit its length field, if any:
    /// such a batch is refused before it is sent.
    oversized: Option<usize>,
}

impl Default for Batch {
    /// An nf_tables transaction.
    fn default() -> Self {
        let mut batch = Batch {
            buf: Vec::with_capacity(4096),
            message: 0,
            count: 0,
            subsystem: Some(NFNL_SUBSYS_NFTABLES),
            transaction: true,
            oversized: None,
        };
        batch.header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, &nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES));
        batch.close_message();
        batch
    }
}

impl Batch {
    /// Messages to a netfilter `subsystem`, each on its own.
    pub fn plain(subsystem: u16) -> Self {
        Batch { buf: Vec::with_capacity(4096), message: 0, count: 0, subsystem: Some(subsystem), transaction: false, oversized: None }
    }

    /// Route messages (`RTM_*`), each on its own.
    pub fn route() -> Self {
        Batch { buf: Vec::with_capacity(256), message: 0, count: 0, subsystem: None, transaction: false, oversized: None }
    }

    /// Messages in the batch, not counting its begin and end.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Starts a message of the subsystem (`NFT_MSG_*`, `IPCTNL_MSG_*`)
    /// for `family` with `flags` besides NLM_F_REQUEST; its sequence
    /// number is its index from 1.
    pub fn message(&mut self, kind: u16, flags: u16, family: u8) {
        self.count += 1;
        let seq = self.count as u32;
        let subsystem = self.subsystem.unwrap_or_default();
        self.header((subsystem << 8) | kind, NLM_F_REQUEST | flags, seq, &nfgenmsg(family, 0));
    }

    /// Starts a route message with its fixed header (`struct rtmsg`).
    pub fn route_message(&mut self, kind: u16, flags: u16, rtmsg: &[u8; 12]) {
        self.count += 1;
        let seq = self.count as u32;
        self.header(kind, NLM_F_REQUEST | flags, seq, rtmsg);
    }

    fn header(&mut self, kind: u16, flags: u16, seq: u32, fixed: &[u8]) {
        self.message = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]); // length, written when closed
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        self.buf.extend_from_slice(fixed);
    }

    /// Writes the length of the message being written.
    pub fn close_message(&mut self) {
        let len = (self.buf.len() - self.message) as u32;
        self.buf[self.message..self.message + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// An attribute's length, noting one that does not fit.
    fn length(&mut self, len: usize) -> u16 {
        u16::try_from(len).unwrap_or_else(|_| {
            self.oversized = self.oversized.max(Some(len));
            u16::MAX
        })
    }

    pub fn bytes(&mut self, kind: u16, value: &[u8]) {
        let len = self.length(4 + value.len());
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// nf_tables integers are big-endian.
    pub fn u32(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    pub fn u64(&mut self, kind: u16, value: u64) {
        self.bytes(kind, &value.to_be_bytes());
    }

    /// A string with its terminating NUL.
    pub fn str(&mut self, kind: u16, value: &str) {
        let len = self.length(4 + value.len() + 1);
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// Opens a nested attribute; `end` closes it.
    pub fn nest(&mut self, kind: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        start
    }

    pub fn end(&mut self, start: usize) {
        let len = self.length(self.buf.len() - start);
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// The bytes to send. In a transaction the last message asks for the
    /// acknowledgement that tells the batch went in.
    fn finish(mut self) -> Result<Vec<u8>, NetlinkError> {
        if let Some(len) = self.oversized {
            return Err(NetlinkError::Oversized(len));
        }
        if !self.transaction {
            return Ok(self.buf);
        }
        if self.count > 0 {
            let flags_at = self.message + 6;
            let flags = u16::from_ne_bytes([self.buf[flags_at], self.buf[flags_at + 1]]) | NLM_F_ACK;
            self.buf[flags_at..flags_at + 2].copy_from_slice(&flags.to_ne_bytes());
        }
        let seq = self.count as u32 + 1;
        self.header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, &nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES));
        self.close_message();
        Ok(self.buf)
    }
}

/// A netlink socket.
pub struct Socket {
    fd: OwnedFd,
    answers: Vec<u8>,
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn set_option<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: T) -> io::Result<()> {
    let size = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` lives across the call and `size` is its size.
    check(unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (&raw const value).cast(), size) }).map(drop)
}

impl Socket {
    /// A `NETLINK_NETFILTER` socket.
    pub fn open() -> io::Result<Socket> {
        Self::open_protocol(libc::NETLINK_NETFILTER)
    }

    /// A socket of netlink `protocol` (`NETLINK_ROUTE`, ...).
    pub fn open_protocol(protocol: libc::c_int) -> io::Result<Socket> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = check(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) })?;
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Errors carry the kernel's text and not the whole refused message.
        // Both are only helps: older kernels go without.
        let _ = set_option(&fd, libc::SOL_NETLINK, NETLINK_EXT_ACK, 1 as libc::c_int);
        let _ = set_option(&fd, libc::SOL_NETLINK, NETLINK_CAP_ACK, 1 as libc::c_int);
        // A dump that stalls must not hold the writer forever.
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, libc::timeval { tv_sec: READ_TIMEOUT_SECS, tv_usec: 0 })?;
        Ok(Socket { fd, answers: vec![0; ANSWER_BUFFER] })
    }

    fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        // A netlink message must fit the socket's send buffer; root may
        // raise it past the sysctl bound (the caller has CAP_NET_ADMIN).
        let size = libc::c_int::try_from(bytes.len() + 64 * 1024).unwrap_or(libc::c_int::MAX);
        if set_option(&self.fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size).is_err() {
            set_option(&self.fd, libc::SOL_SOCKET, libc::SO_SNDBUF, size)?;
        }
        // SAFETY: `bytes` is valid for its length across the call.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        match usize::try_from(sent) {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(_) => Err(io::Error::other("netlink message sent in part")),
            Err(_) => Err(io::Error::last_os_error()),
        }
    }

    /// One read of queued answers: `None` when nothing is queued (and
    /// `wait` is false) or the read timed out.
    fn read(&mut self, wait: bool) -> io::Result<Option<usize>> {
        loop {
            let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
            // SAFETY: the buffer is valid for its length across the call.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), self.answers.as_mut_ptr().cast(), self.answers.len(), flags) };
            if let Ok(n) = usize::try_from(n) {
                return Ok(Some(n));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(None),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
    }

    /// Sends `batch`, a transaction or one message that asks for an
    /// acknowledgement: every message or none, and Ok once the last one
    /// is acknowledged.
    pub fn send(&mut self, batch: Batch) -> Result<(), NetlinkError> {
        let last = batch.len();
        self.send_bytes(&batch.finish()?)?;
        let mut acknowledged = last == 0;
        let mut refused = None;
        // Every answer is read, a failure's too: one left queued would be
        // taken for an answer to the next batch.
        while let Some(n) = self.read(false)? {
            for answer in Answers(&self.answers[..n]) {
                match answer {
                    Answer::Ack(seq) if seq as usize == last => acknowledged = true,
                    Answer::Error { seq, errno, text } if refused.is_none() => {
                        let index = if seq as usize > last { 0 } else { seq as usize };
                        refused = Some(NetlinkError::Refused { index, error: io::Error::from_raw_os_error(errno), text });
                    }
                    _ => {}
                }
            }
        }
        match refused {
            Some(error) => Err(error),
            None if acknowledged => Ok(()),
            None => Err(NetlinkError::Unanswered),
        }
    }

    /// Reads and drops whatever answers are queued.
    fn drain(&mut self) {
        while let Ok(Some(_)) = self.read(false) {}
    }

    /// Sends plain messages that ask for no answer; returns the errors
    /// the kernel answered some with.
    pub fn send_each(&mut self, messages: Batch) -> Result<Vec<io::Error>, NetlinkError> {
        self.send_bytes(&messages.finish()?)?;
        let mut errors = Vec::new();
        while let Some(n) = self.read(false)? {
            errors.extend(Answers(&self.answers[..n]).filter_map(|answer| match answer {
                Answer::Error { errno, .. } => Some(io::Error::from_raw_os_error(errno)),
                _ => None,
            }));
        }
        Ok(errors)
    }

    /// Sends one dump request and hands each answer's attributes (after
    /// its nfgenmsg) to `each`, until the dump is done.
    pub fn dump(&mut self, request: Batch, mut each: impl FnMut(&[u8])) -> Result<(), NetlinkError> {
        self.send_bytes(&request.finish()?)?;
        loop {
            let Some(n) = self.read(true)? else {
                self.drain();
                return Err(NetlinkError::Unanswered);
            };
            for answer in Answers(&self.answers[..n]) {
                match answer {
                    Answer::Data(body) => each(body.get(NFGENMSG_LEN..).unwrap_or_default()),
                    Answer::Done => return Ok(()),
                    Answer::Error { seq, errno, text } => {
                        self.drain();
                        return Err(NetlinkError::Refused { index: seq as usize, error: io::Error::from_raw_os_error(errno), text });
                    }
                    Answer::Ack(_) => {}
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Answer<'a> {
    Ack(u32),
    Error {
        seq: u32,
        errno: i32,
        text: Option<String>,
    },
    /// A message of a dump: its body after the netlink header.
    Data(&'a [u8]),
    /// The end of a dump.
    Done,
}

/// The messages in one read.
struct Answers<'a>(&'a [u8]);

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Iterator for Answers<'a> {
    type Item = Answer<'a>;

    fn next(&mut self) -> Option<Answer<'a>> {
        let b = self.0;
        let len = u32_at(b, 0)? as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            return None;
        }
        self.0 = &b[align4(len).min(b.len())..];
        match u16_at(b, 4)? {
            NLMSG_ERROR => {}
            NLMSG_DONE => return Some(Answer::Done),
            _ => return Some(Answer::Data(&b[NLMSG_HDRLEN..len])),
        }
        let flags = u16_at(b, 6)?;
        let errno = (u32_at(b, NLMSG_HDRLEN)? as i32).wrapping_neg();
        // The refused message's header follows (and, without
        // NETLINK_CAP_ACK, its whole body).
        let inner = b.get(NLMSG_HDRLEN + 4..len)?;
        let seq = u32_at(inner, 8)?;
        if errno == 0 {
            return Some(Answer::Ack(seq));
        }
        let text = (flags & NLM_F_ACK_TLVS != 0).then(|| error_text(inner, flags & NLM_F_CAPPED != 0)).flatten();
        Some(Answer::Error { seq, errno, text })
    }
}

/// The attributes in a message body or a nested attribute: (type without
/// its flags, value).
pub struct Attributes<'a>(pub &'a [u8]);

impl<'a> Iterator for Attributes<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<(u16, &'a [u8])> {
        let b = self.0;
        let len = u16_at(b, 0)? as usize;
        if len < 4 || len > b.len() {
            return None;
        }
        self.0 = &b[align4(len).min(b.len())..];
        Some((u16_at(b, 2)? & !NLA_F_NESTED & !NLA_F_NET_BYTEORDER, &b[4..len]))
    }
}

/// The kernel's text in the TLVs after a refused message's header, or
/// after the whole message where it was echoed (not `capped`).
fn error_text(inner: &[u8], capped: bool) -> Option<String> {
    let mut at = if capped { NLMSG_HDRLEN } else { align4(u32_at(inner, 0)? as usize) };
    while at + 4 <= inner.len() {
        let len = u16_at(inner, at)? as usize;
        let kind = u16_at(inner, at + 2)?;
        if len < 4 || at + len > inner.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &inner[at + 4..at + len];
            let text = text.split(|&c| c == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        at += align4(len);
    }
    None
}

/// The bytes a batch's messages take after their headers, for tests.
#[cfg(test)]
pub fn messages(batch: Batch) -> Vec<(u16, u16, Vec<u8>)> {
    let bytes = batch.finish().unwrap_or_default();
    let mut out = Vec::new();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= bytes.len() {
        let len = u32_at(&bytes, at).unwrap_or(0) as usize;
        let kind = u16_at(&bytes, at + 4).unwrap_or(0);
        let flags = u16_at(&bytes, at + 6).unwrap_or(0);
        out.push((kind, flags, bytes[at + NLMSG_HDRLEN + NFGENMSG_LEN..at + len].to_vec()));
        at += align4(len.max(NLMSG_HDRLEN));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(seq: u32, errno: i32, text: Option<&str>) -> Vec<u8> {
        let mut tlvs = Vec::new();
        if let Some(t) = text {
            let len = 4 + t.len() + 1;
            tlvs.extend_from_slice(&(len as u16).to_ne_bytes());
            tlvs.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
            tlvs.extend_from_slice(t.as_bytes());
            tlvs.push(0);
            tlvs.resize(align4(tlvs.len()), 0);
        }
        let len = NLMSG_HDRLEN + 4 + NLMSG_HDRLEN + tlvs.len();
        let flags = if text.is_some() { NLM_F_ACK_TLVS | NLM_F_CAPPED } else { NLM_F_CAPPED };
        let mut b = Vec::new();
        b.extend_from_slice(&(len as u32).to_ne_bytes());
        b.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b.extend_from_slice(&flags.to_ne_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&(-errno).to_ne_bytes());
        // The refused message's header: length 20, type, flags, seq, pid.
        b.extend_from_slice(&20u32.to_ne_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&tlvs);
        b
    }

    #[test]
    fn answers_are_acks_and_errors_with_the_kernels_text() {
        let mut read = error(3, 0, None);
        read.extend(error(5, libc::ENOENT, Some("No such file or directory")));
        let answers: Vec<Answer<'_>> = Answers(&read).collect();
        assert_eq!(
            answers,
            [Answer::Ack(3), Answer::Error { seq: 5, errno: libc::ENOENT, text: Some("No such file or directory".into()) }]
        );
    }

    #[test]
    fn truncated_or_hostile_answers_end_the_read_without_a_panic() {
        let whole = error(5, libc::EINVAL, Some("bad"));
        for cut in 0..whole.len() {
            let _ = Answers(&whole[..cut]).count();
        }
        let mut lying = whole.clone();
        lying[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(Answers(&lying).count(), 0);
        let mut short = whole;
        short[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(Answers(&short).count(), 0);
    }

    #[test]
    fn an_attribute_past_the_16_bit_length_is_refused_before_it_is_sent() {
        let mut batch = Batch::default();
        batch.message(6, 0, libc::AF_INET as u8);
        let nest = batch.nest(4);
        for _ in 0..700 {
            batch.bytes(1, &[0u8; 96]);
        }
        batch.end(nest);
        batch.close_message();
        assert!(matches!(batch.finish(), Err(NetlinkError::Oversized(len)) if len > 65_535));
        let mut fine = Batch::default();
        fine.message(6, 0, libc::AF_INET as u8);
        fine.bytes(1, &[0u8; 60_000]);
        fine.close_message();
        assert!(fine.finish().is_ok());
    }

    #[test]
    fn an_error_code_of_any_value_is_read_without_a_panic() {
        let mut read = error(3, 0, None);
        read[NLMSG_HDRLEN..NLMSG_HDRLEN + 4].copy_from_slice(&i32::MIN.to_ne_bytes());
        assert!(matches!(Answers(&read).next(), Some(Answer::Error { errno: i32::MIN, .. })));
    }

    #[test]
    fn a_batch_is_framed_begin_messages_end_and_only_the_last_asks_for_an_ack() {
        let mut batch = Batch::default();
        batch.message(0, 0x400, libc::AF_INET as u8);
        batch.str(1, "wharf");
        let nest = batch.nest(4);
        batch.u32(1, 7);
        batch.end(nest);
        batch.close_message();
        batch.message(2, 0, libc::AF_INET as u8);
        batch.close_message();
        let messages = messages(batch);
        let kinds: Vec<u16> = messages.iter().map(|m| m.0).collect();
        assert_eq!(kinds, [NFNL_MSG_BATCH_BEGIN, 0x0a00, 0x0a02, NFNL_MSG_BATCH_END]);
        let acks: Vec<bool> = messages.iter().map(|m| m.1 & NLM_F_ACK != 0).collect();
        assert_eq!(acks, [false, false, true, false]);
        // "wharf\0" padded to 8, then a nest of one u32, big-endian.
        let body = &messages[1].2;
        assert_eq!(&body[..12], &[10, 0, 1, 0, b'w', b'h', b'a', b'r', b'f', 0, 0, 0]);
        assert_eq!(&body[12..], &[12, 0, 4, 0x80, 8, 0, 1, 0, 0, 0, 0, 7]);
    }
}
