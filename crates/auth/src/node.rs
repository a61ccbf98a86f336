//! What a node may touch, as Kubernetes' Node authorizer and
//! NodeRestriction admission decide it (narrowed to what wharf serves).
//! RBAC's `system:node` role says which kinds a node may use at all; these
//! rules then hold it to its own objects: its Node, its Lease in
//! `kube-node-lease`, the status of pods bound to it, and its own tunnel.
//! A node's credential therefore cannot change another node, take over a
//! service, or fake the readiness of another node's pods.

use serde_json::Value;

use crate::attributes::ResourceAttributes;

/// Where node heartbeat Leases live.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

const READS: &[&str] = &["get", "list", "watch"];

/// Why `node` may not make the request `attrs`, judged on the request
/// alone (names in the URL); `None` when these rules allow it. Writes
/// whose object names itself only in the body (creates, pod bindings) are
/// judged by [`admits`].
pub fn refuses(node: &str, attrs: &ResourceAttributes) -> Option<String> {
    let other = !attrs.name.is_empty() && attrs.name != node;
    let write = !READS.contains(&attrs.verb.as_str());
    match (attrs.group.as_str(), attrs.resource.as_str()) {
        ("", "nodes") if write && other => Some(format!("node {node:?} is not allowed to modify node {:?}", attrs.name)),
        ("wharf.dev", "nodes") if other || attrs.name.is_empty() => {
            Some(format!("node {node:?} may only open its own tunnel, not node {:?}'s", attrs.name))
        }
        ("coordination.k8s.io", "leases") if write && (attrs.namespace != NODE_LEASE_NAMESPACE || other) => {
            Some(format!("node {node:?} may only write its own lease in {NODE_LEASE_NAMESPACE}"))
        }
        _ => None,
    }
}

/// Labels only an administrator sets on a Node (NodeRestriction's
/// reserved prefix): workloads may be steered by them.
const RESERVED_LABELS: &str = "node-restriction.kubernetes.io/";

/// What a node may not change on its own Node, as NodeRestriction has it:
/// its taints, and labels under the reserved prefix.
fn own_node(node: &str, obj: &Value, current: Option<&Value>) -> Option<String> {
    let taints = |n: &Value| n["spec"]["taints"].as_array().cloned().unwrap_or_default();
    let reserved = |n: &Value| -> Vec<(String, Value)> {
        let labels = n["metadata"]["labels"].as_object().cloned().unwrap_or_default();
        labels.into_iter().filter(|(k, _)| k.starts_with(RESERVED_LABELS)).collect()
    };
    let before = current.cloned().unwrap_or(Value::Null);
    if taints(obj) != taints(&before) {
        return Some(format!("node {node:?} is not allowed to modify taints"));
    }
    if reserved(obj) != reserved(&before) {
        return Some(format!("node {node:?} is not allowed to modify labels under {RESERVED_LABELS}"));
    }
    None
}

fn bound_node(pod: &Value) -> &str {
    pod["spec"]["nodeName"].as_str().unwrap_or_default()
}

/// Why `node` may not store `obj` (a `resource` in `namespace`), whose
/// stored version is `current` (`None` on create); `None` when allowed.
/// A delete is judged as storing the current object over itself.
pub fn admits(node: &str, resource: &str, namespace: &str, obj: &Value, current: Option<&Value>) -> Option<String> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    match resource {
        "nodes" if name != node => Some(format!("node {node:?} is not allowed to modify node {name:?}")),
        "nodes" => own_node(node, obj, current),
        "leases" if namespace != NODE_LEASE_NAMESPACE || name != node => {
            Some(format!("node {node:?} may only write its own lease in {NODE_LEASE_NAMESPACE}"))
        }
        "pods" => match current {
            None => Some(format!("node {node:?} may not create pods")),
            Some(stored) if bound_node(stored) != node || bound_node(obj) != node => {
                Some(format!("node {node:?} can only change pods bound to it"))
            }
            Some(_) => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> ResourceAttributes {
        ResourceAttributes::new(verb, group, resource, ns, name).with_subresource(sub)
    }

    #[test]
    fn a_node_writes_only_its_own_node_lease_and_tunnel() {
        assert_eq!(refuses("n1", &attrs("patch", "", "nodes", "status", "", "n1")), None);
        assert!(refuses("n1", &attrs("patch", "", "nodes", "status", "", "n2")).is_some());
        assert!(refuses("n1", &attrs("delete", "", "nodes", "", "", "n2")).is_some());
        assert_eq!(refuses("n1", &attrs("get", "", "nodes", "", "", "n2")), None, "reading other nodes is fine");
        assert_eq!(refuses("n1", &attrs("get", "wharf.dev", "nodes", "tunnel", "", "n1")), None);
        assert!(refuses("n1", &attrs("get", "wharf.dev", "nodes", "tunnel", "", "n2")).is_some());
        assert!(refuses("n1", &attrs("get", "wharf.dev", "nodes", "sessions", "", "n2")).is_some());
        assert_eq!(refuses("n1", &attrs("update", "coordination.k8s.io", "leases", "", NODE_LEASE_NAMESPACE, "n1")), None);
        assert!(refuses("n1", &attrs("update", "coordination.k8s.io", "leases", "", NODE_LEASE_NAMESPACE, "n2")).is_some());
        assert!(refuses("n1", &attrs("create", "coordination.k8s.io", "leases", "", "kube-system", "")).is_some());
    }

    #[test]
    fn a_node_stores_only_its_own_objects_and_its_pods_status() {
        let node = |name: &str| json!({"metadata": {"name": name}});
        assert_eq!(admits("n1", "nodes", "", &node("n1"), None), None);
        assert!(admits("n1", "nodes", "", &node("n2"), None).is_some());
        assert_eq!(admits("n1", "leases", NODE_LEASE_NAMESPACE, &node("n1"), None), None);
        assert!(admits("n1", "leases", "default", &node("n1"), None).is_some());
        let pod = |on: &str| json!({"metadata": {"name": "p"}, "spec": {"nodeName": on}});
        assert_eq!(admits("n1", "pods", "default", &pod("n1"), Some(&pod("n1"))), None);
        assert!(admits("n1", "pods", "default", &pod("n1"), Some(&pod("n2"))).is_some(), "bound elsewhere");
        assert!(admits("n1", "pods", "default", &pod("n2"), Some(&pod("n1"))).is_some(), "moving it away");
        assert!(admits("n1", "pods", "default", &pod("n1"), None).is_some(), "creating pods");
        assert_eq!(admits("n1", "events", "default", &node("x"), None), None);
        let tainted = json!({"metadata": {"name": "n1"}, "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}});
        assert!(admits("n1", "nodes", "", &node("n1"), Some(&tainted)).unwrap().contains("taints"), "removing its taints");
        let reserved = json!({"metadata": {"name": "n1", "labels": {"node-restriction.kubernetes.io/pool": "gold"}}});
        assert!(admits("n1", "nodes", "", &reserved, Some(&node("n1"))).unwrap().contains("labels"), "claiming a reserved label");
        let labelled = json!({"metadata": {"name": "n1", "labels": {"kubernetes.io/hostname": "n1"}}});
        assert_eq!(admits("n1", "nodes", "", &labelled, Some(&node("n1"))), None, "its own ordinary labels");
    }
}
