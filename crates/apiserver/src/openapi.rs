//! The OpenAPI documents: `/openapi/v3` (one document per group version)
//! and `/openapi/v2`, with the served kinds' real schemas. The schemas are
//! k8s-openapi's (Kubernetes' own, descriptions included, under the names
//! Kubernetes gives them); each kind's is marked with its group, version
//! and kind, and each list that merges by key with how it merges, from
//! `kind.rs`, the rules this server's own patches follow. `kubectl
//! explain` reads them.
//!
//! The PATCH operations do not declare strategic merge content, and
//! kubectl's protobuf request for v2 is answered 406: so kubectl's
//! client-side apply keeps computing its patches from its compiled-in
//! Kubernetes types, as it did before schemas were published, and not
//! from a table that might name fewer lists than Kubernetes does.

use std::collections::HashMap;
use std::sync::LazyLock;

use bytes::Bytes;
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};
use wharf_api::kinds;

use crate::kind::{self, Kind, ListMerge};

/// Stands in for a content hash: the documents change only with the binary.
const HASH: &str = concat!("wharf-", env!("CARGO_PKG_VERSION"));

fn path_of(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The kinds of a group version that have a schema (stored kinds; the
/// access reviews, answered and never stored, have none here).
fn kinds_of(group: &str, version: &str) -> Vec<&'static Kind> {
    kind::ALL.iter().copied().filter(|k| k.info.group == group && k.info.version == version).collect()
}

/// `/openapi/v3`: one entry per served group version.
pub fn index() -> Value {
    let paths: Map<String, Value> = kinds::group_versions()
        .into_iter()
        .map(|(g, v)| {
            let path = path_of(g, v);
            (path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={HASH}")}))
        })
        .collect();
    json!({"paths": paths})
}

/// `/openapi/v3/<group version>`, serialized once.
pub fn group_version(path: &str) -> Option<Bytes> {
    static DOCUMENTS: LazyLock<HashMap<String, Bytes>> =
        LazyLock::new(|| kinds::group_versions().into_iter().map(|(g, v)| (path_of(g, v), to_bytes(&v3_document(g, v)))).collect());
    DOCUMENTS.get(path).cloned()
}

/// `/openapi/v2`, serialized once.
pub fn v2() -> Bytes {
    static DOCUMENT: LazyLock<Bytes> = LazyLock::new(|| to_bytes(&v2_document()));
    DOCUMENT.clone()
}

fn to_bytes(doc: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(doc).unwrap_or_default())
}

/// The operations kubectl inspects, each declaring the `fieldValidation`
/// parameter so validation is left to the server.
fn v3_document(group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    for info in kinds::discoverable().filter(|k| k.group == group && k.version == version) {
        let gvk = json!({"group": info.group, "version": info.version, "kind": info.kind});
        let params = json!([{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}]);
        let base = format!("/{}", path_of(group, version));
        let collection = if info.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", info.resource)
        } else {
            format!("{base}/{}", info.resource)
        };
        let op = json!({"x-kubernetes-group-version-kind": gvk, "parameters": params});
        paths.insert(collection.clone(), json!({"post": op}));
        paths.insert(format!("{collection}/{{name}}"), json!({"put": op, "patch": op}));
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": definitions(SchemaSettings::openapi3(), &kinds_of(group, version))},
    })
}

fn v2_document() -> Value {
    let kinds: Vec<&Kind> = kind::ALL.to_vec();
    let settings = SchemaSettings::draft07().with(|s| s.definitions_path = "/definitions".into());
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": {},
        "definitions": definitions(settings, &kinds),
    })
}

/// The schemas `kinds` need, each kind's marked with its group-version-kind
/// and its lists with how they merge.
fn definitions(settings: SchemaSettings, kinds: &[&Kind]) -> Map<String, Value> {
    let mut generator = settings.into_generator();
    let roots: Vec<(String, &Kind)> = kinds.iter().map(|k| (referenced(&k.codec.schema(&mut generator).to_value()), *k)).collect();
    let mut defs = generator.take_definitions(true);
    for (name, k) in roots {
        let info = k.info;
        if let Some(schema) = defs.get_mut(&name).and_then(Value::as_object_mut) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": info.group, "version": info.version, "kind": info.kind}]),
            );
        }
        for rule in k.list_rules() {
            if let Some(list) = property(&mut defs, &name, rule.path) {
                mark_list(list, &rule.merge);
            }
        }
    }
    defs
}

/// The definition a schema refers to, directly, as its items', or through
/// `allOf`.
fn referenced(schema: &Value) -> String {
    let target = schema.get("$ref").or_else(|| schema.pointer("/items/$ref")).or_else(|| schema.pointer("/allOf/0/$ref"));
    target.and_then(Value::as_str).and_then(|r| r.rsplit('/').next()).unwrap_or_default().to_string()
}

/// The property schema at a dotted path from definition `name`, through
/// the definitions each step refers to.
fn property<'a>(defs: &'a mut Map<String, Value>, name: &str, path: &str) -> Option<&'a mut Map<String, Value>> {
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => (Some(parent), last),
        None => (None, path),
    };
    let mut owner = name.to_string();
    for step in parent.into_iter().flat_map(|p| p.split('.')) {
        owner = referenced(defs.get(&owner)?.pointer(&format!("/properties/{step}"))?);
    }
    defs.get_mut(&owner)?.pointer_mut(&format!("/properties/{last}"))?.as_object_mut()
}

fn mark_list(list: &mut Map<String, Value>, merge: &ListMerge) {
    list.insert("x-kubernetes-patch-strategy".into(), json!("merge"));
    match merge {
        ListMerge::Map { patch_key, map_keys } => {
            list.insert("x-kubernetes-patch-merge-key".into(), json!(patch_key));
            list.insert("x-kubernetes-list-type".into(), json!("map"));
            let keys: Vec<&str> = if map_keys.is_empty() { vec![patch_key] } else { map_keys.iter().map(|(k, _)| *k).collect() };
            list.insert("x-kubernetes-list-map-keys".into(), json!(keys));
        }
        ListMerge::Set => {
            list.insert("x-kubernetes-list-type".into(), json!("set"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3(path: &str) -> Value {
        serde_json::from_slice(&group_version(path).expect("a served group version")).expect("JSON")
    }

    #[test]
    fn the_index_names_every_group_version_and_unknown_ones_are_absent() {
        let index = index();
        assert!(index["paths"]["api/v1"]["serverRelativeURL"].as_str().unwrap().starts_with("/openapi/v3/api/v1?hash="));
        assert!(index["paths"]["apis/discovery.k8s.io/v1"].is_object());
        assert!(group_version("apis/nope/v1").is_none());
    }

    #[test]
    fn writes_declare_field_validation_and_no_strategic_merge_content() {
        let doc = v3("api/v1");
        let op = &doc["paths"]["/api/v1/namespaces/{namespace}/services/{name}"]["patch"];
        assert_eq!(op["parameters"][0]["name"], "fieldValidation");
        assert!(op.get("requestBody").is_none(), "kubectl's apply would compute patches from the schema: {op}");
    }

    #[test]
    fn kinds_carry_their_schema_gvk_and_list_merge_rules() {
        let doc = v3("api/v1");
        let schemas = &doc["components"]["schemas"];
        let service = &schemas["io.k8s.api.core.v1.Service"];
        assert_eq!(service["x-kubernetes-group-version-kind"][0]["kind"], "Service");
        // A reference with a description of its own, as Kubernetes writes it.
        assert_eq!(service["properties"]["spec"]["allOf"][0]["$ref"], "#/components/schemas/io.k8s.api.core.v1.ServiceSpec");
        let ports = &schemas["io.k8s.api.core.v1.ServiceSpec"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "port");
        assert_eq!(ports["x-kubernetes-list-map-keys"], json!(["port", "protocol"]));
        assert!(schemas["io.k8s.api.core.v1.ServicePort"]["properties"]["targetPort"]["description"]
            .as_str()
            .unwrap()
            .contains("Number or name"));
        let containers = &schemas["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        let env = &schemas["io.k8s.api.core.v1.Container"]["properties"]["env"];
        assert_eq!(env["x-kubernetes-patch-merge-key"], "name");
        let finalizers = &schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"]["properties"]["finalizers"];
        assert_eq!(finalizers["x-kubernetes-list-type"], "set");
        // Only what the group version's kinds need.
        assert!(schemas.get("io.k8s.api.discovery.v1.EndpointSlice").is_none());
        let slices = v3("apis/discovery.k8s.io/v1");
        assert!(slices["components"]["schemas"]["io.k8s.api.discovery.v1.EndpointSlice"].is_object());
    }

    #[test]
    fn every_reference_resolves_in_its_document() {
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r);
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let v2: Value = serde_json::from_slice(&v2()).expect("JSON");
        for (doc, prefix, pointer) in
            [(v3("api/v1"), "#/components/schemas/", "/components/schemas"), (v2, "#/definitions/", "/definitions")]
        {
            let mut found = Vec::new();
            refs(&doc, &mut found);
            assert!(found.len() > 50, "{}", found.len());
            for r in found {
                let name = r.strip_prefix(prefix).unwrap_or_else(|| panic!("{r} is not under {prefix}"));
                assert!(doc.pointer(pointer).and_then(|d| d.get(name)).is_some(), "{r} does not resolve");
            }
        }
    }
}
