//! Choosing an endpoint: least connections by the power of two random
//! choices, ClientIP affinity, and retries that skip endpoints that
//! already failed.
//!
//! Why P2C least-connections: a random pick ignores load, and a strict
//! least-connections scan needs a global order and herds new
//! connections onto whichever endpoint just freed up. Comparing two random
//! endpoints' active counts gets most of least-connections' balance at
//! O(1) and without herding (Mitzenmacher, "The Power of Two Choices").

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use once_cell::race::OnceBox;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::metrics::{EndpointCounters, PortMetrics};

/// An endpoint as the data plane tracks it: its open connections, and
/// its traffic counters once it has carried any (created lazily: most of
/// a large cluster's endpoints never see this node's traffic, and each
/// set of series costs memory).
#[derive(Debug)]
pub struct Backend {
    addr: EndpointAddr,
    /// Open connections: bounded by the process's open files.
    pub active: AtomicU32,
    /// Made by the first connection or datagram; boxed, a pointer while
    /// unused, as most are (a counter and a signal held apart were 32
    /// bytes more). A `OnceBox` is that one pointer; a `OnceLock` adds
    /// its state, 8 bytes that take a backend past the 48-byte class.
    /// Two first uses at once may both make one; the loser's is dropped
    /// unused.
    used: OnceBox<Used>,
}

/// An endpoint's address and port in 20 bytes: a `SocketAddr` is 32, with
/// room for an IPv6 flow label and scope that no endpoint has. One per
/// backend, and a large cluster has 100,000.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EndpointAddr {
    ip: IpAddr,
    port: u16,
}

impl From<SocketAddr> for EndpointAddr {
    fn from(addr: SocketAddr) -> Self {
        EndpointAddr { ip: addr.ip(), port: addr.port() }
    }
}

/// What an endpoint that carried traffic has.
#[derive(Debug)]
struct Used {
    counters: EndpointCounters,
    /// Cancelled when open connections must close (drain timeout).
    closed: CancellationToken,
}

impl Backend {
    pub fn new(addr: SocketAddr) -> Arc<Self> {
        Arc::new(Backend { addr: addr.into(), active: AtomicU32::new(0), used: OnceBox::new() })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr.ip, self.addr.port)
    }

    fn used(&self, port: &PortMetrics) -> &Used {
        self.used.get_or_init(|| Box::new(Used { counters: port.endpoint(self.addr()), closed: CancellationToken::new() }))
    }

    /// This endpoint's counters, created in `port`'s series on first use.
    pub fn counters(&self, port: &PortMetrics) -> &EndpointCounters {
        &self.used(port).counters
    }

    /// The signal that its open connections must close.
    pub fn closed(&self, port: &PortMetrics) -> CancellationToken {
        self.used(port).closed.clone()
    }

    /// Closes its open connections, if it has carried any.
    pub fn close(&self) {
        if let Some(used) = self.used.get() {
            used.closed.cancel();
        }
    }

    /// Its counters if it has carried traffic.
    pub fn counters_if_used(&self) -> Option<&EndpointCounters> {
        self.used.get().map(|used| &used.counters)
    }
}

/// Counts a connection on a backend while it lives.
pub struct ActiveGuard(Arc<Backend>);

impl ActiveGuard {
    pub fn new(backend: Arc<Backend>) -> Self {
        backend.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(backend)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks among `backends`, never one in `exclude`.
pub fn pick(backends: &[Arc<Backend>], exclude: &[SocketAddr]) -> Option<Arc<Backend>> {
    if exclude.is_empty() {
        return two_choices(backends.len(), |i| &backends[i]);
    }
    // Retries only: the rare path may allocate.
    let candidates: Vec<&Arc<Backend>> = backends.iter().filter(|b| !exclude.contains(&b.addr())).collect();
    two_choices(candidates.len(), |i| candidates[i])
}

/// The less loaded of two distinct random candidates out of `n`.
fn two_choices<'a>(n: usize, candidate: impl Fn(usize) -> &'a Arc<Backend>) -> Option<Arc<Backend>> {
    match n {
        0 => None,
        1 => Some(candidate(0).clone()),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (x, y) = (candidate(a), candidate(b));
            let pick = if y.active.load(Ordering::Relaxed) < x.active.load(Ordering::Relaxed) { y } else { x };
            Some(pick.clone())
        }
    }
}

/// ClientIP session affinity: a client keeps its endpoint while it keeps
/// coming back within the timeout. At most `capacity` clients are
/// remembered: expired entries go first, then the least recently seen.
pub struct Affinity {
    timeout: Duration,
    capacity: usize,
    table: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
}

impl Affinity {
    pub fn new(timeout: Duration, capacity: usize) -> Self {
        Self { timeout, capacity: capacity.max(1), table: Mutex::new(HashMap::new()) }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (SocketAddr, Instant)>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client's endpoint if it has a live one among `backends`.
    pub fn lookup(&self, client: IpAddr, backends: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        let mut table = self.table();
        let (addr, last) = table.get(&client).copied()?;
        if last.elapsed() > self.timeout {
            table.remove(&client);
            return None;
        }
        backends.iter().find(|b| b.addr() == addr).cloned()
    }

    /// Records (or refreshes) the client's endpoint.
    pub fn remember(&self, client: IpAddr, backend: SocketAddr) {
        let mut table = self.table();
        if table.len() >= self.capacity && !table.contains_key(&client) {
            let timeout = self.timeout;
            table.retain(|_, (_, t)| t.elapsed() <= timeout);
            if table.len() >= self.capacity {
                // Full of live clients: evict the least recently seen tenth
                // at once, so a flood of new sources costs O(1) per client.
                let mut seen: Vec<(Instant, IpAddr)> = table.iter().map(|(ip, (_, t))| (*t, *ip)).collect();
                let evict = (self.capacity / 10).max(1);
                seen.select_nth_unstable(evict - 1);
                for (_, ip) in &seen[..evict] {
                    table.remove(ip);
                }
                wharf_limits::reached("proxy_affinity_entries", self.capacity, "evicted the least recently seen clients");
            }
        }
        table.insert(client, (backend, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u16) -> Vec<Arc<Backend>> {
        (0..n).map(|i| Backend::new(SocketAddr::from(([127, 0, 0, 1], 8000 + i)))).collect()
    }

    #[test]
    fn a_backend_keeps_its_address_of_either_family_in_32_bytes() {
        for addr in ["127.0.0.1:8080", "[fd00::1:2]:53", "[::1]:65535", "0.0.0.0:0"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(Backend::new(addr).addr(), addr);
        }
        // One per endpoint: 100,000 of them in a large cluster. With its
        // reference counts, 48 bytes: the allocator's class of that size.
        assert!(std::mem::size_of::<Backend>() <= 32, "{}", std::mem::size_of::<Backend>());
    }

    #[test]
    fn two_choices_prefer_the_less_loaded() {
        let b = backends(2);
        b[0].active.store(10, Ordering::Relaxed);
        for _ in 0..100 {
            assert_eq!(pick(&b, &[]).unwrap().addr(), b[1].addr());
        }
        assert_eq!(pick(&b, &[b[1].addr()]).unwrap().addr(), b[0].addr());
        assert!(pick(&b, &[b[0].addr(), b[1].addr()]).is_none());
    }

    #[test]
    fn spread_is_even_when_load_is_even() {
        let b = backends(4);
        let mut hits = HashMap::new();
        for _ in 0..4000 {
            let chosen = pick(&b, &[]).unwrap();
            *hits.entry(chosen.addr()).or_insert(0) += 1;
            let _hold = ActiveGuard::new(chosen);
        }
        assert!(hits.values().all(|&h| h > 700), "{hits:?}");
    }

    #[test]
    fn affinity_holds_then_expires() {
        let b = backends(3);
        let affinity = Affinity::new(Duration::from_millis(50), 100);
        let client: IpAddr = "127.0.0.9".parse().unwrap();
        affinity.remember(client, b[2].addr());
        assert_eq!(affinity.lookup(client, &b).unwrap().addr(), b[2].addr());
        std::thread::sleep(Duration::from_millis(80));
        assert!(affinity.lookup(client, &b).is_none());
        affinity.remember(client, b[1].addr());
        assert!(affinity.lookup(client, &b[..1]).is_none(), "a gone endpoint is not reused");
    }

    #[test]
    fn affinity_is_bounded_by_evicting_the_least_recent() {
        let b = backends(1);
        let affinity = Affinity::new(Duration::from_secs(60), 100);
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x7f00_0000 + i));
        affinity.remember(ip(0), b[0].addr());
        for i in 1..10_000 {
            affinity.remember(ip(i), b[0].addr());
        }
        assert!(affinity.table().len() <= 100);
        assert!(affinity.lookup(ip(9_999), &b).is_some(), "the newest stays");
        assert!(affinity.lookup(ip(0), &b).is_none(), "the oldest went");
    }
}
