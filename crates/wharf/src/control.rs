//! The control plane: the API server over a store, the built-in objects,
//! and the controllers (which are API clients like any other).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use wharf_apiserver::alloc::Allocator;
use wharf_apiserver::{pki, App, Registry};

use crate::cli::ServerArgs;

pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.kubeconfig")
}

pub struct ControlPlane {
    /// Where clients reach the API.
    pub endpoint: SocketAddr,
    pub kubeconfig: PathBuf,
    pub client: kube::Client,
    pub allocator: Allocator,
    pub server: JoinHandle<()>,
}

/// The address clients use: the listen address, or `fallback` when
/// listening on all addresses.
fn advertised(listen: SocketAddr, fallback: std::net::IpAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(fallback, listen.port())
    } else {
        listen
    }
}

/// Starts the API server on `store`, creates the built-in objects and
/// writes the admin kubeconfig.
pub async fn start(
    args: &ServerArgs,
    store: Arc<dyn wharf_store::Store>,
    default_node: Option<&str>,
    advertise_fallback: std::net::IpAddr,
    extra_sans: &[String],
) -> anyhow::Result<ControlPlane> {
    let data_dir = &args.data.data_dir;
    let mut hosts = vec![advertised(args.api_listen, advertise_fallback).ip().to_string()];
    hosts.extend(["localhost".to_string(), "127.0.0.1".to_string(), advertise_fallback.to_string()]);
    hosts.extend(extra_sans.iter().cloned());
    let creds = pki::load_or_create(&data_dir.join("pki"), &hosts).context("preparing certificates")?;

    let allocator = Allocator::new(args.service_cidr, args.service_node_port_range.clone());
    let mut registry = Registry::new(store, allocator.clone());
    if let Some(node) = default_node {
        registry = registry.with_default_node(node);
    }
    let app = App { registry: registry.clone(), token: creds.admin_token.clone().into() };
    let server = wharf_apiserver::serve(wharf_apiserver::ApiServerConfig { listen: args.api_listen }, app, &creds)
        .await
        .context("--api-listen")?;
    let endpoint = advertised(server.local_addr, advertise_fallback);
    wharf_apiserver::bootstrap(&registry, endpoint).await.context("creating built-in objects")?;

    let kubeconfig = kubeconfig_path(data_dir);
    let kubeconfig_text = pki::kubeconfig(&creds, &format!("https://{endpoint}"));
    std::fs::write(&kubeconfig, &kubeconfig_text).with_context(|| format!("writing {}", kubeconfig.display()))?;
    let client = crate::client::from_kubeconfig_text(&kubeconfig_text).await?;
    Ok(ControlPlane { endpoint, kubeconfig, client, allocator, server: server.task })
}

/// The cluster's controllers, running together.
pub fn controllers(client: kube::Client, args: &ServerArgs) -> JoinHandle<()> {
    let lb_pool = args.lb_pool;
    let grace = args.node_monitor_grace_period;
    tokio::spawn(async move {
        tokio::join!(
            wharf_controllers::EndpointSliceController::new(client.clone()).run(),
            wharf_controllers::LoadBalancerController::new(client.clone(), lb_pool).run(),
            wharf_controllers::NodeLifecycleController::new(client, grace).run(),
        );
    })
}

/// Runs the controllers only while `leading` says this server leads.
pub fn controllers_when_leading(client: kube::Client, args: &ServerArgs, mut leading: tokio::sync::watch::Receiver<bool>) -> JoinHandle<()> {
    let args = args.clone();
    tokio::spawn(async move {
        loop {
            if leading.wait_for(|l| *l).await.is_err() {
                return;
            }
            tracing::info!("leading: starting the controllers");
            let running = controllers(client.clone(), &args);
            let _ = leading.wait_for(|l| !*l).await;
            tracing::info!("no longer leading: stopping the controllers");
            running.abort();
        }
    })
}
