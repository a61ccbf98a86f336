//! The control plane: the API server over a store, the built-in objects,
//! and the controllers (which are API clients like any other).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use wharf_apiserver::alloc::Allocator;
use wharf_apiserver::{pki, App};
use wharf_kube::ControllerMetrics;

use crate::cli::ServerArgs;
use crate::lifecycle::Lifecycle;

pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.kubeconfig")
}

pub struct ControlPlane {
    /// Where clients reach the API.
    pub endpoint: SocketAddr,
    pub kubeconfig: PathBuf,
    /// The admin's client, for the server's own start-up notes only.
    pub client: kube::Client,
    pub allocator: Allocator,
    pki_dir: PathBuf,
}

/// How long the certificates of in-process parts last: they live only in
/// memory and are issued afresh at every start.
const IN_PROCESS_CERTIFICATE: std::time::Duration = std::time::Duration::from_secs(5 * 365 * 24 * 3600);

impl ControlPlane {
    /// A client of this API server acting as `user` in `group`, with a
    /// certificate from the cluster CA that never leaves memory: each
    /// in-process part gets only its own role's rights.
    pub async fn client_as(&self, user: &str, group: &str) -> anyhow::Result<kube::Client> {
        let (cert, key) = pki::client_certificate(&self.pki_dir, user, Some(group), IN_PROCESS_CERTIFICATE)
            .with_context(|| format!("issuing a certificate for {user}"))?;
        let ca = std::fs::read_to_string(self.pki_dir.join("ca.crt")).context("reading the cluster CA")?;
        let text = pki::certificate_kubeconfig(&ca, &format!("https://{}", self.endpoint), user, &cert, &key);
        crate::client::from_kubeconfig_text(&text).await
    }

    /// The controllers' client (`system:wharf:controllers`).
    pub async fn controllers_client(&self) -> anyhow::Result<kube::Client> {
        self.client_as(wharf_auth::defaults::CONTROLLERS, wharf_auth::defaults::CONTROLLERS).await
    }

    /// A node's client (`system:node:<name>` in `system:nodes`).
    pub async fn node_client(&self, node: &str) -> anyhow::Result<kube::Client> {
        self.client_as(&format!("{}{node}", wharf_auth::user::NODE_PREFIX), wharf_auth::user::NODES).await
    }
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

fn api_limits(args: &ServerArgs) -> wharf_apiserver::limits::ApiLimits {
    wharf_apiserver::limits::ApiLimits {
        connections: args.api_max_connections,
        requests_in_flight: args.max_requests_inflight,
        mutating_in_flight: args.max_mutating_requests_inflight,
    }
}

/// Creates the built-in objects; a store that fails (etcd restarting) is
/// retried with backoff, so a server never gives up on a passing outage.
async fn bootstrap(registry: &wharf_apiserver::Registry, endpoint: SocketAddr, token: &CancellationToken) -> anyhow::Result<()> {
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        match wharf_apiserver::bootstrap(registry, endpoint).await {
            Ok(()) => return Ok(()),
            Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "creating the built-in objects failed"),
        }
        tokio::select! {
            _ = token.cancelled() => anyhow::bail!("stopped before the built-in objects were created"),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
    }
}

/// Where a control plane runs and what it serves beside the API.
pub struct Site<'a> {
    /// Pods without a node go to this one (`wharf up`).
    pub default_node: Option<&'a str>,
    pub advertise_fallback: std::net::IpAddr,
    pub extra_sans: &'a [String],
    /// For the dashboard's DNS names, and the DNS it asks (else kube-dns).
    pub cluster_domain: &'a str,
    pub dns: Option<std::net::SocketAddr>,
}

/// Starts the API server on `store` (as a part of `life`), creates the
/// built-in objects and writes the admin kubeconfig.
pub async fn start(
    args: &ServerArgs,
    store: Arc<dyn wharf_store::Store>,
    site: Site<'_>,
    life: &mut Lifecycle,
    registry: &mut Registry,
) -> anyhow::Result<ControlPlane> {
    let Site { default_node, advertise_fallback, extra_sans, cluster_domain, dns } = site;
    let data_dir = &args.data.data_dir;
    let mut hosts = vec![advertised(args.api_listen, advertise_fallback).ip().to_string()];
    hosts.extend(["localhost".to_string(), "127.0.0.1".to_string(), advertise_fallback.to_string()]);
    hosts.extend(extra_sans.iter().cloned());
    let pki_dir = data_dir.join("pki");
    let creds = pki::load_or_create(&pki_dir, &hosts).context("preparing certificates")?;

    let encryption_config = args.encryption_provider_config.clone().unwrap_or_else(|| data_dir.join("encryption-config.yaml"));
    let encryption = wharf_apiserver::encryption::load_or_create(&encryption_config).context("--encryption-provider-config")?;
    let store: Arc<dyn wharf_store::Store> = Arc::new(wharf_store::Encrypted::new(store, encryption));
    let allocator = Allocator::new(args.service_cidr.clone(), args.service_node_port_range.clone())
        .with_external_ips(args.external_ip_cidrs.clone(), vec![args.lb_pool.into()]);
    let mut api_registry = wharf_apiserver::Registry::new(store, allocator.clone());
    if let Some(node) = default_node {
        api_registry = api_registry.with_default_node(node);
    }
    let metrics = wharf_apiserver::ApiMetrics::default();
    metrics.register(registry);
    let tokens = match &args.token_auth_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("--token-auth-file {}", path.display()))?;
            wharf_auth::tokens::TokenFile::parse(&text).with_context(|| format!("--token-auth-file {}", path.display()))?
        }
        None => Default::default(),
    };
    let audit_path = data_dir.join("audit.log");
    let audit = wharf_apiserver::audit::AuditLog::open(&audit_path, args.audit_log_max_size_mb.saturating_mul(1 << 20))
        .with_context(|| format!("opening {}", audit_path.display()))?;
    let auth =
        wharf_apiserver::authz::Auth::new(&creds, tokens, audit, api_registry.clone(), args.node_certificate_validity, life.token.clone())
            .map_err(|e| anyhow::anyhow!("the cluster CA: {e}"))?;
    let app = App {
        registry: api_registry.clone(),
        auth,
        shutdown: life.token.clone(),
        metrics,
        tunnels: wharf_apiserver::remote::tunnels(),
        bookmark_interval: args.watch_bookmark_interval,
    };
    let api_url = Arc::new(std::sync::OnceLock::new());
    let dashboard = wharf_dashboard::router(wharf_dashboard::DashboardConfig {
        sessions: app.auth.authenticator.sessions.clone(),
        api_url: api_url.clone(),
        ca_pem: creds.ca_cert_pem.clone(),
        cluster_domain: cluster_domain.to_string(),
        dns,
    });
    let config = wharf_apiserver::ApiServerConfig { listen: args.api_listen, limits: api_limits(args), ui: Some(dashboard) };
    let server = wharf_apiserver::serve(config, app, &creds).await.context("--api-listen")?;
    let endpoint = advertised(server.local_addr, advertise_fallback);
    let _ = api_url.set(format!("https://{endpoint}"));
    bootstrap(&api_registry, endpoint, &life.token).await?;
    let task = server.task;
    life.spawn("API server", async move {
        task.await?;
        Ok(())
    });
    let expiry = wharf_apiserver::event_ttl::run(api_registry.clone(), args.event_ttl, life.token.clone());
    life.spawn("event expiry", async move {
        expiry.await;
        Ok(())
    });

    let kubeconfig = kubeconfig_path(data_dir);
    let kubeconfig_text = pki::kubeconfig(&creds, &format!("https://{endpoint}"));
    pki::write_private(&kubeconfig, &kubeconfig_text).with_context(|| format!("writing {}", kubeconfig.display()))?;
    let client = crate::client::from_kubeconfig_text(&kubeconfig_text).await?;
    Ok(ControlPlane { endpoint, kubeconfig, client, allocator, pki_dir })
}

/// The cluster's controllers, running together until `token` is cancelled.
pub async fn controllers(client: kube::Client, args: ServerArgs, metrics: ControllerMetrics, token: CancellationToken) {
    let endpointslices = wharf_controllers::EndpointSliceController::new(client.clone(), metrics.handles("endpointslice"));
    let lb = Arc::new(wharf_controllers::LoadBalancerController::new(client.clone(), args.lb_pool, metrics.handles("loadbalancer")));
    let mirroring = Arc::new(wharf_controllers::MirroringController::new(client.clone(), metrics.handles("mirroring")));
    let nodes =
        Arc::new(wharf_controllers::NodeLifecycleController::new(client, args.node_monitor_grace_period, metrics.handles("nodelifecycle")));
    tokio::join!(endpointslices.run(token.clone()), lb.run(token.clone()), mirroring.run(token.clone()), nodes.run(token));
}

/// Runs the controllers only while `leading` says this server leads; a
/// lost leadership stops every controller and its workers.
pub async fn controllers_when_leading(
    client: kube::Client,
    args: ServerArgs,
    metrics: ControllerMetrics,
    mut leading: tokio::sync::watch::Receiver<bool>,
    token: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            led = leading.wait_for(|l| *l) => if led.is_err() { return },
        }
        tracing::info!("leading: starting the controllers");
        let term = token.child_token();
        let running = tokio::spawn(controllers(client.clone(), args.clone(), metrics.clone(), term.clone()));
        tokio::select! {
            _ = token.cancelled() => {}
            _ = leading.wait_for(|l| !*l) => tracing::warn!("no longer leading: stopping the controllers"),
        }
        term.cancel();
        let _ = running.await;
        if token.is_cancelled() {
            return;
        }
    }
}
