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

const TIMEOUT: Duration = Duration::from_secs(2);
const MAX_ENTRIES: usize = 10_000;
const MAX_POSITIVE_TTL: u32 = 3600;
const MAX_NEGATIVE_TTL: u32 = 300;

struct Cached {
    response: Vec<u8>,
    expires: Instant,
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    cache: Mutex<HashMap<(String, u16), Cached>>,
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
        Self { upstreams, cache: Mutex::new(HashMap::new()) }
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
        for upstream in &self.upstreams {
            match ask(*upstream, packet).await {
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

/// One exchange with one upstream: UDP, then TCP if the answer was truncated.
async fn ask(upstream: SocketAddr, packet: &[u8]) -> std::io::Result<Vec<u8>> {
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
            if n >= 12 && buf[0..2] == id.to_be_bytes() {
                return Ok::<_, std::io::Error>(buf[..n].to_vec());
            }
        }
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream timed out"))??;
    if response[2] & 0x02 == 0 {
        return Ok(response);
    }
    tokio::time::timeout(TIMEOUT, ask_tcp(upstream, &outgoing))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream timed out"))?
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
}
