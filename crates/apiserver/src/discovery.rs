//! What the server says about itself: `/version`, legacy and aggregated
//! discovery (the OpenAPI documents are `openapi.rs`).

use serde_json::{json, Value};
use wharf_api::kinds::{self, KindInfo};

/// The Content-Type of aggregated discovery; kubectl reads the body as
/// legacy discovery without it.
pub const AGGREGATED_CONTENT_TYPE: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// kubectl here is a dispatcher that runs the kubectl matching the
/// server's minor version; 32 is the one installed.
pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "32",
        "gitVersion": "v1.32.0+wharf",
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

/// Whether an Accept header asks for aggregated discovery.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.contains("as=APIGroupDiscoveryList")
}

fn resource_discovery(k: &KindInfo) -> Value {
    let mut r = json!({
        "resource": k.resource,
        "singularResource": k.singular,
        "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
        "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
        "shortNames": k.short_names,
        "verbs": kinds::verbs(k),
    });
    if !k.categories.is_empty() {
        r["categories"] = json!(k.categories);
    }
    if k.has_status {
        r["subresources"] = json!([{
            "subresource": "status",
            "responseKind": {"group": k.group, "version": k.version, "kind": k.kind},
            "verbs": ["get", "patch", "update"],
        }]);
    }
    r
}

fn groups(core: bool) -> Vec<(&'static str, &'static str)> {
    kinds::group_versions().into_iter().filter(|(g, _)| g.is_empty() == core).collect()
}

fn kinds_of<'a>(group: &'a str, version: &'a str) -> impl Iterator<Item = &'static KindInfo> + 'a {
    kinds::discoverable().filter(move |k| k.group == group && k.version == version)
}

/// `/api` (core) or `/apis` (named groups) in the aggregated form.
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = groups(core)
        .into_iter()
        .map(|(group, version)| {
            json!({
                "metadata": {"name": group},
                "versions": [{
                    "version": version,
                    "freshness": "Current",
                    "resources": kinds_of(group, version).map(resource_discovery).collect::<Vec<_>>(),
                }],
            })
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

/// `/api` in the legacy form.
pub fn legacy_core() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

/// `/apis` in the legacy form.
pub fn legacy_groups() -> Value {
    let groups: Vec<Value> = groups(false)
        .into_iter()
        .map(|(group, version)| {
            let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
            json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/api/v1` or `/apis/<group>/<version>`: the resources of one group
/// version, or None if it is not served.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for k in kinds_of(group, version) {
        resources.push(json!({
            "name": k.resource, "singularName": k.singular, "namespaced": k.namespaced, "kind": k.kind,
            "verbs": kinds::verbs(k), "shortNames": k.short_names, "categories": k.categories,
        }));
        if k.has_status {
            resources.push(json!({
                "name": format!("{}/status", k.resource), "singularName": "", "namespaced": k.namespaced,
                "kind": k.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_discovery_lists_every_kind_once() {
        let core = aggregated(true);
        let names: Vec<&str> =
            core["items"][0]["versions"][0]["resources"].as_array().unwrap().iter().map(|r| r["resource"].as_str().unwrap()).collect();
        assert_eq!(names, ["namespaces", "services", "pods", "endpoints", "nodes", "events", "configmaps", "secrets", "serviceaccounts"]);
        let groups = aggregated(false);
        assert_eq!(groups["items"][0]["metadata"]["name"], "discovery.k8s.io");
        assert_eq!(groups["items"][0]["versions"][0]["resources"][0]["resource"], "endpointslices");
        assert_eq!(groups["items"][1]["metadata"]["name"], "coordination.k8s.io");
        assert_eq!(groups["items"][1]["versions"][0]["resources"][0]["resource"], "leases");
    }
}
