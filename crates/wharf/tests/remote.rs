//! `kubectl exec` and `kubectl port-forward`, driven with the real kubectl
//! (WebSocket `v5.channel.k8s.io`; SPDY inside a WebSocket): the command
//! runs, and the connection is dialled, on the pod's node through its
//! agent's tunnel.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};

use support::{example, http_get, Backend, Wharf};

fn seed() -> Wharf {
    let w = Wharf::start(&[]);
    w.kubectl_ok(&["apply", "-f", example("kolide-fleet").to_str().expect("path")]);
    w
}

fn exec(w: &Wharf, command: &[&str]) -> String {
    let mut args = vec!["exec", "kolide-fleet-mysql-0", "--"];
    args.extend(command);
    w.kubectl_ok(&args)
}

#[test]
fn the_seed_sees_the_cluster_from_inside_a_pod() {
    let w = seed();
    let dns = w.kubectl_ok(&["get", "svc", "kube-dns", "-n", "kube-system", "-o", "jsonpath={.spec.clusterIP}"]);
    let resolv = exec(&w, &["cat", "/etc/resolv.conf"]);
    assert!(resolv.contains(&format!("nameserver {dns}\n")), "{resolv}");
    assert!(resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local\n"), "{resolv}");
    assert!(resolv.contains("options ndots:5"), "{resolv}");

    let mysql = w.kubectl_ok(&["get", "svc", "kolide-fleet-mysql", "-o", "jsonpath={.spec.clusterIP}"]);
    let env = exec(&w, &["env"]);
    assert!(env.lines().any(|l| l == format!("KOLIDE_FLEET_MYSQL_SERVICE_HOST={mysql}")), "{env}");
    assert!(env.lines().any(|l| l == "KOLIDE_FLEET_MYSQL_SERVICE_PORT=3306"), "{env}");

    let redis = w.kubectl_ok(&["get", "svc", "kolide-fleet-redis", "-o", "jsonpath={.spec.clusterIP}"]);
    let hosts = exec(&w, &["getent", "hosts", "kolide-fleet-redis"]);
    assert!(hosts.starts_with(&format!("{redis} ")) && hosts.contains("kolide-fleet-redis.default.svc.cluster.local"), "{hosts}");

    // Unprivileged by default, in the pod's working directory (none: /).
    assert_eq!(exec(&w, &["id", "-un"]).trim(), "nobody");
    assert_eq!(exec(&w, &["pwd"]).trim(), "/");
}

#[test]
fn streams_and_exit_codes_reach_kubectl() {
    let w = seed();
    // stdin piped through and closed: cat ends when it ends.
    let mut child = Command::new(support::KUBECTL)
        .args(["exec", "-i", "kolide-fleet-mysql-0", "--", "sh", "-c", "tr a-z A-Z; echo done >&2"])
        .env("KUBECONFIG", w.kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    child.stdin.take().expect("stdin").write_all(b"hello\nworld\n").expect("write stdin");
    let out = child.wait_with_output().expect("kubectl exits");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HELLO\nWORLD\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "done\n", "stderr on its own channel");

    let out = w.kubectl(&["exec", "kolide-fleet-mysql-0", "--", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    let err = w.kubectl_err(&["exec", "kolide-fleet-mysql-0", "--", "/no/such/command"]);
    assert!(err.contains("/no/such/command"), "{err}");
    let err = w.kubectl_err(&["exec", "no-such-pod", "--", "true"]);
    assert!(err.contains("NotFound") || err.contains("not found"), "{err}");
}

/// `-t` under a real terminal (`script` gives kubectl one): the command
/// gets a pty of the client's size, and follows a shell's input.
#[test]
fn a_terminal_gets_its_size_and_a_usable_shell() {
    let w = seed();
    let kubeconfig = w.kubeconfig();
    let run = |inner: &str, input: &str| {
        let mut child = Command::new("script")
            .args(["-qec", &format!("stty cols 101 rows 33; {inner}"), "/dev/null"])
            .env("KUBECONFIG", &kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run script");
        let mut stdin = child.stdin.take().expect("stdin");
        // Typed after the shell is up, as a user would.
        std::thread::sleep(std::time::Duration::from_secs(2));
        stdin.write_all(input.as_bytes()).expect("type");
        let out = child.wait_with_output().expect("script exits");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let kubectl = support::KUBECTL;
    // The size is the terminal's from the start: the command reads it at once.
    let (code, out) = run(&format!("{kubectl} exec -it kolide-fleet-mysql-0 -- sh -c 'tty; stty size; read x; exit 4'"), "\n");
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("/dev/pts/") && out.contains("33 101"), "{out}");
    let (code, out) = run(&format!("{kubectl} exec -it kolide-fleet-mysql-0 -- sh"), "echo $((6*7))\nexit 5\n");
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("\n42"), "{out}");
}

#[test]
fn an_agent_without_allow_exec_refuses() {
    let w = Wharf::start(&["--allow-exec=false"]);
    w.kubectl_ok(&["apply", "-f", example("kolide-fleet").to_str().expect("path")]);
    let err = w.kubectl_err(&["exec", "kolide-fleet-mysql-0", "--", "true"]);
    assert!(err.contains("--allow-exec"), "{err}");
}

/// `kubectl port-forward` until dropped, once it says it listens.
struct PortForward(std::process::Child);

impl PortForward {
    fn start(w: &Wharf, target: &str, ports: &str) -> PortForward {
        let mut child = Command::new(support::KUBECTL)
            .args(["port-forward", "--address", "127.0.0.1", target, ports])
            .env("KUBECONFIG", w.kubeconfig())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl port-forward");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut first = String::new();
        stdout.read_line(&mut first).expect("read kubectl");
        assert!(first.starts_with("Forwarding from 127.0.0.1:"), "{first}");
        // kubectl reports each connection there: keep the pipe open.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        PortForward(child)
    }

    /// Stops kubectl and returns what it wrote on stderr.
    fn stop(mut self) -> String {
        let _ = self.0.kill();
        let mut err = String::new();
        let _ = self.0.stderr.take().map(|mut e| e.read_to_string(&mut err));
        err
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// The seed's `kubectl port-forward svc/kolide-fleet-fleet 18443:443`, on
/// a free local port: the service port maps to a fleet pod's port.
#[test]
fn port_forward_to_a_service_reaches_one_of_its_pods() {
    let w = seed();
    let fleet: Vec<Backend> = [8080, 8081].iter().map(|p| Backend::start(&format!("{}:{p}", w.node_ip), true)).collect();
    let local = free_port();
    let forward = PortForward::start(&w, "svc/kolide-fleet-fleet", &format!("{local}:443"));
    for _ in 0..3 {
        let answer = http_get(&format!("127.0.0.1:{local}")).expect("through the forward");
        assert!(fleet.iter().any(|b| b.addr.port().to_string() == answer), "{answer}");
    }
    drop(forward);
}

/// Bytes both ways, more than any window, and the client's half-close
/// reaching the pod: it answers only once its input has ended.
#[test]
fn port_forward_carries_bulk_data_and_half_closes() {
    let w = seed();
    let sink = std::net::TcpListener::bind(format!("{}:0", w.node_ip)).expect("bind sink");
    let port = sink.local_addr().expect("addr").port();
    let counted = std::thread::spawn(move || {
        let (mut conn, _) = sink.accept().expect("accept");
        let mut received = Vec::new();
        conn.read_to_end(&mut received).expect("read to the end");
        conn.write_all(format!("{} bytes", received.len()).as_bytes()).expect("answer");
    });
    w.apply_text(&format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: sink\nspec:\n  containers:\n  - name: c\n    image: x\n    ports:\n    - {{containerPort: {port}}}\n"));
    let local = free_port();
    let forward = PortForward::start(&w, "pod/sink", &format!("{local}:{port}"));
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", local)).expect("connect");
    conn.set_read_timeout(Some(std::time::Duration::from_secs(20))).expect("timeout");
    conn.write_all(&vec![7u8; 3 << 20]).expect("send 3 MiB");
    conn.shutdown(std::net::Shutdown::Write).expect("half-close");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("answer");
    assert_eq!(answer, format!("{} bytes", 3 << 20));
    counted.join().expect("sink");
    drop(forward);
}

#[test]
fn port_forward_to_a_closed_port_reports_the_refusal() {
    let w = seed();
    let closed = free_port();
    w.apply_text(&format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: closed\nspec:\n  containers:\n  - name: c\n    image: x\n    ports:\n    - {{containerPort: {closed}}}\n"));
    let local = free_port();
    let forward = PortForward::start(&w, "pod/closed", &format!("{local}:{closed}"));
    assert!(http_get(&format!("127.0.0.1:{local}")).is_err(), "nothing listens behind it");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let err = forward.stop();
    assert!(err.contains("refused"), "{err}");
}
