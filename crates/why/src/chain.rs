//! The chain of one Service, judged from its objects (pure: the caller
//! fetches them). Each link is a line of the report; the first broken one
//! says what to do.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Event, Node, Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use wharf_api::node_status::{FailureReason, ProxyStatus};

/// What the cluster DNS said for the service's name.
#[derive(Clone, Debug)]
pub enum DnsAnswer {
    Addresses(Vec<IpAddr>),
    Failed(String),
}

/// The objects the chain is judged from.
pub struct Inputs {
    pub service: Service,
    /// The pods of the service's namespace.
    pub pods: Vec<Pod>,
    /// The service's EndpointSlices.
    pub slices: Vec<EndpointSlice>,
    /// The Events of the service's namespace.
    pub events: Vec<Event>,
    /// The DNS name asked and the answer.
    pub dns: (String, DnsAnswer),
    /// The cluster's Nodes, with what their proxies publish.
    pub nodes: Vec<Node>,
}

/// How one line of the chain stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Mark {
    Whole,
    Broken,
    /// Not a link, a clue (a near miss, an endpoint's connect errors).
    Hint,
}

/// One line of the chain: its depth in the tree (0 is the service).
#[derive(Clone, Debug, Serialize)]
pub struct Link {
    pub depth: usize,
    pub mark: Mark,
    pub text: String,
}

/// The first broken link and what to do about it.
#[derive(Clone, Debug, Serialize)]
pub struct Broken {
    pub link: String,
    pub fix: String,
}

/// The chain as lines (for the dashboard's diagram) and as printed text,
/// and whether it is whole.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub links: Vec<Link>,
    pub broken: Option<Broken>,
    pub whole: bool,
    #[serde(skip)]
    pub text: String,
}

#[derive(Default)]
struct Writer {
    links: Vec<Link>,
    broken: Option<Broken>,
}

impl Writer {
    fn push(&mut self, depth: usize, mark: Mark, text: &str) {
        self.links.push(Link { depth, mark, text: text.to_string() });
    }

    fn line(&mut self, depth: usize, ok: bool, text: &str) {
        self.push(depth, if ok { Mark::Whole } else { Mark::Broken }, text);
    }

    fn hint(&mut self, depth: usize, text: &str) {
        self.push(depth, Mark::Hint, text);
    }

    /// A broken link: the first one is the answer.
    fn broken(&mut self, depth: usize, text: &str, fix: &str) {
        self.line(depth, false, text);
        if self.broken.is_none() {
            self.broken = Some(Broken { link: text.to_string(), fix: fix.to_string() });
        }
    }

    fn finish(self) -> Report {
        let mut text = String::new();
        for link in &self.links {
            let mark = match link.mark {
                Mark::Whole => "✓ ",
                Mark::Broken => "✗ ",
                Mark::Hint => "? ",
            };
            let mark = if link.depth == 0 { "" } else { mark };
            let _ = writeln!(text, "{}{mark}{}", "  ".repeat(link.depth), link.text);
        }
        match &self.broken {
            Some(broken) => {
                let _ = writeln!(text, "\nfirst broken link: {}\n  → {}", broken.link, broken.fix);
            }
            None => text.push_str("\nthe chain is whole\n"),
        }
        Report { whole: self.broken.is_none(), links: self.links, broken: self.broken, text }
    }
}

fn labels(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

fn matches(selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = labels(pod);
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Edits (insertions, deletions, substitutions) from `a` to `b`.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Typos are this close.
const TYPO: usize = 2;

/// How `pod` misses `selector` by exactly one label, if it does: with
/// several labels any one differing counts; with one, only a value or key
/// a typo away (so unrelated pods are not listed).
fn near_miss(selector: &BTreeMap<String, String>, pod: &Pod) -> Option<String> {
    let labels = labels(pod);
    let mut misses = selector.iter().filter(|(k, v)| labels.get(*k) != Some(*v));
    let (key, want) = misses.next()?;
    if misses.next().is_some() {
        return None;
    }
    let several = selector.len() > 1;
    match labels.get(key) {
        Some(has) if several || distance(has, want) <= TYPO => Some(format!("has {key}={has}, the selector wants {key}={want}")),
        Some(_) => None,
        None => {
            let typo = labels.iter().find(|(k, v)| *v == want && distance(k, key) <= TYPO);
            match typo {
                Some((k, v)) => Some(format!("has {k}={v}, the selector wants {key}={want}")),
                None if several => Some(format!("has no label {key} (the selector wants {key}={want})")),
                None => None,
            }
        }
    }
}

fn selector_text(selector: &BTreeMap<String, String>) -> String {
    selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn is_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The newest Event about `pod` with `reason`.
fn last_event<'a>(events: &'a [Event], pod: &str, reason: &str) -> Option<&'a Event> {
    events
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason))
        .max_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0))
}

/// The container port `port` names in `pod`, if the name is defined.
fn resolve(pod: &Pod, port: &ServicePort) -> Result<i32, String> {
    let protocol = port.protocol.as_deref().unwrap_or("TCP");
    match &port.target_port {
        None => Ok(port.port),
        Some(IntOrString::Int(n)) => Ok(*n),
        Some(IntOrString::String(named)) => pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(named) && p.protocol.as_deref().unwrap_or("TCP") == protocol)
            .map(|p| p.container_port)
            .ok_or_else(|| format!("defines no {protocol} container port named {named:?}")),
    }
}

fn ready_endpoints(slices: &[EndpointSlice]) -> (usize, usize) {
    let all = slices.iter().flat_map(|s| &s.endpoints);
    let ready = all.clone().filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false)).count();
    (ready, all.count())
}

fn pods_link(w: &mut Writer, inputs: &Inputs, selector: &BTreeMap<String, String>) {
    let matched: Vec<&Pod> = inputs.pods.iter().filter(|p| matches(selector, p)).collect();
    let text = format!("selector {} matches {} pod(s)", selector_text(selector), matched.len());
    if matched.is_empty() {
        w.broken(1, &text, "fix the selector or the pods' labels so that they match");
    } else {
        w.line(1, true, &text);
    }
    for pod in inputs.pods.iter().filter(|p| !matches(selector, p)) {
        if let Some(why) = near_miss(selector, pod) {
            w.hint(2, &format!("near miss: pod {} {why}", name(pod)));
        }
    }
    for pod in matched {
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        if is_ready(pod) {
            w.line(2, true, &format!("pod {} on {node}: ready", name(pod)));
        } else {
            let probe = last_event(&inputs.events, name(pod), "Unhealthy").map(|e| {
                let at = e.last_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
                format!("; last probe at {at}: {}", e.message.as_deref().unwrap_or_default())
            });
            let text = format!("pod {} on {node}: not ready{}", name(pod), probe.unwrap_or_default());
            w.broken(2, &text, "make the pod's readiness probe pass (see its error), or fix the probe");
        }
        for port in inputs.service.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            match resolve(pod, port) {
                Ok(n) => w.line(3, true, &format!("port {} → {n}", port.port)),
                Err(why) => w.broken(
                    3,
                    &format!("port {}: pod {} {why}", port.port, name(pod)),
                    "name the container port as the service's targetPort does, or change the targetPort",
                ),
            }
        }
    }
}

fn frontends_link(w: &mut Writer, inputs: &Inputs) {
    let spec = inputs.service.spec.clone().unwrap_or_default();
    let ports: Vec<String> =
        spec.ports.iter().flatten().map(|p| format!("{}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP"))).collect();
    let cluster_ips = wharf_api::service::cluster_ips(&spec);
    let label = if cluster_ips.len() > 1 { "cluster IPs" } else { "cluster IP" };
    w.line(1, true, &format!("{label} {} ports {}", cluster_ips.join(","), ports.join(",")));
    for port in spec.ports.iter().flatten().filter_map(|p| p.node_port) {
        w.line(1, true, &format!("node port {port}"));
    }
    if spec.type_.as_deref() == Some("LoadBalancer") {
        let ingress = inputs.service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|l| l.ingress.as_ref());
        match ingress.and_then(|i| i.first()).and_then(|i| i.ip.clone()) {
            Some(ip) => w.line(1, true, &format!("load balancer {ip}")),
            None => w.broken(1, "no load balancer address assigned", "check the load balancer pool (--lb-pool) has a free address"),
        }
    }
    if proxies_link(w, inputs) {
        return;
    }
    // No node publishes its proxy's state: the Events are all there is.
    let service = inputs.service.metadata.name.as_deref().unwrap_or_default();
    if let Some(conflict) = last_event(&inputs.events, service, "FrontendConflict") {
        let text = format!("frontend conflict: {}", conflict.message.as_deref().unwrap_or_default());
        w.broken(1, &text, CONFLICT_FIX);
    }
    if let Some(failed) = last_event(&inputs.events, service, "FrontendBindFailed") {
        let text = format!("frontend not served: {}", failed.message.as_deref().unwrap_or_default());
        w.broken(1, &text, BIND_FIX);
    }
}

const CONFLICT_FIX: &str = "give one of the clashing services another port or address";
const BIND_FIX: &str = "free the address and port on that node (another program holds it), or move the service";

fn service_key(service: &Service) -> String {
    format!("{}/{}", service.metadata.namespace.as_deref().unwrap_or_default(), service.metadata.name.as_deref().unwrap_or_default())
}

fn node_ready(node: &Node) -> bool {
    node.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Each node's proxy, from the state it publishes on its Node: whether it
/// serves the service's frontends, and its endpoints' connect errors.
/// Whether any node published.
fn proxies_link(w: &mut Writer, inputs: &Inputs) -> bool {
    let service = service_key(&inputs.service);
    let mut published = false;
    for node in &inputs.nodes {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let Some(status) = ProxyStatus::of_annotations(node.metadata.annotations.as_ref()) else {
            w.hint(1, &format!("node {name}: its proxy publishes no state"));
            continue;
        };
        published = true;
        let failing: Vec<_> = status.failing.iter().filter(|f| f.service == service).collect();
        if !node_ready(node) {
            w.broken(1, &format!("node {name} is not Ready"), "check that the node's agent runs and reaches the API");
        } else if !status.synced {
            w.broken(1, &format!("node {name}: its proxy has not synced yet"), "wait for the proxy to catch up, or check its logs");
        } else if failing.is_empty() {
            w.line(1, true, &format!("node {name}: its proxy serves every frontend"));
        }
        for failed in failing {
            let fix = match failed.reason {
                FailureReason::Conflict => CONFLICT_FIX,
                FailureReason::BindFailed => BIND_FIX,
            };
            w.broken(1, &format!("node {name} does not serve {}: {}", failed.frontend, failed.error), fix);
        }
        for endpoint in status.endpoints.iter().filter(|e| e.service() == service && e.connect_errors > 0) {
            let last = match (&endpoint.last_error_at, &endpoint.last_error) {
                (Some(at), Some(error)) => format!(", last at {at}: {error}"),
                _ => String::new(),
            };
            w.hint(2, &format!("endpoint {} via node {name}: {} connect error(s){last}", endpoint.endpoint, endpoint.connect_errors));
        }
    }
    published
}

fn dns_link(w: &mut Writer, inputs: &Inputs, expected: &[IpAddr]) {
    let (name, answer) = &inputs.dns;
    match answer {
        DnsAnswer::Failed(why) => w.broken(1, &format!("DNS {name}: {why}"), "check the cluster DNS (kube-dns) answers on this machine"),
        DnsAnswer::Addresses(got) => {
            let mut got = got.clone();
            got.sort();
            let mut want = expected.to_vec();
            want.sort();
            let text = format!("DNS {name} → {}", got.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(","));
            if got == want {
                w.line(1, true, &text);
            } else {
                let wanted = want.iter().map(IpAddr::to_string).collect::<Vec<_>>().join(",");
                w.broken(1, &format!("{text}, expected {wanted}"), "wait for the DNS to catch up, or check the agent's logs");
            }
        }
    }
}

/// The addresses the DNS should give (A and AAAA): the cluster IPs, or
/// for a headless service its ready endpoints of every family.
fn expected_addresses(inputs: &Inputs) -> Vec<IpAddr> {
    let spec = inputs.service.spec.clone().unwrap_or_default();
    match spec.cluster_ip.as_deref() {
        Some("None") => inputs
            .slices
            .iter()
            .flat_map(|s| &s.endpoints)
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
            .flat_map(|e| e.addresses.iter().filter_map(|a| a.parse().ok()))
            .collect(),
        Some(_) => wharf_api::service::cluster_ips(&spec).iter().filter_map(|ip| ip.parse().ok()).collect(),
        None => Vec::new(),
    }
}

/// Walks the chain of `inputs.service`.
pub fn explain(inputs: &Inputs) -> Report {
    let mut w = Writer::default();
    let spec = inputs.service.spec.clone().unwrap_or_default();
    let kind = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    w.push(0, Mark::Whole, &format!("service {} ({kind})", service_key(&inputs.service)));
    if kind == "ExternalName" {
        w.line(1, true, &format!("external name {}", spec.external_name.unwrap_or_default()));
    } else {
        match spec.selector.as_ref().filter(|s| !s.is_empty()) {
            Some(selector) => pods_link(&mut w, inputs, selector),
            None => w.line(1, true, "no selector: its endpoints are written by hand (EndpointSlices or Endpoints)"),
        }
        let (ready, all) = ready_endpoints(&inputs.slices);
        let text = format!("{} EndpointSlice(s): {ready} of {all} endpoints ready", inputs.slices.len());
        if ready == 0 {
            w.broken(1, &text, "no endpoint can take traffic: fix the links above");
        } else {
            w.line(1, true, &text);
        }
        frontends_link(&mut w, inputs);
    }
    dns_link(&mut w, inputs, &expected_addresses(inputs));
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, labels: &[(&str, &str)], ready: bool, ports: &[(&str, i32)]) -> Pod {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let ports: Vec<serde_json::Value> = ports.iter().map(|(n, p)| serde_json::json!({"name": n, "containerPort": p})).collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports}]},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    fn inputs(pods: Vec<Pod>, ready_endpoints: usize, dns: &str) -> Inputs {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.0.0.5", "ports": [{"port": 80, "targetPort": "http"}]},
        }))
        .unwrap();
        let endpoints: Vec<serde_json::Value> = (0..ready_endpoints)
            .map(|i| serde_json::json!({"addresses": [format!("10.1.0.{i}")], "conditions": {"ready": true}}))
            .collect();
        let slice = serde_json::from_value(serde_json::json!({"addressType": "IPv4", "metadata": {}, "endpoints": endpoints})).unwrap();
        Inputs {
            service,
            pods,
            slices: vec![slice],
            events: Vec::new(),
            dns: ("web.default.svc.cluster.local".into(), DnsAnswer::Addresses(vec![dns.parse().unwrap()])),
            nodes: Vec::new(),
        }
    }

    #[test]
    fn a_whole_chain() {
        let report = explain(&inputs(vec![pod("web-0", &[("app", "web")], true, &[("http", 8080)])], 1, "10.0.0.5"));
        assert!(report.whole, "{}", report.text);
        assert!(report.text.contains("port 80 → 8080"), "{}", report.text);
    }

    #[test]
    fn a_selector_typo_shows_the_near_miss() {
        let report = explain(&inputs(vec![pod("web-0", &[("app", "wbe")], true, &[("http", 8080)])], 0, "10.0.0.5"));
        assert!(!report.whole);
        assert!(report.text.contains("near miss: pod web-0 has app=wbe, the selector wants app=web"), "{}", report.text);
        assert!(report.text.contains("first broken link: selector app=web matches 0 pod(s)"), "{}", report.text);
    }

    #[test]
    fn an_unready_pod_names_its_probe_failure_and_a_missing_named_port() {
        let mut input = inputs(vec![pod("web-0", &[("app", "web")], false, &[("metrics", 9090)])], 0, "10.0.0.5");
        input.events = vec![serde_json::from_value(serde_json::json!({
            "metadata": {"name": "e"}, "involvedObject": {"name": "web-0"}, "reason": "Unhealthy",
            "message": "Readiness probe failed: dial tcp 10.1.0.1:8080: connect: connection refused",
            "lastTimestamp": "2026-01-01T00:00:00Z",
        }))
        .unwrap()];
        let report = explain(&input);
        assert!(
            report.text.contains(
                "first broken link: pod web-0 on n1: not ready; last probe at 2026-01-01T00:00:00Z: Readiness probe failed: dial tcp"
            ),
            "{}",
            report.text
        );
        assert!(report.text.contains(r#"port 80: pod web-0 defines no TCP container port named "http""#), "{}", report.text);
    }

    #[test]
    fn only_typos_are_near_misses_of_a_one_label_selector() {
        let web = BTreeMap::from([("app".to_string(), "web".to_string())]);
        assert!(near_miss(&web, &pod("db", &[("app", "database")], true, &[])).is_none(), "another app");
        assert!(near_miss(&web, &pod("w", &[("app", "wbe")], true, &[])).is_some());
        assert_eq!(near_miss(&web, &pod("w", &[("ap", "web")], true, &[])).unwrap(), "has ap=web, the selector wants app=web");
        let two = BTreeMap::from([("app".to_string(), "web".to_string()), ("tier".to_string(), "front".to_string())]);
        assert!(near_miss(&two, &pod("w", &[("app", "web")], true, &[])).unwrap().contains("has no label tier"));
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    fn node(name: &str, ready: bool, status: Option<serde_json::Value>) -> Node {
        let annotations = status.map(|s| serde_json::json!({ wharf_api::node_status::PROXY_STATUS: s.to_string() }));
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": annotations},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    #[test]
    fn each_nodes_proxy_is_judged_from_what_it_publishes() {
        let mut input = inputs(vec![pod("web-0", &[("app", "web")], true, &[("http", 8080)])], 1, "10.0.0.5");
        let serving = serde_json::json!({"mode": "userspace", "synced": true, "servicePorts": 1, "frontends": 1,
            "endpoints": [{"servicePort": "default/web:http", "endpoint": "10.1.0.0:8080", "connections": 3, "active": 0,
                "bytesToEndpoint": 1, "bytesToClient": 1, "connectErrors": 2, "lastError": "Connection refused (os error 111)",
                "lastErrorAt": "2026-01-01T00:00:00Z"}]});
        let failing = serde_json::json!({"mode": "userspace", "synced": true, "servicePorts": 1, "frontends": 0,
            "failing": [{"service": "default/web", "frontend": "10.0.0.5:80/TCP", "reason": "BindFailed",
                "error": "Address already in use (os error 98)"}]});
        input.nodes = vec![node("a", true, Some(serving)), node("b", true, None)];
        let report = explain(&input);
        assert!(report.whole, "{}", report.text);
        assert!(report.text.contains("✓ node a: its proxy serves every frontend"), "{}", report.text);
        assert!(report.text.contains("? node b: its proxy publishes no state"), "{}", report.text);
        assert!(
            report.text.contains(
                "endpoint 10.1.0.0:8080 via node a: 2 connect error(s), last at 2026-01-01T00:00:00Z: Connection refused (os error 111)"
            ),
            "{}",
            report.text
        );
        input.nodes.push(node("c", true, Some(failing)));
        let report = explain(&input);
        assert!(!report.whole);
        let broken = report.broken.unwrap();
        assert_eq!(broken.link, "node c does not serve 10.0.0.5:80/TCP: Address already in use (os error 98)");
        assert_eq!(broken.fix, BIND_FIX);
        input.nodes =
            vec![node("a", false, Some(serde_json::json!({"mode": "userspace", "synced": true, "servicePorts": 1, "frontends": 1})))];
        assert_eq!(explain(&input).broken.unwrap().link, "node a is not Ready");
    }

    #[test]
    fn a_frontend_conflict_names_the_owner_and_the_fix() {
        let mut input = inputs(vec![pod("web-0", &[("app", "web")], true, &[("http", 8080)])], 1, "10.0.0.5");
        let conflict = serde_json::json!({"mode": "userspace", "synced": true, "servicePorts": 1, "frontends": 0,
            "failing": [{"service": "default/web", "frontend": "10.9.9.9:80/TCP", "reason": "Conflict",
                "error": "already served by default/older"}]});
        input.nodes = vec![node("a", true, Some(conflict))];
        let broken = explain(&input).broken.unwrap();
        assert_eq!(broken.link, "node a does not serve 10.9.9.9:80/TCP: already served by default/older");
        assert_eq!(broken.fix, CONFLICT_FIX);
    }

    #[test]
    fn a_wrong_dns_answer_is_a_broken_link() {
        let report = explain(&inputs(vec![pod("web-0", &[("app", "web")], true, &[("http", 8080)])], 1, "10.0.0.6"));
        assert!(report.text.contains("expected 10.0.0.5"), "{}", report.text);
        assert!(!report.whole);
    }

    #[test]
    fn a_dual_stack_service_expects_an_address_of_each_family() {
        let mut inputs = inputs(vec![pod("web-0", &[("app", "web")], true, &[("http", 8080)])], 1, "10.0.0.5");
        let spec = inputs.service.spec.as_mut().unwrap();
        spec.cluster_ips = Some(vec!["10.0.0.5".into(), "fd00::5".into()]);
        assert_eq!(expected_addresses(&inputs), ["10.0.0.5".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
        inputs.dns.1 = DnsAnswer::Addresses(vec!["fd00::5".parse().unwrap(), "10.0.0.5".parse().unwrap()]);
        let report = explain(&inputs);
        assert!(report.text.contains("cluster IPs 10.0.0.5,fd00::5"), "{}", report.text);
        assert!(report.whole, "{}", report.text);
    }
}
