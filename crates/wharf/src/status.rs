//! What a user can reach from outside the cluster, as the seed chart's
//! NOTES.txt tells it: every LoadBalancer and NodePort service with the URL
//! to open. Printed when `wharf up` starts and by `wharf status`.

use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};

use crate::cli::ClientArgs;

/// The scheme a browser or client would use for a port.
fn scheme(port: i32, name: Option<&str>) -> &'static str {
    match (port, name) {
        (443 | 8443, _) => "https",
        (_, Some(n)) if n.contains("https") || n.contains("tls") => "https",
        _ => "http",
    }
}

/// One line per reachable port: `namespace/name  URL`.
pub fn reachable(services: &[Service], node_ip: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for svc in services {
        let (Some(spec), Some(name)) = (&svc.spec, &svc.metadata.name) else { continue };
        let key = format!("{}/{name}", svc.metadata.namespace.as_deref().unwrap_or("default"));
        let ingress: Vec<&str> = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref())
            .collect();
        for port in spec.ports.iter().flatten() {
            let scheme = scheme(port.port, port.name.as_deref());
            if spec.type_.as_deref() == Some("LoadBalancer") {
                lines.extend(ingress.iter().map(|ip| format!("{key:<40} {scheme}://{ip}:{}", port.port)));
            }
            if let Some(node_port) = port.node_port.filter(|_| matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"))) {
                lines.push(format!("{key:<40} {scheme}://{node_ip}:{node_port}"));
            }
        }
    }
    lines
}

/// The reachable services as the banner prints them (empty if none).
pub async fn notes(client: &kube::Client, node_ip: &str) -> String {
    let services = Api::<Service>::all(client.clone()).list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default();
    let lines = reachable(&services, node_ip);
    if lines.is_empty() {
        return String::new();
    }
    format!("Services you can reach from this machine:\n\n  {}\n", lines.join("\n  "))
}

/// `wharf status`.
pub async fn print(args: ClientArgs, node_ip: String) -> anyhow::Result<()> {
    let path = crate::client::kubeconfig_file(args.kubeconfig.as_deref(), &args.data.data_dir);
    let client = crate::client::from_file(&path).await?;
    let services = Api::<Service>::all(client).list(&ListParams::default()).await?.items;
    let lines = reachable(&services, &node_ip);
    if lines.is_empty() {
        println!("No LoadBalancer or NodePort services yet.");
    }
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_balancers_and_node_ports_get_urls() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kolide-fleet-fleet", "namespace": "default"},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "kolide-fleet-fleet", "port": 443, "nodePort": 30443}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "127.240.0.1"}]}}
        }))
        .unwrap();
        let lines = reachable(&[svc], "127.0.0.1");
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("https://127.240.0.1:443"), "{lines:?}");
        assert!(lines[1].ends_with("https://127.0.0.1:30443"), "{lines:?}");
    }
}
