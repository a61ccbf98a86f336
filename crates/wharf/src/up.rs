//! `wharf up`: one machine, everything in one process on the embedded
//! store: the API server and controllers, and this node's agent, DNS and
//! proxy.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use wharf_store::EmbeddedStore;

use crate::cli::UpArgs;
use crate::control;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let data_dir = &args.server.data.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let store = EmbeddedStore::open(&data_dir.join("state.redb")).context("opening the store")?;
    let control = control::start(&args.server, Arc::new(store), Some(&args.node.node_name), args.node.node_ip, &[]).await?;
    let controllers = control::controllers(control.client.clone(), &args.server);
    let node = crate::node::start(control.client.clone(), &args.node, args.server.service_cidr).await?;
    print_notes(&args, &control, node.metrics, node.dns);
    let mut tasks = node.tasks;
    let (server, controllers) = (control.server, controllers);
    tasks.push(("API server", tokio::spawn(async move {
        server.await?;
        anyhow::bail!("stopped")
    })));
    tasks.push(("controllers", tokio::spawn(async move {
        controllers.await?;
        anyhow::bail!("stopped")
    })));
    crate::node::supervise(tasks).await
}

pub fn kubeconfig_path(data_dir: &Path) -> std::path::PathBuf {
    control::kubeconfig_path(data_dir)
}

fn print_notes(args: &UpArgs, control: &control::ControlPlane, metrics: SocketAddr, dns: SocketAddr) {
    let range = &args.server.service_node_port_range;
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
        endpoint = control.endpoint,
        cidr = control.allocator.cidr(),
        domain = args.node.cluster_domain,
        low = range.start(),
        high = range.end(),
        node_ip = args.node.node_ip,
        node = args.node.node_name,
        lb_pool = args.server.lb_pool,
        data = args.server.data.data_dir.display(),
        kubeconfig = control.kubeconfig.display(),
    );
}
