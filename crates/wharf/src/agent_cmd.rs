//! `wharf agent`: one node of a cluster: its agent, DNS and proxy,
//! reaching the API servers through a local failover port.

use std::net::SocketAddr;

use anyhow::Context;
use prometheus_client::registry::Registry;

use crate::cli::AgentArgs;
use crate::lifecycle::Lifecycle;

fn server_address(s: &str) -> anyhow::Result<SocketAddr> {
    let bare = s.trim().trim_start_matches("https://").trim_end_matches('/');
    bare.parse().with_context(|| format!("--server {s:?}: expected HOST:PORT with an IP address"))
}

/// A client whose connections go to the first of `servers` that answers.
async fn client_through(servers: Vec<SocketAddr>, kubeconfig: &str, life: &Lifecycle) -> anyhow::Result<kube::Client> {
    let local = wharf_agent::apiconn::failover(servers, life.token.clone()).await.context("starting the API failover port")?;
    wharf_kube::client::from_kubeconfig_text_at(kubeconfig, &format!("https://{local}")).await.context("building a Kubernetes client")
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut life = Lifecycle::new();
    let mut registry = Registry::default();
    let servers = args.server.iter().map(|s| server_address(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let text = std::fs::read_to_string(&args.kubeconfig).with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let client = client_through(servers.clone(), &text, &life).await?;
    // Exec and port-forward sessions reach this node through the server
    // the user's kubectl reached: a tunnel to each.
    let mut tunnels = Vec::with_capacity(servers.len());
    for server in servers {
        tunnels.push(client_through(vec![server], &text, &life).await?);
    }
    let remote = crate::node::RemoteAccess { clients: tunnels, allow_exec_default: false };
    let node =
        crate::node::start(client, &args.node, args.service_cidr, args.process.shutdown_grace, remote, &mut life, &mut registry).await?;
    let metrics = crate::metrics::serve(args.node.metrics_listen, registry, &mut life).await?;
    let addresses = crate::files::Addresses { dns: Some(node.dns), metrics: Some(metrics), ..Default::default() };
    addresses.write(args.process.addresses_file.as_deref())?;
    println!(
        "wharf agent is up.\n\n  Node:         {} ({})\n  Cluster DNS:  {}\n  Metrics:      http://{}/metrics\n",
        args.node.node_name, args.node.node_ip, node.dns, metrics
    );
    life.run(args.process.shutdown_grace).await
}
