//! Marks a node whose agent stopped posting heartbeats as NotReady
//! (Ready=Unknown), and its pods not ready, so their endpoints stop
//! receiving traffic from other nodes. When the agent returns it writes
//! both back itself.
//!
//! Nodes come from a watch; a timer looks at the local copy (no list
//! calls) and queues the silent ones; marking is a reconcile with retries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use tokio_util::sync::CancellationToken;
use wharf_kube::{watch, Backoff, ObjectKey, QueueHandles, Watched, WorkQueue};

fn heartbeat(node: &Node) -> Option<(jiff::Timestamp, &str)> {
    let ready = node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    Some((ready.last_heartbeat_time.as_ref()?.0, ready.status.as_str()))
}

/// Whether the node's last heartbeat is older than `grace` and it is not
/// marked yet.
fn is_silent(node: &Node, grace: Duration, now: jiff::Timestamp) -> bool {
    heartbeat(node).is_some_and(|(last, status)| status != "Unknown" && now.duration_since(last).as_secs().max(0) as u64 > grace.as_secs())
}

pub struct NodeLifecycleController {
    client: kube::Client,
    /// How long a node may go without a heartbeat.
    grace: Duration,
    nodes: Mutex<Watched<Node>>,
    queue: Arc<WorkQueue<ObjectKey>>,
    metrics: QueueHandles,
}

impl NodeLifecycleController {
    pub fn new(client: kube::Client, grace: Duration, metrics: QueueHandles) -> Self {
        let queue = Arc::new(WorkQueue::new(Backoff::default(), metrics.clone()));
        Self { client, grace, nodes: Mutex::default(), queue, metrics }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched<Node>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
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
        futures::pin_mut!(events);
        let mut tick = tokio::time::interval((self.grace / 4).max(Duration::from_millis(500)));
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                Some(event) = events.next() => {
                    self.lock().handle(event);
                }
                _ = tick.tick() => {
                    let now = jiff::Timestamp::now();
                    let nodes = self.lock();
                    for (key, _) in nodes.reflector.iter().filter(|(_, n)| is_silent(n, self.grace, now)) {
                        self.queue.add(key.clone());
                    }
                }
            }
        }
        let _ = workers.await;
    }

    async fn mark_not_ready(&self, key: ObjectKey) -> Result<(), kube::Error> {
        let Some(node) = self.lock().reflector.get(&key).cloned() else { return Ok(()) };
        let Some((last, _)) = heartbeat(&node).filter(|_| is_silent(&node, self.grace, jiff::Timestamp::now())) else { return Ok(()) };
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
