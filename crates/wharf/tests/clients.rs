//! Third-party Kubernetes clients against a running wharf, each asserting
//! what it saw: the official Python client (Debian `python3-kubernetes`).

mod support;

use std::process::Command;

use support::Wharf;

/// Debian's interpreter, which has the packaged client.
const PYTHON: &str = "/usr/bin/python3";

#[test]
fn the_python_client_crud_and_watch() {
    let w = Wharf::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/python_client.py");
    let out = Command::new(PYTHON).arg(script).arg(w.kubeconfig()).output().expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert!(lines[0]["created"].as_str().is_some_and(|ip| ip.starts_with("127.")), "{stdout}");
    assert_eq!(lines[1]["read"]["tier"], "db", "{stdout}");
    assert_eq!(lines[2]["listed"], serde_json::json!(["py-svc"]), "{stdout}");
    // `watch=True`, as this client sends it, is a watch: every change since the list.
    let events: Vec<(&str, &str)> =
        lines[3..].iter().map(|e| (e["event"].as_str().unwrap_or(""), e["name"].as_str().unwrap_or(""))).collect();
    assert_eq!(events, [("ADDED", "py-svc"), ("MODIFIED", "py-svc"), ("DELETED", "py-svc")], "{stdout}");
}
