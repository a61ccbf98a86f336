//! Workloads as the proxy tests make them: pods that are host processes
//! on the node IP, services selecting them, and waiting for their
//! endpoints.

use std::collections::BTreeSet;
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

/// The seed story through a running wharf: its backends as host
/// processes, its manifests applied, then TCP through every cluster IP,
/// the node port and the load balancer address. Returns those frontends.
pub fn seed_story_traffic(w: &Wharf) -> Vec<String> {
    let ip = w.node_ip.clone();
    let _backends: Vec<super::Backend> =
        [3306, 6379, 8080, 8081].iter().map(|p| super::Backend::start(&format!("{ip}:{p}"), true)).collect();
    w.kubectl_ok(&["apply", "-f", super::example("kolide-fleet").to_str().unwrap()]);
    wait_for("fleet endpoints", || ready_endpoints(w, "kolide-fleet-fleet") == 2);
    wait_for("mysql endpoints", || ready_endpoints(w, "kolide-fleet-mysql") == 1);
    wait_for("redis endpoints", || ready_endpoints(w, "kolide-fleet-redis") == 1);
    let cluster = |svc: &str, port: u16| format!("{}:{port}", svc_field(w, svc, ".spec.clusterIP"));
    wait_for("mysql through its cluster IP", || super::http_get(&cluster("kolide-fleet-mysql", 3306)).is_ok_and(|b| b == "3306"));
    wait_for("redis through its cluster IP", || super::http_get(&cluster("kolide-fleet-redis", 6379)).is_ok_and(|b| b == "6379"));
    // The application: 443 → targetPort http, resolved per pod to 8080 and 8081.
    let fleet = cluster("kolide-fleet-fleet", 443);
    wait_for("fleet through its cluster IP", || super::http_get(&fleet).is_ok());
    let seen: BTreeSet<String> = (0..40).map(|_| super::http_get(&fleet).unwrap()).collect();
    assert_eq!(seen, ["8080", "8081"].map(String::from).into());
    // The node port, as in `443:31525/TCP`, and the load balancer address kubectl shows.
    let node_port = svc_field(w, "kolide-fleet-fleet", ".spec.ports[0].nodePort");
    wait_for("fleet through its node port", || super::http_get(&format!("{ip}:{node_port}")).is_ok());
    wait_for("an EXTERNAL-IP", || !svc_field(w, "kolide-fleet-fleet", ".status.loadBalancer.ingress[0].ip").is_empty());
    let table = w.kubectl_ok(&["get", "svc", "kolide-fleet-fleet", "--no-headers"]);
    let external = table.split_whitespace().nth(3).unwrap().to_string();
    assert!(external.starts_with("127.253."), "EXTERNAL-IP should come from the pool: {table}");
    wait_for("fleet through its load balancer", || super::http_get(&format!("{external}:443")).is_ok());
    vec![
        cluster("kolide-fleet-mysql", 3306),
        cluster("kolide-fleet-redis", 6379),
        fleet,
        format!("{ip}:{node_port}"),
        format!("{external}:443"),
    ]
}
