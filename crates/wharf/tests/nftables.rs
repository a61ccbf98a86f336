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

use support::workload::{applied, pods, ready_endpoints, service, svc_field, wait_for};
use support::{http_get, Backend, UdpBackend, Wharf};

/// Runs `body` on a thread in a new network namespace with loopback up.
fn in_own_netns(body: impl FnOnce() + Send + 'static) {
    let thread = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("a network namespace of its own (tests run as root)");
        let up = Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip");
        assert!(up.success());
        body();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

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
        let after = support::eventually(Duration::from_secs(5), || ask(&flow)).expect("an answer after the endpoint left");
        assert_ne!(after, first, "the flow still goes to the endpoint that left");

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
