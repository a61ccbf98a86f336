//! A node's parts: its agent, the cluster DNS and the service proxy, with
//! one metrics endpoint. All are API clients.

use std::net::SocketAddr;

use anyhow::Context;
use prometheus_client::registry::Registry;
use wharf_api::ipfamily::ServiceCidrs;

use crate::cli::NodeArgs;
use crate::lifecycle::Lifecycle;

/// The tenth address of the primary service range: the cluster DNS service.
pub fn dns_service_ip(cidrs: &ServiceCidrs) -> std::net::IpAddr {
    cidrs.nth_primary(10)
}

/// Where the cluster DNS listens: `--dns-listen`, else the DNS service IP.
pub fn dns_listen(args: &NodeArgs, cidrs: &ServiceCidrs) -> SocketAddr {
    args.dns_listen.unwrap_or_else(|| SocketAddr::new(dns_service_ip(cidrs), 53))
}

fn dns_config(args: &NodeArgs, cidrs: &ServiceCidrs) -> anyhow::Result<wharf_dns::DnsConfig> {
    let listen = dns_listen(args, cidrs);
    let upstreams = match args.dns_upstream.trim() {
        "none" => Vec::new(),
        "" => {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            wharf_dns::forward::upstreams_from_resolv_conf(&text, &[listen.ip(), dns_service_ip(cidrs)])
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
            dns_ip: dns_service_ip(cidrs),
            service_cidrs: cidrs.clone(),
        },
        upstreams,
        workers: args.dns_workers.unwrap_or_else(cpus),
        recursion_from: recursion_from(args, cidrs),
        tcp: wharf_dns::server::TcpLimits { connections: args.dns_tcp_connections, ..Default::default() },
        node_name: args.node_name.clone(),
        status_every: args.node_status_interval,
    })
}

/// The uid and gid of `name`, which commands started for users drop to
/// when wharf runs as root (otherwise they run as wharf's own user).
fn unprivileged_user(flag: &str, name: &str) -> anyhow::Result<Option<wharf_agent::probe::ProbeUser>> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    let user = nix::unistd::User::from_name(name)
        .with_context(|| format!("{flag} {name}"))?
        .with_context(|| format!("{flag} {name}: no such user"))?;
    Ok(Some(wharf_agent::probe::ProbeUser { uid: user.uid.as_raw(), gid: user.gid.as_raw() }))
}

/// What this node lets probes do.
fn probe_policy(args: &NodeArgs) -> anyhow::Result<wharf_agent::probe::ProbePolicy> {
    let exec_user = if args.allow_exec_probes { unprivileged_user("--probe-user", &args.probe_user)? } else { None };
    Ok(wharf_agent::probe::ProbePolicy { allow_exec: args.allow_exec_probes, exec_user, host_cidrs: args.probe_host_cidrs.clone() })
}

/// What `kubectl exec` may do on this node; `exec_default` is whether it
/// is allowed without `--allow-exec` (only on the single-machine `up`).
/// How the API servers reach this node for `kubectl exec` and
/// `port-forward`: a tunnel through each of `clients`, one per server, so
/// whichever server a user's kubectl reaches holds one.
pub struct RemoteAccess {
    pub clients: Vec<kube::Client>,
    /// `--allow-exec` when not given.
    pub allow_exec_default: bool,
}

fn remote_config(args: &NodeArgs, exec_default: bool) -> anyhow::Result<wharf_agent::remote::RemoteConfig> {
    let allow_exec = args.allow_exec.unwrap_or(exec_default);
    Ok(wharf_agent::remote::RemoteConfig {
        node_name: args.node_name.clone(),
        node_ip: args.node_ip.primary(),
        allow_exec,
        exec_user: if allow_exec { unprivileged_user("--exec-user", &args.exec_user)? } else { None },
        cluster_domain: args.cluster_domain.clone(),
    })
}

/// `--dns-recursion-cidrs`, or loopback, the node IP and the service ranges.
fn recursion_from(args: &NodeArgs, cidrs: &ServiceCidrs) -> Vec<ipnet::IpNet> {
    if !args.dns_recursion_cidrs.is_empty() {
        return args.dns_recursion_cidrs.clone();
    }
    let mut from = vec![
        ipnet::Ipv4Net::new_assert(std::net::Ipv4Addr::new(127, 0, 0, 0), 8).into(),
        ipnet::Ipv6Net::from(std::net::Ipv6Addr::LOCALHOST).into(),
    ];
    from.extend(args.node_ip.iter().map(ipnet::IpNet::from));
    from.extend(cidrs.iter());
    from
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn proxy_config(args: &NodeArgs, cidrs: &ServiceCidrs, dns: SocketAddr) -> wharf_proxy::ProxyConfig {
    use wharf_proxy::model::Protocol;
    wharf_proxy::ProxyConfig {
        node_name: args.node_name.clone(),
        node_ips: args.node_ip.clone(),
        service_cidrs: cidrs.clone(),
        limits: wharf_proxy::dataplane::ProxyLimits {
            drain: args.drain_timeout,
            udp_idle: args.udp_idle_timeout,
            tcp: wharf_proxy::copy::Timeouts { idle: args.proxy_tcp_idle_timeout, half_closed: args.proxy_tcp_half_closed_timeout },
            connections: args.proxy_max_connections,
            connections_per_frontend: args.proxy_max_connections_per_frontend,
            udp_flows: args.proxy_max_udp_flows,
            ..Default::default()
        },
        workers: args.proxy_workers.unwrap_or_else(cpus),
        // The DNS server answers on its own service address.
        reserved: [(dns, Protocol::Udp), (dns, Protocol::Tcp)].into(),
        status_every: args.node_status_interval,
        mode: args.proxy_mode,
    }
}

pub struct Node {
    pub dns: SocketAddr,
}

/// Starts the node's parts as parts of `life`, their metrics in `registry`.
pub async fn start(
    client: kube::Client,
    args: &NodeArgs,
    cidrs: &ServiceCidrs,
    grace: std::time::Duration,
    remote: RemoteAccess,
    life: &mut Lifecycle,
    registry: &mut Registry,
) -> anyhow::Result<Node> {
    let token = life.token.clone();
    let dns_config = dns_config(args, cidrs)?;
    let dns_addr = dns_config.listen;
    let dns_metrics = wharf_dns::DnsMetrics::default();
    dns_metrics.register(registry);
    let dns = wharf_dns::start(dns_config, client.clone(), dns_metrics, token.clone()).await?;
    let proxy_metrics = wharf_proxy::ProxyMetrics::default();
    proxy_metrics.register(registry);
    let proxy_config = proxy_config(args, cidrs, dns_addr);
    let agent_metrics = wharf_agent::metrics::AgentMetrics::default();
    agent_metrics.register(registry);
    let agent_config = wharf_agent::AgentConfig {
        node_name: args.node_name.clone(),
        node_ips: args.node_ip.clone(),
        heartbeat: args.node_heartbeat,
        metrics: agent_metrics,
        probes: probe_policy(args)?,
    };
    let remote_token = token.clone();
    let config = remote_config(args, remote.allow_exec_default)?;
    life.spawn("exec tunnels", async move {
        wharf_agent::remote::serve(remote.clients, config, remote_token).await;
        Ok(())
    });
    let (agent_client, agent_token) = (client.clone(), token.clone());
    life.spawn("node agent", async move { Ok(wharf_agent::run(agent_client, agent_config, agent_token).await?) });
    let proxy_token = token.clone();
    life.spawn("service proxy", async move { Ok(wharf_proxy::run(client, proxy_config, proxy_metrics, proxy_token, grace).await?) });
    life.spawn("cluster DNS", async move {
        for task in dns.tasks {
            task.await?;
        }
        Ok(())
    });
    Ok(Node { dns: dns_addr })
}
