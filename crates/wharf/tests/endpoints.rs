//! Pods, nodes and endpoints: readiness-probed pods with real backends
//! become EndpointSlices and Endpoints.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use support::{example, Backend, Wharf};

const WAIT: Duration = Duration::from_secs(30);

fn endpoints_of(w: &Wharf, svc: &str) -> String {
    w.kubectl_ok(&[
        "get",
        "endpoints",
        svc,
        "-o",
        "jsonpath={range .subsets[*]}{range .addresses[*]}{.ip}{\",\"}{end}{.ports[0].port}{\";\"}{end}",
    ])
}

/// `kubectl get endpoints NAME`'s ENDPOINTS column.
fn endpoints_column(w: &Wharf, svc: &str) -> String {
    let out = w.kubectl_ok(&["get", "endpoints", svc, "--no-headers"]);
    out.split_whitespace().nth(1).unwrap_or_default().to_string()
}

fn wait_for(w: &Wharf, what: &str, mut check: impl FnMut(&Wharf) -> bool) {
    let ok = support::eventually(WAIT, || check(w).then_some(()));
    assert!(ok.is_some(), "timed out waiting for {what}");
}

/// Slices of a service as (port, [(pod, ready, serving, terminating)]).
/// An endpoint as tests compare it: pod, ready, serving, terminating.
type EndpointState = (String, bool, bool, bool);

fn slices(w: &Wharf, svc: &str) -> Vec<(i64, Vec<EndpointState>)> {
    let out = w.kubectl_ok(&["get", "endpointslices", "-l", &format!("kubernetes.io/service-name={svc}"), "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut slices: Vec<(i64, Vec<EndpointState>)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let port = s["ports"][0]["port"].as_i64().unwrap_or(0);
            let eps = s["endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let c = &e["conditions"];
                    let b = |k: &str| c[k].as_bool().unwrap_or(false);
                    (e["targetRef"]["name"].as_str().unwrap().to_string(), b("ready"), b("serving"), b("terminating"))
                })
                .collect();
            (port, eps)
        })
        .collect();
    slices.sort();
    slices
}

#[test]
fn seed_pods_become_endpoints_by_readiness() {
    let w = Wharf::start(&[]);
    let ip = w.node_ip.clone();
    let mut seed = w.seed(true);

    wait_for(&w, "all endpoints", |w| endpoints_column(w, "kolide-fleet-fleet") == format!("{ip}:8080,{ip}:8081"));
    assert_eq!(endpoints_column(&w, "kolide-fleet-mysql"), format!("{ip}:3306"));
    assert_eq!(endpoints_column(&w, "kolide-fleet-redis"), format!("{ip}:6379"));
    // The named target port resolved per pod: two slices, one per number.
    let fleet = slices(&w, "kolide-fleet-fleet");
    assert_eq!(
        fleet,
        vec![
            (8080, vec![("kolide-fleet-fleet-a".into(), true, true, false)]),
            (8081, vec![("kolide-fleet-fleet-b".into(), true, true, false)]),
        ]
    );
    let pods = w.kubectl_ok(&["get", "pods", "-o", "wide", "--no-headers"]);
    for line in pods.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((cols[1], cols[2], cols[5], cols[6]), ("1/1", "Running", ip.as_str(), "test-node"), "{pods}");
    }
    let nodes = w.kubectl_ok(&["get", "nodes", "-o", "wide", "--no-headers"]);
    let node: Vec<&str> = nodes.split_whitespace().collect();
    assert_eq!((node[0], node[1], node[5]), ("test-node", "Ready", ip.as_str()), "{nodes}");

    // A backend stops: its pod turns unready and leaves the ready endpoints.
    drop(seed.fleet_b.take());
    wait_for(&w, "fleet-b to turn unready", |w| endpoints_column(w, "kolide-fleet-fleet") == format!("{ip}:8080"));
    assert_eq!(slices(&w, "kolide-fleet-fleet")[1].1, vec![("kolide-fleet-fleet-b".to_string(), false, false, false)]);
    let legacy = endpoints_of(&w, "kolide-fleet-fleet");
    assert!(legacy.contains(&format!("{ip},8080")), "{legacy}");
    // Told as the kubelet tells it: one Unhealthy event, aggregated over
    // the repeated failures; and the load balancer's address as MetalLB
    // reports it.
    let events = |w: &Wharf| -> Vec<serde_json::Value> {
        let list: serde_json::Value = serde_json::from_str(&w.kubectl_ok(&["get", "events", "-o", "json"])).unwrap();
        list["items"].as_array().cloned().unwrap_or_default()
    };
    let unhealthy = |w: &Wharf| -> Vec<serde_json::Value> {
        events(w).into_iter().filter(|e| e["reason"] == "Unhealthy" && e["involvedObject"]["name"] == "kolide-fleet-fleet-b").collect()
    };
    wait_for(&w, "an Unhealthy event", |w| !unhealthy(w).is_empty());
    std::thread::sleep(Duration::from_secs(3));
    let told = unhealthy(&w);
    assert_eq!(told.len(), 1, "one aggregated event: {told:?}");
    let message = told[0]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("Readiness probe failed: Get ") && message.contains("connection refused"), "{message}");
    assert_eq!(told[0]["source"]["component"], "kubelet");
    assert!(w.kubectl_ok(&["describe", "pod", "kolide-fleet-fleet-b"]).contains("Readiness probe failed"));
    let allocated = events(&w).into_iter().find(|e| e["reason"] == "IPAllocated").expect("an IPAllocated event");
    assert_eq!(allocated["involvedObject"]["name"], "kolide-fleet-fleet");
    assert!(allocated["message"].as_str().unwrap_or_default().starts_with("Assigned IP [\""), "{allocated}");
    // And comes back when it restarts.
    let _fleet_b = Backend::start(&format!("{ip}:8081"), true);
    wait_for(&w, "fleet-b to come back", |w| endpoints_column(w, "kolide-fleet-fleet") == format!("{ip}:8080,{ip}:8081"));

    // Deleting a pod passes through terminating: serving, not ready.
    w.kubectl_ok(&["delete", "pod", "kolide-fleet-fleet-a", "--grace-period=3", "--wait=false"]);
    wait_for(&w, "fleet-a terminating", |w| {
        slices(w, "kolide-fleet-fleet")[0].1 == vec![("kolide-fleet-fleet-a".to_string(), false, true, true)]
    });
    let status = w.kubectl_ok(&["get", "pod", "kolide-fleet-fleet-a", "--no-headers"]);
    assert!(status.contains("Terminating"), "{status}");
    assert_eq!(endpoints_column(&w, "kolide-fleet-fleet"), format!("{ip}:8081"));
    // When the grace period ends the pod and its endpoint are gone.
    wait_for(&w, "fleet-a removed", |w| slices(w, "kolide-fleet-fleet").len() == 1);
    assert!(w.kubectl(&["get", "pod", "kolide-fleet-fleet-a"]).status.code() == Some(1));

    // A selector change moves the endpoints.
    w.kubectl_ok(&["create", "service", "clusterip", "moving", "--tcp=80:80"]);
    w.kubectl_ok(&[
        "patch",
        "svc",
        "moving",
        "-p",
        r#"{"spec":{"selector":{"app":"kolide-fleet-fleet"},"ports":[{"port":80,"targetPort":"http","name":"80-80"}]}}"#,
    ]);
    wait_for(&w, "moving -> fleet", |w| endpoints_column(w, "moving") == format!("{ip}:8081"));
    w.kubectl_ok(&[
        "patch",
        "svc",
        "moving",
        "-p",
        r#"{"spec":{"selector":{"app":"kolide-fleet-mysql"},"ports":[{"port":80,"targetPort":"mysql","name":"80-80"}]}}"#,
    ]);
    wait_for(&w, "moving -> mysql", |w| endpoints_column(w, "moving") == format!("{ip}:3306"));
    // Deleting the service deletes its slices and Endpoints.
    w.kubectl_ok(&["delete", "svc", "moving"]);
    wait_for(&w, "moving's slices gone", |w| slices(w, "moving").is_empty());
    assert!(w.kubectl(&["get", "endpoints", "moving"]).status.code() == Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_a_hundred_pods_split_into_slices() {
    let w = Wharf::start(&[]);
    let client = w.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    w.kubectl_ok(&["create", "service", "clusterip", "many", "--tcp=80:8080"]);
    w.kubectl_ok(&["patch", "svc", "many", "-p", r#"{"spec":{"selector":{"app":"many"}}}"#]);
    for i in 0..250 {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("many-{i:03}"), "labels": {"app": "many"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let sizes = async || {
        let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=many")).await.unwrap();
        let mut sizes: Vec<usize> = list.items.iter().map(|s| s.endpoints.len()).collect();
        sizes.sort();
        sizes
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while sizes().await.iter().sum::<usize>() < 250 {
        assert!(tokio::time::Instant::now() < deadline, "slices never reached 250 endpoints: {:?}", sizes().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sizes = sizes().await;
    assert!(sizes.iter().all(|s| *s <= 100), "{sizes:?}");
    assert_eq!(sizes.len(), 3, "{sizes:?}");

    // A managed slice edited by hand is put back: the controller keeps a
    // digest of each slice's endpoints and sees the content differ.
    let mut tampered = slices.list(&ListParams::default().labels("kubernetes.io/service-name=many")).await.unwrap().items.remove(0);
    let name = tampered.metadata.name.clone().unwrap();
    tampered.endpoints[0].hostname = Some("tampered".into());
    slices.replace(&name, &PostParams::default(), &tampered).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = slices.get(&name).await.unwrap();
        if now.endpoints.iter().all(|e| e.hostname.is_none()) && now.endpoints.len() == tampered.endpoints.len() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the edited slice was never repaired: {:?}", now.endpoints[0]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn env_prints_the_kubelet_variables() {
    let w = Wharf::start(&[]);
    w.kubectl_ok(&["apply", "-f", example("kolide-fleet/services.yaml").to_str().unwrap()]);
    let ip = |svc: &str| w.kubectl_ok(&["get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["env", "-n", "default", "--kubeconfig", w.kubeconfig().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mysql = ip("kolide-fleet-mysql");
    for line in [
        format!("KOLIDE_FLEET_MYSQL_SERVICE_HOST={mysql}"),
        "KOLIDE_FLEET_MYSQL_SERVICE_PORT=3306".to_string(),
        "KOLIDE_FLEET_MYSQL_SERVICE_PORT_MYSQL=3306".to_string(),
        format!("KOLIDE_FLEET_MYSQL_PORT=tcp://{mysql}:3306"),
        format!("KOLIDE_FLEET_MYSQL_PORT_3306_TCP=tcp://{mysql}:3306"),
        "KOLIDE_FLEET_MYSQL_PORT_3306_TCP_PROTO=tcp".to_string(),
        "KOLIDE_FLEET_MYSQL_PORT_3306_TCP_PORT=3306".to_string(),
        format!("KOLIDE_FLEET_MYSQL_PORT_3306_TCP_ADDR={mysql}"),
        format!("KOLIDE_FLEET_FLEET_PORT=tcp://{}:443", ip("kolide-fleet-fleet")),
        format!("KUBERNETES_SERVICE_HOST={}", ip("kubernetes")),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
    // Each service's block is contiguous and in the kubelet's order.
    let mysql_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("KOLIDE_FLEET_MYSQL_")).collect();
    assert_eq!(mysql_lines.len(), 8);
    assert!(mysql_lines[0].starts_with("KOLIDE_FLEET_MYSQL_SERVICE_HOST="));
    // Another namespace sees only `kubernetes`.
    w.kubectl_ok(&["create", "namespace", "other"]);
    let other = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["env", "-n", "other", "--kubeconfig", w.kubeconfig().to_str().unwrap()])
        .output()
        .unwrap();
    let other = String::from_utf8(other.stdout).unwrap();
    assert!(!other.is_empty() && other.lines().all(|l| l.starts_with("KUBERNETES_")), "{other}");
}

/// The classic way to name an outside database: a Service without a
/// selector and Endpoints written by hand. They are mirrored into
/// EndpointSlices, so the proxy carries traffic to them, and the mirror
/// follows the Endpoints away.
#[test]
fn hand_written_endpoints_of_a_selectorless_service_are_mirrored() {
    let w = Wharf::start(&[]);
    let db = Backend::start("127.0.0.1:0", true);
    let manifest = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: external-db\nspec:\n  ports:\n  - {{name: sql, port: 80, targetPort: {port}}}\n---\napiVersion: v1\nkind: Endpoints\nmetadata:\n  name: external-db\nsubsets:\n- addresses: [{{ip: 127.0.0.1}}]\n  ports:\n  - {{name: sql, port: {port}}}\n",
        port = db.addr.port()
    );
    let out = w.apply_text(&manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ip = w.kubectl_ok(&["get", "svc", "external-db", "-o", "jsonpath={.spec.clusterIP}"]);
    let reached = support::eventually(Duration::from_secs(20), || support::http_get(&format!("{ip}:80")).ok());
    assert_eq!(reached.as_deref(), Some(db.addr.port().to_string().as_str()), "through the cluster IP to the hand-written endpoint");
    let managed = w.kubectl_ok(&[
        "get",
        "endpointslices",
        "-l",
        "kubernetes.io/service-name=external-db",
        "-o",
        "jsonpath={.items[*].metadata.labels.endpointslice\\.kubernetes\\.io/managed-by}",
    ]);
    assert_eq!(managed, "endpointslicemirroring-controller.k8s.io");

    // Opting out later removes the mirror (the controller's filtered watch
    // sees it as a deletion); opting back in restores it.
    let slices = || w.kubectl_ok(&["get", "endpointslices", "-l", "kubernetes.io/service-name=external-db", "-o", "name"]);
    w.kubectl_ok(&["label", "endpoints", "external-db", "endpointslice.kubernetes.io/skip-mirror=true"]);
    let opted_out = support::eventually(Duration::from_secs(20), || slices().trim().is_empty().then_some(()));
    assert!(opted_out.is_some(), "the mirror outlived the opt-out");
    w.kubectl_ok(&["label", "endpoints", "external-db", "endpointslice.kubernetes.io/skip-mirror-"]);
    let back = support::eventually(Duration::from_secs(20), || (!slices().trim().is_empty()).then_some(()));
    assert!(back.is_some(), "no mirror after opting back in");

    w.kubectl_ok(&["delete", "endpoints", "external-db"]);
    let gone = support::eventually(Duration::from_secs(20), || slices().trim().is_empty().then_some(()));
    assert!(gone.is_some(), "the mirror outlived its Endpoints");

    // Back, then given a selector: a selecting service is not mirrored
    // (the mirroring controller holds it as missing, and the EndpointSlice
    // controller takes over its Endpoints and slices).
    let out = w.apply_text(&manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mirrors = || {
        let selector =
            "kubernetes.io/service-name=external-db,endpointslice.kubernetes.io/managed-by=endpointslicemirroring-controller.k8s.io";
        w.kubectl_ok(&["get", "endpointslices", "-l", selector, "-o", "name"])
    };
    let back = support::eventually(Duration::from_secs(20), || (!mirrors().trim().is_empty()).then_some(()));
    assert!(back.is_some(), "no mirror after the Endpoints came back");
    w.kubectl_ok(&["patch", "service", "external-db", "-p", r#"{"spec":{"selector":{"app":"external-db"}}}"#]);
    let unmirrored = support::eventually(Duration::from_secs(20), || mirrors().trim().is_empty().then_some(()));
    assert!(unmirrored.is_some(), "the mirror outlived the service's new selector");
}
