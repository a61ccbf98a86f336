//! Moving bytes between two TCP sockets.
//!
//! Each direction reads into a 16 KiB buffer that exists only while data
//! flows: it is allocated when the socket turns readable and dropped after
//! a short read (the peer has paused), so an idle keep-alive connection
//! holds no buffers. splice(2) through a pipe was measured too and lost
//! here (8.0 against 9.7 to 11.5 Gbit/s with iperf3 on these machines, see
//! docs/BENCHMARKS.md), as did 64 KiB buffers.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Big enough for a request or response in one read, small enough to stay
/// in the CPU's cache while it is written out.
const BUFFER: usize = 16 * 1024;

/// How long a proxied connection may sit idle (no byte either way), and
/// how long it may stay half-closed (one side said FIN, the other goes on).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub idle: Duration,
    pub half_closed: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { idle: Duration::from_secs(3600), half_closed: Duration::from_secs(300) }
    }
}

/// Why a connection was cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    Idle,
    HalfClosed,
}

/// What one proxied connection carried.
#[derive(Debug)]
pub struct Copied {
    /// client → endpoint
    pub sent: u64,
    /// endpoint → client
    pub received: u64,
    pub cut: Option<Cut>,
}

/// Milliseconds since `start`, for the activity clock.
fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Copies `from` to `to` until end of stream, then shuts down `to`'s
/// sending side, unless the other direction has already ended (both
/// sockets are about to close, which sends the FIN anyway). Returns the
/// bytes copied; `activity` is stamped after every write.
///
/// Reads go through tokio's `read`, which treats a short read as "drained"
/// and so saves the extra read that would only say EAGAIN.
async fn one_way(from: &mut ReadHalf<'_>, to: &mut WriteHalf<'_>, ended: &AtomicBool, clock: (Instant, &AtomicU64)) -> io::Result<u64> {
    let (start, activity) = clock;
    let mut total = 0u64;
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        if buffer.capacity() == 0 {
            from.as_ref().readable().await?;
            // Not zero-filled: `read_buf` writes into the spare capacity.
            buffer = Vec::with_capacity(BUFFER);
        }
        buffer.clear();
        let n = from.read_buf(&mut buffer).await?;
        if n == 0 {
            break;
        }
        to.write_all(&buffer).await?;
        activity.store(millis_since(start), Ordering::Relaxed);
        total += n as u64;
        if n < BUFFER {
            buffer = Vec::new();
        }
    }
    if !ended.swap(true, Ordering::AcqRel) {
        let _ = to.shutdown().await;
    }
    Ok(total)
}

/// Copies both ways. A direction that reaches end of stream half-closes
/// and the other goes on, for at most `timeouts.half_closed`; an error on
/// either (a reset) ends both, so neither side is left waiting; and a
/// connection idle for `timeouts.idle` is closed. The timer is looked at
/// only when it fires, so the data path pays one relaxed store per write.
pub async fn bidirectional(client: &mut TcpStream, endpoint: &mut TcpStream, timeouts: Timeouts) -> Copied {
    let (mut client_read, mut client_write) = client.split();
    let (mut endpoint_read, mut endpoint_write) = endpoint.split();
    let ended = AtomicBool::new(false);
    let start = Instant::now();
    let activity = AtomicU64::new(0);
    let up = one_way(&mut client_read, &mut endpoint_write, &ended, (start, &activity));
    let down = one_way(&mut endpoint_read, &mut client_write, &ended, (start, &activity));
    tokio::pin!(up, down);
    let (mut sent, mut received, mut cut) = (None, None, None);
    let mut half_closed_at: Option<Instant> = None;
    let timer = tokio::time::sleep(timeouts.idle);
    tokio::pin!(timer);
    while sent.is_none() || received.is_none() {
        tokio::select! {
            result = &mut up, if sent.is_none() => match result {
                Ok(n) => sent = Some(n),
                Err(_) => break,
            },
            result = &mut down, if received.is_none() => match result {
                Ok(n) => received = Some(n),
                Err(_) => break,
            },
            _ = &mut timer => {
                let now = Instant::now();
                let idle_until = start + Duration::from_millis(activity.load(Ordering::Relaxed)) + timeouts.idle;
                let half_closed_until = half_closed_at.map(|at| at + timeouts.half_closed);
                if idle_until <= now {
                    cut = Some(Cut::Idle);
                    break;
                }
                if half_closed_until.is_some_and(|until| until <= now) {
                    cut = Some(Cut::HalfClosed);
                    break;
                }
                timer.as_mut().reset(half_closed_until.map_or(idle_until, |until| until.min(idle_until)));
            }
        }
        if half_closed_at.is_none() && (sent.is_some() || received.is_some()) {
            let at = Instant::now();
            half_closed_at = Some(at);
            let due = timer.deadline().min(at + timeouts.half_closed);
            timer.as_mut().reset(due);
        }
    }
    Copied { sent: sent.unwrap_or(0), received: received.unwrap_or(0), cut }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_and_bulk_data_arrive_intact() {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = echo.accept().await.unwrap();
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await.unwrap();
        });
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut client, _) = front.accept().await.unwrap();
            let mut upstream = TcpStream::connect(echo_addr).await.unwrap();
            bidirectional(&mut client, &mut upstream, Timeouts::default()).await
        });
        let mut client = TcpStream::connect(front_addr).await.unwrap();
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut r, mut w) = client.split();
        let send = async {
            w.write_all(b"hi").await.unwrap();
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let recv = r.read_to_end(&mut back);
        let (_, got) = tokio::join!(send, recv);
        got.unwrap();
        assert_eq!(back.len(), data.len() + 2);
        assert_eq!(&back[..2], b"hi");
        assert!(back[2..] == data[..]);
    }

    #[tokio::test]
    async fn idle_and_half_closed_connections_are_cut() {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = backend.local_addr().unwrap();
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        let timeouts = Timeouts { idle: Duration::from_millis(900), half_closed: Duration::from_millis(300) };
        let proxy = tokio::spawn(async move {
            let mut cuts = Vec::new();
            for _ in 0..2 {
                let (mut client, _) = front.accept().await.unwrap();
                let mut upstream = TcpStream::connect(backend_addr).await.unwrap();
                cuts.push(bidirectional(&mut client, &mut upstream, timeouts).await.cut);
            }
            cuts
        });
        // Idle: connected, silent.
        let idle = TcpStream::connect(front_addr).await.unwrap();
        let (_held, _) = backend.accept().await.unwrap();
        // Half-closed: the client says FIN, the backend never answers.
        let mut half = TcpStream::connect(front_addr).await.unwrap();
        let (_held2, _) = backend.accept().await.unwrap();
        half.shutdown().await.unwrap();
        let cuts = tokio::time::timeout(Duration::from_secs(10), proxy).await.expect("connections were not cut").unwrap();
        assert_eq!(cuts, [Some(Cut::Idle), Some(Cut::HalfClosed)]);
        drop(idle);
    }
}
