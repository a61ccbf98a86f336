//! What exists from the start: the system namespaces, the `kubernetes`
//! service (the API itself, at the first service IP) with its endpoints,
//! the cluster DNS service `kube-dns` at the tenth service IP, and the
//! default RBAC roles and bindings.

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
                // The labels wharf sets are added back; others are kept.
                if let Some(labels) = obj["metadata"]["labels"].as_object() {
                    for (key, value) in labels {
                        desired["metadata"]["labels"][key] = value.clone();
                    }
                }
                Ok(desired)
            };
            registry.update_with(kind, namespace, &name, WriteTarget::Main, &WriteOptions::default(), update).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Appends to `list` (a JSON array in `obj`) the defaults it lacks: as
/// kube-apiserver reconciles its roles, additions made by hand are kept.
fn with_defaults(current: &Value, default: &Value, list: &str) -> Value {
    let mut desired = current.clone();
    let mut items = current[list].as_array().cloned().unwrap_or_default();
    for item in default[list].as_array().into_iter().flatten() {
        if !items.contains(item) {
            items.push(item.clone());
        }
    }
    desired[list] = Value::Array(items);
    desired
}

/// Creates each default role and binding, and puts back what is missing
/// from those whose `autoupdate` annotation is not "false".
async fn default_rbac(registry: &Registry) -> ApiResult<()> {
    let to_json = |v: serde_json::Result<Value>| v.map_err(|e| ApiError::Internal(e.to_string()));
    let roles = wharf_auth::defaults::cluster_roles().into_iter().map(|r| (&kind::CLUSTER_ROLE, serde_json::to_value(r), "rules"));
    let bindings = wharf_auth::defaults::cluster_role_bindings()
        .into_iter()
        .map(|b| (&kind::CLUSTER_ROLE_BINDING, serde_json::to_value(b), "subjects"));
    for (kind, obj, list) in roles.chain(bindings) {
        let obj = to_json(obj)?;
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        match registry.create(kind, "", obj.clone(), &WriteOptions::default()).await {
            Ok(_) => continue,
            Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        let update = |current: &Value| {
            if current["metadata"]["annotations"][wharf_auth::defaults::AUTOUPDATE] == "false" {
                return Ok(current.clone());
            }
            Ok(with_defaults(current, &obj, list))
        };
        registry.update_with(kind, "", &name, WriteTarget::Main, &WriteOptions::default(), update).await?;
    }
    Ok(())
}

/// Creates the built-in objects that are missing; `api_endpoint` is where
/// clients reach the API server.
pub async fn bootstrap(registry: &Registry, api_endpoint: SocketAddr) -> ApiResult<()> {
    default_rbac(registry).await?;
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
            "spec": {"clusterIP": allocator.cidrs().nth_primary(1).to_string(),
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
            "spec": {"clusterIP": allocator.cidrs().nth_primary(10).to_string(), "ports": [
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
            // As kube-apiserver labels it: the API server writes this
            // service's EndpointSlice itself, so nothing mirrors a second.
            "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
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
