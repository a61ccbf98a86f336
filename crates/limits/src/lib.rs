//! Every edge of wharf has a bound (connections, requests in flight,
//! message sizes, table entries). Reaching one is not an error of wharf's:
//! the client gets a clear refusal where the protocol has one, a counter
//! goes up (`wharf_limit_reached_total{limit}`), and a warning is logged
//! the first time and then at most once a minute per limit, with the
//! count since, so an attack cannot turn the log into a second flood.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

/// How often one limit's warning may repeat.
const LOG_EVERY: Duration = Duration::from_secs(60);

struct Reports {
    counters: Family<LimitLabel, Counter>,
    /// Per limit: when it was last logged and the hits since.
    logged: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

fn reports() -> &'static Reports {
    static REPORTS: OnceLock<Reports> = OnceLock::new();
    REPORTS.get_or_init(|| Reports { counters: Family::default(), logged: Mutex::new(HashMap::new()) })
}

/// Adds the counter of every limit to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register("wharf_limit_reached", "Times a bound at an edge refused or cut something, by limit", reports().counters.clone());
}

/// Records that `limit` (bound `bound`) was reached; `what` says what
/// was refused.
pub fn reached(limit: &'static str, bound: impl std::fmt::Display, what: &str) {
    let reports = reports();
    reports.counters.get_or_create(&LimitLabel { limit }).inc();
    let mut logged = reports.logged.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    match logged.get_mut(limit) {
        Some((at, since)) if now.duration_since(*at) < LOG_EVERY => *since += 1,
        Some((at, since)) => {
            tracing::warn!(limit, %bound, hits = *since + 1, "limit reached again: {what}");
            *at = now;
            *since = 0;
        }
        None => {
            tracing::warn!(limit, %bound, "limit reached: {what}; further hits are counted in wharf_limit_reached_total");
            logged.insert(limit, (now, 0));
        }
    }
}

/// A bounded number of things open at once (connections, say): a slot is
/// held for as long as its permit lives.
#[derive(Clone)]
pub struct Slots {
    limit: &'static str,
    bound: usize,
    free: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Slots {
    pub fn new(limit: &'static str, bound: usize) -> Self {
        Self { limit, bound, free: std::sync::Arc::new(tokio::sync::Semaphore::new(bound)) }
    }

    /// A slot, or None (reported, `what` saying what was refused) when all
    /// are taken. `what` is written out only then: a slot is taken for
    /// every connection and flow.
    pub fn take(&self, what: std::fmt::Arguments<'_>) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let slot = self.free.clone().try_acquire_owned().ok();
        if slot.is_none() {
            reached(self.limit, self.bound, &what.to_string());
        }
        slot
    }

    pub fn in_use(&self) -> usize {
        self.bound - self.free.available_permits()
    }
}

/// How long an accept loop waits after a failed accept.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The next connection on `listener`. A failed accept (out of file
/// descriptors, most often) is reported and waited out, never spun on.
///
/// A waiting accept is small: `poll_accept` keeps no future of its own
/// (`accept()`'s is 184 bytes) and the backoff's timer is boxed, made
/// only after a failure. Only one task may wait on a listener.
pub async fn accept(listener: &tokio::net::TcpListener, what: &'static str) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match std::future::poll_fn(|cx| listener.poll_accept(cx)).await {
            Ok(conn) => return conn,
            Err(e) => accept_failed(&e, what),
        }
        Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)).await;
    }
}

/// Reports a failed accept: out of open files is a limit reached, anything
/// else a warning. The caller tries again after `ACCEPT_BACKOFF`.
pub fn accept_failed(e: &std::io::Error, what: &str) {
    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
        reached("open_files", "RLIMIT_NOFILE", &format!("{what}: cannot accept: {e}"));
    } else {
        tracing::warn!(error = %e, "{what}: accept failed");
    }
}

/// Raises this process's soft limit of open files to the hard limit (a
/// proxy and DNS server hold many sockets); returns the limit in force.
pub fn raise_open_files() -> std::io::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read or write the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// How many times `limit` was reached in this process.
pub fn count(limit: &'static str) -> u64 {
    reports().counters.get_or_create(&LimitLabel { limit }).get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hit_counts_once_logged() {
        for _ in 0..1000 {
            reached("test_limit", 5, "a test");
        }
        assert_eq!(count("test_limit"), 1000);
        let logged = reports().logged.lock().unwrap();
        assert_eq!(logged.get("test_limit").map(|(_, since)| *since), Some(999), "one warning, the rest counted");
    }

    #[tokio::test]
    async fn slots_are_bounded_and_freed_with_their_permits() {
        let slots = Slots::new("test_slots", 2);
        let a = slots.take(format_args!("a")).unwrap();
        let _b = slots.take(format_args!("b")).unwrap();
        assert!(slots.take(format_args!("c")).is_none());
        assert_eq!(count("test_slots"), 1);
        drop(a);
        assert!(slots.take(format_args!("d")).is_some());
    }

    #[tokio::test]
    async fn a_waiting_accept_is_small_and_takes_each_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let waiting = accept(&listener, "a test");
        // The proxy holds one per frontend: 240 bytes with `accept()`'s own future and an inline timer.
        assert!(std::mem::size_of_val(&waiting) <= 64, "{} bytes", std::mem::size_of_val(&waiting));
        let addr = listener.local_addr().unwrap();
        let clients = [tokio::net::TcpStream::connect(addr).await.unwrap(), tokio::net::TcpStream::connect(addr).await.unwrap()];
        let (_, first) = waiting.await;
        let (_, second) = accept(&listener, "a test").await;
        let mut peers = [first, second];
        peers.sort();
        let mut expected = clients.map(|c| c.local_addr().unwrap());
        expected.sort();
        assert_eq!(peers, expected);
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let soft = raise_open_files().unwrap();
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        assert_eq!((soft, limit.rlim_cur), (limit.rlim_max, limit.rlim_max));
    }
}
