//! Several nodes on one machine, out of network namespaces this test
//! creates (addresses in 198.18.0.0/15 only): etcd, two API servers and
//! three agents, then the faults a cluster must survive.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use support::net::{run, Net};

/// Numbers the manifests this test writes.
static NEXT: AtomicU32 = AtomicU32::new(0);

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");
const SERVICE_CIDR: &str = "127.96.0.0/16";
const DNS_IP: &str = "127.96.0.10";

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct Cluster {
    net: Net,
    ctrl: String,
    ctrl_ip: String,
    /// The API servers' hosts (namespace, address), by server number.
    apis: [(String, String); 3],
    nodes: Vec<(String, String)>,
    etcd: usize,
    servers: Vec<usize>,
    agents: Vec<usize>,
    /// The bootstrap token agents join with.
    join_token: String,
}

/// A CA, etcd's serving certificate for `ip` and a client certificate for
/// the API servers, as PEM files in `dir`: etcd runs with TLS and
/// `--client-cert-auth`.
fn etcd_pki(dir: &Path, ip: &str) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "etcd-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    std::fs::write(dir.join("ca.crt"), ca.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    for (name, sans) in [("server", vec![ip.to_string()]), ("client", Vec::new())] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, format!("etcd-{name}"));
        std::fs::write(dir.join(format!("{name}.crt")), params.signed_by(&key, &issuer).unwrap().pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

impl Cluster {
    fn kubeconfig(&self, server: usize) -> PathBuf {
        self.net.path(&format!("server{server}/admin.kubeconfig"))
    }

    fn kubectl(&self, server: usize, args: &[&str]) -> Output {
        let kubeconfig = self.kubeconfig(server);
        let mut full = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
        full.extend_from_slice(args);
        Command::new("ip")
            .args(["netns", "exec", &self.ctrl, "kubectl"])
            .args(&full)
            .env("KUBECACHEDIR", self.net.path(&format!("cache{server}")))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn kubectl_ok(&self, server: usize, args: &[&str]) -> String {
        let out = self.kubectl(server, args);
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn apply(&self, server: usize, yaml: &str) {
        let path = self.net.path(&format!("m{}.yaml", NEXT.fetch_add(1, Ordering::SeqCst)));
        std::fs::write(&path, yaml).unwrap();
        self.kubectl_ok(server, &["apply", "-f", path.to_str().unwrap()]);
    }

    fn etcd_file(&self, name: &str) -> String {
        self.net.path(&format!("etcd-pki/{name}")).display().to_string()
    }

    fn start_etcd(&mut self) -> usize {
        let url = format!("https://{}:2379", self.ctrl_ip);
        let peer = format!("http://{}:2380", self.ctrl_ip);
        let (ca, cert, key) = (self.etcd_file("ca.crt"), self.etcd_file("server.crt"), self.etcd_file("server.key"));
        let data = self.net.path("etcd");
        let ctrl = self.ctrl.clone();
        let log = self.net.path("etcd.log");
        let _ = std::fs::remove_file(&log);
        let idx = self.net.spawn(
            &ctrl,
            "etcd",
            &[
                "--name",
                "e",
                "--data-dir",
                data.to_str().unwrap(),
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("e={peer}"),
                "--client-cert-auth",
                "--trusted-ca-file",
                &ca,
                "--cert-file",
                &cert,
                "--key-file",
                &key,
            ],
            "etcd.log",
        );
        eventually("etcd", Duration::from_secs(30), || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("ready to serve client requests"))
        });
        idx
    }

    fn start_server(&mut self, i: usize) -> usize {
        let data = self.net.path(&format!("server{i}"));
        let (api_ns, api_ip) = self.apis[i].clone();
        let listen = format!("{api_ip}:6443");
        let etcd = format!("https://{}:2379", self.ctrl_ip);
        let (ca, cert, key) = (self.etcd_file("ca.crt"), self.etcd_file("client.crt"), self.etcd_file("client.key"));
        let log = format!("server{i}.log");
        let idx = self.net.spawn_logging(
            &api_ns,
            WHARF,
            &[
                "server",
                "--store",
                "etcd",
                "--etcd-endpoints",
                &etcd,
                "--etcd-cafile",
                &ca,
                "--etcd-certfile",
                &cert,
                "--etcd-keyfile",
                &key,
                "--data-dir",
                data.to_str().unwrap(),
                "--api-listen",
                &listen,
                "--service-cidr",
                SERVICE_CIDR,
                "--lb-pool",
                &format!("198.18.{}.128/26", self.net.subnet),
                "--node-monitor-grace-period",
                "6s",
                // Short-lived node certificates: agents renew them during the test.
                "--node-certificate-validity",
                "30s",
            ],
            &log,
            "warn,wharf::control=info",
        );
        let kubeconfig = data.join("admin.kubeconfig");
        eventually("the API server", Duration::from_secs(60), || {
            std::fs::read_to_string(&kubeconfig).is_ok_and(|k| k.contains(&api_ip))
                && self.kubectl(i, &["get", "ns", "default"]).status.success()
        });
        idx
    }

    fn start_agent(&mut self, node: usize, servers: &[usize]) -> usize {
        let (ns, ip) = self.nodes[node].clone();
        let list: Vec<String> = servers.iter().map(|s| format!("{}:6443", self.apis[*s].1)).collect();
        let ca = self.net.path("server1/pki/ca.crt");
        let data = self.agent_dir(node);
        let name = format!("node-{node}");
        self.net.spawn_logging(
            &ns,
            WHARF,
            &[
                "agent",
                "--join",
                &list.join(","),
                "--token",
                &self.join_token,
                "--ca-cert",
                ca.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
                "--node-name",
                &name,
                "--node-ip",
                &ip,
                "--service-cidr",
                SERVICE_CIDR,
                "--dns-upstream",
                "none",
                "--metrics-listen",
                "127.0.0.1:0",
                "--node-heartbeat",
                "2s",
                "--dns-workers",
                "1",
                "--proxy-workers",
                "1",
                "--node-status-interval",
                "1s",
                "--allow-exec",
            ],
            &format!("agent{node}.log"),
            "warn,wharf_agent::credentials=info",
        )
    }

    fn agent_dir(&self, node: usize) -> PathBuf {
        self.net.path(&format!("agent{node}"))
    }

    /// A bootstrap token from `wharf token create` through server 1.
    fn create_token(&self) -> String {
        let kubeconfig = self.kubeconfig(1);
        let token = self.net.stdout(&self.ctrl, WHARF, &["token", "create", "--kubeconfig", kubeconfig.to_str().unwrap()]);
        assert_eq!(token.trim().len(), 23, "a token is <6>.<16> characters: {token:?}");
        token.trim().to_string()
    }

    /// kubectl with node `node`'s own certificate, as its agent holds it.
    fn kubectl_as_node(&self, node: usize, args: &[&str]) -> Output {
        use base64::Engine;
        let b64 = |f: &str| base64::engine::general_purpose::STANDARD.encode(std::fs::read(self.agent_dir(node).join(f)).unwrap());
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{}:6443\n    certificate-authority-data: {}\nusers:\n- name: node\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: node}}\ncurrent-context: c\n",
            self.apis[1].1,
            b64("ca.crt"),
            b64("node.pem"),
            b64("node.pem"),
        );
        let path = self.net.path(&format!("node{node}.kubeconfig"));
        std::fs::write(&path, config).unwrap();
        let mut full = vec!["--kubeconfig", path.to_str().unwrap()];
        full.extend_from_slice(args);
        Command::new("ip").args(["netns", "exec", &self.ctrl, "kubectl"]).args(&full).stdin(Stdio::null()).output().unwrap()
    }

    fn dig(&self, node: usize, name: &str) -> String {
        self.net.stdout(&self.nodes[node].0, "dig", &[&format!("@{DNS_IP}"), name, "+short", "+time=1", "+tries=1"])
    }

    fn curl(&self, node: usize, url: &str) -> bool {
        self.net.output(&self.nodes[node].0, "curl", &["-sf", "-m", "3", "-o", "/dev/null", url]).status.success()
    }

    fn start(nodes: u32) -> Cluster {
        let mut net = Net::switched();
        let (ctrl, ctrl_ip) = net.host("ctrl", 2);
        let apis = [(String::new(), String::new()), net.host("api1", 3), net.host("api2", 4)];
        let nodes = (0..nodes).map(|i| net.host(&format!("n{i}"), 11 + i)).collect();
        let mut c =
            Cluster { net, ctrl, ctrl_ip, apis, nodes, etcd: 0, servers: Vec::new(), agents: Vec::new(), join_token: String::new() };
        etcd_pki(&c.net.path("etcd-pki"), &c.ctrl_ip);
        c.etcd = c.start_etcd();
        let first = c.start_server(1);
        // The second server shares the first one's CA and token ...
        let pki1 = c.net.path("server1/pki");
        let pki2 = c.net.path("server2/pki");
        std::fs::create_dir_all(&pki2).unwrap();
        for f in ["ca.crt", "ca.key", "admin.token"] {
            std::fs::copy(pki1.join(f), pki2.join(f)).unwrap();
        }
        // ... and its encryption keys, so each reads the Secrets the other wrote.
        std::fs::copy(c.net.path("server1/encryption-config.yaml"), c.net.path("server2/encryption-config.yaml")).unwrap();
        let second = c.start_server(2);
        c.servers = vec![first, second];
        c.join_token = c.create_token();
        c.agents = (0..c.nodes.len()).map(|n| c.start_agent(n, &[1, 2])).collect();
        let want = c.nodes.len();
        eventually("every node ready", Duration::from_secs(60), || {
            c.kubectl_ok(1, &["get", "nodes", "--no-headers"]).lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count()
                == want
        });
        c
    }
}

fn web_service(name: &str, node: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  nodeName: node-{node}\n  containers:\n  - name: web\n    image: python\n    ports:\n    - {{name: http, containerPort: 8080}}\n    readinessProbe:\n      tcpSocket: {{port: http}}\n      periodSeconds: 1\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: {name}}}\n  ports:\n  - {{port: 80, targetPort: http}}\n"
    )
}

fn cluster_ip(c: &Cluster, server: usize, svc: &str) -> String {
    c.kubectl_ok(server, &["get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"])
}

#[test]
fn a_cluster_of_three_nodes_and_its_faults() {
    let mut c = Cluster::start(3);
    // A backend process on node 2, and a service created through server 1.
    let (ns2, ip2) = c.nodes[2].clone();
    c.net.spawn(&ns2, "python3", &["-m", "http.server", "8080", "--bind", &ip2], "backend.log");
    c.apply(1, &web_service("web", 2));
    let ip = cluster_ip(&c, 1, "web");
    for node in 0..3 {
        eventually(&format!("node {node}'s DNS"), Duration::from_secs(30), || c.dig(node, "web.default.svc.cluster.local") == ip);
    }
    eventually("node 0 reaching the pod on node 2", Duration::from_secs(30), || c.curl(0, &format!("http://{ip}/")));
    // Each node publishes its proxy's and DNS's state on its own Node, with
    // its own identity; node 0's proxy counted the connection it carried.
    for node in 0..3 {
        eventually(&format!("node {node}'s published state"), Duration::from_secs(30), || {
            let annotations = c.kubectl_ok(1, &["get", "node", &format!("node-{node}"), "-o", "jsonpath={.metadata.annotations}"]);
            annotations.contains(r#"\"synced\":true"#)
                && annotations.contains("dns.wharf.dev/status")
                && annotations.contains("proxy.wharf.dev/status")
        });
    }
    eventually("node 0's traffic to web's endpoint", Duration::from_secs(30), || {
        let proxy = c.kubectl_ok(1, &["get", "node", "node-0", "-o", r#"jsonpath={.metadata.annotations.proxy\.wharf\.dev/status}"#]);
        proxy.contains(r#""servicePort":"default/web"#) && proxy.contains(&format!(r#""endpoint":"{ip2}:8080""#))
    });
    // kubectl exec into node 2's pod through either server: its agent
    // keeps a tunnel to each, and the command sees the cluster DNS.
    for server in [1, 2] {
        let hosts = c.kubectl_ok(server, &["exec", "web", "--", "getent", "hosts", "web"]);
        assert!(hosts.starts_with(&format!("{ip} ")), "through server {server}: {hosts}");
    }
    node_restriction(&c);

    // Stop server 1: clients of server 2 keep working, and so do agents.
    c.net.kill(c.servers[0]);
    c.apply(2, &web_service("web2", 2).replace("8080", "8081"));
    let (ns2, ip2) = c.nodes[2].clone();
    c.net.spawn(&ns2, "python3", &["-m", "http.server", "8081", "--bind", &ip2], "backend2.log");
    let ip_web2 = cluster_ip(&c, 2, "web2");
    eventually("node 1 learning web2 through server 2", Duration::from_secs(30), || c.dig(1, "web2.default.svc.cluster.local") == ip_web2);
    eventually("node 0 reaching web2", Duration::from_secs(30), || c.curl(0, &format!("http://{ip_web2}/")));
    c.servers[0] = c.start_server(1);

    // Restart etcd: nothing acknowledged is lost.
    c.net.kill(c.etcd);
    c.etcd = c.start_etcd();
    eventually("the API after the etcd restart", Duration::from_secs(60), || c.kubectl(2, &["get", "svc", "web", "web2"]).status.success());
    assert_eq!(cluster_ip(&c, 2, "web"), ip);
    assert_eq!(cluster_ip(&c, 1, "web2"), ip_web2);

    // Cut node 0's agent off the API (it only knows server 1), change the
    // cluster through server 2, then reconnect: it serves throughout and
    // catches up.
    c.net.kill(c.agents[0]);
    c.agents[0] = c.start_agent(0, &[1]);
    eventually("node 0 back", Duration::from_secs(30), || c.dig(0, "web.default.svc.cluster.local") == ip);
    c.net.kill(c.servers[0]);
    c.apply(2, "apiVersion: v1\nkind: Service\nmetadata:\n  name: late\nspec:\n  ports:\n  - {port: 80}\n");
    let ip_late = cluster_ip(&c, 2, "late");
    assert_eq!(c.dig(0, "web.default.svc.cluster.local"), ip, "DNS stopped serving without the API");
    assert!(c.curl(0, &format!("http://{ip}/")), "the proxy stopped serving without the API");
    assert_eq!(c.dig(0, "late.default.svc.cluster.local"), "", "node 0 cannot know yet");
    c.servers[0] = c.start_server(1);
    eventually("node 0 catching up", Duration::from_secs(60), || c.dig(0, "late.default.svc.cluster.local") == ip_late);

    // Kill node 2: it turns NotReady and its pod leaves the endpoints.
    c.net.kill(c.agents[2]);
    eventually("node 2 NotReady", Duration::from_secs(40), || {
        c.kubectl_ok(2, &["get", "node", "node-2", "--no-headers"]).split_whitespace().nth(1) == Some("NotReady")
    });
    eventually("the NodeNotReady event", Duration::from_secs(30), || {
        c.kubectl_ok(2, &["get", "events", "-o", "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}"])
            .lines()
            .any(|l| l == "NodeNotReady: Node node-2 status is now: NodeNotReady")
    });
    eventually("web's endpoint gone", Duration::from_secs(30), || {
        c.kubectl_ok(2, &["get", "endpoints", "web", "-o", "jsonpath={.subsets[*].addresses[*].ip}"]).trim().is_empty()
    });
    eventually("node 0 no longer sending to node 2", Duration::from_secs(30), || !c.curl(0, &format!("http://{ip}/")));
    let _ = Path::new("/");
}

/// A joined agent's certificate reads what its DNS and proxy need and
/// writes its own Node, but touches nothing else.
fn node_restriction(c: &Cluster) {
    let refused = |args: &[&str], why: &str| {
        let out = c.kubectl_as_node(0, args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("forbidden"), "{args:?} was not refused: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    };
    refused(&["delete", "svc", "web"], r#"User "system:node:node-0" cannot delete resource "services""#);
    refused(&["label", "node", "node-1", "taken=yes"], r#"node "node-0" is not allowed to modify node "node-1""#);
    let fail = r#"{"status":{"phase":"Failed"}}"#;
    refused(&["patch", "pod", "web", "--subresource=status", "--type=merge", "-p", fail], "can only change pods bound to it");
    refused(&["get", "secrets", "-n", "kube-system"], "cannot list resource \"secrets\"");
    // Heartbeats are node Leases, each written only by its node.
    let holder = c.kubectl_ok(1, &["get", "lease", "-n", "kube-node-lease", "node-1", "-o", "jsonpath={.spec.holderIdentity}"]);
    assert_eq!(holder, "node-1");
    refused(&["annotate", "lease", "-n", "kube-node-lease", "node-1", "taken=yes"], "may only write its own lease");
    let own = c.kubectl_as_node(0, &["label", "node", "node-0", "checked=yes"]);
    assert!(own.status.success(), "its own Node: {}", String::from_utf8_lossy(&own.stderr));
    let read = c.kubectl_as_node(0, &["get", "endpointslices", "-A"]);
    assert!(read.status.success(), "what its proxy reads: {}", String::from_utf8_lossy(&read.stderr));
    // The certificate names the node and is short-lived here; agents renew theirs.
    let whoami = String::from_utf8_lossy(&c.kubectl_as_node(0, &["auth", "whoami"]).stdout).to_string();
    assert!(whoami.contains("system:node:node-0") && whoami.contains("system:nodes"), "{whoami}");
    eventually("a renewed node certificate", Duration::from_secs(60), || {
        std::fs::read_to_string(c.net.path("agent1.log")).is_ok_and(|l| l.contains("renewed the node certificate"))
    });
}

/// The time at the start of a log line (tracing's RFC 3339 prefix) that
/// contains `needle`, in the log of `name`.
fn logged_at(c: &Cluster, name: &str, needle: &str) -> Option<String> {
    let log = std::fs::read_to_string(c.net.path(name)).ok()?;
    log.lines().find(|l| l.contains(needle)).and_then(|l| l.split_whitespace().next()).map(String::from)
}

#[test]
fn a_server_that_vanishes_silently_loses_its_agents_and_its_leadership() {
    let c = Cluster::start(1);
    c.apply(1, "apiVersion: v1\nkind: Service\nmetadata:\n  name: before\nspec:\n  ports:\n  - {port: 80}\n");
    let before = cluster_ip(&c, 1, "before");
    eventually("the agent's DNS", Duration::from_secs(30), || c.dig(0, "before.default.svc.cluster.local") == before);
    eventually("server 1 leading", Duration::from_secs(30), || logged_at(&c, "server1.log", "leading: starting the controllers").is_some());
    let holder =
        |server| c.kubectl_ok(server, &["get", "lease", "-n", "kube-system", "wharf-controllers", "-o", "jsonpath={.spec.holderIdentity}"]);
    let first_holder = holder(1);
    assert!(!first_holder.is_empty(), "the controllers' Lease names its holder");

    // Server 1's host drops off the network: no FIN, no reset, nothing.
    let api1 = c.apis[1].0.clone();
    run("ip", &["-n", &api1, "link", "set", "eth0", "down"]);
    let cut = Instant::now();
    c.apply(2, "apiVersion: v1\nkind: Service\nmetadata:\n  name: after\nspec:\n  ports:\n  - {port: 80}\n");
    let after = cluster_ip(&c, 2, "after");
    eventually("the agent learning of a change through server 2", Duration::from_secs(60), || {
        c.dig(0, "after.default.svc.cluster.local") == after
    });
    let failover = cut.elapsed();
    assert!(failover < Duration::from_secs(30), "the agent took {failover:?} to fail over");

    // Server 2 took over the controllers only after server 1 stopped them.
    eventually("server 2 leading", Duration::from_secs(30), || logged_at(&c, "server2.log", "leading: starting the controllers").is_some());
    eventually("the Lease changing hands", Duration::from_secs(30), || holder(2) != first_holder);
    let stopped = logged_at(&c, "server1.log", "no longer leading").expect("server 1 never stopped its controllers");
    let started = logged_at(&c, "server2.log", "leading: starting the controllers").expect("server 2 never led");
    assert!(stopped < started, "both led at once: server 1 stopped at {stopped}, server 2 started at {started}");
}
