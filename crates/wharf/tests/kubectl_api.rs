//! The seed story's kubectl commands against a real `wharf up`.

mod support;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{example, Wharf};

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let net: ipnet::Ipv4Net = cidr.parse().unwrap();
    ip.parse::<Ipv4Addr>().is_ok_and(|ip| net.contains(&ip))
}

fn cidr_of(w: &Wharf) -> String {
    let i = w.args.iter().position(|a| a == "--service-cidr").unwrap();
    w.args[i + 1].clone()
}

#[test]
fn seed_services_through_kubectl() {
    let w = Wharf::start(&[]);
    let services = example("kolide-fleet/services.yaml");
    let services = services.to_str().unwrap();

    let out = w.kubectl_ok(&["apply", "-f", services]);
    assert_eq!(out, "service/kolide-fleet-mysql created\nservice/kolide-fleet-redis created\nservice/kolide-fleet-fleet created\n");
    let out = w.kubectl_ok(&["apply", "-f", services]);
    assert!(out.contains("service/kolide-fleet-mysql unchanged"), "{out}");

    // A second apply with a change: the port moves and affinity is added.
    let changed = std::fs::read_to_string(services)
        .unwrap()
        .replace("port: 3306", "port: 3307")
        .replace("sessionAffinity: None", "sessionAffinity: ClientIP");
    let out = w.apply_text(&changed);
    assert!(String::from_utf8_lossy(&out.stdout).contains("service/kolide-fleet-mysql configured"), "{out:?}");
    let port = w.kubectl_ok(&[
        "get",
        "svc",
        "kolide-fleet-mysql",
        "-o",
        "jsonpath={.spec.ports[0].port} {.spec.sessionAffinityConfig.clientIP.timeoutSeconds}",
    ]);
    assert_eq!(port, "3307 10800");

    // The table, as kube-apiserver prints it.
    let table = w.kubectl_ok(&["get", "svc"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]);
    let fleet: Vec<&str> = table.lines().find(|l| l.starts_with("kolide-fleet-fleet")).unwrap().split_whitespace().collect();
    assert_eq!(fleet[1], "LoadBalancer");
    assert!(in_cidr(fleet[2], &cidr_of(&w)), "{table}");
    assert!(fleet[4].starts_with("443:") && fleet[4].ends_with("/TCP"), "{table}");
    let node_port: u16 = fleet[4][4..fleet[4].len() - 4].parse().unwrap();
    assert!((30000..=32767).contains(&node_port));

    let wide = w.kubectl_ok(&["get", "svc", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().ends_with("SELECTOR"), "{wide}");
    assert!(wide.lines().any(|l| l.starts_with("kolide-fleet-redis") && l.ends_with("app=kolide-fleet-redis")), "{wide}");

    let yaml = w.kubectl_ok(&["get", "svc", "kolide-fleet-mysql", "--output=yaml"]);
    let ip = yaml.lines().find_map(|l| l.trim().strip_prefix("clusterIP: ")).unwrap();
    assert!(in_cidr(ip, &cidr_of(&w)), "{yaml}");
    assert!(yaml.contains("targetPort: mysql") && yaml.contains("type: ClusterIP"), "{yaml}");

    let all = w.kubectl_ok(&["get", "svc", "-A"]);
    assert!(all.lines().any(|l| l.starts_with("kube-system") && l.contains("kube-dns")), "{all}");
    let dns_ip = w.kubectl_ok(&["get", "svc", "kube-dns", "-n", "kube-system", "-o", "jsonpath={.spec.clusterIP}"]);
    let net: ipnet::Ipv4Net = cidr_of(&w).parse().unwrap();
    assert_eq!(dns_ip, Ipv4Addr::from(u32::from(net.network()) + 10).to_string());

    // Pods by selector.
    w.kubectl_ok(&["apply", "-f", example("kolide-fleet/pods.yaml").to_str().unwrap()]);
    let pods = w.kubectl_ok(&["get", "pods", "--selector", "app=kolide-fleet-fleet", "-o", "name"]);
    assert_eq!(pods, "pod/kolide-fleet-fleet-a\npod/kolide-fleet-fleet-b\n");
    let pods = w.kubectl_ok(&["get", "pods", "--selector", "app=kolide-fleet-mysql"]);
    assert!(pods.starts_with("NAME") && pods.contains("kolide-fleet-mysql-0") && pods.lines().count() == 2, "{pods}");

    let describe = w.kubectl_ok(&["describe", "svc", "kolide-fleet-fleet"]);
    for want in [
        "Name:                     kolide-fleet-fleet",
        "Type:                     LoadBalancer",
        "TargetPort:               http/TCP",
        "External Traffic Policy:  Local",
        "HealthCheck NodePort:",
    ] {
        assert!(describe.contains(want), "missing {want:?} in\n{describe}");
    }

    // label, and the three patch types.
    assert_eq!(w.kubectl_ok(&["label", "svc", "kolide-fleet-redis", "tier=cache"]), "service/kolide-fleet-redis labeled\n");
    let err = w.kubectl_err(&["label", "svc", "kolide-fleet-redis", "tier=db"]);
    assert!(err.contains("--overwrite is false"), "{err}");
    assert_eq!(w.kubectl_ok(&["get", "svc", "-l", "tier=cache", "-o", "name"]), "service/kolide-fleet-redis\n");
    w.kubectl_ok(&["patch", "svc", "kolide-fleet-redis", "-p", r#"{"spec":{"ports":[{"port":6379,"name":"redis","targetPort":6380}]}}"#]);
    let out = w.kubectl_ok(&[
        "patch",
        "svc",
        "kolide-fleet-redis",
        "-p",
        r#"{"spec":{"ports":[{"port":6379,"name":"redis","targetPort":6380}]}}"#,
    ]);
    assert!(out.contains("patched (no change)"), "{out}");
    w.kubectl_ok(&["patch", "svc", "kolide-fleet-redis", "--type=merge", "-p", r#"{"metadata":{"labels":{"tier":null,"merged":"yes"}}}"#]);
    w.kubectl_ok(&[
        "patch",
        "svc",
        "kolide-fleet-redis",
        "--type=json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels/json","value":"yes"}]"#,
    ]);
    let got = w.kubectl_ok(&[
        "get",
        "svc",
        "kolide-fleet-redis",
        "-o",
        "jsonpath={.spec.ports[0].targetPort} {.metadata.labels.merged} {.metadata.labels.json} {.metadata.labels.tier}",
    ]);
    assert_eq!(got.trim_end(), "6380 yes yes");

    // delete -f removes them all.
    let out = w.kubectl_ok(&["delete", "-f", services]);
    assert_eq!(out.lines().count(), 3, "{out}");
    let left = w.kubectl_ok(&["get", "svc", "-o", "name"]);
    assert_eq!(left, "service/kubernetes\n");
}

#[test]
fn watch_sees_an_update() {
    let w = Wharf::start(&[]);
    w.kubectl_ok(&["apply", "-f", example("kolide-fleet/services.yaml").to_str().unwrap()]);
    let mut watch = Command::new(support::KUBECTL)
        .args(["get", "svc", "-w", "--output-watch-events"])
        .env("KUBECONFIG", w.kubeconfig())
        .env("KUBECACHEDIR", w.dir.path().join("kube-cache"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (listed, listed_rx) = std::sync::mpsc::channel();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = line.starts_with("MODIFIED") && line.contains("kolide-fleet-redis");
            if line.contains("kolide-fleet-redis") && line.starts_with("ADDED") {
                let _ = listed.send(());
            }
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    // Once the watch has printed the service, change it.
    listed_rx.recv_timeout(Duration::from_secs(20)).expect("the watch never listed the service");
    w.kubectl_ok(&["patch", "svc", "kolide-fleet-redis", "--type=merge", "-p", r#"{"spec":{"sessionAffinity":"ClientIP"}}"#]);
    let seen = support::eventually(Duration::from_secs(20), || lines.is_finished().then_some(())).map(|_| lines.join().unwrap());
    let _ = watch.kill();
    let _ = watch.wait();
    let seen = seen.expect("the watch never showed the update");
    assert!(seen.iter().filter(|l| l.starts_with("ADDED")).count() >= 4, "{seen:?}");
    assert!(seen.last().unwrap().starts_with("MODIFIED"), "{seen:?}");
}

#[test]
fn invalid_manifests_name_the_field_and_store_nothing() {
    let w = Wharf::start(&[]);
    let cases = [
        (
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad-port\nspec:\n  ports:\n  - port: 70000\n",
            "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
        ),
        ("apiVersion: v1\nkind: Service\nmetadata:\n  name: no-ports\nspec:\n  selector:\n    app: x\n", "spec.ports: Required value"),
        ("apiVersion: v1\nkind: Service\nmetadata:\n  name: Bad_Name\nspec:\n  ports:\n  - port: 80\n", "metadata.name: Invalid value: \"Bad_Name\""),
        (
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad-proto\nspec:\n  ports:\n  - port: 80\n    protocol: FOO\n",
            "spec.ports[0].protocol: Unsupported value: \"FOO\"",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: dup\nspec:\n  ports:\n  - {name: a, port: 80}\n  - {name: a, port: 81}\n",
            "spec.ports[1].name: Duplicate value: \"a\"",
        ),
        ("apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\nspec:\n  type: ExternalName\n", "spec.externalName: Required value"),
        (
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: out-of-range\nspec:\n  clusterIP: 127.1.2.3\n  ports:\n  - port: 80\n",
            "is not in the valid range",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: bad-nodeport\nspec:\n  type: NodePort\n  ports:\n  - port: 80\n    nodePort: 80\n",
            "spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767",
        ),
        ("apiVersion: v1\nkind: Service\nmetadata:\n  name: unknown-field\nspec:\n  portz: []\n", "unknown field \"spec.portz\""),
    ];
    for (manifest, want) in cases {
        let out = w.apply_text(manifest);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(want), "manifest:\n{manifest}\nwanted {want:?}, got: {stderr}");
    }
    let names = w.kubectl_ok(&["get", "svc", "-o", "name"]);
    assert_eq!(names, "service/kubernetes\n", "an invalid manifest left something behind");

    // Taken IPs and node ports are refused; cluster IP is immutable.
    let ok = "apiVersion: v1\nkind: Service\nmetadata:\n  name: first\nspec:\n  type: NodePort\n  ports:\n  - port: 80\n";
    assert!(w.apply_text(ok).status.success());
    let ip = w.kubectl_ok(&["get", "svc", "first", "-o", "jsonpath={.spec.clusterIP}"]);
    let np = w.kubectl_ok(&["get", "svc", "first", "-o", "jsonpath={.spec.ports[0].nodePort}"]);
    let taken = format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: second\nspec:\n  clusterIP: {ip}\n  ports:\n  - port: 80\n");
    let err = String::from_utf8_lossy(&w.apply_text(&taken).stderr).into_owned();
    assert!(err.contains("provided IP is already allocated"), "{err}");
    let taken = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: third\nspec:\n  type: NodePort\n  ports:\n  - port: 80\n    nodePort: {np}\n"
    );
    let err = String::from_utf8_lossy(&w.apply_text(&taken).stderr).into_owned();
    assert!(err.contains("provided port is already allocated"), "{err}");
    let err = w.kubectl_err(&["patch", "svc", "first", "-p", r#"{"spec":{"clusterIP":"127.0.0.99"}}"#]);
    assert!(err.contains("may not change once set"), "{err}");
    assert_eq!(w.kubectl_ok(&["get", "svc", "-o", "name"]), "service/first\nservice/kubernetes\n");
}

#[test]
fn stale_resource_version_is_a_conflict() {
    let w = Wharf::start(&[]);
    w.kubectl_ok(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let stale = w.kubectl_ok(&["get", "svc", "web", "-o", "json"]);
    w.kubectl_ok(&["label", "svc", "web", "changed=yes"]);
    let path = w.dir.path().join("stale.json");
    std::fs::write(&path, stale).unwrap();
    let err = w.kubectl_err(&["replace", "-f", path.to_str().unwrap()]);
    assert!(err.contains("Conflict") && err.contains("the object has been modified"), "{err}");
}

#[test]
fn namespaces_create_and_delete_with_their_contents() {
    let w = Wharf::start(&[]);
    assert_eq!(w.kubectl_ok(&["create", "namespace", "team-a"]), "namespace/team-a created\n");
    w.kubectl_ok(&["create", "service", "nodeport", "web", "--tcp=80:8080", "-n", "team-a"]);
    let err = w.kubectl_err(&["create", "service", "clusterip", "web", "--tcp=80:8080", "-n", "nope"]);
    assert!(err.contains("namespaces \"nope\" not found"), "{err}");
    w.kubectl_ok(&["delete", "namespace", "team-a"]);
    assert!(w.kubectl_ok(&["get", "ns", "-o", "name"]).lines().all(|l| l != "namespace/team-a"));
    let all = w.kubectl_ok(&["get", "svc", "-A", "-o", "name"]);
    assert_eq!(all.lines().count(), 2, "{all}");
    let err = w.kubectl_err(&["delete", "namespace", "default"]);
    assert!(err.contains("may not be deleted"), "{err}");
}

#[test]
fn requests_without_credentials_are_refused() {
    let w = Wharf::start(&[]);
    let err = w.kubectl_err(&["--token=not-the-token", "create", "namespace", "intruder"]);
    assert!(err.contains("Unauthorized"), "{err}");
    // The same through plain HTTPS without any credential.
    let out = Command::new("curl")
        .args([
            "-sSk",
            "--retry",
            "3",
            "--max-time",
            "20",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["--data", r#"{"metadata":{"name":"intruder"}}"#, &format!("{}/api/v1/namespaces", w.server)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401", "{}", String::from_utf8_lossy(&out.stderr));
    assert!(w.kubectl_ok(&["get", "ns", "-o", "name"]).lines().all(|l| l != "namespace/intruder"));
}

#[test]
fn server_side_apply_creates_merges_and_removes_dropped_fields() {
    let w = Wharf::start(&[]);
    let write = |text: &str| {
        let path = w.dir.path().join("ssa.yaml");
        std::fs::write(&path, text).unwrap();
        w.kubectl_ok(&["apply", "--server-side", "-f", path.to_str().unwrap()])
    };
    let out = write("apiVersion: v1\nkind: Service\nmetadata:\n  name: ssa\n  labels: {app: ssa, extra: \"1\"}\nspec:\n  sessionAffinity: ClientIP\n  ports:\n  - {port: 80}\n");
    assert!(out.contains("serverside-applied"), "{out}");
    // Someone else adds a label; the applier's next config drops its own extra field.
    w.kubectl_ok(&["label", "svc", "ssa", "owner=ops"]);
    write("apiVersion: v1\nkind: Service\nmetadata:\n  name: ssa\n  labels: {app: ssa}\nspec:\n  ports:\n  - {port: 80}\n");
    let got = w.kubectl_ok(&[
        "get",
        "svc",
        "ssa",
        "-o",
        "jsonpath={.metadata.labels.app} {.metadata.labels.extra}|{.metadata.labels.owner} {.spec.sessionAffinity}",
    ]);
    assert_eq!(got, "ssa |ops None");
    let yaml = w.kubectl_ok(&["get", "svc", "ssa", "-o", "yaml", "--show-managed-fields"]);
    assert!(yaml.contains("manager: kubectl") && yaml.contains("operation: Apply"), "{yaml}");
}

#[test]
fn server_side_apply_conflicts_between_managers_and_force_takes_over() {
    let w = Wharf::start(&[]);
    let path = w.dir.path().join("owned.yaml");
    let apply_as = |manager: &str, target_port: u16, extra: &[&str]| {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: owned\nspec:\n  ports:\n  - {{port: 80, targetPort: {target_port}}}\n"
        );
        std::fs::write(&path, text).unwrap();
        let manager = format!("--field-manager={manager}");
        let mut args = vec!["apply", "--server-side", manager.as_str(), "-f", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        w.kubectl(&args)
    };
    let target_port = || w.kubectl_ok(&["get", "svc", "owned", "-o", "jsonpath={.spec.ports[0].targetPort}"]);
    assert!(apply_as("team-a", 8080, &[]).status.success());
    // The same value from another manager is shared ownership.
    assert!(apply_as("team-b", 8080, &[]).status.success());
    let refused = apply_as("team-c", 9090, &[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("Apply failed with 2 conflicts"), "{stderr}");
    assert!(
        stderr.contains("conflicts with \"team-a\"") && stderr.contains(".spec.ports[port=80,protocol=\"TCP\"].targetPort"),
        "{stderr}"
    );
    assert_eq!(target_port(), "8080", "a refused apply changes nothing");
    assert!(apply_as("team-c", 9090, &["--force-conflicts"]).status.success());
    assert_eq!(target_port(), "9090");
    // team-c owns the field now: team-a's old value conflicts with team-c only.
    let stderr = String::from_utf8_lossy(&apply_as("team-a", 8080, &[]).stderr).into_owned();
    assert!(
        stderr.contains("Apply failed with 1 conflict: conflict with \"team-c\": .spec.ports[port=80,protocol=\"TCP\"].targetPort"),
        "{stderr}"
    );
}

#[test]
fn server_side_apply_keeps_one_port_number_on_two_protocols() {
    let w = Wharf::start(&[]);
    let path = w.dir.path().join("dns.yaml");
    let manifest = "apiVersion: v1\nkind: Service\nmetadata:\n  name: dns\nspec:\n  ports:\n  - {name: dns, port: 53, protocol: UDP}\n  - {name: dns-tcp, port: 53, protocol: TCP}\n";
    std::fs::write(&path, manifest).unwrap();
    for _ in 0..2 {
        w.kubectl_ok(&["apply", "--server-side", "-f", path.to_str().unwrap()]);
        let ports = w.kubectl_ok(&["get", "svc", "dns", "-o", "jsonpath={range .spec.ports[*]}{.port}/{.protocol} {end}"]);
        assert_eq!(ports.trim(), "53/UDP 53/TCP");
    }
}

/// What every chart and client-go controller carries: ConfigMaps and
/// Secrets from `kubectl create`, ServiceAccounts, and Leases.
#[test]
fn config_maps_secrets_service_accounts_and_leases() {
    let w = Wharf::start(&[]);
    w.kubectl_ok(&["create", "configmap", "app", "--from-literal=a=1", "--from-literal=b=2"]);
    w.kubectl_ok(&["create", "secret", "generic", "db", "--from-literal=password=hunter2"]);
    w.kubectl_ok(&["create", "serviceaccount", "builder"]);
    let got = w.kubectl_ok(&["get", "configmap,secret,serviceaccount", "--no-headers"]);
    let rows: Vec<Vec<&str>> = got.lines().map(|l| l.split_whitespace().collect()).collect();
    assert!(rows.iter().any(|r| r[..2] == ["configmap/app", "2"]), "{got}");
    assert!(rows.iter().any(|r| r[..3] == ["secret/db", "Opaque", "1"]), "{got}");
    assert!(rows.iter().any(|r| r[..2] == ["serviceaccount/builder", "0"]), "{got}");
    assert_eq!(w.kubectl_ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]), "aHVudGVyMg==");

    // kubectl follows continue tokens page by page; a forged one is 400.
    for name in ["app2", "app3"] {
        w.kubectl_ok(&["create", "configmap", name]);
    }
    let paged = w.kubectl_ok(&["get", "configmaps", "--chunk-size=1", "--no-headers", "-o", "name"]);
    assert_eq!(paged.lines().collect::<Vec<_>>(), ["configmap/app", "configmap/app2", "configmap/app3"]);
    // With a selector a page holds `limit` matching objects, skipping the rest.
    w.kubectl_ok(&["label", "configmap", "app", "app3", "tier=web"]);
    let selected = w.kubectl_ok(&["get", "configmaps", "-l", "tier=web", "--chunk-size=1", "--no-headers", "-o", "name"]);
    assert_eq!(selected.lines().collect::<Vec<_>>(), ["configmap/app", "configmap/app3"]);
    let err = w.kubectl_err(&["get", "--raw", "/api/v1/namespaces/default/configmaps?limit=1&continue=bm90LWEtdG9rZW4"]);
    assert!(err.contains("continue key is not valid"), "{err}");
    // Every page reads the first page's snapshot, whatever is written meanwhile.
    let page = |query: &str| -> serde_json::Value {
        serde_json::from_str(&w.kubectl_ok(&["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?{query}")])).expect("json")
    };
    let names = |list: &serde_json::Value| -> Vec<String> {
        list["items"].as_array().expect("items").iter().map(|i| i["metadata"]["name"].as_str().unwrap_or_default().to_string()).collect()
    };
    let first = page("limit=2");
    w.kubectl_ok(&["delete", "configmap", "app3"]);
    w.kubectl_ok(&["create", "configmap", "app4"]);
    let token = first["metadata"]["continue"].as_str().expect("more to read").to_string();
    let rest = page(&format!("limit=10&continue={token}"));
    assert_eq!([names(&first), names(&rest)].concat(), ["app", "app2", "app3"], "the list as it stood at the first page");
    assert_eq!(rest["metadata"]["resourceVersion"], first["metadata"]["resourceVersion"]);
    assert!(rest["metadata"]["continue"].as_str().unwrap_or_default().is_empty(), "{rest}");
    // The last page read, the snapshot is let go: its token has expired.
    let err = w.kubectl_err(&["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?limit=10&continue={token}")]);
    assert!(err.contains("continue parameter is too old"), "{err}");
    assert_eq!(names(&page("limit=10")), ["app", "app2", "app4"], "a new list reads the writes");
    // A first page that waits for a resourceVersion the store never
    // reaches is read a dozen times; none of those reads keeps a snapshot,
    // so they push no one else's token out of the pager's 32.
    let held = page("limit=1");
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                let err = w.kubectl_err(&["get", "--raw", "/api/v1/namespaces/default/configmaps?limit=1&resourceVersion=999999999"]);
                assert!(err.contains("Too large resource version"), "{err}");
            });
        }
    });
    let token = held["metadata"]["continue"].as_str().expect("more to read");
    assert_eq!(names(&page(&format!("limit=10&continue={token}"))), ["app2", "app4"], "the token still resumes");

    // stringData is written into data and not stored.
    let out = w.apply_text("apiVersion: v1\nkind: Secret\nmetadata:\n  name: token\nstringData:\n  token: s3cret\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stored = w.kubectl_ok(&["get", "secret", "token", "-o", "json"]);
    let stored: serde_json::Value = serde_json::from_str(&stored).expect("json");
    assert_eq!(stored["data"]["token"], "czNjcmV0");
    assert!(stored.get("stringData").is_none(), "{stored}");

    // Immutable data stays; a bad key is refused naming it.
    w.kubectl_ok(&["patch", "configmap", "app", "-p", r#"{"immutable":true}"#]);
    let err = w.kubectl_err(&["patch", "configmap", "app", "-p", r#"{"data":{"a":"9"}}"#]);
    assert!(err.contains("field is immutable when `immutable` is set"), "{err}");
    assert_eq!(w.kubectl_ok(&["get", "configmap", "app", "-o", "jsonpath={.data.a}"]), "1");
    let out = w.apply_text("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\ndata:\n  x/y: \"1\"\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("data[x/y]"), "{err}");

    let out = w.apply_text("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: my-lock\nspec:\n  holderIdentity: me\n  leaseDurationSeconds: 15\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = w.kubectl_ok(&["get", "lease", "my-lock", "--no-headers"]);
    assert_eq!(got.split_whitespace().take(2).collect::<Vec<_>>(), ["my-lock", "me"], "{got}");
    let out = w.apply_text("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: bad\nspec:\n  leaseDurationSeconds: 0\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.leaseDurationSeconds"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn secrets_are_encrypted_at_rest_and_read_back_after_a_restart() {
    use base64::Engine;
    let mut w = Wharf::start(&[]);
    w.kubectl_ok(&["create", "secret", "generic", "db", "--from-literal=password=hunter2-at-rest"]);
    w.kubectl_ok(&["create", "configmap", "plain", "--from-literal=note=visible-at-rest"]);
    let store = std::fs::read(w.data_dir().join("state.redb")).unwrap();
    let contains = |needle: &[u8]| store.windows(needle.len()).any(|win| win == needle);
    let encoded = base64::engine::general_purpose::STANDARD.encode("hunter2-at-rest");
    assert!(!contains(b"hunter2-at-rest") && !contains(encoded.as_bytes()), "the secret's value is in the store file");
    assert!(contains(b"k8s:enc:aesgcm:v1:key1:"), "sealed as kube-apiserver's aesgcm provider seals");
    assert!(contains(b"visible-at-rest"), "ConfigMaps are not encrypted by default");
    let config = std::fs::read_to_string(w.data_dir().join("encryption-config.yaml")).unwrap();
    assert!(config.contains("kind: EncryptionConfiguration"), "{config}");
    w.restart();
    let read = w.kubectl_ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]);
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(read.trim()).unwrap(), b"hunter2-at-rest");
}

#[test]
fn resource_version_and_match_on_get_and_list() {
    let w = Wharf::start(&[]);
    let list = |query: &str| w.kubectl(&["get", "--raw", &format!("/api/v1/namespaces/default/services?{query}")]);
    // Exact is served at the current revision only (wharf keeps no older
    // states); background writes (node leases) may move it between reads.
    let revision_now = || {
        serde_json::from_slice::<serde_json::Value>(&list("").stdout).unwrap()["metadata"]["resourceVersion"].as_str().unwrap().to_string()
    };
    let exact = support::eventually(Duration::from_secs(10), || {
        list(&format!("resourceVersion={}&resourceVersionMatch=Exact", revision_now())).status.success().then_some(())
    });
    assert!(exact.is_some(), "an Exact list at the current revision");
    let current = revision_now();
    w.kubectl_ok(&["create", "service", "clusterip", "later", "--tcp=80:80"]);
    let old = list(&format!("resourceVersion={current}&resourceVersionMatch=Exact"));
    assert!(String::from_utf8_lossy(&old.stderr).contains("Expired"), "{}", String::from_utf8_lossy(&old.stderr));
    let fresh = list(&format!("resourceVersion={current}&resourceVersionMatch=NotOlderThan"));
    assert!(String::from_utf8_lossy(&fresh.stdout).contains("later"));
    let future = w.kubectl(&["get", "--raw", "/api/v1/namespaces/default/services/later?resourceVersion=999999999"]);
    assert!(String::from_utf8_lossy(&future.stderr).contains("Too large resource version"), "{}", String::from_utf8_lossy(&future.stderr));
    let unbounded = list("resourceVersionMatch=Exact");
    let refused = String::from_utf8_lossy(&unbounded.stderr).to_string();
    assert!(!unbounded.status.success() && refused.contains("resourceVersionMatch"), "{refused}");
}

#[test]
fn dry_run_stores_nothing_and_an_unknown_dry_run_value_is_refused() {
    let w = Wharf::start(&[]);
    w.kubectl_ok(&["create", "service", "clusterip", "dry", "--tcp=80:80", "--dry-run=server"]);
    assert!(!w.kubectl(&["get", "svc", "dry"]).status.success(), "a server dry run stored the service");
    let body = w.dir.path().join("svc.json");
    std::fs::write(&body, r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"dry"},"spec":{"ports":[{"port":80}]}}"#).unwrap();
    let out = w.kubectl(&["create", "--raw", "/api/v1/namespaces/default/services?dryRun=Server", "-f", body.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() && err.contains("dryRun"), "{err}");
    assert!(!w.kubectl(&["get", "svc", "dry"]).status.success(), "an unknown dryRun value was taken for a real write");
}

#[test]
fn explain_reads_the_schemas_and_client_side_apply_keeps_allocated_node_ports() {
    let w = Wharf::start(&[]);
    let explained = w.kubectl_ok(&["explain", "service.spec.ports"]);
    for want in ["KIND:       Service", "FIELD: ports <[]ServicePort>", "targetPort\t<IntOrString>", "Number or name of the port"] {
        assert!(explained.contains(want), "missing {want:?} in\n{explained}");
    }
    let pods = w.kubectl_ok(&["explain", "pods.spec.containers.readinessProbe.tcpSocket"]);
    assert!(pods.contains("FIELD: tcpSocket <TCPSocketAction>"), "{pods}");
    let slices = w.kubectl_ok(&["explain", "endpointslices.endpoints.conditions"]);
    assert!(slices.contains("GROUP:      discovery.k8s.io") && slices.contains("ready\t<boolean>"), "{slices}");
    let v2 = w.kubectl_ok(&["get", "--raw", "/openapi/v2"]);
    assert!(v2.contains("\"io.k8s.api.core.v1.Service\""), "{}", &v2[..v2.len().min(300)]);

    // kubectl apply computes its patch from its own types, not from the
    // published schemas: a re-apply keeps the allocated node port and
    // merges the ports list by port.
    let manifest = |label: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: np\n  labels:\n    v: {label}\nspec:\n  type: NodePort\n  selector:\n    app: np\n  ports:\n  - name: http\n    port: 80\n  - name: https\n    port: 443\n"
        )
    };
    assert!(w.apply_text(&manifest("a")).status.success());
    let node_ports = || w.kubectl_ok(&["get", "svc", "np", "-o", "jsonpath={.spec.ports[*].nodePort}"]);
    let before = node_ports();
    let out = w.apply_text(&manifest("b"));
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("configured"), "{out:?}");
    assert_eq!(node_ports(), before);
    assert_eq!(w.kubectl_ok(&["get", "svc", "np", "-o", "jsonpath={.metadata.labels.v}"]), "b");

    // Strict validation names the unknown field and stores nothing.
    let path = w.data_dir().join("typo.yaml");
    std::fs::write(&path, manifest("c").replace("  type: NodePort\n", "  type: NodePort\n  sessionAfinity: ClientIP\n")).unwrap();
    let err = w.kubectl_err(&["apply", "--validate=strict", "-f", path.to_str().unwrap()]);
    assert!(err.contains("unknown field \"spec.sessionAfinity\""), "{err}");
    assert_eq!(w.kubectl_ok(&["get", "svc", "np", "-o", "jsonpath={.metadata.labels.v}"]), "b");
}

/// A service that stops being a load balancer loses its address; one that
/// becomes one again gets one (the controller held it as none of its
/// concern in between).
#[test]
fn a_load_balancer_address_follows_the_service_type() {
    let w = Wharf::start(&[]);
    let out =
        w.apply_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: edge\nspec:\n  type: LoadBalancer\n  ports:\n  - {port: 80}\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ingress = || w.kubectl_ok(&["get", "svc", "edge", "-o", "jsonpath={.status.loadBalancer.ingress[*].ip}"]);
    let assigned = support::eventually(Duration::from_secs(20), || Some(ingress()).filter(|ip| !ip.is_empty()));
    assert!(assigned.is_some(), "no load-balancer address");
    w.kubectl_ok(&["patch", "svc", "edge", "-p", r#"{"spec":{"type":"ClusterIP"}}"#]);
    let cleared = support::eventually(Duration::from_secs(20), || ingress().is_empty().then_some(()));
    assert!(cleared.is_some(), "a ClusterIP service kept its load-balancer address: {}", ingress());
    w.kubectl_ok(&["patch", "svc", "edge", "-p", r#"{"spec":{"type":"LoadBalancer"}}"#]);
    let again = support::eventually(Duration::from_secs(20), || Some(ingress()).filter(|ip| !ip.is_empty()));
    assert!(again.is_some(), "no address after it became a load balancer again");
}
