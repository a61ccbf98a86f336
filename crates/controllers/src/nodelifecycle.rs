//! Marks a node whose agent stopped posting heartbeats as NotReady
//! (Ready=Unknown), and its pods not ready, so their endpoints stop
//! receiving traffic from other nodes. When the agent returns it writes
//! both back itself.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};

fn heartbeat(node: &Node) -> Option<(jiff::Timestamp, String)> {
    let ready = node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")?;
    Some((ready.last_heartbeat_time.as_ref()?.0, ready.status.clone()))
}

pub struct NodeLifecycleController {
    client: kube::Client,
    /// How long a node may go without a heartbeat.
    grace: Duration,
}

impl NodeLifecycleController {
    pub fn new(client: kube::Client, grace: Duration) -> Self {
        Self { client, grace }
    }

    pub async fn run(self) {
        let mut tick = tokio::time::interval((self.grace / 4).max(Duration::from_millis(500)));
        loop {
            tick.tick().await;
            if let Err(e) = self.check().await {
                tracing::debug!(error = %e, "node lifecycle check failed");
            }
        }
    }

    async fn check(&self) -> Result<(), kube::Error> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        for node in nodes.list(&ListParams::default()).await?.items {
            let Some((last, status)) = heartbeat(&node) else { continue };
            let silent = jiff::Timestamp::now().duration_since(last).as_secs() as u64 > self.grace.as_secs();
            if !silent || status == "Unknown" {
                continue;
            }
            let name = node.metadata.name.clone().unwrap_or_default();
            tracing::warn!(node = %name, "node stopped posting status; marking it and its pods not ready");
            let condition = serde_json::json!({
                "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastHeartbeatTime": last.to_string(),
                "lastTransitionTime": jiff::Timestamp::now().to_string(),
            });
            nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(serde_json::json!({"status": {"conditions": [condition]}}))).await?;
            self.mark_pods_not_ready(&name).await?;
        }
        Ok(())
    }

    async fn mark_pods_not_ready(&self, node: &str) -> Result<(), kube::Error> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let on_node = pods.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))).await?;
        futures::stream::iter(on_node.items)
            .for_each_concurrent(16, |pod| async move {
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
                if let Err(e) = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                    tracing::debug!(pod = %name, error = %e, "marking a pod not ready failed");
                }
            })
            .await;
        Ok(())
    }
}
