//! `wharf agent`: one node of a cluster: its agent, DNS and proxy,
//! reaching the API servers through a local failover port.

use std::net::SocketAddr;

use anyhow::Context;

use crate::cli::AgentArgs;

fn server_address(s: &str) -> anyhow::Result<SocketAddr> {
    let bare = s.trim().trim_start_matches("https://").trim_end_matches('/');
    bare.parse().with_context(|| format!("--server {s:?}: expected HOST:PORT with an IP address"))
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let servers = args.server.iter().map(|s| server_address(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let local = wharf_agent::apiconn::failover(servers).await.context("starting the API failover port")?;
    let text = std::fs::read_to_string(&args.kubeconfig).with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let mut kubeconfig = kube::config::Kubeconfig::from_yaml(&text).context("parsing the kubeconfig")?;
    for cluster in &mut kubeconfig.clusters {
        if let Some(c) = cluster.cluster.as_mut() {
            c.server = Some(format!("https://{local}"));
        }
    }
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.context("kubeconfig")?;
    let client = wharf_agent::client::build(config).context("building a Kubernetes client")?;
    let node = crate::node::start(client, &args.node, args.service_cidr).await?;
    println!(
        "wharf agent is up.\n\n  Node:         {} ({})\n  Cluster DNS:  {}\n  Metrics:      http://{}/metrics\n",
        args.node.node_name, args.node.node_ip, node.dns, node.metrics
    );
    crate::node::supervise(node.tasks).await
}
