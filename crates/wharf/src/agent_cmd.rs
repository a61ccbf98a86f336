//! `wharf agent`: one node of a cluster: its agent, DNS and proxy,
//! reaching the API servers through a local failover port, as the node
//! itself (`system:node:<name>`, a certificate obtained once with a
//! bootstrap token and renewed in place).

use std::net::SocketAddr;
use std::sync::Arc;

use wharf_agent::credentials::{self, NodeCredential};
use wharf_kube::client::ClientIdentity;

use anyhow::Context;
use prometheus_client::registry::Registry;

use crate::cli::AgentArgs;
use crate::lifecycle::Lifecycle;

fn server_address(s: &str) -> anyhow::Result<SocketAddr> {
    let bare = s.trim().trim_start_matches("https://").trim_end_matches('/');
    bare.parse().with_context(|| format!("--server {s:?}: expected HOST:PORT with an IP address"))
}

/// The node's credential: the valid one in the data dir, else one
/// obtained from the first of `servers` that takes `--token`.
async fn credential(args: &AgentArgs, servers: &[SocketAddr]) -> anyhow::Result<NodeCredential> {
    let dir = &args.data_dir;
    let node = &args.node.node_name;
    crate::files::private_dir(dir)?;
    if let Some(stored) = NodeCredential::load(dir, node)? {
        return Ok(stored);
    }
    let token = args.token.as_deref().with_context(|| {
        format!("{} holds no valid certificate for node {node}: join with --token (from `wharf token create`)", dir.display())
    })?;
    let ca_path = args.ca_cert.clone().unwrap_or_else(|| dir.join("ca.crt"));
    let ca = std::fs::read_to_string(&ca_path)
        .with_context(|| format!("--ca-cert {}: joining needs the cluster CA (the server's pki/ca.crt)", ca_path.display()))?;
    let mut refused = None;
    for server in servers {
        match credentials::join(&format!("https://{server}"), &ca, token, node).await {
            Ok(joined) => {
                joined.save(dir)?;
                tracing::info!(node = %node, server = %server, "joined: the node's certificate is in {}", dir.display());
                return Ok(joined);
            }
            Err(e) => {
                tracing::warn!(server = %server, error = %e, "joining failed");
                refused = Some(e);
            }
        }
    }
    Err(refused.map_or_else(|| anyhow::anyhow!("no --server to join"), anyhow::Error::from))
}

/// A client whose connections go to the first of `servers` that answers.
async fn client_through(
    servers: Vec<SocketAddr>,
    credential: &NodeCredential,
    identity: &Arc<ClientIdentity>,
    life: &Lifecycle,
) -> anyhow::Result<kube::Client> {
    let local = wharf_agent::apiconn::failover(servers, life.token.clone()).await.context("starting the API failover port")?;
    wharf_kube::client::with_identity(&format!("https://{local}"), &credential.ca_pem, identity.clone())
        .context("building a Kubernetes client")
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut life = Lifecycle::new();
    let mut registry = Registry::default();
    let servers = args.server.iter().map(|s| server_address(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let credential = credential(&args, &servers).await?;
    let identity = credential.identity()?;
    let client = client_through(servers.clone(), &credential, &identity, &life).await?;
    let renewal = credentials::renew(
        client.clone(),
        args.data_dir.clone(),
        args.node.node_name.clone(),
        credential.clone(),
        identity.clone(),
        life.token.clone(),
    );
    life.spawn("certificate renewal", async move {
        renewal.await;
        Ok(())
    });
    // Exec and port-forward sessions reach this node through the server
    // the user's kubectl reached: a tunnel to each.
    let mut tunnels = Vec::with_capacity(servers.len());
    for server in servers {
        tunnels.push(client_through(vec![server], &credential, &identity, &life).await?);
    }
    let remote = crate::node::RemoteAccess { clients: tunnels, allow_exec_default: false };
    let node =
        crate::node::start(client, &args.node, &args.service_cidr, args.process.shutdown_grace, remote, &mut life, &mut registry).await?;
    let metrics = crate::metrics::serve(args.node.metrics_listen, registry, &mut life).await?;
    let addresses = crate::files::Addresses { dns: Some(node.dns), metrics: Some(metrics), ..Default::default() };
    addresses.write(args.process.addresses_file.as_deref())?;
    println!(
        "wharf agent is up.\n\n  Node:         {} ({})\n  Cluster DNS:  {}\n  Metrics:      http://{}/metrics\n",
        args.node.node_name, args.node.node_ip, node.dns, metrics
    );
    life.run(args.process.shutdown_grace).await
}
