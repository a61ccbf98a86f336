//! `kubectl exec`, driven with the real kubectl (WebSocket
//! `v5.channel.k8s.io`): the command runs on the pod's node through its
//! agent's tunnel, with the pod's view of the cluster.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::{example, Wharf};

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
