//! Nothing lost: every consumer of a watch converges to the stored state
//! through the hard paths, forced with small numbers: a watch history
//! smaller than the burst, a consumer that falls so far behind that its
//! watch expires (410) and it relists in the middle of changes, and
//! reconciles that fail and later succeed. Each ends with the slices, the
//! DNS answers and the proxy frontends exactly matching what is stored.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

const SLICE_LABEL: &str = "kubernetes.io/service-name";

fn service(name: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap()
}

fn pod(name: &str, app: &str, node: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x", "ports": [{"containerPort": 8080}]}]}
    }))
    .unwrap()
}

/// Services and the names of their pods, as stored.
async fn stored(client: &kube::Client) -> BTreeMap<String, BTreeSet<String>> {
    let services = Api::<Service>::namespaced(client.clone(), "default").list(&ListParams::default()).await.unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), "default").list(&ListParams::default()).await.unwrap();
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for svc in services.items.iter().filter(|s| s.spec.as_ref().and_then(|s| s.selector.as_ref()).is_some()) {
        let name = svc.metadata.name.clone().unwrap();
        let members = pods.items.iter().filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get("app")) == Some(&name));
        let members = members.filter_map(|p| p.metadata.name.clone()).collect();
        want.insert(name, members);
    }
    want
}

/// Services and the pods their slices hold (ready ones only).
async fn in_slices(client: &kube::Client) -> BTreeMap<String, BTreeSet<String>> {
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "default").list(&ListParams::default()).await.unwrap();
    let mut got: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for slice in slices.items {
        let Some(svc) = slice.metadata.labels.as_ref().and_then(|l| l.get(SLICE_LABEL)).cloned() else { continue };
        let entry = got.entry(svc).or_default();
        for ep in slice.endpoints.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true)) {
            entry.extend(ep.target_ref.as_ref().and_then(|t| t.name.clone()));
        }
    }
    got
}

async fn slices_match(client: &kube::Client) -> bool {
    let mut want = stored(client).await;
    want.retain(|_, pods| !pods.is_empty());
    let mut got = in_slices(client).await;
    got.retain(|_, pods| !pods.is_empty());
    want == got
}

async fn converge(what: &str, timeout: Duration, check: impl AsyncFn() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what} never converged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The A record of `name` from `dns` (via dig), or "" if none.
fn dig(dns: &str, name: &str) -> String {
    let (ip, port) = dns.rsplit_once(':').unwrap();
    let out = Command::new("dig").args([&format!("@{ip}"), "-p", port, name, "+short", "+time=1", "+tries=1"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether something listens at `addr` (a proxy frontend accepts; an
/// address nobody serves refuses at once).
fn listening(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// A process of this test, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(p: &Proc, sig: &str) {
    assert!(Command::new("kill").args([sig, &p.0.id().to_string()]).status().unwrap().success());
}

fn addresses(path: &std::path::Path) -> serde_json::Value {
    support::eventually(Duration::from_secs(60), || serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()).expect("process up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_behind_by_more_than_the_watch_history_relists_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let wharf = env!("CARGO_BIN_EXE_wharf");
    let slot = std::process::id() % 200 + 20;
    let cidr = format!("127.{slot}.0.0/16");
    // A server whose store keeps only 64 events for watchers behind.
    let server = Proc(
        Command::new(wharf)
            .args([
                "server",
                "--data-dir",
                dir.path().join("server").to_str().unwrap(),
                "--api-listen",
                "127.0.0.1:0",
                "--service-cidr",
                &cidr,
            ])
            .args(["--watch-history", "64", "--addresses-file", dir.path().join("server.json").to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api = addresses(&dir.path().join("server.json"))["api"].as_str().unwrap().to_string();
    let kubeconfig = dir.path().join("server/admin.kubeconfig");
    let node_ip = format!("127.{slot}.250.1");
    let token = Command::new(wharf).args(["token", "create", "--kubeconfig", kubeconfig.to_str().unwrap()]).output().unwrap();
    assert!(token.status.success(), "{}", String::from_utf8_lossy(&token.stderr));
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();
    let ca = dir.path().join("server/pki/ca.crt");
    let agent_dir = dir.path().join("agent");
    let agent = Proc(
        Command::new(wharf)
            .args(["agent", "--server", &api, "--token", &token, "--ca-cert", ca.to_str().unwrap()])
            .args(["--data-dir", agent_dir.to_str().unwrap(), "--node-name", "node-a", "--node-ip", &node_ip])
            .args(["--service-cidr", &cidr, "--dns-upstream", "none", "--metrics-listen", "127.0.0.1:0", "--proxy-workers", "2"])
            .args(["--addresses-file", dir.path().join("agent.json").to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dns = addresses(&dir.path().join("agent.json"))["dns"].as_str().unwrap().to_string();
    let client = wharf_kube::client::from_kubeconfig_text(&std::fs::read_to_string(&kubeconfig).unwrap()).await.unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..5 {
        services.create(&PostParams::default(), &service(&format!("early-{i}"))).await.unwrap();
        pods.create(&PostParams::default(), &pod(&format!("early-{i}-0"), &format!("early-{i}"), "node-a")).await.unwrap();
    }
    converge("the first services", Duration::from_secs(60), async || slices_match(&client).await && !in_slices(&client).await.is_empty())
        .await;
    // The early pods get addresses of their own, for DNS's pod records
    // (once the agent has written their status: it keeps a pod's address).
    let early_ip = |i: usize| format!("127.{slot}.251.{}", i + 1);
    let pod_record = |i: usize| format!("{}.default.pod.cluster.local", early_ip(i).replace('.', "-"));
    for i in 0..5 {
        let status = serde_json::json!({"status": {"podIP": early_ip(i), "podIPs": [{"ip": early_ip(i)}]}});
        pods.patch_status(&format!("early-{i}-0"), &PatchParams::default(), &Patch::Merge(status)).await.unwrap();
    }
    converge("the early pods' records", Duration::from_secs(60), async || (0..5).all(|i| dig(&dns, &pod_record(i)) == early_ip(i))).await;

    // The agent stops for a burst of ten times the watch history.
    signal(&agent, "-STOP");
    let created = Arc::new(AtomicUsize::new(0));
    futures::stream::iter(0..60)
        .for_each_concurrent(16, |i| {
            let (services, pods, created) = (services.clone(), pods.clone(), created.clone());
            async move {
                let name = format!("svc-{i}");
                services.create(&PostParams::default(), &service(&name)).await.unwrap();
                for p in 0..8 {
                    pods.create(&PostParams::default(), &pod(&format!("{name}-{p}"), &name, "node-a")).await.unwrap();
                }
                created.fetch_add(9, Ordering::Relaxed);
            }
        })
        .await;
    for i in 0..3 {
        services.delete(&format!("early-{i}"), &DeleteParams::default()).await.unwrap();
        pods.delete(&format!("early-{i}-0"), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    }
    assert!(created.load(Ordering::Relaxed) >= 540, "the burst must outrun the 64-event history");
    signal(&agent, "-CONT");

    // The agent relists (its watches expired) and every part converges:
    // the agent gives the pods their status, the controllers the slices,
    // the agent's DNS and proxy the names and frontends.
    converge("slices", Duration::from_secs(120), async || slices_match(&client).await).await;
    let want = stored(&client).await;
    assert_eq!(want.len(), 62);
    let ips: BTreeMap<String, String> = services
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| Some((s.metadata.name.clone()?, s.spec?.cluster_ip?)))
        .collect();
    converge("DNS", Duration::from_secs(60), async || {
        want.keys().all(|svc| dig(&dns, &format!("{svc}.default.svc.cluster.local")) == ips[svc])
            && (0..3).all(|i| dig(&dns, &format!("early-{i}.default.svc.cluster.local")).is_empty())
            // The pods deleted in the gap are forgotten; the others' records stay.
            && (0..5).all(|i| dig(&dns, &pod_record(i)) == if i < 3 { String::new() } else { early_ip(i) })
    })
    .await;
    converge("proxy frontends", Duration::from_secs(60), async || want.keys().all(|svc| listening(&format!("{}:80", ips[svc])))).await;
    drop(server);
}

/// A store that refuses the first `failures` writes of endpoint slices,
/// as a store under trouble would.
struct Flaky {
    inner: wharf_store::EmbeddedStore,
    failures: AtomicUsize,
}

#[async_trait::async_trait]
impl wharf_store::Store for Flaky {
    fn revision(&self) -> wharf_store::Revision {
        self.inner.revision()
    }
    async fn get(&self, key: &str) -> wharf_store::Result<Option<wharf_store::KeyValue>> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> wharf_store::Result<(Vec<wharf_store::KeyValue>, wharf_store::Revision)> {
        self.inner.list(prefix).await
    }
    async fn snapshot(&self) -> wharf_store::Result<wharf_store::SharedSnapshot> {
        self.inner.snapshot().await
    }
    async fn txn(&self, txn: wharf_store::Txn) -> wharf_store::Result<wharf_store::TxnOutcome> {
        let slice_write = txn.ops.iter().any(|op| op.key().starts_with("/registry/endpointslices/"));
        if slice_write && self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(wharf_store::StoreError::Backend("injected failure".into()));
        }
        self.inner.txn(txn).await
    }
    async fn watch(&self, prefix: &str, after: wharf_store::Revision) -> wharf_store::Result<wharf_store::WatchStream> {
        self.inner.watch(prefix, after).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciles_that_fail_are_retried_until_the_slices_match() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(Flaky { inner: wharf_store::EmbeddedStore::open(&dir.path().join("state.redb")).unwrap(), failures: AtomicUsize::new(0) });
    let creds = wharf_apiserver::pki::load_or_create(&dir.path().join("pki"), &["127.0.0.1".into()]).unwrap();
    let allocator = wharf_apiserver::alloc::Allocator::new("127.81.0.0/16".parse().unwrap(), 30000..=32767);
    let registry = wharf_apiserver::Registry::new(store.clone(), allocator);
    let token = tokio_util::sync::CancellationToken::new();
    let app = wharf_apiserver::App {
        registry: registry.clone(),
        auth: wharf_apiserver::authz::Auth::new(
            &creds,
            Default::default(),
            Default::default(),
            registry.clone(),
            std::time::Duration::from_secs(3600),
            token.clone(),
        )
        .unwrap(),
        shutdown: token.clone(),
        metrics: wharf_apiserver::ApiMetrics::default(),
        tunnels: wharf_apiserver::remote::tunnels(),
        bookmark_interval: std::time::Duration::from_secs(60),
    };
    let config = wharf_apiserver::ApiServerConfig { listen: "127.0.0.1:0".parse().unwrap(), limits: Default::default(), ui: None };
    let server = wharf_apiserver::serve(config, app, &creds).await.unwrap();
    wharf_apiserver::bootstrap(&registry, server.local_addr).await.unwrap();
    // From here on, the store refuses the next twelve slice writes.
    store.failures.store(12, Ordering::SeqCst);
    let kubeconfig = wharf_apiserver::pki::kubeconfig(&creds, &format!("https://{}", server.local_addr));
    let client = wharf_kube::client::from_kubeconfig_text(&kubeconfig).await.unwrap();
    let metrics = wharf_kube::ControllerMetrics::default();
    let handles = metrics.handles("endpointslice");
    let controller = wharf_controllers::EndpointSliceController::new(client.clone(), handles.clone());
    let running = tokio::spawn(controller.run(token.clone()));

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for i in 0..4 {
        let name = format!("svc-{i}");
        services.create(&PostParams::default(), &service(&name)).await.unwrap();
        for p in 0..3 {
            let mut pod = pod(&format!("{name}-{p}"), &name, "nowhere");
            pod.status = serde_json::from_value(serde_json::json!({"phase": "Running", "podIP": format!("127.81.200.{}", i * 3 + p + 1),
                "conditions": [{"type": "Ready", "status": "True"}]}))
            .unwrap();
            let created = pods.create(&PostParams::default(), &pod).await.unwrap();
            let mut with_status = created.clone();
            with_status.status = pod.status.clone();
            pods.replace_status(&format!("{name}-{p}"), &PostParams::default(), &with_status).await.unwrap();
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(slices_match(&client).await && in_slices(&client).await.values().filter(|pods| pods.len() == 3).count() == 4) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never converged: stored {:?}, in slices {:?}, failures left {}",
            stored(&client).await,
            in_slices(&client).await,
            store.failures.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.failures.load(Ordering::SeqCst), 0, "every injected failure was hit");
    assert!(handles.retries.get() >= 1, "failed reconciles were retried");
    assert!(handles.errors.get() >= 1, "failed reconciles were counted");
    token.cancel();
    tokio::time::timeout(Duration::from_secs(10), running).await.expect("the controller stopped with its token").unwrap();
    let _ = server.task.await;
}
