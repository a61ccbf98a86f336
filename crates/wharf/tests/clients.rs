//! Third-party Kubernetes clients against a running wharf, each asserting
//! what it saw: the official Python client (Debian `python3-kubernetes`),
//! the official JavaScript client's informer (`@kubernetes/client-node`,
//! installed by the test command), and kube-rs listing by streaming watch
//! as client-go 1.35 does.

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
    // Two pages of one listing: page-c, created between them, is in neither.
    assert_eq!(lines[3]["pages"], serde_json::json!([["page-a"], ["page-b"]]), "{stdout}");
    assert_eq!(lines[3]["same_revision"], true, "{stdout}");
    assert!(lines[3]["more"].is_null(), "the last page has no token: {stdout}");
    // `watch=True`, as this client sends it, is a watch: every change since the list.
    let events: Vec<(&str, &str)> =
        lines[4..].iter().map(|e| (e["event"].as_str().unwrap_or(""), e["name"].as_str().unwrap_or(""))).collect();
    assert_eq!(events, [("ADDED", "py-svc"), ("MODIFIED", "py-svc"), ("DELETED", "py-svc")], "{stdout}");
}

#[test]
fn the_javascript_client_informer_sees_add_update_delete() {
    let w = Wharf::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/js/informer.mjs");
    let out = Command::new("node").arg(script).env("KUBECONFIG", w.kubeconfig()).output().expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let seen: Vec<String> = serde_json::from_str(stdout.trim()).expect("a JSON list");
    assert_eq!(seen, ["add js-informed 80", "update js-informed 81", "delete js-informed 81"], "{stdout}");
}

/// `watcher::Config::streaming_lists()`: `sendInitialEvents=true`, the
/// objects as ADDED, then the `k8s.io/initial-events-end` bookmark; a
/// watcher that never saw it would never report InitDone.
#[tokio::test]
async fn kube_rs_streaming_lists_reach_init_done_then_follow_changes() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams};
    use kube::runtime::watcher::{self, Event};

    let w = Wharf::start(&[]);
    let client = w.client().await;
    let maps: Api<ConfigMap> = Api::namespaced(client, "default");
    for name in ["one", "two"] {
        let cm: ConfigMap =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": name}})).expect("configmap");
        maps.create(&PostParams::default(), &cm).await.expect("create");
    }
    let mut events = watcher::watcher(maps.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = Vec::new();
    let within = std::time::Duration::from_secs(20);
    loop {
        match tokio::time::timeout(within, events.next()).await.expect("an event in time").expect("the stream goes on").expect("no error") {
            Event::Init => {}
            Event::InitApply(cm) => initial.push(cm.metadata.name.unwrap_or_default()),
            Event::InitDone => break,
            other => panic!("before InitDone: {other:?}"),
        }
    }
    initial.sort();
    assert_eq!(initial, ["one", "two"]);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({"metadata": {"name": "three"}})).expect("configmap");
    maps.create(&PostParams::default(), &cm).await.expect("create");
    match tokio::time::timeout(within, events.next()).await.expect("an event in time").expect("the stream goes on").expect("no error") {
        Event::Apply(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("three")),
        other => panic!("after InitDone: {other:?}"),
    }
}

/// kube-apiserver's rules for a streaming list, and the same answers.
#[test]
fn a_streaming_list_needs_not_older_than_and_bookmarks() {
    let w = Wharf::start(&[]);
    let out = w.kubectl(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/configmaps?watch=1&sendInitialEvents=true&allowWatchBookmarks=true&timeoutSeconds=2",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("resourceVersionMatch"), "{err}");
}

/// `allowWatchBookmarks`: a quiet watch gets BOOKMARKs with a revision at
/// or past its own, as the store moves on; one that did not ask gets none.
#[test]
fn quiet_watches_get_bookmarks_when_they_allow_them() {
    let w = Wharf::start(&["--watch-bookmark-interval", "1s"]);
    let rv = w.kubectl_ok(&["get", "--raw", "/api/v1/namespaces/default/configmaps"]);
    let rv: serde_json::Value = serde_json::from_str(&rv).expect("a list");
    let rv = rv["metadata"]["resourceVersion"].as_str().expect("resourceVersion").to_string();
    let watch = |extra: &str| {
        w.kubectl_ok(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=3{extra}"),
        ])
    };
    let lines: Vec<serde_json::Value> =
        watch("&allowWatchBookmarks=true").lines().map(|l| serde_json::from_str(l).expect("an event")).collect();
    assert!(!lines.is_empty(), "no bookmark in 3 s at a 1 s interval");
    let mut passed: u64 = rv.parse().expect("a number");
    for line in &lines {
        assert_eq!(line["type"], "BOOKMARK");
        assert_eq!(line["object"]["kind"], "ConfigMap");
        let at: u64 = line["object"]["metadata"]["resourceVersion"].as_str().and_then(|v| v.parse().ok()).expect("a revision");
        assert!(at >= passed, "a bookmark went back: {lines:?}");
        passed = at;
    }
    assert_eq!(watch("").trim(), "", "bookmarks only for watches that allow them");
}
