//! Marks a node whose agent stopped posting heartbeats as NotReady
//! (Ready=Unknown), and its pods not ready, so their endpoints stop
//! receiving traffic from other nodes. When the agent returns it writes
//! both back itself. A heartbeat is the renewal of the node's Lease in
//! `kube-node-lease` or the Ready condition's, whichever is later.
//!
//! Nodes and Leases come from watches; a timer looks at the local copies
//! (no list calls) and queues the silent ones; marking is a reconcile with
//! retries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use tokio_util::sync::CancellationToken;
use wharf_kube::{watch, Backoff, Keyed, ObjectKey, QueueHandles, Watched, WorkQueue};

/// Where node Leases live.
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The Ready condition's status and last heartbeat, moved forward to the
/// Lease's renewal when that is later.
fn heartbeat<'a>(node: &'a Node, lease: Option<&Lease>) -> Option<(jiff::Timestamp, &'a str)> {
    let ready = node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    let condition = ready.last_heartbeat_time.as_ref()?.0;
    let renewed = lease.and_then(|l| l.spec.as_ref()?.renew_time.as_ref()).map(|t| t.0);
    Some((renewed.map_or(condition, |r| r.max(condition)), ready.status.as_str()))
}

/// Whether the node's last heartbeat is older than `grace` and it is not
/// marked yet.
fn is_silent(node: &Node, lease: Option<&Lease>, grace: Duration, now: jiff::Timestamp) -> bool {
    heartbeat(node, lease)
        .is_some_and(|(last, status)| status != "Unknown" && now.duration_since(last).as_secs().max(0) as u64 > grace.as_secs())
}

pub struct NodeLifecycleController {
    client: kube::Client,
    /// How long a node may go without a heartbeat.
    grace: Duration,
    nodes: Mutex<Watched<Node>>,
    leases: Mutex<Watched<Lease>>,
    queue: Arc<WorkQueue<ObjectKey>>,
    metrics: QueueHandles,
    events: wharf_kube::events::Recorder,
}

impl NodeLifecycleController {
    pub fn new(client: kube::Client, grace: Duration, metrics: QueueHandles) -> Self {
        let queue = Arc::new(WorkQueue::new(Backoff::default(), metrics.clone()));
        let events = wharf_kube::events::Recorder::new(client.clone(), "node-controller", "wharf");
        Self { client, grace, nodes: Mutex::default(), leases: Mutex::default(), queue, metrics, events }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched<Node>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Watched<Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's Lease, as last seen.
    fn lease_of(&self, node: &str) -> Option<Arc<Lease>> {
        self.leases().reflector.get(&ObjectKey::new(LEASE_NAMESPACE, node)).cloned()
    }

    /// Runs until `token` is cancelled.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let this = self.clone();
        let reconcile = move |key| {
            let this = this.clone();
            async move { this.mark_not_ready(key).await }
        };
        let workers =
            tokio::spawn(wharf_kube::run_workers("nodelifecycle", self.queue.clone(), self.metrics.clone(), 1, token.clone(), reconcile));
        let events = watch::watch_all::<Node>(&self.client);
        let leases = watch::watch(Api::<Lease>::namespaced(self.client.clone(), LEASE_NAMESPACE), Default::default());
        futures::pin_mut!(events, leases);
        let mut tick = tokio::time::interval((self.grace / 4).max(Duration::from_millis(500)));
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                Some(event) = events.next() => {
                    self.lock().handle(event);
                }
                Some(event) = leases.next() => {
                    self.leases().handle(event);
                }
                _ = tick.tick() => {
                    let now = jiff::Timestamp::now();
                    let nodes = self.lock();
                    let leases = self.leases();
                    let lease = |name: &str| leases.reflector.get(&ObjectKey::new(LEASE_NAMESPACE, name));
                    for node in nodes.reflector.values().filter(|n| is_silent(n, lease(n.key_parts().1).map(|l| &**l), self.grace, now)) {
                        self.queue.add(node.key());
                    }
                }
            }
        }
        let _ = workers.await;
    }

    async fn mark_not_ready(&self, key: ObjectKey) -> Result<(), kube::Error> {
        let Some(node) = self.lock().reflector.get(&key).cloned() else { return Ok(()) };
        let lease = self.lease_of(&key.name);
        let lease = lease.as_deref();
        let silent = is_silent(&node, lease, self.grace, jiff::Timestamp::now());
        let Some((last, _)) = heartbeat(&node, lease).filter(|_| silent) else { return Ok(()) };
        tracing::warn!(node = %key, "node stopped posting status; marking it and its pods not ready");
        let condition = serde_json::json!({
            "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
            "lastHeartbeatTime": last.to_string(),
            "lastTransitionTime": jiff::Timestamp::now().to_string(),
        });
        let nodes: Api<Node> = Api::all(self.client.clone());
        let patch = Patch::Merge(serde_json::json!({"status": {"conditions": [condition]}}));
        // Pods first: if marking them fails, the node is still silent and
        // the retry does both again.
        self.mark_pods_not_ready(&key.name).await?;
        let written = nodes.patch_status(&key.name, &PatchParams::default(), &patch).await?;
        self.events.normal(
            wharf_kube::events::reference(&written),
            "NodeNotReady",
            format!("Node {} status is now: NodeNotReady", key.name),
        );
        self.lock().reflector.record(written);
        Ok(())
    }

    async fn mark_pods_not_ready(&self, node: &str) -> Result<(), kube::Error> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let on_node = pods.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))).await?;
        let results: Vec<Result<(), kube::Error>> = futures::stream::iter(on_node.items)
            .map(|pod| async move {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let mut conditions: Vec<serde_json::Value> = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .filter(|c| c.type_ != "Ready" && c.type_ != "ContainersReady")
                    .filter_map(|c| serde_json::to_value(c).ok())
                    .collect();
                for t in ["Ready", "ContainersReady"] {
                    conditions.push(serde_json::json!({"type": t, "status": "False", "reason": "NodeNotReady", "lastTransitionTime": jiff::Timestamp::now().to_string()}));
                }
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                let patch = serde_json::json!({"status": {"conditions": conditions}});
                match api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    other => other.map(|_| ()),
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn node(heartbeat: &str, status: &str) -> Node {
        let ready = NodeCondition {
            type_: "Ready".into(),
            status: status.into(),
            last_heartbeat_time: Some(Time(at(heartbeat))),
            ..Default::default()
        };
        Node { status: Some(NodeStatus { conditions: Some(vec![ready]), ..Default::default() }), ..Default::default() }
    }

    fn lease(renewed: &str) -> Lease {
        Lease { spec: Some(LeaseSpec { renew_time: Some(MicroTime(at(renewed))), ..Default::default() }), ..Default::default() }
    }

    #[test]
    fn a_node_lives_while_its_lease_or_its_status_is_fresh() {
        let grace = Duration::from_secs(40);
        let now = at("2026-01-01T00:01:00Z");
        let old = node("2026-01-01T00:00:00Z", "True");
        assert!(is_silent(&old, None, grace, now), "no lease, old status");
        assert!(!is_silent(&old, Some(&lease("2026-01-01T00:00:50Z")), grace, now), "a fresh lease keeps it alive");
        assert!(is_silent(&old, Some(&lease("2026-01-01T00:00:10Z")), grace, now), "both old");
        assert!(!is_silent(&node("2026-01-01T00:00:55Z", "True"), Some(&lease("2026-01-01T00:00:00Z")), grace, now), "fresh status");
        assert!(!is_silent(&node("2026-01-01T00:00:00Z", "Unknown"), None, grace, now), "already marked");
    }
}
