//! The Prometheus endpoint: every part's metrics under `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::http::header;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::lifecycle::Lifecycle;

/// Serves the registry's metrics in the text format, as a part of `life`.
pub async fn serve(listen: SocketAddr, registry: Registry, life: &mut Lifecycle) -> anyhow::Result<SocketAddr> {
    let registry = Arc::new(registry);
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                let mut text = String::new();
                let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
                ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("--metrics-listen {listen}"))?;
    let local = listener.local_addr()?;
    let token = life.token.clone();
    life.spawn("metrics endpoint", async move {
        axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await?;
        Ok(())
    });
    Ok(local)
}
