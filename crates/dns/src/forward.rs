//! Names outside the cluster go to the upstream resolvers, with a small
//! cache that honours record TTLs and negative caching (the SOA minimum).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::wire::Query;
use wharf_limits as limits;

const TIMEOUT: Duration = Duration::from_secs(2);
const MAX_ENTRIES: usize = 10_000;
/// Upstream queries in flight at once; more are answered SERVFAIL.
pub const MAX_IN_FLIGHT: usize = 1024;
const MAX_POSITIVE_TTL: u32 = 3600;
const MAX_NEGATIVE_TTL: u32 = 300;

struct Cached {
    response: Vec<u8>,
    expires: Instant,
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<(String, u16), Cached>>,
    in_flight: tokio::sync::Semaphore,
}

/// Nameservers of a resolv.conf, skipping `exclude` (wharf's own).
pub fn upstreams_from_resolv_conf(text: &str, exclude: &[std::net::IpAddr]) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<std::net::IpAddr>().ok())
        .filter(|ip| !exclude.contains(ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// How long a response may be cached: its smallest TTL, or for a
/// negative answer the SOA minimum; errors are not cached.
fn cache_ttl(response: &[u8]) -> Option<u32> {
    let msg = Message::from_vec(response).ok()?;
    if msg.metadata.truncation {
        return None;
    }
    match msg.metadata.response_code {
        ResponseCode::NoError if !msg.answers.is_empty() => msg.answers.iter().map(|r| r.ttl).min().map(|t| t.min(MAX_POSITIVE_TTL)),
        ResponseCode::NoError | ResponseCode::NXDomain => msg
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                _ => None,
            })
            .map(|t| t.min(MAX_NEGATIVE_TTL)),
        _ => None,
    }
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self { upstreams, cache: Mutex::new(HashMap::new()), in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT) }
    }

    fn cached(&self, key: &(String, u16)) -> Option<Vec<u8>> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(key).filter(|c| c.expires > Instant::now()).map(|c| c.response.clone())
    }

    fn remember(&self, key: (String, u16), response: &[u8]) {
        let Some(ttl) = cache_ttl(response).filter(|t| *t > 0) else { return };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, c| c.expires > now);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, Cached { response: response.to_vec(), expires: Instant::now() + Duration::from_secs(u64::from(ttl)) });
    }

    /// The upstream's answer to `packet` (the client's query bytes), from
    /// the cache when fresh. None if no upstream answered.
    pub async fn resolve(&self, query: &Query, packet: &[u8]) -> Option<Vec<u8>> {
        let key = (query.qname.clone(), query.qtype);
        if let Some(hit) = self.cached(&key) {
            return Some(hit);
        }
        let Ok(_slot) = self.in_flight.try_acquire() else {
            limits::reached("dns_forwards_in_flight", MAX_IN_FLIGHT, "answered SERVFAIL instead of forwarding");
            return None;
        };
        for upstream in &self.upstreams {
            match ask(*upstream, packet, query.question_end).await {
                Ok(response) => {
                    self.remember(key, &response);
                    return Some(response);
                }
                Err(e) => tracing::debug!(%upstream, error = %e, "upstream resolver failed"),
            }
        }
        None
    }
}

/// Whether `response` answers `query`'s question (the same bytes, up to
/// case): a reply to anything else is not taken, whatever its ID.
fn answers_question(response: &[u8], query: &[u8], question_end: usize) -> bool {
    let question = |m: &[u8]| m.get(4..6) == Some(&[0, 1]) && m.len() >= question_end;
    question(response) && question(query) && response[12..question_end].eq_ignore_ascii_case(&query[12..question_end])
}

/// One exchange with one upstream, from a fresh socket (a random source
/// port) with a random ID: UDP, then TCP if the answer was truncated. A
/// reply counts only when it comes from the upstream (the socket is
/// connected), carries the ID and answers the question.
async fn ask(upstream: SocketAddr, packet: &[u8], question_end: usize) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(std::io::Error::other)?;
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    let mut outgoing = packet.to_vec();
    let id: u16 = rand::random();
    outgoing[0..2].copy_from_slice(&id.to_be_bytes());
    socket.send(&outgoing).await?;
    let mut buf = vec![0u8; 65535];
    let response = tokio::time::timeout(TIMEOUT, async {
        loop {
            let n = socket.recv(&mut buf).await?;
            if n >= 12 && buf[0..2] == id.to_be_bytes() && answers_question(&buf[..n], &outgoing, question_end) {
                return Ok::<_, std::io::Error>(buf[..n].to_vec());
            }
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream timed out"))??;
    if response[2] & 0x02 == 0 {
        return Ok(response);
    }
    let response = tokio::time::timeout(TIMEOUT, ask_tcp(upstream, &outgoing))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream timed out"))??;
    if response.get(0..2) != Some(&id.to_be_bytes()) || !answers_question(&response, &outgoing, question_end) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "upstream answered another question"));
    }
    Ok(response)
}

async fn ask_tcp(upstream: SocketAddr, packet: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(packet.len()).map_err(std::io::Error::other)?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(packet).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut response = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut response).await?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# x\nnameserver 127.0.0.53\nnameserver 127.96.0.10\nsearch a\nnameserver ::1\n";
        let got = upstreams_from_resolv_conf(text, &["127.96.0.10".parse().unwrap()]);
        assert_eq!(got, ["127.0.0.53:53".parse().unwrap(), "[::1]:53".parse().unwrap()]);
    }

    #[test]
    fn a_reply_to_another_question_is_not_an_answer() {
        // ID 7, one question: example.com A IN.
        let query = b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01";
        let end = query.len();
        let mut reply = query.to_vec();
        reply[2] |= 0x80;
        assert!(answers_question(&reply, query, end));
        reply[12 + 1] = b'E';
        assert!(answers_question(&reply, query, end), "case does not matter");
        let mut other = reply.clone();
        other[end - 3] = 28; // AAAA
        assert!(!answers_question(&other, query, end));
        let mut two = reply.clone();
        two[5] = 2;
        assert!(!answers_question(&two, query, end));
        assert!(!answers_question(&reply[..end - 1], query, end), "a cut reply");
    }
}
