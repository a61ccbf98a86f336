//! The service proxy carrying real TCP and UDP traffic on loopback.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use support::workload::{applied, pods, ready_endpoints, service, svc_field, wait_for};
use support::{http_get, Backend, UdpBackend, Wharf};

#[test]
fn tcp_through_a_cluster_ip_reaches_every_ready_backend() {
    let w = Wharf::start(&[]);
    let ip = w.node_ip.clone();
    let backends: Vec<Backend> = (0..3).map(|i| Backend::start(&format!("{ip}:{}", 18080 + i), true)).collect();
    applied(&w, &pods("web", &[18080, 18081, 18082], "TCP", false));
    applied(&w, &service("web", "", "TCP"));
    wait_for("3 endpoints", || ready_endpoints(&w, "web") == 3);
    let vip = format!("{}:80", svc_field(&w, "web", ".spec.clusterIP"));
    wait_for("the listener", || http_get(&vip).is_ok());
    let seen: BTreeSet<String> = (0..60).map(|_| http_get(&vip).expect("request through the cluster IP")).collect();
    assert_eq!(seen, ["18080", "18081", "18082"].map(String::from).into(), "not every backend was reached");
    drop(backends);

    // A service with no endpoints refuses at once instead of hanging.
    applied(&w, &service("empty", "", "TCP"));
    let empty = format!("{}:80", svc_field(&w, "empty", ".spec.clusterIP"));
    wait_for("the empty service's listener", || TcpStream::connect(&empty).is_ok());
    let started = Instant::now();
    let err = http_get(&empty).expect_err("no endpoints must refuse");
    assert!(started.elapsed() < Duration::from_secs(1), "refusal took {:?}", started.elapsed());
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionRefused
        ),
        "{err:?}"
    );
}

#[test]
fn seed_story_end_to_end() {
    let w = Wharf::start(&[]);
    support::workload::seed_story_traffic(&w);
}

#[test]
fn client_ip_affinity_holds_and_expires() {
    let w = Wharf::start(&[]);
    let ip = w.node_ip.clone();
    let _backends: Vec<Backend> = (0..3).map(|i| Backend::start(&format!("{ip}:{}", 18090 + i), true)).collect();
    applied(&w, &pods("sticky", &[18090, 18091, 18092], "TCP", false));
    applied(&w, &service("sticky", "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 1}}\n", "TCP"));
    wait_for("3 endpoints", || ready_endpoints(&w, "sticky") == 3);
    let vip = format!("{}:80", svc_field(&w, "sticky", ".spec.clusterIP"));
    wait_for("the listener", || http_get(&vip).is_ok());
    // Expiry is what is tested: each round waits out the 1 s timeout.
    let idle = Duration::from_millis(1200);
    std::thread::sleep(idle);
    let mut firsts = BTreeSet::new();
    for _ in 0..10 {
        let answers: BTreeSet<String> = (0..8).map(|_| http_get(&vip).unwrap()).collect();
        assert_eq!(answers.len(), 1, "affinity did not hold: {answers:?}");
        firsts.extend(answers);
        std::thread::sleep(idle);
    }
    assert!(firsts.len() > 1, "affinity never expired: {firsts:?}");
}

#[test]
fn a_killed_backend_costs_no_failed_connection() {
    let w = Wharf::start(&[]);
    let ip = w.node_ip.clone();
    let survivor = Backend::start(&format!("{ip}:18100"), true);
    let victim = Backend::start(&format!("{ip}:18101"), true);
    applied(&w, &pods("steady", &[18100, 18101], "TCP", true));
    applied(&w, &service("steady", "", "TCP"));
    wait_for("2 ready endpoints", || ready_endpoints(&w, "steady") == 2);
    let vip = format!("{}:80", svc_field(&w, "steady", ".spec.clusterIP"));
    wait_for("the listener", || http_get(&vip).is_ok());
    // Requests keep coming while one backend dies without warning; its
    // endpoint stays listed until the probe notices.
    let target = vip.clone();
    let (going, going_rx) = std::sync::mpsc::channel();
    let requests = std::thread::spawn(move || -> Vec<String> {
        (0..400)
            .map(|i| {
                if i == 50 {
                    let _ = going.send(());
                }
                http_get(&target).unwrap_or_else(|e| panic!("request {i} failed: {e}"))
            })
            .collect()
    });
    going_rx.recv_timeout(Duration::from_secs(30)).expect("requests never got going");
    drop(victim);
    let answers = requests.join().expect("a request failed");
    assert_eq!(answers.len(), 400);
    wait_for("the dead endpoint to leave", || ready_endpoints(&w, "steady") == 1);
    let after: Vec<String> =
        (0..100).map(|i| http_get(&vip).unwrap_or_else(|e| panic!("request {i} after the kill failed: {e}"))).collect();
    assert!(after.iter().all(|a| a == "18100"), "{after:?}");
    drop(survivor);
}

#[test]
fn udp_through_a_cluster_ip_and_re_steering() {
    let w = Wharf::start(&[]);
    let ip = w.node_ip.clone();
    let first = UdpBackend::start(&format!("{ip}:18200"));
    applied(&w, &pods("echo", &[18200], "UDP", false));
    applied(&w, &service("echo", "", "UDP"));
    wait_for("the endpoint", || ready_endpoints(&w, "echo") == 1);
    let vip = format!("{}:80", svc_field(&w, "echo", ".spec.clusterIP"));
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let ask = || {
        client.send_to(b"ping", &vip).ok()?;
        let mut buf = [0u8; 64];
        let (n, from) = client.recv_from(&mut buf).ok()?;
        assert_eq!(from.to_string(), vip, "the reply must come from the service address");
        Some(String::from_utf8_lossy(&buf[..n]).to_string())
    };
    wait_for("a UDP reply", || ask().as_deref() == Some("18200"));
    // N→0: the endpoint goes; 0→N: a new one arrives; the same client flow follows.
    w.kubectl_ok(&["delete", "pod", "echo-0", "--grace-period=0", "--force"]);
    drop(first);
    wait_for("no endpoints", || ready_endpoints(&w, "echo") == 0);
    let _second = UdpBackend::start(&format!("{ip}:18201"));
    applied(&w, &pods("echo", &[18201], "UDP", false));
    wait_for("re-steered to the new endpoint", || ask().as_deref() == Some("18201"));
}

#[test]
fn external_traffic_policy_local_and_its_health_check() {
    let w = Wharf::start(&[]);
    let ip = w.node_ip.clone();
    let _local = Backend::start(&format!("{ip}:18300"), true);
    let _remote = Backend::start("127.0.0.1:18301", true);
    applied(&w, &pods("lb", &[18300], "TCP", false));
    // A pod on another node, with the IP a kubelet there would report.
    applied(&w, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: lb-remote\n  labels: {app: lb}\nspec:\n  nodeName: other-node\n  containers:\n  - name: c\n    image: x\n    ports:\n    - {name: web, containerPort: 18301}\n");
    w.kubectl_ok(&[
        "patch",
        "pod",
        "lb-remote",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","podIP":"127.0.0.1","conditions":[{"type":"Ready","status":"True"}]}}"#,
    ]);
    applied(&w, &service("lb", "  type: LoadBalancer\n  externalTrafficPolicy: Local\n", "TCP"));
    wait_for("2 endpoints", || ready_endpoints(&w, "lb") == 2);
    let hc = svc_field(&w, "lb", ".spec.healthCheckNodePort");
    let health = || {
        let out = std::process::Command::new("curl").args(["-s", "-i", &format!("http://{ip}:{hc}/healthz")]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    wait_for("the health check", || health().starts_with("HTTP/1.1 200"));
    assert!(health().contains("\"localEndpoints\":1"), "{}", health());
    // Node port traffic stays on this node; cluster IP traffic does not.
    let node_port = svc_field(&w, "lb", ".spec.ports[0].nodePort");
    wait_for("the node port", || http_get(&format!("{ip}:{node_port}")).is_ok());
    let external: BTreeSet<String> = (0..30).map(|_| http_get(&format!("{ip}:{node_port}")).unwrap()).collect();
    assert_eq!(external, ["18300".to_string()].into());
    let vip = format!("{}:80", svc_field(&w, "lb", ".spec.clusterIP"));
    let internal: BTreeSet<String> = (0..40).map(|_| http_get(&vip).unwrap()).collect();
    assert_eq!(internal, ["18300", "18301"].map(String::from).into());
    // Without local endpoints: 503.
    w.kubectl_ok(&["delete", "pod", "lb-0", "--grace-period=0", "--force"]);
    wait_for("the health check to fail", || health().starts_with("HTTP/1.1 503"));
    assert!(health().contains("\"localEndpoints\":0"));
}

#[test]
fn open_connections_drain_after_their_endpoint_leaves() {
    let w = Wharf::start(&["--drain-timeout", "3s"]);
    let ip = w.node_ip.clone();
    let _a = Backend::start(&format!("{ip}:18400"), true);
    applied(&w, &pods("drain", &[18400], "TCP", false));
    applied(&w, &service("drain", "", "TCP"));
    wait_for("the endpoint", || ready_endpoints(&w, "drain") == 1);
    let vip = format!("{}:80", svc_field(&w, "drain", ".spec.clusterIP"));
    wait_for("the listener", || http_get(&vip).is_ok());
    let mut conn = TcpStream::connect(&vip).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let request = |conn: &mut TcpStream| -> std::io::Result<usize> {
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut buf = [0u8; 256];
        conn.read(&mut buf)
    };
    assert!(request(&mut conn).unwrap() > 0);
    let scrape = || {
        let out = std::process::Command::new("curl").args(["-s", &w.metrics_url]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = scrape();
    assert!(before.contains("wharf_proxy_connections_total{service=\"default/drain:web\""), "{before}");
    w.kubectl_ok(&["delete", "pod", "drain-0", "--grace-period=0", "--force"]);
    wait_for("the endpoint to go", || ready_endpoints(&w, "drain") == 0);
    let removed = Instant::now();
    // The open connection still works while draining...
    assert!(request(&mut conn).unwrap() > 0, "the open connection died with its endpoint");
    // ...new ones are refused...
    assert!(http_get(&vip).is_err());
    // ...and once the drain timeout has passed it is closed.
    conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 16];
    let closed = matches!(conn.read(&mut buf), Ok(0) | Err(_));
    assert!(closed, "the connection outlived --drain-timeout");
    assert!(removed.elapsed() >= Duration::from_secs(2), "closed before the drain timeout: {:?}", removed.elapsed());
    let metrics = scrape();
    for needle in [
        "wharf_proxy_bytes_total{service=\"default/drain:web\",direction=\"to_client\"}",
        "wharf_proxy_errors_total{service=\"default/drain:web\",reason=\"drained\"}",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    // The drained endpoint's own series went with it: churn does not grow /metrics.
    assert!(!metrics.contains("wharf_proxy_connections_total{service=\"default/drain:web\""), "{metrics}");
}
