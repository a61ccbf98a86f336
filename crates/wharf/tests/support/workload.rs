//! Workloads as the proxy tests make them: pods that are host processes
//! on the node IP, services selecting them, and waiting for their
//! endpoints.

use std::time::Duration;

use super::Wharf;

pub fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    assert!(super::eventually(Duration::from_secs(30), || check().then_some(())).is_some(), "timed out waiting for {what}");
}

pub fn svc_field(w: &Wharf, svc: &str, path: &str) -> String {
    w.kubectl_ok(&["get", "svc", svc, "-o", &format!("jsonpath={{{path}}}")])
}

/// Pods named `name-i` labelled `app=name`, each listening on its own port.
pub fn pods(name: &str, ports: &[u16], protocol: &str, probe: bool) -> String {
    let mut out = String::new();
    for (i, port) in ports.iter().enumerate() {
        let probe = if probe {
            "\n    readinessProbe:\n      tcpSocket: {port: web}\n      periodSeconds: 1\n      failureThreshold: 1"
        } else {
            ""
        };
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}-{i}\n  labels: {{app: {name}}}\nspec:\n  containers:\n  - name: c\n    image: x\n    ports:\n    - {{name: web, containerPort: {port}, protocol: {protocol}}}{probe}\n"
        ));
    }
    out
}

pub fn service(name: &str, extra_spec: &str, protocol: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: {name}}}\n  ports:\n  - {{name: web, port: 80, targetPort: web, protocol: {protocol}}}\n{extra_spec}")
}

pub fn applied(w: &Wharf, yaml: &str) {
    let out = w.apply_text(yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

pub fn ready_endpoints(w: &Wharf, svc: &str) -> usize {
    let out = w.kubectl_ok(&["get", "endpoints", svc, "-o", "jsonpath={.subsets[*].addresses[*].ip}"]);
    out.split_whitespace().count()
}
