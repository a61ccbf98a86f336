//! Reaching the API through any of several servers. The agent's client
//! talks to a local port; each connection to it is forwarded to the
//! server that last worked, or the next one that accepts. Watches cut by
//! a server going away reconnect through the same port and land on
//! another server, resuming from their last resourceVersion.
//! (Every server's certificate names 127.0.0.1, so TLS checks still hold.)

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to the first server that answers, starting with the one that
/// worked last.
async fn connect(servers: &[SocketAddr], preferred: &AtomicUsize) -> Option<TcpStream> {
    let start = preferred.load(Ordering::Relaxed);
    for offset in 0..servers.len() {
        let i = (start + offset) % servers.len();
        if let Ok(Ok(stream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(servers[i])).await {
            preferred.store(i, Ordering::Relaxed);
            return Some(stream);
        }
    }
    None
}

/// Starts the local forwarder; returns the address the client should use.
pub async fn failover(servers: Vec<SocketAddr>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
    let servers: Arc<[SocketAddr]> = servers.into();
    let preferred = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { continue };
            let (servers, preferred) = (servers.clone(), preferred.clone());
            tokio::spawn(async move {
                let Some(mut server) = connect(&servers, &preferred).await else {
                    tracing::warn!("no API server reachable");
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn server(tag: u8) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (addr, tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(&[tag]).await;
            }
        }))
    }

    async fn ask(addr: SocketAddr) -> u8 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        b[0]
    }

    #[tokio::test]
    async fn moves_on_when_a_server_goes() {
        let (a, task_a) = server(1).await;
        let (b, _task_b) = server(2).await;
        let local = failover(vec![a, b]).await.unwrap();
        assert_eq!(ask(local).await, 1);
        task_a.abort();
        let _ = task_a.await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ask(local).await, 2);
        assert_eq!(ask(local).await, 2, "stays with the server that works");
    }
}
