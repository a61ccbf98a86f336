//! The Node object of this node: registration and heartbeat. As the
//! kubelet does, the heartbeat is the node's Lease in `kube-node-lease`
//! (a small object renewed every `--node-heartbeat`); the Node's Ready
//! condition is posted every `STATUS_EVERY` heartbeats, and at once after
//! a heartbeat failed (the node lifecycle controller may have marked the
//! node meanwhile).

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
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
        addresses: Some(
            config
                .node_ips
                .iter()
                .map(|ip| NodeAddress { type_: "InternalIP".into(), address: ip.to_string() })
                .chain([NodeAddress { type_: "Hostname".into(), address: config.node_name.clone() }])
                .collect(),
        ),
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

/// Heartbeats between two posts of the Node's status (the Lease says
/// the node lives; the status says how it is).
const STATUS_EVERY: u32 = 6;
/// Where node Leases live.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node's Lease, held by the node and owned by its Node (so it goes
/// with the Node), renewed now.
fn lease(config: &AgentConfig, node_uid: Option<String>) -> Lease {
    let duration = (config.heartbeat.as_secs() * 4).clamp(1, i32::MAX as u64) as i32;
    let owner = node_uid.map(|uid| OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: config.node_name.clone(),
        uid,
        ..Default::default()
    });
    Lease {
        metadata: ObjectMeta {
            name: Some(config.node_name.clone()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.node_name.clone()),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(jiff::Timestamp::now())),
            ..Default::default()
        }),
    }
}

/// Renews the node's Lease, creating it when it is missing.
async fn renew_lease(client: &kube::Client, config: &AgentConfig) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let patch = serde_json::json!({"spec": {"holderIdentity": config.node_name, "renewTime": MicroTime(jiff::Timestamp::now())}});
    match leases.patch(&config.node_name, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Err(kube::Error::Api(s)) if s.code == 404 => {
            let node_uid = Api::<Node>::all(client.clone()).get(&config.node_name).await.ok().and_then(|n| n.metadata.uid);
            leases.create(&PostParams::default(), &lease(config, node_uid)).await.map(|_| ())
        }
        other => other.map(|_| ()),
    }
}

/// Renews the Lease every heartbeat and posts the Ready condition every
/// `STATUS_EVERY` heartbeats (or right after a failure) until `token` is
/// cancelled.
pub async fn heartbeat(client: kube::Client, config: AgentConfig, token: CancellationToken) {
    let nodes: Api<Node> = Api::all(client.clone());
    let since = now();
    let mut tick = tokio::time::interval(config.heartbeat);
    let mut beats = 0u32;
    let mut failed = false;
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        beats = beats.wrapping_add(1);
        if let Err(e) = renew_lease(&client, &config).await {
            tracing::warn!(error = %e, "renewing the node lease failed");
            failed = true;
            continue;
        }
        if !failed && !beats.is_multiple_of(STATUS_EVERY) {
            continue;
        }
        let patch = serde_json::json!({"status": {"conditions": [ready_condition(since.clone())]}});
        failed = match nodes.patch_status(&config.node_name, &PatchParams::default(), &Patch::Merge(patch)).await {
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, "posting the node status failed");
                if let Err(e) = register(&client, &config).await {
                    tracing::warn!(error = %e, "node re-registration failed");
                }
                true
            }
        };
    }
}
