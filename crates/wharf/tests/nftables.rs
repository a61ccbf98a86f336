//! The kernel data plane (`--proxy-mode nftables`): real TCP and UDP
//! through nftables DNAT rules, with no wharf socket on any cluster IP.
//! Each test runs in a network namespace of its own (root), so its `ip
//! wharf` table is its own; the namespace ends with the test's thread and
//! the processes it started.

mod support;

use std::collections::BTreeSet;
use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use support::net::{in_own_netns, run, Net};
use support::workload::{applied, pods, ready_endpoints, service, svc_field, wait_for};
use support::{http_get, Backend, UdpBackend, Wharf};

fn nft_table() -> Option<String> {
    let out = Command::new("nft").args(["list", "table", "ip", "wharf"]).output().expect("nft");
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Local addresses something listens on (TCP and UDP).
fn listening() -> String {
    let out = Command::new("ss").args(["-Hltun"]).output().expect("ss");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The backend's port as a UDP exchange from a fresh socket (a new flow).
fn udp_ask(vip: &str) -> Option<String> {
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    udp_exchange(&socket, vip)
}

/// The backend's port as answered to `socket` (one flow per socket).
fn udp_exchange(socket: &UdpSocket, vip: &str) -> Option<String> {
    socket.send_to(b"ping", vip).ok()?;
    let mut buf = [0u8; 64];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn cluster_ip_traffic_is_carried_by_nftables_rules_alone() {
    in_own_netns(|| {
        let w = Wharf::start(&["--proxy-mode", "nftables"]);
        let ip = w.node_ip.clone();
        let tcp: Vec<Backend> = (0..3).map(|i| Backend::start(&format!("{ip}:{}", 18080 + i), true)).collect();
        applied(&w, &pods("web", &[18080, 18081, 18082], "TCP", false));
        applied(&w, &service("web", "", "TCP"));
        wait_for("3 endpoints", || ready_endpoints(&w, "web") == 3);
        let cluster_ip = svc_field(&w, "web", ".spec.clusterIP");
        let vip = format!("{cluster_ip}:80");
        wait_for("the rule", || http_get(&vip).is_ok());
        let seen: BTreeSet<String> = (0..60).map(|_| http_get(&vip).expect("request through the cluster IP")).collect();
        assert_eq!(seen, ["18080", "18081", "18082"].map(String::from).into(), "not every endpoint was chosen");
        let sockets = listening();
        assert!(!sockets.contains(&cluster_ip), "wharf listens on the cluster IP in nftables mode:\n{sockets}");
        let table = nft_table().expect("wharf's table");
        assert!(table.contains(&format!("{cluster_ip} . tcp . 80 : goto svc-")), "{table}");

        // An endpoint that goes is no longer chosen.
        w.kubectl_ok(&["delete", "pod", "web-2", "--wait=false"]);
        wait_for("web-2's endpoint to leave the rules", || !nft_table().unwrap_or_default().contains(&format!("dnat to {ip}:18082")));
        assert!((0..30).all(|_| http_get(&vip).expect("request") != "18082"));
        drop(tcp);

        // A service without endpoints refuses at once.
        applied(&w, &service("empty", "", "TCP"));
        let empty = format!("{}:80", svc_field(&w, "empty", ".spec.clusterIP"));
        wait_for("the reject element", || nft_table().unwrap_or_default().contains("goto reject-chain"));
        let started = Instant::now();
        let err = TcpStream::connect(&empty).expect_err("no endpoints must refuse");
        assert!(started.elapsed() < Duration::from_secs(1), "refusal took {:?}", started.elapsed());
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err:?}");
    });
}

#[test]
fn udp_flows_spread_and_client_ip_affinity_sticks() {
    in_own_netns(|| {
        let w = Wharf::start(&["--proxy-mode", "nftables"]);
        let ip = w.node_ip.clone();
        let _udp: Vec<UdpBackend> = (0..2).map(|i| UdpBackend::start(&format!("{ip}:{}", 19090 + i))).collect();
        applied(&w, &pods("echo", &[19090, 19091], "UDP", false));
        applied(&w, &service("echo", "", "UDP"));
        wait_for("2 endpoints", || ready_endpoints(&w, "echo") == 2);
        let vip = format!("{}:80", svc_field(&w, "echo", ".spec.clusterIP"));
        wait_for("the UDP rule", || udp_ask(&vip).is_some());
        let seen: BTreeSet<String> = (0..40).filter_map(|_| udp_ask(&vip)).collect();
        assert_eq!(seen, ["19090", "19091"].map(String::from).into(), "UDP flows did not spread");

        // One flow (one client socket) whose endpoint leaves goes on to the
        // other: its conntrack entry was deleted with the endpoint.
        let flow = UdpSocket::bind("127.0.0.1:0").expect("bind");
        flow.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        let ask = |socket: &UdpSocket| udp_exchange(socket, &vip);
        let first = ask(&flow).expect("an answer");
        assert_eq!(ask(&flow).as_deref(), Some(first.as_str()), "a flow stays on its endpoint");
        let leaving = if first == "19090" { "echo-0" } else { "echo-1" };
        w.kubectl_ok(&["delete", "pod", leaving, "--wait=false"]);
        wait_for("the endpoint to leave the rules", || !nft_table().unwrap_or_default().contains(&format!("dnat to {ip}:{first}")));
        // Its conntrack entry is deleted just after the transaction that
        // took the rule out, so an answer may still come from it a moment
        // longer; without the deletion it would for the entry's life (30 s
        // and more).
        let moved = support::eventually(Duration::from_secs(5), || ask(&flow).filter(|answer| *answer != first));
        assert!(moved.is_some(), "the flow still goes to the endpoint that left ({first}) 5 s after it left the rules");

        let _tcp: Vec<Backend> = (0..3).map(|i| Backend::start(&format!("{ip}:{}", 18090 + i), true)).collect();
        applied(&w, &pods("sticky", &[18090, 18091, 18092], "TCP", false));
        applied(&w, &service("sticky", "  sessionAffinity: ClientIP\n", "TCP"));
        wait_for("3 endpoints", || ready_endpoints(&w, "sticky") == 3);
        let sticky = format!("{}:80", svc_field(&w, "sticky", ".spec.clusterIP"));
        wait_for("the rule", || http_get(&sticky).is_ok());
        let chosen: BTreeSet<String> = (0..20).map(|_| http_get(&sticky).expect("request")).collect();
        assert_eq!(chosen.len(), 1, "ClientIP affinity must keep one client on one endpoint: {chosen:?}");
    });
}

#[test]
fn the_table_replaces_a_stale_one_and_goes_at_shutdown() {
    in_own_netns(|| {
        let stale = "add table ip wharf\nadd chain ip wharf left-by-a-crash\n";
        let mut nft = Command::new("nft").args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().expect("nft");
        std::io::Write::write_all(nft.stdin.as_mut().expect("stdin"), stale.as_bytes()).expect("write");
        assert!(nft.wait().expect("nft").success());
        // `auto` picks nftables where it works, as it does as root here.
        let mut w = Wharf::start(&["--proxy-mode", "auto"]);
        wait_for("wharf's table", || nft_table().is_some_and(|t| t.contains("service-ips")));
        let table = nft_table().expect("wharf's table");
        assert!(!table.contains("left-by-a-crash"), "the stale table was not replaced:\n{table}");
        w.sigterm();
        assert_eq!(w.wait_exit(Duration::from_secs(30)), Some(0));
        assert!(nft_table().is_none(), "the table outlived wharf");
    });
}

/// A pod's server: answers each connection with its own address and the
/// client address it saw, then closes.
const POD_SERVER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 8080)); s.listen(64)
while True:
    c, peer = s.accept(); c.sendall(f"{sys.argv[1]} {peer[0]}".encode()); c.close()
"#;

/// One connection from namespace `ns` to `addr`: (pod that answered,
/// client address the pod saw).
fn ask_from(net: &Net, ns: &str, addr: &str) -> Option<(String, String)> {
    let (ip, port) = addr.rsplit_once(':')?;
    let script = "import socket,sys; c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2); print(c.recv(100).decode())";
    let answer = net.stdout(ns, "/usr/bin/python3", &["-c", script, ip, port]);
    let (pod, seen) = answer.split_once(' ')?;
    Some((pod.to_string(), seen.to_string()))
}

/// A selectorless service of `spec` with both pods as its endpoints on
/// this node.
fn routed_service(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{name: p, port: 80}}]\n{spec}---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nendpoints:\n\
         - {{addresses: [198.18.1.11], conditions: {{ready: true}}, nodeName: test-node}}\n\
         - {{addresses: [198.18.2.12], conditions: {{ready: true}}, nodeName: test-node}}\n\
         ports: [{{name: p, port: 8080, protocol: TCP}}]\n"
    )
}

#[test]
fn pods_in_other_namespaces_reach_cluster_ips_node_ports_and_load_balancers() {
    in_own_netns(|| {
        // This namespace is the node: it routes between a client network
        // (a bridge) and its pods (a routed veth each).
        run("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
        run("ip", &["addr", "add", "198.19.0.10/32", "dev", "lo"]);
        let mut net = Net::new();
        let client = net.routed_host("client", Some("br-c"), "198.18.0.10", "198.18.0.1");
        let mut pod_namespaces = Vec::new();
        for (name, ip, gateway) in [("pod-a", "198.18.1.11", "198.18.1.1"), ("pod-b", "198.18.2.12", "198.18.2.1")] {
            let ns = net.routed_host(name, None, ip, gateway);
            net.spawn(&ns, "/usr/bin/python3", &["-c", POD_SERVER, ip], &format!("{name}.log"));
            pod_namespaces.push(ns);
        }
        let w = Wharf::start(&[
            "--proxy-mode",
            "nftables",
            "--service-cidr",
            "198.19.0.0/16",
            "--node-ip",
            "198.18.0.1",
            "--lb-pool",
            "198.18.5.0/28",
        ]);
        applied(&w, &routed_service("web", ""));
        applied(&w, &routed_service("np", "  type: NodePort\n"));
        applied(&w, &routed_service("np-local", "  type: NodePort\n  externalTrafficPolicy: Local\n"));
        applied(&w, &routed_service("lb", "  type: LoadBalancer\n"));
        let cluster_ip = format!("{}:80", svc_field(&w, "web", ".spec.clusterIP"));
        let node_port = |svc: &str| format!("198.18.0.1:{}", svc_field(&w, svc, ".spec.ports[0].nodePort"));
        wait_for("the load balancer address", || !svc_field(&w, "lb", ".status.loadBalancer.ingress[0].ip").is_empty());
        let lb = format!("{}:80", svc_field(&w, "lb", ".status.loadBalancer.ingress[0].ip"));
        wait_for("the cluster IP rule", || ask_from(&net, &client, &cluster_ip).is_some());
        let pods: BTreeSet<String> = ["198.18.1.11", "198.18.2.12"].map(String::from).into();

        // Cluster IP: balanced, and the pod sees the client itself.
        let answers: Vec<(String, String)> = (0..20).filter_map(|_| ask_from(&net, &client, &cluster_ip)).collect();
        assert_eq!(answers.len(), 20);
        assert_eq!(answers.iter().map(|(pod, _)| pod.clone()).collect::<BTreeSet<_>>(), pods);
        assert!(answers.iter().all(|(_, seen)| seen == "198.18.0.10"), "{answers:?}");

        // Node port, Cluster policy: masqueraded to the node's address.
        let np = node_port("np");
        wait_for("the node port rule", || ask_from(&net, &client, &np).is_some());
        let (pod, seen) = ask_from(&net, &client, &np).expect("through the node port");
        let node_side = if pod == "198.18.1.11" { "198.18.1.1" } else { "198.18.2.1" };
        assert_eq!(seen, node_side, "a Cluster policy node port is masqueraded to the node's address");
        // Local policy keeps the client's address.
        let local = node_port("np-local");
        wait_for("the Local node port rule", || ask_from(&net, &client, &local).is_some());
        assert_eq!(ask_from(&net, &client, &local).expect("through the node port").1, "198.18.0.10");

        // The load balancer address, balanced.
        wait_for("the load balancer rule", || ask_from(&net, &client, &lb).is_some());
        let reached: BTreeSet<String> = (0..20).filter_map(|_| ask_from(&net, &client, &lb)).map(|(pod, _)| pod).collect();
        assert_eq!(reached, pods);

        // A pod reaching itself through its service (hairpin) works.
        let hairpin: Vec<(String, String)> = (0..20).filter_map(|_| ask_from(&net, &pod_namespaces[0], &cluster_ip)).collect();
        assert_eq!(hairpin.len(), 20, "pod-a through its own service: {hairpin:?}");
        assert!(hairpin.iter().any(|(pod, _)| pod == "198.18.1.11"), "pod-a never reached itself: {hairpin:?}");
    });
}

/// One keep-alive request on an open connection; the backend's port.
fn request_on(conn: &mut TcpStream) -> std::io::Result<String> {
    use std::io::{Read, Write};
    conn.write_all(b"GET / HTTP/1.1\r\nHost: wharf\r\n\r\n")?;
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf)?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    Ok(text.rsplit("\r\n\r\n").next().unwrap_or_default().to_string())
}

#[test]
fn connections_to_a_removed_endpoint_drain_then_close() {
    in_own_netns(|| {
        let w = Wharf::start(&["--proxy-mode", "nftables", "--drain-timeout", "2s"]);
        let ip = w.node_ip.clone();
        let _backend = Backend::start(&format!("{ip}:18070"), true);
        applied(&w, &pods("drain", &[18070], "TCP", false));
        applied(&w, &service("drain", "", "TCP"));
        wait_for("the endpoint", || ready_endpoints(&w, "drain") == 1);
        let vip = format!("{}:80", svc_field(&w, "drain", ".spec.clusterIP"));
        wait_for("the rule", || http_get(&vip).is_ok());
        let mut open = TcpStream::connect(&vip).expect("connect");
        open.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        assert_eq!(request_on(&mut open).expect("first request"), "18070");
        w.kubectl_ok(&["delete", "pod", "drain-0", "--wait=false"]);
        wait_for("the endpoint to leave the rules", || !nft_table().unwrap_or_default().contains(&format!("dnat to {ip}:18070")));
        // Draining: the open connection goes on, new ones are refused.
        assert_eq!(request_on(&mut open).expect("a request while draining"), "18070");
        assert!(TcpStream::connect(&vip).is_err(), "a new connection reached an endpoint that left");
        // After the drain timeout the connection is closed.
        let closed = support::eventually(Duration::from_secs(10), || {
            std::thread::sleep(Duration::from_millis(500));
            request_on(&mut open).is_err().then_some(())
        });
        assert!(closed.is_some(), "the connection outlived --drain-timeout");
    });
}

#[test]
fn the_seed_story_runs_on_nftables_with_no_socket_on_its_frontends() {
    in_own_netns(|| {
        let w = Wharf::start(&["--proxy-mode", "nftables"]);
        let frontends = support::workload::seed_story_traffic(&w);
        let sockets = listening();
        for frontend in &frontends {
            assert!(!sockets.contains(frontend.as_str()), "a socket listens on {frontend} in nftables mode:\n{sockets}");
        }
        let table = nft_table().expect("wharf's table");
        assert!(frontends.iter().all(|f| table.contains(&f.replace(':', " . tcp . "))), "{frontends:?} not all in\n{table}");
    });
}

/// IPv6 in the kernel data plane: a dual-stack service's IPv6 cluster IP
/// is DNATed by the `ip6 wharf` table to its IPv6 endpoint (the pod's
/// `::1`), with no socket on it, and the table goes at shutdown.
#[test]
fn ipv6_cluster_ips_are_carried_by_the_ip6_table() {
    in_own_netns(|| {
        let mut w = Wharf::start(&[
            "--proxy-mode",
            "nftables",
            "--service-cidr",
            "127.72.0.0/16,fd77:6861:7266:8::/112",
            "--node-ip",
            "127.254.72.1,::1",
        ]);
        let _six = Backend::start("[::1]:18093", true);
        applied(&w, &pods("six", &[18093], "TCP", false));
        applied(&w, &service("six", "  ipFamilyPolicy: RequireDualStack\n", "TCP"));
        let ips = svc_field(&w, "six", ".spec.clusterIPs[*]");
        let (_, v6) = ips.split_once(' ').expect("two cluster IPs");
        let vip = format!("[{v6}]:80");
        wait_for("the IPv6 cluster IP through nftables", || http_get(&vip).is_ok_and(|b| b == "18093"));
        let sockets = listening();
        assert!(!sockets.contains(v6), "wharf listens on the IPv6 cluster IP in nftables mode:\n{sockets}");
        let table = || Command::new("nft").args(["list", "table", "ip6", "wharf"]).output().expect("nft");
        let listed = String::from_utf8_lossy(&table().stdout).into_owned();
        assert!(listed.contains(&format!("{v6} . tcp . 80 : goto svc-")), "{listed}");
        // Without an endpoint the IPv6 frontend refuses at once.
        w.kubectl_ok(&["delete", "pod", "six-0", "--grace-period=1", "--wait=false"]);
        wait_for("a refusal", || matches!(TcpStream::connect(&vip), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused));
        w.sigterm();
        assert_eq!(w.wait_exit(Duration::from_secs(30)), Some(0));
        assert!(!table().status.success(), "the ip6 table outlived wharf");
    });
}
