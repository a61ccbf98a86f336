//! Acknowledged writes survive SIGKILL; allocations never leak or double.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use support::Wharf;

fn node_port_service(name: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"type": "NodePort", "ports": [{"port": 80}]},
    }))
    .unwrap()
}

/// A service's cluster IP and node ports.
type Allocations = (String, Vec<i32>);

fn allocations(svc: &Service) -> Allocations {
    let spec = svc.spec.as_ref().unwrap();
    let ports = spec.ports.iter().flatten().filter_map(|p| p.node_port).collect();
    (spec.cluster_ip.clone().unwrap(), ports)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_creates_survive_sigkill() {
    let mut w = Wharf::start(&[]);
    let api: Api<Service> = Api::namespaced(w.client().await, "default");
    let acked: Arc<Mutex<HashMap<String, Allocations>>> = Default::default();
    let mut writers = Vec::new();
    for writer in 0..4 {
        let api = api.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("svc-{writer}-{i}");
                match api.create(&PostParams::default(), &node_port_service(&name)).await {
                    Ok(created) => {
                        acked.lock().unwrap().insert(name, allocations(&created));
                    }
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    // Kill the server while the creates stream in.
    let streaming = tokio::time::timeout(Duration::from_secs(60), async {
        while acked.lock().unwrap().len() < 100 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    streaming.await.expect("creates never got going");
    w.kill();
    for writer in writers {
        writer.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 20, "too few creates before the kill: {}", acked.len());

    w.restart();
    let api: Api<Service> = Api::namespaced(w.client().await, "default");
    let stored: HashMap<String, (String, Vec<i32>)> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|s| s.metadata.name.as_deref().unwrap().starts_with("svc-"))
        .map(|s| (s.metadata.name.clone().unwrap(), allocations(s)))
        .collect();
    for (name, alloc) in &acked {
        assert_eq!(stored.get(name), Some(alloc), "acknowledged {name} lost or changed");
    }
    // No IP or node port is held twice, including by objects whose
    // creation was cut off before it was acknowledged.
    let ips: HashSet<&String> = stored.values().map(|(ip, _)| ip).collect();
    assert_eq!(ips.len(), stored.len(), "a cluster IP is held twice");
    let ports: Vec<i32> = stored.values().flat_map(|(_, p)| p.clone()).collect();
    assert_eq!(ports.iter().collect::<HashSet<_>>().len(), ports.len(), "a node port is held twice");
    // And the allocator knows they are taken: asking for one is refused.
    let (ip, _) = acked.values().next().unwrap();
    let mut clash = node_port_service("clash");
    clash.spec.as_mut().unwrap().cluster_ip = Some(ip.clone());
    let err = api.create(&PostParams::default(), &clash).await.unwrap_err();
    assert!(err.to_string().contains("already allocated"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_delete_cycles_leak_nothing() {
    // A /28 has 14 usable addresses, two of which (first and tenth) belong
    // to the built-in services; 4 node ports. Any leak would exhaust them.
    let w = Wharf::start(&["--service-cidr", "127.250.0.0/28", "--service-node-port-range", "30100-30103"]);
    let api: Api<Service> = Api::namespaced(w.client().await, "default");
    for round in 0..15 {
        for i in 0..4 {
            api.create(&PostParams::default(), &node_port_service(&format!("s{i}")))
                .await
                .unwrap_or_else(|e| panic!("round {round}, service {i}: {e}"));
        }
        for i in 0..4 {
            api.delete(&format!("s{i}"), &DeleteParams::default()).await.unwrap();
        }
    }
    // Full capacity is still there, and not one more.
    for i in 0..4 {
        api.create(&PostParams::default(), &node_port_service(&format!("s{i}"))).await.unwrap();
    }
    let err = api.create(&PostParams::default(), &node_port_service("one-too-many")).await.unwrap_err();
    assert!(err.to_string().contains("range is full"), "{err}");
    let cluster_ip_only: Service =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "ips"}, "spec": {"ports": [{"port": 80}]}})).unwrap();
    let mut ips = Vec::new();
    for i in 0..8 {
        let mut svc = cluster_ip_only.clone();
        svc.metadata.name = Some(format!("ip{i}"));
        ips.push(api.create(&PostParams::default(), &svc).await.unwrap().spec.unwrap().cluster_ip.unwrap());
    }
    let err = api.create(&PostParams::default(), &cluster_ip_only).await.unwrap_err();
    assert!(err.to_string().contains("range is full"), "{err}");
    assert!(!ips.contains(&"127.250.0.1".to_string()) && !ips.contains(&"127.250.0.10".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_in_order_and_old_versions_are_gone() {
    let mut w = Wharf::start(&[]);
    let api: Api<Service> = Api::namespaced(w.client().await, "default");
    let list = api.list(&ListParams::default()).await.unwrap();
    let from = list.metadata.resource_version.unwrap();
    for i in 0..20 {
        api.create(&PostParams::default(), &node_port_service(&format!("w{i}"))).await.unwrap();
    }
    api.delete("w3", &DeleteParams::default()).await.unwrap();
    let mut events = api.watch(&WatchParams::default().timeout(5), &from).await.unwrap().boxed();
    let mut seen = Vec::new();
    let mut last_rv = 0u64;
    while let Some(event) = events.next().await {
        let (kind, svc) = match event.unwrap() {
            WatchEvent::Added(s) => ("ADDED", s),
            WatchEvent::Deleted(s) => ("DELETED", s),
            other => panic!("unexpected {other:?}"),
        };
        let rv: u64 = svc.metadata.resource_version.as_deref().unwrap().parse().unwrap();
        assert!(rv > last_rv, "events out of order");
        last_rv = rv;
        seen.push(format!("{kind} {}", svc.metadata.name.unwrap()));
        if seen.len() == 21 {
            break;
        }
    }
    let mut want: Vec<String> = (0..20).map(|i| format!("ADDED w{i}")).collect();
    want.push("DELETED w3".into());
    assert_eq!(seen, want);

    // After a restart the server's history starts afresh: an older version is 410 Gone.
    w.restart();
    let api: Api<Service> = Api::namespaced(w.client().await, "default");
    let mut events = api.watch(&WatchParams::default().timeout(5), &from).await.unwrap().boxed();
    match events.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410, "{e:?}"),
        other => panic!("expected a 410 error event, got {other:?}"),
    }
}

/// A watch of a quiet kind gets bookmarks that follow the store, not its
/// own last event: a client resuming from its latest bookmark after other
/// kinds churned far past the watch history goes on where it was, with no
/// 410 and no relist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_watch_resumes_from_its_bookmark_after_churn_past_the_history() {
    let w = Wharf::start(&["--watch-history", "64", "--watch-bookmark-interval", "200ms"]);
    let client = w.client().await;
    let quiet: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let busy: Api<ConfigMap> = Api::namespaced(client, "kube-system");
    let config_map = |name: &str| -> ConfigMap { serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap() };
    let rv = |cm: &ConfigMap| -> u64 { cm.metadata.resource_version.as_deref().unwrap().parse().unwrap() };
    let from = quiet.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut events = quiet.watch(&WatchParams::default().timeout(60), &from).await.unwrap().boxed();
    let mut last = 0;
    for i in 0..300 {
        last = rv(&busy.create(&PostParams::default(), &config_map(&format!("busy-{i}"))).await.unwrap());
    }
    // The store tells a watcher its place every 16 events (a quarter of 64).
    let bookmark = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.next().await {
                Some(Ok(WatchEvent::Bookmark(b))) if b.metadata.resource_version.parse::<u64>().unwrap() + 16 >= last => {
                    break b.metadata.resource_version;
                }
                Some(Ok(WatchEvent::Bookmark(_))) => {}
                other => panic!("a quiet watch got {other:?}"),
            }
        }
    })
    .await
    .expect("a bookmark past the churn");
    drop(events);

    let mut stale = quiet.watch(&WatchParams::default().timeout(5), &from).await.unwrap().boxed();
    match stale.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410, "the churn outran the history: {e:?}"),
        other => panic!("expected a 410 error event, got {other:?}"),
    }
    let mut resumed = quiet.watch(&WatchParams::default().timeout(10), &bookmark).await.unwrap().boxed();
    quiet.create(&PostParams::default(), &config_map("after")).await.unwrap();
    loop {
        match resumed.next().await {
            Some(Ok(WatchEvent::Added(cm))) => break assert_eq!(cm.metadata.name.as_deref(), Some("after")),
            Some(Ok(WatchEvent::Bookmark(_))) => {}
            other => panic!("resuming from bookmark {bookmark} got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_filter_lists() {
    let w = Wharf::start(&[]);
    let api: Api<Service> = Api::namespaced(w.client().await, "default");
    for (name, tier, env) in [("a", "web", Some("prod")), ("b", "db", Some("dev")), ("c", "cache", None)] {
        let mut labels = serde_json::json!({"tier": tier});
        if let Some(env) = env {
            labels["env"] = env.into();
        }
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels}, "spec": {"ports": [{"port": 80}]}}))
        .unwrap();
        api.create(&PostParams::default(), &svc).await.unwrap();
    }
    let names = |sel: &'static str, fields: &'static str| {
        let api = api.clone();
        async move {
            let mut lp = ListParams::default().labels(sel);
            if !fields.is_empty() {
                lp = lp.fields(fields);
            }
            let mut n: Vec<String> = api.list(&lp).await.unwrap().items.into_iter().filter_map(|s| s.metadata.name).collect();
            n.retain(|n| n != "kubernetes");
            n.join(",")
        }
    };
    assert_eq!(names("tier=web", "").await, "a");
    assert_eq!(names("tier==db", "").await, "b");
    assert_eq!(names("tier!=web", "").await, "b,c");
    assert_eq!(names("tier in (web,cache)", "").await, "a,c");
    assert_eq!(names("tier notin (web,cache)", "").await, "b");
    assert_eq!(names("env", "").await, "a,b");
    assert_eq!(names("!env", "").await, "c");
    assert_eq!(names("", "metadata.name=b").await, "b");
    assert_eq!(names("", "metadata.namespace=default,metadata.name!=a").await, "b,c");
    let err = api.list(&ListParams::default().fields("spec.type=ClusterIP")).await.unwrap_err();
    assert!(err.to_string().contains("field label not supported"), "{err}");
}

#[test]
fn restart_keeps_credentials_and_moves_the_api_endpoint() {
    let mut w = Wharf::start(&[]);
    let kubeconfig_before = std::fs::read_to_string(w.kubeconfig()).unwrap();
    let token = |k: &str| k.lines().find(|l| l.contains("token:")).unwrap().to_string();
    let ca = |k: &str| k.lines().find(|l| l.contains("certificate-authority-data")).unwrap().to_string();
    w.restart();
    let kubeconfig_after = std::fs::read_to_string(w.kubeconfig()).unwrap();
    assert_eq!(token(&kubeconfig_before), token(&kubeconfig_after));
    assert_eq!(ca(&kubeconfig_before), ca(&kubeconfig_after));
    // The `kubernetes` endpoints follow the API to its new port.
    let port = w.server.rsplit(':').next().unwrap().to_string();
    let ep = w.kubectl_ok(&["get", "endpoints", "kubernetes", "-o", "jsonpath={.subsets[0].ports[0].port}"]);
    assert_eq!(ep, port);
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["kubeconfig", "--data-dir", w.data_dir().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&printed.stdout), kubeconfig_after);
}
