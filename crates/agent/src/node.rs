//! The Node object of this node: registration and heartbeat.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

use tokio_util::sync::CancellationToken;

use crate::AgentConfig;

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string())))
        .unwrap_or_else(|| "Linux".into())
}

fn kernel_version() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

fn ready_condition(since: Time) -> NodeCondition {
    NodeCondition {
        type_: "Ready".into(),
        status: "True".into(),
        reason: Some("KubeletReady".into()),
        message: Some("wharf agent is posting ready status".into()),
        last_heartbeat_time: Some(now()),
        last_transition_time: Some(since),
    }
}

fn status(config: &AgentConfig, since: Time) -> NodeStatus {
    let pods: BTreeMap<String, Quantity> = [("pods".to_string(), Quantity("110".into()))].into();
    NodeStatus {
        addresses: Some(vec![
            NodeAddress { type_: "InternalIP".into(), address: config.node_ip.to_string() },
            NodeAddress { type_: "Hostname".into(), address: config.node_name.clone() },
        ]),
        conditions: Some(vec![ready_condition(since)]),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.into(),
            operating_system: std::env::consts::OS.into(),
            kernel_version: kernel_version(),
            os_image: os_image(),
            container_runtime_version: "wharf://none".into(),
            kubelet_version: "v1.32.0-wharf".into(),
            ..Default::default()
        }),
        capacity: Some(pods.clone()),
        allocatable: Some(pods),
        ..Default::default()
    }
}

/// Creates the Node, or brings an existing one back to Ready with this
/// node's addresses.
pub async fn register(client: &kube::Client, config: &AgentConfig) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname".to_string(), config.node_name.clone()),
        ("kubernetes.io/os".to_string(), std::env::consts::OS.to_string()),
        ("kubernetes.io/arch".to_string(), std::env::consts::ARCH.to_string()),
    ]
    .into();
    let node = Node {
        metadata: ObjectMeta { name: Some(config.node_name.clone()), labels: Some(labels), ..Default::default() },
        spec: Some(Default::default()),
        status: Some(status(config, now())),
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let patch = serde_json::json!({"status": status(config, now())});
            nodes.patch_status(&config.node_name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Refreshes the Ready condition's heartbeat until `token` is cancelled.
pub async fn heartbeat(client: kube::Client, config: AgentConfig, token: CancellationToken) {
    let nodes: Api<Node> = Api::all(client.clone());
    let since = now();
    let mut tick = tokio::time::interval(config.heartbeat);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let patch = serde_json::json!({"status": {"conditions": [ready_condition(since.clone())]}});
        if let Err(e) = nodes.patch_status(&config.node_name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            tracing::warn!(error = %e, "node heartbeat failed");
            if let Err(e) = register(&client, &config).await {
                tracing::warn!(error = %e, "node re-registration failed");
            }
        }
    }
}
