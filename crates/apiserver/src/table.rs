//! Server-side printing: the `Table` kubectl asks for with
//! `as=Table`, with the columns and cell formats of kube-apiserver's
//! printers, so `kubectl get` prints what users know.

use serde_json::{json, Value};

struct Column {
    name: &'static str,
    /// Shown only with `-o wide`.
    wide: bool,
}

const fn col(name: &'static str) -> Column {
    Column { name, wide: false }
}
const fn wide(name: &'static str) -> Column {
    Column { name, wide: true }
}

const SERVICE_COLUMNS: &[Column] =
    &[col("Name"), col("Type"), col("Cluster-IP"), col("External-IP"), col("Port(s)"), col("Age"), wide("Selector")];
const POD_COLUMNS: &[Column] = &[
    col("Name"),
    col("Ready"),
    col("Status"),
    col("Restarts"),
    col("Age"),
    wide("IP"),
    wide("Node"),
    wide("Nominated Node"),
    wide("Readiness Gates"),
];
const ENDPOINTS_COLUMNS: &[Column] = &[col("Name"), col("Endpoints"), col("Age")];
const ENDPOINT_SLICE_COLUMNS: &[Column] = &[col("Name"), col("AddressType"), col("Ports"), col("Endpoints"), col("Age")];
const NAMESPACE_COLUMNS: &[Column] = &[col("Name"), col("Status"), col("Age")];
const NODE_COLUMNS: &[Column] = &[
    col("Name"),
    col("Status"),
    col("Roles"),
    col("Age"),
    col("Version"),
    wide("Internal-IP"),
    wide("External-IP"),
    wide("OS-Image"),
    wide("Kernel-Version"),
    wide("Container-Runtime"),
];
const CONFIG_MAP_COLUMNS: &[Column] = &[col("Name"), col("Data"), col("Age")];
const SECRET_COLUMNS: &[Column] = &[col("Name"), col("Type"), col("Data"), col("Age")];
const SERVICE_ACCOUNT_COLUMNS: &[Column] = &[col("Name"), col("Secrets"), col("Age")];
const LEASE_COLUMNS: &[Column] = &[col("Name"), col("Holder"), col("Age")];
const ROLE_COLUMNS: &[Column] = &[col("Name"), col("Created At")];
const BINDING_COLUMNS: &[Column] = &[col("Name"), col("Role"), col("Age"), wide("Users"), wide("Groups"), wide("ServiceAccounts")];
const EVENT_COLUMNS: &[Column] = &[col("Last Seen"), col("Type"), col("Reason"), col("Object"), col("Message")];
/// How `kubectl get` prints a kind: its columns, and a row's cells.
pub struct Printer {
    columns: &'static [Column],
    cells: fn(&Value, jiff::Timestamp) -> Vec<Value>,
}

pub const SERVICE: Printer = Printer { columns: SERVICE_COLUMNS, cells: |o, now| named(o, now, service_cells(o)) };
pub const POD: Printer = Printer { columns: POD_COLUMNS, cells: |o, now| named(o, now, pod_cells(o)) };
pub const ENDPOINTS: Printer = Printer { columns: ENDPOINTS_COLUMNS, cells: |o, now| named(o, now, endpoints_cells(o)) };
pub const ENDPOINT_SLICE: Printer = Printer { columns: ENDPOINT_SLICE_COLUMNS, cells: |o, now| named(o, now, endpoint_slice_cells(o)) };
pub const NAMESPACE: Printer = Printer { columns: NAMESPACE_COLUMNS, cells: |o, now| named(o, now, namespace_cells(o)) };
pub const NODE: Printer = Printer { columns: NODE_COLUMNS, cells: |o, now| named(o, now, node_cells(o)) };
pub const EVENT: Printer = Printer { columns: EVENT_COLUMNS, cells: event_cells };
pub const CONFIG_MAP: Printer = Printer {
    columns: CONFIG_MAP_COLUMNS,
    cells: |o, now| named(o, now, vec![json!(entries(&o["data"]) + entries(&o["binaryData"])), Value::Null]),
};
pub const SECRET: Printer =
    Printer { columns: SECRET_COLUMNS, cells: |o, now| named(o, now, vec![o["type"].clone(), json!(entries(&o["data"])), Value::Null]) };
pub const SERVICE_ACCOUNT: Printer = Printer {
    columns: SERVICE_ACCOUNT_COLUMNS,
    cells: |o, now| named(o, now, vec![json!(o["secrets"].as_array().map_or(0, Vec::len)), Value::Null]),
};
pub const LEASE: Printer =
    Printer { columns: LEASE_COLUMNS, cells: |o, now| named(o, now, vec![json!(str_or(&o["spec"]["holderIdentity"], "")), Value::Null]) };
pub const ROLE: Printer =
    Printer { columns: ROLE_COLUMNS, cells: |o, _| vec![json!(o["metadata"]["name"]), o["metadata"]["creationTimestamp"].clone()] };
pub const BINDING: Printer = Printer { columns: BINDING_COLUMNS, cells: |o, now| named(o, now, binding_cells(o)) };

/// `ClusterRole/edit`, then the subjects by kind (service accounts as
/// `namespace:name`).
fn binding_cells(obj: &Value) -> Vec<Value> {
    let role = format!("{}/{}", str_or(&obj["roleRef"]["kind"], ""), str_or(&obj["roleRef"]["name"], ""));
    let subjects = obj["subjects"].as_array().cloned().unwrap_or_default();
    let of = |kind: &str| -> Value {
        let names: Vec<String> = subjects
            .iter()
            .filter(|s| s["kind"] == kind)
            .map(|s| match s["namespace"].as_str() {
                Some(ns) if kind == "ServiceAccount" => format!("{ns}:{}", str_or(&s["name"], "")),
                _ => str_or(&s["name"], "").to_string(),
            })
            .collect();
        json!(names.join(", "))
    };
    vec![json!(role), Value::Null, of("User"), of("Group"), of("ServiceAccount")]
}

fn column_definitions(printer: &Printer) -> Vec<Value> {
    printer
        .columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": "string",
                "format": if c.name == "Name" { "name" } else { "" },
                "description": "",
                "priority": if c.wide { 1 } else { 0 },
            })
        })
        .collect()
}

/// Kubernetes' `HumanDuration`: `45s`, `5m3s`, `47m`, `3h4m`, `20h`, `3d4h`, `40d`, `2y10d`, `9y`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let minutes = s / 60;
    if minutes < 10 {
        return match s % 60 {
            0 => format!("{minutes}m"),
            rest => format!("{minutes}m{rest}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            rest => format!("{hours}h{rest}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            rest => format!("{days}d{rest}h"),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return match days % 365 {
            0 => format!("{years}y"),
            rest => format!("{years}y{rest}d"),
        };
    }
    format!("{years}y")
}

fn age(timestamp: &Value, now: jiff::Timestamp) -> String {
    match timestamp.as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        Some(t) => human_duration(now.duration_since(t).as_secs()),
        None => "<unknown>".into(),
    }
}

fn str_or<'a>(v: &'a Value, default: &'a str) -> &'a str {
    v.as_str().filter(|s| !s.is_empty()).unwrap_or(default)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn join_or(items: Vec<String>, default: &str) -> String {
    if items.is_empty() {
        default.to_string()
    } else {
        items.join(",")
    }
}

/// At most three items, then `+ N more...`, as kubectl's printers do.
fn list_with_more(items: Vec<String>, empty: &str) -> String {
    const MAX: usize = 3;
    let count = items.len();
    let shown = items.into_iter().take(MAX).collect::<Vec<_>>().join(",");
    if count > MAX {
        format!("{shown} + {} more...", count - MAX)
    } else if shown.is_empty() {
        empty.to_string()
    } else {
        shown
    }
}

fn service_cells(obj: &Value) -> Vec<Value> {
    let spec = &obj["spec"];
    let ty = str_or(&spec["type"], "ClusterIP");
    let external_ips = strings(&spec["externalIPs"]);
    let external = match ty {
        "LoadBalancer" => {
            let mut ips: Vec<String> = obj["status"]["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()).map(String::from))
                .collect();
            let found = !ips.is_empty() || !external_ips.is_empty();
            ips.extend(external_ips);
            if found {
                ips.join(",")
            } else {
                "<pending>".into()
            }
        }
        "ExternalName" => str_or(&spec["externalName"], "<none>").to_string(),
        _ => join_or(external_ips, "<none>"),
    };
    let ports: Vec<String> = spec["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let protocol = str_or(&p["protocol"], "TCP");
            match p["nodePort"].as_i64().filter(|n| *n != 0) {
                Some(node_port) => format!("{}:{node_port}/{protocol}", p["port"]),
                None => format!("{}/{protocol}", p["port"]),
            }
        })
        .collect();
    let mut selector: Vec<String> =
        spec["selector"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
    selector.sort();
    vec![json!(ty), json!(str_or(&spec["clusterIP"], "<none>")), json!(external), json!(join_or(ports, "<none>"))]
        .into_iter()
        .chain(std::iter::once(Value::Null)) // Age, filled by the caller
        .chain(std::iter::once(json!(join_or(selector, "<none>"))))
        .collect()
}

fn pod_cells(obj: &Value) -> Vec<Value> {
    let containers = obj["spec"]["containers"].as_array().map_or(0, Vec::len);
    let statuses = obj["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
    let ready = statuses.iter().filter(|s| s["ready"].as_bool() == Some(true)).count();
    let restarts: i64 = statuses.iter().filter_map(|s| s["restartCount"].as_i64()).sum();
    let mut reason = str_or(&obj["status"]["reason"], str_or(&obj["status"]["phase"], "Unknown")).to_string();
    for s in &statuses {
        if let Some(r) = s["state"]["waiting"]["reason"].as_str().or(s["state"]["terminated"]["reason"].as_str()) {
            reason = r.to_string();
        }
    }
    if !obj["metadata"]["deletionTimestamp"].is_null() {
        reason = "Terminating".into();
    }
    let gates = obj["spec"]["readinessGates"].as_array().map_or(0, Vec::len);
    vec![
        json!(format!("{ready}/{containers}")),
        json!(reason),
        json!(restarts.to_string()),
        Value::Null,
        json!(str_or(&obj["status"]["podIP"], "<none>")),
        json!(str_or(&obj["spec"]["nodeName"], "<none>")),
        json!(str_or(&obj["status"]["nominatedNodeName"], "<none>")),
        json!(if gates == 0 { "<none>".to_string() } else { format!("0/{gates}") }),
    ]
}

fn endpoints_cells(obj: &Value) -> Vec<Value> {
    let mut items = Vec::new();
    for subset in obj["subsets"].as_array().into_iter().flatten() {
        let addresses: Vec<&str> = subset["addresses"].as_array().into_iter().flatten().filter_map(|a| a["ip"].as_str()).collect();
        let ports: Vec<i64> = subset["ports"].as_array().into_iter().flatten().filter_map(|p| p["port"].as_i64()).collect();
        if ports.is_empty() {
            items.extend(addresses.iter().map(|a| a.to_string()));
        }
        for port in &ports {
            items.extend(addresses.iter().map(|a| format!("{a}:{port}")));
        }
    }
    vec![json!(list_with_more(items, "<none>")), Value::Null]
}

fn endpoint_slice_cells(obj: &Value) -> Vec<Value> {
    let ports: Vec<String> = obj["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| match (p["port"].as_i64(), p["name"].as_str()) {
            (Some(n), _) => n.to_string(),
            (None, Some(name)) if !name.is_empty() => name.to_string(),
            _ => "*".to_string(),
        })
        .collect();
    let addresses: Vec<String> = obj["endpoints"].as_array().into_iter().flatten().flat_map(|e| strings(&e["addresses"])).collect();
    vec![
        json!(str_or(&obj["addressType"], "")),
        json!(list_with_more(ports, "<unset>")),
        json!(list_with_more(addresses, "<unset>")),
        Value::Null,
    ]
}

fn namespace_cells(obj: &Value) -> Vec<Value> {
    vec![json!(str_or(&obj["status"]["phase"], "Active")), Value::Null]
}

fn node_cells(obj: &Value) -> Vec<Value> {
    let ready = obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        // As kubectl prints it: anything but True (False, Unknown) is NotReady.
        .map(|c| if c["status"] == "True" { "Ready" } else { "NotReady" })
        .unwrap_or("Unknown");
    let mut status = ready.to_string();
    if obj["spec"]["unschedulable"].as_bool() == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    let address = |ty: &str| {
        obj["status"]["addresses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["type"] == ty)
            .and_then(|a| a["address"].as_str())
            .unwrap_or("<none>")
            .to_string()
    };
    let info = &obj["status"]["nodeInfo"];
    vec![
        json!(status),
        json!("<none>"),
        Value::Null,
        json!(str_or(&info["kubeletVersion"], "")),
        json!(address("InternalIP")),
        json!(address("ExternalIP")),
        json!(str_or(&info["osImage"], "<unknown>")),
        json!(str_or(&info["kernelVersion"], "<unknown>")),
        json!(str_or(&info["containerRuntimeVersion"], "<unknown>")),
    ]
}

fn event_cells(obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let last = if obj["lastTimestamp"].is_null() { &obj["eventTime"] } else { &obj["lastTimestamp"] };
    let involved = &obj["involvedObject"];
    vec![
        json!(age(last, now)),
        json!(str_or(&obj["type"], "")),
        json!(str_or(&obj["reason"], "")),
        json!(format!("{}/{}", str_or(&involved["kind"], "").to_lowercase(), str_or(&involved["name"], ""))),
        json!(str_or(&obj["message"], "")),
    ]
}

/// A row: the name, then `rest`, where `Value::Null` marks the Age column.
/// How many keys a data map holds.
fn entries(map: &Value) -> usize {
    map.as_object().map_or(0, serde_json::Map::len)
}

fn named(obj: &Value, now: jiff::Timestamp, rest: Vec<Value>) -> Vec<Value> {
    let age_cell = json!(age(&obj["metadata"]["creationTimestamp"], now));
    let rest = rest.into_iter().map(|c| if c.is_null() { age_cell.clone() } else { c });
    std::iter::once(json!(obj["metadata"]["name"])).chain(rest).collect()
}

/// How each row carries its object (`?includeObject=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IncludeObject {
    #[default]
    Metadata,
    Object,
    None,
}

fn row(printer: &Printer, obj: &Value, include: IncludeObject, now: jiff::Timestamp) -> Value {
    let object = match include {
        IncludeObject::Object => obj.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj["metadata"],
        }),
        IncludeObject::None => Value::Null,
    };
    json!({"cells": (printer.cells)(obj, now), "object": object})
}

/// A Table of the given objects, as one `kubectl get` or watch event.
pub fn table(printer: &Printer, objects: &[Value], resource_version: &str, include: IncludeObject, with_columns: bool) -> Value {
    let now = jiff::Timestamp::now();
    let rows: Vec<Value> = objects.iter().map(|o| row(printer, o, include, now)).collect();
    let mut table = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "rows": rows,
    });
    if with_columns {
        table["columnDefinitions"] = json!(column_definitions(printer));
    }
    table
}

/// The same Table as [`table`], serialized while the objects are decoded
/// one by one, so a list of thousands never holds them all at once.
pub fn write_table<E>(
    printer: &Printer,
    objects: impl Iterator<Item = Result<Value, E>>,
    metadata: Value,
    include: IncludeObject,
) -> Result<Vec<u8>, E> {
    let now = jiff::Timestamp::now();
    let head = json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions(printer),
    });
    let mut out = serde_json::to_vec(&head).unwrap_or_default();
    out.pop(); // reopen the object for "rows"
    out.extend_from_slice(b",\"rows\":[");
    for (i, obj) in objects.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut out, &row(printer, &obj?, include, now));
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        let cases = [
            (45, "45s"),
            (119, "119s"),
            (303, "5m3s"),
            (300, "5m"),
            (2820, "47m"),
            (11040, "3h4m"),
            (72000, "20h"),
            (273600, "3d4h"),
            (3456000, "40d"),
            (2 * 365 * 86400 + 10 * 86400, "2y10d"),
            (9 * 365 * 86400, "9y"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn service_row_matches_kubectl() {
        let svc = json!({"metadata": {"name": "kolide-fleet-fleet", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"type": "LoadBalancer", "clusterIP": "127.96.4.5",
                "ports": [{"port": 443, "nodePort": 31525, "protocol": "TCP"}],
                "selector": {"b": "2", "a": "1"}},
            "status": {"loadBalancer": {}}});
        let t = table(&SERVICE, &[svc], "7", IncludeObject::Metadata, true);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "kolide-fleet-fleet");
        assert_eq!(cells[1], "LoadBalancer");
        assert_eq!(cells[3], "<pending>");
        assert_eq!(cells[4], "443:31525/TCP");
        assert_eq!(cells[6], "a=1,b=2");
        assert_eq!(t["columnDefinitions"][6]["priority"], 1);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn streamed_table_equals_built_table() {
        let objs = vec![json!({"metadata": {"name": "a"}}), json!({"metadata": {"name": "b"}})];
        let built = table(&NAMESPACE, &objs, "3", IncludeObject::Metadata, true);
        let streamed =
            write_table::<()>(&NAMESPACE, objs.into_iter().map(Ok), json!({"resourceVersion": "3"}), IncludeObject::Metadata).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&streamed).unwrap(), built);
    }

    #[test]
    fn endpoints_list_at_most_three() {
        let ep = json!({"metadata": {"name": "e"}, "subsets": [{"addresses": [
            {"ip": "127.0.0.1"}, {"ip": "127.0.0.2"}, {"ip": "127.0.0.3"}, {"ip": "127.0.0.4"}], "ports": [{"port": 80}]}]});
        let t = table(&ENDPOINTS, &[ep], "1", IncludeObject::None, false);
        assert_eq!(t["rows"][0]["cells"][1], "127.0.0.1:80,127.0.0.2:80,127.0.0.3:80 + 1 more...");
    }
}
