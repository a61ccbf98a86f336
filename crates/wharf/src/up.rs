//! `wharf up`: the store, the API server and (as they land) the
//! controllers, DNS and proxy, on one machine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use wharf_apiserver::alloc::Allocator;
use wharf_apiserver::{pki, App, Registry};
use wharf_store::EmbeddedStore;

use crate::cli::UpArgs;
use wharf_agent::AgentConfig;

/// How often the node agent refreshes its Node's Ready condition.
const NODE_HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn kubeconfig_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.kubeconfig")
}

/// The address clients use: the listen address, or the node IP when
/// listening on all addresses.
fn advertised(listen: SocketAddr, args: &UpArgs) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(args.node_ip, listen.port())
    } else {
        listen
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = &args.data.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let store = EmbeddedStore::open(&data_dir.join("state.redb")).context("opening the store")?;
    let store: Arc<dyn wharf_store::Store> = Arc::new(store);

    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string(), args.node_ip.to_string()];
    hosts.insert(0, advertised(args.api_listen, &args).ip().to_string());
    let creds = pki::load_or_create(&data_dir.join("pki"), &hosts).context("preparing certificates")?;

    let allocator = Allocator::new(args.service_cidr, args.service_node_port_range.clone());
    let registry = Registry::new(store, allocator.clone()).with_default_node(&args.node_name);
    let app = App { registry: registry.clone(), token: creds.admin_token.clone().into() };
    let server = wharf_apiserver::serve(wharf_apiserver::ApiServerConfig { listen: args.api_listen }, app, &creds)
        .await
        .context("--api-listen")?;
    let endpoint = advertised(server.local_addr, &args);
    wharf_apiserver::bootstrap(&registry, endpoint).await.context("creating built-in objects")?;

    let kubeconfig = kubeconfig_path(data_dir);
    let kubeconfig_text = pki::kubeconfig(&creds, &format!("https://{endpoint}"));
    std::fs::write(&kubeconfig, &kubeconfig_text).with_context(|| format!("writing {}", kubeconfig.display()))?;

    // Controllers, the node agent and the DNS are API clients like any other.
    let client = crate::client::from_kubeconfig_text(&kubeconfig_text).await?;
    let mut registry = prometheus_client::registry::Registry::default();
    let dns_metrics = wharf_dns::DnsMetrics::default();
    dns_metrics.register(&mut registry);
    let dns_config = dns_config(&args, &allocator)?;
    let proxy_config = proxy_config(&args, dns_config.listen);
    let dns = wharf_dns::start(dns_config, client.clone(), dns_metrics).await?;
    let proxy_metrics = wharf_proxy::ProxyMetrics::default();
    proxy_metrics.register(&mut registry);
    let proxy = tokio::spawn(wharf_proxy::run(client.clone(), proxy_config, proxy_metrics));
    let load_balancers = tokio::spawn(wharf_controllers::LoadBalancerController::new(client.clone(), args.lb_pool).run());
    let (metrics_addr, metrics) = crate::metrics::serve(args.metrics_listen, registry).await?;
    let controller = tokio::spawn(wharf_controllers::EndpointSliceController::new(client.clone()).run());
    let agent_config = AgentConfig { node_name: args.node_name.clone(), node_ip: args.node_ip, heartbeat: NODE_HEARTBEAT };
    let agent = tokio::spawn(wharf_agent::run(client, agent_config));

    print_notes(&args, endpoint, &allocator, &kubeconfig, metrics_addr);
    let dns_tasks = futures::future::select_all(dns.tasks);
    tokio::select! {
        _ = dns_tasks => anyhow::bail!("DNS server stopped"),
        _ = metrics => anyhow::bail!("metrics endpoint stopped"),
        result = proxy => result.context("service proxy stopped")?.context("service proxy")?,
        result = load_balancers => result.context("load balancer controller stopped")?,
        _ = shutdown_signal() => tracing::info!("shutting down"),
        result = server.task => result.context("API server stopped")?,
        result = controller => result.context("endpointslice controller stopped")?,
        result = agent => result.context("node agent stopped")?.context("node agent")?,
    }
    Ok(())
}

/// Where the cluster DNS listens: `--dns-listen`, else the DNS service IP.
fn dns_listen(args: &UpArgs, allocator: &Allocator) -> SocketAddr {
    args.dns_listen.unwrap_or_else(|| SocketAddr::new(allocator.nth_ip(10).into(), 53))
}

fn proxy_config(args: &UpArgs, dns: SocketAddr) -> wharf_proxy::ProxyConfig {
    use wharf_proxy::model::Protocol;
    wharf_proxy::ProxyConfig {
        node_name: args.node_name.clone(),
        node_ip: args.node_ip,
        drain_timeout: args.drain_timeout,
        udp_idle: args.udp_idle_timeout,
        workers: args.proxy_workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        // The DNS server answers on its own service address.
        reserved: [(dns, Protocol::Udp), (dns, Protocol::Tcp)].into(),
    }
}

fn dns_config(args: &UpArgs, allocator: &Allocator) -> anyhow::Result<wharf_dns::DnsConfig> {
    let listen = dns_listen(args, allocator);
    let upstreams = match args.dns_upstream.trim() {
        "none" => Vec::new(),
        "" => {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            wharf_dns::forward::upstreams_from_resolv_conf(&text, &[listen.ip(), allocator.nth_ip(10).into()])
        }
        list => list
            .split(',')
            .map(|s| {
                let s = s.trim();
                s.parse::<SocketAddr>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .with_context(|| format!("--dns-upstream: {s:?} is not IP[:PORT]"))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    Ok(wharf_dns::DnsConfig {
        listen,
        zone: wharf_dns::ZoneConfig {
            domain: args.cluster_domain.trim_end_matches('.').to_lowercase(),
            ttl: args.dns_ttl,
            dns_ip: allocator.nth_ip(10),
            service_cidr: allocator.cidr(),
        },
        upstreams,
        workers: args.dns_workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    })
}

fn print_notes(args: &UpArgs, endpoint: SocketAddr, allocator: &Allocator, kubeconfig: &Path, metrics: SocketAddr) {
    let range = &args.service_node_port_range;
    println!(
        "wharf is up.

  API server:    https://{endpoint}
  Service CIDR:  {cidr}
  Cluster DNS:   {dns} (domain {domain})
  Node ports:    {low}-{high} on {node_ip} (node {node})
  Load balancer: {lb_pool}
  Metrics:       http://{metrics}/metrics
  Data dir:      {data}

To use it with kubectl:

  export KUBECONFIG={kubeconfig}
  kubectl get services --all-namespaces
",
        cidr = allocator.cidr(),
        dns = dns_listen(args, allocator),
        domain = args.cluster_domain,
        low = range.start(),
        high = range.end(),
        node_ip = args.node_ip,
        node = args.node_name,
        lb_pool = args.lb_pool,
        data = args.data.data_dir.display(),
        kubeconfig = kubeconfig.display(),
    );
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
