//! Service defaulting and validation, after Kubernetes'
//! `SetDefaults_Service` and `ValidateService`. Allocation of cluster IPs
//! and node ports needs the store and lives in the API server.

use std::collections::HashSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{ClientIPConfig, Service, ServicePort, ServiceSpec, SessionAffinityConfig};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::field::{FieldError, FieldErrors, Path};
use crate::ipfamily::{family_of, IpFamily};
use crate::kinds::{KindInfo, SERVICE};
use crate::meta::{validate_labels, validate_object_meta};
use crate::names;
use crate::object::ApiObject;

pub const TYPE_CLUSTER_IP: &str = "ClusterIP";
pub const TYPE_NODE_PORT: &str = "NodePort";
pub const TYPE_LOAD_BALANCER: &str = "LoadBalancer";
pub const TYPE_EXTERNAL_NAME: &str = "ExternalName";
const TYPES: &[&str] = &[TYPE_CLUSTER_IP, TYPE_EXTERNAL_NAME, TYPE_LOAD_BALANCER, TYPE_NODE_PORT];
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const AFFINITIES: &[&str] = &["ClientIP", "None"];
const TRAFFIC_POLICIES: &[&str] = &["Cluster", "Local"];
const IP_FAMILY_POLICIES: &[&str] = &["PreferDualStack", "RequireDualStack", "SingleStack"];
/// Kubernetes' default ClientIP affinity timeout: three hours.
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: i32 = 10800;
const MAX_AFFINITY_TIMEOUT_SECONDS: i32 = 86400;
pub const CLUSTER_IP_NONE: &str = "None";

/// The spec's type, after defaulting.
pub fn service_type(spec: &ServiceSpec) -> &str {
    spec.type_.as_deref().unwrap_or(TYPE_CLUSTER_IP)
}

/// Whether the type gives every port a node port.
pub fn needs_node_ports(spec: &ServiceSpec) -> bool {
    matches!(service_type(spec), TYPE_NODE_PORT | TYPE_LOAD_BALANCER)
        && (service_type(spec) != TYPE_LOAD_BALANCER || spec.allocate_load_balancer_node_ports != Some(false))
}

/// Whether the type gets a cluster IP (all but ExternalName).
pub fn needs_cluster_ip(spec: &ServiceSpec) -> bool {
    service_type(spec) != TYPE_EXTERNAL_NAME
}

/// Whether a LoadBalancer with `externalTrafficPolicy: Local` needs a
/// health check node port.
pub fn needs_health_check_node_port(spec: &ServiceSpec) -> bool {
    service_type(spec) == TYPE_LOAD_BALANCER && spec.external_traffic_policy.as_deref() == Some("Local")
}

pub fn is_headless(spec: &ServiceSpec) -> bool {
    spec.cluster_ip.as_deref() == Some(CLUSTER_IP_NONE)
}

fn default_port(port: &mut ServicePort) {
    if port.protocol.as_deref().unwrap_or_default().is_empty() {
        port.protocol = Some("TCP".into());
    }
    let unset = match &port.target_port {
        None => true,
        Some(IntOrString::Int(0)) => true,
        Some(IntOrString::String(s)) => s.is_empty(),
        Some(IntOrString::Int(_)) => false,
    };
    if unset {
        port.target_port = Some(IntOrString::Int(port.port));
    }
}

/// Drops fields that belong to another type, as the Kubernetes registry
/// does when a Service changes type.
fn drop_type_dependent_fields(spec: &mut ServiceSpec) {
    let ty = service_type(spec).to_string();
    if ty == TYPE_CLUSTER_IP || ty == TYPE_EXTERNAL_NAME {
        for port in spec.ports.iter_mut().flatten() {
            port.node_port = None;
        }
    }
    if !matches!(ty.as_str(), TYPE_NODE_PORT | TYPE_LOAD_BALANCER) {
        spec.external_traffic_policy = None;
    }
    if !needs_health_check_node_port(spec) {
        spec.health_check_node_port = None;
    }
    if ty != TYPE_LOAD_BALANCER {
        spec.allocate_load_balancer_node_ports = None;
    }
    if ty == TYPE_EXTERNAL_NAME {
        spec.internal_traffic_policy = None;
        spec.ip_families = None;
        spec.ip_family_policy = None;
    }
}

/// Clears type-dependent fields that an update to another type left behind.
pub fn prepare_type_change(new: &mut ServiceSpec, old: &ServiceSpec) {
    if service_type(new) != service_type(old) {
        if service_type(new) == TYPE_EXTERNAL_NAME || (!needs_cluster_ip(old) && needs_cluster_ip(new)) {
            new.cluster_ip = None;
            new.cluster_ips = None;
        }
        drop_type_dependent_fields(new);
    }
}

/// An update that leaves out the cluster IP or node ports keeps the
/// allocated ones, as Kubernetes' `patchAllocatedValues` does, so that
/// `kubectl replace` of a manifest without them works.
fn keep_allocated_values(new: &mut ServiceSpec, old: &ServiceSpec) {
    if needs_cluster_ip(new) && needs_cluster_ip(old) {
        if new.cluster_ip.as_deref().unwrap_or_default().is_empty() {
            new.cluster_ip = old.cluster_ip.clone();
        }
        // An unchanged primary without the list keeps the whole list (a
        // dual-stack service updated by a client that only knows clusterIP).
        if new.cluster_ips.as_deref().unwrap_or_default().is_empty() && new.cluster_ip == old.cluster_ip {
            new.cluster_ips = old.cluster_ips.clone();
        }
    }
    if needs_node_ports(new) && needs_node_ports(old) {
        let old_ports = old.ports.as_deref().unwrap_or_default();
        for port in new.ports.iter_mut().flatten().filter(|p| p.node_port.unwrap_or(0) == 0) {
            let protocol = |p: &ServicePort| p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let same = old_ports.iter().find(|o| o.port == port.port && protocol(o) == protocol(port));
            port.node_port = same.and_then(|o| o.node_port);
        }
    }
    if needs_health_check_node_port(new) && new.health_check_node_port.unwrap_or(0) == 0 {
        new.health_check_node_port = old.health_check_node_port;
    }
}

impl ApiObject for Service {
    fn info() -> &'static KindInfo {
        &SERVICE
    }

    fn apply_defaults(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        if spec.type_.as_deref().unwrap_or_default().is_empty() {
            spec.type_ = Some(TYPE_CLUSTER_IP.into());
        }
        if spec.session_affinity.as_deref().unwrap_or_default().is_empty() {
            spec.session_affinity = Some("None".into());
        }
        if spec.session_affinity.as_deref() == Some("ClientIP") {
            let cfg = spec.session_affinity_config.get_or_insert_with(SessionAffinityConfig::default);
            let client = cfg.client_ip.get_or_insert_with(ClientIPConfig::default);
            client.timeout_seconds.get_or_insert(DEFAULT_AFFINITY_TIMEOUT_SECONDS);
        }
        for port in spec.ports.iter_mut().flatten() {
            default_port(port);
        }
        let ty = service_type(spec).to_string();
        if matches!(ty.as_str(), TYPE_NODE_PORT | TYPE_LOAD_BALANCER) && spec.external_traffic_policy.is_none() {
            spec.external_traffic_policy = Some("Cluster".into());
        }
        if ty == TYPE_LOAD_BALANCER && spec.allocate_load_balancer_node_ports.is_none() {
            spec.allocate_load_balancer_node_ports = Some(true);
        }
        if ty != TYPE_EXTERNAL_NAME && spec.internal_traffic_policy.is_none() {
            spec.internal_traffic_policy = Some("Cluster".into());
        }
        // Mirror clusterIP and clusterIPs[0] as the registry does.
        match (&spec.cluster_ip, &spec.cluster_ips) {
            (Some(ip), None) if !ip.is_empty() => spec.cluster_ips = Some(vec![ip.clone()]),
            (None, Some(ips)) if !ips.is_empty() => spec.cluster_ip = Some(ips[0].clone()),
            _ => {}
        }
        let status = self.status.get_or_insert_with(Default::default);
        status.load_balancer.get_or_insert_with(Default::default);
    }

    fn prepare_for_update(&mut self, old: &Self) {
        let (Some(new), Some(old)) = (self.spec.as_mut(), old.spec.as_ref()) else { return };
        prepare_type_change(new, old);
        keep_allocated_values(new, old);
        // Leaving ClientIP affinity takes its (usually defaulted) config
        // along, unless the update set one itself.
        let leaving = old.session_affinity.as_deref() == Some("ClientIP") && new.session_affinity.as_deref() != Some("ClientIP");
        if leaving && new.session_affinity_config == old.session_affinity_config {
            new.session_affinity_config = None;
        }
    }

    fn validate(&self) -> FieldErrors {
        let mut errs = validate_object_meta(&self.metadata, true, names::dns1035_label);
        let path = Path::new("spec");
        let Some(spec) = &self.spec else {
            errs.push(FieldError::required(path, ""));
            return errs;
        };
        errs.extend(validate_spec(spec, &path));
        errs
    }

    fn validate_update(&self, old: &Self) -> FieldErrors {
        let (Some(new), Some(old)) = (&self.spec, &old.spec) else { return Vec::new() };
        let mut errs = Vec::new();
        // Kubernetes lets the IPs go only when the service becomes
        // ExternalName; a secondary goes by a move to SingleStack.
        if needs_cluster_ip(old) && needs_cluster_ip(new) {
            let (before, after) = (requested_ips(old), requested_ips(new));
            for (i, (was, now)) in before.iter().zip(&after).enumerate() {
                if !was.is_empty() && !now.is_empty() && was != now {
                    errs.push(FieldError::invalid(format!("spec.clusterIPs[{i}]"), now, "may not change once set"));
                }
            }
            let (before, after) = (old.ip_families.as_deref().unwrap_or_default(), new.ip_families.as_deref().unwrap_or_default());
            if let (Some(was), Some(now)) = (before.first(), after.first()) {
                if was != now {
                    errs.push(FieldError::invalid("spec.ipFamilies[0]", now, "may not change once set"));
                }
            }
        }
        errs
    }
}

fn validate_spec(spec: &ServiceSpec, path: &Path) -> FieldErrors {
    let mut errs = Vec::new();
    let ty = service_type(spec);
    if !TYPES.contains(&ty) {
        errs.push(FieldError::not_supported(path.child("type"), ty, TYPES));
    }
    errs.extend(validate_cluster_ips(spec, path));
    if ty == TYPE_EXTERNAL_NAME {
        match spec.external_name.as_deref().unwrap_or_default() {
            "" => errs.push(FieldError::required(path.child("externalName"), "")),
            name => {
                for msg in names::dns1123_subdomain(name.strip_suffix('.').unwrap_or(name)) {
                    errs.push(FieldError::invalid(path.child("externalName"), name, msg));
                }
            }
        }
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && !is_headless(spec) && ty != TYPE_EXTERNAL_NAME {
        errs.push(FieldError::required(path.child("ports"), ""));
    }
    errs.extend(validate_ports(spec, ports, &path.child("ports")));
    errs.extend(validate_affinity(spec, path));
    errs.extend(validate_traffic_policies(spec, path));
    if let Some(selector) = &spec.selector {
        errs.extend(validate_labels(selector, &path.child("selector")));
    }
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        if ip.parse::<IpAddr>().is_err() {
            errs.push(FieldError::invalid(path.child("externalIPs").index(i), ip, "must be a valid IP address"));
        }
    }
    errs
}

/// The addresses a stored service has: `clusterIPs`, one per family, or
/// where a writer left the list out, its `clusterIP` (`None` for a
/// headless service).
pub fn cluster_ips(spec: &ServiceSpec) -> Vec<&str> {
    match spec.cluster_ips.as_deref() {
        Some(list) if !list.is_empty() => list.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    }
}

/// `clusterIPs` with `clusterIP` as the first where it is set.
fn requested_ips(spec: &ServiceSpec) -> Vec<String> {
    let mut ips = spec.cluster_ips.clone().unwrap_or_default();
    match spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty()) {
        Some(ip) if ips.is_empty() => ips.push(ip.to_string()),
        Some(ip) => ips[0] = ip.to_string(),
        None => {}
    }
    ips
}

/// The cluster IP fields on their own, as Kubernetes'
/// `ValidateServiceClusterIPsRelatedFields` checks them; what the cluster
/// is configured for is checked when they are settled (`ipfamily::settle`).
fn validate_cluster_ips(spec: &ServiceSpec, path: &Path) -> FieldErrors {
    let mut errs = Vec::new();
    let ty = service_type(spec);
    let ip = spec.cluster_ip.as_deref().unwrap_or_default();
    let ips = spec.cluster_ips.as_deref().unwrap_or_default();
    let families = spec.ip_families.as_deref().unwrap_or_default();
    if ty == TYPE_EXTERNAL_NAME {
        if !ip.is_empty() {
            errs.push(FieldError::forbidden(path.child("clusterIP"), "may not be set for ExternalName services"));
        }
        if !families.is_empty() {
            errs.push(FieldError::forbidden(path.child("ipFamilies"), "may not be set for ExternalName services"));
        }
        if spec.ip_family_policy.is_some() {
            errs.push(FieldError::forbidden(path.child("ipFamilyPolicy"), "may not be set for ExternalName services"));
        }
        return errs;
    }
    let ips_value = || crate::field::Value::strings(ips);
    match ips.first() {
        Some(first) if !ip.is_empty() && first != ip => {
            errs.push(FieldError::invalid(path.child("clusterIPs"), ips_value(), "first value must match `clusterIP`"));
        }
        Some(_) if ip.is_empty() => {
            errs.push(FieldError::invalid(path.child("clusterIPs"), ips_value(), "must be empty when `clusterIP` is not specified"));
        }
        _ => {}
    }
    let mut seen = HashSet::new();
    for (i, family) in families.iter().enumerate() {
        if IpFamily::parse(family).is_none() {
            errs.push(FieldError::not_supported(path.child("ipFamilies").index(i), family, &["IPv4", "IPv6"]));
        }
        if !seen.insert(family) {
            errs.push(FieldError::duplicate(path.child("ipFamilies").index(i), family));
        }
    }
    if families.len() > 2 {
        errs.push(FieldError::invalid(path.child("ipFamilies"), crate::field::Value::Raw(format!("{families:?}")), "may be at most 2"));
    }
    if let Some(policy) = spec.ip_family_policy.as_deref() {
        if !IP_FAMILY_POLICIES.contains(&policy) {
            errs.push(FieldError::not_supported(path.child("ipFamilyPolicy"), policy, IP_FAMILY_POLICIES));
        }
    }
    let mut bad_ip = false;
    for (i, one) in ips.iter().enumerate() {
        if i == 0 && one == CLUSTER_IP_NONE {
            if ips.len() > 1 {
                bad_ip = true;
                errs.push(FieldError::invalid(path.child("clusterIPs"), ips_value(), "'None' must be the first and only value"));
            }
            continue;
        }
        if one.parse::<IpAddr>().is_err() {
            bad_ip = true;
            errs.push(FieldError::invalid(
                path.child("clusterIPs").index(i),
                one,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
    }
    if ips.len() > 2 {
        errs.push(FieldError::invalid(path.child("clusterIPs"), ips_value(), "may only hold up to 2 values"));
    }
    if bad_ip {
        return errs;
    }
    if ips.len() == 2 && family_of(&ips[0]) == family_of(&ips[1]) {
        errs.push(FieldError::invalid(path.child("clusterIPs"), ips_value(), "may specify no more than one IP for each IP family"));
    }
    if !is_headless(spec) {
        for (i, (one, family)) in ips.iter().zip(families).enumerate() {
            match (IpFamily::parse(family), family_of(one)) {
                (Some(want), Some(got)) if want != got => errs.push(FieldError::invalid(
                    path.child("clusterIPs").index(i),
                    one,
                    format!("expected an {} value as indicated by `ipFamilies[{i}]`", want.as_str()),
                )),
                _ => {}
            }
        }
    }
    if ip == CLUSTER_IP_NONE && matches!(ty, TYPE_NODE_PORT | TYPE_LOAD_BALANCER) {
        errs.push(FieldError::invalid(path.child("clusterIPs").index(0), ip, format!("may not be set to 'None' for {ty} services")));
    }
    errs
}

fn validate_ports(spec: &ServiceSpec, ports: &[ServicePort], path: &Path) -> FieldErrors {
    let mut errs = Vec::new();
    let ty = service_type(spec);
    let mut names = HashSet::new();
    let mut numbers = HashSet::new();
    let mut node_ports = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = path.index(i);
        match port.name.as_deref().unwrap_or_default() {
            "" if ports.len() > 1 => errs.push(FieldError::required(p.child("name"), "")),
            "" => {}
            name => {
                for msg in names::dns1123_label(name) {
                    errs.push(FieldError::invalid(p.child("name"), name, msg));
                }
                if !names.insert(name) {
                    errs.push(FieldError::duplicate(p.child("name"), name));
                }
            }
        }
        if !(1..=65535).contains(&port.port) {
            errs.push(FieldError::invalid(p.child("port"), port.port, "must be between 1 and 65535, inclusive"));
        }
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        if !PROTOCOLS.contains(&protocol) {
            errs.push(FieldError::not_supported(p.child("protocol"), protocol, PROTOCOLS));
        }
        if !numbers.insert((port.port, protocol)) {
            errs.push(FieldError::duplicate(&p, format!("{}/{}", port.port, protocol).as_str()));
        }
        if let Some(target) = &port.target_port {
            errs.extend(validate_port_ref(target, &p.child("targetPort")));
        }
        if let Some(node_port) = port.node_port.filter(|n| *n != 0) {
            if matches!(ty, TYPE_CLUSTER_IP | TYPE_EXTERNAL_NAME) {
                errs.push(FieldError::forbidden(p.child("nodePort"), format!("may not be used when `type` is '{ty}'")));
            } else if !(1..=65535).contains(&node_port) {
                errs.push(FieldError::invalid(p.child("nodePort"), node_port, "must be between 1 and 65535, inclusive"));
            } else if !node_ports.insert((node_port, protocol)) {
                errs.push(FieldError::duplicate(p.child("nodePort"), node_port));
            }
        }
    }
    errs
}

/// A port given by number or by name (a Service's `targetPort`, a probe's port).
pub fn validate_port_ref(port: &IntOrString, path: &Path) -> FieldErrors {
    match port {
        IntOrString::Int(n) if !(1..=65535).contains(n) => {
            vec![FieldError::invalid(path, *n, "must be between 1 and 65535, inclusive")]
        }
        IntOrString::Int(_) => Vec::new(),
        IntOrString::String(name) => names::iana_svc_name(name).into_iter().map(|msg| FieldError::invalid(path, name, msg)).collect(),
    }
}

fn validate_affinity(spec: &ServiceSpec, path: &Path) -> FieldErrors {
    let mut errs = Vec::new();
    let affinity = spec.session_affinity.as_deref().unwrap_or("None");
    if !AFFINITIES.contains(&affinity) {
        errs.push(FieldError::not_supported(path.child("sessionAffinity"), affinity, AFFINITIES));
    }
    let timeout = spec.session_affinity_config.as_ref().and_then(|c| c.client_ip.as_ref()).and_then(|c| c.timeout_seconds);
    match (affinity, timeout) {
        ("ClientIP", Some(t)) if !(1..=MAX_AFFINITY_TIMEOUT_SECONDS).contains(&t) => errs.push(FieldError::invalid(
            path.child("sessionAffinityConfig").child("clientIP").child("timeoutSeconds"),
            t,
            format!("must be greater than 0 and less than {MAX_AFFINITY_TIMEOUT_SECONDS}"),
        )),
        ("None", Some(_)) => errs.push(FieldError::invalid(
            path.child("sessionAffinityConfig"),
            crate::field::Value::Raw("{...}".into()),
            "must not be set when session affinity is None",
        )),
        _ => {}
    }
    errs
}

fn validate_traffic_policies(spec: &ServiceSpec, path: &Path) -> FieldErrors {
    let mut errs = Vec::new();
    let ty = service_type(spec);
    if let Some(policy) = spec.external_traffic_policy.as_deref() {
        if !matches!(ty, TYPE_NODE_PORT | TYPE_LOAD_BALANCER) {
            errs.push(FieldError::invalid(
                path.child("externalTrafficPolicy"),
                policy,
                "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
            ));
        } else if !TRAFFIC_POLICIES.contains(&policy) {
            errs.push(FieldError::not_supported(path.child("externalTrafficPolicy"), policy, TRAFFIC_POLICIES));
        }
    }
    if let Some(policy) = spec.internal_traffic_policy.as_deref() {
        if !TRAFFIC_POLICIES.contains(&policy) {
            errs.push(FieldError::not_supported(path.child("internalTrafficPolicy"), policy, TRAFFIC_POLICIES));
        }
    }
    if let Some(port) = spec.health_check_node_port.filter(|p| *p != 0) {
        if !needs_health_check_node_port(spec) {
            errs.push(FieldError::invalid(
                path.child("healthCheckNodePort"),
                port,
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(yaml: serde_json::Value) -> Service {
        let mut svc: Service = serde_json::from_value(yaml).unwrap();
        svc.apply_defaults();
        svc
    }

    fn messages(svc: &Service) -> Vec<String> {
        svc.validate().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_match_kubernetes() {
        let svc = service(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "sessionAffinity": "ClientIP", "ports": [{"port": 80}]}
        }));
        let spec = svc.spec.as_ref().unwrap();
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!(port.protocol.as_deref(), Some("TCP"));
        assert_eq!(port.target_port, Some(IntOrString::Int(80)));
        assert_eq!(spec.session_affinity_config.as_ref().unwrap().client_ip.as_ref().unwrap().timeout_seconds, Some(10800));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(spec.internal_traffic_policy.as_deref(), Some("Cluster"));
        assert_eq!(spec.allocate_load_balancer_node_ports, Some(true));
        assert!(messages(&svc).is_empty(), "{:?}", messages(&svc));
    }

    #[test]
    fn every_rule_names_its_field() {
        let svc = service(serde_json::json!({
            "metadata": {"name": "Bad_Name", "namespace": "default"},
            "spec": {"type": "Foo", "ports": [
                {"name": "a", "port": 70000, "protocol": "FOO"},
                {"name": "a", "port": 80, "targetPort": "not--valid"},
                {"port": 81}
            ]}
        }));
        let msgs = messages(&svc);
        let has = |needle: &str| msgs.iter().any(|m| m.starts_with(needle));
        assert!(has("metadata.name: Invalid value: \"Bad_Name\": a DNS-1035 label"), "{msgs:?}");
        assert!(has("spec.type: Unsupported value: \"Foo\""));
        assert!(has("spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"));
        assert!(has("spec.ports[0].protocol: Unsupported value: \"FOO\""));
        assert!(has("spec.ports[1].name: Duplicate value: \"a\""));
        assert!(has("spec.ports[1].targetPort: Invalid value: \"not--valid\": must not contain consecutive hyphens"));
        assert!(has("spec.ports[2].name: Required value"));
    }

    #[test]
    fn ports_are_required_except_headless_and_external_name() {
        let none = service(serde_json::json!({"metadata": {"name": "x", "namespace": "d"}, "spec": {}}));
        assert_eq!(messages(&none), ["spec.ports: Required value"]);
        let headless = service(serde_json::json!({"metadata": {"name": "x", "namespace": "d"}, "spec": {"clusterIP": "None"}}));
        assert!(messages(&headless).is_empty());
        let ext = service(serde_json::json!({"metadata": {"name": "x", "namespace": "d"}, "spec": {"type": "ExternalName"}}));
        assert_eq!(messages(&ext), ["spec.externalName: Required value"]);
    }

    #[test]
    fn type_rules() {
        let np = service(serde_json::json!({"metadata": {"name": "x", "namespace": "d"},
            "spec": {"ports": [{"port": 80, "nodePort": 30001}], "externalTrafficPolicy": "Local"}}));
        let msgs = messages(&np);
        assert!(msgs.contains(&"spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'".to_string()), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.starts_with("spec.externalTrafficPolicy: Invalid value: \"Local\"")));
        let headless_lb = service(serde_json::json!({"metadata": {"name": "x", "namespace": "d"},
            "spec": {"type": "LoadBalancer", "clusterIP": "None", "ports": [{"port": 80}]}}));
        assert_eq!(
            messages(&headless_lb),
            ["spec.clusterIPs[0]: Invalid value: \"None\": may not be set to 'None' for LoadBalancer services"]
        );
        let ext_ip = service(serde_json::json!({"metadata": {"name": "x", "namespace": "d"},
            "spec": {"type": "ExternalName", "externalName": "db.example.com", "clusterIP": "127.96.0.5"}}));
        assert_eq!(messages(&ext_ip), ["spec.clusterIP: Forbidden: may not be set for ExternalName services"]);
    }

    #[test]
    fn leaving_client_ip_affinity_drops_its_config() {
        let old = service(serde_json::json!({"metadata": {"name": "x", "namespace": "d"},
            "spec": {"sessionAffinity": "ClientIP", "ports": [{"port": 80}]}}));
        let mut new = old.clone();
        new.spec.as_mut().unwrap().session_affinity = None;
        new.prepare_for_update(&old);
        new.apply_defaults();
        assert!(new.validate().is_empty(), "{:?}", new.validate());
        assert_eq!(new.spec.as_ref().unwrap().session_affinity.as_deref(), Some("None"));
        assert!(new.spec.as_ref().unwrap().session_affinity_config.is_none());
    }

    #[test]
    fn cluster_ip_is_immutable() {
        let old = service(serde_json::json!({"metadata": {"name": "x", "namespace": "d"},
            "spec": {"clusterIP": "127.96.0.20", "ports": [{"port": 80}]}}));
        let mut new = old.clone();
        new.spec.as_mut().unwrap().cluster_ip = Some("127.96.0.21".into());
        let errs: Vec<String> = new.validate_update(&old).iter().map(ToString::to_string).collect();
        assert_eq!(errs, ["spec.clusterIPs[0]: Invalid value: \"127.96.0.21\": may not change once set"]);
    }

    #[test]
    fn an_update_naming_only_the_primary_keeps_both_cluster_ips() {
        let old = service(serde_json::json!({"metadata": {"name": "x", "namespace": "d"},
            "spec": {"clusterIP": "127.96.0.20", "clusterIPs": ["127.96.0.20", "fd77::14"], "ipFamilies": ["IPv4", "IPv6"],
                     "ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}}));
        let spec = |s: &Service| s.spec.clone().unwrap();
        for update in
            [serde_json::json!({"clusterIP": "127.96.0.20", "ports": [{"port": 80}]}), serde_json::json!({"ports": [{"port": 80}]})]
        {
            // As decoded from the request: no defaults yet.
            let mut new: Service =
                serde_json::from_value(serde_json::json!({"metadata": {"name": "x", "namespace": "d"}, "spec": update})).unwrap();
            new.prepare_for_update(&old);
            new.apply_defaults();
            assert_eq!(spec(&new).cluster_ips, spec(&old).cluster_ips);
            assert!(new.validate_update(&old).is_empty());
        }
        // A list the update names is its own.
        let mut chosen: Service = serde_json::from_value(serde_json::json!({"metadata": {"name": "x", "namespace": "d"},
            "spec": {"clusterIPs": ["127.96.0.20", "fd77::99"], "ports": [{"port": 80}]}}))
        .unwrap();
        chosen.prepare_for_update(&old);
        assert_eq!(spec(&chosen).cluster_ips.unwrap()[1], "fd77::99");
    }
}
