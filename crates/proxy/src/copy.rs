//! Moving bytes between two TCP sockets. Small exchanges go through a
//! lazily allocated buffer; once a read fills it, the direction switches
//! to splice(2) through a pipe, so bulk data never enters user space
//! (HAProxy's "splice-auto").

use std::io;
use std::os::fd::OwnedFd;

use nix::fcntl::{splice, OFlag, SpliceFFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The first buffer a direction uses; a read that fills it means bulk.
const SMALL_BUFFER: usize = 16 * 1024;
/// How much one splice call may move.
const SPLICE_CHUNK: usize = 1 << 20;

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        to.writable().await?;
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if would_block(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        // A bigger pipe moves more per call; failing to grow it is harmless.
        let _ = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(SPLICE_CHUNK as i32));
        Ok(Pipe { read, write })
    }
}

const FLAGS: SpliceFFlags = SpliceFFlags::SPLICE_F_MOVE.union(SpliceFFlags::SPLICE_F_NONBLOCK);

/// Splices what `from` has into the pipe, then all of it out to `to`.
/// Returns the bytes moved; 0 at end of stream.
async fn splice_once(from: &TcpStream, to: &TcpStream, pipe: &Pipe) -> io::Result<usize> {
    let n = loop {
        from.readable().await?;
        match from.try_io(Interest::READABLE, || splice(from, None, &pipe.write, None, SPLICE_CHUNK, FLAGS).map_err(io::Error::from)) {
            Ok(n) => break n,
            Err(e) if would_block(&e) => continue,
            Err(e) => return Err(e),
        }
    };
    let mut left = n;
    while left > 0 {
        to.writable().await?;
        match to.try_io(Interest::WRITABLE, || splice(&pipe.read, None, to, None, left, FLAGS).map_err(io::Error::from)) {
            Ok(m) => left -= m,
            Err(e) if would_block(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Copies `from` to `to` until end of stream, then shuts down `to`'s
/// sending side. Returns the bytes copied.
pub async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let mut total = 0u64;
    let mut buffer: Option<Vec<u8>> = None;
    let mut pipe: Option<Pipe> = None;
    loop {
        let n = match &pipe {
            Some(pipe) => splice_once(from, to, pipe).await?,
            None => {
                let buf = buffer.get_or_insert_with(|| vec![0u8; SMALL_BUFFER]);
                let n = loop {
                    from.readable().await?;
                    match from.try_read(buf) {
                        Ok(n) => break n,
                        Err(e) if would_block(&e) => continue,
                        Err(e) => return Err(e),
                    }
                };
                write_all(to, &buf[..n]).await?;
                if n == buf.len() {
                    pipe = Some(Pipe::new()?);
                    buffer = None;
                }
                n
            }
        };
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
    Ok(total)
}

/// Copies both ways: (client→endpoint, endpoint→client). A direction
/// that reaches end of stream half-closes and the other goes on; an error
/// on either (a reset) ends both, so neither side is left waiting.
pub async fn bidirectional(client: &TcpStream, endpoint: &TcpStream) -> (u64, u64) {
    let up = one_way(client, endpoint);
    let down = one_way(endpoint, client);
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
            let (client, _) = front.accept().await.unwrap();
            let upstream = TcpStream::connect(echo_addr).await.unwrap();
            bidirectional(&client, &upstream).await
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
