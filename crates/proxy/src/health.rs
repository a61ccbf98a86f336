//! The health check node port of a `LoadBalancer` service with
//! `externalTrafficPolicy: Local`, answered as kube-proxy answers it: 200
//! with the count of local ready endpoints, 503 when there are none.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct HealthState {
    pub namespace: String,
    pub name: String,
    pub local_endpoints: AtomicUsize,
}

fn response(state: &HealthState) -> String {
    let n = state.local_endpoints.load(Ordering::Relaxed);
    let body = serde_json::json!({
        "service": {"namespace": state.namespace, "name": state.name},
        "localEndpoints": n,
        "serviceProxyHealthy": true,
    })
    .to_string();
    let status = if n > 0 { "200 OK" } else { "503 Service Unavailable" };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n\
         X-Load-Balancing-Endpoint-Weight: {n}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Serves the health check on `addr` until the task is aborted.
pub async fn serve(addr: SocketAddr, state: Arc<HealthState>) {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot serve the health check node port");
            return;
        }
    };
    loop {
        let Ok((mut conn, _)) = listener.accept().await else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn.write_all(response(&state).as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_local_count() {
        let state = HealthState { namespace: "default".into(), name: "fleet".into(), local_endpoints: AtomicUsize::new(0) };
        assert!(response(&state).starts_with("HTTP/1.1 503"));
        state.local_endpoints.store(2, Ordering::Relaxed);
        let r = response(&state);
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("X-Load-Balancing-Endpoint-Weight: 2") && r.contains("\"localEndpoints\":2"),
            "{r}"
        );
    }
}
