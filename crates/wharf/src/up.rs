//! `wharf up`: one machine, everything in one process on the embedded
//! store: the API server and controllers, and this node's agent, DNS and
//! proxy.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use prometheus_client::registry::Registry;
use wharf_store::{EmbeddedStore, Measured, StoreMetrics};

use crate::cli::UpArgs;
use crate::control;
use crate::lifecycle::Lifecycle;

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let mut life = Lifecycle::new();
    let mut registry = Registry::default();
    let data_dir = &args.server.data.data_dir;
    crate::files::private_dir(data_dir)?;
    let store_metrics = StoreMetrics::default();
    store_metrics.register(&mut registry);
    let store = EmbeddedStore::open_with(
        &data_dir.join("state.redb"),
        store_metrics.clone(),
        wharf_store::WatchHistory::events(args.server.watch_history),
    )
    .context("opening the store")?;
    let store = Arc::new(Measured::new(store, store_metrics));
    let site = control::Site {
        default_node: Some(&args.node.node_name),
        advertise_fallback: args.node.node_ip.primary(),
        extra_sans: &[],
        cluster_domain: &args.node.cluster_domain,
        dns: Some(crate::node::dns_listen(&args.node, &args.server.service_cidr)),
    };
    let control = control::start(&args.server, store, site, &mut life, &mut registry).await?;
    let controller_metrics = wharf_kube::ControllerMetrics::default();
    controller_metrics.register(&mut registry);
    let token = life.token.clone();
    let controllers = control::controllers(control.controllers_client().await?, args.server.clone(), controller_metrics, token);
    life.spawn("controllers", async move {
        controllers.await;
        Ok(())
    });
    let node_client = control.node_client(&args.node.node_name).await?;
    let node = crate::node::start(
        node_client.clone(),
        &args.node,
        &args.server.service_cidr,
        args.process.shutdown_grace,
        crate::node::RemoteAccess { clients: vec![node_client], allow_exec_default: true },
        &mut life,
        &mut registry,
    )
    .await?;
    let metrics = crate::metrics::serve(args.node.metrics_listen, registry, &mut life).await?;
    let addresses = crate::files::Addresses {
        api: Some(format!("https://{}", control.endpoint)),
        kubeconfig: Some(control.kubeconfig.clone()),
        dns: Some(node.dns),
        metrics: Some(metrics),
    };
    addresses.write(args.process.addresses_file.as_deref())?;
    print_notes(&args, &control, metrics, node.dns);
    print!("{}", crate::status::notes(&control.client, &args.node.node_ip.primary().to_string()).await);
    life.run(args.process.shutdown_grace).await
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
  Dashboard:     https://{endpoint}/ui/ (`wharf dashboard` prints a login link)
  Data dir:      {data}

To use it with kubectl:

  export KUBECONFIG={kubeconfig}
  kubectl get services --all-namespaces
",
        endpoint = control.endpoint,
        cidr = control.allocator.cidrs(),
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
