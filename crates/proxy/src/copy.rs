//! Moving bytes between two TCP sockets.
//!
//! Each direction reads into a 16 KiB buffer that exists only while data
//! flows: it is allocated when the socket turns readable and dropped after
//! a short read (the peer has paused), so an idle keep-alive connection
//! holds no buffers. splice(2) through a pipe was measured too and lost
//! here (8.0 against 9.7 to 11.5 Gbit/s with iperf3 on these machines, see
//! docs/BENCHMARKS.md), as did 64 KiB buffers.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Big enough for a request or response in one read, small enough to stay
/// in the CPU's cache while it is written out.
const BUFFER: usize = 16 * 1024;

/// Copies `from` to `to` until end of stream, then shuts down `to`'s
/// sending side, unless the other direction has already ended (both
/// sockets are about to close, which sends the FIN anyway). Returns the
/// bytes copied.
///
/// Reads go through tokio's `read`, which treats a short read as "drained"
/// and so saves the extra read that would only say EAGAIN.
pub async fn one_way(from: &mut ReadHalf<'_>, to: &mut WriteHalf<'_>, ended: &AtomicBool) -> io::Result<u64> {
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

/// Copies both ways: (client→endpoint, endpoint→client). A direction
/// that reaches end of stream half-closes and the other goes on; an error
/// on either (a reset) ends both, so neither side is left waiting.
pub async fn bidirectional(client: &mut TcpStream, endpoint: &mut TcpStream) -> (u64, u64) {
    let (mut client_read, mut client_write) = client.split();
    let (mut endpoint_read, mut endpoint_write) = endpoint.split();
    let ended = AtomicBool::new(false);
    let up = one_way(&mut client_read, &mut endpoint_write, &ended);
    let down = one_way(&mut endpoint_read, &mut client_write, &ended);
    tokio::pin!(up, down);
    let (mut sent, mut received) = (None, None);
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
        }
    }
    (sent.unwrap_or(0), received.unwrap_or(0))
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
            bidirectional(&mut client, &mut upstream).await
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
}
