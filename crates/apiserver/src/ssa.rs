//! Server-side apply: each field manager's set of fields, kept in
//! `metadata.managedFields` in the FieldsV1 form (`{"f:spec": {"f:type": {}}}`,
//! list elements merged by key as `k:{"port":80}` with `.` for the element
//! itself), decides what an apply may remove and where two appliers
//! conflict.
//!
//! Only `Apply` operations are tracked; fields written by updates and
//! patches have no recorded owner, so they never conflict with an applier.
//! Lists without a merge key count as one field.

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::kind::Kind;
use crate::patch::{apply_merge, child_path, element_id, require_object, Identity};

/// A field's path from the object's root, as the keys of a field set:
/// `f:name` for a field, `k:{..}` for a list element, `.` for the element.
type FieldPath = Vec<String>;

/// One field two managers both set to different values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldConflict {
    pub manager: String,
    pub path: FieldPath,
}

impl FieldConflict {
    /// The path as Kubernetes prints it: `.spec.ports[port=80].targetPort`.
    pub fn field(&self) -> String {
        let mut out = String::new();
        for step in &self.path {
            if let Some(name) = step.strip_prefix("f:") {
                out.push('.');
                out.push_str(name);
            } else if let Some(Value::Object(key)) = step.strip_prefix("k:").and_then(|k| serde_json::from_str(k).ok()) {
                let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("[{}]", parts.join(",")));
            }
        }
        out
    }
}

/// The set of fields a configuration of `kind` sets.
pub fn field_set(kind: &Kind, config: &Value) -> Value {
    fields_at(kind, config, "")
}

fn fields_at(kind: &Kind, value: &Value, path: &str) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (format!("f:{k}"), fields_at(kind, v, &child_path(path, k)))).collect())
        }
        Value::Array(items) => match kind.list_rule(path) {
            Some(merge) => Value::Object(
                items
                    .iter()
                    .filter_map(|item| {
                        let id = element_id(merge, Identity::MapKeys, item)?;
                        let Value::Object(mut fields) = fields_at(kind, item, path) else { return None };
                        fields.insert(".".into(), Value::Object(Map::new()));
                        Some((format!("k:{}", Value::Object(id)), Value::Object(fields)))
                    })
                    .collect(),
            ),
            None => Value::Object(Map::new()),
        },
        _ => Value::Object(Map::new()),
    }
}

fn is_leaf(set: &Value) -> bool {
    set.as_object().is_none_or(Map::is_empty)
}

/// The leaves of a field set: the fields it owns.
fn leaves(set: &Value) -> Vec<FieldPath> {
    fn walk(set: &Value, prefix: &mut FieldPath, out: &mut Vec<FieldPath>) {
        let Some(map) = set.as_object().filter(|m| !m.is_empty()) else {
            out.push(prefix.clone());
            return;
        };
        for (key, sub) in map {
            prefix.push(key.clone());
            walk(sub, prefix, out);
            prefix.pop();
        }
    }
    let mut out = Vec::new();
    if !is_leaf(set) {
        walk(set, &mut Vec::new(), &mut out);
    }
    out
}

fn owns(set: &Value, path: &[String]) -> bool {
    path.iter().try_fold(set, |node, key| node.get(key)).is_some_and(is_leaf)
}

/// Removes a field from a set, and the parents it leaves empty (an empty
/// parent would read as a leaf: the whole map).
fn disown(set: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else { return };
    let Some(map) = set.as_object_mut() else { return };
    if !rest.is_empty() {
        let Some(child) = map.get_mut(first) else { return };
        disown(child, rest);
        if !is_leaf(child) {
            return;
        }
    }
    map.remove(first);
}

/// The list element a `k:` step names: the one whose key fields match.
fn element_position(list: &[Value], step: &str) -> Option<usize> {
    let key: Map<String, Value> = serde_json::from_str(step.strip_prefix("k:")?).ok()?;
    list.iter().position(|e| key.iter().all(|(k, v)| e.get(k) == Some(v)))
}

/// The part of an object a field-set step names.
fn child<'a>(obj: &'a Value, step: &str) -> Option<&'a Value> {
    match step {
        "." => Some(obj),
        _ => match step.strip_prefix("f:") {
            Some(name) => obj.get(name),
            None => obj.as_array().and_then(|list| list.get(element_position(list, step)?)),
        },
    }
}

fn child_mut<'a>(obj: &'a mut Value, step: &str) -> Option<&'a mut Value> {
    match step.strip_prefix("f:") {
        Some(name) => obj.get_mut(name),
        None => {
            let list = obj.as_array_mut()?;
            let at = element_position(list, step)?;
            list.get_mut(at)
        }
    }
}

fn remove_child(obj: &mut Value, step: &str) {
    match (step.strip_prefix("f:"), obj) {
        (Some(name), Value::Object(map)) => {
            map.remove(name);
        }
        (None, Value::Array(list)) => {
            if let Some(at) = element_position(list, step) {
                list.remove(at);
            }
        }
        _ => {}
    }
}

fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(obj, |node, step| child(node, step))
}

/// Removes from `live` the fields `before` set and `after` no longer does;
/// inside a map the manager set only some keys of, only those keys go.
/// True when `live` itself goes: a list element whose `.` was dropped.
fn remove_dropped(live: &mut Value, before: &Value, after: &Value) -> bool {
    let Some(before) = before.as_object() else { return false };
    if before.contains_key(".") && after.get(".").is_none() {
        return true;
    }
    let nothing = Value::Object(Map::new());
    for (step, sub) in before.iter().filter(|(step, _)| *step != ".") {
        let next = after.get(step);
        let gone = match next {
            None if is_leaf(sub) => true,
            _ => child_mut(live, step).is_some_and(|child| {
                remove_dropped(child, sub, next.unwrap_or(&nothing)) || (next.is_none() && child.as_object().is_some_and(Map::is_empty))
            }),
        };
        if gone {
            remove_child(live, step);
        }
    }
    false
}

fn is_apply_by(entry: &Value, manager: &str) -> bool {
    entry["manager"] == manager && entry["operation"] == "Apply"
}

/// Server-side apply for one field manager: the fields it applied before
/// and leaves out now are removed unless another applier also owns them,
/// then the configuration is merged in. A field another applier owns and
/// this configuration changes is a conflict: refused, or with `force`
/// taken over from that applier. The manager's new field set is recorded
/// in `metadata.managedFields`.
pub fn server_side_apply(kind: &Kind, current: &Value, config: &Value, manager: &str, force: bool) -> ApiResult<Value> {
    require_object(config)?;
    let fields = field_set(kind, config);
    let mut entries = current["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    let others_own = |path: &[String]| entries.iter().any(|e| !is_apply_by(e, manager) && owns(&e["fieldsV1"], path));
    let mut out = current.clone();
    if let Some(previous) = entries.iter().find(|e| is_apply_by(e, manager)) {
        let mut before = previous["fieldsV1"].clone();
        // Identity is never dropped, nor what another applier still owns.
        let identity = [&["f:apiVersion"][..], &["f:kind"], &["f:metadata", "f:name"], &["f:metadata", "f:namespace"]];
        let shared: Vec<FieldPath> = leaves(&before).into_iter().filter(|p| others_own(p)).collect();
        for path in identity.iter().map(|p| p.iter().map(ToString::to_string).collect::<FieldPath>()).chain(shared) {
            disown(&mut before, &path);
        }
        remove_dropped(&mut out, &before, &fields);
    }
    apply_merge(kind, &mut out, config);
    let conflicts = conflicts(current, &out, &fields, manager, &entries);
    if !conflicts.is_empty() {
        if !force {
            return Err(ApiError::ApplyConflict(conflicts));
        }
        for conflict in &conflicts {
            for entry in entries.iter_mut().filter(|e| e["manager"] == conflict.manager.as_str()) {
                disown(&mut entry["fieldsV1"], &conflict.path);
            }
        }
        entries.retain(|e| e["fieldsV1"].as_object().is_some_and(|m| !m.is_empty()));
        crate::object::metadata_mut(&mut out).insert("managedFields".into(), Value::Array(entries));
    }
    record_apply(&mut out, &fields, manager, config);
    Ok(out)
}

/// The fields of `fields` another applier owns whose value the apply
/// changes (from `current` to `applied`).
fn conflicts(current: &Value, applied: &Value, fields: &Value, manager: &str, entries: &[Value]) -> Vec<FieldConflict> {
    let mut found = Vec::new();
    // A list element's `.` is its existence, not a value to disagree on.
    for path in leaves(fields).into_iter().filter(|p| p.last().is_some_and(|s| s != ".")) {
        if value_at(current, &path) == value_at(applied, &path) {
            continue;
        }
        for entry in entries.iter().filter(|e| e["operation"] == "Apply" && e["manager"] != manager) {
            if owns(&entry["fieldsV1"], &path) {
                let manager = entry["manager"].as_str().unwrap_or_default().to_string();
                found.push(FieldConflict { manager, path: path.clone() });
            }
        }
    }
    found
}

/// Puts `manager`'s field set into `obj`'s managedFields.
pub fn record_apply(obj: &mut Value, fields: &Value, manager: &str, config: &Value) {
    let entry = serde_json::json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": config.get("apiVersion").cloned().unwrap_or(Value::Null),
        "time": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    });
    let meta = crate::object::metadata_mut(obj);
    let mut entries: Vec<Value> = meta.get("managedFields").and_then(Value::as_array).cloned().unwrap_or_default();
    entries.retain(|e| !is_apply_by(e, manager));
    entries.push(entry);
    meta.insert("managedFields".into(), Value::Array(entries));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::SERVICE;
    use serde_json::json;

    #[test]
    fn apply_removes_what_the_manager_dropped() {
        let live = json!({"metadata": {"name": "x", "labels": {"mine": "1", "theirs": "2"}}, "spec": {"sessionAffinity": "ClientIP", "type": "ClusterIP"}});
        let first = json!({"metadata": {"name": "x", "labels": {"mine": "1"}}, "spec": {"sessionAffinity": "ClientIP"}});
        let applied = server_side_apply(&SERVICE, &live, &first, "kubectl", false).unwrap();
        let second = json!({"metadata": {"name": "x"}, "spec": {}});
        let out = server_side_apply(&SERVICE, &applied, &second, "kubectl", false).unwrap();
        assert!(out["metadata"]["labels"].get("mine").is_none(), "{out}");
        assert_eq!(out["metadata"]["labels"]["theirs"], "2", "fields the manager never set stay");
        assert!(out["spec"].get("sessionAffinity").is_none());
        assert_eq!(out["spec"]["type"], "ClusterIP");
        assert_eq!(out["metadata"]["name"], "x");
        // Another manager's apply does not drop the first one's fields.
        let other = server_side_apply(&SERVICE, &applied, &json!({"metadata": {"name": "x"}}), "someone-else", false).unwrap();
        assert_eq!(other["metadata"]["labels"]["mine"], "1");
        assert_eq!(other["metadata"]["managedFields"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn a_changed_field_another_applier_owns_conflicts_unless_forced() {
        let live = json!({"metadata": {"name": "x"}, "spec": {"type": "ClusterIP"}});
        let a = server_side_apply(&SERVICE, &live, &json!({"metadata": {"name": "x"}, "spec": {"type": "NodePort"}}), "a", false).unwrap();
        // The same value is shared ownership, not a conflict.
        let shared =
            server_side_apply(&SERVICE, &a, &json!({"metadata": {"name": "x"}, "spec": {"type": "NodePort"}}), "b", false).unwrap();
        let change = json!({"metadata": {"name": "x"}, "spec": {"type": "LoadBalancer"}});
        let Err(ApiError::ApplyConflict(found)) = server_side_apply(&SERVICE, &shared, &change, "c", false) else { panic!("no conflict") };
        let found: Vec<(String, String)> = found.iter().map(|c| (c.manager.clone(), c.field())).collect();
        assert_eq!(found, [("a".to_string(), ".spec.type".to_string()), ("b".to_string(), ".spec.type".to_string())]);
        let forced = server_side_apply(&SERVICE, &shared, &change, "c", true).unwrap();
        assert_eq!(forced["spec"]["type"], "LoadBalancer");
        let owners: Vec<&Value> = forced["metadata"]["managedFields"].as_array().unwrap().iter().map(|e| &e["manager"]).collect();
        assert_eq!(owners, ["a", "b", "c"], "a and b keep metadata.name");
        assert!(forced["metadata"]["managedFields"].as_array().unwrap()[..2]
            .iter()
            .all(|e| !owns(&e["fieldsV1"], &["f:spec".into(), "f:type".into()])));
    }

    #[test]
    fn a_dropped_field_another_applier_owns_stays() {
        let live = json!({"metadata": {"name": "x", "labels": {"app": "web"}}});
        let config = json!({"metadata": {"name": "x", "labels": {"app": "web"}}});
        let a = server_side_apply(&SERVICE, &live, &config, "a", false).unwrap();
        let both = server_side_apply(&SERVICE, &a, &config, "b", false).unwrap();
        let out = server_side_apply(&SERVICE, &both, &json!({"metadata": {"name": "x"}}), "a", false).unwrap();
        assert_eq!(out["metadata"]["labels"]["app"], "web");
    }

    #[test]
    fn disowning_prunes_empty_parents() {
        let mut set = field_set(&SERVICE, &json!({"metadata": {"labels": {"app": "x"}, "name": "n"}}));
        disown(&mut set, &["f:metadata".into(), "f:labels".into(), "f:app".into()]);
        assert_eq!(set, json!({"f:metadata": {"f:name": {}}}));
        assert_eq!(leaves(&set), [vec!["f:metadata".to_string(), "f:name".to_string()]]);
    }

    fn service(ports: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": ports}})
    }

    /// What the registry's defaulting adds after an apply.
    fn defaulted(mut svc: Value) -> Value {
        for port in svc["spec"]["ports"].as_array_mut().unwrap() {
            port["protocol"] = json!("TCP");
            let target = port.get("targetPort").cloned().unwrap_or_else(|| port["port"].clone());
            port["targetPort"] = target;
        }
        svc
    }

    #[test]
    fn list_elements_are_owned_by_key() {
        let set = field_set(&SERVICE, &service(json!([{"port": 80, "targetPort": 8080}])));
        assert_eq!(set["f:spec"]["f:ports"], json!({"k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}, "f:targetPort": {}}}));
        let live = defaulted(
            server_side_apply(
                &SERVICE,
                &json!({"metadata": {"name": "x"}}),
                &service(json!([{"port": 80, "targetPort": 8080}])),
                "a",
                false,
            )
            .unwrap(),
        );
        // Another applier adding an element, and naming a shared one unchanged, is no conflict.
        let live = defaulted(server_side_apply(&SERVICE, &live, &service(json!([{"port": 80}, {"port": 443}])), "b", false).unwrap());
        assert_eq!(live["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(live["spec"]["ports"][0]["targetPort"], 8080);
        // Changing the element's field a owns is.
        let Err(ApiError::ApplyConflict(found)) =
            server_side_apply(&SERVICE, &live, &service(json!([{"port": 80, "targetPort": 9090}])), "c", false)
        else {
            panic!("no conflict")
        };
        assert_eq!(found.iter().map(FieldConflict::field).collect::<Vec<_>>(), [".spec.ports[port=80,protocol=\"TCP\"].targetPort"]);
        // Setting a field only defaulting filled in is not.
        assert!(server_side_apply(&SERVICE, &live, &service(json!([{"port": 443, "targetPort": 8443}])), "c", false).is_ok());
    }

    #[test]
    fn a_dropped_list_element_goes_unless_another_applier_owns_it() {
        let config = service(json!([{"port": 80}, {"port": 81}, {"port": 82}]));
        let live = defaulted(server_side_apply(&SERVICE, &json!({"metadata": {"name": "x"}}), &config, "a", false).unwrap());
        let live = defaulted(server_side_apply(&SERVICE, &live, &service(json!([{"port": 82}])), "b", false).unwrap());
        let out = server_side_apply(&SERVICE, &live, &service(json!([{"port": 80}])), "a", false).unwrap();
        let ports: Vec<&Value> = out["spec"]["ports"].as_array().unwrap().iter().map(|p| &p["port"]).collect();
        assert_eq!(ports, [80, 82]);
        assert_eq!(out["spec"]["ports"][0]["protocol"], "TCP", "defaulted fields of a kept element stay");
    }

    #[test]
    fn ports_of_one_number_and_two_protocols_stay_two() {
        let dns = service(json!([{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]));
        let live = server_side_apply(&SERVICE, &json!({"metadata": {"name": "x"}}), &dns, "kubectl", false).unwrap();
        let ports: Vec<(&Value, &Value)> = live["spec"]["ports"].as_array().unwrap().iter().map(|p| (&p["port"], &p["protocol"])).collect();
        assert_eq!(ports, [(&json!(53), &json!("UDP")), (&json!(53), &json!("TCP"))]);
        let owned = &live["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:ports"];
        assert_eq!(owned.as_object().unwrap().len(), 2, "{owned}");
        // Applying again, then dropping one, removes only that one.
        let again = server_side_apply(&SERVICE, &live, &dns, "kubectl", false).unwrap();
        assert_eq!(again["spec"]["ports"].as_array().unwrap().len(), 2);
        let udp_only = service(json!([{"name": "dns", "port": 53, "protocol": "UDP"}]));
        let out = server_side_apply(&SERVICE, &again, &udp_only, "kubectl", false).unwrap();
        assert_eq!(out["spec"]["ports"], json!([{"name": "dns", "port": 53, "protocol": "UDP"}]));
    }
}
