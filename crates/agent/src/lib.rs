//! The node agent: what runs on every node. It registers the Node and
//! keeps its Ready condition fresh, gives the pods bound to the node their
//! status (wharf runs no containers: a pod registers a workload that
//! already runs), and runs their readiness probes. It speaks only the
//! Kubernetes API (list/watch and status writes through `kube`).

pub mod apiconn;
pub mod credentials;
pub mod exec;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod podview;
pub mod probe;
pub mod remote;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wharf_api::ipfamily::NodeIps;

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    /// The node's addresses: pod IPs of its pods (host-network model).
    pub node_ips: NodeIps,
    /// How often the Node's Ready condition is refreshed.
    pub heartbeat: Duration,
    pub metrics: metrics::AgentMetrics,
    pub probes: probe::ProbePolicy,
}

/// Registers the node, then runs the heartbeat and the pod manager until
/// `token` is cancelled.
pub async fn run(client: kube::Client, config: AgentConfig, token: CancellationToken) -> Result<(), kube::Error> {
    node::register(&client, &config).await?;
    let heartbeat = tokio::spawn(node::heartbeat(client.clone(), config.clone(), token.clone()));
    pods::PodManager::new(client, config).run(token).await;
    let _ = heartbeat.await;
    Ok(())
}
