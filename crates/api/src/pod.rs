//! Pod defaulting and validation. wharf runs no containers: a Pod
//! registers a workload that already runs, so only the fields that matter
//! for service discovery are checked deeply (names, ports, probes).

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::field::{FieldError, FieldErrors, Path};
use crate::kinds::{KindInfo, POD};
use crate::meta::validate_object_meta;
use crate::names;
use crate::object::ApiObject;
use crate::service::validate_port_ref;

const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const RESTART_POLICIES: &[&str] = &["Always", "Never", "OnFailure"];
const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;

fn default_probe(probe: &mut Probe) {
    probe.timeout_seconds.get_or_insert(1);
    probe.period_seconds.get_or_insert(10);
    probe.success_threshold.get_or_insert(1);
    probe.failure_threshold.get_or_insert(3);
    if let Some(http) = probe.http_get.as_mut() {
        http.scheme.get_or_insert_with(|| "HTTP".into());
        http.path.get_or_insert_with(|| "/".into());
    }
}

fn default_container(c: &mut Container) {
    for port in c.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".into());
    }
    c.termination_message_path.get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy.get_or_insert_with(|| "File".into());
    if c.image_pull_policy.is_none() {
        let image = c.image.as_deref().unwrap_or_default();
        let tagged = image.rsplit('/').next().is_some_and(|last| last.contains(':') && !last.ends_with(":latest"));
        c.image_pull_policy = Some(if tagged { "IfNotPresent" } else { "Always" }.into());
    }
    for probe in [&mut c.readiness_probe, &mut c.liveness_probe, &mut c.startup_probe].into_iter().flatten() {
        default_probe(probe);
    }
}

impl ApiObject for Pod {
    fn info() -> &'static KindInfo {
        &POD
    }

    fn apply_defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.restart_policy.get_or_insert_with(|| "Always".into());
        spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
        spec.termination_grace_period_seconds.get_or_insert(DEFAULT_GRACE_PERIOD_SECONDS);
        spec.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
        spec.enable_service_links.get_or_insert(true);
        spec.security_context.get_or_insert_with(Default::default);
        for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
            default_container(c);
        }
        let status = self.status.get_or_insert_with(Default::default);
        status.phase.get_or_insert_with(|| "Pending".into());
        status.qos_class.get_or_insert_with(|| "BestEffort".into());
    }

    fn validate(&self) -> FieldErrors {
        let mut errs = validate_object_meta(&self.metadata, true, names::dns1123_subdomain);
        match &self.spec {
            None => errs.push(FieldError::required("spec", "")),
            Some(spec) => errs.extend(validate_spec(spec, &Path::new("spec"))),
        }
        if let Some(status) = &self.status {
            errs.extend(validate_status_ips(status));
        }
        errs
    }

    fn validate_update(&self, old: &Self) -> FieldErrors {
        let (Some(new), Some(old)) = (&self.spec, &old.spec) else { return Vec::new() };
        // Kubernetes lets only container images (and a few scheduling
        // fields) change on a running pod.
        let mut comparable = new.clone();
        for (c, o) in comparable.containers.iter_mut().zip(&old.containers) {
            c.image = o.image.clone();
        }
        comparable.active_deadline_seconds = old.active_deadline_seconds;
        comparable.tolerations = old.tolerations.clone();
        if &comparable != old {
            return vec![FieldError::forbidden(
                "spec",
                "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
            )];
        }
        Vec::new()
    }
}

/// A pod's addresses in its status must be IP addresses, as Kubernetes'
/// status validation requires: they become endpoints everywhere.
fn validate_status_ips(status: &k8s_openapi::api::core::v1::PodStatus) -> FieldErrors {
    let mut errs = Vec::new();
    let mut check = |field: String, ip: &str| {
        if !ip.is_empty() && ip.parse::<std::net::IpAddr>().is_err() {
            errs.push(FieldError::invalid(field, ip, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"));
        }
    };
    for (field, ip) in [("status.podIP", &status.pod_ip), ("status.hostIP", &status.host_ip)] {
        if let Some(ip) = ip {
            check(field.to_string(), ip);
        }
    }
    for (i, ip) in status.pod_ips.iter().flatten().enumerate() {
        check(format!("status.podIPs[{i}].ip"), &ip.ip);
    }
    for (i, ip) in status.host_ips.iter().flatten().enumerate() {
        check(format!("status.hostIPs[{i}].ip"), &ip.ip);
    }
    errs
}

/// The longest grace period accepted (ten years): a deadline that far out
/// is still a valid time, and nothing waits longer.
pub const MAX_GRACE_PERIOD_SECONDS: i64 = 10 * 365 * 24 * 3600;

/// A grace period's rule, for pods and for delete options alike.
pub fn validate_grace_period(field: impl Into<String>, seconds: i64) -> Option<FieldError> {
    match seconds {
        s if s < 0 => Some(FieldError::invalid(field, s, "must be greater than or equal to 0")),
        s if s > MAX_GRACE_PERIOD_SECONDS => Some(FieldError::invalid(field, s, format!("must be at most {MAX_GRACE_PERIOD_SECONDS}"))),
        _ => None,
    }
}

fn validate_spec(spec: &PodSpec, path: &Path) -> FieldErrors {
    let mut errs = Vec::new();
    if spec.containers.is_empty() {
        errs.push(FieldError::required(path.child("containers"), ""));
    }
    if let Some(seconds) = spec.termination_grace_period_seconds {
        errs.extend(validate_grace_period(path.child("terminationGracePeriodSeconds"), seconds));
    }
    let mut container_names = HashSet::new();
    let mut port_names = HashSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let p = path.child("containers").index(i);
        if c.name.is_empty() {
            errs.push(FieldError::required(p.child("name"), ""));
        } else {
            for msg in names::dns1123_label(&c.name) {
                errs.push(FieldError::invalid(p.child("name"), &c.name, msg));
            }
            if !container_names.insert(c.name.as_str()) {
                errs.push(FieldError::duplicate(p.child("name"), &c.name));
            }
        }
        if c.image.as_deref().unwrap_or_default().is_empty() {
            errs.push(FieldError::required(p.child("image"), ""));
        }
        errs.extend(validate_container_ports(c, &p.child("ports"), &mut port_names));
        for (probe, field) in
            [(&c.readiness_probe, "readinessProbe"), (&c.liveness_probe, "livenessProbe"), (&c.startup_probe, "startupProbe")]
        {
            if let Some(probe) = probe {
                errs.extend(validate_probe(probe, &p.child(field)));
            }
        }
    }
    if let Some(policy) = spec.restart_policy.as_deref() {
        if !RESTART_POLICIES.contains(&policy) {
            errs.push(FieldError::not_supported(path.child("restartPolicy"), policy, RESTART_POLICIES));
        }
    }
    for (field, value) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            for msg in names::dns1123_label(v) {
                errs.push(FieldError::invalid(path.child(field), v, msg));
            }
        }
    }
    if let Some(node) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        for msg in names::dns1123_subdomain(node) {
            errs.push(FieldError::invalid(path.child("nodeName"), node, msg));
        }
    }
    errs
}

fn validate_container_ports<'a>(c: &'a Container, path: &Path, port_names: &mut HashSet<&'a str>) -> FieldErrors {
    let mut errs = Vec::new();
    for (j, port) in c.ports.iter().flatten().enumerate() {
        let p = path.index(j);
        if !(1..=65535).contains(&port.container_port) {
            errs.push(FieldError::invalid(p.child("containerPort"), port.container_port, "must be between 1 and 65535, inclusive"));
        }
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            for msg in names::iana_svc_name(name) {
                errs.push(FieldError::invalid(p.child("name"), name, msg));
            }
            if !port_names.insert(name) {
                errs.push(FieldError::duplicate(p.child("name"), name));
            }
        }
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        if !PROTOCOLS.contains(&protocol) {
            errs.push(FieldError::not_supported(p.child("protocol"), protocol, PROTOCOLS));
        }
    }
    errs
}

fn validate_probe(probe: &Probe, path: &Path) -> FieldErrors {
    let mut errs = Vec::new();
    let handlers = [probe.exec.is_some(), probe.http_get.is_some(), probe.tcp_socket.is_some(), probe.grpc.is_some()];
    match handlers.iter().filter(|h| **h).count() {
        0 => errs.push(FieldError::required(path, "must specify a handler type")),
        1 => {}
        _ => errs.push(FieldError::forbidden(path, "may not specify more than 1 handler type")),
    }
    if let Some(http) = &probe.http_get {
        errs.extend(validate_port_ref(&http.port, &path.child("httpGet").child("port")));
    }
    if let Some(tcp) = &probe.tcp_socket {
        errs.extend(validate_port_ref(&tcp.port, &path.child("tcpSocket").child("port")));
    }
    if let Some(grpc) = &probe.grpc {
        errs.extend(validate_port_ref(&IntOrString::Int(grpc.port), &path.child("grpc").child("port")));
    }
    if let Some(exec) = &probe.exec {
        if exec.command.as_deref().unwrap_or_default().is_empty() {
            errs.push(FieldError::required(path.child("exec").child("command"), ""));
        }
    }
    let numbers = [
        ("initialDelaySeconds", probe.initial_delay_seconds, 0),
        ("timeoutSeconds", probe.timeout_seconds, 1),
        ("periodSeconds", probe.period_seconds, 1),
        ("successThreshold", probe.success_threshold, 1),
        ("failureThreshold", probe.failure_threshold, 1),
    ];
    for (field, value, min) in numbers {
        if let Some(v) = value.filter(|v| *v < min) {
            let rule = if min == 0 { "must be greater than or equal to 0" } else { "must be greater than or equal to 1" };
            errs.push(FieldError::invalid(path.child(field), v, rule));
        }
    }
    if probe.success_threshold.is_some_and(|s| s != 1) {
        errs.push(FieldError::invalid(path.child("successThreshold"), probe.success_threshold.unwrap_or(1), "must be 1"));
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        let mut p: Pod = serde_json::from_value(v).unwrap();
        p.apply_defaults();
        p
    }

    #[test]
    fn seed_pod_is_valid_and_defaulted() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "kolide-fleet-mysql-0", "namespace": "default"},
            "spec": {"containers": [{"name": "mysql", "image": "mysql:5.7",
                "ports": [{"name": "mysql", "containerPort": 3306}],
                "readinessProbe": {"tcpSocket": {"port": "mysql"}, "periodSeconds": 2}}]}
        }));
        assert!(p.validate().is_empty(), "{:?}", p.validate());
        let c = &p.spec.as_ref().unwrap().containers[0];
        assert_eq!(c.ports.as_ref().unwrap()[0].protocol.as_deref(), Some("TCP"));
        assert_eq!(c.readiness_probe.as_ref().unwrap().failure_threshold, Some(3));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    }

    #[test]
    fn bad_pods_name_their_fields() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [
                {"name": "a", "image": "x", "ports": [{"name": "web", "containerPort": 0}],
                 "readinessProbe": {"periodSeconds": 2}},
                {"name": "a", "ports": [{"name": "web", "containerPort": 80}]},
                {"name": "g", "image": "x", "readinessProbe": {"grpc": {"port": 70000}}}
            ]}
        }));
        let msgs: Vec<String> = p.validate().iter().map(ToString::to_string).collect();
        for want in [
            "spec.containers[0].ports[0].containerPort: Invalid value: 0: must be between 1 and 65535, inclusive",
            "spec.containers[0].readinessProbe: Required value: must specify a handler type",
            "spec.containers[1].name: Duplicate value: \"a\"",
            "spec.containers[1].image: Required value",
            "spec.containers[1].ports[0].name: Duplicate value: \"web\"",
            "spec.containers[2].readinessProbe.grpc.port: Invalid value: 70000: must be between 1 and 65535, inclusive",
        ] {
            assert!(msgs.iter().any(|m| m == want), "missing {want} in {msgs:?}");
        }
    }

    #[test]
    fn spec_changes_other_than_image_are_forbidden() {
        let old = pod(serde_json::json!({"metadata": {"name": "p", "namespace": "d"},
            "spec": {"containers": [{"name": "a", "image": "x:1"}]}}));
        let mut new = old.clone();
        new.spec.as_mut().unwrap().containers[0].image = Some("x:2".into());
        assert!(new.validate_update(&old).is_empty());
        new.spec.as_mut().unwrap().hostname = Some("h".into());
        assert_eq!(new.validate_update(&old).len(), 1);
    }

    #[test]
    fn status_addresses_must_be_ip_addresses() {
        let mut p: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [{"name": "c", "image": "x"}]},
            "status": {"podIP": "127.1.256.1", "podIPs": [{"ip": "nope"}], "hostIP": "127.0.0.1"}}),
        )
        .unwrap();
        let fields: Vec<String> = p.validate().into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["status.podIP", "status.podIPs[0].ip"]);
        p.status = serde_json::from_value(serde_json::json!({"podIP": "127.1.255.1"})).unwrap();
        assert!(p.validate().is_empty());
    }
}
