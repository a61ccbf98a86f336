//! What exists from the start: the system namespaces, the `kubernetes`
//! service (the API itself, at the first service IP) with its endpoints,
//! and the cluster DNS service `kube-dns` at the tenth service IP.

use std::net::SocketAddr;

use crate::kind::{self, Kind};
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::registry::{Registry, WriteOptions, WriteTarget, SYSTEM_NAMESPACES};

async fn ensure(registry: &Registry, kind: &Kind, namespace: &str, obj: Value) -> ApiResult<()> {
    match registry.create(kind, namespace, obj, &WriteOptions::default()).await {
        Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the object, or brings an existing one back to `obj`'s content
/// (the API endpoint moves when the server restarts on another address).
async fn reconcile(registry: &Registry, kind: &Kind, namespace: &str, obj: Value) -> ApiResult<()> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    match registry.create(kind, namespace, obj.clone(), &WriteOptions::default()).await {
        Ok(_) => Ok(()),
        Err(ApiError::AlreadyExists { .. }) => {
            let update = |current: &Value| {
                let mut desired = obj.clone();
                desired["metadata"] = current["metadata"].clone();
                Ok(desired)
            };
            registry.update_with(kind, namespace, &name, WriteTarget::Main, &WriteOptions::default(), update).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Creates the built-in objects that are missing; `api_endpoint` is where
/// clients reach the API server.
pub async fn bootstrap(registry: &Registry, api_endpoint: SocketAddr) -> ApiResult<()> {
    for ns in SYSTEM_NAMESPACES {
        ensure(registry, &kind::NAMESPACE, "", json!({"metadata": {"name": ns}})).await?;
    }
    let allocator = registry.allocator();
    let api_port = api_endpoint.port();
    reconcile(
        registry,
        &kind::SERVICE,
        "default",
        json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"clusterIP": allocator.nth_ip(1).to_string(),
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": api_port}]},
        }),
    )
    .await?;
    ensure(
        registry,
        &kind::SERVICE,
        "kube-system",
        json!({
            "metadata": {"name": "kube-dns", "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "wharf-dns"}},
            "spec": {"clusterIP": allocator.nth_ip(10).to_string(), "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ]},
        }),
    )
    .await?;
    let ip = api_endpoint.ip().to_string();
    reconcile(
        registry,
        &kind::ENDPOINTS,
        "default",
        json!({
            "metadata": {"name": "kubernetes"},
            "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": api_port, "protocol": "TCP"}]}],
        }),
    )
    .await?;
    reconcile(registry, &kind::ENDPOINT_SLICE, "default", json!({
        "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes", "endpointslice.kubernetes.io/managed-by": "wharf-apiserver"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}}],
        "ports": [{"name": "https", "port": api_port, "protocol": "TCP"}],
    }))
    .await?;
    registry.resume_namespace_deletions().await
}
