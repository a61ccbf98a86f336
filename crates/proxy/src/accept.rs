//! The TCP frontends' listening sockets, waited on in one epoll set per
//! worker. A tokio listener costs a reactor registration (256 bytes) and
//! a task to accept on it (256 more); here a listener is its socket and
//! one entry of a map, and each worker has one task for all of its
//! listeners: 5 MiB less at 10,000 services (docs/BENCHMARKS.md, tenth
//! round). The set's own descriptor sits in the worker's reactor, so a
//! connection on any listener wakes that task.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use mio::net::TcpListener;
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

/// A listener registered in an [`Acceptor`], to remove it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listening(Token);

struct Listener<A> {
    socket: TcpListener,
    to: Arc<A>,
}

struct Listeners<A> {
    by_token: HashMap<Token, Listener<A>>,
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
        let task = worker.spawn(accept_loop(poll, listeners.clone(), what));
        Ok(Self { registry, listeners, task })
    }

    fn lock(&self) -> MutexGuard<'_, Listeners<A>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Accepts connections on `socket` (non-blocking) for `to`.
    pub fn add(&self, socket: std::net::TcpListener, to: Arc<A>) -> std::io::Result<Listening> {
        let mut listeners = self.lock();
        let token = Token(listeners.next);
        listeners.next += 1;
        // Registered while the map is locked: a connection already waiting
        // is reported at once, and its listener must be found.
        let mut socket = TcpListener::from_std(socket);
        self.registry.register(&mut socket, token, Interest::READABLE)?;
        listeners.by_token.insert(token, Listener { socket, to });
        Ok(Listening(token))
    }

    /// Stops accepting on a listener and closes it.
    pub fn remove(&self, listening: Listening) {
        if let Some(mut listener) = self.lock().by_token.remove(&listening.0) {
            let _ = self.registry.deregister(&mut listener.socket);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_token.len()
    }
}

impl<A> Drop for Acceptor<A> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The epoll set, as a descriptor the reactor can watch.
struct PollFd(Poll);

impl AsRawFd for PollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

async fn accept_loop<A: Accepted>(mut poll: AsyncFd<PollFd>, listeners: Arc<Mutex<Listeners<A>>>, what: &'static str) {
    let mut events = Events::with_capacity(EVENTS);
    // Listeners whose accept failed (out of files, most often): their
    // readiness was taken, so they are tried again after a pause.
    let mut retry: Vec<Token> = Vec::new();
    loop {
        let ready = if retry.is_empty() {
            ready_listeners(&mut poll, &mut events).await
        } else {
            tokio::select! {
                ready = ready_listeners(&mut poll, &mut events) => ready,
                () = tokio::time::sleep(wharf_limits::ACCEPT_BACKOFF) => Ok(Vec::new()),
            }
        };
        let mut tokens = std::mem::take(&mut retry);
        match ready {
            Ok(ready) => tokens.extend(ready),
            Err(e) => {
                tracing::warn!(error = %e, "{what}: waiting for connections failed");
                retry = tokens;
                tokio::time::sleep(wharf_limits::ACCEPT_BACKOFF).await;
                continue;
            }
        }
        let listeners = listeners.lock().unwrap_or_else(|p| p.into_inner());
        for token in tokens {
            if let Some(listener) = listeners.by_token.get(&token) {
                if !accept_all(listener, what) {
                    retry.push(token);
                }
            }
        }
    }
}

/// Waits until a listener is ready; returns the ready ones. (It waits
/// only before it reads the set: cancelled, it loses no readiness.)
async fn ready_listeners(poll: &mut AsyncFd<PollFd>, events: &mut Events) -> std::io::Result<Vec<Token>> {
    loop {
        let mut ready = poll.readable_mut().await?;
        match ready.get_inner_mut().0.poll(events, Some(std::time::Duration::ZERO)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let tokens: Vec<Token> = events.iter().map(|e| e.token()).collect();
        // A full batch may have left more behind: look again at once.
        if tokens.len() < EVENTS {
            ready.clear_ready();
        }
        return Ok(tokens);
    }
}

/// Accepts every connection waiting on `listener` (its readiness is
/// reported once per change, so it must be emptied). False if an accept
/// failed.
fn accept_all<A: Accepted>(listener: &Listener<A>, what: &str) -> bool {
    loop {
        match listener.socket.accept() {
            Ok((client, peer)) => listener.to.accepted(std::net::TcpStream::from(client), peer),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if matches!(e.kind(), ErrorKind::Interrupted | ErrorKind::ConnectionAborted) => {}
            Err(e) => {
                wharf_limits::accept_failed(&e, what);
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts connections and answers each with its listener's byte.
    struct Answer(u8, AtomicUsize);

    impl Accepted for Answer {
        fn accepted(&self, mut client: std::net::TcpStream, _peer: std::net::SocketAddr) {
            self.1.fetch_add(1, Ordering::Relaxed);
            let _ = client.write_all(&[self.0]);
        }
    }

    fn listener() -> (std::net::TcpListener, std::net::SocketAddr) {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let addr = socket.local_addr().unwrap();
        (socket, addr)
    }

    fn ask(addr: std::net::SocketAddr) -> std::io::Result<u8> {
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let mut byte = [0];
        stream.read_exact(&mut byte)?;
        Ok(byte[0])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_task_serves_many_listeners_and_a_removed_one_refuses() {
        let acceptor = Acceptor::start(&Handle::current(), "test").unwrap();
        let mut added = Vec::new();
        for i in 0..300u16 {
            let (socket, addr) = listener();
            let to = Arc::new(Answer(i as u8, AtomicUsize::new(0)));
            added.push((acceptor.add(socket, to.clone()).unwrap(), addr, to));
        }
        assert_eq!(acceptor.len(), 300);
        // More listeners ready at once than one batch takes.
        let asks: Vec<_> = added
            .iter()
            .map(|(_, addr, _)| {
                tokio::task::spawn_blocking({
                    let addr = *addr;
                    move || ask(addr)
                })
            })
            .collect();
        for (i, asked) in asks.into_iter().enumerate() {
            assert_eq!(asked.await.unwrap().unwrap(), i as u8);
        }
        // A listener with many waiting connections is emptied, not served once.
        let (_, addr, to) = &added[7];
        let many: Vec<_> = (0..50).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        for mut stream in many {
            let mut byte = [0];
            stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
            stream.read_exact(&mut byte).unwrap();
            assert_eq!(byte[0], 7);
        }
        assert_eq!(to.1.load(Ordering::Relaxed), 51);
        let (listening, addr, _) = &added[3];
        acceptor.remove(*listening);
        assert_eq!(acceptor.len(), 299);
        let refused = tokio::task::spawn_blocking({
            let addr = *addr;
            move || ask(addr)
        });
        assert!(refused.await.unwrap().is_err(), "a removed listener is closed");
    }
}
