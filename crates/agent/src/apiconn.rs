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
use tokio_util::sync::CancellationToken;

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

/// Starts the local forwarder, which runs until `token` is cancelled;
/// returns the address the client should use.
pub async fn failover(servers: Vec<SocketAddr>, token: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let local = listener.local_addr()?;
    let servers: Arc<[SocketAddr]> = servers.into();
    let preferred = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (mut client, _) = tokio::select! {
                _ = token.cancelled() => return,
                accepted = wharf_limits::accept(&listener, "API failover port") => accepted,
            };
            let (servers, preferred, token) = (servers.clone(), preferred.clone(), token.clone());
            tokio::spawn(async move {
                let Some(mut server) = connect(&servers, &preferred).await else {
                    tracing::warn!("no API server reachable");
                    return;
                };
                let _ = client.set_nodelay(true);
                // A server gone without a FIN is noticed by keepalive; the
                // client's connection then closes and it reconnects here.
                if let Err(e) = wharf_kube::client::tune_socket(&server) {
                    tracing::warn!(error = %e, "API connection: cannot enable keepalive");
                }
                tokio::select! {
                    _ = token.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                }
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
        (
            addr,
            tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    let _ = s.write_all(&[tag]).await;
                }
            }),
        )
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
        let local = failover(vec![a, b], CancellationToken::new()).await.unwrap();
        assert_eq!(ask(local).await, 1);
        task_a.abort();
        let _ = task_a.await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ask(local).await, 2);
        assert_eq!(ask(local).await, 2, "stays with the server that works");
    }
}
