//! `wharf why` on the seed story: a whole chain exits 0; a fleet pod whose
//! probe fails, a selector typo and a named targetPort no pod defines are
//! each named as the first broken link, with exit code 1.

mod support;

use std::process::Command;
use std::time::Duration;

use support::Wharf;

/// `wharf why TARGET`'s output and exit code.
fn why(w: &Wharf, target: &str) -> (String, Option<i32>) {
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["why", target, "--kubeconfig", w.kubeconfig().to_str().unwrap()])
        .output()
        .expect("run wharf why");
    (String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr), out.status.code())
}

fn until(w: &Wharf, target: &str, check: impl Fn(&str, Option<i32>) -> bool) -> String {
    let found = support::eventually(Duration::from_secs(30), || {
        let (text, code) = why(w, target);
        check(&text, code).then_some(text)
    });
    found.unwrap_or_else(|| panic!("wharf why {target} never showed it: {}", why(w, target).0))
}

#[test]
fn why_names_the_first_broken_link() {
    let w = Wharf::start(&[]);
    let ip = w.node_ip.clone();
    // No backend for fleet-b: its readiness probe fails.
    let _seed = w.seed(false);

    let whole = until(&w, "svc/kolide-fleet-mysql", |_, code| code == Some(0));
    assert!(whole.contains("the chain is whole") && whole.contains("DNS kolide-fleet-mysql.default.svc.cluster.local →"), "{whole}");

    let fleet = until(&w, "svc/kolide-fleet-fleet", |text, code| code == Some(1) && text.contains("Readiness probe failed"));
    assert!(fleet.contains("first broken link: pod kolide-fleet-fleet-b on test-node: not ready; last probe at"), "{fleet}");
    assert!(fleet.contains("connection refused"), "the probe's error: {fleet}");

    w.kubectl_ok(&["create", "service", "clusterip", "typo", "--tcp=3306:3306"]);
    w.kubectl_ok(&["patch", "service", "typo", "--type=merge", "-p", r#"{"spec":{"selector":{"app":"kolide-fleet-mysq"}}}"#]);
    let (typo, code) = why(&w, "svc/typo");
    assert_eq!(code, Some(1), "{typo}");
    assert!(
        typo.contains("near miss: pod kolide-fleet-mysql-0 has app=kolide-fleet-mysql, the selector wants app=kolide-fleet-mysq"),
        "{typo}"
    );

    w.kubectl_ok(&["create", "service", "clusterip", "named", "--tcp=3306:nope"]);
    w.kubectl_ok(&["patch", "service", "named", "--type=merge", "-p", r#"{"spec":{"selector":{"app":"kolide-fleet-mysql"}}}"#]);
    let (named, code) = why(&w, "svc/named");
    assert_eq!(code, Some(1), "{named}");
    assert!(named.contains(r#"pod kolide-fleet-mysql-0 defines no TCP container port named "nope""#), "{named}");

    // Another program holds the address and port a service's cluster IP needs.
    let mysql_ip = w.kubectl_ok(&["get", "svc", "kolide-fleet-mysql", "-o", "jsonpath={.spec.clusterIP}"]);
    let taken_ip = {
        let mut octets: Vec<u8> = mysql_ip.split('.').map(|o| o.parse().unwrap()).collect();
        octets[2] = 200;
        octets[3] = 200;
        octets.iter().map(u8::to_string).collect::<Vec<_>>().join(".")
    };
    let _squatter = std::net::TcpListener::bind(format!("{taken_ip}:9999")).expect("bind the squatter");
    w.kubectl_ok(&["create", "service", "clusterip", "squatted", "--tcp=9999:3306", &format!("--clusterip={taken_ip}")]);
    w.kubectl_ok(&["patch", "service", "squatted", "--type=merge", "-p", r#"{"spec":{"selector":{"app":"kolide-fleet-mysql"}}}"#]);
    let squatted = until(&w, "svc/squatted", |text, code| code == Some(1) && text.contains("does not serve"));
    assert!(
        squatted.contains(&format!("first broken link: node test-node does not serve {taken_ip}:9999/TCP: Address already in use")),
        "the node's proxy publishes why: {squatted}"
    );

    // An endpoint that refuses connections: the proxy's connect errors,
    // as the node publishes them.
    let dead_port = std::net::TcpListener::bind(format!("{ip}:0")).unwrap().local_addr().unwrap().port();
    w.kubectl_ok(&["create", "service", "clusterip", "dead", "--tcp=7777:7777"]);
    w.kubectl_ok(&["patch", "service", "dead", "--type=merge", "-p", r#"{"spec":{"selector":null}}"#]);
    let applied = w.apply_text(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: dead-1\n  labels:\n    kubernetes.io/service-name: dead\n\
         addressType: IPv4\nports:\n- name: 7777-7777\n  port: {dead_port}\n  protocol: TCP\nendpoints:\n- addresses: [\"{ip}\"]\n  conditions:\n    ready: true\n"
    ));
    assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
    let dead_ip = w.kubectl_ok(&["get", "svc", "dead", "-o", "jsonpath={.spec.clusterIP}"]);
    let refused = until(&w, "svc/dead", |text, _| {
        let _ = std::net::TcpStream::connect_timeout(&format!("{dead_ip}:7777").parse().unwrap(), Duration::from_secs(2));
        text.contains("connect error(s)")
    });
    assert!(refused.contains(&format!("? endpoint {ip}:{dead_port} via node test-node: ")), "{refused}");
    assert!(refused.contains("Connection refused"), "the error itself: {refused}");

    let (api, code) = why(&w, "svc/kubernetes");
    assert_eq!(code, Some(0), "{api}");
    assert!(api.contains("✓ 1 EndpointSlice(s): 1 of 1 endpoints ready"), "one slice, the API server's, none mirrored: {api}");

    let (by_pod, code) = why(&w, "pod/kolide-fleet-fleet-a");
    assert_eq!(code, Some(1), "fleet-a's service is broken by fleet-b: {by_pod}");
    assert!(by_pod.contains("service default/kolide-fleet-fleet"), "{by_pod}");
}
