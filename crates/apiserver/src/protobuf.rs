//! The protobuf request bodies that `kubectl create namespace`, `service`,
//! `configmap`, `secret`, `serviceaccount`, `role`, `clusterrole`,
//! `rolebinding`, `clusterrolebinding` and `kubectl auth can-i`/`whoami`
//! send (they have no JSON fallback): the
//! `k8s\0` magic, then a `runtime.Unknown` envelope around the object.
//! Only the fields those commands set are decoded; the result is the same
//! JSON object a `-f` manifest would give.

use std::collections::BTreeMap;

use prost::Message;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, ApiResult};

const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    generate_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
    #[prost(btree_map = "string, string", tag = "11")]
    labels: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "12")]
    annotations: BTreeMap<String, String>,
}

/// Namespace and Service share this outer shape (metadata=1, spec=2).
#[derive(Clone, PartialEq, Message)]
struct Envelope {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    spec: Option<Vec<u8>>,
}

/// ConfigMap and Secret: their data maps (`generated.proto` numbers).
#[derive(Clone, PartialEq, Message)]
struct ConfigMap {
    #[prost(btree_map = "string, string", tag = "2")]
    data: BTreeMap<String, String>,
    #[prost(btree_map = "string, bytes", tag = "3")]
    binary_data: BTreeMap<String, Vec<u8>>,
    #[prost(bool, optional, tag = "4")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct Secret {
    #[prost(btree_map = "string, bytes", tag = "2")]
    data: BTreeMap<String, Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    type_: Option<String>,
    #[prost(btree_map = "string, string", tag = "4")]
    string_data: BTreeMap<String, String>,
    #[prost(bool, optional, tag = "5")]
    immutable: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
struct ServiceSpec {
    #[prost(message, repeated, tag = "1")]
    ports: Vec<ServicePort>,
    #[prost(btree_map = "string, string", tag = "2")]
    selector: BTreeMap<String, String>,
    #[prost(string, optional, tag = "3")]
    cluster_ip: Option<String>,
    #[prost(string, optional, tag = "4")]
    type_: Option<String>,
    #[prost(string, repeated, tag = "5")]
    external_ips: Vec<String>,
    #[prost(string, optional, tag = "7")]
    session_affinity: Option<String>,
    #[prost(string, optional, tag = "10")]
    external_name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ServicePort {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    protocol: Option<String>,
    #[prost(int32, optional, tag = "3")]
    port: Option<i32>,
    #[prost(message, optional, tag = "4")]
    target_port: Option<IntOrString>,
    #[prost(int32, optional, tag = "5")]
    node_port: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct IntOrString {
    #[prost(int64, optional, tag = "1")]
    kind: Option<i64>,
    #[prost(int32, optional, tag = "2")]
    int_val: Option<i32>,
    #[prost(string, optional, tag = "3")]
    str_val: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct PolicyRule {
    #[prost(string, repeated, tag = "1")]
    verbs: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    api_groups: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    resources: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    resource_names: Vec<String>,
    #[prost(string, repeated, tag = "5")]
    non_resource_urls: Vec<String>,
}

/// Role and ClusterRole (whose aggregation rule, field 3, is not read).
#[derive(Clone, PartialEq, Message)]
struct Role {
    #[prost(message, repeated, tag = "2")]
    rules: Vec<PolicyRule>,
}

/// RoleBinding and ClusterRoleBinding.
#[derive(Clone, PartialEq, Message)]
struct Binding {
    #[prost(message, repeated, tag = "2")]
    subjects: Vec<Subject>,
    #[prost(message, optional, tag = "3")]
    role_ref: Option<RoleRef>,
}

#[derive(Clone, PartialEq, Message)]
struct Subject {
    #[prost(string, optional, tag = "1")]
    kind: Option<String>,
    #[prost(string, optional, tag = "2")]
    api_group: Option<String>,
    #[prost(string, optional, tag = "3")]
    name: Option<String>,
    #[prost(string, optional, tag = "4")]
    namespace: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct RoleRef {
    #[prost(string, optional, tag = "1")]
    api_group: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
    #[prost(string, optional, tag = "3")]
    name: Option<String>,
}

/// The spec of the access reviews (a SelfSubjectAccessReview's has only
/// the attributes; a SelfSubjectRulesReview's namespace is field 1 too,
/// read apart).
#[derive(Clone, PartialEq, Message)]
struct AccessReviewSpec {
    #[prost(message, optional, tag = "1")]
    resource_attributes: Option<ResourceAttributes>,
    #[prost(message, optional, tag = "2")]
    non_resource_attributes: Option<NonResourceAttributes>,
    #[prost(string, optional, tag = "3")]
    user: Option<String>,
    #[prost(string, repeated, tag = "4")]
    groups: Vec<String>,
    #[prost(string, optional, tag = "6")]
    uid: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceAttributes {
    #[prost(string, optional, tag = "1")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "2")]
    verb: Option<String>,
    #[prost(string, optional, tag = "3")]
    group: Option<String>,
    #[prost(string, optional, tag = "4")]
    version: Option<String>,
    #[prost(string, optional, tag = "5")]
    resource: Option<String>,
    #[prost(string, optional, tag = "6")]
    subresource: Option<String>,
    #[prost(string, optional, tag = "7")]
    name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct NonResourceAttributes {
    #[prost(string, optional, tag = "1")]
    path: Option<String>,
    #[prost(string, optional, tag = "2")]
    verb: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct RulesReviewSpec {
    #[prost(string, optional, tag = "1")]
    namespace: Option<String>,
}

fn policy_rule(r: &PolicyRule) -> Value {
    let mut m = Map::new();
    m.insert("verbs".into(), json!(r.verbs));
    for (key, list) in [
        ("apiGroups", &r.api_groups),
        ("resources", &r.resources),
        ("resourceNames", &r.resource_names),
        ("nonResourceURLs", &r.non_resource_urls),
    ] {
        if !list.is_empty() {
            m.insert(key.into(), json!(list));
        }
    }
    Value::Object(m)
}

/// The fields a message sets, as a JSON object (empty ones left out).
fn fields(pairs: &[(&str, &Option<String>)]) -> Value {
    let mut m = Map::new();
    for (key, value) in pairs {
        set(&mut m, key, value.as_deref());
    }
    Value::Object(m)
}

fn binding(b: &Binding) -> (Value, Value) {
    let subjects: Vec<Value> = b
        .subjects
        .iter()
        .map(|s| fields(&[("kind", &s.kind), ("apiGroup", &s.api_group), ("name", &s.name), ("namespace", &s.namespace)]))
        .collect();
    let r = b.role_ref.clone().unwrap_or_default();
    (json!(subjects), fields(&[("apiGroup", &r.api_group), ("kind", &r.kind), ("name", &r.name)]))
}

fn access_review_spec(spec: &AccessReviewSpec) -> Value {
    let mut out = Map::new();
    if let Some(r) = &spec.resource_attributes {
        let attrs = [
            ("namespace", &r.namespace),
            ("verb", &r.verb),
            ("group", &r.group),
            ("version", &r.version),
            ("resource", &r.resource),
            ("subresource", &r.subresource),
            ("name", &r.name),
        ];
        out.insert("resourceAttributes".into(), fields(&attrs));
    }
    if let Some(n) = &spec.non_resource_attributes {
        out.insert("nonResourceAttributes".into(), fields(&[("path", &n.path), ("verb", &n.verb)]));
    }
    set(&mut out, "user", spec.user.as_deref());
    set(&mut out, "uid", spec.uid.as_deref());
    if !spec.groups.is_empty() {
        out.insert("groups".into(), json!(spec.groups));
    }
    Value::Object(out)
}

fn bad(what: &str) -> ApiError {
    ApiError::BadRequest(format!("unable to decode protobuf body: {what}"))
}

/// Inserts `value` under `key` unless it is empty, as JSON omits it.
fn set(map: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        map.insert(key.into(), json!(v));
    }
}

fn metadata(meta: &ObjectMeta) -> Value {
    let mut m = Map::new();
    set(&mut m, "name", meta.name.as_deref());
    set(&mut m, "generateName", meta.generate_name.as_deref());
    set(&mut m, "namespace", meta.namespace.as_deref());
    if !meta.labels.is_empty() {
        m.insert("labels".into(), json!(meta.labels));
    }
    if !meta.annotations.is_empty() {
        m.insert("annotations".into(), json!(meta.annotations));
    }
    Value::Object(m)
}

fn service_spec(spec: &ServiceSpec) -> Value {
    let mut s = Map::new();
    let ports: Vec<Value> = spec
        .ports
        .iter()
        .map(|p| {
            let mut port = Map::new();
            set(&mut port, "name", p.name.as_deref());
            set(&mut port, "protocol", p.protocol.as_deref());
            port.insert("port".into(), json!(p.port.unwrap_or(0)));
            if let Some(t) = &p.target_port {
                let target = if t.kind == Some(1) { json!(t.str_val.clone().unwrap_or_default()) } else { json!(t.int_val.unwrap_or(0)) };
                port.insert("targetPort".into(), target);
            }
            if let Some(n) = p.node_port.filter(|n| *n != 0) {
                port.insert("nodePort".into(), json!(n));
            }
            Value::Object(port)
        })
        .collect();
    s.insert("ports".into(), json!(ports));
    if !spec.selector.is_empty() {
        s.insert("selector".into(), json!(spec.selector));
    }
    set(&mut s, "clusterIP", spec.cluster_ip.as_deref());
    set(&mut s, "type", spec.type_.as_deref());
    if !spec.external_ips.is_empty() {
        s.insert("externalIPs".into(), json!(spec.external_ips));
    }
    set(&mut s, "sessionAffinity", spec.session_affinity.as_deref());
    set(&mut s, "externalName", spec.external_name.as_deref());
    Value::Object(s)
}

/// Decodes a protobuf body into the JSON form of the object.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let payload = body.strip_prefix(MAGIC).ok_or_else(|| bad("missing k8s magic"))?;
    let unknown = Unknown::decode(payload).map_err(|e| bad(&e.to_string()))?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let raw = unknown.raw.unwrap_or_default();
    let envelope = Envelope::decode(raw.as_slice()).map_err(|e| bad(&e.to_string()))?;
    let mut obj = json!({"apiVersion": api_version, "kind": kind, "metadata": metadata(&envelope.metadata.unwrap_or_default())});
    let base64 = |bytes: &Vec<u8>| json!(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes));
    match kind.as_str() {
        "Namespace" | "ServiceAccount" => {}
        "Service" => {
            let spec = ServiceSpec::decode(envelope.spec.unwrap_or_default().as_slice()).map_err(|e| bad(&e.to_string()))?;
            obj["spec"] = service_spec(&spec);
        }
        "ConfigMap" => {
            let cm = ConfigMap::decode(raw.as_slice()).map_err(|e| bad(&e.to_string()))?;
            obj["data"] = json!(cm.data);
            if !cm.binary_data.is_empty() {
                obj["binaryData"] = cm.binary_data.iter().map(|(k, v)| (k.clone(), base64(v))).collect();
            }
            if let Some(immutable) = cm.immutable {
                obj["immutable"] = json!(immutable);
            }
        }
        "Secret" => {
            let secret = Secret::decode(raw.as_slice()).map_err(|e| bad(&e.to_string()))?;
            obj["data"] = secret.data.iter().map(|(k, v)| (k.clone(), base64(v))).collect();
            if !secret.string_data.is_empty() {
                obj["stringData"] = json!(secret.string_data);
            }
            set(obj.as_object_mut().ok_or_else(|| bad("not an object"))?, "type", secret.type_.as_deref());
            if let Some(immutable) = secret.immutable {
                obj["immutable"] = json!(immutable);
            }
        }
        "Role" | "ClusterRole" => {
            let role = Role::decode(raw.as_slice()).map_err(|e| bad(&e.to_string()))?;
            obj["rules"] = role.rules.iter().map(policy_rule).collect();
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let (subjects, role_ref) = binding(&Binding::decode(raw.as_slice()).map_err(|e| bad(&e.to_string()))?);
            obj["subjects"] = subjects;
            obj["roleRef"] = role_ref;
        }
        "SelfSubjectAccessReview" | "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let spec = AccessReviewSpec::decode(envelope.spec.unwrap_or_default().as_slice()).map_err(|e| bad(&e.to_string()))?;
            obj["spec"] = access_review_spec(&spec);
        }
        "SelfSubjectRulesReview" => {
            let spec = RulesReviewSpec::decode(envelope.spec.unwrap_or_default().as_slice()).map_err(|e| bad(&e.to_string()))?;
            obj["spec"] = fields(&[("namespace", &spec.namespace)]);
        }
        "SelfSubjectReview" => {}
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "protobuf bodies are accepted for the kinds kubectl's create commands send, not {other:?}; send JSON"
            )))
        }
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown { type_meta: Some(TypeMeta { api_version: Some("v1".into()), kind: Some(kind.into()) }), raw: Some(raw) };
        [MAGIC, &unknown.encode_to_vec()].concat()
    }

    #[test]
    fn namespace_as_kubectl_sends_it() {
        // Bytes recorded from `kubectl create namespace team-a`.
        let body = b"k8s\x00\x0a\x0f\x0a\x02v1\x12\x09Namespace\x12\x1e\x0a\x16\x0a\x06team-a\x12\x00\x1a\x00\x22\x00\x2a\x00\x32\x00\x38\x00\x42\x00\x12\x00\x1a\x02\x0a\x00\x1a\x00\x22\x00";
        let v = decode(body).unwrap();
        assert_eq!(v["kind"], "Namespace");
        assert_eq!(v["metadata"]["name"], "team-a");
    }

    #[test]
    fn service_with_named_target_port() {
        let spec = ServiceSpec {
            ports: vec![ServicePort {
                name: Some("80-8080".into()),
                protocol: Some("TCP".into()),
                port: Some(80),
                target_port: Some(IntOrString { kind: Some(0), int_val: Some(8080), str_val: Some(String::new()) }),
                node_port: Some(0),
            }],
            selector: [("app".to_string(), "web".to_string())].into(),
            type_: Some("ClusterIP".into()),
            ..Default::default()
        };
        let outer =
            Envelope { metadata: Some(ObjectMeta { name: Some("web".into()), ..Default::default() }), spec: Some(spec.encode_to_vec()) };
        let v = decode(&envelope("Service", outer.encode_to_vec())).unwrap();
        assert_eq!(v["spec"]["ports"][0], json!({"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}));
        assert_eq!(v["spec"]["selector"]["app"], "web");
        assert!(decode(b"nope").is_err());
        assert!(decode(&envelope("Pod", Vec::new())).is_err());
    }

    #[test]
    fn secret_and_config_map_data() {
        let meta = ObjectMeta { name: Some("db".into()), ..Default::default() };
        let mut raw = Envelope { metadata: Some(meta), spec: None }.encode_to_vec();
        raw.extend(
            Secret { data: [("password".into(), b"hunter2".to_vec())].into(), type_: Some("Opaque".into()), ..Default::default() }
                .encode_to_vec(),
        );
        let v = decode(&envelope("Secret", raw)).unwrap();
        assert_eq!(v["metadata"]["name"], "db");
        assert_eq!(v["data"]["password"], "aHVudGVyMg==");
        assert_eq!(v["type"], "Opaque");
        let raw = ConfigMap { data: [("a".into(), "1".into()), ("b".into(), "2".into())].into(), ..Default::default() }.encode_to_vec();
        let v = decode(&envelope("ConfigMap", raw)).unwrap();
        assert_eq!(v["data"], json!({"a": "1", "b": "2"}));
    }
}
