//! A node's parts: its agent, the cluster DNS and the service proxy, with
//! one metrics endpoint. All are API clients.

use std::net::SocketAddr;

use anyhow::Context;
use ipnet::Ipv4Net;
use tokio::task::JoinHandle;

use crate::cli::NodeArgs;

/// The tenth address of the service range: the cluster DNS service.
pub fn dns_service_ip(cidr: Ipv4Net) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(cidr.network()).wrapping_add(10))
}

/// Where the cluster DNS listens: `--dns-listen`, else the DNS service IP.
pub fn dns_listen(args: &NodeArgs, cidr: Ipv4Net) -> SocketAddr {
    args.dns_listen.unwrap_or_else(|| SocketAddr::new(dns_service_ip(cidr).into(), 53))
}

fn dns_config(args: &NodeArgs, cidr: Ipv4Net) -> anyhow::Result<wharf_dns::DnsConfig> {
    let listen = dns_listen(args, cidr);
    let upstreams = match args.dns_upstream.trim() {
        "none" => Vec::new(),
        "" => {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            wharf_dns::forward::upstreams_from_resolv_conf(&text, &[listen.ip(), dns_service_ip(cidr).into()])
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
            dns_ip: dns_service_ip(cidr),
            service_cidr: cidr,
        },
        upstreams,
        workers: args.dns_workers.unwrap_or_else(cpus),
    })
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn proxy_config(args: &NodeArgs, dns: SocketAddr) -> wharf_proxy::ProxyConfig {
    use wharf_proxy::model::Protocol;
    wharf_proxy::ProxyConfig {
        node_name: args.node_name.clone(),
        node_ip: args.node_ip,
        drain_timeout: args.drain_timeout,
        udp_idle: args.udp_idle_timeout,
        workers: args.proxy_workers.unwrap_or_else(cpus),
        // The DNS server answers on its own service address.
        reserved: [(dns, Protocol::Udp), (dns, Protocol::Tcp)].into(),
    }
}

pub struct Node {
    pub metrics: SocketAddr,
    pub dns: SocketAddr,
    pub tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

/// Starts the node's parts; each task ends only on failure.
pub async fn start(client: kube::Client, args: &NodeArgs, cidr: Ipv4Net) -> anyhow::Result<Node> {
    let mut registry = prometheus_client::registry::Registry::default();
    let dns_config = dns_config(args, cidr)?;
    let dns_addr = dns_config.listen;
    let dns_metrics = wharf_dns::DnsMetrics::default();
    dns_metrics.register(&mut registry);
    let dns = wharf_dns::start(dns_config, client.clone(), dns_metrics).await?;
    let proxy_metrics = wharf_proxy::ProxyMetrics::default();
    proxy_metrics.register(&mut registry);
    let proxy_config = proxy_config(args, dns_addr);
    let (metrics, metrics_task) = crate::metrics::serve(args.metrics_listen, registry).await?;
    let agent_config = wharf_agent::AgentConfig { node_name: args.node_name.clone(), node_ip: args.node_ip, heartbeat: args.node_heartbeat };
    let agent_client = client.clone();
    let tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)> = vec![
        ("node agent", tokio::spawn(async move { Ok(wharf_agent::run(agent_client, agent_config).await?) })),
        ("service proxy", tokio::spawn(async move { Ok(wharf_proxy::run(client, proxy_config, proxy_metrics).await?) })),
        ("cluster DNS", tokio::spawn(async move {
            futures::future::select_all(dns.tasks).await.0?;
            anyhow::bail!("stopped")
        })),
        ("metrics endpoint", tokio::spawn(async move {
            metrics_task.await?;
            anyhow::bail!("stopped")
        })),
    ];
    Ok(Node { metrics, dns: dns_addr, tasks })
}

/// Waits until a task fails or the process is asked to stop.
pub async fn supervise(tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>) -> anyhow::Result<()> {
    let (names, handles): (Vec<&str>, Vec<_>) = tasks.into_iter().unzip();
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
        (result, i, _) = futures::future::select_all(handles) => {
            let name = names[i];
            match result {
                Ok(Ok(())) => anyhow::bail!("{name} stopped"),
                Ok(Err(e)) => Err(e.context(format!("{name} failed"))),
                Err(e) => Err(anyhow::Error::new(e).context(format!("{name} panicked"))),
            }
        }
    }
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
