//! The TCP frontends' listening sockets, waited on in one epoll set per
//! worker. A tokio listener costs a reactor registration (256 bytes) and
//! a task to accept on it (256 more); here a listener is its socket and
//! one entry of a map, and each worker has one task for all of its
//! listeners: 5 MiB less at 10,000 services (docs/BENCHMARKS.md, tenth
//! round). The set's own descriptor sits in the worker's reactor, so a
//! connection on any listener wakes that task.

use std::collections::{HashMap, HashSet};
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use tokio::io::unix::AsyncFd;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

/// What an accepted connection is handed to.
pub trait Accepted: Send + Sync + 'static {
    /// `client` is non-blocking.
    fn accepted(&self, client: std::net::TcpStream, peer: std::net::SocketAddr);
}

/// Ready listeners taken from the set at once, at most.
const EVENTS: usize = 256;
/// Connections accepted from one listener before the others' turn (and
/// the worker's other tasks'): a flood on one frontend delays the rest by
/// one round at most.
const ACCEPTS_PER_TURN: usize = 64;

/// A listener registered in an [`Acceptor`], to remove it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listening(Token);

struct Listener<A> {
    socket: TcpListener,
    to: Arc<A>,
}

struct Listeners<A> {
    /// Shared with the accept loop while it takes a listener's connections,
    /// so that adding and removing listeners never waits for that.
    by_token: HashMap<Token, Arc<Listener<A>>>,
    /// Tokens are never reused, so a readiness that was queued for a
    /// listener since removed finds nothing.
    next: usize,
}

/// One worker's listeners and the task that accepts on them.
pub struct Acceptor<A> {
    registry: Registry,
    listeners: Arc<Mutex<Listeners<A>>>,
    task: JoinHandle<()>,
}

impl<A: Accepted> Acceptor<A> {
    /// Starts the accepting task on `worker`.
    pub fn start(worker: &Handle, what: &'static str) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let listeners = Arc::new(Mutex::new(Listeners { by_token: HashMap::new(), next: 0 }));
        let poll = {
            let _entered = worker.enter();
            // SAFETY: `PollFd` owns the set's descriptor and closes it only
            // when dropped, after the `AsyncFd` holding it has let it go.
            unsafe { AsyncFd::register_with_interest(PollFd(poll), tokio::io::Interest::READABLE)? }
        };
        let task = worker.spawn(supervise(poll, listeners.clone(), what));
        Ok(Self { registry, listeners, task })
    }

    /// Accepts connections on `socket` (non-blocking) for `to`.
    pub fn add(&self, socket: std::net::TcpListener, to: Arc<A>) -> std::io::Result<Listening> {
        let mut listeners = lock(&self.listeners);
        let token = Token(listeners.next);
        listeners.next += 1;
        // Registered while the map is locked: a connection already waiting
        // is reported at once, and its listener must be found.
        let mut socket = TcpListener::from_std(socket);
        self.registry.register(&mut socket, token, Interest::READABLE)?;
        listeners.by_token.insert(token, Arc::new(Listener { socket, to }));
        Ok(Listening(token))
    }

    /// Stops accepting on a listener and closes it.
    pub fn remove(&self, listening: Listening) {
        if let Some(listener) = lock(&self.listeners).by_token.remove(&listening.0) {
            let _ = self.registry.deregister(&mut SourceFd(&listener.socket.as_raw_fd()));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.listeners).by_token.len()
    }
}

impl<A> Drop for Acceptor<A> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<A>(listeners: &Mutex<Listeners<A>>) -> MutexGuard<'_, Listeners<A>> {
    listeners.lock().unwrap_or_else(|p| p.into_inner())
}

/// The epoll set, as a descriptor the reactor can watch.
struct PollFd(Poll);

impl AsRawFd for PollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Runs the accept loop, and again should it ever panic: each listener is
/// then looked at once, since the readiness the loop had taken is gone.
async fn supervise<A: Accepted>(mut poll: AsyncFd<PollFd>, listeners: Arc<Mutex<Listeners<A>>>, what: &'static str) {
    let mut turns = Turns::default();
    loop {
        let run = std::panic::AssertUnwindSafe(accept_loop(&mut poll, &listeners, &mut turns, what));
        if futures::FutureExt::catch_unwind(run).await.is_err() {
            tracing::error!("{what}: the accept loop panicked; it starts again");
            turns = Turns { pending: lock(&listeners).by_token.keys().copied().collect(), ..Turns::default() };
            tokio::time::sleep(wharf_limits::ACCEPT_BACKOFF).await;
        }
    }
}

/// Which listeners have connections to take.
#[derive(Default)]
struct Turns {
    /// Ready, or left with connections after their turn.
    pending: Vec<Token>,
    /// Whose accept failed (out of files, most often): their readiness was
    /// taken, so they are tried again at `retry_at`, not before.
    failed: HashSet<Token>,
    retry_at: Option<Instant>,
}

async fn accept_loop<A: Accepted>(poll: &mut AsyncFd<PollFd>, listeners: &Mutex<Listeners<A>>, turns: &mut Turns, what: &'static str) {
    let mut events = Events::with_capacity(EVENTS);
    loop {
        let ready = if !turns.pending.is_empty() {
            // The others' turn first; then whatever else became ready.
            tokio::task::yield_now().await;
            ready_now(poll, &mut events)
        } else if let Some(at) = turns.retry_at {
            tokio::select! {
                ready = ready_listeners(poll, &mut events) => ready,
                () = tokio::time::sleep_until(at.into()) => Ok(Vec::new()),
            }
        } else {
            ready_listeners(poll, &mut events).await
        };
        match ready {
            Ok(ready) => turns.pending.extend(ready.into_iter().filter(|t| !turns.failed.contains(t))),
            Err(e) => {
                tracing::warn!(error = %e, "{what}: waiting for connections failed");
                tokio::time::sleep(wharf_limits::ACCEPT_BACKOFF).await;
            }
        }
        if turns.retry_at.is_some_and(|at| at <= Instant::now()) {
            turns.pending.extend(turns.failed.drain());
            turns.retry_at = None;
        }
        turns.pending.sort_unstable();
        turns.pending.dedup();
        let taking: Vec<(Token, Arc<Listener<A>>)> = {
            let listeners = lock(listeners);
            turns.pending.drain(..).filter_map(|token| Some((token, listeners.by_token.get(&token)?.clone()))).collect()
        };
        for (token, listener) in taking {
            match accept_turn(&listener, what) {
                Turn::Emptied => {}
                Turn::MoreWaiting => turns.pending.push(token),
                Turn::Failed => {
                    turns.failed.insert(token);
                    turns.retry_at.get_or_insert_with(|| Instant::now() + wharf_limits::ACCEPT_BACKOFF);
                }
            }
        }
    }
}

/// Waits until a listener is ready; returns the ready ones. (It waits
/// only before it reads the set: cancelled, it loses no readiness.)
async fn ready_listeners(poll: &mut AsyncFd<PollFd>, events: &mut Events) -> std::io::Result<Vec<Token>> {
    let mut ready = poll.readable_mut().await?;
    let tokens = read_set(&mut ready.get_inner_mut().0, events)?;
    // A full batch may have left more behind: look again at once
    // (the kernel would wake the reactor for them too, a turn later).
    if tokens.len() < EVENTS {
        ready.clear_ready();
    }
    Ok(tokens)
}

/// The listeners ready now, without waiting.
fn ready_now(poll: &mut AsyncFd<PollFd>, events: &mut Events) -> std::io::Result<Vec<Token>> {
    read_set(&mut poll.get_mut().0, events)
}

fn read_set(poll: &mut Poll, events: &mut Events) -> std::io::Result<Vec<Token>> {
    loop {
        match poll.poll(events, Some(std::time::Duration::ZERO)) {
            Ok(()) => return Ok(events.iter().map(|e| e.token()).collect()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

enum Turn {
    Emptied,
    MoreWaiting,
    Failed,
}

/// Accepts the connections waiting on `listener`, up to its turn's
/// share. Its readiness is reported once per change, so one that is not
/// emptied must be looked at again without waiting for it.
fn accept_turn<A: Accepted>(listener: &Listener<A>, what: &str) -> Turn {
    for _ in 0..ACCEPTS_PER_TURN {
        match listener.socket.accept() {
            Ok((client, peer)) => listener.to.accepted(std::net::TcpStream::from(client), peer),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Turn::Emptied,
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
            Err(e) => {
                wharf_limits::accept_failed(&e, what);
                return Turn::Failed;
            }
        }
    }
    Turn::MoreWaiting
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncReadExt;

    /// Counts connections and answers each with its listener's byte.
    struct Answer(u8, AtomicUsize);

    impl Accepted for Answer {
        fn accepted(&self, mut client: std::net::TcpStream, _peer: std::net::SocketAddr) {
            self.1.fetch_add(1, Ordering::Relaxed);
            let _ = client.write_all(&[self.0]);
        }
    }

    /// A listener whose backlog holds the flood below (std's holds 128).
    fn listener() -> (std::net::TcpListener, std::net::SocketAddr) {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into()).unwrap();
        socket.listen(1024).unwrap();
        socket.set_nonblocking(true).unwrap();
        let socket = std::net::TcpListener::from(socket);
        let addr = socket.local_addr().unwrap();
        (socket, addr)
    }

    /// A connection made now (the kernel completes it without an accept).
    fn connect(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
        let stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_nonblocking(true).unwrap();
        tokio::net::TcpStream::from_std(stream).unwrap()
    }

    async fn answer(mut stream: tokio::net::TcpStream) -> u8 {
        let mut byte = [0];
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_exact(&mut byte)).await.unwrap().unwrap();
        byte[0]
    }

    // One thread, as a proxy worker runs: every connection below is made
    // before the accepting task first runs, so they are all ready at once.
    #[tokio::test(flavor = "current_thread")]
    async fn one_task_serves_many_listeners_ready_at_once_and_a_removed_one_refuses() {
        let acceptor = Acceptor::start(&Handle::current(), "test").unwrap();
        // A listener with a connection waiting before it is added.
        let (early, early_addr) = listener();
        let waiting = connect(early_addr);
        let early_to = Arc::new(Answer(255, AtomicUsize::new(0)));
        acceptor.add(early, early_to.clone()).unwrap();
        // More ready listeners than one look at the set takes.
        let mut added = Vec::new();
        for i in 0..300u16 {
            let (socket, addr) = listener();
            let to = Arc::new(Answer(i as u8, AtomicUsize::new(0)));
            added.push((acceptor.add(socket, to.clone()).unwrap(), addr, to));
        }
        assert_eq!(acceptor.len(), 301);
        let clients: Vec<_> = added.iter().map(|(_, addr, _)| connect(*addr)).collect();
        // More waiting on one listener than its turn takes.
        let (_, flooded, flooded_to) = &added[7];
        let flood: Vec<_> = (0..150).map(|_| connect(*flooded)).collect();

        assert_eq!(answer(waiting).await, 255, "a connection made before its listener was added");
        for (i, client) in clients.into_iter().enumerate() {
            assert_eq!(answer(client).await, i as u8);
        }
        for client in flood {
            assert_eq!(answer(client).await, 7);
        }
        assert_eq!(flooded_to.1.load(Ordering::Relaxed), 151);
        assert_eq!(early_to.1.load(Ordering::Relaxed), 1);

        let (listening, addr, _) = &added[3];
        acceptor.remove(*listening);
        assert_eq!(acceptor.len(), 300);
        let refused = std::net::TcpStream::connect(addr).map(|_| ()).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "a removed listener is closed");
    }
}
