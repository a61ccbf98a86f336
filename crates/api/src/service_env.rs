//! The environment variables a kubelet gives a container for the
//! Services of its namespace (`pkg/kubelet/envvars`), so that
//! `wharf env` prints exactly what a pod would see.

use k8s_openapi::api::core::v1::Service;

/// Upper-cases and turns `-` and `.` into `_`; a leading digit gets `_`.
pub fn env_name(name: &str) -> String {
    let converted: String = name.chars().map(|c| if c == '-' || c == '.' { '_' } else { c.to_ascii_uppercase() }).collect();
    if converted.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{converted}")
    } else {
        converted
    }
}

/// The variables of one Service, in the kubelet's order; none for a
/// Service without a cluster IP (headless, ExternalName).
pub fn service_vars(svc: &Service) -> Vec<(String, String)> {
    let Some(spec) = &svc.spec else { return Vec::new() };
    let ip = spec.cluster_ip.as_deref().unwrap_or_default();
    if ip.is_empty() || ip == crate::service::CLUSTER_IP_NONE {
        return Vec::new();
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    let Some(first) = ports.first() else { return Vec::new() };
    let name = env_name(svc.metadata.name.as_deref().unwrap_or_default());
    let mut vars = vec![(format!("{name}_SERVICE_HOST"), ip.to_string()), (format!("{name}_SERVICE_PORT"), first.port.to_string())];
    for port in ports {
        if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            vars.push((format!("{name}_SERVICE_PORT_{}", env_name(port_name)), port.port.to_string()));
        }
    }
    let protocol = |p: &k8s_openapi::api::core::v1::ServicePort| p.protocol.clone().unwrap_or_else(|| "TCP".into());
    let first_proto = protocol(first).to_lowercase();
    vars.push((format!("{name}_PORT"), format!("{first_proto}://{ip}:{}", first.port)));
    for port in ports {
        let proto = protocol(port);
        let prefix = format!("{name}_PORT_{}_{}", port.port, proto.to_uppercase());
        let lower = proto.to_lowercase();
        vars.push((prefix.clone(), format!("{lower}://{ip}:{}", port.port)));
        vars.push((format!("{prefix}_PROTO"), lower));
        vars.push((format!("{prefix}_PORT"), port.port.to_string()));
        vars.push((format!("{prefix}_ADDR"), ip.to_string()));
    }
    vars
}

/// The variables for a pod of `namespace`: the `kubernetes` service of
/// `default` always, the namespace's own services when service links are
/// enabled (the default). A variable set twice keeps its first value.
pub fn namespace_vars(services: &[Service], namespace: &str, enable_service_links: bool) -> Vec<(String, String)> {
    let mut selected: Vec<&Service> = services
        .iter()
        .filter(|s| {
            let ns = s.metadata.namespace.as_deref().unwrap_or_default();
            let name = s.metadata.name.as_deref().unwrap_or_default();
            (ns == namespace && enable_service_links) || (ns == "default" && name == "kubernetes")
        })
        .collect();
    selected.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    selected.dedup_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (k, v) in selected.iter().flat_map(|s| service_vars(s)) {
        if seen.insert(k.clone()) {
            out.push((k, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": ns}, "spec": {"clusterIP": ip, "ports": ports}}))
        .unwrap()
    }

    #[test]
    fn kubelet_format() {
        let mysql =
            svc("default", "kolide-fleet-mysql", "10.0.0.11", serde_json::json!([{"name": "mysql", "port": 3306, "protocol": "TCP"}]));
        let vars = service_vars(&mysql);
        let want = [
            ("KOLIDE_FLEET_MYSQL_SERVICE_HOST", "10.0.0.11"),
            ("KOLIDE_FLEET_MYSQL_SERVICE_PORT", "3306"),
            ("KOLIDE_FLEET_MYSQL_SERVICE_PORT_MYSQL", "3306"),
            ("KOLIDE_FLEET_MYSQL_PORT", "tcp://10.0.0.11:3306"),
            ("KOLIDE_FLEET_MYSQL_PORT_3306_TCP", "tcp://10.0.0.11:3306"),
            ("KOLIDE_FLEET_MYSQL_PORT_3306_TCP_PROTO", "tcp"),
            ("KOLIDE_FLEET_MYSQL_PORT_3306_TCP_PORT", "3306"),
            ("KOLIDE_FLEET_MYSQL_PORT_3306_TCP_ADDR", "10.0.0.11"),
        ];
        let got: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn names_and_selection() {
        assert_eq!(env_name("9lives.svc"), "_9LIVES_SVC");
        let dns = svc("default", "dns", "10.0.0.10", serde_json::json!([{"port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53}]));
        let vars = service_vars(&dns);
        assert!(vars.contains(&("DNS_PORT".into(), "udp://10.0.0.10:53".into())));
        assert!(vars.contains(&("DNS_SERVICE_PORT_DNS_TCP".into(), "53".into())));
        assert!(vars.contains(&("DNS_PORT_53_UDP_PROTO".into(), "udp".into())));
        let headless = svc("team", "h", "None", serde_json::json!([{"port": 80}]));
        assert!(service_vars(&headless).is_empty());
        let all = [
            svc("default", "kubernetes", "10.0.0.1", serde_json::json!([{"name": "https", "port": 443}])),
            dns,
            svc("team", "web", "10.0.0.20", serde_json::json!([{"port": 80}])),
        ];
        let team: Vec<String> = namespace_vars(&all, "team", true).into_iter().map(|(k, _)| k).collect();
        assert!(team.contains(&"KUBERNETES_SERVICE_HOST".to_string()) && team.contains(&"WEB_SERVICE_HOST".to_string()));
        assert!(!team.iter().any(|k| k.starts_with("DNS_")));
        let no_links: Vec<String> = namespace_vars(&all, "team", false).into_iter().map(|(k, _)| k).collect();
        assert!(no_links.iter().all(|k| k.starts_with("KUBERNETES_")));
    }
}
