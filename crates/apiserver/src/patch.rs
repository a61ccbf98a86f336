//! The four patch formats kubectl sends: JSON merge patch (RFC 7386),
//! JSON patch (RFC 6902), strategic merge patch (Kubernetes' own, with
//! merge keys and `$patch` directives), and apply (server-side apply).

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::kind::{Kind, ListMerge};

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
        Err(_) if kind == PatchKind::Apply => {
            serde_norway::from_slice(body).map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))
        }
        Err(e) => Err(ApiError::BadRequest(format!("error decoding patch: {e}"))),
    }
}

/// Applies `patch` of the given format to `doc`, an object of `kind`,
/// returning the new document.
pub fn apply(format: PatchKind, kind: &Kind, doc: &Value, patch: &Value) -> ApiResult<Value> {
    let mut out = doc.clone();
    match format {
        PatchKind::Merge => {
            require_object(patch)?;
            json_patch::merge(&mut out, patch);
        }
        PatchKind::Json => json_patch_bounded(&mut out, patch)?,
        PatchKind::Strategic | PatchKind::Apply => {
            require_object(patch)?;
            strategic_merge(kind, &mut out, patch, "");
        }
    }
    Ok(out)
}

/// kube-apiserver's bound on the operations of one JSON patch.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;
/// What the operations of one JSON patch may bring into the document in
/// all (the request body limit): thirty `copy`s that each double the
/// object stop here instead of filling memory.
pub const MAX_JSON_PATCH_GROWTH: usize = crate::limits::MAX_REQUEST_BODY_BYTES;

/// The length of a value's JSON, counted without building it.
fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_or(usize::MAX, |()| count.0)
}

/// Applies an RFC 6902 patch one operation at a time, refusing it before
/// it grows the document past `MAX_JSON_PATCH_GROWTH`.
fn json_patch_bounded(doc: &mut Value, patch: &Value) -> ApiResult<()> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| ApiError::BadRequest(format!("error decoding JSON patch: {e}")))?;
    if ops.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(ApiError::TooLarge(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.0.len()
        )));
    }
    let mut grown = 0usize;
    for op in &ops.0 {
        use json_patch::PatchOperation::*;
        let added = match op {
            Add(add) => json_len(&add.value),
            Replace(replace) => json_len(&replace.value),
            Copy(copy) => doc.pointer(copy.from.as_str()).map_or(0, json_len),
            Remove(_) | Move(_) | Test(_) => 0,
        };
        grown = grown.saturating_add(added);
        if grown > MAX_JSON_PATCH_GROWTH {
            return Err(ApiError::TooLarge(format!("the JSON patch would add more than {MAX_JSON_PATCH_GROWTH} bytes to the object")));
        }
        json_patch::patch(doc, std::slice::from_ref(op)).map_err(|e| ApiError::Invalid {
            kind: "JSONPatch",
            group: "",
            name: String::new(),
            causes: vec![wharf_api::field::FieldError::invalid("patch", wharf_api::field::Value::Raw(String::new()), e.to_string())],
        })?;
    }
    Ok(())
}

pub(crate) fn require_object(patch: &Value) -> ApiResult<()> {
    if patch.is_object() {
        Ok(())
    } else {
        Err(ApiError::BadRequest("patch must be a JSON object".into()))
    }
}

/// The strategic-merge key of the list at `path`, if it merges by key.
pub(crate) fn merge_key(kind: &Kind, path: &str) -> Option<&'static str> {
    match kind.list_rule(path) {
        Some(ListMerge::Map { patch_key, .. }) => Some(patch_key),
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

/// Which fields identify a list element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The strategic merge patch's `patchMergeKey`.
    PatchKey,
    /// Server-side apply's list-map keys, with their defaults.
    MapKeys,
}

/// The identity of a list element under `merge`: the values of its key
/// fields (defaults filled in); None when a key without a default is
/// missing, or the list is not keyed.
pub(crate) fn element_id(merge: &ListMerge, identity: Identity, item: &Value) -> Option<Map<String, Value>> {
    let ListMerge::Map { patch_key, map_keys } = merge else { return None };
    let single = [(*patch_key, None)];
    let keys: &[(&str, Option<&str>)] = if identity == Identity::PatchKey || map_keys.is_empty() { &single } else { map_keys };
    keys.iter()
        .map(|(k, default)| {
            let value = item.get(*k).filter(|v| !v.is_null()).cloned().or_else(|| default.map(|d| Value::String(d.into())))?;
            Some((k.to_string(), value))
        })
        .collect()
}

/// Merges a strategic merge patch into `doc` (an object of `kind`).
pub fn strategic_merge(kind: &Kind, doc: &mut Value, patch: &Value, path: &str) {
    Merger { kind, identity: Identity::PatchKey }.merge(doc, patch, path);
}

/// Merges an applied configuration into `doc`, list elements matched by
/// their list-map keys (Service ports by port and protocol).
pub fn apply_merge(kind: &Kind, doc: &mut Value, config: &Value) {
    Merger { kind, identity: Identity::MapKeys }.merge(doc, config, "");
}

struct Merger<'a> {
    kind: &'a Kind,
    identity: Identity,
}

impl Merger<'_> {
    fn merge(&self, doc: &mut Value, patch: &Value, path: &str) {
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
                match (value, self.kind.list_rule(&sub)) {
                    (Value::Array(items), Some(merge)) => self.merge_list(slot, items, merge, &sub),
                    (Value::Object(_), _) if slot.is_object() => self.merge(slot, value, &sub),
                    _ => *slot = strip_directives(value),
                }
            }
        }
        for (field, order) in orders {
            if let (Some(Value::Array(list)), Some(order)) = (target.get_mut(&field), order.as_array()) {
                reorder(list, order, merge_key(self.kind, &child_path(path, &field)));
            }
        }
    }

    fn merge_list(&self, slot: &mut Value, items: &[Value], merge: &ListMerge, path: &str) {
        if !slot.is_array() {
            *slot = Value::Array(Vec::new());
        }
        let Value::Array(list) = slot else { return };
        if *merge == ListMerge::Set {
            for item in items {
                if !list.contains(item) {
                    list.push(item.clone());
                }
            }
            return;
        }
        if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
            *list = items.iter().filter(|i| i.get("$patch").is_none()).map(strip_directives).collect();
            return;
        }
        let id_of = |v: &Value| element_id(merge, self.identity, v);
        for item in items {
            let id = id_of(item);
            let existing = list.iter().position(|e| id.is_some() && id_of(e) == id);
            match (item.get("$patch").and_then(Value::as_str), existing) {
                (Some("delete"), _) => list.retain(|e| id.is_none() || id_of(e) != id),
                (_, Some(i)) => self.merge(&mut list[i], item, path),
                (_, None) => list.push(strip_directives(item)),
            }
        }
    }
}

/// Removes `$patch` and friends from a value that is set wholesale.
fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(m) => {
            Value::Object(m.iter().filter(|(k, _)| !k.starts_with('$')).map(|(k, v)| (k.clone(), strip_directives(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Orders `list` as `order` lists it (by merge key, or by value for
/// primitives); unlisted elements keep their place after the listed ones.
fn reorder(list: &mut [Value], order: &[Value], key: Option<&str>) {
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
    use crate::kind::SERVICE;
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
        let out = apply(PatchKind::Strategic, &SERVICE, &live, &patch).unwrap();
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
        let out = apply(PatchKind::Strategic, &SERVICE, &live, &patch).unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([
                {"port": 443, "name": "https"}, {"port": 80, "name": "http", "targetPort": 8000}, {"port": 8080, "name": "alt"}
            ])
        );
    }

    #[test]
    fn lists_without_merge_key_are_replaced() {
        let live = json!({"spec": {"externalIPs": ["127.0.0.5", "127.0.0.6"]}, "metadata": {"finalizers": ["a"]}});
        let patch = json!({"spec": {"externalIPs": ["127.0.0.7"]}, "metadata": {"finalizers": ["b"]}});
        let out = apply(PatchKind::Strategic, &SERVICE, &live, &patch).unwrap();
        assert_eq!(out["spec"]["externalIPs"], json!(["127.0.0.7"]));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
    }

    #[test]
    fn merge_and_json_patch() {
        let live = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let out = apply(PatchKind::Merge, &SERVICE, &live, &json!({"metadata": {"labels": {"a": null, "c": "3"}}})).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"b": "2", "c": "3"}));
        let out = apply(PatchKind::Json, &SERVICE, &live, &json!([{"op": "replace", "path": "/metadata/labels/a", "value": "9"}])).unwrap();
        assert_eq!(out["metadata"]["labels"]["a"], "9");
        let err = apply(PatchKind::Json, &SERVICE, &live, &json!([{"op": "test", "path": "/metadata/labels/a", "value": "0"}]));
        assert!(matches!(err, Err(ApiError::Invalid { .. })));
    }

    #[test]
    fn apply_accepts_yaml() {
        let v = parse_body(PatchKind::Apply, b"metadata:\n  name: x\n").unwrap();
        assert_eq!(v["metadata"]["name"], "x");
        assert!(parse_body(PatchKind::Merge, b"metadata:\n  name: x\n").is_err());
    }

    #[test]
    fn a_json_patch_of_doubling_copies_is_refused_before_it_fills_memory() {
        let live = json!({"metadata": {"name": "x", "annotations": {"a": "0123456789".repeat(100)}}});
        // Each copy puts the whole metadata (with the copies before) into it.
        let ops: Vec<Value> = (0..30).map(|i| json!({"op": "copy", "from": "/metadata", "path": format!("/metadata/c{i}")})).collect();
        let started = std::time::Instant::now();
        let err = apply(PatchKind::Json, &SERVICE, &live, &json!(ops)).unwrap_err();
        assert!(matches!(err, ApiError::TooLarge(_)), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let many: Vec<Value> =
            (0..=MAX_JSON_PATCH_OPERATIONS).map(|_| json!({"op": "test", "path": "/metadata/name", "value": "x"})).collect();
        assert!(matches!(apply(PatchKind::Json, &SERVICE, &live, &json!(many)), Err(ApiError::TooLarge(_))));
    }
}
