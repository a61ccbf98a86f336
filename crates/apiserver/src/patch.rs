//! The four patch formats kubectl sends: JSON merge patch (RFC 7386),
//! JSON patch (RFC 6902), strategic merge patch (Kubernetes' own, with
//! merge keys and `$patch` directives), and apply (server-side apply).

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchKind {
    /// The patch format a request's Content-Type names.
    pub fn from_content_type(content_type: &str) -> ApiResult<Self> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Ok(Self::Apply),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/json-patch+json, application/merge-patch+json, \
                 application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"
            ))),
        }
    }
}

/// Parses a patch body: JSON for all formats, and YAML too for apply.
pub fn parse_body(kind: PatchKind, body: &[u8]) -> ApiResult<Value> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(_) if kind == PatchKind::Apply => serde_norway::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}"))),
        Err(e) => Err(ApiError::BadRequest(format!("error decoding patch: {e}"))),
    }
}

/// Applies `patch` of the given kind to `doc`, returning the new document.
pub fn apply(kind: PatchKind, doc: &Value, patch: &Value) -> ApiResult<Value> {
    let mut out = doc.clone();
    match kind {
        PatchKind::Merge => {
            require_object(patch)?;
            json_patch::merge(&mut out, patch);
        }
        PatchKind::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::BadRequest(format!("error decoding JSON patch: {e}")))?;
            json_patch::patch(&mut out, &ops).map_err(|e| {
                ApiError::Invalid {
                    kind: "JSONPatch",
                    group: "",
                    name: String::new(),
                    causes: vec![wharf_api::field::FieldError::invalid(
                        "patch",
                        wharf_api::field::Value::Raw(String::new()),
                        e.to_string(),
                    )],
                }
            })?;
        }
        PatchKind::Strategic | PatchKind::Apply => {
            require_object(patch)?;
            strategic_merge(&mut out, patch, "");
        }
    }
    Ok(out)
}

pub(crate) fn require_object(patch: &Value) -> ApiResult<()> {
    if patch.is_object() {
        Ok(())
    } else {
        Err(ApiError::BadRequest("patch must be a JSON object".into()))
    }
}

/// How a list at a field path merges in a strategic merge patch: by the
/// value of a key field, as a set of primitives, or (absent) replaced.
enum ListStrategy {
    MergeKey(&'static str),
    Set,
}

/// The merge strategies of the list fields of the served kinds, by path
/// without indices. Lists not named here are replaced whole.
fn list_strategy(path: &str) -> Option<ListStrategy> {
    use ListStrategy::*;
    Some(match path {
        "spec.ports" => MergeKey("port"),
        "spec.containers" | "spec.initContainers" | "spec.ephemeralContainers" => MergeKey("name"),
        "spec.containers.ports" | "spec.initContainers.ports" => MergeKey("containerPort"),
        "spec.containers.env" | "spec.initContainers.env" => MergeKey("name"),
        "spec.containers.volumeMounts" | "spec.initContainers.volumeMounts" => MergeKey("mountPath"),
        "spec.volumes" | "spec.imagePullSecrets" => MergeKey("name"),
        "spec.hostAliases" => MergeKey("ip"),
        "spec.taints" => MergeKey("key"),
        "status.conditions" | "status.addresses" => MergeKey("type"),
        "status.podIPs" => MergeKey("ip"),
        "metadata.ownerReferences" => MergeKey("uid"),
        "metadata.finalizers" => Set,
        _ => return None,
    })
}

/// The key field of a list merged by key, for the list at `path`.
pub(crate) fn merge_key(path: &str) -> Option<&'static str> {
    match list_strategy(path) {
        Some(ListStrategy::MergeKey(key)) => Some(key),
        _ => None,
    }
}

pub(crate) fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Merges a strategic merge patch into `doc` (an object).
pub fn strategic_merge(doc: &mut Value, patch: &Value, path: &str) {
    let Some(patch) = patch.as_object() else {
        *doc = patch.clone();
        return;
    };
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut replacement = patch.clone();
        replacement.remove("$patch");
        *doc = Value::Object(replacement);
        return;
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Value::Object(target) = doc else { return };
    let mut orders = Vec::new();
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), value));
        } else if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(gone)) = (target.get_mut(field), value.as_array()) {
                list.retain(|v| !gone.contains(v));
            }
        } else if key == "$retainKeys" {
            if let Some(keep) = value.as_array() {
                target.retain(|k, _| keep.iter().any(|r| r.as_str() == Some(k)) || patch.contains_key(k));
            }
        } else if key.starts_with('$') {
            continue;
        } else if value.is_null() {
            target.remove(key);
        } else {
            let sub = child_path(path, key);
            let slot = target.entry(key.clone()).or_insert(Value::Null);
            match (value, list_strategy(&sub)) {
                (Value::Array(items), Some(strategy)) => merge_list(slot, items, strategy, &sub),
                (Value::Object(_), _) if slot.is_object() => strategic_merge(slot, value, &sub),
                _ => *slot = strip_directives(value),
            }
        }
    }
    for (field, order) in orders {
        if let (Some(Value::Array(list)), Some(order)) = (target.get_mut(&field), order.as_array()) {
            reorder(list, order, merge_key(&child_path(path, &field)));
        }
    }
}

/// Removes `$patch` and friends from a value that is set wholesale.
fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

fn merge_list(slot: &mut Value, items: &[Value], strategy: ListStrategy, path: &str) {
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    let Value::Array(list) = slot else { return };
    match strategy {
        ListStrategy::Set => {
            for item in items {
                if !list.contains(item) {
                    list.push(item.clone());
                }
            }
        }
        ListStrategy::MergeKey(key) => {
            if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
                *list = items.iter().filter(|i| i.get("$patch").is_none()).map(strip_directives).collect();
                return;
            }
            for item in items {
                let id = item.get(key);
                let existing = list.iter().position(|e| id.is_some() && e.get(key) == id);
                match (item.get("$patch").and_then(Value::as_str), existing) {
                    (Some("delete"), _) => list.retain(|e| id.is_none() || e.get(key) != id),
                    (_, Some(i)) => strategic_merge(&mut list[i], item, path),
                    (_, None) => list.push(strip_directives(item)),
                }
            }
        }
    }
}

/// Orders `list` as `order` lists it (by merge key, or by value for
/// primitives); unlisted elements keep their place after the listed ones.
fn reorder(list: &mut Vec<Value>, order: &[Value], key: Option<&str>) {
    let rank = |v: &Value| {
        order.iter().position(|o| match key {
            Some(k) => o.get(k).is_some() && o.get(k) == v.get(k),
            None => o == v,
        })
    };
    list.sort_by_key(|v| rank(v).unwrap_or(usize::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn client_side_apply_patch_from_kubectl() {
        let live = json!({"metadata": {"name": "m", "labels": {"app": "x"}},
            "spec": {"ports": [{"name": "mysql", "port": 3306, "protocol": "TCP", "targetPort": "mysql"}],
                     "sessionAffinity": "None", "selector": {"app": "x"}}});
        let patch = json!({"metadata": {"annotations": {"a": "b"}},
            "spec": {"$setElementOrder/ports": [{"port": 3307}],
                     "ports": [{"name": "mysql", "port": 3307, "protocol": "TCP", "targetPort": "mysql"}, {"$patch": "delete", "port": 3306}],
                     "sessionAffinity": "ClientIP", "selector": null}});
        let out = apply(PatchKind::Strategic, &live, &patch).unwrap();
        assert_eq!(out["spec"]["ports"], json!([{"name": "mysql", "port": 3307, "protocol": "TCP", "targetPort": "mysql"}]));
        assert_eq!(out["spec"]["sessionAffinity"], "ClientIP");
        assert!(out["spec"].get("selector").is_none());
        assert_eq!(out["metadata"]["annotations"]["a"], "b");
        assert_eq!(out["metadata"]["labels"]["app"], "x");
    }

    #[test]
    fn merge_keys_merge_and_order() {
        let live = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        let patch = json!({"spec": {"$setElementOrder/ports": [{"port": 443}, {"port": 80}, {"port": 8080}],
            "ports": [{"port": 80, "targetPort": 8000}, {"port": 8080, "name": "alt"}]}});
        let out = apply(PatchKind::Strategic, &live, &patch).unwrap();
        assert_eq!(out["spec"]["ports"], json!([
            {"port": 443, "name": "https"}, {"port": 80, "name": "http", "targetPort": 8000}, {"port": 8080, "name": "alt"}
        ]));
    }

    #[test]
    fn lists_without_merge_key_are_replaced() {
        let live = json!({"spec": {"externalIPs": ["127.0.0.5", "127.0.0.6"]}, "metadata": {"finalizers": ["a"]}});
        let patch = json!({"spec": {"externalIPs": ["127.0.0.7"]}, "metadata": {"finalizers": ["b"]}});
        let out = apply(PatchKind::Strategic, &live, &patch).unwrap();
        assert_eq!(out["spec"]["externalIPs"], json!(["127.0.0.7"]));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
    }

    #[test]
    fn merge_and_json_patch() {
        let live = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let out = apply(PatchKind::Merge, &live, &json!({"metadata": {"labels": {"a": null, "c": "3"}}})).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        let out = apply(PatchKind::Json, &live, &json!([{"op": "replace", "path": "/metadata/labels/a", "value": "9"}])).unwrap();
        assert_eq!(out["metadata"]["labels"]["a"], "9");
        let err = apply(PatchKind::Json, &live, &json!([{"op": "test", "path": "/metadata/labels/a", "value": "0"}]));
        assert!(matches!(err, Err(ApiError::Invalid { .. })));
    }

    #[test]
    fn apply_accepts_yaml() {
        let v = parse_body(PatchKind::Apply, b"metadata:\n  name: x\n").unwrap();
        assert_eq!(v["metadata"]["name"], "x");
        assert!(parse_body(PatchKind::Merge, b"metadata:\n  name: x\n").is_err());
    }
}
